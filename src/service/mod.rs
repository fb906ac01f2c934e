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
use crate::error::{self, ProxyError};
use crate::headers;
use crate::hygiene;
use crate::metrics::{Metrics, PinLost, SessionEvent};
use crate::session::cookie::{find_cookie, Claims, SessionId};
use crate::session::decide::{self, Decision, Gone, PinLoss, Presented, Route, Write};
use crate::session::memo::CookieMemo;
use crate::session::source::{app_key, learned_key, KeySource};
use crate::session::{Control, Pin, SessionState};
use crate::snapshot::Snapshot;
use crate::store::{EndReason, Found, Insert, Record, SessionKey, SessionStore, Sightings, Store};
use crate::upgrade::{self, Upgrades};
use crate::upstream::{Failure, Lease, SendError};

mod forward;
mod plan;

use forward::{attempt, delivered, outbound, plans_at_once, retry, Outbound};
use plan::{app_plan, commit, cookie_plan};

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
        /// The session header's value as the request carried it (header
        /// source only): a server that names the session again on every
        /// answer is recognised without a digest.
        carried: Option<http::HeaderValue>,
    },
}

/// Serves one request. Never fails: errors become the SPEC's status codes.
/// `memo`: the connection's last verified tether cookie. `ambiguous`: the
/// framing tracker saw both Content-Length and Transfer-Encoding on this
/// request's head (see `framing.rs`); `hygiene.rs` refuses it.
pub async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    memo: Arc<CookieMemo>,
    ambiguous: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let snap = shared.snapshot.load_full();
    // One read of the machine's clock serves the access log's start, the
    // session clock and, where nothing waits in between, the first
    // attempt's start (see `proxy`).
    let arrived = Instant::now();
    // Copies only when the access log wants them.
    let log = snap
        .access_log
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    // The request is gone once proxied; an error answer still needs to know
    // whether it speaks to a gRPC client.
    let grpc = error::is_grpc(req.headers());
    let outcome = match hygiene::check(&req, snap.max_header_bytes, ambiguous) {
        Ok(()) => proxy(&shared, &snap, conn, &memo, arrived, req).await,
        Err(e) => Err((e, None)),
    };
    let (resp, backend, state, status) = match outcome {
        Ok((resp, backend, state)) => {
            let status = resp.status().as_u16();
            (resp, backend, state, status)
        }
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
            // Metrics and the access log count tether's status, also when a
            // gRPC client is told it as a grpc-status under HTTP 200.
            let resp = if grpc {
                e.grpc_response()
            } else {
                e.response()
            };
            (resp, backend.cloned(), None, e.status().as_u16())
        }
    };
    shared
        .metrics
        .request(backend.as_ref().map(|b| b.id.0 as usize), status);
    if let Some(state) = state {
        shared.metrics.session(event_of(state));
    }
    if let Some((method, path)) = log {
        tracing::info!(
            target: "tether::access",
            client = %conn.peer.ip(),
            %method,
            path,
            status,
            backend = backend.as_ref().map_or("-", |b| &*b.name),
            session = state.map_or("-", SessionState::as_str),
            duration_ms = arrived.elapsed().as_secs_f64() * 1000.0,
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
                Gone::DrainDeadline => PinLost::DrainDeadline,
            }
        }
    };
    shared.metrics.pin_lost(reason);
}

/// Routes one request that passed hygiene, sends it, and carries the
/// session's outcome back on the response. `arrived`: when `handle` took
/// the request, the one clock read the session clock is judged by.
async fn proxy<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    conn: ConnInfo,
    memo: &CookieMemo,
    arrived: Instant,
    mut req: Request<Incoming>,
) -> Result<Done, (ProxyError, Option<&'s Arc<Backend>>)> {
    let now = shared.clock.ms_at(arrived);
    // Each async layer is a future moved whole into its caller's state, so
    // the request path awaits the planning and sending steps directly.
    let planned = match &snap.source {
        _ if !snap.sticky => None,
        KeySource::Cookie(name) => {
            Some(cookie_plan(shared, snap, conn, memo, &req, name, now).await)
        }
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
    let Outbound {
        req,
        replayable,
        watch,
    } = outbound(snap, conn, req, plan.state);
    let at_once = plans_at_once(snap.sticky, matches!(shared.store, Store::Memory(_)));
    let sent_at = attempt(&snap.backends[plan.backend], at_once.then_some(arrived));
    let sent = snap.upstreams[plan.backend]
        .send(req, replayable, watch.as_deref(), &snap.upstream_timeouts)
        .await;
    let (mut resp, lease) = match sent {
        Ok(ok) => {
            delivered(shared, &snap.backends[plan.backend], sent_at);
            ok
        }
        // Rare, and boxed so that the retry's state does not widen every
        // request's future (moved whole at each await).
        Err(e) => {
            Box::pin(retry(
                shared, snap, conn, &mut plan, e, replayable, watch, now,
            ))
            .await?
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
