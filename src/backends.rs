//! Backend identity and live status.
//!
//! Identity (name, address, weight) comes from the config. Status is two
//! independent atomics, as pingora separates `Health` from `enabled`: what the
//! health checks observe (healthy or not) and what the operator set (normal,
//! draining, disabled). A draining backend that dies and recovers is draining
//! again, not up. The request path only reads them; the two eligibility rules
//! of SPEC section 3 live here and nowhere else.
//!
//! [`Names`] gives each backend name the small id the stores and metrics
//! index by, and takes it back once nothing can mean the name by it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::store::{BackendId, MAX_BACKEND_IDS};

// A reload may replace every configured backend while requests still hold the
// old ones, so the ids in use at once can reach twice the configured maximum.
const _: () = assert!(MAX_BACKEND_IDS >= 2 * crate::config::MAX_BACKENDS);

/// Bumped after every change of any backend's state, in any process-wide
/// table: a cache of who is `up` (the balancer's) is current while this has
/// not moved since it was built. One counter for all, since status changes
/// are rare (a health flip, an operator's switch) and a needless rebuild
/// costs one walk of the table, which is what every new session paid before.
static STATUS_CHANGES: AtomicU64 = AtomicU64::new(0);

/// How many backend state changes there have been; see [`STATUS_CHANGES`].
/// Read it *before* reading the states a cache is built from: a change that
/// lands during the walk then moves it past the cache's value.
#[inline]
pub fn status_changes() -> u64 {
    STATUS_CHANGES.load(Ordering::Acquire)
}

fn status_changed() {
    STATUS_CHANGES.fetch_add(1, Ordering::AcqRel);
}

/// A backend's status (SPEC section 6 `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Healthy: takes new and existing sessions.
    Up = 0,
    /// Failing checks or refusing connections: takes nothing.
    Down = 1,
    /// Operator drain: keeps its sessions, takes no new ones.
    Draining = 2,
    /// Operator switch: takes nothing; its sessions fail over.
    Disabled = 3,
}

impl State {
    /// The SPEC's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Draining => "draining",
            State::Disabled => "disabled",
        }
    }
}

/// The operator's switch, separate from observed health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Admin {
    /// Serve normally.
    Normal = 0,
    /// Keep existing sessions, take no new ones.
    Draining = 1,
    /// Take nothing; sessions fail over.
    Disabled = 2,
}

impl Admin {
    fn from_u8(v: u8) -> Admin {
        match v {
            0 => Admin::Normal,
            1 => Admin::Draining,
            _ => Admin::Disabled,
        }
    }
}

/// One configured backend: who it is, and how it is doing.
#[derive(Debug)]
pub struct Backend {
    /// Operator's name: the ring, the cookie, metrics and the admin API key on it.
    pub name: Arc<str>,
    /// Interned id of `name` for the session store.
    pub id: BackendId,
    /// `backend_tag(name)`, what the cookie carries.
    pub tag: u64,
    /// Where to connect.
    pub address: SocketAddr,
    /// Share of new sessions and rotated requests.
    pub weight: u32,
    healthy: AtomicBool,
    admin: AtomicU8,
    /// Consecutive passive failures (connect refused, reset); reset by a success.
    pub failure_streak: AtomicU32,
    /// Requests proxied to this backend.
    pub requests: AtomicU64,
    /// Requests that failed at this backend (connect, timeout, broken response).
    pub failures: AtomicU64,
    /// While draining: the session-clock time (ms) after which its sessions
    /// fail over; 0 = none (they stay until they end).
    drain_until_ms: AtomicU64,
    /// Keeps `id` meaning `name` for as long as this backend exists.
    lease: Option<Arc<IdLease>>,
}

impl Backend {
    /// A backend in state `up`.
    pub fn new(name: &str, id: BackendId, tag: u64, address: SocketAddr, weight: u32) -> Backend {
        Backend {
            name: Arc::from(name),
            id,
            tag,
            address,
            weight,
            healthy: AtomicBool::new(true),
            admin: AtomicU8::new(Admin::Normal as u8),
            failure_streak: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            drain_until_ms: AtomicU64::new(0),
            lease: None,
        }
    }

