//! Hostile input through a live tether, beyond what the unit tests reach:
//! hundreds of malformed and adversarial request heads, each on its own connection to the
//! plain listener. Every one gets a 4xx (a 400 also closes the connection) or a closed
//! connection: never a 2xx or 5xx, never a hang. A head whose framing is ambiguous never
//! reaches the backend. tether stays up: a normal request succeeds before, every 50 cases,
//! and after.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// How long a case may take to be answered or closed. tether's own deadlines
/// (`client_header`) are longer, so a case that runs into this one is a hang.
const ANSWER: Duration = Duration::from_secs(3);

/// Where the bytes may legitimately end up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The head itself is malformed or ambiguous: the backend must see nothing.
    Never,
    /// The head is well-formed and the framing breaks in the body: the backend may see the
    /// head (tether streams), but the client must get a 4xx or a closed connection.
    HeadOnly,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    reach: Reach,
    /// Close our sending side after the bytes (for inputs that are not a complete message,
    /// so tether sees the end instead of waiting for more).
    half_close: bool,
}

impl Case {
    fn head(name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Case {
        Case {
            name: name.into(),
            bytes: bytes.into(),
            reach: Reach::Never,
            half_close: false,
        }
    }
    fn body(name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Case {
        Case {
            reach: Reach::HeadOnly,
            half_close: true,
            ..Case::head(name, bytes)
        }
    }
    fn half_closed(mut self) -> Case {
        self.half_close = true;
        self
    }
}

/// What came back on the connection.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Closed (or reset) without a status line.
    Closed,
    /// A status line; `closed` = the connection was closed within [`ANSWER`].
    Status { code: u16, closed: bool },
    /// Neither an answer nor a close within [`ANSWER`].
    Hang,
    /// An HTTP/2 answer (the input opened with the h2c prior-knowledge preface):
    /// whether it holds a GOAWAY with an error code.
    H2 { goaway: bool, closed: bool },
    /// Bytes that are not an HTTP/1.x status line.
    Garbled(String),
}

impl Outcome {
    fn acceptable(&self) -> bool {
        match self {
            Outcome::Closed => true,
            // SPEC §9: a refused request's connection is closed.
            Outcome::Status { code: 400, closed } => *closed,
            Outcome::Status { code, .. } => (400..500).contains(code),
            Outcome::H2 { goaway, closed } => *goaway && *closed,
            Outcome::Hang | Outcome::Garbled(_) => false,
        }
    }
}

async fn exchange(addr: SocketAddr, case: &Case) -> Outcome {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // tether may answer and close before reading everything (431, 400): a failed write is
    // part of the answer, not a harness error.
    let _ = tcp.write_all(&case.bytes).await;
    if case.half_close {
        let _ = tcp.shutdown().await;
    }
    let mut out = Vec::new();
    // EOF or a reset: closed either way.
    let closed = tokio::time::timeout(ANSWER, tcp.read_to_end(&mut out))
        .await
        .is_ok();
    if out.is_empty() {
        return if closed {
            Outcome::Closed
        } else {
            Outcome::Hang
        };
    }
    if case.bytes.starts_with(H2_PREFACE) {
        return Outcome::H2 {
            goaway: h2_goaway_with_error(&out),
            closed,
        };
    }
    let text = String::from_utf8_lossy(&out[..out.len().min(120)]).into_owned();
    let code = (out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "))
        .then(|| {
            std::str::from_utf8(out.get(9..12)?)
                .ok()?
                .parse::<u16>()
                .ok()
        })
        .flatten();
    match code {
        Some(code) => Outcome::Status { code, closed },
        None => Outcome::Garbled(text),
    }
}

/// Walks HTTP/2 frames (RFC 9113 §4.1: 24-bit length, type, flags, stream id) looking for a
/// GOAWAY (type 7) whose error code (payload bytes 4..8) is not NO_ERROR.
fn h2_goaway_with_error(mut out: &[u8]) -> bool {
    while out.len() >= 9 {
        let len = usize::from(out[0]) << 16 | usize::from(out[1]) << 8 | usize::from(out[2]);
        let Some(payload) = out.get(9..9 + len) else {
            return false;
        };
        if out[3] == 7 && payload.len() >= 8 && payload[4..8] != [0, 0, 0, 0] {
            return true;
        }
        out = &out[9 + len..];
    }
    false
}

// ------------------------------------------------------------------ the cases

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A minimal deterministic PRNG (xorshift64*): the same cases on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const GET: &str = "GET / HTTP/1.1\r\nHost: x\r\n";
/// A valid head that the mutation families below break, one byte at a time.
const BASE: &[u8] = b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\nX-A: b\r\n\r\n";

fn req(extra_headers: &str, body: &str) -> String {
    format!("POST /count HTTP/1.1\r\nHost: x\r\n{extra_headers}\r\n{body}")
}

/// Conflicting or invalid framing: CL/TE (RFC 9112 §6.3, SPEC §9).
fn framing() -> Vec<Case> {
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    let mut v = vec![
        Case::head(
            "CL then TE chunked",
            req(
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                chunked,
            ),
        ),
        Case::head(
            "TE chunked then CL",
            req(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                chunked,
            ),
        ),
        Case::head(
            "TE chunked and CL 0",
            req(
                "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
                chunked,
            ),
        ),
        Case::head(
            "CL with TE identity",
            req(
                "Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
                "hello",
            ),
        ),
        Case::head(
            "two differing Content-Length",
            req("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        ),
        Case::head(
            "differing Content-Length in one field",
            req("Content-Length: 5, 6\r\n", "hello!"),
        ),
        Case::head(
            "TE chunked, identity",
            req("Transfer-Encoding: chunked, identity\r\n", chunked),
        ),
        Case::head(
            "TE chunked, then a TE identity field",
            req(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                chunked,
            ),
        ),
        Case::head("TE gzip only", req("Transfer-Encoding: gzip\r\n", "hello")),
        Case::head(
            "TE xchunked",
            req("Transfer-Encoding: xchunked\r\n", chunked),
        ),
        Case::head(
            "TE with vertical tab",
            req("Transfer-Encoding: \x0bchunked\r\n", chunked),
        ),
        Case::head(
            "space before colon in Transfer-Encoding",
            req("Transfer-Encoding : chunked\r\n", chunked),
        ),
        Case::head(
            "tab before colon in Transfer-Encoding",
            req("Transfer-Encoding\t: chunked\r\n", chunked),
        ),
        Case::head(
            "space before colon in Content-Length",
            req("Content-Length : 5\r\n", "hello"),
        ),
        Case::head(
            "TE on HTTP/1.0",
            format!(
                "POST /count HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
            ),
        ),
        Case::head(
            "obs-fold continues Transfer-Encoding",
            req("Transfer-Encoding: identity\r\n chunked\r\n", chunked),
        ),
    ];
    for bad in [
        "-1",
        "abc",
        "+5",
        "0x5",
        "5 5",
        "5.0",
        "99999999999999999999999",
        "",
        "1e3",
    ] {
        v.push(Case::head(
            format!("invalid Content-Length {bad:?}"),
            req(&format!("Content-Length: {bad}\r\n"), "hello"),
        ));
    }
    v
}

/// Chunked bodies whose framing breaks after a valid head (SPEC §9: 400, not 502).
fn chunk_bodies() -> Vec<Case> {
    [
        (
            "oversized chunk size",
            "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk size overflowing u64 by one digit",
            "10000000000000000\r\nx\r\n0\r\n\r\n",
        ),
        ("negative chunk size", "-5\r\nhello\r\n0\r\n\r\n"),
        ("non-hex chunk size", "zz\r\nhello\r\n0\r\n\r\n"),
        ("0x-prefixed chunk size", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("chunk data longer than its size", "2\r\nhello\r\n0\r\n\r\n"),
        ("NUL in chunk extension", "5;\x00\r\nhello\r\n0\r\n\r\n"),
        ("bare LF inside chunk size line", "5\nhello\r\n0\r\n\r\n"),
    ]
    .into_iter()
    .map(|(name, body)| Case::body(name, req("Transfer-Encoding: chunked\r\n", body)))
    .collect()
}

/// CR, LF and NUL where they split or corrupt a line; obs-fold.
fn injection() -> Vec<Case> {
    vec![
        Case::head(
            "CRLF in a value adds a second Host",
            format!("{GET}X-A: a\r\nHost: evil\r\n\r\n"),
        ),
        Case::head(
            "bare LF in a value adds a second Host",
            format!("{GET}X-A: a\nHost: evil\r\n\r\n"),
        ),
        Case::head("bare CR in a value", format!("{GET}X-A: a\rb\r\n\r\n")),
        Case::head(
            "bare CR splitting a header",
            format!("{GET}X-A: a\rHost: evil\r\n\r\n"),
        ),
        Case::head("CR CR LF", format!("{GET}X-A: a\r\r\n\r\n")),
        Case::head(
            "bare CR ends the request line",
            "GET / HTTP/1.1\rHost: x\r\n\r\n",
        ),
        Case::head("CR in a name", format!("{GET}X\rA: b\r\n\r\n")),
        Case::head("LF in a name", format!("{GET}X\nA: b\r\n\r\n")),
        Case::head("name without colon", format!("{GET}X-A b\r\n\r\n")),
        Case::head("empty name", format!("{GET}: b\r\n\r\n")),
        Case::head("space in a name", format!("{GET}X A: b\r\n\r\n")),
        Case::head("NUL in a name", format!("{GET}X-A\0: b\r\n\r\n")),
        Case::head("NUL in a value", format!("{GET}X-A: a\0b\r\n\r\n")),
        Case::head("NUL in Host", "GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n"),
        Case::head("DEL in a value", format!("{GET}X-A: a\x7fb\r\n\r\n")),
        Case::head("obs-fold (space)", format!("{GET}X-A: a\r\n b\r\n\r\n")),
        Case::head("obs-fold (tab)", format!("{GET}X-A: a\r\n\tb\r\n\r\n")),
        Case::head(
            "obs-fold right after the request line",
            "GET / HTTP/1.1\r\n Host: x\r\n\r\n",
        ),
        Case::head(
            "obs-fold of Host",
            "GET / HTTP/1.1\r\nHost: x\r\n y\r\n\r\n",
        ),
        Case::head(
            "space before colon in Host",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        ),
    ]
}

/// Methods, targets and versions no server should take.
fn request_lines() -> Vec<Case> {
    let mut v = vec![
        Case::head("NUL in the method", "G\0T / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Case::head(
            "DEL before the method",
            "\x7fGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        Case::head("empty method", " / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Case::head("non-ASCII method", "GÉT / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Case::head(
            "two spaces after the method",
            "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        Case::head(
            "space inside the target",
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        Case::head("NUL in the target", "GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n"),
        Case::head("DEL in the target", "GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n"),
        Case::head(
            "unclosed IPv6 authority",
            "GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        Case::head("empty authority", "GET http:// HTTP/1.1\r\nHost: x\r\n\r\n"),
        // RFC 3986 wants two hex digits after '%' (§2.1) and a port of digits (§3.2.3);
        // `http::Uri` takes both, so tether's own target check must refuse them (as nginx does).
        Case::head(
            "bad percent-encoding",
            "GET /%%% HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        Case::head(
            "non-digit port",
            "GET http://x:8a/ HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        Case::head(
            "absurdly long target (100 KB)",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000)),
        ),
        Case::head(
            "long target just over the head limit",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(17_000)),
        ),
        Case::head("HTTP/0.9 request line", "GET /\r\n\r\n").half_closed(),
        Case::head("HTTP/0.9, no blank line", "GET /\r\n").half_closed(),
        Case::head(
            "HTTP/2.0 on an h1 head",
            "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        ),
        Case::head("HTTP/2 on an h1 head", "GET / HTTP/2\r\nHost: x\r\n\r\n"),
        Case::head("HTTP/3.0", "GET / HTTP/3.0\r\nHost: x\r\n\r\n"),
        Case::head("HTTP/1.2", "GET / HTTP/1.2\r\nHost: x\r\n\r\n"),
        Case::head("HTTP/1.10", "GET / HTTP/1.10\r\nHost: x\r\n\r\n"),
        Case::head("HTTP/01.1", "GET / HTTP/01.1\r\nHost: x\r\n\r\n"),
        Case::head("lower-case version", "GET / http/1.1\r\nHost: x\r\n\r\n"),
        Case::head("HTTPS/1.1", "GET / HTTPS/1.1\r\nHost: x\r\n\r\n"),
        Case::head(
            "no space before version",
            "GET /HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        Case::head(
            "trailing space after version",
            "GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
        ),
        Case::head(
            "h2 preface with garbage after",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nthis is not a SETTINGS frame",
        )
        .half_closed(),
        Case::head(
            "h2 preface, then a frame claiming 16 MiB",
            [H2_PREFACE, b"\xff\xff\xff\x04\x00\x00\x00\x00\x00"].concat(),
        )
        .half_closed(),
    ];
    for sep in "()<>@,;:\\\"/[]?={}".chars() {
        v.push(Case::head(
            format!("separator {sep:?} in the method"),
            format!("G{sep}T / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ));
    }
    v
}

/// Too many headers, Host rules.
fn header_sets() -> Vec<Case> {
    let many = |n: usize| {
        let mut s = String::from(GET);
        for i in 0..n {
            s.push_str(&format!("X-H{i}: v\r\n"));
        }
        s + "\r\n"
    };
    vec![
        Case::head("101 headers", many(100)),
        Case::head("250 headers", many(249)),
        Case::head("2000 headers", many(1999)),
        Case::head(
            "one 20 KB header value",
            format!("{GET}X-Big: {}\r\n\r\n", "v".repeat(20_000)),
        ),
        Case::head("Host missing", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n"),
        Case::head(
            "Host twice, same value",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
        ),
        Case::head(
            "Host twice, different values",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        Case::head(
            "Host list in one field",
            "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
        ),
        Case::head("Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        Case::head("Host with a path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        Case::head("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"),
    ]
}

/// One byte inserted at every position of [`BASE`]: a NUL, and a CR not followed by LF.
fn byte_insertions() -> Vec<Case> {
    let mut v = Vec::new();
    // Up to, not past, the final CRLF: a byte after the blank line starts a new request.
    for at in 0..BASE.len() - 1 {
        for (what, byte) in [("NUL", 0u8), ("bare CR", b'\r')] {
            let mut bytes = BASE.to_vec();
            bytes.insert(at, byte);
            if byte == b'\r' && bytes.get(at + 1) == Some(&b'\n') {
                // "\r" + "\n" is a line end, not a bare CR; put it after the LF's CR instead.
                continue;
            }
            v.push(Case::head(format!("{what} inserted at {at}"), bytes).half_closed());
        }
    }
    v
}

/// Every control byte in a header name, and every one except LF (a line end RFC 9112
/// §2.2 lets recipients accept) and HTAB (allowed) in a value.
fn control_bytes() -> Vec<Case> {
    let mut v = Vec::new();
    for b in (0u8..0x20).chain([0x7f]) {
        v.push(Case::head(
            format!("control byte {b:#04x} in a name"),
            [GET.as_bytes(), b"X-A", &[b], b"B: v\r\n\r\n"].concat(),
        ));
        if b != b'\n' && b != b'\t' {
            v.push(Case::head(
                format!("control byte {b:#04x} in a value"),
                [GET.as_bytes(), b"X-A: a", &[b], b"b\r\n\r\n"].concat(),
            ));
        }
    }
    v
}

/// Seeded random bytes, some bare and some behind a plausible request line.
fn random_bytes() -> Vec<Case> {
    let mut rng = XorShift(0x7e7e_a11c_e5ee_d001);
    let mut v = Vec::new();
    for i in 0..100 {
        let len = 1 + rng.below(if i % 10 == 0 { 20_000 } else { 600 }) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        v.push(Case::head(format!("random bytes #{i} ({len} B)"), bytes).half_closed());
    }
    for i in 0..40 {
        let len = 1 + rng.below(400) as usize;
        let mut bytes = b"GET / HTTP/1.1\r\n".to_vec();
        // Never a valid field line: the first random byte is a control byte, not a tchar.
        bytes.push(rng.below(0x20) as u8 & !0x09 | 0x01);
        bytes.extend((0..len).map(|_| rng.next() as u8));
        bytes.extend_from_slice(b"\r\n\r\n");
        v.push(Case::head(format!("request line + random field bytes #{i}"), bytes).half_closed());
    }
    v
}

fn all_cases() -> Vec<Case> {
    [
        framing(),
        chunk_bodies(),
        injection(),
        request_lines(),
        header_sets(),
        byte_insertions(),
        control_bytes(),
        random_bytes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

// ------------------------------------------------------------------ the test

#[tokio::test]
async fn garbage_and_smuggling_attempts_get_4xx_or_a_closed_connection() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    assert_eq!(plain_get(t.addr(), "/", &[]).await.status, 200, "before");

    let cases = all_cases();
    assert!(cases.len() >= 300, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let before = a.hits();
        let outcome = exchange(t.addr(), case).await;
        let reached = a.hits() - before;
        let leaked = case.reach == Reach::Never && reached > 0;
        if !outcome.acceptable() || leaked {
            failures.push(format!(
                "#{i} {}: {outcome:?}{}",
                case.name,
                if leaked { ", reached the backend" } else { "" }
            ));
        }
        if i % 50 == 49 {
            let r = plain_get(t.addr(), "/", &[]).await;
            assert_eq!(r.status, 200, "a normal request after case #{i}");
        }
    }
    let r = plain_get(t.addr(), "/", &[]).await;
    assert_eq!(r.status, 200, "a normal request after the last case");

    println!("hostile: {} cases sent", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases were mishandled:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
    t.stop().await;
}

/// Three chunked bodies whose framing breaks (the client's fault) in a row must not take the
/// backend out: were they counted as passive backend failures (`health.fall` = 3), any
/// client could mark every backend down and turn all traffic into 503.
#[tokio::test]
async fn broken_client_bodies_do_not_mark_the_backend_down() {
    let a = Backend::start("app1").await;
    let t = Tether::start(&config("", &[&a])).await;
    for case in chunk_bodies().iter().take(3) {
        // The status is the main test's business; here only what it does to the backend.
        let _ = exchange(t.addr(), case).await;
    }
    let r = plain_get(t.addr(), "/", &[]).await;
    assert_eq!(r.status, 200, "the backend is still up: {:?}", r.body);
    t.stop().await;
}
