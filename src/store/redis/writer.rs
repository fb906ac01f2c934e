//! The write-behind queue and its writer task: every write to Redis goes
//! through one bounded channel and leaves as a pipeline of as many writes as
//! are waiting. Activity is fire-and-forget; `repin` and `end` wait for their
//! ack (bounded by `command_timeout`) and are announced on the invalidation
//! channel in the same pipeline.

use std::sync::{Arc, Weak};

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::{codec, script, Inner};
use crate::store::{EndReason, Record, SessionKey};

/// Writes queued beyond this are dropped (and counted): a Redis that cannot
/// keep up must not grow tether's memory without bound.
pub(super) const WRITE_QUEUE: usize = 16_384;
/// Most writes sent in one pipeline.
const BATCH: usize = 512;

/// One queued write. Those with an `ack` are awaited by the request that made
/// them (bounded by `command_timeout`); the others are fire-and-forget.
///
/// A write carries its backend's *name*, looked up when it is queued: the
/// request that queues it still holds its backend id, but by the time the
/// writer sends it that id may have been forgotten and given to another
/// name. `None`: the id named no backend this store knows; not written.
pub(super) enum Write {
    Touch {
        key: SessionKey,
        backend: Option<Arc<str>>,
        created_ms: u64,
        now_ms: u64,
    },
    Insert {
        key: SessionKey,
        record: Record,
        backend: Option<Arc<str>>,
    },
    Repin {
        key: SessionKey,
        backend: Option<Arc<str>>,
        now_ms: u64,
        ack: oneshot::Sender<bool>,
    },
    End {
        key: SessionKey,
        reason: EndReason,
        now_ms: u64,
        ack: oneshot::Sender<bool>,
    },
}

/// Sends queued writes, as many per pipeline as are waiting. Ends when the
/// store is dropped (the queue's sender goes with it).
pub(super) async fn writer(weak: Weak<Inner>, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let Some(inner) = weak.upgrade() else { return };
        inner.flush(&mut batch).await;
    }
}

impl Inner {
    /// Queues a write without waiting; dropped and counted while Redis is
    /// down or the queue is full.
    pub(super) fn queue(&self, w: Write) -> bool {
        if !self.is_up() {
            self.metrics.store_errors(1);
            return false;
        }
        match self.writes.try_send(w) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.store_errors(1);
                false
            }
        }
    }

    /// Queues a write and waits (at most `command_timeout`) until Redis has
    /// it. Returns whether it landed.
    pub(super) async fn acked(&self, make: impl FnOnce(oneshot::Sender<bool>) -> Write) -> bool {
        let (tx, rx) = oneshot::channel();
        if !self.queue(make(tx)) {
            return false;
        }
        matches!(
            tokio::time::timeout(self.command_timeout, rx).await,
            Ok(Ok(true))
        )
    }

    /// Sends one batch as one pipeline, then answers its acks.
    async fn flush(&self, batch: &mut Vec<Write>) {
        let n = batch.len() as u64;
        let mut acks = Vec::new();
        let ok = match self.conn.load_full() {
            Some(conn) if self.is_up() => {
                let pipe = self.pipeline(batch, &mut acks);
                let mut conn = ConnectionManager::clone(&conn);
                match tokio::time::timeout(
                    self.command_timeout,
                    script::query_pipeline(&pipe, &mut conn),
                )
                .await
                {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        self.failed(n, &e.to_string());
                        false
                    }
                    Err(_) => {
                        self.failed(n, "pipelined write timed out");
                        false
                    }
                }
            }
            _ => {
                self.pipeline(batch, &mut acks);
                self.metrics.store_errors(n);
                false
            }
        };
        for ack in acks {
            let _ = ack.send(ok);
        }
    }

    fn pipeline(
        &self,
        batch: &mut Vec<Write>,
        acks: &mut Vec<oneshot::Sender<bool>>,
    ) -> redis::Pipeline {
        let t = self.times();
        let mut pipe = redis::pipe();
        for w in batch.drain(..) {
            match w {
                Write::Touch {
                    key,
                    backend,
                    created_ms,
                    now_ms,
                } => {
                    if let Some(b) = backend {
                        let created = created_ms.to_string();
                        pipe.invoke_script(&self.eval("tch", key, now_ms, t, &[&b, &created]))
                            .ignore();
                    }
                }
                Write::Insert {
                    key,
                    record,
                    backend,
                } => {
                    if let Some(b) = backend {
                        let created = record.created_ms.to_string();
                        let seen = record.seen_ms.to_string();
                        pipe.invoke_script(&self.eval(
                            "ins",
                            key,
                            record.seen_ms,
                            t,
                            &[&b, &created, &seen],
                        ))
                        .ignore();
                    }
                }
                Write::Repin {
                    key,
                    backend,
                    now_ms,
                    ack,
                } => {
                    if let Some(b) = backend {
                        pipe.invoke_script(&self.eval("rep", key, now_ms, t, &[&b]))
                            .ignore();
                        self.announce(&mut pipe, key);
                    }
                    acks.push(ack);
                }
                Write::End {
                    key,
                    reason,
                    now_ms,
                    ack,
                } => {
                    pipe.invoke_script(&self.eval(
                        "end",
                        key,
                        now_ms,
                        t,
                        &[codec::reason_code(reason)],
                    ))
                    .ignore();
                    self.announce(&mut pipe, key);
                    acks.push(ack);
                }
            }
        }
        pipe
    }

    /// The invalidation every other instance acts on. Sent after the write in
    /// the same pipeline, so whoever reads Redis on receiving it sees the
    /// new state.
    fn announce(&self, pipe: &mut redis::Pipeline, key: SessionKey) {
        pipe.cmd("PUBLISH")
            .arg(&self.keys.channel)
            .arg(codec::invalidation(&self.instance, key))
            .ignore();
    }
}
