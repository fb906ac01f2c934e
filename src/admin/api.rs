//! `/api/backends`: list, one, drained, and the operator's drain / disable /
//! enable switches (SPEC section 6). Handlers take values and return
//! responses; routing and the token check live in `admin/mod.rs`.

use http::{Response, StatusCode};
use serde_json::json;

use crate::backends::{Admin, Backend};
use crate::body::Body;
use crate::store::{SessionStore, Store};

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

/// The SPEC's backend object, plus counters an operator wants beside it.
pub fn object(b: &Backend, store: &Store) -> serde_json::Value {
    json!({
        "name": &*b.name,
        "address": b.address.to_string(),
        "weight": b.weight,
        "state": b.state().as_str(),
        "sessions": store.sessions_on(b.id),
        "healthy": b.healthy(),
        "requests": b.requests.load(std::sync::atomic::Ordering::Relaxed),
        "failures": b.failures.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// `GET /api/backends`.
pub fn list(backends: &[std::sync::Arc<Backend>], store: &Store) -> Response<Body> {
    let all: Vec<_> = backends.iter().map(|b| object(b, store)).collect();
    json(StatusCode::OK, &serde_json::Value::Array(all))
}

/// `GET /api/backends/{name}/drained`: 200 once the backend takes no new
/// sessions (draining or disabled) and holds no live one; 409 before.
pub fn drained(b: &Backend, store: &Store) -> Response<Body> {
    let sessions = store.sessions_on(b.id);
    let switched = matches!(b.admin(), Admin::Draining | Admin::Disabled);
    let done = switched && sessions == 0;
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
pub fn switch(b: &Backend, to: Admin, store: &Store) -> Response<Body> {
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
    json(StatusCode::OK, &object(b, store))
}
