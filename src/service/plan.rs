//! The session half of the request path: the store I/O around the pure
//! decision in `session/decide.rs` (rate limits, lookups, sightings, what the
//! decision asks to write), and committing the outcome and the backend's
//! control header on the way back.

use super::*;

/// The backend table as `session::decide` sees it: this snapshot's
/// backends, their status and its ring, at session-clock time `.1`.
pub(super) struct View<'s>(&'s Snapshot, u64);

impl decide::Table for View<'_> {
    #[inline]
    fn resolve(&self, pin: Pin) -> Option<usize> {
        match pin {
            Pin::Stored(id) => self.0.by_id(id),
            Pin::Tag(tag) => self.0.by_tag(tag),
        }
    }

    #[inline]
    fn unavailable(&self, i: usize) -> Option<Gone> {
        let b = &self.0.backends[i];
        if b.eligible_for_existing() {
            b.drain_expired(self.1).then_some(Gone::DrainDeadline)
        } else if b.state() == BackendState::Disabled {
            Some(Gone::Disabled)
        } else {
            Some(Gone::Down)
        }
    }

    #[inline]
    fn tag(&self, i: usize) -> u64 {
        self.0.backends[i].tag
    }

    fn failover(&self, ring_key: u64, from: Option<usize>) -> Option<usize> {
        self.0.balancer.failover(ring_key, from, &self.0.backends)
    }
}

/// A session carried by tether's own cookie; `memo` spares verifying the
/// cookie the connection presented last.
pub(super) async fn cookie_plan(
    shared: &Shared,
    snap: &Snapshot,
    conn: ConnInfo,
    memo: &CookieMemo,
    req: &Request<Incoming>,
    name: &str,
    now: u64,
) -> Result<Plan, ProxyError> {
    let t = snap.timeouts;
    let ua = req.headers().get(USER_AGENT).map(|v| v.as_bytes());
    let binding = snap
        .binder
        .as_ref()
        .map_or(0, |b| b.digest(conn.peer.ip(), ua));
    let mut claims = find_cookie(req.headers().get_all(COOKIE).iter(), name)
        .and_then(|v| memo.decode(&snap.codec, v));
    if let (Some(b), Some(c)) = (&snap.binder, claims.as_mut()) {
        // Bound under a secret since rotated out of `secret`: the same client
        // keeps its session, and its next cookie carries today's digest.
        if c.binding != binding && b.bound_before(c.binding, conn.peer.ip(), ua) {
            c.binding = binding;
        }
    }
    let presented = decide::present(claims, binding, now, t);
    let found = match presented {
        Presented::Nothing => None,
        Presented::Foreign(c) => {
            shared.metrics.binding_mismatch();
            shared.warn_mismatch_once(c.id, conn.peer);
            if snap.reject_mismatch {
                return Err(ProxyError::Forbidden);
            }
            None
        }
        Presented::Own { claims: c, over } => {
            session_allowed(shared, snap, c.id.as_u128())?;
            match over {
                None => Some(
                    shared
                        .store
                        .get_touch(SessionKey(c.id.as_u128()), now)
                        .await,
                ),
                Some(_) => None,
            }
        }
    };
    let d = decide::for_cookie(&presented, found, now, t, snap.strict, &View(snap, now));
    new_session_allowed(shared, snap, conn, &d)?;
    let claims = d.claims.unwrap_or_else(|| Claims {
        id: SessionId::random(),
        backend: 0,
        issued_ms: now,
        seen_ms: now,
        binding,
    });
    let ring_key = decide::ring_key_of(claims.id);
    let key = SessionKey(claims.id.as_u128());
    let (i, stored) = carry_out(shared, snap, &d, Some(key), ring_key, now).await?;
    Ok(Plan {
        state: d.state,
        backend: i,
        ring_key,
        session: Sess::Cookie {
            claims: Claims {
                backend: snap.backends[i].tag,
                ..claims
            },
            send_cookie: d.send_cookie,
            stored,
        },
    })
}

