//! Small vectored writes leave as one plain write.
//!
//! hyper hands an HTTP/1 message to its stream as a vectored write (the head
//! in one buffer, the body chunk in another). On a socket that is `writev`,
//! which the kernel takes through its file layer; a single buffer goes out by
//! `send`, the socket's own path, which costs less per call. HAProxy and
//! nginx send a small response the same way. So a vectored write of at most
//! [`MAX`] bytes is copied into one per-thread buffer and written once; a
//! larger one (a big body chunk) stays vectored, so its bytes are not copied
//! and no connection keeps a buffer the size of its largest chunk.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::passthrough::read_through;

/// The most bytes one vectored write is copied to go out as one.
pub(crate) const MAX: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes `bufs` to `io`: one buffer as it is, a few small ones copied
/// together, large ones vectored. Returns how many bytes of their
/// concatenation were written, as `poll_write_vectored` does.
pub(crate) fn poll_write_vectored<W: AsyncWrite + ?Sized>(
    io: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    match bufs.iter().position(|b| !b.is_empty()) {
        None => return io.poll_write(cx, &[]),
        Some(i) if bufs[i + 1..].iter().all(|b| b.is_empty()) => {
            return io.poll_write(cx, &bufs[i])
        }
        Some(_) => {}
    }
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if total > MAX {
        return io.poll_write_vectored(cx, bufs);
    }
    SCRATCH.with(|scratch| {
        // A stream below this one that coalesces too finds the buffer taken
        // and writes vectored instead.
        let Ok(mut joined) = scratch.try_borrow_mut() else {
            return io.poll_write_vectored(cx, bufs);
        };
        joined.clear();
        for b in bufs {
            joined.extend_from_slice(b);
        }
        io.poll_write(cx, &joined)
    })
}

/// A stream whose vectored writes go through [`poll_write_vectored`];
/// everything else passes through.
pub struct Coalesce<I>(pub I);

read_through!([I] Coalesce<I>, 0);

impl<I: AsyncWrite + Unpin> AsyncWrite for Coalesce<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, b)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_vectored(Pin::new(&mut self.0), cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        // hyper keeps body chunks queued (not copied) only for a stream
        // that says it writes vectored.
        self.0.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// Records each call: `(vectored, bytes)`, and accepts at most `room`
    /// bytes per call.
    struct Recorder {
        calls: Vec<(bool, Vec<u8>)>,
        room: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = b.len().min(self.room);
            self.calls.push((false, b[..n].to_vec()));
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len().min(self.room);
            self.calls.push((true, all[..n].to_vec()));
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        let rt = tokio::runtime::Builder::new_current_thread().build();
        rt.expect("a runtime").block_on(f)
    }

    fn write(parts: &[&[u8]], room: usize) -> (usize, Vec<(bool, Vec<u8>)>) {
        let mut r = Coalesce(Recorder {
            calls: Vec::new(),
            room,
        });
        let bufs: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let n = block(poll_fn(|cx| {
            Pin::new(&mut r).poll_write_vectored(cx, &bufs)
        }));
        (n.expect("the recorder never fails"), r.0.calls)
    }

    #[test]
    fn which_writes_are_joined() {
        let big = vec![b'x'; MAX];
        /// What, the buffers, room per call, bytes reported, calls seen.
        type Case<'a> = (
            &'a str,
            &'a [&'a [u8]],
            usize,
            usize,
            &'a [(bool, &'a [u8])],
        );
        let cases: &[Case<'_>] = &[
            (
                "one buffer goes as it is",
                &[b"head"],
                100,
                4,
                &[(false, b"head")],
            ),
            (
                "empty buffers around one do not make it vectored",
                &[b"", b"head", b""],
                100,
                4,
                &[(false, b"head")],
            ),
            (
                "nothing to write is one empty write",
                &[b"", b""],
                100,
                0,
                &[(false, b"")],
            ),
            (
                "head and a small body leave as one write",
                &[b"HTTP/1.1 200 OK\r\n\r\n", b"body"],
                100,
                23,
                &[(false, b"HTTP/1.1 200 OK\r\n\r\nbody")],
            ),
            (
                "a short write reports how far into the whole it got",
                &[b"abc", b"def"],
                4,
                4,
                &[(false, b"abcd")],
            ),
        ];
        for (what, parts, room, n, calls) in cases {
            let (wrote, seen) = write(parts, *room);
            assert_eq!(wrote, *n, "{what}");
            let seen: Vec<(bool, &[u8])> = seen.iter().map(|(v, b)| (*v, b.as_slice())).collect();
            assert_eq!(seen, *calls, "{what}");
        }
        let (wrote, seen) = write(&[b"h", &big], usize::MAX);
        assert_eq!(wrote, MAX + 1, "past MAX the write stays vectored");
        assert_eq!(seen.len(), 1);
        assert!(seen[0].0, "past MAX the write stays vectored");
    }

    #[test]
    fn a_coalescing_stream_under_another_writes_vectored() {
        let mut inner = Coalesce(Coalesce(Recorder {
            calls: Vec::new(),
            room: 100,
        }));
        SCRATCH.with(|s| {
            let _held = s.borrow_mut();
            let bufs = [IoSlice::new(b"ab"), IoSlice::new(b"cd")];
            let got = block(poll_fn(|cx| {
                Pin::new(&mut inner).poll_write_vectored(cx, &bufs)
            }));
            assert_eq!(got.expect("the recorder never fails"), 4);
        });
        assert_eq!(inner.0 .0.calls, vec![(true, b"abcd".to_vec())]);
    }
}
