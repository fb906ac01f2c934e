//! Every header edit tether makes, in both directions.
//!
//! Request: hop-by-hop headers go (RFC 9110 section 7.6.1, plus whatever the
//! client lists in `Connection`), X-Forwarded-* are set, any client-supplied
//! `Tether-Session-State` is replaced, tether's cookie is removed when asked.
//! Response: hop-by-hop headers go, `Tether-Session-Control` is taken out and
//! returned to the caller, tether's Set-Cookie is added beside the app's.

use std::io::Write as _;
use std::net::IpAddr;

use bytes::Bytes;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, SET_COOKIE, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{request, response, StatusCode, Uri, Version};

use crate::session::cookie::strip_cookie;
use crate::session::{Control, SessionState};

/// `Tether-Session-State`, sent to the backend.
pub static SESSION_STATE: HeaderName = HeaderName::from_static("tether-session-state");
/// `Tether-Session-Control`, read from (and removed from) the backend's response.
pub static SESSION_CONTROL: HeaderName = HeaderName::from_static("tether-session-control");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTPS: HeaderValue = HeaderValue::from_static("https");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

/// Is this an HTTP/1.1 `Upgrade` request (WebSocket and friends)?
pub fn is_upgrade_request(parts: &request::Parts) -> bool {
    upgrade_asked(parts.version, &parts.headers)
}

/// [`is_upgrade_request`] on a whole request.
pub fn wants_upgrade<B>(req: &http::Request<B>) -> bool {
    upgrade_asked(req.version(), req.headers())
}

fn upgrade_asked(version: Version, h: &HeaderMap) -> bool {
    version == Version::HTTP_11 && h.contains_key(UPGRADE) && connection_has(h, "upgrade")
}

fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(CONNECTION)
        .iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(token)))
}

/// The comma-separated tokens of a `Connection` value, trimmed; none when
/// the value is not visible ASCII.
fn tokens(v: &HeaderValue) -> impl Iterator<Item = &str> {
    v.to_str()
        .into_iter()
        .flat_map(|s| s.split(','))
        .map(str::trim_ascii)
}

/// Removes hop-by-hop headers. With `keep_upgrade`, `Upgrade` and
/// `Connection: upgrade` survive so the peer can switch protocols.
pub fn remove_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which hop-by-hop ones the message
    // carries, and only those are looked up to be removed: most messages
    // carry none, and this runs twice per request.
    let present = h.keys().fold(0u8, |m, n| m | hop_bit(n));
    if present & 1 != 0 {
        remove_connection(h, keep_upgrade);
    }
    for (i, name) in hop_by_hop().iter().enumerate().skip(1) {
        if present & (1 << i) != 0 && !(keep_upgrade && *name == UPGRADE) {
            h.remove(*name);
        }
    }
    if keep_upgrade {
        h.insert(CONNECTION, UPGRADE_TOKEN.clone());
    }
}

/// The hop-by-hop names, `Connection` first; bit `i` of [`hop_bit`] stands
/// for the name at `i`.
fn hop_by_hop() -> [&'static HeaderName; 7] {
    [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
    ]
}

/// `n`'s bit among [`hop_by_hop`], or 0 for an end-to-end name.
fn hop_bit(n: &HeaderName) -> u8 {
    hop_by_hop()
        .iter()
        .position(|h| *h == n)
        .map_or(0, |i| 1 << i)
}

/// Removes `Connection` and every name its values list. The names are
/// looked up as written, not made into header names first (which copies
/// each): most are options such as `close` that name no field.
fn remove_connection(h: &mut HeaderMap, keep_upgrade: bool) {
    // One value almost always: the rest are copied out only when there are
    // some. (Not through `entry`: that makes room for an insert first, and
    // a full map grows.)
    let mut values = h.get_all(CONNECTION).iter();
    let first = values.next().cloned();
    let rest: Vec<HeaderValue> = values.cloned().collect();
    h.remove(CONNECTION);
    for name in first.iter().chain(&rest).flat_map(tokens) {
        if !(keep_upgrade && name.eq_ignore_ascii_case("upgrade")) {
            h.remove(name);
        }
    }
}

