//! Session lifecycle as pure decisions: what a request's session standing is,
//! given what its cookie claims and what the store knows, at a given `now`.
//! Does no I/O; `service.rs` feeds it values and acts on the answer.

pub mod binding;
pub mod cookie;
pub mod source;

use http::HeaderValue;

use crate::session::cookie::Claims;
use crate::store::{BackendId, EndReason, Found};

/// How far ahead of this instance's clock a cookie's timestamps may be and
/// still be trusted: instances' clocks differ a little (NTP keeps them within
/// milliseconds; a few seconds covers a poorly synced host). A cookie stamped
/// further ahead would live that much longer than its timeouts allow, so it
/// is treated as one tether did not issue.
pub const FUTURE_SKEW_MS: u64 = 5_000;

/// The SPEC section 3/4 outcome of one request, sent upstream as `Tether-Session-State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// A session was minted for this request.
    New,
    /// A live session went to its pinned backend.
    Continued,
    /// The presented session was over (timeouts, ended, replaced): a new one was minted.
    Expired,
    /// The pinned backend could not take the session: it was re-pinned.
    Failover,
    /// Rotate mode: no affinity.
    Rotated,
}

impl SessionState {
    /// The header value, prebuilt.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// The SPEC's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::New => "new",
            SessionState::Continued => "continued",
            SessionState::Expired => "expired",
            SessionState::Failover => "failover",
            SessionState::Rotated => "rotated",
        }
    }

    /// The state a sticky request carries once a retry has moved it to
    /// another backend, and whether a pin was lost in the move. Only a live
    /// session had a pin to lose (`failover`); a session minted for this very
    /// request (`new`, or `expired` with a fresh id) only changed its first
    /// placement and keeps its state.
    pub fn after_retry(self) -> (SessionState, bool) {
        match self {
            SessionState::Continued | SessionState::Failover => (SessionState::Failover, true),
            minted @ (SessionState::New | SessionState::Expired) => (minted, false),
            SessionState::Rotated => (SessionState::Rotated, false),
        }
    }
}

/// Session timeouts in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Affinity ends after this long without a request.
    pub idle_ms: u64,
    /// Affinity ends this long after the session began.
    pub absolute_ms: u64,
}

impl Timeouts {
    /// How stale a cookie's `seen_ms` may get before tether re-issues the
    /// cookie. This is the documented granularity of cookie-only idle
    /// judgement (when no store knows the session): a session may be judged
    /// idle up to this much early. A tenth of `idle_timeout` keeps Set-Cookie
    /// off most responses while erring by at most 10%.
    pub fn refresh_after_ms(&self) -> u64 {
        (self.idle_ms / 10).max(1)
    }
}

/// Where a live session is pinned, as far as we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// The store's record (exact, shared).
    Stored(BackendId),
    /// Only the cookie's claim (a backend name tag).
    Tag(u64),
}

/// A request's session standing before any backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No session, or a key tether does not honour: mint a new one.
    Fresh,
    /// A session that is over: mint a new one (never reuse the old id).
    Over(EndReason),
    /// A live session.
    Live {
        /// Where it is pinned.
        pin: Pin,
        /// When it began (unix ms).
        created_ms: u64,
        /// The store did not know it: record it now (adoption).
        adopt: bool,
    },
}

/// Judges a verified cookie by its own timestamps (no store consulted).
/// Both boundaries are exclusive: at exactly `seen + idle` the session is over.
pub fn cookie_over(c: &Claims, now_ms: u64, t: Timeouts) -> Option<EndReason> {
    if now_ms >= c.issued_ms.saturating_add(t.absolute_ms) {
        Some(EndReason::Absolute)
    } else if now_ms >= c.seen_ms.saturating_add(t.idle_ms) {
        Some(EndReason::Idle)
    } else {
        None
    }
}

/// Is the cookie stamped (issued or last seen) further in the future than
/// [`FUTURE_SKEW_MS`] allows? Such a cookie is not trusted.
pub fn stamped_ahead(c: &Claims, now_ms: u64) -> bool {
    c.issued_ms.max(c.seen_ms) > now_ms.saturating_add(FUTURE_SKEW_MS)
}

