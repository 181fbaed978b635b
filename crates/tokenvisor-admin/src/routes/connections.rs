//! `/v1/connections`: register, list, show, hand out tokens, refresh, (de)activate, delete;
//! `/v1/tenants/{tenant}/connections`: a tenant's connections, and one addressed by
//! integration and the caller's key instead of its id
//! (`/v1/tenants/{tenant}/connections/{integration}/{key}`, with every action the id
//! routes have). A by-key handler resolves its path with [`KeyPath::resolve`] and shares
//! the rest with its by-id twin.

use crate::AppState;
use crate::audit::AuditSubject;
use crate::auth::{Principal, hide_absence};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, ConnectionPath};
use crate::routes::find_integration;
use crate::views::{
    ConnectionList, ConnectionQuery, ConnectionView, CreateConnection, OrderParam, PageQuery, RejectedToken,
    TokenAnswer,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use tokenvisor_core::{
    Connection, ConnectionCursor, ConnectionFilter, ConnectionId, ConnectionKey, ConnectionSort, ConnectionStatus,
    Integration, IntegrationId, SecretString, TenantId,
};
use tokenvisor_supervisor::{AccessToken, NewConnection, TokenError};

const MAX_TOKEN_LENGTH: usize = 16 * 1024;
const MAX_LIFETIME_SECS: i64 = 366 * 24 * 3600;
const DEFAULT_PAGE: u64 = 100;
const MAX_PAGE: u64 = 500;

/// Registers a connection with tokens obtained elsewhere and starts supervising it; a
/// tenant already connected to the integration under this `connection_key` gets that
/// connection's tokens replaced instead (200).
#[utoipa::path(
    post, path = "/v1/connections", tag = "connections",
    operation_id = "create_connection",
    request_body = CreateConnection,
    responses(
        (status = 201, description = "registered and supervised", body = ConnectionView),
        (status = 200, description = "the tenant's connection under this key, its tokens replaced", body = ConnectionView),
        (status = 404, description = "unknown integration", body = ErrorBody),
        (status = 422, description = "invalid input", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateConnection>,
) -> Result<Response, ApiError> {
    let tenant_id = TenantId::parse(body.tenant_id).map_err(|error| ApiError::invalid("tenant_id", error))?;
    if !principal.allows_tenant(tenant_id.as_str()) {
        return Err(ApiError::forbidden());
    }
    let connection_key = match body.connection_key {
        Some(key) => ConnectionKey::parse(key).map_err(|error| ApiError::invalid("connection_key", error))?,
        None => ConnectionKey::default(),
    };
    if body.access_token.is_empty() || body.access_token.len() > MAX_TOKEN_LENGTH {
        return Err(ApiError::invalid("access_token", "must be 1 to 16384 characters"));
    }
    if body
        .refresh_token
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > MAX_TOKEN_LENGTH)
    {
        return Err(ApiError::invalid("refresh_token", "must be 1 to 16384 characters"));
    }
    let now = chrono::Utc::now();
    let expires_at = match (body.expires_in, body.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "expires_in",
                "give expires_in or expires_at, not both",
            ));
        }
        (Some(seconds), None) if !(1..=MAX_LIFETIME_SECS).contains(&seconds) => {
            return Err(ApiError::invalid(
                "expires_in",
                "must be a positive number of seconds, at most a year",
            ));
        }
        (Some(seconds), None) => Some(now + chrono::Duration::seconds(seconds)),
        (None, Some(at)) if at <= now => return Err(ApiError::invalid("expires_at", "must be in the future")),
        (None, Some(at)) if at - now > chrono::Duration::seconds(MAX_LIFETIME_SECS) => {
            return Err(ApiError::invalid("expires_at", "must be within a year"));
        }
        (None, Some(at)) => Some(at),
        (None, None) => None,
    };
    if body.token_type.as_ref().is_some_and(|t| t.is_empty() || t.len() > 64) {
        return Err(ApiError::invalid("token_type", "must be 1 to 64 characters"));
    }
    let integration = find_integration(state.tokenvisor.store().as_ref(), &body.integration)
        .await
        .map_err(|error| hide_absence(&principal, error))?;
    if !principal.allows_integration(integration.id) {
        return Err(ApiError::forbidden());
    }
    // For the audit trail: the status of the connection whose tokens are replaced, if any.
    let before = match state
        .tokenvisor
        .connections()
        .by_key(integration.id, &tenant_id, &connection_key)
        .await
    {
        Ok(existing) => Some(existing.status),
        Err(TokenError::NotFound) => None,
        Err(error) => return Err(error.into()),
    };
    let registered = state
        .tokenvisor
        .connections()
        .connect(NewConnection {
            tenant_id,
            integration_id: integration.id,
            connection_key,
            access_token: SecretString::new(body.access_token),
            refresh_token: body.refresh_token.map(SecretString::new),
            token_type: body.token_type,
            scope: body.scope,
            expires_at,
            metadata: body.metadata.unwrap_or_default(),
        })
        .await?;
    let connection = registered.connection;
    tracing::info!(connection.id = %connection.id, tenant.id = %connection.tenant_id, integration.name = %integration.name, created = registered.created, "connection registered");
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(ConnectionView::of(&connection, Some(&integration)))).into_response();
    let before = if registered.created { None } else { before };
    response
        .extensions_mut()
        .insert(AuditSubject::change(&connection, before, connection.status.as_str()));
    Ok(response)
}

