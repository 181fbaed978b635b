//! The connection actor.

use super::refresh::{self, PendingTokens, RefreshJob, RefreshResult};
use crate::error::TokenError;
use crate::registry::Slot;
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
    Connection, Event, EventKind, FailureClass, RefreshFailure, RefreshReason, SecretString, validity_floor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// How many refresh start times are kept for spacing and window limits.
const RECENT_REFRESHES_KEPT: usize = 32;

type TokenReply = RpcReplyPort<Result<AccessToken, TokenError>>;

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
    pub connection: Connection,
    pub integration: IntegrationRef,
    pub shared: SharedRef,
    pub slot: Arc<Slot>,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Spawned at process start-up: spread the refreshes of tokens already due.
    pub startup: bool,
}

/// The connection actor (state lives in [`ConnectionState`]).
pub(crate) struct ConnectionActor;

pub(crate) struct ConnectionState {
    conn: Connection,
    integration: IntegrationRef,
    shared: SharedRef,
    slot: Arc<Slot>,
    supervisor: ActorRef<SupervisorMsg>,
    in_flight: bool,
    waiters: Vec<TokenReply>,
    pending: Option<PendingTokens>,
    recent: VecDeque<DateTime<Utc>>,
    timer: Option<tokio::task::JoinHandle<Result<(), ractor::MessagingErr<ConnectionMsg>>>>,
    timer_generation: u64,
    timer_reason: RefreshReason,
    /// The current access token was reported rejected by the API.
    rejected: bool,
    /// A permanent failure was escalated; the supervisor will stop this actor.
    escalated: bool,
    /// Set while backing off after failures: when the next attempt is due.
    retry_at: Option<DateTime<Utc>>,
    last_failure: Option<RefreshFailure>,
    attempt: u32,
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
        let mut state = ConnectionState {
            conn: args.connection,
            integration: args.integration,
            shared: args.shared,
            slot: args.slot,
            supervisor: args.supervisor,
            in_flight: false,
            waiters: Vec::new(),
            pending: None,
            recent: VecDeque::new(),
            timer: None,
            timer_generation: 0,
            timer_reason: RefreshReason::Scheduled,
            rejected: false,
            escalated: false,
            retry_at: None,
            last_failure: None,
            attempt: 0,
            startup: args.startup,
            refresh_parent: None,
            held_back: false,
        };
        if let Some(last_refresh) = state.conn.last_refresh_at {
            state.recent.push_back(last_refresh);
        }
        state.publish();
        state.schedule(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<ConnectionMsg>,
        message: ConnectionMsg,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConnectionMsg::AccessToken(reply, caller) => {
                state.on_access_token(&myself, reply, caller, RefreshReason::OnDemand)
            }
            ConnectionMsg::TokenRejected { token, reply, caller } => {
                state.on_token_rejected(&myself, token, reply, caller)
            }
            ConnectionMsg::ForceRefresh(reply, caller) => {
                state.add_waiter(reply, caller);
                state.start_refresh(&myself, RefreshReason::Forced, true);
            }
            ConnectionMsg::Timer { generation } => {
                if generation == state.timer_generation {
                    state.timer = None;
                    let reason = if state.waiters.is_empty() {
                        state.timer_reason
                    } else {
                        RefreshReason::OnDemand
                    };
                    state.start_refresh(&myself, reason, true);
                }
            }
            ConnectionMsg::RefreshDone { result, span } => {
                let _entered = span.enter();
                state.on_refresh_done(&myself, *result, span_context(&span));
            }
            #[cfg(feature = "fault-injection")]
            ConnectionMsg::Panic => panic!("injected panic in connection actor"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnectionMsg>,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        state.cancel_timer();
        Ok(())
    }
}

impl ConnectionState {
    fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    /// The current token, if it is valid for at least the validity floor (invariant 4).
    fn servable(&self) -> Option<AccessToken> {
        if self.rejected || self.escalated {
            return None;
        }
        let floor = validity_floor(self.conn.issued_at, self.conn.expires_at, &self.integration.policy);
        (self.conn.expires_at - self.now() >= floor).then(|| AccessToken::of(&self.conn))
    }

    /// Makes the committed token readable without a message (the hot path re-checks validity).
    fn publish(&self) {
        let token = (!self.rejected && !self.escalated).then(|| AccessToken::of(&self.conn));
        self.slot.publish(token);
        self.slot.set_observed_status(self.conn.status);
    }

    /// Queues a caller for the next refresh; the first waiting caller's span parents it.
    fn add_waiter(&mut self, reply: TokenReply, caller: tracing::Span) {
        if self.refresh_parent.is_none() && !self.in_flight {
            self.refresh_parent = Some(caller);
        }
        self.waiters.push(reply);
    }

