//! Group commit of refreshes on PostgreSQL.
//!
//! A refresh commit is one compare-and-swap `UPDATE` of its connection, one history
//! `INSERT` and, every [`TRIM_EVERY`](super::TRIM_EVERY) versions, a trim of that history.
//! Here they are one statement: data-modifying CTEs over `unnest`ed arrays, in autocommit,
//! so the statement is its own transaction. The history row of a connection is inserted
//! only when its `UPDATE` matched (`id` and expected `version`), in the same transaction.
//!
//! The [`GroupCommitter`] task collects the commits waiting at a given moment (no timer:
//! whatever queued while the previous statements ran) and writes up to [`MAX_BATCH`] of
//! them in one statement, with up to [`MAX_IN_FLIGHT`] statements in flight. Each caller
//! awaits its own answer: `true` when its row matched and the statement committed, `false`
//! when its version did not match (or the row is gone), an error when the statement
//! failed. A batch never holds two commits of the same connection: a second one waits for
//! the next batch. When a batch statement fails (a deadlock between two batches, a
//! constraint of one row), every commit of it is retried alone, so one bad row fails
//! only its own commit.

use crate::StoreError;
use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, PgPool, Row as _};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

/// Most commits written by one statement.
pub(super) const MAX_BATCH: usize = 256;
/// Most batch statements running at once (each holds one pooled connection).
pub(super) const MAX_IN_FLIGHT: usize = 4;

/// The statement: `$1`..`$29` and `$31` are arrays (one element per commit), `$30` how
/// many older history rows a trimmed connection keeps besides the one inserted here (the
/// `DELETE` sees the table as it was before this statement, not the sibling `INSERT`'s
/// row). `$31` is the partition epoch the commit is fenced by (`NULL`: not fenced).
/// Returns the ids whose compare-and-swap matched.
const COMMIT_SQL: &str = r#"
WITH input AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::int8[], $3::text[], $4::uuid[], $5::bytea[], $6::bytea[], $7::text[], $8::text[],
        $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[], $13::text[],
        $14::bool[], $15::int8[], $16::int4[], $17::text[], $18::text[], $19::timestamptz[], $20::text[],
        $21::timestamptz[], $22::timestamptz[],
        $23::timestamptz[], $24::text[], $25::text[], $26::text[], $27::int4[], $28::int8[], $29::bool[], $31::int8[]
    ) AS t(id, expected_version, tenant_id, integration_id, access_token, refresh_token, token_type, scope,
           issued_at, expires_at, next_refresh_at, last_refresh_at, status,
           is_active, refresh_failures, consecutive_failures, last_error_code, last_error_message, last_error_at, metadata,
           created_at, updated_at,
           started_at, reason, outcome, error_code, http_status, duration_ms, trim_history, fence_epoch)
),
updated AS (
    UPDATE tokenvisor_connections AS c SET
        tenant_id = i.tenant_id,
        integration_id = i.integration_id,
        access_token = i.access_token,
        refresh_token = i.refresh_token,
        token_type = i.token_type,
        scope = i.scope,
        issued_at = i.issued_at,
        expires_at = i.expires_at,
        next_refresh_at = i.next_refresh_at,
        last_refresh_at = i.last_refresh_at,
        status = i.status,
        is_active = i.is_active,
        refresh_failures = i.refresh_failures,
        consecutive_failures = i.consecutive_failures,
        last_error_code = i.last_error_code,
        last_error_message = i.last_error_message,
        last_error_at = i.last_error_at,
        metadata = i.metadata::jsonb,
        version = i.expected_version + 1,
        created_at = i.created_at,
        updated_at = i.updated_at
    FROM input AS i
    WHERE c.id = i.id AND c.version = i.expected_version
      -- Fenced: only while the writer's epoch of the connection's partition is current.
      AND (i.fence_epoch IS NULL OR EXISTS (
          SELECT 1 FROM tokenvisor_partitions AS p
          WHERE p.partition_id = c.partition_id AND p.epoch = i.fence_epoch
            AND p.lease_until_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint))
    RETURNING c.id
),
recorded AS (
    INSERT INTO tokenvisor_refresh_attempts (connection_id, started_at, reason, outcome, error_code, http_status, duration_ms)
    SELECT i.id, i.started_at, i.reason, i.outcome, i.error_code, i.http_status, i.duration_ms
    FROM input AS i JOIN updated AS u ON u.id = i.id
),
trimmed AS (
    DELETE FROM tokenvisor_refresh_attempts AS r
    USING (
        SELECT old.id
        FROM input AS i
        JOIN updated AS u ON u.id = i.id
        CROSS JOIN LATERAL (
            SELECT s.id
            FROM (
                -- OFFSET 0 plans this alone: the connection_id index, then a sort of at
                -- most a few dozen ids (not a backward walk of the whole primary key).
                SELECT k.id FROM tokenvisor_refresh_attempts AS k WHERE k.connection_id = i.id OFFSET 0
            ) AS s
            ORDER BY s.id DESC
            OFFSET $30
        ) AS old
        WHERE i.trim_history
    ) AS stale
    WHERE r.id = stale.id
)
SELECT id FROM updated
"#;

