//! Prints a sample status page with three backends in different states, for
//! looking at the design: `cargo run --example status_page > /tmp/status.html`.

use tether::admin::page::{render, BackendRow, StatusView};

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
    };
    print!("{}", render(&view));
}
