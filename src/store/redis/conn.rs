//! The connection to Redis and the invalidation channel: a health task that
//! connects, pings and flips the store between up and down; the bounded call
//! every read goes through; and a subscriber that drops cached sessions other
//! instances changed. The local view is trusted only while that subscription
//! is connected.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, ScriptInvocation};
use tokio::sync::{watch, Notify};

use super::{codec, Inner};

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

    /// Connects if need be, then pings.
    async fn check(&self) {
        let conn = match self.conn.load_full() {
            Some(c) => c,
            None => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(self.connect_timeout)
                    .set_response_timeout(self.command_timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(100);
                let made = tokio::time::timeout(
                    self.connect_timeout * 2,
                    ConnectionManager::new_with_config(self.client.clone(), cfg),
                )
                .await;
                match made {
                    Ok(Ok(c)) => {
                        let c = Arc::new(c);
                        self.conn.store(Some(c.clone()));
                        c
                    }
                    Ok(Err(e)) => return self.set_down(&e.to_string()),
                    Err(_) => return self.set_down("connect timed out"),
                }
            }
        };
        let mut c = ConnectionManager::clone(&conn);
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.command_timeout, ping.query_async::<String>(&mut c)).await {
            Ok(Ok(_)) => self.set_up(),
            Ok(Err(e)) => self.set_down(&e.to_string()),
            Err(_) => self.set_down("PING timed out"),
        }
    }
}

/// Waits `every`, or returns `false` once the store has been dropped.
pub(super) async fn pause(stop: &mut watch::Receiver<()>, every: Duration) -> bool {
    tokio::select! {
        _ = stop.changed() => false,
        _ = tokio::time::sleep(every) => true,
    }
}

/// Connects, pings every `every`, and flips the up/down state (logging once
/// per change).
pub(super) async fn health(weak: Weak<Inner>, mut stop: watch::Receiver<()>, every: Duration) {
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            inner.check().await;
        }
        if !pause(&mut stop, every).await {
            return;
        }
    }
}

/// Keeps a subscription to the invalidation channel. The local view is used
/// only while it is connected, and cleared each time it (re)connects.
pub(super) async fn subscriber(
    weak: Weak<Inner>,
    client: Client,
    mut stop: watch::Receiver<()>,
    resubscribe: Arc<Notify>,
    every: Duration,
) {
    loop {
        let (channel, connect_timeout) = {
            let Some(inner) = weak.upgrade() else { return };
            (inner.keys.channel.clone(), inner.connect_timeout)
        };
        let subscribed = tokio::time::timeout(connect_timeout, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, RedisError>(ps)
        })
        .await;
        let Ok(Ok(ps)) = subscribed else {
            if !pause(&mut stop, every).await {
                return;
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
                _ = resubscribe.notified() => break,
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
