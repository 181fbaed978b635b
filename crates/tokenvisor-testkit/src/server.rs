//! The fake's HTTP routes. Every dialect serves `POST /oauth/revoke` and `GET /api/whoami`;
//! the others depend on the dialect:
//!
//! - Generic, NonRotating, Rotating: `POST /oauth/token`, `GET /oauth/authorize`.
//! - Atlassian: `POST /oauth/token` (JSON only), `GET /authorize`,
//!   `GET /oauth/token/accessible-resources`, `GET /ex/jira/{cloud_id}/rest/api/3/myself`.
//! - Zoho: `POST /zoho/{dc}/oauth/v2/token`, `POST /zoho/{dc}/oauth/v2/token/revoke`,
//!   `GET /zoho/{dc}/oauth/v2/auth`, `GET /zoho/api/crm/v8/users`.
//!
//! The authorization endpoints live in `authorize`, the protected APIs in `resource`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use tokio::time::Instant;

use crate::authorize::{authorize, zoho_authorize};
use crate::config::{Dialect, ZOHO_DATA_CENTERS, zoho_api_domain};
use crate::resource::{accessible_resources, echo, jira_myself, whoami, zoho_users};
use crate::state::{FamilyId, InjectedFailure, RefreshOutcome, SharedState, lock};

/// Path of the token endpoint (all dialects but Zoho).
pub(crate) const TOKEN_PATH: &str = "/oauth/token";
/// Path of the RFC 7009 revocation endpoint.
pub(crate) const REVOKE_PATH: &str = "/oauth/revoke";
/// Path of the protected API endpoint.
pub(crate) const API_PATH: &str = "/api/whoami";
/// Path of the authorization endpoint of the Generic, NonRotating and Rotating dialects.
pub(crate) const AUTHORIZE_PATH: &str = "/oauth/authorize";
/// Path of Atlassian's authorization endpoint.
pub(crate) const ATLASSIAN_AUTHORIZE_PATH: &str = "/authorize";
/// Path of Atlassian's accessible-resources endpoint.
pub(crate) const ACCESSIBLE_RESOURCES_PATH: &str = "/oauth/token/accessible-resources";
/// Prefix of every Zoho path; a data centre's accounts server is `{ZOHO_PREFIX}/{dc}`.
pub(crate) const ZOHO_PREFIX: &str = "/zoho";
/// Zoho's token endpoint, below an accounts server.
pub(crate) const ZOHO_TOKEN_SUFFIX: &str = "/oauth/v2/token";
/// Zoho's revocation endpoint, below an accounts server.
pub(crate) const ZOHO_REVOKE_SUFFIX: &str = "/oauth/v2/token/revoke";
/// Zoho's authorization endpoint, below an accounts server.
pub(crate) const ZOHO_AUTHORIZE_SUFFIX: &str = "/oauth/v2/auth";
/// Path of the fake Zoho CRM API.
pub(crate) const ZOHO_API_PATH: &str = "/zoho/api/crm/v8/users";

/// The path of the Jira gateway's `myself` endpoint for a cloud id.
pub(crate) fn jira_myself_path(cloud_id: &str) -> String {
    format!("/ex/jira/{cloud_id}/rest/api/3/myself")
}

/// Zoho's throttling message.
const ZOHO_THROTTLE_DESCRIPTION: &str =
    "You have made too many requests continuously. Please try again after some time.";

/// What the routes share.
#[derive(Clone)]
pub(crate) struct ServerState {
    pub shared: SharedState,
    pub credentials: Arc<ClientCredentials>,
    /// The dialect the fake was started with (it never changes).
    pub dialect: Dialect,
    /// `http://127.0.0.1:PORT`, for URLs the fake hands out (Zoho's `accounts-server`).
    pub base_url: Arc<str>,
}

/// The one client the fake accepts.
pub(crate) struct ClientCredentials {
    pub client_id: String,
    /// The secret it was started with.
    pub client_secret: String,
    /// The secret accepted since a rotation (the first one is refused from then on).
    pub rotated: std::sync::Mutex<Option<String>>,
    /// Token requests refused with `invalid_client`.
    pub refused: std::sync::atomic::AtomicU64,
}