/// Rewrites a client request head into what the backend receives (once per
/// request; the session state is set per attempt with [`set_session_state`]).
/// Returns whether the request is an upgrade.
pub fn to_upstream(
    parts: &mut request::Parts,
    client_ip: IpAddr,
    tls: bool,
    strip: Option<&str>,
) -> bool {
    let upgrade = is_upgrade_request(parts);
    let h = &mut parts.headers;
    remove_hop_by_hop(h, upgrade);

    // The forwarded host is what the client asked for: Host in HTTP/1,
    // :authority in HTTP/2. There :authority wins over any `host` fields
    // (RFC 9113 section 8.3.1), and nothing upstream of here counted them:
    // `insert` leaves the backend exactly one Host.
    let h2 = parts.version == Version::HTTP_2;
    let host = match h.get(HOST) {
        Some(host) if !h2 => Some(host.clone()),
        first => {
            let host = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .or_else(|| first.cloned());
            if let Some(v) = &host {
                h.insert(HOST, v.clone());
            }
            host
        }
    };
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST.clone(), host);
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        if tls { HTTPS.clone() } else { HTTP.clone() },
    );
    append_forwarded_for(h, client_ip);

    one_cookie_line(h, strip);

    // Backends speak HTTP/1.1 and want origin-form targets.
    parts.version = Version::HTTP_11;
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if let Ok(u) = Uri::try_from(pq) {
            parts.uri = u;
        }
    }
    upgrade
}

fn append_forwarded_for(h: &mut HeaderMap, ip: IpAddr) {
    // Formatted on the stack: an address is at most 45 bytes (IPv6 with an
    // IPv4 tail), and this runs on every request, so no String per request.
    let mut buf = [0u8; 48];
    let len = match ip.to_canonical() {
        // By hand for IPv4: `fmt` machinery cost more than the rest of this function.
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    buf[n] = b'0' + d;
                    n += 1;
                }
            }
            n
        }
        v6 => {
            let mut w = &mut buf[..];
            if write!(w, "{v6}").is_err() {
                return;
            }
            48 - w.len()
        }
    };
    let ip = &buf[..len];
    let value = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            let mut v = Vec::with_capacity(prev.len() + 2 + ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(ip);
            HeaderValue::from_maybe_shared(Bytes::from(v))
        }
        _ => HeaderValue::from_bytes(ip),
    };
    if let Ok(v) = value {
        // `insert` replaces every earlier field: several X-Forwarded-For
        // fields fold into one list.
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// Leaves the backend at most one Cookie field, without tether's cookie when
/// `strip` names it. HTTP/2 clients split cookies into crumbs, one field each,
/// which must be joined with "; " before an HTTP/1.1 hop (RFC 9113 section
/// 8.2.3): WSGI servers join repeated fields with a comma, so `a=1` and `b=2`
/// would reach the app as `a` = `1,b=2`.
fn one_cookie_line(h: &mut HeaderMap, strip: Option<&str>) {
    // The usual case, one Cookie field, costs one lookup and at most one edit.
    let mut fields = h.get_all(COOKIE).iter();
    let first = match (fields.next(), fields.next()) {
        (None, _) => return,
        (Some(v), None) => v,
        (Some(_), Some(_)) => return join_cookie_crumbs(h, strip),
    };
    if let Some(name) = strip {
        match strip_cookie(first, name) {
            // Unchanged: ours was not in it.
            Some(kept) if kept == first => {}
            Some(kept) => drop(h.insert(COOKIE, kept)),
            None => drop(h.remove(COOKIE)),
        }
    }
}

fn join_cookie_crumbs(h: &mut HeaderMap, strip: Option<&str>) {
    let mut joined = Vec::new();
    for v in h.get_all(COOKIE) {
        let kept = match strip {
            Some(name) => strip_cookie(v, name),
            None => Some(v.clone()),
        };
        let Some(kept) = kept else { continue };
        let crumb = trim_crumb(kept.as_bytes());
        if crumb.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb);
    }
    // Every byte came from a valid header value, so the join is one too; were
    // it not, dropping the field errs on the side of not forwarding tether's
    // credential.
    match HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        Ok(v) if !v.is_empty() => drop(h.insert(COOKIE, v)),
        _ => drop(h.remove(COOKIE)),
    }
}

/// A crumb without the separators and spaces around it.
fn trim_crumb(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b';', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b';'] = b {
        b = rest;
    }
    b
}

/// Sets `Tether-Session-State`, replacing anything the client sent.
#[inline]
pub fn set_session_state(h: &mut HeaderMap, state: SessionState) {
    h.insert(SESSION_STATE.clone(), state.header_value());
}

/// Rewrites a backend response head for the client; returns the backend's
/// `Tether-Session-Control`, which never reaches the client.
pub fn to_client(parts: &mut response::Parts) -> Option<Control> {
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    remove_hop_by_hop(&mut parts.headers, switching);
    // One lookup: `remove` drops every field and hands back the first, the one that counts.
    parts
        .headers
        .remove(&SESSION_CONTROL)
        .and_then(|v| Control::parse(&v))
}

