//! Test harness: real backends, a real in-process tether, real HTTP clients,
//! all on 127.0.0.1 ephemeral ports.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Guards every await in tests against hangs: fails loudly.
pub const HANG: Duration = Duration::from_secs(20);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------- backends

/// A real HTTP backend that names itself and answers by path:
/// - `/` or anything else: 200, JSON `{"backend", "method", "path", "headers"}`; header `x-backend`
/// - `/control/end`, `/control/regenerate`: adds `Tether-Session-Control`
/// - `/slow/MS`: answers after MS milliseconds
/// - `/status/NNN`: that status
/// - `/set-cookie/NAME/VALUE`: sets that cookie
/// - `/count`: reads the request body, answers with its length
/// - `/bytes/N`: streams N bytes
/// - `/ws`: 101 upgrade, then echoes raw bytes
/// - `/healthz`: 200, not counted in `hits`
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(name, listener)
    }

    /// Serves on an already bound listener (to restart on the same port).
    pub fn on(name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let (n, h) = (name.to_string(), hits.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the task kills them all.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h) = (n.clone(), h.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let (n, h) = (n.clone(), h.clone());
                        async move { Ok::<_, Infallible>(answer(&n, &h, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Backend {
            name: name.into(),
            addr,
            hits,
            task,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection; the port then refuses.
    pub async fn kill(mut self) -> SocketAddr {
        self.task.abort();
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
        self.addr
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(name: &str, hits: &AtomicU64, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // Health probes are not traffic: they do not count as hits.
    if req.uri().path() == "/healthz" {
        return Response::new(Full::new(Bytes::from_static(b"ok")));
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let mut headers = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_insert_with(Vec::new)
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut resp = Response::builder().header("x-backend", name);
    let mut status = StatusCode::OK;
    match parts.as_slice() {
        ["control", what] => resp = resp.header("tether-session-control", *what),
        ["slow", ms] => tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await,
        ["status", code] => status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap(),
        ["set-cookie", k, v] => resp = resp.header("set-cookie", format!("{k}={v}; Path=/")),
        ["count"] => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.map(|f| f.into_data()) {
                    n += d.map(|d| d.len() as u64).unwrap_or(0);
                } else {
                    break;
                }
            }
            return resp.body(Full::new(Bytes::from(n.to_string()))).unwrap();
        }
        ["bytes", n] => {
            let n: usize = n.parse().unwrap_or(0);
            return resp.body(Full::new(Bytes::from(vec![b'x'; n]))).unwrap();
        }
        ["ws"] => {
            let mut req = req;
            let up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(io) = up.await {
                    let mut io = TokioIo::new(io);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            return resp
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        _ => {}
    }
    let body = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": path,
        "headers": headers,
    });
    resp.status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

// ---------------------------------------------------------------- tether

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// A session clock that stands still at the machine's wall time until the
/// test steps it with `advance_ms`: timeout edges land to the millisecond,
/// however slow the machine. Clones share the time (two instances on one
/// clock agree).
pub fn manual_clock() -> tether::clock::Clock {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tether::clock::Clock::manual(wall)
}

/// A running in-process tether.
pub struct Tether {
    pub running: Option<tether::server::Running>,
    /// Bound addresses in `[[listener]]` order.
    pub addrs: Vec<SocketAddr>,
}

impl Tether {
    /// Starts tether from a TOML text (listeners on `127.0.0.1:0`); relative
    /// paths resolve against the repository (so `certs/localhost.crt` works).
    pub async fn start(toml: &str) -> Tether {
        Tether::start_on(toml, tether::clock::Clock::system()).await
    }

    /// [`Tether::start`] on a given session clock: a test that steps it
    /// (see [`manual_clock`]) passes idle and absolute timeouts at once.
    pub async fn start_on(toml: &str, clock: tether::clock::Clock) -> Tether {
        let cfg = tether::config::from_str(toml, &repo().join("test.toml"), None)
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{toml}"));
        Tether::from_config(cfg, clock).await
    }

    /// Starts tether from an already built config.
    pub async fn from_config(cfg: tether::config::Config, clock: tether::clock::Clock) -> Tether {
        let running = tether::server::start(cfg, clock)
            .await
            .expect("tether starts");
        let addrs = running.addrs().to_vec();
        Tether {
            running: Some(running),
            addrs,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn running(&self) -> &tether::server::Running {
        self.running.as_ref().unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// A request to the admin listener: (status, body).
pub async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let r = send(addr, Proto::Plain, b.body(Full::new(Bytes::new())).unwrap()).await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// `GET /api/backends` as (name, state, sessions).
pub async fn backends(addr: SocketAddr) -> Vec<(String, String, u64)> {
    let (s, body) = admin(addr, "GET", "/api/backends", None).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
                b["sessions"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Polls `GET /api/backends` until `name` is in `state`.
pub async fn wait_state(admin_addr: SocketAddr, name: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let all = backends(admin_addr).await;
        if all.iter().any(|(n, s, _)| n == name && s == state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became {state}: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A config with one plain listener, the given `[session]` lines and backends.
pub fn config(session: &str, backends: &[&Backend]) -> String {
    let mut s = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = false\n\n[session]\nsecret = \"{SECRET}\"\n{session}\n\n[log]\naccess = false\n"
    );
    for b in backends {
        s.push_str(&format!(
            "\n[[backend]]\nname = \"{}\"\naddress = \"{}\"\n",
            b.name, b.addr
        ));
    }
    s
}

/// Same, with a TLS listener first and a plain one second.
pub fn config_tls(session: &str, backends: &[&Backend]) -> String {
    let plain = config(session, backends);
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = true\n\n[tls]\ncert = \"certs/localhost.crt\"\nkey = \"certs/localhost.key\"\n\n{plain}"
    )
}

// ---------------------------------------------------------------- clients

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Plain,
    TlsH1,
    TlsH2,
}

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Resp {
    /// Reads a whole response.
    pub async fn read(resp: http::Response<Incoming>) -> Resp {
        let version = resp.version();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
            version,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }
    /// The backend that answered.
    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    /// The session state the backend saw.
    pub fn state(&self) -> String {
        self.json()["headers"]["tether-session-state"][0]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    /// Every value of a request header the backend saw.
    pub fn seen(&self, header: &str) -> Vec<String> {
        self.json()["headers"][header]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }
    /// The Set-Cookie for `name`, whole.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .find(|v| v.starts_with(&format!("{name}=")))
    }
    /// The value of the Set-Cookie for `name`.
    pub fn cookie_value(&self, name: &str) -> Option<String> {
        self.set_cookie(name)
            .map(|c| c.split(';').next().unwrap()[name.len() + 1..].to_string())
    }
}

pub fn tls_connector(alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut cfg = client_config(rustls::DEFAULT_VERSIONS);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// An HTTP/1.1 client over TLS (ALPN `http/1.1`, the dev certificate) on
/// `io`; the connection's driver runs in a task of its own.
pub async fn h1_over_tls<I, B>(io: I) -> hyper::client::conn::http1::SendRequest<B>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = tls_connector(&[b"http/1.1"])
        .connect("localhost".try_into().unwrap(), io)
        .await
        .unwrap();
    let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(c);
    s
}

/// A client that trusts the dev certificate and speaks only `versions`.
pub fn tls_connector_versions(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(client_config(versions)))
}

fn client_config(versions: &[&'static rustls::SupportedProtocolVersion]) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in
        rustls_pki_types::CertificateDer::pem_file_iter(repo().join("certs/localhost.crt")).unwrap()
    {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// Sends one request on a new connection and reads the whole response.
pub async fn send(addr: SocketAddr, proto: Proto, req: Request<Full<Bytes>>) -> Resp {
    tokio::time::timeout(HANG, send_inner(addr, proto, req))
        .await
        .expect("request hung")
}

async fn send_inner(addr: SocketAddr, proto: Proto, mut req: Request<Full<Bytes>>) -> Resp {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let resp = match proto {
        Proto::Plain => {
            if !req.headers().contains_key("host") {
                req.headers_mut()
                    .insert("host", "localhost".parse().unwrap());
            }
            let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(c);
            s.send_request(req).await.unwrap()
        }
        Proto::TlsH1 => {
            if !req.headers().contains_key("host") {
                req.headers_mut()
                    .insert("host", "localhost".parse().unwrap());
            }
            h1_over_tls(tcp).await.send_request(req).await.unwrap()
        }
        Proto::TlsH2 => {
            let tls = tls_connector(&[b"h2"])
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            assert_eq!(
                tls.get_ref().1.alpn_protocol(),
                Some(&b"h2"[..]),
                "ALPN must pick h2"
            );
            let (mut s, c) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(c);
            let uri = format!("https://localhost:{}{}", addr.port(), req.uri());
            *req.uri_mut() = uri.parse().unwrap();
            s.send_request(req).await.unwrap()
        }
    };
    Resp::read(resp).await
}

pub fn get(path: &str) -> http::request::Builder {
    Request::get(path)
}

/// GET `path` over plain HTTP with optional extra headers.
pub async fn plain_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(addr, Proto::Plain, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// GET `path` over plain HTTP from a chosen local address (e.g. 127.0.0.2).
pub async fn plain_get_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = tokio::time::timeout(HANG, sock.connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut b = Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(c);
    let resp = tokio::time::timeout(
        HANG,
        s.send_request(b.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    Resp::read(resp).await
}

/// Writes raw bytes on a new connection and reads until the peer closes
/// (or `HANG`, which fails the test).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(HANG, tcp.read_to_end(&mut out))
        .await
        .expect("connection left open");
    String::from_utf8_lossy(&out).into_owned()
}

/// A browser-like session: keeps tether's cookie and sends it back.
pub struct Session {
    pub addr: SocketAddr,
    pub name: String,
    pub cookie: Option<String>,
}

impl Session {
    pub fn new(addr: SocketAddr) -> Session {
        Session {
            addr,
            name: "tether_sid".into(),
            cookie: None,
        }
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        let cookie = self.cookie.clone().map(|c| format!("{}={c}", self.name));
        let mut hs = vec![];
        if let Some(c) = &cookie {
            hs.push(("cookie", c.as_str()));
        }
        let r = plain_get(self.addr, path, &hs).await;
        if let Some(sc) = r.set_cookie(&self.name) {
            if sc.contains("Max-Age=0") {
                self.cookie = None;
            } else {
                self.cookie = r.cookie_value(&self.name);
            }
        }
        r
    }
}

/// Waits until `f` is true, polling; fails loudly after `HANG`.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

// ---------------------------------------------------------------- redis

/// A real `redis-server` on a free 127.0.0.1 port, no persistence, killed
/// (by PID) on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

/// Whether `redis-server` can be run here. Without it a test prints that
/// it skipped; with `TETHER_REQUIRE_REDIS=1` (CI) its absence panics.
pub fn redis_available() -> bool {
    let installed = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        if std::env::var("TETHER_REQUIRE_REDIS").as_deref() == Ok("1") {
            panic!("redis-server is not installed and TETHER_REQUIRE_REDIS=1");
        }
        println!("skipped: redis-server not installed");
    }
    installed
}

impl RedisServer {
    /// Starts one, or `None` (after printing why) when `redis-server` is not
    /// installed. With `TETHER_REQUIRE_REDIS=1` (CI) its absence panics.
    pub async fn start() -> Option<RedisServer> {
        if !redis_available() {
            return None;
        }
        // redis-server refuses port 0: take a free port from the OS and
        // hand it over (a tiny race with other binders, retried below).
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut r = RedisServer { port, child: None };
            if r.spawn().await {
                return Some(r);
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (again) on the same port; true once it answers PING.
    pub async fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server spawns");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if self.ping().await {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false; // exited: the port was taken
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill();
        false
    }

    /// One raw RESP PING; true on `+PONG`.
    pub async fn ping(&self) -> bool {
        self.command(&["PING"])
            .await
            .is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Sends one command, returns the raw reply text (enough for tests).
    pub async fn command(&self, args: &[&str]) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Kills the server (SIGKILL, by PID) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- the binary

/// The built `tether` binary, ready for arguments.
pub fn tether_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
}

/// A child process killed (and reaped) when the test ends, passing or not.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tether run` on `config`, returns it, the addresses it logged
/// ("listening" lines, in order: proxy listeners, then the admin API) and its
/// log lines.
pub fn spawn_tether(
    config: &Path,
    listeners: usize,
) -> (Proc, Vec<SocketAddr>, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = tether_bin()
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addrs = vec![];
    while addrs.len() < listeners {
        let line = rx.recv_timeout(HANG).expect("tether logs its addresses");
        if line.contains("listening") {
            let a = line
                .split("addr=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .expect("an addr= field");
            addrs.push(a.parse().unwrap());
        }
    }
    (child, addrs, rx)
}

/// Sends `sig` (as `kill` spells it, e.g. `-HUP`) to the process.
pub fn signal(child: &Proc, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}
