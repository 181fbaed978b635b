//! `/ui`: the operator's dashboard, server-rendered from the same state as `/v1`.
//!
//! - `GET /ui/sign-in`, `POST /ui/sign-in`, `POST /ui/sign-out`: the operator signs in
//!   with the admin token; a session cookie follows ([`session`]).
//! - `GET /ui`: connections by status per integration, the tokens expiring within the
//!   hour against the refreshes planned before their expiry, the degraded connections by
//!   their last error (rate limited or backing off), the refreshes waiting on each
//!   integration's rate and concurrency limit or calling its provider right now (the
//!   supervisor's limiter counters), refreshes per minute by outcome over
//!   the last three hours (all counted by the database: a few grouped queries, whatever
//!   the number of connections).
//! - `GET /ui/connections`: filtered by tenant, integration and status, searched by the
//!   start of a tenant id, connection key or integration name, sorted by creation, expiry,
//!   failures in a row or last error; one page at a time through the listing of
//!   `GET /v1/connections` (keyset pagination in every order, never all rows).
//! - `GET /ui/connections/{id}`: state, token preview, refresh history, and actions
//!   (`POST .../{refresh|deactivate|activate|delete|reauthorize}`, each with the session's
//!   CSRF token); `GET .../status` feeds the page's live status.
//! - `GET /ui/integrations`: the OAuth apps (never their secrets) and their health.
//! - `GET /ui/events?connection=...` or `?ids=...`: the event stream of the connections a
//!   page shows, for the signed-in operator; the table's rows and the connection page's
//!   event list follow it without reloading.
//!
//! Embedded in a host application ([`crate::AdminAuth::External`]), the dashboard is part
//! of [`crate::AdminRouter::api`], behind the host's authentication: there is no sign-in
//! form, `/ui/sign-in` gives whoever the host let through a session at once (its CSRF
//! token still guards every action).
//!
//! Pages are maud templates (escaped by construction), the stylesheet and script are
//! compiled into the binary, nothing is fetched from elsewhere, and a strict content
//! security policy forbids inline and foreign scripts.

pub(crate) mod docs;
pub(crate) mod pages;
pub(crate) mod session;

use crate::AppState;
use crate::error::ApiError;
use crate::views::ConnectionView;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use pages::{Chrome, IntegrationCounts, Notice, STATUSES};
use serde::Deserialize;
use session::Operator;
use tokenvisor_core::{Connection, ConnectionFilter, ConnectionId, ConnectionSort, TenantId};
use tokenvisor_supervisor::AuthorizationRequest;

/// Rows per page of the connections table.
const PAGE: u64 = 50;
/// How far back the overview's plot goes.
const PLOT_HOURS: i64 = 3;
/// How far ahead the overview counts expiring tokens.
const EXPIRY_HOURS: i64 = 1;

/// The dashboard's routes (relative to the base path).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/sign-in", get(sign_in_form).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/connections", get(connections))
        .route("/ui/connections/{id}", get(connection))
        .route("/ui/connections/{id}/status", get(status))
        .route("/ui/connections/{id}/{action}", post(act))
        .route("/ui/integrations", get(integrations))
        .route("/ui/events", get(events))
        .layer(axum::middleware::map_response(secure_headers))
}

#[derive(Deserialize)]
struct EventsQuery {
    /// The connection page's connection.
    #[serde(default)]
    connection: Option<String>,
    /// The table's rows (comma-separated ids, at most [`PAGE`]).
    #[serde(default)]
    ids: Option<String>,
}

/// `GET /ui/events`: the event stream of `/v1/events` for the signed-in operator (a
/// browser's `EventSource` sends the session cookie, not a bearer token), only the events
/// of the connections the page shows.
async fn events(
    State(state): State<AppState>,
    _operator: Operator,
    headers: axum::http::HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Response {
    let listed = query
        .connection
        .iter()
        .chain(query.ids.iter())
        .flat_map(|ids| ids.split(','))
        .filter(|id| !id.is_empty())
        .map(|id| uuid::Uuid::parse_str(id).map(ConnectionId))
        .collect::<Result<std::collections::HashSet<_>, _>>();
    let ids = match listed {
        Ok(ids) if !ids.is_empty() && ids.len() as u64 <= PAGE => ids,
        _ => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "connection or ids: 1 to 50 connection ids",
            )
            .into_response();
        }
    };
    let wanted: crate::routes::events::Wanted = std::sync::Arc::new(move |event| ids.contains(&event.connection_id));
    let mut response = crate::routes::events::relay(&state, &headers, wanted).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The dashboard's stylesheet and script: always served (the tenant's callback page uses
