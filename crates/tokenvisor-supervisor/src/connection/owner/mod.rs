//! The owner of a loaded connection: its state and its phase, and one small function
//! per transition, grouped by what triggers it:
//!
//! - `requests`: callers and operators asking for tokens (hand out, probe, start a refresh);
//! - `outcome`: what a refresh task reports (committed, adopted, deleted, commit failed,
//!   failed);
//! - `escalation`: a permanent failure, the supervisor's decision, the `needs_reauth` write;
//! - `lifecycle`: deactivate, activate, replace tokens, remove (one compare-and-swap write);
//! - `schedule`: the timer for what the phase plans next.

mod escalation;
mod lifecycle;
mod outcome;
mod requests;
mod schedule;

use crate::connection::actor::{ConnectionMsg, TokenReply};
use crate::connection::phase::Phase;
use crate::error::TokenError;
use crate::registry::{Slot, SlotView};
use crate::shared::{IntegrationRef, SharedRef};
use crate::supervisor::SupervisorMsg;
use crate::token::AccessToken;
use chrono::{DateTime, Utc};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use ractor::{ActorRef, RpcReplyPort};
use std::collections::VecDeque;
use std::sync::Arc;
use tokenvisor_core::{
    Connection, ConnectionStatus, Event, EventKind, FailureClass, RefreshFailure, RefreshReason, validity_floor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// How many refresh start times are kept for spacing and window limits.
const RECENT_REFRESHES_KEPT: usize = 32;

/// While the store fails, a refresh that could wait is looked at again this often.
const STORE_WAIT_RECHECK: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

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

impl Owner {
    pub(super) fn new(
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

    /// Uses the integration's current version (a rotated secret, new settings) from the
    /// next refresh on: the cache holds the newest one this process knows.
    fn follow_integration(&mut self) {
        if let Some(current) = self.shared.cached_integration(self.conn.integration_id)
            && !Arc::ptr_eq(&current, &self.integration)
        {
            self.integration = current;
        }
    }

    /// Takes over: the phase follows the stored row (and tokens a previous owner kept).
    pub(super) fn begin(&mut self, myself: &ActorRef<ConnectionMsg>) {
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

    pub(super) async fn handle(&mut self, myself: &ActorRef<ConnectionMsg>, message: ConnectionMsg) {
        self.follow_integration();
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
            message @ (ConnectionMsg::Lifecycle(..) | ConnectionMsg::MarkNeedsReauth { .. }) => {
                self.on_change(myself, message).await
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
