//! Where a refresh happens: one provider call and one compare-and-swap commit, run
//! as a task outside the actor so the actor keeps answering from memory meanwhile.
//!
//! The task holds the connection's refresh lock from before the provider call until
//! its result is committed (invariant 3), and commits new tokens before it reports
//! them to the actor, which is the only one that hands them out (invariant 2).

use crate::shared::{IntegrationRuntime, Shared};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Instant;
use tokenvisor_core::{
    Connection, ConnectionId, ConnectionStatus, FailureClass, LastError, RefreshAttempt, RefreshFailure,
    RefreshOutcomeKind, RefreshReason, SecretString, TokenSet, next_refresh_at,
};
use tokenvisor_store::{CasOutcome, LeaseOutcome};
use tracing::{Instrument, field};

/// What the actor asks for.
#[derive(Debug)]
pub(crate) struct RefreshJob {
    /// The actor's committed view of the connection.
    pub base: Connection,
    /// Tokens obtained earlier whose commit failed: commit these instead of calling the provider.
    pub pending: Option<PendingTokens>,
    pub reason: RefreshReason,
    /// 1 for the first attempt after a success.
    pub attempt: u32,
    /// Start times of recent refreshes (oldest first), for spacing.
    pub recent: Vec<DateTime<Utc>>,
    /// A number in `[0, 1)` that spreads the next refresh.
    pub jitter: f64,
    /// The span of the caller whose request started this refresh (`tokenvisor.access_token`,
    /// `tokenvisor.token_rejected`, `tokenvisor.force_refresh`): the refresh span becomes
    /// its child. `Span::none()` for scheduled refreshes and retries, which start a trace.
    pub parent: tracing::Span,
}

/// Tokens obtained from the provider but not yet committed.
#[derive(Debug, Clone)]
pub(crate) struct PendingTokens {
    pub tokens: TokenSet,
    pub obtained_at: DateTime<Utc>,
    /// The refresh token the refresh presented (the stored one it started from).
    pub base_refresh_token: Option<SecretString>,
    /// Its record in the journal, once written there.
    pub journal_seq: Option<u64>,
}

impl PendingTokens {
    /// Whether these tokens were obtained from the refresh token `stored` holds, so that
    /// committing them on top of `stored` loses nothing.
    pub fn applies_to(&self, stored: &Connection) -> bool {
        stored.refresh_token == self.base_refresh_token
    }

    /// Whether `stored` already holds these tokens.
    pub fn is_in(&self, stored: &Connection) -> bool {
        stored.access_token == self.tokens.access_token
            && (self.tokens.refresh_token.is_none() || stored.refresh_token == self.tokens.refresh_token)
    }
}

/// What the task reports.
#[derive(Debug)]
pub(crate) enum RefreshResult {
    /// New tokens are committed; this is the stored row.
    Refreshed { connection: Connection },
    /// The store holds a state this process did not write (new tokens from elsewhere,
    /// a status change); adopt it.
    Adopted { connection: Connection },
    /// The connection was deleted.
    Deleted,
    /// The provider answered with new tokens, but the commit failed: they are kept in the
    /// slot (and the journal) and the commit is retried.
    CommitFailed { message: String },
    /// This replica does not own the connection's partition (any more): nothing was
    /// presented, or what the provider answered was salvaged (see `salvage_fenced`).
    Fenced,
    /// The refresh failed; `connection` is the row after recording the failure, if that write succeeded.
    Failed {
        failure: RefreshFailure,
        connection: Option<Connection>,
    },
}

impl RefreshResult {
    fn outcome(&self) -> (&'static str, Option<&str>) {
        match self {
            Self::Refreshed { .. } => ("success", None),
            Self::Adopted { .. } => ("adopted", None),
            Self::Deleted => ("deleted", None),
            Self::Fenced => ("fenced", Some("owner_unavailable")),
            Self::CommitFailed { .. } => ("commit_failed", Some("store_unavailable")),
            Self::Failed { failure, .. } => (outcome_kind(failure.class).as_str(), Some(failure.code.as_str())),
        }
    }
}