/// the stylesheet, whether or not the dashboard is mounted).
pub(crate) fn asset_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/ui/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", pages::CSS) }),
        )
        .route(
            "/ui/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", pages::JS) }),
        )
        .layer(axum::middleware::map_response(secure_headers))
}

/// Headers on every dashboard answer: no caching of pages with tenant data, no framing,
/// no script or style from anywhere but here.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn chrome<'a>(state: &'a AppState, operator: &'a Operator) -> Chrome<'a> {
    Chrome {
        base: &state.options.base_path,
        csrf: Some(&operator.csrf),
    }
}

/// An error of the API as a page with the same status.
fn failure(state: &AppState, operator: &Operator, error: ApiError) -> Response {
    let page = pages::message(
        &chrome(state, operator),
        "Something went wrong",
        &format!("{} ({})", error.message(), error.code()),
    );
    (error.status(), Html(page.into_string())).into_response()
}

/// The sign-in form; embedded ([`crate::AdminAuth::External`]), no form: the host's
/// authentication let this request through, so it gets a session at once (key id
/// `external` in the audit trail) and goes on to the overview.
async fn sign_in_form(State(state): State<AppState>) -> Response {
    if state.admin_token_digest.is_none() {
        return trusted_session(&state);
    }
    Html(pages::sign_in(&state.options.base_path, None).into_string()).into_response()
}

