//! Assembles a running tether from a `Config`: binds the listeners, builds the
//! first `Snapshot`, starts the store reaper, and drives graceful shutdown.
//! Shutdown is an input (a future), so tests stop a server without signals.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::TryRngCore;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::clock::Clock;
use crate::config::{Config, StoreKind};
use crate::health::{Checker, OnProbe};
use crate::history::History;
use crate::lifecycle::Drain;
use crate::listener::Listener;
use crate::metrics::Metrics;
use crate::reload::{self, Control, ReloadError};
use crate::service::Shared;
use crate::snapshot::{Names, Snapshot};
use crate::socket::Acceptor;
use crate::store::{MemoryStore, RedisSettings, RedisStore, Sightings, Store};
use crate::tls::{self, CertResolver, TlsError};
use crate::upgrade::Upgrades;

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
    /// The Redis store could not be set up (an unusable URL; an unreachable
    /// Redis is not an error: tether starts degraded).
    #[error("redis store: {0}")]
    Store(#[source] redis::RedisError),
    /// The backends could not all be given an id (a valid config never
    /// reaches this at start).
    #[error(transparent)]
    Names(#[from] crate::backends::NamesExhausted),
}

/// A started tether.
pub struct Running {
    control: Arc<Control>,
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    drain: Arc<Drain>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addrs", &self.addrs)
            .finish()
    }
}

