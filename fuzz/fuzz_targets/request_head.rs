//! Bytes from the fuzzer into a live tether's plain listener, as a client would send them.
//!
//! Once per process: a tokio runtime, a demo backend (`tether::demo::spawn_backend`) and a
//! real in-process tether from `tether::server::start` on 127.0.0.1:0. Per input: a fresh TCP
//! connection, the bytes, a half-close, and the answer read with a deadline. Checked:
//! - nothing panics anywhere in the process (the hook aborts, so libFuzzer sees a crash even
//!   when the panic happens in a tokio task);
//! - tether answers within the deadline: a client that has sent everything and closed its
//!   side never leaves a connection hanging;
//! - the answer is nothing (closed) or an HTTP/1.x status line.
//!
//! Inputs that open with the HTTP/2 preface are served as h2c (prior knowledge) by hyper-util's
//! auto builder; for those only "no panic, no hang" is checked.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

mod live;
use live::Live;

/// Longer than any answer tether gives to a client that has closed its side; short enough
/// that a real hang shows up as a crash, not as a stall of the whole run.
const DEADLINE: Duration = Duration::from_secs(5);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static LIVE: OnceLock<Live> = OnceLock::new();

fn live() -> &'static Live {
    LIVE.get_or_init(|| {
        live::start(
            "[timeouts]\nclient_header = \"2s\"\nresponse = \"2s\"\n",
            |_| false,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let live = live();
    let mut tcp = TcpStream::connect(live.addr).expect("tether accepts");
    // Reset instead of FIN on drop: no TIME_WAIT, so millions of runs never exhaust ports.
    socket2::SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    tcp.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    // tether may answer (431, 400) and close before it has read everything: a failed write
    // is an answer too, not an error of the harness.
    let _ = tcp.write_all(data);
    let _ = tcp.shutdown(Shutdown::Write);

    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() >= 64 * 1024 {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "tether left a half-closed connection open for {DEADLINE:?}; got {:?}",
                    String::from_utf8_lossy(&out[..out.len().min(200)])
                );
            }
            // Reset by tether (it closed with unread input): a closed connection.
            Err(_) => break,
        }
    }
    if out.is_empty() || data.starts_with(&H2_PREFACE[..data.len().min(H2_PREFACE.len())]) {
        return;
    }
    let head = String::from_utf8_lossy(&out[..out.len().min(200)]);
    let ok = out.len() >= 13
        && (out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "))
        && out[9..12].iter().all(u8::is_ascii_digit)
        && out[12] == b' ';
    assert!(ok, "not a status line: {head:?}");
});
