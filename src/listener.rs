//! The accept loop of one `[[listener]]`: connection cap, TCP_NODELAY, the
//! PROXY protocol header naming the client (on `proxy_protocol` listeners),
//! TLS handshake under a deadline, then hyper: HTTP/1.1 or HTTP/2 by ALPN on TLS,
//! by the first bytes on plain TCP (h2c with prior knowledge), upgrades,
//! header size, run under the lifecycle deadlines and graceful shutdown of
//! `lifecycle.rs`. Accept errors are logged and retried; they never end the
//! loop.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::framing::{Sniffed, Verdicts};
use crate::lifecycle::{self, Activity, Counted, Drain, Ended, Limits};
use crate::metrics::OpenConnection;
use crate::passthrough::write_through;
use crate::proxy_protocol::{self, Refused};
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
    /// Every connection begins with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Shared request-path state.
    pub shared: Arc<Shared>,
    /// Connection cap shared by all listeners (`limits.max_connections`).
    pub permits: Arc<Semaphore>,
    /// Flips to true when tether stops accepting.
    pub stop: watch::Receiver<bool>,
    /// Asks open connections to finish at shutdown, and waits for them.
    pub drain: Arc<Drain>,
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Http {
    /// Plain TCP: HTTP/1.x, or HTTP/2 if it opens with the preface.
    Sniff,
    /// TLS whose ALPN chose `http/1.1` (or nothing).
    H1,
    /// TLS whose ALPN chose `h2`.
    H2,
}

impl Listener {
    /// Accepts until `stop` flips.
    ///
    /// A connection is accepted first and then waits for a slot, so the cap
    /// counts only connections being served and is exact however many
    /// listeners share it (a loop that held a slot while waiting in accept
    /// took one from the others). Each loop holds at most one accepted
    /// connection waiting for a slot; the rest wait in the kernel's backlog,
    /// as they did before.
    pub async fn run(mut self) {
        let local = self.socket.local_addr().ok();
        let proxied = self
            .proxy_protocol
            .then(|| Arc::new(ProxyProtocol::default()));
        loop {
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
            let permit = tokio::select! {
                biased;
                _ = self.stop.changed() => break,
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let opened = Instant::now();
            let _ = stream.set_nodelay(true);
            let stream = Slotted {
                io: stream,
                first: Bytes::new(),
                _slot: (permit, self.shared.metrics.open_connection()),
            };
            let shared = self.shared.clone();
            let tls = self.tls.clone();
            let drain = self.drain.watch();
            let proxied = proxied.clone();
            tokio::spawn(accepted(shared, tls, proxied, drain, stream, peer, opened));
        }
        tracing::debug!(listener = ?local, "stopped accepting");
    }
}

/// Serves one accepted connection: on a `proxy_protocol` listener the
/// header first, on a TLS listener the handshake next, then HTTP with the
/// connection's limits as they stand now (a reload changes them for
/// connections accepted after it).
async fn accepted(
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    proxied: Option<Arc<ProxyProtocol>>,
    drain: watch::Receiver<bool>,
    mut stream: Slotted,
    peer: SocketAddr,
    opened: Instant,
) {
    let metrics = shared.metrics.clone();
    let snap = shared.snapshot.load();
    let t = &snap.config.timeouts;
    let limits = Limits {
        client_header: t.client_header,
        keepalive: t.keepalive,
    };
    let max_header_bytes = snap.max_header_bytes;
    drop(snap);
    // The header and the handshake count against the silent connection's
    // client_header: in neither did the client send a request, and a
    // balancer sends its header at once. Both are bounded by the same
    // instant, so the client's first byte is due when it would be without
    // them.
    let deadline = lifecycle::later(opened, limits.client_header);
    let mut peer = peer;
    if let Some(pp) = proxied {
        let read = proxy_protocol::read(&mut stream.io);
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(header)) => {
                peer = header.client.unwrap_or(peer);
                stream.first = header.rest;
            }
            Ok(Err(e)) => {
                pp.refused(peer, &e);
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "PROXY protocol header timed out");
                return;
            }
        }
    }
    let conn = Conn {
        info: ConnInfo {
            peer,
            tls: tls.is_some(),
        },
        shared,
        limits,
        max_header_bytes,
        activity: Arc::new(Activity::new(opened)),
        drain,
    };
    let Some(acceptor) = tls else {
        return conn.serve(stream, Http::Sniff).await;
    };
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            metrics.tls_handshake(true);
            if s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                metrics.tls_resumed();
            }
            let http = match s.get_ref().1.alpn_protocol() {
                Some(b"h2") => Http::H2,
                _ => Http::H1,
            };
            conn.serve(s, http).await
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

