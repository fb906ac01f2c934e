//! Serves one accepted client connection, its TLS handshake (if any)
//! done: on plain TCP the first bytes choose HTTP/1.x or HTTP/2 (h2c with
//! prior knowledge); HTTP/1 runs under hyper while requests come and only as
//! a socket while it idles (parked); HTTP/2 runs under hyper throughout.
//! Both run under the lifecycle deadlines and graceful shutdown of
//! `lifecycle.rs`, with upgrades and the header size limit.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::Either;
use futures_util::FutureExt;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::framing::{Sniffed, Verdicts};
use crate::lifecycle::{self, Activity, Counted, Ended, Limits, Woken};
use crate::metrics::Metrics;
use crate::service::{self, ConnInfo, Shared};
use crate::session::memo::CookieMemo;

/// hyper refuses read buffers under 8 KiB; smaller `max_header_bytes` are
/// enforced in the service instead.
const MIN_READ_BUF: usize = 8192;

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Http {
    /// Plain TCP: HTTP/1.x, or HTTP/2 if it opens with the preface.
    Sniff,
    /// TLS whose ALPN chose `http/1.1` (or nothing).
    H1,
    /// TLS whose ALPN chose `h2`.
    H2,
}

/// Hands bytes read earlier (`first`) to a reader before the socket's;
/// false once there are none. The emptied buffer's allocation is let go at
/// once, not kept with the connection.
pub(crate) fn replay(first: &mut Bytes, buf: &mut ReadBuf<'_>) -> bool {
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
pub(crate) struct Conn {
    pub(crate) info: ConnInfo,
    pub(crate) shared: Arc<Shared>,
    pub(crate) limits: Limits,
    pub(crate) max_header_bytes: usize,
    pub(crate) activity: Arc<Activity>,
    pub(crate) drain: watch::Receiver<bool>,
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
    pub(crate) fn serve<I>(self, io: I, http: Http) -> impl std::future::Future<Output = ()> + Send
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

/// The service a client connection runs: tether's, as `Conn::serve` makes
/// it, named once for the functions that pass it on.
trait Service:
    hyper::service::HttpService<
        hyper::body::Incoming,
        ResBody = Counted<crate::body::Body>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Send
    + 'static
{
}

impl<S> Service for S where
    S: hyper::service::HttpService<
            hyper::body::Incoming,
            ResBody = Counted<crate::body::Body>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Send
        + 'static
{
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
    S: Service + Unpin,
{
    let Ctx {
        activity,
        metrics,
        memo,
        limits,
        max_header_bytes,
    } = ctx;
    if limits.keepalive.is_zero() {
        // hyper ends every connection after its first answer.
        activity.answer_is_last();
    }
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
    S: Service + Unpin,
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
    S: Service,
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
