//! `/v1/integrations`: register, list, show, update (rotate a secret), delete.

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::find_integration;
use crate::views::{CreateIntegration, DeleteIntegrationQuery, IntegrationList, IntegrationView, UpdateIntegration};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tokenvisor_core::SecretString;
use tokenvisor_supervisor::{IntegrationUpdate, NewIntegration};

/// Registers an integration (an OAuth app registration).
#[utoipa::path(
    post, path = "/v1/integrations", tag = "integrations",
    operation_id = "create_integration",
    request_body = CreateIntegration,
    responses(
        (status = 201, description = "registered; the secret is not shown", body = IntegrationView),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 422, description = "invalid input, provider, URL or settings", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateIntegration>,
) -> Result<(StatusCode, Json<IntegrationView>), ApiError> {
    validate_scopes(&body.scopes)?;
    if let Some(uri) = &body.redirect_uri {
        validate_redirect_uri(uri)?;
    }
    for (field, value) in [
        ("token_url", &body.token_url),
        ("authorize_url", &body.authorize_url),
        ("revoke_url", &body.revoke_url),
        ("data_center", &body.data_center),
    ] {
        if value.as_ref().is_some_and(|v| v.trim().is_empty() || v.len() > 2048) {
            return Err(ApiError::invalid(field, "must be 1 to 2048 characters"));
        }
    }
    let settings = settings_object(body.settings)?;
    let integration = state
        .tokenvisor
        .integrations()
        .register(NewIntegration {
            name: body.name.trim().to_owned(),
            provider: body.provider,
            client_id: body.client_id,
            client_secret: SecretString::new(body.client_secret),
            scopes: body.scopes,
            redirect_uri: body.redirect_uri,
            data_center: body.data_center,
            token_url: body.token_url,
            authorize_url: body.authorize_url,
            revoke_url: body.revoke_url,
            settings,
        })
        .await?;
    tracing::info!(integration.id = %integration.id, integration.name = %integration.name, provider = %integration.provider, "integration registered");
    Ok((StatusCode::CREATED, Json(IntegrationView::of(&integration))))
}

/// Every integration, by name.
#[utoipa::path(
    get, path = "/v1/integrations", tag = "integrations",
    operation_id = "list_integrations",
    responses((status = 200, body = IntegrationList)),
    security(("bearer" = []))
)]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<IntegrationList>, ApiError> {
    let integrations = state.tokenvisor.store().list_integrations().await?;
    Ok(Json(IntegrationList {
        items: integrations.iter().map(IntegrationView::of).collect(),
    }))
}

/// One integration (by name or id), without its secret.
#[utoipa::path(
    get, path = "/v1/integrations/{integration}", tag = "integrations",
    operation_id = "get_integration",
    params(("integration" = String, Path, description = "integration name or id")),
    responses(
        (status = 200, description = "the integration; the secret is not shown", body = IntegrationView),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(integration): Path<String>,
) -> Result<Json<IntegrationView>, ApiError> {
    let integration = find_integration(state.tokenvisor.store().as_ref(), &integration).await?;
    Ok(Json(IntegrationView::of(&integration)))
}

/// Changes an integration: a rotated `client_secret` (or any other change) is used by the
/// next refresh of every connection, on every replica, without a restart.
#[utoipa::path(
    patch, path = "/v1/integrations/{integration}", tag = "integrations",
    operation_id = "update_integration",
    params(("integration" = String, Path, description = "integration name or id")),
    request_body = UpdateIntegration,
    responses(
        (status = 200, description = "updated; the secret is not shown", body = IntegrationView),
        (status = 404, body = ErrorBody),
        (status = 422, description = "invalid input, URL or settings", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn update(
    State(state): State<AppState>,
    Path(integration): Path<String>,
    ApiJson(body): ApiJson<UpdateIntegration>,
) -> Result<Json<IntegrationView>, ApiError> {
    let integration = find_integration(state.tokenvisor.store().as_ref(), &integration).await?;
    if let Some(scopes) = &body.scopes {
        validate_scopes(scopes)?;
    }
    if let Some(uri) = &body.redirect_uri {
        validate_redirect_uri(uri)?;
    }
    let settings = match body.settings {
        Some(settings) => Some(settings_object(Some(settings))?),
        None => None,
    };
    let rotated = body.client_secret.is_some();
    let updated = state
        .tokenvisor
        .integrations()
        .update(
            integration.id,
            IntegrationUpdate {
                client_id: body.client_id,
                client_secret: body.client_secret.map(SecretString::new),
                scopes: body.scopes,
                redirect_uri: body.redirect_uri,
                settings,
            },
        )
        .await?;
    tracing::info!(integration.id = %updated.id, integration.name = %updated.name, secret_rotated = rotated, "integration updated");
    Ok(Json(IntegrationView::of(&updated)))
}

/// Deletes an integration; refused while connections use it unless `cascade=true`
/// (then they are deleted first, each revoked at the provider).
#[utoipa::path(
    delete, path = "/v1/integrations/{integration}", tag = "integrations",
    operation_id = "delete_integration",
    params(("integration" = String, Path, description = "integration name or id"), DeleteIntegrationQuery),
    responses(
        (status = 204, description = "deleted (with its connections when cascading)"),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`integration_in_use`: connections use it (the message says how many)", body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `owner_unavailable` (`Retry-After`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(integration): Path<String>,
    ApiQuery(query): ApiQuery<DeleteIntegrationQuery>,
) -> Result<StatusCode, ApiError> {
    let integration = find_integration(state.tokenvisor.store().as_ref(), &integration).await?;
    let cascade = query.cascade.unwrap_or(false);
    state.tokenvisor.integrations().remove(integration.id, cascade).await?;
    tracing::info!(integration.id = %integration.id, integration.name = %integration.name, cascade, "integration deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Settings must be a JSON object (null: none).
fn settings_object(settings: Option<serde_json::Value>) -> Result<serde_json::Value, ApiError> {
    match settings {
        None | Some(serde_json::Value::Null) => Ok(serde_json::Value::Null),
        Some(settings @ serde_json::Value::Object(_)) => Ok(settings),
        Some(_) => Err(ApiError::invalid("settings", "must be an object")),
    }
}

fn validate_scopes(scopes: &[String]) -> Result<(), ApiError> {
    if scopes.len() > 100 {
        return Err(ApiError::invalid("scopes", "at most 100 scopes"));
    }
    for scope in scopes {
        if scope.is_empty() || scope.len() > 256 || scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ApiError::invalid(
                "scopes",
                "each scope must be 1 to 256 characters without spaces",
            ));
        }
    }
    Ok(())
}

/// An absolute http(s) URL with a host and no credentials (providers check the rest).
pub(crate) fn validate_redirect_uri(raw: &str) -> Result<(), ApiError> {
    let url = url::Url::parse(raw).map_err(|error| ApiError::invalid("redirect_uri", error))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::invalid("redirect_uri", "must be an http(s) URL with a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::invalid("redirect_uri", "credentials in URLs are not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_must_be_absolute_http_urls() {
        assert!(validate_redirect_uri("https://app.example.com/oauth/callback").is_ok());
        assert!(validate_redirect_uri("not a url").is_err());
        assert!(validate_redirect_uri("javascript:alert(1)").is_err());
        assert!(validate_redirect_uri("https://user:pw@example.com/cb").is_err());
    }

    #[test]
    fn scopes_have_no_spaces() {
        assert!(validate_scopes(&["read".into(), "offline_access".into()]).is_ok());
        assert!(validate_scopes(&["read write".into()]).is_err());
        assert!(validate_scopes(&[String::new()]).is_err());
    }
}
