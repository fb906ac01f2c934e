//! Redis Sentinel: finds the primary by asking the sentinels in turn, and
//! listens for their `+switch-master` announcements so a failover is
//! followed as soon as it is decided. Knows nothing of sessions: `conn.rs`
//! calls [`Sentinels::locate`] whenever it needs a primary, and the watcher
//! only tells it to ask again.
//!
//! Written here rather than taken from `redis::sentinel`: that lookup has
//! no time bound per sentinel (one black-holed sentinel stalls it and the
//! others are never asked), stops at the first sentinel that answers even
//! when the node it names is gone, and hands back connections without the
//! reconnecting manager and pub/sub the store is built on. What is needed is
//! one command and one check.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, RedisConnectionInfo, Role,
};
use tokio::sync::watch;

use super::conn::pause;
use super::Inner;

/// Where the sentinels are and which primary to ask them for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// `(host, port)` of each sentinel (an IPv6 host without brackets),
    /// asked in turn.
    pub addrs: Vec<(String, u16)>,
    /// The name they monitor the primary under.
    pub master_name: String,
}

/// The sentinels, and which of them led to a primary last (asked first
/// next time).
pub(super) struct Sentinels {
    settings: SentinelSettings,
    preferred: AtomicUsize,
}

/// A primary the sentinels named and that answered as one.
pub(super) struct Primary {
    /// `ip:port` as the sentinels gave it (for logs, and to tell a new
    /// primary from the one in use).
    pub(super) addr: String,
    pub(super) client: Client,
}

impl Sentinels {
    pub(super) fn new(settings: SentinelSettings) -> Sentinels {
        Sentinels {
            settings,
            preferred: AtomicUsize::new(0),
        }
    }

    pub(super) fn settings(&self) -> &SentinelSettings {
        &self.settings
    }

    /// Asks each sentinel in turn (the one that answered last first) for the
    /// primary's address and returns the first node named that says it is a
    /// primary (`ROLE`). A sentinel that is down, slow, does not know the
    /// name, or names a node that is gone or no longer the primary (its view
    /// may lag a failover) is passed over. Every step is bounded by
    /// `connect + command`.
    ///
    /// # Errors
    /// Why no sentinel led to a primary, a reason per sentinel.
    pub(super) async fn locate(
        &self,
        connect: Duration,
        command: Duration,
    ) -> Result<Primary, String> {
        let addrs = &self.settings.addrs;
        let master = &self.settings.master_name;
        let first = self.preferred.load(Ordering::Relaxed);
        let mut why = Vec::new();
        // Nodes already found not to be the primary in this round: several
        // sentinels naming the same dead node cost one connect timeout.
        let mut passed: Vec<(String, u16)> = Vec::new();
        for i in 0..addrs.len() {
            let at = (first + i) % addrs.len();
            let (host, port) = &addrs[at];
            let sentinel = show(host, *port);
            let named = match ask(host, *port, master, connect, command).await {
                Ok(Some(named)) => named,
                Ok(None) => {
                    why.push(format!("{sentinel} does not monitor {master:?}"));
                    continue;
                }
                Err(e) => {
                    why.push(format!("{sentinel}: {e}"));
                    continue;
                }
            };
            let addr = show(&named.0, named.1);
            if passed.contains(&named) {
                why.push(format!("{sentinel} names {addr} too"));
                continue;
            }
            match primary(&named.0, named.1, connect, command).await {
                Ok(client) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(Primary { addr, client });
                }
                Err(e) => {
                    why.push(format!("{sentinel} names {addr}: {e}"));
                    passed.push(named);
                }
            }
        }
        Err(format!(
            "no sentinel named a primary for {master:?} that answers as one: {}",
            why.join("; ")
        ))
    }
}

