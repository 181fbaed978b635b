//! What this replica owns, as the membership task last learned it: the one place the
//! rest of the process asks "may I supervise, present a refresh token, write?" for a
//! partition. Only the membership task changes it.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokenvisor_core::Partition;
use tokenvisor_store::Fence;
use tokio::sync::watch;
use tokio::time::Instant;

/// A partition this replica holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    /// The epoch it was claimed under (the fencing token of its writes).
    pub epoch: i64,
    /// When the lease surely runs out, on this process's monotonic clock: the start of
    /// the last renewal that succeeded plus the lease (the database's deadline is later).
    pub deadline: Instant,
    /// No refresh token of it is presented before this: it was taken over from a
    /// replica that did not release it, whose last token request may still be in flight.
    pub quiet_until: Instant,
}

/// Where the other replicas' partitions are, for forwarding.
#[derive(Debug, Default, Clone)]
pub(crate) struct Directory {
    /// Owner of each partition (live leases only).
    pub owners: HashMap<Partition, String>,
    /// Advertised URL of each replica.
    pub urls: HashMap<String, String>,
}

/// The partition was lost (or handed over): nothing of it may be presented or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lost;

#[derive(Debug, Default)]
struct State {
    held: HashMap<Partition, Held>,
    /// Held partitions being handed over: still fenced and renewed, no longer served.
    leaving: HashSet<Partition>,
}

/// This replica's partitions (see the module documentation).
#[derive(Debug)]
pub(crate) struct Ownership {
    pub replica_id: String,
    /// Before presenting a refresh token, the lease must still run this long.
    margin: Duration,
    state: RwLock<State>,
    directory: RwLock<Directory>,
    ready: AtomicBool,
    changes: watch::Sender<u64>,
}

