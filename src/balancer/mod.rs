//! Chooses backends: the ring's ordered candidates for a sticky key, with
//! bounded load for new sessions, or the next smooth-WRR pick in rotate mode.
//!
//! The ring holds every configured backend; eligibility is a predicate applied
//! while walking it, so a backend going down or draining never reshuffles the
//! sessions of the others.
//!
//! Bounded load needs the mean load of the backends taking new sessions. The
//! balancer keeps the set of those (rebuilt only after some backend's state
//! changed) and asks the caller for the sessions on that set in one call, so a
//! new session does not visit every backend of a large table.

pub mod ring;
pub mod rotate;

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::backends::{self, Backend};
use crate::store::BackendSet;
use ring::Ring;
use rotate::SmoothWrr;

/// The routing tables for one backend set (rebuilt only when the set or weights change).
#[derive(Debug)]
pub struct Balancer {
    ring: Ring,
    rotate: SmoothWrr,
    /// Who takes new sessions, as of a count of status changes.
    up: ArcSwapOption<Up>,
}

/// The backends taking new sessions (`up`) in one table, as they were when
/// [`backends::status_changes`] read `changes`.
#[derive(Debug)]
struct Up {
    changes: u64,
    /// The table it was taken from (its address and length), so a table
    /// other than the one the balancer serves is never answered from it.
    table: (usize, usize),
    count: u64,
    ids: BackendSet,
}

impl Up {
    fn of(backends: &[Arc<Backend>]) -> Up {
        // Before the states: a change landing during the walk then shows.
        let changes = backends::status_changes();
        let mut ids = BackendSet::new();
        let mut count = 0;
        for b in backends.iter().filter(|b| b.eligible_for_new()) {
            ids.insert(b.id);
            count += 1;
        }
        Up {
            changes,
            table: table_of(backends),
            count,
            ids,
        }
    }
}

fn table_of(backends: &[Arc<Backend>]) -> (usize, usize) {
    (backends.as_ptr() as usize, backends.len())
}

impl Balancer {
    /// Builds the ring and the rotate cycle for `backends` (indexes follow the slice).
    pub fn new(backends: &[Arc<Backend>]) -> Balancer {
        let ring = Ring::new(backends.iter().map(|b| (&*b.name, b.weight)));
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Balancer {
            ring,
            rotate: SmoothWrr::new(&weights),
            up: ArcSwapOption::empty(),
        }
    }

    /// Calls `f` with the backends in `backends` taking new sessions: the
    /// cached set while no state changed since it was taken, else a fresh
    /// one (cached for the next call). The cached one is borrowed, not
    /// cloned: a reference count every new session bumps would be one
    /// more cache line all cores write.
    fn with_up<T>(&self, backends: &[Arc<Backend>], f: impl FnOnce(&Up) -> T) -> T {
        let changes = backends::status_changes();
        let cached = self.up.load();
        if let Some(up) = cached.as_deref() {
            if up.changes == changes && up.table == table_of(backends) {
                return f(up);
            }
        }
        let up = Arc::new(Up::of(backends));
        self.up.store(Some(Arc::clone(&up)));
        f(&up)
    }

    /// The backend for a new session with ring key `key`: the first `up`
    /// backend on the ring whose live sessions stay under
    /// `factor` x the mean (Google's consistent hashing with bounded loads;
    /// `factor = 0` turns the bound off). If every eligible backend is at the
    /// bound, the first eligible one takes it anyway.
    ///
    /// Sums `load` over every `up` backend for the mean; the request path
    /// calls [`Balancer::pick_new_with`], which decides the same without
    /// that walk.
    pub fn pick_new(
        &self,
        key: u64,
        backends: &[Arc<Backend>],
        factor: f64,
        load: impl Fn(&Backend) -> u64,
    ) -> Option<usize> {
        let among = |up: &BackendSet| {
            backends
                .iter()
                .filter(|b| up.contains(b.id))
                .map(|b| load(b))
                .sum()
        };
        self.pick_new_with(key, backends, factor, &load, among)
    }

