//! A load client that fills tether's session store and then loads it with
//! requests spread over many live sessions, for the "1M live sessions" row of
//! `benches/load.sh`.
//!
//! ```text
//! cargo run --release --example session_load -- --config tether.toml \
//!     --target 127.0.0.1:8080 --sessions 1000000 --fill --measure 10s
//! ```
//!
//! Minting through tether would cost two requests per session (one to get a
//! cookie, one to return it, since a session enters the store only when its
//! cookie first comes back). This client reads the secret and the backend
//! names from the same config file and signs the cookies itself with tether's
//! own codec, so one request per session (the returning one) fills the store.
//! Then, with `--measure`, it sends GETs for that long, each carrying the
//! cookie of a session picked at random from the minted set, over
//! `--connections` keep-alive connections, and prints one JSON object.
//!
//! Why not oha: oha sends one fixed cookie, which touches a single store
//! entry; a store with a million sessions costs most where requests land on
//! different entries (cache misses, shard locks).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http::header::{COOKIE, HOST};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tether::session::cookie::{backend_tag, Claims, CookieCodec, SessionId};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Parser)]
#[command(about = "Fill tether's store with N sessions, then load it over them")]
struct Args {
    /// The tether config the target runs with (secret, cookie name, backends).
    #[arg(long)]
    config: PathBuf,
    /// Proxy address, host:port (plain HTTP).
    #[arg(long)]
    target: String,
    /// Sessions in the set: ids 0..N through a fixed mix, so a second run
    /// of this client (to measure) names the same sessions as the first (to fill).
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Return every session's cookie once first (each enters the store).
    #[arg(long)]
    fill: bool,
    /// Issue time written into the cookies (Unix ms); default now. Pass the
    /// same value to the filling and the measuring run.
    #[arg(long)]
    issued_ms: Option<u64>,
    /// Then send requests over the minted sessions for this long (e.g. "10s").
    #[arg(long, value_parser = humantime::parse_duration)]
    measure: Option<Duration>,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
}

/// Session id `i`: splitmix64 of `i` and `!i`, so ids are spread over the
/// store's shards like random ones, yet the same in every run.
fn session_id(i: u64) -> SessionId {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&mix(i).to_le_bytes());
    b[8..].copy_from_slice(&mix(!i).to_le_bytes());
    SessionId(b)
}

struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
}

/// One keep-alive connection sending GETs whose cookie `pick` chooses until it
/// returns `None`.
async fn connection(
    target: Arc<str>,
    cookies: Arc<Vec<HeaderValue>>,
    counts: Arc<Counts>,
    mut pick: impl FnMut() -> Option<usize>,
) {
    let host = HeaderValue::from_str(&target).expect("host:port is a valid header value");
    'reconnect: loop {
        let Ok(stream) = TcpStream::connect(&*target).await else {
            counts.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) = http1::handshake(TokioIo::new(stream)).await else {
            counts.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tokio::spawn(conn);
        loop {
            let Some(i) = pick() else { return };
            let mut req = Request::new(Empty::<Bytes>::new());
            req.headers_mut().insert(HOST, host.clone());
            req.headers_mut().insert(COOKIE, cookies[i].clone());
            let ok = match sender.send_request(req).await {
                Ok(resp) => {
                    let good = resp.status().is_success();
                    resp.into_body().collect().await.is_ok() && good
                }
                Err(_) => {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    continue 'reconnect;
                }
            };
            if ok {
                counts.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = tether::config::load(&args.config)?;
    let s = &config.session;
    if s.secrets.current.is_empty() {
        return Err("the config must set a secret (the client signs cookies with it)".into());
    }
    let codec = CookieCodec::new(&s.secrets.current, &s.secrets.previous);
    let tags: Vec<u64> = config
        .backends
        .iter()
        .map(|b| backend_tag(&b.name))
        .collect();
    let now_ms = match args.issued_ms {
        Some(t) => t,
        None => SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64,
    };
    let cookie_name = s.cookie.clone();

    let made = Instant::now();
    let cookies: Arc<Vec<HeaderValue>> = Arc::new(
        (0..args.sessions)
            .map(|i| {
                let claims = Claims {
                    id: session_id(i as u64),
                    backend: tags[i % tags.len()],
                    issued_ms: now_ms,
                    seen_ms: now_ms,
                    binding: 0,
                };
                HeaderValue::from_str(&format!("{cookie_name}={}", codec.encode(&claims)))
                    .expect("cookie values are URL-safe base64")
            })
            .collect(),
    );
    let sign_secs = made.elapsed().as_secs_f64();
    let target: Arc<str> = args.target.clone().into();

    // Phase 1: return every cookie once.
    let counts = Arc::new(Counts {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let n = if args.fill { args.sessions } else { 0 };
    let tasks: Vec<_> = (0..args.connections.min(n))
        .map(|_| {
            let next = next.clone();
            tokio::spawn(connection(
                target.clone(),
                cookies.clone(),
                counts.clone(),
                move || {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    (i < n).then_some(i)
                },
            ))
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let fill_secs = started.elapsed().as_secs_f64();
    let filled = counts.ok.load(Ordering::Relaxed);
    let fill_errors = counts.errors.load(Ordering::Relaxed);

    // Phase 2: random sessions from the minted set.
    let mut measured = serde_json::Value::Null;
    if let (Some(d), true) = (args.measure, args.sessions > 0) {
        let counts = Arc::new(Counts {
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let started = Instant::now();
        let end = started + d;
        let tasks: Vec<_> = (0..args.connections)
            .map(|_| {
                let n = args.sessions;
                tokio::spawn(connection(
                    target.clone(),
                    cookies.clone(),
                    counts.clone(),
                    move || (Instant::now() < end).then(|| rand::random_range(0..n)),
                ))
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        let secs = started.elapsed().as_secs_f64();
        let ok = counts.ok.load(Ordering::Relaxed);
        measured = json!({
            "seconds": secs,
            "requests": ok,
            "errors": counts.errors.load(Ordering::Relaxed),
            "rps": ok as f64 / secs,
        });
    }
    println!(
        "{}",
        json!({
            "sessions": args.sessions,
            "sign_seconds": sign_secs,
            "fill_seconds": fill_secs,
            "filled": filled,
            "fill_errors": fill_errors,
            "fill_rps": filled as f64 / fill_secs,
            "measure": measured,
        })
    );
    Ok(())
}
