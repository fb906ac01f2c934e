use super::*;
use crate::store::Record;

const T: Timeouts = Timeouts {
    idle_ms: 300,
    absolute_ms: 1000,
};

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
    // Past both ends, the reason is the end that came first, as the stores
    // judge it (store::deadline): this one idled out at 1800.
    let c = claims(1000, 1500);
    assert_eq!(cookie_over(&c, 2500, T), Some(EndReason::Idle));
    // A tie is absolute, the hard limit.
    let c = claims(1000, 1700);
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

/// Three backends (tags 100, 101, 102; store ids 0, 1, 2) whose ring
/// order is 0, 1, 2 for every key.
#[derive(Debug, Clone, Copy)]
struct Fake([Status; 3]);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Status {
    Up,
    Draining,
    Down,
    Disabled,
}
use Status::{Disabled, Down, Draining, Up};

const UP: Fake = Fake([Up, Up, Up]);

impl Table for Fake {
    fn resolve(&self, pin: Pin) -> Option<usize> {
        let i = match pin {
            Pin::Tag(t) => t.checked_sub(100)? as usize,
            Pin::Stored(BackendId(n)) => n as usize,
        };
        (i < 3).then_some(i)
    }
    fn unavailable(&self, i: usize) -> Option<Gone> {
        match self.0[i] {
            Up | Draining => None,
            Down => Some(Gone::Down),
            Disabled => Some(Gone::Disabled),
        }
    }
    fn tag(&self, i: usize) -> u64 {
        100 + i as u64
    }
    fn failover(&self, _ring_key: u64, from: Option<usize>) -> Option<usize> {
        (0..3).find(|&i| Some(i) != from && self.0[i] == Up)
    }
}

/// A cookie pinned (by tag) to backend `tag - 100`.
fn cookie(issued: u64, seen: u64, tag: u64) -> Claims {
    Claims {
        backend: tag,
        ..claims(issued, seen)
    }
}

fn on(backend: u16) -> Found {
    Found::Live(Record {
        backend: BackendId(backend),
        created_ms: 1000,
        seen_ms: 1500,
    })
}

/// Runs a request through the decision as `service.rs` does: the store
/// is asked only about a live cookie of this client.
fn by_cookie(c: Option<Claims>, binding: u64, store: Found, now: u64, t: Fake) -> Decision {
    let p = present(c, binding, now, T);
    let found = matches!(p, Presented::Own { over: None, .. }).then_some(store);
    for_cookie(&p, found, now, T, false, &t)
}

/// A live cookie session's decision.
fn kept(
    state: SessionState,
    i: usize,
    c: Claims,
    send_cookie: bool,
    write: Write,
    lost: Option<PinLoss>,
) -> Decision {
    Decision {
        state,
        route: Route::Backend(i),
        claims: Some(c),
        send_cookie,
        write,
        stored: true,
        new_session: false,
        lost,
    }
}

fn moved(from: Option<usize>, why: Gone) -> Option<PinLoss> {
    Some(PinLoss::Moved { from, why })
}

/// (outcome, cookie presented, client's binding, store's answer, now,
/// backends, decision)
type CookieRow = (
    &'static str,
    Option<Claims>,
    u64,
    Found,
    u64,
    Fake,
    Decision,
);