    /// A backend in state `up` whose id is held by `lease`: the id is not
    /// handed to another name while this backend (or any clone of the `Arc`
    /// around it, in a snapshot, a request or a probe) is alive.
    pub fn leased(lease: Arc<IdLease>, tag: u64, address: SocketAddr, weight: u32) -> Backend {
        let mut b = Backend::new(&lease.name, lease.id, tag, address, weight);
        b.name = lease.name.clone();
        b.lease = Some(lease);
        b
    }

    /// Current status: the operator's `disabled` wins, then observed health,
    /// then `draining`.
    #[inline]
    pub fn state(&self) -> State {
        match (self.admin(), self.healthy()) {
            (Admin::Disabled, _) => State::Disabled,
            (_, false) => State::Down,
            (Admin::Draining, true) => State::Draining,
            (Admin::Normal, true) => State::Up,
        }
    }

    /// The operator's switch.
    #[inline]
    pub fn admin(&self) -> Admin {
        Admin::from_u8(self.admin.load(Ordering::Relaxed))
    }

    /// What health checks (and passive detection) last concluded.
    #[inline]
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the operator's switch; returns the previous one. Any switch
    /// clears a drain deadline ([`Backend::drain_by`] sets one after).
    pub fn set_admin(&self, a: Admin) -> Admin {
        self.drain_until_ms.store(0, Ordering::Relaxed);
        let before = Admin::from_u8(self.admin.swap(a as u8, Ordering::Relaxed));
        if before != a {
            status_changed();
        }
        before
    }

    /// Drains with a deadline: from `until_ms` (session clock) the sessions
    /// still pinned here fail over. Returns the previous switch.
    pub fn drain_by(&self, until_ms: u64) -> Admin {
        let before = self.set_admin(Admin::Draining);
        self.drain_until_ms
            .store(until_ms.max(1), Ordering::Relaxed);
        before
    }

    /// The drain deadline, while draining with one.
    pub fn drain_deadline(&self) -> Option<u64> {
        let d = self.drain_until_ms.load(Ordering::Relaxed);
        (d != 0 && self.admin() == Admin::Draining).then_some(d)
    }

    /// Has a drain's deadline passed at `now_ms`? Its sessions then move.
    #[inline]
    pub fn drain_expired(&self, now_ms: u64) -> bool {
        self.drain_deadline().is_some_and(|d| now_ms >= d)
    }

    /// Records observed health; returns the previous value.
    pub fn set_healthy(&self, up: bool) -> bool {
        let before = self.healthy.swap(up, Ordering::Relaxed);
        if before != up {
            status_changed();
        }
        before
    }

    /// Sets both switches so that `state()` reads `s` (tests, and carrying
    /// status over a reload).
    pub fn set_state(&self, s: State) {
        let (healthy, admin) = match s {
            State::Up => (true, Admin::Normal),
            State::Down => (false, Admin::Normal),
            State::Draining => (true, Admin::Draining),
            State::Disabled => (self.healthy(), Admin::Disabled),
        };
        self.set_healthy(healthy);
        self.set_admin(admin);
    }

    /// Copies both switches, and a drain's deadline, from `other` (a reload
    /// that rebuilt this backend).
    pub fn inherit(&self, other: &Backend) {
        self.set_healthy(other.healthy());
        self.set_admin(other.admin());
        if let Some(d) = other.drain_deadline() {
            self.drain_by(d);
        }
    }

    /// A request found the backend unreachable (refused, reset). After
    /// `threshold` in a row it is marked down until active health checks
    /// bring it back. Returns true when this call marked it down.
    pub fn passive_failure(&self, threshold: u32) -> bool {
        let streak = self.failure_streak.fetch_add(1, Ordering::Relaxed) + 1;
        streak >= threshold && self.set_healthy(false)
    }

    /// A request succeeded: the passive streak starts over.
    #[inline]
    pub fn passive_success(&self) {
        if self.failure_streak.load(Ordering::Relaxed) != 0 {
            self.failure_streak.store(0, Ordering::Relaxed);
        }
    }

