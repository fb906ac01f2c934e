//! Session lifecycle as a pure decision (SPEC section 3): from what a request
//! presents (tether's cookie, or an app's key), what the store said, `now`
//! and the timeouts, which state the session is in, where it goes, what the
//! response's cookie carries, what the store must be told and which pin was
//! lost. Does no I/O and counts nothing: `service.rs` asks the store, carries
//! out the [`Decision`] and derives the metrics from it. The backend table
//! comes in through [`Table`], so the balancer and the backends' status stay
//! outside and the whole table of outcomes is tested without sockets.

use crate::session::cookie::{Claims, SessionId};
use crate::session::{Pin, SessionState, Timeouts, FUTURE_SKEW_MS};
use crate::store::{self, BackendId, EndReason, Found};

/// Why a session's pinned backend cannot keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Failing health checks or refusing connections.
    Down,
    /// Switched off by the operator.
    Disabled,
    /// No longer in the configuration.
    Removed,
}

/// The backend table as a decision sees it. `service.rs` answers from the
/// snapshot (backends' status, the ring); the tests from a small array.
pub trait Table {
    /// The index of the backend a pin names, if it is still configured.
    fn resolve(&self, pin: Pin) -> Option<usize>;
    /// Why backend `i` cannot keep the sessions pinned to it; `None` when it
    /// can (`up` or `draining`).
    fn unavailable(&self, i: usize) -> Option<Gone>;
    /// Backend `i`'s name tag, as a cookie carries it.
    fn tag(&self, i: usize) -> u64;
    /// Failover order: the first backend taking new sessions on the ring for
    /// `ring_key`, other than `from`.
    fn failover(&self, ring_key: u64, from: Option<usize>) -> Option<usize>;
}

/// The ring key of a tether session id: its first 64 random bits.
#[inline]
pub fn ring_key_of(id: SessionId) -> u64 {
    id.as_u128() as u64
}

/// Where the request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This backend: the session's pin, or the one it failed over to.
    Backend(usize),
    /// Mint a session: a fresh id from the OS CSPRNG, placed on its ring with
    /// bounded load.
    Mint,
    /// Place the key anew: first on its ring with bounded load.
    Place,
    /// Where the ring alone puts the key, the same on every instance and for
    /// every sighting, so a key that is not stored still stays put.
    Ring,
    /// The pin is lost and no backend may take the session: 503.
    Nowhere,
}

/// What the store is told before the request is sent, about the backend the
/// route ends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Nothing.
    Nothing,
    /// The session moved: its record now names the new backend.
    Repin,
    /// A live cookie the store did not know (another instance made it, or
    /// tether restarted): record it, begun at `created_ms` (adoption).
    Adopt {
        /// When the session began.
        created_ms: u64,
    },
    /// An app key its client vouches for (a second sighting, or a key whose
    /// session was over): store it as the client's claim, which a learned
    /// pin may push out.
    Claim,
}

/// A pin a session lost, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinLoss {
    /// The session was over: timed out, ended or replaced.
    Over(EndReason),
    /// Its backend could not keep it; `from` is that backend's index
    /// (`None` once removed).
    Moved {
        /// Where it was pinned.
        from: Option<usize>,
        /// Why it could not stay.
        why: Gone,
    },
}

/// What one request's session comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The SPEC section 3 outcome, sent upstream as `Tether-Session-State`.
    pub state: SessionState,
    /// Where the request goes.
    pub route: Route,
    /// The claims the response's cookie carries, for a live tether session;
    /// `None` when one is minted (its claims do not exist yet) or the key is
    /// the app's.
    pub claims: Option<Claims>,
    /// Whether tether's cookie must be (re)sent.
    pub send_cookie: bool,
    /// What the store is told before the request is sent.
    pub write: Write,
    /// Whether the store holds the session, so that later writes (a retry's
    /// repin, the backend's control) go to it. For [`Write::Claim`], whether
    /// the store takes the claim has the last word.
    pub stored: bool,
    /// The request counts against `new_session_rate`: a client is starting
    /// an affinity. Never set for an established session, nor while the
    /// store cannot tell one.
    pub new_session: bool,
    /// The pin the session lost, if any.
    pub lost: Option<PinLoss>,
}

