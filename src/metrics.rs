//! Counters, gauges and histograms in atomics, and their Prometheus text.
//!
//! Everyone on the request path increments; only `admin/` reads, by calling
//! [`Metrics::render`]. Increments are single relaxed `fetch_add`s into arrays
//! allocated up front, so they take no lock and never allocate. What is a
//! reading rather than a count (a backend's state, its live sessions, the
//! uptime) is not stored here: the caller passes it to `render`.
//!
//! Backends are identified by a small index (the caller's interned backend id,
//! `BackendId.0 as usize`), below [`MAX_BACKENDS`]. Their names are only
//! needed at render time, so a reload that renames nothing costs nothing here,
//! and a removed backend's counters simply stop being rendered.
//!
//! Metric names follow the Prometheus conventions (`tether_` prefix, `_total`
//! for counters, `_seconds` for durations) and all live in this file, below.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
/// Gauge: a backend's configured weight.
pub const BACKEND_WEIGHT: &str = "tether_backend_weight";
/// Gauge: always 1; carries a backend's address as a label.
pub const BACKEND_INFO: &str = "tether_backend_info";
/// Counter: active health probes, by backend and result.
pub const HEALTH_CHECKS_TOTAL: &str = "tether_health_checks_total";
/// Gauge: client connections open now.
pub const OPEN_CONNECTIONS: &str = "tether_open_connections";
/// Counter: TLS handshakes attempted (successful or not).
pub const TLS_HANDSHAKES_TOTAL: &str = "tether_tls_handshakes_total";
/// Counter: TLS handshakes that failed or timed out.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "tether_tls_handshake_failures_total";
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

/// How many backend indexes the per-backend arrays hold (`0..MAX_BACKENDS`).
/// The same bound as the store's `MAX_BACKEND_IDS`, so any interned id fits.
pub const MAX_BACKENDS: usize = 4096;

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
}

