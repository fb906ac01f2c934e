//! The server side of a client's TLS connection, over rustls's unbuffered
//! API: the connection owns its buffers, so one that idles holds none.
//!
//! rustls's buffered connection (what tokio-rustls drives) keeps a 4 KiB
//! read buffer for as long as the connection lives, and a browser's
//! connection spends most of its life idle. Here bytes read from the socket
//! wait in `incoming` only until rustls has taken the whole records among
//! them, and encrypted bytes wait in `outgoing` only until the socket has
//! taken them; each buffer is let go once empty. Plaintext the reader had
//! no room for waits in `plain`, likewise. What an idle connection keeps is
//! rustls's state: its keys and the handshake's outcome.
//!
//! The peer closing without a close_notify between records reads as a
//! plain end of stream, as HAProxy and nginx take it; in the middle of a
//! record it is an error.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use rustls::{HandshakeKind, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Room for one read from the socket: a request head and more in one read,
/// most often. A larger record grows it (see [`MAX_PENDING`]).
const READ_ROOM: usize = 8 * 1024;

/// Encrypted bytes kept waiting for the socket before a write waits for it
/// (rustls's buffered connection keeps as many).
const OUT_LIMIT: usize = 64 * 1024;

/// The most bytes kept in `incoming` without rustls taking a record from
/// them: a record is at most 16 KiB of plaintext and a few hundred bytes
/// more, and rustls refuses a header that says more.
const MAX_PENDING: usize = 64 * 1024;

/// A server-side TLS connection over `IO`, from [`accept`].
pub struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Bytes read from the socket; rustls has taken `incoming[..taken]`.
    incoming: Vec<u8>,
    taken: usize,
    /// Plaintext decrypted and not yet read, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// Bytes for the socket, which has taken `outgoing[..sent]`.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer's close_notify (or its end of stream) was read.
    peer_closed: bool,
    /// Ours is queued.
    close_sent: bool,
}

/// What rustls needs before it can go on.
enum Next {
    /// Bytes from the peer.
    Read,
    /// Nothing: the handshake is done (or far enough) and data can be sent.
    Writable,
    /// Nothing more: both sides have closed.
    Closed,
}

