//! Opens many client connections to a proxy, has each send one request, and
//! then holds them all open and idle: for measuring what an idle connection
//! costs the proxy (benches/idle_memory.sh reads the proxy's RSS before and
//! after).
//!
//! ```text
//! cargo run --release --example idle_clients -- --target 127.0.0.1:8080 -n 4000 \
//!     [--tls] [--websocket] [--cookie 'tether_sid=...'] [--hold 60s]
//! ```
//!
//! Each connection sends one `GET /` (with `--cookie`, a returning sticky
//! client) and reads its whole response, keeping the connection alive; with
//! `--websocket` it sends a WebSocket upgrade to `/ws` instead and reads the
//! `101`. `--tls` speaks TLS with ALPN `http/1.1`, trusting certs/localhost.crt.
//! Once every connection has its answer it prints `ready N` on stdout and
//! holds them until stdin closes or `--hold` passes, then exits. One
//! current-thread runtime; at most `--parallel` connections are being opened
//! at once, so the proxy's accept queue never overflows.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Parser)]
#[command(about = "Hold many idle client connections open through a proxy")]
struct Args {
    /// The proxy's address.
    #[arg(long)]
    target: String,
    /// How many connections.
    #[arg(short, long, default_value_t = 4000)]
    n: usize,
    /// Speak TLS (ALPN http/1.1).
    #[arg(long)]
    tls: bool,
    /// Send a WebSocket upgrade instead of a plain GET.
    #[arg(long)]
    websocket: bool,
    /// A `Cookie` header value to send (a returning sticky client).
    #[arg(long)]
    cookie: Option<String>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Exit after this long even if stdin stays open.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    hold: Duration,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn connector() -> Result<tokio_rustls::TlsConnector, Box<dyn std::error::Error>> {
    use rustls_pki_types::pem::PemObject;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(dir.join("localhost.crt"))? {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// The end of the response head in `buf`, if it is there.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn content_length(head: &[u8]) -> usize {
    let text = String::from_utf8_lossy(head);
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends the one request and reads its whole answer; the connection stays open.
async fn exchange(io: &mut dyn Io, req: &[u8], websocket: bool) -> Result<(), String> {
    io.write_all(req).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = io.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = head_end(&buf) else { continue };
        let want = if websocket { "101" } else { "200" };
        if buf.get(9..12) != Some(want.as_bytes()) {
            let line = String::from_utf8_lossy(&buf[..end.min(80)]).into_owned();
            return Err(format!("expected {want}, got {line:?}"));
        }
        if websocket || buf.len() >= end + content_length(&buf[..end]) {
            return Ok(());
        }
    }
}

async fn open(
    args: Arc<Args>,
    tls: Option<tokio_rustls::TlsConnector>,
    req: Arc<Vec<u8>>,
) -> Result<Box<dyn Io>, String> {
    let tcp = TcpStream::connect(&args.target)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut io: Box<dyn Io> = match tls {
        Some(c) => {
            let name =
                rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            Box::new(c.connect(name, tcp).await.map_err(|e| e.to_string())?)
        }
        None => Box::new(tcp),
    };
    exchange(&mut *io, &req, args.websocket).await?;
    Ok(io)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    let tls = if args.tls { Some(connector()?) } else { None };
    let cookie = match &args.cookie {
        Some(c) => format!("Cookie: {c}\r\n"),
        None => String::new(),
    };
    let req = if args.websocket {
        format!(
            "GET /ws HTTP/1.1\r\nHost: localhost\r\n{cookie}Connection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    } else {
        format!("GET / HTTP/1.1\r\nHost: localhost\r\n{cookie}User-Agent: idle_clients\r\n\r\n")
    };
    let req = Arc::new(req.into_bytes());
    let gate = Arc::new(Semaphore::new(args.parallel.max(1)));
    let mut tasks = Vec::with_capacity(args.n);
    for _ in 0..args.n {
        let permit = gate.clone().acquire_owned().await?;
        let (args, tls, req) = (args.clone(), tls.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(20), open(args, tls, req)).await;
            drop(permit);
            match r {
                Ok(r) => r,
                Err(_) => Err("timed out".to_string()),
            }
        }));
    }
    let mut held = Vec::with_capacity(args.n);
    let mut errors = 0usize;
    for t in tasks {
        match t.await? {
            Ok(io) => held.push(io),
            Err(e) => {
                if errors < 5 {
                    eprintln!("idle_clients: {e}");
                }
                errors += 1;
            }
        }
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {} errors {errors}", held.len())?;
        out.flush()?;
    }
    // Hold until stdin closes (the bench is done) or --hold passes.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(args.hold, async {
        while let Ok(n) = stdin.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    drop(held);
    Ok(())
}
