//! The serde mirror of the TOML config file: shapes, enums and SPEC §2 defaults.
//!
//! This is step one of two. It only knows what the file may say (unknown keys
//! and bad enum values are toml errors with a span); `config/mod.rs` checks
//! what the values mean and turns them into typed values. Fields a later check
//! must point at keep their [`Spanned`] location. Defaults carry an empty span
//! (`0..0`): no check can fail on a default value alone.
//!
//! The mirror also serializes, so `tether check` can print the effective
//! configuration with every default filled in.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

/// What a bad duration gets told.
const DURATION_ADVICE: &str =
    r#"expected a number with a unit, like "500ms", "2s", "30m" or "12h""#;

/// A value with no place in the file: a default.
pub(crate) fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// The longest duration a config may give. Timers add durations to the
/// clock, and a sum past what the clock can hold panics; a hundred years is
/// "never" for every setting while far from that edge (2^63 seconds).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A duration written as a string with a unit (`"500ms"`, `"2s"`, `"30m"`, `"12h"`).
///
/// A bare number is refused: `timeout = 5` could mean seconds or milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurVisitor;

        impl Visitor<'_> for DurVisitor {
            type Value = Dur;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_ADVICE)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                let d = humantime::parse_duration(v)
                    .map_err(|_| E::custom(format!("invalid duration {v:?}: {DURATION_ADVICE}")))?;
                if d > MAX_DURATION {
                    return Err(E::custom(format!(
                        "duration {v:?} is too long: at most 100 years (\"100y\") is accepted"
                    )));
                }
                Ok(Dur(d))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: {DURATION_ADVICE}"
                )))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: {DURATION_ADVICE}"
                )))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: {DURATION_ADVICE}"
                )))
            }
        }

        deserializer.deserialize_any(DurVisitor)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

fn dur(secs: u64) -> Spanned<Dur> {
    unspanned(Dur(Duration::from_secs(secs)))
}

/// The whole file.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Root {
    /// `[[listener]]` tables.
    #[serde(rename = "listener")]
    pub listeners: Vec<Listener>,
    /// `[tls]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// `[session]`.
    pub session: Session,
    /// `[store]`.
    pub store: Store,
    /// `[[backend]]` tables.
    #[serde(rename = "backend")]
    pub backends: Vec<Backend>,
    /// `[health]`.
    pub health: Health,
    /// `[timeouts]`.
    pub timeouts: Timeouts,
    /// `[limits]`.
    pub limits: Limits,
    /// `[runtime]`.
    pub runtime: Runtime,
    /// `[admin]`; absent disables the admin listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    /// `[log]`.
    pub log: Log,
}

/// One `[[listener]]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `host:port` to bind.
    pub bind: Spanned<String>,
    /// Terminate TLS with `[tls]`.
    #[serde(default = "no")]
    pub tls: Spanned<bool>,
    /// Every connection starts with a PROXY protocol header (v1 or v2).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Accept a connection only once its first bytes arrive (Linux).
    #[serde(default)]
    pub defer_accept: bool,
}

fn no() -> Spanned<bool> {
    unspanned(false)
}

/// `[tls]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: Spanned<String>,
    /// PEM private key.
    pub key: Spanned<String>,
    /// `session_resumption`: session cache and tickets.
    #[serde(default = "yes")]
    pub session_resumption: Spanned<bool>,
}

fn yes() -> Spanned<bool> {
    unspanned(true)
}

/// `[session] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Pin each session to one backend.
    Sticky,
    /// Spread requests by smooth weighted round-robin; no cookie.
    Rotate,
}

/// `[session] source`: where the affinity key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// tether issues its own cookie.
    Cookie,
    /// The value of the app's cookie named `app_cookie`.
    AppCookie,
    /// The value of the request header named `header`.
    Header,
    /// The value of the URL query parameter named `query_param`.
    Query,
}

/// `[session] same_site`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=None` (browsers require `Secure` with it).
    None,
}

