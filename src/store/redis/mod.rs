//! The shared store for many instances: sessions live in one Redis, judged by
//! TTLs and timestamps there, with a small local view in front so a returning
//! cookie costs no round trip. Degrades to "unavailable" (route by the
//! cookie) while Redis is down or slow, and recovers by itself.
//!
//! What crosses the wire, per session:
//!
//! - **Reads** happen only when the local view has nothing usable: a key this
//!   instance has not verified, or one that looks over here (another instance
//!   may have kept it alive). One script call (`EVALSHA`) reads the record
//!   and, if it is live, restarts its idle clock in the same step.
//! - **Activity** from requests answered locally is written behind, at most
//!   once per `idle_timeout / 10` per session (the cookie's own refresh
//!   granularity), by a background writer that pipelines everything queued.
//!   The request never waits for it.
//! - **`end`/`regenerate`/failover** are written synchronously (bounded by
//!   `command_timeout`) and followed, in the same pipeline, by a `PUBLISH` on
//!   `<prefix>events`; every other instance drops its cached copy when the
//!   message arrives, so its next request for that session reads Redis.
//!
//! Keys (`<prefix>` is `[store] key_prefix`):
//!
//! - `<prefix>s:<id>`: `created|seen|state|backend`, state `L` (live), `E`
//!   (ended) or `R` (regenerated); its TTL is the record's deadline,
//!   `min(seen + idle, created + absolute)`, so Redis forgets what is over.
//! - `<prefix>b:<backend name>`: a sorted set of live session ids scored by
//!   deadline, for `sessions_on`. Counts are refreshed in the background every
//!   second at most, after trimming what has passed its score. They lag by
//!   that interval, and a session whose activity has not been written yet
//!   (up to `idle / 10`) may leave its set that much early: approximate,
//!   never unbounded.
//!
//! Backends are stored by *name*, never by this process's interned id, so
//! instances with different reload histories agree. A record naming a
//! backend this instance does not know is answered as `Unavailable` (the
//! cookie routes it) rather than guessed at.
//!
//! All keys of one operation are touched by one Lua script, so the record and
//! its per-backend set never disagree. The script builds the set's key from
//! the record, which a Redis Cluster would refuse: tether supports a single
//! Redis or Valkey primary (a managed primary endpoint works).
//!
//! With Redis Sentinel the primary is whichever node the sentinels name:
//! any failure (a lost connection, a timeout, a `READONLY` reply, a node
//! whose `ROLE` is no longer primary) or a `+switch-master` announcement
//! makes the store ask them again, and the invalidation subscriber follows
//! the primary it finds. Meanwhile the store is down, as above.
//!
//! This file holds the store's API and its up/down state, and judges what a
//! read returned. The rest, one job each: `conn.rs` (connection, health pings,
//! the invalidation subscriber), `sentinel.rs` (finding the primary through
//! Sentinel), `writer.rs` (the write-behind queue and its
//! pipelines), `counts.rs` (per-backend counts and upkeep), `codec.rs` (keys,
//! values and messages on the wire), `script.rs` with `script.lua` (the Lua
//! every operation runs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::ConnectionManager;
use redis::{Client, RedisError};
use tokio::sync::{mpsc, watch, Notify};

use super::cache::{Cache, Entry, Hit, Times};
use super::tally::Tally;
use super::{BackendId, BackendSet, EndReason, Found, Insert, Record, SessionKey};
use crate::metrics::Metrics;
use codec::Keys;
use sentinel::{Primary, Sentinels};
use writer::{Write, WRITE_QUEUE};

pub use sentinel::SentinelSettings;

mod codec;
mod conn;
mod counts;
mod script;
mod sentinel;
mod writer;

/// How to reach Redis and what to keep locally.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL (TLS through rustls with aws-lc-rs).
    /// Not used with `sentinel`.
    pub url: String,
    /// Find the primary through Redis Sentinel instead of `url`.
    pub sentinel: Option<SentinelSettings>,
    /// Prefix of every key and of the pub/sub channel.
    pub key_prefix: String,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for any reply.
    pub command_timeout: Duration,
    /// Bound of the local view (entries).
    pub max_cached: usize,
    /// Session idle timeout.
    pub idle: Duration,
    /// Session absolute timeout.
    pub absolute: Duration,
}

