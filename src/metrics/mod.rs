//! Counters, gauges and histograms in atomics, and the names they render
//! under. The text itself is `render.rs`'s job.
//!
//! Everyone on the request path increments; only `admin/` reads, by calling
//! [`Metrics::render`]. Increments are single relaxed `fetch_add`s into arrays
//! allocated up front, so they take no lock and never allocate. What is a
//! reading rather than a count (a backend's state, its live sessions, the
//! uptime) is not stored here: the caller passes it to `render`.
//!
//! Backends are identified by a small index (the caller's interned backend id,
//! `BackendId.0 as usize`), below [`MAX_BACKEND_IDS`]. Their names are only
//! needed at render time, so a reload that renames nothing costs nothing here,
//! and a removed backend's counters simply stop being rendered.
//!
//! Metric names follow the Prometheus conventions (`tether_` prefix, `_total`
//! for counters, `_seconds` for durations) and all live in this file, below.

use crate::store::MAX_BACKEND_IDS;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod render;

// ---- names (one place, like sozu's metrics/names.rs) ----

/// Counter: responses sent, by backend and status class.
pub const REQUESTS_TOTAL: &str = "tether_requests_total";
/// Histogram: time from sending a request upstream to its response head, by backend.
pub const UPSTREAM_RESPONSE_SECONDS: &str = "tether_upstream_response_seconds";
/// Counter: session decisions, by state (SPEC section 3).
pub const SESSION_EVENTS_TOTAL: &str = "tether_session_events_total";
/// Counter: sessions that lost their pin, by reason.
pub const SESSION_PINS_LOST_TOTAL: &str = "tether_session_pins_lost_total";
/// Gauge: live sessions in the store.
pub const SESSIONS_LIVE: &str = "tether_sessions_live";
/// Gauge: live sessions pinned to each backend.
pub const BACKEND_SESSIONS: &str = "tether_backend_sessions";
/// Gauge: 1 for a backend's current state, 0 for the other three.
pub const BACKEND_STATE: &str = "tether_backend_state";
/// Gauge: seconds until a draining backend's deadline moves its sessions.
pub const BACKEND_DRAIN_SECONDS_LEFT: &str = "tether_backend_drain_seconds_left";
/// Gauge: a backend's configured weight.
pub const BACKEND_WEIGHT: &str = "tether_backend_weight";
/// Gauge: always 1; carries a backend's address as a label.
pub const BACKEND_INFO: &str = "tether_backend_info";
/// Counter: connections tether opened to a backend.
pub const UPSTREAM_CONNECTS_TOTAL: &str = "tether_upstream_connects_total";
/// Gauge: idle keep-alive connections pooled for a backend.
pub const UPSTREAM_IDLE_CONNECTIONS: &str = "tether_upstream_idle_connections";
/// Counter: active health probes, by backend and result.
pub const HEALTH_CHECKS_TOTAL: &str = "tether_health_checks_total";
/// Gauge: client connections open now.
pub const OPEN_CONNECTIONS: &str = "tether_open_connections";
/// Gauge: idle client connections parked (their HTTP state given up, only
/// the socket kept); counted in `tether_open_connections` too.
pub const PARKED_CONNECTIONS: &str = "tether_parked_connections";
/// Counter: TLS handshakes attempted (successful or not).
pub const TLS_HANDSHAKES_TOTAL: &str = "tether_tls_handshakes_total";
/// Counter: TLS handshakes that failed or timed out.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "tether_tls_handshake_failures_total";
/// Counter: TLS handshakes that resumed an earlier session.
pub const TLS_RESUMED_TOTAL: &str = "tether_tls_handshakes_resumed_total";
/// Counter: new sessions the store refused because it held `max_sessions`.
pub const STORE_FULL_TOTAL: &str = "tether_store_full_total";
/// Counter: cookies of bound sessions presented by another client.
pub const BINDING_MISMATCHES_TOTAL: &str = "tether_binding_mismatches_total";
/// Counter: requests refused with 429, by `limit`.
pub const RATE_LIMITED_TOTAL: &str = "tether_rate_limited_total";
/// Gauge: 1 while the session store answers, 0 while it does not (Redis down).
pub const STORE_UP: &str = "tether_store_up";
/// Counter: store operations that failed, timed out or were dropped (Redis).
pub const STORE_ERRORS_TOTAL: &str = "tether_store_errors_total";
/// Gauge: seconds since this process started serving.
pub const UPTIME_SECONDS: &str = "tether_uptime_seconds";
/// Gauge: always 1; carries the version as a label.
pub const BUILD_INFO: &str = "tether_build_info";