#[test]
fn cookie_sessions_follow_the_spec_table() {
    use SessionState::{Continued, Expired, Failover, New};
    let skew = FUTURE_SKEW_MS;
    let fresh = cookie(1000, 1590, 100);
    let over = |r| Some(PinLoss::Over(r));
    #[rustfmt::skip]
    let table: Vec<CookieRow> = vec![
        ("new: no cookie",
            None, 0, Found::Missing, 1600, UP, Decision::mint(New, None)),
        ("new: a cookie bound to another client",
            Some(fresh), 9, on(0), 1600, UP, Decision::mint(New, None)),
        ("new: stamped further ahead than the skew",
            Some(cookie(1600, 1600 + skew + 1, 100)), 0, on(0), 1600, UP, Decision::mint(New, None)),
        ("continued: stamped exactly the skew ahead is trusted, and adopted",
            Some(cookie(1600, 1600 + skew, 100)), 0, Found::Missing, 1600, UP,
            kept(Continued, 0, cookie(1600, 1600 + skew, 100), false, Write::Adopt { created_ms: 1600 }, None)),
        ("continued: the store's pin, cookie fresh enough",
            Some(fresh), 0, on(0), 1600, UP, kept(Continued, 0, fresh, false, Write::Nothing, None)),
        ("continued: refresh granularity, 1 ms before",
            Some(cookie(1000, 1500, 100)), 0, on(0), 1529, UP,
            kept(Continued, 0, cookie(1000, 1500, 100), false, Write::Nothing, None)),
        ("continued: refresh granularity, at",
            Some(cookie(1000, 1500, 100)), 0, on(0), 1530, UP,
            kept(Continued, 0, cookie(1000, 1530, 100), true, Write::Nothing, None)),
        ("continued: adopted (another instance's, or from before a restart)",
            Some(fresh), 0, Found::Missing, 1600, UP,
            kept(Continued, 0, fresh, false, Write::Adopt { created_ms: 1000 }, None)),
        ("continued: store outage, the cookie speaks, nothing written",
            Some(fresh), 0, Found::Unavailable, 1600, UP, kept(Continued, 0, fresh, false, Write::Nothing, None)),
        ("continued: store outage, the cookie beats a local view",
            Some(fresh), 0, on(2).stale(), 1600, UP, kept(Continued, 0, fresh, false, Write::Nothing, None)),
        ("continued: the store's pin re-issues the cookie",
            Some(fresh), 0, on(1), 1600, UP, kept(Continued, 1, cookie(1000, 1600, 101), true, Write::Nothing, None)),
        ("continued: a draining pin keeps its session",
            Some(fresh), 0, on(0), 1600, Fake([Draining, Up, Up]), kept(Continued, 0, fresh, false, Write::Nothing, None)),
        ("continued: a failed-over session does not move back",
            Some(cookie(1000, 1590, 101)), 0, on(1), 1600, UP,
            kept(Continued, 1, cookie(1000, 1590, 101), false, Write::Nothing, None)),
        ("continued: idle, 1 ms before",
            Some(cookie(1000, 1500, 100)), 0, on(0), 1799, UP,
            kept(Continued, 0, cookie(1000, 1799, 100), true, Write::Nothing, None)),
        ("expired: idle, at",
            Some(cookie(1000, 1500, 100)), 0, on(0), 1800, UP, Decision::mint(Expired, over(EndReason::Idle))),
        ("expired: idle, after",
            Some(cookie(1000, 1500, 100)), 0, on(0), 1801, UP, Decision::mint(Expired, over(EndReason::Idle))),
        ("continued: absolute, 1 ms before",
            Some(cookie(1000, 1990, 100)), 0, on(0), 1999, UP,
            kept(Continued, 0, cookie(1000, 1990, 100), false, Write::Nothing, None)),
        ("expired: absolute, at",
            Some(cookie(1000, 1990, 100)), 0, on(0), 2000, UP, Decision::mint(Expired, over(EndReason::Absolute))),
        ("expired: absolute, after",
            Some(cookie(1000, 1990, 100)), 0, on(0), 2001, UP, Decision::mint(Expired, over(EndReason::Absolute))),
        ("expired: the store's idle clock is exact",
            Some(fresh), 0, Found::Over(EndReason::Idle), 1600, UP, Decision::mint(Expired, over(EndReason::Idle))),
        ("expired: ended",
            Some(fresh), 0, Found::Over(EndReason::Ended), 1600, UP, Decision::mint(Expired, over(EndReason::Ended))),
        ("expired: regenerated",
            Some(fresh), 0, Found::Over(EndReason::Regenerated), 1600, UP,
            Decision::mint(Expired, over(EndReason::Regenerated))),
        ("failover: pinned backend down",
            Some(fresh), 0, on(0), 1600, Fake([Down, Up, Up]),
            kept(Failover, 1, cookie(1000, 1600, 101), true, Write::Repin, moved(Some(0), Gone::Down))),
        ("failover: pinned backend disabled",
            Some(fresh), 0, on(0), 1600, Fake([Disabled, Up, Up]),
            kept(Failover, 1, cookie(1000, 1600, 101), true, Write::Repin, moved(Some(0), Gone::Disabled))),
        ("failover: pinned backend removed",
            Some(fresh), 0, on(7), 1600, UP,
            kept(Failover, 0, cookie(1000, 1600, 100), true, Write::Repin, moved(None, Gone::Removed))),
        ("failover: skips a draining backend, adopts instead of repinning",
            Some(fresh), 0, Found::Missing, 1600, Fake([Down, Draining, Up]),
            kept(Failover, 2, cookie(1000, 1600, 102), true, Write::Adopt { created_ms: 1000 }, moved(Some(0), Gone::Down))),
        ("failover: nowhere to go",
            Some(fresh), 0, on(0), 1600, Fake([Down, Down, Draining]),
            Decision { claims: Some(fresh), ..Decision::nowhere(Failover, moved(Some(0), Gone::Down)) }),
    ];
    for (row, c, binding, found, now, backends, want) in table {
        assert_eq!(by_cookie(c, binding, found, now, backends), want, "{row}");
    }
}

