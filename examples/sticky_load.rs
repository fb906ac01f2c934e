//! A sticky load client for failover benches: N concurrent clients, each one
//! session with its own cookie jar (it keeps whatever `Set-Cookie` gives it,
//! as a browser would), looping GET requests on one keep-alive connection for
//! a fixed time. It records every request's status, error and latency, and
//! which backend answered (`x-backend`), and at the end prints one JSON
//! object on stdout.
//!
//! ```text
//! cargo run --release --example sticky_load -- --target 127.0.0.1:8080 \
//!     --clients 50 --duration 30s --kill-at 10s --kill b1=1234 --kill b2=1235 --kill b3=1236
//! ```
//!
//! With `--kill-at`, the client itself SIGKILLs (by PID, with `kill -KILL`),
//! at that moment, the candidate backend holding the number of sessions
//! nearest a third of the clients. Doing it here rather than from the calling
//! script puts the kill and every request on one monotonic clock, so "kill to
//! last error" needs no cross-process clock arithmetic.
//!
//! Why not oha: oha sends the same headers on every connection, so it can
//! carry at most one session and never follows a re-issued cookie. This
//! client exists for what needs one session per client: which sessions moved.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::header::{COOKIE, HOST, SET_COOKIE};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Parser)]
#[command(about = "N sticky clients, one cookie jar each, for a fixed time")]
struct Args {
    /// Proxy address, host:port (plain HTTP).
    #[arg(long)]
    target: String,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Concurrent clients (sessions), one connection each.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// How long to send requests (e.g. "30s").
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    duration: Duration,
    /// When to kill a backend, from the start (e.g. "10s").
    #[arg(long, value_parser = humantime::parse_duration)]
    kill_at: Option<Duration>,
    /// A backend that may be killed: NAME=PID, NAME as in `x-backend`. Repeat.
    #[arg(long = "kill", value_parser = parse_kill)]
    kill: Vec<(String, u32)>,
    /// A request without an answer after this long counts as an error.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    request_timeout: Duration,
    /// Runtime worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Free-form label copied into the JSON.
    #[arg(long, default_value = "")]
    label: String,
}

fn parse_kill(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|e| format!("bad PID {pid:?}: {e}"))?;
    Ok((name.to_string(), pid))
}

/// The backend each client was last answered by, shared only so the killer
/// can see the pins at the kill. Written on a change of backend, which is
/// rare, so one lock per client contends with nothing.
type Pins = Arc<Vec<Mutex<Option<Arc<str>>>>>;

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    requests: u64,
    errors: u64,
    /// Error kinds ("502", "transport: ...") and their counts.
    error_kinds: BTreeMap<String, u64>,
    /// Seconds from the start to the moment each failed request failed (its
    /// end, not its send: a request sent just before the kill that fails
    /// because of it belongs after the kill).
    error_times: Vec<f64>,
    /// Microseconds per request that got a response.
    latencies_us: Vec<u32>,
    /// (seconds from start, backend) at the first answer and at every change,
    /// timed at the answer's end.
    backends: Vec<(f64, Arc<str>)>,
}

impl ClientLog {
    fn error(&mut self, start: Instant, kind: String) {
        self.errors += 1;
        self.error_times
            .push((Instant::now() - start).as_secs_f64());
        *self.error_kinds.entry(kind).or_default() += 1;
    }
}

/// A minimal cookie jar: name → value, replaced by `Set-Cookie`, dropped by
/// `Max-Age=0`. Enough for one host and path.
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, set_cookie: &HeaderValue) {
        let Ok(text) = set_cookie.to_str() else {
            return;
        };
        let mut parts = text.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            return;
        };
        let expired = parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
        if expired {
            self.0.remove(name.trim());
        } else {
            self.0
                .insert(name.trim().to_string(), value.trim().to_string());
        }
    }

    fn header(&self) -> Option<HeaderValue> {
        if self.0.is_empty() {
            return None;
        }
        let joined: Vec<String> = self.0.iter().map(|(n, v)| format!("{n}={v}")).collect();
        HeaderValue::from_str(&joined.join("; ")).ok()
    }
}

struct Shared {
    target: String,
    host: HeaderValue,
    path: String,
    start: Instant,
    deadline: Instant,
    request_timeout: Duration,
}

