//! Every error the admin API answers, mapped to a status code and a stable snake_case code
//! in one place. Internal details are logged, never returned.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokenvisor_provider::EndpointError;
use tokenvisor_supervisor::{AdminError, AuthorizationError, TokenError};
use utoipa::ToSchema;

/// The body of every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Every error code the admin API answers, with what it means and what to do. The
/// OpenAPI document declares `error.code` as this enum; a code missing here is a panic in
/// debug builds (so every test through the binary checks it) and the README lists them.
pub const ERROR_CODES: &[(&str, &str)] = &[
    (
        "unauthorized",
        "401: no valid admin token or API key (or it is revoked or expired); send `Authorization: Bearer <token>`",
    ),
    (
        "forbidden",
        "403: the API key's scopes or tenant/integration restrictions do not cover this (it says nothing about whether the resource exists)",
    ),
    (
        "too_many_attempts",
        "429: too many failed authentications from this address or key prefix; retry after `Retry-After`",
    ),
    (
        "keys_unavailable",
        "501: this store encrypts nothing (the in-memory store): there are no keys to rotate",
    ),
    (
        "rotation_running",
        "409: a key rotation already runs in this process; follow it with `GET /v1/keys/rotation`",
    ),
    (
        "access_unavailable",
        "501: this store keeps no API keys or audit trail (the in-memory store)",
    ),
    (
        "not_found",
        "404: the connection, integration or authorization does not exist",
    ),
    ("invalid_id", "400: a path id is not a UUID"),
    (
        "invalid_input",
        "422: a field of the body is invalid; the message names it",
    ),
    ("malformed_json", "400: the body is not JSON"),
    ("unsupported_media_type", "415: send `Content-Type: application/json`"),
    ("payload_too_large", "413: the body is above the limit"),
    (
        "invalid_query",
        "400: a query parameter is invalid; the message names it",
    ),
    ("invalid_cursor", "400: the cursor is not one this API returned"),
    (
        "configured_endpoint",
        "409: the webhook endpoint comes from the configuration; change it there",
    ),
    (
        "webhooks_unavailable",
        "501: webhook delivery is not running in this process",
    ),
    ("bad_request", "400: the request could not be read"),
    (
        "integration_in_use",
        "409: the integration still has connections; delete them or ask to cascade",
    ),
    ("conflict", "409: it exists already"),
    (
        "needs_reauth",
        "409: the tenant must authorize again (start an authorization)",
    ),
    ("disabled", "409: the connection is deactivated (activate it)"),
    (
        "provider_unavailable",
        "502: the provider failed transiently; retry after `Retry-After`",
    ),
    (
        "integration_misconfigured",
        "502: the provider refused the integration (client id/secret, redirect URI); fix it",
    ),
    (
        "unknown_provider",
        "422: the provider is not one of zoho, zoho_desk, servicedesk_plus, atlassian, generic",
    ),
    ("missing_token_url", "422: a generic integration needs a token_url"),
    ("invalid_url", "422: a URL is not valid"),
    (
        "insecure_url",
        "422: an http:// URL; allow its host with TOKENVISOR_ALLOW_INSECURE_ENDPOINTS (restart needed)",
    ),
    (
        "unknown_data_center",
        "422: the data centre is not one the provider has",
    ),
    ("invalid_settings", "422: the integration settings are not valid"),
    (
        "authorization_denied",
        "400: the tenant or the provider denied the authorization",
    ),
    (
        "unknown_state",
        "400: the callback's state is unknown or was used already",
    ),
    ("expired_state", "400: the authorization expired; start a new one"),
    ("invalid_request", "422: the authorization request is not valid"),
    (
        "code_exchange_failed",
        "502: the provider did not accept the authorization code; start again",
    ),
    (
        "connection_failed",
        "409/422: the authorized tokens could not be stored for the connection",
    ),
    (
        "no_api_base",
        "422: the connection has no API base; set the integration's api_base_url setting",
    ),
    ("invalid_path", "400: the proxied path leaves the API base"),
    ("upstream_unreachable", "502: the provider's API could not be reached"),
    ("store_unavailable", "503: the database is unavailable; retry later"),
    ("shutting_down", "503: the instance is shutting down; retry on another"),
    (
        "owner_unavailable",
        "503: the replica owning the connection is unreachable; retry after `Retry-After`",
    ),
    ("timeout", "504: the operation did not finish in time; retry"),
    (
        "not_ready",
        "503: not ready (starting, or not serving its share of partitions yet)",
    ),
    (
        "cluster_disabled",
        "404: this instance does not share the work with replicas",
    ),
    ("metrics_disabled", "404: metrics are not exported on this instance"),
    (
        "internal",
        "500: a bug or an unexpected failure; details are in the logs",
    ),
];

/// The `error.code` schema: a string out of [`ERROR_CODES`].
fn error_code_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(ERROR_CODES.iter().map(|(code, _)| *code)))
        .description(Some("Stable snake_case code; see the README's error code list."))
        .build()
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code (`not_found`, `needs_reauth`, `invalid_input`...).
    #[schema(schema_with = error_code_schema)]
    pub code: String,
    /// Human-readable message; never contains a secret.
    pub message: String,
}

