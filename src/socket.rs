//! Client sockets that join the reactor only when they would block.
//!
//! tokio registers a socket with epoll when it is accepted and removes it
//! before it closes: two `epoll_ctl` calls per connection, each taking the
//! epoll instance's lock and building or tearing down its entry. A client
//! that opens a connection for one request has usually sent it by the time
//! it is accepted, and takes the answer in one write, so its socket never
//! has to wait. It is read and written directly, and registered only the
//! first time a read or a write would block (a keep-alive connection waiting
//! for its next request, an answer larger than the socket's buffer, a TLS
//! handshake waiting for the client's next flight). A socket that never
//! waited is closed with a plain `close`. HAProxy serves sockets the same
//! way: it polls a connection only after an attempt would have blocked.
//!
//! An answer that ends its connection can be sent for more
//! ([`Client::poll_send_more`]): its last bytes then leave with the FIN,
//! one segment instead of two, and [`push`] sends them on if the FIN is
//! not coming yet.

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Asks the kernel to hand over a listener's connections only once their
/// first bytes have arrived (`TCP_DEFER_ACCEPT`, HAProxy's `defer-accept`,
/// nginx's `deferred`). HTTP clients speak first, so a connection is then
/// accepted with its request (or TLS ClientHello) already in it: the first
/// read finds it and the socket never joins epoll, where one accepted at the
/// handshake is read too early, waits, and is registered and removed. A
/// connection that sends nothing is handed over after about a second (the
/// kernel's first SYN-ACK retransmission, answered), as HAProxy and nginx
/// set it; until then tether does not see it.
///
/// # Errors
/// As `setsockopt`.
#[cfg(target_os = "linux")]
pub fn defer_accept(listener: &impl AsRawFd) -> io::Result<()> {
    sys::set_tcp_option(listener.as_raw_fd(), sys::TCP_DEFER_ACCEPT, 1)
}

/// Sends what a socket holds back ([`Client::poll_send_more`]) now, as a
/// segment of its own: the FIN it waited for is not coming yet (an answer
/// still streaming, a `100 Continue`). Setting `TCP_NODELAY`, which every
/// client socket has already, pushes the socket's pending bytes.
///
/// `fd` must be an open client socket.
///
/// # Errors
/// As `setsockopt`.
pub fn push(fd: RawFd) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return sys::set_tcp_option(fd, sys::TCP_NODELAY, 1);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        Ok(())
    }
}

/// The two socket calls std does not make (`setsockopt` for TCP options,
/// `sendmsg` with flags), declared here rather than through a crate.
#[cfg(target_os = "linux")]
mod sys {
    use std::ffi::{c_int, c_void};
    use std::io::{self, IoSlice};
    use std::os::fd::RawFd;

    // <sys/socket.h>, <netinet/in.h> and <netinet/tcp.h> on Linux.
    const IPPROTO_TCP: c_int = 6;
    pub const TCP_NODELAY: c_int = 1;
    pub const TCP_DEFER_ACCEPT: c_int = 9;
    const MSG_NOSIGNAL: c_int = 0x4000;
    const MSG_MORE: c_int = 0x8000;

    /// `struct msghdr`.
    #[repr(C)]
    struct MsgHdr {
        name: *mut c_void,
        namelen: u32,
        iov: *const IoSlice<'static>,
        iovlen: usize,
        control: *mut c_void,
        controllen: usize,
        flags: c_int,
    }

    extern "C" {
        fn setsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
        fn sendmsg(fd: c_int, msg: *const MsgHdr, flags: c_int) -> isize;
    }

