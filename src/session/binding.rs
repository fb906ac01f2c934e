//! Client binding (`[session] bind_to`): a keyed digest of the client's
//! traits that rides inside the MAC'd cookie, so any instance can check that
//! the cookie comes back from the client it was minted for.

use std::net::IpAddr;

use aws_lc_rs::hmac;

use crate::config::BindTo;
use crate::keys;

/// Computes binding digests under the secret.
#[derive(Clone)]
pub struct Binder {
    key: hmac::Key,
    /// Keys under `previous_secret_files`: cookies bound before a rotation.
    previous: Vec<hmac::Key>,
    ip: bool,
    prefix: bool,
    user_agent: bool,
}

impl std::fmt::Debug for Binder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binder")
            .field("ip", &self.ip)
            .field("prefix", &self.prefix)
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// The network a client address belongs to for `ip_prefix`: the /24 of an
/// IPv4 address, the /64 of an IPv6 one (an IPv4-mapped IPv6 address counts
/// as IPv4).
pub fn prefix(ip: IpAddr) -> [u8; 9] {
    let mut out = [0u8; 9];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            out[0] = 4;
            out[1..4].copy_from_slice(&v4.octets()[..3]);
        }
        IpAddr::V6(v6) => {
            out[0] = 6;
            out[1..9].copy_from_slice(&v6.octets()[..8]);
        }
    }
    out
}

impl Binder {
    /// `None` when `bind_to` is empty (binding off). `previous`: the
    /// secrets still accepted for cookies, whose bindings are still honoured.
    pub fn new(secret: &[u8], previous: &[Vec<u8>], bind_to: &[BindTo]) -> Option<Binder> {
        if bind_to.is_empty() {
            return None;
        }
        Some(Binder {
            key: keys::derive(secret, keys::BINDING),
            previous: previous
                .iter()
                .map(|s| keys::derive(s, keys::BINDING))
                .collect(),
            ip: bind_to.contains(&BindTo::Ip),
            prefix: bind_to.contains(&BindTo::IpPrefix),
            user_agent: bind_to.contains(&BindTo::UserAgent),
        })
    }

    /// The digest of this client's traits; never 0 (0 means "unbound").
    pub fn digest(&self, ip: IpAddr, user_agent: Option<&[u8]>) -> u64 {
        self.digest_under(&self.key, ip, user_agent)
    }

    /// Whether `bound`, a cookie's digest that differs from [`Self::digest`],
    /// was made for this same client under a previous secret (a rotation).
    /// Only a mismatch pays for this.
    pub fn bound_before(&self, bound: u64, ip: IpAddr, user_agent: Option<&[u8]>) -> bool {
        self.previous
            .iter()
            .any(|k| self.digest_under(k, ip, user_agent) == bound)
    }

    fn digest_under(&self, key: &hmac::Key, ip: IpAddr, user_agent: Option<&[u8]>) -> u64 {
        let mut ctx = hmac::Context::with_key(key);
        if self.ip {
            let canon = ip.to_canonical();
            match canon {
                IpAddr::V4(v4) => ctx.update(&v4.octets()),
                IpAddr::V6(v6) => ctx.update(&v6.octets()),
            }
            ctx.update(b"|");
        }
        if self.prefix {
            ctx.update(&prefix(ip));
            ctx.update(b"|");
        }
        if self.user_agent {
            let ua = user_agent.unwrap_or(b"");
            ctx.update(&(ua.len() as u64).to_le_bytes());
            ctx.update(ua);
        }
        let tag = ctx.sign();
        let mut b = [0u8; 8];
        b.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_le_bytes(b).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ip_binding_tells_addresses_apart() {
        let b = Binder::new(b"0123456789abcdef", &[], &[BindTo::Ip]).unwrap();
        assert_eq!(
            b.digest(ip("10.0.0.1"), None),
            b.digest(ip("10.0.0.1"), Some(b"x"))
        );
        assert_ne!(
            b.digest(ip("10.0.0.1"), None),
            b.digest(ip("10.0.0.2"), None)
        );
        assert_eq!(
            b.digest(ip("::ffff:10.0.0.1"), None),
            b.digest(ip("10.0.0.1"), None)
        );
    }

    #[test]
    fn prefix_binding_follows_the_24_and_the_64() {
        let b = Binder::new(b"0123456789abcdef", &[], &[BindTo::IpPrefix]).unwrap();
        assert_eq!(
            b.digest(ip("192.0.2.1"), None),
            b.digest(ip("192.0.2.254"), None)
        );
        assert_ne!(
            b.digest(ip("192.0.2.1"), None),
            b.digest(ip("192.0.3.1"), None)
        );
        assert_eq!(
            b.digest(ip("2001:db8:1:2::1"), None),
            b.digest(ip("2001:db8:1:2:ffff::9"), None)
        );
        assert_ne!(
            b.digest(ip("2001:db8:1:2::1"), None),
            b.digest(ip("2001:db8:1:3::1"), None)
        );
    }

    #[test]
    fn user_agent_binding_and_keying() {
        let b = Binder::new(b"0123456789abcdef", &[], &[BindTo::UserAgent]).unwrap();
        assert_ne!(
            b.digest(ip("10.0.0.1"), Some(b"curl")),
            b.digest(ip("10.0.0.1"), Some(b"firefox"))
        );
        assert_eq!(
            b.digest(ip("10.0.0.1"), Some(b"curl")),
            b.digest(ip("10.9.9.9"), Some(b"curl"))
        );
        let other = Binder::new(b"fedcba9876543210", &[], &[BindTo::UserAgent]).unwrap();
        assert_ne!(
            b.digest(ip("10.0.0.1"), Some(b"curl")),
            other.digest(ip("10.0.0.1"), Some(b"curl"))
        );
        assert!(Binder::new(b"0123456789abcdef", &[], &[]).is_none());
    }

    /// A bound cookie from an earlier version must still match its client.
    #[test]
    fn the_binding_digest_is_frozen() {
        let b = Binder::new(
            b"0123456789abcdef",
            &[],
            &[BindTo::Ip, BindTo::IpPrefix, BindTo::UserAgent],
        )
        .unwrap();
        assert_eq!(
            b.digest(ip("192.0.2.7"), Some(b"curl/8")),
            18_258_276_468_648_862_604
        );
    }

    #[test]
    fn a_binding_made_under_a_previous_secret_still_matches_its_client() {
        let traits = [BindTo::Ip, BindTo::UserAgent];
        let old = Binder::new(b"old-secret-0123456", &[], &traits).unwrap();
        let bound = old.digest(ip("192.0.2.7"), Some(b"ua"));
        let now = Binder::new(
            b"new-secret-0123456",
            &[b"old-secret-0123456".to_vec()],
            &traits,
        )
        .unwrap();
        assert_ne!(now.digest(ip("192.0.2.7"), Some(b"ua")), bound);
        assert!(now.bound_before(bound, ip("192.0.2.7"), Some(b"ua")));
        assert!(!now.bound_before(bound, ip("192.0.2.8"), Some(b"ua")));
        assert!(!now.bound_before(bound, ip("192.0.2.7"), Some(b"other")));
        let forgot = Binder::new(b"new-secret-0123456", &[], &traits).unwrap();
        assert!(!forgot.bound_before(bound, ip("192.0.2.7"), Some(b"ua")));
    }
}
