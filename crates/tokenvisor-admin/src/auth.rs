//! Who may call `/v1`, and what for — decided in one place, [`guard`], for every route:
//!
//! 1. **Throttle**: a client address (or an API key prefix) over its allowance of failed
//!    authentications is answered `429 too_many_attempts` with `Retry-After` before its
//!    credentials are looked at ([`Throttle`], GCRA from `governor`).
//! 2. **Authenticate**: the configured admin token (compared in constant time, over
//!    SHA-256 digests) is an `admin` key; an API key `tvk_<prefix>_<secret>` is looked up
//!    by its prefix and its SHA-256 compared in constant time; a revoked or expired key is
//!    refused at once (no cache: every request reads the key's row). Anything else is
//!    `401 unauthorized` and counts as a failure.
//! 3. **Authorize**: [`route_need`] says what each route needs ([`Need`]); a key without
//!    it gets `403 forbidden`. A route missing from the table needs `admin`.
//! 4. **Audit**: token reads, proxied calls and every change are handed to the audit
//!    trail (see [`crate::audit`]) with the key id, the caller's address and the trace id.
//!
//! A key's tenant and integration restrictions are checked where the connection is
//! resolved ([`Principal::check_connection`], used by the connection extractors), so a
//! key outside them gets the same `403 forbidden` for a connection that exists and one
//! that does not.

use crate::AppState;
use crate::audit::{AuditSubject, Recorded};
use crate::error::ApiError;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokenvisor_core::{Connection, IntegrationId};
use tokenvisor_store::sql::ApiKeyRecord;

/// The start of every API key.
pub(crate) const KEY_PREFIX: &str = "tvk_";

/// SHA-256 of a token.
pub(crate) fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Whether `presented` is the admin token, in constant time.
pub(crate) fn token_matches(expected_digest: &[u8; 32], presented: &[u8]) -> bool {
    digest(presented).ct_eq(expected_digest).into()
}

/// SHA-256 of an API key, lowercase hex (what `tokenvisor_api_keys` stores).
pub(crate) fn key_hash(key: &str) -> String {
    digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `tvk_<prefix>_<secret>` → `<prefix>`.
pub(crate) fn key_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (prefix, secret) = rest.split_once('_')?;
    (!prefix.is_empty() && prefix.len() <= 32 && !secret.is_empty()).then_some(prefix)
}

/// A scope an API key can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Everything, key management included.
    Admin,
    /// Connections and integrations: create, list, show, change, delete; no token reads,
    /// no proxy.
    Operate,
    /// The token and proxy endpoints only.
    TokensRead,
}

impl Scope {
    /// Every scope, by name.
    pub(crate) const ALL: [(&'static str, Scope); 3] = [
        ("admin", Scope::Admin),
        ("operate", Scope::Operate),
        ("tokens:read", Scope::TokensRead),
    ];

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, scope)| *scope)
    }
}

/// What a route needs of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// `admin`: API keys, the audit trail, webhooks, the cluster, the event stream.
    Admin,
    /// `operate` (or `admin`): connections and integrations, read and managed.
    Operate,
    /// `operate` without tenant or integration restrictions (or `admin`): integration
    /// changes (an integration is shared by every tenant).
    OperateEverywhere,
    /// `tokens:read` (or `admin`): a token handed out, a call proxied.
    Tokens,
    /// Any valid key (unknown routes, answered 404).
    Authenticated,
}

/// Which routes need what: the one table every request is checked against (paths below
/// `/v1`, as routed). A route missing here needs `admin`.
pub(crate) fn route_need(method: &Method, route: &str) -> Need {
    let route = route.split_once("/v1").map_or(route, |(_, rest)| rest);
    let read = *method == Method::GET;
    match route {
        "/api-keys" | "/api-keys/{id}" | "/audit" | "/events" | "/cluster" | "/cluster/forward" | "/keys/rotate"
        | "/keys/rotation" => Need::Admin,
        r if r.starts_with("/webhooks/") => Need::Admin,
        "/connections/{id}/token"
        | "/connections/{id}/token/rejected"
        | "/connections/{id}/proxy/{*path}"
        | "/tenants/{tenant}/connections/{integration}/{key}/token"
        | "/tenants/{tenant}/connections/{integration}/{key}/token/rejected"
        | "/tenants/{tenant}/connections/{integration}/{key}/proxy/{*path}" => Need::Tokens,
        "/integrations" | "/integrations/{integration}" if read => Need::Operate,
        "/integrations" | "/integrations/{integration}" => Need::OperateEverywhere,
        "/connections"
        | "/connections/{id}"
        | "/connections/{id}/refresh"
        | "/connections/{id}/deactivate"
        | "/connections/{id}/activate"
        | "/connections/{id}/history"
        | "/tenants/{tenant}/connections"
        | "/tenants/{tenant}/connections/{integration}/{key}"
        | "/tenants/{tenant}/connections/{integration}/{key}/refresh"
        | "/tenants/{tenant}/connections/{integration}/{key}/deactivate"
        | "/tenants/{tenant}/connections/{integration}/{key}/activate"
        | "/tenants/{tenant}/connections/{integration}/{key}/history"
        | "/authorizations" => Need::Operate,
        _ => Need::Admin,
    }
}