fn outcome_kind(class: FailureClass) -> RefreshOutcomeKind {
    match class {
        FailureClass::Permanent => RefreshOutcomeKind::Permanent,
        FailureClass::IntegrationMisconfigured => RefreshOutcomeKind::Misconfigured,
        FailureClass::RateLimited => RefreshOutcomeKind::RateLimited,
        FailureClass::Transient => RefreshOutcomeKind::Transient,
    }
}

/// Runs one refresh inside a span carrying the connection, reason, attempt and outcome
/// (status error unless the refresh succeeded), with child spans for the token endpoint
/// call and the store writes; records the refresh metrics. Returns the result and the
/// span, still open: the actor handles the result inside it (its log lines belong to the
/// refresh's trace) and an escalation links to it.
pub(crate) async fn run(
    shared: Arc<Shared>,
    integration: Arc<IntegrationRuntime>,
    job: RefreshJob,
) -> (RefreshResult, tracing::Span) {
    let span = tracing::info_span!(
        parent: job.parent.id(),
        "refresh",
        otel.name = "tokenvisor.refresh",
        connection.id = %job.base.id,
        tenant.id = %job.base.tenant_id,
        integration = %integration.name,
        provider = %integration.provider,
        refresh.reason = job.reason.as_str(),
        refresh.attempt = i64::from(job.attempt),
        outcome = field::Empty,
        error.code = field::Empty,
        http.response.status_code = field::Empty,
        duration_ms = field::Empty,
        otel.status_code = field::Empty,
        otel.status_description = field::Empty,
    );
    let started = Instant::now();
    // The refresh's state (the job, the provider call, the commit) lives in one ordinary
    // heap block instead of inside the cache-line-aligned task that runs it (meant to
    // spare the allocator; not measured on its own).
    let id = job.base.id;
    let result = Box::pin(run_inner(&shared, &integration, job).instrument(span.clone())).await;
    if matches!(
        result,
        RefreshResult::Refreshed { .. }
            | RefreshResult::Adopted { .. }
            | RefreshResult::Deleted
            | RefreshResult::Fenced
    ) {
        // Committed, or superseded by what the store holds now.
        if !matches!(result, RefreshResult::Refreshed { .. })
            && shared.registry.get(id).is_some_and(|slot| slot.has_pending())
        {
            tracing::warn!(connection.id = %id, "the stored connection moved on; uncommitted tokens from a refresh token it no longer holds are dropped");
        }
        forget_pending(&shared, id).await;
    }
    let elapsed = started.elapsed();
    let (outcome, code) = result.outcome();
    span.record("outcome", outcome);
    if let Some(code) = code {
        span.record("error.code", code);
    }
    match &result {
        RefreshResult::Failed { failure, .. } => {
            if let Some(status) = failure.http_status {
                span.record("http.response.status_code", i64::from(status));
            }
            span.record("otel.status_code", "error");
            span.record("otel.status_description", failure.code.as_str());
            if failure.class == FailureClass::RateLimited {
                shared.metrics.throttled(&integration.provider, "provider");
            }
        }
        RefreshResult::CommitFailed { .. } => {
            span.record("otel.status_code", "error");
            span.record("otel.status_description", "store_unavailable");
        }
        _ => {
            span.record("otel.status_code", "ok");
        }
    }
    span.record("duration_ms", elapsed.as_millis() as i64);
    shared
        .metrics
        .refresh(&integration.provider, outcome, elapsed.as_secs_f64());
    (result, span)
}

