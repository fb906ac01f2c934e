//! Consistent-hash ring over *all* configured backends: turns a `u64` affinity key into backend
//! indexes in ring order, home first, then the failover order. Health, drain and admin state are
//! not in the ring; they arrive as a predicate while walking it, so an outage or a drain never
//! reshapes the ring or moves anyone else's session. Bounded load and the sticky/rotate choice
//! are `balancer/mod.rs`'s.
//!
//! Backends are placed by **name** (the operator's stable identity, also used in cookies, the
//! admin API and metrics), never by address or list position: reordering the list changes
//! nothing, and renaming a backend counts as removing it and adding a new one.
//!
//! Positions come from SipHash-1-3 with a zero key (the `consistent_hash` crate's hasher) over a
//! byte string this file defines: a key is its 8 little-endian bytes, a virtual node is its
//! backend's UTF-8 name followed by its sequence number as 8 little-endian bytes. Going through
//! std's `Hash` for `(String, usize)` would instead hash `usize` at native width and byte order,
//! so a 32-bit or big-endian instance would place nodes differently from its peers.

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};

use consistent_hash::{DefaultHash, RingHash};

/// Virtual nodes per unit of weight. 160 is ketama's figure (also nginx's and pingora's): the
/// spread of a backend's share around its weight's share shrinks as 1/sqrt(vnodes), about 8% of
/// the share at 160 (measured over 300,000 keys: 3 equal backends get 31/37/32%, 10 get 8.6% to
/// 11.8%), while a lookup stays one binary search over `160 × total weight` entries of 16 bytes.
/// More vnodes would narrow the spread slowly and cost memory linearly.
pub const VNODES_PER_WEIGHT: usize = 160;

/// Largest weight the ring honours; larger weights count as this. A weight sets its backend's
/// vnode count on its own (no normalising against the others, which would move keys between
/// existing backends whenever one is added), so this cap is what bounds the ring's memory:
/// 1000 × 160 vnodes × 16 bytes = 2.5 MiB per backend. The config check should refuse more.
pub const MAX_WEIGHT: u32 = 1000;

/// Backends a walk tracks without allocating (the config allows 1,024).
const INLINE_BACKENDS: usize = 1024;

/// A consistent-hash ring of backends, built once per backend set (rebuilt only when names or
/// weights change) and read without locks by every request.
///
/// The placement is the `consistent_hash` crate's `StaticHashRing` with this file's hash
/// inputs (vnodes sorted by position, ties by name; a key starts at the first vnode at or past
/// its position), so instances of every version agree; a test holds the two equal. The walk is
/// this file's own: the crate's allocates a splay-tree node per backend visited, which made a
/// full walk over 100 backends cost tens of microseconds; here the visited set is a bitset on
/// the stack.
pub struct Ring {
    /// Vnode positions and their backend's index, sorted as the crate sorts them.
    points: Vec<(u64, u32)>,
    /// Backends given (including weight-0 ones and ignored duplicates).
    len: usize,
    /// Distinct backends with at least one vnode: a walk yields this many.
    placed: usize,
}

impl Ring {
    /// A ring of the given `(name, weight)` backends. Each backend's value is its position in
    /// the iteration, i.e. its index in the caller's backend slice.
    ///
    /// A weight of 0 gives no virtual nodes: that backend is never a candidate. Names are
    /// expected to be unique (the config check ensures it); of duplicates only the first counts.
    pub fn new<'a>(backends: impl IntoIterator<Item = (&'a str, u32)>) -> Ring {
        let backends: Vec<(&str, u32)> = backends.into_iter().collect();
        let mut names = HashSet::with_capacity(backends.len());
        let mut points = Vec::new();
        let mut placed = 0;
        for (index, &(name, weight)) in backends.iter().enumerate() {
            let vnodes = weight.min(MAX_WEIGHT) as usize * VNODES_PER_WEIGHT;
            if !names.insert(name) || vnodes == 0 {
                continue;
            }
            placed += 1;
            let key = Name(name.to_owned());
            points.extend((0..vnodes).map(|seq| (FixedHash.hash_vnode(&key, seq), index as u32)));
        }
        points.sort_unstable_by(|a, b| {
            (a.0, backends[a.1 as usize].0).cmp(&(b.0, backends[b.1 as usize].0))
        });
        Ring {
            points,
            len: backends.len(),
            placed,
        }
    }

    /// Backend indexes in ring order for `key`, each once: the first is the key's home, the rest
    /// are its failover order. Allocation-free; take only as many as needed.
    pub fn candidates(&self, key: u64) -> Candidates<'_> {
        let position = FixedHash.hash_item(&Key(key));
        Candidates {
            points: &self.points,
            at: self.points.partition_point(|p| p.0 < position),
            steps: 0,
            left: self.placed,
            seen: Seen::new(self.len),
        }
    }

    /// First candidate accepted by `accept` (health and eligibility are a predicate passed in,
    /// as pingora's `select_with`), or `None` if no backend is accepted.
    pub fn first_where(&self, key: u64, mut accept: impl FnMut(usize) -> bool) -> Option<usize> {
        self.candidates(key).find(|&index| accept(index))
    }

    /// Number of backends in the ring (including weight-0 ones).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the ring has no backends.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("backends", &self.len)
            .field("vnodes", &self.points.len())
            .finish()
    }
}

