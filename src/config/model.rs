//! The validated, typed configuration: what every other room reads. Built
//! only by the checks in `check.rs`; nothing here is a raw string from the
//! file. Secrets and keys are kept out of `Debug`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::file::{
    BindTo, LogFormat, Mode, OnMismatch, Protocol, SameSite, Secure, Source, StoreKind,
};

/// The environment variable that may carry the session secret.
pub const SECRET_ENV: &str = "TETHER_SECRET";

/// Shortest secret accepted, in bytes: 128 bits, the strength of the MAC key we want.
pub const MIN_SECRET_BYTES: usize = 16;

/// Most backends one config may name; the ring's size grows with it.
///
/// Not the bound on backend *ids* (`store::MAX_BACKEND_IDS`, larger on
/// purpose): a reload may replace every name while requests in flight still
/// hold the old names' ids, so ids in use can outnumber one config's backends.
pub const MAX_BACKENDS: usize = 1024;

/// Largest sum of backend weights. The ring holds 160 points per unit of
/// weight (16 bytes each) and is rebuilt on every reload, so this bounds it
/// at 1.6M points, about 26 MB; 1,024 backends at weight 1,000 would ask for
/// 2.6 GB.
pub const MAX_TOTAL_WEIGHT: u64 = 10_000;

/// A validated configuration (SPEC §2), every default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from; relative paths inside it were resolved against its directory.
    pub path: PathBuf,
    /// `[[listener]]`, at least one.
    pub listeners: Vec<Listener>,
    /// `[tls]`, loaded and parsed; `Some` whenever a listener has `tls = true`.
    pub tls: Option<Tls>,
    /// `[session]`.
    pub session: Session,
    /// `[store]`.
    pub store: Store,
    /// `[[backend]]`, at least one, names unique, in file order.
    pub backends: Vec<Backend>,
    /// `[health]`.
    pub health: Health,
    /// `[timeouts]`.
    pub timeouts: Timeouts,
    /// `[limits]`.
    pub limits: Limits,
    /// `[runtime]`.
    pub runtime: Runtime,
    /// `[admin]`; `None` disables the admin listener.
    pub admin: Option<Admin>,
    /// `[log]`.
    pub log: Log,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Address to bind (port 0 picks a free port).
    pub bind: SocketAddr,
    /// Terminate TLS with [`Config::tls`].
    pub tls: bool,
    /// Every connection must begin with a PROXY protocol v1 or v2 header;
    /// the client it names stands in for the TCP peer.
    pub proxy_protocol: bool,
    /// The kernel hands over a connection once its first bytes arrive
    /// (`TCP_DEFER_ACCEPT`; see `socket::defer_accept`).
    pub defer_accept: bool,
}

/// `[tls]`: the certificate chain and key, already read and parsed from PEM.
pub struct Tls {
    /// Resolved certificate path (reload reads it again).
    pub cert_path: PathBuf,
    /// Resolved key path.
    pub key_path: PathBuf,
    /// The chain, leaf first, as in the file.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PrivateKeyDer<'static>,
    /// Resume TLS sessions (session cache and tickets); `false`: every
    /// handshake is full.
    pub session_resumption: bool,
}

impl Clone for Tls {
    fn clone(&self) -> Self {
        Tls {
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            session_resumption: self.session_resumption,
        }
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("certs", &self.certs.len())
            .field("key", &"<redacted>")
            .field("session_resumption", &self.session_resumption)
            .finish()
    }
}

/// `[session]`.
#[derive(Debug, Clone)]
pub struct Session {
    /// Sticky or rotate.
    pub mode: Mode,
    /// Where the affinity key comes from.
    pub source: Source,
    /// Name of the cookie tether issues (an RFC 6265 token, prefix rules checked).
    pub cookie: String,
    /// The app's cookie, for `source = "app_cookie"` (an RFC 6265 token).
    pub app_cookie: String,
    /// The request header, for `source = "header"`, lowercased (as `http::HeaderName` stores it).
    pub header: String,
    /// The URL query parameter, for `source = "query"`.
    pub query_param: String,
    /// Affinity ends after this long without a request (> 0).
    pub idle_timeout: Duration,
    /// Affinity ends this long after the session began (> 0).
    pub absolute_timeout: Duration,
    /// Keys for the cookie MAC.
    pub secrets: Secrets,
    /// `SameSite` attribute.
    pub same_site: SameSite,
    /// When the cookie gets `Secure`.
    pub secure: Secure,
    /// `HttpOnly` attribute.
    pub http_only: bool,
    /// CHIPS `Partitioned` attribute (checked: only with `SameSite=None` and Secure).
    pub partitioned: bool,
    /// `Path` attribute.
    pub path: String,
    /// `Domain` attribute, if any.
    pub domain: Option<String>,
    /// Remove tether's cookie from the request sent upstream.
    pub strip_cookie: bool,
    /// Bounded load: 0 (off) or >= 1.0.
    pub balance_factor: f64,
    /// Client traits a session is bound to, no duplicates; empty = off.
    pub bind_to: Vec<BindTo>,
    /// What a bound cookie from another client gets.
    pub on_mismatch: OnMismatch,
    /// A session whose pinned backend cannot serve it gets 503 instead of
    /// failing over.
    pub strict: bool,
}