/// The caller of a request, as authenticated (in the request's extensions).
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// The API key's id; `admin` for the configured admin token, `external` when the host
    /// application authenticates.
    pub(crate) key_id: String,
    scopes: Vec<Scope>,
    /// `None`: every tenant.
    tenants: Option<HashSet<String>>,
    /// `None`: every integration.
    integrations: Option<HashSet<IntegrationId>>,
}

impl Principal {
    /// The configured admin token (or a host-authenticated caller): everything.
    pub(crate) fn admin(key_id: &str) -> Self {
        Self {
            key_id: key_id.to_owned(),
            scopes: vec![Scope::Admin],
            tenants: None,
            integrations: None,
        }
    }

    fn of_key(record: &ApiKeyRecord) -> Self {
        let tenants: HashSet<String> = record.tenants.iter().cloned().collect();
        let integrations: HashSet<IntegrationId> = record.integrations.iter().filter_map(|i| i.parse().ok()).collect();
        Self {
            key_id: record.id.clone(),
            scopes: record.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
            tenants: (!record.tenants.is_empty()).then_some(tenants),
            integrations: (!record.integrations.is_empty()).then_some(integrations),
        }
    }

    /// Whether it is limited to some tenants or integrations.
    pub(crate) fn is_restricted(&self) -> bool {
        self.tenants.is_some() || self.integrations.is_some()
    }

    fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether it may call a route that needs `need`.
    pub(crate) fn satisfies(&self, need: Need) -> bool {
        if self.has(Scope::Admin) {
            return true;
        }
        match need {
            Need::Admin => false,
            Need::Operate => self.has(Scope::Operate),
            Need::OperateEverywhere => self.has(Scope::Operate) && !self.is_restricted(),
            Need::Tokens => self.has(Scope::TokensRead),
            Need::Authenticated => true,
        }
    }

    /// Whether it may act on this tenant (at all).
    pub(crate) fn allows_tenant(&self, tenant: &str) -> bool {
        self.tenants.as_ref().is_none_or(|tenants| tenants.contains(tenant))
    }

    /// Whether it may act on this integration (at all).
    pub(crate) fn allows_integration(&self, integration: IntegrationId) -> bool {
        self.integrations
            .as_ref()
            .is_none_or(|integrations| integrations.contains(&integration))
    }

    /// Whether it may see this connection.
    pub(crate) fn allows(&self, connection: &Connection) -> bool {
        self.allows_tenant(connection.tenant_id.as_str()) && self.allows_integration(connection.integration_id)
    }

    /// `403 forbidden` unless it may act on this connection.
    pub(crate) fn check_connection(&self, connection: &Connection) -> Result<(), ApiError> {
        if self.allows(connection) {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }

    /// The only tenant it may act on, when there is exactly one.
    pub(crate) fn single_tenant(&self) -> Option<&str> {
        match &self.tenants {
            Some(tenants) if tenants.len() == 1 => tenants.iter().next().map(String::as_str),
            _ => None,
        }
    }
}

/// Failed authentications per client address and per API key prefix: each may fail
/// `per_minute` times a minute (a burst of as many, then one more every `60/per_minute`
/// seconds); past that, requests from it are refused `429` before their credentials are
/// checked until it may fail again. Successes cost nothing. Addresses are the TCP peer
/// (a proxy in front makes every client one address: raise the limit there).
#[derive(Debug)]
pub(crate) struct Throttle {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
    /// Who is refused until when.
    blocked: Mutex<HashMap<String, Instant>>,
}

impl Throttle {
    /// `per_minute` 0: no limit.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            clock: DefaultClock::default(),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// How long `who` is still refused, if it is.
    pub(crate) fn refused_for(&self, who: &[String]) -> Option<Duration> {
        let blocked = self.blocked.lock().ok()?;
        let now = Instant::now();
        who.iter()
            .filter_map(|key| blocked.get(key))
            .filter(|until| **until > now)
            .map(|until| *until - now)
            .max()
    }

