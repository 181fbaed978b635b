//! The timer for what the phase plans next.

use super::Owner;
use crate::connection::actor::ConnectionMsg;
use crate::connection::phase::Phase;
use chrono::{DateTime, Utc};
use ractor::ActorRef;
use tokenvisor_core::RefreshReason;
use tokenvisor_core::schedule::earliest_allowed;

impl Owner {
    /// Sets the timer for what the phase plans next.
    pub(super) fn schedule(&mut self, myself: &ActorRef<ConnectionMsg>) {
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
            let spread = policy.startup_spread.as_millis() as f64 * rand::random::<f64>();
            let spread_until = now + chrono::Duration::milliseconds(spread as i64);
            if spread_until < self.unservable_at() {
                at = spread_until;
            }
        }
        self.set_timer(myself, at, reason);
    }

    pub(super) fn set_timer(&mut self, myself: &ActorRef<ConnectionMsg>, at: DateTime<Utc>, reason: RefreshReason) {
        self.cancel_timer();
        self.timer_generation += 1;
        self.timer_reason = reason;
        let generation = self.timer_generation;
        let delay = (at - self.now()).to_std().unwrap_or_default();
        self.timer = Some(myself.send_after(delay, move || ConnectionMsg::Timer { generation }));
    }

    pub(in crate::connection) fn cancel_timer(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}
