//! The authorization endpoints (RFC 6749 §4.1): `GET /oauth/authorize` (Generic,
//! NonRotating, Rotating), `GET /authorize` (Atlassian), `GET /zoho/{dc}/oauth/v2/auth`
//! (Zoho). The fake auto-approves on behalf of the authorizing user and redirects with a
//! code at once.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use tokio::time::Instant;

use crate::config::{AUTHORIZATION_CODE_LIFETIME, Dialect};
use crate::server::{Params, ServerState, ZOHO_PREFIX, known_data_center, parse_form_params};
use crate::state::{CodeChallenge, DEFAULT_DATA_CENTER, PendingCode, default_scope, lock};

/// Atlassian's required `audience`.
const ATLASSIAN_AUDIENCE: &str = "api.atlassian.com";

/// The page shown instead of a redirect when the request cannot be trusted to redirect
/// (unknown client, missing or malformed `redirect_uri`).
fn error_page(message: &'static str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<!doctype html><title>Authorization error</title><h1>Authorization error</h1><p>{message}</p>"
        )),
    )
        .into_response()
}

/// Whether the fake accepts `uri` as a redirection endpoint: an absolute `http` or `https`
/// URL without a fragment (RFC 6749 §3.1.2).
fn is_valid_redirect_uri(uri: &str) -> bool {
    let lower = uri.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    rest.is_some_and(|rest| !rest.is_empty()) && !uri.contains('#')
}

/// A `302 Found` to `redirect_uri` with `pairs` added to its query.
fn redirect(redirect_uri: &str, pairs: &[(&str, &str)]) -> Response {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let separator = if !redirect_uri.contains('?') {
        "?"
    } else if redirect_uri.ends_with('?') || redirect_uri.ends_with('&') {
        ""
    } else {
        "&"
    };
    match HeaderValue::from_str(&format!("{redirect_uri}{separator}{query}")) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => error_page("redirect_uri is not a valid URL"),
    }
}

/// `GET /oauth/authorize` and Atlassian's `GET /authorize`.
pub(crate) async fn authorize(State(server_state): State<ServerState>, RawQuery(query): RawQuery) -> Response {
    authorize_at(&server_state, None, query.as_deref())
}

/// Zoho's `GET /zoho/{dc}/oauth/v2/auth`.
pub(crate) async fn zoho_authorize(
    State(server_state): State<ServerState>,
    Path(data_center): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(data_center) = known_data_center(&data_center) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    authorize_at(&server_state, Some(data_center), query.as_deref())
}

/// The PKCE challenge of the request: `Ok(None)` without one, `Err` when it is malformed.
fn code_challenge(params: &Params) -> Result<Option<CodeChallenge>, &'static str> {
    let challenge = params.get("code_challenge").filter(|challenge| !challenge.is_empty());
    match (challenge, params.get("code_challenge_method").map(String::as_str)) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err("code_challenge_method without code_challenge"),
        (Some(challenge), None | Some("plain")) => Ok(Some(CodeChallenge::Plain(challenge.clone()))),
        (Some(challenge), Some("S256")) => Ok(Some(CodeChallenge::S256(challenge.clone()))),
        (Some(_), Some(_)) => Err("transform algorithm not supported"),
    }
}

