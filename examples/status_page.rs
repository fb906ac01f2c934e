//! Prints a sample status page with four backends in different states and
//! fifteen minutes of made-up history (a backend lost and its sessions
//! failing over), for looking at the design:
//! `cargo run --example status_page > /tmp/status.html`.

use std::sync::Arc;

use tether::admin::page::{render, BackendRow, StatusView};
use tether::history::{Event, Sample, SAMPLE_SECS, WINDOW_SECS};

fn main() {
    let row =
        |name: &str, port: u16, weight, state, sessions, requests, errors, req_rate| BackendRow {
            name: name.to_owned(),
            address: format!("10.0.1.{}:{port}", port - 8070),
            weight,
            state,
            sessions,
            requests,
            errors,
            req_rate,
            drain_secs_left: (state == "draining").then_some(754.0),
        };
    let now_ms = 1_780_000_000_000;
    let names: Vec<Arc<str>> = ["app-1", "app-2", "app-3", "app-4"]
        .iter()
        .map(|n| Arc::from(*n))
        .collect();
    let n = (WINDOW_SECS / SAMPLE_SECS) as usize;
    let samples: Vec<Sample> = (0..n)
        .map(|i| {
            let at_ms = now_ms - (n - 1 - i) as u64 * SAMPLE_SECS * 1000;
            let wave = ((i as f64) / 9.0).sin() * 18.0;
            let down = (80..105).contains(&i);
            let s3 = if i < 80 { 520.0 + wave } else { 0.0 };
            let sessions = [
                1_100.0 + wave + if i >= 80 { 230.0 } else { 0.0 },
                600.0 - wave / 2.0 + if i >= 80 { 150.0 } else { 0.0 },
                s3,
                if i >= 80 { 140.0 } else { 0.0 },
            ];
            Sample {
                at_ms,
                req_rate: 230.0 + wave,
                err_rate: if i == 80 {
                    14.0
                } else if down {
                    0.4
                } else {
                    0.0
                },
                p50_ms: Some(3.1 + wave / 40.0),
                p99_ms: Some(if i == 80 { 410.0 } else { 21.0 + wave / 3.0 }),
                sessions: names
                    .iter()
                    .cloned()
                    .zip(sessions.iter().map(|v| *v as u64))
                    .collect(),
                backend_rates: Vec::new(),
            }
        })
        .collect();
    let at = |mins_ago: u64| now_ms - mins_ago * 60_000;
    let event = |at_ms, warn, text: &str| Event {
        at_ms,
        warn,
        text: text.to_owned(),
    };
    let view = StatusView {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: 3 * 86_400 + 4 * 3600 + 17 * 60,
        mode: "sticky",
        live_sessions: 1_938,
        store_kind: "memory",
        backends: vec![
            row("app-1", 8081, 2, "up", 1_327, 482_915, 12, 184.6),
            row("app-2", 8082, 1, "draining", 611, 251_044, 0, 41.2),
            row("app-3", 8083, 1, "down", 0, 198_377, 1_406, 0.0),
            row("app-4", 8084, 1, "disabled", 0, 3_210, 0, 0.0),
        ],
        now_ms,
        samples,
        events: vec![
            event(at(14), false, "configuration reloaded (4 backends)"),
            event(at(8), true, "app-3 is down"),
            event(at(8), true, "517 sessions failed over"),
            event(at(6), false, "app-4 is disabled"),
            event(at(1), false, "app-2 is draining"),
        ],
    };
    print!("{}", render(&view));
}
