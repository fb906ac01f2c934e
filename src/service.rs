//! The HTTP service, the spine of the request path: affinity key -> session
//! standing -> backend -> headers out -> upstream (+ one safe retry) ->
//! session commit and control -> headers back. It is the only request-path
//! room that calls the others; they take values and return values.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{COOKIE, USER_AGENT};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::backends::{Backend, State as BackendState};
use crate::body::{Body, BodyWatch, OnEnd, BODY_BROKEN, BODY_STALLED};
use crate::clock::Clock;
use crate::error::ProxyError;
use crate::headers;
use crate::hygiene;
use crate::metrics::{Metrics, PinLost, SessionEvent};
use crate::session::cookie::{find_cookie, Claims, SessionId};
use crate::session::source::{app_cookie_set, app_key, KeySource};
use crate::session::{self, AppStanding, Control, Pin, SessionState, Standing};
use crate::snapshot::Snapshot;
use crate::store::{EndReason, Found, Insert, Record, SessionKey, SessionStore, Sightings, Store};
use crate::upgrade::{self, Upgrades};
use crate::upstream::{Failure, Replay, SendError};

/// What every request shares: the current snapshot, the store, the clock.
#[derive(Debug)]
pub struct Shared {
    /// Swapped whole by reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Session store.
    pub store: Store,
    /// App keys presented once and not stored (beside the store, bounded).
    pub sightings: Sightings,
    /// Time source.
    pub clock: Clock,
    /// Counters (increments only on the request path).
    pub metrics: Arc<Metrics>,
    /// Upgraded (WebSocket) connections, which outlive their HTTP exchange.
    pub upgrades: Arc<Upgrades>,
    /// Sessions whose binding mismatch was already logged (bounded).
    pub mismatch_logged: std::sync::Mutex<std::collections::HashSet<u128>>,
}

/// Mismatch warnings remembered before the set starts over.
const MISMATCH_LOG_MEMORY: usize = 65_536;

impl Shared {
    /// Logs a binding mismatch once per session (never the cookie value).
    fn warn_mismatch_once(&self, id: SessionId, peer: SocketAddr) {
        let mut seen = self
            .mismatch_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MISMATCH_LOG_MEMORY {
            seen.clear();
        }
        if seen.insert(id.as_u128()) {
            tracing::warn!(%peer, "session cookie presented by a client it is not bound to");
        }
    }
}

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Arrived over TLS.
    pub tls: bool,
}

/// What the session layer decided for one request.
struct Plan {
    state: SessionState,
    /// Index of the backend to try first.
    backend: usize,
    /// The session's ring key (for failover order).
    ring_key: u64,
    session: Sess,
}

/// The session the request belongs to, by source.
enum Sess {
    /// Rotate mode.
    None,
    /// tether's cookie: the claims the response's cookie must carry, whether
    /// the cookie must be (re)sent, and whether the store holds the session.
    Cookie {
        claims: Claims,
        send_cookie: bool,
        stored: bool,
    },
    /// An app's key: its store key, and whether the store holds it live (a
    /// key only seen, or unknown during an outage, is not written for).
    App {
        key: Option<SessionKey>,
        stored: bool,
    },
}

/// Serves one request. Never fails: errors become the SPEC's status codes.
/// `ambiguous`: the framing tracker saw both Content-Length and
/// Transfer-Encoding on this request's head (see `framing.rs`); `hygiene.rs`
/// refuses it.
pub async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    ambiguous: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let snap = shared.snapshot.load_full();
    // Clock reads and copies only when the access log wants them.
    let log = snap.access_log.then(|| {
        (
            req.method().clone(),
            req.uri().path().to_owned(),
            Instant::now(),
        )
    });
    let outcome = match hygiene::check(&req, snap.max_header_bytes, ambiguous) {
        Ok(()) => proxy(&shared, &snap, conn, req).await,
        Err(e) => Err((e, None)),
    };
    let (resp, backend, state) = match outcome {
        Ok(done) => done,
        Err((e, backend)) => {
            let name = backend.map_or("-", |b| &*b.name);
            match e.status() {
                StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
                    tracing::warn!(peer = %conn.peer, backend = name, error = %e, "upstream failed")
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    tracing::warn!(peer = %conn.peer, "no eligible backend")
                }
                _ => tracing::debug!(peer = %conn.peer, error = %e, "request refused"),
            }
            (e.response(), backend.cloned(), None)
        }
    };
    let status = resp.status().as_u16();
    shared
        .metrics
        .request(backend.as_ref().map(|b| b.id.0 as usize), status);
    if let Some(state) = state {
        shared.metrics.session(event_of(state));
    }
    if let Some((method, path, started)) = log {
        tracing::info!(
            target: "tether::access",
            client = %conn.peer.ip(),
            %method,
            path,
            status,
            backend = backend.as_ref().map_or("-", |b| &*b.name),
            session = state.map_or("-", SessionState::as_str),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        );
    }
    Ok(resp)
}

