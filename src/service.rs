//! The HTTP service, the spine of the request path: hygiene -> affinity key
//! -> session decision -> backend -> headers out -> upstream (+ one safe
//! retry) -> session commit and control -> headers back. It is the only
//! request-path room that calls the others; they take values and return
//! values. What a session comes to is `session::decide`'s call; this file
//! asks the store, carries the decision out and counts it.

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
use crate::session::decide::{self, Decision, Gone, PinLoss, Presented, Route, Write};
use crate::session::source::{app_cookie_set, app_key, KeySource};
use crate::session::{Control, Pin, SessionState};
use crate::snapshot::Snapshot;
use crate::store::{EndReason, Found, Insert, Record, SessionKey, SessionStore, Sightings, Store};
use crate::upgrade::{self, Upgrades};
use crate::upstream::{Failure, Lease, Replay, SendError};

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

/// A session decision carried out: what the rest of the exchange (a retry,
/// the commit) needs to know.
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

/// Counts a pin a session lost: the one place the metrics learn of it.
fn count_pin_lost(shared: &Shared, snap: &Snapshot, lost: PinLoss, to: usize) {
    let reason = match lost {
        PinLoss::Over(EndReason::Idle) => PinLost::Idle,
        PinLoss::Over(EndReason::Absolute) => PinLost::Absolute,
        PinLoss::Over(EndReason::Ended) => PinLost::Ended,
        PinLoss::Over(EndReason::Regenerated) => PinLost::Regenerated,
        PinLoss::Moved { from, why } => {
            tracing::debug!(
                from = from.map_or("(removed)", |g| &*snap.backends[g].name),
                to = &*snap.backends[to].name,
                "session failed over"
            );
            match why {
                Gone::Down => PinLost::BackendDown,
                Gone::Disabled => PinLost::BackendDisabled,
                Gone::Removed => PinLost::BackendRemoved,
            }
        }
    };
    shared.metrics.pin_lost(reason);
}

