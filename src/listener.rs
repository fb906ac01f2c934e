//! The accept loop of one `[[listener]]`: connection cap, TCP_NODELAY, the
//! PROXY protocol header naming the client (on `proxy_protocol` listeners),
//! TLS handshake under a deadline (ALPN chooses HTTP/1.1 or HTTP/2), then
//! the connection is served by `conn.rs`. Accept errors are logged and
//! retried; they never end the loop.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::error::Elapsed;
use tokio::time::Instant;

use crate::conn::{replay, Conn, Http};
use crate::lifecycle::{self, Activity, Drain, Limits};
use crate::metrics::{Metrics, OpenConnection};
use crate::proxy_protocol::{self, Refused};
use crate::service::{ConnInfo, Shared};
use crate::socket::{self, Acceptor, Client};
use crate::tls_stream::{self, TlsStream};
use crate::wake_flag::WakeFlag;

/// Everything one accept loop needs.
pub struct Listener {
    /// The bound socket.
    pub socket: Acceptor,
    /// `Some` on TLS listeners.
    pub tls: Option<Arc<ServerConfig>>,
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
        // One wait for the stop signal for the whole loop, polled only when
        // it woke the task: a wait made per accept would enter and leave
        // the signal's waiter list (under its lock) twice per connection.
        let mut stopped = std::pin::pin!(self.stop.changed());
        let mut side = WakeFlag::new();
        loop {
            let next = unless_stopped(&mut side, stopped.as_mut(), self.socket.accept());
            let (stream, peer) = match next.await {
                None => break,
                Some(Ok(x)) => x,
                Some(Err(e)) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = ?local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let acquire = self.permits.clone().acquire_owned();
            let permit = match unless_stopped(&mut side, stopped.as_mut(), acquire).await {
                Some(Ok(p)) => p,
                None | Some(Err(_)) => break,
            };
            let opened = Instant::now();
            // Inherited from the listening socket on Linux (see
            // `server::bind_client_listener`).
            #[cfg(not(target_os = "linux"))]
            let _ = stream.set_nodelay(true);
            let activity = Arc::new(Activity::new(opened));
            let stream = Slotted {
                io: stream,
                first: Bytes::new(),
                activity: activity.clone(),
                _slot: (permit, self.shared.metrics.open_connection()),
            };
            let shared = self.shared.clone();
            let tls = self.tls.clone();
            let drain = self.drain.watch();
            let proxied = proxied.clone();
            let from = Accepted {
                peer,
                opened,
                activity,
            };
            tokio::spawn(accepted(shared, tls, proxied, drain, stream, from));
        }
        tracing::debug!(listener = ?local, "stopped accepting");
    }
}

/// `work`'s output, or `None` once `stopped` is ready (the caller stops
/// then: a finished `stopped` must not be polled again). `stopped` is
/// polled first when it woke the task, so a stop wins over connections
/// still waiting in the backlog, and only then, with `side`'s waker.
async fn unless_stopped<F: std::future::Future>(
    side: &mut WakeFlag,
    mut stopped: Pin<&mut impl std::future::Future>,
    work: F,
) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if side.due(cx.waker()) {
            let mut rare = Context::from_waker(side.waker());
            if stopped.as_mut().poll(&mut rare).is_ready() {
                return Poll::Ready(None);
            }
        }
        work.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Where and when a connection came from, and its [`Activity`].
struct Accepted {
    peer: SocketAddr,
    opened: Instant,
    activity: Arc<Activity>,
}

/// Serves one accepted connection: on a `proxy_protocol` listener the
/// header first, on a TLS listener the handshake next, then HTTP with the
/// connection's limits as they stand now (a reload changes them for
/// connections accepted after it).
async fn accepted(
    shared: Arc<Shared>,
    tls: Option<Arc<ServerConfig>>,
    proxied: Option<Arc<ProxyProtocol>>,
    drain: watch::Receiver<bool>,
    mut stream: Slotted,
    from: Accepted,
) {
    let Accepted {
        peer,
        opened,
        activity,
    } = from;
    let fd = stream.io.as_raw_fd();
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
        // Boxed: its deadline's timer is large, and the task would keep room
        // for it as long as the connection lives.
        match Box::pin(tokio::time::timeout_at(deadline, read)).await {
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
        activity: activity.clone(),
        drain,
    };
    // The serving futures and the handshake are boxed: the task keeps the
    // room its largest state needs for as long as the connection lives, and
    // an idle connection needs a few hundred bytes of it.
    let Some(config) = tls else {
        return pushing(Box::pin(conn.serve(stream, Http::Sniff)), &activity, fd).await;
    };
    let handshake = Box::pin(tokio::time::timeout_at(
        deadline,
        tls_stream::accept(config, stream),
    ))
    .await;
    if let Some(serve) = handshaken(conn, handshake, &metrics, peer) {
        pushing(serve, &activity, fd).await
    }
}

