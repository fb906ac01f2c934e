//! Copies bytes both ways between two streams (an upgraded client and its
//! backend) with `copy_bidirectional`'s semantics, holding a buffer only
//! while bytes are in flight. Leaves idle timing and shutdown to
//! `upgrade.rs`.
//!
//! tokio's copy keeps an 8 KiB buffer per direction for the life of the
//! tunnel, most of which is spent idle (a WebSocket waits for its next
//! message). Here a read lands in a per-thread scratch buffer and is written
//! on at once; a direction gets a buffer of its own only when the writer
//! refuses bytes. The remainder goes there, and further reads go straight
//! into it while the burst lasts, so a long transfer to a slow reader is
//! copied once more at its start, not at every read. The buffer is freed
//! once it is written out and the reader has nothing more. While it holds
//! bytes, nothing more is read from that side: memory per direction stays
//! within one buffer.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One TLS record's worth of plaintext: the most one read takes, and the
/// size of a direction's own buffer.
const BUF: usize = 16 * 1024;

thread_local! {
    // Borrowed only inside `Direction::poll_read_through`, which never
    // awaits and calls nothing that could re-enter it: one read, then
    // writes.
    static SCRATCH: RefCell<[u8; BUF]> = const { RefCell::new([0; BUF]) };
}

/// Copies `a` → `b` and `b` → `a` concurrently until both directions have
/// seen EOF; EOF on one side shuts down the other side's write half.
///
/// # Errors
///
/// The first read, write, flush or shutdown error on either side ends the
/// copy; bytes read but not yet written are then lost.
pub(crate) async fn copy_both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Direction::default(), Direction::default());
    poll_fn(|cx| {
        let there = a_to_b.poll(cx, &mut *a, &mut *b)?;
        let back = b_to_a.poll(cx, &mut *b, &mut *a)?;
        ready!(there);
        ready!(back);
        Poll::Ready(Ok(()))
    })
    .await
}

/// One direction of the copy.
#[derive(Default)]
struct Direction {
    state: State,
    /// The buffer of a burst the writer could not take at once; `None`
    /// otherwise, which is the idle case.
    held: Option<Held>,
    /// Bytes were written since the last flush.
    unflushed: bool,
}

#[derive(Default)]
enum State {
    #[default]
    Copying,
    /// The reader saw EOF: shut the writer's write half down.
    ShuttingDown,
    Done,
}

/// Bytes `buf[at..end]` are read and not yet written.
struct Held {
    buf: Box<[u8]>,
    at: usize,
    end: usize,
}