/// Connections matching the filters and the search, in the order asked (by id by default),
/// a page at a time (keyset pagination in every order).
#[utoipa::path(
    get, path = "/v1/connections", tag = "connections",
    operation_id = "list_connections",
    params(ConnectionQuery),
    responses(
        (status = 200, body = ConnectionList),
        (status = 400, description = "invalid filter (`invalid_query`) or cursor (`invalid_cursor`)", body = ErrorBody),
        (status = 404, description = "`not_found`: unknown integration filter", body = ErrorBody),
        (status = 422, description = "`invalid_input`: the integration filter is not a name or id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ConnectionQuery>,
) -> Result<Json<ConnectionList>, ApiError> {
    let store = state.tokenvisor.store();
    let bad_filter = |code: &'static str, message: &str| ApiError::new(StatusCode::BAD_REQUEST, code, message);
    let tenant_id = match query.tenant_id {
        Some(tenant) => Some(TenantId::parse(tenant).map_err(|e| bad_filter("invalid_query", &e.to_string()))?),
        None => None,
    };
    let status = match query.status {
        Some(status) => Some(status.parse::<ConnectionStatus>().map_err(|_| {
            bad_filter(
                "invalid_query",
                "status must be active, degraded, needs_reauth or disabled",
            )
        })?),
        None => None,
    };
    let integration_id = match query.integration {
        Some(integration) => Some(
            find_integration(store.as_ref(), &integration)
                .await
                .map_err(|error| hide_absence(&principal, error))?
                .id,
        ),
        None => None,
    };
    // A restricted key names only what it may see; a key of one tenant lists that one.
    if tenant_id.as_ref().is_some_and(|t| !principal.allows_tenant(t.as_str()))
        || integration_id.is_some_and(|i| !principal.allows_integration(i))
    {
        return Err(ApiError::forbidden());
    }
    let tenant_id = match (tenant_id, principal.single_tenant()) {
        (None, Some(only)) => TenantId::parse(only.to_owned()).ok(),
        (tenant_id, _) => tenant_id,
    };
    if let Some(search) = &query.q
        && !ConnectionFilter::is_valid_search(search)
    {
        return Err(bad_filter(
            "invalid_query",
            "q must be 1 to 128 characters from A-Z a-z 0-9 . _ : @ -",
        ));
    }
    let filter = ConnectionFilter {
        tenant_id,
        status,
        integration_id,
        search: query.q,
        sort: query.sort.map_or(ConnectionSort::Id, ConnectionSort::from),
        descending: query.order == Some(OrderParam::Desc),
        ..ConnectionFilter::default()
    };
    page(&state, &principal, filter, query.cursor, query.limit)
        .await
        .map(Json)
}

/// One page of the connections matching `filter`, after `cursor`; of those, the ones
/// `principal` may see (a restricted key's page can hold fewer than `limit`: follow
/// `next_cursor`).
pub(crate) async fn page(
    state: &AppState,
    principal: &Principal,
    mut filter: ConnectionFilter,
    cursor: Option<String>,
    limit: Option<u64>,
) -> Result<ConnectionList, ApiError> {
    let bad_filter = |code: &'static str, message: &str| ApiError::new(StatusCode::BAD_REQUEST, code, message);
    if let Some(cursor) = cursor {
        let cursor = ConnectionCursor::parse(filter.sort, &cursor).ok_or_else(|| {
            bad_filter(
                "invalid_cursor",
                "the cursor is not one this API returned for this sort",
            )
        })?;
        filter.after = Some(cursor.id);
        filter.after_value = cursor.value;
    }
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad_filter("invalid_query", "limit must be 1 to 500"));
    }
    filter.limit = Some(limit + 1);
    let mut connections = state.tokenvisor.store().list_connections(&filter).await?;
    let next_cursor = if connections.len() as u64 > limit {
        connections.truncate(limit as usize);
        connections
            .last()
            .map(|c| ConnectionCursor::after(filter.sort, c).to_string())
    } else {
        None
    };
    let integrations = integrations_by_id(state).await?;
    Ok(ConnectionList {
        items: connections
            .iter()
            .filter(|c| principal.allows(c))
            .map(|c| ConnectionView::of(c, integrations.get(&c.integration_id)))
            .collect(),
        next_cursor,
    })
}

