//! Live reload: SIGHUP (or a test) asks, and certificate files that change
//! on disk are picked up by themselves. Load → validate → build a new
//! Snapshot (backend status carried over by name) → swap. An invalid file is
//! refused with a logged error and the old config keeps serving.
//!
//! Reading files and resolving names block, so a reload runs on a thread of
//! its own ([`Control::reload_in_background`]), never on a runtime thread that
//! serves requests. Backend names may come and go without limit: the ids of
//! names no snapshot holds any more are scrubbed from the store and metrics
//! and then reused.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::backends::NamesExhausted;
use crate::config::{self, Config, ConfigError};
use crate::health::{Checker, OnProbe};
use crate::service::Shared;
use crate::snapshot::{Names, Snapshot};
use crate::store::SessionStore;
use crate::tls::{self, CertResolver, TlsError};

/// How often certificate files are looked at for changes.
pub const CERT_POLL: Duration = Duration::from_millis(500);

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new certificate does not load.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The new backend names cannot all get an id now.
    #[error(transparent)]
    Names(#[from] NamesExhausted),
    /// No thread could be started to run the reload.
    #[error("cannot run the reload: {0}")]
    Thread(#[source] io::Error),
}

/// Runs `work` on a thread of its own, with the runtime's handle entered
/// (it may spawn tasks), and waits for it without occupying a runtime
/// thread. Not `spawn_blocking`: a read that never returns (a FIFO nobody
/// writes, a hung network mount) would keep the runtime from shutting down;
/// this thread is simply left behind.
///
/// # Errors
/// The thread cannot be started, or `work` panicked.
pub async fn off_runtime<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("tether-{what}"))
        .spawn(move || {
            let _runtime = handle.enter();
            let _ = tx.send(work());
        })?;
    rx.await
        .map_err(|_| io::Error::other(format!("the {what} thread ended without an answer")))
}

/// Everything a reload touches.
pub struct Control {
    /// The request path's shared state.
    pub shared: Arc<Shared>,
    /// Backend name interner (ids survive reloads).
    pub names: Names,
    /// The secret generated at start when the config had none.
    pub generated_secret: Vec<u8>,
    /// The TLS certificate resolver, when TLS is on.
    pub resolver: Option<Arc<CertResolver>>,
    /// Health probes, re-synced to the new backend set.
    pub checker: Mutex<Checker>,
    /// Health probe hook (metrics).
    pub on_probe: OnProbe,
    /// One reload at a time: each builds on the snapshot the last one left.
    pub applying: Mutex<()>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// The effective secret for a config.
    pub fn secret_for<'a>(&'a self, c: &'a Config) -> &'a [u8] {
        if c.session.secrets.current.is_empty() {
            &self.generated_secret
        } else {
            &c.session.secrets.current
        }
    }

    /// Reads the config file the server started from and applies it.
    ///
    /// # Errors
    /// The file is invalid or its certificate does not load; nothing changed.
    pub fn reload_file(&self) -> Result<(), ReloadError> {
        let path = self.shared.snapshot.load().config.path.clone();
        let next = config::load(&path)?;
        self.apply(next)
    }

    /// [`Control::reload_file`] on a thread of its own: reading the file and
    /// resolving addresses never hold up the requests a runtime thread
    /// serves (with `worker_threads = 1` there is only one).
    ///
    /// # Errors
    /// As [`Control::reload_file`]; nothing changed.
    pub async fn reload_in_background(self: Arc<Self>) -> Result<(), ReloadError> {
        off_runtime("reload", move || self.reload_file())
            .await
            .map_err(ReloadError::Thread)?
    }

    /// Scrubs the ids of backend names nothing holds any more from the store
    /// and the metrics, then lets new names have them.
    fn scrub_retired_ids(&self) {
        let retired = self.names.take_retired();
        if retired.is_empty() {
            return;
        }
        self.shared.store.forget_backends(&retired);
        for id in &retired {
            self.shared.metrics.reset_backend(usize::from(id.0));
        }
        tracing::debug!(ids = retired.len(), "backend ids of removed names freed");
        self.names.release(retired);
    }