/// A session for a request the host application authenticated.
fn trusted_session(state: &AppState) -> Response {
    let (id, _csrf) = state.sessions.create("external");
    tracing::info!(
        key.id = "external",
        "dashboard session for a host-authenticated request"
    );
    (
        [(header::SET_COOKIE, session::set_cookie(state, Some(&id)))],
        Redirect::to(&format!("{}/ui", state.options.base_path)),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SignIn {
    #[serde(default)]
    token: String,
}

/// Signs an operator in with the admin token or an API key that may manage every
/// connection (`admin`, or `operate` without tenant or integration restrictions); failed
/// attempts count against the client address like those of `/v1`.
async fn sign_in(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    use axum::extract::FromRequest as _;
    if state.admin_token_digest.is_none() {
        return trusted_session(&state);
    }
    let base = state.options.base_path.clone();
    let refuse = |status: StatusCode, message: &str| {
        (status, Html(pages::sign_in(&base, Some(message)).into_string())).into_response()
    };
    let who = [format!(
        "ip:{}",
        crate::auth::client_ip(&request).map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    )];
    if let Some(wait) = state.throttle.refused_for(&who) {
        return too_many(&base, wait);
    }
    let Ok(Form(form)) = Form::<SignIn>::from_request(request, &state).await else {
        return refuse(StatusCode::BAD_REQUEST, "The form could not be read.");
    };
    let token = form.token.trim();
    let outcome = if token.is_empty() {
        Ok(Err(crate::auth::Refusal::Unknown))
    } else {
        crate::auth::authenticate(&state, token).await
    };
    let principal = match outcome {
        Ok(Ok(principal)) => principal,
        Ok(Err(_)) => {
            tokenvisor_supervisor::metrics::record_auth_failure("unknown");
            tracing::warn!("dashboard sign-in refused");
            if let Some(wait) = state.throttle.fail(&who) {
                return too_many(&base, wait);
            }
            return refuse(
                StatusCode::UNAUTHORIZED,
                "That is neither the admin token nor a valid API key.",
            );
        }
        Err(error) => return refuse(error.status(), error.message()),
    };
    if !principal.satisfies(crate::auth::Need::OperateEverywhere) {
        tracing::warn!(key.id = %principal.key_id, "dashboard sign-in refused: the key may not manage every connection");
        return refuse(
            StatusCode::FORBIDDEN,
            "This API key may not use the dashboard: it needs the admin scope, or operate without tenant or integration restrictions.",
        );
    }
    let (id, _csrf) = state.sessions.create(&principal.key_id);
    tracing::info!(key.id = %principal.key_id, "dashboard sign-in");
    (
        [(header::SET_COOKIE, session::set_cookie(&state, Some(&id)))],
        Redirect::to(&format!("{base}/ui")),
    )
        .into_response()
}

/// 429 with `Retry-After`, as a page.
fn too_many(base: &str, wait: std::time::Duration) -> Response {
    tokenvisor_supervisor::metrics::record_auth_throttled();
    let seconds = wait.as_secs().max(1);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, seconds.to_string())],
        Html(
            pages::sign_in(
                base,
                Some(&format!("Too many failed sign-ins; try again in {seconds} s.")),
            )
            .into_string(),
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(State(state): State<AppState>, operator: Operator, Form(form): Form<ActionForm>) -> Response {
    if !operator.csrf_matches(&form.csrf) {
        return forbidden(&state, &operator);
    }
    state.sessions.end(&operator.session);
    (
        [(header::SET_COOKIE, session::set_cookie(&state, None))],
        Redirect::to(&format!("{}/ui/sign-in", state.options.base_path)),
    )
        .into_response()
}

fn forbidden(state: &AppState, operator: &Operator) -> Response {
    let page = pages::message(
        &chrome(state, operator),
        "Refused",
        "This form is stale or did not come from this dashboard. Reload the page and try again.",
    );
    (StatusCode::FORBIDDEN, Html(page.into_string())).into_response()
}

/// Each integration with the count of its connections in each status, from the
/// store's summary (one grouped query, whatever the number of integrations).
async fn integration_counts(
    state: &AppState,
    summary: &tokenvisor_store::ConnectionSummary,
) -> Result<Vec<IntegrationCounts>, ApiError> {
    let integrations = state.tokenvisor.store().list_integrations().await?;
    Ok(integrations
        .into_iter()
        .map(|integration| {
            let counts = STATUSES.map(|status| {
                summary
                    .by_status
                    .iter()
                    .find(|count| count.integration_id == integration.id && count.status == status)
                    .map_or(0, |count| count.count)
            });
            IntegrationCounts {
                id: integration.id,
                name: integration.name,
                provider: integration.provider,
                client_id: integration.client_id,
                scopes: integration.scopes,
                counts,
            }
        })
        .collect())
}

async fn overview(State(state): State<AppState>, operator: Operator) -> Response {
    let now = Utc::now();
    let since = now - chrono::Duration::hours(PLOT_HOURS);
    let counted = async {
        let store = state.tokenvisor.store();
        let summary = store
            .connection_summary(now, chrono::Duration::hours(EXPIRY_HOURS))
            .await?;
        let rows = integration_counts(&state, &summary).await?;
        let minutes = store.attempts_per_minute(since).await?;
        Ok::<_, ApiError>((summary, rows, minutes))
    };
    match counted.await {
        Ok((summary, rows, minutes)) => {
            let limits = state.tokenvisor.provider_limits_now();
            let figures = pages::Figures {
                rows: &rows,
                summary: &summary,
                minutes: &minutes,
                since,
                now,
                limits: &limits,
            };
            Html(pages::overview(&chrome(&state, &operator), &figures).into_string()).into_response()
        }
        Err(error) => failure(&state, &operator, error),
    }
}

async fn integrations(State(state): State<AppState>, operator: Operator) -> Response {
    let counted = async {
        let summary = state
            .tokenvisor
            .store()
            .connection_summary(Utc::now(), chrono::Duration::hours(EXPIRY_HOURS))
            .await?;
        integration_counts(&state, &summary).await
    };
    match counted.await {
        Ok(rows) => Html(pages::integrations(&chrome(&state, &operator), &rows).into_string()).into_response(),
        Err(error) => failure(&state, &operator, error),
    }
}

#[derive(Deserialize)]
struct TableQuery {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    integration: String,
    #[serde(default)]
    status: String,
    /// Prefix of a tenant id, connection key or integration name.
    #[serde(default)]
    q: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    order: String,
    #[serde(default)]
    cursor: Option<String>,
}

/// The connections table, a page at a time through the same listing as
/// `GET /v1/connections` (its filters, search, orders and keyset cursor).
async fn connections(State(state): State<AppState>, operator: Operator, Query(query): Query<TableQuery>) -> Response {
    let tenant = query.tenant.trim();
    let search = query.q.trim();
    let sort = if query.sort.is_empty() {
        Some(ConnectionSort::Id)
    } else {
        ConnectionSort::parse(&query.sort)
    };
    let listed = async {
        let store = state.tokenvisor.store();
        let integrations = store.list_integrations().await?;
        let sort = sort.ok_or_else(|| ApiError::invalid("sort", "unknown order"))?;
        let mut filter = ConnectionFilter {
            sort,
            descending: query.order == "desc",
            ..ConnectionFilter::default()
        };
        if !tenant.is_empty() {
            filter.tenant_id = Some(TenantId::parse(tenant).map_err(|error| ApiError::invalid("tenant", error))?);
        }
        if !search.is_empty() {
            if !ConnectionFilter::is_valid_search(search) {
                return Err(ApiError::invalid(
                    "q",
                    "search with the start of a tenant id, connection key or integration name (A-Z a-z 0-9 . _ : @ -)",
                ));
            }
            filter.search = Some(search.to_owned());
        }
        if !query.integration.is_empty() {
            let integration = integrations
                .iter()
                .find(|i| i.name == query.integration)
                .ok_or_else(|| ApiError::not_found("integration"))?;
            filter.integration_id = Some(integration.id);
        }
        if !query.status.is_empty() {
            filter.status = Some(
                STATUSES
                    .into_iter()
                    .find(|s| s.as_str() == query.status)
                    .ok_or_else(|| ApiError::invalid("status", "unknown status"))?,
            );
        }
        let principal = crate::auth::Principal::admin(&operator.key_id);
        let listed =
            crate::routes::connections::page(&state, &principal, filter, query.cursor.clone(), Some(PAGE)).await?;
        let next = listed.next_cursor.map(|cursor| {
            format!(
                "{}/ui/connections?tenant={}&integration={}&status={}&q={}&sort={}&order={}&cursor={}",
                state.options.base_path,
                pages::urlencode(tenant),
                pages::urlencode(&query.integration),
                pages::urlencode(&query.status),
                pages::urlencode(search),
                sort.as_str(),
                if query.order == "desc" { "desc" } else { "asc" },
                pages::urlencode(&cursor),
            )
        });
        Ok::<_, ApiError>((integrations.into_iter().map(|i| i.name).collect(), listed.items, next))
    };
    match listed.await {
        Ok((names, views, next)) => {
            let filters = pages::TableFilters {
                tenant,
                integration: &query.integration,
                status: &query.status,
                search,
                sort: sort.unwrap_or_default(),
                descending: query.order == "desc",
                integrations: names,
            };
            Html(pages::connections(&chrome(&state, &operator), &filters, &views, next).into_string()).into_response()
        }
        Err(error) => failure(&state, &operator, error),
    }
}

fn parse_id(id: &str) -> Result<ConnectionId, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(ConnectionId)
        .map_err(|_| ApiError::not_found("connection"))
}

async fn view_of(state: &AppState, id: ConnectionId) -> Result<ConnectionView, ApiError> {
    let connection = state.tokenvisor.connections().get(id).await?;
    crate::routes::connections::view(state, &connection).await
}

async fn render_connection(
    state: &AppState,
    operator: &Operator,
    id: ConnectionId,
    notice: Option<Notice>,
) -> Response {
    let loaded = async {
        let view = view_of(state, id).await?;
        let history = state.tokenvisor.connections().history(id, 50).await?;
        Ok::<_, ApiError>((view, history))
    };
    match loaded.await {
        Ok((view, history)) => {
            Html(pages::connection(&chrome(state, operator), &view, &history, notice).into_string()).into_response()
        }
        Err(error) => failure(state, operator, error),
    }
}

async fn connection(State(state): State<AppState>, operator: Operator, Path(id): Path<String>) -> Response {
    match parse_id(&id) {
        Ok(id) => render_connection(&state, &operator, id, None).await,
        Err(error) => failure(&state, &operator, error),
    }
}

/// The live part of a connection page, as JSON.
async fn status(State(state): State<AppState>, _operator: Operator, Path(id): Path<String>) -> Response {
    let view = match parse_id(&id) {
        Ok(id) => view_of(&state, id).await,
        Err(error) => Err(error),
    };
    match view {
        Ok(view) => axum::Json(serde_json::json!({
            "status": view.status.as_str(),
            "expires_at": view.expires_at,
            "next_refresh_at": view.next_refresh_at,
        }))
        .into_response(),
        Err(error) => error.into_response(),
    }
}

/// An action of the connection page, checked against the session's CSRF token.
async fn act(
    State(state): State<AppState>,
    operator: Operator,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !operator.csrf_matches(&form.csrf) {
        return forbidden(&state, &operator);
    }
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(error) => return failure(&state, &operator, error),
    };
    let connections = state.tokenvisor.connections();
    // The connection as it was, for the audit trail's status before (and its tenant,
    // which a deleted connection no longer has).
    let before = match connections.get(id).await {
        Ok(connection) => connection,
        Err(error) => return failure(&state, &operator, error.into()),
    };
    let outcome = match action.as_str() {
        "refresh" => match state.tokenvisor.tokens().force_refresh(id).await {
            // The refresh happened: it is audited even when reading the connection back
            // fails (a refresh that succeeded leaves it active).
            Ok(_) => Ok((
                Notice::Done("Refreshed.".into()),
                connections
                    .get(id)
                    .await
                    .map_or(tokenvisor_core::ConnectionStatus::Active.as_str(), |after| {
                        after.status.as_str()
                    }),
            )),
            Err(error) => Err(ApiError::from(error)),
        },
        "deactivate" => connections
            .deactivate(id)
            .await
            .map(|after| {
                (
                    Notice::Done("Deactivated: no refreshes, no tokens handed out.".into()),
                    after.status.as_str(),
                )
            })
            .map_err(ApiError::from),
        "activate" => connections
            .activate(id)
            .await
            .map(|after| (Notice::Done("Activated.".into()), after.status.as_str()))
            .map_err(ApiError::from),
        "delete" => {
            return match connections.remove(id).await {
                Ok(()) => {
                    tracing::info!(connection.id = %id, "connection deleted from the dashboard");
                    audit(&state, &operator, "delete", &before, "deleted");
                    Redirect::to(&format!("{}/ui/connections", state.options.base_path)).into_response()
                }
                Err(error) => failure(&state, &operator, error.into()),
            };
        }
        // The link changes nothing until the tenant consents (the callback then
        // replaces the tokens).
        "reauthorize" => reauthorize(&state, id)
            .await
            .map(|notice| (notice, before.status.as_str())),
        _ => Err(ApiError::not_found("action")),
    };
    tracing::info!(connection.id = %id, action = %action, ok = outcome.is_ok(), "dashboard action");
    match outcome {
        Ok((notice, after)) => {
            audit(&state, &operator, &action, &before, after);
            render_connection(&state, &operator, id, Some(notice)).await
        }
        Err(error) => failure(&state, &operator, error),
    }
}

