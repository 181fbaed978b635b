//! Which live replica should own each partition: rendezvous (highest random weight)
//! hashing, so every replica computes the same answer from the same list of live
//! replicas, the partitions spread evenly, and a replica that joins or leaves moves only
//! its own share.

use tokenvisor_core::{PARTITIONS, Partition};

/// The weight of `replica` for `partition` (FNV-1a over both, then a 64-bit mix).
fn weight(replica: &str, partition: Partition) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in replica.as_bytes().iter().chain(&partition.to_be_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV alone leaves the low bits of similar inputs correlated.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The replica (of `live`) that should own `partition`; `None` when `live` is empty.
pub(crate) fn owner_of(partition: Partition, live: &[String]) -> Option<&str> {
    live.iter()
        .max_by_key(|replica| (weight(replica, partition), replica.as_str()))
        .map(String::as_str)
}

/// The partitions `me` should own when `live` (which includes `me`) are the live replicas.
pub(crate) fn share_of(me: &str, live: &[String]) -> Vec<Partition> {
    (0..PARTITIONS)
        .filter(|partition| owner_of(*partition, live) == Some(me))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}-{}", i * 7919)).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_shares_are_even() {
        for n in 1..=10 {
            let live = replicas(n);
            let shares: Vec<Vec<Partition>> = live.iter().map(|me| share_of(me, &live)).collect();
            let total: usize = shares.iter().map(Vec::len).sum();
            assert_eq!(total, PARTITIONS as usize, "{n} replicas");
            let fair = PARTITIONS as f64 / n as f64;
            for share in &shares {
                let ratio = share.len() as f64 / fair;
                assert!(
                    (0.8..=1.2).contains(&ratio),
                    "{n} replicas: a share of {} (fair {fair:.0})",
                    share.len()
                );
            }
        }
    }

    #[test]
    fn a_replica_that_joins_takes_only_from_the_others_and_one_that_leaves_gives_only_its_own() {
        let three = replicas(3);
        let four = replicas(4);
        let moved = (0..PARTITIONS)
            .filter(|p| owner_of(*p, &three) != owner_of(*p, &four))
            .collect::<Vec<_>>();
        assert!(moved.iter().all(|p| owner_of(*p, &four) == Some(four[3].as_str())));
        assert!(moved.len() < PARTITIONS as usize / 3, "{} moved", moved.len());
    }
}
