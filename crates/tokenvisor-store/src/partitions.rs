//! What replicas that share one database need from it: heartbeats, partition leases with
//! epochs (fencing tokens), the connections of a set of partitions, and change
//! notifications. Implemented by [`crate::SqlStore`] on PostgreSQL, where "now" is the
//! database's clock, so replicas' clocks may differ.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use std::time::Duration;
use tokenvisor_core::{Connection, ConnectionId, Partition};

/// A write that depends on owning the connection's partition: the database refuses it
/// (answering [`crate::CasOutcome::Fenced`]) unless `epoch` is still the partition's
/// epoch and its lease has not run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The connection's partition.
    pub partition: Partition,
    /// The epoch under which the writer owns it.
    pub epoch: i64,
}

/// A replica as the database sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// The replica's id.
    pub replica_id: String,
    /// Where other replicas reach its admin API (forwarding), if it said.
    pub advertise_url: Option<String>,
    /// When it joined (milliseconds since the Unix epoch, database clock).
    pub started_at_ms: i64,
    /// How long ago its last heartbeat was (database clock).
    pub heartbeat_age: Duration,
}

/// A partition's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRecord {
    /// The partition.
    pub partition: Partition,
    /// Its owner (`None`: released, nobody holds it).
    pub owner: Option<String>,
    /// Grows on every change of owner.
    pub epoch: i64,
    /// How long the lease still runs (`ZERO`: ran out).
    pub lease_remaining: Duration,
}

/// A partition taken by [`PartitionStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The partition.
    pub partition: Partition,
    /// Its new epoch.
    pub epoch: i64,
    /// Who held it before, when it was not released (its lease ran out, or it was held
    /// by a previous run of the claimer): that owner's last token request may still be
    /// in flight.
    pub taken_from: Option<String>,
}

/// A notification received on a channel ([`PartitionStore::listen`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The channel.
    pub channel: String,
    /// The payload.
    pub payload: String,
}

/// Heartbeats, partition leases and notifications (see the module documentation).
#[async_trait]
pub trait PartitionStore: Send + Sync + std::fmt::Debug {
    /// Records that `replica_id` is alive now, and where it is reached.
    async fn heartbeat(&self, replica_id: &str, advertise_url: Option<&str>) -> Result<(), StoreError>;
    /// Forgets `replica_id` (it leaves cleanly).
    async fn leave(&self, replica_id: &str) -> Result<(), StoreError>;
    /// Every recorded replica, by id.
    async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError>;
    /// Every partition that was ever claimed, by number.
    async fn partitions(&self) -> Result<Vec<PartitionRecord>, StoreError>;
    /// Takes each of `partitions` that nobody holds (released, lease run out, or held by
    /// a previous run of `replica_id`) for `lease` from now, with a new epoch. One atomic
    /// statement: of replicas racing for a partition exactly one gets it. Returns what
    /// was taken.
    async fn claim(
        &self,
        replica_id: &str,
        partitions: &[Partition],
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// Extends the leases of `held` (partition, epoch) that `replica_id` still holds at
    /// that epoch, even if they ran out meanwhile (nobody took them); returns the
    /// partitions extended: the others were lost.
    async fn renew(
        &self,
        replica_id: &str,
        held: &[(Partition, i64)],
        lease: Duration,
    ) -> Result<Vec<Partition>, StoreError>;
    /// Gives `held` back (those `replica_id` still holds at that epoch).
    async fn release(&self, replica_id: &str, held: &[(Partition, i64)]) -> Result<(), StoreError>;
    /// The supervised connections (see [`crate::Store::load_supervised`]) of `partitions`.
    fn load_supervised_in(&self, partitions: Vec<Partition>) -> BoxStream<'_, Result<Connection, StoreError>>;
    /// The supervised connections of `partitions` written at or after `since` (their
    /// `updated_at`): the periodic reconcile's safety net for lost notifications.
    async fn supervised_changed_since(
        &self,
        partitions: &[Partition],
        since: DateTime<Utc>,
    ) -> Result<Vec<ConnectionId>, StoreError>;
    /// Sends `payload` on `channel` to every listener (at most 8,000 bytes).
    async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError>;
    /// Listens on `channels` on a dedicated database connection. Notifications sent
    /// while it is reconnecting are lost (callers reconcile periodically).
    async fn listen(
        &self,
        channels: &[&str],
    ) -> Result<BoxStream<'static, Result<Notification, StoreError>>, StoreError>;
}
