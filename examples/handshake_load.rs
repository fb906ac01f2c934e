//! A TLS handshake load client that says how its handshakes went: N
//! concurrent workers, each connecting, sending one `GET /` (with a cookie,
//! if given), reading the answer and closing, in a loop for a fixed time.
//! It prints one JSON object with the requests that got a 2xx and how many
//! of the handshakes were full or resumed, as the client saw them.
//!
//! ```text
//! cargo run --release --example handshake_load -- --target 127.0.0.1:8443 \
//!     --connections 50 --duration 5s [--cookie 'tether_sid=...'] [--full]
//! ```
//!
//! Why not oha: oha's TLS client keeps at most 8 TLS 1.3 tickets per server
//! (rustls' default), so with 50 connections racing most handshakes find no
//! ticket and run in full (31% resumed against tether, measured). A browser
//! keeps the tickets it is given; this client keeps every ticket it gets
//! (each used once, as TLS 1.3 asks), so with resumption on nearly every
//! handshake after the first ones resumes, and `--full` turns it off.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::{HandshakeKind, NamedGroup};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "TLS handshakes per request, full or resumed, counted")]
struct Args {
    /// host:port of the TLS listener (its certificate must be the dev one, for "localhost").
    #[arg(long)]
    target: String,
    /// Concurrent workers, one connection at a time each.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// How long to run (e.g. "5s").
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    duration: Duration,
    /// A Cookie header value to send.
    #[arg(long)]
    cookie: Option<String>,
    /// No resumption: every handshake is full.
    #[arg(long)]
    full: bool,
}

/// Keeps every TLS 1.3 ticket it is given (each handed out once) and the
/// last TLS 1.2 session; one server name only.
#[derive(Debug, Default)]
struct KeepAll {
    tickets: Mutex<VecDeque<Tls13ClientSessionValue>>,
    tls12: Mutex<Option<Tls12ClientSessionValue>>,
    kx: Mutex<Option<NamedGroup>>,
}

impl ClientSessionStore for KeepAll {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        *self.kx.lock().unwrap() = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        *self.kx.lock().unwrap()
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        *self.tls12.lock().unwrap() = Some(value);
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.tls12.lock().unwrap().clone()
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        *self.tls12.lock().unwrap() = None;
    }

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut t = self.tickets.lock().unwrap();
        // Bounded all the same; far above what 50 connections leave behind.
        if t.len() >= 10_000 {
            t.pop_front();
        }
        t.push_back(value);
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // Newest first: the freshest ticket is the least likely to have expired.
        self.tickets.lock().unwrap().pop_back()
    }
}

fn client_config(full: bool) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let crt = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/localhost.crt");
    for c in rustls_pki_types::CertificateDer::pem_file_iter(crt).expect("the dev certificate") {
        roots.add(c.expect("a certificate")).expect("a root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS 1.2 and 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = if full {
        Resumption::disabled()
    } else {
        Resumption::store(Arc::new(KeepAll::default()))
    };
    Arc::new(cfg)
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
    full: AtomicU64,
    resumed: AtomicU64,
}

async fn one(
    connector: &tokio_rustls::TlsConnector,
    target: &str,
    request: &[u8],
    c: &Counts,
) -> std::io::Result<()> {
    let tcp = TcpStream::connect(target).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let mut tls = connector.connect(name, tcp).await?;
    match tls.get_ref().1.handshake_kind() {
        Some(HandshakeKind::Resumed) => c.resumed.fetch_add(1, Ordering::Relaxed),
        _ => c.full.fetch_add(1, Ordering::Relaxed),
    };
    tls.write_all(request).await?;
    let mut answer = Vec::with_capacity(1024);
    // The request says `Connection: close`: the answer ends at EOF (a
    // missing close_notify from the server is no error here).
    let _ = tls.read_to_end(&mut answer).await;
    if answer.starts_with(b"HTTP/1.1 2") {
        c.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        c.errors.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let connector = tokio_rustls::TlsConnector::from(client_config(args.full));
    let mut request = String::from("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(c) = &args.cookie {
        request.push_str(&format!("Cookie: {c}\r\n"));
    }
    request.push_str("\r\n");
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let end = start + args.duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.connections.max(1) {
        let (connector, target, request, c) = (
            connector.clone(),
            args.target.clone(),
            request.clone(),
            counts.clone(),
        );
        workers.spawn(async move {
            while Instant::now() < end {
                if one(&connector, &target, request.as_bytes(), &c)
                    .await
                    .is_err()
                {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "{{\"ok\":{},\"errors\":{},\"full\":{},\"resumed\":{},\"secs\":{secs:.3},\"rps\":{:.1}}}",
        get(&counts.ok),
        get(&counts.errors),
        get(&counts.full),
        get(&counts.resumed),
        get(&counts.ok) as f64 / secs,
    );
}
