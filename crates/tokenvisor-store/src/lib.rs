//! Where a token is stored.
//!
//! - [`Store`]: what the supervisor needs from storage; every token write is a
//!   compare-and-swap on the connection's `version`.
//! - [`memory::MemoryStore`]: an in-process store (paused-time tests, benchmarks).
//! - `sql::SqlStore`: sea-orm over SQLite (the embedded default) or PostgreSQL, with
//!   tokens and client secrets encrypted at rest (see `crypto`).
//! - [`migrate`]: tokenvisor's migrations, run explicitly on a connection (for an
//!   embedder that opens the store with [`SqlStore::from_connection_unmigrated`]).

pub mod crypto;
mod entity;
pub mod keys;
pub mod memory;
pub mod partitions;
pub mod sql;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, Integration, IntegrationId, PendingAuthorization, RefreshAttempt,
};

pub use crypto::Keyring;
pub use memory::MemoryStore;
pub use partitions::{Claimed, Fence, Notification, PartitionRecord, PartitionStore, ReplicaRecord};
pub use sql::SqlStore;
pub use tokenvisor_migration::{MIGRATION_TABLE, Migrator, TABLE_PREFIX};

/// Brings `db` to tokenvisor's current schema: the pending migrations of
/// [`Migrator`], after upgrading a database of the old unprefixed layout in place.
///
/// Guarantees:
/// - everything it creates is named `tokenvisor_*` ([`TABLE_PREFIX`]) and its migrations
///   are bookkept in `tokenvisor_migrations` ([`MIGRATION_TABLE`]), so a host
///   application's own sea-orm-migration migrator (default table `seaql_migrations`) and
///   this one run in either order without seeing each other's versions;
/// - the host's tables and rows are never read or written, except that the upgrade of an
///   old-layout database moves tokenvisor's own versions out of `seaql_migrations` (and
///   drops that table if nothing else is left in it);
/// - a table of the same name that is not ours fails it with an error naming the table;
/// - all or nothing: one transaction, so a failure leaves the database as it was; and
///   callers racing on one database (replicas starting together) wait for each other
///   (PostgreSQL advisory lock, SQLite write lock);
/// - running it again on an up-to-date database changes nothing. Needs no key, touches no
///   data of ours.
///
/// Only SQLite and PostgreSQL are supported.
pub async fn migrate(db: &sea_orm::DatabaseConnection) -> Result<(), StoreError> {
    sql::run_migrations(db).await
}

/// How many refresh attempts the history keeps per connection (the SQL store trims it
/// every 16 refreshes, so up to 15 more can be stored; listings never return more).
pub const ATTEMPT_HISTORY_LIMIT: u64 = 50;

/// How many refresh attempts with one outcome started in one minute
/// ([`Store::attempts_per_minute`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MinuteCount {
    /// The start of the minute.
    pub minute: chrono::DateTime<chrono::Utc>,
    /// The attempts' outcome.
    pub outcome: tokenvisor_core::RefreshOutcomeKind,
    /// How many.
    pub count: u64,
}

/// What the dashboard's overview counts of all connections
/// ([`Store::connection_summary`]), counted by the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionSummary {
    /// How many connections each integration has in each status (only the pairs with
    /// at least one), ordered by integration id, then status.
    pub by_status: Vec<StatusCount>,
    /// Active connections (`is_active`) whose access token expires after `now` and no
    /// later than `now + horizon`.
    pub expiring: u64,
    /// Of [`Self::expiring`], those with a refresh planned before their expiry.
    pub expiring_planned: u64,
    /// `degraded` connections by the code of their last error (`None`: no error
    /// recorded), ordered by code.
    pub degraded_by_error: Vec<(Option<String>, u64)>,
}

/// How many connections of one integration are in one status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusCount {
    /// The integration.
    pub integration_id: tokenvisor_core::IntegrationId,
    /// The status.
    pub status: tokenvisor_core::ConnectionStatus,
    /// How many.
    pub count: u64,
}

