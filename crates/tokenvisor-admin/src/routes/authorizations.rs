//! `POST /v1/authorizations` starts the authorization-code flow; `GET /oauth/callback`
//! is where the provider sends the tenant back.

use crate::AppState;
use crate::auth::{Principal, hide_absence};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::extract::authorize_connection;
use crate::routes::find_integration;
use crate::views::{AuthorizationView, CreateAuthorization};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use std::collections::HashMap;
use tokenvisor_core::{ConnectionId, ConnectionKey, SecretString, TenantId};
use tokenvisor_supervisor::{AuthorizationCallback, AuthorizationRequest};

/// Starts connecting (or re-authorizing) a tenant: the URL to send the tenant to. The
/// completed authorization creates the tenant's connection under `connection_key`
/// (`default`), or replaces the tokens of the one it already has under that key.
#[utoipa::path(
    post, path = "/v1/authorizations", tag = "authorizations",
    operation_id = "create_authorization",
    request_body = CreateAuthorization,
    responses(
        (status = 201, body = AuthorizationView),
        (status = 404, description = "unknown integration or connection", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateAuthorization>,
) -> Result<(StatusCode, Json<AuthorizationView>), ApiError> {
    let tenant_id = TenantId::parse(body.tenant_id).map_err(|error| ApiError::invalid("tenant_id", error))?;
    let connection_key = match body.connection_key {
        Some(key) => Some(ConnectionKey::parse(key).map_err(|error| ApiError::invalid("connection_key", error))?),
        None => None,
    };
    let return_to = match body.return_to {
        Some(url) => Some(allowed_return_to(&state, &url)?),
        None => None,
    };
    if !principal.allows_tenant(tenant_id.as_str()) {
        return Err(ApiError::forbidden());
    }
    let integration = find_integration(state.tokenvisor.store().as_ref(), &body.integration)
        .await
        .map_err(|error| hide_absence(&principal, error))?;
    if !principal.allows_integration(integration.id) {
        return Err(ApiError::forbidden());
    }
    if let Some(id) = body.connection_id {
        authorize_connection(&state, &principal, ConnectionId(id)).await?;
    }
    let redirect_uri = integration.redirect_uri.is_none().then(|| state.options.callback_url());
    let start = state
        .tokenvisor
        .authorizations()
        .begin(AuthorizationRequest {
            tenant_id,
            integration_id: integration.id,
            connection_id: body.connection_id.map(ConnectionId),
            connection_key,
            redirect_uri,
            return_to,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(AuthorizationView {
            authorize_url: start.authorize_url,
            expires_at: start.expires_at,
        }),
    ))
}

/// The provider's redirect: finishes the flow and shows a small page.
#[utoipa::path(
    get, path = "/oauth/callback", tag = "authorizations",
    operation_id = "authorization_callback",
    params(
        ("state" = String, Query, min_length = 1, description = "the state sent to the provider (not empty)"),
        ("code" = Option<String>, Query, description = "the authorization code"),
        ("error" = Option<String>, Query, description = "the provider's error (e.g. access_denied)"),
    ),
    responses(
        (status = 200, description = "connected (HTML)", content_type = "text/html"),
        (status = 303, description = "the authorization was started with a `return_to`: the browser is sent there with `tokenvisor_outcome` (`connected`, with `connection_id` and `tenant_id`, or `error`, with the `error` code)"),
        (status = 400, description = "denied, unknown or expired state (HTML)", content_type = "text/html"),
    )
)]
pub(crate) async fn callback(State(state): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Response {
    let get = |key: &str| query.get(key).cloned();
    let callback = AuthorizationCallback {
        state: get("state").unwrap_or_default(),
        code: get("code").map(SecretString::new),
        error: get("error"),
        error_description: get("error_description"),
        accounts_server: get("accounts-server"),
        location: get("location"),
    };
    let finished = state.tokenvisor.authorizations().finish(callback).await;
    let outcome = match finished.outcome {
        Ok(connection) => {
            tracing::info!(connection.id = %connection.id, tenant.id = %connection.tenant_id, "authorization completed");
            Ok(connection)
        }
        Err(error) => {
            let api = ApiError::from(error);
            tracing::warn!(code = api.code(), "authorization failed");
            Err(api)
        }
    };
    if let Some(return_to) = finished.return_to {
        return return_redirect(&state.options.base_path, &return_to, &outcome);
    }
    let base = &state.options.base_path;
    match outcome {
        Ok(connection) => page(
            StatusCode::OK,
            crate::ui::pages::callback(base, Ok(connection.tenant_id.as_str())),
        ),
        Err(api) => {
            let status = if api.status().is_server_error() {
                api.status()
            } else {
                StatusCode::BAD_REQUEST
            };
            let message = match api.code() {
                "authorization_denied" => "The authorization was denied.",
                "unknown_state" => "This authorization link is unknown or was already used. Start again.",
                "expired_state" => "This authorization link expired. Start again.",
                "code_exchange_failed" => "The provider did not accept the authorization code. Start again.",
                _ => "The connection could not be completed.",
            };
            page(status, crate::ui::pages::callback(base, Err((message, api.code()))))
        }
    }
}

/// A `return_to` URL the service may send a tenant's browser to: `http(s)`, on one of
/// the allowed hosts, no credentials in it, not too long.
fn allowed_return_to(state: &AppState, text: &str) -> Result<String, ApiError> {
    let refuse = |reason: &str| ApiError::invalid("return_to", reason);
    if text.len() > 2048 {
        return Err(refuse("longer than 2048 characters"));
    }
    let url = url::Url::parse(text).map_err(|_| refuse("not an absolute URL"))?;
    if !matches!(url.scheme(), "https" | "http") || !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("must be an http(s) URL without credentials"));
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if state.options.return_to_hosts.is_empty() {
        return Err(refuse(
            "no host is allowed (set TOKENVISOR_RETURN_TO_HOSTS to the hosts tenants may be sent back to)",
        ));
    }
    if !state.options.return_to_hosts.contains(&host) {
        return Err(refuse(&format!(
            "host {host:?} is not one of TOKENVISOR_RETURN_TO_HOSTS"
        )));
    }
    Ok(url.to_string())
}

/// 303 to `return_to` with the outcome in its query: `tokenvisor_outcome=connected` and
/// the `connection_id`, or `tokenvisor_outcome=error` and the `error` code.
fn return_redirect(base: &str, return_to: &str, outcome: &Result<tokenvisor_core::Connection, ApiError>) -> Response {
    let Ok(mut url) = url::Url::parse(return_to) else {
        return page(
            StatusCode::BAD_REQUEST,
            crate::ui::pages::callback(base, Err(("The return address is not valid.", "invalid_input"))),
        );
    };
    {
        let mut query = url.query_pairs_mut();
        match outcome {
            Ok(connection) => {
                query
                    .append_pair("tokenvisor_outcome", "connected")
                    .append_pair("connection_id", &connection.id.to_string())
                    .append_pair("tenant_id", connection.tenant_id.as_str());
            }
            Err(api) => {
                query
                    .append_pair("tokenvisor_outcome", "error")
                    .append_pair("error", api.code());
            }
        }
    }
    let mut response = axum::response::Redirect::to(url.as_str()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The callback's page: no caching, no referrer (its URL held the code), styles from here
/// only and no script.
fn page(status: StatusCode, markup: maud::Markup) -> Response {
    let mut response = (status, Html(markup.into_string())).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    response
}
