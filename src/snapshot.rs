//! `Snapshot`: everything the request path reads that a reload may replace,
//! built once from a `Config` and swapped whole (ArcSwap), so a request sees
//! one consistent world: backend table, ring, cookie codec, timeouts, limits.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;

pub use crate::backends::Names;
use crate::backends::{Backend, NamesExhausted};
use crate::balancer::Balancer;
use crate::config::{self, Config};
use crate::limits::Limits;
use crate::session::binding::Binder;
use crate::session::cookie::{backend_tag, CookieAttrs, CookieCodec, SameSite};
use crate::session::source::{AppKeyDigest, KeySource};
use crate::session::Timeouts;
use crate::store::BackendId;
use crate::upstream;

/// Everything per-request code reads from configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated config this was built from.
    pub config: Arc<Config>,
    /// 0 for the first snapshot, one more on every reload.
    pub generation: u64,
    /// Backends in config order; indexes are used by the balancer.
    pub backends: Vec<Arc<Backend>>,
    /// Connection pools, same indexes as `backends`.
    pub upstreams: Vec<Arc<upstream::Pool>>,
    by_tag: HashMap<u64, usize>,
    by_id: HashMap<BackendId, usize>,
    /// Ring and rotate tables.
    pub balancer: Balancer,
    /// Cookie MAC under the current and previous secrets.
    pub codec: CookieCodec,
    /// App-key digests under the secret.
    pub app_digest: AppKeyDigest,
    /// Cookie attributes on plain listeners.
    pub cookie_plain: CookieAttrs,
    /// Cookie attributes on TLS listeners.
    pub cookie_tls: CookieAttrs,
    /// Where the affinity key comes from.
    pub source: KeySource,
    /// true = sticky, false = rotate.
    pub sticky: bool,
    /// Session timeouts.
    pub timeouts: Timeouts,
    /// Upstream timeouts.
    pub upstream_timeouts: upstream::Timeouts,
    /// Remove tether's cookie before forwarding.
    pub strip_cookie: bool,
    /// Bounded-load factor for new sessions (0 = off).
    pub balance_factor: f64,
    /// Request head limit.
    pub max_header_bytes: usize,
    /// One log line per request.
    pub access_log: bool,
    /// Failed requests in a row that mark a backend down (`health.fall`).
    pub passive_threshold: u32,
    /// Client binding, when `bind_to` is set.
    pub binder: Option<Binder>,
    /// `on_mismatch = "reject"`.
    pub reject_mismatch: bool,
    /// `strict = true`: a pinned session never moves.
    pub strict: bool,
    /// Rate limiters (rebuilt, hence reset, by a reload).
    pub limits: Arc<Limits>,
    /// Longest pause between a client's body bytes.
    pub client_body: std::time::Duration,
}

