//! The bytes an HTTP/1 connection wrote for its current request, kept while
//! that request is one that may be sent again (idempotent, bodiless): if
//! the backend breaks before answering, the request is rebuilt from them.
//!
//! Keeping the head as written costs one copy of a few hundred bytes into a
//! buffer the connection reuses; keeping it as a `HeaderMap` clone cost two
//! allocations and a reference count taken and dropped per field, on every
//! such request, for the rare one that is replayed.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::Request;
use tokio::io::AsyncWrite;

use crate::body::Body;
use crate::passthrough::read_through;

/// The most bytes a tape keeps: a head longer than this is not replayed.
const LIMIT: usize = 64 * 1024;

/// Most header fields a replayed head may have (hyper's own default bound).
const MAX_FIELDS: usize = 100;

/// What one connection wrote since its tape was last started.
#[derive(Debug, Default)]
pub(super) struct Tape {
    /// Whether writes are being kept (only for a replayable request).
    rolling: AtomicBool,
    /// The bytes, and whether some did not fit.
    bytes: Mutex<(Vec<u8>, bool)>,
}

impl Tape {
    /// Keeps what the connection writes from now on, or, when `rolling` is
    /// false (a request that will not be replayed), nothing.
    pub(super) fn start(&self, rolling: bool) {
        if rolling {
            let mut b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
            b.0.clear();
            b.1 = false;
        }
        self.rolling.store(rolling, Ordering::Release);
    }

    /// Keeps nothing more: the request got its answer, so it will not be
    /// replayed, and what the connection writes next (the bytes of an
    /// upgraded connection, say) is not a request head.
    pub(super) fn stop(&self) {
        self.rolling.store(false, Ordering::Release);
    }

    fn record(&self, written: &[u8]) {
        if written.is_empty() || !self.rolling.load(Ordering::Acquire) {
            return;
        }
        let mut b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        if b.0.len() + written.len() > LIMIT {
            b.1 = true;
        } else {
            b.0.extend_from_slice(written);
        }
    }

    /// The request the connection wrote since [`Tape::start`], rebuilt with
    /// an empty body; `None` unless that was exactly one whole request head.
    pub(super) fn replay(&self) -> Option<Request<Body>> {
        if !self.rolling.load(Ordering::Acquire) {
            return None;
        }
        let b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        if b.1 {
            return None;
        }
        rebuild(&b.0)
    }
}

/// A request from the bytes of its head, with an empty body; `None` unless
/// `head` is exactly one whole head.
fn rebuild(head: &[u8]) -> Option<Request<Body>> {
    let mut fields = vec![httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let mut r = Request::new(Body::empty());
    *r.method_mut() = http::Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    *r.uri_mut() = parsed.path?.parse().ok()?;
    *r.version_mut() = match parsed.version? {
        0 => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let headers = r.headers_mut();
    for f in parsed.headers.iter() {
        let name = http::HeaderName::from_bytes(f.name.as_bytes()).ok()?;
        headers.append(name, http::HeaderValue::from_bytes(f.value).ok()?);
    }
    Some(r)
}

/// A connection's stream, with what is written to it kept on its [`Tape`].
pub(super) struct Taped<I> {
    pub(super) io: I,
    pub(super) tape: Arc<Tape>,
}

read_through!([I] Taped<I>, io);

impl<I: AsyncWrite + Unpin> AsyncWrite for Taped<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, b));
        // A write that failed still counts: the connection is over, and the
        // request it carried is rebuilt from what hyper meant to send (the
        // backend closed the connection as it went out: the keep-alive race).
        let n = *written.as_ref().unwrap_or(&b.len());
        self.tape.record(&b[..n]);
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = std::task::ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs));
        // As in `poll_write`: a failed write counts whole.
        let mut n = *written
            .as_ref()
            .unwrap_or(&bufs.iter().map(|b| b.len()).sum());
        for b in bufs {
            let k = n.min(b.len());
            self.tape.record(&b[..k]);
            n -= k;
            if n == 0 {
                break;
            }
        }
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const HEAD: &[u8] = b"GET /a/b?c=d HTTP/1.1\r\nhost: example.com\r\ncookie: a=1\r\n\
        x-empty: \r\ncookie: b=2\r\nx-bytes: caf\xc3\xa9 \x80\xff\r\n\r\n";

    /// A head as written comes back as the request it was: method, target,
    /// version, every field in order, repeated names, empty and non-ASCII
    /// values.
    #[test]
    fn a_head_comes_back_as_its_request() {
        let r = rebuild(HEAD).expect("a whole head");
        assert_eq!(r.method(), http::Method::GET);
        assert_eq!(r.uri(), "/a/b?c=d");
        assert_eq!(r.version(), http::Version::HTTP_11);
        let fields: Vec<(&str, &[u8])> = r
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let want: Vec<(&str, &[u8])> = vec![
            ("host", b"example.com"),
            ("cookie", b"a=1"),
            ("cookie", b"b=2"),
            ("x-empty", b""),
            ("x-bytes", b"caf\xc3\xa9 \x80\xff"),
        ];
        assert_eq!(fields, want);
    }

    /// Anything but exactly one whole head rebuilds nothing.
    #[test]
    fn only_one_whole_head_is_rebuilt() {
        for cut in 0..HEAD.len() {
            assert!(rebuild(&HEAD[..cut]).is_none(), "cut at {cut}");
        }
        let two = [HEAD, HEAD].concat();
        assert!(rebuild(&two).is_none());
        assert!(rebuild(b"GET / HTTP/1.1\r\nhost: x\r\n\r\nbody").is_none());
    }

    /// The tape keeps what went out, plain or vectored, only while started
    /// for a replayable request, and only from its start.
    #[tokio::test]
    async fn the_tape_keeps_what_was_written_since_it_started() {
        let tape = Arc::new(Tape::default());
        let mut io = Taped {
            io: Vec::new(),
            tape: tape.clone(),
        };
        tape.start(true);
        io.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        tape.start(true);
        let (head, rest) = HEAD.split_at(20);
        let bufs = [IoSlice::new(head), IoSlice::new(rest)];
        let n = io.write_vectored(&bufs).await.unwrap();
        io.write_all(&HEAD[n..]).await.unwrap();
        let r = tape.replay().expect("the second head");
        assert_eq!(r.uri(), "/a/b?c=d");
        tape.start(false);
        io.write_all(HEAD).await.unwrap();
        assert!(tape.replay().is_none(), "not rolling");
        tape.start(true);
        io.write_all(&vec![b'x'; LIMIT + 1]).await.unwrap();
        assert!(tape.replay().is_none(), "too long to keep");
    }

    /// A head whose write failed (the backend closed the connection as it
    /// went out) is kept whole, plain or vectored.
    #[tokio::test]
    async fn a_head_whose_write_failed_is_kept() {
        for vectored in [false, true] {
            let (ours, theirs) = tokio::io::duplex(64);
            drop(theirs);
            let tape = Arc::new(Tape::default());
            let mut io = Taped {
                io: ours,
                tape: tape.clone(),
            };
            tape.start(true);
            let failed = if vectored {
                let (head, rest) = HEAD.split_at(20);
                io.write_vectored(&[IoSlice::new(head), IoSlice::new(rest)])
                    .await
            } else {
                io.write(HEAD).await
            };
            assert!(failed.is_err(), "the peer is gone");
            let r = tape.replay().expect("the head as meant");
            assert_eq!(r.uri(), "/a/b?c=d", "vectored: {vectored}");
        }
    }
}
