//! Per-backend session counts across all instances, and the upkeep task
//! that refreshes them and reaps the local view. Counts lag by the upkeep
//! interval (at most a second); see the module docs of `redis` for the bound.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::watch;

use super::conn::pause;
use super::Inner;
use crate::store::BackendId;

impl Inner {
    /// Trims each backend's set of what has passed its deadline and reads
    /// its size.
    async fn recount(&self, now_ms: u64) {
        if !self.is_up() {
            return;
        }
        let names = self.names.load_full();
        if names.by_id.is_empty() {
            return;
        }
        let order: Vec<(BackendId, &Arc<str>)> = names.by_id.iter().map(|(i, n)| (*i, n)).collect();
        let mut pipe = redis::pipe();
        for (_, name) in &order {
            let set = self.keys.backend_set(name);
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&set)
                .arg("-inf")
                .arg(now_ms)
                .ignore();
            pipe.cmd("ZCARD").arg(&set);
        }
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        let mut conn = ConnectionManager::clone(&conn);
        let counted = tokio::time::timeout(
            self.command_timeout,
            pipe.query_async::<Vec<u64>>(&mut conn),
        )
        .await;
        match counted {
            Ok(Ok(v)) => {
                let _counting = self.counting();
                // Ids forgotten meanwhile may name other backends now.
                if Arc::ptr_eq(&names, &self.names.load()) {
                    for ((id, _), n) in order.iter().zip(v) {
                        self.tally.set(*id, n);
                    }
                }
            }
            Ok(Err(e)) => self.failed(1, &e.to_string()),
            Err(_) => self.failed(1, "session count timed out"),
        }
    }
}

/// Reaps the local view and refreshes the per-backend counts.
pub(super) async fn upkeep<C>(
    weak: Weak<Inner>,
    mut stop: watch::Receiver<()>,
    every: Duration,
    now_ms: C,
) where
    C: Fn() -> u64 + Send + Sync + 'static,
{
    while pause(&mut stop, every).await {
        let Some(inner) = weak.upgrade() else { return };
        let now = now_ms();
        inner.cache.reap(now, inner.times());
        inner.recount(now).await;
    }
}
