//! The membership task: the one writer of this replica's [`Ownership`]. Every heartbeat
//! (a fifth of the lease) it records the replica as alive, renews the leases it holds
//! (dropping at once the partitions it lost), reads which replicas are alive and who
//! owns what, hands over the partitions another replica should own (after their
//! in-flight refreshes commit) and claims the free ones it should own. It also listens
//! for notifications (a registration on another replica, a replica joining or leaving)
//! and reconciles periodically, as a safety net for lost notifications.

use super::assignment::share_of;
use super::ownership::{Directory, Held, Ownership};
use super::{CONNECTIONS_CHANNEL, INTEGRATIONS_CHANNEL, REPLICAS_CHANNEL};
use crate::connection::ConnectionMsg;
use crate::shared::SharedRef;
use crate::supervisor::SupervisorMsg;
use futures::StreamExt as _;
use ractor::ActorRef;
use ractor::rpc::CallResult;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{ConnectionId, Partition, partition_of};
use tokenvisor_store::PartitionStore;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// How often the supervised connections changed in owned partitions are compared with
/// the running owners (lost notifications).
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// The membership task's handles.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    pub stop: CancellationToken,
    pub wake: Arc<Notify>,
    /// The task (joined at shutdown).
    pub task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// One replica's view, built by a tick.
struct Tick<'a> {
    shared: &'a SharedRef,
    store: &'a dyn PartitionStore,
    ownership: &'a Ownership,
    supervisor: &'a ActorRef<SupervisorMsg>,
}

/// Joins: records the first heartbeat and claims this replica's share of the free
/// partitions (all of them when it is alone). Returns the partitions claimed, whose
/// connections the caller loads.
pub(crate) async fn join(shared: &SharedRef) -> Result<Vec<Partition>, tokenvisor_store::StoreError> {
    let (Some(ownership), Some(store), Some(config)) = (
        shared.ownership.as_deref(),
        shared.store.partitions(),
        shared.config.cluster.as_ref(),
    ) else {
        return Ok(Vec::new());
    };
    let started = Instant::now();
    store
        .heartbeat(&ownership.replica_id, config.advertise_url.as_deref())
        .await?;
    let live = live_replicas(&store.replicas().await?, &ownership.replica_id, config.lease);
    let share = share_of(&ownership.replica_id, &live);
    let claimed = claim(
        store,
        ownership,
        (config, in_flight_bound(shared.as_ref())),
        &share,
        started,
    )
    .await?;
    ownership.set_ready(claimed.len() == share.len());
    let _ = store.notify(REPLICAS_CHANNEL, "joined").await;
    Ok(claimed)
}

/// How long a token request of another replica may still be in flight after its lease
/// ran out: the token client's request timeout (which includes connecting), and a second.
pub(crate) fn in_flight_bound(shared: &crate::shared::Shared) -> Duration {
    shared.config.client.request_timeout + Duration::from_secs(1)
}