impl ClientCredentials {
    pub fn new(client_id: String, client_secret: String) -> Self {
        Self {
            client_id,
            client_secret,
            rotated: std::sync::Mutex::new(None),
            refused: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The secret the token endpoint accepts now.
    pub fn current_secret(&self) -> String {
        self.rotated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| self.client_secret.clone())
    }
}

/// The fake's routes for its dialect.
pub(crate) fn router(server_state: ServerState) -> Router {
    let router = Router::new()
        .route(REVOKE_PATH, post(revoke))
        .route(API_PATH, get(whoami))
        .route("/api/echo/{*rest}", axum::routing::any(echo));
    let router = match server_state.dialect {
        Dialect::Generic | Dialect::NonRotating | Dialect::Rotating { .. } => router
            .route(TOKEN_PATH, post(token))
            .route(AUTHORIZE_PATH, get(authorize)),
        Dialect::Atlassian { .. } => router
            .route(TOKEN_PATH, post(token))
            .route(ATLASSIAN_AUTHORIZE_PATH, get(authorize))
            .route(ACCESSIBLE_RESOURCES_PATH, get(accessible_resources))
            .route("/ex/jira/{cloud_id}/rest/api/3/myself", get(jira_myself)),
        Dialect::Zoho => router
            .route(&format!("{ZOHO_PREFIX}/{{dc}}{ZOHO_TOKEN_SUFFIX}"), post(zoho_token))
            .route(&format!("{ZOHO_PREFIX}/{{dc}}{ZOHO_REVOKE_SUFFIX}"), post(zoho_revoke))
            .route(
                &format!("{ZOHO_PREFIX}/{{dc}}{ZOHO_AUTHORIZE_SUFFIX}"),
                get(zoho_authorize),
            )
            .route(ZOHO_API_PATH, get(zoho_users)),
    };
    router.with_state(server_state)
}

/// The static name of a Zoho data centre the fake serves, if `name` is one.
pub(crate) fn known_data_center(name: &str) -> Option<&'static str> {
    ZOHO_DATA_CENTERS
        .iter()
        .map(|(known, _)| *known)
        .find(|known| *known == name)
}

/// Request parameters, each present at most once.
pub(crate) type Params = HashMap<String, String>;

/// The media type of a request body, lowercased, without parameters.
fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// Parses a form or JSON body into parameters; the error is an `error_description`.
fn parse_params(headers: &HeaderMap, body: &[u8]) -> Result<Params, &'static str> {
    match content_type(headers).as_deref() {
        Some("application/json") => parse_json_params(body),
        None | Some("application/x-www-form-urlencoded") => parse_form_params(body),
        Some(_) => Err("unsupported content type"),
    }
}

/// Zoho reads request parameters: the query string and a form body. A body of another
/// type is not read at all.
fn parse_zoho_params(headers: &HeaderMap, query: Option<&str>, body: &[u8]) -> Result<Params, &'static str> {
    let mut params = parse_form_params(query.unwrap_or_default().as_bytes())?;
    if matches!(
        content_type(headers).as_deref(),
        None | Some("application/x-www-form-urlencoded")
    ) {
        for (name, value) in parse_form_params(body)? {
            match params.entry(name) {
                Entry::Occupied(_) => return Err("a parameter was repeated"),
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
            }
        }
    }
    Ok(params)
}

/// Parses `application/x-www-form-urlencoded` (a body or a query string).
pub(crate) fn parse_form_params(body: &[u8]) -> Result<Params, &'static str> {
    let mut params = Params::new();
    for (name, value) in form_urlencoded::parse(body) {
        match params.entry(name.into_owned()) {
            Entry::Occupied(_) => return Err("a parameter was repeated"),
            Entry::Vacant(slot) => {
                slot.insert(value.into_owned());
            }
        }
    }
    Ok(params)
}

fn parse_json_params(body: &[u8]) -> Result<Params, &'static str> {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(body) else {
        return Err("the body is not a JSON object");
    };
    let mut params = Params::new();
    for (name, value) in object {
        match value {
            serde_json::Value::String(text) => {
                params.insert(name, text);
            }
            serde_json::Value::Null => {}
            _ => return Err("parameters must be strings"),
        }
    }
    Ok(params)
}

