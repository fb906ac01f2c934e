//! Live sessions counted per backend id, their total, and which ids hold
//! any: the bookkeeping both stores keep, so that the sessions pinned to a
//! set of backends cost a look at the ids *outside* the set that hold
//! sessions (normally none) rather than one look per backend in it.
//!
//! Every count is an atomic; the total moves with each count, so it always
//! equals their sum once the writes in flight have landed. The held set may
//! name an id whose count has just dropped to zero (a wasted look), but an id
//! whose count is above zero is always in it once its writer is done; see
//! [`Tally::mark_held`] for the race this rules out.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{BackendId, BackendSet, MAX_BACKEND_IDS};

/// Per-backend live-session counts with their total and the set of ids
/// that hold sessions.
pub(super) struct Tally {
    per: Box<[AtomicU64]>,
    total: AtomicU64,
    /// Bit `id` is set while `per[id]` may be above zero.
    held: Box<[AtomicU64]>,
    /// Words of `held` that ever had a bit set: ids are handed out from 0
    /// up, so a table of a few backends scans one word, not all of them.
    held_words: AtomicUsize,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("total", &self.total())
            .finish_non_exhaustive()
    }
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            per: (0..MAX_BACKEND_IDS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            held: (0..MAX_BACKEND_IDS / 64)
                .map(|_| AtomicU64::new(0))
                .collect(),
            held_words: AtomicUsize::new(0),
        }
    }

    fn slot(&self, id: BackendId) -> &AtomicU64 {
        self.per.get(usize::from(id.0)).unwrap_or_else(|| {
            panic!(
                "BackendId({}) is beyond MAX_BACKEND_IDS ({MAX_BACKEND_IDS}): the backend name interner must refuse it",
                id.0
            )
        })
    }

    /// One more live session on `id`.
    ///
    /// # Panics
    /// `id` is beyond [`MAX_BACKEND_IDS`] (a broken invariant of the
    /// caller's interner).
    #[inline]
    pub fn add(&self, id: BackendId) {
        let before = self.slot(id).fetch_add(1, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            self.mark_held(id);
        }
    }

    /// One live session fewer on `id`.
    ///
    /// # Panics
    /// As [`Tally::add`].
    #[inline]
    pub fn sub(&self, id: BackendId) {
        let before = self.slot(id).fetch_sub(1, Ordering::SeqCst);
        self.total.fetch_sub(1, Ordering::Relaxed);
        if before == 1 {
            self.mark_held(id);
        }
    }

    /// Sets `id`'s count to `n` (a recount); an id beyond
    /// [`MAX_BACKEND_IDS`] is ignored.
    pub fn set(&self, id: BackendId, n: u64) {
        let Some(slot) = self.per.get(usize::from(id.0)) else {
            return;
        };
        let before = slot.swap(n, Ordering::SeqCst);
        // Wrapping: the total is the sum of the counts modulo 2^64, which
        // is the sum itself once every write has landed.
        self.total
            .fetch_add(n.wrapping_sub(before), Ordering::Relaxed);
        if (before == 0) != (n == 0) {
            self.mark_held(id);
        }
    }

    /// Brings `id`'s held bit in line with its count after the count
    /// crossed zero.
    ///
    /// A clear must not win over a concurrent rise: if one writer takes the
    /// count 1 -> 0 and another 0 -> 1, and the second sets the bit before
    /// the first clears it, the bit ends clear over a count of 1. So a clear
    /// is followed by a second look at the count, which sets the bit again;
    /// all of this is `SeqCst`, so that look comes after every change that
    /// preceded the clear. A bit left set over a zero count only costs
    /// [`Tally::among`] one look.
    fn mark_held(&self, id: BackendId) {
        let i = usize::from(id.0);
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        let count = &self.per[i];
        let hold = || {
            // Widened before the bit is set, so a reader that sees the bit
            // scans its word.
            self.held_words.fetch_max(w + 1, Ordering::SeqCst);
            self.held[w].fetch_or(bit, Ordering::SeqCst);
        };
        if count.load(Ordering::SeqCst) != 0 {
            hold();
            return;
        }
        self.held[w].fetch_and(!bit, Ordering::SeqCst);
        if count.load(Ordering::SeqCst) != 0 {
            hold();
        }
    }

    /// Live sessions on `id` (0 beyond [`MAX_BACKEND_IDS`]).
    #[inline]
    pub fn on(&self, id: BackendId) -> u64 {
        self.per
            .get(usize::from(id.0))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Live sessions in all.
    #[inline]
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Live sessions on the ids in `set`: the total less what the held ids
    /// outside `set` hold. Reads one word per 64 ids handed out and one
    /// count per held id outside the set; while writes are in flight it is off by at most
    /// those writes, as a sum of the counts read one by one would be.
    pub fn among(&self, set: &BackendSet) -> u64 {
        let total = self.total();
        let mut outside = 0u64;
        let words = self.held_words.load(Ordering::SeqCst);
        for (w, (held, inside)) in self.held[..words].iter().zip(set.words()).enumerate() {
            let mut bits = held.load(Ordering::Relaxed) & !inside;
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                outside = outside.wrapping_add(self.per[i].load(Ordering::Relaxed));
                bits &= bits - 1;
            }
        }
        total.saturating_sub(outside)
    }

    /// Whether `id`'s held bit is set (tests check it covers every count).
    #[cfg(test)]
    pub fn held(&self, id: BackendId) -> bool {
        let i = usize::from(id.0);
        self.held[i / 64].load(Ordering::SeqCst) & (1 << (i % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(ids: &[u16]) -> BackendSet {
        let mut s = BackendSet::new();
        for &i in ids {
            s.insert(BackendId(i));
        }
        s
    }

    #[test]
    fn among_is_the_sum_over_the_set() {
        let t = Tally::new();
        // (id, sessions): ids in several words, one at the last id.
        let counts = [(0u16, 3u64), (1, 5), (63, 1), (64, 2), (700, 4), (4095, 6)];
        for (id, n) in counts {
            for _ in 0..n {
                t.add(BackendId(id));
            }
        }
        assert_eq!(t.total(), 21);
        let table: [(&[u16], u64); 6] = [
            (&[], 0),
            (&[0, 1, 63, 64, 700, 4095], 21),
            (&[0, 1], 8),
            (&[63, 64, 4095], 9),
            (&[2, 3, 1000], 0),
            (&[700, 5, 6], 4),
        ];
        for (ids, want) in table {
            assert_eq!(t.among(&set_of(ids)), want, "among {ids:?}");
        }
    }

    #[test]
    fn held_bits_follow_counts_across_zero() {
        let t = Tally::new();
        let a = BackendId(70);
        t.add(a);
        t.add(a);
        assert!(t.held(a));
        t.sub(a);
        assert!(t.held(a), "one left");
        t.sub(a);
        assert!(!t.held(a), "none left");
        assert_eq!((t.on(a), t.total()), (0, 0));
        t.set(a, 9);
        assert!(t.held(a));
        assert_eq!((t.on(a), t.total(), t.among(&set_of(&[70]))), (9, 9, 9));
        t.set(a, 4);
        assert_eq!((t.total(), t.among(&set_of(&[]))), (4, 0));
        t.set(a, 0);
        assert!(!t.held(a));
        assert_eq!(t.total(), 0);
        t.set(BackendId(u16::MAX), 5);
        assert_eq!((t.on(BackendId(u16::MAX)), t.total()), (0, 0), "ignored");
    }

    #[test]
    fn racing_rises_and_falls_leave_every_count_held() {
        // Four threads take the same ids across zero again and again; at
        // the end each holds one session per thread on every id, and every
        // id with sessions must be in the held set.
        let t = Tally::new();
        let ids: Vec<BackendId> = (0..8).map(|i| BackendId(i * 37)).collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        for &id in &ids {
                            t.add(id);
                            t.sub(id);
                        }
                    }
                    for &id in &ids {
                        t.add(id);
                    }
                });
            }
        });
        for &id in &ids {
            assert_eq!(t.on(id), 4);
            assert!(t.held(id), "{id:?} holds sessions but is not held");
        }
        assert_eq!((t.total(), t.among(&BackendSet::new())), (32, 0));
    }
}
