//! Seals a session's claims (id, pinned backend, times, client binding) into tether's cookie
//! value and opens them again, and writes and reads the `Set-Cookie` / `Cookie` headers that
//! carry it. Judging the claims (timeouts, binding, backend eligibility) is left to `session/`.
//!
//! # Wire format, version 1
//!
//! All integers little-endian; the whole thing is base64url without padding (87 characters).
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 1 | version, `1` |
//! | 1 | 16 | session id |
//! | 17 | 8 | [`backend_tag`] of the pinned backend |
//! | 25 | 8 | `issued_ms` |
//! | 33 | 8 | `seen_ms` |
//! | 41 | 8 | `binding` |
//! | 49 | 16 | HMAC-SHA256 over bytes 0..49, truncated to 128 bits |
//!
//! The cookie carries everything an instance needs to route and judge the session without a
//! store (SPEC §3, §7), and nothing that reveals an address: the backend travels as a hash of its
//! name. It is signed, not encrypted: the id, times and tag are readable by the client, which
//! already holds the id.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::hmac;

use crate::keys;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderValue;
use rand::rngs::OsRng;
use rand::TryRngCore as _;

/// Version byte at the front of every cookie this module writes.
const VERSION: u8 = 1;
/// Bytes covered by the MAC: version, id, backend, issued, seen, binding.
const PAYLOAD_LEN: usize = 1 + 16 + 8 + 8 + 8 + 8;
/// HMAC-SHA256 truncated to 128 bits: RFC 2104 §5 advises keeping at least half the output,
/// and 2^-128 forgery odds per try are far beyond what an online attacker can spend.
const TAG_LEN: usize = 16;
const RAW_LEN: usize = PAYLOAD_LEN + TAG_LEN;
/// base64 without padding: 4 characters per 3 bytes, plus 3 for the final 2 bytes.
pub const ENCODED_LEN: usize = RAW_LEN / 3 * 4 + [0, 2, 3][RAW_LEN % 3];

