use super::*;

const BOUNDS: [f64; 3] = [1.0, 10.0, 100.0];

fn backend(name: &str, state: &'static str, sessions: u64, requests: u64) -> BackendReading {
    BackendReading {
        name: name.into(),
        state,
        sessions,
        requests,
    }
}

fn reading(at_ms: u64, backends: Vec<BackendReading>) -> Reading {
    Reading {
        at_ms,
        totals: Totals::default(),
        backends,
        store_up: true,
        generation: 0,
    }
}

fn texts(events: &[Event]) -> Vec<(bool, &str)> {
    events.iter().map(|e| (e.warn, e.text.as_str())).collect()
}

#[test]
fn events_name_what_changed_between_two_readings() {
    let a = reading(
        1_000,
        vec![
            backend("app1", "up", 0, 0),
            backend("app2", "up", 0, 0),
            backend("old", "up", 0, 0),
        ],
    );
    let mut b = reading(
        2_000,
        vec![
            backend("app1", "down", 0, 0),
            backend("app2", "draining", 0, 0),
            backend("new", "up", 0, 0),
        ],
    );
    b.generation = 1;
    b.store_up = false;
    b.totals.moved = 7;
    assert_eq!(
        texts(&events_between(&a, &b)),
        [
            (true, "app1 is down"),
            (false, "app2 is draining"),
            (false, "new added (up)"),
            (false, "old removed"),
            (false, "configuration reloaded (3 backends)"),
            (true, "session store unreachable"),
            (true, "7 sessions failed over"),
        ]
    );
    assert!(events_between(&b, &b).is_empty(), "no change, no event");
    let mut c = b.clone();
    c.backends[0].state = "up";
    c.store_up = true;
    c.totals.moved = 8;
    assert_eq!(
        texts(&events_between(&b, &c)),
        [
            (false, "app1 is up"),
            (false, "session store is back"),
            (true, "1 session failed over")
        ]
    );
}

#[test]
fn percentiles_interpolate_inside_their_bucket() {
    // Buckets: <=1 ms, <=10, <=100, overflow.
    let cases: [(&[u64], f64, Option<f64>); 7] = [
        (&[0, 0, 0, 0], 0.5, None),
        (&[10, 0, 0, 0], 0.5, Some(0.5)),
        (&[10, 0, 0, 0], 0.99, Some(0.99)),
        (&[0, 10, 0, 0], 0.5, Some(5.5)),
        (&[50, 50, 0, 0], 0.5, Some(1.0)),
        (&[50, 49, 1, 0], 0.99, Some(10.0)),
        (&[0, 0, 0, 5], 0.5, Some(100.0)),
    ];
    for (slots, q, want) in cases {
        assert_eq!(percentile(slots, &BOUNDS, q), want, "{slots:?} q={q}");
    }
}

#[test]
fn a_sample_holds_rates_over_its_interval() {
    let mut a = reading(
        10_000,
        vec![backend("app1", "up", 3, 100), backend("app2", "up", 1, 0)],
    );
    a.totals = Totals {
        requests: 100,
        server_errors: 1,
        latency: vec![0, 100, 0, 0],
        moved: 0,
    };
    let mut b = reading(
        15_000,
        vec![backend("app1", "up", 4, 600), backend("app2", "down", 0, 0)],
    );
    b.totals = Totals {
        requests: 600,
        server_errors: 11,
        latency: vec![0, 600, 0, 0],
        moved: 1,
    };
    let s = sample_between(&a, &b, &BOUNDS);
    assert_eq!(s.at_ms, 15_000);
    assert_eq!((s.req_rate, s.err_rate), (100.0, 2.0));
    assert_eq!(s.p50_ms, Some(5.5));
    assert_eq!(s.sessions, [("app1".into(), 4), ("app2".into(), 0)]);
    assert_eq!(
        s.backend_rates,
        [("app1".into(), 100.0), ("app2".into(), 0.0)]
    );
}

#[test]
fn history_samples_every_few_seconds_and_keeps_a_bounded_window() {
    let h = History::new(BOUNDS.to_vec());
    for sec in 0..=(WINDOW_SECS + 60) {
        let mut r = reading(sec * 1000, vec![backend("app1", "up", 0, sec * 10)]);
        r.totals.requests = sec * 10;
        h.observe(r);
    }
    let samples = h.samples();
    assert_eq!(
        samples.len(),
        MAX_SAMPLES,
        "15 minutes at one sample per {SAMPLE_SECS} s"
    );
    assert!(samples.iter().all(|s| s.req_rate == 10.0));
    assert_eq!(samples.last().unwrap().at_ms, (WINDOW_SECS + 60) * 1000);
    for i in 0..(MAX_EVENTS as u64 + 10) {
        h.note(i, false, format!("event {i}"));
    }
    let events = h.events();
    assert_eq!(events.len(), MAX_EVENTS);
    assert_eq!(
        events.last().unwrap().text,
        format!("event {}", MAX_EVENTS + 9)
    );
}