/// Binds a client listener as `TcpListener::bind` does (address reuse, the
/// standard library's backlog), with TCP_NODELAY set on the listening
/// socket: Linux copies it to every socket accepted from it, which saves
/// each connection a system call. `defer` asks for connections only once
/// they have spoken (`socket::defer_accept`; Linux only, a warning
/// elsewhere).
fn bind_client_listener(addr: SocketAddr, backlog: u32, defer: bool) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    if defer {
        #[cfg(target_os = "linux")]
        crate::socket::defer_accept(&socket)?;
        #[cfg(not(target_os = "linux"))]
        tracing::warn!(%addr, "defer_accept is supported on Linux only; accepting as usual");
    }
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The listen backlog for `max_connections`: HAProxy's default, as many
/// as may be served at once (the kernel caps it at `net.core.somaxconn`).
fn backlog(max_connections: usize) -> u32 {
    u32::try_from(max_connections)
        .unwrap_or(u32::MAX)
        .clamp(128, 65_535)
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

/// Binds every listener and starts serving. Every session time (idle and
/// absolute timeouts, cookie refresh, tombstones, the store's reaper) reads
/// `clock`: [`Clock::system`] in service, a stepped one in tests.
///
/// # Errors
/// A listener cannot bind, or the TLS key does not load.
pub async fn start(config: Config, clock: Clock) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let resolver = match &config.tls {
        Some(t) => Some(Arc::new(CertResolver::new(tls::certified_key(
            t.certs.clone(),
            t.key.clone_key(),
        )?))),
        None => None,
    };
    let resumption = config.tls.as_ref().is_some_and(|t| t.session_resumption);
    let acceptor = match &resolver {
        Some(r) => Some(tls::server_config(r.clone(), resumption)?),
        None => None,
    };

    let names = Names::default();
    let secret = effective_secret(&config);
    let snapshot = Snapshot::build(config.clone(), &names, &secret, None)?;
    let s = &config.session;
    let metrics = Arc::new(Metrics::new());
    let store = match config.store.kind {
        StoreKind::Memory => {
            let memory = MemoryStore::new(
                config.store.max_sessions,
                s.idle_timeout,
                s.absolute_timeout,
            );
            let reap_every = (s.idle_timeout.min(s.absolute_timeout) / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(5));
            let reaper_clock = clock.clone();
            memory.spawn_reaper(reap_every, move || reaper_clock.now_ms());
            Store::Memory(memory)
        }
        StoreKind::Redis => {
            let settings = RedisSettings {
                url: config.store.url.clone(),
                sentinel: config.store.sentinel.as_ref().map(|s| {
                    crate::store::redis::SentinelSettings {
                        addrs: s.addrs.iter().map(|a| (a.host.clone(), a.port)).collect(),
                        master_name: s.master_name.clone(),
                    }
                }),
                key_prefix: config.store.key_prefix.clone(),
                connect_timeout: config.store.connect_timeout,
                command_timeout: config.store.command_timeout,
                max_cached: config.store.max_sessions,
                idle: s.idle_timeout,
                absolute: s.absolute_timeout,
            };
            let store_clock = clock.clone();
            let redis = RedisStore::start(settings, metrics.clone(), move || store_clock.now_ms())
                .await
                .map_err(StartError::Store)?;
            Store::Redis(redis)
        }
    };
    store.name_backends(snapshot.backends.iter().map(|b| (b.id, &*b.name)));
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        store,
        sightings: Sightings::new(config.store.max_sessions),
        clock,
        metrics: metrics.clone(),
        upgrades: Arc::new(Upgrades::default()),
        mismatch_logged: Default::default(),
    });
    let on_probe: OnProbe = Arc::new(move |b, ok| metrics.health_check(b.id.0 as usize, ok));
    let control = Arc::new(Control {
        shared: shared.clone(),
        names,
        generated_secret: secret,
        resolver: resolver.clone(),
        checker: std::sync::Mutex::new(Checker::default()),
        on_probe,
        applying: Default::default(),
    });
    {
        let snap = shared.snapshot.load();
        control
            .checker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sync(
                &snap.backends,
                &snap.upstreams,
                &config.health,
                &control.on_probe,
            );
    }

    let (stop, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(config.limits.max_connections));
    let drain = Arc::new(Drain::default());
    let mut sockets = Vec::new();
    for l in &config.listeners {
        let socket = bind_client_listener(
            l.bind,
            backlog(config.limits.max_connections),
            l.defer_accept,
        )
        .and_then(Acceptor::new)
        .map_err(|source| StartError::Bind {
            addr: l.bind,
            source,
        })?;
        sockets.push((socket, *l));
    }
    let mut addrs = Vec::new();
    let mut listeners = Vec::new();
    for (socket, conf) in sockets {
        let addr = socket.local_addr().map_err(|source| StartError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        tracing::info!(
            %addr,
            tls = conf.tls,
            proxy_protocol = conf.proxy_protocol,
            defer_accept = conf.defer_accept,
            "listening"
        );
        addrs.push(addr);
        let l = Listener {
            socket,
            tls: if conf.tls { acceptor.clone() } else { None },
            proxy_protocol: conf.proxy_protocol,
            shared: shared.clone(),
            permits: permits.clone(),
            stop: stop_rx.clone(),
            drain: drain.clone(),
        };
        listeners.push(tokio::spawn(l.run()));
    }
    let mut background = Vec::new();
    let mut admin_addr = None;
    if let Some(a) = &config.admin {
        let socket = TcpListener::bind(a.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: a.bind,
                source,
            })?;
        let addr = socket.local_addr().map_err(|source| StartError::Bind {
            addr: a.bind,
            source,
        })?;
        tracing::info!(%addr, "admin API listening");
        admin_addr = Some(addr);
        let history = Arc::new(History::new(Metrics::latency_bounds_ms()));
        background.push(tokio::spawn(admin::recorder::record(
            shared.clone(),
            history.clone(),
        )));
        let state = Arc::new(AdminState::new(shared.clone(), a.token.as_deref(), history));
        listeners.push(tokio::spawn(admin::serve(socket, state, stop_rx.clone())));
    }
    if resolver.is_some() {
        background.push(tokio::spawn(reload::watch_certificates(control.clone())));
    }
    // Rate limiters forget idle clients once a second (bounded memory).
    let reclaim = shared.clone();
    background.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let limits = reclaim.snapshot.load().limits.clone();
            if limits.active() {
                limits.reclaim();
            }
        }
    }));
    Ok(Running {
        control,
        addrs,
        admin_addr,
        stop,
        listeners,
        background,
        drain,
    })
}

impl Running {
    /// Bound addresses, in `[[listener]]` order (port 0 resolved).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The admin listener's bound address, if `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The request path's shared state (for tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.control.shared
    }

    /// The reload context.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Applies a new config now (what SIGHUP does after reading the file);
    /// backend status and sessions carry over by name.
    ///
    /// # Errors
    /// The certificate does not load; the old config stays.
    pub fn apply(&self, config: Config) -> Result<(), ReloadError> {
        self.control.apply(config)
    }

    /// Re-reads the config file and applies it (SIGHUP).
    ///
    /// # Errors
    /// The file is invalid; the old config stays.
    pub fn reload(&self) -> Result<(), ReloadError> {
        self.control.reload_file()
    }

    /// Stops accepting, lets in-flight requests finish within
    /// `shutdown_grace`, closes upgraded connections still open at its end,
    /// then returns.
    pub async fn shutdown(self) {
        let grace = self
            .control
            .shared
            .snapshot
            .load()
            .config
            .timeouts
            .shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        let _ = self.stop.send(true);
        for l in self.listeners {
            let _ = l.await;
        }
        for b in &self.background {
            b.abort();
        }
        *self
            .control
            .checker
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Checker::default();
        tracing::info!(?grace, "draining connections");
        let upgrades = self.control.shared.upgrades.clone();
        let drained = tokio::time::timeout_at(deadline, async {
            self.drain.close().await;
            upgrades.idle().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                upgraded = upgrades.live(),
                "shutdown grace ran out; closing the remaining connections"
            );
        }
        upgrades.close_all();
    }
}

