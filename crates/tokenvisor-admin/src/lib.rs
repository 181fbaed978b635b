//! The standalone admin channel: what `tokenvisor serve` exposes next to the supervisor.
//!
//! - [`router`]: the axum application — `/v1` (the admin token or a scoped API key,
//!   compared in constant time; every route's scope checked in one place, `auth`;
//!   failed authentications throttled; token reads and changes audited, [`audit`]), `/oauth/callback`, `/healthz`, `/readyz`, `/metrics`, `/openapi.json` (read at `/docs`).
//!   That is `tokenvisor serve`; an embedder mounts the same routes as a component
//!   under a prefix ([`AdminOptions::base_path`]), behind its own authentication
//!   ([`AdminAuth::External`] and [`router_parts`]), without the health and metrics
//!   routes ([`AdminOptions::health_routes`]).
//! - `routes`: one module per resource (integrations, connections, authorizations,
//!   events, webhooks, health).
//! - [`error::ApiError`]: every error answer, mapped to a status in one place.
//! - [`views`]: request and answer bodies; views never carry a secret.
//! - [`openapi`]: the OpenAPI 3.1 document generated from the handlers' types.
//! - `ui`: the operator's dashboard under `/ui` (server-rendered pages, sign-in with the
//!   admin token, a session cookie, CSRF tokens on every action).
//! - [`webhooks`]: Standard Webhooks delivery of the event stream to the endpoints
//!   stored in the database (event filters, attempt and age limits, an outbox cap, a
//!   dead-letter list), off the refresh path.
//!
//! The library takes values (a [`Tokenvisor`], an [`AdminOptions`]); only the binary
//! reads files and environment variables.

pub mod audit;
mod auth;
pub mod error;
mod extract;
mod journal;
pub mod openapi;
mod routes;
mod ui;
pub mod views;
pub mod webhooks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::SecretString;
use tokenvisor_supervisor::Tokenvisor;
use tokio_util::sync::CancellationToken;

pub use audit::AuditOptions;
pub use error::ApiError;
pub use webhooks::{WebhookConfig, WebhookDispatcher, WebhookSecret};

/// Renders the current metrics as Prometheus text exposition.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Who may call `/v1`.
#[derive(Clone)]
pub enum AdminAuth {
    /// Every `/v1` request presents `Authorization: Bearer <token>` (compared in
    /// constant time). The default of `tokenvisor serve`.
    Bearer(SecretString),
    /// The host application authenticates: it wraps [`AdminRouter::api`] (or the whole
    /// [`router`]) in its own tower layer or extractor. tokenvisor checks nothing.
    External,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bearer(_) => f.write_str("Bearer([redacted])"),
            Self::External => f.write_str("External"),
        }
    }
}

/// How the admin API behaves.
#[derive(Clone)]
pub struct AdminOptions {
    /// Who may call `/v1`.
    pub auth: AdminAuth,
    /// Public base URL of the service that serves these routes
    /// (`https://app.example.com`), without the base path.
    pub public_url: String,
    /// Where the routes are mounted: `""` (the root, as `tokenvisor serve` does) or a
    /// prefix like `/tokenvisor`. The OAuth callback is
    /// `{public_url}{base_path}/oauth/callback`.
    pub base_path: String,
    /// Whether `/healthz`, `/readyz`, `/metrics` and `/openapi.json` are served (a host
    /// application usually has its own health and metrics endpoints).
    pub health_routes: bool,
    /// Prometheus metrics, when enabled (`GET /metrics`).
    pub metrics: Option<MetricsRenderer>,
    /// Whether `/metrics` answers without credentials. Off by default: it needs the admin
    /// token or an `admin` API key, like `/v1` (for an open scrape endpoint, serve
    /// [`metrics_router`] on a separate, private address instead).
    pub metrics_public: bool,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Longest time a request may take before it is answered `504 timeout`.
    pub request_timeout: Duration,
    /// Cancelled when the service shuts down: event streams end.
    pub shutdown: CancellationToken,
    /// Failed authentications a client address (or an API key prefix) may make per
    /// minute before it is answered `429` for a while; 0: no limit.
    pub auth_failures_per_minute: u32,
    /// How the audit trail is written.
    pub audit: AuditOptions,
    /// Hosts an authorization's `return_to` may name (exact, lower-case host names); empty:
    /// none, the callback always ends on its own page.
    pub return_to_hosts: Vec<String>,
    /// Background work of these routes that must finish before the process exits: the
    /// audit trail's writer, which keeps writing after [`AdminOptions::shutdown`] until
    /// the routes are dropped (the requests still answered during a graceful stop are
    /// recorded). After the server stops: `tasks.close()`, then `tasks.wait()` (bounded
    /// by a timeout of your choice).
    pub tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOptions")
            .field("auth", &self.auth)
            .field("public_url", &self.public_url)
            .field("base_path", &self.base_path)
            .field("health_routes", &self.health_routes)
            .field("metrics", &self.metrics.is_some())
            .field("metrics_public", &self.metrics_public)
            .field("body_limit", &self.body_limit)
            .field("request_timeout", &self.request_timeout)
            .field("auth_failures_per_minute", &self.auth_failures_per_minute)
            .field("audit", &self.audit)
            .finish_non_exhaustive()
    }
}

