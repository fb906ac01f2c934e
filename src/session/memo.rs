//! Remembers, for one client connection, the last tether cookie that verified and the claims
//! it opened to. A browser sends the same cookie on every request of a kept-alive connection;
//! with this memory it pays for the MAC once per connection, not once per request. Verifying is
//! `cookie.rs`'s job and the answer is the same: a remembered value stands for a verification
//! only byte for byte and under the very codec that verified it (see [`stands_for`]). Which
//! connection owns a memo, and when it forgets, is the listener's business.
//!
//! Per connection only, never shared: a memory keyed by cookie value across connections would
//! grow with the clients and help only a client that never changes its cookie.

use std::sync::Mutex;

use crate::keys;
use crate::session::cookie::{Claims, CookieCodec, Keys, ENCODED_LEN};

/// One connection's last verified cookie. Empty until a cookie verifies; [`CookieMemo::forget`]
/// empties it again, e.g. when the connection parks, so an idle connection keeps a pointer and
/// a lock word, not the cookie.
///
/// HTTP/2 runs a connection's requests at once, so the memory sits behind a lock; a request
/// that finds it taken verifies as if nothing were remembered rather than wait.
#[derive(Debug, Default)]
pub struct CookieMemo(Mutex<Option<Box<Verified>>>);

/// A cookie value that verified, under which codec, and what it said.
#[derive(Debug)]
struct Verified {
    keys: Keys,
    value: [u8; ENCODED_LEN],
    claims: Claims,
}

/// The rule: may a verification remembered as (`keys`, `value`) stand for verifying
/// `presented` under the codec `now`?
///
/// Only for the same bytes under the same codec. Another codec, even one built from the same
/// secrets, verifies afresh: a reload that drops a secret must never see a cookie accepted on
/// the strength of the keys it replaced. The bytes are compared in constant time: on a
/// connection a front proxy shares among users, one user's remembered cookie must not be
/// guessable from how fast another's differs from it.
pub fn stands_for(remembered: (Keys, &[u8]), presented: (Keys, &[u8])) -> bool {
    remembered.0 == presented.0 && keys::ct_eq(remembered.1, presented.1)
}

impl CookieMemo {
    /// What `codec.decode(value)` returns: the remembered claims when [`stands_for`] allows it,
    /// otherwise the codec's verdict, and a value that verifies is remembered in place of the
    /// last one. A value that does not verify leaves the memory as it was.
    pub fn decode(&self, codec: &CookieCodec, value: &str) -> Option<Claims> {
        if let Some(claims) = self.recall(codec.keys(), value) {
            return Some(claims);
        }
        let claims = codec.decode(value)?;
        self.remember(codec.keys(), value, claims);
        Some(claims)
    }

    /// The remembered claims if they stand for `value` under `keys`.
    fn recall(&self, keys: Keys, value: &str) -> Option<Claims> {
        let held = self.0.try_lock().ok()?;
        let v = held.as_deref()?;
        stands_for((v.keys, &v.value), (keys, value.as_bytes())).then_some(v.claims)
    }

    /// Remembers that `value` verified under `keys` to `claims` (unless another request of the
    /// connection holds the memory just now: then it is left to them).
    fn remember(&self, keys: Keys, value: &str, claims: Claims) {
        let Ok(value) = <[u8; ENCODED_LEN]>::try_from(value.as_bytes()) else {
            return;
        };
        let Ok(mut held) = self.0.try_lock() else {
            return;
        };
        let fresh = Verified {
            keys,
            value,
            claims,
        };
        match held.as_deref_mut() {
            Some(v) => *v = fresh,
            None => *held = Some(Box::new(fresh)),
        }
    }

    /// Lets go of what is remembered (and its memory).
    pub fn forget(&self) {
        let gone = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::cookie::SessionId;

    fn claims(n: u8) -> Claims {
        Claims {
            id: SessionId([n; 16]),
            backend: 7,
            issued_ms: 1_700_000_000_000,
            seen_ms: 1_700_000_000_500,
            binding: 0,
        }
    }

    /// A verification as the rule sees it: under which codec, which bytes.
    type Seen<'a> = (Keys, &'a [u8]);