/// Decodes `application/x-www-form-urlencoded` escapes (RFC 6749 §2.3.1 for Basic).
fn form_decode(encoded: &str) -> String {
    form_urlencoded::parse(format!("v={}", encoded.replace('&', "%26")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

/// `(client_id, client_secret)` from an HTTP Basic `Authorization` header, if one is sent.
/// `Err` means the header is a Basic one but malformed.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, ()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let Ok(value) = value.to_str() else {
        return Ok(None);
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| ())?;
    let decoded = String::from_utf8(decoded).map_err(|_| ())?;
    let (client_id, client_secret) = decoded.split_once(':').ok_or(())?;
    Ok(Some((form_decode(client_id), form_decode(client_secret))))
}

/// The headers of every token answer (RFC 6749 §5.1).
const NO_STORE: [(header::HeaderName, &str); 2] = [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")];

/// An RFC 6749 §5.2 error answer.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        NO_STORE,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tokenvisor-fake\""),
        );
    }
    response
}

fn invalid_request(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
}

/// Why client authentication failed.
#[derive(Debug, PartialEq, Eq)]
enum AuthFailure {
    /// Unknown or missing credentials, or a malformed Basic header: 401 `invalid_client`.
    InvalidClient,
    /// Basic and a body secret at once: 400 `invalid_request` (RFC 6749 §2.3).
    MultipleMethods,
}

/// Checks client authentication (HTTP Basic or body parameters, not both).
fn authenticate(headers: &HeaderMap, params: &Params, credentials: &ClientCredentials) -> Result<(), AuthFailure> {
    let basic = basic_credentials(headers).map_err(|()| AuthFailure::InvalidClient)?;
    let (client_id, client_secret) = match basic {
        Some((client_id, client_secret)) => {
            if params.contains_key("client_secret") {
                return Err(AuthFailure::MultipleMethods);
            }
            if params.get("client_id").is_some_and(|body_id| *body_id != client_id) {
                return Err(AuthFailure::InvalidClient);
            }
            (client_id, client_secret)
        }
        None => match (params.get("client_id"), params.get("client_secret")) {
            (Some(client_id), Some(client_secret)) => (client_id.clone(), client_secret.clone()),
            _ => return Err(AuthFailure::InvalidClient),
        },
    };
    if client_id != credentials.client_id || client_secret != credentials.current_secret() {
        return Err(AuthFailure::InvalidClient);
    }
    Ok(())
}

/// The answer to an injected failure.
fn injected_answer(failure: InjectedFailure) -> Response {
    let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match failure.body {
        serde_json::Value::Null => (status, Body::empty()).into_response(),
        serde_json::Value::String(text) => {
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        body => (status, axum::Json(body)).into_response(),
    };
    if let Some(retry_after) = failure.retry_after {
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Which token endpoint a request reached: decides the error shapes and answer fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// `POST /oauth/token` of the Generic, NonRotating and Rotating dialects.
    Standard,
    /// `POST /oauth/token` of the Atlassian dialect.
    Atlassian,
    /// The token endpoint of one Zoho data centre.
    Zoho(&'static str),
}

impl Flavour {
    fn data_center(self) -> Option<&'static str> {
        match self {
            Flavour::Zoho(data_center) => Some(data_center),
            Flavour::Standard | Flavour::Atlassian => None,
        }
    }
}

/// A token endpoint error, before it is dressed in the flavour's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenError {
    /// Malformed request.
    InvalidRequest(&'static str),
    /// Client authentication failed.
    InvalidClient,
    /// A grant type other than `refresh_token` and `authorization_code`.
    UnsupportedGrantType,
    /// The refresh token is unknown, revoked, reused or expired.
    InvalidRefreshToken(&'static str),
    /// The authorization code is unknown, used, expired, or its checks failed.
    InvalidCode(&'static str),
    /// Zoho's throttle refused the refresh.
    Throttled,
}

/// Renders a token endpoint error. `unauthorized_client` is Atlassian's alternative dialect
/// for refresh errors.
fn token_error(flavour: Flavour, error: TokenError, unauthorized_client: bool) -> Response {
    match (flavour, error) {
        (Flavour::Zoho(_), error) => {
            let body = match error {
                TokenError::InvalidRequest(_) => json!({"error": "invalid_request"}),
                TokenError::InvalidClient => json!({"error": "invalid_client"}),
                TokenError::UnsupportedGrantType => json!({"error": "unsupported_grant_type"}),
                TokenError::InvalidRefreshToken(_) | TokenError::InvalidCode(_) => json!({"error": "invalid_code"}),
                TokenError::Throttled => {
                    json!({"error": "Access Denied", "error_description": ZOHO_THROTTLE_DESCRIPTION})
                }
            };
            (StatusCode::OK, NO_STORE, axum::Json(body)).into_response()
        }
        (Flavour::Atlassian, TokenError::InvalidRefreshToken(_)) if unauthorized_client => {
            oauth_error(StatusCode::FORBIDDEN, "unauthorized_client", "refresh_token is invalid")
        }
        (Flavour::Atlassian, TokenError::InvalidRefreshToken(_)) => oauth_error(
            StatusCode::FORBIDDEN,
            "invalid_grant",
            "Unknown or invalid refresh token.",
        ),
        (Flavour::Atlassian, TokenError::InvalidCode(description)) => {
            oauth_error(StatusCode::FORBIDDEN, "invalid_grant", description)
        }
        (_, TokenError::InvalidRequest(description)) => invalid_request(description),
        (_, TokenError::InvalidClient) => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        ),
        (_, TokenError::UnsupportedGrantType) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only refresh_token and authorization_code are supported",
        ),
        (_, TokenError::InvalidRefreshToken(description) | TokenError::InvalidCode(description)) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
        }
        (_, TokenError::Throttled) => oauth_error(StatusCode::TOO_MANY_REQUESTS, "slow_down", "too many requests"),
    }
}

/// Decrements a family's in-flight refreshes when the request ends, even if the client
/// went away and the handler future was dropped.
struct InFlight {
    shared: SharedState,
    family_id: FamilyId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.shared).end_refresh(self.family_id);
    }
}