impl Direction {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            match self.state {
                State::Copying => {
                    let read = match &mut self.held {
                        Some(held) => {
                            while held.at < held.end {
                                let bytes = &held.buf[held.at..held.end];
                                held.at += ready!(poll_write(cx, w, bytes))?;
                                self.unflushed = true;
                            }
                            (held.at, held.end) = (0, 0);
                            let n = poll_read(cx, r, &mut held.buf);
                            if let Poll::Ready(Ok(n)) = n {
                                held.end = n;
                            }
                            n
                        }
                        None => self.poll_read_through(cx, r, w),
                    };
                    match read {
                        Poll::Ready(Ok(0)) => {
                            self.held = None;
                            self.state = State::ShuttingDown;
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            // Everything read is written: the burst is over.
                            self.held = None;
                            // Push out what a buffering writer (TLS) holds.
                            if self.unflushed {
                                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                                self.unflushed = false;
                            }
                            return Poll::Pending;
                        }
                    }
                }
                State::ShuttingDown => {
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Reads once into the scratch buffer and writes what the writer takes
    /// at once; keeps the rest in a buffer of this direction's own (the
    /// writer's `Pending` has registered the waker that will drain it).
    /// Returns what the read returned.
    fn poll_read_through<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        SCRATCH.with_borrow_mut(|scratch| {
            let n = ready!(poll_read(cx, r, scratch))?;
            let mut at = 0;
            while at < n {
                match poll_write(cx, w, &scratch[at..n]) {
                    Poll::Ready(Ok(written)) => {
                        at += written;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        let mut buf = vec![0; BUF].into_boxed_slice();
                        buf[..n - at].copy_from_slice(&scratch[at..n]);
                        self.held = Some(Held {
                            buf,
                            at: 0,
                            end: n - at,
                        });
                        break;
                    }
                }
            }
            Poll::Ready(Ok(n))
        })
    }
}

/// One read into `buf`, retrying `Interrupted`; the number of bytes read
/// (0 at EOF).
fn poll_read<R>(cx: &mut Context<'_>, r: &mut R, buf: &mut [u8]) -> Poll<io::Result<usize>>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut buf = ReadBuf::new(buf);
    loop {
        match ready!(Pin::new(&mut *r).poll_read(cx, &mut buf)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            done => return Poll::Ready(done.map(|()| buf.filled().len())),
        }
    }
}

/// One write, retrying `Interrupted`. A write of zero bytes is the error
/// `copy_bidirectional` makes of it: such a writer would be polled forever.
fn poll_write<W>(cx: &mut Context<'_>, w: &mut W, bytes: &[u8]) -> Poll<io::Result<usize>>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    loop {
        match ready!(Pin::new(&mut *w).poll_write(cx, bytes)) {
            Ok(0) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "write zero byte into writer",
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            done => return Poll::Ready(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::pin;
    use std::time::Duration;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Bytes allocated and not yet freed by the current thread (may go
    /// negative when a thread frees what another allocated). A test on a
    /// current-thread runtime sees exactly its own allocations.
    struct PerThread;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    fn note(delta: isize) {
        let _ = LIVE.try_with(|l| l.set(l.get() + delta));
    }

    fn live() -> isize {
        LIVE.with(Cell::get)
    }

    // SAFETY: every call goes to `System` unchanged; the counter only
    // touches a const-initialized thread local, which never allocates.
    unsafe impl GlobalAlloc for PerThread {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size() as isize);
            System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            note(-(layout.size() as isize));
            System.dealloc(ptr, layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size() as isize);
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            note(new as isize - layout.size() as isize);
            System.realloc(ptr, layout, new)
        }
    }

    #[global_allocator]
    static ALLOC: PerThread = PerThread;

    const HANG: Duration = Duration::from_secs(5);

    /// `client ⇄ a`, copy between `a` and `b`, `b ⇄ server`: the copy runs
    /// on its own task; returns the two outer ends and the task.
    fn tunnel(
        cap: usize,
    ) -> (
        DuplexStream,
        DuplexStream,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let (client, mut a) = duplex(cap);
        let (mut b, server) = duplex(cap);
        let task = tokio::spawn(async move { copy_both_ways(&mut a, &mut b).await });
        (client, server, task)
    }

    async fn read_exact(s: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        tokio::time::timeout(HANG, s.read_exact(&mut got))
            .await
            .expect("bytes arrive")
            .expect("read");
        got
    }

    async fn at_eof(s: &mut DuplexStream) -> bool {
        let mut one = [0u8; 1];
        let n = tokio::time::timeout(HANG, s.read(&mut one))
            .await
            .expect("EOF arrives")
            .expect("read");
        n == 0
    }

    /// A payload whose every byte depends on its position, so a lost,
    /// doubled or reordered chunk shows.
    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ (i >> 12) as u8).collect()
    }

    #[tokio::test]
    async fn bytes_cross_both_ways() {
        let (mut client, mut server, _task) = tunnel(1024);
        client.write_all(b"hello backend").await.unwrap();
        assert_eq!(read_exact(&mut server, 13).await, b"hello backend");
        server.write_all(b"hello client").await.unwrap();
        assert_eq!(read_exact(&mut client, 12).await, b"hello client");
        client.write_all(b"again").await.unwrap();
        assert_eq!(read_exact(&mut server, 5).await, b"again");
    }

    #[tokio::test]
    async fn a_buffering_writer_is_flushed_once_the_reader_pauses() {
        // A TLS stream holds written bytes until flushed; BufWriter stands in.
        let (mut client, mut a) = duplex(1024);
        let (b, mut server) = duplex(1024);
        let mut b = tokio::io::BufWriter::new(b);
        let _task = tokio::spawn(async move { copy_both_ways(&mut a, &mut b).await });
        client.write_all(b"a short message").await.unwrap();
        assert_eq!(read_exact(&mut server, 15).await, b"a short message");
    }

    #[tokio::test]
    async fn eof_on_one_side_shuts_the_other_side_and_the_copy_ends_when_both_are_done() {
        let (mut client, mut server, task) = tunnel(1024);
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_exact(&mut server, 10).await, b"last words");
        assert!(
            at_eof(&mut server).await,
            "the client's EOF reaches the backend"
        );
        assert!(!task.is_finished(), "the other direction still runs");