impl Decision {
    /// A session minted for this request. It enters the store only when its
    /// cookie first comes back (the cookie alone routes it until then), so
    /// clients that never return cookies cannot fill the store.
    fn mint(state: SessionState, lost: Option<PinLoss>) -> Decision {
        Decision {
            state,
            route: Route::Mint,
            claims: None,
            send_cookie: true,
            write: Write::Nothing,
            stored: false,
            new_session: true,
            lost,
        }
    }

    /// A session that lost its pin with nowhere to go.
    fn nowhere(state: SessionState, lost: Option<PinLoss>) -> Decision {
        Decision {
            state,
            route: Route::Nowhere,
            claims: None,
            send_cookie: false,
            write: Write::Nothing,
            stored: false,
            new_session: false,
            lost,
        }
    }

    /// An app-key decision that routes without a pin.
    fn unpinned(state: SessionState, route: Route, write: Write, new_session: bool) -> Decision {
        Decision {
            state,
            route,
            claims: None,
            send_cookie: false,
            write,
            stored: write == Write::Claim,
            new_session,
            lost: None,
        }
    }
}

/// What a request's tether cookie is worth before the store is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    /// No cookie tether honours: none, one it did not issue (the codec
    /// rejected it), or one stamped further ahead of this clock than
    /// [`FUTURE_SKEW_MS`] allows, which would outlive its timeouts.
    Nothing,
    /// A genuine cookie bound to another client's traits (or minted before
    /// `bind_to` was set): never honoured, and its owner's session is left
    /// alone.
    Foreign(Claims),
    /// A genuine cookie of this client. `over`: its own timestamps end it,
    /// so the store need not be asked.
    Own {
        /// What it claims.
        claims: Claims,
        /// Why it is over by its own timestamps.
        over: Option<EndReason>,
    },
}

/// Judges a verified cookie (`claims`, from the codec) presented by a client
/// whose traits digest to `binding`.
pub fn present(claims: Option<Claims>, binding: u64, now_ms: u64, t: Timeouts) -> Presented {
    match claims {
        None => Presented::Nothing,
        Some(c) if stamped_ahead(&c, now_ms) => Presented::Nothing,
        Some(c) if c.binding != binding => Presented::Foreign(c),
        Some(c) => Presented::Own {
            claims: c,
            over: cookie_over(&c, now_ms, t),
        },
    }
}

/// The decision for a request with tether's cookie as its source, given
/// what it [`present`]ed and the store's answer (`None` when the store was
/// not asked; a live cookie then speaks alone, as during an outage).
pub fn for_cookie(
    p: &Presented,
    found: Option<Found>,
    now_ms: u64,
    t: Timeouts,
    table: &impl Table,
) -> Decision {
    let c = match *p {
        Presented::Nothing | Presented::Foreign(_) => {
            return Decision::mint(SessionState::New, None)
        }
        Presented::Own {
            over: Some(reason), ..
        } => return Decision::mint(SessionState::Expired, Some(PinLoss::Over(reason))),
        Presented::Own { claims, over: None } => claims,
    };
    let found = found.unwrap_or(Found::Unavailable);
    let (pin, created_ms, adopt) = match standing_for_cookie(&c, found, now_ms, t) {
        Standing::Over(reason) => {
            return Decision::mint(SessionState::Expired, Some(PinLoss::Over(reason)))
        }
        Standing::Live {
            pin,
            created_ms,
            adopt,
        } => (pin, created_ms, adopt),
    };
    let (state, route, lost) = keep_or_move(pin, ring_key_of(c.id), table);
    let Route::Backend(i) = route else {
        return Decision {
            claims: Some(c),
            ..Decision::nowhere(state, lost)
        };
    };
    let tag = table.tag(i);
    let send_cookie =
        state == SessionState::Failover || needs_refresh(&c, now_ms, t) || tag != c.backend;
    Decision {
        state,
        route,
        claims: Some(Claims {
            backend: tag,
            issued_ms: created_ms,
            seen_ms: if send_cookie { now_ms } else { c.seen_ms },
            ..c
        }),
        send_cookie,
        write: match (adopt, state) {
            (true, _) => Write::Adopt { created_ms },
            (false, SessionState::Failover) => Write::Repin,
            (false, _) => Write::Nothing,
        },
        stored: true,
        new_session: false,
        lost,
    }
}

