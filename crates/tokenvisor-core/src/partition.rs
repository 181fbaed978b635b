//! Partitions: the unit of ownership when replicas share one database. A connection
//! belongs to one of [`PARTITIONS`] partitions for its whole life ([`partition_of`]);
//! a replica supervises the connections of the partitions it owns.

use crate::model::ConnectionId;

/// How many partitions connections are spread over. Fixed: changing it would move
/// connections between partitions, so it is part of the stored data's format.
pub const PARTITIONS: u16 = 1024;

/// A partition number, `0..PARTITIONS`.
pub type Partition = u16;

/// The partition of a connection: a stable hash (FNV-1a, 64 bit) of the id's 16 bytes,
/// modulo [`PARTITIONS`]. The same on every replica, every version and every platform.
pub fn partition_of(id: ConnectionId) -> Partition {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.0.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(PARTITIONS)) as Partition
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn the_partition_of_an_id_never_changes() {
        // Pinned values: a change here moves stored connections between partitions.
        let id = ConnectionId(Uuid::parse_str("0190a6b1-7a3e-7c2d-9f00-1234567890ab").expect("a uuid"));
        assert_eq!(partition_of(id), partition_of(id));
        assert_eq!(partition_of(ConnectionId(Uuid::nil())), 101);
        assert_eq!(partition_of(ConnectionId(Uuid::max())), 85);
    }

    #[test]
    fn time_ordered_ids_spread_evenly_over_the_partitions() {
        let mut counts = vec![0u32; PARTITIONS as usize];
        for _ in 0..102_400 {
            counts[partition_of(ConnectionId::new()) as usize] += 1;
        }
        let (min, max) = (
            counts.iter().min().expect("counts"),
            counts.iter().max().expect("counts"),
        );
        assert!(*min >= 50 && *max <= 160, "min {min}, max {max} (expected ~100 each)");
    }
}
