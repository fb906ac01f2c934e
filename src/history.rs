//! What the status page remembers: a sample of the traffic every
//! [`SAMPLE_SECS`] for the last [`WINDOW_SECS`], and the recent events
//! (backends going down and up, operator switches, reloads, failover bursts,
//! store outages).
//!
//! Nothing on the request path writes here. A task reads the counters and
//! backend states once a second ([`Reading`]) and hands them to
//! [`History::observe`]; what changed between two readings is a pure
//! function ([`events_between`], [`sample_between`]), so a state that flips
//! and flips back within one second is not an event.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Seconds between two samples on the charts.
pub const SAMPLE_SECS: u64 = 5;
/// How far back the charts go.
pub const WINDOW_SECS: u64 = 15 * 60;
const MAX_SAMPLES: usize = (WINDOW_SECS / SAMPLE_SECS) as usize;
/// Events kept; older ones are dropped.
pub const MAX_EVENTS: usize = 50;

/// Counter totals at one moment (all backends, and tether's own answers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Responses sent.
    pub requests: u64,
    /// Of them, 5xx.
    pub server_errors: u64,
    /// Upstream latency histogram slots (not cumulative), with `bounds_ms`
    /// the upper bound of each but the last.
    pub latency: Vec<u64>,
    /// Sessions moved off their backend (down, disabled, removed, drain
    /// deadline).
    pub moved: u64,
}

/// One backend at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendReading {
    /// Its name.
    pub name: Arc<str>,
    /// `up`, `down`, `draining` or `disabled`.
    pub state: &'static str,
    /// Live sessions pinned there.
    pub sessions: u64,
    /// Requests proxied there since it was configured.
    pub requests: u64,
}

/// Everything read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Wall-clock time, ms since the Unix epoch.
    pub at_ms: u64,
    /// Counter totals.
    pub totals: Totals,
    /// The configured backends, in config order.
    pub backends: Vec<BackendReading>,
    /// Whether the session store answers.
    pub store_up: bool,
    /// Counts configuration reloads.
    pub generation: u64,
}

/// One point on the charts: rates over the interval that ended at `at_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the interval ended (ms since the Unix epoch).
    pub at_ms: u64,
    /// Responses per second.
    pub req_rate: f64,
    /// 5xx responses per second.
    pub err_rate: f64,
    /// Median and 99th percentile upstream latency (ms), if any request
    /// went upstream in the interval.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
    /// Live sessions per backend at the end of the interval.
    pub sessions: Vec<(Arc<str>, u64)>,
    /// Requests per second per backend over the interval.
    pub backend_rates: Vec<(Arc<str>, f64)>,
}

/// Something an operator wants to see in the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When it was noticed (ms since the Unix epoch).
    pub at_ms: u64,
    /// A warning (something broke) rather than news.
    pub warn: bool,
    /// One line, e.g. `app2 is down`.
    pub text: String,
}

/// The events between two readings, in a stable order: backends (in config
/// order), then reloads, the store, and failovers.
pub fn events_between(prev: &Reading, now: &Reading) -> Vec<Event> {
    let mut out = Vec::new();
    let mut ev = |warn: bool, text: String| {
        out.push(Event {
            at_ms: now.at_ms,
            warn,
            text,
        })
    };
    for b in &now.backends {
        match prev.backends.iter().find(|p| p.name == b.name) {
            None => ev(false, format!("{} added ({})", b.name, b.state)),
            Some(p) if p.state != b.state => {
                ev(b.state == "down", format!("{} is {}", b.name, b.state));
            }
            Some(_) => {}
        }
    }
    for p in &prev.backends {
        if !now.backends.iter().any(|b| b.name == p.name) {
            ev(false, format!("{} removed", p.name));
        }
    }
    if now.generation != prev.generation {
        ev(
            false,
            format!("configuration reloaded ({} backends)", now.backends.len()),
        );
    }
    match (prev.store_up, now.store_up) {
        (true, false) => ev(true, "session store unreachable".to_owned()),
        (false, true) => ev(false, "session store is back".to_owned()),
        _ => {}
    }
    let moved = now.totals.moved.saturating_sub(prev.totals.moved);
    if moved > 0 {
        let s = if moved == 1 { "" } else { "s" };
        ev(true, format!("{moved} session{s} failed over"));
    }
    out
}