    /// May this backend take a session it does not hold yet? Only `up`.
    #[inline]
    pub fn eligible_for_new(&self) -> bool {
        self.state() == State::Up
    }

    /// May this backend keep serving a session pinned to it? `up` and `draining`.
    #[inline]
    pub fn eligible_for_existing(&self) -> bool {
        matches!(self.state(), State::Up | State::Draining)
    }
}

/// Every [`BackendId`] was in use: too many backend names are still
/// referenced (by the running configuration, and by older ones that requests
/// in flight still hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {MAX_BACKEND_IDS} backend names in use at once (the configuration and ones still held by requests in flight); try again when those requests have finished")]
pub struct NamesExhausted;

/// Interns backend names into small [`BackendId`]s.
///
/// A name keeps its id for as long as something holds its [`IdLease`]: each
/// [`Backend`] built for it does, so a reload that keeps a name keeps its id
/// (and its sessions). Once the last lease of a name is gone, no snapshot,
/// request or probe can use that id any more; the id is *retired*. Stores and
/// metrics may still hold records and counts under it, so a retired id is
/// handed out again only after the caller has scrubbed those (see
/// [`Names::take_retired`] and [`Names::release`]). Names may therefore come
/// and go without limit while at most [`MAX_BACKEND_IDS`] are held at once.
#[derive(Debug, Default, Clone)]
pub struct Names(Arc<Mutex<Interned>>);

#[derive(Debug, Default)]
struct Interned {
    by_name: HashMap<Arc<str>, Weak<IdLease>>,
    /// Ids below this were handed out at least once.
    fresh_from: usize,
    /// Leases gone; records under these ids may remain.
    retired: Vec<BackendId>,
    /// Scrubbed and free to reuse, oldest first.
    free: std::collections::VecDeque<BackendId>,
}

/// A name's hold on its id; see [`Names`].
#[derive(Debug)]
pub struct IdLease {
    id: BackendId,
    name: Arc<str>,
    names: Weak<Mutex<Interned>>,
}

impl IdLease {
    /// The id.
    pub fn id(&self) -> BackendId {
        self.id
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        let Some(names) = self.names.upgrade() else {
            return;
        };
        let mut m = lock(&names);
        // The entry may already belong to a newer lease of the same name
        // (created after this one's last strong reference went away).
        if m.by_name
            .get(&self.name)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), self))
        {
            m.by_name.remove(&self.name);
        }
        m.retired.push(self.id);
    }
}