/// An error answer of the admin API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            ERROR_CODES.iter().any(|(known, _)| *known == code),
            "error code {code:?} is not in ERROR_CODES (document it)"
        );
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 422 `invalid_input` about one field.
    pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            format!("invalid {field}: {reason}"),
        )
    }

    /// 404 `not_found`.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token or API key is required (bearer)",
        )
    }

    /// 403 `forbidden`: the key may not do this (or see whether it exists).
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this API key's scopes or restrictions do not allow this",
        )
    }

    /// 429 `too_many_attempts` with `Retry-After: seconds`.
    pub fn too_many_attempts(seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                "too many failed authentications; retry later",
            )
        }
    }

    /// 500 `internal`: `detail` is logged, the caller sees a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "admin request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    /// 503 `store_unavailable`: `detail` is logged.
    pub fn store_unavailable(detail: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %detail, "store unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database is unavailable; retry later",
        )
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message (never a secret).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        let code = error.code();
        match error {
            TokenError::NotFound => Self::not_found("connection"),
            TokenError::NeedsReauthorization { .. } | TokenError::Disabled => {
                Self::new(StatusCode::CONFLICT, code, error.to_string())
            }
            TokenError::ProviderUnavailable { retry_at, .. } => {
                let seconds = (retry_at - chrono::Utc::now()).num_seconds().max(1) as u64;
                Self {
                    retry_after: Some(seconds),
                    ..Self::new(StatusCode::BAD_GATEWAY, code, error.to_string())
                }
            }
            TokenError::IntegrationMisconfigured { .. } => Self::new(StatusCode::BAD_GATEWAY, code, error.to_string()),
            TokenError::StoreUnavailable(detail) => Self::store_unavailable(detail),
            TokenError::ShuttingDown => Self::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string()),
            TokenError::Timeout { .. } => Self {
                retry_after: Some(1),
                ..Self::new(StatusCode::GATEWAY_TIMEOUT, code, error.to_string())
            },
            TokenError::Invalid { field, reason } => Self::invalid(field, reason),
            TokenError::OwnerUnavailable { .. } => Self {
                retry_after: Some(1),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string())
            },
            TokenError::Internal(detail) => Self::internal(detail),
            // `TokenError` is non-exhaustive: a kind added later is a 500 until it is mapped.
            other => Self::internal(other),
        }
    }
}

impl From<EndpointError> for ApiError {
    fn from(error: EndpointError) -> Self {
        let code = match &error {
            EndpointError::UnknownProvider(_) => "unknown_provider",
            EndpointError::MissingTokenUrl => "missing_token_url",
            EndpointError::InvalidUrl { .. } => "invalid_url",
            EndpointError::InsecureUrl { .. } => "insecure_url",
            EndpointError::UnknownDataCenter(_) => "unknown_data_center",
            EndpointError::InvalidSettings(_) => "invalid_settings",
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, error.to_string())
    }
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::Invalid { field, reason } => Self::invalid(field, reason),
            AdminError::Endpoint(endpoint) => endpoint.into(),
            AdminError::NotFound(what) => Self::not_found(what),
            AdminError::Conflict(what) => {
                Self::new(StatusCode::CONFLICT, "conflict", format!("already exists: {what}"))
            }
            AdminError::InUse { .. } => Self::new(StatusCode::CONFLICT, "integration_in_use", error.to_string()),
            AdminError::Store(store) => Self::store_unavailable(store),
            AdminError::Token(token) => token.into(),
            other => Self::internal(other),
        }
    }
}

impl From<AuthorizationError> for ApiError {
    fn from(error: AuthorizationError) -> Self {
        let code = error.code();
        match error {
            AuthorizationError::NotFound(what) => Self::not_found(what),
            AuthorizationError::Integration(endpoint) => endpoint.into(),
            AuthorizationError::Store(store) => Self::store_unavailable(store),
            AuthorizationError::Admin(admin) => admin.into(),
            AuthorizationError::Invalid(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, error.to_string()),
            AuthorizationError::Exchange { .. } => Self::new(StatusCode::BAD_GATEWAY, code, error.to_string()),
            AuthorizationError::Denied { .. } | AuthorizationError::UnknownState | AuthorizationError::ExpiredState => {
                Self::new(StatusCode::BAD_REQUEST, code, error.to_string())
            }
            other => Self::internal(other),
        }
    }
}

impl From<tokenvisor_store::StoreError> for ApiError {
    fn from(error: tokenvisor_store::StoreError) -> Self {
        Self::store_unavailable(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_map_to_the_documented_statuses() {
        let cases = [
            (TokenError::NotFound, StatusCode::NOT_FOUND, "not_found"),
            (
                TokenError::NeedsReauthorization {
                    code: "invalid_grant".into(),
                    message: "revoked".into(),
                },
                StatusCode::CONFLICT,
                "needs_reauth",
            ),
            (TokenError::Disabled, StatusCode::CONFLICT, "disabled"),
            (
                TokenError::StoreUnavailable("db down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
            ),
            (
                TokenError::Internal("boom".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ];
        for (error, status, code) in cases {
            let api: ApiError = error.into();
            assert_eq!((api.status(), api.code()), (status, code));
        }
    }

    #[test]
    fn internal_details_are_not_returned() {
        let api = ApiError::from(TokenError::Internal("secret detail".into()));
        assert!(!api.message.contains("secret detail"));
        let api = ApiError::from(TokenError::StoreUnavailable("postgres://user:pw@host".into()));
        assert!(!api.message.contains("pw"));
    }
}