/// Records a dashboard action in the audit trail (who signed in, what, which connection
/// of which tenant, its status before and after).
fn audit(state: &AppState, operator: &Operator, action: &str, before: &Connection, after: &str) {
    state.audit.record(tokenvisor_store::sql::AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        at: Utc::now(),
        action: "change".to_owned(),
        request: format!("POST /ui/connections/{{id}}/{action}"),
        status: 200,
        key_id: operator.key_id.clone(),
        connection_id: Some(before.id.to_string()),
        tenant_id: Some(before.tenant_id.to_string()),
        target: None,
        caller_address: operator.address.map(|ip| ip.to_string()),
        trace_id: tokenvisor_telemetry::current_trace_ids().map(|(trace, _)| trace),
        status_before: Some(before.status.as_str().to_owned()),
        status_after: Some(after.to_owned()),
    });
}

/// Starts a re-authorization of the connection: the link to send to the tenant.
async fn reauthorize(state: &AppState, id: ConnectionId) -> Result<Notice, ApiError> {
    let connection = state.tokenvisor.connections().get(id).await?;
    let integration = state
        .tokenvisor
        .store()
        .get_integration(connection.integration_id)
        .await?
        .ok_or_else(|| ApiError::not_found("integration"))?;
    let redirect_uri = integration.redirect_uri.is_none().then(|| state.options.callback_url());
    let start = state
        .tokenvisor
        .authorizations()
        .begin(AuthorizationRequest {
            tenant_id: connection.tenant_id.clone(),
            integration_id: integration.id,
            connection_id: Some(id),
            connection_key: Some(connection.connection_key.clone()),
            redirect_uri,
            return_to: None,
        })
        .await?;
    Ok(Notice::Link {
        url: start.authorize_url,
        expires_at: start.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use crate::{AdminOptions, router_parts};
    use axum::Router;
    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;
    use std::sync::Arc;
    use tokenvisor_supervisor::{Tokenvisor, TokenvisorConfig};

    /// A host application: its own authentication (a header) around the admin API part,
    /// the public part open, served on `127.0.0.1:0`.
    async fn host(tokenvisor: &Tokenvisor) -> (String, tokio::task::JoinHandle<()>) {
        let parts = router_parts(
            tokenvisor.clone(),
            AdminOptions::embedded("http://app.example.com", "/tokenvisor"),
        );
        let app = Router::new()
            .merge(parts.api.layer(axum::middleware::from_fn(
                |request: axum::extract::Request, next: axum::middleware::Next| async move {
                    if request.headers().contains_key("x-host-session") {
                        next.run(request).await
                    } else {
                        StatusCode::FORBIDDEN.into_response()
                    }
                },
            )))
            .merge(parts.public);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (base, server)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_the_dashboard_trusts_the_hosts_authentication_and_still_checks_csrf() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Arc::new(tokenvisor_store::MemoryStore::new());
        let tokenvisor = Tokenvisor::start(store, TokenvisorConfig::default())
            .await
            .expect("starts");
        let (base, server) = host(&tokenvisor).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        // Not through the host's authentication: refused by the host.
        for path in ["/tokenvisor/ui", "/tokenvisor/ui/sign-in", "/tokenvisor/ui/connections"] {
            let answer = http.get(format!("{base}{path}")).send().await.expect("request");
            assert_eq!(answer.status(), 403, "{path}");
        }
        // Through it: no form, a session at once, then the pages.
        let authenticated = |path: &str| http.get(format!("{base}{path}")).header("x-host-session", "alice");
        let first = authenticated("/tokenvisor/ui").send().await.expect("request");
        assert_eq!(first.status(), 303);
        assert_eq!(first.headers()["location"], "/tokenvisor/ui/sign-in");
        let signed_in = authenticated("/tokenvisor/ui/sign-in").send().await.expect("request");
        assert_eq!(signed_in.status(), 303);
        assert_eq!(signed_in.headers()["location"], "/tokenvisor/ui");
        let set_cookie = signed_in.headers()["set-cookie"].to_str().expect("ascii").to_owned();
        assert!(
            set_cookie.contains("Path=/tokenvisor/ui") && set_cookie.contains("HttpOnly"),
            "{set_cookie}"
        );
        let cookie = set_cookie.split(';').next().expect("a pair").to_owned();
        let overview = authenticated("/tokenvisor/ui")
            .header("cookie", &cookie)
            .send()
            .await
            .expect("request");
        assert_eq!(overview.status(), 200);
        let body = overview.text().await.expect("body");
        assert!(body.contains("Overview") && body.contains("name=\"csrf\""), "{body}");
        // The cookie alone is not enough: the host's authentication still decides.
        let without_host = http
            .get(format!("{base}/tokenvisor/ui"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("request");
        assert_eq!(without_host.status(), 403);
        // An action without the session's CSRF token is refused.
        let forged = http
            .post(format!(
                "{base}/tokenvisor/ui/connections/{}/refresh",
                uuid::Uuid::now_v7()
            ))
            .header("x-host-session", "alice")
            .header("cookie", &cookie)
            .form(&[("csrf", "forged")])
            .send()
            .await
            .expect("request");
        assert_eq!(forged.status(), 403);
        server.abort();
        tokenvisor.shutdown().await;
    }
}
