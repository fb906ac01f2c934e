//! The session types the rooms below share: the SPEC section 3 states, the
//! timeouts, where a session is pinned, the backend's control values. The
//! lifecycle itself is decided in [`decide`].

pub mod binding;
pub mod cookie;
pub mod decide;
pub mod memo;
pub mod source;

use http::HeaderValue;

use crate::store::BackendId;

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