async fn connect(target: &str) -> Result<http1::SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn run_client(id: usize, shared: Arc<Shared>, pins: Pins) -> ClientLog {
    let mut log = ClientLog::default();
    let mut jar = Jar::default();
    let mut sender: Option<http1::SendRequest<Empty<Bytes>>> = None;
    while Instant::now() < shared.deadline {
        let sent = Instant::now();
        if !matches!(&sender, Some(s) if !s.is_closed()) {
            match connect(&shared.target).await {
                Ok(s) => sender = Some(s),
                Err(kind) => {
                    log.requests += 1;
                    log.error(shared.start, format!("transport: {kind}"));
                    // A refused proxy answers at once; don't spin on it.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else {
            unreachable!("sender was just set")
        };
        let mut req = Request::get(shared.path.as_str())
            .body(Empty::<Bytes>::new())
            .expect("static request parts are valid");
        req.headers_mut().insert(HOST, shared.host.clone());
        if let Some(cookie) = jar.header() {
            req.headers_mut().insert(COOKIE, cookie);
        }
        log.requests += 1;
        let outcome = tokio::time::timeout(shared.request_timeout, async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            body.collect().await?;
            Ok::<_, hyper::Error>(parts)
        })
        .await;
        let parts = match outcome {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => {
                log.error(shared.start, format!("transport: {}", short_error(&e)));
                sender = None;
                continue;
            }
            Err(_) => {
                log.error(shared.start, "timeout".to_string());
                sender = None;
                continue;
            }
        };
        for sc in parts.headers.get_all(SET_COOKIE) {
            jar.take(sc);
        }
        log.latencies_us
            .push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
        if !parts.status.is_success() {
            log.error(shared.start, parts.status.as_u16().to_string());
            continue;
        }
        let Some(backend) = parts.headers.get("x-backend").and_then(|v| v.to_str().ok()) else {
            log.error(shared.start, "no x-backend".to_string());
            continue;
        };
        if !matches!(log.backends.last(), Some((_, b)) if &**b == backend) {
            let backend: Arc<str> = Arc::from(backend);
            let at = (Instant::now() - shared.start).as_secs_f64();
            log.backends.push((at, backend.clone()));
            *pins[id].lock().expect("pin lock is never poisoned") = Some(backend);
        }
    }
    log
}

fn short_error(e: &hyper::Error) -> String {
    if e.is_incomplete_message() {
        "connection closed mid-response".to_string()
    } else if e.is_closed() || e.is_canceled() {
        "connection closed".to_string()
    } else {
        // hyper's own text is generic ("connection error"); the io kind says what.
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return format!("{e}: {}", io.kind());
            }
            source = s.source();
        }
        e.to_string()
    }
}

/// What the killer did.
struct Kill {
    at: f64,
    backend: String,
    pid: u32,
    /// Each client's backend at the kill (None: no answer yet).
    pins: Vec<Option<Arc<str>>>,
    /// Sessions per backend at the kill.
    counts: BTreeMap<String, usize>,
    command_ok: bool,
}

