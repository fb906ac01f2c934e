//! Session lifecycle as a pure decision (SPEC section 3): from what a request
//! presents (tether's cookie, or an app's key), what the store said, `now`
//! and the timeouts, which state the session is in, where it goes, what the
//! response's cookie carries, what the store must be told and which pin was
//! lost. Does no I/O and counts nothing: `service/` asks the store, carries
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
    /// Draining, and the drain's deadline has passed.
    DrainDeadline,
}

/// The backend table as a decision sees it. `service/` answers from the
/// snapshot (backends' status, the ring); the tests from a small array.
pub trait Table {
    /// The index of the backend a pin names, if it is still configured.
    fn resolve(&self, pin: Pin) -> Option<usize>;
    /// Why backend `i` cannot keep the sessions pinned to it; `None` when it
    /// can (`up`, or `draining` before any deadline).
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
    /// `strict`: the pinned backend cannot serve and the session may not
    /// move (its state lives there), so it is refused with 503 and keeps
    /// its pin for when that backend returns.
    Refuse,
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
/// `strict`: a live session never leaves its pin.
pub fn for_cookie(
    p: &Presented,
    found: Option<Found>,
    now_ms: u64,
    t: Timeouts,
    strict: bool,
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
    let (state, route, lost) = keep_or_move(pin, ring_key_of(c.id), strict, table);
    let Route::Backend(i) = route else {
        return Decision {
            route,
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
/// the key before without storing it. `strict`: a live session never
/// leaves its pin.
pub fn for_app_key(
    found: Found,
    seen_before: bool,
    ring_key: u64,
    strict: bool,
    table: &impl Table,
) -> Decision {
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
    let (state, route, lost) = keep_or_move(Pin::Stored(pin), ring_key, strict, table);
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
/// back when the old backend returns. With `strict` it never moves at all:
/// it is refused and keeps its pin, so nothing is lost.
fn keep_or_move(
    pin: Pin,
    ring_key: u64,
    strict: bool,
    table: &impl Table,
) -> (SessionState, Route, Option<PinLoss>) {
    let (from, why) = match table.resolve(pin) {
        None => (None, Gone::Removed),
        Some(i) => match table.unavailable(i) {
            None => return (SessionState::Continued, Route::Backend(i), None),
            Some(why) => (Some(i), why),
        },
    };
    if strict {
        return (SessionState::Continued, Route::Refuse, None);
    }
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
/// (learned from `Set-Cookie`, written by `service/`) or a client presents
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
mod tests;
