//! Requests to backends: a connection pool per backend (HTTP/1.1 keep-alive
//! connections, or one multiplexed HTTP/2 connection), connect and response
//! timeouts, and failures classified by whether the request could have
//! reached the backend (only requests that never did may be retried
//! elsewhere; the *decision* to retry is `service/`'s). How a connection is
//! made (TCP, TLS, the protocol's handshake) is [`Link`]'s.
//!
//! A pooled HTTP/1.1 connection goes back to its pool when the response body
//! has been read to its end (see [`Lease`]); a body dropped half-read takes
//! its connection with it, since the stream position is lost.
//!
//! Backends close keep-alive connections that idle too long (gunicorn after
//! 2 s). A request written just as the backend's FIN leaves crosses it on the
//! wire; the backend most likely never read it, but nothing proves that, so a
//! POST cannot be replayed. tether avoids the race rather than guess: a
//! connection idle longer than `timeouts.upstream_idle` is never reused. One
//! found closed before the request was written (hyper hands the request
//! back) counts as never sent, and is replaced by a fresh connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};

use crate::body::{Body, BodyWatch, OnEnd};
use crate::config::{self, Protocol};

mod link;
mod tape;

pub use link::Link;
use tape::Tape;

/// Idle connections kept per backend; more are closed when released.
/// Above the concurrency one core drives (400 requests in flight to one
/// backend reopened 1% of their connections under a bound of 256), and
/// Envoy's default connection bound per cluster. Connections idle past
/// `timeouts.upstream_idle` leave the pool as others return, so after a
/// burst it shrinks back to what the traffic uses.
const MAX_IDLE_PER_BACKEND: usize = 1024;

/// Upstream timeouts (from `[timeouts]`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect to a backend.
    pub connect: Duration,
    /// Longest a pooled connection may idle and still be reused.
    pub idle: Duration,
    /// How long a backend may keep tether waiting: for the response head
    /// once the request (body included) has gone, or to take the next piece
    /// of a request body. Time spent waiting for the client is not counted.
    pub response: Duration,
}

/// Why a send failed.
#[derive(Debug)]
pub enum Failure {
    /// Could not connect (refused, unreachable, timed out): nothing was sent.
    Connect(io::Error),
    /// The exchange broke after the request may have been sent.
    Broken(hyper::Error),
    /// A reused keep-alive connection closed or reset under a request before
    /// any answer: the backend's idle close crossed it. The backend may have
    /// read the request, so it is not replayed, but it is no sign of a
    /// failing backend either.
    Dropped(hyper::Error),
    /// No response head within `timeouts.response`.
    Timeout,
}

/// A failed send, with the request handed back when it was never sent.
#[derive(Debug)]
pub struct SendError {
    /// What went wrong.
    pub failure: Failure,
    /// The untouched request, present only if nothing reached the backend.
    pub request: Option<Request<Body>>,
    /// The request rebuilt, when it may have reached the backend and was
    /// sent as replayable.
    pub replay: Option<Request<Body>>,
}

impl SendError {
    fn new(failure: Failure, request: Option<Request<Body>>) -> SendError {
        SendError {
            failure,
            request,
            replay: None,
        }
    }
}

