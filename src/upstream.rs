//! HTTP/1.1 to backends: a keep-alive connection pool per backend, connect and
//! response timeouts, and failures classified by whether the request could
//! have reached the backend (only requests that never did may be retried
//! elsewhere; the *decision* to retry is `service/`'s).
//!
//! A pooled connection goes back to its pool when the response body has been
//! read to its end (see [`Lease`]); a body dropped half-read takes its
//! connection with it, since the stream position is lost.
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{Body, BodyWatch, OnEnd};

/// Idle connections kept per backend; more are closed when released.
/// Enough for the concurrency one core can drive; backends cap it too.
const MAX_IDLE_PER_BACKEND: usize = 256;

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
}

impl SendError {
    fn new(failure: Failure, request: Option<Request<Body>>) -> SendError {
        SendError { failure, request }
    }
}

/// What is needed to send an idempotent, bodiless request again.
#[derive(Debug, Clone)]
pub struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Replay {
    /// Captures a request head for replay.
    pub fn new(parts: &http::request::Parts) -> Replay {
        Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        }
    }

    /// A fresh copy of the request, with an empty body.
    pub fn build(&self) -> Request<Body> {
        let mut r = Request::new(Body::empty());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Keep-alive connections to one backend.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    /// Idle connections, each with the moment it went idle, oldest first.
    idle: Mutex<Vec<(http1::SendRequest<Body>, Instant)>>,
}

/// Returns a connection to its pool once the response body is fully read.
pub struct Lease {
    pool: Arc<Pool>,
    sender: http1::SendRequest<Body>,
}

impl OnEnd for Lease {
    fn done(self: Box<Self>) {
        let Lease { pool, sender } = *self;
        pool.release(sender);
    }
}

impl Pool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr) -> Pool {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The backend address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The most recently idled connection that is open and has idled less
    /// than `max_idle`.
    fn checkout(&self, max_idle: Duration) -> Option<http1::SendRequest<Body>> {
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
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn release(&self, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push((sender, now));
        }
    }

    async fn connect(&self, t: &Timeouts) -> Result<http1::SendRequest<Body>, io::Error> {
        let stream = match tokio::time::timeout(t.connect, TcpStream::connect(self.addr)).await {
            Ok(s) => s?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
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
    /// written, and, for a `replay`able request, also if the backend closed
    /// the kept-alive connection before answering (the keep-alive race).
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
        replay: Option<&Replay>,
        body: Option<&BodyWatch>,
        t: &Timeouts,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let mut fresh_only = false;
        // Each stale pooled connection is discarded; the loop ends on a fresh one.
        loop {
            let pooled_sender = if fresh_only {
                None
            } else {
                self.checkout(t.idle)
            };
            let (mut sender, pooled) = match pooled_sender {
                Some(s) => (s, true),
                None => match self.connect(t).await {
                    Ok(s) => (s, false),
                    Err(e) => return Err(SendError::new(Failure::Connect(e), Some(req))),
                },
            };
            if pooled && sender.ready().await.is_err() {
                continue;
            }
            let exchange = sender.try_send_request(req);
            let answer = match body {
                None => tokio::time::timeout(t.response, exchange).await.ok(),
                // The backend's clock stops while the client trickles its body.
                Some(w) => {
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
                    return Ok((
                        resp,
                        Lease {
                            pool: self.clone(),
                            sender,
                        },
                    ))
                }
                Some(Err(mut e)) => match e.take_message() {
                    // Never serialized: the connection died under us. Safe to try again.
                    Some(r) if pooled => req = r,
                    Some(r) => {
                        let e = io::Error::other(e.into_error());
                        return Err(SendError::new(Failure::Connect(e), Some(r)));
                    }
                    None => match replay {
                        Some(r) if pooled => {
                            fresh_only = true;
                            req = r.build();
                        }
                        _ => {
                            let e = e.into_error();
                            let failure = if pooled && closed_under_us(&e) {
                                Failure::Dropped(e)
                            } else {
                                Failure::Broken(e)
                            };
                            return Err(SendError::new(failure, None));
                        }
                    },
                },
            }
        }
    }
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
