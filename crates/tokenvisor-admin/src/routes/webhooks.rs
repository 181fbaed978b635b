//! Webhook endpoints and their dead letters: `POST`/`GET /v1/webhooks/endpoints`,
//! `PATCH`/`DELETE /v1/webhooks/endpoints/{id}`,
//! `POST /v1/webhooks/endpoints/{id}/rotate-secret`,
//! `POST /v1/webhooks/endpoints/{id}/replay-dead-letters`,
//! `GET /v1/webhooks/dead-letters`, `POST /v1/webhooks/dead-letters/{id}/replay`.
//!
//! A secret is answered once, when it is generated (create, rotate); never in a list.
//! Configured endpoints (`source: config`) are listed but managed in the configuration:
//! changing, rotating or deleting them answers `409 configured_endpoint`. The delivery
//! tasks of `tokenvisor serve` see changes within a second.

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::webhooks::{WebhookConfig, WebhookSecret};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokenvisor_core::SecretString;
use tokenvisor_store::sql::{DeadLetter, EndpointSource, ReplayOutcome, WebhookEndpoint, WebhookOutbox};
use utoipa::{IntoParams, ToSchema};

/// The event types an endpoint can filter on.
pub(crate) const EVENT_TYPES: [&str; 9] = [
    "refreshed",
    "refresh_failed",
    "needs_reauthorization",
    "recovered",
    "deactivated",
    "activated",
    "reauthorized",
    "connected",
    "removed",
];

/// How long a rotated secret keeps signing unless the request says otherwise: 24 h.
const DEFAULT_GRACE_SECONDS: u64 = 24 * 3600;
/// The longest grace period: 7 days.
const MAX_GRACE_SECONDS: u64 = 7 * 24 * 3600;

/// A new webhook endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateWebhookEndpoint {
    /// Where messages are POSTed (absolute http(s) URL).
    pub url: String,
    /// The event types it receives (`refreshed`, `needs_reauthorization`...); empty or
    /// absent: every type.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Whether it receives messages (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Failed attempts after which a message goes to dead letter (default: the
    /// service's, 10).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Seconds after which a failing message goes to dead letter (default: the
    /// service's, 24 h).
    #[serde(default)]
    pub max_age_seconds: Option<u64>,
    /// Messages its outbox keeps; the oldest beyond go to dead letter (default: the
    /// service's, 10,000).
    #[serde(default)]
    pub outbox_cap: Option<u64>,
}

/// Changes to an endpoint; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateWebhookEndpoint {
    /// New URL.
    #[serde(default)]
    pub url: Option<String>,
    /// New event filter (empty: every type).
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// Enable or disable (a disabled endpoint gets no new messages; its queue waits).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// New attempt limit.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// New age limit in seconds.
    #[serde(default)]
    pub max_age_seconds: Option<u64>,
    /// New outbox cap.
    #[serde(default)]
    pub outbox_cap: Option<u64>,
}

/// A secret rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateWebhookSecret {
    /// Seconds the old secret keeps signing next to the new one (default 86400, at most
    /// 604800; 0: the old one stops at once).
    #[serde(default)]
    pub grace_seconds: Option<u64>,
}

/// An endpoint, without its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WebhookEndpointView {
    /// Its id.
    pub id: String,
    /// Where messages are POSTed.
    pub url: String,
    /// The event types it receives; empty: every type.
    pub event_types: Vec<String>,
    /// Whether it receives messages.
    pub enabled: bool,
    /// `api` (managed here) or `config` (managed in the configuration).
    pub source: String,
    /// Its attempt limit, if it sets one.
    pub max_attempts: Option<u32>,
    /// Its age limit in seconds, if it sets one.
    pub max_age_seconds: Option<u64>,
    /// Its outbox cap, if it sets one.
    pub outbox_cap: Option<u64>,
    /// Until when the secret before the last rotation still signs.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

