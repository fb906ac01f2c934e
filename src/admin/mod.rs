//! The admin listener: one route table (method, path) → handler, behind an
//! optional bearer token. Loopback by default; a separate listener so the
//! proxy's clients never reach it.

pub mod api;
pub mod chart;
pub mod page;
pub mod recorder;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::digest;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backends::{Admin as Switch, Backend, State};
use crate::body::Body;
use crate::history::History;
use crate::keys;
use crate::metrics::BackendView;
use crate::service::Shared;
use crate::store::SessionStore;

/// What the admin handlers read.
pub struct AdminState {
    /// The request path's shared state (snapshot, store, metrics).
    pub shared: Arc<Shared>,
    /// SHA-256 of the bearer token, when one is required.
    token: Option<digest::Digest>,
    /// When tether started.
    pub started: Instant,
    /// The recent past the status page draws.
    pub history: Arc<History>,
}

impl AdminState {
    /// `token`: the configured bearer token, if any.
    pub fn new(shared: Arc<Shared>, token: Option<&str>, history: Arc<History>) -> AdminState {
        AdminState {
            shared,
            token: token.map(|t| digest::digest(&digest::SHA256, t.as_bytes())),
            started: Instant::now(),
            history,
        }
    }

    /// Compares digests, so the time taken reveals neither the token's
    /// length nor how much of it matched.
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(want) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let got = digest::digest(&digest::SHA256, given.trim().as_bytes());
        keys::ct_eq(want.as_ref(), got.as_ref())
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The views the metrics and the page render from.
pub fn backend_views(shared: &Shared) -> Vec<BackendView> {
    let snap = shared.snapshot.load();
    snap.backends
        .iter()
        .zip(&snap.upstreams)
        .map(|(b, pool)| BackendView {
            name: b.name.to_string(),
            address: b.address.to_string(),
            weight: b.weight,
            state: b.state().as_str(),
            sessions: shared.store.sessions_on(b.id),
            index: b.id.0 as usize,
            drain_secs_left: api::drain_secs_left(b, shared.clock.now_ms()),
            upstream_connects: pool.connects(),
            upstream_idle: pool.idle_connections(),
        })
        .collect()
}

/// Routes one admin request.
pub async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    if !state.authorized(&req) {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "401 missing or wrong bearer token\n",
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"tether admin\""),
        );
        return r;
    }
    let shared = &state.shared;
    let snap = shared.snapshot.load_full();
    let path = req.uri().path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let find =
        |name: &str| -> Option<&Arc<Backend>> { snap.backends.iter().find(|b| &*b.name == name) };
    let method = req.method().clone();
    match (&method, segs.as_slice()) {
        (&Method::GET, [] | [""]) => {
            let mut r = Response::new(Body::full(page::render(&page_view(state))));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        (&Method::GET, ["metrics"]) => {
            let views = backend_views(shared);
            let body = shared.metrics.render(
                &views,
                shared.store.live(),
                state.started.elapsed().as_secs_f64(),
            );
            let mut r = Response::new(Body::full(body));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, ["live"]) => text(StatusCode::OK, "live\n"),
        (&Method::GET, ["ready"]) => {
            if snap.backends.iter().any(|b| b.state() == State::Up) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503 not ready: no backend is up\n",
                )
            }
        }
        (&Method::GET, ["api", "backends"]) => api::list(&snap.backends, shared),
        (_, ["api", "backends", name, rest @ ..]) => {
            let Some(b) = find(name) else {
                return text(StatusCode::NOT_FOUND, "404 no such backend\n");
            };
            match (&method, rest) {
                (&Method::GET, []) => api::json(StatusCode::OK, &api::object(b, shared)),
                (&Method::GET, ["drained"]) => api::drained(b, shared),
                (&Method::POST, ["drain"]) => match api::deadline(req.uri().query()) {
                    Ok(None) => api::switch(b, Switch::Draining, shared),
                    Ok(Some(d)) => api::drain_by(b, d, shared),
                    Err(why) => api::json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({ "error": why }),
                    ),
                },
                (&Method::POST, ["disable"]) => api::switch(b, Switch::Disabled, shared),
                (&Method::POST, ["enable"]) => api::switch(b, Switch::Normal, shared),
                (_, [] | ["drained" | "drain" | "disable" | "enable"]) => {
                    text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n")
                }
                _ => text(StatusCode::NOT_FOUND, "404 not found\n"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "404 not found\n"),
    }
}

fn page_view(state: &AdminState) -> page::StatusView {
    let shared = &state.shared;
    let snap = shared.snapshot.load();
    let samples = state.history.samples();
    let now = shared.clock.now_ms();
    let last = samples.last();
    page::StatusView {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started.elapsed().as_secs(),
        mode: if snap.sticky { "sticky" } else { "rotate" },
        live_sessions: shared.store.live(),
        store_kind: shared.store.kind(),
        backends: snap
            .backends
            .iter()
            .map(|b| page::BackendRow {
                name: b.name.to_string(),
                address: b.address.to_string(),
                weight: b.weight,
                state: b.state().as_str(),
                sessions: shared.store.sessions_on(b.id),
                requests: b.requests.load(std::sync::atomic::Ordering::Relaxed),
                errors: b.failures.load(std::sync::atomic::Ordering::Relaxed),
                req_rate: last
                    .and_then(|s| s.backend_rates.iter().find(|(n, _)| **n == *b.name))
                    .map_or(f64::NAN, |(_, r)| *r),
                drain_secs_left: api::drain_secs_left(b, now),
            })
            .collect(),
        now_ms: recorder::read_clock(),
        samples,
        events: state.history.events(),
    }
}

/// Serves the admin API on `listener` until `stop` flips.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}