/// `[session] secure`: when the cookie gets the `Secure` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Secure {
    /// On cookies issued over TLS listeners.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// One `[session] bind_to` item: a client trait a session is tied to (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindTo {
    /// The exact client address.
    Ip,
    /// The client's /24 (IPv4) or /64 (IPv6).
    IpPrefix,
    /// The `User-Agent` header.
    UserAgent,
}

/// `[session] on_mismatch`: what a bound cookie from another client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMismatch {
    /// Treat the request as `new`.
    New,
    /// Answer 403.
    Reject,
}

/// `[store] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// Embedded, bounded by `max_sessions`.
    Memory,
    /// Shared by many instances.
    Redis,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[session]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Session {
    /// `mode`.
    pub mode: Mode,
    /// `source`.
    pub source: Source,
    /// `cookie`.
    pub cookie: Spanned<String>,
    /// `app_cookie`.
    pub app_cookie: Spanned<String>,
    /// `header`.
    pub header: Spanned<String>,
    /// `query_param`.
    pub query_param: Spanned<String>,
    /// `idle_timeout`.
    pub idle_timeout: Spanned<Dur>,
    /// `absolute_timeout`.
    pub absolute_timeout: Spanned<Dur>,
    /// `secret` (inline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Spanned<String>>,
    /// `secret_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<Spanned<String>>,
    /// `previous_secret_files`.
    pub previous_secret_files: Spanned<Vec<Spanned<String>>>,
    /// `same_site`.
    pub same_site: Spanned<SameSite>,
    /// `secure`.
    pub secure: Spanned<Secure>,
    /// `http_only`.
    pub http_only: bool,
    /// `partitioned`.
    pub partitioned: Spanned<bool>,
    /// `path`.
    pub path: Spanned<String>,
    /// `domain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<Spanned<String>>,
    /// `strip_cookie`.
    pub strip_cookie: bool,
    /// `balance_factor`.
    pub balance_factor: Spanned<f64>,
    /// `bind_to`.
    pub bind_to: Vec<Spanned<BindTo>>,
    /// `on_mismatch`.
    pub on_mismatch: OnMismatch,
    /// `strict`.
    pub strict: bool,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            mode: Mode::Sticky,
            source: Source::Cookie,
            cookie: unspanned("tether_sid".into()),
            app_cookie: unspanned("JSESSIONID".into()),
            header: unspanned("X-Session-Id".into()),
            query_param: unspanned("sid".into()),
            idle_timeout: dur(30 * 60),
            absolute_timeout: dur(12 * 60 * 60),
            secret: None,
            secret_file: None,
            previous_secret_files: unspanned(Vec::new()),
            same_site: unspanned(SameSite::Lax),
            secure: unspanned(Secure::Auto),
            http_only: true,
            partitioned: unspanned(false),
            path: unspanned("/".into()),
            domain: None,
            strip_cookie: true,
            balance_factor: unspanned(1.25),
            bind_to: Vec::new(),
            on_mismatch: OnMismatch::New,
            strict: false,
        }
    }
}

/// `[store] url` when the file names neither a URL nor sentinels.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// `[store]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// `kind`.
    pub kind: Spanned<StoreKind>,
    /// `url`; absent: [`DEFAULT_REDIS_URL`], unless `sentinels` stand in
    /// for it (the two are exclusive, so an explicit one must be told apart).
    pub url: Option<Spanned<String>>,
    /// `sentinels`: `host:port` of each Redis Sentinel (instead of `url`).
    pub sentinels: Option<Spanned<Vec<Spanned<String>>>>,
    /// `master_name`: the name the sentinels monitor the primary under.
    pub master_name: Option<Spanned<String>>,
    /// `max_sessions`.
    pub max_sessions: Spanned<i64>,
    /// `key_prefix` (Redis).
    pub key_prefix: Spanned<String>,
    /// `connect_timeout` (Redis).
    pub connect_timeout: Spanned<Dur>,
    /// `command_timeout` (Redis).
    pub command_timeout: Spanned<Dur>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            kind: unspanned(StoreKind::Memory),
            url: None,
            sentinels: None,
            master_name: None,
            max_sessions: unspanned(1_000_000),
            key_prefix: unspanned("tether:".into()),
            connect_timeout: unspanned(Dur(Duration::from_millis(500))),
            command_timeout: unspanned(Dur(Duration::from_millis(250))),
        }
    }
}

