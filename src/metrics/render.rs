//! Prometheus text exposition (format 0.0.4) of [`Metrics`]: one function per
//! group of families, called in a fixed order. Reads the atomics; never
//! changes them.
//!
//! The order of families and series, the label names and the HELP texts are
//! what dashboards and alerts match on; `tests.rs` pins them byte for byte.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::*;

/// One backend to render: the caller's view of it and its counters.
type Row<'a> = (&'a BackendView, &'a PerBackend);

impl Metrics {
    /// Prometheus text exposition format 0.0.4
    /// (`Content-Type: text/plain; version=0.0.4`).
    ///
    /// Only the backends in `backends` are rendered, under their names (a view
    /// whose index is not below [`MAX_BACKEND_IDS`] is skipped); the
    /// gauges that are readings (`live_sessions`, `uptime_secs` and each
    /// view's state and sessions) come from the caller.
    pub fn render(&self, backends: &[BackendView], live_sessions: u64, uptime_secs: f64) -> String {
        let mut out = String::with_capacity(2048 + backends.len() * 2048);
        let o = &mut out;
        let views: Vec<Row<'_>> = backends
            .iter()
            .filter_map(|v| {
                self.backends[..MAX_BACKEND_IDS]
                    .get(v.index)
                    .map(|p| (v, p))
            })
            .collect();

        self.render_process(o, uptime_secs);
        self.render_requests(o, &views);
        render_latency(o, &views);
        self.render_sessions(o, live_sessions);
        self.render_guards(o);
        self.render_store(o);
        render_backends(o, &views);
        render_health_checks(o, &views);
        self.render_tls(o);
        out
    }

    /// Build, uptime and open connections: what this process is.
    fn render_process(&self, o: &mut String, uptime_secs: f64) {
        family(o, BUILD_INFO, "gauge", "Always 1; the version is a label.");
        line(
            o,
            BUILD_INFO,
            &[("version", env!("CARGO_PKG_VERSION"))],
            "1",
        );
        family(o, UPTIME_SECONDS, "gauge", "Seconds since tether started.");
        line(o, UPTIME_SECONDS, &[], &float(uptime_secs));
        let open = self.open_connections.load(Ordering::Relaxed);
        scalar(
            o,
            OPEN_CONNECTIONS,
            "gauge",
            "Client connections open now.",
            &open.to_string(),
        );
        let parked = self.parked_connections.load(Ordering::Relaxed);
        scalar(
            o,
            PARKED_CONNECTIONS,
            "gauge",
            "Idle client connections holding only their socket (HTTP/1 state given up until the next request).",
            &parked.to_string(),
        );
    }