/// The standing of a session presented with a verified tether cookie, given
/// the store's answer. The store is exact where it knows the session; where it
/// does not (another instance made it, tether restarted, Redis is down), the
/// cookie speaks.
pub fn standing_for_cookie(c: &Claims, found: Found, now_ms: u64, t: Timeouts) -> Standing {
    if let Some(reason) = cookie_over(c, now_ms, t) {
        return Standing::Over(reason);
    }
    match found {
        Found::Live(rec) => Standing::Live {
            pin: Pin::Stored(rec.backend),
            created_ms: rec.created_ms,
            adopt: false,
        },
        Found::Over(reason) => Standing::Over(reason),
        Found::Missing => Standing::Live {
            pin: Pin::Tag(c.backend),
            created_ms: c.issued_ms,
            adopt: true,
        },
        // While the store cannot answer, the cookie (refreshed on every
        // move) is fresher than any local view.
        Found::Unavailable | Found::Stale(_) => Standing::Live {
            pin: Pin::Tag(c.backend),
            created_ms: c.issued_ms,
            adopt: false,
        },
    }
}

/// Where a request keyed by an app's value (app cookie, header, query)
/// stands. The store is the only shared memory of such keys, and anyone can
/// invent them, so a key enters the store only when a backend taught it
/// (learned from `Set-Cookie`, written by `service.rs`) or a client presents
/// it a second time; until then the ring places it, which every instance
/// computes alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppStanding {
    /// The store's live record: continue on its pin.
    Live(BackendId),
    /// The store knew the key and its session is over: place it anew.
    Over(EndReason),
    /// Neither stored nor seen: place it by the ring and remember only that
    /// it was seen (a flood of one-off keys costs the store nothing).
    FirstSighting,
    /// Not stored, but seen before: place it by the ring, where its first
    /// request went, and store it as claimed by the client.
    SecondSighting,
    /// The store cannot answer: continue on the local view's pin if this
    /// instance has one, else by the ring. Nothing is written, and nothing is
    /// refused as a new session (an established one cannot be told apart).
    Outage(Option<BackendId>),
}

/// The standing of an app key, given the store's answer and whether this
/// instance saw the key before without storing it.
pub fn standing_for_app_key(found: Found, seen_before: bool) -> AppStanding {
    match found {
        Found::Live(rec) => AppStanding::Live(rec.backend),
        Found::Over(reason) => AppStanding::Over(reason),
        Found::Missing if seen_before => AppStanding::SecondSighting,
        Found::Missing => AppStanding::FirstSighting,
        Found::Stale(rec) => AppStanding::Outage(Some(rec.backend)),
        Found::Unavailable => AppStanding::Outage(None),
    }
}

/// Should the cookie be re-issued so its `seen_ms` stays fresh?
pub fn needs_refresh(c: &Claims, now_ms: u64, t: Timeouts) -> bool {
    now_ms.saturating_sub(c.seen_ms) >= t.refresh_after_ms()
}

/// What a backend asked for in `Tether-Session-Control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// New id, same backend; the old id is invalidated (session fixation).
    Regenerate,
    /// Destroy the session and clear the cookie (logout).
    End,
}