/// 128-bit session id from the OS CSPRNG.
///
/// It is a bearer credential (SPEC §9): whoever holds it is the user. `Debug` therefore prints
/// `SessionId(<redacted>)`, never the value, so ids cannot leak through logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh id from the operating system's CSPRNG (SPEC §3: at least 128 bits).
    ///
    /// # Panics
    ///
    /// If the OS random source fails. Minting a guessable id instead would hand out other
    /// users' sessions, so there is no fallback.
    pub fn random() -> SessionId {
        let mut bytes = [0u8; 16];
        if let Err(e) = OsRng.try_fill_bytes(&mut bytes) {
            panic!("the OS CSPRNG failed ({e}); refusing to mint a guessable session id");
        }
        SessionId(bytes)
    }

    /// The id as one number (little-endian), e.g. to derive a ring key or a shard.
    pub fn as_u128(&self) -> u128 {
        u128::from_le_bytes(self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

/// What the cookie carries: everything any instance sharing the secret needs to route and judge
/// the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// The session id.
    pub id: SessionId,
    /// [`backend_tag`] of the pinned backend's name. Names, never addresses or list positions:
    /// the cookie must not reveal an address, and positions shift when the list is edited.
    pub backend: u64,
    /// Unix milliseconds when the session began (judges the absolute timeout).
    pub issued_ms: u64,
    /// Unix milliseconds of the last refresh of this cookie (judges the idle timeout when no
    /// store knows the session, so its granularity is how often the cookie is re-issued).
    pub seen_ms: u64,
    /// Client-traits digest (`bind_to`), `0` = unbound.
    pub binding: u64,
}

/// The tag a backend is known by inside cookies: FNV-1a 64 of its name's UTF-8 bytes.
///
/// Every tether instance, today's and next year's, must map a name to the same tag, or a cookie
/// minted by one instance (or before a restart or an upgrade) would lose its backend on another.
/// So the algorithm and its constants are written out here rather than taken from std's
/// `DefaultHasher`, which is randomly keyed per process and whose algorithm may change between
/// Rust releases. No key is needed: the MAC, not the tag, stops forgery. 64 bits keep accidental
/// collisions between a pool's names negligible (about n²/2^65), though the config check should
/// still refuse two names with one tag.
pub fn backend_tag(name: &str) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    name.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// Seals [`Claims`] into a cookie value and opens them again.
///
/// Signs under the current secret; verifies under the current one and then each previous one,
/// so secrets rotate without logging anyone out (SPEC §2 `previous_secret_files`). HMAC keys
/// are prepared once here, not per request.
pub struct CookieCodec {
    current: hmac::Key,
    previous: Vec<hmac::Key>,
    keys: Keys,
}

/// Which [`CookieCodec`] this is: distinct for every codec a process builds, whatever its
/// secrets, so "verified under these keys" can be remembered and later told apart from
/// "verified under the keys a reload replaced". An address would not do: a reload frees the
/// old codec, and the next one may be built where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys(u64);

/// The next [`Keys`]; 2^64 codecs outlast any process.
static NEXT_KEYS: AtomicU64 = AtomicU64::new(0);

impl CookieCodec {
    /// A codec that signs with `current` and also accepts cookies signed with any of `previous`.
    ///
    /// Secrets are taken as given: the config check decides what is long enough.
    pub fn new(current: &[u8], previous: &[Vec<u8>]) -> Self {
        CookieCodec {
            current: derive_key(current),
            previous: previous.iter().map(|s| derive_key(s)).collect(),
            keys: Keys(NEXT_KEYS.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// This codec's identity (see [`Keys`]): two codecs never share one, even when built from
    /// the same secrets.
    pub fn keys(&self) -> Keys {
        self.keys
    }

    /// The cookie value for `c`, signed under the current secret.
    pub fn encode(&self, c: &Claims) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..17].copy_from_slice(&c.id.0);
        raw[17..25].copy_from_slice(&c.backend.to_le_bytes());
        raw[25..33].copy_from_slice(&c.issued_ms.to_le_bytes());
        raw[33..41].copy_from_slice(&c.seen_ms.to_le_bytes());
        raw[41..49].copy_from_slice(&c.binding.to_le_bytes());
        let tag = hmac::sign(&self.current, &raw[..PAYLOAD_LEN]);
        raw[PAYLOAD_LEN..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The claims in `value`, or `None` if tether (under the current or a previous secret) did
    /// not issue it: bad base64, wrong length, unknown version, or a MAC that matches no key.
    /// The caller cannot tell these apart, and does not need to: all of them mean `new`.
    pub fn decode(&self, value: &str) -> Option<Claims> {
        if value.len() != ENCODED_LEN {
            return None;
        }
        // decode_slice wants room for its estimate (a multiple of 3), not only the exact length.
        let mut buf = [0u8; RAW_LEN + 3];
        // The engine rejects non-zero trailing bits in the last character, so each cookie has
        // exactly one spelling and no character can change without the bytes changing.
        let n = URL_SAFE_NO_PAD.decode_slice(value, &mut buf).ok()?;
        if n != RAW_LEN {
            return None;
        }
        let (payload, tag) = buf[..RAW_LEN].split_at(PAYLOAD_LEN);
        if payload[0] != VERSION {
            return None;
        }
        let genuine = std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|key| keys::ct_eq(&hmac::sign(key, payload).as_ref()[..TAG_LEN], tag));
        if !genuine {
            return None;
        }
        Some(Claims {
            id: SessionId(payload[1..17].try_into().ok()?),
            backend: u64::from_le_bytes(payload[17..25].try_into().ok()?),
            issued_ms: u64::from_le_bytes(payload[25..33].try_into().ok()?),
            seen_ms: u64::from_le_bytes(payload[33..41].try_into().ok()?),
            binding: u64::from_le_bytes(payload[41..49].try_into().ok()?),
        })
    }
}

impl fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieCodec")
            .field("previous_keys", &self.previous.len())
            .finish_non_exhaustive()
    }
}

/// The MAC key for cookies, under its own label so no other use of the secret can make a
/// value this codec accepts.
fn derive_key(secret: &[u8]) -> hmac::Key {
    keys::derive(secret, keys::COOKIE)
}

/// The cookie's `SameSite` attribute (SPEC §2 `same_site`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Lax`: sent on top-level navigations from other sites.
    Lax,
    /// `SameSite=Strict`: never sent on cross-site requests.
    Strict,
    /// `SameSite=None`: sent everywhere. Browsers drop such a cookie unless it is also `Secure`;
    /// the config check should refuse `none` without Secure.
    None,
}

