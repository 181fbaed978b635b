//! Where a connection's owner stands. Each transition is one function of the actor.
//!
//! ```text
//!             ┌──────────── timer / caller / operator ───────────┐
//!             ▼                                                   │
//!   Idle ──► Refreshing ──► Idle            (committed)           │
//!             │   │   └───► AwaitingCommit  (provider answered, commit failed; retried,
//!             │   │                          journaled, never dropped) ─┘
//!             │   └───────► BackingOff      (transient failure; retry timer, probes) ─┘
//!             └───────────► Escalating ──► Escalated   (permanent failure; the supervisor
//!                                                       decides, the owner writes)
//!   any ──deactivate──► Disabled ──activate──► Idle
//!   Escalated ──re-authorize / activate──► Idle
//!   any ──remove──► Stopping (row deleted, grant revoked, actor stops)
//! ```
//!
//! Lifecycle operations and escalation writes that arrive while `Refreshing` wait until
//! the refresh's outcome is committed, then apply in order.

use chrono::{DateTime, Utc};
use tokenvisor_core::{ConnectionStatus, RefreshFailure, SecretString};

/// The phase of a connection owner.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// Supervising; the timer is set for the next planned refresh.
    Idle,
    /// A refresh task runs (a provider call and its commit, or the commit of kept tokens).
    Refreshing,
    /// The provider issued tokens whose commit failed: they are kept (slot and journal)
    /// and their commit is retried at `retry_at`; no provider call happens meanwhile.
    AwaitingCommit { retry_at: DateTime<Utc> },
    /// The last refresh failed transiently (or the integration is misconfigured); the
    /// next attempt is at `retry_at`.
    BackingOff {
        retry_at: DateTime<Utc>,
        failure: RefreshFailure,
    },
    /// The provider refused the grant presented as `refresh_token`; waiting for the
    /// supervisor's decision and the `needs_reauth` write.
    Escalating {
        failure: RefreshFailure,
        refresh_token: Option<SecretString>,
    },
    /// `needs_reauth` is stored: dormant until re-authorized or activated.
    Escalated,
    /// An operator disabled the connection: dormant until activated.
    Disabled,
    /// Removed: the row is being (or was) deleted; the actor stops.
    Stopping,
}

impl Phase {
    /// Whether the owner refreshes the connection in this phase.
    pub fn is_supervising(&self) -> bool {
        matches!(
            self,
            Self::Idle | Self::Refreshing | Self::AwaitingCommit { .. } | Self::BackingOff { .. }
        )
    }

    /// The dormant phase for a stored status that is not supervised.
    pub fn dormant_for(status: ConnectionStatus) -> Self {
        match status {
            ConnectionStatus::NeedsReauth => Self::Escalated,
            _ => Self::Disabled,
        }
    }

    /// A short name for logs and spans.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Refreshing => "refreshing",
            Self::AwaitingCommit { .. } => "awaiting_commit",
            Self::BackingOff { .. } => "backing_off",
            Self::Escalating { .. } => "escalating",
            Self::Escalated => "escalated",
            Self::Disabled => "disabled",
            Self::Stopping => "stopping",
        }
    }
}