/// Leaves the cluster at shutdown (in-flight refreshes have committed): stops the
/// membership task, releases every partition and tells the others, which take them at
/// once instead of waiting out the leases.
pub(crate) async fn leave(shared: &SharedRef) {
    let (Some(ownership), Some(store), Some(membership)) = (
        shared.ownership.as_deref(),
        shared.store.partitions(),
        shared.membership.as_ref(),
    ) else {
        return;
    };
    membership.stop.cancel();
    let task = membership.task.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(task) = task {
        let _ = task.await;
    }
    let held = ownership.held();
    ownership.start_leaving(&held.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    if let Err(error) = store.release(&ownership.replica_id, &held).await {
        tracing::warn!(error = %error, "releasing partitions at shutdown failed; their leases run out instead");
    }
    let _ = store.leave(&ownership.replica_id).await;
    let _ = store.notify(REPLICAS_CHANNEL, "left").await;
    ownership.forget(&held.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    shared.metrics.handovers(held.len() as u64, "released");
    tracing::info!(partitions = held.len(), "left the cluster");
}

/// The ids of the replicas whose heartbeat is within `lease`, `me` included.
fn live_replicas(replicas: &[tokenvisor_store::ReplicaRecord], me: &str, lease: Duration) -> Vec<String> {
    let mut live: Vec<String> = replicas
        .iter()
        .filter(|replica| replica.heartbeat_age < lease)
        .map(|replica| replica.replica_id.clone())
        .collect();
    if !live.iter().any(|id| id == me) {
        live.push(me.to_owned());
    }
    live
}

/// Claims `wanted` (those not held), records what was taken; returns it.
async fn claim(
    store: &dyn PartitionStore,
    ownership: &Ownership,
    (config, in_flight): (&super::ClusterConfig, Duration),
    wanted: &[Partition],
    started: Instant,
) -> Result<Vec<Partition>, tokenvisor_store::StoreError> {
    let held: HashSet<Partition> = ownership.held().into_iter().map(|(p, _)| p).collect();
    let free: Vec<Partition> = wanted.iter().copied().filter(|p| !held.contains(p)).collect();
    if free.is_empty() {
        return Ok(Vec::new());
    }
    let claimed = store.claim(&ownership.replica_id, &free, config.lease).await?;
    let deadline = started + config.lease;
    let partitions: Vec<Partition> = claimed.iter().map(|c| c.partition).collect();
    let taken_over = claimed.iter().filter(|c| c.taken_from.is_some()).count();
    ownership.gain(claimed.into_iter().map(|c| {
        // Taken from a replica that did not release it: its last token request may still
        // be in flight at the provider; wait that out before presenting the refresh token.
        let quiet_until = if c.taken_from.is_some() {
            started + in_flight
        } else {
            started
        };
        (
            c.partition,
            Held {
                epoch: c.epoch,
                deadline,
                quiet_until,
            },
        )
    }));
    if !partitions.is_empty() {
        let span = tracing::info_span!(
            "partitions_claimed",
            otel.name = "tokenvisor.partitions.claim",
            replica = %ownership.replica_id,
            partitions = partitions.len() as i64,
            taken_over = taken_over as i64,
        );
        span.in_scope(|| {
            tracing::info!(
                replica = %ownership.replica_id,
                claimed = partitions.len(),
                taken_over,
                "claimed partitions"
            );
        });
    }
    Ok(partitions)
}

/// Runs the membership loop until `stop`.
pub(crate) async fn run(
    shared: SharedRef,
    supervisor: ActorRef<SupervisorMsg>,
    stop: CancellationToken,
    wake: Arc<Notify>,
) {
    let (Some(ownership), Some(store), Some(config)) = (
        shared.ownership.clone(),
        shared.store.partitions(),
        shared.config.cluster.clone(),
    ) else {
        return;
    };
    let tick = Tick {
        shared: &shared,
        store,
        ownership: &ownership,
        supervisor: &supervisor,
    };
    let listener = tokio::spawn(listen(shared.clone(), supervisor.clone(), wake.clone(), stop.clone()));
    let mut interval = tokio::time::interval(config.heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_reconcile = shared.clock.now();
    let mut next_reconcile = Instant::now() + RECONCILE_EVERY;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = interval.tick() => {}
            _ = wake.notified() => {}
        }
        tick.run(&config).await;
        if Instant::now() >= next_reconcile {
            let now = shared.clock.now();
            tick.reconcile(last_reconcile - chrono::Duration::seconds(60)).await;
            last_reconcile = now;
            next_reconcile = Instant::now() + RECONCILE_EVERY;
        }
    }
    listener.abort();
}

impl Tick<'_> {
    async fn run(&self, config: &super::ClusterConfig) {
        let started = Instant::now();
        let me = self.ownership.replica_id.as_str();
        if let Err(error) = self.store.heartbeat(me, config.advertise_url.as_deref()).await {
            tracing::warn!(error = %error, "cluster heartbeat failed");
            self.drop_expired().await;
            return;
        }
        let held = self.ownership.held();
        match self.store.renew(me, &held, config.lease).await {
            Ok(renewed) => {
                self.ownership.renewed(&renewed, started + config.lease);
                let renewed: HashSet<Partition> = renewed.into_iter().collect();
                let lost: Vec<Partition> = held.iter().map(|(p, _)| *p).filter(|p| !renewed.contains(p)).collect();
                if !lost.is_empty() {
                    tracing::warn!(
                        partitions = lost.len(),
                        "partitions lost to another replica (lease ran out)"
                    );
                    self.lose(&lost).await;
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "renewing partition leases failed");
                self.drop_expired().await;
                return;
            }
        }
        let replicas = match self.store.replicas().await {
            Ok(replicas) => replicas,
            Err(error) => {
                tracing::warn!(error = %error, "reading the live replicas failed");
                return;
            }
        };
        let live = live_replicas(&replicas, me, config.lease);
        self.read_directory(config, replicas).await;
        let share: HashSet<Partition> = share_of(me, &live).into_iter().collect();
        let leaving = self.ownership.leaving();
        let hand_over: Vec<Partition> = self
            .ownership
            .held()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| !share.contains(p) && !leaving.contains(p))
            .collect();
        if !hand_over.is_empty() {
            self.ownership.start_leaving(&hand_over);
            tokio::spawn(hand_over_task(self.shared.clone(), self.supervisor.clone(), hand_over));
        }
        let wanted: Vec<Partition> = share.iter().copied().collect();
        match claim(
            self.store,
            self.ownership,
            (config, in_flight_bound(self.shared.as_ref())),
            &wanted,
            started,
        )
        .await
        {
            Ok(claimed) if !claimed.is_empty() => {
                self.shared.metrics.handovers(claimed.len() as u64, "gained");
                self.load(claimed).await;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "claiming partitions failed"),
        }
        let held: HashSet<Partition> = self.ownership.held().into_iter().map(|(p, _)| p).collect();
        self.ownership.set_ready(share.iter().all(|p| held.contains(p)));
    }

    /// Reads who owns what, for forwarding.
    async fn read_directory(&self, config: &super::ClusterConfig, replicas: Vec<tokenvisor_store::ReplicaRecord>) {
        let Ok(partitions) = self.store.partitions().await else {
            return;
        };
        let directory = Directory {
            owners: partitions
                .into_iter()
                .filter(|record| !record.lease_remaining.is_zero())
                .filter_map(|record| record.owner.map(|owner| (record.partition, owner)))
                .collect(),
            urls: replicas
                .into_iter()
                .filter(|replica| replica.heartbeat_age < config.lease)
                .filter_map(|replica| replica.advertise_url.map(|url| (replica.replica_id, url)))
                .collect(),
        };
        self.ownership.set_directory(directory);
    }

    /// Renewals failed: partitions whose lease surely ran out are lost.
    async fn drop_expired(&self) {
        let expired = self.ownership.expired(Instant::now());
        if !expired.is_empty() {
            tracing::warn!(
                partitions = expired.len(),
                "partition leases ran out while the database was unreachable"
            );
            self.lose(&expired).await;
        }
        self.ownership.set_ready(false);
    }

    /// Stops supervising `partitions` at once (they belong to another replica now).
    async fn lose(&self, partitions: &[Partition]) {
        let span = tracing::warn_span!(
            "partitions_lost",
            otel.name = "tokenvisor.partitions.lost",
            replica = %self.ownership.replica_id,
            partitions = partitions.len() as i64,
        );
        self.lose_inner(partitions).instrument(span).await;
    }

    async fn lose_inner(&self, partitions: &[Partition]) {
        // Forgotten first: from here on nothing of them is presented or written.
        self.ownership.forget(partitions);
        let set: HashSet<Partition> = partitions.iter().copied().collect();
        // The actors stop in the supervisor's time; the heartbeat does not wait for it.
        let supervisor = self.supervisor.clone();
        tokio::spawn(async move {
            let _ = supervisor
                .call(
                    |reply| SupervisorMsg::Retire {
                        partitions: set.clone(),
                        reply,
                    },
                    Some(Duration::from_secs(60)),
                )
                .await;
        });
        self.shared.metrics.handovers(partitions.len() as u64, "lost");
    }

    /// Loads the supervised connections of newly claimed partitions into the supervisor.
    async fn load(&self, partitions: Vec<Partition>) {
        let shared = self.shared.clone();
        let supervisor = self.supervisor.clone();
        // Not inline: a large share loads for longer than a heartbeat.
        tokio::spawn(async move {
            let Some(store) = shared.store.partitions() else {
                return;
            };
            let mut stream = store.load_supervised_in(partitions).chunks(2_000);
            let mut loaded = 0usize;
            while let Some(chunk) = stream.next().await {
                let page: Vec<_> = chunk.into_iter().filter_map(Result::ok).collect();
                loaded += page.len();
                let _ = supervisor.cast(SupervisorMsg::SpawnPage(page));
            }
            tracing::info!(connections = loaded, "loaded the connections of claimed partitions");
        });
    }

    /// Starts owners for connections of served partitions written since `since` that have
    /// none (a registration whose notification was lost).
    async fn reconcile(&self, since: chrono::DateTime<chrono::Utc>) {
        let served: Vec<Partition> = self
            .ownership
            .held()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| self.ownership.serves(*p))
            .collect();
        if let Err(error) = self.shared.reload_integrations().await {
            tracing::warn!(error = %error, "reading the integrations again failed");
        }
        match self.store.supervised_changed_since(&served, since).await {
            Ok(ids) => {
                for id in ids {
                    if self.shared.registry.get(id).and_then(|slot| slot.owner()).is_none() {
                        let _ = self.supervisor.cast(SupervisorMsg::Notified(id));
                    }
                }
            }
            Err(error) => tracing::warn!(error = %error, "reconciling owned partitions failed"),
        }
    }
}