/// What is needed to send an idempotent, bodiless request again over
/// HTTP/2, which writes no head to keep (see [`tape`] for HTTP/1).
#[derive(Debug, Clone)]
struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Replay {
    /// Captures a request head for replay.
    fn new(req: &Request<Body>) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    /// A fresh copy of the request, with an empty body.
    fn build(&self) -> Request<Body> {
        let mut r = Request::new(Body::empty());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Connections to one backend.
#[derive(Debug)]
pub struct Pool {
    link: Link,
    /// HTTP/1.1: idle connections, each with the moment it went idle, oldest
    /// first.
    idle: Mutex<Vec<(H1, Instant)>>,
    /// HTTP/2: the connection every request shares while it is open.
    shared: Mutex<Option<http2::SendRequest<Body>>>,
    /// Held while an HTTP/2 connection is being made, so a burst of requests
    /// waits for one connection instead of opening one each.
    dialing: tokio::sync::Mutex<()>,
    /// Set while a sweep of stale idle connections is scheduled.
    sweeping: AtomicBool,
    /// Connections opened (for `tether_upstream_connects_total`).
    connects: AtomicU64,
}

/// Returns an HTTP/1.1 connection to its pool once the response body is
/// fully read. (An HTTP/2 stream needs no return.)
pub struct Lease {
    pool: Arc<Pool>,
    sender: Option<H1>,
    /// `timeouts.upstream_idle`.
    max_idle: Duration,
}

impl OnEnd for Lease {
    fn done(self: Box<Self>) {
        let Lease {
            pool,
            sender,
            max_idle,
        } = *self;
        if let Some(s) = sender {
            pool.release(s, Instant::now(), max_idle);
        }
    }
}

/// A connection a request goes out on.
enum Sender {
    H1(H1),
    H2(http2::SendRequest<Body>),
}

/// An HTTP/1.1 connection and the timer its requests' responses run
/// against. The timer goes where the connection goes (pooled, leased), so
/// each request moves its deadline later, a single atomic write, where a
/// timer of its own would be put into the runtime's timer wheel and taken
/// out again under its lock.
#[derive(Debug)]
struct H1 {
    send: http1::SendRequest<Body>,
    response: Pin<Box<tokio::time::Sleep>>,
    /// What the connection wrote for its current request.
    tape: Arc<Tape>,
}

impl H1 {
    /// Needs the runtime (for its timer).
    fn new((send, tape): (http1::SendRequest<Body>, Arc<Tape>)) -> H1 {
        H1 {
            send,
            response: Box::pin(tokio::time::sleep(Duration::ZERO)),
            tape,
        }
    }
}

impl Pool {
    /// An empty pool for the backend `b` describes.
    pub fn new(b: &config::Backend) -> Pool {
        Pool {
            link: Link::new(b),
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            sweeping: AtomicBool::new(false),
            connects: AtomicU64::new(0),
        }
    }

    /// Connections this pool has opened.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Idle HTTP/1.1 connections pooled now.
    pub fn idle_connections(&self) -> u64 {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// How this pool reaches its backend.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The backend address.
    pub fn addr(&self) -> SocketAddr {
        self.link.addr()
    }

    /// The most recently idled connection that is open and has idled less
    /// than `max_idle`.
    fn checkout(&self, max_idle: Duration) -> Option<H1> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((s, since)) = idle.pop() {
            if now.saturating_duration_since(since) >= max_idle {
                // Oldest first: every one below has idled longer still.
                // Dropped outside the lock; each drop closes a connection.
                let stale = std::mem::take(&mut *idle);
                drop(idle);
                drop((s, stale));
                return None;
            }
            if !s.send.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Takes `sender` back as idle from `now`, and lets go of the oldest
    /// idle connections that have idled `max_idle` already. While any stay
    /// idle, a sweep every `max_idle` lets go of those too: a pool that a
    /// burst filled gives its connections (and their buffers) back even if
    /// no request comes again.
    fn release(self: &Arc<Self>, sender: H1, now: Instant, max_idle: Duration) {
        if sender.send.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stale = drain_stale(&mut idle, now, max_idle);
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push((sender, now));
        }
        drop(idle);
        // Dropped outside the lock; each drop closes a connection.
        drop(stale);
        // A load first: a sweep is usually scheduled already, and a swap on
        // every release would be a locked write per request.
        if !self.sweeping.load(Ordering::Acquire) && !self.sweeping.swap(true, Ordering::AcqRel) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(self.clone().sweep(max_idle));
            } else {
                self.sweeping.store(false, Ordering::Release);
            }
        }
    }

    /// Every `max_idle`, lets go of the idle connections that have idled
    /// that long, until none is left.
    async fn sweep(self: Arc<Self>, max_idle: Duration) {
        loop {
            tokio::time::sleep(max_idle).await;
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let stale = drain_stale(&mut idle, Instant::now(), max_idle);
            let empty = idle.is_empty();
            drop(idle);
            if !stale.is_empty() {
                drop(stale);
                crate::release::freed();
            }
            if empty {
                self.sweeping.store(false, Ordering::Release);
                // A connection released since the pool was seen empty saw a
                // sweep scheduled and started none: this one carries on.
                let refilled = !self
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                if !refilled || self.sweeping.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        }
    }

    /// The shared HTTP/2 connection, made if there is none open.
    /// `fresh`: the current one failed a request; replace it.
    async fn http2(&self, fresh: bool, t: &Timeouts) -> io::Result<http2::SendRequest<Body>> {
        let current = || {
            let slot = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            slot.as_ref().filter(|s| !s.is_closed()).cloned()
        };
        let seen = if fresh { None } else { current() };
        if let Some(s) = seen {
            return Ok(s);
        }
        let _one = self.dialing.lock().await;
        // Another request may have connected while this one waited.
        if !fresh {
            if let Some(s) = current() {
                return Ok(s);
            }
        }
        let s = self.link.http2(t.connect).await?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.clone());
        Ok(s)
    }

    /// A connection to send on, and whether it had carried requests before.
    async fn sender(&self, fresh_only: bool, t: &Timeouts) -> io::Result<(Sender, bool)> {
        match self.link.protocol() {
            Protocol::Http1 => {
                let pooled = if fresh_only {
                    None
                } else {
                    self.checkout(t.idle)
                };
                // Dialing is boxed: its future (connect, TLS, handshake) is
                // large, rare next to reuse, and would otherwise widen every
                // request's future, which is copied whole.
                match pooled {
                    Some(s) => Ok((Sender::H1(s), true)),
                    None => {
                        let s = Box::pin(self.link.http1(t.connect)).await?;
                        self.connects.fetch_add(1, Ordering::Relaxed);
                        Ok((Sender::H1(H1::new(s)), false))
                    }
                }
            }
            // A shared HTTP/2 connection is treated as new: its failures are
            // the backend's, not a keep-alive race.
            Protocol::H2 => Ok((
                Sender::H2(Box::pin(self.http2(fresh_only, t)).await?),
                false,
            )),
        }
    }

    /// Sends `req` on a pooled or new connection. On success the caller gets
    /// the response and a [`Lease`] to fire when the body ends (or drop).
    /// `body` watches the request's body, if it has one: `t.response` then
    /// counts only the backend's time (see [`BodyWatch::backend_stalled`]).
    ///
    /// # Errors
    /// [`Failure::Connect`] hands the request back (nothing was sent). A
    /// pooled connection that turns out dead is replaced by a fresh one
    /// without the caller noticing: at once if the request was never
    /// written, and, for a `replayable` request (idempotent, bodiless), also
    /// if the backend closed the kept-alive connection before answering (the
    /// keep-alive race). A replayable request that broke otherwise comes
    /// back rebuilt in [`SendError::replay`].
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
        replayable: bool,
        body: Option<&BodyWatch>,
        t: &Timeouts,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        self.link.prepare(&mut req);
        let copy = (replayable && self.link.protocol() == Protocol::H2).then(|| Replay::new(&req));
        let mut fresh_only = false;
        // Each stale pooled connection is discarded; the loop ends on a fresh one.
        loop {
            let (mut sender, pooled) = match self.sender(fresh_only, t).await {
                Ok(s) => s,
                Err(e) => return Err(SendError::new(Failure::Connect(e), Some(req))),
            };
            let (exchange, timer) = match &mut sender {
                Sender::H1(c) => {
                    if pooled && c.send.ready().await.is_err() {
                        continue;
                    }
                    c.tape.start(replayable);
                    let exchange = c.send.try_send_request(req);
                    (Either::Left(exchange), Some(c.response.as_mut()))
                }
                Sender::H2(s) => (Either::Right(s.try_send_request(req)), None),
            };
            let answer = match (body, timer) {
                (None, Some(mut timer)) => {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + t.response);
                    tokio::select! {
                        biased;
                        r = exchange => Some(r),
                        () = timer => None,
                    }
                }
                (None, None) => tokio::time::timeout(t.response, exchange).await.ok(),
                // The backend's clock stops while the client trickles its body.
                (Some(w), _) => {
                    w.started();
                    tokio::select! {
                        biased;
                        r = exchange => Some(r),
                        () = w.backend_stalled(t.response) => None,
                    }
                }
            };
            match answer {
                None => return Err(SendError::new(Failure::Timeout, None)),
                Some(Ok(resp)) => {
                    let sender = match sender {
                        Sender::H1(s) => {
                            s.tape.stop();
                            Some(s)
                        }
                        Sender::H2(_) => None,
                    };
                    return Ok((
                        resp,
                        Lease {
                            pool: self.clone(),
                            sender,
                            max_idle: t.idle,
                        },
                    ));
                }
                Some(Err(mut e)) => match e.take_message() {
                    // Never serialized: the connection died under us. Safe to try again.
                    Some(r) if pooled => req = r,
                    // The shared HTTP/2 connection closed before the stream
                    // opened: once more on a new one.
                    Some(r) if matches!(sender, Sender::H2(_)) && !fresh_only => {
                        fresh_only = true;
                        req = r;
                    }
                    Some(r) => {
                        let e = io::Error::other(e.into_error());
                        return Err(SendError::new(Failure::Connect(e), Some(r)));
                    }
                    None => {
                        let again = match &sender {
                            Sender::H1(c) => c.tape.replay(),
                            Sender::H2(_) => copy.as_ref().map(Replay::build),
                        };
                        match again {
                            Some(r) if pooled => {
                                fresh_only = true;
                                req = r;
                            }
                            replay => {
                                let e = e.into_error();
                                let failure = if pooled && closed_under_us(&e) {
                                    Failure::Dropped(e)
                                } else {
                                    Failure::Broken(e)
                                };
                                return Err(SendError {
                                    failure,
                                    request: None,
                                    replay,
                                });
                            }
                        }
                    }
                },
            }
        }
    }
}

