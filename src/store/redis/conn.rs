//! The connection to Redis and the invalidation channel: a health task that
//! connects (with Sentinel: to the primary the sentinels name), pings and
//! flips the store between up and down; the bounded call every read goes
//! through; and a subscriber that drops cached sessions other instances
//! changed. The local view is trusted only while that subscription is
//! connected.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Role, ScriptInvocation};
use tokio::sync::{watch, Notify};

use super::{codec, Inner, Primary, Target};

impl Inner {
    /// One script call with the hard bound (a reload of a forgotten script
    /// included); `None` (counted, and the store marked down) on an error or
    /// a timeout.
    pub(super) async fn call<T: redis::FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> Option<T> {
        let conn = self.conn.load_full()?;
        let mut conn = ConnectionManager::clone(&conn);
        match tokio::time::timeout(self.command_timeout, call.invoke_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(1, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(1, "command timed out");
                None
            }
        }
    }

    /// Drops the cached copy of a session another instance changed.
    fn on_message(&self, payload: &[u8]) {
        if let Some(key) = codec::parse_invalidation(payload, &self.instance) {
            self.cache.invalidate(key);
        }
    }

    /// Has the next check connect anew, and makes it now. With Sentinel
    /// that asks the sentinels where the primary is.
    pub(super) fn relocate(&self) {
        self.relocate.store(true, Ordering::Release);
        self.kick.notify_one();
    }

    /// Connects if need be, then pings.
    async fn check(&self) {
        if self.relocate.swap(false, Ordering::AcqRel) {
            self.conn.store(None);
        }
        let conn = match self.conn.load_full() {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => c,
                Err(why) => return self.set_down(&why),
            },
        };
        let mut c = ConnectionManager::clone(&conn);
        let Target::Sentinel(_) = self.target else {
            let ping = redis::cmd("PING");
            let pinged =
                tokio::time::timeout(self.command_timeout, ping.query_async::<String>(&mut c));
            return match pinged.await {
                Ok(Ok(_)) => self.set_up(),
                Ok(Err(e)) => self.set_down(&e.to_string()),
                Err(_) => self.set_down("PING timed out"),
            };
        };
        // A primary that was failed over and came back answers PING as a
        // replica: ask for its role. Any failure drops the connection so
        // the next check asks the sentinels (set_down asks for that only
        // when the store was up).
        let role = redis::cmd("ROLE");
        let why = match tokio::time::timeout(self.command_timeout, role.query_async::<Role>(&mut c))
            .await
        {
            Ok(Ok(Role::Primary { .. })) => return self.set_up(),
            Ok(Ok(_)) => "the primary in use is no longer a primary".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "ROLE timed out".to_string(),
        };
        self.conn.store(None);
        self.set_down(&why);
    }

    /// A new connection manager: to the URL, or to the primary the
    /// sentinels name now (which the subscriber then follows).
    async fn connect(&self) -> Result<Arc<ConnectionManager>, String> {
        let (client, found) = match &self.target {
            Target::Url => match self.primary.load_full() {
                Some(p) => (p.client.clone(), None),
                None => return Err("no redis url".into()),
            },
            Target::Sentinel(s) => {
                let p = s.locate(self.connect_timeout, self.command_timeout).await?;
                (p.client.clone(), Some(p))
            }
        };
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(self.command_timeout)
            .set_number_of_retries(1)
            .set_max_delay(100);
        let made = tokio::time::timeout(
            self.connect_timeout * 2,
            ConnectionManager::new_with_config(client, cfg),
        )
        .await;
        let c = match made {
            Ok(Ok(c)) => Arc::new(c),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("connect timed out".into()),
        };
        self.conn.store(Some(c.clone()));
        if let Some(p) = found {
            self.follow(p);
        }
        Ok(c)
    }

    /// Moves the subscriber to a primary the sentinels named, when it is
    /// not the one in use.
    fn follow(&self, p: Primary) {
        if self
            .primary
            .load()
            .as_ref()
            .is_some_and(|old| old.addr == p.addr)
        {
            return;
        }
        tracing::info!(primary = %p.addr, "redis primary found through sentinel");
        self.primary.store(Some(Arc::new(p)));
        self.resubscribe.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Waits `every`, or returns `false` once the store has been dropped.
pub(super) async fn pause(stop: &mut watch::Receiver<()>, every: Duration) -> bool {
    tokio::select! {
        _ = stop.changed() => false,
        _ = tokio::time::sleep(every) => true,
    }
}

/// Connects, pings every `every` (or at once when kicked), and flips the
/// up/down state (logging once per change).
pub(super) async fn health(
    weak: Weak<Inner>,
    mut stop: watch::Receiver<()>,
    kick: Arc<Notify>,
    every: Duration,
) {
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            inner.check().await;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
            _ = kick.notified() => {}
        }
    }
}

/// Keeps a subscription to the invalidation channel on the primary in use.
/// The local view is used only while it is connected, and cleared each time
/// it (re)connects.
pub(super) async fn subscriber(
    weak: Weak<Inner>,
    mut stop: watch::Receiver<()>,
    mut resubscribe: watch::Receiver<u64>,
    every: Duration,
) {
    loop {
        // Seen before connecting: a bump while connecting (another primary
        // found) makes the subscription below end at once.
        resubscribe.borrow_and_update();
        let (primary, channel, connect_timeout) = {
            let Some(inner) = weak.upgrade() else { return };
            let primary = inner.primary.load_full();
            (primary, inner.keys.channel.clone(), inner.connect_timeout)
        };
        let subscribed = match primary {
            Some(p) => {
                tokio::time::timeout(connect_timeout, async {
                    let mut ps = p.client.get_async_pubsub().await?;
                    ps.subscribe(&channel).await?;
                    Ok::<_, RedisError>(ps)
                })
                .await
            }
            None => Ok(Err(RedisError::from((
                redis::ErrorKind::ClientError,
                "no primary found yet",
            )))),
        };
        let Ok(Ok(ps)) = subscribed else {
            // Again after `every`, or as soon as another primary is found.
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(every) => {}
                _ = resubscribe.changed() => {}
            }
            continue;
        };
        {
            let Some(inner) = weak.upgrade() else { return };
            inner.cache.clear();
            inner.subscribed.store(true, Ordering::Release);
        }
        let mut messages = ps.into_on_message();
        loop {
            tokio::select! {
                m = messages.next() => match m {
                    Some(m) => {
                        let Some(inner) = weak.upgrade() else { return };
                        inner.on_message(m.get_payload_bytes());
                    }
                    None => break,
                },
                _ = resubscribe.changed() => break,
                _ = stop.changed() => return,
            }
        }
        {
            let Some(inner) = weak.upgrade() else { return };
            inner.subscribed.store(false, Ordering::Release);
        }
        tracing::debug!("redis invalidation channel lost; resubscribing");
        if !pause(&mut stop, every).await {
            return;
        }
    }
}