async fn token(State(server_state): State<ServerState>, headers: HeaderMap, body: Bytes) -> Response {
    let flavour = match server_state.dialect {
        Dialect::Atlassian { .. } => Flavour::Atlassian,
        _ => Flavour::Standard,
    };
    let parsed = parse_params(&headers, &body);
    token_request(&server_state, flavour, &headers, parsed).await
}

async fn zoho_token(
    State(server_state): State<ServerState>,
    Path(data_center): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(data_center) = known_data_center(&data_center) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let parsed = parse_zoho_params(&headers, query.as_deref(), &body);
    token_request(&server_state, Flavour::Zoho(data_center), &headers, parsed).await
}

/// The common path of every token request: counters, injected failures, latency, overlap
/// tracking, then the answer.
async fn token_request(
    server_state: &ServerState,
    flavour: Flavour,
    headers: &HeaderMap,
    parsed: Result<Params, &'static str>,
) -> Response {
    let presented_refresh_token = parsed
        .as_ref()
        .ok()
        .filter(|params| params.get("grant_type").map(String::as_str) == Some("refresh_token"))
        .and_then(|params| params.get("refresh_token"));
    let (failure, latency, in_flight) = {
        let mut state = lock(&server_state.shared);
        state.counters.token_requests += 1;
        let failure = state.take_failure();
        let mut latency = state.latency;
        let in_flight = presented_refresh_token
            .and_then(|refresh_token| state.begin_refresh(refresh_token))
            .map(|(family_id, family_latency)| {
                latency = latency.saturating_add(family_latency);
                InFlight {
                    shared: server_state.shared.clone(),
                    family_id,
                }
            });
        (failure, latency, in_flight)
    };
    if latency > Duration::ZERO {
        tokio::time::sleep(latency).await;
    }
    let response = answer_token_request(server_state, flavour, headers, parsed, failure);
    drop(in_flight);
    response
}