/// Backend label of requests tether answered itself, without a backend.
pub const NO_BACKEND_LABEL: &str = "-";

/// Upper bounds of the latency histogram buckets, in nanoseconds, compared
/// as integers so that `le` means exactly "less than or equal".
const BUCKET_NANOS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// The same bounds as `le` label values, spelled once so rendering never
/// depends on float formatting.
const BUCKET_LE: [&str; 13] = [
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10",
];
/// Finite buckets plus the overflow (`+Inf`) slot.
const SLOTS: usize = BUCKET_NANOS.len() + 1;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const STATES: [&str; 4] = ["up", "down", "draining", "disabled"];

/// A session decision (SPEC section 3), for `tether_session_events_total{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// No usable session: one was started.
    New,
    /// The session kept its backend.
    Continued,
    /// The session was over (a timeout) and a new one started.
    Expired,
    /// The session's backend was not eligible; it was re-pinned.
    Failover,
    /// Rotate mode: no session, the next backend in turn.
    Rotated,
}

impl SessionEvent {
    const ALL: [SessionEvent; 5] = [
        SessionEvent::New,
        SessionEvent::Continued,
        SessionEvent::Expired,
        SessionEvent::Failover,
        SessionEvent::Rotated,
    ];

    /// The label value (SPEC's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEvent::New => "new",
            SessionEvent::Continued => "continued",
            SessionEvent::Expired => "expired",
            SessionEvent::Failover => "failover",
            SessionEvent::Rotated => "rotated",
        }
    }
}

/// Why a session lost its pin, for `tether_session_pins_lost_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinLost {
    /// No request for `idle_timeout`.
    Idle,
    /// `absolute_timeout` since the session began.
    Absolute,
    /// The backend ended it (`Tether-Session-Control: end`).
    Ended,
    /// The backend replaced its id (`Tether-Session-Control: regenerate`).
    Regenerated,
    /// Its backend was down.
    BackendDown,
    /// Its backend was disabled by the operator.
    BackendDisabled,
    /// Its backend was removed from the config.
    BackendRemoved,
    /// Its backend's drain deadline passed.
    DrainDeadline,
}

impl PinLost {
    const ALL: [PinLost; 8] = [
        PinLost::Idle,
        PinLost::Absolute,
        PinLost::Ended,
        PinLost::Regenerated,
        PinLost::BackendDown,
        PinLost::BackendDisabled,
        PinLost::BackendRemoved,
        PinLost::DrainDeadline,
    ];

    /// The label value, snake_case.
    pub fn as_str(self) -> &'static str {
        match self {
            PinLost::Idle => "idle",
            PinLost::Absolute => "absolute",
            PinLost::Ended => "ended",
            PinLost::Regenerated => "regenerated",
            PinLost::BackendDown => "backend_down",
            PinLost::BackendDisabled => "backend_disabled",
            PinLost::BackendRemoved => "backend_removed",
            PinLost::DrainDeadline => "drain_deadline",
        }
    }
}

/// What `render` needs to know about one backend, read by the caller at
/// render time. Names must be unique across the slice (they are in a valid
/// config), or series would repeat.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView {
    /// The operator's name: the `backend` label.
    pub name: String,
    /// Where tether connects, for `tether_backend_info`.
    pub address: String,
    /// Configured weight.
    pub weight: u32,
    /// `up`, `down`, `draining` or `disabled`.
    pub state: &'static str,
    /// Live sessions pinned there.
    pub sessions: u64,
    /// The index this backend's counters were incremented under.
    pub index: usize,
    /// While draining with a deadline: seconds left until it passes (0 once
    /// it has).
    pub drain_secs_left: Option<f64>,
    /// Connections opened to it (since its address, protocol or TLS
    /// settings last changed).
    pub upstream_connects: u64,
    /// Idle keep-alive connections pooled for it now.
    pub upstream_idle: u64,
}

/// Per-backend counters, one cache-unfriendly but lock-free block each.
#[derive(Default)]
struct PerBackend {
    requests: [AtomicU64; CLASSES.len()],
    health: [AtomicU64; 2],
    latency: Histogram,
}