/// One `[[backend]]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// `name`: unique, the operator's stable identity.
    pub name: Spanned<String>,
    /// `address`: `host:port`.
    pub address: Spanned<String>,
    /// `weight`.
    #[serde(default = "one")]
    pub weight: Spanned<i64>,
    /// `protocol`: what tether speaks to it.
    #[serde(default = "http1")]
    pub protocol: Spanned<Protocol>,
    /// `tls`: connect over TLS.
    #[serde(default = "no")]
    pub tls: Spanned<bool>,
    /// `sni`: the TLS server name (default: the address's host).
    pub sni: Option<Spanned<String>>,
    /// `ca_file`: PEM trust roots for its certificate (default: the system's).
    pub ca_file: Option<Spanned<String>>,
}

/// `[[backend]] protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1, connections kept alive and pooled.
    #[default]
    Http1,
    /// HTTP/2: h2c on plain TCP, ALPN `h2` over TLS; streams multiplexed.
    H2,
}

fn http1() -> Spanned<Protocol> {
    unspanned(Protocol::Http1)
}

fn one() -> Spanned<i64> {
    unspanned(1)
}

/// `[health]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// `path`.
    pub path: Spanned<String>,
    /// `interval`.
    pub interval: Spanned<Dur>,
    /// `timeout`.
    pub timeout: Spanned<Dur>,
    /// `rise`.
    pub rise: Spanned<i64>,
    /// `fall`.
    pub fall: Spanned<i64>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: unspanned("/healthz".into()),
            interval: dur(2),
            timeout: dur(1),
            rise: unspanned(2),
            fall: unspanned(3),
        }
    }
}

/// Default `upstream_idle`: below the keep-alive timeouts of common app
/// servers (gunicorn 2 s; uvicorn, Node.js and Apache 5 s), so tether lets a
/// pooled connection go before the backend closes it under a request.
const UPSTREAM_IDLE: Duration = Duration::from_millis(1500);

/// `[timeouts]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// `connect`.
    pub connect: Spanned<Dur>,
    /// `response`.
    pub response: Spanned<Dur>,
    /// `upstream_idle`.
    pub upstream_idle: Spanned<Dur>,
    /// `client_header`.
    pub client_header: Spanned<Dur>,
    /// `client_body`.
    pub client_body: Spanned<Dur>,
    /// `keepalive`.
    pub keepalive: Dur,
    /// `tunnel`.
    pub tunnel: Spanned<Dur>,
    /// `shutdown_grace`.
    pub shutdown_grace: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: dur(2),
            response: dur(30),
            upstream_idle: unspanned(Dur(UPSTREAM_IDLE)),
            client_header: dur(10),
            client_body: dur(60),
            keepalive: Dur(Duration::from_secs(60)),
            tunnel: dur(3600),
            shutdown_grace: Dur(Duration::from_secs(30)),
        }
    }
}

/// `[limits]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// `max_connections`.
    pub max_connections: Spanned<i64>,
    /// `max_header_bytes`.
    pub max_header_bytes: Spanned<i64>,
    /// `session_rate`.
    pub session_rate: Spanned<f64>,
    /// `session_burst`.
    pub session_burst: Spanned<f64>,
    /// `new_session_rate`.
    pub new_session_rate: Spanned<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: unspanned(10_000),
            max_header_bytes: unspanned(16_384),
            session_rate: unspanned(0.0),
            session_burst: unspanned(0.0),
            new_session_rate: unspanned(0.0),
        }
    }
}

/// `[runtime]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// `worker_threads`.
    pub worker_threads: Spanned<i64>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            worker_threads: unspanned(0),
        }
    }
}

/// `[admin]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// `bind`.
    pub bind: Spanned<String>,
    /// `token_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<Spanned<String>>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            bind: unspanned("127.0.0.1:9901".into()),
            token_file: None,
        }
    }
}

/// `[log]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `format`.
    pub format: LogFormat,
    /// `access`: one line per request.
    pub access: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            access: true,
        }
    }
}
