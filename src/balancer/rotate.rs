//! Smooth weighted round-robin for `mode = "rotate"` (SPEC §4): nginx's algorithm, without a
//! lock on the request path. Eligibility arrives as a predicate; which backends exist and their
//! weights come from the caller.
//!
//! nginx keeps a `current_weight` per peer and updates all of them under a lock on every pick.
//! The sequence it produces is periodic, so this room computes one full period when the backend
//! set is built and each pick is a `fetch_add` on a shared cursor plus a read. Concurrent picks
//! interleave their slots, but every slot is handed out once, so the weights still hold.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest precomputed cycle. After dividing the weights by their gcd, a cycle is the sum of the
/// weights; e.g. weights up to 1000 on 1024 backends could ask for a million slots. Beyond this
/// cap the weights are scaled down in proportion (each non-zero weight keeps at least 1), so the
/// table stays at most `MAX_CYCLE + backends` slots of 4 bytes (about 260 KiB) and is built in
/// `cycle × backends` steps at reload. A backend's share is then off by less than one slot in
/// `MAX_CYCLE / total`, under 1% for weights of 100 or more of a 65,536-slot cycle.
pub const MAX_CYCLE: usize = 1 << 16;

/// One full cycle of nginx's smooth weighted round-robin, walked by an atomic cursor.
pub struct SmoothWrr {
    /// Backend index for each slot of the cycle.
    slots: Box<[u32]>,
    cursor: AtomicUsize,
}

