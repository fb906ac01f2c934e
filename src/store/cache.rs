//! The Redis store's local view: sessions this instance verified against
//! Redis recently, so a returning cookie is answered without a round trip.
//!
//! It holds what a Redis read or this instance's own write said, and judges
//! timeouts locally from it. It never decides that a session *continues*
//! past what it holds: an entry that looks over is dropped and the caller
//! asks Redis again (another instance may have kept the session alive). It is
//! only trusted while the invalidation channel is connected; the owner clears
//! it on every reconnect.
//!
//! Invalidations race with reads in flight: a read that started before an
//! invalidation must not put its (older) answer back. Each shard has a
//! generation that every invalidation bumps; a fill carries the generation
//! it saw before the read and is refused if it changed.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::memory::KeyHasher;
use super::{BackendId, EndReason, Record, SessionKey, MAX_BACKEND_IDS};

/// Shards; as in the memory store, a power of two picked by the key's high bits.
const SHARDS: usize = 64;

/// One cached session or tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub created_ms: u64,
    /// Last activity this instance knows of (its own requests, or Redis's).
    pub seen_ms: u64,
    /// When this instance last wrote the session's activity to Redis.
    pub synced_ms: u64,
    pub backend: BackendId,
    /// `Some` for a tombstone.
    pub ended: Option<EndReason>,
}

impl Entry {
    /// The first instant at which the entry is over (live) or may be
    /// forgotten (tombstone), and why.
    pub fn deadline(&self, idle_ms: u64, absolute_ms: u64) -> (u64, EndReason) {
        super::deadline(self.created_ms, self.seen_ms, idle_ms, absolute_ms)
    }

    fn record(&self) -> Record {
        Record {
            backend: self.backend,
            created_ms: self.created_ms,
            seen_ms: self.seen_ms,
        }
    }
}

/// What the local view can say about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hit {
    /// Live here; the record shows the previous sighting. `sync` says this
    /// sighting should be written to Redis (once per refresh interval).
    Live { prev: Record, sync: bool },
    /// A tombstone still in force.
    Over(EndReason),
    /// Nothing usable: ask Redis.
    Miss,
}

#[derive(Default)]
struct Shard {
    map: HashMap<u128, Entry, BuildHasherDefault<KeyHasher>>,
    generation: u64,
}

/// The local view. Bounded: when full, new entries are not cached (the
/// session is still served, from Redis); nothing is evicted early.
pub(super) struct Cache {
    shards: Box<[Mutex<Shard>]>,
    len: AtomicUsize,
    max: usize,
}

/// Timeouts and the refresh interval, in ms.
#[derive(Debug, Clone, Copy)]
pub(super) struct Times {
    pub idle_ms: u64,
    pub absolute_ms: u64,
    pub refresh_ms: u64,
}