/// Adds tether's Set-Cookie beside the app's own.
#[inline]
pub fn add_set_cookie(h: &mut HeaderMap, v: HeaderValue) {
    h.append(SET_COOKIE, v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(req: Request<()>) -> request::Parts {
        req.into_parts().0
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut p = parts(
            Request::get("/x")
                .header("connection", "keep-alive, x-secret")
                .header("keep-alive", "timeout=5")
                .header("x-secret", "1")
                .header("te", "trailers")
                .header("proxy-connection", "close")
                .header("upgrade", "h2c")
                .header("x-kept", "yes")
                .header("host", "example.com")
                .body(())
                .unwrap(),
        );
        to_upstream(&mut p, "10.0.0.1".parse().unwrap(), false, None);
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "proxy-connection",
            "upgrade",
        ] {
            assert!(!p.headers.contains_key(gone), "{gone} should be gone");
        }
        assert_eq!(p.headers["x-kept"], "yes");
    }

    /// What is left of a message's headers, for each mix of hop-by-hop
    /// ones, `Connection` lists and upgrade keeping.
    #[test]
    fn remove_hop_by_hop_keeps_only_end_to_end_fields() {
        type Case = (
            &'static [(&'static str, &'static str)],
            bool,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (&[("x-a", "1")], false, &["x-a: 1"]),
            (&[("x-a", "1")], true, &["connection: upgrade", "x-a: 1"]),
            (&[("connection", "close"), ("x-a", "1")], false, &["x-a: 1"]),
            (
                &[
                    ("connection", "Keep-Alive, X-Secret"),
                    ("keep-alive", "timeout=5"),
                    ("x-secret", "1"),
                    ("x-kept", "2"),
                ],
                false,
                &["x-kept: 2"],
            ),
            (
                &[
                    ("connection", "close"),
                    ("connection", " x-one ,x-two,, "),
                    ("x-one", "1"),
                    ("x-two", "2"),
                    ("x-kept", "3"),
                ],
                false,
                &["x-kept: 3"],
            ),
            (
                &[("connection", "x bad, x-ok"), ("x-ok", "1"), ("x-a", "2")],
                false,
                &["x-a: 2"],
            ),
            (
                &[
                    ("connection", "Upgrade"),
                    ("upgrade", "websocket"),
                    ("x-a", "1"),
                ],
                true,
                &["connection: upgrade", "upgrade: websocket", "x-a: 1"],
            ),
            (
                &[
                    ("connection", "upgrade"),
                    ("upgrade", "websocket"),
                    ("x-a", "1"),
                ],
                false,
                &["x-a: 1"],
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("trailer", "x-t"),
                    ("te", "trailers"),
                    ("proxy-connection", "close"),
                    ("x-a", "1"),
                ],
                false,
                &["x-a: 1"],
            ),
        ];
        for (i, (fields, keep_upgrade, want)) in cases.iter().enumerate() {
            let mut h = HeaderMap::new();
            for (n, v) in *fields {
                h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
            }
            remove_hop_by_hop(&mut h, *keep_upgrade);
            let mut got: Vec<String> = h
                .iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect();
            got.sort();
            assert_eq!(got, *want, "case {i}");
        }
    }

    #[test]
    fn forwarded_headers() {
        let mut p = parts(
            Request::get("/x")
                .header("host", "shop.example")
                .header("x-forwarded-for", "1.2.3.4")
                .body(())
                .unwrap(),
        );
        to_upstream(&mut p, "10.0.0.9".parse().unwrap(), true, None);
        assert_eq!(p.headers["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(p.headers["x-forwarded-proto"], "https");
        assert_eq!(p.headers["x-forwarded-host"], "shop.example");
    }

    #[test]
    fn forwarded_for_prints_every_address_form() {
        for (ip, want) in [
            ("0.9.10.99", "0.9.10.99"),
            ("100.200.255.1", "100.200.255.1"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            let mut p = parts(Request::get("/").header("host", "a").body(()).unwrap());
            to_upstream(&mut p, ip.parse().unwrap(), false, None);
            assert_eq!(p.headers["x-forwarded-for"], want, "{ip}");
        }
    }

    #[test]
    fn h2_authority_becomes_host_and_origin_form() {
        let mut p = parts(
            Request::get("https://shop.example:8443/a?b=1")
                .version(Version::HTTP_2)
                .body(())
                .unwrap(),
        );
        to_upstream(&mut p, "::1".parse().unwrap(), true, None);
        assert_eq!(p.headers[HOST], "shop.example:8443");
        assert_eq!(p.uri, "/a?b=1");
        assert_eq!(p.version, Version::HTTP_11);
    }

    #[test]
    fn upgrade_survives_for_websocket() {
        let mut p = parts(
            Request::get("/ws")
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .body(())
                .unwrap(),
        );
        assert!(to_upstream(
            &mut p,
            "10.0.0.1".parse().unwrap(),
            false,
            None
        ));
        assert_eq!(p.headers[UPGRADE], "websocket");
        assert_eq!(p.headers[CONNECTION], "upgrade");
    }

    #[test]
    fn own_cookie_is_stripped_others_kept() {
        let mut p = parts(
            Request::get("/")
                .header("cookie", "a=1; tether_sid=zzz; b=2")
                .header("cookie", "tether_sid=yyy")
                .body(())
                .unwrap(),
        );
        to_upstream(
            &mut p,
            "10.0.0.1".parse().unwrap(),
            false,
            Some("tether_sid"),
        );
        let all: Vec<_> = p.headers.get_all(COOKIE).iter().collect();
        assert_eq!(all, vec!["a=1; b=2"]);
        assert_eq!(
            p.headers.get_all(COOKIE).iter().count(),
            1,
            "crumbs are one line"
        );

        // Re-joining with "; " can make the stripped value exactly as long as
        // the original: it must still go.
        let mut p = parts(
            Request::get("/")
                .header("cookie", "a=1;b=2;c=3;d=4;e=5;s=x")
                .body(())
                .unwrap(),
        );
        to_upstream(&mut p, "10.0.0.1".parse().unwrap(), false, Some("s"));
        assert_eq!(p.headers[COOKIE], "a=1; b=2; c=3; d=4; e=5");

        let mut p = parts(Request::get("/").header("cookie", "a=1").body(()).unwrap());
        to_upstream(&mut p, "10.0.0.1".parse().unwrap(), false, Some("s"));
        assert_eq!(p.headers[COOKIE], "a=1");
    }

    #[test]
    fn cookie_crumbs_become_one_line() {
        // (fields as sent, tether's cookie name to strip, the one line upstream)
        let cases: &[(&[&str], Option<&str>, Option<&str>)] = &[
            (&["a=1", "b=2"], None, Some("a=1; b=2")),
            (&["a=1", "b=2"], Some("s"), Some("a=1; b=2")),
            (&["a=1", "s=x", "b=2"], Some("s"), Some("a=1; b=2")),
            (
                &["a=1; s=x", "b=2;", " c=3 "],
                Some("s"),
                Some("a=1; b=2; c=3"),
            ),
            (&["s=x", "s=y"], Some("s"), None),
            (&["", "a=1", ";"], None, Some("a=1")),
            (&["s=x", "b=2"], None, Some("s=x; b=2")),
        ];
        for (fields, strip, want) in cases {
            let mut b = Request::get("/").version(Version::HTTP_2);
            for f in *fields {
                b = b.header("cookie", *f);
            }
            let mut p = parts(b.body(()).unwrap());
            to_upstream(&mut p, "10.0.0.1".parse().unwrap(), true, *strip);
            let all: Vec<_> = p.headers.get_all(COOKIE).iter().collect();
            let want: Vec<_> = want.iter().collect();
            assert_eq!(all, want, "{fields:?} strip {strip:?}");
        }
    }

    #[test]
    fn h2_authority_is_the_one_host() {
        let mut p = parts(
            Request::get("https://shop.example/")
                .version(Version::HTTP_2)
                .header("host", "evil.example")
                .header("host", "other.example")
                .body(())
                .unwrap(),
        );
        to_upstream(&mut p, "::1".parse().unwrap(), true, None);
        let hosts: Vec<_> = p.headers.get_all(HOST).iter().collect();
        assert_eq!(hosts, vec!["shop.example"]);
        assert_eq!(p.headers["x-forwarded-host"], "shop.example");

        // Without :authority, the first `host` field, alone.
        let mut p = parts(
            Request::get("/")
                .version(Version::HTTP_2)
                .header("host", "a.example")
                .header("host", "b.example")
                .body(())
                .unwrap(),
        );
        to_upstream(&mut p, "::1".parse().unwrap(), true, None);
        let hosts: Vec<_> = p.headers.get_all(HOST).iter().collect();
        assert_eq!(hosts, vec!["a.example"]);
    }

    #[test]
    fn control_is_taken_out_of_the_response() {
        let (mut p, _) = http::Response::builder()
            .header("tether-session-control", "end")
            .header("connection", "close")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(to_client(&mut p), Some(Control::End));
        assert!(!p.headers.contains_key("tether-session-control"));
        assert!(!p.headers.contains_key("connection"));
    }
}