    /// Counts a failure of each of `who`; how long the caller is refused now, if its
    /// allowance is spent.
    pub(crate) fn fail(&self, who: &[String]) -> Option<Duration> {
        let limiter = self.limiter.as_ref()?;
        let mut longest: Option<Duration> = None;
        for key in who {
            if let Err(not_until) = limiter.check_key(key) {
                let wait = not_until.wait_time_from(self.clock.now());
                if let Ok(mut blocked) = self.blocked.lock() {
                    let now = Instant::now();
                    if blocked.len() > 10_000 {
                        blocked.retain(|_, until| *until > now);
                        limiter.retain_recent();
                    }
                    blocked.insert(key.clone(), now + wait);
                }
                longest = Some(longest.map_or(wait, |l| l.max(wait)));
            }
        }
        longest
    }
}

fn throttled(wait: Duration) -> Response {
    tokenvisor_supervisor::metrics::record_auth_throttled();
    ApiError::too_many_attempts(wait.as_secs().max(1)).into_response()
}

/// The bearer token of a request.
fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
}

/// Why a presented credential was refused (the `reason` of the failure metric).
pub(crate) enum Refusal {
    Unknown,
    Revoked,
    Expired,
}

/// Who the token is, if anyone.
pub(crate) async fn authenticate(state: &AppState, token: &str) -> Result<Result<Principal, Refusal>, ApiError> {
    if let Some(digest) = state.admin_token_digest.as_deref()
        && token_matches(digest, token.as_bytes())
    {
        return Ok(Ok(Principal::admin("admin")));
    }
    let (Some(prefix), Some(access)) = (key_prefix(token), state.tokenvisor.store().access()) else {
        return Ok(Err(Refusal::Unknown));
    };
    let Some(record) = access.find_api_key_by_prefix(prefix).await? else {
        return Ok(Err(Refusal::Unknown));
    };
    let presented = key_hash(token);
    if !bool::from(presented.as_bytes().ct_eq(record.secret_hash.as_bytes())) {
        return Ok(Err(Refusal::Unknown));
    }
    if record.revoked_at.is_some() {
        return Ok(Err(Refusal::Revoked));
    }
    if record.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
        return Ok(Err(Refusal::Expired));
    }
    Ok(Ok(Principal::of_key(&record)))
}

