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
use http::header::{COOKIE, HOST};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::body::{Body, OnEnd};
use crate::clock::Clock;
use crate::error::ProxyError;
use crate::headers;
use crate::session::cookie::{find_cookie, Claims, SessionId};
use crate::session::source::{app_cookie_set, app_key, KeySource};
use crate::session::{self, Control, Pin, SessionState, Standing};
use crate::snapshot::Snapshot;
use crate::store::{EndReason, Record, SessionKey, SessionStore, Store};
use crate::upstream::{Failure, SendError};

/// What every request shares: the current snapshot, the store, the clock.
#[derive(Debug)]
pub struct Shared {
    /// Swapped whole by reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Session store.
    pub store: Store,
    /// Time source.
    pub clock: Clock,
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
    /// An app's key: its store key and the raw value (to notice a new value in Set-Cookie).
    App { key: Option<SessionKey> },
}

/// Serves one request. Never fails: errors become the SPEC's status codes.
pub async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let snap = shared.snapshot.load_full();
    let started = Instant::now();
    let log = snap
        .access_log
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    let (resp, backend, state) = match proxy(&shared, &snap, conn, req).await {
        Ok(done) => done,
        Err((e, backend)) => {
            match e.status() {
                StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
                    tracing::warn!(peer = %conn.peer, backend = backend.unwrap_or("-"), error = %e, "upstream failed")
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    tracing::warn!(peer = %conn.peer, "no eligible backend")
                }
                _ => tracing::debug!(peer = %conn.peer, error = %e, "request refused"),
            }
            (e.response(), backend.map(str::to_owned), None)
        }
    };
    if let Some((method, path)) = log {
        tracing::info!(
            target: "tether::access",
            client = %conn.peer.ip(),
            %method,
            path,
            status = resp.status().as_u16(),
            backend = backend.as_deref().unwrap_or("-"),
            session = state.map_or("-", SessionState::as_str),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        );
    }
    Ok(resp)
}

type Done = (Response<Body>, Option<String>, Option<SessionState>);