impl Snapshot {
    /// Builds a snapshot. `secret` is the effective current secret (the
    /// config's, or the one generated at start when the config has none).
    /// Backends whose name and address survive from `previous` keep their
    /// status, counters and connection pool.
    ///
    /// # Errors
    /// [`NamesExhausted`]: too many backend names are still in use to give
    /// the new ones ids. Nothing was changed.
    pub fn build(
        config: Arc<Config>,
        names: &Names,
        secret: &[u8],
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, NamesExhausted> {
        // By name, so a reload of a thousand backends is not a thousand scans.
        let before: HashMap<&str, (&Arc<Backend>, &Arc<upstream::Pool>)> = previous
            .map(|p| {
                p.backends
                    .iter()
                    .zip(&p.upstreams)
                    .map(|(b, u)| (&*b.name, (b, u)))
                    .collect()
            })
            .unwrap_or_default();
        let mut backends = Vec::with_capacity(config.backends.len());
        let mut upstreams = Vec::with_capacity(config.backends.len());
        for b in &config.backends {
            match before.get(b.name.as_str()) {
                Some((o, u))
                    if o.address == b.address && o.weight == b.weight && u.link().is(b) =>
                {
                    backends.push(Arc::clone(o));
                    upstreams.push(Arc::clone(u));
                }
                old => {
                    let fresh = Backend::leased(
                        names.lease(&b.name)?,
                        backend_tag(&b.name),
                        b.address,
                        b.weight,
                    );
                    if let Some((o, _)) = old {
                        fresh.inherit(o);
                    }
                    backends.push(Arc::new(fresh));
                    upstreams.push(Arc::new(upstream::Pool::new(b)));
                }
            }
        }
        let by_tag = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.tag, i))
            .collect();
        let by_id = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id, i))
            .collect();
        let s = &config.session;
        let codec = CookieCodec::new(secret, &s.secrets.previous);
        let same_site = match s.same_site {
            config::SameSite::Lax => SameSite::Lax,
            config::SameSite::Strict => SameSite::Strict,
            config::SameSite::None => SameSite::None,
        };
        let attrs = |secure: bool| CookieAttrs {
            name: s.cookie.clone(),
            path: s.path.clone(),
            domain: s.domain.clone(),
            same_site,
            secure,
            http_only: s.http_only,
            partitioned: s.partitioned,
        };
        let (secure_plain, secure_tls) = match s.secure {
            config::Secure::Auto => (false, true),
            config::Secure::Always => (true, true),
            config::Secure::Never => (false, false),
        };
        let source = match s.source {
            config::Source::Cookie => KeySource::Cookie(s.cookie.clone()),
            config::Source::AppCookie => KeySource::AppCookie(s.app_cookie.clone()),
            config::Source::Header => KeySource::Header(
                HeaderName::from_bytes(s.header.as_bytes())
                    .unwrap_or_else(|_| HeaderName::from_static("x-session-id")),
            ),
            config::Source::Query => KeySource::Query(s.query_param.clone()),
        };
        Ok(Snapshot {
            generation: previous.map_or(0, |p| p.generation + 1),
            balancer: Balancer::new(&backends),
            backends,
            upstreams,
            by_tag,
            by_id,
            codec,
            app_digest: AppKeyDigest::new(secret, &s.secrets.previous),
            cookie_plain: attrs(secure_plain),
            cookie_tls: attrs(secure_tls),
            source,
            sticky: s.mode == config::Mode::Sticky,
            timeouts: Timeouts {
                idle_ms: s.idle_timeout.as_millis() as u64,
                absolute_ms: s.absolute_timeout.as_millis() as u64,
            },
            upstream_timeouts: upstream::Timeouts {
                connect: config.timeouts.connect,
                response: config.timeouts.response,
                idle: config.timeouts.upstream_idle,
            },
            strip_cookie: s.strip_cookie && s.source == config::Source::Cookie,
            balance_factor: s.balance_factor,
            max_header_bytes: config.limits.max_header_bytes,
            access_log: config.log.access,
            passive_threshold: config.health.fall,
            binder: Binder::new(secret, &s.secrets.previous, &s.bind_to),
            reject_mismatch: s.on_mismatch == config::OnMismatch::Reject,
            strict: s.strict,
            limits: Arc::new(Limits::new(
                config.limits.session_rate,
                config.limits.session_burst,
                config.limits.new_session_rate,
            )),
            client_body: config.timeouts.client_body,
            config,
        })
    }

    /// The backend a cookie's tag names, if it is still configured.
    #[inline]
    pub fn by_tag(&self, tag: u64) -> Option<usize> {
        self.by_tag.get(&tag).copied()
    }

    /// The backend a store record names, if it is still configured.
    #[inline]
    pub fn by_id(&self, id: BackendId) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// Cookie attributes for a listener.
    #[inline]
    pub fn cookie_attrs(&self, tls: bool) -> &CookieAttrs {
        if tls {
            &self.cookie_tls
        } else {
            &self.cookie_plain
        }
    }
}