    /// Applies a validated config: new snapshot, store timeouts, certificate,
    /// health probes. Settings that need a restart are reported and kept.
    ///
    /// # Errors
    /// The certificate does not load, or the new backend names cannot get
    /// ids; nothing changed.
    pub fn apply(&self, mut next: Config) -> Result<(), ReloadError> {
        let _one = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        self.scrub_retired_ids();
        let prev = self.shared.snapshot.load_full();
        let old = &prev.config;
        let mut fixed = Vec::new();
        if listeners_differ(old, &next) {
            fixed.push("[[listener]]");
            next.listeners = old.listeners.clone();
        }
        if old.store != next.store {
            fixed.push("[store]");
            next.store = old.store.clone();
        }
        if old.runtime.worker_threads != next.runtime.worker_threads {
            fixed.push("[runtime]");
        }
        if old.admin.as_ref().map(|a| a.bind) != next.admin.as_ref().map(|a| a.bind) {
            fixed.push("[admin] bind");
        }
        // Sized or read once at start: the connection semaphore, the admin
        // listener's token, the log subscriber.
        if old.limits.max_connections != next.limits.max_connections {
            fixed.push("[limits] max_connections");
            next.limits.max_connections = old.limits.max_connections;
        }
        let token = |c: &Config| c.admin.as_ref().and_then(|a| a.token.clone());
        if token(old) != token(&next) {
            fixed.push("[admin] token_file");
            if let (Some(n), Some(o)) = (next.admin.as_mut(), old.admin.as_ref()) {
                n.token = o.token.clone();
            }
        }
        if old.log.format != next.log.format {
            fixed.push("[log] format");
            next.log.format = old.log.format;
        }
        if !fixed.is_empty() {
            tracing::warn!(sections = ?fixed, "these settings need a restart; kept the running values");
        }
        let cert = match (&self.resolver, &next.tls) {
            (Some(_), Some(t)) => Some(tls::certified_key(t.certs.clone(), t.key.clone_key())?),
            _ => None,
        };

        let secret = self.secret_for(&next).to_vec();
        let snapshot = Arc::new(Snapshot::build(
            Arc::new(next),
            &self.names,
            &secret,
            Some(&prev),
        )?);
        let cfg = snapshot.config.clone();
        self.shared.snapshot.store(snapshot.clone());
        self.shared
            .store
            .set_timeouts(cfg.session.idle_timeout, cfg.session.absolute_timeout);
        self.shared
            .store
            .name_backends(snapshot.backends.iter().map(|b| (b.id, &*b.name)));
        if let (Some(r), Some(c)) = (&self.resolver, cert) {
            r.replace(c);
        }
        self.checker.lock().unwrap_or_else(|e| e.into_inner()).sync(
            &snapshot.backends,
            &snapshot.upstreams,
            &cfg.health,
            &self.on_probe,
        );
        let names: Vec<&str> = snapshot.backends.iter().map(|b| &*b.name).collect();
        tracing::info!(backends = ?names, "configuration reloaded");
        Ok(())
    }
}

fn listeners_differ(a: &Config, b: &Config) -> bool {
    a.listeners.len() != b.listeners.len()
        || a.listeners.iter().zip(&b.listeners).any(|(x, y)| x != y)
}

fn stamp(p: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Watches the certificate and key files and swaps the served certificate
/// when both load; a half-written pair is retried on the next look. Runs
/// until the task is dropped or aborted.
pub async fn watch_certificates(ctl: Arc<Control>) {
    let Some(resolver) = ctl.resolver.clone() else {
        return;
    };
    let paths = |ctl: &Control| {
        let s = ctl.shared.snapshot.load();
        s.config
            .tls
            .as_ref()
            .map(|t| (t.cert_path.clone(), t.key_path.clone()))
    };
    let mut last = paths(&ctl).map(|(c, k)| (stamp(&c), stamp(&k)));
    let mut warned = None;
    let mut tick = tokio::time::interval(CERT_POLL);
    loop {
        tick.tick().await;
        let Some((cert, key)) = paths(&ctl) else {
            continue;
        };
        let now = Some((stamp(&cert), stamp(&key)));
        if now == last {
            continue;
        }
        let (c, k) = (cert.clone(), key.clone());
        let loaded = off_runtime("certificates", move || {
            let pair = tls::load_pem_pair(&c, &k).map_err(|e| e.to_string())?;
            tls::certified_key(pair.certs, pair.key).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match loaded {
            Ok(ck) => {
                resolver.replace(ck);
                last = now;
                tracing::info!(cert = %cert.display(), "certificate file changed: now serving the new certificate");
            }
            Err(e) if warned != now => {
                warned = now;
                tracing::warn!(cert = %cert.display(), error = %e, "certificate files changed but do not load yet; still serving the old certificate")
            }
            Err(_) => {}
        }
    }
}
