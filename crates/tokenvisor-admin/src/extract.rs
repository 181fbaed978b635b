//! Extractors whose rejections are [`ApiError`]s, so malformed input gets the same error
//! body as everything else.

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tokenvisor_core::ConnectionId;

/// A JSON body (`Content-Type: application/json`, within the body limit).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(error) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", error.body_text())
        }
        JsonRejection::JsonSyntaxError(error) => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", error.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        ),
        other => ApiError::new(other.status(), "bad_request", other.body_text()),
    }
}

/// A query string.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(error)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                error.body_text(),
            )),
            Err(other) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                other.body_text(),
            )),
        }
    }
}

/// The `{id}` of a connection route, checked against the caller's restrictions: a key
/// restricted to some tenants or integrations gets `403 forbidden` for a connection
/// outside them and for one that does not exist alike (unrestricted keys pass without a
/// lookup).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionPath(pub ConnectionId);

impl FromRequestParts<AppState> for ConnectionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", "missing connection id"))?;
        let id = raw
            .parse::<ConnectionId>()
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", "the connection id is not a UUID"))?;
        let principal = Principal::from_request_parts(parts, state).await?;
        authorize_connection(state, &principal, id).await?;
        Ok(Self(id))
    }
}

/// `403 forbidden` unless `principal` may act on connection `id` (see [`ConnectionPath`]).
pub(crate) async fn authorize_connection(
    state: &AppState,
    principal: &Principal,
    id: ConnectionId,
) -> Result<(), ApiError> {
    if !principal.is_restricted() {
        return Ok(());
    }
    match state.tokenvisor.store().get_connection(id).await? {
        Some(connection) => principal.check_connection(&connection),
        None => Err(ApiError::forbidden()),
    }
}

/// The caller, as the guard authenticated it.
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(ApiError::forbidden)
    }
}