type Done = (Response<Body>, Option<Arc<Backend>>, Option<SessionState>);

fn event_of(s: SessionState) -> SessionEvent {
    match s {
        SessionState::New => SessionEvent::New,
        SessionState::Continued => SessionEvent::Continued,
        SessionState::Expired => SessionEvent::Expired,
        SessionState::Failover => SessionEvent::Failover,
        SessionState::Rotated => SessionEvent::Rotated,
    }
}

fn lost_by_timeout(r: EndReason) -> PinLost {
    match r {
        EndReason::Idle => PinLost::Idle,
        EndReason::Absolute => PinLost::Absolute,
        EndReason::Ended => PinLost::Ended,
        EndReason::Regenerated => PinLost::Regenerated,
    }
}

/// Why a live session's pinned backend cannot serve it.
fn lost_backend(snap: &Snapshot, gone: Option<usize>) -> PinLost {
    match gone.map(|i| snap.backends[i].state()) {
        None => PinLost::BackendRemoved,
        Some(BackendState::Disabled) => PinLost::BackendDisabled,
        Some(_) => PinLost::BackendDown,
    }
}

async fn proxy<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    conn: ConnInfo,
    mut req: Request<Incoming>,
) -> Result<Done, (ProxyError, Option<&'s Arc<Backend>>)> {
    let now = shared.clock.now_ms();
    let mut plan = if snap.sticky {
        sticky_plan(shared, snap, conn, &req, now)
            .await
            .map_err(|e| (e, None))?
    } else {
        snap.balancer
            .rotate(&snap.backends)
            .map(|b| Plan {
                state: SessionState::Rotated,
                backend: b,
                ring_key: 0,
                session: Sess::None,
            })
            .ok_or((ProxyError::NoBackend, None))?
    };

    let client_upgrade = headers::wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let strip = snap.strip_cookie.then_some(snap.cookie_plain.name.as_str());
    headers::to_upstream(&mut parts, conn.peer.ip(), conn.tls, strip);
    headers::set_session_state(&mut parts.headers, plan.state);
    // An idempotent request without a body can be rebuilt and replayed if a
    // backend breaks before answering; anything else is sent at most once
    // after its bytes may have reached a backend.
    let replay = (is_idempotent(&parts.method) && http_body::Body::is_end_stream(&body))
        .then(|| Replay::new(&parts));
    // Only a request with a body can break or stall mid-stream.
    let (body, watch) = if http_body::Body::is_end_stream(&body) {
        (Body::stream(body), None)
    } else {
        let watch = Arc::new(BodyWatch::default());
        let body = Body::Request {
            inner: body,
            watch: watch.clone(),
            pause: snap.client_body,
            timer: None,
        };
        (body, Some(watch))
    };
    let mut req = Request::from_parts(parts, body);

    // First attempt; one retry elsewhere if that is safe.
    let mut attempt = 0;
    let (mut resp, lease) = loop {
        let b = &snap.backends[plan.backend];
        b.requests.fetch_add(1, Ordering::Relaxed);
        let sent_at = Instant::now();
        match snap.upstreams[plan.backend]
            .send(
                req,
                replay.as_ref(),
                watch.as_deref(),
                &snap.upstream_timeouts,
            )
            .await
        {
            Ok(ok) => {
                b.passive_success();
                shared
                    .metrics
                    .upstream_latency(b.id.0 as usize, sent_at.elapsed());
                break ok;
            }
            Err(SendError { failure, request }) => {
                let name = &*b.name;
                match (watch.as_ref().map_or(0, |w| w.get()), &failure) {
                    // The client's body broke or stalled: its fault, not the backend's.
                    (BODY_BROKEN, Failure::Broken(_) | Failure::Dropped(_)) => {
                        return Err((ProxyError::BadRequest("malformed request body"), Some(b)));
                    }
                    (BODY_STALLED, Failure::Broken(_) | Failure::Dropped(_)) => {
                        return Err((ProxyError::BodyTimeout, Some(b)));
                    }
                    _ => {}
                }
                b.failures.fetch_add(1, Ordering::Relaxed);
                // A kept-alive connection the backend closed under a request
                // says nothing about its health (its next connect will).
                let unreachable = matches!(failure, Failure::Connect(_) | Failure::Broken(_));
                if unreachable && b.passive_failure(snap.passive_threshold) {
                    tracing::warn!(
                        backend = name,
                        failures = snap.passive_threshold,
                        "backend is down (passive: requests failed in a row)"
                    );
                }
                if matches!(failure, Failure::Dropped(_)) {
                    tracing::warn!(
                        backend = name,
                        "backend closed an idle connection as a request was sent; \
                         set timeouts.upstream_idle below its keep-alive timeout"
                    );
                }
                let (err, again) = match failure {
                    Failure::Connect(source) => (
                        ProxyError::Connect {
                            backend: name.to_string(),
                            source,
                        },
                        request,
                    ),
                    Failure::Broken(source) | Failure::Dropped(source) => {
                        let again = replay.as_ref().map(Replay::build);
                        (
                            ProxyError::Upstream {
                                backend: name.to_string(),
                                source,
                            },
                            again,
                        )
                    }
                    Failure::Timeout => (
                        ProxyError::Timeout {
                            backend: name.to_string(),
                        },
                        None,
                    ),
                };
                let retry = match (again, attempt) {
                    (Some(r), 0) => next_backend(snap, &plan).map(|n| (r, n)),
                    _ => None,
                };
                let Some((mut r, next)) = retry else {
                    return Err((err, Some(b)));
                };
                tracing::warn!(backend = name, peer = %conn.peer, error = %err, "retrying on the next backend");
                attempt += 1;
                plan.backend = next;
                if snap.sticky {
                    let (state, pin_lost) = plan.state.after_retry();
                    if pin_lost {
                        shared.metrics.pin_lost(PinLost::BackendDown);
                    }
                    plan.state = state;
                    headers::set_session_state(r.headers_mut(), plan.state);
                    repin_after_retry(shared, snap, &mut plan, now).await;
                }
                req = r;
            }
        }
    };

    let backend = &snap.backends[plan.backend];
    let upstream_upgrade =
        (resp.status() == StatusCode::SWITCHING_PROTOCOLS).then(|| hyper::upgrade::on(&mut resp));
    let (mut parts, body) = resp.into_parts();
    let control = headers::to_client(&mut parts);
    commit(shared, snap, conn, &plan, control, &mut parts.headers, now).await;

    let body = if let Some(upstream_upgrade) = upstream_upgrade {
        // The connection now belongs to the upgraded protocol: splice the two
        // sides and never return it to the pool.
        drop((lease, body));
        if let Some(client_upgrade) = client_upgrade {
            tokio::spawn(upgrade::splice(
                client_upgrade,
                upstream_upgrade,
                shared.upgrades.enter(),
                snap.config.timeouts.tunnel,
            ));
        }
        Body::empty()
    } else if http_body::Body::is_end_stream(&body) {
        Box::new(lease).done();
        Body::stream(body)
    } else {
        Body::Stream {
            inner: body,
            on_end: Some(Box::new(lease)),
        }
    };
    Ok((
        Response::from_parts(parts, body),
        Some(backend.clone()),
        Some(plan.state),
    ))
}

