//! The accept loop of one `[[listener]]`: connection cap, TCP_NODELAY, the
//! PROXY protocol header naming the client (on `proxy_protocol` listeners),
//! TLS handshake under a deadline, then hyper: HTTP/1.1 or HTTP/2 by ALPN on TLS,
//! by the first bytes on plain TCP (h2c with prior knowledge), upgrades,
//! header size, run under the lifecycle deadlines and graceful shutdown of
//! `lifecycle.rs`. Accept errors are logged and retried; they never end the
//! loop.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::Either;
use futures_util::FutureExt;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::error::Elapsed;
use tokio::time::Instant;

use crate::framing::{Sniffed, Verdicts};
use crate::lifecycle::{self, Activity, Counted, Drain, Ended, Limits, Woken};
use crate::metrics::{Metrics, OpenConnection};
use crate::passthrough::write_through;
use crate::proxy_protocol::{self, Refused};
use crate::service::{self, ConnInfo, Shared};
use crate::session::memo::CookieMemo;
use crate::socket::{Acceptor, Client};
use crate::tls_stream::{self, TlsStream};
use crate::wake_flag::WakeFlag;

/// hyper refuses read buffers under 8 KiB; smaller `max_header_bytes` are
/// enforced in the service instead.
const MIN_READ_BUF: usize = 8192;

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
        activity: Arc::new(Activity::new(opened)),
        drain,
    };
    // The serving futures and the handshake are boxed: the task keeps the
    // room its largest state needs for as long as the connection lives, and
    // an idle connection needs a few hundred bytes of it.
    let Some(config) = tls else {
        return Box::pin(conn.serve(stream, Http::Sniff)).await;
    };
    let handshake = Box::pin(tokio::time::timeout_at(
        deadline,
        tls_stream::accept(config, stream),
    ))
    .await;
    if let Some(serve) = handshaken(conn, handshake, &metrics, peer) {
        serve.await
    }
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
struct Slotted {
    io: Client,
    first: Bytes,
    _slot: (OwnedSemaphorePermit, OpenConnection),
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

write_through!([] Slotted, io);

/// Hands bytes read earlier (`first`) to a reader before the socket's;
/// false once there are none. The emptied buffer's allocation is let go at
/// once, not kept with the connection.
fn replay(first: &mut Bytes, buf: &mut ReadBuf<'_>) -> bool {
    if first.is_empty() {
        return false;
    }
    let n = first.len().min(buf.remaining());
    buf.put_slice(&first[..n]);
    first.advance(n);
    if first.is_empty() {
        *first = Bytes::new();
    }
    true
}

/// One accepted connection, ready to be served.
struct Conn {
    info: ConnInfo,
    shared: Arc<Shared>,
    limits: Limits,
    max_header_bytes: usize,
    activity: Arc<Activity>,
    drain: watch::Receiver<bool>,
}

/// The HTTP/2 connection preface (RFC 9113 section 3.4): a plain connection
/// that opens with it speaks h2c with prior knowledge.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Room for a plain connection's first read: a whole request head, most
/// often, which hyper then parses without reading the socket again.
const FIRST_READ: usize = 4096;

/// How long an HTTP/1 connection idles (its last response sent, nothing
/// half read) before hyper's state is dropped and only the socket is kept.
/// Long enough that a client sending request after request never pays for
/// a fresh hyper connection; short against a browser's minutes of idling.
const PARK_AFTER: Duration = Duration::from_secs(1);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Conn {
    /// Serves the connection to its end. The setup runs before the future
    /// is made, so the future holds the wrapped stream once, not also the
    /// stream it was made from.
    fn serve<I>(self, io: I, http: Http) -> impl std::future::Future<Output = ()> + Send
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
        let io = Sniffed::new(io, verdicts.clone(), http != Http::H2, activity.clone());
        let metrics = shared.metrics.clone();
        let next = AtomicU64::new(0);
        let counted = activity.clone();
        // The connection's last verified cookie: kept while requests come,
        // forgotten when the connection parks.
        let memo = Arc::new(CookieMemo::default());
        let remembered = memo.clone();
        // The request's future is not boxed: hyper's slot for it lives in
        // the connection, which an idle connection drops when it parks, and
        // boxing would copy its several KiB once more per request.
        let svc = service_fn(move |req| {
            let ambiguous = verdicts.ambiguous(next.fetch_add(1, Ordering::Relaxed));
            let open = counted.open();
            // A combinator, not an async block: a block would keep room for
            // the request's future twice, once as captured and once awaited.
            service::handle(shared.clone(), info, remembered.clone(), ambiguous, req)
                .map(move |resp| resp.map(|resp| resp.map(|body| Counted::new(body, open))))
        });
        let peer = info.peer;
        let ctx = Ctx {
            activity: activity.clone(),
            metrics,
            memo,
            limits,
            max_header_bytes,
        };
        // Two steps, the sniff and then the serving, chained rather than
        // one awaiting the other: the serving future takes the sniff's
        // place, and an idle connection keeps room for one of them, not
        // for both and for everything passed between them.
        sniff(io, http, activity, limits, drain)
            .then(move |sniffed| match sniffed {
                // Rare, and larger than HTTP/1's: boxed.
                Ok((Http::H2, io, first, drain)) => {
                    Either::Left(Box::pin(serve_h2(io, first, svc, ctx, drain)))
                }
                Ok((_, io, first, drain)) => {
                    Either::Right(Either::Left(serve_h1(io, first, svc, ctx, drain)))
                }
                Err(ended) => Either::Right(Either::Right(std::future::ready(ended))),
            })
            .map(move |ended| match ended {
                Ok(Ended::Done | Ended::Parked) => {}
                Ok(Ended::Expired(phase)) => {
                    tracing::debug!(%peer, ?phase, "connection closed at its deadline")
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection closed with an error")
                }
            })
    }
}

