//! Bearer-token authentication of `/v1`: the presented token and the configured one are
//! compared in constant time (over their SHA-256 digests, so lengths leak nothing either).

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of a token.
pub(crate) fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Whether `presented` is the admin token, in constant time.
pub(crate) fn token_matches(expected_digest: &[u8; 32], presented: &[u8]) -> bool {
    digest(presented).ct_eq(expected_digest).into()
}

/// Rejects a request without `Authorization: Bearer <admin token>` with 401 before any
/// handler (or body parsing) runs.
pub(crate) async fn require_bearer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match presented {
        Some(token)
            if !token.is_empty()
                && state
                    .admin_token_digest
                    .as_deref()
                    .is_some_and(|digest| token_matches(digest, token.as_bytes())) =>
        {
            next.run(request).await
        }
        _ => ApiError::unauthorized().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let expected = digest(b"s3cret-token");
        assert!(token_matches(&expected, b"s3cret-token"));
        assert!(!token_matches(&expected, b"s3cret-toke"));
        assert!(!token_matches(&expected, b"s3cret-token "));
        assert!(!token_matches(&expected, b""));
    }
}