/// RFC 9110 section 9.2.2: methods whose repetition has the same effect.
fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// The ring key of a tether session id: its first 64 random bits.
#[inline]
fn ring_key_of(id: SessionId) -> u64 {
    id.as_u128() as u64
}

/// Mints a new session: a fresh id from the OS CSPRNG, placed on the ring
/// with bounded load. It enters the store only when its cookie first comes
/// back (the cookie alone routes it until then), so clients that never
/// return cookies cannot fill the store.
fn mint(
    shared: &Shared,
    snap: &Snapshot,
    conn: ConnInfo,
    binding: u64,
    state: SessionState,
    now: u64,
) -> Result<Plan, ProxyError> {
    if let Err(retry_after_secs) = snap.limits.new_session(conn.peer.ip()) {
        shared.metrics.rate_limited(true);
        return Err(ProxyError::RateLimited { retry_after_secs });
    }
    let id = SessionId::random();
    let ring_key = ring_key_of(id);
    let i = snap
        .balancer
        .pick_new(ring_key, &snap.backends, snap.balance_factor, |b| {
            shared.store.sessions_on(b.id)
        })
        .ok_or(ProxyError::NoBackend)?;
    Ok(Plan {
        state,
        backend: i,
        ring_key,
        session: Sess::Cookie {
            claims: Claims {
                id,
                backend: snap.backends[i].tag,
                issued_ms: now,
                seen_ms: now,
                binding,
            },
            send_cookie: true,
            stored: false,
        },
    })
}