impl WebhookEndpointView {
    fn of(endpoint: &WebhookEndpoint) -> Self {
        Self {
            id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            event_types: endpoint.event_types.clone(),
            enabled: endpoint.enabled,
            source: endpoint.source.as_str().to_owned(),
            max_attempts: endpoint.max_attempts,
            max_age_seconds: endpoint.max_age_seconds,
            outbox_cap: endpoint.outbox_cap,
            previous_secret_expires_at: endpoint.previous_secret_expires_at,
            created_at: endpoint.created_at,
            updated_at: endpoint.updated_at,
        }
    }
}

/// A new endpoint with its secret, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CreatedWebhookEndpoint {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: WebhookEndpointView,
    /// Its signing secret, `whsec_<base64>`; not shown again.
    pub secret: String,
}

/// A rotated secret, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RotatedWebhookSecret {
    /// The endpoint.
    pub id: String,
    /// The new signing secret, `whsec_<base64>`; not shown again.
    pub secret: String,
    /// Until when the old secret also signs (`null`: it stopped at once).
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

/// Every webhook endpoint.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WebhookEndpointList {
    /// Oldest first.
    pub items: Vec<WebhookEndpointView>,
}

/// A message given up on.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct DeadLetterView {
    /// Its id (for replay).
    pub id: String,
    /// The endpoint it was for.
    pub endpoint_id: String,
    /// Its `webhook-id` (kept on replay).
    pub message_id: String,
    /// The event type.
    pub event_type: String,
    /// The message body as it was sent.
    pub payload: serde_json::Value,
    /// Failed attempts.
    pub attempts: u32,
    /// The last failure (`http_500`, `timeout`, `connection failed`...).
    pub last_error: Option<String>,
    /// `attempts`, `age` or `cap`.
    pub reason: String,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was first tried.
    pub first_attempted_at: Option<DateTime<Utc>>,
    /// When it was given up on.
    pub dead_lettered_at: DateTime<Utc>,
}

impl DeadLetterView {
    fn of(letter: DeadLetter) -> Self {
        Self {
            payload: serde_json::from_str(&letter.body).unwrap_or(serde_json::Value::String(letter.body)),
            id: letter.id,
            endpoint_id: letter.endpoint_id,
            message_id: letter.message_id,
            event_type: letter.event_type,
            attempts: letter.attempts,
            last_error: letter.last_error,
            reason: letter.reason.as_str().to_owned(),
            created_at: letter.created_at,
            first_attempted_at: letter.first_attempted_at,
            dead_lettered_at: letter.dead_lettered_at,
        }
    }
}

/// Dead letters, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct DeadLetterList {
    /// Newest first.
    pub items: Vec<DeadLetterView>,
}

/// Which dead letters to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeadLetterQuery {
    /// Only this endpoint's.
    pub endpoint: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// A replayed dead letter.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ReplayedDeadLetter {
    /// The endpoint it is queued for again.
    pub endpoint_id: String,
}

/// How many dead letters were replayed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ReplayedDeadLetters {
    /// Queued again, oldest first.
    pub replayed: u64,
}

/// The webhook tables, or 501 when the store keeps none.
fn outbox(state: &AppState) -> Result<WebhookOutbox, ApiError> {
    state.tokenvisor.store().webhooks().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "webhooks_unavailable",
            "this store keeps no webhooks (use SQLite or PostgreSQL)",
        )
    })
}

fn validate_url(raw: &str) -> Result<String, ApiError> {
    let url = WebhookConfig::parse_url(raw).map_err(|error| ApiError::invalid("url", error))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::invalid("url", "credentials in URLs are not allowed"));
    }
    if raw.len() > 2048 {
        return Err(ApiError::invalid("url", "at most 2048 characters"));
    }
    Ok(url.to_string())
}

fn validate_event_types(event_types: &[String]) -> Result<Vec<String>, ApiError> {
    let mut types = Vec::with_capacity(event_types.len());
    for event_type in event_types {
        let event_type = event_type.trim();
        if !EVENT_TYPES.contains(&event_type) {
            return Err(ApiError::invalid(
                "event_types",
                format!("unknown event type {event_type:?} (one of {})", EVENT_TYPES.join(", ")),
            ));
        }
        if !types.iter().any(|t: &String| t == event_type) {
            types.push(event_type.to_owned());
        }
    }
    Ok(types)
}

