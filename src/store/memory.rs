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

use super::{
    BackendId, EndReason, Found, Insert, Record, SessionKey, SessionStore, MAX_BACKEND_IDS,
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
    /// Live sessions (entries minus tombstones).
    live: AtomicU64,
    /// Live sessions per backend, indexed by `BackendId`.
    per_backend: Box<[AtomicU64]>,
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
        let per_backend = (0..MAX_BACKEND_IDS).map(|_| AtomicU64::new(0)).collect();
        MemoryStore {
            inner: Arc::new(Inner {
                shards,
                len: AtomicUsize::new(0),
                live: AtomicU64::new(0),
                per_backend,
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
            inner
                .backend_count(entry.backend)
                .fetch_sub(1, Ordering::Relaxed);
            inner.backend_count(backend).fetch_add(1, Ordering::Relaxed);
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
        self.inner
            .per_backend
            .get(usize::from(backend.0))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Live sessions in all.
    pub fn live(&self) -> u64 {
        self.inner.live.load(Ordering::Relaxed)
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

    fn backend_count(&self, backend: BackendId) -> &AtomicU64 {
        self.per_backend
            .get(usize::from(backend.0))
            .unwrap_or_else(|| {
                panic!(
                    "BackendId({}) is beyond MAX_BACKEND_IDS ({MAX_BACKEND_IDS}): the backend name interner must refuse it",
                    backend.0
                )
            })
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
            self.live.fetch_add(1, Ordering::Relaxed);
            self.backend_count(e.backend)
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Uncounts an entry that stops being live but keeps its slot.
    fn forget_live(&self, e: &Entry) {
        if e.ended.is_none() {
            if e.claimed {
                self.claimed.fetch_sub(1, Ordering::Relaxed);
            }
            self.live.fetch_sub(1, Ordering::Relaxed);
            self.backend_count(e.backend)
                .fetch_sub(1, Ordering::Relaxed);
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
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    const T0: u64 = 1_700_000_000_000;
    const A: BackendId = BackendId(1);
    const B: BackendId = BackendId(2);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A store with idle 300 ms and absolute 1000 ms.
    fn store(max: usize) -> MemoryStore {
        MemoryStore::new(max, ms(300), ms(1_000))
    }

    fn key(n: u64) -> SessionKey {
        // Spread over shards the way random ids do.
        SessionKey((u128::from(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) << 64) | u128::from(n))
    }

    fn rec(backend: BackendId, at: u64) -> Record {
        Record {
            backend,
            created_ms: at,
            seen_ms: at,
        }
    }

    /// Recounts by scanning every shard and checks the atomics agree.
    fn assert_counts_exact(s: &MemoryStore) {
        let mut len = 0usize;
        let mut live = 0u64;
        let mut claimed = 0usize;
        let mut per = vec![0u64; MAX_BACKEND_IDS];
        for shard in s.inner.shards.iter() {
            let shard = shard.lock().unwrap();
            len += shard.len();
            for e in shard.values().filter(|e| e.ended.is_none()) {
                claimed += usize::from(e.claimed);
                live += 1;
                per[usize::from(e.backend.0)] += 1;
            }
        }
        assert_eq!(s.len(), len, "len");
        assert_eq!(s.live(), live, "live");
        assert_eq!(s.inner.claimed.load(Ordering::Relaxed), claimed, "claimed");
        for (i, n) in per.iter().enumerate() {
            assert_eq!(s.sessions_on(BackendId(i as u16)), *n, "backend {i}");
        }
    }

    #[test]
    fn entry_stays_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert!(std::mem::size_of::<(u128, Entry)>() <= 48);
    }

    #[test]
    fn live_session_is_found_and_touched() {
        let s = store(10);
        assert_eq!(s.insert(key(1), rec(A, T0)), Insert::Done);
        // The record shows the previous sighting...
        assert_eq!(s.get_touch(key(1), T0 + 100), Found::Live(rec(A, T0)));
        // ...and the call moved it to now.
        let Found::Live(r) = s.get_touch(key(1), T0 + 200) else {
            panic!("still live")
        };
        assert_eq!((r.created_ms, r.seen_ms), (T0, T0 + 100));
        assert_eq!(s.get_touch(key(2), T0), Found::Missing);
    }

    /// The idle boundary is exclusive: live while `now < seen + idle`, so at
    /// exactly `seen + idle` the session is over.
    #[test]
    fn idle_expiry_is_exact_to_the_millisecond() {
        let s = store(10);
        assert_eq!(s.insert(key(1), rec(A, T0)), Insert::Done);
        assert!(matches!(s.get_touch(key(1), T0 + 299), Found::Live(_)));
        // Touched at +299, so over at +599, not before.
        assert!(matches!(s.get_touch(key(1), T0 + 598), Found::Live(_)));
        assert_eq!(s.get_touch(key(1), T0 + 898), Found::Over(EndReason::Idle));
        // Removed: the next ask knows nothing.
        assert_eq!(s.get_touch(key(1), T0 + 899), Found::Missing);
        assert_counts_exact(&s);

        assert_eq!(s.insert(key(2), rec(B, T0)), Insert::Done);
        assert_eq!(s.get_touch(key(2), T0 + 300), Found::Over(EndReason::Idle));
        assert_eq!((s.live(), s.sessions_on(B), s.len()), (0, 0, 0));
    }

    #[test]
    fn absolute_expiry_ends_even_an_active_session() {
        let s = store(10);
        assert_eq!(s.insert(key(1), rec(A, T0)), Insert::Done);
        for t in (T0 + 100..T0 + 1_000).step_by(100) {
            assert!(matches!(s.get_touch(key(1), t), Found::Live(_)), "at {t}");
        }
        assert!(matches!(s.get_touch(key(1), T0 + 999), Found::Live(_)));
        assert_eq!(
            s.get_touch(key(1), T0 + 1_000),
            Found::Over(EndReason::Absolute)
        );
        assert_counts_exact(&s);
    }

    #[test]
    fn end_leaves_a_tombstone_until_the_session_would_have_expired() {
        let s = store(10);
        assert_eq!(s.insert(key(1), rec(A, T0)), Insert::Done);
        assert_eq!(s.end(key(1), EndReason::Ended, T0 + 100), Insert::Done);
        assert_eq!((s.live(), s.sessions_on(A), s.len()), (0, 0, 1));
        // Ended at +100 counts as seen: the tombstone holds until +400.
        assert_eq!(s.get_touch(key(1), T0 + 399), Found::Over(EndReason::Ended));
        assert!(
            !s.repin(key(1), B, T0 + 399),
            "a tombstone cannot be repinned"
        );
        assert_eq!(s.get_touch(key(1), T0 + 400), Found::Missing);
        assert_eq!(s.len(), 0);
        assert_counts_exact(&s);
    }

    #[test]
    fn tombstone_also_ends_at_the_absolute_deadline() {
        let s = store(10);
        assert_eq!(s.insert(key(1), rec(A, T0)), Insert::Done);
        for t in [250, 500, 750] {
            assert!(matches!(s.get_touch(key(1), T0 + t), Found::Live(_)));
        }
        assert_eq!(s.end(key(1), EndReason::Ended, T0 + 900), Insert::Done);
        // min(900 + 300, 0 + 1000) = 1000.
        assert_eq!(s.get_touch(key(1), T0 + 999), Found::Over(EndReason::Ended));
        assert_eq!(s.get_touch(key(1), T0 + 1_000), Found::Missing);
    }

    #[test]
    fn regenerate_leaves_a_regenerated_tombstone() {
        let s = store(10);
        assert_eq!(s.insert(key(1), rec(A, T0)), Insert::Done);
        assert_eq!(s.end(key(1), EndReason::Regenerated, T0 + 10), Insert::Done);
        // The new id is pinned to the same backend.
        assert_eq!(s.insert(key(2), rec(A, T0 + 10)), Insert::Done);
        assert_eq!(
            s.get_touch(key(1), T0 + 20),
            Found::Over(EndReason::Regenerated)
        );
        assert!(matches!(s.get_touch(key(2), T0 + 20), Found::Live(_)));
        assert_eq!((s.live(), s.sessions_on(A), s.len()), (1, 1, 2));
        // A second end keeps the first reason.
        assert_eq!(s.end(key(1), EndReason::Ended, T0 + 30), Insert::Done);
        assert_eq!(
            s.get_touch(key(1), T0 + 40),
            Found::Over(EndReason::Regenerated)
        );
    }

    #[test]
    fn end_of_an_unknown_key_tombstones_it_for_idle_from_now() {
        let s = store(10);
        assert_eq!(s.end(key(9), EndReason::Ended, T0), Insert::Done);
        assert_eq!((s.live(), s.len()), (0, 1));
        assert_eq!(s.get_touch(key(9), T0 + 299), Found::Over(EndReason::Ended));
        assert_eq!(s.get_touch(key(9), T0 + 300), Found::Missing);
        assert_counts_exact(&s);
    }

    #[test]
    fn insert_replaces_a_tombstone_and_an_old_record() {
        let s = store(10);
        assert_eq!(s.insert(key(1), rec(A, T0)), Insert::Done);
        assert_eq!(s.insert(key(1), rec(B, T0 + 5)), Insert::Done);
        assert_eq!((s.sessions_on(A), s.sessions_on(B), s.len()), (0, 1, 1));
        assert_eq!(s.end(key(1), EndReason::Ended, T0 + 10), Insert::Done);
        assert_eq!(s.insert(key(1), rec(A, T0 + 20)), Insert::Done);
        assert_eq!(s.get_touch(key(1), T0 + 30), Found::Live(rec(A, T0 + 20)));
        assert_counts_exact(&s);
    }

    #[test]
    fn repin_moves_the_pin_and_its_count_and_keeps_created() {
        let s = store(10);
        assert_eq!(s.insert(key(1), rec(A, T0)), Insert::Done);
        assert_eq!(s.insert(key(2), rec(A, T0)), Insert::Done);
        assert!(s.repin(key(1), B, T0 + 50));
        assert_eq!((s.sessions_on(A), s.sessions_on(B), s.live()), (1, 1, 2));
        let Found::Live(r) = s.get_touch(key(1), T0 + 60) else {
            panic!("live")
        };
        assert_eq!((r.backend, r.created_ms, r.seen_ms), (B, T0, T0 + 50));
        assert!(s.repin(key(1), B, T0 + 70), "same backend is a no-op move");
        assert!(!s.repin(key(3), B, T0), "unknown key");
        // An expired session is not revived by a repin, and is uncounted.
        assert!(!s.repin(key(2), B, T0 + 300));
        assert_eq!((s.sessions_on(A), s.sessions_on(B), s.live()), (0, 1, 1));
        assert_counts_exact(&s);
    }

    #[test]
    fn forgetting_backends_removes_their_sessions_and_counts_only() {
        let s = MemoryStore::new(100, Duration::from_secs(60), Duration::from_secs(3600));
        for n in 0..9u64 {
            let b = BackendId((n % 3) as u16);
            assert_eq!(s.insert(key(n), rec(b, T0)), Insert::Done);
        }
        // A tombstone that once was a session of backend 1 stays: logout holds.
        assert_eq!(s.end(key(1), EndReason::Ended, T0 + 1), Insert::Done);
        assert_eq!(s.forget_backends(&[BackendId(1), BackendId(2)]), 5);
        assert_eq!(
            [0, 1, 2].map(|b| s.sessions_on(BackendId(b))),
            [3, 0, 0],
            "the forgotten ids count nothing"
        );
        assert_eq!((s.live(), s.len()), (3, 4));
        assert_eq!(s.get_touch(key(2), T0 + 2), Found::Missing);
        assert_eq!(s.get_touch(key(1), T0 + 2), Found::Over(EndReason::Ended));
        assert!(matches!(s.get_touch(key(3), T0 + 2), Found::Live(_)));
        assert_eq!(s.forget_backends(&[]), 0);
        assert_counts_exact(&s);
    }

    #[test]
    fn counts_stay_exact_through_every_path() {
        let s = store(100);
        for n in 0..30 {
            let b = BackendId((n % 3) as u16);
            assert_eq!(s.insert(key(n), rec(b, T0 + n)), Insert::Done);
        }
        assert_eq!([0, 1, 2].map(|b| s.sessions_on(BackendId(b))), [10, 10, 10]);
        for n in 0..5 {
            s.repin(key(n), BackendId(7), T0 + 100);
        }
        for n in 5..10 {
            assert_eq!(s.end(key(n), EndReason::Ended, T0 + 100), Insert::Done);
        }
        assert_counts_exact(&s);
        assert_eq!(
            (s.live(), s.len(), s.sessions_on(BackendId(7))),
            (25, 30, 5)
        );
        // Keep 10..15 alive past the idle deadline of the others.
        for n in 10..15 {
            s.get_touch(key(n), T0 + 250);
        }
        assert_eq!(
            s.reap(T0 + 330),
            15,
            "15..30 went idle; tombstones hold to +400"
        );
        assert_counts_exact(&s);
        // The repinned ones were touched at +100, so they go at +400.
        assert_eq!(s.get_touch(key(0), T0 + 400), Found::Over(EndReason::Idle));
        assert_eq!(s.reap(T0 + 10_000), 14);
        assert_eq!((s.live(), s.len()), (0, 0));
        assert_counts_exact(&s);
    }

    #[test]
    fn full_at_the_bound_and_no_session_is_evicted_for_another() {
        let s = store(3);
        for n in 0..3 {
            assert_eq!(s.insert(key(n), rec(A, T0)), Insert::Done);
        }
        assert_eq!(s.insert(key(3), rec(A, T0)), Insert::Full);
        // Replacing an existing key needs no room.
        assert_eq!(s.insert(key(0), rec(B, T0 + 1)), Insert::Done);
        assert_eq!(s.end(key(1), EndReason::Ended, T0 + 1), Insert::Done);
        for n in 0..3 {
            assert_ne!(s.get_touch(key(n), T0 + 2), Found::Missing, "key {n} kept");
        }
        assert_eq!(s.get_touch(key(3), T0 + 2), Found::Missing);
        assert_eq!(s.insert(key(3), rec(A, T0 + 2)), Insert::Full);
        assert_counts_exact(&s);
        // Room comes back as entries expire.
        s.reap(T0 + 10_000);
        assert_eq!(s.insert(key(3), rec(A, T0 + 10_000)), Insert::Done);
        assert_counts_exact(&s);
    }

    #[test]
    fn a_tombstone_makes_room_in_a_full_store() {
        let s = store(3);
        for n in 0..3 {
            assert_eq!(s.insert(key(n), rec(A, T0)), Insert::Done);
        }
        assert_eq!(s.end(key(0), EndReason::Ended, T0 + 1), Insert::Done);
        // An absent key's tombstone takes a live session's slot (its cookie
        // still routes that one), never another tombstone's.
        assert_eq!(s.end(key(4), EndReason::Ended, T0 + 2), Insert::Done);
        assert_eq!(s.len(), 3);
        assert_eq!(s.get_touch(key(4), T0 + 3), Found::Over(EndReason::Ended));
        assert_eq!(s.get_touch(key(0), T0 + 3), Found::Over(EndReason::Ended));
        let live = [1, 2]
            .iter()
            .filter(|n| matches!(s.get_touch(key(**n), T0 + 3), Found::Live(_)))
            .count();
        assert_eq!((live, s.live(), s.sessions_on(A)), (1, 1, 1));
        assert_counts_exact(&s);
        assert_eq!(s.end(key(5), EndReason::Regenerated, T0 + 4), Insert::Done);
        // Nothing but tombstones in force: the bound holds.
        assert_eq!(s.end(key(6), EndReason::Ended, T0 + 5), Insert::Full);
        assert_eq!((s.len(), s.live()), (3, 0));
        assert_counts_exact(&s);
    }

    #[test]
    fn claimed_sessions_give_way_to_learned_pins_only() {
        let s = store(3);
        assert_eq!(s.insert_claimed(key(0), rec(A, T0)), Insert::Done);
        assert_eq!(s.insert_claimed(key(1), rec(B, T0)), Insert::Done);
        assert_eq!(s.insert(key(2), rec(A, T0)), Insert::Done);
        // A claim never makes room, not even from another claim.
        assert_eq!(s.insert_claimed(key(3), rec(A, T0)), Insert::Full);
        // A claim on a learned key does not weaken it.
        assert_eq!(s.insert_claimed(key(2), rec(A, T0)), Insert::Done);
        // Learned pins take the claims' room, one each.
        assert_eq!(s.insert(key(4), rec(A, T0 + 1)), Insert::Done);
        assert_counts_exact(&s);
        assert_eq!(s.insert(key(5), rec(B, T0 + 1)), Insert::Done);
        assert_eq!(s.insert(key(6), rec(B, T0 + 1)), Insert::Full);
        for n in [2, 4, 5] {
            assert!(matches!(s.get_touch(key(n), T0 + 2), Found::Live(_)), "{n}");
        }
        assert_eq!((s.len(), s.live()), (3, 3));
        assert_eq!(s.inner.claimed.load(Ordering::Relaxed), 0);
        assert_counts_exact(&s);
        // A learned insert of a claimed key makes it learned.
        let s = store(2);
        assert_eq!(s.insert_claimed(key(0), rec(A, T0)), Insert::Done);
        assert_eq!(s.insert(key(0), rec(A, T0)), Insert::Done);
        assert_eq!(s.insert(key(1), rec(A, T0)), Insert::Done);
        assert_eq!(s.insert(key(2), rec(A, T0)), Insert::Full);
        assert_eq!(s.inner.claimed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn set_timeouts_applies_to_existing_sessions() {
        let s = store(10);
        assert_eq!(s.insert(key(1), rec(A, T0)), Insert::Done);
        s.set_timeouts(ms(5_000), ms(60_000));
        assert!(matches!(s.get_touch(key(1), T0 + 4_000), Found::Live(_)));
        s.set_timeouts(ms(100), ms(60_000));
        assert_eq!(
            s.get_touch(key(1), T0 + 4_100),
            Found::Over(EndReason::Idle)
        );
    }

    #[test]
    fn reap_removes_expired_entries_and_keeps_live_ones() {
        let s = store(1_000);
        for n in 0..500 {
            assert_eq!(s.insert(key(n), rec(A, T0)), Insert::Done);
        }
        for n in 0..100 {
            s.get_touch(key(n), T0 + 200);
        }
        assert_eq!(s.reap(T0 + 299), 0);
        assert_eq!(s.reap(T0 + 300), 400);
        assert_eq!((s.live(), s.sessions_on(A)), (100, 100));
        assert_counts_exact(&s);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reaper_task_sweeps_and_stops_when_the_store_drops() {
        let s = store(100);
        for n in 0..50 {
            assert_eq!(s.insert(key(n), rec(A, T0)), Insert::Done);
        }
        let clock = Arc::new(AtomicU64::new(T0));
        let c = Arc::clone(&clock);
        let reaper = s.spawn_reaper(ms(1), move || c.load(Ordering::Relaxed));

        // Nothing has expired at T0: the reaper must leave everything.
        tokio::task::yield_now().await;
        assert_eq!(s.len(), 50);

        clock.store(T0 + 300, Ordering::Relaxed);
        // Wait for the event; the timeout only guards against a hang.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !s.is_empty() {
                tokio::time::sleep(ms(1)).await;
            }
        })
        .await
        .expect("the reaper swept the expired sessions");
        assert_eq!((s.live(), s.sessions_on(A)), (0, 0));

        let weak = Arc::downgrade(&s.inner);
        drop(s);
        assert!(
            weak.upgrade().is_none(),
            "the reaper keeps no strong handle"
        );
        tokio::time::timeout(Duration::from_secs(10), reaper)
            .await
            .expect("the reaper stopped after the store dropped")
            .expect("the reaper did not panic");
    }

    #[test]
    fn eight_threads_keep_counts_exact() {
        let s = store(100_000);
        let per_thread = 2_000u64;
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let s = s.clone();
                scope.spawn(move || {
                    let base = t * per_thread;
                    for n in base..base + per_thread {
                        let b = BackendId((n % 5) as u16);
                        assert_eq!(s.insert(key(n), rec(b, T0)), Insert::Done);
                        // Everyone also hammers a shared hot set.
                        s.get_touch(key(n % 64), T0 + 10);
                        match n % 4 {
                            0 => {
                                assert_eq!(s.end(key(n), EndReason::Ended, T0 + 20), Insert::Done);
                            }
                            1 => {
                                s.repin(key(n), BackendId(9), T0 + 20);
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        let total = 8 * per_thread;
        assert_eq!(s.len() as u64, total);
        assert_eq!(s.live(), total - total / 4);
        assert_eq!(s.sessions_on(BackendId(9)), total / 4);
        assert_counts_exact(&s);
        s.reap(T0 + 100_000);
        assert_eq!((s.len(), s.live()), (0, 0));
        assert_counts_exact(&s);
    }

    #[test]
    fn identity_hash_uses_the_low_bits_and_shard_the_high_bits() {
        use std::hash::BuildHasher;
        let k: u128 = (0xabcd << 64) | 0x1234;
        let h = BuildHasherDefault::<KeyHasher>::default().hash_one(k);
        assert_eq!(h, 0x1234);
        assert_eq!((k >> 64) as usize & (SHARDS - 1), 0xabcd & (SHARDS - 1));
    }
}