fn answer_token_request(
    server_state: &ServerState,
    flavour: Flavour,
    headers: &HeaderMap,
    parsed: Result<Params, &'static str>,
    failure: Option<InjectedFailure>,
) -> Response {
    if let Some(failure) = failure {
        return injected_answer(failure);
    }
    if flavour == Flavour::Atlassian && content_type(headers).as_deref() != Some("application/json") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            NO_STORE,
            axum::Json(json!({
                "error": "invalid_request",
                "error_description": "the token endpoint accepts application/json bodies only",
            })),
        )
            .into_response();
    }
    let unauthorized_client = lock(&server_state.shared).atlassian_unauthorized_client;
    let error = |error: TokenError| token_error(flavour, error, unauthorized_client);
    let params = match parsed {
        Ok(params) => params,
        Err(description) => return error(TokenError::InvalidRequest(description)),
    };
    if let Err(failure) = authenticate(headers, &params, &server_state.credentials) {
        server_state
            .credentials
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return error(match failure {
            AuthFailure::InvalidClient => TokenError::InvalidClient,
            AuthFailure::MultipleMethods => {
                TokenError::InvalidRequest("more than one client authentication method was used")
            }
        });
    }
    let answer = match params.get("grant_type").map(String::as_str) {
        Some("refresh_token") => refresh_grant(server_state, flavour, &params),
        Some("authorization_code") => code_grant(server_state, flavour, &params),
        Some(_) => Err(TokenError::UnsupportedGrantType),
        None => Err(TokenError::InvalidRequest("grant_type is missing")),
    };
    answer.unwrap_or_else(error)
}

/// The fields of a successful token answer.
struct TokenAnswer {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: u64,
    scope: String,
    data_center: String,
}

impl TokenAnswer {
    fn into_response(self, flavour: Flavour, include_expires_in: bool) -> Response {
        let mut answer = json!({
            "access_token": self.access_token,
            "token_type": "Bearer",
            "scope": self.scope,
        });
        if include_expires_in {
            answer["expires_in"] = json!(self.expires_in);
        }
        if let Some(refresh_token) = self.refresh_token {
            answer["refresh_token"] = json!(refresh_token);
        }
        if let Flavour::Zoho(_) = flavour {
            answer["api_domain"] = json!(zoho_api_domain(&self.data_center));
        }
        (StatusCode::OK, NO_STORE, axum::Json(answer)).into_response()
    }
}

fn refresh_grant(server_state: &ServerState, flavour: Flavour, params: &Params) -> Result<Response, TokenError> {
    let refresh_token = params
        .get("refresh_token")
        .ok_or(TokenError::InvalidRequest("refresh_token is missing"))?;
    let (outcome, include_expires_in) = {
        let mut state = lock(&server_state.shared);
        (
            state.refresh_at(refresh_token, flavour.data_center(), Instant::now()),
            state.include_expires_in,
        )
    };
    match outcome {
        RefreshOutcome::InvalidGrant(description) => Err(TokenError::InvalidRefreshToken(description)),
        RefreshOutcome::Throttled => Err(TokenError::Throttled),
        RefreshOutcome::Issued { lose_answer: true, .. } => {
            Ok((StatusCode::INTERNAL_SERVER_ERROR, Body::empty()).into_response())
        }
        RefreshOutcome::Issued {
            access_token,
            refresh_token,
            expires_in,
            scope,
            data_center,
            lose_answer: false,
        } => Ok(TokenAnswer {
            access_token,
            refresh_token,
            expires_in,
            scope,
            data_center,
        }
        .into_response(flavour, include_expires_in)),
    }
}

fn code_grant(server_state: &ServerState, flavour: Flavour, params: &Params) -> Result<Response, TokenError> {
    let code = params
        .get("code")
        .ok_or(TokenError::InvalidRequest("code is missing"))?;
    let (outcome, include_expires_in) = {
        let mut state = lock(&server_state.shared);
        (
            state.exchange_code(
                code,
                params.get("redirect_uri").map(String::as_str),
                params.get("code_verifier").map(String::as_str),
                flavour.data_center(),
                Instant::now(),
            ),
            state.include_expires_in,
        )
    };
    let grant = outcome.map_err(TokenError::InvalidCode)?;
    Ok(TokenAnswer {
        access_token: grant.access_token,
        refresh_token: grant.refresh_token,
        expires_in: grant.expires_in,
        scope: grant.scope,
        data_center: grant.data_center,
    }
    .into_response(flavour, include_expires_in))
}

async fn revoke(State(server_state): State<ServerState>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match parse_params(&headers, &body) {
        Ok(params) => params,
        Err(description) => return invalid_request(description),
    };
    let Some(token) = params.get("token") else {
        return invalid_request("token is missing");
    };
    lock(&server_state.shared).revoke_token(token);
    StatusCode::OK.into_response()
}

