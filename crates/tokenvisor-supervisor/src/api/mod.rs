//! The embedding API: [`Tokenvisor`], a cheap, cloneable handle that hides the actors,
//! and its handles by concern: [`Tokens`], [`Connections`], [`Integrations`] and
//! [`Authorizations`](crate::Authorizations).

mod connections;
mod integrations;
mod routing;
mod tokens;

pub use connections::{Connections, NewConnection, Registered};
pub use integrations::{IntegrationUpdate, Integrations, NewIntegration};
pub use tokens::Tokens;

use crate::config::TokenvisorConfig;
use crate::connection::{ConnectionMsg, LifecycleOp};
use crate::error::{AdminError, StartError, TokenError};
use crate::journal::{Journal, JournalEntry};
use crate::shared::{Shared, SharedRef};
use crate::supervisor::{LoadFailed, StartupPage, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::token::AccessToken;
use chrono::{DateTime, Utc};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use std::sync::Arc;
use tokenvisor_core::{Connection, ConnectionId, ConnectionStatus, Event, EventKind, validity_floor};
use tokenvisor_provider::TokenClient;
use tokenvisor_store::{CasOutcome, Store, StoreError};
use tokio::sync::broadcast;

/// The span of one call of the token API: a child of the caller's current span.
pub(super) fn api_span(name: &'static str, id: ConnectionId) -> tracing::Span {
    tracing::info_span!(
        "token_api",
        otel.name = name,
        connection.id = %id,
        outcome = tracing::field::Empty,
        error.code = tracing::field::Empty,
    )
}

/// Records how a token API call ended (`ok` or the error's code); never the token.
pub(super) fn record_result(span: &tracing::Span, result: &Result<AccessToken, TokenError>) {
    match result {
        Ok(_) => {
            span.record("outcome", "ok");
        }
        Err(error) => {
            span.record("outcome", "error");
            span.record("error.code", error.code());
        }
    }
}

/// An embedded tokenvisor: a supervisor and one actor per supervised connection.
/// Cloning shares the instance. Call [`Tokenvisor::shutdown`] before dropping the last clone.
#[derive(Clone)]
pub struct Tokenvisor {
    shared: SharedRef,
    supervisor: ActorRef<SupervisorMsg>,
    /// Shared by the handles only (not the actors): its drop means the last handle is gone.
    _last_handle: Arc<LastHandle>,
}

/// Dropped with the last [`Tokenvisor`] handle. An instance nobody shut down is shut
/// down in the background then (with a warning): call [`Tokenvisor::shutdown`] to wait
/// for in-flight commits and learn what could not be committed.
struct LastHandle {
    shared: SharedRef,
    supervisor: ActorRef<SupervisorMsg>,
}

impl Drop for LastHandle {
    fn drop(&mut self) {
        if self.shared.is_shutting_down() {
            return;
        }
        tracing::warn!(
            "the last Tokenvisor handle was dropped without shutdown(); stopping in the background (await shutdown() to wait for in-flight commits)"
        );
        let (shared, supervisor) = (self.shared.clone(), self.supervisor.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = shut_down(&shared, &supervisor).await;
                });
            }
            Err(_) => {
                shared.begin_shutdown();
                supervisor.stop(Some("dropped".into()));
            }
        }
    }
}

impl std::fmt::Debug for Tokenvisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenvisor")
            .field("connections", &self.shared.registry.len())
            .finish()
    }
}

/// Connections handed to the supervisor per page at start-up.
const STARTUP_PAGE: usize = 10_000;

/// Streams the supervised connections from `store` (decrypting them) into `pages`: all
/// of them, or those of the `partitions` this replica claimed. On a store error, sends
/// [`LoadFailed`] (the supervisor then stops what it started) and returns the error.
async fn load_pages(
    store: Arc<dyn Store>,
    partitions: Option<Vec<tokenvisor_core::Partition>>,
    pages: tokio::sync::mpsc::Sender<StartupPage>,
) -> Result<(), StoreError> {
    use futures::StreamExt as _;
    let loading = std::time::Instant::now();
    let mut total = 0;
    let connections = match (partitions, store.partitions()) {
        (Some(partitions), Some(cluster)) => cluster.load_supervised_in(partitions),
        _ => store.load_supervised(),
    };
    let mut stream = connections.chunks(STARTUP_PAGE);
    while let Some(chunk) = stream.next().await {
        let page = match chunk.into_iter().collect::<Result<Vec<Connection>, StoreError>>() {
            Ok(page) => page,
            Err(error) => {
                let _ = pages.send(Err(LoadFailed)).await;
                return Err(error);
            }
        };
        total += page.len();
        if pages.send(Ok(page)).await.is_err() {
            break;
        }
    }
    tracing::info!(
        connections = total,
        elapsed_ms = loading.elapsed().as_millis() as u64,
        "loaded supervised connections"
    );
    Ok(())
}

