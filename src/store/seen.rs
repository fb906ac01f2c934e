//! The "seen once" filter for app keys: remembers that a key was presented,
//! in a fixed table beside the store (never in it), so that a key a client
//! presents a second time can be told from one it presents only once.
//!
//! A direct-mapped table of fingerprints: a key owns one slot, chosen by its
//! low bits, and a newer key landing on the same slot overwrites it. So it
//! can only forget (a key seen long ago, or during a flood, counts as unseen
//! again), never grow. Keys are keyed digests of the app's value, uniform and
//! unpredictable without the secret, so no one can aim a flood at a
//! particular slot.

use std::sync::atomic::{AtomicU64, Ordering};

use super::SessionKey;

/// Fewest and most slots (8 bytes each: 8 KiB to 512 KiB).
const MIN_SLOTS: usize = 1 << 10;
const MAX_SLOTS: usize = 1 << 16;

/// Keys presented once and not stored. Lock-free; cheap to share.
#[derive(Debug)]
pub struct Sightings {
    slots: Box<[AtomicU64]>,
}

impl Sightings {
    /// A table sized like the store it guards (`max_sessions`), within
    /// [1,024, 65,536] slots.
    pub fn new(max_sessions: usize) -> Sightings {
        let n = max_sessions
            .clamp(MIN_SLOTS, MAX_SLOTS)
            .next_power_of_two()
            .min(MAX_SLOTS);
        Sightings {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, key: SessionKey) -> (&AtomicU64, u64) {
        let i = (key.0 as usize) & (self.slots.len() - 1);
        // The high half is independent of the slot index; `| 1` keeps the
        // fingerprint off 0, the empty slot.
        let fingerprint = ((key.0 >> 64) as u64) | 1;
        (&self.slots[i], fingerprint)
    }

    /// Whether `key` was seen before (and is still remembered). If not, it
    /// is remembered now.
    pub fn sighted(&self, key: SessionKey) -> bool {
        let (slot, fp) = self.slot(key);
        if slot.load(Ordering::Relaxed) == fp {
            return true;
        }
        slot.store(fp, Ordering::Relaxed);
        false
    }

    /// Forgets `key` (its session was ended before it was ever stored).
    pub fn forget(&self, key: SessionKey) {
        let (slot, fp) = self.slot(key);
        let _ = slot.compare_exchange(fp, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Slots in the table.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> SessionKey {
        SessionKey((u128::from(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) << 64) | u128::from(n))
    }

    #[test]
    fn a_second_sighting_is_recognised() {
        let s = Sightings::new(10);
        assert!(!s.sighted(key(1)));
        assert!(s.sighted(key(1)));
        assert!(s.sighted(key(1)), "stays remembered");
        assert!(!s.sighted(key(2)));
        s.forget(key(1));
        assert!(!s.sighted(key(1)), "forgotten");
        s.forget(key(3));
        assert!(s.sighted(key(2)), "forgetting another key touches nothing");
    }

    #[test]
    fn bounded_whatever_the_flood() {
        let s = Sightings::new(100);
        assert_eq!(s.capacity(), MIN_SLOTS);
        assert_eq!(Sightings::new(5_000).capacity(), 8_192);
        assert_eq!(Sightings::new(usize::MAX).capacity(), MAX_SLOTS);
        for n in 0..100_000 {
            s.sighted(key(n));
        }
        assert_eq!(s.capacity(), MIN_SLOTS);
        // A slot taken by a later key forgets the earlier one: it is then
        // simply a first sighting again.
        let (a, b) = (SessionKey(7 | (1 << 64)), SessionKey(7 | (2 << 64)));
        assert!(!s.sighted(a));
        assert!(!s.sighted(b));
        assert!(!s.sighted(a), "overwritten by b");
    }
}