/// One refresh commit, encrypted and ready to bind.
#[derive(Debug)]
pub(super) struct PreparedCommit {
    pub id: Uuid,
    pub expected_version: i64,
    pub tenant_id: String,
    pub integration_id: Uuid,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub token_type: String,
    pub scope: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub next_refresh_at: Option<DateTime<Utc>>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub status: String,
    pub is_active: bool,
    pub refresh_failures: i64,
    pub consecutive_failures: i32,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// JSON text of the metadata object.
    pub metadata: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub reason: String,
    pub outcome: String,
    pub error_code: Option<String>,
    pub http_status: Option<i32>,
    pub duration_ms: i64,
    /// Trim the history of this connection to the newest entries.
    pub trim_history: bool,
    /// The epoch of the connection's partition this commit is fenced by (see
    /// [`crate::Fence`]); `None`: not fenced.
    pub fence_epoch: Option<i64>,
}

struct Request {
    commit: PreparedCommit,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// Writes refresh commits of many connections together (see the module documentation).
#[derive(Debug)]
pub(super) struct GroupCommitter {
    requests: mpsc::UnboundedSender<Request>,
    stats: Arc<Stats>,
}

/// Counters of the committer (for benchmarks).
#[derive(Debug, Default)]
pub(super) struct Stats {
    /// Batch statements that succeeded.
    pub statements: AtomicU64,
    /// Commits those statements carried.
    pub commits: AtomicU64,
    /// Time from sending those statements to their answer, in microseconds.
    pub statement_us: AtomicU64,
}

impl GroupCommitter {
    /// Starts the committer task on the current tokio runtime; `None` outside one.
    pub fn start(pool: PgPool, history_keep_older: i64) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (requests, receiver) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        runtime.spawn(run(pool, receiver, history_keep_older, stats.clone()));
        Some(Self { requests, stats })
    }

    /// Batch statements written so far, the commits they carried, and the time they
    /// took (microseconds, summed).
    pub fn stats(&self) -> (u64, u64, u64) {
        (
            self.stats.statements.load(Ordering::Relaxed),
            self.stats.commits.load(Ordering::Relaxed),
            self.stats.statement_us.load(Ordering::Relaxed),
        )
    }

    /// Queues `commit` and waits for its batch. `Ok(true)`: committed; `Ok(false)`: the
    /// version did not match (nothing of it was written). `Err(commit)` back when the
    /// committer task is gone (nothing was sent).
    pub async fn commit(&self, commit: PreparedCommit) -> Result<Result<bool, StoreError>, PreparedCommit> {
        let (reply, answer) = oneshot::channel();
        if let Err(error) = self.requests.send(Request { commit, reply }) {
            return Err(error.0.commit);
        }
        Ok(answer.await.unwrap_or_else(|_| {
            // The task stopped (its runtime shut down) with this commit taken: whether it
            // committed is unknown, as after a lost connection.
            Err(StoreError::Database(
                "the group committer stopped before answering; the commit may or may not have happened".to_owned(),
            ))
        }))
    }
}

async fn run(pool: PgPool, mut receiver: mpsc::UnboundedReceiver<Request>, history_keep_older: i64, stats: Arc<Stats>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut deferred: Vec<Request> = Vec::new();
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let mut waiting = std::mem::take(&mut deferred);
        if waiting.is_empty() {
            match receiver.recv().await {
                Some(request) => waiting.push(request),
                None => break,
            }
        }
        while waiting.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(request) => waiting.push(request),
                Err(_) => break,
            }
        }
        // One commit per connection and batch: a later one waits for the next batch.
        let mut ids = HashSet::with_capacity(waiting.len());
        let mut batch = Vec::with_capacity(waiting.len());
        for request in waiting {
            if batch.len() < MAX_BATCH && ids.insert(request.commit.id) {
                batch.push(request);
            } else {
                deferred.push(request);
            }
        }
        let pool = pool.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let size = batch.len() as u64;
            let started = std::time::Instant::now();
            if write_batch(&pool, batch, history_keep_older).await {
                stats.statements.fetch_add(1, Ordering::Relaxed);
                stats.commits.fetch_add(size, Ordering::Relaxed);
                stats
                    .statement_us
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
}