fn keyed(
    state: SessionState,
    route: Route,
    write: Write,
    stored: bool,
    new_session: bool,
    lost: Option<PinLoss>,
) -> Decision {
    Decision {
        state,
        route,
        claims: None,
        send_cookie: false,
        write,
        stored,
        new_session,
        lost,
    }
}

#[test]
fn app_key_sessions_follow_the_spec_table() {
    use Route::{Backend, Nowhere, Place, Ring};
    use SessionState::{Continued, Expired, Failover, New};
    let over = |r| Some(PinLoss::Over(r));
    #[rustfmt::skip]
    // (outcome, store's answer, seen before, backends, decision)
    let table: Vec<(&str, Found, bool, Fake, Decision)> = vec![
        ("continued: a learned or stored pin",
            on(1), false, UP, keyed(Continued, Backend(1), Write::Nothing, true, false, None)),
        ("failover: pin down, the store learns the move",
            on(1), false, Fake([Up, Down, Up]),
            keyed(Failover, Backend(0), Write::Repin, true, false, moved(Some(1), Gone::Down))),
        ("failover: pin disabled",
            on(1), false, Fake([Up, Disabled, Up]),
            keyed(Failover, Backend(0), Write::Repin, true, false, moved(Some(1), Gone::Disabled))),
        ("failover: pin removed",
            on(7), false, UP, keyed(Failover, Backend(0), Write::Repin, true, false, moved(None, Gone::Removed))),
        ("failover: nowhere to go",
            on(1), false, Fake([Down, Down, Draining]),
            keyed(Failover, Nowhere, Write::Nothing, true, false, moved(Some(1), Gone::Down))),
        ("outage: the local view's pin, nothing written",
            on(1).stale(), false, UP, keyed(Continued, Backend(1), Write::Nothing, true, false, None)),
        ("outage: the local view's pin is down, the move is not written",
            on(1).stale(), false, Fake([Up, Down, Up]),
            keyed(Failover, Backend(0), Write::Nothing, true, false, moved(Some(1), Gone::Down))),
        ("outage: no local view, the ring places it, never refused as new",
            Found::Unavailable, true, UP, keyed(New, Ring, Write::Nothing, false, false, None)),
        ("new: first sighting, by the ring, only remembered as seen",
            Found::Missing, false, UP, keyed(New, Ring, Write::Nothing, false, true, None)),
        ("continued: second sighting, by the ring, stored as the client's claim",
            Found::Missing, true, UP, keyed(Continued, Ring, Write::Claim, true, false, None)),
        ("expired: idle",
            Found::Over(EndReason::Idle), false, UP,
            keyed(Expired, Place, Write::Claim, true, true, over(EndReason::Idle))),
        ("expired: absolute",
            Found::Over(EndReason::Absolute), true, UP,
            keyed(Expired, Place, Write::Claim, true, true, over(EndReason::Absolute))),
        ("expired: ended",
            Found::Over(EndReason::Ended), false, UP,
            keyed(Expired, Place, Write::Claim, true, true, over(EndReason::Ended))),
        ("expired: regenerated",
            Found::Over(EndReason::Regenerated), false, UP,
            keyed(Expired, Place, Write::Claim, true, true, over(EndReason::Regenerated))),
    ];
    for (row, found, seen, backends, want) in table {
        assert_eq!(for_app_key(found, seen, 1, false, &backends), want, "{row}");
    }
    assert_eq!(
        without_app_key(),
        keyed(New, Place, Write::Nothing, false, false, None),
        "new: no key yet, placed like a new session, its pin learned later"
    );
}

