//! Rate limits (`[limits]`): a token bucket per session (`session_rate`,
//! `session_burst`) and one per client for minting sessions
//! (`new_session_rate`; a client is an IPv4 address or an IPv6 /64, see
//! [`client_key`]). Over the limit: 429 with `Retry-After`, and the request
//! never reaches a backend.
//!
//! governor's keyed GCRA limiters are lock-free per key (a sharded map), so no
//! request waits on another's lock. Their memory is bounded by [`Limits::reclaim`],
//! run every second by the server: idle keys (buckets back to full) are dropped,
//! and if an attacker still pushes a map past [`MAX_KEYS`] it is cleared,
//! failing open for a moment rather than growing without bound.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Keys kept per limiter before it is cleared.
pub const MAX_KEYS: usize = 1_000_000;

/// A keyed limiter that can be replaced whole when it grows past its bound.
struct Keyed<K: std::hash::Hash + Eq + Clone> {
    quota: Quota,
    limiter: ArcSwap<DefaultKeyedRateLimiter<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    fn new(quota: Quota) -> Keyed<K> {
        Keyed {
            quota,
            limiter: ArcSwap::from_pointee(RateLimiter::keyed(quota)),
        }
    }

    fn check(&self, key: &K, clock: &DefaultClock) -> Result<(), u64> {
        self.limiter
            .load()
            .check_key(key)
            .map_err(|nu| retry_after(nu.wait_time_from(clock.now())))
    }

    fn reclaim(&self, what: &str) {
        let l = self.limiter.load();
        l.retain_recent();
        if l.len() > MAX_KEYS {
            tracing::warn!(
                keys = l.len(),
                limiter = what,
                "rate limiter over its bound: cleared"
            );
            self.limiter
                .store(std::sync::Arc::new(RateLimiter::keyed(self.quota)));
        } else {
            l.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.limiter.load().len()
    }
}

/// The limiters of one configuration.
pub struct Limits {
    session: Option<Keyed<u128>>,
    new_session: Option<Keyed<IpAddr>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("session", &self.session.is_some())
            .field("new_session", &self.new_session.is_some())
            .finish()
    }
}

/// The longest span a bucket's arithmetic may cover. governor keeps times
/// as u64 nanoseconds (584 years) and multiplies the period by the burst
/// unchecked, so a tiny rate or a huge burst from the config would panic (or
/// wrap); a bucket that refills over more than a year never refills, as far
/// as anyone can tell.
const MAX_WINDOW: Duration = Duration::from_secs(365 * 24 * 3600);

fn quota(rate: f64, burst: f64) -> Option<Quota> {
    if rate <= 0.0 || !rate.is_finite() {
        return None;
    }
    let period = Duration::try_from_secs_f64(1.0 / rate)
        .unwrap_or(MAX_WINDOW)
        .clamp(Duration::from_nanos(1), MAX_WINDOW);
    let most = (MAX_WINDOW.as_nanos() / period.as_nanos()).max(1);
    let burst = u128::from(burst.max(1.0).min(u32::MAX as f64) as u32).min(most);
    let burst = NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX))?;
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

/// The client a `new_session_rate` bucket belongs to: an IPv4 address as
/// itself, an IPv6 address by its /64.
///
/// One IPv6 subscriber, host or container usually owns a whole /64 and picks
/// addresses in it at will (RFC 4941 temporary addresses, or simply any), so
/// a bucket per IPv6 address would let one client mint sessions without
/// limit. An IPv4-mapped address (`::ffff:a.b.c.d`, what a dual-stack `[::]`
/// listener reports for IPv4 peers) is its IPv4 address: by its /64, every
/// IPv4 client would share one bucket.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
    }
}

