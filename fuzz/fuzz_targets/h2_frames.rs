//! HTTP/2 frame sequences from the fuzzer into a live tether's plain listener (h2c, prior
//! knowledge), as a client would send them.
//!
//! Run it (only the stable toolchain is needed; cargo-fuzz passes `-Z` flags to rustc, which
//! `RUSTC_BOOTSTRAP=1` allows):
//!
//! ```sh
//! cargo install cargo-fuzz --locked
//! cd fuzz
//! ASAN_OPTIONS=detect_leaks=0 RUSTC_BOOTSTRAP=1 cargo fuzz run h2_frames \
//!     corpus/h2_frames seeds/h2_frames -- -max_total_time=600 -detect_leaks=0 -rss_limit_mb=2048
//! ```
//!
//! `ASAN_OPTIONS=detect_leaks=0` stops the leak check at exit: the one h2 debug assertion
//! this target lets through (see `known_h2_debug_assert`) panics inside a `Drop`, which
//! leaves a few hundred bytes unfreed, and LeakSanitizer would report them as a crash with
//! an empty input when `-max_total_time` ends the run. `-detect_leaks=0` for the same reason
//! as `request_head`: tether's tasks outlive each input by design. Replay a crash with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run h2_frames FILE`; `H2_FRAMES_DEBUG=1` prints, per input,
//! what was sent, which streams tether finished, and how long each step took.
//!
//! Once per process: a tokio runtime, a demo backend and a real in-process tether from
//! `tether::server::start` on 127.0.0.1:0 (plain listener: a connection that opens with the
//! HTTP/2 preface is served as h2c). Per input, on a fresh TCP
//! connection: the client preface, an opening SETTINGS (empty, fuzzed, or none), then the
//! frames the input describes (below), optionally a wait for the answers to the complete
//! requests it sent, then a half-close and the rest of tether's answer. Checked:
//! - nothing panics anywhere in the process (the hook aborts, so libFuzzer sees a crash even
//!   when the panic happens in a tokio task);
//! - tether closes a connection whose client has sent everything and half-closed within the
//!   deadline (no hang);
//! - tether keeps serving: after every input, a fresh well-formed h2c `GET /` gets `200`
//!   within the deadline. `max_connections` is 256, so a connection slot that outlives its
//!   closed connection shows up after a few hundred inputs, not ten thousand.
//!
//! Input layout (structure-aware; a byte read past the end is 0, and the frame loop stops
//! when the input is used up). Byte 0 picks the opening (bits 0-1: empty SETTINGS, fuzzed
//! SETTINGS, none, empty SETTINGS plus a connection WINDOW_UPDATE as browsers send), whether
//! each frame is its own write (bit 2) and whether to wait for answers before the
//! half-close (bit 3). Then frames, each introduced by an opcode byte: a complete request
//! (valid HPACK pseudo-headers on a new odd stream, extra fields from a menu, optional
//! padding, priority, split into CONTINUATIONs, and END_STREAM or not), or a HEADERS, DATA,
//! CONTINUATION, SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, PRIORITY, GOAWAY or PUSH_PROMISE
//! frame whose flags, stream id (0, the current stream, a new one, an old one, an even one or
//! any 32 bits), lengths and payload come from the input, or a raw frame whose declared
//! length need not match its payload. Header blocks mix well-formed representations of
//! menu fields (static and literal names, all literal kinds, pseudo-headers in any order,
//! hop-by-hop and tether's own headers) with raw and Huffman-flagged bytes, table size
//! updates and indexes past the tables.
#![no_main]

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;

mod live;
use live::Live;

/// Longer than any answer tether gives to a client that has closed its side; short enough
/// that a real hang shows up as a crash, not as a stall of the whole run.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long the optional wait for answers lasts with nothing arriving: the demo backend
/// answers in well under a millisecond, so a longer silence means flow control (the input
/// may have closed its window) or a refused stream, not a slow answer.
const SETTLE_IDLE: Duration = Duration::from_millis(50);
const SETTLE_MAX: Duration = Duration::from_secs(2);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes one input may send: enough to overrun any window, small enough to keep runs fast.
const BUDGET: usize = 256 * 1024;
const MAX_FRAMES: usize = 64;

