//! Where a failure escalates: the supervisor actor spawns one linked connection actor
//! (the connection's owner) per supervised connection and on demand for any other,
//! restarts crashed ones within a budget, and decides that a permanent failure makes a
//! connection `needs_reauth` (inactive, `refresh_failures + 1`, event), which the owner
//! then writes, one connection at a time, without touching any other.
//!
//! It is the only one that starts owners, so a connection has at most one in the
//! process; callers that find no owner ask it ([`SupervisorMsg::Locate`]) instead of
//! polling.

use crate::connection::{ConnectionActor, ConnectionArgs, ConnectionMsg, RETIRED};
use crate::registry::Slot;
use crate::shared::SharedRef;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokenvisor_core::{Connection, ConnectionId, FailureClass, RefreshFailure, SecretString};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Links `span` to the span that caused it (when OpenTelemetry is on and `cause` is valid).
fn link(span: &tracing::Span, cause: SpanContext) {
    if cause.is_valid() {
        span.add_link(cause);
    }
}

/// Messages the supervisor handles.
pub(crate) enum SupervisorMsg {
    /// Start (or keep) the owner of this stored connection.
    Spawn {
        connection: Box<Connection>,
        startup: bool,
        reply: Option<RpcReplyPort<()>>,
    },
    /// The owner of a connection, started (loading its row itself) when none runs.
    Locate {
        connection_id: ConnectionId,
        reply: RpcReplyPort<ActorRef<ConnectionMsg>>,
    },
    /// A connection owner met a permanent failure presenting `refresh_token`; `cause` is
    /// the refresh span's context (the escalation span links to it).
    Escalate {
        connection_id: ConnectionId,
        failure: RefreshFailure,
        refresh_token: Option<SecretString>,
        cause: SpanContext,
    },
    /// Start owners for these connections of newly claimed partitions (a cluster).
    SpawnPage(Vec<Connection>),
    /// A connection was registered on another replica, or found without an owner by
    /// the reconcile: start its owner if this replica serves it.
    Notified(ConnectionId),
    /// Stop the owners of the connections in `partitions` (handed over or lost); answers
    /// with their slots, whose refresh locks tell when in-flight refreshes committed.
    Retire {
        partitions: std::collections::HashSet<tokenvisor_core::Partition>,
        reply: RpcReplyPort<Vec<(ConnectionId, Arc<Slot>)>>,
    },
    /// Test hook: make a connection actor panic.
    #[cfg(feature = "fault-injection")]
    InjectPanic { connection_id: ConnectionId },
}

/// How many connection actors start-up spawns concurrently.
const STARTUP_SPAWN_BATCH: usize = 512;

/// The supervisor actor.
pub(crate) struct Supervisor;

pub(crate) struct SupervisorArgs {
    pub shared: SharedRef,
    /// The supervised connections, page by page, until the sender is dropped.
    pub pages: mpsc::Receiver<StartupPage>,
}

/// A page of supervised connections loaded at start-up, or the mark that loading failed.
pub(crate) type StartupPage = Result<Vec<Connection>, LoadFailed>;

/// Loading the supervised connections failed (the loader returns the store's error).
#[derive(Debug)]
pub(crate) struct LoadFailed;

impl std::fmt::Display for LoadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("loading the supervised connections failed")
    }
}

impl std::error::Error for LoadFailed {}

