//! The shared store for many instances: sessions live in one Redis, judged by
//! TTLs and timestamps there, with a small local view in front so a returning
//! cookie costs no round trip. Degrades to "unavailable" (route by the
//! cookie) while Redis is down or slow, and recovers by itself.
//!
//! What crosses the wire, per session:
//!
//! - **Reads** happen only when the local view has nothing usable: a key this
//!   instance has not verified, or one that looks over here (another instance
//!   may have kept it alive). One `EVAL` reads the record and, if it is live,
//!   restarts its idle clock in the same step.
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::cache::{Cache, Entry, Hit, Times};
use super::{BackendId, EndReason, Found, Insert, Record, SessionKey, MAX_BACKEND_IDS};
use crate::metrics::Metrics;

/// One script for every operation, dispatched on `ARGV[1]`. Numbers are
/// unix milliseconds; Lua's doubles hold them exactly (below 2^53), and
/// `%.0f` prints them without an exponent.
const SCRIPT: &str = r#"
local op, now, idle, abs = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local zp, member, key = ARGV[5], ARGV[6], KEYS[1]
local function parse(v)
  if not v then return nil end
  local c, s, st, b = string.match(v, '^(%d+)|(%d+)|(%u)|(.*)$')
  if not c then return nil end
  return {c = tonumber(c), s = tonumber(s), st = st, b = b}
end
local function deadline(r) return math.min(r.s + idle, r.c + abs) end
local function put(r)
  local dl = deadline(r)
  if dl <= now then redis.call('DEL', key) return end
  redis.call('SET', key, string.format('%.0f|%.0f|%s|%s', r.c, r.s, r.st, r.b),
    'PX', string.format('%.0f', dl - now))
  if r.st == 'L' then redis.call('ZADD', zp .. r.b, string.format('%.0f', dl), member) end
end
local v = redis.call('GET', key)
local r = parse(v)
local expired = r and deadline(r) <= now
if expired then
  if r.st == 'L' then redis.call('ZREM', zp .. r.b, member) end
  redis.call('DEL', key)
end
if op == 'get' then
  if r and not expired and r.st == 'L' then r.s = math.max(r.s, now) put(r) end
  return v
end
if expired then r = nil end
if op == 'tch' then
  if not r then
    put({c = tonumber(ARGV[8]), s = now, st = 'L', b = ARGV[7]})
  elseif r.st == 'L' then
    r.s = math.max(r.s, now) put(r)
  end
  return 1
elseif op == 'ins' then
  if r and r.st == 'L' and r.b ~= ARGV[7] then redis.call('ZREM', zp .. r.b, member) end
  put({c = tonumber(ARGV[8]), s = tonumber(ARGV[9]), st = 'L', b = ARGV[7]})
  return 1
elseif op == 'rep' then
  if not r or r.st ~= 'L' then return 0 end
  if r.b ~= ARGV[7] then redis.call('ZREM', zp .. r.b, member) end
  r.b = ARGV[7] r.s = math.max(r.s, now) put(r)
  return 1
elseif op == 'end' then
  if not r then put({c = now, s = now, st = ARGV[7], b = ''}) return 1 end
  if r.st == 'L' then
    redis.call('ZREM', zp .. r.b, member)
    r.st = ARGV[7] r.s = math.max(r.s, now) put(r)
  end
  return 1
end
return redis.error_reply('tether: unknown store op')
"#;

/// Writes queued beyond this are dropped (and counted): a Redis that cannot
/// keep up must not grow tether's memory without bound.
const WRITE_QUEUE: usize = 16_384;
/// Most writes sent in one pipeline.
const BATCH: usize = 512;

/// How to reach Redis and what to keep locally.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL (TLS through rustls with aws-lc-rs).
    pub url: String,
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