/// The client's address, when the server recorded it.
pub(crate) fn client_ip(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// Throttles, authenticates, authorizes and audits every `/v1` request (see the module
/// documentation).
pub(crate) async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let need = match &route {
        Some(route) => route_need(request.method(), route),
        None => Need::Authenticated,
    };
    let ip = client_ip(&request);
    let principal = if state.admin_token_digest.is_none() {
        // The host application authenticated the request.
        Principal::admin("external")
    } else {
        let token = bearer(&request);
        let mut who = Vec::with_capacity(2);
        if let Some(token) = token {
            who.push(format!(
                "ip:{}",
                ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
            ));
            if let Some(prefix) = key_prefix(token) {
                who.push(format!("key:{prefix}"));
            }
        }
        if let Some(wait) = state.throttle.refused_for(&who) {
            return throttled(wait);
        }
        let outcome = match token {
            Some(token) => match authenticate(&state, token).await {
                Ok(outcome) => outcome,
                Err(error) => return error.into_response(),
            },
            None => Err(Refusal::Unknown),
        };
        match outcome {
            Ok(principal) => principal,
            Err(refusal) => {
                if token.is_some() {
                    let reason = match refusal {
                        Refusal::Unknown => "unknown",
                        Refusal::Revoked => "revoked",
                        Refusal::Expired => "expired",
                    };
                    tokenvisor_supervisor::metrics::record_auth_failure(reason);
                    if let Some(wait) = state.throttle.fail(&who) {
                        tracing::warn!(client.address = ?ip, "too many failed authentications; refusing for a while");
                        return throttled(wait);
                    }
                }
                return ApiError::unauthorized().into_response();
            }
        }
    };
    if !principal.satisfies(need) {
        return ApiError::forbidden().into_response();
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let trace_id = tokenvisor_telemetry::current_trace_ids()
        .map(|(trace, _)| trace)
        .or_else(|| traceparent_trace_id(&request));
    request.extensions_mut().insert(principal.clone());
    let response = next.run(request).await;
    if let Some(route) = route {
        let recorded = Recorded {
            principal: &principal,
            method: &method,
            route: &route,
            path: &path,
            status: response.status(),
            caller: ip,
            trace_id,
            subject: response.extensions().get::<AuditSubject>(),
        };
        state.audit.record_request(recorded, need);
    }
    response
}

/// The trace id of an incoming W3C `traceparent` header.
fn traceparent_trace_id(request: &Request) -> Option<String> {
    let value = request.headers().get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let _version = parts.next()?;
    let trace = parts.next()?;
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then(|| trace.to_ascii_lowercase())
}

/// `403 forbidden` for the status line of an error that must not tell whether a
/// resource exists: a restricted key's lookup that failed as not found.
pub(crate) fn hide_absence(principal: &Principal, error: ApiError) -> ApiError {
    if principal.is_restricted() && error.status() == StatusCode::NOT_FOUND {
        ApiError::forbidden()
    } else {
        error
    }
}

/// A new API key: `tvk_<12 hex>_<43 base64url>` (256 random bits in the secret part).
pub(crate) fn generate_key() -> (String, String) {
    use base64::Engine as _;
    let prefix_bytes: [u8; 6] = rand::random();
    let prefix: String = prefix_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret: [u8; 32] = rand::random();
    let key = format!(
        "{KEY_PREFIX}{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    (prefix, key)
}

/// Shared by the router: the throttle lives as long as the router.
pub(crate) fn throttle(per_minute: u32) -> Arc<Throttle> {
    Arc::new(Throttle::new(per_minute))
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

    #[test]
    fn keys_have_a_visible_prefix_and_a_long_secret() {
        let (prefix, key) = generate_key();
        assert_eq!(key_prefix(&key), Some(prefix.as_str()));
        assert!(key.len() > 50, "{key}");
        assert_eq!(key_prefix("tvk__secret"), None);
        assert_eq!(key_prefix("tvk_abc_"), None);
        assert_eq!(key_prefix("not-a-key"), None);
    }

    #[test]
    fn every_route_has_its_scope() {
        let tokens = Principal {
            key_id: "k".into(),
            scopes: vec![Scope::TokensRead],
            tenants: Some(HashSet::from(["a".to_owned()])),
            integrations: None,
        };
        let operate = Principal {
            scopes: vec![Scope::Operate],
            ..tokens.clone()
        };
        let get = Method::GET;
        let post = Method::POST;
        assert!(tokens.satisfies(route_need(&get, "/v1/connections/{id}/token")));
        assert!(tokens.satisfies(route_need(&post, "/v1/connections/{id}/proxy/{*path}")));
        assert!(!tokens.satisfies(route_need(&post, "/v1/integrations")));
        assert!(!tokens.satisfies(route_need(&Method::DELETE, "/v1/connections/{id}")));
        assert!(!operate.satisfies(route_need(&get, "/v1/connections/{id}/token")));
        assert!(operate.satisfies(route_need(&Method::DELETE, "/v1/connections/{id}")));
        assert!(!operate.satisfies(route_need(&post, "/v1/integrations")), "restricted");
        assert!(!operate.satisfies(route_need(&get, "/v1/api-keys")));
        assert!(
            !operate.satisfies(route_need(&get, "/v1/some-new-route")),
            "admin by default"
        );
        assert!(Principal::admin("admin").satisfies(route_need(&get, "/v1/api-keys")));
    }

    /// Every documented `/v1` operation has the need its tag says: the table and the
    /// document cannot drift apart (a new route lands in `admin` unless listed).
    #[test]
    fn every_documented_route_needs_what_its_tag_says() {
        use utoipa::OpenApi as _;
        let document = serde_json::to_value(crate::openapi::ApiDoc::openapi()).expect("serializes");
        let mut checked = 0;
        for (path, item) in document["paths"].as_object().expect("paths") {
            if !path.starts_with("/v1/") {
                continue;
            }
            // Routed as `{*path}`, documented as `{path}`.
            let route = path.replace("{path}", "{*path}");
            for (method, operation) in item.as_object().expect("operations") {
                let Ok(method) = method.to_uppercase().parse::<Method>() else {
                    continue;
                };
                let tag = operation["tags"][0].as_str().unwrap_or_default();
                let id = operation["operationId"].as_str().unwrap_or_default();
                let expected = match tag {
                    _ if id.starts_with("proxy_request") => Need::Tokens,
                    "tokens" => Need::Tokens,
                    "integrations" if method == Method::GET => Need::Operate,
                    "integrations" => Need::OperateEverywhere,
                    "connections" | "authorizations" => Need::Operate,
                    _ => Need::Admin,
                };
                assert_eq!(route_need(&method, &route), expected, "{method} {route} ({tag})");
                checked += 1;
            }
        }
        assert!(checked > 30, "{checked}");
    }

    #[test]
    fn failures_past_the_allowance_are_refused_until_it_refills() {
        let throttle = Throttle::new(3);
        let who = vec!["ip:10.0.0.1".to_owned()];
        assert!(throttle.refused_for(&who).is_none());
        for _ in 0..3 {
            assert!(throttle.fail(&who).is_none());
        }
        let wait = throttle.fail(&who).expect("the fourth failure is over the allowance");
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(throttle.refused_for(&who).is_some());
        assert!(throttle.refused_for(&["ip:10.0.0.2".to_owned()]).is_none());
        assert!(Throttle::new(0).fail(&who).is_none(), "0 is no limit");
    }
}