/// Seconds to put in `Retry-After` (at least 1: it is an integer header).
fn retry_after(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl Limits {
    /// Limiters for the given rates (0 = off). `session_burst` 0 means 2 x rate.
    pub fn new(session_rate: f64, session_burst: f64, new_session_rate: f64) -> Limits {
        let burst = if session_burst > 0.0 {
            session_burst
        } else {
            2.0 * session_rate
        };
        Limits {
            session: quota(session_rate, burst).map(Keyed::new),
            // Minting bursts up to a second's worth.
            new_session: quota(new_session_rate, new_session_rate.ceil()).map(Keyed::new),
            clock: DefaultClock::default(),
        }
    }

    /// Is any limit on?
    pub fn active(&self) -> bool {
        self.session.is_some() || self.new_session.is_some()
    }

    /// One request of session `key`: Ok, or the seconds to wait.
    ///
    /// # Errors
    /// Over `session_rate`: the `Retry-After` seconds.
    #[inline]
    pub fn session(&self, key: u128) -> Result<(), u64> {
        match &self.session {
            None => Ok(()),
            Some(l) => l.check(&key, &self.clock),
        }
    }

    /// Client `ip` wants a new session: Ok, or the seconds to wait. Clients
    /// are keyed by [`client_key`].
    ///
    /// # Errors
    /// Over `new_session_rate`: the `Retry-After` seconds.
    #[inline]
    pub fn new_session(&self, ip: IpAddr) -> Result<(), u64> {
        match &self.new_session {
            None => Ok(()),
            Some(l) => l.check(&client_key(ip), &self.clock),
        }
    }

    /// Drops idle keys; clears a limiter that still holds more than [`MAX_KEYS`].
    pub fn reclaim(&self) {
        if let Some(l) = &self.session {
            l.reclaim("session");
        }
        if let Some(l) = &self.new_session {
            l.reclaim("new_session");
        }
    }

    /// Keys held (tests, metrics).
    pub fn keys(&self) -> usize {
        self.session.as_ref().map_or(0, |l| l.len())
            + self.new_session.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default() {
        let l = Limits::new(0.0, 0.0, 0.0);
        assert!(!l.active());
        for _ in 0..1000 {
            assert!(l.session(1).is_ok());
            assert!(l.new_session("10.0.0.1".parse().unwrap()).is_ok());
        }
    }

    #[test]
    fn a_burst_then_429_with_retry_after() {
        let l = Limits::new(10.0, 10.0, 0.0);
        for i in 0..10 {
            assert!(l.session(7).is_ok(), "request {i} is within the burst");
        }
        assert_eq!(
            l.session(7),
            Err(1),
            "the 11th waits (Retry-After rounds up to 1 s)"
        );
        assert!(l.session(8).is_ok(), "another session has its own bucket");
    }

    #[test]
    fn new_sessions_are_limited_per_ip() {
        let l = Limits::new(0.0, 0.0, 2.0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.new_session(a).is_ok());
        assert!(l.new_session(a).is_ok());
        assert!(l.new_session(a).is_err());
        assert!(l.new_session("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn clients_are_ipv4_addresses_and_ipv6_64s() {
        let cases = [
            ("192.0.2.1", "192.0.2.1"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("::ffff:127.0.0.2", "127.0.0.2"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::"),
            ("2001:db8:1:3::1", "2001:db8:1:3::"),
            ("::1", "::"),
            ("fe80::1", "fe80::"),
            // Not mapped (the deprecated IPv4-compatible form): an IPv6 /64.
            ("::c000:201", "::"),
        ];
        for (ip, key) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(client_key(ip), key.parse::<IpAddr>().unwrap(), "{ip}");
        }
    }

    #[test]
    fn new_sessions_of_one_ipv6_64_share_a_bucket() {
        let l = Limits::new(0.0, 0.0, 1.0);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(l.new_session(ip("2001:db8:1:2::1")).is_ok());
        assert!(
            l.new_session(ip("2001:db8:1:2:ffff::7")).is_err(),
            "another address of the same /64 is the same client"
        );
        assert!(l.new_session(ip("2001:db8:1:3::1")).is_ok(), "the next /64");
        assert!(l.new_session(ip("192.0.2.1")).is_ok());
        assert!(
            l.new_session(ip("::ffff:192.0.2.2")).is_ok(),
            "an IPv4-mapped peer is its IPv4 address, not a /64"
        );
        assert!(l.new_session(ip("192.0.2.2")).is_err());
    }

    #[test]
    fn any_rate_the_config_accepts_builds_a_limiter() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // Rates the config check lets through (finite, >= 0), at the edges.
        for (rate, burst) in [
            (1e-300, 0.0),
            (5e-11, 4e9),
            (0.1, 1e9),
            (f64::MIN_POSITIVE, f64::MAX),
            (1e300, 1e300),
            (f64::MAX, 0.0),
        ] {
            let l = Limits::new(rate, burst, rate);
            assert!(l.active());
            assert!(l.session(1).is_ok(), "{rate} {burst}: the first request");
            assert!(l.new_session(ip).is_ok(), "{rate}: the first new session");
        }
        let slow = Limits::new(1e-300, 1.0, 1e-300);
        assert!(slow.session(1).is_ok());
        assert!(slow.session(1).is_err(), "one per forever");
    }

    #[test]
    fn idle_keys_are_reclaimed() {
        let l = Limits::new(1000.0, 1.0, 0.0);
        for k in 0..100u128 {
            let _ = l.session(k);
        }
        assert_eq!(l.keys(), 100);
        std::thread::sleep(Duration::from_millis(5));
        l.reclaim();
        assert_eq!(l.keys(), 0, "full buckets are forgotten");
    }
}