/// A session keyed by an app's value: the store is its only memory.
pub(super) async fn app_plan(
    shared: &Shared,
    snap: &Snapshot,
    conn: ConnInfo,
    req: &Request<Incoming>,
    now: u64,
) -> Result<Plan, ProxyError> {
    let (d, key, ring_key) = match app_key(&snap.source, req.headers(), req.uri()) {
        None => (
            decide::without_app_key(),
            None,
            decide::ring_key_of(SessionId::random()),
        ),
        Some(value) => {
            let (key, ring_key) = snap.app_digest.digest(value);
            session_allowed(shared, snap, key.0)?;
            let mut found = shared.store.get_touch(key, now).await;
            if found == Found::Missing && snap.app_digest.rotated() {
                found = Box::pin(carry_over(shared, snap, value, key, now))
                    .await
                    .unwrap_or(found);
            }
            // Only a key the store does not know is looked for (and
            // remembered) in the sightings.
            let seen = found == Found::Missing && shared.sightings.sighted(key);
            let d = decide::for_app_key(found, seen, ring_key, snap.strict, &View(snap, now));
            (d, Some(key), ring_key)
        }
    };
    new_session_allowed(shared, snap, conn, &d)?;
    let (i, stored) = carry_out(shared, snap, &d, key, ring_key, now).await?;
    // A clone of a parsed header value shares its bytes: no allocation.
    let carried = match &snap.source {
        KeySource::Header(name) if key.is_some() => req.headers().get(name).cloned(),
        _ => None,
    };
    Ok(Plan {
        state: d.state,
        backend: i,
        ring_key,
        session: Sess::App {
            key,
            stored,
            carried,
        },
    })
}

/// A pin stored under a previous secret (before a rotation), moved to the
/// key `value` has now. Boxed by the caller: only an unknown key with
/// previous secrets configured pays for it.
pub(super) async fn carry_over(
    shared: &Shared,
    snap: &Snapshot,
    value: &str,
    key: SessionKey,
    now: u64,
) -> Option<Found> {
    for old in snap.app_digest.previous_keys(value) {
        if let Found::Live(rec) = shared.store.get_touch(old, now).await {
            if shared.store.insert(key, rec).await == Insert::Full {
                shared.metrics.store_full();
            }
            return Some(Found::Live(rec));
        }
    }
    None
}

/// Carries out a session decision: places the request where it routes,
/// makes the store write it asks for and counts the pin it lost. Returns
/// the backend and whether the store holds the session.
pub(super) async fn carry_out(
    shared: &Shared,
    snap: &Snapshot,
    d: &Decision,
    key: Option<SessionKey>,
    ring_key: u64,
    now: u64,
) -> Result<(usize, bool), ProxyError> {
    let i = match d.route {
        Route::Backend(i) => i,
        Route::Mint | Route::Place => snap
            .balancer
            .pick_new_with(
                ring_key,
                &snap.backends,
                snap.balance_factor,
                |b| shared.store.sessions_on(b.id),
                |up| shared.store.sessions_among(up),
            )
            .ok_or(ProxyError::NoBackend)?,
        Route::Ring => snap
            .balancer
            .pick_new(ring_key, &snap.backends, 0.0, |_| 0)
            .ok_or(ProxyError::NoBackend)?,
        Route::Nowhere | Route::Refuse => return Err(ProxyError::NoBackend),
    };
    let id = snap.backends[i].id;
    let stored = match (d.write, key) {
        (Write::Nothing, _) | (_, None) => d.stored,
        (Write::Repin, Some(k)) => {
            shared.store.repin(k, id, now).await;
            d.stored
        }
        (Write::Adopt { created_ms }, Some(k)) => {
            let rec = Record {
                backend: id,
                created_ms,
                seen_ms: now,
            };
            if shared.store.insert(k, rec).await == Insert::Full {
                shared.metrics.store_full();
            }
            d.stored
        }
        (Write::Claim, Some(k)) => store_claimed(shared, snap, k, i, now).await,
    };
    if let Some(lost) = d.lost {
        count_pin_lost(shared, snap, lost, i);
    }
    Ok((i, stored))
}

/// A session's own rate limit (`session_rate`): a 429 once it is spent.
pub(super) fn session_allowed(
    shared: &Shared,
    snap: &Snapshot,
    id: u128,
) -> Result<(), ProxyError> {
    snap.limits.session(id).map_err(|retry_after_secs| {
        shared.metrics.rate_limited(false);
        ProxyError::RateLimited { retry_after_secs }
    })
}

/// `new_session_rate` for a client the decision counts as starting a
/// session: a 429 once it is spent.
pub(super) fn new_session_allowed(
    shared: &Shared,
    snap: &Snapshot,
    conn: ConnInfo,
    d: &Decision,
) -> Result<(), ProxyError> {
    if !d.new_session {
        return Ok(());
    }
    snap.limits
        .new_session(conn.peer.ip())
        .map_err(|retry_after_secs| {
            shared.metrics.rate_limited(true);
            ProxyError::RateLimited { retry_after_secs }
        })
}

/// Stores an app key only its client vouches for, pinned to backend `i`;
/// whether the store took it.
pub(super) async fn store_claimed(
    shared: &Shared,
    snap: &Snapshot,
    key: SessionKey,
    i: usize,
    now: u64,
) -> bool {
    let rec = Record {
        backend: snap.backends[i].id,
        created_ms: now,
        seen_ms: now,
    };
    match shared.store.insert_claimed(key, rec).await {
        Insert::Done => true,
        Insert::Full => {
            shared.metrics.store_full();
            false
        }
    }
}

