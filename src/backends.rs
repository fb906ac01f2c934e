//! Backend identity and live status.
//!
//! Identity (name, address, weight) comes from the config. Status is two
//! independent atomics, as pingora separates `Health` from `enabled`: what the
//! health checks observe (healthy or not) and what the operator set (normal,
//! draining, disabled). A draining backend that dies and recovers is draining
//! again, not up. The request path only reads them; the two eligibility rules
//! of SPEC section 3 live here and nowhere else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::store::BackendId;

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
        }
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

    /// Sets the operator's switch; returns the previous one.
    pub fn set_admin(&self, a: Admin) -> Admin {
        Admin::from_u8(self.admin.swap(a as u8, Ordering::Relaxed))
    }

    /// Records observed health; returns the previous value.
    pub fn set_healthy(&self, up: bool) -> bool {
        self.healthy.swap(up, Ordering::Relaxed)
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

    /// Copies both switches from `other` (a reload that rebuilt this backend).
    pub fn inherit(&self, other: &Backend) {
        self.set_healthy(other.healthy());
        self.set_admin(other.admin());
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

#[cfg(test)]
mod tests {
    use super::*;

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
