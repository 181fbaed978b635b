//! Typed events about connections, published in process. They carry ids and codes,
//! never a secret.

use crate::model::{ConnectionId, IntegrationId, TenantId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Something that happened to a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When.
    pub at: DateTime<Utc>,
    /// The connection.
    pub connection_id: ConnectionId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Its integration.
    pub integration_id: IntegrationId,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// New tokens were committed.
    Refreshed {
        /// New expiry.
        expires_at: DateTime<Utc>,
    },
    /// A refresh failed transiently; it will be retried.
    RefreshFailed {
        /// Error code.
        code: String,
        /// Message.
        message: String,
        /// Failures in a row.
        consecutive_failures: u32,
        /// When the retry is planned.
        retry_at: DateTime<Utc>,
    },
    /// The connection can no longer be refreshed: the tenant must re-authorize.
    NeedsReauthorization {
        /// Error code.
        code: String,
        /// Message.
        message: String,
        /// Escalations so far, this one included.
        refresh_failures: i64,
    },
    /// A refresh succeeded after transient failures.
    Recovered {
        /// Failures before recovery.
        after_failures: u32,
    },
    /// An operator disabled the connection.
    Deactivated,
    /// An operator enabled the connection again.
    Activated,
    /// The tenant re-authorized; the connection is active again.
    Reauthorized,
    /// A connection was registered.
    Connected,
    /// A connection was removed.
    Removed,
}

impl EventKind {
    /// The event type name (`refreshed`, `needs_reauthorization`...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Refreshed { .. } => "refreshed",
            Self::RefreshFailed { .. } => "refresh_failed",
            Self::NeedsReauthorization { .. } => "needs_reauthorization",
            Self::Recovered { .. } => "recovered",
            Self::Deactivated => "deactivated",
            Self::Activated => "activated",
            Self::Reauthorized => "reauthorized",
            Self::Connected => "connected",
            Self::Removed => "removed",
        }
    }
}

/// The in-process event stream. Cloning shares the stream. A subscriber that falls
/// more than the capacity behind misses the oldest events (it is told how many).
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
}

impl EventBus {
    /// A bus keeping up to `capacity` events per slow subscriber.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender }
    }

    /// Publishes an event to every current subscriber.
    pub fn publish(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.sender.send(event);
    }

    /// A new subscription, receiving events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(4096)
    }
}
