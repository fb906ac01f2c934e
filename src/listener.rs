//! The accept loop of one `[[listener]]`: connection cap, TCP_NODELAY, TLS
//! handshake under a deadline, then hyper-util's auto builder (HTTP/1.1 and
//! HTTP/2, upgrades, header deadline and size) with a graceful watcher.
//! Accept errors are logged and retried; they never end the loop.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::framing::{Sniffed, Verdicts};
use crate::service::{self, ConnInfo, Shared};

/// hyper refuses read buffers under 8 KiB; smaller `max_header_bytes` are
/// enforced in the service instead.
const MIN_READ_BUF: usize = 8192;

/// Everything one accept loop needs.
pub struct Listener {
    /// The bound socket.
    pub socket: TcpListener,
    /// `Some` on TLS listeners.
    pub tls: Option<TlsAcceptor>,
    /// Shared request-path state.
    pub shared: Arc<Shared>,
    /// Connection cap shared by all listeners (`limits.max_connections`).
    pub permits: Arc<Semaphore>,
    /// Flips to true when tether stops accepting.
    pub stop: watch::Receiver<bool>,
    /// Tracks connections for graceful shutdown.
    pub graceful: Arc<GracefulShutdown>,
}

impl Listener {
    /// Accepts until `stop` flips.
    pub async fn run(mut self) {
        let local = self.socket.local_addr().ok();
        loop {
            let permit = tokio::select! {
                biased;
                _ = self.stop.changed() => break,
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                biased;
                _ = self.stop.changed() => break,
                r = self.socket.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(listener = ?local, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let shared = self.shared.clone();
            let tls = self.tls.clone();
            let watcher = self.graceful.watcher();
            tokio::spawn(async move {
                let _permit = permit;
                let metrics = shared.metrics.clone();
                metrics.connection_opened();
                let snap = shared.snapshot.load();
                // hyper starts its head timer as soon as it waits for a
                // request, idle keep-alive time included: so the one timer
                // enforces both limits, at the shorter of the two.
                let t = &snap.config.timeouts;
                let limits = (t.client_header.min(t.keepalive), snap.max_header_bytes);
                drop(snap);
                let info = ConnInfo {
                    peer,
                    tls: tls.is_some(),
                };
                match tls {
                    None => serve(stream, true, info, shared, limits, watcher).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.0, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => {
                                metrics.tls_handshake(true);
                                let h1 = s.get_ref().1.alpn_protocol() != Some(b"h2");
                                serve(s, h1, info, shared, limits, watcher).await
                            }
                            Ok(Err(e)) => {
                                metrics.tls_handshake(false);
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => {
                                metrics.tls_handshake(false);
                                tracing::debug!(%peer, "TLS handshake timed out")
                            }
                        }
                    }
                }
                metrics.connection_closed();
            });
        }
        tracing::debug!(listener = ?local, "stopped accepting");
    }
}

async fn serve<I>(
    io: I,
    h1: bool,
    info: ConnInfo,
    shared: Arc<Shared>,
    (client_header, max_header_bytes): (Duration, usize),
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(client_header)
        .max_buf_size(max_header_bytes.max(MIN_READ_BUF));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_bytes as u32);
    // Request heads are counted in the order hyper hands them over, which is
    // the order the framing tracker saw them on the wire.
    let verdicts = Arc::new(Verdicts::default());
    let io = Sniffed::new(io, verdicts.clone(), h1);
    let next = AtomicU64::new(0);
    let svc = service_fn(move |req| {
        let ambiguous = verdicts.ambiguous(next.fetch_add(1, Ordering::Relaxed));
        service::handle(shared.clone(), info, ambiguous, req)
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(peer = %info.peer, error = %e, "connection closed with an error");
    }
}