/// Takes the idle connections at the front (the oldest) that have idled
/// `max_idle` by `now` out of `idle`.
fn drain_stale<T>(
    idle: &mut Vec<(T, Instant)>,
    now: Instant,
    max_idle: Duration,
) -> Vec<(T, Instant)> {
    let stale = idle
        .iter()
        .take_while(|(_, since)| now.saturating_duration_since(*since) >= max_idle)
        .count();
    idle.drain(..stale).collect()
}

/// Did the backend end the connection (EOF or reset) before any answer, as
/// opposed to a fault of the exchange itself (a bad response, the client's
/// body failing)?
fn closed_under_us(e: &hyper::Error) -> bool {
    // The client's body failing reaches here as a user error, whatever it wraps.
    if e.is_user() {
        return false;
    }
    if e.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            );
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

    /// An open HTTP/1.1 connection over an in-memory pipe.
    async fn sender() -> H1 {
        let (ours, theirs) = tokio::io::duplex(64);
        let (s, conn) = http1::handshake(TokioIo::new(ours))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _keep = theirs;
            let _ = conn.await;
        });
        H1::new((s, Arc::default()))
    }

    fn pool() -> Arc<Pool> {
        Arc::new(Pool::new(&config::Backend {
            name: "b1".into(),
            address: "127.0.0.1:1".parse().expect("address"),
            weight: 1,
            protocol: Protocol::Http1,
            tls: None,
        }))
    }

    const IDLE: Duration = Duration::from_secs(2);

    /// A pooled connection over an in-memory pipe whose far end answers
    /// every request head with an empty 200, keeping what it writes on its
    /// tape.
    async fn answering() -> H1 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let tape = Arc::new(Tape::default());
        let io = crate::coalesce::Coalesce(tape::Taped {
            io: ours,
            tape: tape.clone(),
        });
        let (s, conn) = http1::handshake(TokioIo::new(io)).await.expect("handshake");
        tokio::spawn(conn);
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = theirs.read(&mut buf).await {
                got.extend_from_slice(&buf[..n]);
                while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    got.drain(..end + 4);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if theirs.write_all(ok).await.is_err() {
                        return;
                    }
                }
            }
        });
        H1::new((s, tape))
    }

    /// Once a replayable request has its answer, its connection's tape keeps
    /// nothing more: what follows (an upgraded connection's bytes, say) is no
    /// request to replay, and would only grow the buffer.
    #[tokio::test]
    async fn a_tape_stops_when_its_request_is_answered() {
        let p = pool();
        p.release(answering().await, Instant::now(), IDLE);
        let t = Timeouts {
            connect: IDLE,
            idle: IDLE,
            response: IDLE,
        };
        let req = Request::get("/a").body(Body::empty()).expect("a request");
        let (resp, lease) = p.send(req, true, None, &t).await.expect("answered");
        assert_eq!(resp.status(), 200);
        let tape = &lease.sender.as_ref().expect("HTTP/1").tape;
        assert!(tape.replay().is_none(), "still rolling after the answer");
    }

    #[tokio::test]
    async fn a_burst_above_256_keeps_its_connections_for_the_next() {
        let p = pool();
        let now = Instant::now();
        for _ in 0..400 {
            p.release(sender().await, now, IDLE);
        }
        let kept = std::iter::from_fn(|| p.checkout(IDLE)).count();
        assert_eq!(kept, 400);
    }

    #[tokio::test]
    async fn connections_idle_too_long_leave_as_others_return() {
        let p = pool();
        let t0 = Instant::now();
        for _ in 0..3 {
            p.release(sender().await, t0, IDLE);
        }
        p.release(sender().await, t0 + IDLE / 2, IDLE);
        assert_eq!(p.idle.lock().unwrap().len(), 4);
        // One returning after the first three have idled `IDLE` takes
        // their place; the younger one stays.
        p.release(sender().await, t0 + IDLE, IDLE);
        let left: Vec<Instant> = p.idle.lock().unwrap().iter().map(|(_, t)| *t).collect();
        assert_eq!(left, vec![t0 + IDLE / 2, t0 + IDLE]);
    }

    #[tokio::test]
    async fn a_pool_nobody_uses_again_lets_its_connections_go() {
        const SHORT: Duration = Duration::from_millis(100);
        let p = pool();
        for _ in 0..3 {
            p.release(sender().await, Instant::now(), SHORT);
        }
        assert_eq!(p.idle.lock().unwrap().len(), 3);
        // No request comes again: the sweep alone empties the pool, within
        // two sweeps.
        let emptied = tokio::time::timeout(SHORT * 20, async {
            while !p.idle.lock().unwrap().is_empty() || p.sweeping.load(Ordering::Acquire) {
                tokio::time::sleep(SHORT / 10).await;
            }
        });
        assert!(emptied.await.is_ok(), "the sweep empties the pool and ends");
    }
}
