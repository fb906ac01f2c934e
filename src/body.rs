//! The one body type that crosses tether in both directions.
//!
//! Proxied bodies are hyper's `Incoming`, streamed frame by frame; tether's own
//! answers (errors, the demo) are small fixed buffers. An enum rather than a
//! boxed trait object keeps the hot path free of an allocation per request.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use std::future::Future;

use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

/// Called once when an upstream response body has been read to its end, so
/// the connection can go back to its pool. Dropping the body early drops the
/// guard instead, and the connection with it.
pub trait OnEnd: Send {
    /// The body reached its end cleanly.
    fn done(self: Box<Self>);
}

/// Errors a body can yield.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong with a client's request body, seen from the proxy side
/// after the upstream exchange failed: it tells a client's fault (400, 408)
/// from a backend's (502).
#[derive(Debug, Default)]
pub struct BodyWatch(AtomicU8);

/// The client's body framing broke (an invalid chunk, a short body).
pub const BODY_BROKEN: u8 = 1;
/// The client paused longer than `timeouts.client_body`.
pub const BODY_STALLED: u8 = 2;

impl BodyWatch {
    /// 0 (fine), [`BODY_BROKEN`] or [`BODY_STALLED`].
    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Relaxed);
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
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Ready(Some(Err(e))) => {
                    watch.set(BODY_BROKEN);
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
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