async fn run_inner(shared: &Shared, integration: &IntegrationRuntime, job: RefreshJob) -> RefreshResult {
    let Some(lease) = shared
        .config
        .cluster_lease
        .map(|configured| effective_lease(shared, configured))
    else {
        return run_locked(shared, integration, &job).await;
    };
    // Several replicas: the one holding the connection's lease calls the provider; the
    // others wait for its commit and adopt the tokens it stored. The lease comes first, so
    // a replica waiting for another one's holds no permit and no refresh slot.
    let guard = match &job.pending {
        None => match take_lease(shared, &job.base, lease).await {
            Ok(guard) => guard,
            Err(result) => return result,
        },
        Some(_) => {
            // Committing tokens obtained under a lease that was kept for this: extend it.
            let _ = shared
                .store
                .acquire_refresh_lease(job.base.id, &shared.instance_id, lease)
                .await;
            LeaseGuard::new(shared, job.base.id)
        }
    };
    let result = with_renewal(shared, job.base.id, lease, run_locked(shared, integration, &job)).await;
    match &result {
        // The provider's tokens wait in the actor for their commit: other replicas must
        // not refresh from the stored (maybe rotated-away) token meanwhile.
        RefreshResult::CommitFailed { .. } => guard.keep(PENDING_COMMIT_LEASE).await,
        // The supervisor is about to mark it needs_reauth: the other replicas wait for
        // that write (and adopt it) instead of presenting the dead grant again. Should the
        // escalation never land, the lease runs out and they find out for themselves.
        RefreshResult::Failed { failure, .. } if failure.class == FailureClass::Permanent => guard.keep(lease).await,
        _ => guard.release().await,
    }
    result
}

/// The refresh under this process's limits and the connection's refresh lock.
async fn run_locked(shared: &Shared, integration: &IntegrationRuntime, job: &RefreshJob) -> RefreshResult {
    // In a cluster: wait (holding no permit) until a refresh token of this partition may
    // be presented (out of a take-over's quiet period, lease well ahead).
    if job.pending.is_none()
        && let (Some(ownership), Some(cluster)) = (&shared.ownership, &shared.config.cluster)
    {
        let quiet = crate::cluster::membership::in_flight_bound(shared);
        let partition = tokenvisor_core::partition_of(job.base.id);
        if ownership
            .presentable(partition, quiet + cluster.lease * 2)
            .await
            .is_err()
        {
            return RefreshResult::Fenced;
        }
    }
    // The integration's own limits first, so a throttled or slow integration never holds
    // process-wide slots while it waits; committing kept tokens calls no provider.
    let _integration_permit = match &job.pending {
        Some(_) => None,
        None => match integration.limiter.acquire().await {
            Some(permit) => Some(permit),
            None => {
                return RefreshResult::Failed {
                    failure: RefreshFailure::new(
                        FailureClass::Transient,
                        "shutting_down",
                        "tokenvisor is shutting down",
                    ),
                    connection: None,
                };
            }
        },
    };
    let Ok(_permit) = shared.refresh_slots.acquire().await else {
        return RefreshResult::Failed {
            failure: RefreshFailure::new(FailureClass::Transient, "shutting_down", "tokenvisor is shutting down"),
            connection: None,
        };
    };
    let slot = shared.registry.get_or_insert(job.base.id, job.base.version);
    let mut committed_version = slot.refresh_lock.clone().lock_owned().await;
    let started_at = shared.clock.now();
    let started = Instant::now();

    // Someone (a previous actor of this connection, the supervisor) wrote since the
    // actor's view was taken: start from the stored row.
    let mut base = job.base.clone();
    if *committed_version != base.version {
        match shared.store.get_connection(base.id).await {
            Ok(Some(current)) => {
                match &job.pending {
                    // Kept tokens go on top of the stored row while it still holds the
                    // refresh token they came from (its status is kept).
                    Some(pending) if pending.is_in(&current) => {
                        *committed_version = current.version;
                        return RefreshResult::Refreshed { connection: current };
                    }
                    Some(pending) if pending.applies_to(&current) => {}
                    _ if !current.same_tokens_as(&base) || !current.status.is_supervised() => {
                        return RefreshResult::Adopted { connection: current };
                    }
                    _ => {}
                }
                base = current;
            }
            Ok(None) => return RefreshResult::Deleted,
            Err(error) => return store_failure(&error.to_string()),
        }
    }

    refresh_and_commit(
        shared,
        integration,
        job,
        base,
        &mut committed_version,
        started_at,
        started,
    )
    .await
}