/// The backends a walk has yielded: a bitset, on the stack up to [`INLINE_BACKENDS`].
struct Seen {
    inline: [u64; INLINE_BACKENDS / 64],
    more: Vec<u64>,
}

impl Seen {
    fn new(backends: usize) -> Seen {
        let more = if backends > INLINE_BACKENDS {
            vec![0; backends.div_ceil(64)]
        } else {
            Vec::new()
        };
        Seen {
            inline: [0; INLINE_BACKENDS / 64],
            more,
        }
    }

    /// Marks `i`; whether it was new.
    #[inline]
    fn insert(&mut self, i: usize) -> bool {
        let words = if self.more.is_empty() {
            &mut self.inline[..]
        } else {
            &mut self.more[..]
        };
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        let new = words[w] & bit == 0;
        words[w] |= bit;
        new
    }
}

/// The walk [`Ring::candidates`] returns.
pub struct Candidates<'a> {
    points: &'a [(u64, u32)],
    at: usize,
    steps: usize,
    /// Backends not yielded yet.
    left: usize,
    seen: Seen,
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.left > 0 && self.steps < self.points.len() {
            if self.at >= self.points.len() {
                self.at = 0;
            }
            let index = self.points[self.at].1 as usize;
            self.at += 1;
            self.steps += 1;
            if self.seen.insert(index) {
                self.left -= 1;
                return Some(index);
            }
        }
        None
    }
}

/// A backend name on the ring; hashes as its UTF-8 bytes and nothing else.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Name(String);

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

/// An affinity key; hashes as its 8 little-endian bytes on every platform.
struct Key(u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0.to_le_bytes());
    }
}

/// Virtual node `seq` of a backend: name bytes, then `seq` as 8 little-endian bytes. The fixed
/// width of `seq` keeps the split unambiguous, so two (name, seq) pairs never share an input.
struct Vnode<'a, K>(&'a K, u64);

impl<K: Hash> Hash for Vnode<'_, K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        state.write(&self.1.to_le_bytes());
    }
}

/// The crate's SipHash-1-3 (zero key), fed only through `Hasher::write`, so the bytes hashed
/// are the ones this file defines.
struct FixedHash;

impl RingHash for FixedHash {
    fn hash_item<T: Hash>(&self, item: &T) -> u64 {
        DefaultHash.hash_item(item)
    }

