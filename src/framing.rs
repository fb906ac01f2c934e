//! Watches the raw HTTP/1 byte stream of a client connection for the one
//! framing ambiguity hyper normalises away before tether can see it: a request
//! carrying both `Content-Length` and `Transfer-Encoding` (RFC 9112 section
//! 6.3; the classic request-smuggling vector). hyper silently drops the
//! `Content-Length`; SPEC section 9 wants 400 and a closed connection.
//!
//! The tracker follows message boundaries (head, then a Content-Length or
//! chunked body) on the bytes hyper reads and records which request heads
//! (by their index on the connection) were ambiguous; `service/` answers
//! those with 400. It gives up quietly (flags nothing more) on anything it
//! does not model: an upgrade, HTTP/2, a head over its size cap, a malformed
//! chunk (hyper rejects those itself). One malformed chunk hyper lets
//! through, a control byte in a chunk-size line, breaks the stream there:
//! the request fails as one with a broken body does.
//!
//! The same wrapper tells the connection's [`Activity`] what the lifecycle
//! deadlines need (SPEC section 10): the first byte, and when a request head
//! begins and ends. hyper's own head timer cannot tell an idle keep-alive
//! connection from a head in progress. It also tells it when a request asks
//! for the connection to end after its answer, which lets that answer leave
//! with the connection's FIN (`socket.rs`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use memchr::memmem::Finder;
use tokio::io::{AsyncRead, ReadBuf};

use crate::lifecycle::Activity;
use crate::passthrough::write_through;

/// Heads larger than this are not inspected (hyper refuses them anyway).
const HEAD_CAP: usize = 64 * 1024;

/// Shared between the stream wrapper and the service: bit `i` set means the
/// `i`-th request head on this connection (0-based, first 64) was ambiguous.
#[derive(Debug, Default)]
pub struct Verdicts(AtomicU64);

impl Verdicts {
    /// Was request `index` ambiguous?
    pub fn ambiguous(&self, index: u64) -> bool {
        index < 64 && self.0.load(Ordering::Acquire) & (1 << index) != 0
    }
    fn flag(&self, index: u64) {
        if index < 64 {
            self.0.fetch_or(1 << index, Ordering::Release);
        }
    }
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Fixed(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailers(Vec<u8>),
    Done,
}

/// The framing tracker (pure: bytes in, verdicts out).
#[derive(Debug)]
pub struct Tracker {
    state: State,
    index: u64,
    verdicts: Arc<Verdicts>,
    /// A head fed since the last [`Tracker::take_last`] asked for the
    /// connection to end after its answer.
    last: bool,
}

impl Tracker {
    /// A tracker recording into `verdicts`.
    pub fn new(verdicts: Arc<Verdicts>) -> Tracker {
        Tracker {
            state: State::Head(Vec::new()),
            index: 0,
            verdicts,
            last: false,
        }
    }

    /// Whether a head fed since the last call asked for the connection to
    /// end after its answer: `Connection: close`, or HTTP/1.0 without
    /// `Connection: keep-alive` (RFC 9112 section 9.3), as hyper decides.
    pub fn take_last(&mut self) -> bool {
        std::mem::take(&mut self.last)
    }