/// How long the lease is kept for tokens that await their commit (Atlassian's grace
/// period for the previous refresh token is 10 minutes).
const PENDING_COMMIT_LEASE: std::time::Duration = std::time::Duration::from_secs(600);

/// The configured lease, but never shorter than a provider call plus a commit can take.
fn effective_lease(shared: &Shared, configured: std::time::Duration) -> std::time::Duration {
    let floor = shared.config.client.request_timeout
        + shared.config.client.connect_timeout
        + std::time::Duration::from_secs(10);
    configured.max(floor)
}

/// Runs `work` while renewing the connection's lease every third of its duration, so a
/// slow provider call or commit never outlives it.
async fn with_renewal(
    shared: &Shared,
    id: ConnectionId,
    lease: std::time::Duration,
    work: impl std::future::Future<Output = RefreshResult>,
) -> RefreshResult {
    tokio::pin!(work);
    let mut renew = tokio::time::interval(lease / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = renew.tick() => {
                if let Err(error) = shared.store.acquire_refresh_lease(id, &shared.instance_id, lease).await {
                    tracing::warn!(connection.id = %id, error = %error, "failed to renew the refresh lease");
                }
            }
        }
    }
}

/// This replica's hold on a connection's lease: given back when dropped (a panic or a
/// cancelled task included) unless kept.
struct LeaseGuard {
    store: std::sync::Arc<dyn tokenvisor_store::Store>,
    owner: String,
    id: ConnectionId,
    armed: bool,
}

impl LeaseGuard {
    fn new(shared: &Shared, id: ConnectionId) -> Self {
        Self {
            store: shared.store.clone(),
            owner: shared.instance_id.clone(),
            id,
            armed: true,
        }
    }

    async fn release(mut self) {
        self.armed = false;
        if let Err(error) = self.store.release_refresh_lease(self.id, &self.owner).await {
            // It runs out by itself: the other replicas wait at most the lease duration.
            tracing::warn!(connection.id = %self.id, error = %error, "failed to release the refresh lease");
        }
    }

    async fn keep(mut self, lease: std::time::Duration) {
        self.armed = false;
        if let Err(error) = self.store.acquire_refresh_lease(self.id, &self.owner, lease).await {
            tracing::warn!(connection.id = %self.id, error = %error, "failed to extend the refresh lease");
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, owner, id) = (self.store.clone(), std::mem::take(&mut self.owner), self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store.release_refresh_lease(id, &owner).await;
            });
        }
    }
}