    fn hash_vnode<K: Hash>(&self, node_key: &K, vnode_seq: usize) -> u64 {
        DefaultHash.hash_item(&Vnode(node_key, vnode_seq as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: usize = 3000;

    /// Deterministic, well-spread keys (splitmix64), so the tests never flake.
    fn keys() -> impl Iterator<Item = u64> {
        (1..=KEYS as u64).map(|i| {
            let mut z = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }

    fn names(ring: &Ring, backends: &[(&str, u32)], key: u64) -> Vec<String> {
        ring.candidates(key)
            .map(|i| backends[i].0.to_owned())
            .collect()
    }

    fn home(ring: &Ring, backends: &[(&str, u32)], key: u64) -> String {
        let first = ring.candidates(key).next().expect("a non-empty ring");
        backends[first].0.to_owned()
    }

    fn shares(ring: &Ring, n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for key in keys() {
            counts[ring.candidates(key).next().unwrap()] += 1;
        }
        counts.iter().map(|&c| c as f64 / KEYS as f64).collect()
    }

    const THREE: [(&str, u32); 3] = [("app1", 1), ("app2", 1), ("app3", 1)];

    #[test]
    fn equal_backends_share_evenly() {
        let ring = Ring::new(THREE);
        assert_eq!(ring.len(), 3);
        for (i, share) in shares(&ring, 3).into_iter().enumerate() {
            assert!((0.25..=0.42).contains(&share), "backend {i} got {share}");
        }
    }

    #[test]
    fn adding_a_backend_moves_keys_only_to_it() {
        let before = Ring::new(THREE);
        let four = [THREE[0], THREE[1], THREE[2], ("app4", 1)];
        let after = Ring::new(four);
        let mut moved = 0;
        for key in keys() {
            let (old, new) = (home(&before, &THREE, key), home(&after, &four, key));
            if old != new {
                assert_eq!(new, "app4", "key {key} moved from {old} to {new}");
                moved += 1;
            }
        }
        let share = moved as f64 / KEYS as f64;
        assert!((0.20..=0.30).contains(&share), "new backend took {share}");
    }

    #[test]
    fn removing_a_backend_moves_only_its_keys() {
        let before = Ring::new(THREE);
        let two = [THREE[0], THREE[2]];
        let after = Ring::new(two);
        for key in keys() {
            let (old, new) = (home(&before, &THREE, key), home(&after, &two, key));
            if old != "app2" {
                assert_eq!(old, new, "key {key} moved although its home stayed");
            }
        }
    }

    #[test]
    fn removal_follows_the_old_failover_order() {
        // A key whose home disappears lands on its old second candidate: the same backend an
        // outage of the home would have sent it to, so failover and removal agree.
        let before = Ring::new(THREE);
        let two = [THREE[0], THREE[2]];
        let after = Ring::new(two);
        for key in keys() {
            let old = names(&before, &THREE, key);
            if old[0] == "app2" {
                assert_eq!(home(&after, &two, key), old[1]);
            }
        }
    }

    #[test]
    fn order_of_the_list_does_not_matter() {
        let reordered = [THREE[2], THREE[0], THREE[1]];
        let (a, b) = (Ring::new(THREE), Ring::new(reordered));
        for key in keys() {
            assert_eq!(names(&a, &THREE, key), names(&b, &reordered, key));
        }
    }

    #[test]
    fn candidates_yield_every_backend_once() {
        let backends: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
        let ring = Ring::new(
            backends
                .iter()
                .map(|n| (n.as_str(), 1 + (n.len() as u32 % 3))),
        );
        for key in keys().take(200) {
            let mut seen: Vec<usize> = ring.candidates(key).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..20).collect::<Vec<_>>());
        }
    }

    #[test]
    fn weights_set_the_shares() {
        let ring = Ring::new([("a", 1), ("b", 2), ("c", 1)]);
        let shares = shares(&ring, 3);
        for (share, want) in shares.iter().zip([0.25, 0.50, 0.25]) {
            assert!((share - want).abs() < 0.06, "shares {shares:?}");
        }
    }

    #[test]
    fn weight_zero_is_never_a_candidate() {
        let backends = [("a", 1), ("off", 0), ("c", 1)];
        let ring = Ring::new(backends);
        assert_eq!(ring.len(), 3);
        for key in keys().take(300) {
            let c: Vec<usize> = ring.candidates(key).collect();
            assert_eq!(c.len(), 2);
            assert!(!c.contains(&1));
        }
    }

    #[test]
    fn first_where_skips_to_the_next_candidate() {
        let ring = Ring::new(THREE);
        for key in keys().take(500) {
            let order: Vec<usize> = ring.candidates(key).collect();
            assert_eq!(ring.first_where(key, |_| true), Some(order[0]));
            assert_eq!(ring.first_where(key, |i| i != order[0]), Some(order[1]));
            assert_eq!(ring.first_where(key, |i| i == order[2]), Some(order[2]));
            assert_eq!(ring.first_where(key, |_| false), None);
        }
    }

    #[test]
    fn empty_ring() {
        let ring = Ring::new(std::iter::empty());
        assert!(ring.is_empty());
        assert_eq!(ring.candidates(42).next(), None);
        assert_eq!(ring.first_where(42, |_| true), None);
    }

    #[test]
    fn placement_is_pinned() {
        // Fixed expectations: if the hashing ever changes, new sessions and failover would route
        // differently from older instances sharing the same store. Change these only on purpose.
        let ring = Ring::new(THREE);
        let homes: Vec<usize> = [0u64, 1, 2, 3, 4, 5, 6, 7]
            .iter()
            .map(|&k| ring.candidates(k).next().unwrap())
            .collect();
        assert_eq!(homes, PINNED_HOMES);
    }

    const PINNED_HOMES: [usize; 8] = [0, 1, 2, 0, 0, 1, 2, 0];

    #[test]
    fn hash_inputs_are_pinned() {
        assert_eq!(FixedHash.hash_item(&Key(1)), 0x1e9f_7341_61d6_2dd9);
        assert_eq!(
            FixedHash.hash_vnode(&Name("app1".into()), 0),
            0x7eba_36f7_79f5_234f
        );
    }

    /// The crate's ring with the same nodes: the placement this ring must reproduce.
    fn crate_ring(
        backends: &[(String, u32)],
    ) -> consistent_hash::StaticHashRing<'static, Name, usize, FixedHash> {
        consistent_hash::StaticHashRing::new(
            FixedHash,
            backends
                .iter()
                .enumerate()
                .map(|(index, (name, weight))| consistent_hash::Node {
                    key: Name(name.clone()),
                    value: index,
                    quantity: (*weight).min(MAX_WEIGHT) as usize * VNODES_PER_WEIGHT,
                }),
        )
    }

    #[test]
    fn the_walk_is_the_consistent_hash_crates() {
        for n in [1usize, 3, 17, 40] {
            let backends: Vec<(String, u32)> = (0..n)
                .map(|i| (format!("app-{i}"), 1 + (i as u32 * 7) % 4))
                .chain([("app-0".to_owned(), 5), ("zero".to_owned(), 0)])
                .collect();
            let ours = Ring::new(backends.iter().map(|(n, w)| (n.as_str(), *w)));
            let theirs = crate_ring(&backends);
            for key in keys().take(300) {
                let a: Vec<usize> = ours.candidates(key).collect();
                let b: Vec<usize> = theirs.calc_candidates(&Key(key)).map(|n| n.value).collect();
                assert_eq!(a, b, "{n} backends, key {key}");
            }
        }
    }

    #[test]
    fn ring_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Ring>();
    }
}
