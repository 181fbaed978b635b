//! Replicas that share the work on one PostgreSQL database.
//!
//! Connections map to [`tokenvisor_core::PARTITIONS`] partitions
//! ([`tokenvisor_core::partition_of`]). Each replica heartbeats in the database; the
//! partitions are spread over the live replicas by rendezvous hashing (`assignment`),
//! and each has exactly one owner at a time, held by a lease with an epoch that grows on
//! every change of owner (the fencing token). A replica runs connection actors only for
//! the partitions it owns:
//!
//! - `membership`: the task that heartbeats, renews, hands over and claims, and the only
//!   writer of `ownership` (what this replica owns, its fences and deadlines);
//! - every ownership-dependent write (refresh commit, failure record, escalation,
//!   lifecycle write) carries the partition's epoch and is refused by the database once
//!   the epoch moved on ([`tokenvisor_store::Fence`]); a refresh token is presented only
//!   while the lease has at least half its duration left;
//! - a request for a connection another replica owns is answered from the committed
//!   row when its token is valid long enough, and otherwise forwarded to the owner
//!   (`forward`): its advertised admin URL, with the same bearer token;
//! - a registration on a non-owner is announced with LISTEN/NOTIFY, and every 30 s each
//!   replica reconciles the connections written in its partitions;
//! - a changed or deleted integration is announced the same way
//!   (`tokenvisor_integrations`), and every 30 s each replica reads the integrations again.
//!
//! Without a [`ClusterConfig`] (SQLite, or `TOKENVISOR_CLUSTER=off`) none of this runs:
//! one process owns everything, and writes carry no fence.

mod assignment;
pub mod forward;
pub(crate) mod membership;
pub(crate) mod ownership;

use crate::api::Tokenvisor;
use crate::error::TokenError;
use forward::{ForwardReply, ForwardRequest};
use serde::Serialize;
use std::time::Duration;
use tokenvisor_core::SecretString;

/// Notifications of connections registered on a replica that does not own them
/// (payload: the connection id).
pub(crate) const CONNECTIONS_CHANNEL: &str = "tokenvisor_connections";
/// Notifications of integrations changed or deleted on a replica (payload: the
/// integration id): every replica reads it again, so the next refresh of each of its
/// connections uses the new version.
pub(crate) const INTEGRATIONS_CHANNEL: &str = "tokenvisor_integrations";
/// Notifications of replicas joining, leaving or releasing partitions.
pub(crate) const REPLICAS_CHANNEL: &str = "tokenvisor_replicas";

/// How this replica takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This replica's id: unique among the replicas, and the same across restarts of one
    /// replica (then it takes its partitions back at once instead of waiting out its old
    /// lease).
    pub replica_id: String,
    /// Where the other replicas reach this one's admin API (base URL, including any base
    /// path the admin router is mounted under): requests for connections it owns are
    /// forwarded there. `None`: this replica receives no forwarded requests (the others
    /// answer from the database or wait for a new owner).
    pub advertise_url: Option<String>,
    /// A partition's lease: a replica that stops heartbeating loses its partitions this
    /// long after its last renewal. Default 10 s.
    pub lease: Duration,
    /// How often the replica heartbeats and renews. Default: a fifth of the lease.
    pub heartbeat: Duration,
    /// The bearer token forwarded requests carry (the admin API's token).
    pub forward_bearer: Option<SecretString>,
}

impl ClusterConfig {
    /// A replica named `replica_id` with the default lease (10 s, heartbeat every 2 s).
    pub fn new(replica_id: impl Into<String>) -> Self {
        Self {
            replica_id: replica_id.into(),
            advertise_url: None,
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            forward_bearer: None,
        }
    }

    /// The same with this lease, heartbeating every fifth of it.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.heartbeat = lease / 5;
        self
    }
}

/// The cluster as one replica sees it (`GET /v1/cluster`).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// This replica.
    pub replica_id: String,
    /// Whether it serves its whole share of the partitions.
    pub ready: bool,
    /// Partitions it serves.
    pub owned_partitions: usize,
    /// Every recorded replica, by id.
    pub replicas: Vec<ReplicaStatus>,
    /// Partitions whose lease ran out or that nobody holds.
    pub unowned_partitions: usize,
}

/// One replica in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    /// Its id.
    pub replica_id: String,
    /// Where it is reached.
    pub advertise_url: Option<String>,
    /// Milliseconds since its last heartbeat (database clock).
    pub heartbeat_age_ms: u64,
    /// Whether its heartbeat is within the lease.
    pub alive: bool,
    /// Partitions it holds with a live lease.
    pub partitions: usize,
}

/// The cluster operations of a [`Tokenvisor`]: `tokenvisor.cluster()`.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    tokenvisor: &'a Tokenvisor,
}

impl<'a> Cluster<'a> {
    pub(crate) fn new(tokenvisor: &'a Tokenvisor) -> Self {
        Self { tokenvisor }
    }

    /// Whether this replica shares the work with others (a [`ClusterConfig`] is set).
    pub fn is_enabled(self) -> bool {
        self.tokenvisor.shared().ownership.is_some()
    }

    /// Whether this replica serves its share of the partitions (always, alone).
    pub fn is_ready(self) -> bool {
        self.tokenvisor
            .shared()
            .ownership
            .as_ref()
            .is_none_or(|ownership| ownership.is_ready())
    }

    /// The replicas and their partitions, read from the database now; `None` when
    /// clustering is off.
    pub async fn status(self) -> Result<Option<ClusterStatus>, TokenError> {
        let shared = self.tokenvisor.shared();
        let (Some(ownership), Some(store), Some(config)) = (
            shared.ownership.as_ref(),
            shared.store.partitions(),
            shared.config.cluster.as_ref(),
        ) else {
            return Ok(None);
        };
        let replicas = store.replicas().await?;
        let partitions = store.partitions().await?;
        let live_owned = |id: &str| {
            partitions
                .iter()
                .filter(|p| p.owner.as_deref() == Some(id) && !p.lease_remaining.is_zero())
                .count()
        };
        let owned_total: usize = partitions
            .iter()
            .filter(|p| p.owner.is_some() && !p.lease_remaining.is_zero())
            .count();
        Ok(Some(ClusterStatus {
            replica_id: ownership.replica_id.clone(),
            ready: ownership.is_ready(),
            owned_partitions: ownership.served_count(),
            unowned_partitions: usize::from(tokenvisor_core::PARTITIONS) - owned_total,
            replicas: replicas
                .into_iter()
                .map(|replica| ReplicaStatus {
                    partitions: live_owned(&replica.replica_id),
                    alive: replica.heartbeat_age < config.lease,
                    heartbeat_age_ms: replica.heartbeat_age.as_millis() as u64,
                    advertise_url: replica.advertise_url,
                    replica_id: replica.replica_id,
                })
                .collect(),
        }))
    }

    /// Executes a request another replica forwarded to this one (the admin API's
    /// forwarding route calls this). Answers [`ForwardReply::NotOwner`] unless this
    /// replica serves the connection: requests are never forwarded twice.
    pub async fn serve_forwarded(self, request: ForwardRequest) -> ForwardReply {
        let tokenvisor = self.tokenvisor;
        let id = request.connection_id;
        if !tokenvisor.shared().serves(id) {
            return ForwardReply::NotOwner;
        }
        let result = tokenvisor.execute_locally(id, request.op).await;
        match result {
            Ok(()) => ForwardReply::Done,
            Err(_) if !tokenvisor.shared().serves(id) => ForwardReply::NotOwner,
            Err(error) => ForwardReply::Failed((&error).into()),
        }
    }
}