pub(crate) struct SupervisorState {
    shared: SharedRef,
    actors: HashMap<ActorId, ConnectionId>,
    restarts: HashMap<ConnectionId, VecDeque<Instant>>,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            shared: args.shared,
            actors: HashMap::new(),
            restarts: HashMap::new(),
        };
        let spawning = std::time::Instant::now();
        let mut pages = args.pages;
        while let Some(page) = pages.recv().await {
            match page {
                Ok(connections) => state.spawn_all(&myself, connections, true).await,
                Err(failed) => {
                    // Start-up fails as a whole: stop the actors of the pages before.
                    for (_, actor) in state.shared.registry.owners() {
                        actor.stop(None);
                    }
                    return Err(Box::new(failed));
                }
            }
        }
        tracing::info!(
            connections = state.actors.len(),
            elapsed_ms = spawning.elapsed().as_millis() as u64,
            "supervisor started"
        );
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Spawn {
                connection,
                startup,
                reply,
            } => {
                state.spawn(&myself, *connection, startup).await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            SupervisorMsg::Locate { connection_id, reply } => {
                if let Some(owner) = state.locate(&myself, connection_id).await {
                    let _ = reply.send(owner);
                }
            }
            SupervisorMsg::Escalate {
                connection_id,
                failure,
                refresh_token,
                cause,
            } => state.escalate(connection_id, failure, refresh_token, cause, false),
            SupervisorMsg::SpawnPage(connections) => {
                let served: Vec<Connection> = connections
                    .into_iter()
                    .filter(|connection| state.shared.serves(connection.id))
                    .collect();
                state.spawn_all(&myself, served, true).await;
            }
            SupervisorMsg::Notified(connection_id) => {
                if state.shared.serves(connection_id) && !state.shared.is_shutting_down() {
                    state.locate(&myself, connection_id).await;
                }
            }
            SupervisorMsg::Retire { partitions, reply } => {
                let _ = reply.send(state.retire(&partitions));
            }
            #[cfg(feature = "fault-injection")]
            SupervisorMsg::InjectPanic { connection_id } => {
                if let Some(owner) = state.shared.registry.get(connection_id).and_then(|slot| slot.owner()) {
                    let _ = owner.cast(ConnectionMsg::Panic);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Never stop the supervisor because a child stopped (ractor's default would).
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(connection_id) = state.forget(&cell) {
                    tracing::error!(connection.id = %connection_id, error = %error, "connection actor failed");
                    state.restart(&myself, connection_id).await;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(connection_id) = state.forget(&cell) {
                    if reason.as_deref() == Some(RETIRED) {
                        return Ok(());
                    }
                    if state.shared.is_shutting_down() {
                        return Ok(());
                    }
                    tracing::warn!(connection.id = %connection_id, reason = ?reason, "connection actor stopped unexpectedly");
                    state.restart(&myself, connection_id).await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        for (_, actor) in state.shared.registry.owners() {
            actor.stop(Some("shutdown".into()));
        }
        state.actors.clear();
        Ok(())
    }
}

impl SupervisorState {
    async fn spawn(&mut self, myself: &ActorRef<SupervisorMsg>, connection: Connection, startup: bool) {
        let connection_id = connection.id;
        let Some(args) = self.prepare_spawn(myself, connection, startup).await else {
            return;
        };
        let slot = args.slot.clone();
        let spawned = Actor::spawn_linked(None, ConnectionActor, args, myself.get_cell()).await;
        self.finish_spawn(myself, connection_id, &slot, spawned).await;
    }

    /// The running owner of `connection_id`, or a new one that loads the row itself;
    /// `None` when this replica does not serve the connection's partition.
    async fn locate(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        connection_id: ConnectionId,
    ) -> Option<ActorRef<ConnectionMsg>> {
        if !self.shared.serves(connection_id) {
            return None;
        }
        let slot = self.shared.registry.get_or_insert(connection_id, 0);
        if let Some(owner) = self.live_owner(&slot) {
            return Some(owner);
        }
        self.spawn_loading(myself, connection_id, &slot).await
    }

    /// The slot's owner, if it is one of this supervisor's running children.
    fn live_owner(&self, slot: &Slot) -> Option<ActorRef<ConnectionMsg>> {
        slot.owner().filter(|owner| self.actors.contains_key(&owner.get_id()))
    }

    /// Spawns an owner without its row (it loads the row, retrying while the store fails).
    async fn spawn_loading(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        connection_id: ConnectionId,
        slot: &Arc<Slot>,
    ) -> Option<ActorRef<ConnectionMsg>> {
        if !self.shared.serves(connection_id) {
            return None;
        }
        let args = ConnectionArgs {
            id: connection_id,
            loaded: None,
            shared: self.shared.clone(),
            slot: slot.clone(),
            supervisor: myself.clone(),
            startup: false,
        };
        let spawned = Actor::spawn_linked(None, ConnectionActor, args, myself.get_cell()).await;
        self.finish_spawn(myself, connection_id, slot, spawned).await
    }

    /// Spawns the actors of many connections, [`STARTUP_SPAWN_BATCH`] at a time: the
    /// spawns of a batch run concurrently (their `pre_start`s on every worker thread)
    /// instead of one round trip to the runtime per connection.
    async fn spawn_all(&mut self, myself: &ActorRef<SupervisorMsg>, connections: Vec<Connection>, startup: bool) {
        let mut connections = connections.into_iter().peekable();
        while connections.peek().is_some() {
            let mut slots = Vec::with_capacity(STARTUP_SPAWN_BATCH);
            let mut batch = Vec::with_capacity(STARTUP_SPAWN_BATCH);
            for connection in connections.by_ref().take(STARTUP_SPAWN_BATCH) {
                let connection_id = connection.id;
                if let Some(args) = self.prepare_spawn(myself, connection, startup).await {
                    slots.push((connection_id, args.slot.clone()));
                    batch.push(args);
                }
            }
            // One task per worker thread builds and starts its share of the batch.
            let tasks = std::thread::available_parallelism().map_or(2, usize::from).clamp(1, 8);
            let share = batch.len().div_ceil(tasks).max(1);
            let mut handles = Vec::with_capacity(tasks);
            while !batch.is_empty() {
                let rest = batch.split_off(share.min(batch.len()));
                let chunk = std::mem::replace(&mut batch, rest);
                let supervisor = myself.get_cell();
                handles.push(tokio::spawn(async move {
                    let spawns = chunk
                        .into_iter()
                        .map(|args| Actor::spawn_linked(None, ConnectionActor, args, supervisor.clone()));
                    futures::future::join_all(spawns).await
                }));
            }
            let mut slots = slots.into_iter();
            for handle in handles {
                let results = match handle.await {
                    Ok(results) => results,
                    Err(error) => {
                        // A spawn task panicked: its connections get owners that load them.
                        tracing::error!(error = %error, "a start-up spawn task failed");
                        Vec::new()
                    }
                };
                let expected = share.min(slots.len());
                let mut results = results.into_iter();
                for (connection_id, slot) in slots.by_ref().take(expected) {
                    match results.next() {
                        Some(spawned) => {
                            self.finish_spawn(myself, connection_id, &slot, spawned).await;
                        }
                        None => {
                            self.spawn_loading(myself, connection_id, &slot).await;
                        }
                    }
                }
            }
        }
    }

    /// Claims the connection's slot and builds its owner's arguments; `None` when no
    /// owner is needed (one runs already, or the connection is not supervised).
    async fn prepare_spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        connection: Connection,
        startup: bool,
    ) -> Option<ConnectionArgs> {
        let connection_id = connection.id;
        if !self.shared.serves(connection_id) {
            return None;
        }
        let slot = self.shared.registry.get_or_insert(connection_id, connection.version);
        if self.live_owner(&slot).is_some() {
            return None;
        }
        // An integration missing from the cache (or a store error reading it) is the
        // owner's to load, with retries: a store error is never a verdict.
        let loaded = self
            .shared
            .cached_integration(connection.integration_id)
            .map(|integration| (connection, integration));
        Some(ConnectionArgs {
            id: connection_id,
            loaded,
            shared: self.shared.clone(),
            slot,
            supervisor: myself.clone(),
            startup,
        })
    }

    /// Records a spawned owner in its slot.
    async fn finish_spawn(
        &mut self,
        _myself: &ActorRef<SupervisorMsg>,
        connection_id: ConnectionId,
        slot: &Slot,
        spawned: Result<(ActorRef<ConnectionMsg>, tokio::task::JoinHandle<()>), SpawnErr>,
    ) -> Option<ActorRef<ConnectionMsg>> {
        match spawned {
            Ok((actor, _)) => {
                self.actors.insert(actor.get_id(), connection_id);
                slot.set_owner(Some(actor.clone()));
                Some(actor)
            }
            Err(error) => {
                tracing::error!(connection.id = %connection_id, error = %error, "failed to spawn connection actor");
                // ractor fails a spawn only when `pre_start` fails, which ours does only
                // if the actor cannot message itself; the next request tries again.
                slot.set_owner(None);
                None
            }
        }
    }

    /// Stops the owners of the connections in `partitions` at once (they belong to
    /// another replica now): nothing is handed out from memory for them any more.
    fn retire(
        &mut self,
        partitions: &std::collections::HashSet<tokenvisor_core::Partition>,
    ) -> Vec<(ConnectionId, Arc<Slot>)> {
        let slots = self.shared.registry.in_partitions(partitions);
        for (_, slot) in &slots {
            slot.publish(None);
            if let Some(owner) = slot.owner() {
                owner.stop(Some(RETIRED.into()));
            }
        }
        if !slots.is_empty() {
            tracing::info!(
                connections = slots.len(),
                "stopped supervising connections of partitions now owned elsewhere"
            );
        }
        slots
    }

    /// Forgets a stopped child; returns its connection.
    fn forget(&mut self, cell: &ractor::ActorCell) -> Option<ConnectionId> {
        let connection_id = self.actors.remove(&cell.get_id())?;
        if let Some(slot) = self.shared.registry.get(connection_id)
            && slot.owner().is_some_and(|owner| owner.get_id() == cell.get_id())
        {
            slot.set_owner(None);
            slot.publish(None);
        }
        Some(connection_id)
    }

    /// Restarts a crashed owner (it reloads the stored row and finds kept tokens in the
    /// slot), within the restart budget; past it, escalates like a permanent failure.
    async fn restart(&mut self, myself: &ActorRef<SupervisorMsg>, connection_id: ConnectionId) {
        let budget = self.shared.config.restart_budget;
        let now = Instant::now();
        let history = self.restarts.entry(connection_id).or_default();
        history.retain(|at| now.duration_since(*at) < budget.within);
        history.push_back(now);
        let over_budget = history.len() as u32 > budget.max_restarts;
        let span = tracing::info_span!(
            parent: None,
            "supervisor_decision",
            otel.name = "tokenvisor.supervisor.restart",
            connection.id = %connection_id,
            decision = if over_budget { "escalate" } else { "restart" },
            restarts.recent = history.len() as i64,
        );
        let cause = span.context().span().span_context().clone();
        {
            let _entered = span.enter();
            tracing::info!(connection.id = %connection_id, "restarting connection actor from the stored state");
        }
        let slot = self.shared.registry.get_or_insert(connection_id, 0);
        if self.spawn_loading(myself, connection_id, &slot).await.is_none() {
            return;
        }
        if over_budget {
            let failure = RefreshFailure::new(
                FailureClass::Permanent,
                "actor_crash_loop",
                format!(
                    "the connection actor failed more than {} times within {:?}",
                    budget.max_restarts, budget.within
                ),
            );
            self.escalate(connection_id, failure, None, cause, true);
        }
    }

    /// Decides an escalation: the owner is told to mark the connection `needs_reauth`
    /// (inactive, `refresh_failures + 1`, event). The owner writes it, bound to the
    /// refresh token that failed (`force`: whatever the row holds, after a crash loop),
    /// so a re-authorization that landed meanwhile is kept.
    ///
    /// Traced as a `tokenvisor.escalate` span (decision `mark_needs_reauth`) linked to
    /// `cause`, the span of the refresh (or restart decision) that failed for good; the
    /// owner records the write inside it.
    fn escalate(
        &mut self,
        connection_id: ConnectionId,
        failure: RefreshFailure,
        refresh_token: Option<SecretString>,
        cause: SpanContext,
        force: bool,
    ) {
        let span = tracing::warn_span!(
            parent: None,
            "escalation",
            otel.name = "tokenvisor.escalate",
            connection.id = %connection_id,
            tenant.id = tracing::field::Empty,
            integration = tracing::field::Empty,
            provider = tracing::field::Empty,
            error.code = %failure.code,
            decision = "mark_needs_reauth",
            refresh_failures = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        link(&span, cause);
        let Some(owner) = self.shared.registry.get(connection_id).and_then(|slot| slot.owner()) else {
            // No owner: the connection was removed meanwhile.
            return;
        };
        let _ = owner.cast(ConnectionMsg::MarkNeedsReauth {
            failure,
            refresh_token,
            force,
            span,
        });
    }
}