/// The decision for a request keyed by an app's value (app cookie, header,
/// query parameter), given the store's answer and whether this instance saw
/// the key before without storing it.
pub fn for_app_key(found: Found, seen_before: bool, ring_key: u64, table: &impl Table) -> Decision {
    let (pin, repin) = match standing_for_app_key(found, seen_before) {
        AppStanding::Live(id) => (id, true),
        // The local view's pin: followed, but nothing is written while the
        // store cannot answer.
        AppStanding::Outage(Some(id)) => (id, false),
        AppStanding::Outage(None) => {
            return Decision::unpinned(SessionState::New, Route::Ring, Write::Nothing, false)
        }
        AppStanding::FirstSighting => {
            return Decision::unpinned(SessionState::New, Route::Ring, Write::Nothing, true)
        }
        AppStanding::SecondSighting => {
            return Decision::unpinned(SessionState::Continued, Route::Ring, Write::Claim, false)
        }
        AppStanding::Over(reason) => {
            return Decision {
                lost: Some(PinLoss::Over(reason)),
                ..Decision::unpinned(SessionState::Expired, Route::Place, Write::Claim, true)
            }
        }
    };
    let (state, route, lost) = keep_or_move(Pin::Stored(pin), ring_key, table);
    Decision {
        state,
        route,
        claims: None,
        send_cookie: false,
        write: if repin && state == SessionState::Failover && route != Route::Nowhere {
            Write::Repin
        } else {
            Write::Nothing
        },
        stored: true,
        new_session: false,
        lost,
    }
}

/// The decision for an app-keyed request that carries no key yet: placed
/// like a new session; its pin is learned from the backend's response.
pub fn without_app_key() -> Decision {
    Decision::unpinned(SessionState::New, Route::Place, Write::Nothing, false)
}

/// A live session stays on its pin while that backend may keep it; else it
/// fails over along its ring (SPEC section 3 `failover`), and never moves
/// back when the old backend returns.
fn keep_or_move(
    pin: Pin,
    ring_key: u64,
    table: &impl Table,
) -> (SessionState, Route, Option<PinLoss>) {
    let (from, why) = match table.resolve(pin) {
        None => (None, Gone::Removed),
        Some(i) => match table.unavailable(i) {
            None => return (SessionState::Continued, Route::Backend(i), None),
            Some(why) => (Some(i), why),
        },
    };
    let route = table
        .failover(ring_key, from)
        .map_or(Route::Nowhere, Route::Backend);
    (
        SessionState::Failover,
        route,
        Some(PinLoss::Moved { from, why }),
    )
}

/// A request's session standing before any backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
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
/// At exactly the deadline the session is over ([`store::deadline`]).
fn cookie_over(c: &Claims, now_ms: u64, t: Timeouts) -> Option<EndReason> {
    let (deadline, why) = store::deadline(c.issued_ms, c.seen_ms, t.idle_ms, t.absolute_ms);
    (now_ms >= deadline).then_some(why)
}

/// Is the cookie stamped (issued or last seen) further in the future than
/// [`FUTURE_SKEW_MS`] allows? Such a cookie is not trusted.
fn stamped_ahead(c: &Claims, now_ms: u64) -> bool {
    c.issued_ms.max(c.seen_ms) > now_ms.saturating_add(FUTURE_SKEW_MS)
}

/// The standing of a session presented with a verified tether cookie, given
/// the store's answer. The store is exact where it knows the session; where it
/// does not (another instance made it, tether restarted, Redis is down), the
/// cookie speaks.
fn standing_for_cookie(c: &Claims, found: Found, now_ms: u64, t: Timeouts) -> Standing {
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
enum AppStanding {
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
fn standing_for_app_key(found: Found, seen_before: bool) -> AppStanding {
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
fn needs_refresh(c: &Claims, now_ms: u64, t: Timeouts) -> bool {
    now_ms.saturating_sub(c.seen_ms) >= t.refresh_after_ms()
}

#[cfg(test)]
mod tests {
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
        for_cookie(&p, found, now, T, &t)
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
            assert_eq!(for_app_key(found, seen, 1, &backends), want, "{row}");
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
}
