//! An MCP-style backend (the streamable HTTP transport, reduced to what a
//! proxy sees): the server names each session in an `Mcp-Session-Id`
//! response header and keeps its state in memory, so every later request of
//! the session must come back to this very server.
//!
//! - `POST` `initialize` without the header: 200 and a fresh
//!   `Mcp-Session-Id` (128 random bits), remembered.
//! - `POST` with a known id: 200 and a JSON-RPC result (202 for a
//!   notification); an unknown id gets 404, as MCP servers answer.
//! - `GET` with `Accept: text/event-stream` and a known id: a long-lived
//!   event stream, one event every `every`, until the client goes away or
//!   the session is deleted.
//! - `DELETE` with a known id: the session is forgotten (200).
//! - `GET /healthz`: 200, for tether's health checks.
//!
//! Every answer names the server in `x-backend`. Shared by the `mcp` example
//! and `tests/learned.rs`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// The header the server names its sessions in.
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
/// The header every answer names its server in.
pub const X_BACKEND: HeaderName = HeaderName::from_static("x-backend");
/// Largest JSON-RPC message read.
const MAX_MESSAGE: usize = 64 * 1024;

/// How a server behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pause between two events of a stream.
    pub every: Duration,
    /// Lockstep: event k > 0 is written only once [`McpServer::release`]
    /// was called for its session after event k-1, so an event held
    /// anywhere between this server and the client stops the stream.
    pub lockstep: bool,
    /// Also put an unknown id back on its 404 (as middleware that reflects
    /// a correlation id does): the worst case for a proxy that learns ids.
    pub echo_unknown: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            every: Duration::from_millis(100),
            lockstep: false,
            echo_unknown: false,
        }
    }
}

/// A running server on 127.0.0.1. Stops (with its connections) on drop.
pub struct McpServer {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

struct State {
    name: HeaderValue,
    options: Options,
    /// Live sessions, each with the gate its event streams wait on.
    sessions: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Requests that named a session (health checks not counted).
    requests: AtomicU64,
}

impl McpServer {
    /// Starts one on a free loopback port.
    ///
    /// # Errors
    /// When no port can be bound or `name` is not a valid header value.
    pub async fn start(name: &str, options: Options) -> std::io::Result<McpServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            name: HeaderValue::from_str(name).map_err(std::io::Error::other)?,
            options,
            sessions: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the task ends them all.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let state = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(McpServer {
            name: name.to_string(),
            addr,
            state,
            task,
        })
    }

    /// Whether the server holds session `id`.
    pub fn knows(&self, id: &str) -> bool {
        self.state.lock().contains_key(id)
    }

    /// Sessions the server holds.
    pub fn sessions(&self) -> usize {
        self.state.lock().len()
    }

    /// Requests that reached the server (health checks not counted).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Lockstep: lets the streams of session `id` write their next event.
    pub fn release(&self, id: &str) {
        if let Some(gate) = self.state.lock().get(id) {
            gate.add_permits(1);
        }
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = full(status, v.to_string());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A JSON-RPC error answer.
fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}}),
    )
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Body> {
    let mut resp = route(state, req).await;
    resp.headers_mut().insert(X_BACKEND, state.name.clone());
    resp
}

async fn route(state: &State, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/healthz" {
        return full(StatusCode::OK, "ok");
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let id = req
        .headers()
        .get(&SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let known = id.as_deref().and_then(|id| state.lock().get(id).cloned());
    let mut resp = match (req.method().clone(), id.as_deref(), known) {
        (Method::POST, None, _) => return initialize(state, req).await,
        (_, None, _) => rpc_error(StatusCode::BAD_REQUEST, -32000, "missing Mcp-Session-Id"),
        (_, Some(_), None) => {
            let mut r = rpc_error(StatusCode::NOT_FOUND, -32001, "session not found");
            if state.options.echo_unknown {
                if let Some(v) = req.headers().get(&SESSION_HEADER) {
                    r.headers_mut().insert(SESSION_HEADER, v.clone());
                }
            }
            return r;
        }
        (Method::POST, Some(_), Some(_)) => call(state, req).await,
        (Method::GET, Some(id), Some(gate)) => events(state, &req, id, gate),
        (Method::DELETE, Some(id), Some(gate)) => {
            state.lock().remove(id);
            // Wakes a lockstep stream waiting on its gate: it ends.
            gate.close();
            full(StatusCode::OK, "")
        }
        _ => full(StatusCode::METHOD_NOT_ALLOWED, ""),
    };
    // Like the MCP SDKs, every answer within a session names it again.
    if let Some(Ok(v)) = id.map(HeaderValue::try_from) {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

/// Reads one JSON-RPC message (bounded).
async fn message(req: Request<Incoming>) -> Option<serde_json::Value> {
    let body = Limited::new(req.into_body(), MAX_MESSAGE)
        .collect()
        .await
        .ok()?;
    serde_json::from_slice(&body.to_bytes()).ok()
}

async fn initialize(state: &State, req: Request<Incoming>) -> Response<Body> {
    let Some(msg) = message(req).await else {
        return rpc_error(StatusCode::BAD_REQUEST, -32700, "parse error");
    };
    if msg["method"] != "initialize" {
        return rpc_error(StatusCode::BAD_REQUEST, -32000, "missing Mcp-Session-Id");
    }
    let id = format!("{:032x}", rand::random::<u128>());
    state.lock().insert(id.clone(), Arc::new(Semaphore::new(0)));
    let mut r = json(
        StatusCode::OK,
        &serde_json::json!({
            "jsonrpc": "2.0",
            "id": msg["id"],
            "result": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "serverInfo": {"name": state.name.to_str().unwrap_or("mcp"), "version": "0"},
            },
        }),
    );
    if let Ok(v) = HeaderValue::try_from(id) {
        r.headers_mut().insert(SESSION_HEADER, v);
    }
    r
}

async fn call(state: &State, req: Request<Incoming>) -> Response<Body> {
    let Some(msg) = message(req).await else {
        return rpc_error(StatusCode::BAD_REQUEST, -32700, "parse error");
    };
    if msg.get("id").is_none() {
        // A notification: accepted, nothing to answer.
        return full(StatusCode::ACCEPTED, "");
    }
    json(
        StatusCode::OK,
        &serde_json::json!({
            "jsonrpc": "2.0",
            "id": msg["id"],
            "result": {"server": state.name.to_str().unwrap_or("mcp"), "method": msg["method"]},
        }),
    )
}

/// The session's event stream: event k is `id: k`, a JSON-RPC notification.
fn events(
    state: &State,
    req: &Request<Incoming>,
    id: &str,
    gate: Arc<Semaphore>,
) -> Response<Body> {
    let wants = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants {
        return full(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    let (tx, rx) = mpsc::channel(1);
    let (every, lockstep) = (state.options.every, state.options.lockstep);
    let name = state.name.to_str().unwrap_or("mcp").to_string();
    let session = id.to_string();
    tokio::spawn(async move {
        for k in 0u64.. {
            if k > 0 {
                tokio::time::sleep(every).await;
                if lockstep {
                    match gate.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return, // the session was deleted
                    }
                } else if gate.is_closed() {
                    return;
                }
            }
            let data = serde_json::json!({
                "jsonrpc": "2.0",
                "method": "notifications/message",
                "params": {"server": name, "session": session, "seq": k},
            });
            let event = format!("id: {k}\nevent: message\ndata: {data}\n\n");
            if tx.send(Bytes::from(event)).await.is_err() {
                return; // the client went away
            }
        }
    });
    let mut r = Response::new(Events(rx).boxed());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    r
}

/// A body fed event by event from the stream's task.
struct Events(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