/// The secrets that key the cookie MAC.
#[derive(Clone)]
pub struct Secrets {
    /// Signs new cookies and verifies old ones; at least [`MIN_SECRET_BYTES`].
    ///
    /// Empty when `origin` is [`SecretOrigin::Generated`]: this loader has no
    /// random source, so the caller must fill it with 32 bytes from the OS
    /// CSPRNG before use (and such cookies do not survive a restart).
    pub current: Vec<u8>,
    /// Still accepted when verifying cookies (key rotation), each at least [`MIN_SECRET_BYTES`].
    pub previous: Vec<Vec<u8>>,
    /// Where `current` came from, for logs and `tether check`.
    pub origin: SecretOrigin,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("current", &"<redacted>")
            .field("previous", &self.previous.len())
            .field("origin", &self.origin)
            .finish()
    }
}

/// Where the current secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOrigin {
    /// `secret = "..."` in the file.
    Inline,
    /// `secret_file`, resolved.
    File(PathBuf),
    /// The `TETHER_SECRET` environment variable.
    Env,
    /// None was given: the caller generates one per process.
    Generated,
}

impl fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretOrigin::Inline => f.write_str("inline in the config file"),
            SecretOrigin::File(path) => write!(f, "from {}", path.display()),
            SecretOrigin::Env => write!(f, "from the environment variable {SECRET_ENV}"),
            SecretOrigin::Generated => {
                f.write_str("generated per process: sessions do not survive a restart")
            }
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    /// Memory or Redis.
    pub kind: StoreKind,
    /// Redis URL (`redis://` or `rediss://`); checked only for `kind = "redis"`.
    /// With `sentinel`, the default and unused.
    pub url: String,
    /// Redis Sentinel: where to ask for the primary instead of `url`.
    pub sentinel: Option<Sentinel>,
    /// Bound of the memory store (>= 1); for Redis, of the local cache.
    pub max_sessions: usize,
    /// Prefix of every Redis key and of the pub/sub channel (1..=64 bytes, no spaces).
    pub key_prefix: String,
    /// Longest wait for a TCP (+TLS) connection to Redis.
    pub connect_timeout: Duration,
    /// Longest wait for any Redis reply; past it the store counts as unavailable.
    pub command_timeout: Duration,
}

/// `[store] sentinels` and `master_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// Each sentinel, in the order given (asked in turn).
    pub addrs: Vec<HostPort>,
    /// The name the sentinels monitor the primary under.
    pub master_name: String,
}

/// A `host:port` resolved when it is dialled, not when the config is read:
/// a sentinel's name may point elsewhere by the time it is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// A name or an IP address (an IPv6 one without its brackets).
    pub host: String,
    /// Never 0.
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One `[[backend]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Unique, `[A-Za-z0-9._-]{1,64}`.
    pub name: String,
    /// The first address `address` resolved to.
    pub address: SocketAddr,
    /// 1..=1000.
    pub weight: u32,
    /// HTTP/1.1 or HTTP/2.
    pub protocol: Protocol,
    /// `Some`: connect over TLS.
    pub tls: Option<BackendTls>,
}

/// How tether verifies a backend's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    /// The name sent as SNI and checked against the certificate (an IP
    /// address is checked against the certificate's IP names, no SNI sent).
    pub server_name: rustls_pki_types::ServerName<'static>,
    /// Trust roots from `ca_file`; `None`: the system's.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// `ca_file`, resolved.
    pub ca_path: Option<PathBuf>,
}

/// `[health]`.
#[derive(Debug, Clone)]
pub struct Health {
    /// Path probed with GET; starts with `/`.
    pub path: String,
    /// Time between probes (> 0).
    pub interval: Duration,
    /// Probe timeout (> 0).
    pub timeout: Duration,
    /// Consecutive successes to mark up (>= 1).
    pub rise: u32,
    /// Consecutive failures to mark down (>= 1).
    pub fall: u32,
}

/// `[timeouts]`.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Connecting to a backend (> 0).
    pub connect: Duration,
    /// A backend's response headers (> 0).
    pub response: Duration,
    /// Longest a kept-alive backend connection waits in the pool for reuse (> 0).
    pub upstream_idle: Duration,
    /// A client's request head (> 0).
    pub client_header: Duration,
    /// Longest pause between a client's body bytes (> 0).
    pub client_body: Duration,
    /// Idle client connection: HTTP/1.1 between requests, HTTP/2 with no
    /// open stream.
    pub keepalive: Duration,
    /// Idle upgraded (WebSocket) connection, no byte either way (> 0).
    pub tunnel: Duration,
    /// In-flight requests get this long on SIGTERM.
    pub shutdown_grace: Duration,
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open client connections (>= 1).
    pub max_connections: usize,
    /// Largest request head, 1024..=1048576.
    pub max_header_bytes: usize,
    /// Requests/s per session (0 = off).
    pub session_rate: f64,
    /// Bucket size; a configured 0 becomes 2 x `session_rate`.
    pub session_burst: f64,
    /// New sessions/s per client IP (0 = off).
    pub new_session_rate: f64,
}

/// `[runtime]`.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Tokio worker threads; 0 = one per core. At most 1024.
    pub worker_threads: usize,
}

/// `[admin]`.
#[derive(Clone)]
pub struct Admin {
    /// Address of the admin listener; loopback unless a token is set.
    pub bind: SocketAddr,
    /// Bearer token read from `token_file` (trimmed, non-empty); `None` = no auth.
    pub token: Option<String>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct Log {
    /// Text or JSON lines on stderr.
    pub format: LogFormat,
    /// One line per request.
    pub access: bool,
}