/// The chart point for the interval from `prev` to `now`.
pub fn sample_between(prev: &Reading, now: &Reading, bounds_ms: &[f64]) -> Sample {
    let secs = (now.at_ms.saturating_sub(prev.at_ms) as f64 / 1000.0).max(0.001);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let slots: Vec<u64> = now
        .totals
        .latency
        .iter()
        .zip(prev.totals.latency.iter().chain(std::iter::repeat(&0)))
        .map(|(n, p)| n.saturating_sub(*p))
        .collect();
    Sample {
        at_ms: now.at_ms,
        req_rate: rate(prev.totals.requests, now.totals.requests),
        err_rate: rate(prev.totals.server_errors, now.totals.server_errors),
        p50_ms: percentile(&slots, bounds_ms, 0.50),
        p99_ms: percentile(&slots, bounds_ms, 0.99),
        sessions: now
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.sessions))
            .collect(),
        backend_rates: now
            .backends
            .iter()
            .map(|b| {
                let before = prev.backends.iter().find(|p| p.name == b.name);
                (
                    b.name.clone(),
                    rate(before.map_or(0, |p| p.requests), b.requests),
                )
            })
            .collect(),
    }
}

/// The `q` quantile (0..=1) of a histogram of `slots` whose upper bounds are
/// `bounds_ms` (one fewer than slots: the last slot has no bound), linearly
/// interpolated inside the bucket it falls in; `None` when it is empty.
/// Past the last bound it reports that bound.
pub fn percentile(slots: &[u64], bounds_ms: &[f64], q: f64) -> Option<f64> {
    let total: u64 = slots.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).max(1.0);
    let mut below = 0u64;
    for (i, &n) in slots.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&hi) = bounds_ms.get(i) else {
                return bounds_ms.last().copied();
            };
            let lo = if i == 0 { 0.0 } else { bounds_ms[i - 1] };
            let within = (rank - below as f64) / n as f64;
            return Some(lo + (hi - lo) * within);
        }
        below += n;
    }
    bounds_ms.last().copied()
}

#[derive(Default)]
struct Inner {
    last: Option<Reading>,
    /// The reading the current sample interval started from.
    base: Option<Reading>,
    samples: VecDeque<Sample>,
    events: VecDeque<Event>,
}

/// The remembered samples and events, shared by the sampling task and the
/// admin page.
pub struct History {
    bounds_ms: Vec<f64>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").finish_non_exhaustive()
    }
}

impl History {
    /// An empty history for a latency histogram with these upper bounds (ms).
    pub fn new(bounds_ms: Vec<f64>) -> History {
        History {
            bounds_ms,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one reading: records what changed since the last, and closes a
    /// sample once [`SAMPLE_SECS`] have passed since the last one.
    pub fn observe(&self, now: Reading) {
        let mut g = self.lock();
        if let Some(prev) = &g.last {
            let events = events_between(prev, &now);
            for e in events {
                if g.events.len() == MAX_EVENTS {
                    g.events.pop_front();
                }
                g.events.push_back(e);
            }
        }
        match &g.base {
            Some(base) if now.at_ms.saturating_sub(base.at_ms) >= SAMPLE_SECS * 1000 => {
                let s = sample_between(base, &now, &self.bounds_ms);
                if g.samples.len() == MAX_SAMPLES {
                    g.samples.pop_front();
                }
                g.samples.push_back(s);
                g.base = Some(now.clone());
            }
            Some(_) => {}
            None => g.base = Some(now.clone()),
        }
        g.last = Some(now);
    }

    /// Notes an event that no reading shows (e.g. tether starting).
    pub fn note(&self, at_ms: u64, warn: bool, text: String) {
        let mut g = self.lock();
        if g.events.len() == MAX_EVENTS {
            g.events.pop_front();
        }
        g.events.push_back(Event { at_ms, warn, text });
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.lock().samples.iter().cloned().collect()
    }

    /// The events, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
