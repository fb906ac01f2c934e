//! Backend identity and live status.
//!
//! Identity (name, address, weight) comes from the config; status is an atomic
//! that the control plane (health checks, the admin API) may change at any time
//! while the request path only reads it. The two eligibility rules of SPEC
//! section 3 live here and nowhere else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
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

    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Up,
            1 => State::Down,
            2 => State::Draining,
            _ => State::Disabled,
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
    state: AtomicU8,
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
            state: AtomicU8::new(State::Up as u8),
            failure_streak: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Current status.
    #[inline]
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Sets the status; returns the previous one.
    pub fn set_state(&self, s: State) -> State {
        State::from_u8(self.state.swap(s as u8, Ordering::Relaxed))
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