/// Takes the connection's refresh lease, waiting while another replica holds it. After
/// taking it, the row is read again: if another replica refreshed meanwhile, its tokens
/// are adopted instead of refreshing twice (with a rotated-away refresh token). `Ok`:
/// this replica holds the lease; `Err`: what the refresh ends with instead (adopt the
/// other replica's commit, deleted, or a store failure).
async fn take_lease(
    shared: &Shared,
    base: &Connection,
    lease: std::time::Duration,
) -> Result<LeaseGuard, RefreshResult> {
    let owner = shared.instance_id.as_str();
    loop {
        match shared.store.acquire_refresh_lease(base.id, owner, lease).await {
            Ok(LeaseOutcome::Acquired) => {}
            Ok(LeaseOutcome::Missing) => return Err(RefreshResult::Deleted),
            Ok(LeaseOutcome::Held { remaining, .. }) => {
                // Look again every 100 ms (or when the holder's lease runs out).
                tokio::time::sleep(remaining.clamp(
                    std::time::Duration::from_millis(1),
                    std::time::Duration::from_millis(100),
                ))
                .await;
                match shared.store.get_connection(base.id).await {
                    Ok(Some(current)) if current.version != base.version => {
                        return Err(RefreshResult::Adopted { connection: current });
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(RefreshResult::Deleted),
                    Err(error) => return Err(store_failure(&error.to_string())),
                }
            }
            Err(error) => return Err(store_failure(&error.to_string())),
        }
        let guard = LeaseGuard::new(shared, base.id);
        let instead = match shared.store.get_connection(base.id).await {
            Ok(Some(current)) if current.version == base.version => return Ok(guard),
            Ok(Some(current)) => RefreshResult::Adopted { connection: current },
            Ok(None) => RefreshResult::Deleted,
            Err(error) => store_failure(&error.to_string()),
        };
        guard.release().await;
        return Err(instead);
    }
}

/// Calls the provider (unless the job carries tokens still to commit) and commits.
async fn refresh_and_commit(
    shared: &Shared,
    integration: &IntegrationRuntime,
    job: &RefreshJob,
    base: Connection,
    committed_version: &mut tokio::sync::OwnedMutexGuard<i64>,
    started_at: DateTime<Utc>,
    started: Instant,
) -> RefreshResult {
    let pending = match job.pending.clone() {
        Some(pending) => pending,
        None => match present(shared, integration, &base).await {
            Ok(tokens) => PendingTokens {
                tokens,
                obtained_at: shared.clock.now(),
                base_refresh_token: base.refresh_token.clone(),
                journal_seq: None,
            },
            Err(Refused {
                failure,
                salvaged_refresh_token: Some(salvaged),
            }) => {
                return commit_salvaged(
                    shared,
                    integration,
                    job,
                    base,
                    salvaged,
                    failure,
                    committed_version,
                    (started_at, started),
                )
                .await;
            }
            Err(Refused { failure, .. }) if failure.code == FENCED_CODE => return RefreshResult::Fenced,
            Err(Refused { failure, .. }) => {
                let connection = record_failure(shared, &base, &failure, committed_version).await;
                record_attempt(
                    shared,
                    &base,
                    job,
                    started_at,
                    started,
                    outcome_kind(failure.class),
                    Some(&failure),
                )
                .await;
                return RefreshResult::Failed { failure, connection };
            }
        },
    };

    // The success is recorded in the history in the same transaction as the tokens.
    let attempt = attempt_of(base.id, job, (started_at, started), RefreshOutcomeKind::Success, None);
    commit_and_keep(shared, integration, job, base, pending, &attempt, committed_version).await
}

/// Commits `pending` (see [`commit_tokens`]); tokens the store did not take are kept in
/// the slot and the journal.
async fn commit_and_keep(
    shared: &Shared,
    integration: &IntegrationRuntime,
    job: &RefreshJob,
    base: Connection,
    pending: PendingTokens,
    attempt: &RefreshAttempt,
    committed_version: &mut i64,
) -> RefreshResult {
    let id = base.id;
    let result = commit_tokens(
        shared,
        &integration.policy,
        base,
        &pending,
        job,
        attempt,
        committed_version,
    )
    .await;
    settle_pending(shared, id, pending, &result).await;
    result
}

/// The history entry of an attempt that started at `started_at` (`started` on the
/// monotonic clock) and ended now with `outcome`.
fn attempt_of(
    connection_id: ConnectionId,
    job: &RefreshJob,
    (started_at, started): (DateTime<Utc>, Instant),
    outcome: RefreshOutcomeKind,
    failure: Option<&RefreshFailure>,
) -> RefreshAttempt {
    RefreshAttempt {
        connection_id,
        started_at,
        reason: job.reason,
        outcome,
        error_code: failure.map(|f| f.code.clone()),
        http_status: failure.and_then(|f| f.http_status),
        duration_ms: started.elapsed().as_millis() as i64,
    }
}

/// The provider's answer was unusable (an access token outside RFC 6749's characters),
/// but it carried a refresh token that may have replaced the stored one: commit that
/// refresh token (with the current access token) like any new token set, and report the
/// refresh as the transient failure it is.
#[allow(clippy::too_many_arguments)]
async fn commit_salvaged(
    shared: &Shared,
    integration: &IntegrationRuntime,
    job: &RefreshJob,
    base: Connection,
    salvaged: SecretString,
    failure: RefreshFailure,
    committed_version: &mut tokio::sync::OwnedMutexGuard<i64>,
    (started_at, started): (DateTime<Utc>, Instant),
) -> RefreshResult {
    tracing::warn!(connection.id = %base.id, error.code = %failure.code, "unusable access token refused; keeping the refresh token of the answer");
    let now = shared.clock.now();
    let pending = PendingTokens {
        tokens: TokenSet {
            access_token: base.access_token.clone(),
            refresh_token: Some(salvaged),
            token_type: None,
            scope: None,
            expires_in: (base.expires_at - now).to_std().unwrap_or_default(),
            metadata: serde_json::Map::new(),
        },
        obtained_at: now,
        base_refresh_token: base.refresh_token.clone(),
        journal_seq: None,
    };
    let attempt = attempt_of(
        base.id,
        job,
        (started_at, started),
        outcome_kind(failure.class),
        Some(&failure),
    );
    let result = commit_and_keep(shared, integration, job, base, pending, &attempt, committed_version).await;
    match result {
        RefreshResult::Refreshed { connection } => RefreshResult::Failed {
            failure,
            connection: Some(connection),
        },
        other => other,
    }
}

/// After a failed commit, the tokens are kept in the slot and written to the journal
/// before the process goes on holding them alone.
async fn settle_pending(shared: &Shared, id: ConnectionId, mut pending: PendingTokens, result: &RefreshResult) {
    if !matches!(result, RefreshResult::CommitFailed { .. }) {
        return;
    }
    if pending.journal_seq.is_none()
        && let Some(journal) = &shared.journal
    {
        match journal.record(id, &pending).await {
            Ok(seq) => pending.journal_seq = Some(seq),
            Err(error) => {
                tracing::error!(connection.id = %id, error = %error, "failed to journal uncommitted tokens; they are kept in memory only")
            }
        }
    }
    shared.registry.get_or_insert(id, 0).set_pending(Some(pending));
}

/// Forgets the connection's uncommitted tokens (committed, or superseded) and marks them
/// done in the journal.
pub(crate) async fn forget_pending(shared: &Shared, id: ConnectionId) {
    let Some(slot) = shared.registry.get(id) else {
        return;
    };
    let Some(previous) = slot.set_pending(None) else {
        return;
    };
    if let (Some(seq), Some(journal)) = (previous.journal_seq, &shared.journal)
        && let Err(error) = journal.committed(seq).await
    {
        tracing::warn!(connection.id = %id, error = %error, "failed to mark journaled tokens committed");
    }
}

/// Checks once more, right before presenting the refresh token, that this replica still
/// owns the connection's partition with the lease well ahead (a cluster), then calls
/// the provider.
async fn present(shared: &Shared, integration: &IntegrationRuntime, base: &Connection) -> Result<TokenSet, Refused> {
    if let (Some(ownership), Some(cluster)) = (&shared.ownership, &shared.config.cluster)
        && ownership
            .presentable(tokenvisor_core::partition_of(base.id), cluster.lease / 2)
            .await
            .is_err()
    {
        return Err(Refused {
            failure: RefreshFailure::new(
                FailureClass::Transient,
                FENCED_CODE,
                "this replica no longer owns the connection's partition",
            ),
            salvaged_refresh_token: None,
        });
    }
    obtain_tokens(shared, integration, base).await
}

/// The failure code of a refresh abandoned because the partition was lost before the
/// provider call.
pub(crate) const FENCED_CODE: &str = "partition_lost";

async fn obtain_tokens(
    shared: &Shared,
    integration: &IntegrationRuntime,
    base: &Connection,
) -> Result<TokenSet, Refused> {
    let Some(refresh_token) = &base.refresh_token else {
        return Err(Refused {
            failure: RefreshFailure::new(
                FailureClass::Permanent,
                "no_refresh_token",
                "no refresh token is stored and the access token is expiring",
            ),
            salvaged_refresh_token: None,
        });
    };
    let resolved = integration.resolved.as_ref().map_err(|e| Refused {
        failure: RefreshFailure::new(
            FailureClass::IntegrationMisconfigured,
            "integration_config",
            e.to_string(),
        ),
        salvaged_refresh_token: None,
    })?;
    // An HTTP client span (OpenTelemetry HTTP semantic conventions): method, server and
    // path of the token endpoint, never its query string nor a body.
    let endpoint = resolved.token_url_for(&base.metadata).ok();
    let span = tracing::info_span!(
        "token_endpoint",
        otel.name = "POST",
        otel.kind = "client",
        http.request.method = "POST",
        server.address = endpoint.as_ref().and_then(|url| url.host_str()).unwrap_or_default(),
        server.port = i64::from(endpoint.as_ref().and_then(|url| url.port_or_known_default()).unwrap_or_default()),
        url.path = endpoint.as_ref().map(|url| url.path()).unwrap_or_default(),
        http.response.status_code = field::Empty,
        error.type = field::Empty,
        otel.status_code = field::Empty,
    );
    let answer = shared
        .client
        .refresh(resolved, &base.metadata, refresh_token)
        .instrument(span.clone())
        .await;
    match &answer {
        // The client accepts only success answers carrying an access token (RFC 6749 §5.1: 200).
        Ok(_) => {
            span.record("http.response.status_code", 200_i64);
        }
        Err(error) => {
            if let Some(status) = error.http_status() {
                span.record("http.response.status_code", i64::from(status));
            }
            span.record("error.type", error.code().as_str());
            span.record("otel.status_code", "error");
        }
    }
    answer.map_err(|error| Refused {
        failure: error.to_failure(),
        salvaged_refresh_token: error.salvaged_refresh_token().cloned(),
    })
}

/// A refresh the provider did not grant, with the refresh token its answer carried when
/// the answer was unusable otherwise (a rotated token that must not be dropped).
struct Refused {
    failure: RefreshFailure,
    salvaged_refresh_token: Option<SecretString>,
}

/// Commits `pending` on top of `base` with compare-and-swap. On a conflict, re-applies
/// onto the stored row when it still holds the tokens this refresh started from (only
/// its status or metadata changed); otherwise adopts the stored row.
async fn commit_tokens(
    shared: &Shared,
    policy: &tokenvisor_core::SchedulePolicy,
    mut base: Connection,
    pending: &PendingTokens,
    job: &RefreshJob,
    attempt: &RefreshAttempt,
    committed_version: &mut i64,
) -> RefreshResult {
    let span = tracing::info_span!(
        "store_commit",
        otel.name = "tokenvisor.store.commit",
        db.operation.name = "compare_and_swap",
        outcome = field::Empty,
    );
    let outcome_span = span.clone();
    let result = async move {
        for _ in 0..8 {
            let now = shared.clock.now();
            let mut next = base.clone();
            next.apply_token_set(&pending.tokens, pending.obtained_at);
            if next.status.is_supervised() {
                next.status = ConnectionStatus::Active;
            }
            next.consecutive_failures = 0;
            next.last_error = None;
            next.last_refresh_at = Some(now);
            next.updated_at = now;
            let mut recent = job.recent.clone();
            recent.push(now);
            next.next_refresh_at = Some(next_refresh_at(next.issued_at, next.expires_at, &recent, now, policy, job.jitter));
            let outcome = match shared.fence(base.id) {
                Ok(None) => shared.store.commit_refresh(&next, base.version, attempt).await,
                Ok(Some(fence)) => shared.store.commit_refresh_fenced(&next, base.version, attempt, fence).await,
                Err(crate::shared::NotOwner) => Ok(CasOutcome::Fenced),
            };
            match outcome {
                Ok(CasOutcome::Committed { version }) => {
                    next.version = version;
                    *committed_version = version;
                    return RefreshResult::Refreshed { connection: next };
                }
                Ok(CasOutcome::Fenced) => {
                    shared.metrics.fenced();
                    return salvage_fenced(shared, &next, base.version, attempt).await;
                }
                Ok(CasOutcome::Conflict { current: None }) => return RefreshResult::Deleted,
                Ok(CasOutcome::Conflict { current: Some(current) }) => {
                    if pending.is_in(&current) {
                        *committed_version = current.version;
                        return RefreshResult::Refreshed { connection: *current };
                    }
                    if !pending.applies_to(&current) {
                        tracing::warn!(connection.id = %base.id, "tokens changed elsewhere during refresh; adopting the stored ones");
                        return RefreshResult::Adopted { connection: *current };
                    }
                    base = *current;
                }
                Err(error) => {
                    tracing::warn!(connection.id = %base.id, error = %error, "failed to commit refreshed tokens; keeping them to retry the commit");
                    return RefreshResult::CommitFailed { message: error.to_string() };
                }
            }
        }
        RefreshResult::CommitFailed { message: "too many concurrent writes".into() }
    }
    .instrument(span)
    .await;
    outcome_span.record("outcome", result.outcome().0);
    result
}

/// The commit of tokens the provider issued was fenced: this replica lost the
/// connection's partition while the request was in flight. The tokens are real and the
/// refresh token they replace may be dead now, so they go onto the row anyway when
/// nobody wrote it since (the same compare-and-swap, without the fence: the new owner's
/// own writes then conflict and adopt them). Either way this replica stops supervising.
async fn salvage_fenced(shared: &Shared, next: &Connection, expected: i64, attempt: &RefreshAttempt) -> RefreshResult {
    let salvaged = shared.store.commit_refresh(next, expected, attempt).await;
    tracing::warn!(
        connection.id = %next.id,
        salvaged = matches!(salvaged, Ok(CasOutcome::Committed { .. })),
        "a refresh finished after this replica lost the connection's partition"
    );
    match salvaged {
        Ok(CasOutcome::Committed { .. } | CasOutcome::Conflict { .. } | CasOutcome::Fenced) => RefreshResult::Fenced,
        // Kept (slot and journal) like any commit that failed; the owner is stopped.
        Err(error) => RefreshResult::CommitFailed {
            message: error.to_string(),
        },
    }
}

/// Records a non-permanent failure on the row (status `degraded`, counters, last
/// error). Permanent failures are written by the supervisor when it escalates.
async fn record_failure(
    shared: &Shared,
    base: &Connection,
    failure: &RefreshFailure,
    committed_version: &mut i64,
) -> Option<Connection> {
    if failure.class.is_permanent() {
        return None;
    }
    let now = shared.clock.now();
    let mut next = base.clone();
    if next.status == ConnectionStatus::Active {
        next.status = ConnectionStatus::Degraded;
    }
    next.consecutive_failures = next.consecutive_failures.saturating_add(1);
    next.last_error = Some(LastError {
        code: failure.code.clone(),
        message: failure.message.clone(),
        at: now,
    });
    next.updated_at = now;
    let span = tracing::info_span!(
        "store_record_failure",
        otel.name = "tokenvisor.store.record_failure",
        db.operation.name = "compare_and_swap",
    );
    match shared.write(&next, base.version).instrument(span).await {
        Ok(CasOutcome::Committed { version }) => {
            next.version = version;
            *committed_version = version;
            Some(next)
        }
        Ok(CasOutcome::Conflict { .. } | CasOutcome::Fenced) => None,
        Err(error) => {
            tracing::warn!(connection.id = %base.id, error = %error, "failed to record refresh failure");
            None
        }
    }
}

async fn record_attempt(
    shared: &Shared,
    connection: &Connection,
    job: &RefreshJob,
    started_at: DateTime<Utc>,
    started: Instant,
    outcome: RefreshOutcomeKind,
    failure: Option<&RefreshFailure>,
) {
    let attempt = attempt_of(connection.id, job, (started_at, started), outcome, failure);
    if let Err(error) = shared.store.record_attempt(&attempt).await {
        tracing::debug!(connection.id = %connection.id, error = %error, "failed to record refresh attempt");
    }
}

fn store_failure(message: &str) -> RefreshResult {
    RefreshResult::Failed {
        failure: RefreshFailure::new(FailureClass::Transient, "store_unavailable", message),
        connection: None,
    }
}