/// Storage errors. Messages never contain a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or failed.
    #[error("database error: {0}")]
    Database(String),
    /// A unique constraint was hit (duplicate name or id).
    #[error("already exists: {0}")]
    Conflict(String),
    /// A stored ciphertext could not be decrypted with the configured keys.
    #[error("decryption failed for {context}: {reason}")]
    Decryption {
        /// Which value (table, row, column).
        context: String,
        /// Why (unknown key id, wrong key, corrupt data).
        reason: String,
    },
    /// The encryption keys are missing or do not match the stored data.
    #[error("encryption key error: {0}")]
    Key(String),
    /// A stored row could not be understood.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (the database was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Database(_))
    }
}

/// The result of a compare-and-swap write.
#[derive(Debug, Clone)]
pub enum CasOutcome {
    /// The write was committed; the row now has this version.
    Committed {
        /// New version.
        version: i64,
    },
    /// Someone else wrote first: this is the row as stored now (`None` if it was deleted).
    Conflict {
        /// Current row.
        current: Option<Box<Connection>>,
    },
    /// Nothing was written: the write was fenced ([`Fence`]) and the writer no longer
    /// owns the connection's partition at that epoch (the row was not changed by anyone
    /// else either).
    Fenced,
}

/// The answer to a request for a connection's refresh lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The caller holds the lease until the deadline it asked for.
    Acquired,
    /// Another owner holds it for `remaining` more.
    Held {
        /// The holder.
        owner: String,
        /// How long the holder's lease still runs.
        remaining: std::time::Duration,
    },
    /// The connection does not exist (any more).
    Missing,
}