impl Tokenvisor {
    /// Loads every supervised connection from `store`, spawns its actor (tokens already
    /// inside their lead are refreshed at once, spread out, under the concurrency limit)
    /// and returns the handle. Runs on the caller's tokio runtime.
    pub async fn start(store: Arc<dyn Store>, config: TokenvisorConfig) -> Result<Self, StartError> {
        let client = TokenClient::new(config.client.clone()).map_err(|e| StartError::Client(e.to_string()))?;
        // Tokens a previous run could not commit go into the store before anything else
        // reads it.
        let journal = match &config.journal {
            Some(journal_config) => {
                let (journal, entries) = Journal::open(journal_config)?;
                replay_journal(store.as_ref(), &journal, entries, config.clock.now()).await?;
                Some(journal)
            }
            None => None,
        };
        let shared = Arc::new(Shared::new(store, client, config, journal)?);
        shared.metrics.observe(Arc::downgrade(&shared));
        // In a cluster: the first heartbeat and this replica's share of the free
        // partitions, whose connections are the ones to load.
        let claimed = match &shared.ownership {
            Some(_) => Some(
                crate::cluster::membership::join(&shared)
                    .await
                    .map_err(|error| StartError::Cluster(error.to_string()))?,
            ),
            None => None,
        };
        // The integrations first: while the connections stream, a single-connection pool
        // (in-memory SQLite) has no connection left to look them up one by one.
        for integration in shared.store.list_integrations().await? {
            shared.cache_integration(&integration);
        }
        // Pages are loaded and decrypted by one task while the supervisor spawns the
        // actors of the previous page.
        let (pages, receiver) = tokio::sync::mpsc::channel(2);
        let loader = tokio::spawn(load_pages(shared.store.clone(), claimed, pages));
        let args = SupervisorArgs {
            shared: shared.clone(),
            pages: receiver,
        };
        let started = Actor::spawn(None, Supervisor, args).await;
        let loaded = loader.await.map_err(|e| StartError::Spawn(e.to_string()));
        match (started, loaded) {
            (Ok((supervisor, _)), Ok(Ok(()))) => {
                if let Some(membership) = &shared.membership {
                    let task = tokio::spawn(crate::cluster::membership::run(
                        shared.clone(),
                        supervisor.clone(),
                        membership.stop.clone(),
                        membership.wake.clone(),
                    ));
                    *membership.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
                }
                Ok(Self {
                    _last_handle: Arc::new(LastHandle {
                        shared: shared.clone(),
                        supervisor: supervisor.clone(),
                    }),
                    shared,
                    supervisor,
                })
            }
            (started, loaded) => {
                // Start-up fails as a whole: a supervisor that did start stops, and its
                // linked actors with it.
                let spawn_error = match started {
                    Ok((supervisor, _)) => {
                        let _ = supervisor
                            .stop_and_wait(None, Some(std::time::Duration::from_secs(30)))
                            .await;
                        None
                    }
                    Err(error) => Some(StartError::Spawn(error.to_string())),
                };
                // Nothing of the failed start keeps running: refreshes already in flight
                // commit (or fail) before start returns.
                shared.begin_shutdown();
                shared.tasks.close();
                shared.tasks.wait().await;
                Err(match loaded {
                    Ok(Err(error)) => StartError::Store(error),
                    Err(error) => error,
                    Ok(Ok(())) => spawn_error.unwrap_or_else(|| StartError::Spawn("the supervisor stopped".into())),
                })
            }
        }
    }

    pub(crate) fn shared(&self) -> &SharedRef {
        &self.shared
    }

    /// Each integration in use with its limiter now: the refreshes waiting for a slot or
    /// for the rate limit, and those calling the provider (two counters read per
    /// integration; integrations no connection of this process used yet are absent).
    pub fn provider_limits_now(&self) -> Vec<(tokenvisor_core::IntegrationId, crate::LimiterSnapshot)> {
        self.shared.limiter_snapshots()
    }

    /// The store this instance writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Subscribes to connection events (published from now on).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Whether the supervisor runs and takes requests (not shutting down).
    pub fn is_running(&self) -> bool {
        !self.shared.is_shutting_down()
            && matches!(
                self.supervisor.get_status(),
                ractor::ActorStatus::Starting | ractor::ActorStatus::Running | ractor::ActorStatus::Upgrading
            )
    }