impl AdminOptions {
    /// What `tokenvisor serve` runs: bearer-token auth (the admin token and the API keys
    /// of the store), mounted at the root, health routes on; 64 KiB bodies, 30 s requests,
    /// no metrics, 30 failed authentications a minute per address, the default audit trail.
    pub fn new(admin_token: SecretString, public_url: impl Into<String>) -> Self {
        Self {
            auth: AdminAuth::Bearer(admin_token),
            public_url: public_url.into().trim_end_matches('/').to_owned(),
            base_path: String::new(),
            health_routes: true,
            metrics: None,
            metrics_public: false,
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            shutdown: CancellationToken::new(),
            auth_failures_per_minute: 30,
            return_to_hosts: Vec::new(),
            audit: AuditOptions::default(),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// A component of a host application: mounted under `base_path` (`/tokenvisor`),
    /// authenticated by the host ([`AdminAuth::External`]), without health routes.
    pub fn embedded(public_url: impl Into<String>, base_path: impl Into<String>) -> Self {
        Self {
            auth: AdminAuth::External,
            base_path: normalize_base_path(&base_path.into()),
            health_routes: false,
            ..Self::new(SecretString::new(""), public_url)
        }
    }

    /// The OAuth callback URL registered with providers.
    pub fn callback_url(&self) -> String {
        format!(
            "{}{}/oauth/callback",
            self.public_url,
            normalize_base_path(&self.base_path)
        )
    }
}

/// `tokenvisor/` → `/tokenvisor`; `/` and `` → ``.
fn normalize_base_path(base_path: &str) -> String {
    let trimmed = base_path.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

/// The admin routes in two parts, both already under [`AdminOptions::base_path`]:
/// wrap `api` in the host's authentication, leave `public` open (the provider redirects
/// the tenant's browser to the OAuth callback, which is protected by its single-use
/// `state`). Merge both into the host's router; neither has a fallback.
#[derive(Debug)]
pub struct AdminRouter {
    /// `/v1/...`, with [`AdminAuth::External`] the dashboard `/ui` (its sign-in trusts the
    /// host's authentication), and, with health routes, `/openapi.json`, `/docs` and
    /// `/metrics` (the latter authenticated unless [`AdminOptions::metrics_public`]).
    pub api: Router,
    /// `/oauth/callback` and, with health routes, `/healthz`, `/readyz` (and `/metrics`
    /// when [`AdminOptions::metrics_public`]).
    pub public: Router,
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) tokenvisor: Tokenvisor,
    pub(crate) journal: Arc<journal::Journal>,
    pub(crate) options: Arc<AdminOptions>,
    /// `None` with [`AdminAuth::External`].
    pub(crate) admin_token_digest: Option<Arc<[u8; 32]>>,
    /// The dashboard's signed-in operators.
    pub(crate) sessions: Arc<ui::session::Sessions>,
    /// Failed authentications per address and key prefix.
    pub(crate) throttle: Arc<auth::Throttle>,
    /// The audit trail's writer.
    pub(crate) audit: Arc<audit::AuditLog>,
    /// Whether a key rotation started through the API runs in this process.
    pub(crate) key_rotation_running: Arc<std::sync::atomic::AtomicBool>,
}

/// The admin application, complete: [`router_parts`] merged, with a JSON `404` for
/// unknown paths under the base path (at the root, for every unknown path).
pub fn router(tokenvisor: Tokenvisor, options: AdminOptions) -> Router {
    let base_path = normalize_base_path(&options.base_path);
    let parts = router_parts(tokenvisor, options);
    let merged = parts.api.merge(parts.public);
    if base_path.is_empty() {
        merged.fallback(not_found)
    } else {
        merged.route(&format!("{base_path}/{{*rest}}"), axum::routing::any(not_found))
    }
}

/// The admin routes as a component of a host application (see [`AdminRouter`]).
pub fn router_parts(tokenvisor: Tokenvisor, mut options: AdminOptions) -> AdminRouter {
    options.base_path = normalize_base_path(&options.base_path);
    let admin_token_digest = match &options.auth {
        AdminAuth::Bearer(token) => Some(Arc::new(auth::digest(token.expose().as_bytes()))),
        AdminAuth::External => None,
    };
    let state = AppState {
        admin_token_digest,
        sessions: Arc::default(),
        throttle: auth::throttle(options.auth_failures_per_minute),
        audit: audit::AuditLog::start(
            tokenvisor.store().access(),
            options.audit,
            options.shutdown.clone(),
            &options.tasks,
        ),
        journal: journal::Journal::start(tokenvisor.subscribe(), options.shutdown.clone()),
        tokenvisor,
        options: Arc::new(options),
        key_rotation_running: Arc::default(),
    };
    let v1 = Router::new()
        .route(
            "/integrations",
            post(routes::integrations::create).get(routes::integrations::list),
        )
        .route(
            "/integrations/{integration}",
            get(routes::integrations::show)
                .patch(routes::integrations::update)
                .delete(routes::integrations::delete),
        )
        .route(
            "/tenants/{tenant}/connections",
            get(routes::connections::list_of_tenant),
        )
        .route(
            "/tenants/{tenant}/connections/{integration}/{key}",
            get(routes::connections::show_by_key).delete(routes::connections::delete_by_key),
        )
        .route(
            "/tenants/{tenant}/connections/{integration}/{key}/token",
            get(routes::connections::token_by_key),
        )
        .route(
            "/tenants/{tenant}/connections/{integration}/{key}/token/rejected",
            post(routes::connections::token_rejected_by_key),
        )
        .route(
            "/tenants/{tenant}/connections/{integration}/{key}/refresh",
            post(routes::connections::refresh_by_key),
        )
        .route(
            "/tenants/{tenant}/connections/{integration}/{key}/deactivate",
            post(routes::connections::deactivate_by_key),
        )
        .route(
            "/tenants/{tenant}/connections/{integration}/{key}/activate",
            post(routes::connections::activate_by_key),
        )
        .route(
            "/tenants/{tenant}/connections/{integration}/{key}/history",
            get(routes::connections::history_by_key),
        )
        .route(
            "/tenants/{tenant}/connections/{integration}/{key}/proxy/{*path}",
            axum::routing::any(routes::proxy::forward_by_key),
        )
        .route(
            "/connections",
            post(routes::connections::create).get(routes::connections::list),
        )
        .route(
            "/connections/{id}",
            get(routes::connections::show).delete(routes::connections::delete),
        )
        .route("/connections/{id}/token", get(routes::connections::token))
        .route(
            "/connections/{id}/token/rejected",
            post(routes::connections::token_rejected),
        )
        .route("/connections/{id}/refresh", post(routes::connections::refresh))
        .route("/connections/{id}/deactivate", post(routes::connections::deactivate))
        .route("/connections/{id}/activate", post(routes::connections::activate))
        .route(
            "/connections/{id}/proxy/{*path}",
            axum::routing::any(routes::proxy::forward),
        )
        .route("/connections/{id}/history", get(routes::connections::history))
        .route("/authorizations", post(routes::authorizations::create))
        .route("/events", get(routes::events::stream))
        .route(
            "/webhooks/endpoints",
            post(routes::webhooks::create_endpoint).get(routes::webhooks::list_endpoints),
        )
        .route(
            "/webhooks/endpoints/{id}",
            axum::routing::patch(routes::webhooks::update_endpoint).delete(routes::webhooks::delete_endpoint),
        )
        .route(
            "/webhooks/endpoints/{id}/rotate-secret",
            post(routes::webhooks::rotate_secret),
        )
        .route(
            "/webhooks/endpoints/{id}/replay-dead-letters",
            post(routes::webhooks::replay_endpoint_dead_letters),
        )
        .route("/webhooks/dead-letters", get(routes::webhooks::list_dead_letters))
        .route(
            "/webhooks/dead-letters/{id}/replay",
            post(routes::webhooks::replay_dead_letter),
        )
        .route("/api-keys", post(routes::api_keys::create).get(routes::api_keys::list))
        .route("/api-keys/{id}", axum::routing::delete(routes::api_keys::revoke))
        .route("/audit", get(routes::api_keys::audit))
        .route("/keys/rotate", post(routes::keys::rotate))
        .route("/keys/rotation", get(routes::keys::status))
        .route("/cluster", get(routes::cluster::status))
        .route("/cluster/forward", post(routes::cluster::forward))
        .fallback(not_found);
    // Every route: throttle, authenticate, check the route's scope, audit (see `auth`).
    let v1 = v1.layer(axum::middleware::from_fn_with_state(state.clone(), auth::guard));
    let mut api = Router::new().nest("/v1", v1);
    let mut public = Router::new()
        .route("/oauth/callback", get(routes::authorizations::callback))
        .merge(ui::asset_routes());
    if state.admin_token_digest.is_some() {
        // The dashboard signs its operators in with the admin token (its own sessions).
        public = public.merge(ui::routes());
    } else {
        // Embedded: the host's authentication wraps the dashboard with `/v1`; whoever
        // reaches it gets a session at once (see `ui`).
        api = api.merge(ui::routes());
    }
    if state.options.health_routes {
        api = api
            .route("/openapi.json", get(openapi::serve))
            .merge(ui::docs::routes());
        public = public
            .route("/healthz", get(routes::health::healthz))
            .route("/readyz", get(routes::health::readyz));
        // `/openapi.json` stays open: it describes the API and holds no secret.
        let metrics = Router::new().route("/metrics", get(routes::health::metrics));
        if state.options.metrics_public {
            public = public.merge(metrics);
        } else {
            // The same guard as `/v1`: the admin token or an `admin` API key.
            api = api.merge(metrics.layer(axum::middleware::from_fn_with_state(state.clone(), auth::guard)));
        }
    }
    let base_path = state.options.base_path.clone();
    AdminRouter {
        api: finish(api, &base_path, &state),
        public: finish(public, &base_path, &state),
    }
}

/// `GET /metrics` alone, without credentials: for a separate listen address that only
/// the scraper reaches (`TOKENVISOR_METRICS_ADDR` of `tokenvisor serve`).
pub fn metrics_router(metrics: MetricsRenderer) -> Router {
    Router::new().route(
        "/metrics",
        get(move || routes::health::render_metrics(Some(metrics.clone()))),
    )
}

/// The layers every admin route has (timeout, body limit, server span), the state, and
/// the base path.
fn finish(inner: Router<AppState>, base_path: &str, state: &AppState) -> Router {
    let timeout = state.options.request_timeout;
    let finished = inner
        .layer(axum::middleware::from_fn(move |request, next| {
            routes::health::with_timeout(timeout, request, next)
        }))
        .layer(DefaultBodyLimit::max(state.options.body_limit))
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(state.clone());
    if base_path.is_empty() {
        finished
    } else {
        Router::new().nest(base_path, finished)
    }
}

/// Every request runs inside a server span that continues an incoming W3C
/// `traceparent`, so a backend's trace shows its token fetch inside it. The route is the
/// router's template (`/v1/tenants/{tenant}/connections/{integration}/{key}`: no tenant
/// id, name, key or proxied path), or for a path no route matches, the path with ids
/// replaced by `{id}`; the query string is never recorded.
async fn trace_request(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use tracing::Instrument as _;
    let route = match request.extensions().get::<axum::extract::MatchedPath>() {
        Some(matched) => matched.as_str().to_owned(),
        None => route_template(request.uri().path()),
    };
    let span = tokenvisor_telemetry::http_server_span(request.method().as_str(), &route, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    tokenvisor_telemetry::record_http_status(&span, response.status().as_u16());
    response
}

/// `/v1/connections/0190.../token` → `/v1/connections/{id}/token`.
fn route_template(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if uuid::Uuid::parse_str(segment).is_ok() || segment.starts_with("dl_") || segment.starts_with("cfg_") {
                "{id}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse as _;
    use tokenvisor_supervisor::TokenvisorConfig;

    #[test]
    fn the_callback_url_follows_the_base_path() {
        let root = AdminOptions::new(SecretString::new("a-long-admin-token"), "https://tokens.example.com/");
        assert_eq!(root.callback_url(), "https://tokens.example.com/oauth/callback");
        for base_path in ["/tokenvisor", "tokenvisor/", "/tokenvisor/"] {
            let embedded = AdminOptions::embedded("https://app.example.com", base_path);
            assert_eq!(
                embedded.callback_url(),
                "https://app.example.com/tokenvisor/oauth/callback"
            );
        }
        assert_eq!(normalize_base_path("/"), "");
        assert_eq!(normalize_base_path(""), "");
    }

    /// Serves `router` on `127.0.0.1:0` and answers the status of a GET of each path.
    async fn statuses(router: Router, paths: &[&str], bearer: Option<&str>) -> Vec<u16> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let client = reqwest::Client::new();
        let mut answers = Vec::new();
        for path in paths {
            let mut request = client.get(format!("{base}{path}"));
            if let Some(token) = bearer {
                request = request.bearer_auth(token);
            }
            answers.push(request.send().await.expect("request").status().as_u16());
        }
        server.abort();
        answers
    }

    async fn tokenvisor() -> Tokenvisor {
        let store = Arc::new(tokenvisor_store::MemoryStore::new());
        Tokenvisor::start(store, TokenvisorConfig::default())
            .await
            .expect("starts")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_embedded_router_lives_under_its_base_path_without_a_bearer_or_health_routes() {
        let tokenvisor = tokenvisor().await;
        let router = router(
            tokenvisor.clone(),
            AdminOptions::embedded("http://app.example.com", "/tokenvisor"),
        );
        let paths = [
            "/tokenvisor/v1/connections",
            "/tokenvisor/healthz",
            "/tokenvisor/unknown",
            "/healthz",
            "/v1/connections",
        ];
        assert_eq!(statuses(router, &paths, None).await, [200, 404, 404, 404, 404]);

        let parts = router_parts(
            tokenvisor.clone(),
            AdminOptions::embedded("http://app.example.com", "/tokenvisor"),
        );
        let host = Router::new()
            .route("/healthz", get(|| async { "host" }))
            .merge(parts.api.layer(axum::middleware::from_fn(
                |request: axum::extract::Request, next: axum::middleware::Next| async move {
                    if request.headers().contains_key("x-host-session") {
                        next.run(request).await
                    } else {
                        StatusCode::FORBIDDEN.into_response()
                    }
                },
            )))
            .merge(parts.public);
        assert_eq!(
            statuses(
                host,
                &["/tokenvisor/v1/connections", "/tokenvisor/oauth/callback", "/healthz"],
                None
            )
            .await,
            [403, 400, 200]
        );
        tokenvisor.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_default_router_is_the_binarys_root_with_its_bearer_token() {
        let tokenvisor = tokenvisor().await;
        let options = AdminOptions::new(SecretString::new("a-long-admin-token"), "http://127.0.0.1:7070");
        let paths = ["/v1/connections", "/healthz", "/openapi.json", "/unknown"];
        let router_without = router(tokenvisor.clone(), options.clone());
        assert_eq!(statuses(router_without, &paths, None).await, [401, 200, 200, 404]);
        let router_with = router(tokenvisor.clone(), options);
        assert_eq!(
            statuses(router_with, &paths[..1], Some("a-long-admin-token")).await,
            [200]
        );
        tokenvisor.shutdown().await;
    }
}
