//! The PROXY protocol header (HAProxy's proxy-protocol.txt: v1 text, v2
//! binary) that an L4 balancer sends before the first byte of the client it
//! forwards, and the client it names. [`parse`] is the rule, bytes in and a
//! verdict out; [`read`] takes a header off a socket and keeps the bytes
//! that came after it. The deadline is the caller's (`listener.rs`), and
//! what a named client is used for is the request path's: it simply stands
//! in for the connection's peer.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header, `PROXY` to CRLF (the protocol's own bound:
/// `PROXY UNKNOWN` with two full IPv6 addresses and ports).
pub const V1_MAX: usize = 107;

/// The longest v2 header tether reads: 16 fixed bytes and up to 1 KiB of
/// addresses (at most 216 bytes, for AF_UNIX) and TLVs. The format allows
/// 64 KiB; balancers send the addresses and a few TLVs (an AWS VPC
/// endpoint id, HAProxy's ALPN, authority and TLS details), some hundreds
/// of bytes, and a header is read into memory before the connection is
/// anything else, so a larger one is refused rather than buffered.
pub const V2_MAX: usize = 16 + 1024;

/// The v2 signature.
const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the bytes received so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A header has begun (or nothing came yet): read more.
    NeedMore,
    /// A header of `len` bytes naming the client `src`, which connected to
    /// `dst` on the balancer.
    Proxied {
        /// Bytes of the header; what follows is the client's.
        len: usize,
        /// The client.
        src: SocketAddr,
        /// Where the client connected.
        dst: SocketAddr,
    },
    /// A header of `len` bytes naming no client: v2 `LOCAL` (the
    /// balancer's own connection, e.g. a health check), v1 `UNKNOWN`, or an
    /// address family or transport other than TCP over IPv4 or IPv6. The
    /// TCP peer is the client.
    Local {
        /// Bytes of the header; what follows is the client's.
        len: usize,
    },
    /// Not a PROXY protocol header, a broken one, or one too long: close.
    Invalid(&'static str),
}

/// Judges the bytes received so far on a connection that must begin with a
/// header.
pub fn parse(buf: &[u8]) -> Parsed {
    match buf.first() {
        None => Parsed::NeedMore,
        Some(b'\r') => parse_v2(buf),
        Some(b'P') => parse_v1(buf),
        Some(_) => Parsed::Invalid("not a PROXY protocol header"),
    }
}

/// `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n`, or
/// `PROXY UNKNOWN ...\r\n`: single spaces, no leading or trailing blanks.
fn parse_v1(buf: &[u8]) -> Parsed {
    const PREFIX: &[u8] = b"PROXY ";
    let head = &buf[..buf.len().min(PREFIX.len())];
    if !PREFIX.starts_with(head) {
        return Parsed::Invalid("not a PROXY protocol header");
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(nl) = memchr::memchr(b'\n', window) else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("v1 header longer than 107 bytes")
        } else {
            Parsed::NeedMore
        };
    };
    let len = nl + 1;
    let Some(line) = window[..nl].strip_suffix(b"\r") else {
        return Parsed::Invalid("v1 header not ended by CRLF");
    };
    let Some(line) = line
        .strip_prefix(PREFIX)
        .and_then(|l| std::str::from_utf8(l).ok())
    else {
        return Parsed::Invalid("v1 header not ASCII");
    };
    let mut words = line.split(' ');
    let v6 = match words.next() {
        Some("TCP4") => false,
        Some("TCP6") => true,
        // The sender could not say; whatever follows is to be ignored.
        Some("UNKNOWN") => return Parsed::Local { len },
        _ => return Parsed::Invalid("v1 header with an unknown protocol"),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return Parsed::Invalid("v1 header without exactly two addresses and two ports");
    };
    let ip = |s: &str| -> Option<IpAddr> {
        if v6 {
            s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
        }
    };
    match (ip(src), ip(dst), port(sport), port(dport)) {
        (Some(s), Some(d), Some(sp), Some(dp)) => Parsed::Proxied {
            len,
            src: SocketAddr::new(s, sp),
            dst: SocketAddr::new(d, dp),
        },
        _ => Parsed::Invalid("v1 header with a malformed address or port"),
    }
}