/// Hands `partitions` over: stops their owners (kept tokens are committed first), waits
/// for their in-flight refreshes to commit, then releases the leases. Traced as
/// `tokenvisor.partitions.hand_over`.
async fn hand_over_task(shared: SharedRef, supervisor: ActorRef<SupervisorMsg>, partitions: Vec<Partition>) {
    let span = tracing::info_span!(
        "partitions_handed_over",
        otel.name = "tokenvisor.partitions.hand_over",
        partitions = partitions.len() as i64,
        released = tracing::field::Empty,
    );
    hand_over(shared, supervisor, partitions, span.clone())
        .instrument(span)
        .await;
}

async fn hand_over(
    shared: SharedRef,
    supervisor: ActorRef<SupervisorMsg>,
    partitions: Vec<Partition>,
    span: tracing::Span,
) {
    let Some(store) = shared.store.partitions() else {
        return;
    };
    let Some(ownership) = shared.ownership.clone() else {
        return;
    };
    let set: HashSet<Partition> = partitions.iter().copied().collect();
    // Tokens awaiting their commit are committed by their owners first.
    let flushes = shared
        .registry
        .in_partitions(&set)
        .into_iter()
        .filter(|(_, slot)| slot.has_pending())
        .filter_map(|(_, slot)| slot.owner())
        .map(|owner| async move {
            let _ = owner.call(ConnectionMsg::Flush, Some(Duration::from_secs(10))).await;
        })
        .collect::<Vec<_>>();
    futures::future::join_all(flushes).await;
    let slots = match supervisor
        .call(
            |reply| SupervisorMsg::Retire {
                partitions: set.clone(),
                reply,
            },
            Some(shared.config.operation_timeout),
        )
        .await
    {
        Ok(CallResult::Success(slots)) => slots,
        _ => Vec::new(),
    };
    // In-flight refreshes commit under the fence (the lease is still ours and renewed).
    let wait = shared.config.operation_timeout;
    let waited = futures::future::join_all(slots.iter().map(|(_, slot)| {
        let lock = slot.refresh_lock.clone();
        async move { tokio::time::timeout(wait, lock.lock_owned()).await.is_ok() }
    }))
    .await;
    let mut keep = HashSet::new();
    for ((id, slot), committed) in slots.iter().zip(waited) {
        if !committed || slot.has_pending() {
            // Tokens not yet in the store: the partition is kept until they are (its
            // owner is gone, so the next hand-over retries).
            keep.insert(partition_of(*id));
        } else {
            shared.registry.remove(*id);
        }
    }
    let release: Vec<(Partition, i64)> = ownership
        .held()
        .into_iter()
        .filter(|(p, _)| set.contains(p) && !keep.contains(p))
        .collect();
    if let Err(error) = store.release(&ownership.replica_id, &release).await {
        tracing::warn!(error = %error, "releasing partitions failed; their leases run out instead");
    }
    let released: Vec<Partition> = release.iter().map(|(p, _)| *p).collect();
    ownership.forget(&released);
    if !keep.is_empty() {
        tracing::warn!(
            partitions = keep.len(),
            "partitions kept: tokens of their connections await their commit"
        );
        // Served again (a request starts an owner, which finds the kept tokens); the next
        // heartbeat hands them over again.
        let kept: Vec<Partition> = keep.into_iter().collect();
        ownership.stop_leaving(&kept);
    }
    shared.metrics.handovers(released.len() as u64, "released");
    span.record("released", released.len() as i64);
    tracing::info!(partitions = released.len(), "handed partitions over");
    let _ = store.notify(REPLICAS_CHANNEL, "released").await;
}

