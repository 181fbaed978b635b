//! The standalone admin channel: what `tokenvisor serve` exposes next to the supervisor.
//!
//! - [`router`]: the axum application — `/v1` (bearer-token auth, constant-time
//!   comparison), `/oauth/callback`, `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.
//! - `routes`: one module per resource (integrations, connections, authorizations,
//!   events, health).
//! - [`error::ApiError`]: every error answer, mapped to a status in one place.
//! - [`views`]: request and answer bodies; views never carry a secret.
//! - [`openapi`]: the OpenAPI 3.1 document generated from the handlers' types.
//! - [`webhooks`]: Standard Webhooks delivery of the event stream, retried with backoff
//!   from a bounded queue, off the refresh path.
//!
//! The library takes values (a [`Tokenvisor`], an [`AdminOptions`]); only the binary
//! reads files and environment variables.

mod auth;
pub mod error;
mod extract;
mod journal;
pub mod openapi;
mod routes;
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

pub use error::ApiError;
pub use webhooks::{WebhookConfig, WebhookDispatcher, WebhookSecret};

/// Renders the current metrics as Prometheus text exposition.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// How the admin API behaves.
#[derive(Clone)]
pub struct AdminOptions {
    /// The bearer token every `/v1` request must present.
    pub admin_token: SecretString,
    /// Public base URL of this service (`https://tokens.example.com`); the OAuth
    /// callback is `{public_url}/oauth/callback`.
    pub public_url: String,
    /// Prometheus metrics, when enabled (`GET /metrics`).
    pub metrics: Option<MetricsRenderer>,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Longest time a request may take before it is answered `504 timeout`.
    pub request_timeout: Duration,
    /// Cancelled when the service shuts down: event streams end.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOptions")
            .field("public_url", &self.public_url)
            .field("metrics", &self.metrics.is_some())
            .field("body_limit", &self.body_limit)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl AdminOptions {
    /// Defaults: 64 KiB bodies, 30 s requests, no metrics.
    pub fn new(admin_token: SecretString, public_url: impl Into<String>) -> Self {
        Self {
            admin_token,
            public_url: public_url.into().trim_end_matches('/').to_owned(),
            metrics: None,
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            shutdown: CancellationToken::new(),
        }
    }

    /// The OAuth callback URL registered with providers.
    pub fn callback_url(&self) -> String {
        format!("{}/oauth/callback", self.public_url)
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) tokenvisor: Tokenvisor,
    pub(crate) journal: Arc<journal::Journal>,
    pub(crate) options: Arc<AdminOptions>,
    pub(crate) admin_token_digest: Arc<[u8; 32]>,
}

/// The admin application.
pub fn router(tokenvisor: Tokenvisor, options: AdminOptions) -> Router {
    let state = AppState {
        admin_token_digest: Arc::new(auth::digest(options.admin_token.expose().as_bytes())),
        journal: journal::Journal::start(tokenvisor.subscribe(), options.shutdown.clone()),
        tokenvisor,
        options: Arc::new(options),
    };
    let v1 = Router::new()
        .route(
            "/integrations",
            post(routes::integrations::create).get(routes::integrations::list),
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
        .route("/authorizations", post(routes::authorizations::create))
        .route("/events", get(routes::events::stream))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ));
    let timeout = state.options.request_timeout;
    Router::new()
        .nest("/v1", v1)
        .route("/oauth/callback", get(routes::authorizations::callback))
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::health::metrics))
        .route("/openapi.json", get(openapi::serve))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(move |request, next| {
            routes::health::with_timeout(timeout, request, next)
        }))
        .layer(DefaultBodyLimit::max(state.options.body_limit))
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(state)
}

/// Every request runs inside a server span that continues an incoming W3C
/// `traceparent`, so a backend's trace shows its token fetch inside it. The route has
/// ids replaced by `{id}`; the query string is never recorded.
async fn trace_request(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use tracing::Instrument as _;
    let route = route_template(request.uri().path());
    let span = tokenvisor_telemetry::http_server_span(request.method().as_str(), &route, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    tokenvisor_telemetry::record_http_status(&span, response.status().as_u16());
    response
}

/// `/v1/connections/0190.../token` → `/v1/connections/{id}/token`.
fn route_template(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if uuid::Uuid::parse_str(segment).is_ok() {
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
