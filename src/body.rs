//! The one body type that crosses tether in both directions.
//!
//! Proxied bodies are hyper's `Incoming`, streamed frame by frame; tether's own
//! answers (errors, the demo) are small fixed buffers. An enum rather than a
//! boxed trait object keeps the hot path free of an allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

/// Called once when an upstream response body has been read to its end, so
/// the connection can go back to its pool. Dropping the body early drops the
/// guard instead, and the connection with it.
pub trait OnEnd: Send {
    /// The body reached its end cleanly.
    fn done(self: Box<Self>);
}

/// A streaming body: proxied bytes, or a small fixed answer.
pub enum Body {
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
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
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Stream { .. } => f.write_str("Body::Stream"),
            Body::Full(b) => write!(f, "Body::Full({} bytes)", b.as_ref().map_or(0, |b| b.len())),
        }
    }
}