/// What the first bytes say a plain connection speaks (a TLS one's ALPN
/// said already), with the stream, those bytes and the shutdown signal
/// handed back; or how the connection ended before it said anything.
type Sniff<I> = Result<(Http, Sniffed<I>, Bytes, watch::Receiver<bool>), Result<Ended, BoxError>>;

/// The first bytes choose the protocol; nothing of hyper's exists until
/// they arrive. They are read into room for a whole request head, so hyper
/// usually finds the request there and needs no read of its own. The room
/// is left unwritten until read into (zeroing it cost more than the rest of
/// a connection's setup).
///
/// Not an `async fn`, which would keep each argument twice (see
/// [`serve_h1`]).
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
fn sniff<I>(
    mut io: Sniffed<I>,
    http: Http,
    activity: Arc<Activity>,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) -> impl std::future::Future<Output = Sniff<I>> + Send
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move {
        if http != Http::Sniff {
            return Ok((http, io, Bytes::new(), drain));
        }
        let mut first = BytesMut::with_capacity(FIRST_READ);
        loop {
            let parked = lifecycle::park(&mut io, &mut first, &activity, limits, &mut drain).await;
            let filled = first.len();
            match parked {
                Ok(Woken::Read(_)) => {}
                Ok(Woken::Ended(e)) => return Err(Ok(e)),
                Err(e) => return Err(Err(e.into())),
            }
            let seen = filled.min(H2_PREFACE.len());
            if first[..seen] != H2_PREFACE[..seen] {
                return Ok((Http::H1, io, first.freeze(), drain));
            }
            if seen == H2_PREFACE.len() {
                return Ok((Http::H2, io, first.freeze(), drain));
            }
        }
    }
}

/// What serving a connection needs besides its stream and service.
struct Ctx {
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
    memo: Arc<CookieMemo>,
    limits: Limits,
    max_header_bytes: usize,
}

