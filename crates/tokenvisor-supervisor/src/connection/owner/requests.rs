//! Callers and operators asking for tokens: hand out, probe, start a refresh.

use super::{Owner, RECENT_REFRESHES_KEPT, STORE_WAIT_RECHECK, failure_error};
use crate::connection::actor::{ConnectionMsg, LifecycleOp, TokenReply};
use crate::connection::phase::Phase;
use crate::connection::refresh::{self, RefreshJob, RefreshResult};
use crate::error::TokenError;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use ractor::{ActorRef, RpcReplyPort};
use std::panic::AssertUnwindSafe;
use tokenvisor_core::schedule::earliest_allowed;
use tokenvisor_core::{FailureClass, RefreshFailure, RefreshReason, SecretString};

impl Owner {
    /// The limits a probe obeys: the provider's own (a profile's spacing, its window),
    /// not tokenvisor's general minimum spacing, which the probe interval replaces.
    pub(super) fn probe_policy(&self) -> tokenvisor_core::SchedulePolicy {
        let mut policy = self.integration.policy.clone();
        if policy.min_spacing <= self.shared.config.schedule.min_spacing {
            policy.min_spacing = std::time::Duration::ZERO;
        }
        policy
    }

    pub(super) fn on_access_token(
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
    pub(super) fn probe_or_refuse(
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
        let probes_on = !self.shared.config.probe_interval.is_zero();
        if failure.class == FailureClass::Transient
            && probes_on
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

    pub(super) fn on_token_rejected(
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

    pub(super) fn on_force_refresh(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        reply: TokenReply,
        caller: tracing::Span,
    ) {
        if let Some(error) = self.dormant_error() {
            let _ = reply.send(Err(error));
            return;
        }
        self.add_waiter(reply, caller);
        self.start_refresh(myself, RefreshReason::Forced);
    }

    pub(super) fn on_timer(&mut self, myself: &ActorRef<ConnectionMsg>) {
        let reason = if self.waiters.is_empty() {
            self.timer_reason
        } else {
            RefreshReason::OnDemand
        };
        self.start_refresh(myself, reason);
    }

    pub(super) fn on_flush(&mut self, myself: &ActorRef<ConnectionMsg>, reply: RpcReplyPort<()>) {
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

    pub(super) fn defer(&mut self, message: ConnectionMsg) {
        if let ConnectionMsg::Lifecycle(LifecycleOp::Deactivate | LifecycleOp::Remove, _) = &message {
            // From now on nobody gets a token from memory.
            self.closing = true;
            self.publish();
        }
        self.deferred.push_back(message);
    }

    /// Starts the refresh task (or the commit of kept tokens) unless the phase forbids
    /// it, or sets a timer for the earliest moment the spacing and window limits allow.
    pub(super) fn start_refresh(&mut self, myself: &ActorRef<ConnectionMsg>, reason: RefreshReason) {
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
}