/// Runs a connection's serving future, and whenever it waits with bytes of
/// a last answer held back for the FIN (see [`Slotted`]), sends them on:
/// what it waits for (the rest of a streaming answer, the body after a
/// `100 Continue`) may be what the client waits on them for. An answer sent
/// whole is shut down within the same turn, and its bytes leave with the
/// FIN.
async fn pushing<F>(mut serve: Pin<Box<F>>, activity: &Activity, fd: RawFd)
where
    F: std::future::Future<Output = ()> + ?Sized,
{
    std::future::poll_fn(|cx| {
        let polled = serve.as_mut().poll(cx);
        // `fd` is open: the socket closes with `Slotted`, which forgets the
        // held bytes first, and only upgraded connections (never a last
        // answer) leave this task.
        if polled.is_pending() && activity.take_held() {
            if let Err(e) = socket::push(fd) {
                tracing::debug!(error = %e, "held bytes could not be pushed");
            }
        }
        polled
    })
    .await
}

/// The connection's serving future after its TLS handshake, or `None`
/// (counted and logged) if the handshake failed. A function of its own so
/// the connection's task keeps no room for the stream it hands on.
fn handshaken(
    conn: Conn,
    handshake: Result<io::Result<TlsStream<Slotted>>, Elapsed>,
    metrics: &Metrics,
    peer: SocketAddr,
) -> Option<Pin<Box<impl std::future::Future<Output = ()> + Send>>> {
    match handshake {
        Ok(Ok(s)) => {
            metrics.tls_handshake(true);
            if s.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                metrics.tls_resumed();
            }
            let http = match s.alpn_protocol() {
                Some(b"h2") => Http::H2,
                _ => Http::H1,
            };
            // The stream is boxed too: the serving futures keep room for
            // it at each level, and rustls's state is over a KiB.
            Some(Box::pin(conn.serve(Box::new(s), http)))
        }
        Ok(Err(e)) => {
            metrics.tls_handshake(false);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics.tls_handshake(false);
            tracing::debug!(%peer, "TLS handshake timed out");
            None
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
///
/// Once a request has asked for the connection to end after its answer
/// (the connection's [`Activity`] says so), writes are sent for more
/// ([`Client::poll_send_more`]): the answer's last bytes wait for the FIN
/// that shutting the socket down sends right after, and leave with it, one
/// segment where there were two. [`pushing`] sends them on if the
/// connection waits for anything first.
struct Slotted {
    io: Client,
    first: Bytes,
    activity: Arc<Activity>,
    _slot: (OwnedSemaphorePermit, OpenConnection),
}

impl Slotted {
    fn poll_write_last(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let sent = ready!(Pin::new(&mut this.io).poll_send_more(cx, bufs));
        if matches!(sent, Ok(n) if n > 0) {
            this.activity.hold();
        }
        Poll::Ready(sent)
    }
}

impl Drop for Slotted {
    fn drop(&mut self) {
        // The socket closes now: nothing is left to push.
        self.activity.release();
    }
}

impl AsyncRead for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if replay(&mut self.first, buf) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Slotted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        if self.activity.last_answer() {
            return self.poll_write_last(cx, &[IoSlice::new(b)]);
        }
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.activity.last_answer() {
            return self.poll_write_last(cx, bufs);
        }
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let done = ready!(Pin::new(&mut this.io).poll_shutdown(cx));
        // The held bytes left with the FIN.
        this.activity.release();
        Poll::Ready(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work goes on while the stop has not fired, and a stop that fires
    /// while the work waits ends the wait.
    #[tokio::test]
    async fn a_stop_ends_a_waiting_accept() {
        let (tx, mut rx) = watch::channel(false);
        let mut stopped = std::pin::pin!(rx.changed());
        let mut side = WakeFlag::new();
        for n in 0..3 {
            let ready = unless_stopped(&mut side, stopped.as_mut(), async { n });
            assert_eq!(ready.await, Some(n));
        }
        let waiting = unless_stopped(&mut side, stopped.as_mut(), std::future::pending::<()>());
        let stop = async {
            tokio::task::yield_now().await;
            tx.send(true).expect("a receiver");
        };
        let both = async { tokio::join!(waiting, stop).0 };
        let ended = tokio::time::timeout(Duration::from_millis(500), both).await;
        assert_eq!(ended, Ok(None));
    }

    /// Once the stop has fired, it wins over work that is ready too (a
    /// backlog of connections is not accepted after it).
    #[tokio::test]
    async fn a_fired_stop_wins_over_ready_work() {
        let (tx, mut rx) = watch::channel(false);
        let mut stopped = std::pin::pin!(rx.changed());
        let mut side = WakeFlag::new();
        let first = unless_stopped(&mut side, stopped.as_mut(), async { 1 });
        assert_eq!(first.await, Some(1));
        tx.send(true).expect("a receiver");
        let next = unless_stopped(&mut side, stopped.as_mut(), async { 2 });
        assert_eq!(next.await, None);
    }
}
