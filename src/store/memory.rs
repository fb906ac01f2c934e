//! The embedded session store: a sharded map bounded by `max_sessions`, with
//! idle and absolute expiry, tombstones for ended sessions, exact per-backend
//! live counts, and a background reaper that stops when the store is dropped.
//!
//! Every operation locks one shard (a `std::sync::Mutex`, held for a few
//! hundred nanoseconds and never across `.await`), so requests for different
//! sessions rarely meet. The counters are atomics written only on the rare
//! paths (a session begins, moves, ends or expires); a touch writes none.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::tally::Tally;
use super::{
    BackendId, BackendSet, EndReason, Found, Insert, Record, SessionKey, SessionStore,
    MAX_BACKEND_IDS,
};

/// Most entries one eviction looks at before giving up: a full store of
/// sessions that may not be evicted must not cost every refused insert a
/// scan of the whole map.
const EVICT_SCAN: usize = 4096;

/// What an eviction may take (an expired entry always qualifies).
#[derive(Clone, Copy)]
enum Victim {
    /// Only a live session a client alone vouches for.
    Claimed,
    /// Any live session (for a tombstone, which must not be refused).
    Live,
}

/// Number of shards. A power of two so the shard is a mask of key bits; 64
/// keeps contention negligible on the core counts tether runs on while the
/// per-shard overhead (a mutex and an empty table) stays a few KiB.
const SHARDS: usize = 64;

/// The embedded session store. Cheap to clone: all clones share one map.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .field("live", &self.live())
            .field("max_sessions", &self.inner.max_sessions)
            .finish()
    }
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    /// Entries held, tombstones included; bounded by `max_sessions`.
    len: AtomicUsize,
    /// Live sessions (entries minus tombstones), per backend and in all.
    tally: Tally,
    /// Live sessions only a client vouches for (`insert_claimed`): when it
    /// is zero, a full store has nothing an insert may evict, and no scan
    /// is made.
    claimed: AtomicUsize,
    /// Where the next eviction scan starts, so evictions spread over shards.
    evict_from: AtomicUsize,
    max_sessions: usize,
    idle_ms: AtomicU64,
    absolute_ms: AtomicU64,
    /// Wakes the reaper task so it exits as soon as the last handle drops,
    /// rather than at its next tick. Shared separately because the task
    /// must be able to wait on it without keeping `Inner` alive.
    reaper_stop: Arc<Notify>,
}

/// Drop guard in the spirit of mini-redis's `DbDropGuard`: the reaper holds
/// only a `Weak<Inner>`, so `Inner` drops with the last store handle, and
/// this tells the reaper to stop. `notify_one` keeps a permit if the reaper is
/// mid-sweep, so the wake-up is not lost.
impl Drop for Inner {
    fn drop(&mut self) {
        self.reaper_stop.notify_one();
    }
}

type Shard = HashMap<u128, Entry, BuildHasherDefault<KeyHasher>>;

/// One map entry: 24 bytes, 48 with its u128 key (16-byte aligned).
#[derive(Clone, Copy)]
struct Entry {
    created_ms: u64,
    seen_ms: u64,
    backend: BackendId,
    /// `None` for a live session; `Some(reason)` for a tombstone.
    ended: Option<EndReason>,
    /// Only a client vouches for it: the first to go when room is needed.
    claimed: bool,
}

impl Entry {
    /// When this entry stops being valid: the first instant at which it is
    /// over (live) or may be forgotten (tombstone).
    #[inline]
    fn deadline(&self, t: Timeouts) -> (u64, EndReason) {
        super::deadline(self.created_ms, self.seen_ms, t.idle_ms, t.absolute_ms)
    }

    #[inline]
    fn expired(&self, t: Timeouts, now_ms: u64) -> bool {
        now_ms >= self.deadline(t).0
    }

    fn record(&self) -> Record {
        Record {
            backend: self.backend,
            created_ms: self.created_ms,
            seen_ms: self.seen_ms,
        }
    }
}

#[derive(Clone, Copy)]
struct Timeouts {
    idle_ms: u64,
    absolute_ms: u64,
}