/// How tether's cookie is named and scoped (SPEC §2 `[session]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttrs {
    /// Cookie name, e.g. `tether_sid` or `__Host-tether`.
    pub name: String,
    /// `Path` attribute.
    pub path: String,
    /// `Domain` attribute; `None` = host-only cookie.
    pub domain: Option<String>,
    /// `SameSite` attribute.
    pub same_site: SameSite,
    /// Whether to add `Secure` (already resolved from `secure = "auto"` for the listener).
    pub secure: bool,
    /// Whether to add `HttpOnly`.
    pub http_only: bool,
    /// Whether to add CHIPS `Partitioned` (the cookie crate then always writes `Secure` too).
    pub partitioned: bool,
}

impl CookieAttrs {
    /// Checks that the attributes can be written into a `Set-Cookie` header as they are: the
    /// name is an RFC 9110 token, and path and domain are visible ASCII without `;` (RFC 6265
    /// §4.1.1 `av-octet`). The cookie crate writes them verbatim, so a `;` in a path would
    /// smuggle in attributes of its own. Call this when the config is checked.
    ///
    /// # Errors
    ///
    /// Names the first offending attribute. Prefix rules (`__Host-`, `__Secure-`) depend on the
    /// listeners and are the config check's job.
    pub fn check(&self) -> Result<(), InvalidCookieAttr> {
        if self.name.is_empty() || !self.name.bytes().all(is_tchar) {
            return Err(InvalidCookieAttr {
                attribute: "name",
                expected: "a token: letters, digits and !#$%&'*+-.^_`|~",
            });
        }
        if self.path.is_empty() || !self.path.bytes().all(is_av_octet) {
            return Err(InvalidCookieAttr {
                attribute: "path",
                expected: "visible ASCII without ';'",
            });
        }
        if let Some(domain) = &self.domain {
            if domain.is_empty() || !domain.bytes().all(is_av_octet) {
                return Err(InvalidCookieAttr {
                    attribute: "domain",
                    expected: "visible ASCII without ';' (IDNs in punycode)",
                });
            }
        }
        Ok(())
    }

    /// `Set-Cookie` for a session cookie holding `value`: no `Max-Age` or `Expires`, so the
    /// browser forgets it when it closes; tether's own timeouts end the session otherwise.
    ///
    /// # Panics
    ///
    /// If the attributes fail [`CookieAttrs::check`] or `value` is not a cookie value such as
    /// [`CookieCodec::encode`] returns: both are checked or produced before a request arrives.
    pub fn set_cookie(&self, value: &str) -> HeaderValue {
        let cookie = self.build(value).build();
        header_value(&cookie.to_string())
    }

    /// `Set-Cookie` that removes the cookie (SPEC §3 `end`): empty value, `Max-Age=0`, and the
    /// same name, path, domain and `Partitioned`, since browsers only replace a cookie with
    /// matching scope, and a partitioned cookie lives in a jar of its own.
    ///
    /// # Panics
    ///
    /// If the attributes fail [`CookieAttrs::check`].
    pub fn clear_cookie(&self) -> HeaderValue {
        let cookie = self.build("").max_age(cookie::time::Duration::ZERO).build();
        header_value(&cookie.to_string())
    }

    fn build<'c>(&'c self, value: &'c str) -> cookie::CookieBuilder<'c> {
        let same_site = match self.same_site {
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::None => cookie::SameSite::None,
        };
        // `secure` is always set explicitly: left unset, the cookie crate would add `Secure`
        // to `SameSite=None` on its own, and tether writes what the config says.
        let builder = cookie::Cookie::build((self.name.as_str(), value))
            .path(self.path.as_str())
            .same_site(same_site)
            .secure(self.secure)
            .http_only(self.http_only)
            .partitioned(self.partitioned);
        match &self.domain {
            Some(domain) => builder.domain(domain.as_str()),
            None => builder,
        }
    }
}

fn header_value(line: &str) -> HeaderValue {
    match HeaderValue::from_str(line) {
        Ok(value) => value,
        Err(_) => panic!(
            "Set-Cookie line has bytes a header cannot carry; \
             CookieAttrs::check must run on the config and values must come from CookieCodec"
        ),
    }
}