    #[test]
    fn a_remembered_verification_stands_only_for_the_same_bytes_under_the_same_codec() {
        let (a, b) = (
            CookieCodec::new(b"secret A", &[]),
            CookieCodec::new(b"secret A", &[]),
        );
        let good = a.encode(&claims(1));
        let mut one_off = good.clone().into_bytes();
        one_off[ENCODED_LEN - 1] ^= 1;
        let other = a.encode(&claims(2));
        let longer = format!("{good}A");
        let (ka, kb) = (a.keys(), b.keys());
        let g = good.as_bytes();
        #[rustfmt::skip]
        let table: [(&str, Seen, Seen, bool); 7] = [
            ("same bytes, same codec",                 (ka, g), (ka, g), true),
            ("same bytes, a codec built after reload", (ka, g), (kb, g), false),
            ("one byte differs",                       (ka, g), (ka, &one_off), false),
            ("another genuine cookie",                 (ka, g), (ka, other.as_bytes()), false),
            ("a prefix of it",                         (ka, g), (ka, &g[..ENCODED_LEN - 1]), false),
            ("longer by a byte",                       (ka, g), (ka, longer.as_bytes()), false),
            ("nothing",                                (ka, g), (ka, b""), false),
        ];
        for (what, remembered, presented, want) in table {
            assert_eq!(stands_for(remembered, presented), want, "{what}");
        }
    }

    #[test]
    fn every_codec_has_keys_of_its_own() {
        let a = CookieCodec::new(b"secret A", &[]);
        let b = CookieCodec::new(b"secret A", &[]);
        assert_ne!(a.keys(), b.keys());
        assert_eq!(a.keys(), a.keys());
    }

    /// The memory is consulted before the MAC: once a value verified, its remembered claims
    /// come back for it (seen here by planting claims the cookie does not hold), and only for
    /// it, and only under its codec.
    #[test]
    fn a_verified_cookie_is_answered_from_memory_until_the_codec_changes() {
        let codec = CookieCodec::new(b"secret A", &[]);
        let memo = CookieMemo::default();
        let good = codec.encode(&claims(1));
        assert_eq!(memo.decode(&codec, &good), Some(claims(1)));
        assert_eq!(memo.recall(codec.keys(), &good), Some(claims(1)));

        memo.remember(codec.keys(), &good, claims(9));
        assert_eq!(memo.decode(&codec, &good), Some(claims(9)), "from memory");

        let mut forged = good.clone().into_bytes();
        forged[10] = if forged[10] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(memo.decode(&codec, &forged), None, "verified afresh");
        assert_eq!(
            memo.decode(&codec, &good),
            Some(claims(9)),
            "a value that fails leaves the memory as it was"
        );

        let reloaded = CookieCodec::new(b"secret A", &[]);
        assert_eq!(memo.decode(&reloaded, &good), Some(claims(1)), "afresh");
        let rotated = CookieCodec::new(b"secret B", &[]);
        assert_eq!(memo.decode(&rotated, &good), None, "the new keys reject it");
        assert_eq!(memo.decode(&reloaded, &good), Some(claims(1)));

        let other = codec.encode(&claims(2));
        assert_eq!(memo.decode(&codec, &other), Some(claims(2)));
        assert_eq!(memo.recall(codec.keys(), &good), None, "only the last one");
    }

    #[test]
    fn forgetting_lets_go_and_a_busy_memory_is_passed_by() {
        let codec = CookieCodec::new(b"secret A", &[]);
        let memo = CookieMemo::default();
        let good = codec.encode(&claims(1));
        memo.decode(&codec, &good);
        memo.forget();
        assert!(memo.0.lock().unwrap().is_none());
        assert_eq!(memo.recall(codec.keys(), &good), None);

        memo.decode(&codec, &good);
        memo.remember(codec.keys(), &good, claims(9));
        let held = memo.0.lock().unwrap();
        // Another request of the connection holds it: verify, do not wait.
        assert_eq!(memo.decode(&codec, &good), Some(claims(1)));
        drop(held);
        assert_eq!(memo.recall(codec.keys(), &good), Some(claims(9)));
    }
}