/// What a `proxy_protocol` listener remembers: whether it has warned yet.
/// A balancer that sends no header (or the wrong listener behind it) makes
/// every connection fail the same way: the first says so as a warning, the
/// rest at debug.
#[derive(Debug, Default)]
struct ProxyProtocol {
    warned: AtomicBool,
}

impl ProxyProtocol {
    fn refused(&self, peer: SocketAddr, why: &Refused) {
        match why {
            Refused::Invalid(_) if !self.warned.swap(true, Ordering::Relaxed) => tracing::warn!(
                %peer,
                error = %why,
                "connection without a valid PROXY protocol header closed \
                 (does the balancer send one? later ones are logged at debug)"
            ),
            // Closed: a balancer's TCP health check connects and leaves.
            _ => tracing::debug!(%peer, error = %why, "PROXY protocol header refused"),
        }
    }
}

/// A client socket with its `max_connections` slot and its count in
/// `tether_open_connections`: both are given back when the socket closes,
/// which for an upgraded (WebSocket) connection is when its tunnel ends,
/// long after hyper's connection has handed the socket over. `first` holds
/// bytes read with the PROXY protocol header and not yet handed on: they
/// are the first the connection's reader sees.
struct Slotted {
    io: TcpStream,
    first: Bytes,
    _slot: (OwnedSemaphorePermit, OpenConnection),
}

impl AsyncRead for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

write_through!([] Slotted, io);

/// One accepted connection, ready to be served.
struct Conn {
    info: ConnInfo,
    shared: Arc<Shared>,
    limits: Limits,
    max_header_bytes: usize,
    activity: Arc<Activity>,
    drain: watch::Receiver<bool>,
}

impl Conn {
    async fn serve<I>(self, io: I, http: Http)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            info,
            shared,
            limits,
            max_header_bytes,
            activity,
            drain,
        } = self;
        // Request heads are counted in the order hyper hands them over, which
        // is the order the framing tracker saw them on the wire.
        let verdicts = Arc::new(Verdicts::default());
        let io = TokioIo::new(Sniffed::new(
            io,
            verdicts.clone(),
            http != Http::H2,
            activity.clone(),
        ));
        let next = AtomicU64::new(0);
        let counted = activity.clone();
        let svc = service_fn(move |req| {
            let ambiguous = verdicts.ambiguous(next.fetch_add(1, Ordering::Relaxed));
            let open = counted.open();
            let handled = service::handle(shared.clone(), info, ambiguous, req);
            async move {
                let resp = handled.await?;
                Ok::<_, Infallible>(resp.map(|body| Counted::new(body, open)))
            }
        });
        // hyper's own head timer runs from when it starts waiting for a
        // head, idle keep-alive time included: it would end every idle
        // connection at client_header. The lifecycle deadlines replace it.
        let ended = match http {
            Http::Sniff => {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(None)
                    .keep_alive(!limits.keepalive.is_zero())
                    .max_buf_size(max_header_bytes.max(MIN_READ_BUF));
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_header_list_size(max_header_bytes as u32);
                let conn = builder.serve_connection_with_upgrades(io, svc);
                lifecycle::drive(conn, |c| c.graceful_shutdown(), &activity, limits, drain).await
            }
            Http::H1 => {
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(None)
                    .keep_alive(!limits.keepalive.is_zero())
                    .max_buf_size(max_header_bytes.max(MIN_READ_BUF));
                let conn = builder.serve_connection(io, svc).with_upgrades();
                lifecycle::drive(conn, |c| c.graceful_shutdown(), &activity, limits, drain)
                    .await
                    .map_err(Into::into)
            }
            Http::H2 => {
                let mut builder = http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .max_header_list_size(max_header_bytes as u32);
                let conn = builder.serve_connection(io, svc);
                lifecycle::drive(conn, |c| c.graceful_shutdown(), &activity, limits, drain)
                    .await
                    .map_err(Into::into)
            }
        };
        match ended {
            Ok(Ended::Done) => {}
            Ok(Ended::Expired(phase)) => {
                tracing::debug!(peer = %info.peer, ?phase, "connection closed at its deadline")
            }
            Err(e) => {
                tracing::debug!(peer = %info.peer, error = %e, "connection closed with an error")
            }
        }
    }
}
