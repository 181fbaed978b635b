//! The fake's protected APIs: `GET /api/whoami` (every dialect), Zoho CRM's
//! `GET /zoho/api/crm/v8/users`, Atlassian's `GET /oauth/token/accessible-resources` and
//! the Jira gateway's `GET /ex/jira/{cloud_id}/rest/api/3/myself`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;

use crate::server::ServerState;
use crate::state::lock;

/// The avatar every fake Atlassian site reports.
const ATLASSIAN_AVATAR_URL: &str = "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/rocket.png";

/// The token of an `Authorization: <scheme> <token>` header, if it uses `scheme`
/// (compared case-insensitively).
fn authorization_token<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(sent_scheme, _)| sent_scheme.eq_ignore_ascii_case(scheme))
        .map(|(_, token)| token.trim())
}

/// The label of the live grant whose access token the request presents with `scheme`.
fn live_label(server_state: &ServerState, headers: &HeaderMap, scheme: &str) -> Option<String> {
    let access_token = authorization_token(headers, scheme)?;
    lock(&server_state.shared)
        .live_access_token_label(access_token, Instant::now())
        .map(str::to_owned)
}

/// `GET /api/whoami` with `Authorization: Bearer <token>`.
pub(crate) async fn whoami(State(server_state): State<ServerState>, headers: HeaderMap) -> Response {
    match live_label(&server_state, &headers, "bearer") {
        Some(label) => (StatusCode::OK, axum::Json(json!({"family": label}))).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            axum::Json(json!({"error": "invalid_token"})),
        )
            .into_response(),
    }
}

/// `ANY /api/echo/{*rest}` with `Authorization: Bearer <token>`: what arrived (method,
/// path, query, every header but `Authorization`, the body as text) and the grant's
/// label; 401 like `whoami` for a dead token. `/api/echo/redirect` answers a redirect to
/// another host (a proxy must not follow it).
pub(crate) async fn echo(
    State(server_state): State<ServerState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some(label) = live_label(&server_state, &headers, "bearer") else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            axum::Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    };
    if uri.path().ends_with("/redirect") {
        return (
            StatusCode::FOUND,
            [(header::LOCATION, "http://169.254.169.254/latest/meta-data/")],
        )
            .into_response();
    }
    let seen: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| *name != header::AUTHORIZATION)
        .map(|(name, value)| (name.to_string(), json!(value.to_str().unwrap_or("<binary>"))))
        .collect();
    (
        StatusCode::OK,
        [("x-echo", "yes")],
        axum::Json(json!({
            "family": label,
            "method": method.as_str(),
            "path": uri.path(),
            "query": uri.query(),
            "headers": seen,
            "body": body,
        })),
    )
        .into_response()
}

/// Zoho CRM `GET /zoho/api/crm/v8/users` with `Authorization: Zoho-oauthtoken <token>`;
/// any other scheme is refused like a dead token.
pub(crate) async fn zoho_users(State(server_state): State<ServerState>, headers: HeaderMap) -> Response {
    match live_label(&server_state, &headers, "zoho-oauthtoken") {
        Some(label) => (StatusCode::OK, axum::Json(json!({"users": [{"id": label}]}))).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({
                "code": "INVALID_TOKEN",
                "details": {},
                "message": "invalid oauth token",
                "status": "error",
            })),
        )
            .into_response(),
    }
}

/// Atlassian's `GET /oauth/token/accessible-resources` with a Bearer token: the one fake
/// site, named after the grant's label, with the grant's scopes.
pub(crate) async fn accessible_resources(State(server_state): State<ServerState>, headers: HeaderMap) -> Response {
    let resources = authorization_token(&headers, "bearer").and_then(|access_token| {
        let state = lock(&server_state.shared);
        let (label, scope) = state.live_access_token_grant(access_token, Instant::now())?;
        let scopes: Vec<&str> = scope
            .split_whitespace()
            .filter(|scope| *scope != "offline_access")
            .collect();
        Some(json!([{
            "id": state.cloud_id,
            "name": label,
            "url": format!("https://{label}.atlassian.net"),
            "scopes": scopes,
            "avatarUrl": ATLASSIAN_AVATAR_URL,
        }]))
    });
    match resources {
        Some(resources) => (StatusCode::OK, axum::Json(resources)).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": 401, "message": "Unauthorized"})),
        )
            .into_response(),
    }
}

/// The Jira gateway's `GET /ex/jira/{cloud_id}/rest/api/3/myself` with a Bearer token:
/// 200 for a live token and the fake's cloud id, 404 for another cloud id, and the
/// configured status (401 unless changed) for a dead token.
pub(crate) async fn jira_myself(
    State(server_state): State<ServerState>,
    Path(cloud_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (label, known_site, expired_status) = {
        let state = lock(&server_state.shared);
        let label = authorization_token(&headers, "bearer")
            .and_then(|access_token| state.live_access_token_label(access_token, Instant::now()))
            .map(str::to_owned);
        (label, state.cloud_id == cloud_id, state.gateway_expired_status)
    };
    match label {
        Some(_) if !known_site => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"errorMessages": ["Site not found"], "errors": {}})),
        )
            .into_response(),
        Some(label) => (
            StatusCode::OK,
            axum::Json(json!({
                "accountId": format!("fake-account-{label}"),
                "displayName": label,
                "active": true,
            })),
        )
            .into_response(),
        None => {
            let status = StatusCode::from_u16(expired_status).unwrap_or(StatusCode::UNAUTHORIZED);
            (
                status,
                axum::Json(json!({"code": status.as_u16(), "message": "Unauthorized"})),
            )
                .into_response()
        }
    }
}
