//! The connection actor: the one writer of its connection in this process.
//!
//! It owns the connection's token state, answers token requests, runs single-flight
//! refreshes (as tasks, see [`super::refresh`]), applies lifecycle operations
//! (deactivate, activate, replace tokens, remove) and the `needs_reauth` write, each as a
//! message handled in order. Its [`Phase`] says what it is doing; each transition is one
//! small function below.

use super::phase::Phase;
use super::refresh::{self, RefreshJob, RefreshResult};
use crate::error::TokenError;
use crate::registry::{Slot, SlotView};
use crate::shared::{IntegrationRef, SharedRef};
use crate::supervisor::SupervisorMsg;
use crate::token::AccessToken;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokenvisor_core::schedule::{earliest_allowed, retry_delay};
use tokenvisor_core::{
    Connection, ConnectionId, ConnectionStatus, Event, EventKind, FailureClass, LastError, RefreshFailure,
    RefreshReason, SecretString, TokenSet, validity_floor,
};
use tokenvisor_store::CasOutcome;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// How many refresh start times are kept for spacing and window limits.
const RECENT_REFRESHES_KEPT: usize = 32;

/// The stop reason of an owner that ends on purpose (its connection was removed or
/// does not exist): the supervisor does not restart it.
pub(crate) const RETIRED: &str = "retired";

/// While the store fails, a refresh that could wait is looked at again this often.
const STORE_WAIT_RECHECK: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

type TokenReply = RpcReplyPort<Result<AccessToken, TokenError>>;

/// The answer to a lifecycle operation: the row after it (`None` once removed).
pub(crate) type OperationReply = RpcReplyPort<Result<Option<Connection>, TokenError>>;

/// A change to the connection that only its owner writes.
#[derive(Debug, Clone)]
pub(crate) enum LifecycleOp {
    /// Disable: no token handed out, no provider call, until activated.
    Deactivate,
    /// Enable a disabled or `needs_reauth` connection.
    Activate,
    /// New tokens from a re-authorization (the connection becomes active).
    ReplaceTokens {
        tokens: TokenSet,
        metadata: serde_json::Map<String, serde_json::Value>,
    },
    /// Delete the connection and revoke its grant.
    Remove,
}

/// Messages a connection actor handles. Requests carry the caller's span: a refresh they
/// start is traced as its child.
pub(crate) enum ConnectionMsg {
    /// A caller needs a token valid for at least the minimum validity.
    AccessToken(TokenReply, tracing::Span),
    /// The API rejected this token (HTTP 401).
    TokenRejected {
        token: SecretString,
        reply: TokenReply,
        caller: tracing::Span,
    },
    /// An operator forces a refresh.
    ForceRefresh(TokenReply, tracing::Span),
    /// An operator (or the authorization flow) changes the connection.
    Lifecycle(LifecycleOp, OperationReply),
    /// The supervisor decided that the grant presented as `refresh_token` is dead: write
    /// `needs_reauth` if the stored row still holds it (`force`: whatever it holds, for a
    /// crash loop). `span` is the supervisor's decision span.
    MarkNeedsReauth {
        failure: RefreshFailure,
        refresh_token: Option<SecretString>,
        force: bool,
        span: tracing::Span,
    },
    /// Shutdown: try to commit kept tokens now; answers when done.
    Flush(RpcReplyPort<()>),
    /// Load the connection (an owner spawned without its row).
    Load,
    /// A scheduled refresh or retry is due (ignored unless `generation` is current).
    Timer { generation: u64 },
    /// The refresh task finished; `span` is the refresh span, still open: the result is
    /// handled inside it (escalations link to it).
    RefreshDone {
        result: Box<RefreshResult>,
        span: tracing::Span,
    },
    /// Test hook: panic inside the actor.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// Everything a connection actor starts from.
pub(crate) struct ConnectionArgs {
    pub id: ConnectionId,
    /// The stored row and its integration, when the spawner has them; otherwise the
    /// actor loads them itself (retrying while the store fails).
    pub loaded: Option<(Connection, IntegrationRef)>,
    pub shared: SharedRef,
    pub slot: Arc<Slot>,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Spawned at process start-up: spread the refreshes of tokens already due.
    pub startup: bool,
}

/// The connection actor (state lives in [`ConnectionState`]).
pub(crate) struct ConnectionActor;

/// An owner that is loading its row, or that owns it.
pub(crate) enum ConnectionState {
    Loading(Box<Loading>),
    Owning(Box<Owner>),
}

/// An owner spawned without its row: messages wait until it is loaded.
pub(crate) struct Loading {
    id: ConnectionId,
    shared: SharedRef,
    slot: Arc<Slot>,
    supervisor: ActorRef<SupervisorMsg>,
    deferred: Vec<ConnectionMsg>,
    attempt: u32,
}

/// The owner of a loaded connection.
pub(crate) struct Owner {
    conn: Connection,
    integration: IntegrationRef,
    shared: SharedRef,
    slot: Arc<Slot>,
    supervisor: ActorRef<SupervisorMsg>,
    phase: Phase,
    /// Callers waiting for the refresh in flight (or about to start).
    waiters: Vec<TokenReply>,
    /// Shutdown waiting for kept tokens to be committed.
    flushes: Vec<RpcReplyPort<()>>,
    /// Operations that arrived during a refresh, applied once its outcome is committed.
    deferred: VecDeque<ConnectionMsg>,
    recent: VecDeque<DateTime<Utc>>,
    timer: Option<tokio::task::JoinHandle<Result<(), ractor::MessagingErr<ConnectionMsg>>>>,
    timer_generation: u64,
    timer_reason: RefreshReason,
    /// The current access token was reported rejected by the API.
    rejected: bool,
    /// A deactivate or remove waits for the refresh in flight: hand nothing out meanwhile.
    closing: bool,
    /// Failed attempts since the last success.
    failures: u32,
    /// When a caller last cut a backoff short.
    last_probe: Option<DateTime<Utc>>,
    /// When the last refresh failed (transiently, or its commit).
    failed_at: Option<DateTime<Utc>>,
    /// The refresh being started is such a probe.
    probing: bool,
    startup: bool,
    /// The span of the caller waiting for the next refresh (its parent span).
    refresh_parent: Option<tracing::Span>,
    /// A refresh is being held back by the provider's spacing limits (counted once).
    held_back: bool,
}

impl Actor for ConnectionActor {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConnectionMsg>,
        args: ConnectionArgs,
    ) -> Result<ConnectionState, ActorProcessingErr> {
        match args.loaded {
            Some((connection, integration)) => {
                let mut owner = Owner::new(
                    connection,
                    integration,
                    args.shared,
                    args.slot,
                    args.supervisor,
                    args.startup,
                );
                owner.begin(&myself);
                Ok(ConnectionState::Owning(Box::new(owner)))
            }
            None => {
                args.slot.set_view(SlotView {
                    status: None,
                    supervising: false,
                });
                myself.send_message(ConnectionMsg::Load)?;
                Ok(ConnectionState::Loading(Box::new(Loading {
                    id: args.id,
                    shared: args.shared,
                    slot: args.slot,
                    supervisor: args.supervisor,
                    deferred: Vec::new(),
                    attempt: 0,
                })))
            }
        }
    }