struct Inner {
    client: Client,
    /// Set by the health task once a first connection succeeded; the
    /// manager reconnects by itself after that.
    conn: ArcSwapOption<ConnectionManager>,
    state: AtomicU8,
    /// The invalidation channel is connected: the local view may be used.
    subscribed: AtomicBool,
    cache: Cache,
    writes: mpsc::Sender<Write>,
    names: ArcSwap<Names>,
    counts: Box<[AtomicU64]>,
    live: AtomicU64,
    idle_ms: AtomicU64,
    absolute_ms: AtomicU64,
    keys: Keys,
    /// Tags this instance's invalidations so it skips its own.
    instance: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Tells the subscriber to reconnect (the health task saw Redis go down;
    /// a half-open pub/sub socket would otherwise wait forever).
    resubscribe: Arc<Notify>,
    /// Dropped with `Inner`: every background task watches it and returns.
    _stop: watch::Sender<()>,
}

struct Keys {
    session: String,
    backend: String,
    channel: String,
}

#[derive(Default)]
struct Names {
    by_id: HashMap<BackendId, Arc<str>>,
    by_name: HashMap<Arc<str>, BackendId>,
}

/// One queued write. Those with an `ack` are awaited by the request that made
/// them (bounded by `command_timeout`); the others are fire-and-forget.
///
/// A write carries its backend's *name*, looked up when it is queued: the
/// request that queues it still holds its backend id, but by the time the
/// writer sends it that id may have been forgotten and given to another
/// name. `None`: the id named no backend this store knows; not written.
enum Write {
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A stored record, as the script writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored<'a> {
    created_ms: u64,
    seen_ms: u64,
    /// `None` live, else the tombstone's reason.
    ended: Option<EndReason>,
    backend: &'a str,
}

fn parse(v: &str) -> Option<Stored<'_>> {
    let mut it = v.splitn(4, '|');
    let created_ms = it.next()?.parse().ok()?;
    let seen_ms = it.next()?.parse().ok()?;
    let ended = match it.next()? {
        "L" => None,
        "E" => Some(EndReason::Ended),
        "R" => Some(EndReason::Regenerated),
        _ => return None,
    };
    Some(Stored {
        created_ms,
        seen_ms,
        ended,
        backend: it.next()?,
    })
}

