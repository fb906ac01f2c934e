//! Counters in, Prometheus text out: what the request path counts is what a
//! scrape reads.

use super::render::float;
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
        drain_secs_left: None,
        upstream_connects: 0,
        upstream_idle: 0,
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
fn a_reset_backend_index_starts_from_zero() {
    let m = Metrics::new();
    m.request(Some(3), 200);
    m.health_check(3, true);
    m.upstream_latency(3, Duration::from_millis(2));
    m.request(Some(4), 500);
    m.reset_backend(3);
    m.reset_backend(crate::store::MAX_BACKEND_IDS + 7);
    assert_eq!((m.requests_of(3), m.requests_of(4)), (0, 1));
    let text = m.render(
        &[BackendView {
            name: "fresh".into(),
            address: "127.0.0.1:1".into(),
            weight: 1,
            state: "up",
            sessions: 0,
            index: 3,
            drain_secs_left: None,
            upstream_connects: 0,
            upstream_idle: 0,
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
        PARKED_CONNECTIONS,
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
            drain_secs_left: Some(90.5),
            upstream_connects: 12,
            upstream_idle: 4,
        },
        BackendView {
            name: "b".into(),
            address: "[::1]:9000".into(),
            weight: 1,
            state: "up",
            sessions: 0,
            index: 0,
            drain_secs_left: None,
            upstream_connects: 0,
            upstream_idle: 0,
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
# HELP tether_parked_connections Idle client connections holding only their socket (HTTP/1 state given up until the next request).
# TYPE tether_parked_connections gauge
tether_parked_connections 0
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
tether_session_pins_lost_total{reason="drain_deadline"} 0
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
# HELP tether_backend_drain_seconds_left Seconds until a draining backend's deadline fails its remaining sessions over (only backends draining with a deadline).
# TYPE tether_backend_drain_seconds_left gauge
tether_backend_drain_seconds_left{backend="app-1"} 90.5
# HELP tether_backend_weight Configured weight of each backend.
# TYPE tether_backend_weight gauge
tether_backend_weight{backend="app-1"} 3
tether_backend_weight{backend="b"} 1
# HELP tether_backend_info Always 1; the address is a label.
# TYPE tether_backend_info gauge
tether_backend_info{backend="app-1",address="10.0.0.1:8080"} 1
tether_backend_info{backend="b",address="[::1]:9000"} 1
# HELP tether_upstream_connects_total Connections tether opened to each backend (keep-alive reuse opens none).
# TYPE tether_upstream_connects_total counter
tether_upstream_connects_total{backend="app-1"} 12
tether_upstream_connects_total{backend="b"} 0
# HELP tether_upstream_idle_connections Idle keep-alive connections pooled for each backend.
# TYPE tether_upstream_idle_connections gauge
tether_upstream_idle_connections{backend="app-1"} 4
tether_upstream_idle_connections{backend="b"} 0
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
# HELP tether_tls_handshakes_resumed_total TLS handshakes that resumed an earlier session (no key exchange or signature).
# TYPE tether_tls_handshakes_resumed_total counter
tether_tls_handshakes_resumed_total 0
"#;