async fn killer(
    shared: Arc<Shared>,
    pins: Pins,
    at: Duration,
    candidates: Vec<(String, u32)>,
    clients: usize,
) -> Option<Kill> {
    tokio::time::sleep_until(shared.start + at).await;
    let snapshot: Vec<Option<Arc<str>>> = pins
        .iter()
        .map(|p| p.lock().expect("pin lock is never poisoned").clone())
        .collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for b in snapshot.iter().flatten() {
        *counts.entry(b.to_string()).or_default() += 1;
    }
    // "About a third": the candidate whose share is nearest clients/3; ties go
    // to the first name, so the choice is deterministic.
    let third = clients as f64 / 3.0;
    let (backend, pid) = candidates
        .iter()
        .min_by(|a, b| {
            let da = (counts.get(&a.0).copied().unwrap_or(0) as f64 - third).abs();
            let db = (counts.get(&b.0).copied().unwrap_or(0) as f64 - third).abs();
            da.total_cmp(&db).then_with(|| a.0.cmp(&b.0))
        })?
        .clone();
    // The instant before the signal: "kill to last error" errs long, not short.
    let at = (Instant::now() - shared.start).as_secs_f64();
    let command_ok = tokio::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .await
        .is_ok_and(|s| s.success());
    Some(Kill {
        at,
        backend,
        pid,
        pins: snapshot,
        counts,
        command_ok,
    })
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn ms(seconds: f64) -> f64 {
    (seconds * 1000.0 * 10.0).round() / 10.0
}

fn report(args: &Args, elapsed: f64, logs: &[ClientLog], kill: Option<&Kill>) -> Value {
    let total: u64 = logs.iter().map(|l| l.requests).sum();
    let errors: u64 = logs.iter().map(|l| l.errors).sum();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for l in logs {
        for (k, n) in &l.error_kinds {
            *kinds.entry(k.clone()).or_default() += n;
        }
    }
    let all_errors: Vec<f64> = logs.iter().flat_map(|l| l.error_times.clone()).collect();
    let first_error = all_errors.iter().copied().reduce(f64::min);
    let last_error = all_errors.iter().copied().reduce(f64::max);
    let mut lat: Vec<u32> = logs.iter().flat_map(|l| l.latencies_us.clone()).collect();
    lat.sort_unstable();

    let moved_total = logs.iter().filter(|l| l.backends.len() > 1).count();
    let moved_twice = logs.iter().filter(|l| l.backends.len() > 2).count();
    let mut out = json!({
        "client": "sticky_load",
        "label": args.label,
        "clients": args.clients,
        "duration_s": ms(elapsed) / 1000.0,
        "requests": total,
        "requests_per_s": (total as f64 / elapsed).round(),
        "errors": errors,
        "error_kinds": kinds,
        "first_error_s": first_error,
        "last_error_s": last_error,
        "latency_ms": { "p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": percentile(&lat, 1.0) },
        "sessions_moved": moved_total,
        "sessions_moved_more_than_once": moved_twice,
    });
    let Some(kill) = kill else {
        return out;
    };
    let on_killed = |i: usize| kill.pins[i].as_deref() == Some(kill.backend.as_str());
    let errors_after: Vec<f64> = all_errors
        .iter()
        .copied()
        .filter(|t| *t >= kill.at)
        .collect();
    let errors_before = all_errors.len() - errors_after.len();
    let last_after = errors_after.iter().copied().reduce(f64::max);
    let mut from_killed = 0;
    let mut from_killed_moved = 0;
    let mut from_live_moved = 0;
    let mut moved_before_kill = 0;
    let mut unpinned_at_kill = 0;
    let mut errors_after_killed = 0;
    let mut errors_after_live = 0;
    // For the dead backend's sessions: when each was first answered elsewhere.
    let mut reserved_at: Vec<f64> = Vec::new();
    let mut moved_to: BTreeMap<String, usize> = BTreeMap::new();
    for (i, l) in logs.iter().enumerate() {
        let changes_after = l.backends.iter().skip(1).filter(|(t, _)| *t >= kill.at);
        let changes_before = l.backends.iter().skip(1).filter(|(t, _)| *t < kill.at);
        if changes_before.count() > 0 {
            moved_before_kill += 1;
        }
        let errs = l.error_times.iter().filter(|t| **t >= kill.at).count();
        if kill.pins[i].is_none() {
            unpinned_at_kill += 1;
        }
        if on_killed(i) {
            from_killed += 1;
            errors_after_killed += errs;
            if let Some((t, b)) = changes_after.clone().next() {
                from_killed_moved += 1;
                reserved_at.push(*t);
                *moved_to.entry(b.to_string()).or_default() += 1;
            }
        } else {
            errors_after_live += errs;
            if changes_after.clone().next().is_some() {
                from_live_moved += 1;
            }
        }
    }
    let all_reserved = if reserved_at.len() == from_killed {
        reserved_at.iter().copied().reduce(f64::max)
    } else {
        None
    };
    out["kill"] = json!({
        "at_s": kill.at,
        "backend": kill.backend,
        "pid": kill.pid,
        "signal_sent": kill.command_ok,
        "sessions_per_backend_at_kill": kill.counts,
        "unpinned_at_kill": unpinned_at_kill,
        "errors_before_kill": errors_before,
        "errors_after_kill": errors_after.len(),
        "errors_after_kill_on_killed_sessions": errors_after_killed,
        "errors_after_kill_on_live_sessions": errors_after_live,
        "kill_to_last_error_ms": last_after.map(|t| ms(t - kill.at)),
        "kill_to_all_dead_sessions_reserved_ms": all_reserved.map(|t| ms(t - kill.at)),
        "sessions_on_killed": from_killed,
        "sessions_moved_from_killed": from_killed_moved,
        "sessions_moved_from_live": from_live_moved,
        "sessions_moved_before_kill": moved_before_kill,
        "moved_to": moved_to,
    });
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    let rt = rt.enable_all().build()?;
    let value = rt.block_on(async {
        let start = Instant::now();
        let shared = Arc::new(Shared {
            target: args.target.clone(),
            host: HeaderValue::from_str(&args.target)?,
            path: args.path.clone(),
            start,
            deadline: start + args.duration,
            request_timeout: args.request_timeout,
        });
        let pins: Pins = Arc::new((0..args.clients).map(|_| Mutex::new(None)).collect());
        let killer = args.kill_at.map(|at| {
            tokio::spawn(killer(
                shared.clone(),
                pins.clone(),
                at,
                args.kill.clone(),
                args.clients,
            ))
        });
        let tasks: Vec<_> = (0..args.clients)
            .map(|id| tokio::spawn(run_client(id, shared.clone(), pins.clone())))
            .collect();
        let mut logs = Vec::with_capacity(tasks.len());
        for t in tasks {
            logs.push(t.await?);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let kill = match killer {
            Some(k) => k.await?,
            None => None,
        };
        Ok::<_, Box<dyn std::error::Error>>(report(&args, elapsed, &logs, kill.as_ref()))
    })?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}
