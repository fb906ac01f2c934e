//! Which affinity key a request carries (SPEC `[session] source`), and how an
//! app's key becomes a fixed-size store key.
//!
//! An app's key (a JSESSIONID, a header value, a URL parameter) is attacker
//! chosen and unbounded in length, so it never enters the store or the ring as
//! is: it is digested under the secret into 128 bits for the store and 64 for
//! the ring. Instances that share the secret derive the same digests.

use aws_lc_rs::hmac;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, Uri};

use crate::keys;
use crate::session::cookie::find_cookie;
use crate::store::SessionKey;

/// Where the affinity key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// tether's own cookie of this name.
    Cookie(String),
    /// The app's cookie of this name.
    AppCookie(String),
    /// A request header (lowercase name).
    Header(http::HeaderName),
    /// A URL query parameter.
    Query(String),
}

/// The app's key as found in the request, if any. Empty values count as absent.
pub fn app_key<'a>(source: &KeySource, headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    let v = match source {
        KeySource::Cookie(_) => None,
        KeySource::AppCookie(name) => find_cookie(headers.get_all(COOKIE).iter(), name),
        KeySource::Header(name) => header_value(headers, name),
        KeySource::Query(name) => uri.query().and_then(|q| query_param(q, name)),
    }?;
    (!v.is_empty()).then_some(v)
}

/// The app key a backend's response teaches, if any: the value it sets for
/// the app cookie (not a deletion), or the value of the session header
/// (SPEC section 11: a server that names its own sessions, as MCP's
/// `Mcp-Session-Id`). Read exactly as a request's key is, so a taught value
/// and the same value sent back digest alike. tether's cookie and query
/// parameters are never taught by a response. Empty values count as absent.
pub fn learned_key<'a>(source: &KeySource, response: &'a HeaderMap) -> Option<&'a str> {
    let v = match source {
        KeySource::AppCookie(name) => app_cookie_set(response, name),
        KeySource::Header(name) => header_value(response, name),
        KeySource::Cookie(_) | KeySource::Query(_) => None,
    }?;
    (!v.is_empty()).then_some(v)
}

/// The first field `name` carries, trimmed; `None` for a value that is not
/// visible ASCII.
fn header_value<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The value of `name` in a query string (first occurrence, raw: ids are
/// compared byte for byte, so no percent-decoding is needed).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The value the backend set for the app cookie `name` in this response, if
/// it set one (non-empty and not a deletion): how a pin is learned.
pub fn app_cookie_set<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(SET_COOKIE).iter().find_map(|v| {
        let s = v.to_str().ok()?;
        let first = s.split(';').next()?;
        let (k, val) = first.split_once('=')?;
        if k.trim() != name {
            return None;
        }
        let val = val.trim().trim_matches('"');
        let deleting = s.split(';').skip(1).any(|attr| {
            let a = attr.trim();
            a.eq_ignore_ascii_case("max-age=0") || a.to_ascii_lowercase().starts_with("max-age=-")
        });
        (!val.is_empty() && !deleting).then_some(val)
    })
}

/// Digests app keys under the secret.
#[derive(Clone)]
pub struct AppKeyDigest {
    key: hmac::Key,
    /// Keys under `previous_secret_files`: pins stored before a rotation.
    previous: Vec<hmac::Key>,
}

impl std::fmt::Debug for AppKeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKeyDigest(..)")
    }
}

impl AppKeyDigest {
    /// Keyed by the session secret (domain-separated from cookie MACs);
    /// `previous`: the secrets still accepted for cookies.
    pub fn new(secret: &[u8], previous: &[Vec<u8>]) -> AppKeyDigest {
        AppKeyDigest {
            key: keys::derive(secret, keys::APP_KEY),
            previous: previous
                .iter()
                .map(|s| keys::derive(s, keys::APP_KEY))
                .collect(),
        }
    }

    /// (store key, ring key) for an app's session value.
    pub fn digest(&self, value: &str) -> (SessionKey, u64) {
        Self::digest_under(&self.key, value)
    }

    /// Whether previous secrets are configured (a rotation is under way).
    pub fn rotated(&self) -> bool {
        !self.previous.is_empty()
    }

    /// The store keys `value` had under the previous secrets, where a pin
    /// learned before a rotation is still stored.
    pub fn previous_keys<'a>(&'a self, value: &'a str) -> impl Iterator<Item = SessionKey> + 'a {
        self.previous
            .iter()
            .map(move |k| Self::digest_under(k, value).0)
    }