trait Stale {
    fn stale(self) -> Found;
}
impl Stale for Found {
    /// The same record as a local view seen during an outage.
    fn stale(self) -> Found {
        match self {
            Found::Live(rec) => Found::Stale(rec),
            other => other,
        }
    }
}

#[test]
fn strict_sessions_are_refused_and_keep_their_pin() {
    use SessionState::{Continued, New};
    let fresh = cookie(1000, 1590, 100);
    let refused = Decision {
        route: Route::Refuse,
        claims: Some(fresh),
        ..Decision::nowhere(Continued, None)
    };
    #[rustfmt::skip]
    // (outcome, cookie, store's answer, backends, decision)
    let table: Vec<(&str, Option<Claims>, Found, Fake, Decision)> = vec![
        ("refused: pin down", Some(fresh), on(0), Fake([Down, Up, Up]), refused),
        ("refused: pin disabled", Some(fresh), on(0), Fake([Disabled, Up, Up]), refused),
        ("refused: pin removed", Some(fresh), on(7), UP, refused),
        ("refused: store outage, the cookie's pin down",
            Some(fresh), Found::Unavailable, Fake([Down, Up, Up]), refused),
        ("continued: pin up, strict changes nothing",
            Some(fresh), on(0), UP, kept(Continued, 0, fresh, false, Write::Nothing, None)),
        ("new: a new session is placed as usual", None, Found::Missing, Fake([Down, Up, Up]), Decision::mint(New, None)),
    ];
    for (row, c, found, backends, want) in table {
        let p = present(c, 0, 1600, T);
        let found = matches!(p, Presented::Own { over: None, .. }).then_some(found);
        assert_eq!(
            for_cookie(&p, found, 1600, T, true, &backends),
            want,
            "{row}"
        );
    }
    let refused = keyed(Continued, Route::Refuse, Write::Nothing, true, false, None);
    #[rustfmt::skip]
    let table: Vec<(&str, Found, Fake, Decision)> = vec![
        ("app key refused: pin down", on(1), Fake([Up, Down, Up]), refused),
        ("app key refused: pin disabled", on(1), Fake([Up, Disabled, Up]), refused),
        ("app key refused: pin removed", on(7), UP, refused),
        ("app key refused: outage, the local view's pin down", on(1).stale(), Fake([Up, Down, Up]), refused),
        ("app key continued: pin up", on(1), UP, keyed(Continued, Route::Backend(1), Write::Nothing, true, false, None)),
        ("app key new: first sighting placed by the ring",
            Found::Missing, Fake([Down, Up, Up]), keyed(New, Route::Ring, Write::Nothing, false, true, None)),
    ];
    for (row, found, backends, want) in table {
        assert_eq!(for_app_key(found, false, 1, true, &backends), want, "{row}");
    }
}