/// Zoho's revocation: `POST {accounts}/oauth/v2/token/revoke?token=...` (a form body works
/// too). Answers 200 `{"status":"success"}` whether the token was known or not; 200
/// `{"error":"invalid_request"}` without a token.
async fn zoho_revoke(
    State(server_state): State<ServerState>,
    Path(data_center): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(data_center) = known_data_center(&data_center) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let token = parse_zoho_params(&headers, query.as_deref(), &body)
        .ok()
        .and_then(|mut params| params.remove("token"));
    let Some(token) = token else {
        return (StatusCode::OK, axum::Json(json!({"error": "invalid_request"}))).into_response();
    };
    lock(&server_state.shared).revoke_token_at(&token, Some(data_center));
    (StatusCode::OK, axum::Json(json!({"status": "success"}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).expect("valid header"));
        headers
    }

    #[test]
    fn form_bodies_with_a_repeated_parameter_are_refused() {
        let headers = headers_with(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        assert!(parse_params(&headers, b"a=1&a=2").is_err());
        let params = parse_params(&headers, b"grant_type=refresh_token&refresh_token=rt%2Bx").expect("valid form");
        assert_eq!(params["refresh_token"], "rt+x");
    }

    #[test]
    fn json_bodies_accept_only_string_parameters() {
        let headers = headers_with(header::CONTENT_TYPE, "application/json; charset=utf-8");
        let params = parse_params(&headers, br#"{"grant_type":"refresh_token","scope":null}"#).expect("valid json");
        assert_eq!(params["grant_type"], "refresh_token");
        assert!(!params.contains_key("scope"));
        assert!(parse_params(&headers, br#"{"a":1}"#).is_err());
        assert!(parse_params(&headers, b"[]").is_err());
        assert!(parse_params(&headers, b"not json").is_err());
    }

    #[test]
    fn basic_credentials_are_decoded_and_unescaped() {
        let encoded = STANDARD.encode("my%20id:s%3Acret");
        let headers = headers_with(header::AUTHORIZATION, &format!("basic {encoded}"));
        assert_eq!(
            basic_credentials(&headers),
            Ok(Some(("my id".to_owned(), "s:cret".to_owned())))
        );
        let bearer = headers_with(header::AUTHORIZATION, "Bearer at_x");
        assert_eq!(basic_credentials(&bearer), Ok(None));
        let broken = headers_with(header::AUTHORIZATION, "Basic !!!");
        assert_eq!(basic_credentials(&broken), Err(()));
    }

    #[test]
    fn client_authentication_uses_basic_or_the_body_but_not_both() {
        let credentials = ClientCredentials::new("id".to_owned(), "secret".to_owned());
        let basic = headers_with(
            header::AUTHORIZATION,
            &format!("Basic {}", STANDARD.encode("id:secret")),
        );
        let body_id: Params = [("client_id".to_owned(), "id".to_owned())].into();
        assert_eq!(authenticate(&basic, &body_id, &credentials), Ok(()));
        let body_secret: Params = [("client_secret".to_owned(), "secret".to_owned())].into();
        assert_eq!(
            authenticate(&basic, &body_secret, &credentials),
            Err(AuthFailure::MultipleMethods)
        );
        let other_id: Params = [("client_id".to_owned(), "other".to_owned())].into();
        assert_eq!(
            authenticate(&basic, &other_id, &credentials),
            Err(AuthFailure::InvalidClient)
        );
        assert_eq!(
            authenticate(&HeaderMap::new(), &body_id, &credentials),
            Err(AuthFailure::InvalidClient)
        );
        let in_body: Params = [
            ("client_id".to_owned(), "id".to_owned()),
            ("client_secret".to_owned(), "secret".to_owned()),
        ]
        .into();
        assert_eq!(authenticate(&HeaderMap::new(), &in_body, &credentials), Ok(()));
    }

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds() {
        let response = injected_answer(InjectedFailure {
            status: 429,
            body: json!({"error": "slow_down"}),
            retry_after: Some(Duration::from_millis(1500)),
        });
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn out_of_range_injected_statuses_become_500() {
        let response = injected_answer(InjectedFailure {
            status: 42,
            body: serde_json::Value::Null,
            retry_after: None,
        });
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
