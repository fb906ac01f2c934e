//! The semantic checks: file values in, model values out, each refusal
//! located at the value it is about. Reads the files the config names.
//! `[session]`, with its secrets and cookie rules, is in `session.rs`.

mod session;

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::file::{self, StoreKind};
use super::model::{
    Admin, Backend, BackendTls, Config, Health, Limits, Listener, Log, Runtime, SecretOrigin,
    Store, Timeouts, Tls, MAX_BACKENDS, MAX_TOTAL_WEIGHT, SECRET_ENV,
};
use super::model::{HostPort, Sentinel};
use super::{Cx, Result};
use crate::tls::{self, PemFile, PemPair};

/// `host:port` (`[v6]:port`), port not 0, host neither empty nor holding
/// what belongs to a URL. The name is not resolved here: it is dialled.
fn host_port(text: &str) -> Option<HostPort> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').filter(|h| h.contains(':'))?,
        None if host.contains(':') => return None,
        None => host,
    };
    let bad = |c: char| c.is_whitespace() || c.is_control() || "/@[]?#".contains(c);
    if host.is_empty() || host.chars().any(bad) {
        return None;
    }
    Some(HostPort {
        host: host.to_string(),
        port,
    })
}

/// The host part of a `host:port` address (`[v6]:port` without brackets).
fn backend_host(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

impl Cx<'_> {
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

    /// Checks every section and builds the [`Config`]; the first problem found wins.
    pub(super) fn build(&self, raw: file::Root, env_secret: Option<String>) -> Result<Config> {
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
                proxy_protocol: l.proxy_protocol,
                defer_accept: l.defer_accept,
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
        let cert_path = self.resolve(raw.cert.get_ref());
        let key_path = self.resolve(raw.key.get_ref());
        let PemPair { certs, key } =
            tls::load_pem_pair(&cert_path, &key_path).map_err(|e| match e.file() {
                PemFile::Cert => self.on(&raw.cert, e.to_string()),
                PemFile::Key | PemFile::Ca => self.on(&raw.key, e.to_string()),
            })?;
        Ok(Some(Tls {
            session_resumption: *raw.session_resumption.get_ref(),
            cert_path,
            key_path,
            certs,
            key,
        }))
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
        let sentinel = self.sentinel(&raw)?;
        let url = raw
            .url
            .unwrap_or_else(|| file::unspanned(file::DEFAULT_REDIS_URL.to_string()));
        if kind == StoreKind::Redis {
            if sentinel.is_none() {
                self.redis_url(&url)?;
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
            url: url.into_inner(),
            sentinel,
        })
    }

    fn redis_url(&self, url: &Spanned<String>) -> Result<()> {
        let text = url.get_ref();
        if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
            return Err(self.on(
                url,
                format!("invalid redis url {text:?}: expected redis:// or rediss://, like \"redis://127.0.0.1:6379/0\""),
            ));
        }
        if let Err(e) = redis::Client::open(text.as_str()) {
            // redis-rs renders "<what>- <ErrorKind>"; the kind adds nothing here.
            let shown = e.to_string();
            let why = shown.split("- ").next().unwrap_or(&shown);
            return Err(self.on(url, format!("invalid redis url {text:?}: {why}")));
        }
        Ok(())
    }

    /// `sentinels` and `master_name`: both or neither, only for Redis, and
    /// never with an explicit `url` (which of the two would name the primary
    /// is not for tether to guess).
    fn sentinel(&self, raw: &file::Store) -> Result<Option<Sentinel>> {
        let (sentinels, master_name) = match (&raw.sentinels, &raw.master_name) {
            (None, None) => return Ok(None),
            (Some(list), None) => {
                return Err(self.on(
                    list,
                    "[store] sentinels needs master_name, the name the sentinels monitor the primary under (`sentinel monitor <name> ...` in their config), like master_name = \"mymaster\"",
                ))
            }
            (None, Some(name)) => {
                return Err(self.on(
                    name,
                    "[store] master_name needs sentinels, the sentinels to ask for that primary, like sentinels = [\"10.0.0.1:26379\", \"10.0.0.2:26379\", \"10.0.0.3:26379\"]",
                ))
            }
            (Some(list), Some(name)) => (list, name),
        };
        if *raw.kind.get_ref() != StoreKind::Redis {
            return Err(self.on(
                sentinels,
                "[store] sentinels is for the Redis store: set kind = \"redis\" (or remove sentinels and master_name)",
            ));
        }
        if let Some(url) = &raw.url {
            return Err(self.on(
                url,
                "[store] url and sentinels are exclusive: with sentinels, tether asks them for the primary's address; remove url",
            ));
        }
        if sentinels.get_ref().is_empty() {
            return Err(self.on(
                sentinels,
                "[store] sentinels is empty: expected at least one host:port, like [\"10.0.0.1:26379\"]",
            ));
        }
        let mut addrs = Vec::with_capacity(sentinels.get_ref().len());
        for entry in sentinels.get_ref() {
            let text = entry.get_ref();
            let Some(addr) = host_port(text) else {
                return Err(self.on(
                    entry,
                    format!("invalid sentinel address {text:?}: expected host:port, like \"10.0.0.1:26379\" or \"[::1]:26379\""),
                ));
            };
            addrs.push(addr);
        }
        let name = master_name.get_ref();
        if name.is_empty() || name.len() > 256 || name.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(self.on(
                master_name,
                format!("invalid master_name {name:?}: expected the name the sentinels monitor the primary under, printable characters without spaces, like \"mymaster\""),
            ));
        }
        Ok(Some(Sentinel {
            addrs,
            master_name: name.clone(),
        }))
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
                protocol: *b.protocol.get_ref(),
                tls: self.backend_tls(b)?,
            });
        }
        Ok(out)
    }

    /// `tls`, `sni` and `ca_file` of one backend.
    fn backend_tls(&self, b: &file::Backend) -> Result<Option<BackendTls>> {
        if !*b.tls.get_ref() {
            let stray = b.sni.as_ref().map(|s| (s.span(), "sni"));
            let stray = stray.or(b.ca_file.as_ref().map(|c| (c.span(), "ca_file")));
            if let Some((span, key)) = stray {
                return Err(self.at(
                    span,
                    format!("{key} applies to a TLS backend only: add tls = true to this [[backend]], or remove {key}"),
                ));
            }
            return Ok(None);
        }
        // The name defaults to the host of `address` as written.
        let (name, spanned) = match &b.sni {
            Some(s) => (s.get_ref().clone(), s),
            None => (backend_host(b.address.get_ref()).to_string(), &b.address),
        };
        let server_name = rustls_pki_types::ServerName::try_from(name.clone()).map_err(|_| {
            self.on(
                spanned,
                format!("invalid TLS server name {name:?}: expected a DNS name or an IP address, like sni = \"app1.internal\""),
            )
        })?;
        let (ca, ca_path) = match &b.ca_file {
            Some(f) => {
                let path = self.resolve(f.get_ref());
                let certs = tls::load_ca(&path).map_err(|e| self.on(f, e.to_string()))?;
                (Some(certs), Some(path))
            }
            None => (None, None),
        };
        Ok(Some(BackendTls {
            server_name,
            ca,
            ca_path,
        }))
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
