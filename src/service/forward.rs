//! The upstream half of the request path: the request as a backend receives
//! it, what a failed attempt means, and the one safe retry on the next
//! backend (the session moving with it).

use super::*;

/// The request as the first backend receives it, and what a second attempt
/// needs.
pub(super) struct Outbound {
    pub(super) req: Request<Body>,
    /// Whether the request can be rebuilt and sent again.
    pub(super) replayable: bool,
    /// Set when the request has a body that can break or stall.
    pub(super) watch: Option<Arc<BodyWatch>>,
}

/// Rewrites the client's request for the backend.
pub(super) fn outbound(
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
    let replayable = is_idempotent(&parts.method) && http_body::Body::is_end_stream(&body);
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
        replayable,
        watch,
    }
}

/// Counts an attempt on `b`; when it started: `read`, a clock read the
/// caller made with nothing but CPU work since (see [`plans_at_once`]), or
/// else now.
#[inline]
pub(super) fn attempt(b: &Backend, read: Option<Instant>) -> Instant {
    b.requests.fetch_add(1, Ordering::Relaxed);
    read.unwrap_or_else(Instant::now)
}

/// Whether a request's session is planned without waiting on anything: in
/// rotate mode, or on the memory store, whose calls return at once. Then
/// the instant the request arrived stands for the start of its first
/// attempt: microseconds of CPU work lie between them (the cookie, the
/// store's map, the headers), far inside the latency histogram's finest
/// bucket (1 ms), and a second read of the clock would only measure them.
/// A Redis store's round trip lies between them otherwise: the attempt
/// reads the clock itself, and the backend's latency stays its own.
#[inline]
pub(super) fn plans_at_once(sticky: bool, memory_store: bool) -> bool {
    !sticky || memory_store
}

/// A response head came back from `b`.
#[inline]
pub(super) fn delivered(shared: &Shared, b: &Backend, sent_at: Instant) {
    b.passive_success();
    shared
        .metrics
        .upstream_latency(b.id.0 as usize, sent_at.elapsed());
}

/// After the first attempt failed: when that left the request replayable,
/// once more on the next backend, moving the session with it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn retry<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    conn: ConnInfo,
    plan: &mut Plan,
    first: SendError,
    replayable: bool,
    watch: Option<Arc<BodyWatch>>,
    now: u64,
) -> Result<(Response<Incoming>, Lease), (ProxyError, Option<&'s Arc<Backend>>)> {
    let b = &snap.backends[plan.backend];
    let (err, again) = failed(snap, b, watch.as_deref(), first).map_err(|e| (e, Some(b)))?;
    if matches!(err, ProxyError::Connect { .. }) && strict_pinned(snap, plan) {
        // Nothing was sent and the session may not move: it is told to come
        // back, as when its backend is known to be down.
        return Err((ProxyError::NoBackend, Some(b)));
    }
    let Some((mut r, next)) = again.and_then(|r| next_backend(snap, plan).map(|n| (r, n))) else {
        return Err((err, Some(b)));
    };
    tracing::warn!(backend = &*b.name, peer = %conn.peer, error = %err, "retrying on the next backend");
    move_after_retry(shared, snap, plan, next, &mut r, now).await;
    let b = &snap.backends[plan.backend];
    let sent_at = attempt(b, None);
    let sent = snap.upstreams[plan.backend]
        .send(r, replayable, watch.as_deref(), &snap.upstream_timeouts)
        .await;
    match sent {
        Ok(ok) => {
            delivered(shared, b, sent_at);
            Ok(ok)
        }
        Err(e) => {
            let (err, _) = failed(snap, b, watch.as_deref(), e).map_err(|e| (e, Some(b)))?;
            Err((err, Some(b)))
        }
    }
}

/// What a failed attempt on backend `b` means. `Err`: the client's body
/// broke or stalled, its fault and not the backend's. `Ok`: the backend's
/// error, and the request to try elsewhere when nothing reached `b` or the
/// request was rebuilt.
pub(super) fn failed(
    snap: &Snapshot,
    b: &Backend,
    watch: Option<&BodyWatch>,
    sent: SendError,
) -> Result<(ProxyError, Option<Request<Body>>), ProxyError> {
    let SendError {
        failure,
        request,
        replay,
    } = sent;
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
            replay,
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
pub(super) fn is_idempotent(m: &http::Method) -> bool {
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

/// The backend to retry on after the first one refused the connection.
pub(super) fn next_backend(snap: &Snapshot, plan: &Plan) -> Option<usize> {
    if strict_pinned(snap, plan) {
        return None;
    }
    if snap.sticky {
        snap.balancer
            .failover(plan.ring_key, Some(plan.backend), &snap.backends)
    } else {
        snap.balancer.rotate_retry(plan.backend, &snap.backends)
    }
}

/// `strict`: a live session on its pin never leaves it, not even for a
/// retry.
fn strict_pinned(snap: &Snapshot, plan: &Plan) -> bool {
    snap.strict && plan.state == SessionState::Continued
}

/// After a retry moved a request to backend `next`, a sticky session moves
/// with it: a live session's pin is lost (`failover`), a session minted for
/// this request only changed its first placement.
pub(super) async fn move_after_retry(
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
            ..
        } => {
            shared.store.repin(*k, b.id, now).await;
        }
        Sess::App { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::plans_at_once;

    #[test]
    fn the_arrival_starts_the_first_attempt_only_when_planning_waits_on_nothing() {
        // (sticky, memory store) -> the arrival's clock read stands for the attempt's start
        let table = [
            (false, true, true),
            (false, false, true),
            (true, true, true),
            (true, false, false),
        ];
        for (sticky, memory, want) in table {
            assert_eq!(plans_at_once(sticky, memory), want, "{sticky} {memory}");
        }
    }
}