fn validate_limits(max_attempts: Option<u32>, max_age_seconds: Option<u64>) -> Result<(), ApiError> {
    if max_attempts.is_some_and(|n| !(1..=1000).contains(&n)) {
        return Err(ApiError::invalid("max_attempts", "must be 1 to 1000"));
    }
    if max_age_seconds.is_some_and(|n| !(1..=30 * 24 * 3600).contains(&n)) {
        return Err(ApiError::invalid("max_age_seconds", "must be 1 to 2592000 (30 days)"));
    }
    Ok(())
}

/// An endpoint managed through the API; 404 when there is none, 409 when configured.
async fn managed_endpoint(outbox: &WebhookOutbox, id: &str) -> Result<WebhookEndpoint, ApiError> {
    let endpoint = outbox
        .get_endpoint(id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    if endpoint.source == EndpointSource::Config {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "configured_endpoint",
            "this endpoint comes from the configuration (TOKENVISOR_WEBHOOK_URLS); change it there",
        ));
    }
    Ok(endpoint)
}

/// Adds a webhook endpoint and answers its generated secret, once.
#[utoipa::path(
    post, path = "/v1/webhooks/endpoints", tag = "webhooks",
    operation_id = "create_webhook_endpoint",
    request_body = CreateWebhookEndpoint,
    responses(
        (status = 201, description = "added; the secret is shown this once", body = CreatedWebhookEndpoint),
        (status = 422, description = "invalid URL, event type or limit", body = ErrorBody),
        (status = 501, description = "the store keeps no webhooks (in-memory store)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_endpoint(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateWebhookEndpoint>,
) -> Result<(StatusCode, Json<CreatedWebhookEndpoint>), ApiError> {
    let outbox = outbox(&state)?;
    let url = validate_url(&body.url)?;
    let event_types = validate_event_types(&body.event_types)?;
    validate_limits(body.max_attempts, body.max_age_seconds)?;
    let secret = WebhookSecret::generate();
    let now = Utc::now();
    let endpoint = WebhookEndpoint {
        id: uuid::Uuid::now_v7().to_string(),
        url,
        event_types,
        enabled: body.enabled.unwrap_or(true),
        source: EndpointSource::Api,
        secret: SecretString::new(secret.clone()),
        previous_secret: None,
        previous_secret_expires_at: None,
        max_attempts: body.max_attempts,
        max_age_seconds: body.max_age_seconds,
        outbox_cap: body.outbox_cap,
        created_at: now,
        updated_at: now,
    };
    outbox.insert_endpoint(&endpoint).await?;
    tracing::info!(webhook.endpoint_id = %endpoint.id, "webhook endpoint added");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhookEndpoint {
            endpoint: WebhookEndpointView::of(&endpoint),
            secret,
        }),
    ))
}