    /// Sets an int option at the TCP level.
    pub fn set_tcp_option(fd: RawFd, name: c_int, value: c_int) -> io::Result<()> {
        // SAFETY: the value is an int that outlives the call, and its length
        // is given; an invalid descriptor fails the call, nothing more.
        let done = unsafe {
            setsockopt(
                fd,
                IPPROTO_TCP,
                name,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<c_int>() as u32,
            )
        };
        if done == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `sendmsg` with `MSG_MORE`: the kernel sends whole segments and holds
    /// a last partial one back for more bytes, a FIN, or a push.
    pub fn send_more(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let msg = MsgHdr {
            name: std::ptr::null_mut(),
            namelen: 0,
            // `IoSlice` is ABI-compatible with `struct iovec` on Unix.
            iov: bufs.as_ptr().cast(),
            iovlen: bufs.len(),
            control: std::ptr::null_mut(),
            controllen: 0,
            flags: 0,
        };
        // SAFETY: the header points at `bufs`, borrowed for the call; the
        // kernel only reads them.
        let sent = unsafe { sendmsg(fd, &msg, MSG_MORE | MSG_NOSIGNAL) };
        usize::try_from(sent).map_err(|_| io::Error::last_os_error())
    }
}

/// A listening socket whose accepted sockets are not registered yet.
pub struct Acceptor {
    socket: AsyncFd<mio::net::TcpListener>,
}

impl Acceptor {
    /// Takes over a bound, listening socket.
    ///
    /// # Errors
    /// The socket cannot be registered with the runtime's reactor.
    pub fn new(listener: TcpListener) -> io::Result<Acceptor> {
        let listener = mio::net::TcpListener::from_std(listener.into_std()?);
        // SAFETY: the mio listener owns its descriptor, which stays open and
        // the same for as long as the `AsyncFd` holds the listener.
        let socket = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }?;
        Ok(Acceptor { socket })
    }

    /// The address it listens on.
    ///
    /// # Errors
    /// As `getsockname`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.get_ref().local_addr()
    }

    /// The next connection: non-blocking, close-on-exec, not registered.
    ///
    /// # Errors
    /// As `accept4` (a full descriptor table, a connection reset while it
    /// waited in the backlog).
    pub async fn accept(&self) -> io::Result<(Client, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Client, SocketAddr)>> {
        loop {
            let mut ready = ready!(self.socket.poll_read_ready(cx))?;
            // `try_io` forgets the readiness when accept4 would block, so the
            // next turn waits for epoll to report another connection.
            if let Ok(accepted) = ready.try_io(|s| s.get_ref().accept()) {
                let (socket, peer) = accepted?;
                let socket = Client {
                    state: State::Direct(socket.into()),
                };
                return Poll::Ready(Ok((socket, peer)));
            }
        }
    }
}

/// An accepted client socket; see the module's comment.
pub struct Client {
    state: State,
}

enum State {
    /// Not registered: reads and writes go straight to the socket.
    Direct(std::net::TcpStream),
    /// Registered once an attempt would have blocked.
    Registered(TcpStream),
    /// Registration failed: the error was returned, the socket closed.
    Gone,
}