        server.write_all(b"reply after EOF").await.unwrap();
        assert_eq!(read_exact(&mut client, 15).await, b"reply after EOF");
        server.shutdown().await.unwrap();
        assert!(
            at_eof(&mut client).await,
            "the backend's EOF reaches the client"
        );
        let done = tokio::time::timeout(HANG, task).await.expect("copy ends");
        done.unwrap().expect("both directions ended cleanly");
    }

    #[tokio::test]
    async fn a_slow_reader_holds_the_writer_back_and_several_mib_arrive_intact() {
        const CAP: usize = 64;
        const BIG: usize = 4 << 20;
        let (mut client, mut server, task) = tunnel(CAP);
        let sent = payload(BIG);
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = {
            let (sent, accepted) = (sent.clone(), accepted.clone());
            tokio::spawn(async move {
                for chunk in sent.chunks(4096) {
                    client.write_all(chunk).await.unwrap();
                    accepted.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                }
                client.shutdown().await.unwrap();
                client
            })
        };
        // Read the first bytes, then stop reading: the writer must stall
        // once the duplexes and whatever the copy holds are full. Nothing
        // signals "no more progress", so give it a moment to overrun.
        assert_eq!(read_exact(&mut server, 1000).await, sent[..1000]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stalled = accepted.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            stalled < 1000 + 2 * CAP + 2 * 4096 + BUF,
            "the writer got {stalled} bytes ahead of a reader that stopped"
        );

        let mut got = sent[..1000].to_vec();
        got.extend(read_exact(&mut server, BIG - 1000).await);
        assert!(got == sent, "{BIG} bytes arrive intact and in order");
        assert!(at_eof(&mut server).await);
        let mut client = writer.await.unwrap();
        server.shutdown().await.unwrap();
        assert!(at_eof(&mut client).await);
        tokio::time::timeout(HANG, task)
            .await
            .expect("copy ends")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn an_error_on_one_side_ends_the_copy() {
        // The client end stays open and silent; the backend speaks.
        let (_client, a) = duplex(1024);
        let (mut b, mut server) = duplex(1024);
        let task = tokio::spawn(async move {
            let mut a = Failing(a);
            copy_both_ways(&mut a, &mut b).await
        });
        server.write_all(b"to a client that fails").await.unwrap();
        let r = tokio::time::timeout(HANG, task).await.expect("copy ends");
        let e = r.unwrap().expect_err("the write error ends the copy");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert!(at_eof(&mut server).await, "the backend side is dropped");
    }

    /// Reads like the stream it wraps; every write fails.
    struct Failing(DuplexStream);

    impl AsyncRead for Failing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Failing {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Polls the copy once, here on the test's own thread.
    async fn step<F: Future<Output = io::Result<()>>>(mut copy: Pin<&mut F>) {
        poll_fn(|cx| {
            assert!(copy.as_mut().poll(cx).is_pending(), "the copy runs on");
            Poll::Ready(())
        })
        .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_copy_holds_no_buffer_after_a_message_or_a_burst() {
        // The client's side takes more at once than the backend's, so a
        // burst leaves the copy holding bytes. The duplexes' own buffers
        // grow once, before counting starts.
        let (mut client, mut a) = duplex(BUF);
        let (mut b, mut server) = duplex(64);
        client.write_all(&[0; BUF]).await.unwrap();
        a.read_exact(&mut [0; BUF]).await.unwrap();
        let before = live();
        let mut copy = pin!(copy_both_ways(&mut a, &mut b));
        step(copy.as_mut()).await;
        client.write_all(b"one message").await.unwrap();
        server.write_all(b"one reply").await.unwrap();
        step(copy.as_mut()).await;
        let held = live() - before;
        assert_eq!(read_exact(&mut server, 11).await, b"one message");
        assert_eq!(read_exact(&mut client, 9).await, b"one reply");
        assert!(
            held < 1024,
            "an idle copy still holds {held} bytes after its last message"
        );

        // A burst larger than the backend reads at once: the copy holds
        // bytes while they wait, and nothing once they are through.
        let big = payload(100_000);
        let got = tokio::select! {
            biased;
            _ = copy.as_mut() => panic!("the copy ended"),
            (w, got) = async {
                tokio::join!(client.write_all(&big), read_exact(&mut server, big.len()))
            } => {
                w.unwrap();
                got
            }
        };
        assert!(got == big, "the burst arrives intact");
        drop((big, got));
        step(copy.as_mut()).await;
        let held = live() - before;
        assert!(
            held < 1024,
            "an idle copy still holds {held} bytes after a burst"
        );
    }
}