    fn on_access_token(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        reply: TokenReply,
        caller: tracing::Span,
        reason: RefreshReason,
    ) {
        if let Some(token) = self.servable() {
            let _ = reply.send(Ok(token));
            return;
        }
        if self.escalated {
            let _ = reply.send(Err(self.reauth_error()));
            return;
        }
        if let (Some(retry_at), Some(failure)) = (self.retry_at, &self.last_failure)
            && !self.in_flight
            && self.pending.is_none()
        {
            // Backing off: do not let callers hammer a failing provider.
            let _ = reply.send(Err(failure_error(failure, retry_at)));
            return;
        }
        self.add_waiter(reply, caller);
        self.start_refresh(myself, reason, false);
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
            self.slot.publish(None);
        }
        self.on_access_token(myself, reply, caller, RefreshReason::Rejected);
    }

    /// Starts the refresh task unless one is in flight, or sets a timer for the
    /// earliest moment the spacing and window limits allow. `ignore_backoff` lets
    /// timers and operators retry during backoff; callers never do.
    fn start_refresh(&mut self, myself: &ActorRef<ConnectionMsg>, reason: RefreshReason, ignore_backoff: bool) {
        if self.in_flight || self.escalated {
            return;
        }
        if self.shared.is_shutting_down() {
            self.reply_waiters(|| Err(TokenError::ShuttingDown));
            return;
        }
        let now = self.now();
        if !ignore_backoff && let Some(retry_at) = self.retry_at.filter(|at| *at > now) {
            self.set_timer(myself, retry_at, RefreshReason::Retry);
            return;
        }
        if self.pending.is_none() {
            let recent: Vec<_> = self.recent.iter().copied().collect();
            let allowed = earliest_allowed(&recent, now, &self.integration.policy);
            if allowed > now {
                if !self.held_back {
                    self.held_back = true;
                    self.shared.metrics.throttled(&self.integration.provider, "spacing");
                }
                self.set_timer(myself, allowed, reason);
                return;
            }
            self.held_back = false;
            self.recent.push_back(now);
            while self.recent.len() > RECENT_REFRESHES_KEPT {
                self.recent.pop_front();
            }
        }
        self.cancel_timer();
        self.in_flight = true;
        self.attempt += 1;
        let job = RefreshJob {
            base: self.conn.clone(),
            pending: self.pending.clone(),
            reason: if self.retry_at.is_some() && reason == RefreshReason::Scheduled {
                RefreshReason::Retry
            } else {
                reason
            },
            attempt: self.attempt,
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
            // The actor may have been stopped meanwhile; the result is committed either way.
            let _ = actor.cast(ConnectionMsg::RefreshDone {
                result: Box::new(result),
                span,
            });
        });
    }

    fn on_refresh_done(&mut self, myself: &ActorRef<ConnectionMsg>, result: RefreshResult, span: SpanContext) {
        self.in_flight = false;
        match result {
            RefreshResult::Refreshed { connection, .. } => {
                let failures_before = self
                    .conn
                    .consecutive_failures
                    .max(self.attempt.saturating_sub(1) as i32);
                let was_failing = self.retry_at.is_some() || self.pending.is_some();
                self.conn = connection;
                self.pending = None;
                self.retry_at = None;
                self.last_failure = None;
                self.attempt = 0;
                self.rejected = false;
                self.startup = false;
                self.publish();
                if let Some(token) = self.servable() {
                    self.reply_waiters(|| Ok(token.clone()));
                }
                self.emit(EventKind::Refreshed {
                    expires_at: self.conn.expires_at,
                });
                if was_failing {
                    self.emit(EventKind::Recovered {
                        after_failures: failures_before.max(1) as u32,
                    });
                }
                tracing::debug!(connection.id = %self.conn.id, expires_at = %self.conn.expires_at, "token refreshed");
            }
            RefreshResult::Adopted { connection } => {
                self.conn = connection;
                self.pending = None;
                self.rejected = false;
                if !self.conn.is_active || !self.conn.status.is_supervised() {
                    let error = status_error(&self.conn);
                    self.reply_waiters(|| Err(error.clone()));
                    self.slot.publish(None);
                    self.escalated = true;
                    let _ = self.supervisor.cast(SupervisorMsg::Reconciled {
                        connection_id: self.conn.id,
                        cause: span,
                    });
                    return;
                }
                self.publish();
                if let Some(token) = self.servable() {
                    self.reply_waiters(|| Ok(token.clone()));
                } else if !self.waiters.is_empty() {
                    self.start_refresh(myself, RefreshReason::OnDemand, false);
                }
            }
            RefreshResult::Deleted => {
                self.escalated = true;
                self.slot.publish(None);
                self.reply_waiters(|| Err(TokenError::NotFound));
                let _ = self.supervisor.cast(SupervisorMsg::Reconciled {
                    connection_id: self.conn.id,
                    cause: span,
                });
                return;
            }
            RefreshResult::CommitFailed { pending, message } => {
                self.pending = Some(pending);
                let failure = RefreshFailure::new(FailureClass::Transient, "store_unavailable", message.clone());
                self.back_off(&failure);
                self.reply_waiters(|| Err(TokenError::StoreUnavailable(message.clone())));
            }
            RefreshResult::Failed { failure, connection } => {
                if let Some(connection) = connection {
                    self.conn = connection;
                    self.slot.set_observed_status(self.conn.status);
                }
                if failure.class.is_permanent() {
                    self.escalate(failure, span);
                    return;
                }
                let retry_at = self.back_off(&failure);
                self.emit(EventKind::RefreshFailed {
                    code: failure.code.clone(),
                    message: failure.message.clone(),
                    consecutive_failures: self.attempt,
                    retry_at,
                });
                tracing::warn!(
                    connection.id = %self.conn.id,
                    tenant.id = %self.conn.tenant_id,
                    error.code = %failure.code,
                    attempt = self.attempt,
                    retry_at = %retry_at,
                    "refresh failed, retrying"
                );
                let error = failure_error(&failure, retry_at);
                self.reply_waiters(|| Err(error.clone()));
                self.last_failure = Some(failure);
            }
        }
        self.schedule(myself);
    }

    /// Plans the next attempt after a failure; returns when it is due.
    fn back_off(&mut self, failure: &RefreshFailure) -> DateTime<Utc> {
        let policy = &self.integration.policy;
        let retry_after = failure.retry_after_secs.map(|s| chrono::Duration::seconds(s as i64));
        let delay = match failure.class {
            FailureClass::IntegrationMisconfigured => policy.misconfigured_retry,
            FailureClass::RateLimited => {
                retry_delay(self.attempt, retry_after, policy, rand::random()).max(chrono::Duration::seconds(60))
            }
            _ => retry_delay(self.attempt, retry_after, policy, rand::random()),
        };
        let retry_at = self.now() + delay;
        self.retry_at = Some(retry_at);
        self.last_failure = Some(failure.clone());
        retry_at
    }

    fn escalate(&mut self, failure: RefreshFailure, cause: SpanContext) {
        self.escalated = true;
        self.cancel_timer();
        self.slot.publish(None);
        let error = TokenError::NeedsReauthorization {
            code: failure.code.clone(),
            message: failure.message.clone(),
        };
        self.reply_waiters(|| Err(error.clone()));
        tracing::warn!(connection.id = %self.conn.id, tenant.id = %self.conn.tenant_id, error.code = %failure.code, "refresh failed permanently, escalating");
        self.last_failure = Some(failure.clone());
        let _ = self.supervisor.cast(SupervisorMsg::Escalate {
            connection_id: self.conn.id,
            failure,
            cause,
        });
    }

    fn reauth_error(&self) -> TokenError {
        match &self.last_failure {
            Some(failure) => TokenError::NeedsReauthorization {
                code: failure.code.clone(),
                message: failure.message.clone(),
            },
            None => status_error(&self.conn),
        }
    }

    /// Sets the timer for the next planned refresh.
    fn schedule(&mut self, myself: &ActorRef<ConnectionMsg>) {
        if self.escalated || self.in_flight {
            return;
        }
        let now = self.now();
        if let Some(retry_at) = self.retry_at {
            self.set_timer(myself, retry_at, RefreshReason::Retry);
            return;
        }
        if !self.waiters.is_empty() {
            self.start_refresh(myself, RefreshReason::OnDemand, false);
            return;
        }
        let policy = &self.integration.policy;
        let floor = validity_floor(self.conn.issued_at, self.conn.expires_at, policy);
        if self.conn.refresh_token.is_none() {
            // Nothing to refresh with: escalate when the token can no longer be handed out.
            self.set_timer(myself, self.conn.expires_at - floor, RefreshReason::Scheduled);
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
            if spread_until < self.conn.expires_at - floor {
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

/// The OpenTelemetry context of `span` (invalid without an OpenTelemetry layer).
fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// The caller-facing error for a failed refresh while the token cannot be handed out.
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
    use tokenvisor_core::ConnectionStatus;
    match connection.status {
        ConnectionStatus::Disabled => TokenError::Disabled,
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