    /// Responses by backend and class, then the `backend="-"` row.
    fn render_requests(&self, o: &mut String, views: &[Row<'_>]) {
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
    }

    /// Session decisions, lost pins, live sessions and refusals of a full store.
    fn render_sessions(&self, o: &mut String, live_sessions: u64) {
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
        scalar(
            o,
            SESSIONS_LIVE,
            "gauge",
            "Live sessions in the store.",
            &live_sessions.to_string(),
        );
        scalar(
            o,
            STORE_FULL_TOTAL,
            "counter",
            "New sessions not stored because the store held max_sessions.",
            &load(&self.store_full).to_string(),
        );
    }

    /// Requests refused by the guards: binding mismatches and rate limits.
    fn render_guards(&self, o: &mut String) {
        scalar(
            o,
            BINDING_MISMATCHES_TOTAL,
            "counter",
            "Bound session cookies presented by a client whose traits differ.",
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
    }

    /// Whether the session store answers, and what it failed to do.
    fn render_store(&self, o: &mut String) {
        scalar(
            o,
            STORE_UP,
            "gauge",
            "1 while the session store answers, 0 while it does not (Redis unreachable or slow).",
            &load(&self.store_up).to_string(),
        );
        scalar(
            o,
            STORE_ERRORS_TOTAL,
            "counter",
            "Session store operations that failed, timed out, or were dropped while the store was down.",
            &load(&self.store_errors).to_string(),
        );
    }

    /// TLS handshakes attempted and failed.
    fn render_tls(&self, o: &mut String) {
        scalar(
            o,
            TLS_HANDSHAKES_TOTAL,
            "counter",
            "TLS handshakes attempted, successful or not.",
            &load(&self.tls_handshakes).to_string(),
        );
        scalar(
            o,
            TLS_HANDSHAKE_FAILURES_TOTAL,
            "counter",
            "TLS handshakes that failed or timed out.",
            &load(&self.tls_failures).to_string(),
        );
        scalar(
            o,
            TLS_RESUMED_TOTAL,
            "counter",
            "TLS handshakes that resumed an earlier session (no key exchange or signature).",
            &load(&self.tls_resumed).to_string(),
        );
    }
}

/// The latency histogram of each backend. Slots are stored per bucket and
/// summed here, so `+Inf` and `_count` are the same number by construction.
fn render_latency(o: &mut String, views: &[Row<'_>]) {
    family(
        o,
        UPSTREAM_RESPONSE_SECONDS,
        "histogram",
        "Time from sending a request to a backend to receiving its response head.",
    );
    let bucket = format!("{UPSTREAM_RESPONSE_SECONDS}_bucket");
    let sum = format!("{UPSTREAM_RESPONSE_SECONDS}_sum");
    let count = format!("{UPSTREAM_RESPONSE_SECONDS}_count");
    for (v, per) in views {
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
}

/// The caller's readings of each backend: sessions, state, weight, address.
fn render_backends(o: &mut String, views: &[Row<'_>]) {
    family(
        o,
        BACKEND_SESSIONS,
        "gauge",
        "Live sessions pinned to each backend.",
    );
    for (v, _) in views {
        let labels = [("backend", v.name.as_str())];
        line(o, BACKEND_SESSIONS, &labels, &v.sessions.to_string());
    }
    family(
        o,
        BACKEND_STATE,
        "gauge",
        "1 for the backend's current state (up, down, draining, disabled), else 0.",
    );
    for (v, _) in views {
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
        BACKEND_DRAIN_SECONDS_LEFT,
        "gauge",
        "Seconds until a draining backend's deadline fails its remaining sessions over (only backends draining with a deadline).",
    );
    for (v, _) in views {
        if let Some(left) = v.drain_secs_left {
            let labels = [("backend", v.name.as_str())];
            line(o, BACKEND_DRAIN_SECONDS_LEFT, &labels, &float(left));
        }
    }
    family(
        o,
        BACKEND_WEIGHT,
        "gauge",
        "Configured weight of each backend.",
    );
    for (v, _) in views {
        let labels = [("backend", v.name.as_str())];
        line(o, BACKEND_WEIGHT, &labels, &v.weight.to_string());
    }
    family(
        o,
        BACKEND_INFO,
        "gauge",
        "Always 1; the address is a label.",
    );
    for (v, _) in views {
        let labels = [("backend", v.name.as_str()), ("address", &v.address)];
        line(o, BACKEND_INFO, &labels, "1");
    }
    family(
        o,
        UPSTREAM_CONNECTS_TOTAL,
        "counter",
        "Connections tether opened to each backend (keep-alive reuse opens none).",
    );
    for (v, _) in views {
        let labels = [("backend", v.name.as_str())];
        line(
            o,
            UPSTREAM_CONNECTS_TOTAL,
            &labels,
            &v.upstream_connects.to_string(),
        );
    }
    family(
        o,
        UPSTREAM_IDLE_CONNECTIONS,
        "gauge",
        "Idle keep-alive connections pooled for each backend.",
    );
    for (v, _) in views {
        let labels = [("backend", v.name.as_str())];
        line(
            o,
            UPSTREAM_IDLE_CONNECTIONS,
            &labels,
            &v.upstream_idle.to_string(),
        );
    }
}

/// Active health probes of each backend, by result.
fn render_health_checks(o: &mut String, views: &[Row<'_>]) {
    family(
        o,
        HEALTH_CHECKS_TOTAL,
        "counter",
        "Active health probes, by backend and result.",
    );
    for (v, per) in views {
        for (result, n) in ["ok", "fail"].iter().zip(&per.health) {
            let labels = [("backend", v.name.as_str()), ("result", *result)];
            line(o, HEALTH_CHECKS_TOTAL, &labels, &load(n).to_string());
        }
    }
}

/// A family with one unlabelled sample.
fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: &str) {
    family(out, name, kind, help);
    line(out, name, &[], value);
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
pub(super) fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        v.to_string()
    }
}