/// Listens for registrations on other replicas and for replicas joining or leaving.
async fn listen(shared: SharedRef, supervisor: ActorRef<SupervisorMsg>, wake: Arc<Notify>, stop: CancellationToken) {
    let Some(store) = shared.store.partitions() else {
        return;
    };
    let mut attempt = 0u32;
    while !stop.is_cancelled() {
        let mut stream = match store
            .listen(&[CONNECTIONS_CHANNEL, REPLICAS_CHANNEL, INTEGRATIONS_CHANNEL])
            .await
        {
            Ok(stream) => stream,
            Err(error) => {
                attempt += 1;
                tracing::warn!(error = %error, "listening for cluster notifications failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(25)))).await;
                continue;
            }
        };
        attempt = 0;
        // Whatever was sent while not listening: look again.
        wake.notify_one();
        reload_integrations(&shared);
        while let Some(received) = tokio::select! {
            _ = stop.cancelled() => None,
            next = stream.next() => next,
        } {
            match received {
                Ok(notification) if notification.channel == CONNECTIONS_CHANNEL => {
                    if let Ok(id) = notification.payload.parse::<ConnectionId>() {
                        let _ = supervisor.cast(SupervisorMsg::Notified(id));
                    }
                }
                Ok(notification) if notification.channel == INTEGRATIONS_CHANNEL => {
                    if let Ok(id) = notification.payload.parse::<tokenvisor_core::IntegrationId>() {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            if let Err(error) = shared.reload_integration(id).await {
                                tracing::warn!(integration.id = %id, error = %error, "reading a changed integration failed; the reconcile reads it");
                            }
                        });
                    }
                }
                Ok(_) => wake.notify_one(),
                Err(error) => {
                    tracing::warn!(error = %error, "cluster notifications interrupted");
                    break;
                }
            }
        }
    }
}

/// Reads every integration again in the background (changes announced while this
/// replica was not listening).
fn reload_integrations(shared: &SharedRef) {
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(error) = shared.reload_integrations().await {
            tracing::warn!(error = %error, "reading the integrations again failed");
        }
    });
}