impl PinLost {
    const ALL: [PinLost; 7] = [
        PinLost::Idle,
        PinLost::Absolute,
        PinLost::Ended,
        PinLost::Regenerated,
        PinLost::BackendDown,
        PinLost::BackendDisabled,
        PinLost::BackendRemoved,
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
    /// `MAX_BACKENDS` entries, plus one trailing entry for "no backend".
    backends: Box<[PerBackend]>,
    session_events: [AtomicU64; SessionEvent::ALL.len()],
    pins_lost: [AtomicU64; PinLost::ALL.len()],
    open_connections: AtomicI64,
    tls_handshakes: AtomicU64,
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
    /// Zeroed metrics with room for [`MAX_BACKENDS`] backend indexes
    /// (about 700 KiB, allocated once).
    pub fn new() -> Metrics {
        Metrics {
            backends: (0..=MAX_BACKENDS).map(|_| PerBackend::default()).collect(),
            session_events: Default::default(),
            pins_lost: Default::default(),
            open_connections: AtomicI64::new(0),
            tls_handshakes: AtomicU64::new(0),
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
        debug_assert!(index < MAX_BACKENDS, "backend index {index} out of range");
        self.backends[..MAX_BACKENDS].get(index)
    }

    /// Zeroes a backend index's counters before it is given to another
    /// backend name, so the new name's series start from nothing (a counter
    /// under a new label set starting at zero is what Prometheus expects).
    pub fn reset_backend(&self, index: usize) {
        let Some(per) = self.backends[..MAX_BACKENDS].get(index) else {
            return;
        };
        let zero = |a: &AtomicU64| a.store(0, Ordering::Relaxed);
        per.requests.iter().for_each(zero);
        per.health.iter().for_each(zero);
        per.latency.slots.iter().for_each(zero);
        zero(&per.latency.sum_nanos);
    }

    fn no_backend(&self) -> &PerBackend {
        &self.backends[MAX_BACKENDS]
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

    /// Counts one TLS handshake attempt and, when `ok` is false, one failure.
    pub fn tls_handshake(&self, ok: bool) {
        self.tls_handshakes.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.tls_failures.fetch_add(1, Ordering::Relaxed);
        }
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

    /// The 5xx count for `backend`, for the status page.
    pub fn server_errors_of(&self, backend: usize) -> u64 {
        self.backend(backend)
            .map(|per| load(&per.requests[4]))
            .unwrap_or(0)
    }

    /// Prometheus text exposition format 0.0.4
    /// (`Content-Type: text/plain; version=0.0.4`).
    ///
    /// Only the backends in `backends` are rendered, under their names (a view
    /// whose index is not below [`MAX_BACKENDS`] is skipped); the
    /// gauges that are readings (`live_sessions`, `uptime_secs` and each
    /// view's state and sessions) come from the caller.
    pub fn render(&self, backends: &[BackendView], live_sessions: u64, uptime_secs: f64) -> String {
        let mut out = String::with_capacity(2048 + backends.len() * 2048);
        let o = &mut out;
        let views: Vec<(&BackendView, &PerBackend)> = backends
            .iter()
            .filter_map(|v| self.backends[..MAX_BACKENDS].get(v.index).map(|p| (v, p)))
            .collect();

        family(o, BUILD_INFO, "gauge", "Always 1; the version is a label.");
        line(
            o,
            BUILD_INFO,
            &[("version", env!("CARGO_PKG_VERSION"))],
            "1",
        );
        family(o, UPTIME_SECONDS, "gauge", "Seconds since tether started.");
        line(o, UPTIME_SECONDS, &[], &float(uptime_secs));
        family(o, OPEN_CONNECTIONS, "gauge", "Client connections open now.");
        let open = self.open_connections.load(Ordering::Relaxed);
        line(o, OPEN_CONNECTIONS, &[], &open.to_string());

        family(
            o,
            REQUESTS_TOTAL,
            "counter",
            "Responses sent to clients, by backend (\"-\": answered by tether) and status class.",
        );
        let no_backend = (NO_BACKEND_LABEL, self.no_backend());
        let rows = views.iter().map(|(v, p)| (v.name.as_str(), *p));
        for (name, per) in rows.chain(std::iter::once(no_backend)) {
            for (class, n) in CLASSES.iter().zip(&per.requests) {
                let labels = [("backend", name), ("class", *class)];
                line(o, REQUESTS_TOTAL, &labels, &load(n).to_string());
            }
        }

        family(
            o,
            UPSTREAM_RESPONSE_SECONDS,
            "histogram",
            "Time from sending a request to a backend to receiving its response head.",
        );
        let bucket = format!("{UPSTREAM_RESPONSE_SECONDS}_bucket");
        let sum = format!("{UPSTREAM_RESPONSE_SECONDS}_sum");
        let count = format!("{UPSTREAM_RESPONSE_SECONDS}_count");
        for (v, per) in &views {
            let h = &per.latency;
            let mut cumulative = 0;
            for (i, n) in h.slots.iter().enumerate() {
                cumulative += load(n);
                let le = BUCKET_LE.get(i).copied().unwrap_or("+Inf");
                let labels = [("backend", v.name.as_str()), ("le", le)];
                line(o, &bucket, &labels, &cumulative.to_string());
            }
            let labels = [("backend", v.name.as_str())];
            let secs = load(&h.sum_nanos) as f64 / 1e9;
            line(o, &sum, &labels, &float(secs));
            line(o, &count, &labels, &cumulative.to_string());
        }

        family(
            o,
            SESSION_EVENTS_TOTAL,
            "counter",
            "Session decisions: new, continued, expired, failover, rotated.",
        );
        for (e, n) in SessionEvent::ALL.iter().zip(&self.session_events) {
            let labels = [("state", e.as_str())];
            line(o, SESSION_EVENTS_TOTAL, &labels, &load(n).to_string());
        }
        family(
            o,
            SESSION_PINS_LOST_TOTAL,
            "counter",
            "Sessions that lost their backend pin, by reason.",
        );
        for (r, n) in PinLost::ALL.iter().zip(&self.pins_lost) {
            let labels = [("reason", r.as_str())];
            line(o, SESSION_PINS_LOST_TOTAL, &labels, &load(n).to_string());
        }
        family(o, SESSIONS_LIVE, "gauge", "Live sessions in the store.");
        line(o, SESSIONS_LIVE, &[], &live_sessions.to_string());
        family(
            o,
            STORE_FULL_TOTAL,
            "counter",
            "New sessions not stored because the store held max_sessions.",
        );
        line(
            o,
            STORE_FULL_TOTAL,
            &[],
            &load(&self.store_full).to_string(),
        );
        family(
            o,
            BINDING_MISMATCHES_TOTAL,
            "counter",
            "Bound session cookies presented by a client whose traits differ.",
        );
        line(
            o,
            BINDING_MISMATCHES_TOTAL,
            &[],
            &load(&self.binding_mismatches).to_string(),
        );
        family(
            o,
            RATE_LIMITED_TOTAL,
            "counter",
            "Requests refused with 429, by limit.",
        );
        for (limit, n) in ["session", "new_session"].iter().zip(&self.rate_limited) {
            line(
                o,
                RATE_LIMITED_TOTAL,
                &[("limit", limit)],
                &load(n).to_string(),
            );
        }
        family(
            o,
            STORE_UP,
            "gauge",
            "1 while the session store answers, 0 while it does not (Redis unreachable or slow).",
        );
        line(o, STORE_UP, &[], &load(&self.store_up).to_string());
        family(
            o,
            STORE_ERRORS_TOTAL,
            "counter",
            "Session store operations that failed, timed out, or were dropped while the store was down.",
        );
        line(
            o,
            STORE_ERRORS_TOTAL,
            &[],
            &load(&self.store_errors).to_string(),
        );

        family(
            o,
            BACKEND_SESSIONS,
            "gauge",
            "Live sessions pinned to each backend.",
        );
        for (v, _) in &views {
            let labels = [("backend", v.name.as_str())];
            line(o, BACKEND_SESSIONS, &labels, &v.sessions.to_string());
        }
        family(
            o,
            BACKEND_STATE,
            "gauge",
            "1 for the backend's current state (up, down, draining, disabled), else 0.",
        );
        for (v, _) in &views {
            for s in STATES {
                let value = if s == v.state { "1" } else { "0" };
                line(
                    o,
                    BACKEND_STATE,
                    &[("backend", &v.name), ("state", s)],
                    value,
                );
            }
        }
        family(
            o,
            BACKEND_WEIGHT,
            "gauge",
            "Configured weight of each backend.",
        );
        for (v, _) in &views {
            let labels = [("backend", v.name.as_str())];
            line(o, BACKEND_WEIGHT, &labels, &v.weight.to_string());
        }
        family(
            o,
            BACKEND_INFO,
            "gauge",
            "Always 1; the address is a label.",
        );
        for (v, _) in &views {
            let labels = [("backend", v.name.as_str()), ("address", &v.address)];
            line(o, BACKEND_INFO, &labels, "1");
        }
        family(
            o,
            HEALTH_CHECKS_TOTAL,
            "counter",
            "Active health probes, by backend and result.",
        );
        for (v, per) in &views {
            for (result, n) in ["ok", "fail"].iter().zip(&per.health) {
                let labels = [("backend", v.name.as_str()), ("result", *result)];
                line(o, HEALTH_CHECKS_TOTAL, &labels, &load(n).to_string());
            }
        }

        family(
            o,
            TLS_HANDSHAKES_TOTAL,
            "counter",
            "TLS handshakes attempted, successful or not.",
        );
        let n = load(&self.tls_handshakes);
        line(o, TLS_HANDSHAKES_TOTAL, &[], &n.to_string());
        family(
            o,
            TLS_HANDSHAKE_FAILURES_TOTAL,
            "counter",
            "TLS handshakes that failed or timed out.",
        );
        let n = load(&self.tls_failures);
        line(o, TLS_HANDSHAKE_FAILURES_TOTAL, &[], &n.to_string());
        out
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

fn load(n: &AtomicU64) -> u64 {
    n.load(Ordering::Relaxed)
}

/// `# HELP` and `# TYPE` for one family. Help texts are constants here and
/// contain no backslash or newline, which are the two characters HELP escapes.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    debug_assert!(!help.contains(['\\', '\n']));
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line: `name{k="v",...} value`.
fn line(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label(out, v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Label values escape `\`, `"` and newline (text format 0.0.4).
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as the format spells it: Rust's `inf` is not Prometheus's `+Inf`.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// Fails with the whole text when `line` is not one of its lines.
    macro_rules! assert_contains_metric {
        ($text:expr, $line:expr) => {{
            let text: &str = &$text;
            let want: &str = &$line;
            assert!(
                text.lines().any(|l| l == want),
                "no line `{want}` in:\n{text}"
            );
        }};
    }

    fn view(name: &str, index: usize, state: &'static str, sessions: u64) -> BackendView {
        BackendView {
            name: name.to_owned(),
            address: format!("127.0.0.1:{}", 8000 + index),
            weight: 1,
            state,
            sessions,
            index,
        }
    }

    fn two() -> Vec<BackendView> {
        vec![view("a", 0, "up", 3), view("b", 7, "draining", 1)]
    }

    /// A small parser for the text format: checks the shape of every line and
    /// returns the samples as `series -> value`, where series is
    /// `name{labels}` exactly as written.
    fn parse(text: &str) -> HashMap<String, f64> {
        let mut samples = HashMap::new();
        let mut typed: HashMap<String, String> = HashMap::new();
        let mut helped: HashSet<String> = HashSet::new();
        let mut seen_families: Vec<String> = Vec::new();
        assert!(text.ends_with('\n'), "text must end with a newline");
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a text");
                assert!(!help.is_empty());
                assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
                continue;
            }
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "kind {kind}"
                );
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert!(
                    typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "TYPE twice for {name}"
                );
                seen_families.push(name.to_owned());
                continue;
            }
            assert!(!l.starts_with('#'), "stray comment {l}");
            let (series, value) = l.rsplit_once(' ').expect("sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {l}")),
            };
            let name = series.split('{').next().unwrap();
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    && !name.starts_with(|c: char| c.is_ascii_digit()),
                "bad name in {l}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    check_labels(labels, l);
                }
            }
            // The family is the name itself or, for histograms, minus a suffix.
            let family = seen_families.last().expect("sample before any TYPE");
            let ok = name == family
                || (typed[family] == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name == format!("{family}{s}")));
            assert!(ok, "sample {name} outside its family {family}");
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "duplicate series {series}"
            );
        }
        samples
    }

    /// `{k="v",...}` with only escaped quotes, backslashes and newlines inside values.
    fn check_labels(labels: &str, l: &str) {
        let inner = labels
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or_else(|| panic!("bad label braces in {l}"));
        let mut chars = inner.chars().peekable();
        loop {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            assert!(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad label name in {l}"
            );
            assert_eq!(chars.next(), Some('"'), "label value unquoted in {l}");
            loop {
                match chars.next() {
                    Some('\\') => assert!(
                        matches!(chars.next(), Some('\\' | '"' | 'n')),
                        "bad escape in {l}"
                    ),
                    Some('"') => break,
                    Some('\n') | None => panic!("unterminated label value in {l}"),
                    Some(_) => {}
                }
            }
            match chars.next() {
                Some(',') => continue,
                None => break,
                Some(c) => panic!("unexpected {c} after label value in {l}"),
            }
        }
    }

    #[test]
    fn max_backends_matches_the_store() {
        assert_eq!(MAX_BACKENDS, crate::store::MAX_BACKEND_IDS);
    }

    #[test]
    fn a_reset_backend_index_starts_from_zero() {
        let m = Metrics::new();
        m.request(Some(3), 200);
        m.health_check(3, true);
        m.upstream_latency(3, Duration::from_millis(2));
        m.request(Some(4), 500);
        m.reset_backend(3);
        m.reset_backend(MAX_BACKENDS + 7);
        assert_eq!((m.requests_of(3), m.requests_of(4)), (0, 1));
        let text = m.render(
            &[BackendView {
                name: "fresh".into(),
                address: "127.0.0.1:1".into(),
                weight: 1,
                state: "up",
                sessions: 0,
                index: 3,
            }],
            0,
            0.0,
        );
        let counted = text.lines().filter(|l| {
            l.contains("backend=\"fresh\"")
                && [
                    REQUESTS_TOTAL,
                    HEALTH_CHECKS_TOTAL,
                    UPSTREAM_RESPONSE_SECONDS,
                ]
                .iter()
                .any(|m| l.starts_with(m))
        });
        let mut n = 0;
        for line in counted {
            n += 1;
            assert!(line.ends_with(" 0"), "{line}");
        }
        assert!(n > 0, "{text}");
    }

    #[test]
    fn counters_render_as_lines() {
        let m = Metrics::new();
        m.request(Some(0), 200);
        m.request(Some(0), 204);
        m.request(Some(0), 503);
        m.request(Some(7), 302);
        m.request(Some(7), 101);
        m.request(None, 429);
        m.request(None, 503);
        m.session(SessionEvent::New);
        m.session(SessionEvent::Continued);
        m.session(SessionEvent::Continued);
        m.pin_lost(PinLost::BackendDisabled);
        m.health_check(0, true);
        m.health_check(0, false);
        m.health_check(7, true);
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.tls_handshake(true);
        m.tls_handshake(false);
        m.store_full();
        m.store_errors(3);
        m.set_store_up(false);

        let t = m.render(&two(), 4, 12.5);
        for want in [
            r#"tether_requests_total{backend="a",class="2xx"} 2"#,
            r#"tether_requests_total{backend="a",class="5xx"} 1"#,
            r#"tether_requests_total{backend="a",class="4xx"} 0"#,
            r#"tether_requests_total{backend="b",class="3xx"} 1"#,
            r#"tether_requests_total{backend="b",class="1xx"} 1"#,
            r#"tether_requests_total{backend="-",class="4xx"} 1"#,
            r#"tether_requests_total{backend="-",class="5xx"} 1"#,
            r#"tether_session_events_total{state="new"} 1"#,
            r#"tether_session_events_total{state="continued"} 2"#,
            r#"tether_session_events_total{state="rotated"} 0"#,
            r#"tether_session_pins_lost_total{reason="backend_disabled"} 1"#,
            r#"tether_session_pins_lost_total{reason="idle"} 0"#,
            r#"tether_health_checks_total{backend="a",result="ok"} 1"#,
            r#"tether_health_checks_total{backend="a",result="fail"} 1"#,
            r#"tether_health_checks_total{backend="b",result="ok"} 1"#,
            "tether_open_connections 1",
            "tether_tls_handshakes_total 2",
            "tether_tls_handshake_failures_total 1",
            "tether_store_full_total 1",
            "tether_store_up 0",
            "tether_store_errors_total 3",
            "tether_sessions_live 4",
            "tether_uptime_seconds 12.5",
            r#"tether_backend_sessions{backend="a"} 3"#,
            r#"tether_backend_sessions{backend="b"} 1"#,
            r#"tether_backend_state{backend="b",state="draining"} 1"#,
            r#"tether_backend_state{backend="b",state="up"} 0"#,
            r#"tether_backend_state{backend="a",state="up"} 1"#,
            r#"tether_backend_weight{backend="a"} 1"#,
            r#"tether_backend_info{backend="a",address="127.0.0.1:8000"} 1"#,
            concat!(
                r#"tether_build_info{version=""#,
                env!("CARGO_PKG_VERSION"),
                r#""} 1"#
            ),
            "# TYPE tether_requests_total counter",
            "# TYPE tether_upstream_response_seconds histogram",
            "# TYPE tether_sessions_live gauge",
        ] {
            assert_contains_metric!(t, want);
        }
        assert_eq!(m.requests_of(0), 3);
        assert_eq!(m.server_errors_of(0), 1);
    }

    #[test]
    fn only_listed_backends_are_rendered() {
        let m = Metrics::new();
        m.request(Some(3), 200);
        m.health_check(3, true);
        let t = m.render(&two(), 0, 0.0);
        assert!(!t.contains("class=\"2xx\"} 1"), "{t}");
        let mut views = two();
        views.push(view("c", 3, "down", 0));
        let t = m.render(&views, 0, 0.0);
        assert_contains_metric!(t, r#"tether_requests_total{backend="c",class="2xx"} 1"#);
        assert_contains_metric!(t, r#"tether_backend_state{backend="c",state="down"} 1"#);
    }

    #[test]
    fn output_parses_with_help_and_type_and_no_duplicates() {
        let m = Metrics::new();
        m.request(Some(0), 200);
        m.upstream_latency(0, Duration::from_millis(3));
        let views = vec![
            view("a", 0, "up", 3),
            view("b", 1, "down", 0),
            view("c", 2, "disabled", 0),
        ];
        let t = m.render(&views, 3, 1.0);
        let samples = parse(&t);
        // Every state series for every backend, exactly one of them 1.
        for v in &views {
            let ones: f64 = STATES
                .iter()
                .map(|s| {
                    samples[&format!(
                        r#"tether_backend_state{{backend="{}",state="{s}"}}"#,
                        v.name
                    )]
                })
                .sum();
            assert_eq!(ones, 1.0, "{}", v.name);
        }
        // Every family named in this file is rendered and typed.
        for name in [
            REQUESTS_TOTAL,
            UPSTREAM_RESPONSE_SECONDS,
            SESSION_EVENTS_TOTAL,
            SESSION_PINS_LOST_TOTAL,
            SESSIONS_LIVE,
            BACKEND_SESSIONS,
            BACKEND_STATE,
            BACKEND_WEIGHT,
            BACKEND_INFO,
            HEALTH_CHECKS_TOTAL,
            OPEN_CONNECTIONS,
            TLS_HANDSHAKES_TOTAL,
            TLS_HANDSHAKE_FAILURES_TOTAL,
            STORE_FULL_TOTAL,
            STORE_UP,
            STORE_ERRORS_TOTAL,
            UPTIME_SECONDS,
            BUILD_INFO,
        ] {
            assert!(t.contains(&format!("# TYPE {name} ")), "{name}");
            assert!(name.starts_with("tether_"));
        }
    }

    #[test]
    fn hostile_names_are_escaped() {
        let m = Metrics::new();
        m.request(Some(0), 200);
        let views = vec![view("we\"ird\\na\nme", 0, "up", 1)];
        let t = m.render(&views, 1, 0.0);
        assert_contains_metric!(t, r#"tether_backend_sessions{backend="we\"ird\\na\nme"} 1"#);
        parse(&t);
    }

    #[test]
    fn histogram_is_cumulative_and_inf_equals_count() {
        let m = Metrics::new();
        let ms = Duration::from_millis;
        for d in [
            Duration::ZERO,
            ms(1), // exactly on a bound: le is inclusive
            Duration::from_micros(1_001),
            ms(30),
            ms(30),
            ms(999),
            ms(10_000),
            ms(10_001),
            Duration::from_secs(3600),
        ] {
            m.upstream_latency(0, d);
        }
        let t = m.render(&[view("a", 0, "up", 0)], 0, 0.0);
        let s = parse(&t);
        let bucket = |le: &str| {
            s[&format!(r#"tether_upstream_response_seconds_bucket{{backend="a",le="{le}"}}"#)]
        };
        assert_eq!(bucket("0.001"), 2.0);
        assert_eq!(bucket("0.0025"), 3.0);
        assert_eq!(bucket("0.025"), 3.0);
        assert_eq!(bucket("0.05"), 5.0);
        assert_eq!(bucket("1"), 6.0);
        assert_eq!(bucket("10"), 7.0);
        assert_eq!(bucket("+Inf"), 9.0);
        let count = s[r#"tether_upstream_response_seconds_count{backend="a"}"#];
        assert_eq!(bucket("+Inf"), count);
        let sum = s[r#"tether_upstream_response_seconds_sum{backend="a"}"#];
        assert!((sum - 3621.062001).abs() < 1e-6, "{sum}");
        let mut last = 0.0;
        for le in BUCKET_LE.iter().chain(["+Inf"].iter()) {
            let b = bucket(le);
            assert!(b >= last, "bucket {le} went down");
            last = b;
        }
        assert_eq!(BUCKET_LE.len(), BUCKET_NANOS.len());
        for (le, n) in BUCKET_LE.iter().zip(BUCKET_NANOS) {
            assert_eq!((le.parse::<f64>().unwrap() * 1e9).round() as u64, n);
        }
    }

    #[test]
    fn concurrent_increments_are_exact() {
        let m = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        m.request(Some(t % 2), 200);
                        m.upstream_latency(1, Duration::from_micros(i % 5000));
                        m.session(SessionEvent::Continued);
                        let _c = m.open_connection();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let t = m.render(&[view("a", 0, "up", 0), view("b", 1, "up", 0)], 0, 0.0);
        assert_contains_metric!(t, r#"tether_requests_total{backend="a",class="2xx"} 20000"#);
        assert_contains_metric!(t, r#"tether_requests_total{backend="b",class="2xx"} 20000"#);
        assert_contains_metric!(
            t,
            r#"tether_upstream_response_seconds_count{backend="b"} 40000"#
        );
        assert_contains_metric!(
            t,
            r#"tether_upstream_response_seconds_bucket{backend="b",le="+Inf"} 40000"#
        );
        assert_contains_metric!(t, r#"tether_session_events_total{state="continued"} 40000"#);
        assert_contains_metric!(t, "tether_open_connections 0");
    }

    #[test]
    fn floats_use_prometheus_spelling() {
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(3.0), "3");
    }

    #[test]
    fn status_classes() {
        let m = Metrics::new();
        for s in [0, 99, 100, 199, 200, 599, 600, 999] {
            m.request(Some(0), s);
        }
        let t = m.render(&[view("a", 0, "up", 0)], 0, 0.0);
        assert_contains_metric!(t, r#"tether_requests_total{backend="a",class="1xx"} 4"#);
        assert_contains_metric!(t, r#"tether_requests_total{backend="a",class="2xx"} 1"#);
        assert_contains_metric!(t, r#"tether_requests_total{backend="a",class="5xx"} 3"#);
    }

    /// The whole text for a small fixed set of counters, byte for byte: names,
    /// labels, HELP and TYPE text and the order of families and series are a
    /// contract with dashboards and alerts, so any change to them shows here.
    #[test]
    fn renders_exactly_this_text() {
        let m = Metrics::new();
        m.request(Some(2), 200);
        m.request(Some(2), 503);
        m.request(None, 429);
        m.request(Some(0), 302);
        m.upstream_latency(2, Duration::from_millis(3));
        m.upstream_latency(2, Duration::from_millis(700));
        m.session(SessionEvent::New);
        m.session(SessionEvent::Failover);
        m.pin_lost(PinLost::Idle);
        m.health_check(2, true);
        m.health_check(2, false);
        m.connection_opened();
        m.tls_handshake(false);
        m.binding_mismatch();
        m.rate_limited(true);
        m.store_full();
        m.store_errors(2);
        m.set_store_up(false);
        let views = [
            BackendView {
                name: "app-1".into(),
                address: "10.0.0.1:8080".into(),
                weight: 3,
                state: "draining",
                sessions: 5,
                index: 2,
            },
            BackendView {
                name: "b".into(),
                address: "[::1]:9000".into(),
                weight: 1,
                state: "up",
                sessions: 0,
                index: 0,
            },
        ];
        let want = GOLDEN.replace("{version}", env!("CARGO_PKG_VERSION"));
        let got = m.render(&views, 7, 1.5);
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "line {}", i + 1);
        }
        assert_eq!(got, want);
    }

    const GOLDEN: &str = r#"# HELP tether_build_info Always 1; the version is a label.
# TYPE tether_build_info gauge
tether_build_info{version="{version}"} 1
# HELP tether_uptime_seconds Seconds since tether started.
# TYPE tether_uptime_seconds gauge
tether_uptime_seconds 1.5
# HELP tether_open_connections Client connections open now.
# TYPE tether_open_connections gauge
tether_open_connections 1
# HELP tether_requests_total Responses sent to clients, by backend ("-": answered by tether) and status class.
# TYPE tether_requests_total counter
tether_requests_total{backend="app-1",class="1xx"} 0
tether_requests_total{backend="app-1",class="2xx"} 1
tether_requests_total{backend="app-1",class="3xx"} 0
tether_requests_total{backend="app-1",class="4xx"} 0
tether_requests_total{backend="app-1",class="5xx"} 1
tether_requests_total{backend="b",class="1xx"} 0
tether_requests_total{backend="b",class="2xx"} 0
tether_requests_total{backend="b",class="3xx"} 1
tether_requests_total{backend="b",class="4xx"} 0
tether_requests_total{backend="b",class="5xx"} 0
tether_requests_total{backend="-",class="1xx"} 0
tether_requests_total{backend="-",class="2xx"} 0
tether_requests_total{backend="-",class="3xx"} 0
tether_requests_total{backend="-",class="4xx"} 1
tether_requests_total{backend="-",class="5xx"} 0
# HELP tether_upstream_response_seconds Time from sending a request to a backend to receiving its response head.
# TYPE tether_upstream_response_seconds histogram
tether_upstream_response_seconds_bucket{backend="app-1",le="0.001"} 0
tether_upstream_response_seconds_bucket{backend="app-1",le="0.0025"} 0
tether_upstream_response_seconds_bucket{backend="app-1",le="0.005"} 1
tether_upstream_response_seconds_bucket{backend="app-1",le="0.01"} 1
tether_upstream_response_seconds_bucket{backend="app-1",le="0.025"} 1
tether_upstream_response_seconds_bucket{backend="app-1",le="0.05"} 1
tether_upstream_response_seconds_bucket{backend="app-1",le="0.1"} 1
tether_upstream_response_seconds_bucket{backend="app-1",le="0.25"} 1
tether_upstream_response_seconds_bucket{backend="app-1",le="0.5"} 1
tether_upstream_response_seconds_bucket{backend="app-1",le="1"} 2
tether_upstream_response_seconds_bucket{backend="app-1",le="2.5"} 2
tether_upstream_response_seconds_bucket{backend="app-1",le="5"} 2
tether_upstream_response_seconds_bucket{backend="app-1",le="10"} 2
tether_upstream_response_seconds_bucket{backend="app-1",le="+Inf"} 2
tether_upstream_response_seconds_sum{backend="app-1"} 0.703
tether_upstream_response_seconds_count{backend="app-1"} 2
tether_upstream_response_seconds_bucket{backend="b",le="0.001"} 0
tether_upstream_response_seconds_bucket{backend="b",le="0.0025"} 0
tether_upstream_response_seconds_bucket{backend="b",le="0.005"} 0
tether_upstream_response_seconds_bucket{backend="b",le="0.01"} 0
tether_upstream_response_seconds_bucket{backend="b",le="0.025"} 0
tether_upstream_response_seconds_bucket{backend="b",le="0.05"} 0
tether_upstream_response_seconds_bucket{backend="b",le="0.1"} 0
tether_upstream_response_seconds_bucket{backend="b",le="0.25"} 0
tether_upstream_response_seconds_bucket{backend="b",le="0.5"} 0
tether_upstream_response_seconds_bucket{backend="b",le="1"} 0
tether_upstream_response_seconds_bucket{backend="b",le="2.5"} 0
tether_upstream_response_seconds_bucket{backend="b",le="5"} 0
tether_upstream_response_seconds_bucket{backend="b",le="10"} 0
tether_upstream_response_seconds_bucket{backend="b",le="+Inf"} 0
tether_upstream_response_seconds_sum{backend="b"} 0
tether_upstream_response_seconds_count{backend="b"} 0
# HELP tether_session_events_total Session decisions: new, continued, expired, failover, rotated.
# TYPE tether_session_events_total counter
tether_session_events_total{state="new"} 1
tether_session_events_total{state="continued"} 0
tether_session_events_total{state="expired"} 0
tether_session_events_total{state="failover"} 1
tether_session_events_total{state="rotated"} 0
# HELP tether_session_pins_lost_total Sessions that lost their backend pin, by reason.
# TYPE tether_session_pins_lost_total counter
tether_session_pins_lost_total{reason="idle"} 1
tether_session_pins_lost_total{reason="absolute"} 0
tether_session_pins_lost_total{reason="ended"} 0
tether_session_pins_lost_total{reason="regenerated"} 0
tether_session_pins_lost_total{reason="backend_down"} 0
tether_session_pins_lost_total{reason="backend_disabled"} 0
tether_session_pins_lost_total{reason="backend_removed"} 0
# HELP tether_sessions_live Live sessions in the store.
# TYPE tether_sessions_live gauge
tether_sessions_live 7
# HELP tether_store_full_total New sessions not stored because the store held max_sessions.
# TYPE tether_store_full_total counter
tether_store_full_total 1
# HELP tether_binding_mismatches_total Bound session cookies presented by a client whose traits differ.
# TYPE tether_binding_mismatches_total counter
tether_binding_mismatches_total 1
# HELP tether_rate_limited_total Requests refused with 429, by limit.
# TYPE tether_rate_limited_total counter
tether_rate_limited_total{limit="session"} 0
tether_rate_limited_total{limit="new_session"} 1
# HELP tether_store_up 1 while the session store answers, 0 while it does not (Redis unreachable or slow).
# TYPE tether_store_up gauge
tether_store_up 0
# HELP tether_store_errors_total Session store operations that failed, timed out, or were dropped while the store was down.
# TYPE tether_store_errors_total counter
tether_store_errors_total 2
# HELP tether_backend_sessions Live sessions pinned to each backend.
# TYPE tether_backend_sessions gauge
tether_backend_sessions{backend="app-1"} 5
tether_backend_sessions{backend="b"} 0
# HELP tether_backend_state 1 for the backend's current state (up, down, draining, disabled), else 0.
# TYPE tether_backend_state gauge
tether_backend_state{backend="app-1",state="up"} 0
tether_backend_state{backend="app-1",state="down"} 0
tether_backend_state{backend="app-1",state="draining"} 1
tether_backend_state{backend="app-1",state="disabled"} 0
tether_backend_state{backend="b",state="up"} 1
tether_backend_state{backend="b",state="down"} 0
tether_backend_state{backend="b",state="draining"} 0
tether_backend_state{backend="b",state="disabled"} 0
# HELP tether_backend_weight Configured weight of each backend.
# TYPE tether_backend_weight gauge
tether_backend_weight{backend="app-1"} 3
tether_backend_weight{backend="b"} 1
# HELP tether_backend_info Always 1; the address is a label.
# TYPE tether_backend_info gauge
tether_backend_info{backend="app-1",address="10.0.0.1:8080"} 1
tether_backend_info{backend="b",address="[::1]:9000"} 1
# HELP tether_health_checks_total Active health probes, by backend and result.
# TYPE tether_health_checks_total counter
tether_health_checks_total{backend="app-1",result="ok"} 1
tether_health_checks_total{backend="app-1",result="fail"} 1
tether_health_checks_total{backend="b",result="ok"} 0
tether_health_checks_total{backend="b",result="fail"} 0
# HELP tether_tls_handshakes_total TLS handshakes attempted, successful or not.
# TYPE tether_tls_handshakes_total counter
tether_tls_handshakes_total 1
# HELP tether_tls_handshake_failures_total TLS handshakes that failed or timed out.
# TYPE tether_tls_handshake_failures_total counter
tether_tls_handshake_failures_total 1
"#;
}