/// Handles an authorization request reaching the authorization endpoint (of Zoho data
/// centre `zoho_data_center`, for Zoho).
fn authorize_at(server_state: &ServerState, zoho_data_center: Option<&'static str>, query: Option<&str>) -> Response {
    let Ok(params) = parse_form_params(query.unwrap_or_default().as_bytes()) else {
        return error_page("a parameter was repeated");
    };
    if params.get("client_id") != Some(&server_state.credentials.client_id) {
        return error_page("unknown client_id");
    }
    let Some(redirect_uri) = params.get("redirect_uri").filter(|uri| is_valid_redirect_uri(uri)) else {
        return error_page("redirect_uri is missing or invalid");
    };
    let state_param = params.get("state").map(String::as_str);
    let with_state = |mut pairs: Vec<(&'static str, String)>| {
        if let Some(state_param) = state_param {
            pairs.push(("state", state_param.to_owned()));
        }
        pairs
    };
    let refuse = |error: &'static str, description: &'static str| {
        let pairs = with_state(vec![
            ("error", error.to_owned()),
            ("error_description", description.to_owned()),
        ]);
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(name, value)| (*name, value.as_str())).collect();
        redirect(redirect_uri, &pairs)
    };

    let mut state = lock(&server_state.shared);
    let (label, user_data_center) = state.authorizing_user();
    // Zoho China is separate: its users only sign in there, and nobody else does.
    if zoho_data_center.is_some_and(|data_center| (data_center == "cn") != (user_data_center == "cn")) {
        return error_page("this account does not exist in this data centre");
    }
    if state.take_authorization_denial() {
        return refuse("access_denied", "the user denied the request");
    }
    if params.get("response_type").map(String::as_str) != Some("code") {
        return refuse("unsupported_response_type", "only response_type=code is supported");
    }
    if matches!(server_state.dialect, Dialect::Atlassian { .. })
        && params.get("audience").map(String::as_str) != Some(ATLASSIAN_AUDIENCE)
    {
        return refuse("invalid_request", "audience must be api.atlassian.com");
    }
    let challenge = match code_challenge(&params) {
        Ok(challenge) => challenge,
        Err(description) => return refuse("invalid_request", description),
    };
    let scope = params
        .get("scope")
        .filter(|scope| !scope.trim().is_empty())
        .cloned()
        .unwrap_or_else(|| default_scope(server_state.dialect).to_owned());
    let offline = match server_state.dialect {
        Dialect::Zoho => {
            params.get("access_type").map(String::as_str) == Some("offline")
                && state.zoho_offline_consent(&label, params.get("prompt").map(String::as_str) == Some("consent"))
        }
        Dialect::Atlassian { .. } => scope.split_whitespace().any(|scope| scope == "offline_access"),
        Dialect::Generic | Dialect::NonRotating | Dialect::Rotating { .. } => true,
    };
    let data_center = if zoho_data_center.is_some() {
        user_data_center.clone()
    } else {
        DEFAULT_DATA_CENTER.to_owned()
    };
    let now = Instant::now();
    let code = state.issue_code(
        PendingCode {
            redirect_uri: redirect_uri.clone(),
            challenge,
            scope,
            label,
            data_center,
            offline,
            expires_at: now + AUTHORIZATION_CODE_LIFETIME,
        },
        now,
    );
    drop(state);

    let mut pairs = with_state(vec![("code", code)]);
    if zoho_data_center.is_some() {
        pairs.push(("location", user_data_center.clone()));
        pairs.push((
            "accounts-server",
            format!("{}{ZOHO_PREFIX}/{user_data_center}", server_state.base_url),
        ));
    }
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(name, value)| (*name, value.as_str())).collect();
    redirect(redirect_uri, &pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_must_be_absolute_http_urls_without_fragment() {
        assert!(is_valid_redirect_uri("https://app.example/callback"));
        assert!(is_valid_redirect_uri("http://127.0.0.1:8080/cb?x=1"));
        assert!(!is_valid_redirect_uri("https://"));
        assert!(!is_valid_redirect_uri("/callback"));
        assert!(!is_valid_redirect_uri("https://app.example/cb#fragment"));
        assert!(!is_valid_redirect_uri("javascript:alert(1)"));
    }

    #[test]
    fn redirects_append_to_an_existing_query() {
        let response = redirect("https://app.example/cb?tenant=a", &[("code", "c 1"), ("state", "s")]);
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://app.example/cb?tenant=a&code=c+1&state=s"
        );
        let response = redirect("https://app.example/cb", &[("code", "c")]);
        assert_eq!(response.headers()[header::LOCATION], "https://app.example/cb?code=c");
        let response = redirect("https://app.example/cb\n", &[("code", "c")]);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn code_challenges_default_to_plain_and_only_know_s256_besides() {
        let params = |pairs: &[(&str, &str)]| -> Params {
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect()
        };
        assert_eq!(code_challenge(&params(&[])), Ok(None));
        assert_eq!(
            code_challenge(&params(&[("code_challenge", "abc")])),
            Ok(Some(CodeChallenge::Plain("abc".to_owned())))
        );
        assert_eq!(
            code_challenge(&params(&[("code_challenge", "abc"), ("code_challenge_method", "S256")])),
            Ok(Some(CodeChallenge::S256("abc".to_owned())))
        );
        assert!(code_challenge(&params(&[("code_challenge", "abc"), ("code_challenge_method", "S512")])).is_err());
        assert!(code_challenge(&params(&[("code_challenge_method", "S256")])).is_err());
    }
}