    /// Token requests: the access token, a rejected token, a forced refresh.
    pub fn tokens(&self) -> Tokens<'_> {
        Tokens::new(self)
    }

    /// Connections: register, read, deactivate, activate, replace tokens, remove.
    pub fn connections(&self) -> Connections<'_> {
        Connections::new(self)
    }

    /// Integrations: register, read, update (rotate a secret), remove.
    pub fn integrations(&self) -> Integrations<'_> {
        Integrations::new(self)
    }

    /// The authorization-code flow: connect a tenant, re-authorize a connection.
    pub fn authorizations(&self) -> crate::Authorizations<'_> {
        crate::Authorizations::new(self)
    }

    /// This replica in a cluster of replicas sharing the work: status, forwarded requests.
    pub fn cluster(&self) -> crate::cluster::Cluster<'_> {
        crate::cluster::Cluster::new(self)
    }

    /// How many connections have an owner (actor) running that supervises them
    /// (refreshes them); disabled and `needs_reauth` connections are not counted.
    pub fn supervised_count(&self) -> usize {
        self.shared.registry.supervised_count()
    }

    /// Stops taking requests, gives tokens that await their commit one more try, lets
    /// in-flight refreshes finish and commit, then stops every actor. Says how many token
    /// sets it could not commit (they stay in the journal, when one is configured, and
    /// are committed at the next start).
    pub async fn shutdown(&self) -> ShutdownReport {
        shut_down(&self.shared, &self.supervisor).await
    }

    /// Test hook: makes the connection's actor panic.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self, id: ConnectionId) {
        let _ = self
            .supervisor
            .cast(crate::supervisor::SupervisorMsg::InjectPanic { connection_id: id });
    }

    pub(super) fn fast_token(&self, id: ConnectionId) -> Option<AccessToken> {
        let slot = self.shared.registry.get(id)?;
        let token = slot.token()?;
        let floor = validity_floor(token.issued_at, token.expires_at, &self.shared.config.schedule);
        (token.expires_at - self.shared.clock.now() >= floor).then_some(token)
    }

    pub(super) async fn lifecycle(&self, id: ConnectionId, op: LifecycleOp) -> Result<Connection, TokenError> {
        self.routed_lifecycle(id, op).await
    }

    /// The connection's owner: the running one, or one the supervisor starts.
    pub(super) async fn owner(&self, id: ConnectionId) -> Result<ActorRef<ConnectionMsg>, TokenError> {
        if let Some(owner) = self.shared.registry.get(id).and_then(|slot| slot.owner()) {
            return Ok(owner);
        }
        match self
            .supervisor
            .call(
                |reply| SupervisorMsg::Locate {
                    connection_id: id,
                    reply,
                },
                Some(self.shared.config.operation_timeout),
            )
            .await
        {
            Ok(CallResult::Success(owner)) => Ok(owner),
            _ => Err(TokenError::Internal("the supervisor is unavailable".into())),
        }
    }

    /// Sends a request to the connection's owner and waits at most `wait` for its answer.
    /// An owner that stopped meanwhile (removed, crashed) is looked up again.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        id: ConnectionId,
        wait: std::time::Duration,
        message: impl Fn(ractor::RpcReplyPort<Result<T, TokenError>>) -> ConnectionMsg,
    ) -> Result<T, TokenError> {
        if self.shared.is_shutting_down() {
            return Err(TokenError::ShuttingDown);
        }
        let started = tokio::time::Instant::now();
        let timeout = || TokenError::Timeout {
            waited_ms: started.elapsed().as_millis() as u64,
        };
        for _ in 0..3 {
            let owner = self.owner(id).await?;
            let Some(remaining) = wait.checked_sub(started.elapsed()).filter(|d| !d.is_zero()) else {
                return Err(timeout());
            };
            match owner.call(&message, Some(remaining)).await {
                Ok(CallResult::Success(result)) => return result,
                Ok(CallResult::Timeout) => return Err(timeout()),
                // The owner stopped before answering (the connection was removed, or
                // does not exist, or the actor crashed): a missing row is the answer;
                // otherwise ask for the current owner.
                Ok(CallResult::SenderError) | Err(_) => {
                    if self.shared.store.get_connection(id).await?.is_none() {
                        return Err(TokenError::NotFound);
                    }
                }
            }
        }
        Err(TokenError::Internal("the connection's owner keeps stopping".into()))
    }

    /// Tells the replica owning `id` that it was registered here (LISTEN/NOTIFY; the
    /// periodic reconcile finds it should the notification be lost).
    pub(super) async fn announce(&self, id: ConnectionId) {
        if let Some(store) = self.shared.store.partitions()
            && let Err(error) = store.notify(crate::cluster::CONNECTIONS_CHANNEL, &id.to_string()).await
        {
            tracing::warn!(connection.id = %id, error = %error, "failed to announce a registration; the owner's reconcile finds it");
        }
    }

    pub(super) async fn spawn(&self, connection: Connection) -> Result<(), AdminError> {
        let spawned = self
            .supervisor
            .call(
                |reply| SupervisorMsg::Spawn {
                    connection: Box::new(connection),
                    startup: false,
                    reply: Some(reply),
                },
                Some(self.shared.config.operation_timeout),
            )
            .await;
        match spawned {
            Ok(CallResult::Success(())) => Ok(()),
            _ => Err(AdminError::Token(TokenError::Internal("supervisor unavailable".into()))),
        }
    }

    pub(super) fn emit(&self, connection: &Connection, kind: EventKind) {
        self.shared.events.publish(Event {
            at: self.shared.clock.now(),
            connection_id: connection.id,
            tenant_id: connection.tenant_id.clone(),
            integration_id: connection.integration_id,
            kind,
        });
    }
}