async fn sticky_plan(
    shared: &Shared,
    snap: &Snapshot,
    conn: ConnInfo,
    req: &Request<Incoming>,
    now: u64,
) -> Result<Plan, ProxyError> {
    let t = snap.timeouts;
    if let KeySource::Cookie(name) = &snap.source {
        let binding = snap.binder.as_ref().map_or(0, |b| {
            b.digest(
                conn.peer.ip(),
                req.headers().get(USER_AGENT).map(|v| v.as_bytes()),
            )
        });
        // A cookie stamped ahead of our clock would outlive its timeouts:
        // treated as one tether did not issue.
        let claims = find_cookie(req.headers().get_all(COOKIE).iter(), name)
            .and_then(|v| snap.codec.decode(v))
            .filter(|c| !session::stamped_ahead(c, now));
        let Some(c) = claims else {
            return mint(shared, snap, conn, binding, SessionState::New, now);
        };
        if c.binding != binding {
            // Someone else's cookie (or one minted before bind_to was set):
            // never honoured, and the owner's session is left alone.
            shared.metrics.binding_mismatch();
            shared.warn_mismatch_once(c.id, conn.peer);
            if snap.reject_mismatch {
                return Err(ProxyError::Forbidden);
            }
            return mint(shared, snap, conn, binding, SessionState::New, now);
        }
        if let Err(retry_after_secs) = snap.limits.session(c.id.as_u128()) {
            shared.metrics.rate_limited(false);
            return Err(ProxyError::RateLimited { retry_after_secs });
        }
        let standing = match session::cookie_over(&c, now, t) {
            Some(reason) => Standing::Over(reason),
            None => {
                let key = SessionKey(c.id.as_u128());
                let found = shared.store.get_touch(key, now).await;
                session::standing_for_cookie(&c, found, now, t)
            }
        };
        let Standing::Live {
            pin,
            created_ms,
            adopt,
        } = standing
        else {
            let state = match standing {
                Standing::Over(reason) => {
                    shared.metrics.pin_lost(lost_by_timeout(reason));
                    SessionState::Expired
                }
                _ => SessionState::New,
            };
            return mint(shared, snap, conn, binding, state, now);
        };
        let key = SessionKey(c.id.as_u128());
        let ring_key = ring_key_of(c.id);
        let (state, i) = match resolve(snap, pin) {
            Some(i) if snap.backends[i].eligible_for_existing() => (SessionState::Continued, i),
            gone => {
                let j = snap
                    .balancer
                    .failover(ring_key, gone, &snap.backends)
                    .ok_or(ProxyError::NoBackend)?;
                shared.metrics.pin_lost(lost_backend(snap, gone));
                tracing::debug!(
                    from = gone.map_or("(removed)", |g| &*snap.backends[g].name),
                    to = &*snap.backends[j].name,
                    "session failed over"
                );
                if !adopt {
                    shared.store.repin(key, snap.backends[j].id, now).await;
                }
                (SessionState::Failover, j)
            }
        };
        let b = &snap.backends[i];
        if adopt {
            let rec = Record {
                backend: b.id,
                created_ms,
                seen_ms: now,
            };
            if shared.store.insert(key, rec).await == Insert::Full {
                shared.metrics.store_full();
            }
        }
        let send_cookie = state == SessionState::Failover
            || session::needs_refresh(&c, now, t)
            || b.tag != c.backend;
        let claims = Claims {
            backend: b.tag,
            issued_ms: created_ms,
            seen_ms: if send_cookie { now } else { c.seen_ms },
            ..c
        };
        return Ok(Plan {
            state,
            backend: i,
            ring_key,
            session: Sess::Cookie {
                claims,
                send_cookie,
                stored: true,
            },
        });
    }

    // An app's key: the store is its only memory.
    let Some(value) = app_key(&snap.source, req.headers(), req.uri()) else {
        // No key yet: place the request like a new session; the pin is
        // learned from the backend's Set-Cookie.
        let ring_key = ring_key_of(SessionId::random());
        let i = snap
            .balancer
            .pick_new(ring_key, &snap.backends, snap.balance_factor, |b| {
                shared.store.sessions_on(b.id)
            })
            .ok_or(ProxyError::NoBackend)?;
        return Ok(Plan {
            state: SessionState::New,
            backend: i,
            ring_key,
            session: Sess::App {
                key: None,
                stored: false,
            },
        });
    };
    let (key, ring_key) = snap.app_digest.digest(value);
    if let Err(retry_after_secs) = snap.limits.session(key.0) {
        shared.metrics.rate_limited(false);
        return Err(ProxyError::RateLimited { retry_after_secs });
    }
    let found = shared.store.get_touch(key, now).await;
    // Only a key the store does not know is looked for (and remembered) in
    // the sightings.
    let seen = found == Found::Missing && shared.sightings.sighted(key);
    let standing = session::standing_for_app_key(found, seen);
    // Where the ring alone puts the key: the same on every instance and for
    // every sighting, so a key that is not stored still stays put.
    let by_ring = || {
        snap.balancer
            .pick_new(ring_key, &snap.backends, 0.0, |_| 0)
            .ok_or(ProxyError::NoBackend)
    };
    let (state, i, stored) = match standing {
        AppStanding::Live(id) | AppStanding::Outage(Some(id)) => {
            match resolve(snap, Pin::Stored(id)) {
                Some(i) if snap.backends[i].eligible_for_existing() => {
                    (SessionState::Continued, i, true)
                }
                gone => {
                    let j = snap
                        .balancer
                        .failover(ring_key, gone, &snap.backends)
                        .ok_or(ProxyError::NoBackend)?;
                    shared.metrics.pin_lost(lost_backend(snap, gone));
                    if let AppStanding::Live(_) = standing {
                        shared.store.repin(key, snap.backends[j].id, now).await;
                    }
                    (SessionState::Failover, j, true)
                }
            }
        }
        AppStanding::Outage(None) => (SessionState::New, by_ring()?, false),
        AppStanding::FirstSighting => {
            new_session_allowed(shared, snap, conn)?;
            (SessionState::New, by_ring()?, false)
        }
        AppStanding::SecondSighting => {
            let i = by_ring()?;
            let stored = store_claimed(shared, snap, key, i, now).await;
            (SessionState::Continued, i, stored)
        }
        AppStanding::Over(reason) => {
            new_session_allowed(shared, snap, conn)?;
            let i = snap
                .balancer
                .pick_new(ring_key, &snap.backends, snap.balance_factor, |b| {
                    shared.store.sessions_on(b.id)
                })
                .ok_or(ProxyError::NoBackend)?;
            shared.metrics.pin_lost(lost_by_timeout(reason));
            let stored = store_claimed(shared, snap, key, i, now).await;
            (SessionState::Expired, i, stored)
        }
    };
    Ok(Plan {
        state,
        backend: i,
        ring_key,
        session: Sess::App {
            key: Some(key),
            stored,
        },
    })
}

