//! `/api/backends`: list, one, drained, and the operator's drain (with an
//! optional deadline) / disable / enable switches (SPEC sections 6 and 12).
//! Handlers take values and return responses; routing and the token check
//! live in `admin/mod.rs`.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::json;

use crate::backends::{Admin, Backend};
use crate::body::Body;
use crate::service::Shared;
use crate::store::SessionStore;

/// The longest drain deadline accepted: a week.
const MAX_DRAIN_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A JSON response.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(format!("{v}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Seconds until `b`'s drain deadline at session-clock `now_ms` (0 once it
/// has passed); `None` unless it is draining with one.
pub fn drain_secs_left(b: &Backend, now_ms: u64) -> Option<f64> {
    b.drain_deadline()
        .map(|d| d.saturating_sub(now_ms) as f64 / 1000.0)
}

/// The SPEC's backend object, plus counters an operator wants beside it.
/// A backend draining with a deadline also says how long is left.
pub fn object(b: &Backend, shared: &Shared) -> serde_json::Value {
    let mut o = json!({
        "name": &*b.name,
        "address": b.address.to_string(),
        "weight": b.weight,
        "state": b.state().as_str(),
        "sessions": shared.store.sessions_on(b.id),
        "healthy": b.healthy(),
        "requests": b.requests.load(std::sync::atomic::Ordering::Relaxed),
        "failures": b.failures.load(std::sync::atomic::Ordering::Relaxed),
    });
    if let Some(d) = b.drain_deadline() {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(d);
        o["drain_deadline"] = json!(humantime::format_rfc3339_seconds(at).to_string());
    }
    if let Some(left) = drain_secs_left(b, shared.clock.now_ms()) {
        o["drain_deadline_secs_left"] = json!(left);
    }
    o
}

/// `GET /api/backends`.
pub fn list(backends: &[std::sync::Arc<Backend>], shared: &Shared) -> Response<Body> {
    let all: Vec<_> = backends.iter().map(|b| object(b, shared)).collect();
    json(StatusCode::OK, &serde_json::Value::Array(all))
}

/// The `deadline` of a drain's query string (`?deadline=10m`): `None`
/// without one.
///
/// # Errors
/// A message for the operator: not a duration, zero, or longer than a week.
pub fn deadline(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(v) = query.and_then(|q| crate::session::source::query_param(q, "deadline")) else {
        return Ok(None);
    };
    let d = humantime::parse_duration(v).map_err(|e| {
        format!("invalid deadline {v:?} ({e}): expected a duration like 10m or 1h30m")
    })?;
    if d.is_zero() || d > MAX_DRAIN_DEADLINE {
        return Err(format!(
            "invalid deadline {v:?}: expected more than 0 and at most 7 days"
        ));
    }
    Ok(Some(d))
}

/// `POST /api/backends/{name}/drain?deadline=D`: drains, and when `d` has
/// passed the sessions still pinned there fail over.
pub fn drain_by(b: &Arc<Backend>, d: Duration, shared: &Arc<Shared>) -> Response<Body> {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let until = shared.clock.now_ms().saturating_add(ms);
    b.drain_by(until);
    // Sessions move on their next request; the log says when that began.
    let (b2, shared2) = (b.clone(), shared.clone());
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        if b2.drain_deadline() == Some(until) {
            tracing::warn!(
                backend = &*b2.name,
                sessions = shared2.store.sessions_on(b2.id),
                "drain deadline passed: the sessions still pinned here fail over on their next request"
            );
        }
    });
    tracing::info!(
        backend = &*b.name,
        deadline = %humantime::format_duration(d),
        sessions = shared.store.sessions_on(b.id),
        "operator set backend to draining with a deadline; sessions still there then fail over"
    );
    json(StatusCode::OK, &object(b, shared))
}

/// `GET /api/backends/{name}/drained`: 200 once the backend takes no new
/// sessions (draining or disabled) and holds no live one; 409 before.
pub fn drained(b: &Backend, shared: &Shared) -> Response<Body> {
    let store = &shared.store;
    let sessions = store.sessions_on(b.id);
    let switched = matches!(b.admin(), Admin::Draining | Admin::Disabled);
    // Past a drain's deadline the sessions left are moving away: stopping
    // the backend now loses nothing they still need from it.
    let passed = b.drain_expired(shared.clock.now_ms());
    let done = switched && (sessions == 0 || passed);
    let status = if done {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    json(
        status,
        &json!({"name": &*b.name, "state": b.state().as_str(), "sessions": sessions, "drained": done}),
    )
}

/// `POST /api/backends/{name}/{drain|disable|enable}`: sets the operator's
/// switch and answers with the backend's object.
pub fn switch(b: &Backend, to: Admin, shared: &Shared) -> Response<Body> {
    let before = b.set_admin(to);
    if before != to {
        tracing::info!(
            backend = &*b.name,
            state = b.state().as_str(),
            "operator set backend to {}",
            match to {
                Admin::Normal => "enabled",
                Admin::Draining => "draining",
                Admin::Disabled => "disabled",
            }
        );
    }
    json(StatusCode::OK, &object(b, shared))
}
