//! HTTP/1.1 to backends: a keep-alive connection pool per backend, connect and
//! response timeouts, and failures classified by whether the request could
//! have reached the backend (only requests that never did may be retried
//! elsewhere; the *decision* to retry is `service.rs`'s).
//!
//! A pooled connection goes back to its pool when the response body has been
//! read to its end (see [`Lease`]); a body dropped half-read takes its
//! connection with it, since the stream position is lost.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::OnEnd;

/// Idle connections kept per backend; more are closed when released.
/// Enough for the concurrency one core can drive; backends cap it too.
const MAX_IDLE_PER_BACKEND: usize = 256;

/// Upstream timeouts (from `[timeouts]`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect to a backend.
    pub connect: Duration,
    /// From sending the request until the response head arrives.
    pub response: Duration,
}

/// Why a send failed.
#[derive(Debug)]
pub enum Failure {
    /// Could not connect (refused, unreachable, timed out): nothing was sent.
    Connect(io::Error),
    /// The exchange broke after the request may have been sent.
    Broken(hyper::Error),
    /// No response head within `timeouts.response`.
    Timeout,
}

/// A failed send, with the request handed back when it was never sent.
#[derive(Debug)]
pub struct SendError {
    /// What went wrong.
    pub failure: Failure,
    /// The untouched request, present only if nothing reached the backend.
    pub request: Option<Request<Incoming>>,
}

/// Keep-alive connections to one backend.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<http1::SendRequest<Incoming>>>,
}

/// Returns a connection to its pool once the response body is fully read.
pub struct Lease {
    pool: Arc<Pool>,
    sender: http1::SendRequest<Incoming>,
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

    fn checkout(&self) -> Option<http1::SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn release(&self, sender: http1::SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(sender);
        }
    }

    /// Idle connections right now (for tests and the status page).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    async fn connect(&self, t: &Timeouts) -> Result<http1::SendRequest<Incoming>, io::Error> {
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
    ///
    /// # Errors
    /// [`Failure::Connect`] hands the request back (nothing was sent); a stale
    /// pooled connection is retried on a fresh one without the caller noticing.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        t: &Timeouts,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        // Each stale pooled connection is discarded; the loop ends on a fresh one.
        loop {
            let (mut sender, pooled) = match self.checkout() {
                Some(s) => (s, true),
                None => match self.connect(t).await {
                    Ok(s) => (s, false),
                    Err(e) => {
                        return Err(SendError {
                            failure: Failure::Connect(e),
                            request: Some(req),
                        })
                    }
                },
            };
            if pooled && sender.ready().await.is_err() {
                continue;
            }
            match tokio::time::timeout(t.response, sender.try_send_request(req)).await {
                Err(_) => {
                    return Err(SendError {
                        failure: Failure::Timeout,
                        request: None,
                    })
                }
                Ok(Ok(resp)) => {
                    return Ok((
                        resp,
                        Lease {
                            pool: self.clone(),
                            sender,
                        },
                    ))
                }
                Ok(Err(mut e)) => match e.take_message() {
                    // Never serialized: the connection died under us. Safe to try again.
                    Some(r) if pooled => req = r,
                    Some(r) => {
                        return Err(SendError {
                            failure: Failure::Connect(io::Error::other(e.into_error())),
                            request: Some(r),
                        })
                    }
                    None => {
                        return Err(SendError {
                            failure: Failure::Broken(e.into_error()),
                            request: None,
                        })
                    }
                },
            }
        }
    }
}