/// Latency histogram. Slots are *not* cumulative when stored (one
/// `fetch_add` per observation); `render` accumulates. The count is the sum
/// of the slots, so the rendered `+Inf` bucket and `_count` always agree even
/// while other threads observe.
#[derive(Default)]
struct Histogram {
    slots: [AtomicU64; SLOTS],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        // Saturate rather than wrap: 2^64 ns is 584 years.
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let slot = BUCKET_NANOS.partition_point(|&le| le < nanos);
        self.slots[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// All of tether's counters. Share it as `Arc<Metrics>`; every method takes
/// `&self` and is a handful of relaxed atomic adds.
pub struct Metrics {
    /// `MAX_BACKEND_IDS` entries, plus one trailing entry for "no backend".
    backends: Box<[PerBackend]>,
    session_events: [AtomicU64; SessionEvent::ALL.len()],
    pins_lost: [AtomicU64; PinLost::ALL.len()],
    open_connections: AtomicI64,
    parked_connections: AtomicI64,
    tls_handshakes: AtomicU64,
    tls_resumed: AtomicU64,
    tls_failures: AtomicU64,
    store_full: AtomicU64,
    binding_mismatches: AtomicU64,
    /// [session, new_session]
    rate_limited: [AtomicU64; 2],
    store_up: AtomicU64,
    store_errors: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Zeroed metrics with room for [`MAX_BACKEND_IDS`] backend indexes
    /// (about 700 KiB, allocated once).
    pub fn new() -> Metrics {
        Metrics {
            backends: (0..=MAX_BACKEND_IDS)
                .map(|_| PerBackend::default())
                .collect(),
            session_events: Default::default(),
            pins_lost: Default::default(),
            open_connections: AtomicI64::new(0),
            parked_connections: AtomicI64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_resumed: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            store_full: AtomicU64::new(0),
            binding_mismatches: AtomicU64::new(0),
            rate_limited: [AtomicU64::new(0), AtomicU64::new(0)],
            store_up: AtomicU64::new(1),
            store_errors: AtomicU64::new(0),
        }
    }

    /// The slot for a backend index, or `None` when it is out of range. An
    /// out-of-range index is the caller's bug, but a metric is not worth
    /// failing a request for: it is dropped (and asserted in debug builds).
    fn backend(&self, index: usize) -> Option<&PerBackend> {
        debug_assert!(
            index < MAX_BACKEND_IDS,
            "backend index {index} out of range"
        );
        self.backends[..MAX_BACKEND_IDS].get(index)
    }

    /// Zeroes a backend index's counters before it is given to another
    /// backend name, so the new name's series start from nothing (a counter
    /// under a new label set starting at zero is what Prometheus expects).
    pub fn reset_backend(&self, index: usize) {
        let Some(per) = self.backends[..MAX_BACKEND_IDS].get(index) else {
            return;
        };
        let zero = |a: &AtomicU64| a.store(0, Ordering::Relaxed);
        per.requests.iter().for_each(zero);
        per.health.iter().for_each(zero);
        per.latency.slots.iter().for_each(zero);
        zero(&per.latency.sum_nanos);
    }

    fn no_backend(&self) -> &PerBackend {
        &self.backends[MAX_BACKEND_IDS]
    }

    /// Counts one response sent to a client. `backend` is the index of the
    /// backend that answered, or `None` when tether answered itself (a 400,
    /// 429, 503 with no eligible backend...): that is the `backend="-"` series.
    /// A status outside 100..=599 counts in the nearest class.
    pub fn request(&self, backend: Option<usize>, status: u16) {
        let per = match backend {
            Some(i) => match self.backend(i) {
                Some(per) => per,
                None => return,
            },
            None => self.no_backend(),
        };
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        per.requests[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long `backend` took to answer (request sent → response head).
    pub fn upstream_latency(&self, backend: usize, took: Duration) {
        if let Some(per) = self.backend(backend) {
            per.latency.observe(took);
        }
    }

    /// Counts one session decision.
    pub fn session(&self, event: SessionEvent) {
        self.session_events[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one session that lost its pin.
    pub fn pin_lost(&self, reason: PinLost) {
        self.pins_lost[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one active health probe of `backend`.
    pub fn health_check(&self, backend: usize, ok: bool) {
        if let Some(per) = self.backend(backend) {
            per.health[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client connection was accepted. Pair with [`Metrics::connection_closed`],
    /// or use [`Metrics::open_connection`], which cannot forget.
    pub fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection ended.
    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a connection as open until the returned guard drops, so a
    /// connection task that is cancelled or panics still closes its count.
    pub fn open_connection(self: &Arc<Self>) -> OpenConnection {
        self.connection_opened();
        OpenConnection(Arc::clone(self))
    }

    /// Counts a connection as parked until the returned guard drops.
    pub fn parked(self: &Arc<Self>) -> Parked {
        self.parked_connections.fetch_add(1, Ordering::Relaxed);
        Parked(Arc::clone(self))
    }

    /// Counts one TLS handshake attempt and, when `ok` is false, one failure.
    pub fn tls_handshake(&self, ok: bool) {
        self.tls_handshakes.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.tls_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A TLS handshake that succeeded resumed an earlier session.
    pub fn tls_resumed(&self) {
        self.tls_resumed.fetch_add(1, Ordering::Relaxed);
    }

    /// A bound session's cookie came back from another client.
    pub fn binding_mismatch(&self) {
        self.binding_mismatches.fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused with 429; `new_session` says which limit.
    pub fn rate_limited(&self, new_session: bool) {
        self.rate_limited[usize::from(new_session)].fetch_add(1, Ordering::Relaxed);
    }

    /// Records whether the store answers (the Redis store sets it on each
    /// change; the memory store always answers, the default).
    pub fn set_store_up(&self, up: bool) {
        self.store_up.store(u64::from(up), Ordering::Relaxed);
    }

    /// Counts `n` store operations that failed, timed out or were dropped.
    pub fn store_errors(&self, n: u64) {
        self.store_errors.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one new session refused because the store was full.
    pub fn store_full(&self) {
        self.store_full.fetch_add(1, Ordering::Relaxed);
    }

    /// The request count for `backend` (all classes), for the status page.
    pub fn requests_of(&self, backend: usize) -> u64 {
        self.backend(backend)
            .map(|per| per.requests.iter().map(load).sum())
            .unwrap_or(0)
    }

    /// Totals for the status page's history: responses and 5xx of the
    /// backends at `indexes` and of tether's own answers, their upstream
    /// latency, and the sessions moved off their backend.
    pub fn totals(&self, indexes: impl Iterator<Item = usize>) -> crate::history::Totals {
        let mut t = crate::history::Totals {
            latency: vec![0; SLOTS],
            ..Default::default()
        };
        let mut add = |per: &PerBackend| {
            t.requests += per.requests.iter().map(load).sum::<u64>();
            t.server_errors += load(&per.requests[4]);
            for (sum, slot) in t.latency.iter_mut().zip(&per.latency.slots) {
                *sum += load(slot);
            }
        };
        indexes.filter_map(|i| self.backend(i)).for_each(&mut add);
        add(self.no_backend());
        t.moved = [
            PinLost::BackendDown,
            PinLost::BackendDisabled,
            PinLost::BackendRemoved,
            PinLost::DrainDeadline,
        ]
        .iter()
        .filter_map(|r| PinLost::ALL.iter().position(|a| a == r))
        .map(|i| load(&self.pins_lost[i]))
        .sum();
        t
    }

    /// The upper bounds of the latency histogram's buckets, in ms (the
    /// last slot, past them, has none).
    pub fn latency_bounds_ms() -> Vec<f64> {
        BUCKET_NANOS.iter().map(|&n| n as f64 / 1e6).collect()
    }

    /// Whether the session store answered last.
    pub fn store_is_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed) != 0
    }

    /// The 5xx count for `backend`, for the status page.
    pub fn server_errors_of(&self, backend: usize) -> u64 {
        self.backend(backend)
            .map(|per| load(&per.requests[4]))
            .unwrap_or(0)
    }
}

/// Holds one open connection in `tether_open_connections`; see
/// [`Metrics::open_connection`].
#[derive(Debug)]
pub struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// Holds one connection in `tether_parked_connections`; see
/// [`Metrics::parked`].
#[derive(Debug)]
pub struct Parked(Arc<Metrics>);

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.parked_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

fn load(n: &AtomicU64) -> u64 {
    n.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests;
