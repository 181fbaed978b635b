//! `GET /v1/cluster` (the replicas and their partitions) and `POST /v1/cluster/forward`
//! (a request another replica forwards to the owner of a connection).

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use tokenvisor_supervisor::cluster::forward::{ForwardReply, ForwardRequest};
use utoipa::ToSchema;

/// The cluster as this replica sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClusterView {
    /// This replica's id.
    replica_id: String,
    /// Whether it serves its whole share of the partitions.
    ready: bool,
    /// Partitions it serves.
    owned_partitions: usize,
    /// Partitions nobody holds a live lease on (moving between replicas).
    unowned_partitions: usize,
    /// Every replica recorded in the database.
    replicas: Vec<ReplicaView>,
}

/// One replica.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplicaView {
    replica_id: String,
    /// Where the others forward requests to it.
    advertise_url: Option<String>,
    /// Milliseconds since its last heartbeat (the database's clock).
    heartbeat_age_ms: u64,
    /// Whether its heartbeat is within the partition lease.
    alive: bool,
    /// Partitions it holds a live lease on.
    partitions: usize,
}

/// The replicas sharing the work and their partitions (404 `cluster_disabled` when this
/// process runs alone).
#[utoipa::path(
    get, path = "/v1/cluster", tag = "cluster",
    operation_id = "cluster_status",
    security(("bearer" = [])),
    responses(
        (status = 200, body = ClusterView),
        (status = 404, description = "`cluster_disabled`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    )
)]
pub(crate) async fn status(State(state): State<AppState>) -> Result<Json<ClusterView>, ApiError> {
    let Some(status) = state.tokenvisor.cluster().status().await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "cluster_disabled",
            "this process runs alone (clustering is off or the database is SQLite)",
        ));
    };
    Ok(Json(ClusterView {
        replica_id: status.replica_id,
        ready: status.ready,
        owned_partitions: status.owned_partitions,
        unowned_partitions: status.unowned_partitions,
        replicas: status
            .replicas
            .into_iter()
            .map(|replica| ReplicaView {
                replica_id: replica.replica_id,
                advertise_url: replica.advertise_url,
                heartbeat_age_ms: replica.heartbeat_age_ms,
                alive: replica.alive,
                partitions: replica.partitions,
            })
            .collect(),
    }))
}

/// Replica to replica: executes a request for a connection this replica owns (answers
/// `{"result": "not_owner"}` otherwise; never forwards again). The requester reads what
/// the owner committed from the database.
#[utoipa::path(
    post, path = "/v1/cluster/forward", tag = "cluster",
    operation_id = "cluster_forward",
    security(("bearer" = [])),
    request_body(content = Object, description = "`{\"connection_id\": \"...\", \"op\": \"access_token\" | \"token_rejected\" | \"force_refresh\" | \"deactivate\" | \"activate\" | \"remove\" | \"replace_tokens\", ...}`"),
    responses(
        (status = 200, description = "`{\"result\": \"done\"}`, `{\"result\": \"not_owner\"}` or `{\"result\": \"failed\", \"code\": ..., \"message\": ...}`", body = Object),
        (status = 404, description = "`cluster_disabled`", body = ErrorBody),
    )
)]
pub(crate) async fn forward(
    State(state): State<AppState>,
    Json(request): Json<ForwardRequest>,
) -> Result<Json<ForwardReply>, ApiError> {
    if !state.tokenvisor.cluster().is_enabled() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "cluster_disabled",
            "this process runs alone",
        ));
    }
    Ok(Json(state.tokenvisor.cluster().serve_forwarded(request).await))
}