/// Identity hasher over the key's low 64 bits.
///
/// Safe only because every key is a 128-bit CSPRNG id or a keyed digest:
/// uniformly distributed and unpredictable to clients, so there is nothing to
/// gain from SipHash's flooding resistance and nothing to mix. The shard is
/// chosen from the *high* 64 bits, so within a shard the low bits that
/// hashbrown uses for its bucket index and control byte are still uniform.
#[derive(Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write_u128(&mut self, key: u128) {
        self.0 = key as u64;
    }

    /// Not reached for `u128` keys; an FNV-1a fold keeps any other use sane.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl MemoryStore {
    /// A store that holds at most `max_sessions` entries (tombstones
    /// included) and judges sessions by the given timeouts. Start the reaper
    /// with [`MemoryStore::spawn_reaper`].
    pub fn new(max_sessions: usize, idle: Duration, absolute: Duration) -> MemoryStore {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        MemoryStore {
            inner: Arc::new(Inner {
                shards,
                len: AtomicUsize::new(0),
                tally: Tally::new(),
                claimed: AtomicUsize::new(0),
                evict_from: AtomicUsize::new(0),
                max_sessions,
                idle_ms: AtomicU64::new(millis(idle)),
                absolute_ms: AtomicU64::new(millis(absolute)),
                reaper_stop: Arc::new(Notify::new()),
            }),
        }
    }

    /// Looks a key up; a live session's idle clock restarts at `now_ms`.
    /// See [`SessionStore::get_touch`].
    pub fn get_touch(&self, key: SessionKey, now_ms: u64) -> Found {
        let t = self.inner.timeouts();
        let mut shard = self.inner.shard(key);
        let Some(entry) = shard.get_mut(&key.0) else {
            return Found::Missing;
        };
        let (deadline, why) = entry.deadline(t);
        match entry.ended {
            None if now_ms < deadline => {
                let before = entry.record();
                // max: a caller with a slightly older `now` must not turn
                // the idle clock back.
                entry.seen_ms = entry.seen_ms.max(now_ms);
                Found::Live(before)
            }
            Some(reason) if now_ms < deadline => Found::Over(reason),
            None => {
                let gone = *entry;
                shard.remove(&key.0);
                self.inner.forget(&gone);
                Found::Over(why)
            }
            Some(_) => {
                let gone = *entry;
                shard.remove(&key.0);
                self.inner.forget(&gone);
                Found::Missing
            }
        }
    }

    /// Stores a new live session, replacing a tombstone or an old record for
    /// the same key; when full, evicts an expired or claimed entry to make
    /// room. See [`SessionStore::insert`].
    pub fn insert(&self, key: SessionKey, record: Record) -> Insert {
        self.put(key, record, false)
    }

    /// Stores a session only a client vouches for: a free slot or nothing.
    /// See [`SessionStore::insert_claimed`].
    pub fn insert_claimed(&self, key: SessionKey, record: Record) -> Insert {
        self.put(key, record, true)
    }

    fn put(&self, key: SessionKey, record: Record, claimed: bool) -> Insert {
        let inner = &*self.inner;
        let new = Entry {
            created_ms: record.created_ms,
            seen_ms: record.seen_ms,
            backend: record.backend,
            ended: None,
            claimed,
        };
        // `reserved`: an eviction already handed this call a slot.
        let mut reserved = false;
        loop {
            let mut shard = inner.shard(key);
            if let Some(old) = shard.get_mut(&key.0) {
                let was = *old;
                // A claim never weakens what a backend taught us.
                let new = Entry {
                    claimed: claimed
                        && (was.claimed
                            || was.ended.is_some()
                            || was.expired(inner.timeouts(), record.seen_ms)),
                    ..new
                };
                *old = new;
                inner.forget_live(&was);
                inner.count_live(&new);
                if reserved {
                    inner.len.fetch_sub(1, Ordering::Relaxed);
                }
                return Insert::Done;
            }
            if reserved || inner.reserve_slot() {
                shard.insert(key.0, new);
                inner.count_live(&new);
                return Insert::Done;
            }
            drop(shard);
            // Full. Only what a backend taught us may make room, and only by
            // taking an expired entry or one a client alone vouches for.
            if claimed
                || inner.claimed.load(Ordering::Relaxed) == 0
                || !inner.evict(record.seen_ms, Victim::Claimed)
            {
                return Insert::Full;
            }
            reserved = true;
        }
    }

    /// Failover: moves a live session's pin. See [`SessionStore::repin`].
    pub fn repin(&self, key: SessionKey, backend: BackendId, now_ms: u64) -> bool {
        let inner = &*self.inner;
        let t = inner.timeouts();
        let mut shard = inner.shard(key);
        let Some(entry) = shard.get_mut(&key.0) else {
            return false;
        };
        if entry.expired(t, now_ms) {
            let gone = *entry;
            shard.remove(&key.0);
            inner.forget(&gone);
            return false;
        }
        if entry.ended.is_some() {
            return false;
        }
        if entry.backend != backend {
            inner.tally.sub(entry.backend);
            inner.tally.add(backend);
            entry.backend = backend;
        }
        entry.seen_ms = entry.seen_ms.max(now_ms);
        true
    }

    /// Ends a session, leaving a tombstone. See [`SessionStore::end`].
    pub fn end(&self, key: SessionKey, reason: EndReason, now_ms: u64) -> Insert {
        let inner = &*self.inner;
        let t = inner.timeouts();
        let mut shard = inner.shard(key);
        if let Some(entry) = shard.get_mut(&key.0) {
            if !entry.expired(t, now_ms) {
                if entry.ended.is_none() {
                    let was = *entry;
                    // The request that ends a session is its last sighting,
                    // and its cookie may have been refreshed by it.
                    entry.seen_ms = entry.seen_ms.max(now_ms);
                    entry.ended = Some(reason);
                    entry.claimed = false;
                    inner.forget_live(&was);
                }
                // An existing tombstone keeps its first reason and deadline:
                // nothing can have refreshed the cookie since.
                return Insert::Done;
            }
            // Over already: replace it in place with a fresh tombstone (the
            // slot is reused, so this cannot be refused for fullness).
            let was = *entry;
            *entry = Entry {
                created_ms: now_ms,
                seen_ms: now_ms,
                backend: was.backend,
                ended: Some(reason),
                claimed: false,
            };
            inner.forget_live(&was);
            return Insert::Done;
        }
        let tombstone = Entry {
            created_ms: now_ms,
            seen_ms: now_ms,
            backend: BackendId(0),
            ended: Some(reason),
            claimed: false,
        };
        if inner.reserve_slot() {
            shard.insert(key.0, tombstone);
            return Insert::Done;
        }
        // Full. A refused tombstone would let the old id be adopted again
        // (logout that does not take), so it makes room: an expired or
        // claimed entry if there is one, else a live session, which loses
        // only its store record (its cookie still routes it).
        drop(shard);
        let room = inner.evict(now_ms, Victim::Claimed) || inner.evict(now_ms, Victim::Live);
        let mut shard = inner.shard(key);
        if shard.contains_key(&key.0) {
            // Someone wrote the key meanwhile; end that instead.
            drop(shard);
            if room {
                inner.len.fetch_sub(1, Ordering::Relaxed);
            }
            return self.end(key, reason, now_ms);
        }
        if room || inner.reserve_slot() {
            shard.insert(key.0, tombstone);
            return Insert::Done;
        }
        Insert::Full
    }

    /// Live sessions pinned to `backend` (0 for an id beyond
    /// [`MAX_BACKEND_IDS`]). Exact: every path that adds, moves or removes a
    /// live session adjusts it under the shard lock.
    pub fn sessions_on(&self, backend: BackendId) -> u64 {
        self.inner.tally.on(backend)
    }

    /// Live sessions pinned to any backend in `backends`. See
    /// [`SessionStore::sessions_among`].
    pub fn sessions_among(&self, backends: &BackendSet) -> u64 {
        self.inner.tally.among(backends)
    }

    /// Live sessions in all.
    pub fn live(&self) -> u64 {
        self.inner.tally.total()
    }

    /// Entries held, tombstones included.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound on [`MemoryStore::len`].
    pub fn max_sessions(&self) -> usize {
        self.inner.max_sessions
    }

    /// Applies new timeouts (config reload); the next call judges every
    /// entry, old or new, by them.
    pub fn set_timeouts(&self, idle: Duration, absolute: Duration) {
        self.inner.idle_ms.store(millis(idle), Ordering::Relaxed);
        self.inner
            .absolute_ms
            .store(millis(absolute), Ordering::Relaxed);
    }

    /// Forgets every session pinned to one of `ids`, backend ids whose names
    /// are gone and that are about to be given to other names: a record left
    /// under a reused id would route an old name's session to the new name's
    /// backend, and its count would start the new name above zero.
    /// Tombstones stay (they name no backend that matters). Sweeps every
    /// shard, one lock at a time; returns how many sessions it removed.
    pub fn forget_backends(&self, ids: &[BackendId]) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let mut gone = vec![false; MAX_BACKEND_IDS];
        for id in ids {
            if let Some(g) = gone.get_mut(usize::from(id.0)) {
                *g = true;
            }
        }
        let inner = &*self.inner;
        let mut removed = 0;
        for shard in inner.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, e| {
                let keep = e.ended.is_some()
                    || !gone.get(usize::from(e.backend.0)).copied().unwrap_or(false);
                if !keep {
                    inner.forget(e);
                    removed += 1;
                }
                keep
            });
        }
        removed
    }

    /// Sweeps every shard once, one lock at a time, removing expired
    /// sessions and tombstones and fixing the counts. Returns how many
    /// entries it removed. The reaper calls this; tests and benches may too.
    pub fn reap(&self, now_ms: u64) -> usize {
        (0..SHARDS).map(|i| self.inner.reap_shard(i, now_ms)).sum()
    }

    /// Spawns the background reaper on the current tokio runtime: every
    /// `every` it sweeps all shards at `now_ms()` (the caller's clock; the
    /// store reads none), yielding between shards so one sweep never holds a
    /// worker for long.
    ///
    /// The task holds only a `Weak` to the store, upgraded for one shard at a
    /// time, so it never keeps the store alive: when the last handle drops,
    /// the drop guard wakes it and it returns. The `JoinHandle` is for
    /// callers who want to observe that; dropping it does not stop the task.
    ///
    /// # Panics
    /// Outside a tokio runtime, or if `every` is zero.
    pub fn spawn_reaper<C>(&self, every: Duration, now_ms: C) -> JoinHandle<()>
    where
        C: Fn() -> u64 + Send + 'static,
    {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let stop = Arc::clone(&self.inner.reaper_stop);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(async move {
            // The first tick of an interval completes at once; skip it so the
            // first sweep comes one period after start.
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.notified() => return,
                    _ = tick.tick() => {}
                }
                let now = now_ms();
                for i in 0..SHARDS {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.reap_shard(i, now);
                    drop(inner);
                    tokio::task::yield_now().await;
                }
            }
        })
    }
}

