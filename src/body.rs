//! The one body type that crosses tether in both directions.
//!
//! Proxied bodies are hyper's `Incoming`, streamed frame by frame; tether's own
//! answers (errors, the demo) are small fixed buffers. An enum rather than a
//! boxed trait object keeps the hot path free of an allocation per request.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::future::Future;

use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;

/// Called once when an upstream response body has been read to its end, so
/// the connection can go back to its pool. Dropping the body early drops the
/// guard instead, and the connection with it.
pub trait OnEnd: Send {
    /// The body reached its end cleanly.
    fn done(self: Box<Self>);
}

/// Errors a body can yield.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body seen from the proxy side, shared between the
/// body (which the upstream connection polls) and the service.
///
/// It tells a client's fault (400, 408) from a backend's (502) after the
/// upstream exchange failed, and whose turn it is while the body crosses:
/// time spent waiting for the client's next bytes is the client's (bounded
/// by `timeouts.client_body`), the rest is the backend's (bounded by
/// `timeouts.response`, see [`BodyWatch::backend_stalled`]), so a slow
/// upload never counts against the backend.
#[derive(Debug)]
pub struct BodyWatch {
    fault: AtomicU8,
    /// tether is waiting for the client's next bytes.
    client_turn: AtomicBool,
    /// When the body last moved upstream (a piece handed over, its end, the
    /// start of an exchange), in nanoseconds since `born`.
    moved_ns: AtomicU64,
    born: Instant,
    /// Wakes the waiter in [`BodyWatch::backend_stalled`] when the turn changes.
    turn: Notify,
}

impl Default for BodyWatch {
    fn default() -> Self {
        BodyWatch {
            fault: AtomicU8::new(0),
            client_turn: AtomicBool::new(false),
            moved_ns: AtomicU64::new(0),
            born: Instant::now(),
            turn: Notify::new(),
        }
    }
}

/// The client's body framing broke (an invalid chunk, a short body).
pub const BODY_BROKEN: u8 = 1;
/// The client paused longer than `timeouts.client_body`.
pub const BODY_STALLED: u8 = 2;

impl BodyWatch {
    /// 0 (fine), [`BODY_BROKEN`] or [`BODY_STALLED`].
    pub fn get(&self) -> u8 {
        self.fault.load(Ordering::Relaxed)
    }
    fn set(&self, v: u8) {
        self.fault.store(v, Ordering::Relaxed);
    }

    /// An upstream exchange begins: the backend's clock starts now.
    pub fn started(&self) {
        self.moved();
    }

    /// The body moved upstream: the backend's turn (again) from now.
    fn moved(&self) {
        // Saturates after 584 years, and an exchange never lasts that long.
        let ns = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.moved_ns.store(ns, Ordering::Release);
        if self.client_turn.swap(false, Ordering::AcqRel) {
            self.turn.notify_one();
        }
    }

    /// tether is waiting for the client: the backend's clock stops.
    fn waiting_on_client(&self) {
        if !self.client_turn.swap(true, Ordering::AcqRel) {
            self.turn.notify_one();
        }
    }

    /// Resolves once the backend has kept the exchange waiting for `limit`
    /// in one stretch: not taking the next piece of the body, or, after the
    /// body's end (or since [`BodyWatch::started`]), not answering. Never
    /// while tether is waiting for the client.
    pub async fn backend_stalled(&self, limit: Duration) {
        loop {
            // Registered before the turn is read, so a change in between
            // still wakes this loop (`notify_one` stores a permit).
            let changed = self.turn.notified();
            if self.client_turn.load(Ordering::Acquire) {
                changed.await;
                continue;
            }
            let moved = self.born + Duration::from_nanos(self.moved_ns.load(Ordering::Acquire));
            let deadline = moved + limit;
            if Instant::now() >= deadline {
                return;
            }
            // Progress within the backend's turn does not wake this loop: the
            // deadline is checked again, from the latest move, when it falls.
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("client paused its request body longer than timeouts.client_body")]
struct Stalled;

/// A streaming body: proxied bytes, or a small fixed answer.
pub enum Body {
    /// A client's request body on its way upstream; records in `watch` why
    /// it failed, and fails it if the client pauses longer than `pause`.
    Request {
        /// The client's body.
        inner: Incoming,
        /// Shared with the service.
        watch: Arc<BodyWatch>,
        /// `timeouts.client_body`.
        pause: Duration,
        /// Armed while waiting for the client.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// Streamed from a peer; `on_end` fires at the clean end of the stream.
    Stream {
        /// The peer's body.
        inner: Incoming,
        /// Fired once at end of stream.
        on_end: Option<Box<dyn OnEnd>>,
    },
    /// A fixed buffer (taken on the first poll).
    Full(Option<Bytes>),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body::Full(None)
    }

    /// A fixed body.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let b: Bytes = bytes.into();
        if b.is_empty() {
            Body::Full(None)
        } else {
            Body::Full(Some(b))
        }
    }

    /// A streamed body with no end hook.
    pub fn stream(inner: Incoming) -> Body {
        Body::Stream {
            inner,
            on_end: None,
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Request {
                inner,
                watch,
                pause,
                timer,
            } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    *timer = None;
                    watch.moved();
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Ready(Some(Err(e))) => {
                    watch.set(BODY_BROKEN);
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(None) => {
                    watch.moved();
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    watch.waiting_on_client();
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*pause)));
                    match t.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            watch.set(BODY_STALLED);
                            Poll::Ready(Some(Err(Box::new(Stalled))))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
            Body::Stream { inner, on_end } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    if let Some(hook) = on_end.take() {
                        hook.done();
                    }
                } else if inner.is_end_stream() {
                    if let Some(hook) = on_end.take() {
                        hook.done();
                    }
                }
                polled.map(|o| o.map(|r| r.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::Stream { inner, .. } | Body::Request { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream { inner, .. } | Body::Request { inner, .. } => inner.size_hint(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Stream { .. } => f.write_str("Body::Stream"),
            Body::Request { .. } => f.write_str("Body::Request"),
            Body::Full(b) => write!(f, "Body::Full({} bytes)", b.as_ref().map_or(0, |b| b.len())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(60);

    async fn stalls_within(w: &BodyWatch, within: Duration) -> bool {
        tokio::time::timeout(within, w.backend_stalled(LIMIT))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn the_backends_clock_runs_from_the_last_move() {
        let w = BodyWatch::default();
        w.started();
        let t0 = Instant::now();
        assert!(stalls_within(&w, Duration::from_secs(5)).await);
        assert!(t0.elapsed() >= LIMIT);

        // A move restarts the clock.
        w.started();
        tokio::time::sleep(LIMIT / 2).await;
        w.moved();
        let t1 = Instant::now();
        assert!(stalls_within(&w, Duration::from_secs(5)).await);
        assert!(t1.elapsed() >= LIMIT);
    }

    #[tokio::test]
    async fn the_clients_turn_never_counts_against_the_backend() {
        let w = Arc::new(BodyWatch::default());
        w.started();
        w.waiting_on_client();
        assert!(!stalls_within(&w, LIMIT * 3).await, "the client's time");

        // The client delivers: the backend's clock starts from that moment,
        // and the waiter is woken by the change of turn.
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move {
                w.backend_stalled(LIMIT).await;
                Instant::now()
            })
        };
        tokio::time::sleep(LIMIT * 2).await;
        let delivered = Instant::now();
        w.moved();
        let stalled = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the backend's clock ran out")
            .expect("waiter");
        assert!(stalled >= delivered + LIMIT);
    }
}