/// Writes what the decision and the backend's control header say: store
/// updates and tether's Set-Cookie.
pub(super) async fn commit(
    shared: &Shared,
    snap: &Snapshot,
    conn: ConnInfo,
    plan: &Plan,
    control: Option<Control>,
    h: &mut http::HeaderMap,
    now: u64,
) {
    let b = &snap.backends[plan.backend];
    match plan.session {
        Sess::None => {}
        Sess::Cookie {
            claims,
            send_cookie,
            stored,
        } => {
            let attrs = snap.cookie_attrs(conn.tls);
            // Only an id the client already holds needs a tombstone: a
            // session minted for this request is ended or replaced before
            // its cookie is ever sent, so no tombstone is spent on it.
            let key = stored.then_some(SessionKey(claims.id.as_u128()));
            let cookie = match control {
                Some(Control::End) => {
                    end_stored(shared, key, EndReason::Ended, now).await;
                    attrs.clear_cookie()
                }
                Some(Control::Regenerate) => {
                    end_stored(shared, key, EndReason::Regenerated, now).await;
                    let fresh = regenerate(shared, b, claims, now).await;
                    attrs.set_cookie(&snap.codec.encode(&fresh))
                }
                None if send_cookie => attrs.set_cookie(&snap.codec.encode(&claims)),
                None => return,
            };
            headers::add_set_cookie(h, cookie);
        }
        Sess::App {
            key,
            stored,
            ref carried,
        } => {
            learn_app_key(shared, snap, h, b, key, carried.as_ref(), now).await;
            if let (Some(k), Some(c)) = (key, control) {
                let reason = match c {
                    Control::End => EndReason::Ended,
                    Control::Regenerate => EndReason::Regenerated,
                };
                if stored {
                    let _ = shared.store.end(k, reason, now).await;
                } else {
                    // Never stored: forgetting the sighting is enough, and a
                    // tombstone must not be spent on a key anyone can invent.
                    shared.sightings.forget(k);
                }
            }
        }
    }
}

/// Ends a stored session (`key`, if the store holds it) for `reason`.
pub(super) async fn end_stored(
    shared: &Shared,
    key: Option<SessionKey>,
    reason: EndReason,
    now: u64,
) {
    if let Some(key) = key {
        if shared.store.end(key, reason, now).await == Insert::Full {
            shared.metrics.store_full();
        }
    }
}

/// A new id for a session, pinned to the same backend (`regenerate`);
/// stored at once, since its cookie goes out with this response.
pub(super) async fn regenerate(shared: &Shared, b: &Backend, claims: Claims, now: u64) -> Claims {
    let fresh = Claims {
        id: SessionId::random(),
        seen_ms: now,
        ..claims
    };
    let rec = Record {
        backend: b.id,
        created_ms: fresh.issued_ms,
        seen_ms: now,
    };
    let _ = shared
        .store
        .insert(SessionKey(fresh.id.as_u128()), rec)
        .await;
    fresh
}

/// Stores the pin a backend teaches by naming the session in its response
/// (the app's `Set-Cookie`, or the session header; see
/// `session::source::learned_key`). `key`: the key the request carried;
/// `carried`: its header value, for the header source.
pub(super) async fn learn_app_key(
    shared: &Shared,
    snap: &Snapshot,
    h: &http::HeaderMap,
    b: &Backend,
    key: Option<SessionKey>,
    carried: Option<&http::HeaderValue>,
    now: u64,
) {
    let Some(v) = learned_key(&snap.source, h) else {
        return;
    };
    // The request's own value, byte for byte: the same key, known without
    // a digest (an HMAC on every answer of a server that repeats the id).
    if carried.is_some_and(|c| c.as_bytes().trim_ascii() == v.as_bytes()) {
        return;
    }
    let (learned, _) = snap.app_digest.digest(v);
    // The key the request itself carried teaches nothing. On a stored
    // session it would only restart its clocks (servers name the session
    // again on every answer, as the MCP SDKs do). Unstored, it is a key a
    // client chose, and a backend that puts back whatever it is sent (as
    // correlation-id middleware does) must not make every invented key a
    // pin that always finds room: it stays under the sighting rules.
    if Some(learned) == key {
        return;
    }
    // A pin learned from the backend always goes in (making room if a
    // client's claim holds it).
    let rec = Record {
        backend: b.id,
        created_ms: now,
        seen_ms: now,
    };
    if shared.store.insert(learned, rec).await == Insert::Full {
        shared.metrics.store_full();
    }
}
