//! The status page's cost at its largest: 200 backends, 15 minutes of
//! samples (180) and a full event list, rendered whole.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use tether::admin::page::{render, BackendRow, StatusView};
use tether::history::{Event, Sample, MAX_EVENTS, SAMPLE_SECS, WINDOW_SECS};

fn view(backends: usize) -> StatusView {
    let names: Vec<Arc<str>> = (0..backends)
        .map(|i| Arc::from(format!("b{i:03}")))
        .collect();
    let n = WINDOW_SECS / SAMPLE_SECS;
    let samples = (0..n)
        .map(|i| Sample {
            at_ms: i * SAMPLE_SECS * 1000,
            req_rate: 1000.0 + i as f64,
            err_rate: 0.5,
            p50_ms: Some(3.0),
            p99_ms: Some(20.0),
            sessions: names
                .iter()
                .enumerate()
                .map(|(j, n)| (n.clone(), (i + j as u64) % 500))
                .collect(),
            backend_rates: names.iter().map(|n| (n.clone(), 5.0)).collect(),
        })
        .collect();
    StatusView {
        version: "0.1.0",
        uptime_secs: 3600,
        mode: "sticky",
        live_sessions: 50_000,
        store_kind: "memory",
        backends: names
            .iter()
            .map(|n| BackendRow {
                name: n.to_string(),
                address: "10.0.0.1:8080".into(),
                weight: 1,
                state: "up",
                sessions: 250,
                requests: 1_000_000,
                errors: 3,
                req_rate: 5.0,
                drain_secs_left: None,
            })
            .collect(),
        now_ms: n * SAMPLE_SECS * 1000,
        samples,
        events: (0..MAX_EVENTS as u64)
            .map(|i| Event {
                at_ms: i * 1000,
                warn: i % 3 == 0,
                text: format!("b{i:03} is down"),
            })
            .collect(),
    }
}

fn page(c: &mut Criterion) {
    let v = view(200);
    c.bench_function("status page, 200 backends, 15 min of samples", |b| {
        b.iter(|| render(&v))
    });
}

criterion_group!(benches, page);
criterion_main!(benches);