/// Runs until `shutdown` completes, reloading the config file whenever
/// `reload` yields; then shuts down gracefully.
///
/// # Errors
/// As [`start`].
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    mut reload: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), StartError> {
    let running = start(config, Clock::system()).await?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = reload.recv() => {
                // Off the runtime: a slow file or resolver must not stall
                // traffic. A SIGHUP meanwhile waits in the channel.
                let applied = running.control().clone().reload_in_background();
                tokio::select! {
                    _ = &mut shutdown => break,
                    r = applied => if let Err(e) = r {
                        tracing::error!(error = %e, "reload refused; still serving the previous configuration");
                    },
                }
            }
        }
    }
    running.shutdown().await;
    Ok(())
}

/// `worker_threads = 1` gets tokio's current-thread scheduler: with one
/// worker there is nobody to steal work from, and the multi-thread
/// scheduler's cross-thread wake-ups were 8.5% of a load profile.
///
/// # Errors
/// The OS refused a thread or the I/O driver.
pub fn runtime(workers: usize) -> io::Result<tokio::runtime::Runtime> {
    let mut b = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if workers > 1 {
        b.worker_threads(workers);
    }
    b.enable_all().build()
}

/// `run -c CONFIG`, from the file to the exit code: load it (exit 2 with
/// the file's position on a bad config), start logging and the runtime, and
/// serve until SIGTERM or SIGINT. The binary and `examples/tether_sysalloc`
/// share it.
pub fn run_file(config: &std::path::Path) -> std::process::ExitCode {
    use std::process::ExitCode;
    let c = match crate::config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    crate::log::init(c.log.format == crate::config::LogFormat::Json);
    let rt = match runtime(c.runtime.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async { run(c, terminate_signal(), hangup_signals()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ StartError::Tls(_)) => {
            eprintln!("{}: {e}", config.display());
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("tether: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Yields on every SIGHUP.
pub fn hangup_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload is off");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let _ = tx.try_send(());
        }
    });
    #[cfg(not(unix))]
    drop(tx);
    rx
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

#[cfg(test)]
mod tests {
    use super::*;

    /// With `defer`, a connection that has not spoken stays in the kernel;
    /// its first bytes hand it over, with them already readable.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_deferred_listener_hands_over_a_connection_once_it_speaks() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let quiet = std::time::Duration::from_millis(200);
        for defer in [false, true] {
            let listener =
                bind_client_listener("127.0.0.1:0".parse().unwrap(), 128, defer).unwrap();
            let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let early = tokio::time::timeout(quiet, listener.accept()).await;
            assert_eq!(
                early.is_ok(),
                !defer,
                "defer = {defer}: accepted before a byte"
            );
            if defer {
                client.write_all(b"G").await.unwrap();
                let (mut accepted, _) = listener.accept().await.unwrap();
                let mut first = [0u8; 1];
                accepted
                    .try_read(&mut first)
                    .expect("the byte came with it");
                assert_eq!(&first, b"G");
                accepted.write_all(b"ok").await.unwrap();
                let mut back = [0u8; 2];
                client.read_exact(&mut back).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_client_socket_is_accepted_with_nodelay_on() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = bind_client_listener(any.parse().unwrap(), 128, false) else {
                continue; // no IPv6 here
            };
            let addr = listener.local_addr().unwrap();
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            assert!(accepted.nodelay().unwrap(), "{any}: Nagle left on");
        }
    }

    #[test]
    fn the_backlog_follows_max_connections_within_bounds() {
        for (max, want) in [(1, 128), (128, 128), (10_000, 10_000), (1 << 40, 65_535)] {
            assert_eq!(backlog(max), want, "max_connections {max}");
        }
    }
}