    async fn handle(
        &self,
        myself: ActorRef<ConnectionMsg>,
        message: ConnectionMsg,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        match state {
            ConnectionState::Owning(owner) => owner.handle(&myself, message).await,
            ConnectionState::Loading(loading) => {
                if !matches!(message, ConnectionMsg::Load) {
                    loading.deferred.push(message);
                    return Ok(());
                }
                if let Some(mut owner) = loading.load(&myself).await {
                    owner.begin(&myself);
                    let deferred = std::mem::take(&mut loading.deferred);
                    for message in deferred {
                        owner.handle(&myself, message).await;
                    }
                    *state = ConnectionState::Owning(owner);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnectionMsg>,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        if let ConnectionState::Owning(owner) = state {
            owner.cancel_timer();
        }
        Ok(())
    }
}

impl Loading {
    /// Loads the row and its integration. `None` when it cannot yet (retried later) or
    /// must not (the connection does not exist: the actor retires).
    async fn load(&mut self, myself: &ActorRef<ConnectionMsg>) -> Option<Box<Owner>> {
        let loaded = match self.shared.store.get_connection(self.id).await {
            Ok(Some(connection)) => match self.shared.integration(connection.integration_id).await {
                Ok(Some(integration)) => Ok(Some((connection, integration))),
                Ok(None) => {
                    self.retire(TokenError::IntegrationMisconfigured {
                        code: "integration_not_found".into(),
                        message: "the connection's integration does not exist".into(),
                    });
                    myself.stop(Some(RETIRED.into()));
                    return None;
                }
                Err(error) => Err(error),
            },
            Ok(None) => Ok(None),
            Err(error) => Err(error),
        };
        match loaded {
            Ok(Some((connection, integration))) => Some(Box::new(Owner::new(
                connection,
                integration,
                self.shared.clone(),
                self.slot.clone(),
                self.supervisor.clone(),
                false,
            ))),
            Ok(None) => {
                self.retire(TokenError::NotFound);
                myself.stop(Some(RETIRED.into()));
                None
            }
            Err(error) => {
                // A store error is never a verdict: try again, with backoff.
                self.attempt += 1;
                let delay = std::time::Duration::from_millis(100 * 2u64.pow(self.attempt.min(8)))
                    .min(std::time::Duration::from_secs(10));
                tracing::warn!(connection.id = %self.id, error = %error, attempt = self.attempt, "failed to load connection; retrying");
                myself.send_after(delay, || ConnectionMsg::Load);
                None
            }
        }
    }

    /// Answers every waiting message with `error` and forgets the slot.
    fn retire(&mut self, error: TokenError) {
        for message in self.deferred.drain(..) {
            answer_with(message, &error);
        }
        self.shared.registry.remove(self.id);
    }
}

/// Answers a request message with `error` (other messages are dropped).
fn answer_with(message: ConnectionMsg, error: &TokenError) {
    match message {
        ConnectionMsg::AccessToken(reply, _)
        | ConnectionMsg::ForceRefresh(reply, _)
        | ConnectionMsg::TokenRejected { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        ConnectionMsg::Lifecycle(_, reply) => {
            let _ = reply.send(Err(error.clone()));
        }
        ConnectionMsg::Flush(reply) => {
            let _ = reply.send(());
        }
        _ => {}
    }
}

impl Owner {
    fn new(
        conn: Connection,
        integration: IntegrationRef,
        shared: SharedRef,
        slot: Arc<Slot>,
        supervisor: ActorRef<SupervisorMsg>,
        startup: bool,
    ) -> Self {
        let mut recent = VecDeque::new();
        if let Some(last_refresh) = conn.last_refresh_at {
            recent.push_back(last_refresh);
        }
        Self {
            conn,
            integration,
            shared,
            slot,
            supervisor,
            phase: Phase::Idle,
            waiters: Vec::new(),
            flushes: Vec::new(),
            deferred: VecDeque::new(),
            recent,
            timer: None,
            timer_generation: 0,
            timer_reason: RefreshReason::Scheduled,
            rejected: false,
            closing: false,
            failures: 0,
            last_probe: None,
            failed_at: None,
            probing: false,
            startup,
            refresh_parent: None,
            held_back: false,
        }
    }

    /// Takes over: the phase follows the stored row (and tokens a previous owner kept).
    fn begin(&mut self, myself: &ActorRef<ConnectionMsg>) {
        self.phase = if !self.conn.is_active || !self.conn.status.is_supervised() {
            Phase::dormant_for(self.conn.status)
        } else if self.slot.has_pending() {
            Phase::AwaitingCommit { retry_at: self.now() }
        } else {
            Phase::Idle
        };
        self.publish();
        self.schedule(myself);
    }

    async fn handle(&mut self, myself: &ActorRef<ConnectionMsg>, message: ConnectionMsg) {
        match message {
            ConnectionMsg::AccessToken(reply, caller) => {
                self.on_access_token(myself, reply, caller, RefreshReason::OnDemand)
            }
            ConnectionMsg::TokenRejected { token, reply, caller } => {
                self.on_token_rejected(myself, token, reply, caller)
            }
            ConnectionMsg::ForceRefresh(reply, caller) => self.on_force_refresh(myself, reply, caller),
            message @ (ConnectionMsg::Lifecycle(..) | ConnectionMsg::MarkNeedsReauth { .. })
                if matches!(self.phase, Phase::Refreshing) =>
            {
                self.defer(message)
            }
            ConnectionMsg::Lifecycle(op, reply) => {
                let result = self.apply(myself, op).await;
                let _ = reply.send(result);
            }
            ConnectionMsg::MarkNeedsReauth {
                failure,
                refresh_token,
                force,
                span,
            } => {
                self.on_mark_needs_reauth(myself, failure, refresh_token, force, span)
                    .await
            }
            ConnectionMsg::Flush(reply) => self.on_flush(myself, reply),
            ConnectionMsg::Load => {}
            ConnectionMsg::Timer { generation } => {
                if generation == self.timer_generation {
                    self.timer = None;
                    self.on_timer(myself);
                }
            }
            ConnectionMsg::RefreshDone { result, span } => self.on_refresh_done(myself, *result, span).await,
            #[cfg(feature = "fault-injection")]
            ConnectionMsg::Panic => panic!("injected panic in connection actor"),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    /// The limits a probe obeys: the provider's own (a profile's spacing, its window),
    /// not tokenvisor's general minimum spacing, which the probe interval replaces.
    fn probe_policy(&self) -> tokenvisor_core::SchedulePolicy {
        let mut policy = self.integration.policy.clone();
        if policy.min_spacing <= self.shared.config.schedule.min_spacing {
            policy.min_spacing = chrono::Duration::zero();
        }
        policy
    }

    /// When the current token stops being handed out (the validity floor is reached).
    fn unservable_at(&self) -> DateTime<Utc> {
        self.conn.expires_at - validity_floor(self.conn.issued_at, self.conn.expires_at, &self.integration.policy)
    }

    /// The current token, if this phase hands tokens out and it is valid for at least the
    /// validity floor (invariant 4).
    fn servable(&self) -> Option<AccessToken> {
        if self.rejected || self.closing || !self.phase.is_supervising() {
            return None;
        }
        (self.now() <= self.unservable_at()).then(|| AccessToken::of(&self.conn))
    }

    /// Makes the committed token readable without a message (the hot path re-checks
    /// validity), and reports the status and phase.
    fn publish(&self) {
        let hands_out = !self.rejected && !self.closing && self.phase.is_supervising();
        self.slot.publish(hands_out.then(|| AccessToken::of(&self.conn)));
        self.slot.set_view(SlotView {
            status: Some(self.conn.status),
            supervising: self.phase.is_supervising(),
        });
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        if !self.phase.is_supervising() {
            self.cancel_timer();
        }
        self.publish();
    }

    /// Queues a caller for the next refresh; the first waiting caller's span parents it.
    fn add_waiter(&mut self, reply: TokenReply, caller: tracing::Span) {
        if self.refresh_parent.is_none() && !matches!(self.phase, Phase::Refreshing) {
            self.refresh_parent = Some(caller);
        }
        self.waiters.push(reply);
    }

    /// The error for a caller when this phase hands no token out, if it is dormant.
    fn dormant_error(&self) -> Option<TokenError> {
        match &self.phase {
            Phase::Disabled => Some(TokenError::Disabled),
            Phase::Stopping => Some(TokenError::NotFound),
            Phase::Escalated => Some(status_error(&self.conn)),
            Phase::Escalating { failure, .. } => Some(TokenError::NeedsReauthorization {
                code: failure.code.clone(),
                message: failure.message.clone(),
            }),
            _ if self.closing => Some(TokenError::Disabled),
            _ => None,
        }
    }

    fn on_access_token(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        reply: TokenReply,
        caller: tracing::Span,
        reason: RefreshReason,
    ) {
        if let Some(error) = self.dormant_error() {
            let _ = reply.send(Err(error));
            return;
        }
        if let Some(token) = self.servable() {
            let _ = reply.send(Ok(token));
            return;
        }
        match &self.phase {
            Phase::Refreshing => self.add_waiter(reply, caller),
            Phase::BackingOff { retry_at, failure } => {
                let (retry_at, failure) = (*retry_at, failure.clone());
                self.probe_or_refuse(myself, reply, caller, reason, &failure, retry_at);
            }
            Phase::AwaitingCommit { retry_at } => {
                let failure = RefreshFailure::new(
                    FailureClass::Transient,
                    "store_unavailable",
                    "new tokens await their commit",
                );
                let retry_at = *retry_at;
                self.probe_or_refuse(myself, reply, caller, reason, &failure, retry_at);
            }
            _ => {
                self.add_waiter(reply, caller);
                self.start_refresh(myself, reason);
            }
        }
    }

    /// While backing off with a token that cannot be handed out: one caller per probe
    /// interval cuts the backoff short (transient failures only); the others get the
    /// typed error at once.
    fn probe_or_refuse(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        reply: TokenReply,
        caller: tracing::Span,
        reason: RefreshReason,
        failure: &RefreshFailure,
        retry_at: DateTime<Utc>,
    ) {
        let now = self.now();
        let interval = chrono::Duration::from_std(self.shared.config.probe_interval).unwrap_or(chrono::Duration::MAX);
        let next_probe = self.last_probe.map_or(now, |at| at + interval);
        let failed_at = self.failed_at.unwrap_or(now);
        if failure.class == FailureClass::Transient
            && next_probe <= now
            && !self.shared.is_shutting_down()
            // A commit retry calls no provider; a provider probe takes the integration's slot.
            && (failure.code == "store_unavailable" || self.integration.probes.may_probe(failed_at, now, interval))
        {
            self.last_probe = Some(now);
            self.add_waiter(reply, caller);
            self.probing = true;
            self.start_refresh(myself, reason);
            self.probing = false;
            return;
        }
        let next = if failure.class == FailureClass::Transient {
            retry_at.min(next_probe)
        } else {
            retry_at
        };
        let _ = reply.send(Err(failure_error(failure, next)));
    }

    fn on_token_rejected(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        token: SecretString,
        reply: TokenReply,
        caller: tracing::Span,
    ) {
        if token != self.conn.access_token {
            // Already replaced: hand out the current one without a provider call.
            self.on_access_token(myself, reply, caller, RefreshReason::OnDemand);
            return;
        }
        if !self.rejected {
            self.rejected = true;
            self.publish();
        }
        self.on_access_token(myself, reply, caller, RefreshReason::Rejected);
    }

    fn on_force_refresh(&mut self, myself: &ActorRef<ConnectionMsg>, reply: TokenReply, caller: tracing::Span) {
        if let Some(error) = self.dormant_error() {
            let _ = reply.send(Err(error));
            return;
        }
        self.add_waiter(reply, caller);
        self.start_refresh(myself, RefreshReason::Forced);
    }

    fn on_timer(&mut self, myself: &ActorRef<ConnectionMsg>) {
        let reason = if self.waiters.is_empty() {
            self.timer_reason
        } else {
            RefreshReason::OnDemand
        };
        self.start_refresh(myself, reason);
    }

    fn on_flush(&mut self, myself: &ActorRef<ConnectionMsg>, reply: RpcReplyPort<()>) {
        match self.phase {
            Phase::AwaitingCommit { .. } => {
                self.flushes.push(reply);
                self.start_refresh(myself, RefreshReason::Retry);
            }
            Phase::Refreshing => self.flushes.push(reply),
            _ => {
                let _ = reply.send(());
            }
        }
    }

    fn defer(&mut self, message: ConnectionMsg) {
        if let ConnectionMsg::Lifecycle(LifecycleOp::Deactivate | LifecycleOp::Remove, _) = &message {
            // From now on nobody gets a token from memory.
            self.closing = true;
            self.publish();
        }
        self.deferred.push_back(message);
    }

    /// Starts the refresh task (or the commit of kept tokens) unless the phase forbids
    /// it, or sets a timer for the earliest moment the spacing and window limits allow.
    fn start_refresh(&mut self, myself: &ActorRef<ConnectionMsg>, reason: RefreshReason) {
        if !matches!(
            self.phase,
            Phase::Idle | Phase::BackingOff { .. } | Phase::AwaitingCommit { .. }
        ) {
            return;
        }
        let pending = self.slot.pending();
        if self.shared.is_shutting_down() && pending.is_none() {
            self.reply_waiters(|| Err(TokenError::ShuttingDown));
            return;
        }
        let now = self.now();
        if pending.is_none() {
            let recent: Vec<_> = self.recent.iter().copied().collect();
            let allowed = if self.probing {
                earliest_allowed(&recent, now, &self.probe_policy())
            } else {
                earliest_allowed(&recent, now, &self.integration.policy)
            };
            if allowed > now {
                if !self.held_back {
                    self.held_back = true;
                    self.shared.metrics.throttled(&self.integration.provider, "spacing");
                }
                self.set_timer(myself, allowed, reason);
                return;
            }
            // While the store cannot commit, refresh early only what is about to stop
            // being handed out: the provider's answer could otherwise only be held.
            let unservable = self.unservable_at();
            if self.waiters.is_empty()
                && matches!(
                    reason,
                    RefreshReason::Scheduled | RefreshReason::Startup | RefreshReason::Retry
                )
                && self.shared.store_health.is_failing()
                && unservable > now
            {
                self.set_timer(myself, (now + STORE_WAIT_RECHECK).min(unservable), reason);
                return;
            }
            self.held_back = false;
            self.recent.push_back(now);
            while self.recent.len() > RECENT_REFRESHES_KEPT {
                self.recent.pop_front();
            }
        }
        self.cancel_timer();
        let reason = if self.failures > 0 && reason == RefreshReason::Scheduled {
            RefreshReason::Retry
        } else {
            reason
        };
        self.phase = Phase::Refreshing;
        let job = RefreshJob {
            base: self.conn.clone(),
            pending,
            reason,
            attempt: self.failures + 1,
            recent: self.recent.iter().copied().collect(),
            jitter: rand::random::<f64>(),
            parent: self.refresh_parent.take().unwrap_or_else(tracing::Span::none),
        };
        let shared = self.shared.clone();
        let integration = self.integration.clone();
        let actor = myself.clone();
        self.shared.tasks.spawn(async move {
            let (result, span) = AssertUnwindSafe(refresh::run(shared, integration, job))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    let failure = RefreshFailure::new(FailureClass::Transient, "internal", "the refresh task panicked");
                    let result = RefreshResult::Failed {
                        failure,
                        connection: None,
                    };
                    (result, tracing::Span::none())
                });
            // The actor may have stopped meanwhile: the result is committed either way,
            // and kept tokens wait in the slot for the next owner.
            let _ = actor.cast(ConnectionMsg::RefreshDone {
                result: Box::new(result),
                span,
            });
        });
    }

    async fn on_refresh_done(&mut self, myself: &ActorRef<ConnectionMsg>, result: RefreshResult, span: tracing::Span) {
        {
            let _entered = span.enter();
            self.phase = Phase::Idle;
            match result {
                RefreshResult::Refreshed { connection } => self.on_refreshed(connection),
                RefreshResult::Adopted { connection } => self.on_adopted(connection),
                RefreshResult::Deleted => self.on_deleted(myself),
                RefreshResult::CommitFailed { message } => self.on_commit_failed(message),
                RefreshResult::Failed { failure, connection } => {
                    if let Some(connection) = connection {
                        self.conn = connection;
                        self.publish();
                    }
                    if failure.class.is_permanent() {
                        self.on_permanent_failure(failure, span_context(&span));
                    } else {
                        self.on_transient_failure(failure);
                    }
                }
            }
        }
        for flush in self.flushes.drain(..) {
            let _ = flush.send(());
        }
        self.apply_deferred(myself).await;
        self.closing = false;
        self.publish();
        self.schedule(myself);
    }

    fn on_refreshed(&mut self, connection: Connection) {
        let was_failing = self.failures;
        self.conn = connection;
        self.failures = 0;
        self.failed_at = None;
        self.integration.probes.succeeded(self.now());
        self.rejected = false;
        self.startup = false;
        self.last_probe = None;
        self.shared.store_health.succeeded();
        if !self.conn.is_active || !self.conn.status.is_supervised() {
            // Committed onto a row that another writer made inactive meanwhile: keep
            // the tokens stored, hand nothing out.
            self.become_dormant();
            return;
        }
        self.enter(Phase::Idle);
        if let Some(token) = self.servable() {
            self.reply_waiters(|| Ok(token.clone()));
        }
        self.emit(EventKind::Refreshed {
            expires_at: self.conn.expires_at,
        });
        if was_failing > 0 {
            self.emit(EventKind::Recovered {
                after_failures: was_failing.max(1),
            });
        }
        tracing::debug!(connection.id = %self.conn.id, expires_at = %self.conn.expires_at, "token refreshed");
    }

    fn on_adopted(&mut self, connection: Connection) {
        let new_tokens = connection.access_token != self.conn.access_token;
        self.conn = connection;
        if new_tokens {
            // Fresh tokens from elsewhere: the retry state belongs to the old ones.
            self.rejected = false;
            self.failures = 0;
            self.last_probe = None;
            self.failed_at = None;
        }
        if !self.conn.is_active || !self.conn.status.is_supervised() {
            self.become_dormant();
            return;
        }
        self.enter(Phase::Idle);
        if let Some(token) = self.servable() {
            self.reply_waiters(|| Ok(token.clone()));
        }
    }

    /// The stored row says the connection is not supervised (disabled or needs_reauth).
    fn become_dormant(&mut self) {
        self.enter(Phase::dormant_for(self.conn.status));
        let error = status_error(&self.conn);
        self.reply_waiters(|| Err(error.clone()));
    }

    fn on_deleted(&mut self, myself: &ActorRef<ConnectionMsg>) {
        self.enter(Phase::Stopping);
        self.reply_waiters(|| Err(TokenError::NotFound));
        for message in self.deferred.drain(..) {
            answer_with(message, &TokenError::NotFound);
        }
        self.shared.registry.remove(self.conn.id);
        myself.stop(Some(RETIRED.into()));
    }

    fn on_commit_failed(&mut self, message: String) {
        crate::shared::store_failed(&self.shared);
        self.failures += 1;
        self.failed_at = Some(self.now());
        let failure = RefreshFailure::new(FailureClass::Transient, "store_unavailable", message.clone());
        let retry_at = self.retry_at_after(&failure);
        self.enter(Phase::AwaitingCommit { retry_at });
        self.reply_waiters(|| Err(TokenError::StoreUnavailable(message.clone())));
    }

    fn on_transient_failure(&mut self, failure: RefreshFailure) {
        if failure.code == "store_unavailable" {
            crate::shared::store_failed(&self.shared);
        }
        self.failures += 1;
        self.failed_at = Some(self.now());
        let retry_at = self.retry_at_after(&failure);
        self.emit(EventKind::RefreshFailed {
            code: failure.code.clone(),
            message: failure.message.clone(),
            consecutive_failures: self.failures,
            retry_at,
        });
        tracing::warn!(
            connection.id = %self.conn.id,
            tenant.id = %self.conn.tenant_id,
            error.code = %failure.code,
            attempt = self.failures,
            retry_at = %retry_at,
            "refresh failed, retrying"
        );
        let error = failure_error(&failure, retry_at);
        self.enter(Phase::BackingOff { retry_at, failure });
        self.reply_waiters(|| Err(error.clone()));
    }

    /// When the next attempt is due after `failure`: capped exponential backoff with
    /// jitter, `Retry-After` honoured up to the configured cap, never later than the
    /// moment the current token stops being handed out (while that is still ahead).
    fn retry_at_after(&self, failure: &RefreshFailure) -> DateTime<Utc> {
        let policy = &self.integration.policy;
        let cap = self.shared.config.retry_after_cap.as_secs();
        let retry_after = failure
            .retry_after_secs
            .map(|seconds| chrono::Duration::seconds(seconds.min(cap) as i64));
        let delay = match failure.class {
            FailureClass::IntegrationMisconfigured => policy.misconfigured_retry,
            FailureClass::RateLimited => {
                retry_delay(self.failures, retry_after, policy, rand::random()).max(chrono::Duration::seconds(60))
            }
            _ => retry_delay(self.failures, retry_after, policy, rand::random()),
        };
        let now = self.now();
        let retry_at = now + delay;
        let unservable = self.unservable_at();
        if failure.class != FailureClass::IntegrationMisconfigured && unservable > now && retry_at > unservable {
            return unservable;
        }
        retry_at
    }

    fn on_permanent_failure(&mut self, failure: RefreshFailure, cause: SpanContext) {
        tracing::warn!(connection.id = %self.conn.id, tenant.id = %self.conn.tenant_id, error.code = %failure.code, "refresh failed permanently, escalating");
        let refresh_token = self.conn.refresh_token.clone();
        let _ = self.supervisor.cast(SupervisorMsg::Escalate {
            connection_id: self.conn.id,
            failure: failure.clone(),
            refresh_token: refresh_token.clone(),
            cause,
        });
        // The waiting callers are answered once the escalation is written, so that what
        // they then read says needs_reauth.
        self.enter(Phase::Escalating { failure, refresh_token });
    }

    /// Writes `needs_reauth` when the stored row still holds the refresh token that got
    /// the permanent answer (or whatever it holds, when `force`d after a crash loop);
    /// otherwise adopts the row (a re-authorization won the race).
    async fn on_mark_needs_reauth(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        failure: RefreshFailure,
        refresh_token: Option<SecretString>,
        force: bool,
        span: tracing::Span,
    ) {
        let bound = match &self.phase {
            Phase::Escalating {
                refresh_token: failed, ..
            } => *failed == refresh_token,
            _ => force,
        };
        if !bound {
            tracing::debug!(connection.id = %self.conn.id, phase = self.phase.name(), "escalation no longer applies");
            return;
        }
        let written = {
            let write_span = tracing::info_span!(
                parent: &span,
                "store_mark_needs_reauth",
                otel.name = "tokenvisor.store.mark_needs_reauth",
                db.operation.name = "compare_and_swap",
            );
            let binding = if force { None } else { refresh_token.as_ref() };
            tracing::Instrument::instrument(
                mark_needs_reauth(&self.shared, &self.slot, &self.conn, &failure, binding),
                write_span,
            )
            .await
        };
        let _entered = span.enter();
        match written {
            Ok(Marked::Written(connection)) => {
                self.conn = connection;
                self.enter(Phase::Escalated);
                span.record("tenant.id", tracing::field::display(&self.conn.tenant_id));
                span.record("integration", self.integration.name.as_str());
                span.record("provider", self.integration.provider.as_str());
                span.record("refresh_failures", self.conn.refresh_failures);
                self.shared
                    .metrics
                    .escalation(&self.integration.provider, &failure.code);
                tracing::warn!(
                    connection.id = %self.conn.id,
                    tenant.id = %self.conn.tenant_id,
                    refresh_failures = self.conn.refresh_failures,
                    error.code = %failure.code,
                    "connection needs re-authorization"
                );
                self.emit(EventKind::NeedsReauthorization {
                    code: failure.code.clone(),
                    message: failure.message.clone(),
                    refresh_failures: self.conn.refresh_failures,
                });
                let error = TokenError::NeedsReauthorization {
                    code: failure.code,
                    message: failure.message,
                };
                self.reply_waiters(|| Err(error.clone()));
            }
            Ok(Marked::Already(connection)) => {
                self.conn = connection;
                self.enter(Phase::Escalated);
                let error = status_error(&self.conn);
                self.reply_waiters(|| Err(error.clone()));
            }
            Ok(Marked::Moved(connection)) => {
                tracing::info!(connection.id = %self.conn.id, "the grant was replaced before the escalation was written; adopting it");
                self.on_adopted(*connection);
                self.schedule(myself);
            }
            Ok(Marked::Deleted) => self.on_deleted(myself),
            Err(error) => {
                span.record("otel.status_code", "error");
                tracing::error!(connection.id = %self.conn.id, error = %error, "failed to record escalation; retrying");
                let delay = std::time::Duration::from_secs(1);
                let span = span.clone();
                myself.send_after(delay, move || ConnectionMsg::MarkNeedsReauth {
                    failure,
                    refresh_token,
                    force,
                    span,
                });
            }
        }
    }

    /// Applies the operations that waited for a refresh's outcome, in order.
    async fn apply_deferred(&mut self, myself: &ActorRef<ConnectionMsg>) {
        while !matches!(self.phase, Phase::Refreshing) {
            let Some(message) = self.deferred.pop_front() else {
                return;
            };
            match message {
                ConnectionMsg::Lifecycle(op, reply) => {
                    let result = self.apply(myself, op).await;
                    let _ = reply.send(result);
                }
                ConnectionMsg::MarkNeedsReauth {
                    failure,
                    refresh_token,
                    force,
                    span,
                } => {
                    self.on_mark_needs_reauth(myself, failure, refresh_token, force, span)
                        .await
                }
                other => answer_with(other, &TokenError::Internal("unexpected deferred message".into())),
            }
        }
    }

    /// Applies a lifecycle operation: one compare-and-swap write of the row (kept tokens
    /// included), then the phase it leads to.
    async fn apply(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        op: LifecycleOp,
    ) -> Result<Option<Connection>, TokenError> {
        if matches!(self.phase, Phase::Stopping) {
            return Err(TokenError::NotFound);
        }
        match op {
            LifecycleOp::Deactivate => {
                let row = self
                    .write(true, |c| {
                        c.status = ConnectionStatus::Disabled;
                        c.is_active = false;
                        c.next_refresh_at = None;
                    })
                    .await?;
                self.conn = row;
                self.enter(Phase::Disabled);
                self.reply_waiters(|| Err(TokenError::Disabled));
                self.emit(EventKind::Deactivated);
                Ok(Some(self.conn.clone()))
            }
            LifecycleOp::Activate => {
                let row = self
                    .write(true, |c| {
                        c.status = ConnectionStatus::Active;
                        c.is_active = true;
                        c.consecutive_failures = 0;
                        c.next_refresh_at = None;
                    })
                    .await?;
                self.conn = row;
                self.reset_after_change();
                self.emit(EventKind::Activated);
                self.schedule(myself);
                Ok(Some(self.conn.clone()))
            }
            LifecycleOp::ReplaceTokens { tokens, metadata } => {
                let now = self.now();
                let row = self
                    .write(false, |c| {
                        c.apply_token_set(&tokens, now);
                        for (key, value) in &metadata {
                            c.metadata.insert(key.clone(), value.clone());
                        }
                        c.status = ConnectionStatus::Active;
                        c.is_active = true;
                        c.consecutive_failures = 0;
                        c.last_error = None;
                        c.next_refresh_at = None;
                    })
                    .await?;
                // The new grant supersedes tokens kept from the old one.
                refresh::forget_pending(&self.shared, self.conn.id).await;
                self.conn = row;
                self.reset_after_change();
                if let Some(token) = self.servable() {
                    self.reply_waiters(|| Ok(token.clone()));
                }
                self.emit(EventKind::Reauthorized);
                self.schedule(myself);
                Ok(Some(self.conn.clone()))
            }
            LifecycleOp::Remove => self.remove(myself).await.map(|()| None),
        }
    }

    /// After an operator's change made the connection active with fresh state.
    fn reset_after_change(&mut self) {
        self.rejected = false;
        self.failures = 0;
        self.last_probe = None;
        self.failed_at = None;
        self.enter(Phase::Idle);
    }

    /// Deletes the row (with the tokens kept for it), then revokes the grant at the
    /// provider (best effort), then retires.
    async fn remove(&mut self, myself: &ActorRef<ConnectionMsg>) -> Result<(), TokenError> {
        let before = std::mem::replace(&mut self.phase, Phase::Stopping);
        self.publish();
        // The grant to revoke: the newest refresh token, kept tokens included.
        let grant = self
            .slot
            .pending()
            .and_then(|pending| pending.tokens.refresh_token)
            .or_else(|| self.conn.refresh_token.clone())
            .unwrap_or_else(|| self.conn.access_token.clone());
        let deleted = {
            let _lock = self.slot.refresh_lock.clone().lock_owned().await;
            self.shared.store.delete_connection(self.conn.id).await
        };
        if let Err(error) = deleted {
            self.enter(before);
            return Err(error.into());
        }
        refresh::forget_pending(&self.shared, self.conn.id).await;
        self.cancel_timer();
        self.reply_waiters(|| Err(TokenError::NotFound));
        self.revoke_best_effort(&grant).await;
        self.emit(EventKind::Removed);
        self.shared.registry.remove(self.conn.id);
        for message in self.deferred.drain(..) {
            answer_with(message, &TokenError::NotFound);
        }
        myself.stop(Some(RETIRED.into()));
        Ok(())
    }

    async fn revoke_best_effort(&self, token: &SecretString) {
        let Ok(resolved) = &self.integration.resolved else {
            return;
        };
        if let Err(error) = self.shared.client.revoke(resolved, &self.conn.metadata, token).await {
            tracing::warn!(connection.id = %self.conn.id, error = %error, "revocation at the provider failed; the connection is deleted anyway");
        }
    }

    /// Writes `edit` applied to the row with compare-and-swap (reloading on conflicts),
    /// with the kept tokens when `with_pending` and they still apply.
    async fn write(&mut self, with_pending: bool, edit: impl Fn(&mut Connection)) -> Result<Connection, TokenError> {
        let mut committed_version = self.slot.refresh_lock.clone().lock_owned().await;
        let mut current = self.conn.clone();
        for _ in 0..16 {
            let now = self.now();
            let mut next = current.clone();
            let pending = if with_pending {
                self.slot.pending().filter(|p| p.applies_to(&current))
            } else {
                None
            };
            if let Some(pending) = &pending {
                next.apply_token_set(&pending.tokens, pending.obtained_at);
                next.last_refresh_at = Some(pending.obtained_at);
            }
            edit(&mut next);
            next.updated_at = now;
            match self.shared.store.compare_and_swap(&next, current.version).await? {
                CasOutcome::Committed { version } => {
                    next.version = version;
                    *committed_version = version;
                    drop(committed_version);
                    if pending.is_some() {
                        refresh::forget_pending(&self.shared, self.conn.id).await;
                    }
                    return Ok(next);
                }
                CasOutcome::Conflict { current: Some(row) } => current = *row,
                CasOutcome::Conflict { current: None } => return Err(TokenError::NotFound),
            }
        }
        Err(TokenError::StoreUnavailable("too many concurrent writes".into()))
    }

    /// Sets the timer for what the phase plans next.
    fn schedule(&mut self, myself: &ActorRef<ConnectionMsg>) {
        match &self.phase {
            Phase::Idle => {}
            Phase::BackingOff { retry_at, .. } | Phase::AwaitingCommit { retry_at } => {
                let retry_at = *retry_at;
                self.set_timer(myself, retry_at, RefreshReason::Retry);
                return;
            }
            _ => {
                self.cancel_timer();
                return;
            }
        }
        if !self.waiters.is_empty() {
            self.start_refresh(myself, RefreshReason::OnDemand);
            return;
        }
        let now = self.now();
        let policy = &self.integration.policy;
        if self.conn.refresh_token.is_none() {
            // Nothing to refresh with: escalate when the token can no longer be handed out.
            let at = self.unservable_at();
            self.set_timer(myself, at, RefreshReason::Scheduled);
            return;
        }
        let recent: Vec<_> = self.recent.iter().copied().collect();
        let planned = self.conn.next_refresh_at.unwrap_or_else(|| {
            tokenvisor_core::next_refresh_at(
                self.conn.issued_at,
                self.conn.expires_at,
                &recent,
                now,
                policy,
                rand::random(),
            )
        });
        let mut at = planned.max(earliest_allowed(&recent, now, policy));
        let mut reason = RefreshReason::Scheduled;
        if self.startup && at <= now {
            reason = RefreshReason::Startup;
            // Spread start-up refreshes, unless the token cannot be handed out meanwhile.
            let spread = policy.startup_spread.num_milliseconds() as f64 * rand::random::<f64>();
            let spread_until = now + chrono::Duration::milliseconds(spread as i64);
            if spread_until < self.unservable_at() {
                at = spread_until;
            }
        }
        self.set_timer(myself, at, reason);
    }

    fn set_timer(&mut self, myself: &ActorRef<ConnectionMsg>, at: DateTime<Utc>, reason: RefreshReason) {
        self.cancel_timer();
        self.timer_generation += 1;
        self.timer_reason = reason;
        let generation = self.timer_generation;
        let delay = (at - self.now()).to_std().unwrap_or_default();
        self.timer = Some(myself.send_after(delay, move || ConnectionMsg::Timer { generation }));
    }

    fn cancel_timer(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }

    fn reply_waiters(&mut self, mut answer: impl FnMut() -> Result<AccessToken, TokenError>) {
        self.refresh_parent = None;
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(answer());
        }
    }

    fn emit(&self, kind: EventKind) {
        self.shared.events.publish(Event {
            at: self.now(),
            connection_id: self.conn.id,
            tenant_id: self.conn.tenant_id.clone(),
            integration_id: self.conn.integration_id,
            kind,
        });
    }
}

/// How an escalation write ended.
enum Marked {
    /// `needs_reauth` is written (`refresh_failures + 1`).
    Written(Connection),
    /// The row already said `needs_reauth` (counted once).
    Already(Connection),
    /// The row holds another grant now: adopt it.
    Moved(Box<Connection>),
    /// The row is gone.
    Deleted,
}

/// The store write of an escalation, bound to the refresh token that failed (`binding`),
/// retried on compare-and-swap conflicts.
async fn mark_needs_reauth(
    shared: &SharedRef,
    slot: &Slot,
    known: &Connection,
    failure: &RefreshFailure,
    binding: Option<&SecretString>,
) -> Result<Marked, tokenvisor_store::StoreError> {
    let mut committed_version = slot.refresh_lock.clone().lock_owned().await;
    let mut current = known.clone();
    for _ in 0..16 {
        if current.status == ConnectionStatus::NeedsReauth && !current.is_active {
            return Ok(Marked::Already(current));
        }
        if let Some(failed) = binding
            && current.refresh_token.as_ref() != Some(failed)
        {
            return Ok(Marked::Moved(Box::new(current)));
        }
        let now = shared.clock.now();
        let mut next = current.clone();
        next.status = ConnectionStatus::NeedsReauth;
        next.is_active = false;
        next.refresh_failures += 1;
        next.next_refresh_at = None;
        next.last_error = Some(LastError {
            code: failure.code.clone(),
            message: failure.message.clone(),
            at: now,
        });
        next.updated_at = now;
        match shared.store.compare_and_swap(&next, current.version).await? {
            CasOutcome::Committed { version } => {
                next.version = version;
                *committed_version = version;
                return Ok(Marked::Written(next));
            }
            CasOutcome::Conflict { current: Some(row) } => current = *row,
            CasOutcome::Conflict { current: None } => return Ok(Marked::Deleted),
        }
    }
    Err(tokenvisor_store::StoreError::Database(
        "too many concurrent writes".into(),
    ))
}

/// The OpenTelemetry context of `span` (invalid without an OpenTelemetry layer).
fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// The caller-facing error for a failed refresh (for a read: the token cannot be
/// handed out meanwhile).
fn failure_error(failure: &RefreshFailure, retry_at: DateTime<Utc>) -> TokenError {
    match failure.class {
        FailureClass::IntegrationMisconfigured => TokenError::IntegrationMisconfigured {
            code: failure.code.clone(),
            message: failure.message.clone(),
        },
        FailureClass::Permanent => TokenError::NeedsReauthorization {
            code: failure.code.clone(),
            message: failure.message.clone(),
        },
        FailureClass::Transient | FailureClass::RateLimited => {
            if failure.code == "store_unavailable" {
                TokenError::StoreUnavailable(failure.message.clone())
            } else {
                TokenError::ProviderUnavailable {
                    code: failure.code.clone(),
                    retry_at,
                }
            }
        }
    }
}

/// The caller-facing error for a connection that is not supervised.
pub(crate) fn status_error(connection: &Connection) -> TokenError {
    match connection.status {
        ConnectionStatus::Disabled => TokenError::Disabled,
        ConnectionStatus::Active | ConnectionStatus::Degraded if !connection.is_active => TokenError::Disabled,
        _ => {
            let (code, message) = connection
                .last_error
                .as_ref()
                .map(|e| (e.code.clone(), e.message.clone()))
                .unwrap_or_else(|| ("needs_reauth".into(), "the tenant must re-authorize".into()));
            TokenError::NeedsReauthorization { code, message }
        }
    }
}
