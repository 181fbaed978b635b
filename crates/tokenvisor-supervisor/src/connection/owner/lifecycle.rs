//! Deactivate, activate, replace tokens, remove: one compare-and-swap write each, applied after a refresh in flight commits.

use super::Owner;
use crate::connection::actor::{ConnectionMsg, LifecycleOp, RETIRED, answer_with};
use crate::connection::phase::Phase;
use crate::connection::refresh::{self};
use crate::error::TokenError;
use ractor::ActorRef;
use tokenvisor_core::{Connection, ConnectionStatus, EventKind, SecretString};
use tokenvisor_store::CasOutcome;

impl Owner {
    /// Applies the operations that waited for a refresh's outcome, in order.
    pub(super) async fn apply_deferred(&mut self, myself: &ActorRef<ConnectionMsg>) {
        while !matches!(self.phase, Phase::Refreshing) {
            let Some(message) = self.deferred.pop_front() else {
                return;
            };
            self.on_change(myself, message).await;
        }
    }

    /// A change to the connection (a lifecycle operation or the escalation write),
    /// applied now: the caller checked that no refresh is in flight.
    pub(super) async fn on_change(&mut self, myself: &ActorRef<ConnectionMsg>, message: ConnectionMsg) {
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
            other => answer_with(other, &TokenError::Internal("not a change to the connection".into())),
        }
    }

    /// Applies a lifecycle operation: one compare-and-swap write of the row (kept tokens
    /// included), then the phase it leads to.
    pub(super) async fn apply(
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
                // Activating a connection that is supervised already changes nothing but
                // the row: a retry it has planned (say, of an answer lost after the
                // provider rotated the refresh token, due inside the grace period) stands.
                let supervising = self.phase.is_supervising();
                let row = self
                    .write(true, |c| {
                        if !supervising {
                            c.status = ConnectionStatus::Active;
                            c.consecutive_failures = 0;
                            c.next_refresh_at = None;
                        }
                        c.is_active = true;
                    })
                    .await?;
                self.conn = row;
                if supervising {
                    self.publish();
                } else {
                    // A refresh that failed before the connection was disabled may have
                    // rotated the refresh token at the provider (a lost answer): retry it
                    // now, inside the provider's grace period, not at the next planned time.
                    let unfinished = self.failed_at.is_some();
                    self.reset_after_change();
                    if unfinished {
                        self.conn.next_refresh_at = Some(self.now());
                    }
                }
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
    pub(super) fn reset_after_change(&mut self) {
        self.rejected = false;
        self.failures = 0;
        self.last_probe = None;
        self.failed_at = None;
        self.enter(Phase::Idle);
    }

    /// Deletes the row (with the tokens kept for it), then revokes the grant at the
    /// provider (best effort), then retires.
    pub(super) async fn remove(&mut self, myself: &ActorRef<ConnectionMsg>) -> Result<(), TokenError> {
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
            if self.shared.fence(self.conn.id).is_err() {
                self.enter(before);
                return Err(lost_partition());
            }
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

    pub(super) async fn revoke_best_effort(&self, token: &SecretString) {
        let Ok(resolved) = &self.integration.resolved else {
            return;
        };
        if let Err(error) = self.shared.client.revoke(resolved, &self.conn.metadata, token).await {
            tracing::warn!(connection.id = %self.conn.id, error = %error, "revocation at the provider failed; the connection is deleted anyway");
        }
    }

    /// Writes `edit` applied to the row with compare-and-swap (reloading on conflicts),
    /// with the kept tokens when `with_pending` and they still apply.
    pub(super) async fn write(
        &mut self,
        with_pending: bool,
        edit: impl Fn(&mut Connection),
    ) -> Result<Connection, TokenError> {
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
            match self.shared.write(&next, current.version).await? {
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
                CasOutcome::Fenced => return Err(lost_partition()),
            }
        }
        Err(TokenError::StoreUnavailable("too many concurrent writes".into()))
    }
}

/// The answer to an operation this replica can no longer apply: another replica owns
/// the connection now (the caller asks it).
fn lost_partition() -> TokenError {
    TokenError::OwnerUnavailable {
        message: "this replica no longer owns the connection's partition".into(),
    }
}