    /// [`Balancer::pick_new`], with the live sessions on the `up` backends
    /// (given as the set of their ids) answered by `among`: a store keeps
    /// a total and answers without visiting each backend. `load` is then
    /// read only for the candidates walked, and the states of all backends
    /// only after one of them changed.
    ///
    /// `backends` is the table this balancer was built for; its ids are
    /// distinct (names are).
    pub fn pick_new_with(
        &self,
        key: u64,
        backends: &[Arc<Backend>],
        factor: f64,
        load: impl Fn(&Backend) -> u64,
        among: impl FnOnce(&BackendSet) -> u64,
    ) -> Option<usize> {
        if factor <= 0.0 {
            return self
                .ring
                .first_where(key, |i| backends[i].eligible_for_new());
        }
        let (eligible, total) = self.with_up(backends, |up| match up.count {
            0 => (0, 0),
            n => (n, among(&up.ids)),
        });
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
    use crate::store::{BackendId, Insert, MemoryStore, Record, SessionKey};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

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

    /// `pick_new` as it was before the store kept a total: the eligible
    /// count and their sessions summed over every backend. The decisions
    /// must stay exactly these.
    fn reference_pick(
        bal: &Balancer,
        key: u64,
        backends: &[Arc<Backend>],
        factor: f64,
        load: impl Fn(&Backend) -> u64,
    ) -> Option<usize> {
        if factor <= 0.0 {
            return bal
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
        let cap = (factor * (total + 1) as f64 / eligible as f64).ceil() as u64;
        let mut first = None;
        for i in bal.ring.candidates(key) {
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

    /// A memory store holding `n` live sessions on each `(id, n)`.
    fn store_with(sessions: &[(u16, u64)]) -> MemoryStore {
        let store = MemoryStore::new(100_000, Duration::from_secs(60), Duration::from_secs(60));
        let mut k = 0u128;
        for &(id, n) in sessions {
            for _ in 0..n {
                k += 1;
                let rec = Record {
                    backend: BackendId(id),
                    created_ms: 1,
                    seen_ms: 1,
                };
                assert_eq!(store.insert(SessionKey(k << 64 | k), rec), Insert::Done);
            }
        }
        store
    }

    /// The request path's call: per-backend counts and the total over the
    /// backends taking new sessions, both from the store.
    fn pick_from(
        bal: &Balancer,
        key: u64,
        b: &[Arc<Backend>],
        store: &MemoryStore,
    ) -> Option<usize> {
        bal.pick_new_with(
            key,
            b,
            1.25,
            |x| store.sessions_on(x.id),
            |up| store.sessions_among(up),
        )
    }

    #[test]
    fn the_mean_counts_only_sessions_on_backends_taking_new_ones() {
        use State::{Disabled, Down, Draining, Up};
        // Backend 3 (or id 9, a backend a reload removed) holds 100
        // sessions. The home of each key below holds 4 and the others
        // none: counted right the mean gives cap ceil(1.25 * 5 / 3) = 3 and
        // the home is passed over; counting the 100 too would give a cap of
        // 44 and keep it.
        // (case, states of the backends in the table, other sessions by id)
        type Row<'a> = (&'a str, &'a [State], &'a [(u16, u64)]);
        let table: [Row; 5] = [
            (
                "a down backend with sessions",
                &[Up, Up, Up, Down],
                &[(3, 100)],
            ),
            ("a draining one", &[Up, Up, Up, Draining], &[(3, 100)]),
            ("a disabled one", &[Up, Up, Up, Disabled], &[(3, 100)]),
            ("a backend removed by reload", &[Up, Up, Up], &[(9, 100)]),
            (
                "removed, and one down",
                &[Up, Up, Up, Down],
                &[(9, 60), (3, 40)],
            ),
        ];
        for (case, states, others) in table {
            let b = pool(states.len());
            for (x, s) in b.iter().zip(states) {
                x.set_state(*s);
            }
            let bal = Balancer::new(&b);
            for key in 0..100u64 {
                let home = bal.pick_new(key, &b, 0.0, |_| 0).unwrap();
                let mut sessions = others.to_vec();
                sessions.push((home as u16, 4));
                let store = store_with(&sessions);
                let load = |x: &Backend| store.sessions_on(x.id);
                let picked = pick_from(&bal, key, &b, &store);
                assert_eq!(
                    picked,
                    reference_pick(&bal, key, &b, 1.25, load),
                    "{case}, key {key}"
                );
                let picked = picked.unwrap();
                assert_ne!(
                    picked, home,
                    "{case}, key {key}: the home is over the bound"
                );
                assert_eq!(b[picked].state(), Up, "{case}, key {key}");
            }
        }
    }

    #[test]
    fn with_every_backend_down_no_new_session_is_placed() {
        let b = pool(4);
        let bal = Balancer::new(&b);
        let store = store_with(&[(0, 5), (1, 5), (2, 5), (3, 5), (9, 5)]);
        assert!(pick_from(&bal, 7, &b, &store).is_some());
        for (i, s) in [State::Down, State::Draining, State::Disabled, State::Down]
            .into_iter()
            .enumerate()
        {
            b[i].set_state(s);
        }
        for key in 0..50u64 {
            assert_eq!(pick_from(&bal, key, &b, &store), None, "key {key}");
        }
        b[2].set_state(State::Up);
        assert_eq!(
            pick_from(&bal, 7, &b, &store),
            Some(2),
            "back up: picked again"
        );
    }

    #[test]
    fn decisions_follow_state_changes_and_match_the_full_sum() {
        // Uneven sessions over ten backends, one removed id holding some;
        // states change between picks, and every pick must be the one the
        // full sum gives.
        let b = pool(10);
        let bal = Balancer::new(&b);
        let store = store_with(&[
            (0, 30),
            (1, 2),
            (2, 9),
            (3, 0),
            (4, 17),
            (5, 1),
            (6, 8),
            (7, 3),
            (8, 25),
            (9, 11),
            (40, 50),
        ]);
        let load = |x: &Backend| store.sessions_on(x.id);
        let states = [State::Up, State::Down, State::Draining, State::Disabled];
        for round in 0..40usize {
            b[round % 10].set_state(states[(round / 10 + round) % 4]);
            for key in 0..64u64 {
                let key = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ round as u64;
                assert_eq!(
                    pick_from(&bal, key, &b, &store),
                    reference_pick(&bal, key, &b, 1.25, load),
                    "round {round}, key {key}"
                );
            }
        }
    }

    #[test]
    fn bounded_load_reads_only_the_candidates_it_walks() {
        // A thousand backends and no sessions: the first candidate is under
        // the bound, so one backend's count is all a pick needs.
        let b = pool(1000);
        let bal = Balancer::new(&b);
        let store = store_with(&[]);
        let reads = AtomicUsize::new(0);
        for key in 0..10u64 {
            reads.store(0, Ordering::Relaxed);
            let picked = bal.pick_new_with(
                key,
                &b,
                1.25,
                |x| {
                    reads.fetch_add(1, Ordering::Relaxed);
                    store.sessions_on(x.id)
                },
                |up| store.sessions_among(up),
            );
            assert_eq!(picked, bal.pick_new(key, &b, 0.0, |_| 0));
            assert_eq!(
                reads.load(Ordering::Relaxed),
                1,
                "key {key}: per-backend counts read"
            );
        }
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