/// The Redis-backed store. Cheap to clone: clones share one connection,
/// one local view and one set of background tasks, which stop when the last
/// clone drops.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("up", &self.is_up())
            .field("cached", &self.inner.cache.len())
            .finish()
    }
}

/// Connection state. `Starting` lets the first failure log once as well.
const STARTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Where the primary is.
enum Target {
    /// A fixed URL: the connection manager reconnects to it by itself.
    Url,
    /// Whichever node the sentinels name, asked again after any failure.
    Sentinel(Sentinels),
}

struct Inner {
    target: Target,
    /// The primary in use, which the subscriber follows: the URL's from the
    /// start, or (with Sentinel) the last one found.
    primary: ArcSwapOption<Primary>,
    /// Set by the health task once a first connection succeeded; the
    /// manager reconnects by itself after that (with Sentinel it is
    /// replaced instead, see `relocate`).
    conn: ArcSwapOption<ConnectionManager>,
    /// Connect anew (with Sentinel: ask the sentinels) on the next check.
    relocate: AtomicBool,
    /// Wakes the health task for a check now.
    kick: Arc<Notify>,
    state: AtomicU8,
    /// The invalidation channel is connected: the local view may be used.
    subscribed: AtomicBool,
    cache: Cache,
    writes: mpsc::Sender<Write>,
    names: ArcSwap<Names>,
    /// Live sessions per backend and in all, as of the last count.
    tally: Tally,
    /// Held while a count is stored or an id forgotten, so a count taken
    /// under names that a reload then forgets is never stored after the
    /// forget zeroed it (it would stay, since no later count visits an id
    /// without a name).
    counting: Mutex<()>,
    idle_ms: AtomicU64,
    absolute_ms: AtomicU64,
    keys: Keys,
    /// Tags this instance's invalidations so it skips its own.
    instance: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Bumped when the subscriber must subscribe anew: Redis went down (a
    /// half-open pub/sub socket would otherwise wait forever), or another
    /// primary was found.
    resubscribe: watch::Sender<u64>,
    /// Dropped with `Inner`: every background task watches it and returns.
    _stop: watch::Sender<()>,
}

#[derive(Default)]
struct Names {
    by_id: HashMap<BackendId, Arc<str>>,
    by_name: HashMap<Arc<str>, BackendId>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisStore {
    /// Starts the store: spawns its writer, health, subscriber and upkeep
    /// tasks on the current runtime, then waits (at most twice
    /// `connect_timeout`) for a first connection. An unreachable Redis is not
    /// an error: the store starts degraded, says so once, and connects when
    /// it can.
    ///
    /// `now_ms` is the caller's clock, read only by the upkeep task.
    ///
    /// # Errors
    /// The URL cannot be parsed (config checks this first); not with
    /// Sentinel, whose nodes are only dialled.
    pub async fn start<C>(
        settings: RedisSettings,
        metrics: Arc<Metrics>,
        now_ms: C,
    ) -> Result<RedisStore, RedisError>
    where
        C: Fn() -> u64 + Send + Sync + 'static,
    {
        let (target, primary) = match &settings.sentinel {
            Some(s) => (Target::Sentinel(Sentinels::new(s.clone())), None),
            None => {
                let client = Client::open(settings.url.as_str())?;
                // The address alone: the URL may hold a password.
                let addr = client.get_connection_info().addr.to_string();
                (Target::Url, Some(Arc::new(Primary { addr, client })))
            }
        };
        let (writes, rx) = mpsc::channel(WRITE_QUEUE);
        let (stop, stop_rx) = watch::channel(());
        let (resubscribe, resubscribe_rx) = watch::channel(0u64);
        let kick = Arc::new(Notify::new());
        metrics.set_store_up(false);
        let inner = Arc::new(Inner {
            target,
            primary: ArcSwapOption::new(primary),
            conn: ArcSwapOption::empty(),
            relocate: AtomicBool::new(false),
            kick: kick.clone(),
            state: AtomicU8::new(STARTING),
            subscribed: AtomicBool::new(false),
            cache: Cache::new(settings.max_cached),
            writes,
            names: ArcSwap::from_pointee(Names::default()),
            tally: Tally::new(),
            counting: Mutex::new(()),
            idle_ms: AtomicU64::new(millis(settings.idle)),
            absolute_ms: AtomicU64::new(millis(settings.absolute)),
            keys: Keys::new(&settings.key_prefix),
            instance: format!("{:016x}", rand::random::<u64>()),
            connect_timeout: settings.connect_timeout,
            command_timeout: settings.command_timeout,
            metrics,
            resubscribe,
            _stop: stop,
        });
        // Ping often enough that recovery is noticed within a second, and
        // never more often than a slow reply could come back.
        let ping_every = (settings.command_timeout * 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let upkeep_every = (settings.idle.min(settings.absolute) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let weak = Arc::downgrade(&inner);
        tokio::spawn(writer::writer(weak.clone(), rx));
        tokio::spawn(conn::health(
            weak.clone(),
            stop_rx.clone(),
            kick,
            ping_every,
        ));
        tokio::spawn(conn::subscriber(
            weak.clone(),
            stop_rx.clone(),
            resubscribe_rx,
            ping_every,
        ));
        if let Target::Sentinel(s) = &inner.target {
            tokio::spawn(sentinel::watcher(
                weak.clone(),
                s.settings().clone(),
                stop_rx.clone(),
                ping_every,
            ));
        }
        tokio::spawn(counts::upkeep(weak, stop_rx, upkeep_every, now_ms));

        let ready = async {
            while !(inner.is_up() && inner.subscribed.load(Ordering::Acquire)) {
                if inner.state.load(Ordering::Acquire) == DOWN {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let _ = tokio::time::timeout(settings.connect_timeout * 2, ready).await;
        Ok(RedisStore { inner })
    }

    /// Whether Redis answered the last command or ping.
    pub fn is_up(&self) -> bool {
        self.inner.is_up()
    }

    /// Tells the store the name of each backend id, so it can store names
    /// (the same on every instance) and read them back as local ids. Call it
    /// with every snapshot's backends; names are only ever added.
    pub fn name_backends<'a>(&self, names: impl IntoIterator<Item = (BackendId, &'a str)>) {
        let old = self.inner.names.load();
        let mut next = Names {
            by_id: old.by_id.clone(),
            by_name: old.by_name.clone(),
        };
        for (id, name) in names {
            let name: Arc<str> = Arc::from(name);
            next.by_id.insert(id, name.clone());
            next.by_name.insert(name, id);
        }
        self.inner.names.store(Arc::new(next));
    }

    /// Forgets backend ids whose names are gone, before they are given to
    /// other names: their names (a session stored under an old name then
    /// reads as an unknown backend, which its cookie routes), their counts,
    /// and the sessions cached under them. Sessions in Redis are stored by
    /// name and stay as they are.
    pub fn forget_backends(&self, ids: &[BackendId]) {
        if ids.is_empty() {
            return;
        }
        let counting = self.inner.counting();
        let old = self.inner.names.load();
        let mut next = Names {
            by_id: old.by_id.clone(),
            by_name: old.by_name.clone(),
        };
        for id in ids {
            if let Some(name) = next.by_id.remove(id) {
                if next.by_name.get(&name) == Some(id) {
                    next.by_name.remove(&name);
                }
            }
            self.inner.tally.set(*id, 0);
        }
        self.inner.names.store(Arc::new(next));
        drop(counting);
        // After the names: a read that judged a record by an old name
        // before this point is refused when it tries to fill the cache.
        self.inner.cache.forget_backends(ids);
    }

    /// See [`super::SessionStore::get_touch`]. Never waits longer than
    /// `command_timeout`. While Redis is down (or a read fails) the local
    /// view answers what it holds: a tombstone, or a live session as
    /// `Stale`; else `Unavailable`.
    pub async fn get_touch(&self, key: SessionKey, now_ms: u64) -> Found {
        let inner = &*self.inner;
        let t = inner.times();
        if !inner.is_up() {
            return inner.offline(key, now_ms, t);
        }
        if inner.subscribed.load(Ordering::Acquire) {
            match inner.cache.lookup(key, now_ms, t) {
                Hit::Live { prev, sync } => {
                    if sync {
                        inner.queue(Write::Touch {
                            key,
                            backend: inner.name_of(prev.backend),
                            created_ms: prev.created_ms,
                            now_ms,
                        });
                    }
                    return Found::Live(prev);
                }
                Hit::Over(reason) => return Found::Over(reason),
                Hit::Miss => {}
            }
        }
        let generation = inner.cache.generation(key);
        let cmd = inner.eval("get", key, now_ms, t, &[]);
        let Some(value) = inner.call::<Option<String>>(&cmd).await else {
            return inner.offline(key, now_ms, t);
        };
        let (found, entry) = inner.judge(value.as_deref(), now_ms, t);
        if let Some(e) = entry {
            inner.cache.fill(key, e, generation);
        }
        found
    }

    /// See [`super::SessionStore::insert`]. Cached at once, written behind;
    /// never `Full` (Redis's own `maxmemory` policy is the bound there).
    pub async fn insert(&self, key: SessionKey, record: Record) -> Insert {
        self.inner.cache.put(
            key,
            Entry {
                created_ms: record.created_ms,
                seen_ms: record.seen_ms,
                synced_ms: record.seen_ms,
                backend: record.backend,
                ended: None,
            },
        );
        self.inner.queue(Write::Insert {
            key,
            record,
            backend: self.inner.name_of(record.backend),
        });
        Insert::Done
    }

    /// See [`super::SessionStore::repin`]. Written before it returns (bounded
    /// by `command_timeout`) and announced to the other instances; `false`
    /// when Redis did not take it.
    pub async fn repin(&self, key: SessionKey, backend: BackendId, now_ms: u64) -> bool {
        self.inner.cache.repin(key, backend, now_ms);
        let backend = self.inner.name_of(backend);
        self.inner
            .acked(|ack| Write::Repin {
                key,
                backend,
                now_ms,
                ack,
            })
            .await
    }

    /// See [`super::SessionStore::end`]. The local tombstone holds at once;
    /// the Redis one is written before this returns (bounded by
    /// `command_timeout`) and announced to the other instances. While Redis
    /// is down only the local one exists, and other instances judge the old
    /// cookie by its own timestamps.
    pub async fn end(&self, key: SessionKey, reason: EndReason, now_ms: u64) -> Insert {
        let t = self.inner.times();
        self.inner.cache.end(key, reason, now_ms, t);
        self.inner
            .acked(|ack| Write::End {
                key,
                reason,
                now_ms,
                ack,
            })
            .await;
        Insert::Done
    }

    /// Live sessions pinned to `backend`, across all instances, as of the
    /// last background count (see the module docs for the error bound).
    pub fn sessions_on(&self, backend: BackendId) -> u64 {
        self.inner.tally.on(backend)
    }

    /// Live sessions pinned to any backend in `backends`, across all
    /// instances, as of the last background count. See
    /// [`super::SessionStore::sessions_among`].
    pub fn sessions_among(&self, backends: &BackendSet) -> u64 {
        self.inner.tally.among(backends)
    }

    /// Live sessions across all instances, as of the last background count.
    pub fn live(&self) -> u64 {
        self.inner.tally.total()
    }

    /// Entries in this instance's local view.
    pub fn len(&self) -> usize {
        self.inner.cache.len()
    }

    /// Whether the local view is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies new timeouts (config reload). Every instance should carry the
    /// same values: Redis TTLs are set by whichever instance writes last.
    pub fn set_timeouts(&self, idle: Duration, absolute: Duration) {
        self.inner.idle_ms.store(millis(idle), Ordering::Relaxed);
        self.inner
            .absolute_ms
            .store(millis(absolute), Ordering::Relaxed);
    }
}

impl Inner {
    /// The name a backend id stands for now.
    fn name_of(&self, id: BackendId) -> Option<Arc<str>> {
        self.names.load().by_id.get(&id).cloned()
    }

    fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// See `counting`. Nothing under it can panic half way (plain stores),
    /// so a poisoned lock still guards consistent counts.
    fn counting(&self) -> std::sync::MutexGuard<'_, ()> {
        self.counting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the local view alone can say while Redis cannot answer. Its
    /// live entries keep their local idle clock running (nothing is queued:
    /// writes are dropped while down, and the view is cleared on recovery).
    fn offline(&self, key: SessionKey, now_ms: u64, t: Times) -> Found {
        match self.cache.lookup(key, now_ms, t) {
            Hit::Live { prev, .. } => Found::Stale(prev),
            Hit::Over(reason) => Found::Over(reason),
            Hit::Miss => Found::Unavailable,
        }
    }

    fn times(&self) -> Times {
        let idle_ms = self.idle_ms.load(Ordering::Relaxed);
        Times {
            idle_ms,
            absolute_ms: self.absolute_ms.load(Ordering::Relaxed),
            // The cookie's own refresh granularity (session::Timeouts).
            refresh_ms: (idle_ms / 10).max(1),
        }
    }

    fn set_up(&self) {
        let was = self.state.swap(UP, Ordering::AcqRel);
        if was == UP {
            return;
        }
        // Invalidations may have been missed while unreachable.
        self.cache.clear();
        self.metrics.set_store_up(true);
        if was == DOWN {
            tracing::info!("redis store reachable again: sessions are shared again");
        } else {
            tracing::info!("redis store connected");
        }
    }

    fn set_down(&self, why: &str) {
        let was = self.state.swap(DOWN, Ordering::AcqRel);
        if was == DOWN {
            return;
        }
        self.metrics.set_store_up(false);
        self.resubscribe.send_modify(|n| *n = n.wrapping_add(1));
        if let Target::Sentinel(_) = self.target {
            // Whatever went wrong, the primary may have moved.
            self.relocate();
        }
        tracing::warn!(
            error = why,
            "redis store unreachable: routing sessions by their cookies until it answers"
        );
    }

    /// A store call failed: `n` operations are lost.
    fn failed(&self, n: u64, why: &str) {
        self.metrics.store_errors(n);
        self.set_down(why);
    }

    /// What a stored value means at `now`, and what to cache of it. The same
    /// rules as the script and the memory store: live while
    /// `now < min(seen + idle, created + absolute)`.
    fn judge(&self, value: Option<&str>, now_ms: u64, t: Times) -> (Found, Option<Entry>) {
        let Some(s) = value.and_then(codec::parse) else {
            return (Found::Missing, None);
        };
        let (deadline, why) = super::deadline(s.created_ms, s.seen_ms, t.idle_ms, t.absolute_ms);
        match s.ended {
            None if now_ms < deadline => {
                let Some(id) = self.names.load().by_name.get(s.backend).copied() else {
                    // Pinned to a backend this instance does not know (a
                    // config that differs between instances): let the cookie
                    // route it rather than guess.
                    tracing::debug!(
                        backend = s.backend,
                        "stored session names an unknown backend"
                    );
                    return (Found::Unavailable, None);
                };
                let record = Record {
                    backend: id,
                    created_ms: s.created_ms,
                    seen_ms: s.seen_ms,
                };
                let entry = Entry {
                    created_ms: s.created_ms,
                    seen_ms: s.seen_ms.max(now_ms),
                    synced_ms: now_ms,
                    backend: id,
                    ended: None,
                };
                (Found::Live(record), Some(entry))
            }
            None => (Found::Over(why), None),
            Some(reason) if now_ms < deadline => {
                let entry = Entry {
                    created_ms: s.created_ms,
                    seen_ms: s.seen_ms,
                    synced_ms: now_ms,
                    backend: BackendId(0),
                    ended: Some(reason),
                };
                (Found::Over(reason), Some(entry))
            }
            Some(_) => (Found::Missing, None),
        }
    }
}