impl Cache {
    pub fn new(max: usize) -> Cache {
        Cache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            len: AtomicUsize::new(0),
            max,
        }
    }

    fn shard(&self, key: SessionKey) -> MutexGuard<'_, Shard> {
        self.lock((key.0 >> 64) as usize & (SHARDS - 1))
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        // Every update is a plain store of Copy fields: a poisoned shard is
        // still consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries held, tombstones included.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Answers from the local view and, for a live session, restarts its
    /// local idle clock. An entry that is over here is removed and reported
    /// as a miss: only Redis can say whether another instance kept it alive.
    pub fn lookup(&self, key: SessionKey, now_ms: u64, t: Times) -> Hit {
        let mut shard = self.shard(key);
        let Some(e) = shard.map.get_mut(&key.0) else {
            return Hit::Miss;
        };
        let (deadline, _) = e.deadline(t.idle_ms, t.absolute_ms);
        if now_ms < deadline {
            if let Some(reason) = e.ended {
                return Hit::Over(reason);
            }
            let prev = e.record();
            e.seen_ms = e.seen_ms.max(now_ms);
            let sync = now_ms.saturating_sub(e.synced_ms) >= t.refresh_ms;
            if sync {
                e.synced_ms = now_ms;
            }
            return Hit::Live { prev, sync };
        }
        shard.map.remove(&key.0);
        self.len.fetch_sub(1, Ordering::Relaxed);
        Hit::Miss
    }

    /// The generation a later [`Cache::fill`] of `key` must match.
    pub fn generation(&self, key: SessionKey) -> u64 {
        self.shard(key).generation
    }

    /// Caches what a Redis read said, unless an invalidation of the shard
    /// came in since `generation` was taken.
    pub fn fill(&self, key: SessionKey, entry: Entry, generation: u64) {
        let mut shard = self.shard(key);
        if shard.generation == generation {
            self.put_locked(&mut shard, key, entry);
        }
    }

    /// Caches this instance's own write.
    pub fn put(&self, key: SessionKey, entry: Entry) {
        let mut shard = self.shard(key);
        self.put_locked(&mut shard, key, entry);
    }

    fn put_locked(&self, shard: &mut Shard, key: SessionKey, entry: Entry) {
        if let Some(e) = shard.map.get_mut(&key.0) {
            *e = entry;
            return;
        }
        if self.reserve() {
            shard.map.insert(key.0, entry);
        }
    }

    /// Counts one more entry, unless the view is full.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Failover on this instance: moves a cached live session's pin.
    pub fn repin(&self, key: SessionKey, backend: BackendId, now_ms: u64) {
        let mut shard = self.shard(key);
        if let Some(e) = shard.map.get_mut(&key.0) {
            if e.ended.is_none() {
                e.backend = backend;
                e.seen_ms = e.seen_ms.max(now_ms);
                e.synced_ms = now_ms;
            }
        }
    }

    /// `end`/`regenerate` on this instance: the local tombstone, with the
    /// memory store's rules (a live entry's deadline runs on with this call
    /// as its last sighting; an existing tombstone keeps its reason; an
    /// unknown or expired key gets one valid for `idle` from now).
    ///
    /// While Redis is down this tombstone is all that keeps the old id from
    /// coming back, so a full view makes room for it by dropping a live
    /// entry (which costs that session a Redis read, or while Redis is down
    /// a route by its cookie).
    pub fn end(&self, key: SessionKey, reason: EndReason, now_ms: u64, t: Times) {
        let fresh = Entry {
            created_ms: now_ms,
            seen_ms: now_ms,
            synced_ms: now_ms,
            backend: BackendId(0),
            ended: Some(reason),
        };
        // `reserved`: an eviction already counted a slot for this call.
        let mut reserved = false;
        loop {
            let mut shard = self.shard(key);
            if let Some(e) = shard.map.get_mut(&key.0) {
                if now_ms >= e.deadline(t.idle_ms, t.absolute_ms).0 {
                    *e = fresh;
                } else if e.ended.is_none() {
                    e.seen_ms = e.seen_ms.max(now_ms);
                    e.ended = Some(reason);
                }
                if reserved {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
                return;
            }
            if reserved || self.reserve() {
                shard.map.insert(key.0, fresh);
                return;
            }
            drop(shard);
            if !self.evict(now_ms, t) {
                return;
            }
            reserved = true;
        }
    }

    /// Drops one entry that is not a tombstone in force, one shard lock at a
    /// time, keeping its slot counted for the caller; true if there was one.
    fn evict(&self, now_ms: u64, t: Times) -> bool {
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            let victim = shard
                .map
                .iter()
                .find(|(_, e)| {
                    e.ended.is_none() || now_ms >= e.deadline(t.idle_ms, t.absolute_ms).0
                })
                .map(|(k, _)| *k);
            if let Some(k) = victim {
                shard.map.remove(&k);
                return true;
            }
        }
        false
    }

    /// Another instance changed `key`: forget it, and refuse fills that
    /// started before now.
    pub fn invalidate(&self, key: SessionKey) {
        let mut shard = self.shard(key);
        shard.generation += 1;
        if shard.map.remove(&key.0).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets the live sessions pinned to `ids` (backend ids about to be
    /// given to other names), and refuses fills that started before now: a
    /// read in flight may have judged its record by a name that is gone.
    /// Tombstones stay.
    pub fn forget_backends(&self, ids: &[BackendId]) {
        let mut gone = vec![false; MAX_BACKEND_IDS];
        for id in ids {
            if let Some(g) = gone.get_mut(usize::from(id.0)) {
                *g = true;
            }
        }
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            shard.generation += 1;
            let before = shard.map.len();
            shard.map.retain(|_, e| {
                e.ended.is_some() || !gone.get(usize::from(e.backend.0)).copied().unwrap_or(false)
            });
            self.len
                .fetch_sub(before - shard.map.len(), Ordering::Relaxed);
        }
    }

    /// Forgets everything (after missing invalidations: a reconnect).
    pub fn clear(&self) {
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            shard.generation += 1;
            let n = shard.map.len();
            shard.map = HashMap::default();
            self.len.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Removes entries that are over; returns how many.
    pub fn reap(&self, now_ms: u64, t: Times) -> usize {
        let mut removed = 0;
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            let before = shard.map.len();
            shard
                .map
                .retain(|_, e| now_ms < e.deadline(t.idle_ms, t.absolute_ms).0);
            let n = before - shard.map.len();
            self.len.fetch_sub(n, Ordering::Relaxed);
            removed += n;
            let (len, cap) = (shard.map.len(), shard.map.capacity());
            if cap > 64 && len < cap / 4 {
                shard.map.shrink_to(len * 2);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;
    const T: Times = Times {
        idle_ms: 300,
        absolute_ms: 1_000,
        refresh_ms: 30,
    };

    fn live(at: u64) -> Entry {
        Entry {
            created_ms: at,
            seen_ms: at,
            synced_ms: at,
            backend: BackendId(1),
            ended: None,
        }
    }

    #[test]
    fn forgetting_backends_drops_their_sessions_and_stale_fills() {
        let c = Cache::new(10);
        let (a, b, t) = (SessionKey(1), SessionKey(2 << 64), SessionKey(3));
        c.put(a, live(T0));
        c.put(
            b,
            Entry {
                backend: BackendId(2),
                ..live(T0)
            },
        );
        c.end(t, EndReason::Ended, T0, T);
        let before = c.generation(a);
        c.forget_backends(&[BackendId(1)]);
        assert_eq!(c.lookup(a, T0 + 1, T), Hit::Miss);
        assert!(matches!(c.lookup(b, T0 + 1, T), Hit::Live { .. }));
        assert_eq!(c.lookup(t, T0 + 1, T), Hit::Over(EndReason::Ended));
        assert_eq!(c.len(), 2);
        c.fill(a, live(T0), before);
        assert_eq!(
            c.lookup(a, T0 + 1, T),
            Hit::Miss,
            "a fill from before is refused"
        );
    }

    #[test]
    fn live_hits_touch_locally_and_sync_once_per_refresh() {
        let c = Cache::new(10);
        let k = SessionKey(1 << 64 | 5);
        c.put(k, live(T0));
        let Hit::Live { prev, sync } = c.lookup(k, T0 + 10, T) else {
            panic!("live")
        };
        assert_eq!((prev.seen_ms, sync), (T0, false));
        assert!(matches!(
            c.lookup(k, T0 + 30, T),
            Hit::Live { sync: true, .. }
        ));
        assert!(matches!(
            c.lookup(k, T0 + 59, T),
            Hit::Live { sync: false, .. }
        ));
        // Touched at +59: live until +359, then a miss (ask Redis), removed.
        assert!(matches!(c.lookup(k, T0 + 358, T), Hit::Live { .. }));
        assert_eq!(c.lookup(k, T0 + 658, T), Hit::Miss);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn tombstones_answer_until_their_deadline() {
        let c = Cache::new(10);
        let k = SessionKey(7);
        c.put(k, live(T0));
        c.end(k, EndReason::Ended, T0 + 100, T);
        assert_eq!(c.lookup(k, T0 + 399, T), Hit::Over(EndReason::Ended));
        // A second end keeps the first reason.
        c.end(k, EndReason::Regenerated, T0 + 200, T);
        assert_eq!(c.lookup(k, T0 + 250, T), Hit::Over(EndReason::Ended));
        assert_eq!(c.lookup(k, T0 + 400, T), Hit::Miss);
        // Unknown key: a tombstone for idle from now.
        c.end(SessionKey(8), EndReason::Regenerated, T0, T);
        assert_eq!(
            c.lookup(SessionKey(8), T0 + 299, T),
            Hit::Over(EndReason::Regenerated)
        );
        assert_eq!(c.lookup(SessionKey(8), T0 + 300, T), Hit::Miss);
    }

    #[test]
    fn an_invalidation_refuses_a_fill_that_started_before_it() {
        let c = Cache::new(10);
        let k = SessionKey(3);
        let g = c.generation(k);
        c.invalidate(k);
        c.fill(k, live(T0), g);
        assert_eq!(c.lookup(k, T0, T), Hit::Miss);
        let g = c.generation(k);
        c.fill(k, live(T0), g);
        assert!(matches!(c.lookup(k, T0, T), Hit::Live { .. }));
        let g = c.generation(k);
        c.clear();
        c.fill(SessionKey(3), live(T0), g);
        assert_eq!((c.lookup(k, T0, T), c.len()), (Hit::Miss, 0));
    }

    #[test]
    fn a_tombstone_makes_room_in_a_full_view() {
        let c = Cache::new(3);
        for n in 0..3u128 {
            c.put(SessionKey(n << 64 | n), live(T0));
        }
        c.end(SessionKey(9), EndReason::Ended, T0 + 10, T);
        assert_eq!(c.len(), 3, "still bounded");
        assert_eq!(
            c.lookup(SessionKey(9), T0 + 20, T),
            Hit::Over(EndReason::Ended)
        );
        let live_left = (0..3u128)
            .filter(|n| {
                matches!(
                    c.lookup(SessionKey(n << 64 | n), T0 + 20, T),
                    Hit::Live { .. }
                )
            })
            .count();
        assert_eq!(live_left, 2, "one live entry made room");
        // A view of nothing but tombstones in force refuses a new one.
        c.end(SessionKey(10), EndReason::Ended, T0 + 20, T);
        c.end(SessionKey(11), EndReason::Ended, T0 + 20, T);
        c.end(SessionKey(12), EndReason::Ended, T0 + 20, T);
        assert_eq!(c.len(), 3);
        assert_eq!(c.lookup(SessionKey(12), T0 + 30, T), Hit::Miss);
        // Ending a key already held needs no room.
        c.end(SessionKey(9), EndReason::Regenerated, T0 + 30, T);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn bounded_and_reaped() {
        let c = Cache::new(2);
        for n in 0..3u128 {
            c.put(SessionKey(n), live(T0 + n as u64 * 100));
        }
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.lookup(SessionKey(2), T0, T),
            Hit::Miss,
            "not cached: full"
        );
        c.repin(SessionKey(1), BackendId(9), T0 + 150);
        let Hit::Live { prev, .. } = c.lookup(SessionKey(1), T0 + 160, T) else {
            panic!("live")
        };
        assert_eq!(prev.backend, BackendId(9));
        assert_eq!(c.reap(T0 + 300, T), 1);
        assert_eq!(c.reap(T0 + 10_000, T), 1);
        assert_eq!(c.len(), 0);
    }
}