/// Writes `batch` in one statement and answers each request; on failure, retries each
/// commit alone. Whether the batch statement succeeded.
async fn write_batch(pool: &PgPool, batch: Vec<Request>, history_keep_older: i64) -> bool {
    let (commits, replies): (Vec<PreparedCommit>, Vec<_>) =
        batch.into_iter().map(|request| (request.commit, request.reply)).unzip();
    match execute(pool, &commits, history_keep_older).await {
        Ok(matched) => {
            for (commit, reply) in commits.iter().zip(replies) {
                let _ = reply.send(Ok(matched.contains(&commit.id)));
            }
            true
        }
        Err(error) if commits.len() == 1 => {
            for reply in replies {
                let _ = reply.send(Err(StoreError::Database(error.to_string())));
            }
            false
        }
        Err(error) => {
            tracing::debug!(size = commits.len(), error = %error, "group commit failed; committing one by one");
            for (commit, reply) in commits.iter().zip(replies) {
                let result = execute(pool, std::slice::from_ref(commit), history_keep_older)
                    .await
                    .map(|matched| matched.contains(&commit.id));
                let _ = reply.send(result);
            }
            false
        }
    }
}

/// Runs the statement for `commits` (distinct connections). The ids whose
/// compare-and-swap matched; the statement committed when this returns `Ok`.
pub(super) async fn execute(
    pool: &PgPool,
    commits: &[PreparedCommit],
    history_keep_older: i64,
) -> Result<HashSet<Uuid>, StoreError> {
    let n = commits.len();
    let mut id = Vec::with_capacity(n);
    let mut expected_version = Vec::with_capacity(n);
    let mut tenant_id = Vec::with_capacity(n);
    let mut integration_id = Vec::with_capacity(n);
    let mut access_token = Vec::with_capacity(n);
    let mut refresh_token = Vec::with_capacity(n);
    let mut token_type = Vec::with_capacity(n);
    let mut scope = Vec::with_capacity(n);
    let mut issued_at = Vec::with_capacity(n);
    let mut expires_at = Vec::with_capacity(n);
    let mut next_refresh_at = Vec::with_capacity(n);
    let mut last_refresh_at = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut is_active = Vec::with_capacity(n);
    let mut refresh_failures = Vec::with_capacity(n);
    let mut consecutive_failures = Vec::with_capacity(n);
    let mut last_error_code = Vec::with_capacity(n);
    let mut last_error_message = Vec::with_capacity(n);
    let mut last_error_at = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut created_at = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    let mut started_at = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut outcome = Vec::with_capacity(n);
    let mut error_code = Vec::with_capacity(n);
    let mut http_status = Vec::with_capacity(n);
    let mut duration_ms = Vec::with_capacity(n);
    let mut trim_history = Vec::with_capacity(n);
    let mut fence_epoch = Vec::with_capacity(n);
    for commit in commits {
        id.push(commit.id);
        expected_version.push(commit.expected_version);
        tenant_id.push(commit.tenant_id.as_str());
        integration_id.push(commit.integration_id);
        access_token.push(commit.access_token.as_slice());
        refresh_token.push(commit.refresh_token.as_deref());
        token_type.push(commit.token_type.as_str());
        scope.push(commit.scope.as_deref());
        issued_at.push(commit.issued_at);
        expires_at.push(commit.expires_at);
        next_refresh_at.push(commit.next_refresh_at);
        last_refresh_at.push(commit.last_refresh_at);
        status.push(commit.status.as_str());
        is_active.push(commit.is_active);
        refresh_failures.push(commit.refresh_failures);
        consecutive_failures.push(commit.consecutive_failures);
        last_error_code.push(commit.last_error_code.as_deref());
        last_error_message.push(commit.last_error_message.as_deref());
        last_error_at.push(commit.last_error_at);
        metadata.push(commit.metadata.as_str());
        created_at.push(commit.created_at);
        updated_at.push(commit.updated_at);
        started_at.push(commit.started_at);
        reason.push(commit.reason.as_str());
        outcome.push(commit.outcome.as_str());
        error_code.push(commit.error_code.as_deref());
        http_status.push(commit.http_status);
        duration_ms.push(commit.duration_ms);
        trim_history.push(commit.trim_history);
        fence_epoch.push(commit.fence_epoch);
    }
    let rows = sqlx::query(COMMIT_SQL)
        .bind(id)
        .bind(expected_version)
        .bind(tenant_id)
        .bind(integration_id)
        .bind(access_token)
        .bind(refresh_token)
        .bind(token_type)
        .bind(scope)
        .bind(issued_at)
        .bind(expires_at)
        .bind(next_refresh_at)
        .bind(last_refresh_at)
        .bind(status)
        .bind(is_active)
        .bind(refresh_failures)
        .bind(consecutive_failures)
        .bind(last_error_code)
        .bind(last_error_message)
        .bind(last_error_at)
        .bind(metadata)
        .bind(created_at)
        .bind(updated_at)
        .bind(started_at)
        .bind(reason)
        .bind(outcome)
        .bind(error_code)
        .bind(http_status)
        .bind(duration_ms)
        .bind(trim_history)
        .bind(history_keep_older)
        .bind(fence_epoch)
        .fetch_all(pool)
        .await
        .map_err(|error| StoreError::Database(format!("committing refreshes: {error}")))?;
    rows.iter()
        .map(|row| {
            row.try_get::<Uuid, _>(0)
                .map_err(|error| StoreError::Database(format!("reading committed ids: {error}")))
        })
        .collect()
}
