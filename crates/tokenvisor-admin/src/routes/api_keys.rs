//! `/v1/api-keys`: scoped API keys, created (the key shown once), listed (never the key)
//! and revoked; `/v1/audit`: the audit trail. Both need `admin` (see `auth::route_need`).

use crate::AppState;
use crate::audit::AuditSubject;
use crate::auth::{Scope, generate_key, key_hash};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::find_integration;
use crate::views::{ApiKeyList, ApiKeyView, AuditEventView, AuditList, AuditQuery, CreateApiKey, CreatedApiKey};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokenvisor_core::TenantId;
use tokenvisor_store::sql::{AccessStore, ApiKeyRecord, AuditFilter};

fn access(state: &AppState) -> Result<AccessStore, ApiError> {
    state.tokenvisor.store().access().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "access_unavailable",
            "this store keeps no API keys or audit trail",
        )
    })
}

fn view(record: &ApiKeyRecord) -> ApiKeyView {
    let now = chrono::Utc::now();
    let status = if record.revoked_at.is_some() {
        "revoked"
    } else if record.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    };
    ApiKeyView {
        id: record.id.parse().unwrap_or_default(),
        name: record.name.clone(),
        prefix: record.prefix.clone(),
        scopes: record.scopes.clone(),
        tenants: record.tenants.clone(),
        integrations: record.integrations.iter().filter_map(|i| i.parse().ok()).collect(),
        status: status.to_owned(),
        created_at: record.created_at,
        expires_at: record.expires_at,
        revoked_at: record.revoked_at,
    }
}

/// Creates an API key: the answer is the only time the key is shown.
#[utoipa::path(
    post, path = "/v1/api-keys", tag = "api-keys",
    operation_id = "create_api_key",
    request_body = CreateApiKey,
    responses(
        (status = 201, description = "created; `key` is shown this once", body = CreatedApiKey),
        (status = 404, description = "`not_found`: an unknown integration", body = ErrorBody),
        (status = 501, description = "`access_unavailable`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateApiKey>,
) -> Result<Response, ApiError> {
    let access = access(&state)?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::invalid("name", "must be 1 to 128 characters"));
    }
    if body.scopes.is_empty() {
        return Err(ApiError::invalid(
            "scopes",
            "give at least one of admin, operate, tokens:read",
        ));
    }
    let mut scopes = Vec::new();
    for scope in &body.scopes {
        let parsed = Scope::parse(scope)
            .ok_or_else(|| ApiError::invalid("scopes", "each must be admin, operate or tokens:read"))?;
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
        if parsed == Scope::Admin && (body.tenants.is_some() || body.integrations.is_some()) {
            return Err(ApiError::invalid(
                "scopes",
                "admin cannot be restricted to tenants or integrations (it manages keys)",
            ));
        }
    }
    let mut tenants = Vec::new();
    for tenant in body.tenants.unwrap_or_default() {
        let tenant = TenantId::parse(tenant).map_err(|error| ApiError::invalid("tenants", error))?;
        tenants.push(tenant.to_string());
    }
    let mut integrations = Vec::new();
    for integration in body.integrations.unwrap_or_default() {
        let found = find_integration(state.tokenvisor.store().as_ref(), &integration).await?;
        integrations.push(found.id.to_string());
    }
    if let Some(at) = body.expires_at
        && at <= chrono::Utc::now()
    {
        return Err(ApiError::invalid("expires_at", "must be in the future"));
    }
    let (prefix, key) = generate_key();
    let record = ApiKeyRecord {
        id: uuid::Uuid::now_v7().to_string(),
        name,
        prefix,
        secret_hash: key_hash(&key),
        scopes,
        tenants,
        integrations,
        created_at: chrono::Utc::now(),
        expires_at: body.expires_at,
        revoked_at: None,
    };
    access.insert_api_key(&record).await?;
    tracing::info!(api_key.id = %record.id, api_key.prefix = %record.prefix, "api key created");
    let mut response = (
        StatusCode::CREATED,
        Json(CreatedApiKey {
            key,
            api_key: view(&record),
        }),
    )
        .into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response.extensions_mut().insert(AuditSubject {
        target: Some(format!("api-keys:{}", record.id)),
        ..AuditSubject::default()
    });
    Ok(response)
}

/// Every API key, oldest first: never the key, only its prefix.
#[utoipa::path(
    get, path = "/v1/api-keys", tag = "api-keys",
    operation_id = "list_api_keys",
    responses(
        (status = 200, body = ApiKeyList),
        (status = 501, description = "`access_unavailable`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<ApiKeyList>, ApiError> {
    let keys = access(&state)?.list_api_keys().await?;
    Ok(Json(ApiKeyList {
        items: keys.iter().map(view).collect(),
    }))
}

/// Revokes an API key: refused from the next request on, on every replica.
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    operation_id = "revoke_api_key",
    params(("id" = uuid::Uuid, Path, description = "the key's id")),
    responses(
        (status = 204, description = "revoked"),
        (status = 404, body = ErrorBody),
        (status = 501, description = "`access_unavailable`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id: uuid::Uuid = id
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", "the key id is not a UUID"))?;
    if !access(&state)?
        .revoke_api_key(&id.to_string(), chrono::Utc::now())
        .await?
    {
        return Err(ApiError::not_found("api key"));
    }
    tracing::info!(api_key.id = %id, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The audit trail, newest first: token reads, proxied calls and changes.
#[utoipa::path(
    get, path = "/v1/audit", tag = "api-keys",
    operation_id = "list_audit_events",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditList),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 501, description = "`access_unavailable`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn audit(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit must be 1 to 1000",
        ));
    }
    let filter = AuditFilter {
        connection_id: query.connection,
        tenant_id: query.tenant,
        key_id: query.key,
        before: query.cursor,
        limit: limit + 1,
    };
    let mut events = access(&state)?.list_audit_events(&filter).await?;
    let next_cursor = if events.len() as u64 > limit {
        events.truncate(limit as usize);
        events.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(Json(AuditList {
        items: events
            .into_iter()
            .map(|e| AuditEventView {
                id: e.id,
                at: e.at,
                action: e.action,
                request: e.request,
                status: e.status,
                key_id: e.key_id,
                connection_id: e.connection_id,
                tenant_id: e.tenant_id,
                target: e.target,
                caller_address: e.caller_address,
                trace_id: e.trace_id,
                status_before: e.status_before,
                status_after: e.status_after,
            })
            .collect(),
        next_cursor,
    }))
}
