//! Session lifecycle as pure decisions: what a request's session standing is,
//! given what its cookie claims and what the store knows, at a given `now`.
//! Does no I/O; `service.rs` feeds it values and acts on the answer.

pub mod binding;
pub mod cookie;
pub mod source;

use http::HeaderValue;

use crate::session::cookie::Claims;
use crate::store::{BackendId, EndReason, Found};

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
        Found::Unavailable => Standing::Live {
            pin: Pin::Tag(c.backend),
            created_ms: c.issued_ms,
            adopt: false,
        },
    }
}

/// The standing of a session keyed by an app's value (app cookie, header,
/// query): the store is the only memory, so an unknown key is fresh.
pub fn standing_for_app_key(found: Found) -> Standing {
    match found {
        Found::Live(rec) => Standing::Live {
            pin: Pin::Stored(rec.backend),
            created_ms: rec.created_ms,
            adopt: false,
        },
        Found::Over(reason) => Standing::Over(reason),
        Found::Missing | Found::Unavailable => Standing::Fresh,
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
