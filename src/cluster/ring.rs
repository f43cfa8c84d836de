//! Rendezvous hashing: a key belongs to the live node with the highest
//! `xxh3(key, node seed)`. When a node leaves, only its own keys move (each
//! to the node that scored second for it), and they move back when it
//! returns; no virtual nodes or token table to keep in step.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Which nodes of the configured list are in the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Bumped on every change, so state learned under an older view can
    /// be recognised as possibly stale.
    pub epoch: u64,
    /// One flag per configured peer, in configuration order.
    pub live: Vec<bool>,
}

/// The index of the live node owning `key`; `None` only when no node is live.
pub fn owner(seeds: &[u64], live: &[bool], key: &[u8]) -> Option<usize> {
    seeds
        .iter()
        .zip(live)
        .enumerate()
        .filter(|(_, (_, live))| **live)
        .max_by_key(|(_, (seed, _))| xxh3_64_with_seed(key, **seed))
        .map(|(i, _)| i)
}

/// A node's seed: the hash of its id, so every node computes the same ring
/// from the same peer list whatever its order.
pub fn seed(node_id: &str) -> u64 {
    xxh3_64_with_seed(node_id.as_bytes(), 0x0063_6172_7269_6572)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u32) -> impl Iterator<Item = [u8; 16]> {
        (0..n)
            .map(|i| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &i.to_be_bytes()).into_bytes())
    }

    #[test]
    fn keys_spread_evenly_over_three_nodes() {
        let seeds: Vec<u64> = ["n1", "n2", "n3"].iter().map(|id| seed(id)).collect();
        let mut counts = [0u32; 3];
        for key in keys(30_000) {
            counts[owner(&seeds, &[true; 3], &key).expect("a live node")] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn only_the_dead_nodes_keys_move_and_they_come_back() {
        let seeds: Vec<u64> = ["n1", "n2", "n3"].iter().map(|id| seed(id)).collect();
        let all = [true, true, true];
        let without_n2 = [true, false, true];
        let mut moved = 0;
        for key in keys(10_000) {
            let before = owner(&seeds, &all, &key);
            let during = owner(&seeds, &without_n2, &key);
            if before == Some(1) {
                moved += 1;
                assert_ne!(during, Some(1));
            } else {
                assert_eq!(before, during, "a key of a live node moved");
            }
            assert_eq!(owner(&seeds, &all, &key), before);
        }
        assert!(moved > 0);
    }

    #[test]
    fn the_ring_does_not_depend_on_the_order_of_peers() {
        let a: Vec<u64> = ["n1", "n2", "n3"].iter().map(|id| seed(id)).collect();
        let b: Vec<u64> = ["n3", "n1", "n2"].iter().map(|id| seed(id)).collect();
        for key in keys(1_000) {
            let ia = owner(&a, &[true; 3], &key).expect("live");
            let ib = owner(&b, &[true; 3], &key).expect("live");
            assert_eq!(a[ia], b[ib]);
        }
        assert_eq!(owner(&a, &[false; 3], b"k"), None);
    }
}

/// The vectors HAProxy's copy of the ring (config/cluster/haproxy/) is
/// checked against hold for this ring.
#[cfg(test)]
mod vectors {
    #[test]
    fn the_load_balancer_s_vectors_hold_here() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/cluster/haproxy/ring-vectors.txt"
        );
        let text = std::fs::read_to_string(path).expect("ring-vectors.txt");
        let (mut ids, mut seeds, mut checked) = (Vec::new(), Vec::new(), 0);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let words: Vec<&str> = line.split(' ').collect();
            match words[..] {
                ["seed", id, hex] => {
                    assert_eq!(format!("{:016x}", super::seed(id)), hex, "seed of {id}");
                    ids.push(id);
                    seeds.push(super::seed(id));
                }
                ["owner", key, alive, want] => {
                    let key = uuid::Uuid::parse_str(key).expect("a uuid");
                    let alive: Vec<&str> = alive.split(',').collect();
                    let live: Vec<bool> = ids.iter().map(|id| alive.contains(id)).collect();
                    let owner = super::owner(&seeds, &live, key.as_bytes()).expect("a live node");
                    assert_eq!(ids[owner], want, "owner of {key} among {alive:?}");
                }
                _ => panic!("unreadable line: {line}"),
            }
            checked += 1;
        }
        assert_eq!(checked, 30);
    }
}