/// What the supervisor needs from storage.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Inserts an integration. A duplicate name is [`StoreError::Conflict`].
    async fn insert_integration(&self, integration: &Integration) -> Result<(), StoreError>;
    /// One integration by id.
    async fn get_integration(&self, id: IntegrationId) -> Result<Option<Integration>, StoreError>;
    /// One integration by name.
    async fn find_integration_by_name(&self, name: &str) -> Result<Option<Integration>, StoreError>;
    /// All integrations, by name.
    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError>;
    /// Writes every field of an existing integration but its id and `created_at`.
    /// Whether it existed; a name another integration has is [`StoreError::Conflict`].
    async fn update_integration(&self, integration: &Integration) -> Result<bool, StoreError>;
    /// Deletes an integration and its authorizations in progress. Whether it existed; one
    /// that connections still use is [`StoreError::Conflict`] (nothing is deleted).
    async fn delete_integration(&self, id: IntegrationId) -> Result<bool, StoreError>;

    /// Inserts a connection (its `version` as given, normally 1). A duplicate id, or a
    /// second connection of one tenant to one integration under one `connection_key`,
    /// is [`StoreError::Conflict`].
    async fn insert_connection(&self, connection: &Connection) -> Result<(), StoreError>;
    /// One connection by id.
    async fn get_connection(&self, id: ConnectionId) -> Result<Option<Connection>, StoreError>;
    /// Connections matching the filter, ordered by id.
    /// The connections matching the filter, in its order after its cursor, at most `limit`.
    async fn list_connections(&self, filter: &ConnectionFilter) -> Result<Vec<Connection>, StoreError>;
    /// How many connections match the filter (`limit`, the cursor and the order ignored).
    async fn count_connections(&self, filter: &ConnectionFilter) -> Result<u64, StoreError>;
    /// The overview's counts ([`ConnectionSummary`]) at `now`, tokens expiring within
    /// `horizon`: a few grouped queries, whatever the number of connections or
    /// integrations.
    async fn connection_summary(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        horizon: chrono::Duration,
    ) -> Result<ConnectionSummary, StoreError>;
    /// Every connection that should have a running actor (`active` or `degraded`,
    /// `is_active`), decrypted as the stream is polled (one query, no order): start-up
    /// spawns the first actors while the rest still arrive.
    fn load_supervised(&self) -> BoxStream<'_, Result<Connection, StoreError>>;
    /// Writes the whole row if its stored version is still `expected_version`; the
    /// stored version becomes `expected_version + 1` (the `version` field of
    /// `connection` is ignored). Committed before it returns.
    async fn compare_and_swap(&self, connection: &Connection, expected_version: i64) -> Result<CasOutcome, StoreError>;
    /// Takes the cluster-wide lease to refresh `connection` for `owner`, for `lease` from
    /// now: granted when nobody holds it, when the holder's lease ran out, or when `owner`
    /// holds it already (then extended). One atomic statement, so of replicas racing for
    /// it exactly one wins; "now" is the database's clock, so replicas' clocks may differ.
    async fn acquire_refresh_lease(
        &self,
        connection: ConnectionId,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<LeaseOutcome, StoreError>;
    /// Gives the lease back if `owner` still holds it.
    async fn release_refresh_lease(&self, connection: ConnectionId, owner: &str) -> Result<(), StoreError>;
    /// A compare-and-swap that also appends `attempt` to the history when it commits:
    /// one transaction (one commit) where the store supports it.
    async fn commit_refresh(
        &self,
        connection: &Connection,
        expected_version: i64,
        attempt: &RefreshAttempt,
    ) -> Result<CasOutcome, StoreError> {
        let outcome = self.compare_and_swap(connection, expected_version).await?;
        if matches!(outcome, CasOutcome::Committed { .. })
            && let Err(error) = self.record_attempt(attempt).await
        {
            tracing::debug!(connection_id = %connection.id, error = %error, "failed to record refresh attempt");
        }
        Ok(outcome)
    }
    /// [`Store::compare_and_swap`], refused ([`CasOutcome::Fenced`]) unless the writer
    /// still owns the connection's partition at `fence`'s epoch. Stores without
    /// partitions ([`Store::partitions`] is `None`) ignore the fence.
    async fn compare_and_swap_fenced(
        &self,
        connection: &Connection,
        expected_version: i64,
        fence: Fence,
    ) -> Result<CasOutcome, StoreError> {
        let _ = fence;
        self.compare_and_swap(connection, expected_version).await
    }
    /// [`Store::commit_refresh`], fenced like [`Store::compare_and_swap_fenced`].
    async fn commit_refresh_fenced(
        &self,
        connection: &Connection,
        expected_version: i64,
        attempt: &RefreshAttempt,
        fence: Fence,
    ) -> Result<CasOutcome, StoreError> {
        let _ = fence;
        self.commit_refresh(connection, expected_version, attempt).await
    }
    /// Heartbeats, partition leases and notifications, when this store can share the
    /// work between replicas (PostgreSQL); `None` otherwise.
    fn partitions(&self) -> Option<&dyn PartitionStore> {
        None
    }
    /// The webhook endpoints, outbox and dead letters in this store's database
    /// (SQLite, PostgreSQL); `None` when the store keeps none (the in-memory store).
    fn webhooks(&self) -> Option<sql::WebhookOutbox> {
        None
    }
    /// The API keys and the audit trail in this store's database (SQLite, PostgreSQL);
    /// `None` when the store keeps none (the in-memory store: only the configured admin
    /// token authenticates, nothing is audited).
    fn access(&self) -> Option<sql::AccessStore> {
        None
    }
    /// Key rotation over this store's database (SQLite, PostgreSQL); `None` when the
    /// store encrypts nothing (the in-memory store).
    fn key_rotation(&self) -> Option<sql::KeyRotation> {
        None
    }
    /// Deletes a connection and its history. Whether it existed.
    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError>;

    /// Appends to a connection's refresh history, keeping the newest
    /// [`ATTEMPT_HISTORY_LIMIT`] entries.
    async fn record_attempt(&self, attempt: &RefreshAttempt) -> Result<(), StoreError>;
    /// The newest `limit` attempts, newest first.
    async fn list_attempts(&self, id: ConnectionId, limit: u64) -> Result<Vec<RefreshAttempt>, StoreError>;
    /// How many refresh attempts of all connections started in each minute since `since`,
    /// by outcome, oldest minute first (counted by the database, nothing loaded).
    async fn attempts_per_minute(&self, since: chrono::DateTime<chrono::Utc>) -> Result<Vec<MinuteCount>, StoreError>;

    /// Records an authorization in progress (and forgets expired ones).
    async fn insert_authorization(&self, authorization: &PendingAuthorization) -> Result<(), StoreError>;
    /// Removes and returns the authorization with this state hash: a state is usable once,
    /// even when two callbacks race.
    async fn take_authorization(&self, state_hash: &str) -> Result<Option<PendingAuthorization>, StoreError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