/// Every update under the lock is a plain push or insert: a poisoned lock
/// still guards consistent data.
fn lock(m: &Mutex<Interned>) -> MutexGuard<'_, Interned> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Names {
    /// The lease on `name`'s id: the one it holds now, or a new id.
    ///
    /// Ids never handed out come first, then scrubbed ones oldest first, so
    /// an id is reused as late as possible.
    ///
    /// # Errors
    /// [`NamesExhausted`] when all [`MAX_BACKEND_IDS`] ids are held or not
    /// yet scrubbed.
    pub fn lease(&self, name: &str) -> Result<Arc<IdLease>, NamesExhausted> {
        let mut m = lock(&self.0);
        if let Some(held) = m.by_name.get(name).and_then(Weak::upgrade) {
            return Ok(held);
        }
        let id = if m.fresh_from < MAX_BACKEND_IDS {
            m.fresh_from += 1;
            BackendId((m.fresh_from - 1) as u16)
        } else {
            m.free.pop_front().ok_or(NamesExhausted)?
        };
        let name: Arc<str> = Arc::from(name);
        let lease = Arc::new(IdLease {
            id,
            name: name.clone(),
            names: Arc::downgrade(&self.0),
        });
        m.by_name.insert(name, Arc::downgrade(&lease));
        Ok(lease)
    }

    /// Ids whose names nothing holds any more. The caller scrubs what the
    /// stores and metrics keep under them, then gives them back with
    /// [`Names::release`]; until then they are not reused.
    pub fn take_retired(&self) -> Vec<BackendId> {
        std::mem::take(&mut lock(&self.0).retired)
    }

    /// Makes scrubbed ids available to new names.
    pub fn release(&self, ids: impl IntoIterator<Item = BackendId>) {
        lock(&self.0).free.extend(ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_id_while_leased_and_give_it_back_after_a_scrub() {
        let names = Names::default();
        let a = names.lease("a").unwrap();
        let again = names.lease("a").unwrap();
        assert!(Arc::ptr_eq(&a, &again), "one lease per name");
        let b = names.lease("b").unwrap();
        assert_ne!(a.id(), b.id());
        let (a_id, b_id) = (a.id(), b.id());
        drop((a, again));
        assert_eq!(names.take_retired(), vec![a_id]);
        assert!(names.take_retired().is_empty(), "taken once");
        // A name that returns after its lease ended gets a new id; the old
        // one is not reused before it was released.
        let a2 = names.lease("a").unwrap();
        assert_ne!(a2.id(), a_id);
        assert_ne!(a2.id(), b_id);
        names.release([a_id]);
        drop(b);
        assert_eq!(names.take_retired(), vec![b_id]);
    }

    #[test]
    fn ids_are_reused_only_after_release_and_oldest_first() {
        let names = Names::default();
        let mut held: Vec<_> = (0..MAX_BACKEND_IDS)
            .map(|i| names.lease(&format!("n{i}")).unwrap())
            .collect();
        assert_eq!(names.lease("one-too-many").unwrap_err(), NamesExhausted);
        let first = held.remove(0);
        let second = held.remove(0);
        let (id0, id1) = (first.id(), second.id());
        drop((second, first));
        assert_eq!(
            names.lease("x").unwrap_err(),
            NamesExhausted,
            "retired but not scrubbed: not reused"
        );
        let retired = names.take_retired();
        assert_eq!(retired, vec![id1, id0]);
        names.release(retired);
        assert_eq!(names.lease("x").unwrap().id(), id1);
        assert_eq!(names.lease("y").unwrap().id(), id0);
    }

    #[test]
    fn a_lease_outliving_its_interner_drops_quietly() {
        let names = Names::default();
        let a = names.lease("a").unwrap();
        drop(names);
        drop(a);
    }

    #[test]
    fn a_leased_backend_carries_its_name_and_id() {
        let names = Names::default();
        let lease = names.lease("app1").unwrap();
        let b = Backend::leased(lease.clone(), 9, "127.0.0.1:1".parse().unwrap(), 2);
        assert_eq!(
            (&*b.name, b.id, b.tag, b.weight),
            ("app1", lease.id(), 9, 2)
        );
        drop(lease);
        assert!(names.take_retired().is_empty(), "the backend holds it");
        let id = b.id;
        drop(b);
        assert_eq!(names.take_retired(), vec![id]);
    }

    #[test]
    fn operator_switch_survives_health_flaps() {
        let b = Backend::new("a", BackendId(0), 1, "127.0.0.1:1".parse().unwrap(), 1);
        b.set_admin(Admin::Draining);
        b.set_healthy(false);
        assert_eq!(b.state(), State::Down);
        b.set_healthy(true);
        assert_eq!(b.state(), State::Draining);
        b.set_admin(Admin::Disabled);
        assert_eq!(b.state(), State::Disabled);
    }

    #[test]
    fn passive_failures_mark_down_at_the_threshold_once() {
        let b = Backend::new("a", BackendId(0), 1, "127.0.0.1:1".parse().unwrap(), 1);
        assert!(!b.passive_failure(3));
        assert!(!b.passive_failure(3));
        assert!(b.passive_failure(3), "third failure marks it down");
        assert!(!b.passive_failure(3), "already down: not marked again");
        assert_eq!(b.state(), State::Down);
        b.passive_success();
        assert_eq!(b.failure_streak.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn eligibility_follows_spec_section_3() {
        let b = Backend::new("a", BackendId(0), 1, "127.0.0.1:1".parse().unwrap(), 1);
        let cases = [
            (State::Up, true, true),
            (State::Draining, false, true),
            (State::Down, false, false),
            (State::Disabled, false, false),
        ];
        for (s, new, existing) in cases {
            b.set_state(s);
            assert_eq!(b.eligible_for_new(), new, "{s:?}");
            assert_eq!(b.eligible_for_existing(), existing, "{s:?}");
        }
    }
}
