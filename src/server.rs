//! Assembles a running tether from a `Config`: binds the listeners, builds the
//! first `Snapshot`, starts the store reaper, and drives graceful shutdown.
//! Shutdown is an input (a future), so tests stop a server without signals.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use rand::TryRngCore;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::clock::Clock;
use crate::config::Config;
use crate::listener::Listener;
use crate::service::Shared;
use crate::snapshot::{Names, Snapshot};
use crate::store::memory::MemoryStore;
use crate::store::Store;
use crate::tls::{self, CertResolver, TlsError};

/// Why tether could not start (after the config was found valid).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// A started tether.
pub struct Running {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    graceful: Arc<GracefulShutdown>,
    grace: Duration,
    resolver: Option<Arc<CertResolver>>,
    names: Arc<Names>,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addrs", &self.addrs)
            .finish()
    }
}

/// The effective session secret: the config's, or 32 fresh bytes.
fn effective_secret(config: &Config) -> Vec<u8> {
    if !config.session.secrets.current.is_empty() {
        return config.session.secrets.current.clone();
    }
    tracing::warn!(
        "no session secret configured: generated one for this process; cookies will not survive a restart or work across instances (set [session] secret_file)"
    );
    let mut s = vec![0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut s)
        .expect("the OS random number generator failed");
    s
}

/// Binds every listener and starts serving.
///
/// # Errors
/// A listener cannot bind, or the TLS key does not load.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let resolver = match &config.tls {
        Some(t) => Some(Arc::new(CertResolver::new(tls::certified_key(
            t.certs.clone(),
            t.key.clone_key(),
        )?))),
        None => None,
    };
    let acceptor = match &resolver {
        Some(r) => Some(TlsAcceptor::from(tls::server_config(r.clone())?)),
        None => None,
    };

    let names = Arc::new(Names::default());
    let secret = effective_secret(&config);
    let snapshot = Snapshot::build(config.clone(), &names, &secret, None);
    let s = &config.session;
    let memory = MemoryStore::new(
        config.store.max_sessions,
        s.idle_timeout,
        s.absolute_timeout,
    );
    let reap_every = (s.idle_timeout.min(s.absolute_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    let clock = Clock::system();
    let reaper_clock = clock.clone();
    memory.spawn_reaper(reap_every, move || reaper_clock.now_ms());
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        store: Store::Memory(memory),
        clock,
    });

    let (stop, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(config.limits.max_connections));
    let graceful = Arc::new(GracefulShutdown::new());
    let mut sockets = Vec::new();
    for l in &config.listeners {
        let socket = TcpListener::bind(l.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: l.bind,
                source,
            })?;
        sockets.push((socket, l.tls));
    }
    let mut addrs = Vec::new();
    let mut listeners = Vec::new();
    for (socket, is_tls) in sockets {
        let addr = socket.local_addr().map_err(|source| StartError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        tracing::info!(%addr, tls = is_tls, "listening");
        addrs.push(addr);
        let l = Listener {
            socket,
            tls: if is_tls { acceptor.clone() } else { None },
            shared: shared.clone(),
            permits: permits.clone(),
            stop: stop_rx.clone(),
            graceful: graceful.clone(),
        };
        listeners.push(tokio::spawn(l.run()));
    }
    Ok(Running {
        shared,
        addrs,
        stop,
        listeners,
        graceful,
        grace: config.timeouts.shutdown_grace,
        resolver,
        names,
        secret,
    })
}

impl Running {
    /// Bound addresses, in `[[listener]]` order (port 0 resolved).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The request path's shared state (for the admin API and tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The certificate resolver, when a TLS listener exists.
    pub fn cert_resolver(&self) -> Option<&Arc<CertResolver>> {
        self.resolver.as_ref()
    }

    /// Rebuilds the snapshot from `config` and swaps it in; backend status
    /// and sessions carry over by name.
    pub fn apply(&self, config: Config) {
        let prev = self.shared.snapshot.load_full();
        let next = Snapshot::build(Arc::new(config), &self.names, &self.secret, Some(&prev));
        self.shared.snapshot.store(Arc::new(next));
    }

    /// Stops accepting, lets in-flight requests finish within
    /// `shutdown_grace`, then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for l in self.listeners {
            let _ = l.await;
        }
        tracing::info!(grace = ?self.grace, "draining connections");
        // The listeners held the only other references; they have ended.
        let graceful = match Arc::try_unwrap(self.graceful) {
            Ok(g) => g,
            Err(_) => {
                tracing::error!("a listener outlived its accept loop; not waiting for connections");
                return;
            }
        };
        if tokio::time::timeout(self.grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace ran out; closing the remaining connections");
        }
    }
}

/// Runs until `shutdown` completes, then shuts down gracefully.
///
/// # Errors
/// As [`start`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let running = start(config).await?;
    shutdown.await;
    running.shutdown().await;
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn terminate_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