// Frame types (RFC 9113 section 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

static LIVE: OnceLock<Live> = OnceLock::new();

/// h2 0.4's `Counts::drop` holds a `debug_assert!(!self.has_streams())` that fires when a
/// server connection is torn down with streams still counted: a debug-only sanity check of
/// h2's own bookkeeping (absent from tether's release build, where nothing panics), known
/// upstream as hyperium/h2#907. cargo-fuzz builds with debug assertions, so without this
/// every run would stop on it; the panic still unwinds into tokio, which ends the task the
/// connection was ending anyway, and `still_serving` checks that nothing else broke.
/// Reproducer: artifacts-found/h2_frames-h2-counts-drop (timing-dependent).
fn known_h2_debug_assert(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let file = info.location().map(|l| l.file()).unwrap_or("");
    let msg = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("");
    let known = file.contains("/h2-0.4.")
        && file.ends_with("proto/streams/counts.rs")
        && msg.contains("has_streams");
    if known {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| eprintln!("h2_frames: ignoring h2's Counts::drop debug assertion"));
    }
    known
}

fn live() -> &'static Live {
    LIVE.get_or_init(|| live::start(
        "[timeouts]\nclient_header = \"2s\"\nresponse = \"2s\"\nclient_body = \"2s\"\n\n[limits]\nmax_connections = 256\n",
        known_h2_debug_assert,
    ))
}

/// The HPACK static table (RFC 7541 appendix A); index = position + 1.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Fields a header block is made of: what browsers send, what HTTP/2 forbids (connection
/// headers, upper case, misplaced pseudo-headers), and what tether reads or rewrites.
const FIELDS: &[(&str, &str)] = &[
    (":method", "GET"),
    (":method", "POST"),
    (":method", "HEAD"),
    (":method", "CONNECT"),
    (":method", "OPTIONS"),
    (":method", ""),
    (":path", "/"),
    (":path", "/login"),
    (":path", "/logout"),
    (":path", "/a?sid=1&b=2"),
    (":path", "*"),
    (":path", ""),
    (":path", "http://other.example/abs"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":scheme", "ftp"),
    (":authority", "localhost"),
    (":authority", "example.com:8080"),
    (":authority", ""),
    (":authority", "a b"),
    (":authority", "user@host"),
    (":protocol", "websocket"),
    (":status", "200"),
    (":bogus", "x"),
    ("host", "localhost"),
    ("host", "other.example"),
    ("cookie", "a=1"),
    ("cookie", "b=2"),
    (
        "cookie",
        "tether_sid=AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ),
    ("cookie", "tether_sid="),
    ("cookie", ""),
    ("cookie", ";;; ;"),
    ("cookie", "JSESSIONID=abc; tether_sid=x"),
    ("content-length", "0"),
    ("content-length", "5"),
    ("content-length", "-1"),
    ("content-length", "18446744073709551616"),
    ("content-length", "1, 2"),
    ("transfer-encoding", "chunked"),
    ("te", "trailers"),
    ("te", "gzip"),
    ("connection", "close"),
    ("connection", "keep-alive, x-drop"),
    ("keep-alive", "timeout=5"),
    ("proxy-connection", "keep-alive"),
    ("upgrade", "websocket"),
    ("upgrade", "h2c"),
    ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("expect", "100-continue"),
    ("x-session-id", "abc"),
    ("tether-session-state", "continued"),
    ("tether-session-control", "end"),
    ("x-forwarded-for", "1.2.3.4"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "https"),
    ("forwarded", "for=1.2.3.4"),
    ("user-agent", "fuzz/1"),
    ("accept", "*/*"),
    ("Upper-Case", "x"),
    ("", "empty-name"),
    ("x-crlf", "a\r\nInjected: 1"),
    ("x-nul", "a\0b"),
    ("x-space ", "v"),
    ("x-obs", "\u{ff}"),
    ("x-empty", ""),
];

const METHODS: &[&str] = &[
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
];
const PATHS: &[&str] = &[
    "/", "/login", "/logout", "/a?sid=1", "/healthz", "/%00", "/x/../y",
];
const AUTHORITIES: &[&str] = &["localhost", "127.0.0.1:80", "example.com", "[::1]:8080"];

const SETTING_IDS: &[u16] = &[1, 2, 3, 4, 5, 6, 8, 9, 0, 0xffff];
const INTERESTING_U32: &[u32] = &[
    0,
    1,
    4096,
    16383,
    16384,
    65535,
    65536,
    16_777_215,
    16_777_216,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

/// The fuzzer's bytes, read front to back; past the end every byte is 0.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    /// Up to `n` bytes of the input itself.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = self.pos.max(start) + n;
        self.data[start..end].to_vec()
    }
    /// A value: mostly one of the boundary values, sometimes any 32 bits.
    fn interesting(&mut self) -> u32 {
        let b = self.byte() as usize;
        match INTERESTING_U32.get(b % 16) {
            Some(&v) => v,
            None => self.u32(),
        }
    }
    /// A payload length: small ones often, the frame-size and window boundaries sometimes.
    fn len(&mut self) -> usize {
        match self.byte() {
            b @ 0..=199 => b as usize,
            b @ 200..=249 => (b as usize - 200) * 256,
            250 => 16_384,
            251 => 16_385,
            252 => 65_535,
            253 => 65_536,
            254 => 16_777_215, // capped by the budget below
            255 => self.u16() as usize,
        }
    }
}