/// Every webhook endpoint, configured ones included, without secrets.
#[utoipa::path(
    get, path = "/v1/webhooks/endpoints", tag = "webhooks",
    operation_id = "list_webhook_endpoints",
    responses(
        (status = 200, body = WebhookEndpointList),
        (status = 501, description = "the store keeps no webhooks", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_endpoints(State(state): State<AppState>) -> Result<Json<WebhookEndpointList>, ApiError> {
    let endpoints = outbox(&state)?.list_endpoints().await?;
    Ok(Json(WebhookEndpointList {
        items: endpoints.iter().map(WebhookEndpointView::of).collect(),
    }))
}

/// Changes an endpoint: URL, event filter, enabled, limits.
#[utoipa::path(
    patch, path = "/v1/webhooks/endpoints/{id}", tag = "webhooks",
    operation_id = "update_webhook_endpoint",
    params(("id" = String, Path, description = "endpoint id")),
    request_body = UpdateWebhookEndpoint,
    responses(
        (status = 200, description = "changed", body = WebhookEndpointView),
        (status = 404, description = "no such endpoint", body = ErrorBody),
        (status = 409, description = "a configured endpoint (`configured_endpoint`)", body = ErrorBody),
        (status = 422, description = "invalid URL, event type or limit", body = ErrorBody),
        (status = 501, description = "the store keeps no webhooks", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn update_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateWebhookEndpoint>,
) -> Result<Json<WebhookEndpointView>, ApiError> {
    let outbox = outbox(&state)?;
    let mut endpoint = managed_endpoint(&outbox, &id).await?;
    if let Some(url) = &body.url {
        endpoint.url = validate_url(url)?;
    }
    if let Some(event_types) = &body.event_types {
        endpoint.event_types = validate_event_types(event_types)?;
    }
    validate_limits(body.max_attempts, body.max_age_seconds)?;
    if let Some(enabled) = body.enabled {
        endpoint.enabled = enabled;
    }
    endpoint.max_attempts = body.max_attempts.or(endpoint.max_attempts);
    endpoint.max_age_seconds = body.max_age_seconds.or(endpoint.max_age_seconds);
    endpoint.outbox_cap = body.outbox_cap.or(endpoint.outbox_cap);
    endpoint.updated_at = Utc::now();
    if !outbox.update_endpoint(&endpoint).await? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    tracing::info!(webhook.endpoint_id = %endpoint.id, enabled = endpoint.enabled, "webhook endpoint changed");
    Ok(Json(WebhookEndpointView::of(&endpoint)))
}

/// Deletes an endpoint with its queued messages and dead letters.
#[utoipa::path(
    delete, path = "/v1/webhooks/endpoints/{id}", tag = "webhooks",
    operation_id = "delete_webhook_endpoint",
    params(("id" = String, Path, description = "endpoint id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such endpoint", body = ErrorBody),
        (status = 409, description = "a configured endpoint (`configured_endpoint`)", body = ErrorBody),
        (status = 501, description = "the store keeps no webhooks", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let outbox = outbox(&state)?;
    managed_endpoint(&outbox, &id).await?;
    if !outbox.delete_endpoint(&id).await? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    tracing::info!(webhook.endpoint_id = %id, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Gives an endpoint a new secret, answered once. The old secret keeps signing next to
/// the new one (`webhook-signature: v1,<new> v1,<old>`) for the grace period, so
/// receivers can switch without losing messages.
#[utoipa::path(
    post, path = "/v1/webhooks/endpoints/{id}/rotate-secret", tag = "webhooks",
    operation_id = "rotate_webhook_secret",
    params(("id" = String, Path, description = "endpoint id")),
    request_body(content = Option<RotateWebhookSecret>, description = "optional grace period"),
    responses(
        (status = 200, description = "rotated; the new secret is shown this once", body = RotatedWebhookSecret),
        (status = 404, description = "no such endpoint", body = ErrorBody),
        (status = 409, description = "a configured endpoint (`configured_endpoint`)", body = ErrorBody),
        (status = 422, description = "grace period too long", body = ErrorBody),
        (status = 501, description = "the store keeps no webhooks", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn rotate_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<RotatedWebhookSecret>, ApiError> {
    // The body is optional: none means the default grace period.
    let request: RotateWebhookSecret = if body.iter().all(u8::is_ascii_whitespace) {
        RotateWebhookSecret::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", error.to_string()))?
    };
    let grace = request.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if grace > MAX_GRACE_SECONDS {
        return Err(ApiError::invalid("grace_seconds", "at most 604800 (7 days)"));
    }
    let outbox = outbox(&state)?;
    let mut endpoint = managed_endpoint(&outbox, &id).await?;
    let secret = WebhookSecret::generate();
    let now = Utc::now();
    if grace > 0 {
        endpoint.previous_secret = Some(endpoint.secret.clone());
        endpoint.previous_secret_expires_at =
            Some(now + chrono::Duration::seconds(i64::try_from(grace).unwrap_or(i64::MAX)));
    } else {
        endpoint.previous_secret = None;
        endpoint.previous_secret_expires_at = None;
    }
    endpoint.secret = SecretString::new(secret.clone());
    endpoint.updated_at = now;
    if !outbox.update_endpoint(&endpoint).await? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    tracing::info!(webhook.endpoint_id = %endpoint.id, grace_seconds = grace, "webhook secret rotated");
    Ok(Json(RotatedWebhookSecret {
        id: endpoint.id,
        secret,
        previous_secret_expires_at: endpoint.previous_secret_expires_at,
    }))
}

/// Dead letters, newest first, of one endpoint or of all.
#[utoipa::path(
    get, path = "/v1/webhooks/dead-letters", tag = "webhooks",
    operation_id = "list_webhook_dead_letters",
    params(DeadLetterQuery),
    responses(
        (status = 200, body = DeadLetterList),
        (status = 400, description = "invalid query", body = ErrorBody),
        (status = 501, description = "the store keeps no webhooks", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_dead_letters(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DeadLetterQuery>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let letters = outbox(&state)?
        .list_dead_letters(query.endpoint.as_deref(), limit)
        .await?;
    Ok(Json(DeadLetterList {
        items: letters.into_iter().map(DeadLetterView::of).collect(),
    }))
}

/// Queues a dead letter again at the end of its endpoint's outbox (same `webhook-id`,
/// attempts from zero).
#[utoipa::path(
    post, path = "/v1/webhooks/dead-letters/{id}/replay", tag = "webhooks",
    operation_id = "replay_webhook_dead_letter",
    params(("id" = String, Path, description = "dead letter id")),
    responses(
        (status = 202, description = "queued again", body = ReplayedDeadLetter),
        (status = 404, description = "no such dead letter", body = ErrorBody),
        (status = 501, description = "the store keeps no webhooks", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn replay_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ReplayedDeadLetter>), ApiError> {
    match outbox(&state)?.replay_dead_letter(&id).await? {
        ReplayOutcome::Queued { endpoint_id } => {
            tracing::info!(webhook.endpoint_id = %endpoint_id, "webhook dead letter replayed");
            Ok((StatusCode::ACCEPTED, Json(ReplayedDeadLetter { endpoint_id })))
        }
        ReplayOutcome::NotFound => Err(ApiError::not_found("dead letter")),
    }
}

/// Replays every dead letter of an endpoint, oldest first.
#[utoipa::path(
    post, path = "/v1/webhooks/endpoints/{id}/replay-dead-letters", tag = "webhooks",
    operation_id = "replay_webhook_endpoint_dead_letters",
    params(("id" = String, Path, description = "endpoint id")),
    responses(
        (status = 202, description = "queued again", body = ReplayedDeadLetters),
        (status = 404, description = "no such endpoint", body = ErrorBody),
        (status = 501, description = "the store keeps no webhooks", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn replay_endpoint_dead_letters(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ReplayedDeadLetters>), ApiError> {
    let outbox = outbox(&state)?;
    if outbox.get_endpoint(&id).await?.is_none() {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    let replayed = outbox.replay_endpoint_dead_letters(&id).await?;
    tracing::info!(webhook.endpoint_id = %id, replayed, "webhook dead letters replayed");
    Ok((StatusCode::ACCEPTED, Json(ReplayedDeadLetters { replayed })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_take_known_event_types_once() {
        assert_eq!(
            validate_event_types(&["refreshed".into(), " refreshed".into(), "removed".into()]).expect("valid"),
            ["refreshed", "removed"]
        );
        assert!(validate_event_types(&["refreshed,removed".into()]).is_err());
        assert!(validate_event_types(&["unknown".into()]).is_err());
        assert!(validate_event_types(&[]).expect("valid").is_empty());
    }

    #[test]
    fn urls_are_absolute_http_without_credentials() {
        assert!(validate_url("https://hooks.example.com/tokenvisor").is_ok());
        assert!(validate_url("ftp://hooks.example.com/").is_err());
        assert!(validate_url("https://user:pw@hooks.example.com/").is_err());
        assert!(validate_url("/relative").is_err());
    }
}