/// See [`Tokenvisor::shutdown`].
async fn shut_down(shared: &SharedRef, supervisor: &ActorRef<SupervisorMsg>) -> ShutdownReport {
    shared.begin_shutdown();
    let flushes = shared
        .registry
        .slots()
        .into_iter()
        .filter(|slot| slot.has_pending())
        .filter_map(|slot| slot.owner())
        .map(|owner| async move {
            let _ = owner
                .call(ConnectionMsg::Flush, Some(std::time::Duration::from_secs(10)))
                .await;
        })
        .collect::<Vec<_>>();
    futures::future::join_all(flushes).await;
    shared.tasks.close();
    shared.tasks.wait().await;
    // In-flight refreshes are committed: give the partitions to the other replicas now.
    crate::cluster::membership::leave(shared).await;
    let uncommitted = shared.registry.slots().iter().filter(|slot| slot.has_pending()).count();
    let journaled = shared.journal.as_ref().map_or(0, |journal| journal.outstanding());
    if uncommitted > 0 {
        tracing::error!(
            uncommitted,
            journaled,
            "stopping with token sets the store did not take; the journal keeps the journaled ones for the next start"
        );
    }
    let _ = supervisor.stop_and_wait(Some("shutdown".into()), None).await;
    tracing::info!("tokenvisor stopped");
    ShutdownReport { uncommitted, journaled }
}

/// What [`Tokenvisor::shutdown`] could not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Token sets the provider issued that the store did not take before the stop.
    pub uncommitted: usize,
    /// Of those (and of earlier runs), how many the journal keeps for the next start.
    pub journaled: usize,
}

/// Commits the token sets a previous run journaled: each goes onto the stored row when
/// the row still holds the refresh token it came from, and is dropped when the row moved
/// on (already committed, re-authorized, deleted).
async fn replay_journal(
    store: &dyn Store,
    journal: &Arc<Journal>,
    entries: Vec<JournalEntry>,
    now: DateTime<Utc>,
) -> Result<(), StartError> {
    for entry in entries {
        let JournalEntry { connection_id, pending } = entry;
        let mut outcome = "dropped";
        for _ in 0..16 {
            let Some(mut row) = store.get_connection(connection_id).await? else {
                break;
            };
            if pending.is_in(&row) {
                outcome = "already committed";
                break;
            }
            if !pending.applies_to(&row) {
                break;
            }
            let expected = row.version;
            row.apply_token_set(&pending.tokens, pending.obtained_at);
            row.last_refresh_at = Some(pending.obtained_at);
            if row.status.is_supervised() {
                row.status = ConnectionStatus::Active;
            }
            row.consecutive_failures = 0;
            row.last_error = None;
            row.next_refresh_at = None;
            row.updated_at = now;
            if let CasOutcome::Committed { .. } = store.compare_and_swap(&row, expected).await? {
                outcome = "committed";
                break;
            }
        }
        tracing::info!(connection.id = %connection_id, outcome, "replayed journaled tokens");
        if let Some(seq) = pending.journal_seq {
            journal.committed(seq).await?;
        }
    }
    journal.truncate_if_idle().await?;
    Ok(())
}
