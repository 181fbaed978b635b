//! `/healthz`, `/readyz`, `/metrics`, and the request timeout.

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::views::HealthView;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "healthz", responses((status = 200, body = HealthView)))]
pub(crate) async fn healthz() -> Json<HealthView> {
    Json(HealthView {
        status: "ok".into(),
        supervised: None,
    })
}

/// Readiness: the database answers and the supervisor takes requests.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    operation_id = "readyz",
    responses((status = 200, body = HealthView), (status = 503, body = ErrorBody))
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<HealthView>, ApiError> {
    if state.options.shutdown.is_cancelled() {
        return Err(not_ready("shutting down"));
    }
    if let Err(error) = state.tokenvisor.store().ping().await {
        tracing::warn!(error = %error, "readiness: database unreachable");
        return Err(not_ready("the database is unreachable"));
    }
    if !state.tokenvisor.is_running() {
        return Err(not_ready("the supervisor is not running"));
    }
    if !state.tokenvisor.cluster().is_ready() {
        return Err(not_ready("this replica does not yet serve its share of the partitions"));
    }
    Ok(Json(HealthView {
        status: "ready".into(),
        supervised: Some(state.tokenvisor.supervised_count()),
    }))
}

fn not_ready(message: &str) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
}

/// Prometheus text exposition, when metrics are enabled.
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"),
        (status = 401, description = "`unauthorized`: no admin token or `admin` API key (unless metrics are public)", body = ErrorBody),
        (status = 404, description = "`metrics_disabled`", body = ErrorBody),
    )
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    render_metrics(state.options.metrics.clone()).await
}

/// The exposition of `metrics`, or `404 metrics_disabled`.
pub(crate) async fn render_metrics(metrics: Option<crate::MetricsRenderer>) -> Result<Response, ApiError> {
    let Some(render) = metrics else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "metrics are not enabled in this process",
        ));
    };
    let text = tokio::task::spawn_blocking(move || render())
        .await
        .map_err(ApiError::internal)?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// Answers `504 timeout` when the handler takes longer than `timeout` (streams are not
/// affected once their headers are sent).
pub(crate) async fn with_timeout(timeout: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took too long; it may still complete",
        )
        .into_response(),
    }
}
