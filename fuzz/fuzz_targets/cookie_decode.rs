//! The cookie codec and the Cookie-header helpers on hostile input.
//!
//! - `CookieCodec::decode` on arbitrary text never panics, and anything it accepts re-encodes
//!   to the very same text (one spelling per cookie) and the same claims.
//! - A genuine cookie built from fuzzed claims round-trips, and every single-character edit
//!   of it (position and replacement chosen by the input) is either refused or, when the edit
//!   happens to leave the bytes unchanged, decodes to the same claims.
//! - `find_cookie` / `strip_cookie` on arbitrary header bytes never panic; after stripping,
//!   the cookie is gone, and a header that carried it never comes back unchanged.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use tether::session::cookie::{find_cookie, strip_cookie, Claims, CookieCodec, SessionId};

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef";
const PREVIOUS: &[u8] = b"fuzz-previous-secret-0123456789";

fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in b.iter_mut().enumerate() {
        *x = d.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fn check_accepted(codec: &CookieCodec, text: &str) {
    if let Some(claims) = codec.decode(text) {
        let again = codec.encode(&claims);
        assert_eq!(again, text, "an accepted cookie has exactly one spelling");
        assert_eq!(codec.decode(&again), Some(claims));
    }
}

fuzz_target!(|data: &[u8]| {
    let codec = CookieCodec::new(SECRET, &[PREVIOUS.to_vec()]);
    let old = CookieCodec::new(PREVIOUS, &[]);

    // 1. Arbitrary text into the decoder.
    let text = String::from_utf8_lossy(data);
    check_accepted(&codec, &text);

    // 2. Genuine cookies (current and previous secret) from fuzzed claims, then one edit.
    let mut id = [0u8; 16];
    for (i, x) in id.iter_mut().enumerate() {
        *x = data.get(i).copied().unwrap_or(0);
    }
    let claims = Claims {
        id: SessionId(id),
        backend: u64_at(data, 16),
        issued_ms: u64_at(data, 24),
        seen_ms: u64_at(data, 32),
        binding: u64_at(data, 40),
    };
    for signer in [&codec, &old] {
        let genuine = signer.encode(&claims);
        assert_eq!(codec.decode(&genuine), Some(claims), "round trip");
        let at = u64_at(data, 48) as usize % genuine.len();
        let with = char::from(data.get(56).copied().unwrap_or(b'A'));
        let mut edited: String = genuine.clone();
        edited.replace_range(at..at + 1, with.encode_utf8(&mut [0; 4]));
        match codec.decode(&edited) {
            None => {}
            Some(c) => {
                assert_eq!(edited, genuine, "an edited cookie was accepted");
                assert_eq!(c, claims);
            }
        }
        // Truncated and extended copies are never accepted.
        assert_eq!(codec.decode(&genuine[..at]), None);
        assert_eq!(codec.decode(&format!("{genuine}{with}")), None);
    }
    // A codec that no longer knows the previous secret refuses what it signed.
    assert_eq!(
        CookieCodec::new(SECRET, &[]).decode(&old.encode(&claims)),
        None
    );

    // 3. Cookie headers: the name is the input up to the first NUL (or a fixed one).
    let (name, header) = match data.iter().position(|&b| b == 0) {
        Some(n) => (
            String::from_utf8_lossy(&data[..n]).into_owned(),
            &data[n + 1..],
        ),
        None => ("tether_sid".to_string(), data),
    };
    if let Ok(value) = HeaderValue::from_bytes(header) {
        let found = find_cookie(std::iter::once(&value), &name);
        if let Some(v) = found {
            check_accepted(&codec, v);
        }
        match strip_cookie(&value, &name) {
            None => {}
            Some(stripped) => {
                assert_eq!(
                    find_cookie(std::iter::once(&stripped), &name),
                    None,
                    "stripping leaves no {name:?} behind"
                );
                // A header that carried the cookie cannot come back unchanged.
                if stripped == value {
                    assert_eq!(found, None, "strip_cookie left {name:?} in place");
                }
            }
        }
    }
});
