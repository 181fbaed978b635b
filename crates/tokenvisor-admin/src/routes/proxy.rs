//! `ANY /v1/connections/{id}/proxy/{*path}` (and the same under
//! `/v1/tenants/{tenant}/connections/{integration}/{key}`): an API call through tokenvisor. The request
//! goes to the connection's API base (Zoho `api_domain`, the Jira gateway with the cloud
//! id, an integration's `api_base_url`) with the connection's token in the profile's
//! scheme; a dead-token answer (401; Atlassian also 403/404) is reported and the call
//! retried once with the fresh token. The caller's credentials never leave: its
//! `Authorization`, `Cookie` and hop-by-hop headers are dropped. The URL never leaves the
//! API base; redirects are passed back, not followed.

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::authorize_connection;
use crate::routes::connections::KeyPath;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri, header};
use axum::response::Response;
use tokenvisor_core::ConnectionId;
use tokenvisor_supervisor::{ApiClient, ApiRequest};

/// The largest request body forwarded (it is kept for the retry).
const MAX_BODY: usize = 10 * 1024 * 1024;

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), and ours.
const DROPPED: [HeaderName; 10] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::HOST,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// A request or answer body forwarded as is: any bytes (the document's schema for them).
pub(crate) struct RawBody;

impl utoipa::PartialSchema for RawBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for RawBody {}

/// Forwards the request to the connection's API (see the module documentation).
#[utoipa::path(
    post, path = "/v1/connections/{id}/proxy/{path}", tag = "connections",
    operation_id = "proxy_request",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The connection id"),
        ("path" = String, Path, description = "The path below the connection's API base; any method"),
    ),
    request_body(content = RawBody, description = "Forwarded as is (at most 10 MiB); any content type", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The API's answer, streamed (any status the API gives)"),
        (status = 400, description = "`invalid_path`", body = crate::error::ErrorBody),
        (status = 404, description = "`not_found`", body = crate::error::ErrorBody),
        (status = 409, description = "`needs_reauth`, `disabled`", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::error::ErrorBody),
        (status = 422, description = "`no_api_base`", body = crate::error::ErrorBody),
        (status = 502, description = "`upstream_unreachable`", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn forward(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, path)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id: ConnectionId = id
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", "the connection id is not a UUID"))?;
    authorize_connection(&state, &principal, id).await?;
    let mut response = proxy(&state, id, path, method, uri, headers, body).await?;
    response.extensions_mut().insert(crate::audit::AuditSubject {
        connection_id: Some(id.to_string()),
        ..crate::audit::AuditSubject::default()
    });
    Ok(response)
}

/// Forwards the request to the API of the tenant's connection under a key (see the
/// module documentation).
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/connections/{integration}/{key}/proxy/{path}", tag = "connections",
    operation_id = "proxy_request_by_key",
    security(("bearer" = [])),
    params(
        ("tenant" = String, Path, description = "tenant id"),
        ("integration" = String, Path, description = "integration name or id"),
        ("key" = String, Path, description = "the connection key (`default` unless chosen)"),
        ("path" = String, Path, description = "The path below the connection's API base; any method"),
    ),
    request_body(content = Vec<u8>, description = "Forwarded as is (at most 10 MiB)", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The API's answer, streamed (any status the API gives)"),
        (status = 400, description = "`invalid_path`", body = crate::error::ErrorBody),
        (status = 404, description = "`not_found`", body = crate::error::ErrorBody),
        (status = 409, description = "`needs_reauth`, `disabled`", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::error::ErrorBody),
        (status = 422, description = "`no_api_base`, `invalid_input` (not a tenant id or key)", body = crate::error::ErrorBody),
        (status = 502, description = "`upstream_unreachable`", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn forward_by_key(
    State(state): State<AppState>,
    principal: Principal,
    Path((tenant, integration, key, path)): Path<(String, String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let connection = KeyPath {
        tenant,
        integration,
        key,
    }
    .resolve(&state, &principal)
    .await?;
    let mut response = proxy(&state, connection.id, path, method, uri, headers, body).await?;
    response
        .extensions_mut()
        .insert(crate::audit::AuditSubject::connection(&connection));
    Ok(response)
}

/// Sends the call through connection `id` and streams the answer back.
async fn proxy(
    state: &AppState,
    id: ConnectionId,
    path: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "a proxied request body is at most 10 MiB",
        )
    })?;
    let mut call = ApiRequest::new(method.as_str(), path).body(body.to_vec());
    if let Some(query) = uri.query() {
        call = call.query(query);
    }
    for (name, value) in &headers {
        if !DROPPED.contains(name) && !name.as_str().starts_with("proxy-") {
            call = call.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = ApiClient::new(state.tokenvisor.clone())
        .send(id, call)
        .await
        .map_err(|error| match error {
            tokenvisor_supervisor::ApiError::Token(error) => ApiError::from(error),
            tokenvisor_supervisor::ApiError::NoApiBase => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_api_base", error.to_string())
            }
            tokenvisor_supervisor::ApiError::InvalidPath(reason) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", reason)
            }
            other => ApiError::new(StatusCode::BAD_GATEWAY, "upstream_unreachable", other.to_string()),
        })?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        let dropped = DROPPED.iter().any(|dropped| dropped.as_str() == name);
        if !dropped && name != header::SET_COOKIE.as_str() {
            response = response.header(name, value);
        }
    }
    let stream = futures::stream::try_unfold(answer, |mut answer| async move {
        let chunk = answer.chunk().await.map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>(chunk.map(|chunk| (chunk, answer)))
    });
    response
        .body(Body::from_stream(stream))
        .map_err(|error| ApiError::internal(error.to_string()))
}