impl Ownership {
    pub(crate) fn new(replica_id: String, lease: Duration) -> Self {
        Self {
            replica_id,
            margin: lease / 2,
            state: RwLock::default(),
            directory: RwLock::default(),
            ready: AtomicBool::new(false),
            changes: watch::Sender::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether this replica supervises `partition` (holds it and is not handing it over).
    pub(crate) fn serves(&self, partition: Partition) -> bool {
        let state = self.read();
        state.held.contains_key(&partition) && !state.leaving.contains(&partition)
    }

    /// The fence of writes to `partition`'s connections, while it is held.
    pub(crate) fn fence(&self, partition: Partition) -> Option<Fence> {
        self.read().held.get(&partition).map(|held| Fence {
            partition,
            epoch: held.epoch,
        })
    }

    /// Waits until a refresh token of `partition` may be presented: held, out of its
    /// quiet period, and with at least half a lease left (renewals happen every fifth
    /// of it, so normally at once). `Err(Lost)` once the partition is lost or handed
    /// over, or after `limit`.
    pub(crate) async fn presentable(&self, partition: Partition, limit: Duration) -> Result<Fence, Lost> {
        let give_up = Instant::now() + limit;
        let mut changes = self.changes.subscribe();
        loop {
            let now = Instant::now();
            let wake = {
                let state = self.read();
                let Some(held) = state.held.get(&partition) else {
                    return Err(Lost);
                };
                if state.leaving.contains(&partition) {
                    return Err(Lost);
                }
                if now >= held.quiet_until && held.deadline.saturating_duration_since(now) >= self.margin {
                    return Ok(Fence {
                        partition,
                        epoch: held.epoch,
                    });
                }
                held.quiet_until.max(now + Duration::from_millis(100)).min(give_up)
            };
            if now >= give_up {
                return Err(Lost);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Every held partition with its epoch.
    pub(crate) fn held(&self) -> Vec<(Partition, i64)> {
        let mut held: Vec<_> = self.read().held.iter().map(|(p, h)| (*p, h.epoch)).collect();
        held.sort_unstable();
        held
    }

    /// How many partitions this replica serves.
    pub(crate) fn served_count(&self) -> usize {
        let state = self.read();
        state.held.len() - state.leaving.len()
    }

    /// Partitions being handed over.
    pub(crate) fn leaving(&self) -> HashSet<Partition> {
        self.read().leaving.clone()
    }

    /// Records newly claimed partitions.
    pub(crate) fn gain(&self, claimed: impl IntoIterator<Item = (Partition, Held)>) {
        let mut state = self.write();
        for (partition, held) in claimed {
            state.leaving.remove(&partition);
            state.held.insert(partition, held);
        }
        drop(state);
        self.changed();
    }

    /// Extends the local deadline of renewed partitions.
    pub(crate) fn renewed(&self, partitions: &[Partition], deadline: Instant) {
        let mut state = self.write();
        for partition in partitions {
            if let Some(held) = state.held.get_mut(partition) {
                held.deadline = deadline;
            }
        }
        drop(state);
        self.changed();
    }

    /// Marks partitions as being handed over (no longer served).
    pub(crate) fn start_leaving(&self, partitions: &[Partition]) {
        let mut state = self.write();
        for partition in partitions {
            if state.held.contains_key(partition) {
                state.leaving.insert(*partition);
            }
        }
        drop(state);
        self.changed();
    }

    /// Serves partitions again whose hand-over could not finish.
    pub(crate) fn stop_leaving(&self, partitions: &[Partition]) {
        let mut state = self.write();
        for partition in partitions {
            state.leaving.remove(partition);
        }
        drop(state);
        self.changed();
    }

    /// Forgets partitions (lost, or released after a hand-over).
    pub(crate) fn forget(&self, partitions: &[Partition]) {
        let mut state = self.write();
        for partition in partitions {
            state.held.remove(partition);
            state.leaving.remove(partition);
        }
        drop(state);
        self.changed();
    }

    /// Held partitions whose local deadline passed (renewals failed for a whole lease).
    pub(crate) fn expired(&self, now: Instant) -> Vec<Partition> {
        self.read()
            .held
            .iter()
            .filter(|(_, held)| held.deadline <= now)
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// Whether this replica serves the share it should (readiness).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The advertised URL of `partition`'s owner, if another live replica owns it.
    pub(crate) fn owner_url(&self, partition: Partition) -> Option<(String, String)> {
        let directory = self.directory.read().unwrap_or_else(|p| p.into_inner());
        let owner = directory.owners.get(&partition)?;
        if *owner == self.replica_id {
            return None;
        }
        directory.urls.get(owner).map(|url| (owner.clone(), url.clone()))
    }

    pub(crate) fn set_directory(&self, directory: Directory) {
        *self.directory.write().unwrap_or_else(|p| p.into_inner()) = directory;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    fn held(epoch: i64, deadline_in: Duration, quiet_for: Duration) -> Held {
        let now = Instant::now();
        Held {
            epoch,
            deadline: now + deadline_in,
            quiet_until: now + quiet_for,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_token_is_presented_only_with_half_a_lease_ahead_and_after_the_quiet_period() {
        let ownership = Ownership::new("r1".into(), LEASE);
        // Not held: never.
        assert_eq!(ownership.presentable(7, LEASE).await, Err(Lost));

        // Held with a fresh lease: at once, with its epoch.
        ownership.gain([(7, held(3, LEASE, Duration::ZERO))]);
        assert_eq!(
            ownership.presentable(7, LEASE).await,
            Ok(Fence { partition: 7, epoch: 3 })
        );

        // Renewals stalled: under half a lease left, it waits, and gives up when the lease
        // is not renewed (a replica frozen or cut off from the database).
        ownership.renewed(&[7], Instant::now() + LEASE / 2 - Duration::from_millis(1));
        let started = Instant::now();
        assert_eq!(ownership.presentable(7, LEASE).await, Err(Lost));
        assert!(started.elapsed() >= LEASE, "gave up after {:?}", started.elapsed());

        // ... but goes ahead as soon as a renewal lands.
        let waiting = {
            let ownership = std::sync::Arc::new(ownership);
            let waiter = ownership.clone();
            let task = tokio::spawn(async move { waiter.presentable(7, LEASE).await });
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(!task.is_finished());
            ownership.renewed(&[7], Instant::now() + LEASE);
            (task.await.expect("the waiter"), ownership)
        };
        assert_eq!(waiting.0, Ok(Fence { partition: 7, epoch: 3 }));
        let ownership = waiting.1;

        // Lost while waiting: refused at once.
        ownership.renewed(&[7], Instant::now());
        let lost = {
            let ownership = std::sync::Arc::new(ownership);
            let waiter = ownership.clone();
            let task = tokio::spawn(async move { waiter.presentable(7, LEASE * 10).await });
            tokio::time::sleep(Duration::from_millis(300)).await;
            ownership.forget(&[7]);
            let started = Instant::now();
            let result = task.await.expect("the waiter");
            assert!(started.elapsed() < Duration::from_millis(200));
            result
        };
        assert_eq!(lost, Err(Lost));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_taken_over_waits_out_its_quiet_period_and_one_being_handed_over_is_refused() {
        let ownership = Ownership::new("r1".into(), LEASE);
        ownership.gain([(1, held(5, LEASE * 100, Duration::from_secs(21)))]);
        let started = Instant::now();
        // Renewed along the way, as the membership task does.
        let renewer = async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                ownership.renewed(&[1], Instant::now() + LEASE);
            }
        };
        let (result, ()) = tokio::join!(ownership.presentable(1, Duration::from_secs(60)), renewer);
        assert_eq!(result, Ok(Fence { partition: 1, epoch: 5 }));
        assert!(
            started.elapsed() >= Duration::from_secs(21),
            "after {:?}",
            started.elapsed()
        );
        assert!(ownership.serves(1));

        ownership.start_leaving(&[1]);
        assert!(!ownership.serves(1));
        assert_eq!(
            ownership.fence(1),
            Some(Fence { partition: 1, epoch: 5 }),
            "its commits stay fenced"
        );
        assert_eq!(ownership.presentable(1, LEASE).await, Err(Lost));
    }
}