impl Inner {
    #[inline]
    fn timeouts(&self) -> Timeouts {
        Timeouts {
            idle_ms: self.idle_ms.load(Ordering::Relaxed),
            absolute_ms: self.absolute_ms.load(Ordering::Relaxed),
        }
    }

    #[inline]
    fn shard(&self, key: SessionKey) -> MutexGuard<'_, Shard> {
        let i = (key.0 >> 64) as usize & (SHARDS - 1);
        // A panic while a shard was locked cannot leave an entry half
        // written (every update is a plain store of Copy fields), so a
        // poisoned shard is still consistent: keep serving it.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims room for one new entry, or says the store is full. A CAS loop
    /// rather than add-then-undo, so racing inserts at the bound never see a
    /// transient overshoot and refuse each other spuriously.
    fn reserve_slot(&self) -> bool {
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_sessions).then_some(n + 1)
            })
            .is_ok()
    }

    fn count_live(&self, e: &Entry) {
        if e.ended.is_none() {
            if e.claimed {
                self.claimed.fetch_add(1, Ordering::Relaxed);
            }
            self.tally.add(e.backend);
        }
    }

    /// Uncounts an entry that stops being live but keeps its slot.
    fn forget_live(&self, e: &Entry) {
        if e.ended.is_none() {
            if e.claimed {
                self.claimed.fetch_sub(1, Ordering::Relaxed);
            }
            self.tally.sub(e.backend);
        }
    }

    /// Uncounts an entry that has been removed from its shard.
    fn forget(&self, e: &Entry) {
        self.forget_live(e);
        self.len.fetch_sub(1, Ordering::Relaxed);
    }

    /// Removes one entry to make room for another, keeping its slot
    /// reserved for the caller (so `len` does not change and no racing
    /// insert can take it). Looks at `EVICT_SCAN` entries at most, one shard
    /// lock at a time; true if it found one.
    fn evict(&self, now_ms: u64, victim: Victim) -> bool {
        let t = self.timeouts();
        let start = self.evict_from.fetch_add(1, Ordering::Relaxed);
        let mut budget = EVICT_SCAN;
        for n in 0..SHARDS {
            let i = (start + n) & (SHARDS - 1);
            let mut shard = self.shards[i].lock().unwrap_or_else(|p| p.into_inner());
            let fits = |e: &Entry| match victim {
                Victim::Claimed => e.expired(t, now_ms) || (e.claimed && e.ended.is_none()),
                Victim::Live => e.expired(t, now_ms) || e.ended.is_none(),
            };
            let mut found = None;
            for (k, e) in shard.iter() {
                if fits(e) {
                    found = Some(*k);
                    break;
                }
                budget -= 1;
                if budget == 0 {
                    break;
                }
            }
            if let Some(k) = found {
                if let Some(gone) = shard.remove(&k) {
                    // Uncounted as live, but its slot passes to the caller.
                    self.forget_live(&gone);
                    return true;
                }
            }
            if budget == 0 {
                return false;
            }
        }
        false
    }

    fn reap_shard(&self, i: usize, now_ms: u64) -> usize {
        let t = self.timeouts();
        let mut shard = self.shards[i].lock().unwrap_or_else(|p| p.into_inner());
        let before = shard.len();
        shard.retain(|_, e| {
            let keep = !e.expired(t, now_ms);
            if !keep {
                self.forget(e);
            }
            keep
        });
        let removed = before - shard.len();
        // Give memory back after a mass expiry, but only when the table is
        // mostly empty, so a steady state does not shrink and regrow.
        let (len, cap) = (shard.len(), shard.capacity());
        if cap > 64 && len < cap / 4 {
            shard.shrink_to(len * 2);
        }
        removed
    }
}