/// What [`TlsStream::advance`] does besides moving the handshake on.
enum Then<'a, 'b> {
    /// Decrypted data goes to the reader, as much as it has room for.
    Read(&'a mut ReadBuf<'b>),
    /// Decrypted data waits in `plain`.
    Keep,
    /// Once data may be sent: encrypt this, and say how much was taken.
    Encrypt(&'a [u8], usize),
    /// Once data may be sent: queue a close_notify.
    CloseNotify,
}

/// Runs the handshake on `io`.
///
/// # Errors
/// The peer's TLS was refused (after an alert, if the socket takes it at
/// once), or the socket failed or closed first.
pub async fn accept<IO>(config: Arc<ServerConfig>, io: IO) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut s = TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        taken: 0,
        plain: Vec::new(),
        plain_at: 0,
        outgoing: Vec::new(),
        sent: 0,
        peer_closed: false,
        close_sent: false,
    };
    std::future::poll_fn(|cx| s.poll_handshake(cx)).await?;
    Ok(s)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// The protocol ALPN chose, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Whether the handshake was a full or a resumed one.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.conn.handshake_kind()
    }

    /// Bytes of buffer the connection holds now, of its own (rustls's
    /// state aside): none while it idles.
    pub fn buffered(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.outgoing.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let next = self.advance(&mut Then::Keep);
            // Sent before anything else: our flight, or the alert for an
            // error.
            let sent = self.poll_send(cx);
            let next = next?;
            ready!(sent)?;
            match next {
                Next::Writable if !self.conn.is_handshaking() => return Poll::Ready(Ok(())),
                Next::Closed => return Poll::Ready(Err(closed_in_handshake())),
                Next::Read | Next::Writable => {}
            }
            if self.peer_closed || ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(closed_in_handshake()));
            }
        }
    }

    /// Has rustls take what it can from `incoming` and queue what it has to
    /// send in `outgoing`, doing `then` on the way, until it needs the peer
    /// or data can be sent.
    fn advance(&mut self, then: &mut Then<'_, '_>) -> io::Result<Next> {
        loop {
            let mut discard = 0;
            let step = {
                let status = self
                    .conn
                    .process_tls_records(&mut self.incoming[self.taken..]);
                discard += status.discard;
                match status.state {
                    Err(e) => Err(e),
                    Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                        let mut failed = None;
                        while let Some(record) = traffic.next_record() {
                            match record {
                                Ok(r) => {
                                    discard += r.discard;
                                    hand_out(r.payload, then, &mut self.plain);
                                }
                                Err(e) => failed = Some(e),
                            }
                        }
                        match (failed, &*then) {
                            (Some(e), _) => Err(e),
                            (None, Then::Read(buf)) if buf.remaining() == 0 => Ok(Some(Next::Read)),
                            (None, _) => Ok(None),
                        }
                    }
                    Ok(ConnectionState::EncodeTlsData(mut data)) => {
                        append(&mut self.outgoing, 4096, |out| data.encode(out))?;
                        Ok(None)
                    }
                    // `outgoing` is sent, in order, before anything queued
                    // after it; rustls need not wait for the socket.
                    Ok(ConnectionState::TransmitTlsData(t)) => {
                        t.done();
                        Ok(None)
                    }
                    Ok(ConnectionState::BlockedHandshake) => Ok(Some(Next::Read)),
                    Ok(ConnectionState::WriteTraffic(mut w)) => {
                        match then {
                            Then::Encrypt(data, taken) if *taken == 0 => {
                                let room = data.len() + data.len().div_ceil(16 * 1024) * 64 + 64;
                                append(&mut self.outgoing, room, |out| w.encrypt(data, out))?;
                                *taken = data.len();
                            }
                            Then::CloseNotify if !self.close_sent => {
                                append(&mut self.outgoing, 64, |out| w.queue_close_notify(out))?;
                                self.close_sent = true;
                            }
                            _ => {}
                        }
                        Ok(Some(Next::Writable))
                    }
                    Ok(ConnectionState::PeerClosed) => {
                        self.peer_closed = true;
                        Ok(None)
                    }
                    Ok(ConnectionState::Closed) => Ok(Some(Next::Closed)),
                    // Early data is off; a new state would need code here.
                    Ok(_) => Ok(Some(Next::Closed)),
                }
            };
            self.taken += discard;
            if self.taken == self.incoming.len() {
                self.incoming.clear();
                self.taken = 0;
            }
            match step {
                Ok(Some(next)) => return Ok(next),
                Ok(None) => {}
                Err(e) => {
                    self.queue_alert();
                    return Err(invalid(e));
                }
            }
        }
    }

    /// After rustls refused the peer's TLS: queues the alert it has for it.
    fn queue_alert(&mut self) {
        if let Ok(ConnectionState::EncodeTlsData(mut data)) =
            self.conn.process_tls_records(&mut []).state
        {
            let _ = append(&mut self.outgoing, 64, |out| data.encode(out));
        }
    }

    /// Reads more from the socket into `incoming`: the bytes read, 0 at the
    /// end of the stream. While nothing is pending, the buffer is let go.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.taken > 0 {
            self.incoming.drain(..self.taken);
            self.taken = 0;
        }
        let len = self.incoming.len();
        if len >= MAX_PENDING {
            return Poll::Ready(Err(invalid("a TLS record larger than any allowed")));
        }
        if self.incoming.capacity() == len {
            if len == 0 {
                self.incoming = Vec::with_capacity(READ_ROOM);
            } else {
                self.incoming.reserve(len);
            }
        }
        let mut room = ReadBuf::uninit(self.incoming.spare_capacity_mut());
        let start = room.filled().as_ptr();
        let read = Pin::new(&mut self.io).poll_read(cx, &mut room);
        let n = room.filled().len();
        // A reader may replace the ReadBuf it was lent; then what it filled
        // is not `incoming`'s.
        assert_eq!(start, room.filled().as_ptr(), "the read buffer was swapped");
        match read {
            Poll::Pending => {
                if len == 0 {
                    self.incoming = Vec::new();
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                // SAFETY: the reader initialized the `n` bytes it filled,
                // which follow `incoming`'s `len` (the pointer check above).
                unsafe { self.incoming.set_len(len + n) };
                Poll::Ready(Ok(n))
            }
        }
    }

    /// Encrypts as much of `data` as one write may queue (up to
    /// [`OUT_LIMIT`]) into `outgoing`; how much it took.
    fn seal(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.close_sent {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut then = Then::Encrypt(&data[..data.len().min(OUT_LIMIT)], 0);
        let next = self.advance(&mut then)?;
        let Then::Encrypt(_, taken) = then else {
            unreachable!("advance keeps what it is asked to do")
        };
        if taken == 0 {
            return Err(match next {
                Next::Closed => io::ErrorKind::BrokenPipe.into(),
                Next::Read | Next::Writable => invalid("TLS refused the data"),
            });
        }
        Ok(taken)
    }

    /// Writes `outgoing` to the socket; once all is taken the buffer is
    /// let go.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    fn unsent(&self) -> usize {
        self.outgoing.len() - self.sent
    }
}

