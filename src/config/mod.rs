//! Loads the config file into validated, typed values, or one located error.
//!
//! Two steps (SPEC §2): `file.rs` parses the TOML into a serde mirror (unknown
//! keys, bad enum values and bad durations fail there, with toml's span), then
//! [`from_str`] checks what the values mean and builds [`Config`]. Every error
//! reads `file:line:column: what was expected`. Nothing downstream ever sees a
//! raw string. This room reads the files the config names (certificate, key,
//! secrets, admin token) but starts nothing.

pub mod file;

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;

pub use file::{BindTo, LogFormat, Mode, OnMismatch, SameSite, Secure, Source, StoreKind};

/// The environment variable that may carry the session secret.
pub const SECRET_ENV: &str = "TETHER_SECRET";

/// Shortest secret accepted, in bytes: 128 bits, the strength of the MAC key we want.
pub const MIN_SECRET_BYTES: usize = 16;

/// Most backends one config may name; the ring's size grows with it.
pub const MAX_BACKENDS: usize = 1024;

/// Largest sum of backend weights. The ring holds 160 points per unit of
/// weight (16 bytes each) and is rebuilt on every reload, so this bounds it
/// at 1.6M points, about 26 MB; 1,024 backends at weight 1,000 would ask for
/// 2.6 GB.
pub const MAX_TOTAL_WEIGHT: u64 = 10_000;

/// A config file that cannot be used. Display is always one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A value at a known place in the file is wrong (or toml could not parse it).
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What was expected, and how to fix it where that is obvious.
        message: String,
    },
    /// A problem with no place in the file (the `TETHER_SECRET` variable).
    #[error("{}: {message}", path.display())]
    Unlocated {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// `(line, column)`, both 1-based, when the error has a place in the file.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Invalid { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }
}

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
}

impl Clone for Tls {
    fn clone(&self) -> Self {
        Tls {
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
            certs: self.certs.clone(),
            key: self.key.clone_key(),
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
    pub url: String,
    /// Bound of the memory store (>= 1); for Redis, of the local cache.
    pub max_sessions: usize,
    /// Prefix of every Redis key and of the pub/sub channel (1..=64 bytes, no spaces).
    pub key_prefix: String,
    /// Longest wait for a TCP (+TLS) connection to Redis.
    pub connect_timeout: Duration,
    /// Longest wait for any Redis reply; past it the store counts as unavailable.
    pub command_timeout: Duration,
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

/// Reads and validates the config file at `path`, with the secret from
/// `TETHER_SECRET` if the file names none.
///
/// # Errors
///
/// [`ConfigError::Read`] if the file cannot be read; otherwise as [`from_str`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_str(&text, path, std::env::var(SECRET_ENV).ok())
}

/// Validates config `text` as if read from `path` (used for error messages and
/// to resolve relative paths), with `env_secret` standing in for `TETHER_SECRET`.
///
/// # Errors
///
/// The first problem found, located in `text` where it has a place there.
pub fn from_str(
    text: &str,
    path: &Path,
    env_secret: Option<String>,
) -> Result<Config, ConfigError> {
    let cx = Cx {
        path,
        text,
        dir: path.parent().unwrap_or(Path::new("")),
    };
    let raw: file::Root = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.at(span, e.message().trim().replace('\n', " "))
    })?;
    cx.build(raw, env_secret)
}

impl Config {
    /// The whole effective configuration as TOML, defaults filled in, for
    /// `tether check`. Secrets and the admin token are replaced by
    /// `"<redacted: ...>"` saying where they came from; paths are shown resolved
    /// and backend addresses as resolved.
    pub fn effective_toml(&self) -> String {
        let raw = self.to_raw();
        match toml::to_string(&raw) {
            Ok(text) => text,
            // The mirror is plain tables, strings, numbers and booleans.
            Err(e) => panic!("the config mirror always serializes to TOML: {e}"),
        }
    }

    fn to_raw(&self) -> file::Root {
        use file::unspanned as u;
        let s = &self.session;
        let dur = |d: Duration| u(file::Dur(d));
        let int = |n: usize| u(i64::try_from(n).unwrap_or(i64::MAX));
        file::Root {
            listeners: self
                .listeners
                .iter()
                .map(|l| file::Listener {
                    bind: u(l.bind.to_string()),
                    tls: u(l.tls),
                })
                .collect(),
            tls: self.tls.as_ref().map(|t| file::Tls {
                cert: u(t.cert_path.display().to_string()),
                key: u(t.key_path.display().to_string()),
            }),
            session: file::Session {
                mode: s.mode,
                source: s.source,
                cookie: u(s.cookie.clone()),
                app_cookie: u(s.app_cookie.clone()),
                header: u(s.header.clone()),
                query_param: u(s.query_param.clone()),
                idle_timeout: dur(s.idle_timeout),
                absolute_timeout: dur(s.absolute_timeout),
                secret: Some(u(format!("<redacted: {}>", s.secrets.origin))),
                secret_file: None,
                previous_secret_files: u((1..=s.secrets.previous.len())
                    .map(|i| u(format!("<redacted: previous secret {i}>")))
                    .collect()),
                same_site: u(s.same_site),
                secure: u(s.secure),
                http_only: s.http_only,
                path: u(s.path.clone()),
                domain: s.domain.clone().map(u),
                strip_cookie: s.strip_cookie,
                balance_factor: u(s.balance_factor),
                bind_to: s.bind_to.iter().copied().map(u).collect(),
                on_mismatch: s.on_mismatch,
            },
            store: file::Store {
                kind: u(self.store.kind),
                url: u(self.store.url.clone()),
                max_sessions: int(self.store.max_sessions),
                key_prefix: u(self.store.key_prefix.clone()),
                connect_timeout: dur(self.store.connect_timeout),
                command_timeout: dur(self.store.command_timeout),
            },
            backends: self
                .backends
                .iter()
                .map(|b| file::Backend {
                    name: u(b.name.clone()),
                    address: u(b.address.to_string()),
                    weight: u(i64::from(b.weight)),
                })
                .collect(),
            health: file::Health {
                path: u(self.health.path.clone()),
                interval: dur(self.health.interval),
                timeout: dur(self.health.timeout),
                rise: u(i64::from(self.health.rise)),
                fall: u(i64::from(self.health.fall)),
            },
            timeouts: file::Timeouts {
                connect: dur(self.timeouts.connect),
                response: dur(self.timeouts.response),
                upstream_idle: dur(self.timeouts.upstream_idle),
                client_header: dur(self.timeouts.client_header),
                client_body: dur(self.timeouts.client_body),
                keepalive: file::Dur(self.timeouts.keepalive),
                tunnel: dur(self.timeouts.tunnel),
                shutdown_grace: file::Dur(self.timeouts.shutdown_grace),
            },
            limits: file::Limits {
                max_connections: int(self.limits.max_connections),
                max_header_bytes: int(self.limits.max_header_bytes),
                session_rate: u(self.limits.session_rate),
                session_burst: u(self.limits.session_burst),
                new_session_rate: u(self.limits.new_session_rate),
            },
            runtime: file::Runtime {
                worker_threads: int(self.runtime.worker_threads),
            },
            admin: self.admin.as_ref().map(|a| file::Admin {
                bind: u(a.bind.to_string()),
                token_file: a.token.as_ref().map(|_| u("<redacted>".to_string())),
            }),
            log: file::Log {
                format: self.log.format,
                access: self.log.access,
            },
        }
    }
}

/// What every check needs to build a located error and resolve a path.
struct Cx<'a> {
    path: &'a Path,
    text: &'a str,
    dir: &'a Path,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

