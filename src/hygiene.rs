//! Every check that may refuse a request before it is routed, so none of
//! them costs a session, a store lookup or a backend connection: the framing
//! verdict from `framing.rs` (request smuggling), the head size, exactly one
//! valid `Host` on HTTP/1.1, and a well-formed target. What hyper's codec
//! already refuses (obsolete line folding, bare CR, ...) never reaches here.

use http::header::HOST;
use http::{Request, Uri, Version};

use crate::error::ProxyError;

/// Refuses a request whose head tether will not route (SPEC section 9,
/// "Request hygiene"): 400, or 431 for a head over `max_header_bytes`.
/// `ambiguous`: the framing tracker saw both Content-Length and
/// Transfer-Encoding on this request's head (see `framing.rs`).
///
/// # Errors
///
/// The first rule the request breaks, as the error its response is built from.
pub fn check<B>(
    req: &Request<B>,
    max_header_bytes: usize,
    ambiguous: bool,
) -> Result<(), ProxyError> {
    if ambiguous {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if head_size_of(req) > max_header_bytes {
        return Err(ProxyError::HeadTooLarge {
            limit: max_header_bytes,
        });
    }
    if req.version() == Version::HTTP_11 {
        let mut hosts = req.headers().get_all(HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(h), None) if valid_host(h.as_bytes()) => {}
            _ => {
                return Err(ProxyError::BadRequest(
                    "HTTP/1.1 needs exactly one valid Host",
                ))
            }
        }
    }
    if !valid_target(req.uri()) {
        return Err(ProxyError::BadRequest("malformed request target"));
    }
    Ok(())
}

/// Bytes allowed in a reg-name or IPv4 host (RFC 3986 unreserved, sub-delims
/// but `,`, and `%` for escapes), as a table: this runs on every request.
static HOST_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b';'
                    | b'='
                    | b'%'
            );
        b += 1;
    }
    t
};

/// Is `v` a valid `Host` (RFC 9110 section 7.2): `uri-host [":" port]`, no
/// userinfo, path, list or whitespace?
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        // IP-literal
        let Some(end) = rest.iter().position(|b| *b == b']') else {
            return false;
        };
        let (lit, after) = (&rest[..end], &rest[end + 1..]);
        if lit.is_empty()
            || !lit
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match after {
            [] => return true,
            [b':', port @ ..] => (&b"x"[..], port),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|b| *b == b':') {
            Some(i) => (&v[..i], &v[i + 1..]),
            None => (v, &b""[..]),
        }
    };
    let host_ok = !host.is_empty() && host.iter().all(|&b| HOST_BYTE[b as usize]);
    let port_ok = v.iter().all(|b| *b != b':') && port.is_empty()
        || (!port.is_empty()
            && port.len() <= 5
            && port.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .is_some());
    host_ok && port_ok
}

/// Is the request target well formed beyond what the parser checks: every
/// `%` starts a two-digit hex escape, and an absolute-form authority is a
/// valid host?
fn valid_target(uri: &Uri) -> bool {
    let escapes_ok = uri.path_and_query().map_or(true, |pq| {
        let b = pq.as_str().as_bytes();
        b.iter().enumerate().all(|(i, c)| {
            *c != b'%'
                || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        })
    });
    escapes_ok
        && uri
            .authority()
            .map_or(true, |a| valid_host(a.as_str().as_bytes()))
}

/// Size of a request head as the client sent it (start line + fields), for
/// `limits.max_header_bytes`.
fn head_size_of<B>(req: &http::Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 11;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values() {
        for ok in [
            "x",
            "example.com",
            "example.com:8443",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "a_b.local",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", "a, b", "a b", "a/b", "u@a", "x:8a", "x:", "x:99999", "[::1", "[::1]x", ":80",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn targets() {
        assert!(valid_target(&"/a%20b?c=%2F".parse().unwrap()));
        assert!(!valid_target(&"/%%%".parse().unwrap()));
        assert!(!valid_target(&"/a%2".parse().unwrap()));
    }
}