    /// Feeds bytes as they are read. `Some(at)` when `buf[at]` is a control
    /// byte in a chunk-size line: the body is malformed from there on, and
    /// nothing after it is tracked.
    pub fn feed(&mut self, mut buf: &[u8]) -> Option<usize> {
        let len = buf.len();
        while !buf.is_empty() {
            match &mut self.state {
                State::Done => return None,
                State::Head(head) => {
                    let Some(end) = find_head_end(head, buf) else {
                        head.extend_from_slice(buf);
                        if head.len() > HEAD_CAP || head.starts_with(b"PRI * HTTP/2.0") {
                            self.state = State::Done;
                        }
                        return None;
                    };
                    self.state = if head.is_empty() {
                        // The usual case: the whole head arrived in one read.
                        self.after_head(&buf[..end])
                    } else {
                        head.extend_from_slice(&buf[..end]);
                        let head = std::mem::take(head);
                        self.after_head(&head)
                    };
                    buf = &buf[end..];
                    self.index += 1;
                }
                State::Fixed(n) => {
                    if consume(n, &mut buf) {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => {
                    let nl = buf.iter().position(|b| *b == b'\n');
                    let rest = &buf[..nl.unwrap_or(buf.len())];
                    if let Some(bad) = rest.iter().position(|b| forbidden_in_chunk_line(*b)) {
                        self.state = State::Done;
                        return Some(len - buf.len() + bad);
                    }
                    let Some(nl) = nl else {
                        line.extend_from_slice(buf);
                        if line.len() > 1024 {
                            self.state = State::Done;
                        }
                        return None;
                    };
                    line.extend_from_slice(&buf[..nl]);
                    buf = &buf[nl + 1..];
                    self.state = after_chunk_size(line);
                }
                State::ChunkData(n) => {
                    if consume(n, &mut buf) {
                        self.state = State::ChunkDataEnd(0);
                    }
                }
                State::ChunkDataEnd(seen) => {
                    // The CRLF after a chunk's data.
                    let need = 2 - *seen as usize;
                    let take = need.min(buf.len());
                    *seen += take as u8;
                    buf = &buf[take..];
                    if *seen == 2 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(t) => {
                    // Trailer lines until an empty one.
                    let Some(nl) = buf.iter().position(|b| *b == b'\n') else {
                        t.extend_from_slice(buf);
                        if t.len() > HEAD_CAP {
                            self.state = State::Done;
                        }
                        return None;
                    };
                    t.extend_from_slice(&buf[..nl]);
                    buf = &buf[nl + 1..];
                    let empty = t.trim_ascii().is_empty();
                    t.clear();
                    if empty {
                        self.state = State::Head(Vec::new());
                    }
                }
            }
        }
        None
    }

    /// Every byte fed so far belongs to a whole message: the next byte
    /// begins a request head.
    pub fn between(&self) -> bool {
        matches!(&self.state, State::Head(head) if head.is_empty())
    }

    /// A request head has begun and not ended. Stray CRLFs between
    /// requests (tolerated by hyper) do not begin one.
    pub fn mid_head(&self) -> bool {
        match &self.state {
            State::Head(head) => head.iter().any(|b| !matches!(b, b'\r' | b'\n')),
            _ => false,
        }
    }

    fn after_head(&mut self, head: &[u8]) -> State {
        // hyper skips stray CRLFs before a request line (RFC 9112 section 2.2).
        let start = head
            .iter()
            .position(|b| !matches!(b, b'\r' | b'\n'))
            .unwrap_or(head.len());
        let head = &head[start..];
        let first_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
        if head[..first_end].trim_ascii().is_empty() {
            // Stray CRLF between requests: tolerated by hyper; nothing to frame.
            return State::Head(Vec::new());
        }
        if head.starts_with(b"PRI * HTTP/2.0") {
            // The HTTP/2 preface (h2c with prior knowledge): frames follow.
            return State::Done;
        }
        let (mut cl, mut te, mut upgrade) = (None, None, false);
        let (mut close, mut keep_alive) = (false, false);
        let mut line_start = first_end + 1;
        for nl in memchr::memchr_iter(b'\n', head).skip(1) {
            let line = &head[line_start..nl];
            line_start = nl + 1;
            match framing_field(line) {
                Some((Field::ContentLength, value)) => cl = Some(value),
                Some((Field::TransferEncoding, value)) => te = Some(value),
                Some((Field::Upgrade, _)) => upgrade = true,
                Some((Field::Connection, value)) => {
                    for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                        close |= token.eq_ignore_ascii_case(b"close");
                        keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    }
                }
                None => {}
            }
        }
        let http10 = head[..first_end].trim_ascii_end().ends_with(b"HTTP/1.0");
        // An upgrade's answer hands the socket on instead of ending it.
        self.last |= !upgrade && (close || (http10 && !keep_alive));
        if cl.is_some() && te.is_some() {
            self.verdicts.flag(self.index);
            // The connection will be closed after the 400.
            return State::Done;
        }
        if upgrade {
            return State::Done;
        }
        if let Some(te) = te {
            let last = te.rsplit(|b| *b == b',').next().unwrap_or(b"").trim_ascii();
            return if last.eq_ignore_ascii_case(b"chunked") {
                State::ChunkSize(Vec::new())
            } else {
                State::Done
            };
        }
        match cl.map(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        }) {
            None => State::Head(Vec::new()),
            Some(Some(0)) => State::Head(Vec::new()),
            Some(Some(n)) => State::Fixed(n),
            Some(None) => State::Done,
        }
    }
}

/// The three fields that frame a request, and the one that says whether
/// the connection goes on after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ContentLength,
    TransferEncoding,
    Upgrade,
    Connection,
}

/// Which of those fields a header line is, with its trimmed value. A field
/// name ends at the first colon and holds no whitespace (RFC 9112 section
/// 5.1), so each name is a colon at one fixed position: a byte or two
/// compared per line, no search (this runs on every request head).
fn framing_field(line: &[u8]) -> Option<(Field, &[u8])> {
    let (field, name): (Field, &[u8]) = match line.first()? | 0x20 {
        b'c' if line.get(10) == Some(&b':') => (Field::Connection, b"connection"),
        b'c' => (Field::ContentLength, b"content-length"),
        b't' => (Field::TransferEncoding, b"transfer-encoding"),
        b'u' => (Field::Upgrade, b"upgrade"),
        _ => return None,
    };
    let n = name.len();
    (line.get(n) == Some(&b':') && line[..n].eq_ignore_ascii_case(name))
        .then(|| (field, line[n + 1..].trim_ascii()))
}

/// Skips up to `*left` bytes of a counted run (a Content-Length body or a
/// chunk's data) from the front of `buf`; true once the run is over.
fn consume(left: &mut u64, buf: &mut &[u8]) -> bool {
    let take = (*left).min(buf.len() as u64) as usize;
    *left -= take as u64;
    *buf = &buf[take..];
    *left == 0
}

/// A byte a chunk-size line may not hold (RFC 9112 section 7.1.1: hex
/// digits, then extensions of tokens and quoted strings): a control byte
/// other than HTAB. CR is left to hyper, which refuses one not followed by
/// LF; hyper passes over anything else in an extension, NUL included, and
/// a backend that reads the line as text might end it there.
fn forbidden_in_chunk_line(b: u8) -> bool {
    (b < 0x20 && b != b'\t' && b != b'\r') || b == 0x7f
}

/// What follows a chunk-size line (extensions after the hex digits are
/// ignored): its data, the trailers after the last chunk, or nothing more
/// to track when the size does not parse (hyper refuses the body itself).
fn after_chunk_size(line: &[u8]) -> State {
    let hex: Vec<u8> = line
        .iter()
        .copied()
        .take_while(|b| b.is_ascii_hexdigit())
        .collect();
    let size = std::str::from_utf8(&hex)
        .ok()
        .and_then(|h| u64::from_str_radix(h, 16).ok());
    match size {
        None => State::Done,
        Some(0) => State::Trailers(Vec::new()),
        Some(n) => State::ChunkData(n),
    }
}

/// Where the head ends in `buf` (index just past the first blank line),
/// given the bytes of the head seen so far. A blank line is `\n\n` or
/// `\n\r\n` (which covers CRLF CRLF); it may straddle the read boundary, so
/// the bytes before `buf` come from `seen`. No copy: this runs on every
/// request head, and copying heads was a visible share of a profile.
fn find_head_end(seen: &[u8], buf: &[u8]) -> Option<usize> {
    if seen.is_empty() {
        find_head_end_in(buf)
    } else {
        find_head_end_by_lines(seen, buf)
    }
}

/// [`find_head_end`] one line end at a time, looking back into `seen`.
fn find_head_end_by_lines(seen: &[u8], buf: &[u8]) -> Option<usize> {
    let at = |i: usize, back: usize| -> u8 {
        match i.checked_sub(back) {
            Some(j) => buf[j],
            None => seen.len().checked_sub(back - i).map_or(0, |j| seen[j]),
        }
    };
    memchr::memchr_iter(b'\n', buf)
        .find(|&nl| at(nl, 1) == b'\n' || (at(nl, 1) == b'\r' && at(nl, 2) == b'\n'))
        .map(|nl| nl + 1)
}

/// [`find_head_end`] for a head that begins in `buf`, the usual case: two
/// vector searches instead of a look at every line. The blank line is the
/// first `\n\r\n` or `\n\n`, whichever ends first.
fn find_head_end_in(buf: &[u8]) -> Option<usize> {
    static CRLF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\r\n"));
    static LF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\n"));
    let crlf = CRLF.find(buf).map(|at| at + 3);
    let before = &buf[..crlf.unwrap_or(buf.len())];
    LF.find(before).map(|at| at + 2).or(crlf)
}

/// A client stream that feeds what it reads to a [`Tracker`], and reports
/// to the connection's [`Activity`].
pub struct Sniffed<I> {
    inner: I,
    tracker: Option<Tracker>,
    activity: Arc<Activity>,
    heard: bool,
    mid_head: bool,
    /// A chunk-size line held a control byte: the bytes before it were
    /// handed on, and every read from now on fails.
    broken: bool,
}

impl<I> Sniffed<I> {
    /// Wraps `inner`; `track = false` follows no heads (HTTP/2).
    pub fn new(
        inner: I,
        verdicts: Arc<Verdicts>,
        track: bool,
        activity: Arc<Activity>,
    ) -> Sniffed<I> {
        Sniffed {
            inner,
            tracker: track.then(|| Tracker::new(verdicts)),
            activity,
            heard: false,
            mid_head: false,
            broken: false,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Sniffed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "control byte in a chunk-size line",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !matches!(polled, Poll::Ready(Ok(()))) || read.is_empty() {
            return polled;
        }
        let this = &mut *self;
        if !this.heard {
            this.heard = true;
            this.activity.heard();
        }
        if let Some(t) = this.tracker.as_mut() {
            if let Some(bad) = t.feed(read) {
                // The request's head and the body up to the byte go on, so
                // that the request fails as a broken body does (400 if no
                // answer has begun); the next read reports the break.
                this.tracker = None;
                this.broken = true;
                buf.set_filled(before + bad);
                if bad == 0 {
                    return self.poll_read(cx, buf);
                }
                return Poll::Ready(Ok(()));
            }
            // Heads usually arrive in one read: the clock is read only for
            // one that spans reads.
            let mid_head = t.mid_head();
            this.activity.between_requests(t.between());
            if t.take_last() {
                this.activity.answer_is_last();
            }
            if matches!(t.state, State::Done) {
                this.tracker = None;
            }
            if mid_head != this.mid_head {
                this.mid_head = mid_head;
                if mid_head {
                    this.activity.head_begun();
                } else {
                    this.activity.head_ended();
                }
            }
        }
        polled
    }
}

write_through!([I] Sniffed<I>, inner);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Arc<Verdicts> {
        let v = Arc::new(Verdicts::default());
        let mut t = Tracker::new(v.clone());
        for c in chunks {
            t.feed(c);
        }
        v
    }