/// What one input turns into: the bytes to send, cut at frame boundaries.
struct Builder<'a> {
    input: Input<'a>,
    frames: Vec<Vec<u8>>,
    size: usize,
    /// The highest client stream id used so far (0: none).
    stream: u32,
    /// Requests whose body is still to come.
    open: HashSet<u32>,
    /// Streams sent as complete requests: tether owes each an answer.
    expected: HashSet<u32>,
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u8, mut v: u64) {
    let max = (1u64 << prefix) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
    hpack_int(out, if huffman { 0x80 } else { 0 }, 7, s.len() as u64);
    out.extend_from_slice(s);
}

/// A well-formed representation of `name: value`, in the kind `kind` picks.
fn hpack_field(out: &mut Vec<u8>, name: &str, value: &str, kind: u8) {
    let exact = STATIC.iter().position(|&(n, v)| n == name && v == value);
    let named = STATIC.iter().position(|&(n, _)| n == name);
    // (first byte flags, prefix bits) of the three literal kinds: incremental indexing,
    // without indexing, never indexed.
    let (flags, prefix) = match kind % 3 {
        0 => (0x40, 6),
        1 => (0x00, 4),
        _ => (0x10, 4),
    };
    match (kind / 3) % 3 {
        0 if exact.is_some() => hpack_int(out, 0x80, 7, exact.unwrap_or(0) as u64 + 1),
        0 | 1 if named.is_some() => {
            hpack_int(out, flags, prefix, named.unwrap_or(0) as u64 + 1);
            hpack_str(out, value.as_bytes(), false);
        }
        _ => {
            out.push(flags);
            hpack_str(out, name.as_bytes(), false);
            hpack_str(out, value.as_bytes(), false);
        }
    }
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

impl<'a> Builder<'a> {
    fn new(data: &'a [u8]) -> Self {
        Builder {
            input: Input { data, pos: 0 },
            frames: Vec::new(),
            size: 0,
            stream: 0,
            open: HashSet::new(),
            expected: HashSet::new(),
        }
    }

    fn push(&mut self, f: Vec<u8>) {
        self.size += f.len();
        self.frames.push(f);
    }

    fn new_stream(&mut self) -> u32 {
        self.stream = if self.stream == 0 { 1 } else { self.stream + 2 };
        self.stream
    }

    /// A stream id for a frame: 0, the current stream, a new one, an old one, an even
    /// (server-initiated) one, or any 32 bits (the reserved bit included).
    fn stream_id(&mut self) -> u32 {
        match self.input.byte() % 8 {
            0 => 0,
            1 => 2,
            2..=4 => self.stream.max(1),
            5 => self.new_stream(),
            6 => self.stream.saturating_sub(2).max(1),
            _ => self.input.u32(),
        }
    }

    /// Room left in the budget for a payload of `want` bytes.
    fn cap(&self, want: usize) -> usize {
        want.min(BUDGET.saturating_sub(self.size + 9))
    }

    /// One header field: a menu field in a well-formed representation, or something HPACK
    /// decoders must refuse or handle (table size updates, indexes past the tables, raw or
    /// Huffman-flagged bytes, names and values straight from the input).
    fn field(&mut self, out: &mut Vec<u8>) {
        let pick = self.input.byte() as usize;
        let kind = self.input.byte();
        if pick < 240 {
            let (name, value) = FIELDS[pick % FIELDS.len()];
            hpack_field(out, name, value, kind);
            return;
        }
        match pick - 240 {
            // Dynamic table size update (legal only at the start of a block).
            0 | 1 => hpack_int(out, 0x20, 5, self.input.u16() as u64),
            // Indexed: often the dynamic table, sometimes past both tables.
            2..=4 => hpack_int(out, 0x80, 7, 62 + (kind as u64 % 8) * (1 + pick as u64 % 3)),
            5 => hpack_int(out, 0x80, 7, kind as u64),
            // A name and value straight from the input, maybe flagged Huffman.
            6..=9 => {
                let n = self.input.byte() as usize % 24;
                let v = self.input.byte() as usize % 48;
                let name = self.input.take(n);
                let value = self.input.take(v);
                out.push(if kind & 1 == 0 { 0x00 } else { 0x40 });
                hpack_str(out, &name, kind & 2 != 0);
                hpack_str(out, &value, kind & 4 != 0);
            }
            // A long value: over the header list limit when repeated.
            10 => {
                let n = self.input.u16() as usize % 20_000;
                out.push(0x00);
                hpack_str(out, b"x-long", false);
                hpack_str(out, &vec![b'a'; self.cap(n)], false);
            }
            // An integer that never ends or overflows.
            11 => {
                out.push(0x7f);
                out.extend(std::iter::repeat_n(0xff, kind as usize % 12));
            }
            // Raw bytes.
            _ => {
                let n = kind as usize % 32;
                out.extend(self.input.take(n));
            }
        }
    }

    fn block(&mut self, fields: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for _ in 0..fields {
            self.field(&mut b);
        }
        b
    }

    /// Pad length byte and padding around `body`, if `flags` says PADDED.
    fn padded(&mut self, flags: u8, body: Vec<u8>, prefix: &[u8]) -> Vec<u8> {
        if flags & PADDED == 0 {
            let mut p = prefix.to_vec();
            p.extend(body);
            return p;
        }
        let pad = self.input.byte();
        let mut p = vec![pad];
        p.extend_from_slice(prefix);
        p.extend(body);
        // Sometimes less padding than declared: a protocol error tether must refuse.
        let actual = if self.input.byte().is_multiple_of(8) {
            pad / 2
        } else {
            pad
        };
        p.extend(std::iter::repeat_n(0, actual as usize));
        p
    }

    /// A HEADERS (+ CONTINUATIONs) carrying `block` on `stream`.
    fn headers(&mut self, stream: u32, flags: u8, block: Vec<u8>) {
        let priority = if flags & PRIORITY_FLAG != 0 {
            let dep = self.input.u32();
            vec![
                (dep >> 24) as u8,
                (dep >> 16) as u8,
                (dep >> 8) as u8,
                dep as u8,
                self.input.byte(),
            ]
        } else {
            Vec::new()
        };
        let split = self.input.byte();
        if !split.is_multiple_of(4) || block.len() < 2 {
            let payload = self.padded(flags, block, &priority);
            self.push(frame(HEADERS, flags | END_HEADERS, stream, &payload));
            return;
        }
        // Split the block: HEADERS without END_HEADERS, then CONTINUATIONs.
        let pieces = 2 + (split as usize / 4) % 3;
        let step = block.len().div_ceil(pieces).max(1);
        let mut chunks = block.chunks(step).map(<[u8]>::to_vec);
        let first = chunks.next().unwrap_or_default();
        let payload = self.padded(flags, first, &priority);
        self.push(frame(HEADERS, flags & !END_HEADERS, stream, &payload));
        let rest: Vec<Vec<u8>> = chunks.collect();
        let last = rest.len().saturating_sub(1);
        for (i, c) in rest.into_iter().enumerate() {
            let f = if i == last { END_HEADERS } else { 0 };
            self.push(frame(CONTINUATION, f, stream, &c));
        }
    }

    /// A complete, well-formed request on a new stream, so inputs really reach the backend.
    fn request(&mut self) {
        let shape = self.input.byte();
        let choice = self.input.byte() as usize;
        let extras = self.input.byte() as usize % 4;
        let method = METHODS[choice % METHODS.len()];
        let path = PATHS[(choice / METHODS.len()) % PATHS.len()];
        let authority = AUTHORITIES[(shape as usize >> 4) % AUTHORITIES.len()];
        let mut block = Vec::new();
        hpack_field(&mut block, ":method", method, 0);
        hpack_field(&mut block, ":scheme", "http", 0);
        hpack_field(&mut block, ":authority", authority, 3);
        hpack_field(&mut block, ":path", path, 0);
        for _ in 0..extras {
            self.field(&mut block);
        }
        let end = shape & 1 == 0;
        let flags = if end { END_STREAM } else { 0 } | (shape & (PADDED | PRIORITY_FLAG));
        let stream = self.new_stream();
        if end {
            self.expected.insert(stream);
        } else {
            self.open.insert(stream);
        }
        self.headers(stream, flags, block);
    }

    /// A body or trailers with END_STREAM complete a request begun without it.
    fn ended(&mut self, stream: u32, flags: u8) {
        if flags & END_STREAM != 0 && self.open.remove(&stream) {
            self.expected.insert(stream);
        }
    }

    fn data(&mut self) {
        let stream = self.stream_id();
        let flags = self.input.byte();
        let n = self.input.len();
        let n = self.cap(n);
        let fill = self.input.byte();
        let payload = self.padded(flags, vec![fill; n], &[]);
        self.ended(stream, flags);
        self.push(frame(DATA, flags, stream, &payload));
    }

    fn settings_payload(&mut self) -> Vec<u8> {
        let n = self.input.byte() as usize % 6;
        let mut p = Vec::new();
        for _ in 0..n {
            let id = SETTING_IDS[self.input.byte() as usize % SETTING_IDS.len()];
            let v = self.input.interesting();
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        p
    }

    fn settings(&mut self) {
        let how = self.input.byte();
        let flags = how & ACK;
        let mut p = if flags == 0 || how & 2 != 0 {
            self.settings_payload()
        } else {
            Vec::new()
        };
        if how & 4 != 0 {
            p.pop(); // a length that is not a multiple of 6
        }
        let stream = if how & 8 != 0 { self.stream_id() } else { 0 };
        self.push(frame(SETTINGS, flags, stream, &p));
    }

    /// One frame as the opcode byte says; false when the input is used up.
    fn op(&mut self) -> bool {
        if self.input.done() || self.frames.len() >= MAX_FRAMES || self.size >= BUDGET {
            return false;
        }
        match self.input.byte() % 16 {
            0..=2 => self.request(),
            3 => {
                let stream = self.stream_id();
                let flags = self.input.byte();
                let n = self.input.byte() as usize % 6;
                let block = self.block(n);
                self.ended(stream, flags);
                if flags & 0x80 != 0 {
                    // The flags as they come: END_HEADERS may be missing (a CONTINUATION
                    // must follow), PADDED or PRIORITY set over a payload without them.
                    self.push(frame(HEADERS, flags & 0x7f, stream, &block));
                } else {
                    self.headers(stream, flags & !END_HEADERS, block);
                }
            }
            4 | 5 => self.data(),
            6 => {
                let stream = self.stream_id();
                let flags = self.input.byte();
                let n = self.input.byte() as usize % 4;
                let block = self.block(n);
                self.push(frame(CONTINUATION, flags, stream, &block));
            }
            7 => self.settings(),
            8 => {
                let flags = self.input.byte();
                let n = if flags & 2 == 0 {
                    8
                } else {
                    flags as usize % 17
                };
                let mut p = self.input.take(n);
                p.resize(n, 0);
                let stream = if flags & 4 == 0 { 0 } else { self.stream_id() };
                self.push(frame(PING, flags & ACK, stream, &p));
            }
            9 => {
                let stream = self.stream_id();
                let inc = self.input.interesting();
                self.push(frame(WINDOW_UPDATE, 0, stream, &inc.to_be_bytes()));
            }
            10 => {
                let stream = self.stream_id();
                let code = self.input.byte() as u32 % 16;
                self.push(frame(RST_STREAM, 0, stream, &code.to_be_bytes()));
            }
            11 => {
                let stream = self.stream_id();
                let dep = self.stream_id() | ((self.input.byte() as u32 & 1) << 31);
                let mut p = dep.to_be_bytes().to_vec();
                p.push(self.input.byte());
                if self.input.byte().is_multiple_of(8) {
                    p.pop(); // a PRIORITY frame of the wrong size
                }
                self.push(frame(PRIORITY, 0, stream, &p));
            }
            12 => {
                let last = self.stream_id();
                let code = self.input.byte() as u32 % 16;
                let debug = self.input.byte() as usize % 16;
                let mut p = last.to_be_bytes().to_vec();
                p.extend_from_slice(&code.to_be_bytes());
                p.extend(self.input.take(debug));
                let stream = if self.input.byte().is_multiple_of(8) {
                    self.stream_id()
                } else {
                    0
                };
                self.push(frame(GOAWAY, 0, stream, &p));
            }
            13 => {
                let stream = self.stream_id();
                let promised = self.stream_id();
                let n = self.input.byte() as usize % 4;
                let mut p = promised.to_be_bytes().to_vec();
                p.extend(self.block(n));
                self.push(frame(PUSH_PROMISE, END_HEADERS, stream, &p));
            }
            _ => {
                // A raw frame: any type (extensions and unknown ones included), flags and
                // stream, with a declared length that need not match the payload.
                let ty = self.input.byte();
                let flags = self.input.byte();
                let stream = self.input.u32();
                let n = self.input.byte() as usize % 64;
                let payload = self.input.take(n);
                let mut f = frame(ty, flags, stream, &payload);
                if self.input.byte().is_multiple_of(4) {
                    let declared = self.input.u16() as u32;
                    f[..3].copy_from_slice(&declared.to_be_bytes()[1..]);
                }
                self.push(f);
            }
        }
        true
    }
}

/// What tether has said on one connection, parsed frame by frame.
#[derive(Default)]
struct Answer {
    buf: Vec<u8>,
    /// Streams tether has finished (END_STREAM) or reset.
    finished: HashSet<u32>,
    goaway: bool,
    /// The first header block tether sent on stream 1.
    first_block: Option<Vec<u8>>,
}

impl Answer {
    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= 9 {
            let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
            if self.buf.len() < 9 + len {
                return;
            }
            let (ty, flags) = (self.buf[3], self.buf[4]);
            let stream = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                & 0x7fff_ffff;
            let payload = &self.buf[9..9 + len];
            match ty {
                DATA | HEADERS if flags & END_STREAM != 0 => {
                    self.finished.insert(stream);
                }
                RST_STREAM => {
                    self.finished.insert(stream);
                }
                GOAWAY => self.goaway = true,
                _ => {}
            }
            if ty == HEADERS && stream == 1 && self.first_block.is_none() {
                self.first_block = Some(payload.to_vec());
            }
            self.buf.drain(..9 + len);
        }
    }
}

/// Reads into `answer` until `stop` holds, the connection ends, or a read times out;
/// returns true if it timed out.
fn read_until(tcp: &mut TcpStream, answer: &mut Answer, stop: impl Fn(&Answer) -> bool) -> bool {
    let mut buf = [0u8; 16 * 1024];
    while !stop(answer) {
        match tcp.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => answer.feed(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return true
            }
            // Reset by tether (it closed with unread input): a closed connection.
            Err(_) => return false,
        }
    }
    false
}

fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).expect("tether accepts");
    // Reset instead of FIN on drop: no TIME_WAIT, so millions of runs never exhaust ports.
    socket2::SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    let _ = tcp.set_nodelay(true);
    tcp.set_write_timeout(Some(DEADLINE))
        .expect("write timeout");
    tcp
}

/// A fresh, well-formed h2c `GET /` must get `200`.
fn still_serving(addr: SocketAddr, after: &[u8]) {
    let mut tcp = connect(addr);
    tcp.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let mut block = Vec::new();
    hpack_field(&mut block, ":method", "GET", 0);
    hpack_field(&mut block, ":scheme", "http", 0);
    hpack_field(&mut block, ":authority", "localhost", 3);
    hpack_field(&mut block, ":path", "/", 0);
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    tcp.write_all(&out)
        .expect("tether reads a fresh connection");
    let mut answer = Answer::default();
    let timed_out = read_until(&mut tcp, &mut answer, |a| a.first_block.is_some());
    let show = |b: &[u8]| format!("{:02x?}", &b[..b.len().min(64)]);
    match &answer.first_block {
        // On a fresh connection the encoder's first field, `:status: 200`, is static index 8.
        Some(b) if b.first() == Some(&0x88) => {}
        Some(b) => panic!(
            "a fresh GET / after input {} got a status other than 200; block {}",
            show(after),
            show(b)
        ),
        None => panic!(
            "tether stopped serving: a fresh GET / after input {} got no answer ({})",
            show(after),
            if timed_out {
                format!("nothing within {DEADLINE:?}")
            } else {
                "connection closed".to_string()
            }
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let live = live();
    let mut b = Builder::new(data);
    let opening = b.input.byte();
    let mut head = PREFACE.to_vec();
    match opening & 3 {
        0 => head.extend(frame(SETTINGS, 0, 0, &[])),
        1 => {
            let p = b.settings_payload();
            head.extend(frame(SETTINGS, 0, 0, &p));
        }
        2 => {}
        _ => {
            head.extend(frame(SETTINGS, 0, 0, &[]));
            head.extend(frame(WINDOW_UPDATE, 0, 0, &0x00ef_0001u32.to_be_bytes()));
        }
    }
    let one_write_per_frame = opening & 4 != 0;
    let settle = opening & 8 != 0;
    while b.op() {}

    let t0 = Instant::now();
    let mut tcp = connect(live.addr);
    let mut answer = Answer::default();
    // tether may send GOAWAY and close before it has read everything: a failed write is an
    // answer too, not an error of the harness.
    let mut wrote = tcp.write_all(&head).is_ok();
    if one_write_per_frame {
        for f in &b.frames {
            if !wrote {
                break;
            }
            wrote = tcp.write_all(f).is_ok();
        }
    } else if wrote {
        let _ = tcp.write_all(&b.frames.concat());
    }

    if settle && !b.expected.is_empty() {
        tcp.set_read_timeout(Some(SETTLE_IDLE))
            .expect("read timeout");
        let start = Instant::now();
        let expected = &b.expected;
        read_until(&mut tcp, &mut answer, |a| {
            a.goaway || expected.is_subset(&a.finished) || start.elapsed() > SETTLE_MAX
        });
    }

    let t1 = t0.elapsed();
    let _ = tcp.shutdown(Shutdown::Write);
    tcp.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    if read_until(&mut tcp, &mut answer, |_| false) {
        panic!(
            "tether left a half-closed h2c connection open for {DEADLINE:?} (goaway seen: {})",
            answer.goaway
        );
    }
    drop(tcp);
    let t2 = t0.elapsed();
    if std::env::var_os("H2_FRAMES_DEBUG").is_some() {
        let mut finished: Vec<_> = answer.finished.iter().collect();
        finished.sort();
        eprintln!(
            "{} frames, {} bytes sent; complete requests on {:?}; tether finished {finished:?}, goaway {}",
            b.frames.len(),
            head.len() + b.size,
            b.expected,
            answer.goaway
        );
    }
    still_serving(live.addr, data);
    if std::env::var_os("H2_FRAMES_DEBUG").is_some() {
        eprintln!(
            "times: sent+settled {t1:?}, closed {t2:?}, probe {:?}",
            t0.elapsed()
        );
    }
});