    fn digest_under(key: &hmac::Key, value: &str) -> (SessionKey, u64) {
        let tag = hmac::sign(key, value.as_bytes());
        let b = tag.as_ref();
        let mut k = [0u8; 16];
        k.copy_from_slice(&b[..16]);
        let mut r = [0u8; 8];
        r.copy_from_slice(&b[16..24]);
        (SessionKey(u128::from_le_bytes(k)), u64::from_le_bytes(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn query_param_finds_first_exact_name() {
        assert_eq!(query_param("a=1&sid=xyz&sid=2", "sid"), Some("xyz"));
        assert_eq!(query_param("sidx=1", "sid"), None);
        assert_eq!(query_param("sid", "sid"), Some(""));
    }

    #[test]
    fn app_keys_by_source() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=1; JSESSIONID=abc"));
        h.insert("x-session-id", HeaderValue::from_static(" h1 "));
        let uri: Uri = "/p?sid=q1".parse().unwrap();
        let ac = KeySource::AppCookie("JSESSIONID".into());
        assert_eq!(app_key(&ac, &h, &uri), Some("abc"));
        let hd = KeySource::Header(http::HeaderName::from_static("x-session-id"));
        assert_eq!(app_key(&hd, &h, &uri), Some("h1"));
        assert_eq!(
            app_key(&KeySource::Query("sid".into()), &h, &uri),
            Some("q1")
        );
    }

    #[test]
    fn learns_app_cookie_from_set_cookie_but_not_deletions() {
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("other=1"));
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("JSESSIONID=s42; Path=/; HttpOnly"),
        );
        assert_eq!(app_cookie_set(&h, "JSESSIONID"), Some("s42"));
        let mut d = HeaderMap::new();
        d.append(
            SET_COOKIE,
            HeaderValue::from_static("JSESSIONID=x; Max-Age=0"),
        );
        assert_eq!(app_cookie_set(&d, "JSESSIONID"), None);
    }

    /// A response head from `name: value` lines.
    fn head(fields: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in fields.lines() {
            let (k, v) = line.split_once(": ").unwrap();
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn what_a_response_teaches_by_source() {
        let header = KeySource::Header(http::HeaderName::from_static("mcp-session-id"));
        let app = KeySource::AppCookie("JSESSIONID".into());
        let own = KeySource::Cookie("tether_sid".into());
        let query = KeySource::Query("sid".into());
        let cases = [
            (&header, "mcp-session-id: a1b2", Some("a1b2")),
            (&header, "mcp-session-id:  a1 ", Some("a1")),
            (&header, "x-other: a1", None),
            (&header, "mcp-session-id: ", None),
            (&header, "mcp-session-id:    ", None),
            (&header, "mcp-session-id: caf\u{e9}", None),
            (
                &header,
                "mcp-session-id: one\nmcp-session-id: two",
                Some("one"),
            ),
            (&header, "set-cookie: mcp-session-id=x", None),
            (&app, "set-cookie: JSESSIONID=s42; Path=/", Some("s42")),
            (&app, "set-cookie: JSESSIONID=s42; Max-Age=0", None),
            (&app, "set-cookie: JSESSIONID=; Path=/", None),
            (&app, "jsessionid: s42", None),
            (&own, "set-cookie: tether_sid=x", None),
            (&query, "sid: x\nset-cookie: sid=x", None),
        ];
        for (source, fields, want) in cases {
            assert_eq!(
                learned_key(source, &head(fields)),
                want,
                "{source:?} from {fields:?}"
            );
        }
    }

    #[test]
    fn digests_are_keyed_and_stable() {
        let a = AppKeyDigest::new(b"0123456789abcdef", &[]);
        let b = AppKeyDigest::new(b"fedcba9876543210", &[]);
        assert_eq!(a.digest("x"), a.digest("x"));
        assert_ne!(a.digest("x"), a.digest("y"));
        assert_ne!(a.digest("x"), b.digest("x"));
    }

    /// Store keys in a shared Redis must not change across versions: a
    /// different digest would lose every app-key pin at an upgrade.
    #[test]
    fn the_app_key_digest_is_frozen() {
        let (key, ring) = AppKeyDigest::new(b"0123456789abcdef", &[]).digest("JSESSIONID-value");
        assert_eq!(
            (key.0, ring),
            (
                204_571_687_232_974_044_085_649_208_844_658_418_479,
                559_480_391_374_546_982
            )
        );
    }
}
