//! `tether demo`: three in-process backends that name themselves, a sticky
//! proxy on https://localhost:8443 and a rotating one on :8444, using the
//! development certificate built into the binary, and a curl walkthrough.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::{self, Config};
use crate::server;
use crate::tls;

const DEMO_CERT: &[u8] = include_bytes!("../certs/localhost.crt");
const DEMO_KEY: &[u8] = include_bytes!("../certs/localhost.key");
/// Sticky proxy port (SPEC section 1).
pub const STICKY_PORT: u16 = 8443;
/// Rotating proxy port.
pub const ROTATE_PORT: u16 = 8444;
/// Admin API and status page of the sticky proxy.
pub const ADMIN_PORT: u16 = 9901;

/// Starts a demo backend on 127.0.0.1 (ephemeral port) that answers every
/// request with its name and the session state tether reported. `/login`
/// asks tether to regenerate the session id, `/logout` to end the session.
///
/// # Errors
/// The port cannot be bound.
pub async fn spawn_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let count = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                    async move { Ok::<_, Infallible>(answer(name, n, &req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn answer(name: &str, n: u64, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let state = req
        .headers()
        .get("tether-session-state")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let mut text = format!(
        "{name} answered {} {} (session: {state}, request #{n} here)\n",
        req.method(),
        req.uri().path()
    );
    let mut resp = Response::builder();
    match req.uri().path() {
        "/login" => {
            text.push_str("  logged in: asked tether to regenerate the session id\n");
            resp = resp.header("tether-session-control", "regenerate");
        }
        "/logout" => {
            text.push_str("  logged out: asked tether to end the session\n");
            resp = resp.header("tether-session-control", "end");
        }
        _ => {}
    }
    resp.header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The demo's config: `mode` sticky or rotate, on `port`, with the embedded
/// certificate, and an admin listener on `admin_port` if given.
///
/// # Errors
/// Only if the embedded text or certificate were broken (a build problem).
pub fn demo_config(
    mode: &str,
    port: u16,
    admin_port: Option<u16>,
    backends: &[(&str, SocketAddr)],
) -> Result<Config, String> {
    let mut text = format!(
        "[[listener]]\nbind = \"127.0.0.1:{port}\"\ntls = false\n\n\
         [session]\nmode = \"{mode}\"\nidle_timeout = \"15s\"\nabsolute_timeout = \"1h\"\n\
         secret = \"tether-demo-secret: not for production\"\n\n[log]\naccess = true\n"
    );
    if let Some(p) = admin_port {
        text.push_str(&format!("\n[admin]\nbind = \"127.0.0.1:{p}\"\n"));
    }
    for (name, addr) in backends {
        text.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
        ));
    }
    let mut cfg = config::from_str(&text, Path::new("(demo)"), None).map_err(|e| e.to_string())?;
    let (cert_path, key_path) = (
        PathBuf::from("(embedded certs/localhost.crt)"),
        PathBuf::from("(embedded certs/localhost.key)"),
    );
    let pair = tls::parse_pem_pair(DEMO_CERT, &cert_path, DEMO_KEY, &key_path)
        .map_err(|e| e.to_string())?;
    cfg.tls = Some(config::Tls {
        cert_path,
        key_path,
        certs: pair.certs,
        key: pair.key,
        session_resumption: true,
    });
    for l in &mut cfg.listeners {
        l.tls = true;
    }
    Ok(cfg)
}

/// Runs the demo until `shutdown` completes.
///
/// # Errors
/// A port is taken, or the embedded config is broken.
pub async fn run(shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let names = ["demo-app1", "demo-app2", "demo-app3"];
    let mut backends = Vec::new();
    for n in names {
        let addr = spawn_backend(n).await.map_err(|e| e.to_string())?;
        backends.push((n, addr));
    }
    let clock = Clock::system();
    let sticky = server::start(
        demo_config("sticky", STICKY_PORT, Some(ADMIN_PORT), &backends)?,
        clock.clone(),
    )
    .await
    .map_err(|e| format!("{e} (is another tether demo running?)"))?;
    let rotate = server::start(demo_config("rotate", ROTATE_PORT, None, &backends)?, clock)
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", walkthrough());
    shutdown.await;
    sticky.shutdown().await;
    rotate.shutdown().await;
    Ok(())
}

fn walkthrough() -> String {
    format!(
        r#"
tether demo is running: three backends (demo-app1, demo-app2, demo-app3) behind
  https://localhost:{STICKY_PORT}  sticky sessions (cookie tether_sid, idle_timeout 15s)
  https://localhost:{ROTATE_PORT}  rotate mode (no affinity)
The certificate is the development one in certs/ (self-signed): curl needs -k,
or --cacert certs/localhost.crt from the repository.

Try, in another terminal:

  # 1. A first request: tether mints a session, picks a backend, sets a cookie.
  curl -k -c /tmp/tether.jar -b /tmp/tether.jar https://localhost:{STICKY_PORT}/
  # 2. Again, with the cookie: the same backend answers (session: continued).
  curl -k -c /tmp/tether.jar -b /tmp/tether.jar https://localhost:{STICKY_PORT}/cart
  # 3. Without the cookie, each request is a new session, spread over the ring.
  for i in 1 2 3 4; do curl -sk https://localhost:{STICKY_PORT}/; done
  # 4. Rotate mode: requests take turns, no cookie is set.
  for i in 1 2 3; do curl -sk https://localhost:{ROTATE_PORT}/; done
  # 5. Log in: the backend says `regenerate`; same backend, new session id.
  curl -k -c /tmp/tether.jar -b /tmp/tether.jar -i https://localhost:{STICKY_PORT}/login
  # 6. Wait 15 s and ask again: the session expired, a new one begins.
  sleep 16; curl -k -c /tmp/tether.jar -b /tmp/tether.jar https://localhost:{STICKY_PORT}/
  # 7. Log out: the backend says `end`; tether clears the cookie (Max-Age=0).
  curl -k -c /tmp/tether.jar -b /tmp/tether.jar -i https://localhost:{STICKY_PORT}/logout
  # HTTP/2 works too:
  curl -k --http2 -b /tmp/tether.jar https://localhost:{STICKY_PORT}/ -w '%{{http_version}}\n'

The operator's side (admin API of the sticky proxy):
  open http://127.0.0.1:{ADMIN_PORT}/                       # status page
  curl http://127.0.0.1:{ADMIN_PORT}/api/backends           # backends, state, live sessions
  curl -X POST http://127.0.0.1:{ADMIN_PORT}/api/backends/demo-app1/drain    # no new sessions there
  curl http://127.0.0.1:{ADMIN_PORT}/api/backends/demo-app1/drained          # 200 once empty
  curl -X POST http://127.0.0.1:{ADMIN_PORT}/api/backends/demo-app1/enable
  curl -s http://127.0.0.1:{ADMIN_PORT}/metrics | grep tether_session

Ctrl-C stops the demo.
"#
    )
}
