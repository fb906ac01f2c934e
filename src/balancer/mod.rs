//! Chooses backends: the ring's ordered candidates for a sticky key, with
//! bounded load for new sessions, or the next smooth-WRR pick in rotate mode.
//!
//! The ring holds every configured backend; eligibility is a predicate applied
//! while walking it, so a backend going down or draining never reshuffles the
//! sessions of the others.

pub mod ring;
pub mod rotate;

use std::sync::Arc;

use crate::backends::Backend;
use ring::Ring;
use rotate::SmoothWrr;

/// The routing tables for one backend set (rebuilt only when the set or weights change).
#[derive(Debug)]
pub struct Balancer {
    ring: Ring,
    rotate: SmoothWrr,
}

impl Balancer {
    /// Builds the ring and the rotate cycle for `backends` (indexes follow the slice).
    pub fn new(backends: &[Arc<Backend>]) -> Balancer {
        let ring = Ring::new(backends.iter().map(|b| (&*b.name, b.weight)));
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Balancer {
            ring,
            rotate: SmoothWrr::new(&weights),
        }
    }

    /// The backend for a new session with ring key `key`: the first `up`
    /// backend on the ring whose live sessions stay under
    /// `factor` x the mean (Google's consistent hashing with bounded loads;
    /// `factor = 0` turns the bound off). If every eligible backend is at the
    /// bound, the first eligible one takes it anyway.
    pub fn pick_new(
        &self,
        key: u64,
        backends: &[Arc<Backend>],
        factor: f64,
        load: impl Fn(&Backend) -> u64,
    ) -> Option<usize> {
        if factor <= 0.0 {
            return self
                .ring
                .first_where(key, |i| backends[i].eligible_for_new());
        }
        let mut eligible = 0u64;
        let mut total = 0u64;
        for b in backends.iter().filter(|b| b.eligible_for_new()) {
            eligible += 1;
            total += load(b);
        }
        if eligible == 0 {
            return None;
        }
        // capacity = ceil(factor * (total + 1) / n): the +1 counts the session being placed.
        let cap = (factor * (total + 1) as f64 / eligible as f64).ceil() as u64;
        let mut first = None;
        for i in self.ring.candidates(key) {
            let b = &backends[i];
            if !b.eligible_for_new() {
                continue;
            }
            if load(b) < cap {
                return Some(i);
            }
            first.get_or_insert(i);
        }
        first
    }

    /// Where a session pinned to `from` goes when `from` cannot serve it: the
    /// next `up` backend on the ring for its key.
    pub fn failover(
        &self,
        key: u64,
        from: Option<usize>,
        backends: &[Arc<Backend>],
    ) -> Option<usize> {
        self.ring
            .first_where(key, |i| Some(i) != from && backends[i].eligible_for_new())
    }

    /// Rotate mode's next backend (smooth weighted round-robin over `up` backends).
    pub fn rotate(&self, backends: &[Arc<Backend>]) -> Option<usize> {
        self.rotate.next(|i| backends[i].eligible_for_new())
    }

    /// Rotate mode's pick after `failed` refused a connection.
    pub fn rotate_retry(&self, failed: usize, backends: &[Arc<Backend>]) -> Option<usize> {
        self.rotate
            .next(|i| i != failed && backends[i].eligible_for_new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::State;
    use crate::store::BackendId;

    fn pool(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                Arc::new(Backend::new(
                    &format!("app{i}"),
                    BackendId(i as u16),
                    i as u64,
                    "127.0.0.1:1".parse().unwrap(),
                    1,
                ))
            })
            .collect()
    }

    #[test]
    fn bounded_load_skips_an_overfull_home() {
        let b = pool(3);
        let bal = Balancer::new(&b);
        let key = 12345u64;
        let home = bal.pick_new(key, &b, 0.0, |_| 0).unwrap();
        // home holds 10 sessions, others none: mean (10+1)/3, cap ceil(1.25*11/3) = 5.
        let picked = bal
            .pick_new(
                key,
                &b,
                1.25,
                |x| if x.name == b[home].name { 10 } else { 0 },
            )
            .unwrap();
        assert_ne!(picked, home);
        // with the bound off the home keeps it
        assert_eq!(bal.pick_new(key, &b, 0.0, |_| 0), Some(home));
    }

    #[test]
    fn new_sessions_avoid_draining_and_down() {
        let b = pool(3);
        let bal = Balancer::new(&b);
        b[0].set_state(State::Draining);
        b[1].set_state(State::Down);
        for key in 0..200u64 {
            assert_eq!(bal.pick_new(key, &b, 1.25, |_| 0), Some(2));
        }
        b[2].set_state(State::Disabled);
        assert_eq!(bal.pick_new(1, &b, 1.25, |_| 0), None);
        assert_eq!(bal.rotate(&b), None);
    }

    #[test]
    fn failover_goes_to_the_next_up_candidate() {
        let b = pool(3);
        let bal = Balancer::new(&b);
        let key = 99u64;
        let order: Vec<usize> = bal.ring.candidates(key).collect();
        b[order[0]].set_state(State::Down);
        assert_eq!(bal.failover(key, Some(order[0]), &b), Some(order[1]));
    }
}