/// A decimal port: digits only (`u16::from_str` would also take a `+`).
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The signature, version 2 and a command (`LOCAL` 0, `PROXY` 1), family
/// and transport, a big-endian length, then that many bytes: the addresses
/// and TLVs (which tether does not use).
fn parse_v2(buf: &[u8]) -> Parsed {
    let head = &buf[..buf.len().min(SIG.len())];
    if !SIG.starts_with(head) {
        return Parsed::Invalid("not a PROXY protocol header");
    }
    let Some(fixed) = buf.get(..16) else {
        return Parsed::NeedMore;
    };
    let (ver_cmd, fam, body) = (fixed[12], fixed[13], [fixed[14], fixed[15]]);
    let len = 16 + usize::from(u16::from_be_bytes(body));
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("v2 header of another version");
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Invalid("v2 header with an unknown command"),
    };
    if len > V2_MAX {
        return Parsed::Invalid("v2 header longer than 1040 bytes");
    }
    let Some(block) = buf.get(16..len) else {
        return Parsed::NeedMore;
    };
    // LOCAL: "the receiver must accept the connection as valid and must use
    // the real connection endpoints and discard the protocol block
    // including the family".
    if local {
        return Parsed::Local { len };
    }
    let addrs = match fam >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Parsed::Invalid("v2 header with an unknown address family"),
    };
    if fam & 0x0f > 2 {
        return Parsed::Invalid("v2 header with an unknown transport");
    }
    if block.len() < addrs {
        return Parsed::Invalid("v2 header shorter than its addresses");
    }
    let pair = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match fam {
        // TCP over IPv4 and over IPv6; anything else (AF_UNSPEC, AF_UNIX,
        // UDP) names no TCP client, and the real peer stands, as in HAProxy.
        0x11 => {
            let ip =
                |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
            Parsed::Proxied {
                len,
                src: SocketAddr::new(IpAddr::V4(ip(0)), pair(8)),
                dst: SocketAddr::new(IpAddr::V4(ip(4)), pair(10)),
            }
        }
        0x21 => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&block[at..at + 16]);
                Ipv6Addr::from(o)
            };
            Parsed::Proxied {
                len,
                src: SocketAddr::new(IpAddr::V6(ip(0)), pair(32)),
                dst: SocketAddr::new(IpAddr::V6(ip(16)), pair(34)),
            }
        }
        _ => Parsed::Local { len },
    }
}