/// Copies a decrypted record to the reader as far as it has room, the rest
/// (or all of it) to `plain`.
fn hand_out(payload: &[u8], then: &mut Then<'_, '_>, plain: &mut Vec<u8>) {
    let rest = match then {
        Then::Read(buf) => {
            let n = payload.len().min(buf.remaining());
            buf.put_slice(&payload[..n]);
            &payload[n..]
        }
        _ => payload,
    };
    plain.extend_from_slice(rest);
}

/// How much room rustls asked for, when it had too little.
trait Shortfall: std::error::Error + Send + Sync + 'static {
    fn required(&self) -> Option<usize>;
}

impl Shortfall for EncodeError {
    fn required(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(s) => Some(s.required_size),
            _ => None,
        }
    }
}

impl Shortfall for EncryptError {
    fn required(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(s) => Some(s.required_size),
            _ => None,
        }
    }
}

/// Appends to `out` what `write` puts in the room it is given: `room`
/// bytes, or as many as it then asks for.
fn append<E: Shortfall>(
    out: &mut Vec<u8>,
    room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = room;
    loop {
        if start == 0 && out.capacity() < room {
            *out = Vec::with_capacity(room.max(READ_ROOM));
        }
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => {
                out.truncate(start);
                match e.required() {
                    Some(more) if more > room => room = more,
                    _ => return Err(io::Error::other(e)),
                }
            }
        }
    }
}

