//! tether: a sticky-session reverse proxy.
//!
//! It terminates TLS, speaks HTTP/1.1 and HTTP/2 to clients, and pins every
//! session to one backend with consistent hashing until the session idles out,
//! reaches its absolute lifetime, is ended by the app, or its backend goes away.
//!
//! ```text
//! request path: one way; service/ hands each stage's output to the next
//! (service/plan.rs: the session's store I/O; service/forward.rs: the upstream attempt and one retry)
//!
//! main.rs → server.rs → listener.rs → conn.rs → service/  ─┬─▶ hygiene.rs             request → refused (400/431) or routed
//!              lifecycle.rs: each connection's deadlines    ├─▶ session/source+cookie  request → affinity key, verified pin
//!              coalesce.rs: small writes as one send        │
//!              tls_stream.rs: client TLS, no idle buffers   │
//!              socket.rs: client sockets join epoll to wait │
//!                                                           │   (session/memo: a connection's last verified cookie, not verified again)
//!                                                           ├─▶ store/                 key → record (or "unavailable")
//!                                                           ├─▶ session/decide         (key, pin, record, now, eligible?) → decision
//!                                                           ├─▶ balancer/              decision → backend (ring, bounded load)
//!                                                           ├─▶ headers.rs             request edits
//!                                                           ├─▶ upstream.rs            backend → response (one safe retry)
//!                                                           ├─▶ store/                 write what the decision and control say
//!                                                           └─▶ headers.rs             response edits, Set-Cookie → client
//!
//! control plane: writes shared state; nothing on the request path calls it
//!
//! server.rs   ──spawns──────────────▶ listeners, health.rs, admin/, reload.rs, store reaper
//! reload.rs   ──swaps───────────────▶ snapshot.rs   ◀── read by service/, listener.rs, balancer/
//! health.rs   ──sets status─────────▶ backends.rs   ◀── read by balancer/, admin/
//! admin/      ──drain/disable/enable▶ backends.rs ; reads metrics/ and store/ counts
//! service/    ──passive failure streak▶ backends.rs (an increment, not a decision)
//! ```

pub mod admin;
pub mod backends;
pub mod balancer;
pub mod body;
pub mod clock;
mod coalesce;
pub mod config;
pub(crate) mod conn;
mod copy;
pub mod demo;
pub mod error;
pub mod framing;
pub mod headers;
pub mod health;
pub mod history;
pub mod hygiene;
pub mod keys;
pub mod lifecycle;
pub mod limits;
pub mod listener;
pub mod log;
pub mod metrics;
mod passthrough;
pub mod proxy_protocol;
pub mod release;
pub mod reload;
pub mod server;
pub mod service;
pub mod session;
pub mod snapshot;
pub mod socket;
pub mod store;
pub mod tls;
pub mod tls_stream;
pub mod upgrade;
pub mod upstream;
mod wake_flag;
