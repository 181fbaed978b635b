//! `POST /v1/keys/rotate` (re-encrypt every stored secret under the primary key, in this
//! process, in the background) and `GET /v1/keys/rotation` (its progress, and how many
//! values are still under another key). Both need `admin` (see `auth::route_need`).
//!
//! The rotation is the same as `tokenvisor keys rotate` (see
//! `tokenvisor_store::sql::KeyRotation`): batches, compare-and-set per row, progress in
//! the database, so one started here and interrupted (the process stopped) resumes from
//! either place.

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use std::sync::atomic::Ordering;
use tokenvisor_store::sql::{KeyRotation, RotationOptions, RotationProgress};
use utoipa::ToSchema;

/// One table's progress.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TableProgressView {
    /// The table.
    table: String,
    /// Rows re-encrypted.
    rows_rewritten: u64,
    /// Rows already under the target key.
    rows_current: u64,
    /// Row updates lost to a concurrent writer (a refresh), then retried.
    rows_raced: u64,
    /// Whether every row of the table is done.
    finished: bool,
}

/// A rotation towards one key, as recorded in the database.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RotationProgressView {
    /// The key every value is rewritten under (8 hex characters).
    target_key_id: String,
    /// Rows re-encrypted, every table.
    rows_rewritten: u64,
    /// Rows found already under the target key.
    rows_current: u64,
    /// Row updates lost to concurrent writers, then retried.
    rows_raced: u64,
    /// Whether every table is done.
    finished: bool,
    /// When it started.
    started_at: chrono::DateTime<chrono::Utc>,
    /// Its last batch.
    updated_at: chrono::DateTime<chrono::Utc>,
    /// Per table, in order.
    tables: Vec<TableProgressView>,
}

/// The keys and the rotation.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyRotationView {
    /// The primary key's id (8 hex characters), which new writes use.
    primary_key_id: String,
    /// Its operator label, if any.
    primary_label: Option<String>,
    /// Whether a rotation started through this API runs in this process now.
    running: bool,
    /// Stored values not under the primary key (0 after a complete rotation).
    values_not_under_primary: u64,
    /// The most recent rotation, if any.
    last_rotation: Option<RotationProgressView>,
}

fn time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn progress_view(progress: &RotationProgress) -> RotationProgressView {
    RotationProgressView {
        target_key_id: progress.target_key_id.clone(),
        rows_rewritten: progress.rows_rewritten(),
        rows_current: progress.rows_current(),
        rows_raced: progress.rows_raced(),
        finished: progress.finished(),
        started_at: time(progress.started_at_ms),
        updated_at: time(progress.updated_at_ms),
        tables: progress
            .tables
            .iter()
            .map(|table| TableProgressView {
                table: table.table.clone(),
                rows_rewritten: table.rows_rewritten,
                rows_current: table.rows_current,
                rows_raced: table.rows_raced,
                finished: table.finished,
            })
            .collect(),
    }
}

fn rotation(state: &AppState) -> Result<KeyRotation, ApiError> {
    state.tokenvisor.store().key_rotation().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "keys_unavailable",
            "this store encrypts nothing (the in-memory store): there are no keys to rotate",
        )
    })
}

async fn view(state: &AppState, rotation: &KeyRotation) -> Result<KeyRotationView, ApiError> {
    let keyring = rotation.keyring();
    let primary = keyring.primary_key_id();
    let last = rotation.progress(None).await?;
    Ok(KeyRotationView {
        primary_key_id: primary.to_string(),
        primary_label: keyring.label(primary).map(str::to_owned),
        running: state.key_rotation_running.load(Ordering::SeqCst),
        values_not_under_primary: rotation.values_not_current().await?,
        last_rotation: last.as_ref().map(progress_view),
    })
}

/// Starts re-encrypting every stored secret under the primary key, in the background
/// (202); resumes a rotation to the same key that was interrupted. Refreshes go on.
#[utoipa::path(
    post, path = "/v1/keys/rotate", tag = "keys",
    operation_id = "rotate_keys",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "started; follow it with GET /v1/keys/rotation", body = KeyRotationView),
        (status = 409, description = "`rotation_running`", body = ErrorBody),
        (status = 501, description = "`keys_unavailable`", body = ErrorBody),
    )
)]
pub(crate) async fn rotate(State(state): State<AppState>) -> Result<(StatusCode, Json<KeyRotationView>), ApiError> {
    let rotation = rotation(&state)?;
    if state.key_rotation_running.swap(true, Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "rotation_running",
            "a key rotation already runs in this process; follow it with GET /v1/keys/rotation",
        ));
    }
    let running = state.key_rotation_running.clone();
    let task_rotation = rotation.clone();
    tokio::spawn(async move {
        let target = task_rotation.keyring().primary_key_id();
        match task_rotation.rotate(&RotationOptions::default(), |_| {}).await {
            Ok(progress) => tracing::info!(
                target_key_id = %target,
                rows_rewritten = progress.rows_rewritten(),
                rows_raced = progress.rows_raced(),
                "key rotation finished"
            ),
            Err(error) => {
                tracing::warn!(target_key_id = %target, %error, "key rotation failed; start it again to resume")
            }
        }
        running.store(false, Ordering::SeqCst);
    });
    Ok((StatusCode::ACCEPTED, Json(view(&state, &rotation).await?)))
}

/// The primary key, how many stored values are under another key, and the progress of
/// the most recent rotation.
#[utoipa::path(
    get, path = "/v1/keys/rotation", tag = "keys",
    operation_id = "key_rotation_status",
    security(("bearer" = [])),
    responses(
        (status = 200, body = KeyRotationView),
        (status = 501, description = "`keys_unavailable`", body = ErrorBody),
    )
)]
pub(crate) async fn status(State(state): State<AppState>) -> Result<Json<KeyRotationView>, ApiError> {
    let rotation = rotation(&state)?;
    Ok(Json(view(&state, &rotation).await?))
}