impl SmoothWrr {
    /// The cycle for `weights` (indexed like the caller's backend slice). A weight of 0 never
    /// gets a slot; if all weights are 0, `next` always returns `None`.
    ///
    /// # Panics
    ///
    /// With more than `u32::MAX` backends (a broken invariant: the config bounds the list).
    pub fn new(weights: &[u32]) -> Self {
        assert!(
            u32::try_from(weights.len()).is_ok(),
            "more than u32::MAX backends in a rotate table"
        );
        let weights = reduce(weights);
        let total: u64 = weights.iter().sum();
        let mut slots = Vec::with_capacity(total as usize);
        // nginx's ngx_http_upstream_get_peer: every peer gains its weight, the largest current
        // weight wins (the first one on ties) and pays back the total.
        let mut current = vec![0i64; weights.len()];
        for _ in 0..total {
            let mut best: Option<usize> = None;
            for (i, &w) in weights.iter().enumerate() {
                if w == 0 {
                    continue;
                }
                current[i] += w as i64;
                if best.map_or(true, |b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let Some(best) = best else { break };
            current[best] -= total as i64;
            slots.push(best as u32);
        }
        SmoothWrr {
            slots: slots.into_boxed_slice(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The next backend in the cycle that `eligible` accepts, or `None` if it accepts none.
    ///
    /// Rejected slots are skipped, so their turns go to the next eligible backend in the cycle;
    /// at most one full cycle is walked.
    pub fn next(&self, mut eligible: impl FnMut(usize) -> bool) -> Option<usize> {
        let len = self.slots.len();
        if len == 0 {
            return None;
        }
        // Relaxed: the cursor only spreads picks; no other memory is published through it.
        // It wraps at usize::MAX, which only shifts the phase once.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
        let (tail, head) = self.slots.split_at(start);
        head.iter()
            .chain(tail)
            .map(|&slot| slot as usize)
            .find(|&index| eligible(index))
    }

    /// Slots in one cycle: the sum of the reduced weights.
    pub fn cycle_len(&self) -> usize {
        self.slots.len()
    }
}

impl fmt::Debug for SmoothWrr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmoothWrr")
            .field("cycle_len", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// Weights divided by their gcd, then scaled down if their sum still exceeds [`MAX_CYCLE`].
fn reduce(weights: &[u32]) -> Vec<u64> {
    let divide = |ws: &[u64]| -> Vec<u64> {
        let g = ws.iter().fold(0, |g, &w| gcd(g, w));
        ws.iter().map(|&w| w.checked_div(g).unwrap_or(0)).collect()
    };
    let weights = divide(&weights.iter().map(|&w| u64::from(w)).collect::<Vec<_>>());
    let total: u64 = weights.iter().sum();
    if total <= MAX_CYCLE as u64 {
        return weights;
    }
    let scaled: Vec<u64> = weights
        .iter()
        .map(|&w| match w {
            0 => 0,
            w => (w * MAX_CYCLE as u64 / total).max(1),
        })
        .collect();
    divide(&scaled)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(wrr: &SmoothWrr, n: usize, mut eligible: impl FnMut(usize) -> bool) -> Vec<usize> {
        (0..n).map(|_| wrr.next(&mut eligible).unwrap()).collect()
    }

    #[test]
    fn nginx_sequence_for_5_1_1() {
        let wrr = SmoothWrr::new(&[5, 1, 1]);
        assert_eq!(wrr.cycle_len(), 7);
        let seq = picks(&wrr, 21, |_| true);
        for cycle in seq.chunks(7) {
            assert_eq!(cycle, [0, 0, 1, 0, 2, 0, 0]);
        }
    }

    #[test]
    fn weights_are_honoured_exactly() {
        let wrr = SmoothWrr::new(&[5, 1, 1]);
        let mut counts = [0; 3];
        for pick in picks(&wrr, 7000, |_| true) {
            counts[pick] += 1;
        }
        assert_eq!(counts, [5000, 1000, 1000]);
    }

    #[test]
    fn gcd_is_divided_out() {
        let wrr = SmoothWrr::new(&[50, 10, 10]);
        assert_eq!(wrr.cycle_len(), 7);
        assert_eq!(picks(&wrr, 7, |_| true), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn equal_weights_alternate() {
        let wrr = SmoothWrr::new(&[3, 3]);
        assert_eq!(picks(&wrr, 6, |_| true), [0, 1, 0, 1, 0, 1]);
        let wrr = SmoothWrr::new(&[1, 1, 1]);
        assert_eq!(picks(&wrr, 6, |_| true), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn ineligible_backends_are_skipped() {
        let wrr = SmoothWrr::new(&[5, 1, 1]);
        let seq = picks(&wrr, 700, |i| i != 0);
        assert!(!seq.contains(&0));
        let ones = seq.iter().filter(|&&i| i == 1).count();
        assert!(ones > 0 && ones < 700, "backend 2 must get turns as well");
        assert_eq!(picks(&wrr, 10, |i| i == 2), [2; 10]);
    }

    #[test]
    fn none_when_nothing_is_eligible() {
        let wrr = SmoothWrr::new(&[5, 1, 1]);
        let mut asked = 0;
        assert_eq!(
            wrr.next(|_| {
                asked += 1;
                false
            }),
            None
        );
        assert_eq!(asked, 7, "walks one cycle and no more");
    }

    #[test]
    fn zero_weights() {
        let wrr = SmoothWrr::new(&[0, 2, 0]);
        assert_eq!(picks(&wrr, 4, |_| true), [1, 1, 1, 1]);
        let wrr = SmoothWrr::new(&[0, 0]);
        assert_eq!(wrr.next(|_| true), None);
        let wrr = SmoothWrr::new(&[]);
        assert_eq!(wrr.next(|_| true), None);
    }

    #[test]
    fn long_cycles_are_capped_and_keep_proportions() {
        // 64 pairwise different weights near 1000 with gcd 1: the raw cycle is ~64,000 slots,
        // under the cap; doubling the pool crosses it.
        let weights: Vec<u32> = (0..128).map(|i| 1000 - i).collect();
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        assert!(total > MAX_CYCLE as u64);
        let wrr = SmoothWrr::new(&weights);
        assert!(wrr.cycle_len() <= MAX_CYCLE + weights.len());
        let mut counts = vec![0usize; weights.len()];
        for pick in picks(&wrr, wrr.cycle_len(), |_| true) {
            counts[pick] += 1;
        }
        for (i, (&c, &w)) in counts.iter().zip(&weights).enumerate() {
            let want = w as f64 / total as f64;
            let got = c as f64 / wrr.cycle_len() as f64;
            assert!(
                (got - want).abs() / want < 0.01,
                "backend {i}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn concurrent_picks_keep_the_weights() {
        let wrr = std::sync::Arc::new(SmoothWrr::new(&[3, 1]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let wrr = wrr.clone();
                std::thread::spawn(move || picks(&wrr, 1000, |_| true))
            })
            .collect();
        let mut counts = [0; 2];
        for t in threads {
            for pick in t.join().unwrap() {
                counts[pick] += 1;
            }
        }
        assert_eq!(counts, [3000, 1000]);
    }
}