impl SessionStore for MemoryStore {
    // The work is synchronous and short; the futures finish on first poll.
    async fn get_touch(&self, key: SessionKey, now_ms: u64) -> Found {
        MemoryStore::get_touch(self, key, now_ms)
    }

    async fn insert(&self, key: SessionKey, record: Record) -> Insert {
        MemoryStore::insert(self, key, record)
    }

    async fn insert_claimed(&self, key: SessionKey, record: Record) -> Insert {
        MemoryStore::insert_claimed(self, key, record)
    }

    async fn repin(&self, key: SessionKey, backend: BackendId, now_ms: u64) -> bool {
        MemoryStore::repin(self, key, backend, now_ms)
    }

    async fn end(&self, key: SessionKey, reason: EndReason, now_ms: u64) -> Insert {
        MemoryStore::end(self, key, reason, now_ms)
    }

    fn sessions_on(&self, backend: BackendId) -> u64 {
        MemoryStore::sessions_on(self, backend)
    }

    fn sessions_among(&self, backends: &BackendSet) -> u64 {
        MemoryStore::sessions_among(self, backends)
    }

    fn live(&self) -> u64 {
        MemoryStore::live(self)
    }

    fn len(&self) -> usize {
        MemoryStore::len(self)
    }

    fn set_timeouts(&self, idle: Duration, absolute: Duration) {
        MemoryStore::set_timeouts(self, idle, absolute)
    }
}

#[cfg(test)]
mod tests;