impl Control {
    /// Parses the header value (case-insensitive, surrounding space ignored).
    /// Unknown values are ignored: a backend typo must not log users out.
    pub fn parse(v: &HeaderValue) -> Option<Control> {
        let s = v.to_str().ok()?.trim();
        if s.eq_ignore_ascii_case("regenerate") {
            Some(Control::Regenerate)
        } else if s.eq_ignore_ascii_case("end") {
            Some(Control::End)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::cookie::SessionId;
    use crate::store::Record;

    const T: Timeouts = Timeouts {
        idle_ms: 300,
        absolute_ms: 1000,
    };

    #[test]
    fn a_retry_fails_over_only_a_live_sessions_pin() {
        use SessionState::*;
        for (before, after, pin_lost) in [
            (New, New, false),
            (Expired, Expired, false),
            (Continued, Failover, true),
            (Failover, Failover, true),
            (Rotated, Rotated, false),
        ] {
            assert_eq!(before.after_retry(), (after, pin_lost), "{before:?}");
        }
    }

    fn claims(issued: u64, seen: u64) -> Claims {
        Claims {
            id: SessionId([7; 16]),
            backend: 42,
            issued_ms: issued,
            seen_ms: seen,
            binding: 0,
        }
    }

    #[test]
    fn cookie_judges_idle_and_absolute_with_exclusive_bounds() {
        let c = claims(1000, 1500);
        assert_eq!(cookie_over(&c, 1799, T), None);
        assert_eq!(cookie_over(&c, 1800, T), Some(EndReason::Idle));
        let c = claims(1000, 1990);
        assert_eq!(cookie_over(&c, 2000, T), Some(EndReason::Absolute));
    }

    #[test]
    fn unknown_valid_cookie_is_adopted_on_its_claimed_pin() {
        let c = claims(1000, 1100);
        let s = standing_for_cookie(&c, Found::Missing, 1200, T);
        assert_eq!(
            s,
            Standing::Live {
                pin: Pin::Tag(42),
                created_ms: 1000,
                adopt: true
            }
        );
    }

    #[test]
    fn store_pin_wins_over_cookie_pin() {
        let c = claims(1000, 1100);
        let rec = Record {
            backend: BackendId(3),
            created_ms: 1000,
            seen_ms: 1150,
        };
        let s = standing_for_cookie(&c, Found::Live(rec), 1200, T);
        assert_eq!(
            s,
            Standing::Live {
                pin: Pin::Stored(BackendId(3)),
                created_ms: 1000,
                adopt: false
            }
        );
    }

    #[test]
    fn ended_session_stays_over_even_with_a_fresh_cookie() {
        let c = claims(1000, 1100);
        let s = standing_for_cookie(&c, Found::Over(EndReason::Ended), 1200, T);
        assert_eq!(s, Standing::Over(EndReason::Ended));
    }

    #[test]
    fn store_outage_routes_by_cookie_without_writing() {
        let c = claims(1000, 1100);
        let s = standing_for_cookie(&c, Found::Unavailable, 1200, T);
        assert!(matches!(
            s,
            Standing::Live {
                adopt: false,
                pin: Pin::Tag(42),
                ..
            }
        ));
    }

    #[test]
    fn store_outage_with_a_local_view_still_trusts_the_cookie() {
        let c = claims(1000, 1100);
        let rec = Record {
            backend: BackendId(3),
            created_ms: 1000,
            seen_ms: 1150,
        };
        let s = standing_for_cookie(&c, Found::Stale(rec), 1200, T);
        assert!(matches!(
            s,
            Standing::Live {
                adopt: false,
                pin: Pin::Tag(42),
                ..
            }
        ));
    }

    #[test]
    fn cookies_stamped_ahead_beyond_the_skew_are_not_trusted() {
        let now = 1_000_000;
        let table = [
            // (issued, seen, ahead?)
            (now, now, false),
            (now - 500, now + FUTURE_SKEW_MS, false),
            (now + FUTURE_SKEW_MS, now + FUTURE_SKEW_MS, false),
            (now + FUTURE_SKEW_MS + 1, now + FUTURE_SKEW_MS + 1, true),
            (now, now + 3_600_000, true),
            (now + 3_600_000, now, true),
            (u64::MAX, u64::MAX, true),
        ];
        for (issued, seen, ahead) in table {
            assert_eq!(
                stamped_ahead(&claims(issued, seen), now),
                ahead,
                "issued {issued} seen {seen}"
            );
        }
        assert!(!stamped_ahead(&claims(u64::MAX, u64::MAX), u64::MAX));
    }

    #[test]
    fn app_keys_enter_the_store_on_a_second_sighting_only() {
        let rec = Record {
            backend: BackendId(3),
            created_ms: 1000,
            seen_ms: 1150,
        };
        let table = [
            (Found::Live(rec), false, AppStanding::Live(BackendId(3))),
            (Found::Live(rec), true, AppStanding::Live(BackendId(3))),
            (
                Found::Over(EndReason::Ended),
                true,
                AppStanding::Over(EndReason::Ended),
            ),
            (Found::Missing, false, AppStanding::FirstSighting),
            (Found::Missing, true, AppStanding::SecondSighting),
            (
                Found::Stale(rec),
                false,
                AppStanding::Outage(Some(BackendId(3))),
            ),
            (Found::Unavailable, false, AppStanding::Outage(None)),
            (Found::Unavailable, true, AppStanding::Outage(None)),
        ];
        for (found, seen, want) in table {
            assert_eq!(standing_for_app_key(found, seen), want, "{found:?} {seen}");
        }
    }

    #[test]
    fn refresh_after_a_tenth_of_idle() {
        let c = claims(1000, 1000);
        assert!(!needs_refresh(&c, 1029, T));
        assert!(needs_refresh(&c, 1030, T));
    }

    #[test]
    fn control_values() {
        assert_eq!(
            Control::parse(&HeaderValue::from_static("end")),
            Some(Control::End)
        );
        assert_eq!(
            Control::parse(&HeaderValue::from_static(" Regenerate ")),
            Some(Control::Regenerate)
        );
        assert_eq!(Control::parse(&HeaderValue::from_static("logout")), None);
    }
}
