//! What a refresh task reports, one function per outcome.

use super::{Owner, failure_error, span_context, status_error};
use crate::connection::actor::{ConnectionMsg, RETIRED, answer_with};
use crate::connection::phase::Phase;
use crate::connection::refresh::RefreshResult;
use crate::error::TokenError;
use chrono::{DateTime, Utc};
use ractor::ActorRef;
use tokenvisor_core::schedule::retry_delay;
use tokenvisor_core::{Connection, EventKind, FailureClass, RefreshFailure};

impl Owner {
    pub(super) async fn on_refresh_done(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        result: RefreshResult,
        span: tracing::Span,
    ) {
        {
            let _entered = span.enter();
            self.phase = Phase::Idle;
            match result {
                RefreshResult::Refreshed { connection } => self.on_refreshed(connection),
                RefreshResult::Adopted { connection } => self.on_adopted(connection),
                RefreshResult::Deleted => self.on_deleted(myself),
                RefreshResult::Fenced => self.on_fenced(myself),
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

    pub(super) fn on_refreshed(&mut self, connection: Connection) {
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

    pub(super) fn on_adopted(&mut self, connection: Connection) {
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
    pub(super) fn become_dormant(&mut self) {
        self.enter(Phase::dormant_for(self.conn.status));
        let error = status_error(&self.conn);
        self.reply_waiters(|| Err(error.clone()));
    }

    pub(super) fn on_deleted(&mut self, myself: &ActorRef<ConnectionMsg>) {
        self.enter(Phase::Stopping);
        self.reply_waiters(|| Err(TokenError::NotFound));
        for message in self.deferred.drain(..) {
            answer_with(message, &TokenError::NotFound);
        }
        self.shared.registry.remove(self.conn.id);
        myself.stop(Some(RETIRED.into()));
    }

    /// Another replica owns the connection now: stop supervising it here, and send the
    /// waiting callers to the new owner (their error is retryable).
    pub(super) fn on_fenced(&mut self, myself: &ActorRef<ConnectionMsg>) {
        self.enter(Phase::Stopping);
        let error = TokenError::OwnerUnavailable {
            message: "this replica no longer owns the connection's partition".into(),
        };
        self.reply_waiters(|| Err(error.clone()));
        for message in self.deferred.drain(..) {
            answer_with(message, &error);
        }
        myself.stop(Some(RETIRED.into()));
    }

    pub(super) fn on_commit_failed(&mut self, message: String) {
        crate::shared::store_failed(&self.shared);
        self.failures += 1;
        self.failed_at = Some(self.now());
        let failure = RefreshFailure::new(FailureClass::Transient, "store_unavailable", message.clone());
        let retry_at = self.retry_at_after(&failure);
        self.enter(Phase::AwaitingCommit { retry_at });
        self.reply_waiters(|| Err(TokenError::StoreUnavailable(message.clone())));
    }

    pub(super) fn on_transient_failure(&mut self, failure: RefreshFailure) {
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
    pub(super) fn retry_at_after(&self, failure: &RefreshFailure) -> DateTime<Utc> {
        let policy = &self.integration.policy;
        let cap = self.shared.config.retry_after_cap.as_secs();
        let retry_after = failure
            .retry_after_secs
            .map(|seconds| chrono::Duration::seconds(seconds.min(cap) as i64));
        let delay = match failure.class {
            FailureClass::IntegrationMisconfigured => tokenvisor_core::schedule::span(policy.misconfigured_retry),
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
}