    /// Which heads ask for the connection to end after their answer, as
    /// hyper reads them: `close` among the `Connection` tokens, or HTTP/1.0
    /// without `keep-alive`; never an upgrade, whose answer hands the
    /// socket on. Heads may come in pieces and several to a read.
    #[test]
    fn which_heads_ask_for_the_connection_to_end() {
        let cases: &[(&[&[u8]], bool)] = &[
            (&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], false),
            (&[b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"], true),
            (
                &[b"GET / HTTP/1.1\r\nconnection:Keep-Alive , CLOSE\r\n\r\n"],
                true,
            ),
            (
                &[b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"],
                false,
            ),
            (&[b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n"], false),
            (&[b"GET / HTTP/1.1\r\nX-Connection: close\r\n\r\n"], false),
            (&[b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"], false),
            (&[b"GET / HTTP/1.0\r\n\r\n"], true),
            (
                &[b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"],
                false,
            ),
            (
                &[
                    b"GET / HTTP/1.1\r\nHost: x\r\nConn",
                    b"ection: close\r\n\r\n",
                ],
                true,
            ),
            (
                &[b"GET / HTTP/1.1\r\nConnection: upgrade, close\r\nUpgrade: websocket\r\n\r\n"],
                false,
            ),
            (
                &[b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n"],
                true,
            ),
            (
                &[
                    b"POST / HTTP/1.1\r\nContent-Length: 25\r\n\r\n",
                    b"GET / HTTP/1.0\r\n\r\n1234567",
                ],
                false,
            ),
        ];
        for (reads, want) in cases {
            let mut t = Tracker::new(Arc::default());
            let mut last = false;
            for r in *reads {
                t.feed(r);
                last |= t.take_last();
            }
            assert_eq!(
                last,
                *want,
                "{:?}",
                reads.concat().escape_ascii().to_string()
            );
            assert!(!t.take_last(), "taken once");
        }
    }

    /// Where a control byte in a chunk-size line is found: by its place in
    /// the read that brought it, whether the line began in an earlier read
    /// or not; extensions of tokens, quoted strings and HTAB pass.
    #[test]
    fn a_control_byte_in_a_chunk_size_line_is_found_where_it_is() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        // The reads after the head; the read (counted from 1) and the place
        // in it of the byte, if any.
        type Case<'a> = (&'a [&'a [u8]], Option<(usize, usize)>);
        let cases: &[Case] = &[
            (&[b"5;\0\r\nhello\r\n0\r\n\r\n"], Some((1, 2))),
            (
                &[b"5\r\nhello\r\n3;x\x01\r\nabc\r\n0\r\n\r\n"],
                Some((1, 13)),
            ),
            (&[b"5;a", b"b\x7f\r\nhello\r\n0\r\n\r\n"], Some((2, 1))),
            (&[b"5;a=\"b\tc\" ; d\r\nhello\r\n0\r\n\r\n"], None),
            (&[b"5\r\nhe\0lo\r\n0\r\n\r\n"], None),
        ];
        for (reads, want) in cases {
            let mut t = Tracker::new(Arc::default());
            assert_eq!(t.feed(head), None);
            let found = reads
                .iter()
                .enumerate()
                .find_map(|(i, r)| t.feed(r).map(|at| (i + 1, at)));
            assert_eq!(found, *want, "{reads:?}");
        }
    }

    #[test]
    fn cl_and_te_together_are_flagged() {
        let v = run(&[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]);
        assert!(v.ambiguous(0));
    }

    #[test]
    fn a_later_pipelined_request_is_found_after_bodies() {
        let v = run(&[
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab",
            b"cdGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"POST /d HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
        ]);
        assert!(!v.ambiguous(0) && !v.ambiguous(1) && !v.ambiguous(2));
        assert!(v.ambiguous(3));
    }

    #[test]
    fn bytes_split_anywhere_give_the_same_verdicts() {
        let all: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        for split in 1..all.len() {
            let v = run(&[&all[..split], &all[split..]]);
            assert!(!v.ambiguous(0), "split {split}");
            assert!(v.ambiguous(1), "split {split}");
        }
    }

    #[test]
    fn bare_lf_heads_end_at_their_blank_line_byte_by_byte_too() {
        let all: &[u8] = b"GET / HTTP/1.1\nHost: x\n\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\n\r\n";
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        for v in [run(&[all]), run(&bytes)] {
            assert!(!v.ambiguous(0));
            assert!(v.ambiguous(1));
        }
    }

    /// Random streams of request-like pieces give the same verdicts however
    /// they are split across reads (the head-end search looks back across
    /// read boundaries), and never panic.
    #[test]
    fn verdicts_do_not_depend_on_how_reads_split_the_stream() {
        use rand::{Rng, SeedableRng};
        const PIECES: &[&[u8]] = &[
            b"GET / HTTP/1.1",
            b"POST /u HTTP/1.1",
            b"\r\n",
            b"\n",
            b"\r",
            b"Host: x",
            b"Content-Length: 3",
            b"content-length:0",
            b"Transfer-Encoding: chunked",
            b"transfer-encoding: gzip, chunked",
            b"Upgrade: websocket",
            b"abc",
            b"3\r\nabc\r\n",
            b"0\r\n\r\n",
            b"X: y",
            b":",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let mut flagged = 0;
        for _ in 0..2000 {
            let mut stream = Vec::new();
            for _ in 0..rng.random_range(1..40) {
                stream.extend_from_slice(PIECES[rng.random_range(0..PIECES.len())]);
            }
            let whole = run(&[&stream]).0.load(Ordering::Relaxed);
            flagged += (whole != 0) as usize;
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(run(&bytes).0.load(Ordering::Relaxed), whole, "{stream:?}");
            let cut = rng.random_range(0..=stream.len());
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                run(&[a, b]).0.load(Ordering::Relaxed),
                whole,
                "{stream:?} at {cut}"
            );
        }
        assert!(flagged > 50, "the streams exercise the flagging: {flagged}");
    }

    /// The vector search finds the same end as the line-by-line one on
    /// head-like bytes of every shape (bare LF, CRLF, stray CR).
    #[test]
    fn both_head_end_searches_agree() {
        use rand::{Rng, SeedableRng};
        const BYTES: &[u8] = b"\r\n\n:aX ";
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let buf: Vec<u8> = (0..len)
                .map(|_| BYTES[rng.random_range(0..BYTES.len())])
                .collect();
            assert_eq!(
                find_head_end_in(&buf),
                find_head_end_by_lines(&[], &buf),
                "{:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }

    #[test]
    fn framing_fields_are_told_by_name_at_the_colon() {
        type Case<'a> = (&'a [u8], Option<(Field, &'a [u8])>);
        let cases: &[Case<'_>] = &[
            (b"Content-Length: 5", Some((Field::ContentLength, b"5"))),
            (b"content-length:5 ", Some((Field::ContentLength, b"5"))),
            (b"CONTENT-LENGTH:", Some((Field::ContentLength, b""))),
            (
                b"Transfer-Encoding: chunked",
                Some((Field::TransferEncoding, b"chunked")),
            ),
            (b"upgrade: websocket", Some((Field::Upgrade, b"websocket"))),
            (b"Content-Length : 5", None),
            (b"Content-Lengthy: 5", None),
            (b"Content-Type: text/plain", None),
            (b"Cookie: a=b", None),
            (b"Content-Length", None),
            (b"X-Upgrade: h2c", None),
            (b"", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                framing_field(line),
                *want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn a_head_is_mid_way_from_its_first_byte_to_its_blank_line() {
        let mut t = Tracker::new(Arc::new(Verdicts::default()));
        assert!(!t.mid_head());
        t.feed(b"\r\n");
        assert!(!t.mid_head(), "a stray CRLF begins no head");
        t.feed(b"G");
        assert!(t.mid_head());
        t.feed(b"ET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\na");
        assert!(!t.mid_head(), "in the body");
        t.feed(b"bGET / HTTP/1.1\r\n");
        assert!(t.mid_head());
        t.feed(b"\r\n");
        assert!(!t.mid_head());
    }

    #[test]
    fn the_http2_preface_ends_tracking_however_it_is_read() {
        let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00";
        for split in 1..preface.len() {
            let mut t = Tracker::new(Arc::new(Verdicts::default()));
            t.feed(&preface[..split]);
            t.feed(&preface[split..]);
            assert!(matches!(t.state, State::Done), "split {split}");
            assert!(!t.mid_head());
        }
    }

    #[test]
    fn stray_crlf_before_a_request_is_skipped() {
        let v = run(&[b"\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        assert!(v.ambiguous(0));
    }

    #[test]
    fn clean_requests_are_not_flagged() {
        let v = run(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"]);
        assert!(!v.ambiguous(0) && !v.ambiguous(1));
    }
}