/// Why a connection's header was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The bytes are not a (valid, short enough) header.
    #[error("{0}")]
    Invalid(&'static str),
    /// The peer closed before a whole header (a balancer's TCP health check
    /// does just this).
    #[error("closed before a whole PROXY protocol header")]
    Closed,
    /// Reading failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// A header read off a connection.
#[derive(Debug)]
pub struct Header {
    /// The client it names; `None`: the TCP peer.
    pub client: Option<SocketAddr>,
    /// Bytes that came after the header in the same reads (the request or
    /// the TLS ClientHello): the connection's first bytes.
    pub rest: Bytes,
}

/// Reads a header off `io`. It does not stop by itself on a slow sender:
/// the caller bounds it with a deadline.
///
/// # Errors
/// [`Refused`]: no valid header, or the connection closed or failed first.
pub async fn read<I: AsyncRead + Unpin>(io: &mut I) -> Result<Header, Refused> {
    // Room for the longest header taken, and no more: a header longer than
    // that is refused before its end, and whatever a read brings past the
    // header's end is handed on, not lost.
    let mut buf = vec![0u8; V2_MAX];
    let mut filled = 0;
    loop {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        filled += n;
        let (len, client) = match parse(&buf[..filled]) {
            Parsed::NeedMore if filled < buf.len() => continue,
            Parsed::NeedMore => return Err(Refused::Invalid("header longer than tether reads")),
            Parsed::Invalid(why) => return Err(Refused::Invalid(why)),
            Parsed::Proxied { len, src, .. } => (len, Some(src)),
            Parsed::Local { len } => (len, None),
        };
        buf.truncate(filled);
        let rest = Bytes::from(buf).slice(len..);
        return Ok(Header { client, rest });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut h = SIG.to_vec();
        h.extend([ver_cmd, fam]);
        h.extend(u16::try_from(block.len()).unwrap().to_be_bytes());
        h.extend(block);
        h
    }

    fn tcp4_block() -> Vec<u8> {
        // 203.0.113.7:56324 -> 192.0.2.10:443
        vec![203, 0, 113, 7, 192, 0, 2, 10, 0xdc, 0x04, 0x01, 0xbb]
    }

    fn tcp6_block() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend("2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        b.extend("2001:db8::10".parse::<Ipv6Addr>().unwrap().octets());
        b.extend([0xdc, 0x04, 0x01, 0xbb]);
        b
    }

    #[test]
    fn the_header_rule() {
        use Parsed::*;
        let proxied = |len, src: &str, dst: &str| Proxied {
            len,
            src: sa(src),
            dst: sa(dst),
        };
        let with_tlv = {
            let mut b = tcp4_block();
            b.extend([0xEA, 0x00, 0x03, b'a', b'b', b'c']);
            b
        };
        let too_long_v1 = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 100]].concat();
        let long_unknown_ok = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 91], b"\r\n"].concat();
        let long_unknown_bad = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 92], b"\r\n"].concat();
        let mut v2_huge = v2(0x21, 0x11, &tcp4_block());
        v2_huge[14..16].copy_from_slice(&[0x04, 0x01]); // 1025 bytes follow
        let v2_biggest = v2(0x21, 0x11, &[tcp4_block(), vec![0; 1024 - 12]].concat());
        #[rustfmt::skip]
        let table: Vec<(&str, Vec<u8>, Parsed)> = vec![
            ("nothing yet", vec![], NeedMore),
            // v1
            ("v1 TCP4", b"PROXY TCP4 203.0.113.7 192.0.2.10 56324 443\r\n".to_vec(),
                proxied(45, "203.0.113.7:56324", "192.0.2.10:443")),
            ("v1 TCP4, request after", b"PROXY TCP4 203.0.113.7 192.0.2.10 56324 443\r\nGET / HTTP/1.1\r\n".to_vec(),
                proxied(45, "203.0.113.7:56324", "192.0.2.10:443")),
            ("v1 TCP6", b"PROXY TCP6 2001:db8::7 2001:db8::10 56324 443\r\n".to_vec(),
                proxied(47, "[2001:db8::7]:56324", "[2001:db8::10]:443")),
            ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec(), Local { len: 15 }),
            ("v1 UNKNOWN with addresses", b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), Local { len: 35 }),
            ("v1 of 107 bytes", long_unknown_ok, Local { len: 107 }),
            ("v1 of 108 bytes", long_unknown_bad, Invalid("v1 header longer than 107 bytes")),
            ("v1 without CRLF by 107 bytes", too_long_v1, Invalid("v1 header longer than 107 bytes")),
            ("v1 cut before its last port", b"PROXY TCP4 203.0.113.7 192.0.2.10 56324 ".to_vec(), NeedMore),
            ("v1 cut before LF", b"PROXY TCP4 203.0.113.7 192.0.2.10 56324 443\r".to_vec(), NeedMore),
            ("v1 prefix", b"PROX".to_vec(), NeedMore),
            ("v1 LF without CR", b"PROXY TCP4 203.0.113.7 192.0.2.10 56324 443\n".to_vec(),
                Invalid("v1 header not ended by CRLF")),
            ("v1 lower case", b"PROXY tcp4 203.0.113.7 192.0.2.10 56324 443\r\n".to_vec(),
                Invalid("v1 header with an unknown protocol")),
            ("v1 IPv6 under TCP4", b"PROXY TCP4 2001:db8::7 192.0.2.10 56324 443\r\n".to_vec(),
                Invalid("v1 header with a malformed address or port")),
            ("v1 IPv4 under TCP6", b"PROXY TCP6 203.0.113.7 2001:db8::10 56324 443\r\n".to_vec(),
                Invalid("v1 header with a malformed address or port")),
            ("v1 bad octet", b"PROXY TCP4 203.0.113.999 192.0.2.10 56324 443\r\n".to_vec(),
                Invalid("v1 header with a malformed address or port")),
            ("v1 port past 65535", b"PROXY TCP4 203.0.113.7 192.0.2.10 65536 443\r\n".to_vec(),
                Invalid("v1 header with a malformed address or port")),
            ("v1 signed port", b"PROXY TCP4 203.0.113.7 192.0.2.10 +1 443\r\n".to_vec(),
                Invalid("v1 header with a malformed address or port")),
            ("v1 two spaces", b"PROXY TCP4  203.0.113.7 192.0.2.10 56324 443\r\n".to_vec(),
                Invalid("v1 header without exactly two addresses and two ports")),
            ("v1 missing port", b"PROXY TCP4 203.0.113.7 192.0.2.10 56324\r\n".to_vec(),
                Invalid("v1 header without exactly two addresses and two ports")),
            ("v1 trailing space", b"PROXY TCP4 203.0.113.7 192.0.2.10 56324 443 \r\n".to_vec(),
                Invalid("v1 header without exactly two addresses and two ports")),
            ("v1 not UTF-8", b"PROXY TCP4 \xff\r\n".to_vec(), Invalid("v1 header not ASCII")),
            ("PROXY without a space", b"PROXYTCP4".to_vec(), Invalid("not a PROXY protocol header")),
            // v2
            ("v2 TCP over IPv4", v2(0x21, 0x11, &tcp4_block()),
                proxied(28, "203.0.113.7:56324", "192.0.2.10:443")),
            ("v2 TCP over IPv6", v2(0x21, 0x21, &tcp6_block()),
                proxied(52, "[2001:db8::7]:56324", "[2001:db8::10]:443")),
            ("v2 with a TLV, request after", [v2(0x21, 0x11, &with_tlv), b"GET /".to_vec()].concat(),
                proxied(34, "203.0.113.7:56324", "192.0.2.10:443")),
            ("v2 LOCAL", v2(0x20, 0x00, &[]), Local { len: 16 }),
            ("v2 LOCAL with addresses", v2(0x20, 0x11, &tcp4_block()), Local { len: 28 }),
            ("v2 PROXY over AF_UNSPEC", v2(0x21, 0x00, &[]), Local { len: 16 }),
            ("v2 PROXY over UDP", v2(0x21, 0x12, &tcp4_block()), Local { len: 28 }),
            ("v2 PROXY over AF_UNIX", v2(0x21, 0x31, &[0; 216]), Local { len: 232 }),
            ("v2 at its cap", v2_biggest, proxied(V2_MAX, "203.0.113.7:56324", "192.0.2.10:443")),
            ("v2 past its cap", v2_huge, Invalid("v2 header longer than 1040 bytes")),
            ("v2 signature only", SIG.to_vec(), NeedMore),
            ("v2 cut in its addresses", v2(0x21, 0x11, &tcp4_block())[..20].to_vec(), NeedMore),
            ("v2 version 1", v2(0x11, 0x11, &tcp4_block()), Invalid("v2 header of another version")),
            ("v2 command 2", v2(0x22, 0x11, &tcp4_block()), Invalid("v2 header with an unknown command")),
            ("v2 family 4", v2(0x21, 0x41, &tcp4_block()), Invalid("v2 header with an unknown address family")),
            ("v2 transport 3", v2(0x21, 0x13, &tcp4_block()), Invalid("v2 header with an unknown transport")),
            ("v2 IPv6 in 12 bytes", v2(0x21, 0x21, &tcp4_block()), Invalid("v2 header shorter than its addresses")),
            ("v2 bad signature", b"\r\n\r\n\0\r\nQUIT!".to_vec(), Invalid("not a PROXY protocol header")),
            // neither
            ("a plain request", b"GET / HTTP/1.1\r\n".to_vec(), Invalid("not a PROXY protocol header")),
            ("a TLS ClientHello", vec![0x16, 0x03, 0x01, 0x02, 0x00], Invalid("not a PROXY protocol header")),
            ("a stray CRLF", b"\r\nGET".to_vec(), Invalid("not a PROXY protocol header")),
        ];
        for (what, bytes, want) in table {
            assert_eq!(parse(&bytes), want, "{what}");
        }
    }

    #[test]
    fn every_cut_of_a_valid_header_needs_more() {
        let headers = [
            b"PROXY TCP4 203.0.113.7 192.0.2.10 56324 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::10 56324 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(0x21, 0x11, &tcp4_block()),
            v2(0x21, 0x21, &tcp6_block()),
            v2(0x20, 0x00, &[]),
        ];
        for h in headers {
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]), Parsed::NeedMore, "{:?}", &h[..cut]);
            }
            assert!(!matches!(parse(&h), Parsed::NeedMore | Parsed::Invalid(_)));
        }
    }

    #[test]
    fn any_bytes_get_a_verdict_without_panicking() {
        // A cheap stand-in for fuzzing: every header above with each byte
        // replaced by a few values, and every length.
        let seeds = [
            b"PROXY TCP6 2001:db8::7 2001:db8::10 56324 443\r\n".to_vec(),
            v2(0x21, 0x21, &tcp6_block()),
            v2(0x21, 0x31, &[7; 216]),
        ];
        for seed in seeds {
            for i in 0..seed.len() {
                for b in [0u8, b' ', b'\r', b'\n', b':', b'9', 0x21, 0xff] {
                    let mut s = seed.clone();
                    s[i] = b;
                    for cut in [i, i + 1, s.len()] {
                        let verdict = parse(&s[..cut.min(s.len())]);
                        if let Parsed::Proxied { len, .. } | Parsed::Local { len } = verdict {
                            assert!(len <= cut.min(s.len()));
                        }
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn read_keeps_the_bytes_after_the_header() {
        let mut bytes: &[u8] =
            b"PROXY TCP4 203.0.113.7 192.0.2.10 56324 443\r\nGET / HTTP/1.1\r\n\r\n";
        let h = read(&mut bytes).await.unwrap();
        assert_eq!(h.client, Some(sa("203.0.113.7:56324")));
        assert_eq!(&h.rest[..], b"GET / HTTP/1.1\r\n\r\n");

        let mut local: &[u8] = &[v2(0x20, 0x00, &[]), vec![0x16, 0x03]].concat();
        let h = read(&mut local).await.unwrap();
        assert_eq!((h.client, &h.rest[..]), (None, &[0x16, 0x03][..]));

        let mut cut: &[u8] = b"PROXY TCP4 203.0.113.7";
        assert!(matches!(read(&mut cut).await, Err(Refused::Closed)));
        let mut garbage: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert!(matches!(
            read(&mut garbage).await,
            Err(Refused::Invalid("not a PROXY protocol header"))
        ));
    }
}
