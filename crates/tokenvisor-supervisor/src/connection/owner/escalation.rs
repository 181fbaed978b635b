//! A permanent failure: the supervisor decides, the owner writes `needs_reauth`, bound to the refresh token that failed.

use super::{Owner, status_error};
use crate::connection::actor::ConnectionMsg;
use crate::connection::phase::Phase;
use crate::error::TokenError;
use crate::registry::Slot;
use crate::shared::SharedRef;
use crate::supervisor::SupervisorMsg;
use opentelemetry::trace::SpanContext;
use ractor::ActorRef;
use tokenvisor_core::{Connection, ConnectionStatus, EventKind, LastError, RefreshFailure, SecretString};
use tokenvisor_store::CasOutcome;

impl Owner {
    pub(super) fn on_permanent_failure(&mut self, failure: RefreshFailure, cause: SpanContext) {
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
    pub(super) async fn on_mark_needs_reauth(
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
        match shared.write(&next, current.version).await? {
            CasOutcome::Committed { version } => {
                next.version = version;
                *committed_version = version;
                return Ok(Marked::Written(next));
            }
            CasOutcome::Conflict { current: Some(row) } => current = *row,
            CasOutcome::Conflict { current: None } => return Ok(Marked::Deleted),
            // Another replica owns it now: its owner meets the dead grant and escalates.
            CasOutcome::Fenced => {
                return Err(tokenvisor_store::StoreError::Database(
                    "this replica no longer owns the connection's partition".into(),
                ));
            }
        }
    }
    Err(tokenvisor_store::StoreError::Database(
        "too many concurrent writes".into(),
    ))
}
