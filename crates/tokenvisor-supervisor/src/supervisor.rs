//! Where a failure escalates: the supervisor actor spawns one linked connection actor
//! per supervised connection, restarts crashed ones within a budget, and turns
//! permanent failures into `needs_reauth` (inactive, `refresh_failures + 1`, event),
//! one connection at a time, without touching any other.

use crate::connection::{ConnectionActor, ConnectionArgs, ConnectionMsg};
use crate::registry::{Slot, SlotState};
use crate::shared::{IntegrationRef, SharedRef};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use std::collections::{HashMap, VecDeque};
use tokenvisor_core::{
    Connection, ConnectionId, ConnectionStatus, Event, EventKind, FailureClass, IntegrationId, LastError,
    RefreshFailure,
};
use tokenvisor_store::CasOutcome;
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
    /// Start (or keep) an actor for this connection.
    Spawn {
        connection: Box<Connection>,
        startup: bool,
        reply: Option<RpcReplyPort<()>>,
    },
    /// A connection actor met a permanent failure; `cause` is the refresh span's context
    /// (the escalation span links to it).
    Escalate {
        connection_id: ConnectionId,
        failure: RefreshFailure,
        cause: SpanContext,
    },
    /// A connection actor found its connection inactive or deleted in the store, during
    /// the refresh whose span context is `cause`.
    Reconciled {
        connection_id: ConnectionId,
        cause: SpanContext,
    },
    /// Stop the actor of a connection (an operator changes it); answers once stopped.
    StopConnection {
        connection_id: ConnectionId,
        reply: RpcReplyPort<()>,
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
                    for (_, actor) in state.shared.registry.running() {
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
            SupervisorMsg::Escalate {
                connection_id,
                failure,
                cause,
            } => state.escalate(connection_id, failure, cause),
            SupervisorMsg::Reconciled { connection_id, cause } => state.reconciled(connection_id, cause),
            SupervisorMsg::StopConnection { connection_id, reply } => {
                state.stop_actor(connection_id);
                let _ = reply.send(());
            }
            #[cfg(feature = "fault-injection")]
            SupervisorMsg::InjectPanic { connection_id } => {
                if let Some(slot) = state.shared.registry.get(connection_id)
                    && let SlotState::Running(actor) = slot.state()
                {
                    let _ = actor.cast(ConnectionMsg::Panic);
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
                if let Some(connection_id) = state.actors.remove(&cell.get_id()) {
                    tracing::error!(connection.id = %connection_id, error = %error, "connection actor failed");
                    state.restart(&myself, connection_id);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(connection_id) = state.actors.remove(&cell.get_id()) {
                    tracing::warn!(connection.id = %connection_id, reason = ?reason, "connection actor stopped unexpectedly");
                    state.restart(&myself, connection_id);
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
        for (_, actor) in state.shared.registry.running() {
            actor.stop(Some("shutdown".into()));
        }
        state.actors.clear();
        Ok(())
    }
}

impl SupervisorState {
    async fn integration(&mut self, id: IntegrationId) -> Option<IntegrationRef> {
        match self.shared.integration(id).await {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(integration.id = %id, error = %error, "failed to load integration");
                None
            }
        }
    }

    async fn spawn(&mut self, myself: &ActorRef<SupervisorMsg>, connection: Connection, startup: bool) {
        let connection_id = connection.id;
        let Some(args) = self.prepare_spawn(myself, connection, startup).await else {
            return;
        };
        let slot = args.slot.clone();
        let spawned = Actor::spawn_linked(None, ConnectionActor, args, myself.get_cell()).await;
        self.finish_spawn(myself, connection_id, &slot, spawned);
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
                        // A spawn task panicked: its connections restart from the store.
                        tracing::error!(error = %error, "a start-up spawn task failed");
                        Vec::new()
                    }
                };
                let expected = share.min(slots.len());
                let mut results = results.into_iter();
                for (connection_id, slot) in slots.by_ref().take(expected) {
                    match results.next() {
                        Some(spawned) => self.finish_spawn(myself, connection_id, &slot, spawned),
                        None => {
                            slot.set_state(SlotState::Starting);
                            self.restart(myself, connection_id);
                        }
                    }
                }
            }
        }
    }

    /// Claims the connection's slot and builds its actor's arguments; `None` when no
    /// actor is needed (one runs already, or the connection is not supervised).
    async fn prepare_spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        connection: Connection,
        startup: bool,
    ) -> Option<ConnectionArgs> {
        let connection_id = connection.id;
        let slot = self
            .shared
            .registry
            .get_or_insert(connection_id, SlotState::Starting, connection.version);
        if let SlotState::Running(actor) = slot.state()
            && self.actors.contains_key(&actor.get_id())
        {
            return None;
        }
        if !connection.is_active || !connection.status.is_supervised() {
            slot.set_state(SlotState::Inactive(connection.status));
            return None;
        }
        let Some(integration) = self.integration(connection.integration_id).await else {
            tracing::error!(connection.id = %connection_id, "integration of connection not found; not supervising it");
            slot.set_state(SlotState::Inactive(ConnectionStatus::Disabled));
            return None;
        };
        Some(ConnectionArgs {
            connection,
            integration,
            shared: self.shared.clone(),
            slot,
            supervisor: myself.clone(),
            startup,
        })
    }

    /// Records a spawned actor in the slot, or schedules a restart if it failed to start.
    fn finish_spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        connection_id: ConnectionId,
        slot: &Slot,
        spawned: Result<(ActorRef<ConnectionMsg>, tokio::task::JoinHandle<()>), SpawnErr>,
    ) {
        match spawned {
            Ok((actor, _)) => {
                self.actors.insert(actor.get_id(), connection_id);
                slot.set_state(SlotState::Running(actor));
            }
            Err(error) => {
                tracing::error!(connection.id = %connection_id, error = %error, "failed to spawn connection actor");
                slot.set_state(SlotState::Starting);
                self.restart(myself, connection_id);
            }
        }
    }

    fn stop_actor(&mut self, connection_id: ConnectionId) {
        let Some(slot) = self.shared.registry.get(connection_id) else {
            return;
        };
        if let SlotState::Running(actor) = slot.state() {
            self.actors.remove(&actor.get_id());
            actor.stop(None);
        }
    }

    /// Restarts a crashed actor from the stored state, within the restart budget;
    /// past it, escalates like a permanent failure.
    fn restart(&mut self, myself: &ActorRef<SupervisorMsg>, connection_id: ConnectionId) {
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
        let _entered = span.enter();
        if over_budget {
            let failure = RefreshFailure::new(
                FailureClass::Permanent,
                "actor_crash_loop",
                format!(
                    "the connection actor failed more than {} times within {:?}",
                    budget.max_restarts, budget.within
                ),
            );
            let cause = span.context().span().span_context().clone();
            self.escalate(connection_id, failure, cause);
            return;
        }
        if let Some(slot) = self.shared.registry.get(connection_id) {
            slot.set_state(SlotState::Starting);
        }
        let shared = self.shared.clone();
        let supervisor = myself.clone();
        let task_span = span.clone();
        self.shared.tasks.spawn(tracing::Instrument::instrument(async move {
            match shared.store.get_connection(connection_id).await {
                Ok(Some(connection)) => {
                    tracing::info!(connection.id = %connection_id, "restarting connection actor from the stored state");
                    let _ = supervisor.cast(SupervisorMsg::Spawn { connection: Box::new(connection), startup: false, reply: None });
                }
                Ok(None) => {
                    shared.registry.remove(connection_id);
                }
                Err(error) => {
                    tracing::error!(connection.id = %connection_id, error = %error, "failed to reload connection for restart");
                }
            }
        }, task_span));
    }

    /// Stops the actor of a connection that a refresh found inactive or deleted in the
    /// store (a decision span linked to that refresh).
    fn reconciled(&mut self, connection_id: ConnectionId, cause: SpanContext) {
        let span = tracing::info_span!(
            parent: None,
            "supervisor_decision",
            otel.name = "tokenvisor.supervisor.reconcile",
            connection.id = %connection_id,
            decision = "stop_actor",
        );
        link(&span, cause);
        let _entered = span.enter();
        self.stop_actor(connection_id);
        let shared = self.shared.clone();
        let task_span = span.clone();
        self.shared.tasks.spawn(tracing::Instrument::instrument(
            async move {
                match shared.store.get_connection(connection_id).await {
                    Ok(Some(connection)) => {
                        if let Some(slot) = shared.registry.get(connection_id) {
                            slot.set_state(SlotState::Inactive(connection.status));
                        }
                    }
                    Ok(None) => {
                        shared.registry.remove(connection_id);
                    }
                    Err(error) => {
                        tracing::error!(connection.id = %connection_id, error = %error, "failed to reload connection")
                    }
                }
            },
            task_span,
        ));
    }

    /// Marks the connection `needs_reauth`, inactive, `refresh_failures + 1`, records the
    /// error, publishes the event and stops the actor. Exactly once per escalation: the
    /// actor is stopped first, so no second escalation can come from it.
    ///
    /// Traced as a `tokenvisor.escalate` span (decision `mark_needs_reauth`) linked to
    /// `cause`, the span of the refresh (or restart decision) that failed for good.
    fn escalate(&mut self, connection_id: ConnectionId, failure: RefreshFailure, cause: SpanContext) {
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
        let _entered = span.enter();
        self.stop_actor(connection_id);
        let slot = self
            .shared
            .registry
            .get_or_insert(connection_id, SlotState::Starting, 0);
        slot.publish(None);
        slot.set_state(SlotState::Inactive(ConnectionStatus::NeedsReauth));
        let shared = self.shared.clone();
        let task_span = span.clone();
        self.shared.tasks.spawn(tracing::Instrument::instrument(
            async move {
                let mut version_guard = slot.refresh_lock.clone().lock_owned().await;
                let write_span = tracing::info_span!(
                    "store_mark_needs_reauth",
                    otel.name = "tokenvisor.store.mark_needs_reauth",
                    db.operation.name = "compare_and_swap",
                );
                let written =
                    tracing::Instrument::instrument(mark_needs_reauth(&shared, connection_id, &failure), write_span)
                        .await;
                let current = tracing::Span::current();
                match written {
                    Ok(Some(connection)) => {
                        *version_guard = connection.version;
                        current.record("tenant.id", tracing::field::display(&connection.tenant_id));
                        current.record("refresh_failures", connection.refresh_failures);
                        let provider = match shared.integration(connection.integration_id).await {
                            Ok(Some(integration)) => {
                                current.record("integration", integration.name.as_str());
                                current.record("provider", integration.provider.as_str());
                                integration.provider.clone()
                            }
                            _ => "unknown".to_owned(),
                        };
                        shared.metrics.escalation(&provider, &failure.code);
                        tracing::warn!(
                            connection.id = %connection_id,
                            tenant.id = %connection.tenant_id,
                            refresh_failures = connection.refresh_failures,
                            error.code = %failure.code,
                            "connection needs re-authorization"
                        );
                        shared.events.publish(Event {
                            at: shared.clock.now(),
                            connection_id,
                            tenant_id: connection.tenant_id.clone(),
                            integration_id: connection.integration_id,
                            kind: EventKind::NeedsReauthorization {
                                code: failure.code.clone(),
                                message: failure.message.clone(),
                                refresh_failures: connection.refresh_failures,
                            },
                        });
                    }
                    Ok(None) => {
                        shared.registry.remove(connection_id);
                    }
                    Err(error) => {
                        current.record("otel.status_code", "error");
                        tracing::error!(connection.id = %connection_id, error = %error, "failed to record escalation");
                    }
                }
            },
            task_span,
        ));
    }
}