async fn proxy<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    conn: ConnInfo,
    mut req: Request<Incoming>,
) -> Result<Done, (ProxyError, Option<&'s str>)> {
    // Request hygiene the codec does not already enforce.
    if headers::head_size_of(&req) > snap.max_header_bytes {
        return Err((
            ProxyError::HeadTooLarge {
                limit: snap.max_header_bytes,
            },
            None,
        ));
    }
    if req.version() == Version::HTTP_11 && req.headers().get_all(HOST).iter().count() != 1 {
        return Err((
            ProxyError::BadRequest("HTTP/1.1 needs exactly one Host"),
            None,
        ));
    }

    let now = shared.clock.now_ms();
    let mut plan = if snap.sticky {
        sticky_plan(shared, snap, &req, now).await
    } else {
        snap.balancer.rotate(&snap.backends).map(|b| Plan {
            state: SessionState::Rotated,
            backend: b,
            ring_key: 0,
            session: Sess::None,
        })
    }
    .ok_or((ProxyError::NoBackend, None))?;

    let client_upgrade = headers::wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let strip = snap.strip_cookie.then_some(snap.cookie_plain.name.as_str());
    headers::to_upstream(&mut parts, conn.peer.ip(), conn.tls, strip);
    headers::set_session_state(&mut parts.headers, plan.state);
    let mut req = Request::from_parts(parts, body);

    // First attempt; one retry elsewhere if it never reached the backend.
    let mut attempt = 0;
    let (mut resp, lease) = loop {
        let b = &snap.backends[plan.backend];
        b.requests.fetch_add(1, Ordering::Relaxed);
        match snap.upstreams[plan.backend]
            .send(req, &snap.upstream_timeouts)
            .await
        {
            Ok(ok) => {
                b.failure_streak.store(0, Ordering::Relaxed);
                break ok;
            }
            Err(SendError { failure, request }) => {
                b.failures.fetch_add(1, Ordering::Relaxed);
                let name = &*b.name;
                let err = match failure {
                    Failure::Connect(source) => {
                        b.failure_streak.fetch_add(1, Ordering::Relaxed);
                        ProxyError::Connect {
                            backend: name.to_string(),
                            source,
                        }
                    }
                    Failure::Broken(source) => ProxyError::Upstream {
                        backend: name.to_string(),
                        source,
                    },
                    Failure::Timeout => ProxyError::Timeout {
                        backend: name.to_string(),
                    },
                };
                let retry = match (request, attempt) {
                    (Some(r), 0) if err.retry_safe() => next_backend(snap, &plan).map(|n| (r, n)),
                    _ => None,
                };
                let Some((mut r, next)) = retry else {
                    return Err((err, Some(name)));
                };
                tracing::warn!(backend = name, peer = %conn.peer, error = %err, "retrying on the next backend");
                attempt += 1;
                plan.backend = next;
                if snap.sticky {
                    plan.state = SessionState::Failover;
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
            tokio::spawn(splice(client_upgrade, upstream_upgrade));
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
        Some(backend.name.to_string()),
        Some(plan.state),
    ))
}

/// Copies bytes both ways between an upgraded client and backend until either side closes.
async fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let mut c = hyper_util::rt::TokioIo::new(c);
            let mut u = hyper_util::rt::TokioIo::new(u);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection closed with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
    }
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
fn mint(shared: &Shared, snap: &Snapshot, state: SessionState, now: u64) -> Option<Plan> {
    let id = SessionId::random();
    let ring_key = ring_key_of(id);
    let i = snap
        .balancer
        .pick_new(ring_key, &snap.backends, snap.balance_factor, |b| {
            shared.store.sessions_on(b.id)
        })?;
    Some(Plan {
        state,
        backend: i,
        ring_key,
        session: Sess::Cookie {
            claims: Claims {
                id,
                backend: snap.backends[i].tag,
                issued_ms: now,
                seen_ms: now,
                binding: 0,
            },
            send_cookie: true,
            stored: false,
        },
    })
}

async fn sticky_plan(
    shared: &Shared,
    snap: &Snapshot,
    req: &Request<Incoming>,
    now: u64,
) -> Option<Plan> {
    let t = snap.timeouts;
    if let KeySource::Cookie(name) = &snap.source {
        let claims = find_cookie(req.headers().get_all(COOKIE).iter(), name)
            .and_then(|v| snap.codec.decode(v));
        let Some(c) = claims else {
            return mint(shared, snap, SessionState::New, now);
        };
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
            let state = if standing == Standing::Fresh {
                SessionState::New
            } else {
                SessionState::Expired
            };
            return mint(shared, snap, state, now);
        };
        let key = SessionKey(c.id.as_u128());
        let ring_key = ring_key_of(c.id);
        let (state, i) = match resolve(snap, pin) {
            Some(i) if snap.backends[i].eligible_for_existing() => (SessionState::Continued, i),
            gone => {
                let j = snap.balancer.failover(ring_key, gone, &snap.backends)?;
                tracing::info!(
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
            let _ = shared.store.insert(key, rec).await;
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
        return Some(Plan {
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
            })?;
        return Some(Plan {
            state: SessionState::New,
            backend: i,
            ring_key,
            session: Sess::App { key: None },
        });
    };
    let (key, ring_key) = snap.app_digest.digest(value);
    let found = shared.store.get_touch(key, now).await;
    let (state, i) = match session::standing_for_app_key(found) {
        Standing::Live { pin, .. } => match resolve(snap, pin) {
            Some(i) if snap.backends[i].eligible_for_existing() => (SessionState::Continued, i),
            gone => {
                let j = snap.balancer.failover(ring_key, gone, &snap.backends)?;
                shared.store.repin(key, snap.backends[j].id, now).await;
                (SessionState::Failover, j)
            }
        },
        fresh_or_over => {
            let i = snap
                .balancer
                .pick_new(ring_key, &snap.backends, snap.balance_factor, |b| {
                    shared.store.sessions_on(b.id)
                })?;
            let rec = Record {
                backend: snap.backends[i].id,
                created_ms: now,
                seen_ms: now,
            };
            let _ = shared.store.insert(key, rec).await;
            let state = if fresh_or_over == Standing::Fresh {
                SessionState::New
            } else {
                SessionState::Expired
            };
            (state, i)
        }
    };
    Some(Plan {
        state,
        backend: i,
        ring_key,
        session: Sess::App { key: Some(key) },
    })
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
        Sess::App { key: Some(k) } => {
            shared.store.repin(*k, b.id, now).await;
        }
        Sess::App { key: None } => {}
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
            ..
        } => {
            let attrs = snap.cookie_attrs(conn.tls);
            let key = SessionKey(claims.id.as_u128());
            match control {
                Some(Control::End) => {
                    let _ = shared.store.end(key, EndReason::Ended, now).await;
                    headers::add_set_cookie(h, attrs.clear_cookie());
                }
                Some(Control::Regenerate) => {
                    let _ = shared.store.end(key, EndReason::Regenerated, now).await;
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
        Sess::App { key } => {
            if let KeySource::AppCookie(name) = &snap.source {
                if let Some(v) = app_cookie_set(h, name) {
                    let (learned, _) = snap.app_digest.digest(v);
                    if Some(learned) != *key {
                        let rec = Record {
                            backend: b.id,
                            created_ms: now,
                            seen_ms: now,
                        };
                        let _ = shared.store.insert(learned, rec).await;
                    }
                }
            }
            if let (Some(k), Some(c)) = (key, control) {
                let reason = match c {
                    Control::End => EndReason::Ended,
                    Control::Regenerate => EndReason::Regenerated,
                };
                let _ = shared.store.end(*k, reason, now).await;
            }
        }
    }
}