fn reason_code(r: EndReason) -> &'static str {
    match r {
        EndReason::Regenerated => "R",
        // Idle and absolute never reach a tombstone; treat them as ended.
        _ => "E",
    }
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
    /// The URL cannot be parsed (config checks this first).
    pub async fn start<C>(
        settings: RedisSettings,
        metrics: Arc<Metrics>,
        now_ms: C,
    ) -> Result<RedisStore, RedisError>
    where
        C: Fn() -> u64 + Send + Sync + 'static,
    {
        let client = Client::open(settings.url.as_str())?;
        let (writes, rx) = mpsc::channel(WRITE_QUEUE);
        let (stop, stop_rx) = watch::channel(());
        let p = &settings.key_prefix;
        let resubscribe = Arc::new(Notify::new());
        metrics.set_store_up(false);
        let inner = Arc::new(Inner {
            client: client.clone(),
            conn: ArcSwapOption::empty(),
            state: AtomicU8::new(STARTING),
            subscribed: AtomicBool::new(false),
            cache: Cache::new(settings.max_cached),
            writes,
            names: ArcSwap::from_pointee(Names::default()),
            counts: (0..MAX_BACKEND_IDS).map(|_| AtomicU64::new(0)).collect(),
            live: AtomicU64::new(0),
            idle_ms: AtomicU64::new(millis(settings.idle)),
            absolute_ms: AtomicU64::new(millis(settings.absolute)),
            keys: Keys {
                session: format!("{p}s:"),
                backend: format!("{p}b:"),
                channel: format!("{p}events"),
            },
            instance: format!("{:016x}", rand::random::<u64>()),
            connect_timeout: settings.connect_timeout,
            command_timeout: settings.command_timeout,
            metrics,
            resubscribe: resubscribe.clone(),
            _stop: stop,
        });
        // Ping often enough that recovery is noticed within a second, and
        // never more often than a slow reply could come back.
        let ping_every = (settings.command_timeout * 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let upkeep_every = (settings.idle.min(settings.absolute) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let weak = Arc::downgrade(&inner);
        tokio::spawn(writer(weak.clone(), rx));
        tokio::spawn(health(weak.clone(), stop_rx.clone(), ping_every));
        tokio::spawn(subscriber(
            weak.clone(),
            client,
            stop_rx.clone(),
            resubscribe,
            ping_every,
        ));
        tokio::spawn(upkeep(weak, stop_rx, upkeep_every, now_ms));

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
            if let Some(c) = self.inner.counts.get(usize::from(id.0)) {
                c.store(0, Ordering::Relaxed);
            }
        }
        self.inner.names.store(Arc::new(next));
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
        self.inner
            .counts
            .get(usize::from(backend.0))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Live sessions across all instances, as of the last background count.
    pub fn live(&self) -> u64 {
        self.inner.live.load(Ordering::Relaxed)
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
        self.resubscribe.notify_one();
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

    /// One command with the hard bound; `None` (counted, and the store marked
    /// down) on an error or a timeout.
    async fn call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let conn = self.conn.load_full()?;
        let mut conn = ConnectionManager::clone(&conn);
        match tokio::time::timeout(self.command_timeout, cmd.query_async::<T>(&mut conn)).await {
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

    fn session_key(&self, key: SessionKey) -> String {
        format!("{}{:032x}", self.keys.session, key.0)
    }

    fn eval(&self, op: &str, key: SessionKey, now_ms: u64, t: Times, extra: &[&str]) -> redis::Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(SCRIPT)
            .arg(1)
            .arg(self.session_key(key))
            .arg(op)
            .arg(now_ms)
            .arg(t.idle_ms)
            .arg(t.absolute_ms)
            .arg(&self.keys.backend)
            .arg(format!("{:032x}", key.0));
        for a in extra {
            c.arg(*a);
        }
        c
    }

    /// What a stored value means at `now`, and what to cache of it. The same
    /// rules as the script and the memory store: live while
    /// `now < min(seen + idle, created + absolute)`.
    fn judge(&self, value: Option<&str>, now_ms: u64, t: Times) -> (Found, Option<Entry>) {
        let Some(s) = value.and_then(parse) else {
            return (Found::Missing, None);
        };
        let idle_end = s.seen_ms.saturating_add(t.idle_ms);
        let abs_end = s.created_ms.saturating_add(t.absolute_ms);
        let (deadline, why) = if abs_end <= idle_end {
            (abs_end, EndReason::Absolute)
        } else {
            (idle_end, EndReason::Idle)
        };
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

    /// Queues a write without waiting; dropped and counted while Redis is
    /// down or the queue is full.
    fn queue(&self, w: Write) -> bool {
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
    async fn acked(&self, make: impl FnOnce(oneshot::Sender<bool>) -> Write) -> bool {
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
                match tokio::time::timeout(self.command_timeout, pipe.query_async::<()>(&mut conn))
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
                        pipe.add_command(self.eval("tch", key, now_ms, t, &[&b, &created]))
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
                        pipe.add_command(self.eval(
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
                        pipe.add_command(self.eval("rep", key, now_ms, t, &[&b]))
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
                    pipe.add_command(self.eval("end", key, now_ms, t, &[reason_code(reason)]))
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
            .arg(format!("{} {:032x}", self.instance, key.0))
            .ignore();
    }

    fn on_message(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let Some((from, key)) = text.split_once(' ') else {
            return;
        };
        if from == self.instance {
            return;
        }
        if let Ok(k) = u128::from_str_radix(key, 16) {
            self.cache.invalidate(SessionKey(k));
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
            let set = format!("{}{}", self.keys.backend, name);
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
            // Ids forgotten meanwhile may name other backends now.
            Ok(Ok(_)) if !Arc::ptr_eq(&names, &self.names.load()) => {}
            Ok(Ok(v)) => {
                let mut live = 0;
                for ((id, _), n) in order.iter().zip(v) {
                    if let Some(c) = self.counts.get(usize::from(id.0)) {
                        c.store(n, Ordering::Relaxed);
                    }
                    live += n;
                }
                self.live.store(live, Ordering::Relaxed);
            }
            Ok(Err(e)) => self.failed(1, &e.to_string()),
            Err(_) => self.failed(1, "session count timed out"),
        }
    }
}

/// Sends queued writes, as many per pipeline as are waiting. Ends when the
/// store is dropped (the queue's sender goes with it).
async fn writer(weak: Weak<Inner>, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let Some(inner) = weak.upgrade() else { return };
        inner.flush(&mut batch).await;
    }
}

/// Waits `every`, or returns `false` once the store has been dropped.
async fn pause(stop: &mut watch::Receiver<()>, every: Duration) -> bool {
    tokio::select! {
        _ = stop.changed() => false,
        _ = tokio::time::sleep(every) => true,
    }
}

/// Connects, pings every `every`, and flips the up/down state (logging once
/// per change).
async fn health(weak: Weak<Inner>, mut stop: watch::Receiver<()>, every: Duration) {
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
async fn subscriber(
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

/// Reaps the local view and refreshes the per-backend counts.
async fn upkeep<C>(weak: Weak<Inner>, mut stop: watch::Receiver<()>, every: Duration, now_ms: C)
where
    C: Fn() -> u64 + Send + Sync + 'static,
{
    while pause(&mut stop, every).await {
        let Some(inner) = weak.upgrade() else { return };
        let now = now_ms();
        inner.cache.reap(now, inner.times());
        inner.recount(now).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_parse_strictly() {
        assert_eq!(
            parse("10|20|L|app-1.x"),
            Some(Stored {
                created_ms: 10,
                seen_ms: 20,
                ended: None,
                backend: "app-1.x"
            })
        );
        assert_eq!(
            parse("10|20|R|").map(|s| s.ended),
            Some(Some(EndReason::Regenerated))
        );
        assert_eq!(
            parse("10|20|E|b").map(|s| s.ended),
            Some(Some(EndReason::Ended))
        );
        for bad in ["", "10|20|L", "x|20|L|b", "10|20|Q|b", "10|-1|L|b"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