fn invalid<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn closed_in_handshake() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer closed the connection during the TLS handshake",
    )
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.plain_at < this.plain.len() {
            let n = (this.plain.len() - this.plain_at).min(buf.remaining());
            buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
            this.plain_at += n;
            if this.plain_at == this.plain.len() {
                this.plain = Vec::new();
                this.plain_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        loop {
            let next = this.advance(&mut Then::Read(buf))?;
            // Tickets and key updates go out as soon as the socket takes
            // them; what it does not take now goes with the next write.
            if this.unsent() > 0 {
                if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if buf.filled().len() > before || this.peer_closed || matches!(next, Next::Closed) {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                if !this.incoming.is_empty() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection in the middle of a TLS record",
                    )));
                }
                this.peer_closed = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.unsent() >= OUT_LIMIT {
            ready!(this.poll_send(cx))?;
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let taken = this.seal(data)?;
        // What the socket takes now goes at once; the rest waits for the
        // next write or the flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    /// Each buffer is sealed into records of its own. Without this, hyper
    /// copies every byte of a body into one buffer with the head before
    /// writing it to a stream that cannot write vectored; small writes
    /// reach here joined already (`coalesce`), so a small response is
    /// still one record.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.unsent() >= OUT_LIMIT {
            ready!(this.poll_send(cx))?;
        }
        let mut taken = 0;
        for data in bufs.iter().filter(|b| !b.is_empty()) {
            if this.unsent() >= OUT_LIMIT {
                break;
            }
            let n = match this.seal(data) {
                Ok(n) => n,
                // What was sealed before is the socket's now; the error
                // comes again with the next write.
                Err(_) if taken > 0 => break,
                Err(e) => return Poll::Ready(Err(e)),
            };
            taken += n;
            if n < data.len() {
                break;
            }
        }
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.advance(&mut Then::CloseNotify)?;
            // Closed already (both close_notifys read and sent), or never
            // got that far: nothing more to say.
            this.close_sent = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{certified_key, parse_pem_pair, server_config, CertResolver, PemPair};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::path::Path;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn server() -> Arc<ServerConfig> {
        let PemPair { certs, key } = parse_pem_pair(
            include_bytes!("../certs/localhost.crt"),
            Path::new("localhost.crt"),
            include_bytes!("../certs/localhost.key"),
            Path::new("localhost.key"),
        )
        .unwrap();
        let resolver = Arc::new(CertResolver::new(certified_key(certs, key).unwrap()));
        server_config(resolver, true).unwrap()
    }

    fn client(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let pem = include_bytes!("../certs/localhost.crt").as_slice();
        for c in CertificateDer::pem_slice_iter(pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }

    /// A handshaken pair over an in-memory pipe of `pipe` bytes each way.
    async fn pair(
        pipe: usize,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (
        TlsStream<DuplexStream>,
        tokio_rustls::client::TlsStream<DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(pipe);
        let name = ServerName::try_from("localhost").unwrap();
        let connect = client(versions).connect(name, b);
        let (s, c) = tokio::join!(accept(server(), a), connect);
        (s.unwrap(), c.unwrap())
    }

    /// Polls a read once: what it gave, or `None` if it waits.
    fn read_now(s: &mut TlsStream<DuplexStream>, room: usize) -> Option<io::Result<Vec<u8>>> {
        let mut buf = vec![0; room];
        let mut rb = ReadBuf::new(&mut buf);
        let waker = std::task::Waker::noop();
        match Pin::new(s).poll_read(&mut Context::from_waker(waker), &mut rb) {
            Poll::Ready(Ok(())) => Some(Ok(rb.filled().to_vec())),
            Poll::Ready(Err(e)) => Some(Err(e)),
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_over_tls_1_3_and_1_2() {
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let (mut s, mut c) = pair(64 * 1024, versions).await;
            assert_eq!(s.alpn_protocol(), Some(&b"http/1.1"[..]));
            assert_eq!(s.handshake_kind(), Some(HandshakeKind::Full));
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut got = [0; 18];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            s.flush().await.unwrap();
            let mut got = [0; 19];
            c.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\n");
        }
    }

    /// A vectored write seals its buffers in order, each whole or up to
    /// where the write stopped, through a pipe smaller than the body.
    #[tokio::test]
    async fn a_vectored_write_sends_its_buffers_in_order() {
        let (mut s, mut c) = pair(3_000, &[&rustls::version::TLS13]).await;
        assert!(s.is_write_vectored());
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 300000\r\n\r\n".to_vec();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let tail = b"end".to_vec();
        let want = [head.clone(), body.clone(), tail.clone()].concat();
        let writer = async {
            let parts = [head, Vec::new(), body, tail];
            let (mut part, mut at) = (0, 0);
            while part < parts.len() {
                let mut slices = vec![io::IoSlice::new(&parts[part][at..])];
                slices.extend(parts[part + 1..].iter().map(|p| io::IoSlice::new(p)));
                let mut n = s.write_vectored(&slices).await.unwrap();
                assert!(n > 0 || parts[part][at..].is_empty());
                while part < parts.len() && n >= parts[part].len() - at {
                    n -= parts[part].len() - at;
                    (part, at) = (part + 1, 0);
                }
                at += n;
            }
            s.flush().await.unwrap();
        };
        let reader = async {
            let mut got = vec![0; want.len()];
            c.read_exact(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        assert!(got == want, "the bytes arrived changed or out of order");
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (mut s, mut c) = pair(64 * 1024, &[&rustls::version::TLS13]).await;
        c.write_all(b"request").await.unwrap();
        let mut got = [0; 7];
        s.read_exact(&mut got).await.unwrap();
        s.write_all(&[7; 20_000]).await.unwrap();
        s.flush().await.unwrap();
        let mut answer = vec![0; 20_000];
        c.read_exact(&mut answer).await.unwrap();
        // Waiting for the next request.
        assert!(read_now(&mut s, 4096).is_none());
        assert_eq!(s.buffered(), 0, "an idle connection keeps no buffer");
    }

    #[tokio::test]
    async fn large_transfers_through_a_small_pipe_and_a_small_reader_arrive_whole() {
        let (mut s, mut c) = pair(3000, &[&rustls::version::TLS13]).await;
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..500_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(c);
            let send = async {
                w.write_all(&up2).await.unwrap();
                w.flush().await.unwrap();
                w
            };
            let recv = async {
                let mut got = vec![0; down2.len()];
                r.read_exact(&mut got).await.unwrap();
                got
            };
            let (w, got) = tokio::join!(send, recv);
            assert!(got == down2, "the client got what the server sent");
            c = r.unsplit(w);
            c.shutdown().await.unwrap();
        });
        let (mut r, mut w) = tokio::io::split(&mut s);
        let recv = async {
            // A reader with less room than a record: the rest waits.
            let mut got = Vec::new();
            let mut buf = [0; 1000];
            loop {
                match r.read(&mut buf).await.unwrap() {
                    0 => break got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        let send = async {
            w.write_all(&down).await.unwrap();
            w.flush().await.unwrap();
        };
        let (got, ()) = tokio::join!(recv, send);
        assert!(got == up, "the server got what the client sent, then EOF");
        client.await.unwrap();
    }

    #[tokio::test]
    async fn a_shutdown_sends_close_notify_and_the_peer_reads_a_clean_end() {
        let (mut s, mut c) = pair(64 * 1024, &[&rustls::version::TLS13]).await;
        s.write_all(b"bye").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        // tokio-rustls reports an end without close_notify as an error.
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        assert!(s.write(b"more").await.is_err(), "no writes after shutdown");
    }

    #[tokio::test]
    async fn an_end_of_stream_between_records_is_an_end_and_inside_one_an_error() {
        let (mut s, c) = pair(64 * 1024, &[&rustls::version::TLS13]).await;
        drop(c);
        assert_eq!(s.read(&mut [0; 16]).await.unwrap(), 0);

        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").unwrap();
        let connect = client(&[&rustls::version::TLS13]).connect(name, &mut b);
        let (s, c) = tokio::join!(accept(server(), a), connect);
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        c.write_all(b"whole").await.unwrap();
        drop(c);
        // Half a record: its header and a few bytes.
        b.write_all(&[23, 3, 3, 0, 40, 1, 2, 3]).await.unwrap();
        drop(b);
        let mut got = [0; 5];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"whole");
        let e = s.read(&mut [0; 16]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn garbage_fails_the_handshake_with_an_alert_and_a_bogus_record_stays_bounded() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        b.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let e = accept(server(), a).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut alert = Vec::new();
        b.read_to_end(&mut alert).await.unwrap();
        assert_eq!(alert.first(), Some(&21), "an alert record: {alert:?}");

        // A handshake record that claims the most a header can say, then
        // bytes without end: refused, not buffered.
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let feed = tokio::spawn(async move {
            b.write_all(&[22, 3, 1, 0xff, 0xff]).await.unwrap();
            let junk = [0u8; 4096];
            while b.write_all(&junk).await.is_ok() {}
        });
        assert!(accept(server(), a).await.is_err());
        feed.await.unwrap();
    }
}