/// Every connection of a tenant (to any integration), ordered by id, a page at a time.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/connections", tag = "connections",
    operation_id = "list_tenant_connections",
    params(("tenant" = String, Path, description = "tenant id"), PageQuery),
    responses(
        (status = 200, body = ConnectionList),
        (status = 400, description = "`invalid_query`, `invalid_cursor`", body = ErrorBody),
        (status = 422, description = "`invalid_input`: not a tenant id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_of_tenant(
    State(state): State<AppState>,
    principal: Principal,
    Path(tenant): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ConnectionList>, ApiError> {
    let tenant_id = TenantId::parse(tenant).map_err(|error| ApiError::invalid("tenant_id", error))?;
    if !principal.allows_tenant(tenant_id.as_str()) {
        return Err(ApiError::forbidden());
    }
    let filter = ConnectionFilter {
        tenant_id: Some(tenant_id),
        ..ConnectionFilter::default()
    };
    page(&state, &principal, filter, query.cursor, query.limit)
        .await
        .map(Json)
}

/// `/v1/tenants/{tenant}/connections/{integration}/{key}`: a connection addressed by its
/// tenant, integration (name or id) and the caller's key.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct KeyPath {
    pub(crate) tenant: String,
    pub(crate) integration: String,
    pub(crate) key: String,
}

impl KeyPath {
    /// The connection it names; 404 when there is none, `403 forbidden` instead for a
    /// key restricted to other tenants or integrations.
    pub(crate) async fn resolve(self, state: &AppState, principal: &Principal) -> Result<Connection, ApiError> {
        let tenant_id = TenantId::parse(self.tenant).map_err(|error| ApiError::invalid("tenant_id", error))?;
        let key = ConnectionKey::parse(self.key).map_err(|error| ApiError::invalid("connection_key", error))?;
        if !principal.allows_tenant(tenant_id.as_str()) {
            return Err(ApiError::forbidden());
        }
        let integration = find_integration(state.tokenvisor.store().as_ref(), &self.integration)
            .await
            .map_err(|error| hide_absence(principal, error))?;
        if !principal.allows_integration(integration.id) {
            return Err(ApiError::forbidden());
        }
        let connection = state
            .tokenvisor
            .connections()
            .by_key(integration.id, &tenant_id, &key)
            .await
            .map_err(|error| hide_absence(principal, error.into()))?;
        principal.check_connection(&connection)?;
        Ok(connection)
    }
}

/// The tenant's connection to an integration under a key.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/connections/{integration}/{key}", tag = "connections",
    operation_id = "get_connection_by_key",
    params(
        ("tenant" = String, Path, description = "tenant id"),
        ("integration" = String, Path, description = "integration name or id"),
        ("key" = String, Path, description = "the connection key (`default` unless chosen)"),
    ),
    responses(
        (status = 200, body = ConnectionView),
        (status = 404, body = ErrorBody),
        (status = 422, description = "`invalid_input`: not a tenant id or key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show_by_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(path): Path<KeyPath>,
) -> Result<Json<ConnectionView>, ApiError> {
    let connection = path.resolve(&state, &principal).await?;
    Ok(Json(view(&state, &connection).await?))
}

/// A valid access token of the tenant's connection under a key.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/connections/{integration}/{key}/token", tag = "tokens",
    operation_id = "get_token_by_key",
    params(
        ("tenant" = String, Path, description = "tenant id"),
        ("integration" = String, Path, description = "integration name or id"),
        ("key" = String, Path, description = "the connection key (`default` unless chosen)"),
    ),
    responses(
        (status = 200, description = "valid for at least the minimum validity", body = TokenAnswer),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`needs_reauth` or `disabled`", body = ErrorBody),
        (status = 422, description = "`invalid_input`: not a tenant id or key", body = ErrorBody),
        (status = 502, description = "`provider_unavailable` (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "`store_unavailable` (`Retry-After`)", body = ErrorBody),
        (status = 504, description = "`timeout`: no answer within the token wait; retry (`Retry-After`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn token_by_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(path): Path<KeyPath>,
) -> Result<Response, ApiError> {
    let connection = path.resolve(&state, &principal).await?;
    let token = state.tokenvisor.tokens().access_token(connection.id).await?;
    let mut response = token_response(&token);
    response.extensions_mut().insert(AuditSubject::connection(&connection));
    Ok(response)
}

/// One connection.
#[utoipa::path(
    get, path = "/v1/connections/{id}", tag = "connections",
    operation_id = "get_connection",
    params(("id" = uuid::Uuid, Path, description = "connection id")),
    responses((status = 200, body = ConnectionView), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    ConnectionPath(id): ConnectionPath,
) -> Result<Json<ConnectionView>, ApiError> {
    let connection = state.tokenvisor.connections().get(id).await?;
    Ok(Json(view(&state, &connection).await?))
}

/// A valid access token: the one answer that carries it.
#[utoipa::path(
    get, path = "/v1/connections/{id}/token", tag = "tokens",
    operation_id = "get_token",
    params(("id" = uuid::Uuid, Path, description = "connection id")),
    responses(
        (status = 200, description = "valid for at least the minimum validity", body = TokenAnswer),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`needs_reauth` or `disabled`", body = ErrorBody),
        (status = 502, description = "`provider_unavailable`: the token cannot be handed out and the provider is failing (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "`store_unavailable` (`Retry-After`)", body = ErrorBody),
        (status = 504, description = "`timeout`: no answer within the token wait; retry (`Retry-After`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn token(
    State(state): State<AppState>,
    ConnectionPath(id): ConnectionPath,
) -> Result<Response, ApiError> {
    let token = state.tokenvisor.tokens().access_token(id).await?;
    Ok(token_response(&token))
}

/// The API rejected this token (HTTP 401): the current valid token, refreshed if needed.
#[utoipa::path(
    post, path = "/v1/connections/{id}/token/rejected", tag = "tokens",
    operation_id = "report_rejected_token",
    params(("id" = uuid::Uuid, Path, description = "connection id")),
    request_body = RejectedToken,
    responses(
        (status = 200, body = TokenAnswer),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 422, description = "`invalid_input`", body = ErrorBody),
        (status = 502, description = "`provider_unavailable`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
        (status = 504, description = "`timeout`: no answer within the token wait; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn token_rejected(
    State(state): State<AppState>,
    ConnectionPath(id): ConnectionPath,
    ApiJson(body): ApiJson<RejectedToken>,
) -> Result<Response, ApiError> {
    reject_token(&state, id, body).await
}

/// The API rejected this token (HTTP 401) of the tenant's connection under a key: the
/// current valid token, refreshed if needed.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/connections/{integration}/{key}/token/rejected", tag = "tokens",
    operation_id = "report_rejected_token_by_key",
    params(
        ("tenant" = String, Path, description = "tenant id"),
        ("integration" = String, Path, description = "integration name or id"),
        ("key" = String, Path, description = "the connection key (`default` unless chosen)"),
    ),
    request_body = RejectedToken,
    responses(
        (status = 200, body = TokenAnswer),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 422, description = "`invalid_input`: not a tenant id or key, or an invalid token", body = ErrorBody),
        (status = 502, description = "`provider_unavailable`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
        (status = 504, description = "`timeout`: no answer within the token wait; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn token_rejected_by_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(path): Path<KeyPath>,
    ApiJson(body): ApiJson<RejectedToken>,
) -> Result<Response, ApiError> {
    let connection = path.resolve(&state, &principal).await?;
    reject_token(&state, connection.id, body).await
}

async fn reject_token(state: &AppState, id: ConnectionId, body: RejectedToken) -> Result<Response, ApiError> {
    if body.access_token.is_empty() || body.access_token.len() > MAX_TOKEN_LENGTH {
        return Err(ApiError::invalid("access_token", "must be 1 to 16384 characters"));
    }
    let token = state
        .tokenvisor
        .tokens()
        .token_rejected(id, &SecretString::new(body.access_token))
        .await?;
    Ok(token_response(&token))
}

/// Refreshes now (within the provider's spacing limit).
#[utoipa::path(
    post, path = "/v1/connections/{id}/refresh", tag = "connections",
    operation_id = "refresh_connection",
    params(("id" = uuid::Uuid, Path, description = "connection id")),
    responses(
        (status = 200, description = "the connection after the refresh", body = ConnectionView),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
        (status = 504, description = "`timeout`: no answer within the operation timeout; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    ConnectionPath(id): ConnectionPath,
) -> Result<Response, ApiError> {
    let before = state.tokenvisor.connections().get(id).await?;
    refresh_now(&state, &before).await
}

/// Refreshes the tenant's connection under a key now (within the provider's spacing limit).
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/connections/{integration}/{key}/refresh", tag = "connections",
    operation_id = "refresh_connection_by_key",
    params(
        ("tenant" = String, Path, description = "tenant id"),
        ("integration" = String, Path, description = "integration name or id"),
        ("key" = String, Path, description = "the connection key (`default` unless chosen)"),
    ),
    responses(
        (status = 200, description = "the connection after the refresh", body = ConnectionView),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 422, description = "`invalid_input`: not a tenant id or key", body = ErrorBody),
        (status = 502, body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
        (status = 504, description = "`timeout`: no answer within the operation timeout; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn refresh_by_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(path): Path<KeyPath>,
) -> Result<Response, ApiError> {
    let connection = path.resolve(&state, &principal).await?;
    refresh_now(&state, &connection).await
}

/// Refreshes `before` (the connection as it was) now; the audit trail gets its status
/// before and after.
async fn refresh_now(state: &AppState, before: &Connection) -> Result<Response, ApiError> {
    state.tokenvisor.tokens().force_refresh(before.id).await?;
    let connection = state.tokenvisor.connections().get(before.id).await?;
    let mut response = Json(view(state, &connection).await?).into_response();
    response.extensions_mut().insert(AuditSubject::change(
        before,
        Some(before.status),
        connection.status.as_str(),
    ));
    Ok(response)
}

/// Disables the connection: no refreshes, token requests answer 409 `disabled`.
#[utoipa::path(
    post, path = "/v1/connections/{id}/deactivate", tag = "connections",
    operation_id = "deactivate_connection",
    params(("id" = uuid::Uuid, Path, description = "connection id")),
    responses((status = 200, body = ConnectionView), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn deactivate(
    State(state): State<AppState>,
    ConnectionPath(id): ConnectionPath,
) -> Result<Response, ApiError> {
    let before = state.tokenvisor.connections().get(id).await?;
    set_active(&state, &before, false).await
}

/// Disables the tenant's connection under a key: no refreshes, token requests answer 409
/// `disabled`.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/connections/{integration}/{key}/deactivate", tag = "connections",
    operation_id = "deactivate_connection_by_key",
    params(
        ("tenant" = String, Path, description = "tenant id"),
        ("integration" = String, Path, description = "integration name or id"),
        ("key" = String, Path, description = "the connection key (`default` unless chosen)"),
    ),
    responses(
        (status = 200, body = ConnectionView),
        (status = 404, body = ErrorBody),
        (status = 422, description = "`invalid_input`: not a tenant id or key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn deactivate_by_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(path): Path<KeyPath>,
) -> Result<Response, ApiError> {
    let connection = path.resolve(&state, &principal).await?;
    set_active(&state, &connection, false).await
}

/// Enables a disabled (or `needs_reauth`) connection again.
#[utoipa::path(
    post, path = "/v1/connections/{id}/activate", tag = "connections",
    operation_id = "activate_connection",
    params(("id" = uuid::Uuid, Path, description = "connection id")),
    responses((status = 200, body = ConnectionView), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn activate(
    State(state): State<AppState>,
    ConnectionPath(id): ConnectionPath,
) -> Result<Response, ApiError> {
    let before = state.tokenvisor.connections().get(id).await?;
    set_active(&state, &before, true).await
}

/// Enables the tenant's disabled (or `needs_reauth`) connection under a key again.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/connections/{integration}/{key}/activate", tag = "connections",
    operation_id = "activate_connection_by_key",
    params(
        ("tenant" = String, Path, description = "tenant id"),
        ("integration" = String, Path, description = "integration name or id"),
        ("key" = String, Path, description = "the connection key (`default` unless chosen)"),
    ),
    responses(
        (status = 200, body = ConnectionView),
        (status = 404, body = ErrorBody),
        (status = 422, description = "`invalid_input`: not a tenant id or key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn activate_by_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(path): Path<KeyPath>,
) -> Result<Response, ApiError> {
    let connection = path.resolve(&state, &principal).await?;
    set_active(&state, &connection, true).await
}

/// Activates or deactivates `before` (the connection as it was); the audit trail gets its
/// status before and after.
async fn set_active(state: &AppState, before: &Connection, active: bool) -> Result<Response, ApiError> {
    let id = before.id;
    let connections = state.tokenvisor.connections();
    let connection = if active {
        let connection = connections.activate(id).await?;
        tracing::info!(connection.id = %id, "connection activated");
        connection
    } else {
        let connection = connections.deactivate(id).await?;
        tracing::info!(connection.id = %id, "connection deactivated");
        connection
    };
    let mut response = Json(view(state, &connection).await?).into_response();
    response.extensions_mut().insert(AuditSubject::change(
        before,
        Some(before.status),
        connection.status.as_str(),
    ));
    Ok(response)
}

/// Deletes the connection (its grant is revoked at the provider, best effort).
#[utoipa::path(
    delete, path = "/v1/connections/{id}", tag = "connections",
    operation_id = "delete_connection",
    params(("id" = uuid::Uuid, Path, description = "connection id")),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ConnectionPath(id): ConnectionPath,
) -> Result<Response, ApiError> {
    let before = state.tokenvisor.connections().get(id).await?;
    remove(&state, &before).await
}

/// Deletes the tenant's connection under a key (its grant is revoked at the provider, best
/// effort).
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/connections/{integration}/{key}", tag = "connections",
    operation_id = "delete_connection_by_key",
    params(
        ("tenant" = String, Path, description = "tenant id"),
        ("integration" = String, Path, description = "integration name or id"),
        ("key" = String, Path, description = "the connection key (`default` unless chosen)"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, body = ErrorBody),
        (status = 422, description = "`invalid_input`: not a tenant id or key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_by_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(path): Path<KeyPath>,
) -> Result<Response, ApiError> {
    let connection = path.resolve(&state, &principal).await?;
    remove(&state, &connection).await
}

/// Deletes `before` (the connection as it was); the audit trail gets its status before,
/// `deleted` after, and its tenant (the row is gone when the audit writer runs).
async fn remove(state: &AppState, before: &Connection) -> Result<Response, ApiError> {
    state.tokenvisor.connections().remove(before.id).await?;
    tracing::info!(connection.id = %before.id, "connection deleted");
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .extensions_mut()
        .insert(AuditSubject::change(before, Some(before.status), "deleted"));
    Ok(response)
}

fn token_response(token: &AccessToken) -> Response {
    let answer = TokenAnswer {
        access_token: token.secret.expose().to_owned(),
        token_type: token.token_type.to_string(),
        expires_at: token.expires_at,
        api_domain: token.api_domain.as_deref().map(str::to_owned),
    };
    let mut response = Json(answer).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The view of a connection with its integration's name.
pub(crate) async fn view(state: &AppState, connection: &Connection) -> Result<ConnectionView, ApiError> {
    let integration = state
        .tokenvisor
        .store()
        .get_integration(connection.integration_id)
        .await?;
    Ok(ConnectionView::of(connection, integration.as_ref()))
}

async fn integrations_by_id(state: &AppState) -> Result<HashMap<IntegrationId, Integration>, ApiError> {
    Ok(state
        .tokenvisor
        .store()
        .list_integrations()
        .await?
        .into_iter()
        .map(|i| (i.id, i))
        .collect())
}

/// One refresh attempt of a connection.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct AttemptView {
    /// When it started.
    started_at: chrono::DateTime<chrono::Utc>,
    /// `scheduled`, `on_demand`, `rejected`, `forced`, `startup`, `retry`.
    reason: String,
    /// `success`, `transient`, `rate_limited`, `permanent`, `misconfigured`.
    outcome: String,
    /// The error code, on failure.
    error_code: Option<String>,
    /// The provider's HTTP status, when it answered.
    http_status: Option<u16>,
    /// How long it took, in milliseconds.
    duration_ms: i64,
}

/// The connection's refresh attempts, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct HistoryView {
    items: Vec<AttemptView>,
}

/// `limit` of `GET /v1/connections/{id}/history`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// 1 to 50 (the history keeps the newest 50); default 50.
    #[param(minimum = 1, maximum = 50)]
    limit: Option<u64>,
}

/// The refresh history of a connection (the newest 50 attempts at most), newest first.
#[utoipa::path(
    get, path = "/v1/connections/{id}/history", tag = "connections",
    operation_id = "get_connection_history",
    params(("id" = uuid::Uuid, Path, description = "connection id"), HistoryQuery),
    responses(
        (status = 200, body = HistoryView),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn history(
    State(state): State<AppState>,
    ConnectionPath(id): ConnectionPath,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryView>, ApiError> {
    let limit = query.limit()?;
    // A connection that does not exist is a 404, not an empty history.
    state.tokenvisor.connections().get(id).await?;
    attempts(&state, id, limit).await.map(Json)
}

/// The refresh history of the tenant's connection under a key (the newest 50 attempts at
/// most), newest first.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/connections/{integration}/{key}/history", tag = "connections",
    operation_id = "get_connection_history_by_key",
    params(
        ("tenant" = String, Path, description = "tenant id"),
        ("integration" = String, Path, description = "integration name or id"),
        ("key" = String, Path, description = "the connection key (`default` unless chosen)"),
        HistoryQuery,
    ),
    responses(
        (status = 200, body = HistoryView),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "`invalid_input`: not a tenant id or key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn history_by_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(path): Path<KeyPath>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryView>, ApiError> {
    let limit = query.limit()?;
    let connection = path.resolve(&state, &principal).await?;
    attempts(&state, connection.id, limit).await.map(Json)
}

impl HistoryQuery {
    /// The limit asked for (default 50); 400 `invalid_query` outside 1 to 50.
    fn limit(&self) -> Result<u64, ApiError> {
        let limit = self.limit.unwrap_or(tokenvisor_store::ATTEMPT_HISTORY_LIMIT);
        if !(1..=tokenvisor_store::ATTEMPT_HISTORY_LIMIT).contains(&limit) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "limit must be between 1 and 50",
            ));
        }
        Ok(limit)
    }
}

/// The newest `limit` refresh attempts of connection `id`.
async fn attempts(state: &AppState, id: ConnectionId, limit: u64) -> Result<HistoryView, ApiError> {
    let attempts = state.tokenvisor.connections().history(id, limit).await?;
    Ok(HistoryView {
        items: attempts
            .into_iter()
            .map(|attempt| AttemptView {
                started_at: attempt.started_at,
                reason: attempt.reason.as_str().to_owned(),
                outcome: attempt.outcome.as_str().to_owned(),
                error_code: attempt.error_code,
                http_status: attempt.http_status,
                duration_ms: attempt.duration_ms,
            })
            .collect(),
    })
}