/// The store write of an escalation, retried on compare-and-swap conflicts.
async fn mark_needs_reauth(
    shared: &SharedRef,
    connection_id: ConnectionId,
    failure: &RefreshFailure,
) -> Result<Option<Connection>, tokenvisor_store::StoreError> {
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        let attempt = async {
            for _ in 0..16 {
                let Some(mut connection) = shared.store.get_connection(connection_id).await? else {
                    return Ok(None);
                };
                if connection.status == ConnectionStatus::NeedsReauth && !connection.is_active {
                    // Already escalated (e.g. by an earlier process): count it once.
                    return Ok(Some(connection));
                }
                let now = shared.clock.now();
                let expected = connection.version;
                connection.status = ConnectionStatus::NeedsReauth;
                connection.is_active = false;
                connection.refresh_failures += 1;
                connection.next_refresh_at = None;
                connection.last_error = Some(LastError {
                    code: failure.code.clone(),
                    message: failure.message.clone(),
                    at: now,
                });
                connection.updated_at = now;
                if let CasOutcome::Committed { version } = shared.store.compare_and_swap(&connection, expected).await? {
                    connection.version = version;
                    return Ok(Some(connection));
                }
            }
            Err(tokenvisor_store::StoreError::Database(
                "too many concurrent writes".into(),
            ))
        }
        .await;
        match attempt {
            Err(error) if error.is_transient() && !shared.is_shutting_down() => {
                tracing::warn!(connection.id = %connection_id, error = %error, "retrying escalation write");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
            other => return other,
        }
    }
}