impl Client {
    /// Sets `TCP_NODELAY`.
    ///
    /// # Errors
    /// As `setsockopt`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match &self.state {
            State::Direct(s) => s.set_nodelay(on),
            State::Registered(s) => s.set_nodelay(on),
            State::Gone => Ok(()),
        }
    }

    /// Whether the socket has joined the reactor.
    #[cfg(test)]
    fn registered(&self) -> bool {
        matches!(self.state, State::Registered(_))
    }

    /// `op` on the unregistered socket; `None` once it would block, or if the
    /// socket is registered already: the caller then goes through
    /// [`Client::registered`].
    fn direct<T>(
        &mut self,
        mut op: impl FnMut(&std::net::TcpStream) -> io::Result<T>,
    ) -> Option<io::Result<T>> {
        let State::Direct(s) = &self.state else {
            return None;
        };
        loop {
            match op(s) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                done => return Some(done),
            }
        }
    }

    /// The registered socket, registering it first if it is not yet.
    fn registered_mut(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        if let State::Direct(_) = self.state {
            let State::Direct(s) = std::mem::replace(&mut self.state, State::Gone) else {
                unreachable!("matched just above");
            };
            // epoll reports a socket that is ready when it is added, so bytes
            // (or room) that came after the attempt that would have blocked
            // still wake the task.
            self.state = State::Registered(TcpStream::from_std(s)?);
        }
        match &mut self.state {
            State::Registered(s) => Ok(Pin::new(s)),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Client {
    /// Writes `bufs` as [`AsyncWrite::poll_write_vectored`] does, with
    /// `MSG_MORE`: whole segments leave at once and the kernel holds a last
    /// partial one back, to go out with the FIN when the socket is shut
    /// down next, or on [`push`]. An answer that ends its connection then
    /// takes one segment instead of two (the answer, then a FIN alone) and
    /// the client one acknowledgement instead of two. The caller must
    /// shut down or push before it waits for anything else.
    pub fn poll_send_more(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        #[cfg(target_os = "linux")]
        {
            let this = self.get_mut();
            if let Some(done) = this.direct(|s| sys::send_more(s.as_raw_fd(), bufs)) {
                return Poll::Ready(done);
            }
            let s = match this.registered_mut() {
                Ok(s) => s.get_mut(),
                Err(e) => return Poll::Ready(Err(e)),
            };
            loop {
                ready!(s.poll_write_ready(cx))?;
                let fd = s.as_raw_fd();
                match s.try_io(Interest::WRITABLE, || sys::send_more(fd, bufs)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    done => return Poll::Ready(done),
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        self.poll_write_vectored(cx, bufs)
    }
}

impl AsRawFd for Client {
    /// The socket's descriptor; -1 once registering it failed and closed it.
    fn as_raw_fd(&self) -> RawFd {
        match &self.state {
            State::Direct(s) => s.as_raw_fd(),
            State::Registered(s) => s.as_raw_fd(),
            State::Gone => -1,
        }
    }
}

impl AsyncRead for Client {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // SAFETY: a socket's `read` only writes into the slice, so handing
        // it memory not yet initialised is sound (tokio's own TcpStream
        // does the same); zeroing hyper's 8 KiB buffer before every read
        // would cost more than the read. `n` bytes were written.
        let room = unsafe { &mut *(buf.unfilled_mut() as *mut [MaybeUninit<u8>] as *mut [u8]) };
        if let Some(done) = this.direct(|mut s| s.read(room)) {
            let n = done?;
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        match this.registered_mut() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Client {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(done) = this.direct(|mut s| s.write(b)) {
            return Poll::Ready(done);
        }
        match this.registered_mut() {
            Ok(s) => s.poll_write(cx, b),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(done) = this.direct(|mut s| s.write_vectored(bufs)) {
            return Poll::Ready(done);
        }
        match this.registered_mut() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A socket buffers nothing of its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Direct(s) => Poll::Ready(s.shutdown(std::net::Shutdown::Write)),
            State::Registered(s) => Pin::new(s).poll_shutdown(cx),
            State::Gone => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Client, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let acceptor = Acceptor::new(listener).unwrap();
        let addr = acceptor.local_addr().unwrap();
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), acceptor.accept());
        (accepted.unwrap().0, peer.unwrap())
    }

    /// A request already there is read, and its answer written, without the
    /// socket joining the reactor; the peer sees the answer and the end.
    #[tokio::test]
    async fn a_socket_that_never_waits_is_never_registered() {
        let (mut client, mut peer) = pair().await;
        // Loopback has delivered a write by the time the call returns.
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut room = [0u8; 64];
        let n = client.read(&mut room).await.unwrap();
        assert_eq!(&room[..n], b"GET / HTTP/1.1\r\n\r\n");
        assert!(!client.registered(), "bytes already there need no wait");
        client.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        assert!(!client.registered(), "a write that fits needs no wait");
        drop(client);
        let mut answer = Vec::new();
        peer.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    /// A read that finds nothing registers the socket, and bytes sent after
    /// it wake the reader.
    #[tokio::test]
    async fn a_read_that_would_block_waits_for_the_next_bytes() {
        let (mut client, mut peer) = pair().await;
        let mut room = [0u8; 16];
        let reader = async {
            let n = client.read(&mut room).await.unwrap();
            (n, client.registered())
        };
        let writer = async {
            tokio::task::yield_now().await;
            peer.write_all(b"late").await.unwrap();
        };
        let ((n, registered), ()) = tokio::join!(reader, writer);
        assert_eq!(&room[..n], b"late");
        assert!(registered, "the reader had to wait");
    }

    /// A write larger than the socket's buffer, plain or sent for more,
    /// registers the socket and finishes as the peer reads.
    #[tokio::test]
    async fn a_write_that_would_block_finishes_as_the_peer_reads() {
        for more in [false, true] {
            let (mut client, mut peer) = pair().await;
            let big = vec![7u8; 8 << 20];
            let writer = async {
                if more {
                    let mut at = 0;
                    while at < big.len() {
                        at += send_more(&mut client, &big[at..]).await;
                    }
                } else {
                    client.write_all(&big).await.unwrap();
                }
                client.shutdown().await.unwrap();
                client.registered()
            };
            let reader = async {
                let mut got = Vec::new();
                peer.read_to_end(&mut got).await.unwrap();
                got
            };
            let (registered, got) = tokio::join!(writer, reader);
            assert!(registered, "the writer had to wait (sent for more: {more})");
            assert!(
                got == big,
                "8 MiB arrived changed or cut short (sent for more: {more})"
            );
        }
    }

    /// Segments a socket has sent: `tcpi_segs_out` of its `TCP_INFO`.
    fn segments_out(fd: RawFd) -> u32 {
        use std::ffi::{c_int, c_void};
        extern "C" {
            fn getsockopt(
                fd: c_int,
                level: c_int,
                name: c_int,
                value: *mut c_void,
                len: *mut u32,
            ) -> c_int;
        }
        // IPPROTO_TCP, TCP_INFO; `tcpi_segs_out` is the u32 at byte 136.
        let mut info = [0u8; 256];
        let mut len = info.len() as u32;
        let got = unsafe { getsockopt(fd, 6, 11, info.as_mut_ptr().cast(), &mut len) };
        assert!(
            got == 0 && len >= 140,
            "TCP_INFO: {}",
            io::Error::last_os_error()
        );
        u32::from_ne_bytes(info[136..140].try_into().unwrap())
    }

    async fn send_more(client: &mut Client, bytes: &[u8]) -> usize {
        std::future::poll_fn(|cx| Pin::new(&mut *client).poll_send_more(cx, &[IoSlice::new(bytes)]))
            .await
            .unwrap()
    }

    /// An answer sent for more and then shut down leaves in one segment with
    /// the FIN; written plainly it leaves as two, the answer and a FIN.
    #[tokio::test]
    async fn an_answer_sent_for_more_leaves_with_the_fin() {
        const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        for (more, segments) in [(false, 2), (true, 1)] {
            let (mut client, mut peer) = pair().await;
            let before = segments_out(client.as_raw_fd());
            if more {
                assert_eq!(send_more(&mut client, ANSWER).await, ANSWER.len());
            } else {
                client.write_all(ANSWER).await.unwrap();
            }
            client.shutdown().await.unwrap();
            let sent = segments_out(client.as_raw_fd()) - before;
            assert_eq!(sent, segments, "sent for more: {more}");
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, ANSWER);
        }
    }

    /// Bytes held back for more leave on a push, without a FIN: the
    /// connection stays open.
    #[tokio::test]
    async fn held_bytes_leave_on_a_push() {
        let (mut client, mut peer) = pair().await;
        let before = segments_out(client.as_raw_fd());
        send_more(&mut client, b"100 Continue").await;
        assert_eq!(segments_out(client.as_raw_fd()), before, "held back");
        push(client.as_raw_fd()).unwrap();
        assert_eq!(segments_out(client.as_raw_fd()), before + 1, "pushed");
        let mut room = [0u8; 32];
        let n = peer.read(&mut room).await.unwrap();
        assert_eq!(&room[..n], b"100 Continue");
        client.write_all(b"!").await.unwrap();
        assert_eq!(peer.read(&mut room).await.unwrap(), 1, "still open");
    }

    /// The peer's end reads as end of stream, registered or not.
    #[tokio::test]
    async fn the_peers_end_reads_as_the_end() {
        let (mut client, peer) = pair().await;
        drop(peer);
        let mut room = [0u8; 16];
        assert_eq!(client.read(&mut room).await.unwrap(), 0);
        let (mut client, peer) = pair().await;
        let reader = async { client.read(&mut room).await.unwrap() };
        let closer = async {
            tokio::task::yield_now().await;
            drop(peer);
        };
        assert_eq!(tokio::join!(reader, closer).0, 0);
    }
}
