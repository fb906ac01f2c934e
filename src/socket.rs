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

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
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
pub fn defer_accept(listener: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    use std::ffi::{c_int, c_void};
    extern "C" {
        fn setsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
    }
    // <netinet/in.h> and <netinet/tcp.h> on Linux.
    const IPPROTO_TCP: c_int = 6;
    const TCP_DEFER_ACCEPT: c_int = 9;
    let seconds: c_int = 1;
    // SAFETY: the descriptor is open for as long as `listener` is borrowed;
    // the value is an int that outlives the call, and its length is given.
    let done = unsafe {
        setsockopt(
            listener.as_raw_fd(),
            IPPROTO_TCP,
            TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&seconds).cast(),
            std::mem::size_of::<c_int>() as u32,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

    /// A write larger than the socket's buffer registers the socket and
    /// finishes as the peer reads.
    #[tokio::test]
    async fn a_write_that_would_block_finishes_as_the_peer_reads() {
        let (mut client, mut peer) = pair().await;
        let big = vec![7u8; 8 << 20];
        let writer = async {
            client.write_all(&big).await.unwrap();
            client.shutdown().await.unwrap();
            client.registered()
        };
        let reader = async {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        };
        let (registered, got) = tokio::join!(writer, reader);
        assert!(registered, "the writer had to wait");
        assert!(got == big, "8 MiB arrived changed or cut short");
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