impl Cx<'_> {
    /// An error at the start of `span`.
    fn at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    fn on<T>(&self, value: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.at(value.span(), message)
    }

    fn unlocated(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Unlocated {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// Reads a file the config names, pointing at the name on failure.
    fn read(&self, what: &str, name: &Spanned<String>) -> Result<(PathBuf, Vec<u8>)> {
        let path = self.resolve(name.get_ref());
        match std::fs::read(&path) {
            Ok(bytes) => Ok((path, bytes)),
            Err(e) => Err(self.on(name, format!("cannot read {what} {}: {e}", path.display()))),
        }
    }

    fn build(&self, raw: file::Root, env_secret: Option<String>) -> Result<Config> {
        let listeners = self.listeners(&raw.listeners)?;
        let tls = self.tls(raw.tls.as_ref(), &raw.listeners)?;
        let all_tls = listeners.iter().all(|l| l.tls);
        let session = self.session(raw.session, all_tls, env_secret)?;
        let store = self.store(raw.store, &session.secrets.origin)?;
        let backends = self.backends(&raw.backends)?;
        let health = self.health(raw.health)?;
        let timeouts = self.timeouts(raw.timeouts)?;
        let limits = self.limits(raw.limits)?;
        let worker_threads = &raw.runtime.worker_threads;
        let runtime = Runtime {
            worker_threads: self.int_in(
                worker_threads,
                0,
                1024,
                "worker_threads",
                " (0 = one per core)",
            )?,
        };
        let admin = match &raw.admin {
            Some(admin) => Some(self.admin(admin, &listeners)?),
            None => None,
        };
        Ok(Config {
            path: self.path.to_path_buf(),
            listeners,
            tls,
            session,
            store,
            backends,
            health,
            timeouts,
            limits,
            runtime,
            admin,
            log: Log {
                format: raw.log.format,
                access: raw.log.access,
            },
        })
    }

    fn socket_addr(
        &self,
        what: &str,
        value: &Spanned<String>,
        example: &str,
    ) -> Result<SocketAddr> {
        let text = value.get_ref();
        let advice = format!("expected host:port, like \"{example}\"");
        match text.to_socket_addrs() {
            Ok(mut addrs) => addrs.next().ok_or_else(|| {
                self.on(
                    value,
                    format!("{what} {text:?} resolves to no address; {advice}"),
                )
            }),
            Err(e) => Err(self.on(value, format!("invalid {what} {text:?} ({e}); {advice}"))),
        }
    }

    fn listeners(&self, raw: &[file::Listener]) -> Result<Vec<Listener>> {
        if raw.is_empty() {
            return Err(self.at(
                0..0,
                "at least one [[listener]] is required, like [[listener]] bind = \"0.0.0.0:8080\"",
            ));
        }
        let mut out: Vec<Listener> = Vec::with_capacity(raw.len());
        for l in raw {
            let bind = self.socket_addr("listener bind", &l.bind, "0.0.0.0:8443")?;
            // Port 0 asks the OS for a fresh port each time, so repeats are distinct listeners.
            if bind.port() != 0 && out.iter().any(|o| o.bind == bind) {
                return Err(self.on(&l.bind, format!("duplicate listener bind {bind}")));
            }
            out.push(Listener {
                bind,
                tls: *l.tls.get_ref(),
            });
        }
        Ok(out)
    }

    fn tls(&self, raw: Option<&file::Tls>, listeners: &[file::Listener]) -> Result<Option<Tls>> {
        let Some(raw) = raw else {
            if let Some(l) = listeners.iter().find(|l| *l.tls.get_ref()) {
                return Err(self.on(
                    &l.tls,
                    "a listener with tls = true needs a [tls] section with cert and key",
                ));
            }
            return Ok(None);
        };
        let (cert_path, cert_pem) = self.read("certificate file", &raw.cert)?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                self.on(
                    &raw.cert,
                    format!("cannot parse certificate file {}: {e}", cert_path.display()),
                )
            })?;
        if certs.is_empty() {
            return Err(self.on(
                &raw.cert,
                format!(
                    "certificate file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    cert_path.display()
                ),
            ));
        }
        let (key_path, key_pem) = self.read("key file", &raw.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            let why = match e {
                rustls_pki_types::pem::Error::NoItemsFound => {
                    "no PEM private key (PKCS#8, RSA or EC) found".to_string()
                }
                e => e.to_string(),
            };
            self.on(
                &raw.key,
                format!("cannot parse key file {}: {why}", key_path.display()),
            )
        })?;
        Ok(Some(Tls {
            cert_path,
            key_path,
            certs,
            key,
        }))
    }

    /// Reads a secret file: bytes, one trailing line end removed, at least [`MIN_SECRET_BYTES`].
    fn secret_file(&self, what: &str, name: &Spanned<String>) -> Result<(PathBuf, Vec<u8>)> {
        let (path, mut bytes) = self.read(what, name)?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(self.on(
                name,
                format!(
                    "{what} {} holds {} bytes; a secret needs at least {MIN_SECRET_BYTES} (try: head -c 32 /dev/urandom | base64 > {})",
                    path.display(),
                    bytes.len(),
                    path.display()
                ),
            ));
        }
        Ok((path, bytes))
    }

    fn secrets(&self, raw: &file::Session, env_secret: Option<String>) -> Result<Secrets> {
        let short = |n: usize| {
            format!("holds {n} bytes; a secret needs at least {MIN_SECRET_BYTES} (try: head -c 32 /dev/urandom | base64)")
        };
        let (current, origin) = match (&raw.secret, &raw.secret_file) {
            (Some(_), Some(file)) => {
                return Err(self.on(file, "set either secret or secret_file, not both"))
            }
            (Some(inline), None) => {
                let bytes = inline.get_ref().as_bytes().to_vec();
                if bytes.len() < MIN_SECRET_BYTES {
                    return Err(self.on(inline, format!("secret {}", short(bytes.len()))));
                }
                (bytes, SecretOrigin::Inline)
            }
            (None, Some(name)) => {
                let (path, bytes) = self.secret_file("secret_file", name)?;
                (bytes, SecretOrigin::File(path))
            }
            (None, None) => match env_secret {
                Some(env) => {
                    if env.len() < MIN_SECRET_BYTES {
                        return Err(self.unlocated(format!("{SECRET_ENV} {}", short(env.len()))));
                    }
                    (env.into_bytes(), SecretOrigin::Env)
                }
                None => (Vec::new(), SecretOrigin::Generated),
            },
        };
        let previous = raw
            .previous_secret_files
            .get_ref()
            .iter()
            .map(|name| {
                self.secret_file("previous secret file", name)
                    .map(|(_, b)| b)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Secrets {
            current,
            previous,
            origin,
        })
    }

    fn session(
        &self,
        raw: file::Session,
        all_tls: bool,
        env_secret: Option<String>,
    ) -> Result<Session> {
        let secrets = self.secrets(&raw, env_secret)?;
        for (key, name) in [("cookie", &raw.cookie), ("app_cookie", &raw.app_cookie)] {
            if !is_token(name.get_ref()) {
                return Err(self.on(
                    name,
                    format!(
                        "invalid {key} name {:?}: expected an RFC 6265 token (letters, digits and !#$%&'*+-.^_`|~), like \"tether_sid\"",
                        name.get_ref()
                    ),
                ));
            }
        }
        if raw.source == Source::Header && !is_token(raw.header.get_ref()) {
            return Err(self.on(
                &raw.header,
                format!(
                    "invalid header name {:?}: expected an HTTP field name (letters, digits and !#$%&'*+-.^_`|~), like \"X-Session-Id\"",
                    raw.header.get_ref()
                ),
            ));
        }
        if raw.source == Source::Query && raw.query_param.get_ref().is_empty() {
            return Err(self.on(
                &raw.query_param,
                "query_param must not be empty when source = \"query\"",
            ));
        }
        let idle_timeout = self.positive(&raw.idle_timeout, "idle_timeout")?;
        let absolute_timeout = self.positive(&raw.absolute_timeout, "absolute_timeout")?;

        let secure = *raw.secure.get_ref();
        let same_site = *raw.same_site.get_ref();
        if same_site == SameSite::None && secure == Secure::Never {
            return Err(self.on(
                &raw.same_site,
                "same_site = \"none\" needs Secure, but secure = \"never\": browsers drop such cookies; use secure = \"always\" or \"auto\"",
            ));
        }
        let path = raw.path.get_ref();
        if !path.starts_with('/') || !path.chars().all(|c| c.is_ascii_graphic() && c != ';') {
            return Err(self.on(
                &raw.path,
                format!("invalid cookie path {path:?}: expected a path starting with \"/\", without spaces or \";\""),
            ));
        }
        if let Some(domain) = &raw.domain {
            let d = domain.get_ref();
            if d.is_empty()
                || !d
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                return Err(self.on(
                    domain,
                    format!(
                        "invalid cookie domain {d:?}: expected a host name, like \"example.com\""
                    ),
                ));
            }
        }
        self.cookie_prefix(&raw, all_tls)?;

        let factor = *raw.balance_factor.get_ref();
        if !(factor == 0.0 || (factor.is_finite() && factor >= 1.0)) {
            return Err(self.on(
                &raw.balance_factor,
                format!("invalid balance_factor {factor}: expected 0 (off) or a number >= 1.0, like 1.25"),
            ));
        }
        let mut bind_to = Vec::with_capacity(raw.bind_to.len());
        for item in &raw.bind_to {
            if bind_to.contains(item.get_ref()) {
                let name = toml::Value::try_from(item.get_ref())
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                return Err(self.on(item, format!("bind_to lists {name} twice")));
            }
            bind_to.push(*item.get_ref());
        }
        Ok(Session {
            mode: raw.mode,
            source: raw.source,
            cookie: raw.cookie.into_inner(),
            app_cookie: raw.app_cookie.into_inner(),
            header: raw.header.into_inner().to_ascii_lowercase(),
            query_param: raw.query_param.into_inner(),
            idle_timeout,
            absolute_timeout,
            secrets,
            same_site,
            secure,
            http_only: raw.http_only,
            path: raw.path.into_inner(),
            domain: raw.domain.map(Spanned::into_inner),
            strip_cookie: raw.strip_cookie,
            balance_factor: factor,
            bind_to,
            on_mismatch: raw.on_mismatch,
        })
    }

    /// Cookie name prefixes (RFC 6265bis §4.1.3). Browsers match them without
    /// regard to case, so we do too.
    fn cookie_prefix(&self, raw: &file::Session, all_tls: bool) -> Result<()> {
        let name = raw.cookie.get_ref();
        let lower = name.to_ascii_lowercase();
        let prefix = if lower.starts_with("__host-") {
            "__Host-"
        } else if lower.starts_with("__secure-") {
            "__Secure-"
        } else {
            return Ok(());
        };
        let secure = match raw.secure.get_ref() {
            Secure::Always => true,
            Secure::Auto => all_tls,
            Secure::Never => false,
        };
        if !secure {
            let why = match raw.secure.get_ref() {
                Secure::Never => "but secure = \"never\"",
                _ => "but secure = \"auto\" leaves it off on plain listeners",
            };
            return Err(self.on(
                &raw.cookie,
                format!(
                    "cookie {name:?}: the {prefix} prefix requires Secure, {why}; set secure = \"always\" or use only tls listeners"
                ),
            ));
        }
        if prefix == "__Host-" {
            if raw.path.get_ref() != "/" {
                return Err(self.on(
                    &raw.path,
                    format!("cookie {name:?}: the __Host- prefix requires path = \"/\""),
                ));
            }
            if let Some(domain) = &raw.domain {
                return Err(self.on(
                    domain,
                    format!("cookie {name:?}: the __Host- prefix forbids a domain; remove it"),
                ));
            }
        }
        Ok(())
    }

    fn positive(&self, value: &Spanned<file::Dur>, key: &str) -> Result<Duration> {
        let d = value.get_ref().0;
        if d.is_zero() {
            return Err(self.on(value, format!("{key} must be greater than 0, like \"2s\"")));
        }
        Ok(d)
    }

    /// An integer in `min..=max`, converted to the type the caller needs.
    fn int_in<T: TryFrom<i64>>(
        &self,
        value: &Spanned<i64>,
        min: i64,
        max: i64,
        key: &str,
        note: &str,
    ) -> Result<T> {
        let n = *value.get_ref();
        if n < min || n > max {
            let range = if max == i64::MAX {
                format!("a number >= {min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(self.on(value, format!("invalid {key} {n}: expected {range}{note}")));
        }
        T::try_from(n)
            .map_err(|_| self.on(value, format!("{key} {n} is too large for this platform")))
    }

    fn rate(&self, value: &Spanned<f64>, key: &str) -> Result<f64> {
        let r = *value.get_ref();
        if !(r.is_finite() && r >= 0.0) {
            return Err(self.on(
                value,
                format!("invalid {key} {r}: expected a number >= 0 (0 = off)"),
            ));
        }
        Ok(r)
    }

    fn store(&self, raw: file::Store, secret: &SecretOrigin) -> Result<Store> {
        let kind = *raw.kind.get_ref();
        if kind == StoreKind::Redis {
            let url = raw.url.get_ref();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(self.on(
                    &raw.url,
                    format!("invalid redis url {url:?}: expected redis:// or rediss://, like \"redis://127.0.0.1:6379/0\""),
                ));
            }
            if let Err(e) = redis::Client::open(url.as_str()) {
                // redis-rs renders "<what>- <ErrorKind>"; the kind adds nothing here.
                let shown = e.to_string();
                let why = shown.split("- ").next().unwrap_or(&shown);
                return Err(self.on(&raw.url, format!("invalid redis url {url:?}: {why}")));
            }
            // A secret made up at start would be this instance's alone: the
            // others could not verify its cookies, and sessions would move.
            if *secret == SecretOrigin::Generated {
                return Err(self.on(
                    &raw.kind,
                    format!("[store] kind = \"redis\" needs a shared session secret: without one every instance makes up its own and none can read the others' cookies; set [session] secret_file (or secret, or the {SECRET_ENV} environment variable) to the same secret on every instance"),
                ));
            }
        }
        let prefix = raw.key_prefix.get_ref();
        if prefix.is_empty() || prefix.len() > 64 || prefix.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(self.on(
                &raw.key_prefix,
                format!("invalid key_prefix {prefix:?}: expected 1 to 64 printable characters without spaces, like \"tether:\""),
            ));
        }
        Ok(Store {
            kind,
            max_sessions: self.int_in(&raw.max_sessions, 1, i64::MAX, "max_sessions", "")?,
            connect_timeout: self.positive(&raw.connect_timeout, "connect_timeout")?,
            command_timeout: self.positive(&raw.command_timeout, "command_timeout")?,
            key_prefix: raw.key_prefix.into_inner(),
            url: raw.url.into_inner(),
        })
    }

    fn backends(&self, raw: &[file::Backend]) -> Result<Vec<Backend>> {
        if raw.is_empty() {
            return Err(self.at(
                0..0,
                "at least one [[backend]] is required, like [[backend]] name = \"app1\" address = \"127.0.0.1:9001\"",
            ));
        }
        if let Some(extra) = raw.get(MAX_BACKENDS) {
            return Err(self.on(
                &extra.name,
                format!("too many backends: at most {MAX_BACKENDS} are allowed"),
            ));
        }
        let mut names = HashSet::with_capacity(raw.len());
        let mut out = Vec::with_capacity(raw.len());
        let mut total_weight = 0u64;
        for b in raw {
            let name = b.name.get_ref();
            let valid = (1..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(self.on(
                    &b.name,
                    format!("invalid backend name {name:?}: expected 1 to 64 of A-Z a-z 0-9 . _ -, like \"app1\""),
                ));
            }
            if !names.insert(name.as_str()) {
                return Err(self.on(
                    &b.name,
                    format!("duplicate backend name {name:?}: names must be unique"),
                ));
            }
            let weight = self.int_in(&b.weight, 1, 1000, "weight", "")?;
            total_weight += u64::from(weight);
            if total_weight > MAX_TOTAL_WEIGHT {
                // A default weight has no place in the file: point at the name.
                let span = Some(b.weight.span())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| b.name.span());
                return Err(self.at(
                    span,
                    format!("backend weights add up to more than {MAX_TOTAL_WEIGHT}: scale them down in proportion (only their ratios matter)"),
                ));
            }
            out.push(Backend {
                name: name.clone(),
                address: self.socket_addr("backend address", &b.address, "127.0.0.1:9001")?,
                weight,
            });
        }
        Ok(out)
    }

    fn health(&self, raw: file::Health) -> Result<Health> {
        if !raw.path.get_ref().starts_with('/') {
            return Err(self.on(
                &raw.path,
                format!("invalid health path {:?}: expected a path starting with \"/\", like \"/healthz\"", raw.path.get_ref()),
            ));
        }
        Ok(Health {
            interval: self.positive(&raw.interval, "interval")?,
            timeout: self.positive(&raw.timeout, "timeout")?,
            rise: self.int_in(&raw.rise, 1, 1000, "rise", "")?,
            fall: self.int_in(&raw.fall, 1, 1000, "fall", "")?,
            path: raw.path.into_inner(),
        })
    }

    fn timeouts(&self, raw: file::Timeouts) -> Result<Timeouts> {
        Ok(Timeouts {
            connect: self.positive(&raw.connect, "connect")?,
            response: self.positive(&raw.response, "response")?,
            upstream_idle: self.positive(&raw.upstream_idle, "upstream_idle")?,
            client_header: self.positive(&raw.client_header, "client_header")?,
            client_body: self.positive(&raw.client_body, "client_body")?,
            keepalive: raw.keepalive.0,
            tunnel: self.positive(&raw.tunnel, "tunnel")?,
            shutdown_grace: raw.shutdown_grace.0,
        })
    }

    fn limits(&self, raw: file::Limits) -> Result<Limits> {
        let session_rate = self.rate(&raw.session_rate, "session_rate")?;
        let burst = self.rate(&raw.session_burst, "session_burst")?;
        Ok(Limits {
            max_connections: self.int_in(
                &raw.max_connections,
                1,
                i64::MAX,
                "max_connections",
                "",
            )?,
            max_header_bytes: self.int_in(
                &raw.max_header_bytes,
                1024,
                1_048_576,
                "max_header_bytes",
                "",
            )?,
            session_rate,
            session_burst: if burst == 0.0 {
                2.0 * session_rate
            } else {
                burst
            },
            new_session_rate: self.rate(&raw.new_session_rate, "new_session_rate")?,
        })
    }

    fn admin(&self, raw: &file::Admin, listeners: &[Listener]) -> Result<Admin> {
        let bind = self.socket_addr("admin bind", &raw.bind, "127.0.0.1:9901")?;
        if bind.port() != 0 && listeners.iter().any(|l| l.bind == bind) {
            return Err(self.on(
                &raw.bind,
                format!("admin bind {bind} is also a listener's bind; pick another port"),
            ));
        }
        let token = match &raw.token_file {
            Some(name) => {
                let (path, bytes) = self.read("token_file", name)?;
                let token = String::from_utf8(bytes).map_err(|_| {
                    self.on(
                        name,
                        format!("token_file {} is not UTF-8 text", path.display()),
                    )
                })?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(self.on(name, format!("token_file {} is empty", path.display())));
                }
                Some(token.to_string())
            }
            None => None,
        };
        if token.is_none() && !bind.ip().is_loopback() {
            return Err(self.on(
                &raw.bind,
                format!("admin bind {bind} is not a loopback address: tether refuses to expose the admin API without a token; set token_file or bind 127.0.0.1"),
            ));
        }
        Ok(Admin { bind, token })
    }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// An RFC 6265 cookie name / RFC 9110 field name: one or more `tchar`s.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One listener and one backend: what every snippet below is added to.
    const BASE: &str = "[[listener]]\nbind = \"127.0.0.1:8080\"\n\n[[backend]]\nname = \"app1\"\naddress = \"127.0.0.1:9001\"\n";

    /// Loads `snippet` followed by [`BASE`], so the snippet's lines are the file's first.
    fn with_base(snippet: &str) -> Result<Config> {
        from_str(
            &format!("{snippet}\n{BASE}"),
            Path::new("tether.toml"),
            None,
        )
    }

    fn ok(snippet: &str) -> Config {
        match with_base(snippet) {
            Ok(config) => config,
            Err(e) => panic!("expected {snippet:?} to load, got: {e}"),
        }
    }

    fn err(snippet: &str) -> String {
        with_base(snippet).unwrap_err().to_string()
    }

    fn err_full(text: &str) -> String {
        from_str(text, Path::new("tether.toml"), None)
            .unwrap_err()
            .to_string()
    }

    /// The dev certificate: the crate's own `certs/`, else the main checkout's.
    fn dev_certs() -> PathBuf {
        let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
        if own.join("localhost.crt").exists() {
            own
        } else {
            PathBuf::from("/work/main/certs")
        }
    }

    /// A fresh directory under the system temp dir, unique to this process and test.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("tether-config-test-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const DURATION_ADVICE: &str =
        r#"expected a number with a unit, like "500ms", "2s", "30m" or "12h""#;

    #[test]
    fn minimal_config_has_the_spec_defaults() {
        let c = from_str(BASE, Path::new("tether.toml"), None).unwrap();
        assert_eq!(c.path, Path::new("tether.toml"));
        assert_eq!(
            c.listeners,
            [Listener {
                bind: "127.0.0.1:8080".parse().unwrap(),
                tls: false
            }]
        );
        assert!(c.tls.is_none());
        assert!(c.admin.is_none());

        let s = &c.session;
        assert_eq!(s.mode, Mode::Sticky);
        assert_eq!(s.source, Source::Cookie);
        assert_eq!(s.cookie, "tether_sid");
        assert_eq!(s.app_cookie, "JSESSIONID");
        assert_eq!(s.header, "x-session-id");
        assert_eq!(s.query_param, "sid");
        assert_eq!(s.idle_timeout, Duration::from_secs(30 * 60));
        assert_eq!(s.absolute_timeout, Duration::from_secs(12 * 3600));
        assert!(s.secrets.current.is_empty());
        assert!(s.secrets.previous.is_empty());
        assert_eq!(s.secrets.origin, SecretOrigin::Generated);
        assert_eq!(s.same_site, SameSite::Lax);
        assert_eq!(s.secure, Secure::Auto);
        assert!(s.http_only);
        assert_eq!(s.path, "/");
        assert_eq!(s.domain, None);
        assert!(s.strip_cookie);
        assert_eq!(s.balance_factor, 1.25);
        assert!(s.bind_to.is_empty());
        assert_eq!(s.on_mismatch, OnMismatch::New);

        assert_eq!(c.store.kind, StoreKind::Memory);
        assert_eq!(c.store.url, "redis://127.0.0.1:6379/0");
        assert_eq!(c.store.max_sessions, 1_000_000);

        assert_eq!(
            c.backends,
            [Backend {
                name: "app1".into(),
                address: "127.0.0.1:9001".parse().unwrap(),
                weight: 1
            }]
        );

        assert_eq!(c.health.path, "/healthz");
        assert_eq!(c.health.interval, Duration::from_secs(2));
        assert_eq!(c.health.timeout, Duration::from_secs(1));
        assert_eq!((c.health.rise, c.health.fall), (2, 3));

        let t = &c.timeouts;
        assert_eq!(t.connect, Duration::from_secs(2));
        assert_eq!(t.response, Duration::from_secs(30));
        assert_eq!(t.upstream_idle, Duration::from_millis(1500));
        assert_eq!(t.client_header, Duration::from_secs(10));
        assert_eq!(t.client_body, Duration::from_secs(60));
        assert_eq!(t.keepalive, Duration::from_secs(60));
        assert_eq!(t.tunnel, Duration::from_secs(3600));
        assert_eq!(t.shutdown_grace, Duration::from_secs(30));

        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.max_header_bytes, 16_384);
        assert_eq!(c.limits.session_rate, 0.0);
        assert_eq!(c.limits.session_burst, 0.0);
        assert_eq!(c.limits.new_session_rate, 0.0);
        assert_eq!(c.runtime.worker_threads, 0);
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.log.access);
    }

    #[test]
    fn the_example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = match from_str(&text, &path, None) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.listeners.len(), 2);
        assert!(c.listeners[0].tls && !c.listeners[1].tls);
        assert!(!c.tls.unwrap().certs.is_empty());
        assert_eq!(c.backends.len(), 3);
        assert_eq!(c.admin.unwrap().bind, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(c.session.secrets.origin, SecretOrigin::Generated);
        // Every key of SPEC §2 is in the example (set or commented out).
        const KEYS: &str = "bind tls cert key mode source cookie app_cookie header \
            query_param idle_timeout absolute_timeout secret_file previous_secret_files same_site \
            secure http_only path domain strip_cookie balance_factor bind_to on_mismatch kind url \
            max_sessions name address weight interval timeout rise fall connect response \
            client_header client_body keepalive tunnel shutdown_grace max_connections max_header_bytes \
            session_rate session_burst new_session_rate worker_threads token_file format access";
        for key in KEYS.split_whitespace() {
            let set = format!("\n{key} = ");
            let commented = format!("# {key} = ");
            assert!(
                text.contains(&set) || text.contains(&commented),
                "{key} missing from the example"
            );
        }
    }

    #[test]
    fn cannot_read_the_file() {
        let e = load(Path::new("/nonexistent/tether.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nonexistent/tether.toml: cannot read the config file: No such file or directory (os error 2)"
        );
        assert!(e.location().is_none());
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_col("ab\nçd x", 7), (2, 4));
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("abc", 99), (1, 4));
    }

    // ---- toml-level errors: keys, enums, durations ----

    #[test]
    fn unknown_key() {
        assert_eq!(
            err("[session]\nmode = \"sticky\"\nidle_timout = \"5m\""),
            "tether.toml:3:1: unknown field `idle_timout`, expected one of `mode`, `source`, `cookie`, `app_cookie`, `header`, `query_param`, `idle_timeout`, `absolute_timeout`, `secret`, `secret_file`, `previous_secret_files`, `same_site`, `secure`, `http_only`, `path`, `domain`, `strip_cookie`, `balance_factor`, `bind_to`, `on_mismatch`"
        );
        assert_eq!(
            err("[storage]\nkind = \"memory\""),
            "tether.toml:1:2: unknown field `storage`, expected one of `listener`, `tls`, `session`, `store`, `backend`, `health`, `timeouts`, `limits`, `runtime`, `admin`, `log`"
        );
    }

    #[test]
    fn unknown_variants() {
        assert_eq!(
            err("[session]\nmode = \"stiky\""),
            "tether.toml:2:8: unknown variant `stiky`, expected `sticky` or `rotate`"
        );
        assert_eq!(
            err("[session]\nsource = \"cookies\""),
            "tether.toml:2:10: unknown variant `cookies`, expected one of `cookie`, `app_cookie`, `header`, `query`"
        );
        assert_eq!(
            err("[session]\nsame_site = \"Lax\""),
            "tether.toml:2:13: unknown variant `Lax`, expected one of `lax`, `strict`, `none`"
        );
        assert_eq!(
            err("[session]\nsecure = \"yes\""),
            "tether.toml:2:10: unknown variant `yes`, expected one of `auto`, `always`, `never`"
        );
        assert_eq!(
            err("[session]\nbind_to = [\"ip\", \"cookie\"]"),
            "tether.toml:2:18: unknown variant `cookie`, expected one of `ip`, `ip_prefix`, `user_agent`"
        );
        assert_eq!(
            err("[session]\non_mismatch = \"drop\""),
            "tether.toml:2:15: unknown variant `drop`, expected `new` or `reject`"
        );
        assert_eq!(
            err("[store]\nkind = \"etcd\""),
            "tether.toml:2:8: unknown variant `etcd`, expected `memory` or `redis`"
        );
        assert_eq!(
            err("[log]\nformat = \"xml\""),
            "tether.toml:2:10: unknown variant `xml`, expected `text` or `json`"
        );
    }

    #[test]
    fn toml_syntax_error_is_one_line() {
        let e = err("[session\nmode = \"sticky\"");
        assert!(!e.contains('\n'), "{e}");
        assert!(e.starts_with("tether.toml:1:"), "{e}");
    }

    #[test]
    fn durations_take_each_unit() {
        for (text, expected) in [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("30m", Duration::from_secs(30 * 60)),
            ("12h", Duration::from_secs(12 * 3600)),
            ("1h 30m", Duration::from_secs(90 * 60)),
        ] {
            let c = ok(&format!("[timeouts]\nconnect = \"{text}\""));
            assert_eq!(c.timeouts.connect, expected, "{text}");
        }
    }

    #[test]
    fn durations_past_100_years_are_refused() {
        // This one used to load, then panic at shutdown (the clock overflowed).
        assert_eq!(
            err("[timeouts]\nshutdown_grace = \"500000000000y\""),
            "tether.toml:2:18: duration \"500000000000y\" is too long: at most 100 years (\"100y\") is accepted"
        );
        assert_eq!(
            err("[health]\ninterval = \"101y\""),
            "tether.toml:2:12: duration \"101y\" is too long: at most 100 years (\"100y\") is accepted"
        );
        let c = ok("[session]\nabsolute_timeout = \"36500days\"");
        assert_eq!(c.session.absolute_timeout, file::MAX_DURATION);
    }

    #[test]
    fn durations_without_a_unit_are_refused() {
        assert_eq!(
            err("[health]\ninterval = \"5\""),
            format!("tether.toml:2:12: invalid duration \"5\": {DURATION_ADVICE}")
        );
        assert_eq!(
            err("[health]\ninterval = 5"),
            format!("tether.toml:2:12: invalid duration 5: {DURATION_ADVICE}")
        );
        assert_eq!(
            err("[health]\ninterval = \"5 parsecs\""),
            format!("tether.toml:2:12: invalid duration \"5 parsecs\": {DURATION_ADVICE}")
        );
        assert_eq!(
            err("[health]\ninterval = \"\""),
            format!("tether.toml:2:12: invalid duration \"\": {DURATION_ADVICE}")
        );
        assert_eq!(
            err("[timeouts]\nkeepalive = 1.5"),
            format!("tether.toml:2:13: invalid duration 1.5: {DURATION_ADVICE}")
        );
    }

    // ---- listeners and TLS ----

    #[test]
    fn a_listener_is_required() {
        assert_eq!(
            err_full("[[backend]]\nname = \"app1\"\naddress = \"127.0.0.1:9001\"\n"),
            "tether.toml:1:1: at least one [[listener]] is required, like [[listener]] bind = \"0.0.0.0:8080\""
        );
    }

    #[test]
    fn listener_bind_must_be_host_port() {
        assert_eq!(
            err("[[listener]]\nbind = \"8080\""),
            "tether.toml:2:8: invalid listener bind \"8080\" (invalid socket address); expected host:port, like \"0.0.0.0:8443\""
        );
    }

    #[test]
    fn duplicate_listener_bind() {
        assert_eq!(
            err("[[listener]]\nbind = \"127.0.0.1:8080\"\ntls = false"),
            "tether.toml:5:8: duplicate listener bind 127.0.0.1:8080"
        );
        // Port 0 means a fresh port each time: not a duplicate.
        let text = "[[listener]]\nbind = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n";
        let c = from_str(text, Path::new("tether.toml"), None).unwrap();
        assert_eq!(c.listeners.len(), 2);
    }

    #[test]
    fn tls_listener_needs_tls_section() {
        assert_eq!(
            err("[[listener]]\nbind = \"127.0.0.1:8443\"\ntls = true"),
            "tether.toml:3:7: a listener with tls = true needs a [tls] section with cert and key"
        );
    }

    #[test]
    fn tls_loads_the_dev_certificate() {
        let certs = dev_certs();
        let snippet = format!(
            "[[listener]]\nbind = \"127.0.0.1:8443\"\ntls = true\n[tls]\ncert = \"{}\"\nkey = \"{}\"",
            certs.join("localhost.crt").display(),
            certs.join("localhost.key").display()
        );
        let c = ok(&snippet);
        let tls = c.tls.clone().unwrap();
        assert_eq!(tls.cert_path, certs.join("localhost.crt"));
        assert_eq!(tls.key_path, certs.join("localhost.key"));
        assert!(!tls.certs.is_empty());
        assert!(c.listeners[0].tls);
        assert!(!format!("{c:?}").contains("BEGIN"));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let dir = TempDir::new("relative");
        let certs = dev_certs();
        dir.write(
            "certs/a.crt",
            &std::fs::read(certs.join("localhost.crt")).unwrap(),
        );
        dir.write(
            "certs/a.key",
            &std::fs::read(certs.join("localhost.key")).unwrap(),
        );
        dir.write("secrets/current", b"0123456789abcdef0123\n");
        dir.write("secrets/old", b"fedcba9876543210\r\n");
        dir.write("admin.token", b"  s3cret-token \n");
        let text = format!(
            "[tls]\ncert = \"certs/a.crt\"\nkey = \"certs/a.key\"\n\
             [session]\nsecret_file = \"secrets/current\"\nprevious_secret_files = [\"secrets/old\"]\n\
             [admin]\ntoken_file = \"admin.token\"\n{BASE}"
        );
        let path = dir.0.join("tether.toml");
        let c = from_str(&text, &path, Some("ignored-because-the-file-wins".into())).unwrap();
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.cert_path, dir.0.join("certs/a.crt"));
        assert_eq!(tls.key_path, dir.0.join("certs/a.key"));
        assert!(!tls.certs.is_empty());
        let secrets = &c.session.secrets;
        assert_eq!(secrets.current, b"0123456789abcdef0123");
        assert_eq!(secrets.previous, [b"fedcba9876543210".to_vec()]);
        assert_eq!(
            secrets.origin,
            SecretOrigin::File(dir.0.join("secrets/current"))
        );
        assert_eq!(
            c.admin.as_ref().unwrap().token.as_deref(),
            Some("s3cret-token")
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn unreadable_cert_or_key() {
        assert_eq!(
            err("[tls]\ncert = \"missing.crt\"\nkey = \"missing.key\""),
            "tether.toml:2:8: cannot read certificate file missing.crt: No such file or directory (os error 2)"
        );
        let crt = dev_certs().join("localhost.crt");
        assert_eq!(
            err(&format!("[tls]\ncert = \"{}\"\nkey = \"missing.key\"", crt.display())),
            "tether.toml:3:7: cannot read key file missing.key: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn cert_without_certificate_and_key_without_key() {
        let certs = dev_certs();
        let (crt, key) = (certs.join("localhost.crt"), certs.join("localhost.key"));
        assert_eq!(
            err(&format!("[tls]\ncert = \"{}\"\nkey = \"{}\"", key.display(), key.display())),
            format!(
                "tether.toml:2:8: certificate file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                key.display()
            )
        );
        assert_eq!(
            err(&format!("[tls]\ncert = \"{}\"\nkey = \"{}\"", crt.display(), crt.display())),
            format!(
                "tether.toml:3:7: cannot parse key file {}: no PEM private key (PKCS#8, RSA or EC) found",
                crt.display()
            )
        );
    }

    // ---- backends ----

    #[test]
    fn a_backend_is_required() {
        assert_eq!(
            err_full("[[listener]]\nbind = \"127.0.0.1:8080\"\n"),
            "tether.toml:1:1: at least one [[backend]] is required, like [[backend]] name = \"app1\" address = \"127.0.0.1:9001\""
        );
    }

    #[test]
    fn duplicate_backend_name_points_at_the_second() {
        assert_eq!(
            err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\n[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9003\""),
            "tether.toml:5:8: duplicate backend name \"app2\": names must be unique"
        );
    }

    #[test]
    fn backend_name_charset_and_length() {
        let advice = "expected 1 to 64 of A-Z a-z 0-9 . _ -, like \"app1\"";
        assert_eq!(
            err("[[backend]]\nname = \"app 2\"\naddress = \"127.0.0.1:9002\""),
            format!("tether.toml:2:8: invalid backend name \"app 2\": {advice}")
        );
        assert_eq!(
            err("[[backend]]\nname = \"\"\naddress = \"127.0.0.1:9002\""),
            format!("tether.toml:2:8: invalid backend name \"\": {advice}")
        );
        let long = "a".repeat(65);
        assert_eq!(
            err(&format!(
                "[[backend]]\nname = \"{long}\"\naddress = \"127.0.0.1:9002\""
            )),
            format!("tether.toml:2:8: invalid backend name \"{long}\": {advice}")
        );
        ok(&format!(
            "[[backend]]\nname = \"{}\"\naddress = \"127.0.0.1:9002\"",
            "a.B_9-".repeat(10)
        ));
    }

    #[test]
    fn backend_address_must_be_host_port() {
        assert_eq!(
            err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1\""),
            "tether.toml:3:11: invalid backend address \"127.0.0.1\" (invalid socket address); expected host:port, like \"127.0.0.1:9001\""
        );
        assert_eq!(
            err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:99999\""),
            "tether.toml:3:11: invalid backend address \"127.0.0.1:99999\" (invalid port value); expected host:port, like \"127.0.0.1:9001\""
        );
        let c = ok("[[backend]]\nname = \"app2\"\naddress = \"localhost:9002\"");
        assert_eq!(c.backends[0].address.port(), 9002);
        assert!(c.backends[0].address.ip().is_loopback());
    }

    #[test]
    fn backend_weight_range() {
        assert_eq!(
            err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\nweight = 0"),
            "tether.toml:4:10: invalid weight 0: expected 1 to 1000"
        );
        assert_eq!(
            err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\nweight = 1001"),
            "tether.toml:4:10: invalid weight 1001: expected 1 to 1000"
        );
        let c = ok("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\nweight = 1000");
        assert_eq!(c.backends[0].weight, 1000);
    }

    #[test]
    fn backend_weights_are_bounded_in_sum() {
        let pool = |n: usize, weight: u32| {
            (0..n)
                .map(|i| {
                    format!("[[backend]]\nname = \"w{i}\"\naddress = \"127.0.0.1:{}\"\nweight = {weight}\n", 10000 + i)
                })
                .collect::<String>()
        };
        // The base config's own backend(s) take part of the budget.
        let base: u64 = ok("").backends.iter().map(|b| u64::from(b.weight)).sum();
        let fits = (MAX_TOTAL_WEIGHT - base) as usize / 1000;
        assert_eq!(
            ok(&pool(fits, 1000)).backends.len(),
            fits + ok("").backends.len()
        );
        // The snippet's own weights cross the bound at its last backend...
        let e = err(&pool(fits + 2, 1000));
        assert!(
            e.contains("backend weights add up to more than 10000"),
            "{e}"
        );
        let at = format!("tether.toml:{}:10: ", 4 * (fits + 2));
        assert!(e.starts_with(&at), "{e}");
        // ...and a backend with the default weight is named where it tips it.
        let full = pool(fits, 1000)
            + &pool(1, (MAX_TOTAL_WEIGHT - 1000 * fits as u64) as u32).replace("w0", "tail");
        let e = err(&full);
        let app1 = format!("tether.toml:{}:8: ", 4 * (fits + 1) + 6);
        assert!(e.starts_with(&app1), "{e}");
    }

    #[test]
    fn at_most_1024_backends() {
        let mut text = String::from(BASE);
        for i in 2..=1025 {
            text.push_str(&format!(
                "[[backend]]\nname = \"b{i}\"\naddress = \"127.0.0.1:{i}\"\n"
            ));
        }
        // The 1025th backend's name: 6 base lines, then 3 lines per backend.
        assert_eq!(
            err_full(&text),
            format!(
                "tether.toml:{}:8: too many backends: at most 1024 are allowed",
                6 + 1023 * 3 + 2
            )
        );
    }

    // ---- session ----

    #[test]
    fn session_timeouts_must_be_positive() {
        assert_eq!(
            err("[session]\nidle_timeout = \"0s\""),
            "tether.toml:2:16: idle_timeout must be greater than 0, like \"2s\""
        );
        assert_eq!(
            err("[session]\nabsolute_timeout = \"0ms\""),
            "tether.toml:2:20: absolute_timeout must be greater than 0, like \"2s\""
        );
    }

    #[test]
    fn balance_factor_zero_or_at_least_one() {
        assert_eq!(
            err("[session]\nbalance_factor = 0.5"),
            "tether.toml:2:18: invalid balance_factor 0.5: expected 0 (off) or a number >= 1.0, like 1.25"
        );
        assert_eq!(
            err("[session]\nbalance_factor = nan"),
            "tether.toml:2:18: invalid balance_factor NaN: expected 0 (off) or a number >= 1.0, like 1.25"
        );
        assert_eq!(
            ok("[session]\nbalance_factor = 0").session.balance_factor,
            0.0
        );
        assert_eq!(
            ok("[session]\nbalance_factor = 1.0").session.balance_factor,
            1.0
        );
    }

    #[test]
    fn cookie_names_are_tokens() {
        assert_eq!(
            err("[session]\ncookie = \"my sid\""),
            "tether.toml:2:10: invalid cookie name \"my sid\": expected an RFC 6265 token (letters, digits and !#$%&'*+-.^_`|~), like \"tether_sid\""
        );
        assert_eq!(
            err("[session]\napp_cookie = \"a=b\""),
            "tether.toml:2:14: invalid app_cookie name \"a=b\": expected an RFC 6265 token (letters, digits and !#$%&'*+-.^_`|~), like \"tether_sid\""
        );
        assert_eq!(
            err("[session]\ncookie = \"\""),
            "tether.toml:2:10: invalid cookie name \"\": expected an RFC 6265 token (letters, digits and !#$%&'*+-.^_`|~), like \"tether_sid\""
        );
    }

    #[test]
    fn same_site_none_needs_secure() {
        assert_eq!(
            err("[session]\nsame_site = \"none\"\nsecure = \"never\""),
            "tether.toml:2:13: same_site = \"none\" needs Secure, but secure = \"never\": browsers drop such cookies; use secure = \"always\" or \"auto\""
        );
        ok("[session]\nsame_site = \"none\"\nsecure = \"always\"");
    }

    #[test]
    fn host_prefix_needs_secure() {
        assert_eq!(
            err("[session]\ncookie = \"__Host-sid\""),
            "tether.toml:2:10: cookie \"__Host-sid\": the __Host- prefix requires Secure, but secure = \"auto\" leaves it off on plain listeners; set secure = \"always\" or use only tls listeners"
        );
        assert_eq!(
            err("[session]\ncookie = \"__host-sid\"\nsecure = \"never\""),
            "tether.toml:2:10: cookie \"__host-sid\": the __Host- prefix requires Secure, but secure = \"never\"; set secure = \"always\" or use only tls listeners"
        );
        ok("[session]\ncookie = \"__Host-sid\"\nsecure = \"always\"");
    }

    #[test]
    fn host_prefix_needs_root_path_and_no_domain() {
        assert_eq!(
            err("[session]\ncookie = \"__Host-sid\"\nsecure = \"always\"\npath = \"/app\""),
            "tether.toml:4:8: cookie \"__Host-sid\": the __Host- prefix requires path = \"/\""
        );
        assert_eq!(
            err("[session]\ncookie = \"__Host-sid\"\nsecure = \"always\"\ndomain = \"example.com\""),
            "tether.toml:4:10: cookie \"__Host-sid\": the __Host- prefix forbids a domain; remove it"
        );
    }

    #[test]
    fn secure_prefix_needs_secure() {
        assert_eq!(
            err("[session]\ncookie = \"__Secure-sid\"\nsecure = \"never\""),
            "tether.toml:2:10: cookie \"__Secure-sid\": the __Secure- prefix requires Secure, but secure = \"never\"; set secure = \"always\" or use only tls listeners"
        );
        assert_eq!(
            err("[session]\ncookie = \"__Secure-sid\""),
            "tether.toml:2:10: cookie \"__Secure-sid\": the __Secure- prefix requires Secure, but secure = \"auto\" leaves it off on plain listeners; set secure = \"always\" or use only tls listeners"
        );
        let c = ok("[session]\ncookie = \"__Secure-sid\"\nsecure = \"always\"\npath = \"/app\"\ndomain = \"example.com\"");
        assert_eq!(c.session.domain.as_deref(), Some("example.com"));
    }

    #[test]
    fn prefixes_with_auto_and_only_tls_listeners() {
        let certs = dev_certs();
        let text = format!(
            "[[listener]]\nbind = \"127.0.0.1:8443\"\ntls = true\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [session]\ncookie = \"__Host-sid\"\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9001\"\n",
            certs.join("localhost.crt").display(),
            certs.join("localhost.key").display()
        );
        let c = from_str(&text, Path::new("tether.toml"), None).unwrap();
        assert_eq!(c.session.cookie, "__Host-sid");
        assert_eq!(c.session.secure, Secure::Auto);
    }

    #[test]
    fn cookie_path_and_domain_shape() {
        assert_eq!(
            err("[session]\npath = \"app\""),
            "tether.toml:2:8: invalid cookie path \"app\": expected a path starting with \"/\", without spaces or \";\""
        );
        assert_eq!(
            err("[session]\ndomain = \"exa mple.com\""),
            "tether.toml:2:10: invalid cookie domain \"exa mple.com\": expected a host name, like \"example.com\""
        );
    }

    #[test]
    fn header_source_needs_a_field_name() {
        assert_eq!(
            err("[session]\nsource = \"header\"\nheader = \"X Session\""),
            "tether.toml:3:10: invalid header name \"X Session\": expected an HTTP field name (letters, digits and !#$%&'*+-.^_`|~), like \"X-Session-Id\""
        );
        let c = ok("[session]\nsource = \"header\"\nheader = \"X-Tenant-Session\"");
        assert_eq!(c.session.source, Source::Header);
        assert_eq!(c.session.header, "x-tenant-session");
    }

    #[test]
    fn query_source_needs_a_name() {
        assert_eq!(
            err("[session]\nsource = \"query\"\nquery_param = \"\""),
            "tether.toml:3:15: query_param must not be empty when source = \"query\""
        );
        let c = ok("[session]\nsource = \"query\"\nquery_param = \"s\"");
        assert_eq!(c.session.query_param, "s");
    }

    #[test]
    fn bind_to_items_are_unique() {
        assert_eq!(
            err("[session]\nbind_to = [\"ip\", \"user_agent\", \"ip\"]"),
            "tether.toml:2:32: bind_to lists \"ip\" twice"
        );
        let c =
            ok("[session]\nbind_to = [\"ip_prefix\", \"user_agent\"]\non_mismatch = \"reject\"");
        assert_eq!(c.session.bind_to, [BindTo::IpPrefix, BindTo::UserAgent]);
        assert_eq!(c.session.on_mismatch, OnMismatch::Reject);
    }

    #[test]
    fn rotate_mode_and_enums() {
        let c = ok("[session]\nmode = \"rotate\"\nsource = \"app_cookie\"\nsame_site = \"strict\"\nsecure = \"always\"\n[log]\nformat = \"json\"\naccess = false");
        assert_eq!(c.session.mode, Mode::Rotate);
        assert_eq!(c.session.source, Source::AppCookie);
        assert_eq!(c.session.same_site, SameSite::Strict);
        assert_eq!(c.session.secure, Secure::Always);
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(!c.log.access);
    }

    // ---- secrets ----

    #[test]
    fn inline_secret() {
        let c = ok("[session]\nsecret = \"0123456789abcdef\"");
        assert_eq!(c.session.secrets.current, b"0123456789abcdef");
        assert_eq!(c.session.secrets.origin, SecretOrigin::Inline);
        assert_eq!(
            err("[session]\nsecret = \"short\""),
            "tether.toml:2:10: secret holds 5 bytes; a secret needs at least 16 (try: head -c 32 /dev/urandom | base64)"
        );
    }

    #[test]
    fn secret_and_secret_file_conflict() {
        assert_eq!(
            err("[session]\nsecret = \"0123456789abcdef\"\nsecret_file = \"secret\""),
            "tether.toml:3:15: set either secret or secret_file, not both"
        );
    }

    #[test]
    fn secret_file_errors() {
        assert_eq!(
            err("[session]\nsecret_file = \"no/such/secret\""),
            "tether.toml:2:15: cannot read secret_file no/such/secret: No such file or directory (os error 2)"
        );
        let dir = TempDir::new("short-secret");
        let short = dir.write("secret", b"tooshort\n");
        assert_eq!(
            err(&format!("[session]\nsecret_file = \"{}\"", short.display())),
            format!(
                "tether.toml:2:15: secret_file {0} holds 8 bytes; a secret needs at least 16 (try: head -c 32 /dev/urandom | base64 > {0})",
                short.display()
            )
        );
        assert_eq!(
            err(&format!(
                "[session]\nprevious_secret_files = [\"{}\"]",
                short.display()
            )),
            format!(
                "tether.toml:2:26: previous secret file {0} holds 8 bytes; a secret needs at least 16 (try: head -c 32 /dev/urandom | base64 > {0})",
                short.display()
            )
        );
    }

    #[test]
    fn env_secret_is_used_when_the_file_names_none() {
        let c = from_str(
            BASE,
            Path::new("tether.toml"),
            Some("from-the-environment".into()),
        )
        .unwrap();
        assert_eq!(c.session.secrets.current, b"from-the-environment");
        assert_eq!(c.session.secrets.origin, SecretOrigin::Env);

        let inline = format!("[session]\nsecret = \"0123456789abcdef\"\n{BASE}");
        let c = from_str(
            &inline,
            Path::new("tether.toml"),
            Some("from-the-environment".into()),
        )
        .unwrap();
        assert_eq!(c.session.secrets.origin, SecretOrigin::Inline);

        assert_eq!(
            from_str(BASE, Path::new("tether.toml"), Some("short".into()))
                .unwrap_err()
                .to_string(),
            "tether.toml: TETHER_SECRET holds 5 bytes; a secret needs at least 16 (try: head -c 32 /dev/urandom | base64)"
        );
    }

    // ---- store, health, timeouts, limits, runtime ----

    #[test]
    fn store_checks() {
        assert_eq!(
            err("[store]\nmax_sessions = 0"),
            "tether.toml:2:16: invalid max_sessions 0: expected a number >= 1"
        );
        assert_eq!(
            err("[store]\nkind = \"redis\"\nurl = \"http://127.0.0.1:6379\""),
            "tether.toml:3:7: invalid redis url \"http://127.0.0.1:6379\": expected redis:// or rediss://, like \"redis://127.0.0.1:6379/0\""
        );
        let c = ok("[store]\nkind = \"redis\"\nurl = \"rediss://cache:6380/1\"\n[session]\nsecret = \"0123456789abcdef\"");
        assert_eq!(c.store.kind, StoreKind::Redis);
        assert_eq!(c.store.url, "rediss://cache:6380/1");
        // The URL only matters for the Redis store.
        ok("[store]\nurl = \"whatever\"");
        assert_eq!(
            (
                c.store.key_prefix.as_str(),
                c.store.connect_timeout,
                c.store.command_timeout
            ),
            (
                "tether:",
                Duration::from_millis(500),
                Duration::from_millis(250)
            )
        );
        let c = ok("[store]\nkind = \"redis\"\nkey_prefix = \"app1/\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"50ms\"\n[session]\nsecret = \"0123456789abcdef\"");
        assert_eq!(
            (
                c.store.key_prefix.as_str(),
                c.store.connect_timeout,
                c.store.command_timeout
            ),
            ("app1/", Duration::from_secs(2), Duration::from_millis(50))
        );
        assert_eq!(
            err("[store]\nkey_prefix = \"my app\""),
            "tether.toml:2:14: invalid key_prefix \"my app\": expected 1 to 64 printable characters without spaces, like \"tether:\""
        );
        assert_eq!(
            err("[store]\nkey_prefix = \"\""),
            "tether.toml:2:14: invalid key_prefix \"\": expected 1 to 64 printable characters without spaces, like \"tether:\""
        );
        assert_eq!(
            err("[store]\ncommand_timeout = \"0s\""),
            "tether.toml:2:19: command_timeout must be greater than 0, like \"2s\""
        );
        assert_eq!(
            err("[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379/db\""),
            "tether.toml:3:7: invalid redis url \"redis://127.0.0.1:6379/db\": Invalid database number"
        );
    }

    #[test]
    fn a_redis_store_needs_a_shared_secret() {
        let refused = "tether.toml:2:8: [store] kind = \"redis\" needs a shared session secret: without one every instance makes up its own and none can read the others' cookies; set [session] secret_file (or secret, or the TETHER_SECRET environment variable) to the same secret on every instance";
        assert_eq!(err("[store]\nkind = \"redis\""), refused);
        let from_env = from_str(
            &format!("[store]\nkind = \"redis\"\n{BASE}"),
            Path::new("tether.toml"),
            Some("0123456789abcdef".into()),
        )
        .expect("TETHER_SECRET is shared by whoever sets it");
        assert_eq!(from_env.session.secrets.origin, SecretOrigin::Env);
        ok("[store]\nkind = \"redis\"\n[session]\nsecret = \"0123456789abcdef\"");
        // The memory store has no one to share with.
        ok("[store]\nkind = \"memory\"");
    }

    #[test]
    fn health_checks() {
        assert_eq!(
            err("[health]\nrise = 0"),
            "tether.toml:2:8: invalid rise 0: expected 1 to 1000"
        );
        assert_eq!(
            err("[health]\nfall = 0"),
            "tether.toml:2:8: invalid fall 0: expected 1 to 1000"
        );
        assert_eq!(
            err("[health]\ninterval = \"0s\""),
            "tether.toml:2:12: interval must be greater than 0, like \"2s\""
        );
        assert_eq!(
            err("[health]\ntimeout = \"0s\""),
            "tether.toml:2:11: timeout must be greater than 0, like \"2s\""
        );
        assert_eq!(
            err("[health]\npath = \"healthz\""),
            "tether.toml:2:8: invalid health path \"healthz\": expected a path starting with \"/\", like \"/healthz\""
        );
    }

    #[test]
    fn timeouts_must_be_positive() {
        assert_eq!(
            err("[timeouts]\nresponse = \"0s\""),
            "tether.toml:2:12: response must be greater than 0, like \"2s\""
        );
        assert_eq!(
            err("[timeouts]\nupstream_idle = \"0s\""),
            "tether.toml:2:17: upstream_idle must be greater than 0, like \"2s\""
        );
        let c = ok("[timeouts]\nupstream_idle = \"300ms\"");
        assert_eq!(c.timeouts.upstream_idle, Duration::from_millis(300));
        let c = ok("[timeouts]\nkeepalive = \"0s\"\nshutdown_grace = \"0s\"");
        assert_eq!(c.timeouts.keepalive, Duration::ZERO);
        assert_eq!(
            err("[timeouts]\ntunnel = \"0s\""),
            "tether.toml:2:10: tunnel must be greater than 0, like \"2s\""
        );
        assert_eq!(
            ok("[timeouts]\ntunnel = \"90s\"").timeouts.tunnel,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn limits_checks() {
        assert_eq!(
            err("[limits]\nmax_connections = 0"),
            "tether.toml:2:19: invalid max_connections 0: expected a number >= 1"
        );
        assert_eq!(
            err("[limits]\nmax_header_bytes = 1023"),
            "tether.toml:2:20: invalid max_header_bytes 1023: expected 1024 to 1048576"
        );
        assert_eq!(
            err("[limits]\nmax_header_bytes = 1048577"),
            "tether.toml:2:20: invalid max_header_bytes 1048577: expected 1024 to 1048576"
        );
        assert_eq!(
            err("[limits]\nsession_rate = -1"),
            "tether.toml:2:16: invalid session_rate -1: expected a number >= 0 (0 = off)"
        );
        assert_eq!(
            err("[limits]\nnew_session_rate = -0.5"),
            "tether.toml:2:20: invalid new_session_rate -0.5: expected a number >= 0 (0 = off)"
        );
        let c = ok("[limits]\nsession_rate = 5");
        assert_eq!((c.limits.session_rate, c.limits.session_burst), (5.0, 10.0));
        let c = ok("[limits]\nsession_rate = 5\nsession_burst = 3");
        assert_eq!(c.limits.session_burst, 3.0);
    }

    #[test]
    fn worker_threads_bound() {
        assert_eq!(
            err("[runtime]\nworker_threads = 1025"),
            "tether.toml:2:18: invalid worker_threads 1025: expected 0 to 1024 (0 = one per core)"
        );
        assert_eq!(
            ok("[runtime]\nworker_threads = 4").runtime.worker_threads,
            4
        );
    }

    // ---- admin ----

    #[test]
    fn admin_defaults_and_absence() {
        let c = ok("[admin]");
        let admin = c.admin.unwrap();
        assert_eq!(admin.bind, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(admin.token, None);
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        assert_eq!(
            err("[admin]\nbind = \"0.0.0.0:9901\""),
            "tether.toml:2:8: admin bind 0.0.0.0:9901 is not a loopback address: tether refuses to expose the admin API without a token; set token_file or bind 127.0.0.1"
        );
        let dir = TempDir::new("admin-token");
        let token = dir.write("token", b"t0ken\n");
        let c = ok(&format!(
            "[admin]\nbind = \"0.0.0.0:9901\"\ntoken_file = \"{}\"",
            token.display()
        ));
        assert_eq!(c.admin.unwrap().token.as_deref(), Some("t0ken"));
        let empty = dir.write("empty", b" \n");
        assert_eq!(
            err(&format!("[admin]\ntoken_file = \"{}\"", empty.display())),
            format!("tether.toml:2:14: token_file {} is empty", empty.display())
        );
    }

    #[test]
    fn admin_bind_clashing_with_a_listener() {
        assert_eq!(
            err("[admin]\nbind = \"127.0.0.1:8080\""),
            "tether.toml:2:8: admin bind 127.0.0.1:8080 is also a listener's bind; pick another port"
        );
    }

    // ---- effective config ----

    #[test]
    fn effective_toml_redacts_secrets_and_fills_defaults() {
        let dir = TempDir::new("effective");
        let secret = dir.write("secret", b"super-secret-value-123\n");
        let token = dir.write("token", b"admin-token-xyz\n");
        let text = format!(
            "[session]\nsecret_file = \"{}\"\n[admin]\ntoken_file = \"{}\"\n{BASE}",
            secret.display(),
            token.display()
        );
        let c = from_str(&text, Path::new("tether.toml"), None).unwrap();
        let out = c.effective_toml();
        assert!(!out.contains("super-secret"), "{out}");
        assert!(!out.contains("admin-token-xyz"), "{out}");
        assert!(
            out.contains(&format!(
                "secret = \"<redacted: from {}>\"\n",
                secret.display()
            )),
            "{out}"
        );
        assert!(out.contains("token_file = \"<redacted>\"\n"), "{out}");
        for line in [
            "idle_timeout = \"30m\"",
            "absolute_timeout = \"12h\"",
            "balance_factor = 1.25",
            "max_sessions = 1000000",
            "bind = \"127.0.0.1:9901\"",
            "interval = \"2s\"",
            "tunnel = \"1h\"",
            "access = true",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in {out}");
        }
        // What `check` prints is itself valid TOML of the same shape.
        let reparsed: file::Root = toml::from_str(&out).unwrap();
        assert_eq!(reparsed.backends.len(), 1);
    }
}