/// Serves HTTP/1.x: hyper while requests come, and while the connection
/// idles (after [`PARK_AFTER`]) only the socket, waiting for the next
/// bytes without hyper's buffers; then a fresh hyper connection carries on
/// from those bytes. hyper's own head timer runs from when it starts
/// waiting for a head, idle keep-alive time included: it would end every
/// idle connection at client_header. The lifecycle deadlines replace it.
///
/// Not an `async fn`: one would keep each argument twice, as passed and as
/// moved into its body, for as long as the connection lives.
fn serve_h1<I, S>(
    mut io: Sniffed<I>,
    mut first: Bytes,
    mut svc: S,
    ctx: Ctx,
    mut drain: watch::Receiver<bool>,
) -> impl std::future::Future<Output = Result<Ended, BoxError>> + Send
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = Counted<crate::body::Body>>
        + Unpin
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let Ctx {
        activity,
        metrics,
        memo,
        limits,
        max_header_bytes,
    } = ctx;
    async move {
        loop {
            let replay = Replay {
                first,
                io,
                activity: activity.clone(),
            };
            // Made afresh each time: kept, it would take room in every
            // idle connection.
            let mut builder = http1::Builder::new();
            // No timer: the header deadline is lifecycle's, and hyper's
            // HTTP/1 server wants one only for its own (an allocation per
            // connection).
            // Half-close: a client may shut its sending side once its
            // request is out and still read the answer (HAProxy's default;
            // nginx's `proxy_ignore_client_abort on`). It also spares the
            // read hyper would make after every request head to notice a
            // client that left, which on a socket not yet registered would
            // register it (see `socket.rs`). A client that left is noticed
            // when its answer is written.
            builder
                .half_close(true)
                .header_read_timeout(None)
                .keep_alive(!limits.keepalive.is_zero())
                .max_buf_size(max_header_bytes.max(MIN_READ_BUF));
            let mut conn = Box::pin(
                builder
                    .serve_connection(TokioIo::new(replay), svc)
                    .with_upgrades(),
            );
            let park = (!limits.keepalive.is_zero()).then_some(PARK_AFTER);
            let finish = |c: Pin<&mut _>| {
                hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(c)
            };
            match lifecycle::drive(conn.as_mut(), finish, &activity, limits, &mut drain, park)
                .await?
            {
                Ended::Parked => {}
                ended => return Ok(ended),
            }
            let Some((back, service, unread)) = take_apart(conn) else {
                return Ok(Ended::Done);
            };
            (io, svc, first) = (back, service, unread);
            if first.is_empty() {
                memo.forget();
                crate::release::freed();
                let _parked = metrics.parked();
                let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
                match lifecycle::park(&mut io, &mut buf, &activity, limits, &mut drain).await? {
                    Woken::Read(_) => first = buf.freeze(),
                    Woken::Ended(e) => return Ok(e),
                }
            }
        }
    }
}

/// hyper's HTTP/1 connection over a client stream.
type H1<I, S> = http1::UpgradeableConnection<TokioIo<Replay<Sniffed<I>>>, S>;

/// Takes a parked HTTP/1 connection apart: the stream, the service, and
/// the bytes read and not yet used (hyper's first, then any it never read).
/// A function of its own so the serving future keeps none of the parts.
fn take_apart<I, S>(conn: Pin<Box<H1<I, S>>>) -> Option<(Sniffed<I>, S, Bytes)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = Counted<crate::body::Body>>
        + Unpin,
{
    let parts = Pin::into_inner(conn).into_parts()?;
    let replay = parts.io.into_inner();
    let first = match (parts.read_buf.is_empty(), replay.first.is_empty()) {
        (true, _) => replay.first,
        (false, true) => parts.read_buf,
        (false, false) => [parts.read_buf, replay.first].concat().into(),
    };
    Some((replay.io, parts.service, first))
}

async fn serve_h2<I, S>(
    io: Sniffed<I>,
    first: Bytes,
    svc: S,
    ctx: Ctx,
    mut drain: watch::Receiver<bool>,
) -> Result<Ended, BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = Counted<crate::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let Ctx {
        activity,
        limits,
        max_header_bytes,
        ..
    } = ctx;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_bytes as u32);
    let replay = Replay {
        first,
        io,
        activity: activity.clone(),
    };
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(replay), svc));
    let finish = |c: Pin<&mut _>| hyper::server::conn::http2::Connection::graceful_shutdown(c);
    Ok(lifecycle::drive(conn.as_mut(), finish, &activity, limits, &mut drain, None).await?)
}

/// The stream hyper reads and writes: `first` (bytes read before hyper
/// was there: the protocol sniff, a parked connection's wake-up) comes
/// before the socket's; writes are reported to the [`Activity`], so a
/// connection is parked only once hyper has flushed all it wrote.
struct Replay<I> {
    first: Bytes,
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Replay<I> {
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

impl<I: AsyncWrite + Unpin> AsyncWrite for Replay<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.activity.wrote();
        Pin::new(&mut self.io).poll_write(cx, b)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.activity.wrote();
        crate::coalesce::poll_write_vectored(Pin::new(&mut self.io), cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.activity.flushed();
        }
        flushed
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
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