/// `host:port`, an IPv6 host in brackets.
fn show(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A plain connection's address: sentinels and the primary alike are
/// reached over TCP, database 0, without credentials.
fn node(host: &str, port: u16) -> ConnectionInfo {
    ConnectionInfo {
        addr: ConnectionAddr::Tcp(host.to_string(), port),
        redis: RedisConnectionInfo::default(),
    }
}

fn bounded(connect: Duration, command: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(connect)
        .set_response_timeout(command)
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME`: the address one sentinel gives for
/// `master`, `None` when it does not monitor that name.
async fn ask(
    host: &str,
    port: u16,
    master: &str,
    connect: Duration,
    command: Duration,
) -> Result<Option<(String, u16)>, String> {
    let client = Client::open(node(host, port)).map_err(|e| e.to_string())?;
    let asked = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&bounded(connect, command))
            .await?;
        redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(master)
            .query_async::<Option<(String, String)>>(&mut conn)
            .await
    };
    match tokio::time::timeout(connect + command, asked).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some((ip, port)))) => match port.parse::<u16>() {
            Ok(p) if p != 0 && !ip.is_empty() => Ok(Some((ip, p))),
            _ => Err(format!("answered a bad address {ip:?} {port:?}")),
        },
    }
}

/// A client for `host:port` once it answers `ROLE` as a primary.
async fn primary(
    host: &str,
    port: u16,
    connect: Duration,
    command: Duration,
) -> Result<Client, String> {
    let client = Client::open(node(host, port)).map_err(|e| e.to_string())?;
    let role = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&bounded(connect, command))
            .await?;
        redis::cmd("ROLE").query_async::<Role>(&mut conn).await
    };
    match tokio::time::timeout(connect + command, role).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(Role::Primary { .. })) => Ok(client),
        Ok(Ok(_)) => Err("not a primary".into()),
    }
}

/// Whether a `+switch-master` message (`<name> <old ip> <old port> <new ip>
/// <new port>`) is about `master`.
fn switched(payload: &[u8], master: &str) -> bool {
    payload.split(|b| *b == b' ').next() == Some(master.as_bytes())
}

/// Stays subscribed to `+switch-master` on one sentinel at a time (the next
/// one when it goes) and has the store ask for the primary again when
/// `master` moved. Without it a failover is still followed, on the next
/// failed call or health check; with it, a primary demoted while still
/// answering is left at once. (A sentinel that vanishes without closing its
/// socket leaves this waiting on it; the health checks still follow.)
pub(super) async fn watcher(
    weak: Weak<Inner>,
    settings: SentinelSettings,
    mut stop: watch::Receiver<()>,
    every: Duration,
) {
    if settings.addrs.is_empty() {
        return;
    }
    let mut next = 0usize;
    loop {
        let connect = {
            let Some(inner) = weak.upgrade() else { return };
            inner.connect_timeout + inner.command_timeout
        };
        let (host, port) = &settings.addrs[next % settings.addrs.len()];
        next = next.wrapping_add(1);
        let subscribed = tokio::time::timeout(connect, async {
            let client = Client::open(node(host, *port))?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        if let Ok(Ok(ps)) = subscribed {
            let mut messages = ps.into_on_message();
            loop {
                tokio::select! {
                    m = messages.next() => match m {
                        Some(m) if switched(m.get_payload_bytes(), &settings.master_name) => {
                            let Some(inner) = weak.upgrade() else { return };
                            tracing::info!(
                                sentinel = %show(host, *port),
                                announced = %String::from_utf8_lossy(m.get_payload_bytes()),
                                "redis sentinel switched the primary"
                            );
                            inner.relocate();
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = stop.changed() => return,
                }
            }
        }
        if !pause(&mut stop, every).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_is_about_the_master_named_first() {
        let cases: &[(&[u8], bool)] = &[
            (b"mymaster 127.0.0.1 6379 127.0.0.1 6380", true),
            (b"mymaster", true),
            (b"mymaster2 127.0.0.1 6379 127.0.0.1 6380", false),
            (b"other 127.0.0.1 6379 127.0.0.1 6380", false),
            (b" mymaster 127.0.0.1 6379 127.0.0.1 6380", false),
            (b"", false),
        ];
        for (payload, about) in cases {
            assert_eq!(
                switched(payload, "mymaster"),
                *about,
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn addresses_show_ipv6_in_brackets() {
        assert_eq!(show("10.0.0.1", 26379), "10.0.0.1:26379");
        assert_eq!(show("sentinel-0.redis", 26379), "sentinel-0.redis:26379");
        assert_eq!(show("::1", 26379), "[::1]:26379");
    }
}
