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

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code (`not_found`, `needs_reauth`, `invalid_input`...).
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
            "a valid admin bearer token is required",
        )
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