/// Why [`CookieAttrs::check`] refused the attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCookieAttr {
    /// `name`, `path` or `domain`.
    pub attribute: &'static str,
    /// What the attribute may contain.
    pub expected: &'static str,
}

impl fmt::Display for InvalidCookieAttr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid cookie {}: expected {}",
            self.attribute, self.expected
        )
    }
}

impl std::error::Error for InvalidCookieAttr {}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 6265 §4.1.1 `av-octet` minus the space, which no path or domain needs.
fn is_av_octet(b: u8) -> bool {
    b.is_ascii_graphic() && b != b';'
}

/// Finds the value of cookie `name` in the request's Cookie header values (there may be several
/// headers, h2 splits them); first match wins.
///
/// Pairs are split on `;` and trimmed of spaces and tabs around the name and the value, as
/// browsers send them (RFC 6265 §4.2.1, §5.4). The value is returned raw, quotes included. A
/// first match whose value is not UTF-8 yields `None`: it cannot be a tether cookie.
pub fn find_cookie<'a>(
    cookie_headers: impl Iterator<Item = &'a HeaderValue>,
    name: &str,
) -> Option<&'a str> {
    cookie_headers
        .flat_map(|header| pairs(header.as_bytes()))
        .find_map(|pair| match split_pair(pair) {
            (n, Some(value)) if n == name.as_bytes() => Some(value),
            _ => None,
        })
        .and_then(|value| std::str::from_utf8(value).ok())
}

/// Returns the Cookie header value with cookie `name` removed (all occurrences), or `None` if
/// nothing is left.
///
/// The header comes back unchanged when it holds no such cookie. Otherwise the remaining pairs
/// keep their order and text and are joined with `"; "`, the separator of RFC 6265 §4.2.1.
pub fn strip_cookie(value: &HeaderValue, name: &str) -> Option<HeaderValue> {
    let is_ours = |pair: &[u8]| split_pair(pair).0 == name.as_bytes();
    if !pairs(value.as_bytes()).any(is_ours) {
        return Some(value.clone());
    }
    let mut out = Vec::with_capacity(value.len());
    for pair in pairs(value.as_bytes()).filter(|p| !is_ours(p)) {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    if out.is_empty() {
        return None;
    }
    // Every byte came from a valid header value, so this cannot fail. Were it to, dropping the
    // header errs on the side of not forwarding the credential upstream.
    HeaderValue::from_bytes(&out).ok()
}

/// The non-empty `;`-separated pairs of a Cookie header, trimmed.
fn pairs(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    // memchr rather than a byte-at-a-time split: every request's Cookie
    // header is walked here twice (find, then strip).
    let mut rest = Some(header);
    std::iter::from_fn(move || loop {
        let s = rest?;
        let (pair, tail) = match memchr::memchr(b';', s) {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        rest = tail;
        let pair = trim_ows(pair);
        if !pair.is_empty() {
            return Some(pair);
        }
    })
}

/// `(name, value)` of a trimmed pair; a pair without `=` has no value and matches no name.
fn split_pair(pair: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr(b'=', pair) {
        Some(eq) => (trim_ows(&pair[..eq]), Some(trim_ows(&pair[eq + 1..]))),
        None => (pair, None),
    }
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod golden {
    use super::*;

    /// A cookie issued by any earlier tether under the same secret must
    /// still verify, and one issued now must read the same: the encoding
    /// and the key derivation are frozen.
    #[test]
    fn the_cookie_format_and_key_are_frozen() {
        let codec = CookieCodec::new(b"0123456789abcdef0123456789abcdef", &[]);
        let c = Claims {
            id: SessionId([7; 16]),
            backend: 0x1122_3344_5566_7788,
            issued_ms: 1_700_000_000_000,
            seen_ms: 1_700_000_001_000,
            binding: 42,
        };
        let v = codec.encode(&c);
        assert_eq!(
            v,
            "AQcHBwcHBwcHBwcHBwcHBweId2ZVRDMiEQBo5c-LAQAA6Gvlz4sBAAAqAAAAAAAAACLgGytXdZvvFNK6jiAzvHw"
        );
        assert_eq!(codec.decode(&v), Some(c));
    }
}
