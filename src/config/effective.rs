//! The effective configuration `tether check` prints: the typed [`Config`]
//! turned back into the file's shape, every default filled in, secrets and
//! the admin token redacted.

use std::time::Duration;

use super::{file, Config};

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
                    proxy_protocol: l.proxy_protocol,
                    defer_accept: l.defer_accept,
                })
                .collect(),
            tls: self.tls.as_ref().map(|t| file::Tls {
                cert: u(t.cert_path.display().to_string()),
                key: u(t.key_path.display().to_string()),
                session_resumption: u(t.session_resumption),
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
                partitioned: u(s.partitioned),
                path: u(s.path.clone()),
                domain: s.domain.clone().map(u),
                strip_cookie: s.strip_cookie,
                balance_factor: u(s.balance_factor),
                bind_to: s.bind_to.iter().copied().map(u).collect(),
                on_mismatch: s.on_mismatch,
                strict: s.strict,
            },
            store: file::Store {
                kind: u(self.store.kind),
                url: match self.store.sentinel {
                    None => Some(u(redact_password(&self.store.url))),
                    Some(_) => None,
                },
                sentinels: self
                    .store
                    .sentinel
                    .as_ref()
                    .map(|s| u(s.addrs.iter().map(|a| u(a.to_string())).collect())),
                master_name: self
                    .store
                    .sentinel
                    .as_ref()
                    .map(|s| u(s.master_name.clone())),
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
                    protocol: u(b.protocol),
                    tls: u(b.tls.is_some()),
                    sni: b
                        .tls
                        .as_ref()
                        .map(|t| u(t.server_name.to_str().into_owned())),
                    ca_file: b
                        .tls
                        .as_ref()
                        .and_then(|t| t.ca_path.as_ref())
                        .map(|p| u(p.display().to_string())),
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

/// A Redis URL with the password of its userinfo (`scheme://user:PASSWORD@host`)
/// replaced, so `tether check` never prints it.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_owned(),
    }
}