/// `new_session_rate` for the client: a 429 once it is spent.
fn new_session_allowed(shared: &Shared, snap: &Snapshot, conn: ConnInfo) -> Result<(), ProxyError> {
    snap.limits
        .new_session(conn.peer.ip())
        .map_err(|retry_after_secs| {
            shared.metrics.rate_limited(true);
            ProxyError::RateLimited { retry_after_secs }
        })
}

/// Stores an app key only its client vouches for, pinned to backend `i`;
/// whether the store took it.
async fn store_claimed(
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

fn resolve(snap: &Snapshot, pin: Pin) -> Option<usize> {
    match pin {
        Pin::Stored(id) => snap.by_id(id),
        Pin::Tag(tag) => snap.by_tag(tag),
    }
}

/// The backend to retry on after the first one refused the connection.
fn next_backend(snap: &Snapshot, plan: &Plan) -> Option<usize> {
    if snap.sticky {
        snap.balancer
            .failover(plan.ring_key, Some(plan.backend), &snap.backends)
    } else {
        snap.balancer.rotate_retry(plan.backend, &snap.backends)
    }
}

/// After a retry moved a sticky request, the session moves with it.
async fn repin_after_retry(shared: &Shared, snap: &Snapshot, plan: &mut Plan, now: u64) {
    let b = &snap.backends[plan.backend];
    match &mut plan.session {
        Sess::None => {}
        Sess::Cookie {
            claims,
            send_cookie,
            stored,
        } => {
            claims.backend = b.tag;
            claims.seen_ms = now;
            *send_cookie = true;
            if *stored {
                shared
                    .store
                    .repin(SessionKey(claims.id.as_u128()), b.id, now)
                    .await;
            }
        }
        Sess::App {
            key: Some(k),
            stored: true,
        } => {
            shared.store.repin(*k, b.id, now).await;
        }
        Sess::App { .. } => {}
    }
}

/// Writes what the decision and the backend's control header say: store
/// updates and tether's Set-Cookie.
async fn commit(
    shared: &Shared,
    snap: &Snapshot,
    conn: ConnInfo,
    plan: &Plan,
    control: Option<Control>,
    h: &mut http::HeaderMap,
    now: u64,
) {
    let b = &snap.backends[plan.backend];
    match &plan.session {
        Sess::None => {}
        Sess::Cookie {
            claims,
            send_cookie,
            stored,
        } => {
            let attrs = snap.cookie_attrs(conn.tls);
            let key = SessionKey(claims.id.as_u128());
            // Only an id the client already holds needs a tombstone: a
            // session minted for this request is ended or replaced before
            // its cookie is ever sent, so no tombstone is spent on it.
            let end = |reason| async move {
                if *stored && shared.store.end(key, reason, now).await == Insert::Full {
                    shared.metrics.store_full();
                }
            };
            match control {
                Some(Control::End) => {
                    end(EndReason::Ended).await;
                    headers::add_set_cookie(h, attrs.clear_cookie());
                }
                Some(Control::Regenerate) => {
                    end(EndReason::Regenerated).await;
                    let fresh = Claims {
                        id: SessionId::random(),
                        seen_ms: now,
                        ..*claims
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
                    headers::add_set_cookie(h, attrs.set_cookie(&snap.codec.encode(&fresh)));
                }
                None if *send_cookie => {
                    headers::add_set_cookie(h, attrs.set_cookie(&snap.codec.encode(claims)));
                }
                None => {}
            }
        }
        Sess::App { key, stored } => {
            if let KeySource::AppCookie(name) = &snap.source {
                if let Some(v) = app_cookie_set(h, name) {
                    let (learned, _) = snap.app_digest.digest(v);
                    // A pin learned from the backend always goes in (making
                    // room if a client's claim holds it); the same value set
                    // again on a stored session would only restart its clock.
                    if Some(learned) != *key || !*stored {
                        let rec = Record {
                            backend: b.id,
                            created_ms: now,
                            seen_ms: now,
                        };
                        if shared.store.insert(learned, rec).await == Insert::Full {
                            shared.metrics.store_full();
                        }
                    }
                }
            }
            if let (Some(k), Some(c)) = (key, control) {
                let reason = match c {
                    Control::End => EndReason::Ended,
                    Control::Regenerate => EndReason::Regenerated,
                };
                if *stored {
                    let _ = shared.store.end(*k, reason, now).await;
                } else {
                    // Never stored: forgetting the sighting is enough, and a
                    // tombstone must not be spent on a key anyone can invent.
                    shared.sightings.forget(*k);
                }
            }
        }
    }
}