/// Routes one request that passed hygiene, sends it, and carries the
/// session's outcome back on the response.
async fn proxy<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    conn: ConnInfo,
    mut req: Request<Incoming>,
) -> Result<Done, (ProxyError, Option<&'s Arc<Backend>>)> {
    let now = shared.clock.now_ms();
    // Each async layer is a future moved whole into its caller's state, so
    // the request path awaits the planning and sending steps directly.
    let planned = match &snap.source {
        _ if !snap.sticky => None,
        KeySource::Cookie(name) => Some(cookie_plan(shared, snap, conn, &req, name, now).await),
        _ => Some(app_plan(shared, snap, conn, &req, now).await),
    };
    let mut plan = if let Some(planned) = planned {
        planned.map_err(|e| (e, None))?
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
    let Outbound { req, replay, watch } = outbound(snap, conn, req, plan.state);
    let sent_at = attempt(&snap.backends[plan.backend]);
    let sent = snap.upstreams[plan.backend]
        .send(
            req,
            replay.as_ref(),
            watch.as_deref(),
            &snap.upstream_timeouts,
        )
        .await;
    let (mut resp, lease) = match sent {
        Ok(ok) => {
            delivered(shared, &snap.backends[plan.backend], sent_at);
            ok
        }
        // Rare, and boxed so that the retry's state does not widen every
        // request's future (moved whole at each await).
        Err(e) => Box::pin(retry(shared, snap, conn, &mut plan, e, replay, watch, now)).await?,
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

/// The request as the first backend receives it, and what a second attempt
/// needs.
struct Outbound {
    req: Request<Body>,
    /// Set when the request can be rebuilt and sent again.
    replay: Option<Replay>,
    /// Set when the request has a body that can break or stall.
    watch: Option<Arc<BodyWatch>>,
}

/// Rewrites the client's request for the backend.
fn outbound(
    snap: &Snapshot,
    conn: ConnInfo,
    req: Request<Incoming>,
    state: SessionState,
) -> Outbound {
    let (mut parts, body) = req.into_parts();
    let strip = snap.strip_cookie.then_some(snap.cookie_plain.name.as_str());
    headers::to_upstream(&mut parts, conn.peer.ip(), conn.tls, strip);
    headers::set_session_state(&mut parts.headers, state);
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
    Outbound {
        req: Request::from_parts(parts, body),
        replay,
        watch,
    }
}

/// Counts an attempt on `b`; when it started.
#[inline]
fn attempt(b: &Backend) -> Instant {
    b.requests.fetch_add(1, Ordering::Relaxed);
    Instant::now()
}

/// A response head came back from `b`.
#[inline]
fn delivered(shared: &Shared, b: &Backend, sent_at: Instant) {
    b.passive_success();
    shared
        .metrics
        .upstream_latency(b.id.0 as usize, sent_at.elapsed());
}

/// After the first attempt failed: when that left the request replayable,
/// once more on the next backend, moving the session with it.
#[allow(clippy::too_many_arguments)]
async fn retry<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    conn: ConnInfo,
    plan: &mut Plan,
    first: SendError,
    replay: Option<Replay>,
    watch: Option<Arc<BodyWatch>>,
    now: u64,
) -> Result<(Response<Incoming>, Lease), (ProxyError, Option<&'s Arc<Backend>>)> {
    let b = &snap.backends[plan.backend];
    let SendError { failure, request } = first;
    let (err, again) = failed(snap, b, watch.as_deref(), failure, request, replay.as_ref())
        .map_err(|e| (e, Some(b)))?;
    let Some((mut r, next)) = again.and_then(|r| next_backend(snap, plan).map(|n| (r, n))) else {
        return Err((err, Some(b)));
    };
    tracing::warn!(backend = &*b.name, peer = %conn.peer, error = %err, "retrying on the next backend");
    move_after_retry(shared, snap, plan, next, &mut r, now).await;
    let b = &snap.backends[plan.backend];
    let sent_at = attempt(b);
    let sent = snap.upstreams[plan.backend]
        .send(
            r,
            replay.as_ref(),
            watch.as_deref(),
            &snap.upstream_timeouts,
        )
        .await;
    match sent {
        Ok(ok) => {
            delivered(shared, b, sent_at);
            Ok(ok)
        }
        Err(SendError { failure, request }) => {
            let (err, _) = failed(snap, b, watch.as_deref(), failure, request, replay.as_ref())
                .map_err(|e| (e, Some(b)))?;
            Err((err, Some(b)))
        }
    }
}

/// What a failed attempt on backend `b` means. `Err`: the client's body
/// broke or stalled, its fault and not the backend's. `Ok`: the backend's
/// error, and the request to try elsewhere when nothing reached `b` or the
/// request can be rebuilt.
fn failed(
    snap: &Snapshot,
    b: &Backend,
    watch: Option<&BodyWatch>,
    failure: Failure,
    request: Option<Request<Body>>,
    replay: Option<&Replay>,
) -> Result<(ProxyError, Option<Request<Body>>), ProxyError> {
    match (watch.map_or(0, BodyWatch::get), &failure) {
        (BODY_BROKEN, Failure::Broken(_) | Failure::Dropped(_)) => {
            return Err(ProxyError::BadRequest("malformed request body"));
        }
        (BODY_STALLED, Failure::Broken(_) | Failure::Dropped(_)) => {
            return Err(ProxyError::BodyTimeout);
        }
        _ => {}
    }
    let name = &*b.name;
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
    Ok(match failure {
        Failure::Connect(source) => (
            ProxyError::Connect {
                backend: name.to_string(),
                source,
            },
            request,
        ),
        Failure::Broken(source) | Failure::Dropped(source) => (
            ProxyError::Upstream {
                backend: name.to_string(),
                source,
            },
            replay.map(Replay::build),
        ),
        Failure::Timeout => (
            ProxyError::Timeout {
                backend: name.to_string(),
            },
            None,
        ),
    })
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

/// The backend table as `session::decide` sees it: this snapshot's
/// backends, their status and its ring.
struct View<'s>(&'s Snapshot);

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
            None
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

/// A session carried by tether's own cookie.
async fn cookie_plan(
    shared: &Shared,
    snap: &Snapshot,
    conn: ConnInfo,
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
    let mut claims =
        find_cookie(req.headers().get_all(COOKIE).iter(), name).and_then(|v| snap.codec.decode(v));
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
    let d = decide::for_cookie(&presented, found, now, t, &View(snap));
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
async fn app_plan(
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
            let d = decide::for_app_key(found, seen, ring_key, &View(snap));
            (d, Some(key), ring_key)
        }
    };
    new_session_allowed(shared, snap, conn, &d)?;
    let (i, stored) = carry_out(shared, snap, &d, key, ring_key, now).await?;
    Ok(Plan {
        state: d.state,
        backend: i,
        ring_key,
        session: Sess::App { key, stored },
    })
}

/// A pin stored under a previous secret (before a rotation), moved to the
/// key `value` has now. Boxed by the caller: only an unknown key with
/// previous secrets configured pays for it.
async fn carry_over(
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
async fn carry_out(
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
            .pick_new(ring_key, &snap.backends, snap.balance_factor, |b| {
                shared.store.sessions_on(b.id)
            })
            .ok_or(ProxyError::NoBackend)?,
        Route::Ring => snap
            .balancer
            .pick_new(ring_key, &snap.backends, 0.0, |_| 0)
            .ok_or(ProxyError::NoBackend)?,
        Route::Nowhere => return Err(ProxyError::NoBackend),
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
fn session_allowed(shared: &Shared, snap: &Snapshot, id: u128) -> Result<(), ProxyError> {
    snap.limits.session(id).map_err(|retry_after_secs| {
        shared.metrics.rate_limited(false);
        ProxyError::RateLimited { retry_after_secs }
    })
}

/// `new_session_rate` for a client the decision counts as starting a
/// session: a 429 once it is spent.
fn new_session_allowed(
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

/// The backend to retry on after the first one refused the connection.
fn next_backend(snap: &Snapshot, plan: &Plan) -> Option<usize> {
    if snap.sticky {
        snap.balancer
            .failover(plan.ring_key, Some(plan.backend), &snap.backends)
    } else {
        snap.balancer.rotate_retry(plan.backend, &snap.backends)
    }
}

/// After a retry moved a request to backend `next`, a sticky session moves
/// with it: a live session's pin is lost (`failover`), a session minted for
/// this request only changed its first placement.
async fn move_after_retry(
    shared: &Shared,
    snap: &Snapshot,
    plan: &mut Plan,
    next: usize,
    r: &mut Request<Body>,
    now: u64,
) {
    let from = plan.backend;
    plan.backend = next;
    if !snap.sticky {
        return;
    }
    let (state, pin_lost) = plan.state.after_retry();
    if pin_lost {
        let lost = PinLoss::Moved {
            from: Some(from),
            why: Gone::Down,
        };
        count_pin_lost(shared, snap, lost, next);
    }
    plan.state = state;
    headers::set_session_state(r.headers_mut(), plan.state);
    let b = &snap.backends[next];
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
        Sess::App { key, stored } => {
            learn_app_cookie(shared, snap, h, b, key, stored, now).await;
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
async fn end_stored(shared: &Shared, key: Option<SessionKey>, reason: EndReason, now: u64) {
    if let Some(key) = key {
        if shared.store.end(key, reason, now).await == Insert::Full {
            shared.metrics.store_full();
        }
    }
}

/// A new id for a session, pinned to the same backend (`regenerate`);
/// stored at once, since its cookie goes out with this response.
async fn regenerate(shared: &Shared, b: &Backend, claims: Claims, now: u64) -> Claims {
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

/// Stores the pin a backend teaches by setting the app's cookie on its
/// response (`key`: the key the request carried, `stored`: whether the store
/// holds it).
async fn learn_app_cookie(
    shared: &Shared,
    snap: &Snapshot,
    h: &http::HeaderMap,
    b: &Backend,
    key: Option<SessionKey>,
    stored: bool,
    now: u64,
) {
    let KeySource::AppCookie(name) = &snap.source else {
        return;
    };
    let Some(v) = app_cookie_set(h, name) else {
        return;
    };
    let (learned, _) = snap.app_digest.digest(v);
    // A pin learned from the backend always goes in (making room if a
    // client's claim holds it); the same value set again on a stored session
    // would only restart its clock.
    if Some(learned) != key || !stored {
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
