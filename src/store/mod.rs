//! The session store: which backend a session is pinned to, and whether its
//! affinity is still live. Judges timeouts from the `now_ms` it is handed and
//! never reads a clock; what a missing or unavailable answer means for routing
//! is `session/`'s decision, not the store's.
//!
//! [`SessionStore`] is the contract; [`Store`] is the closed set of
//! implementations the request path calls. It dispatches by `match`, so no
//! future is boxed per request (contrast `async_trait`).

use std::fmt;
use std::future::Future;
use std::time::Duration;

mod cache;
pub mod memory;
pub mod redis;
pub mod seen;
mod tally;

pub use memory::MemoryStore;
pub use redis::{RedisSettings, RedisStore};
pub use seen::Sightings;

/// 128 bits that name a session in the store: a tether session id, or a keyed
/// digest of an app's key.
///
/// Both are uniformly random to anyone who does not hold the secret, which is
/// what lets the memory store hash them by identity. `Debug` hides the value:
/// a session id is a bearer credential and must not reach a log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey(pub u128);

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// Stable small id of a backend *name*. The caller interns names and reuses
/// an id only after [`Store::forget_backends`] scrubbed it, so a count indexed
/// by it always belongs to one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendId(pub u16);

/// How many distinct backend names the stores can count (ids `0..MAX_BACKEND_IDS`).
/// A larger id is a broken invariant of the caller's interner and panics.
pub const MAX_BACKEND_IDS: usize = 4096;

/// A set of backend ids, one bit each, as [`SessionStore::sessions_among`]
/// takes it: 512 bytes, so the balancer can keep one per backend table and
/// a store can compare it with its own a word at a time.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendSet([u64; MAX_BACKEND_IDS / 64]);

impl BackendSet {
    /// The empty set.
    pub fn new() -> BackendSet {
        BackendSet([0; MAX_BACKEND_IDS / 64])
    }

    /// Adds `id`.
    ///
    /// # Panics
    /// `id` is beyond [`MAX_BACKEND_IDS`] (a broken invariant of the
    /// caller's interner).
    pub fn insert(&mut self, id: BackendId) {
        let i = usize::from(id.0);
        assert!(
            i < MAX_BACKEND_IDS,
            "BackendId({i}) is beyond MAX_BACKEND_IDS ({MAX_BACKEND_IDS})"
        );
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: BackendId) -> bool {
        let i = usize::from(id.0);
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// The bits, 64 ids a word, id 0 in bit 0 of the first.
    pub fn words(&self) -> &[u64] {
        &self.0
    }
}

impl Default for BackendSet {
    fn default() -> BackendSet {
        BackendSet::new()
    }
}

impl fmt::Debug for BackendSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = (0..MAX_BACKEND_IDS).filter(|&i| self.0[i / 64] & (1 << (i % 64)) != 0);
        f.debug_set().entries(ids).finish()
    }
}

/// A live session as the store knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The backend the session is pinned to.
    pub backend: BackendId,
    /// When the session began (unix ms); the absolute timeout runs from here.
    pub created_ms: u64,
    /// When the session was last seen (unix ms); the idle timeout runs from here.
    pub seen_ms: u64,
}

/// The one liveness rule, for every place that judges a session (the
/// memory store, the Redis store and its local view, a cookie judged by its
/// own timestamps; `redis/script.lua` states it again in Lua): a session
/// begun at `created_ms` and last seen at `seen_ms` is live while
/// `now < deadline`, where the deadline is the earlier of its idle and
/// absolute ends. On a tie the reason is `Absolute`, the hard limit. A
/// tombstone is kept until the same deadline.
#[inline]
pub fn deadline(created_ms: u64, seen_ms: u64, idle_ms: u64, absolute_ms: u64) -> (u64, EndReason) {
    let idle_end = seen_ms.saturating_add(idle_ms);
    let abs_end = created_ms.saturating_add(absolute_ms);
    if abs_end <= idle_end {
        (abs_end, EndReason::Absolute)
    } else {
        (idle_end, EndReason::Idle)
    }
}

/// Why a session's affinity ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// No request for `idle_timeout`.
    Idle,
    /// `absolute_timeout` since the session began.
    Absolute,
    /// Logout: the backend answered `Tether-Session-Control: end`.
    Ended,
    /// Replaced by a new id: the backend answered `Tether-Session-Control: regenerate`.
    Regenerated,
}

impl EndReason {
    /// A short lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Idle => "idle",
            EndReason::Absolute => "absolute",
            EndReason::Ended => "ended",
            EndReason::Regenerated => "regenerated",
        }
    }
}

/// What the store knows about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Within both timeouts. The store has refreshed `seen_ms` to now; the
    /// record returned shows the *previous* `seen_ms`.
    Live(Record),
    /// Known but over: a timeout passed (the entry is removed, so asking again
    /// gives `Missing`), or a tombstone left by `end` (kept until the session
    /// would have expired anyway, so an old cookie cannot come back).
    Over(EndReason),
    /// Never seen here, or forgotten after it expired. The caller may adopt
    /// the key on the strength of its MAC'd cookie.
    Missing,
    /// The store cannot answer (Redis down or slow, or a record this instance
    /// cannot read). The memory store never says this.
    Unavailable,
    /// The store cannot answer, but this instance's local view last knew the
    /// session live as this record (its idle clock restarted locally). Only
    /// as fresh as the last invalidation this instance received: the best
    /// guess while Redis is down, never an answer while it is up.
    Stale(Record),
}

/// The outcome of a write that may add an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "Full means the session was not stored; route by the cookie alone and count it"]
pub enum Insert {
    /// Stored.
    Done,
    /// The store is at `max_sessions` and evicts nothing to make room. The
    /// caller routes by the cookie alone and says so in metrics.
    Full,
}

/// The contract every session store keeps.
///
/// The request-path operations return futures, so a networked store can
/// implement them; the memory store's futures finish on first poll. Counts and
/// timeouts are synchronous: the balancer reads counts inside a pure decision,
/// so a networked store must serve them from state it keeps locally.
///
/// Timeouts: a session is live while `now < seen + idle` and
/// `now < created + absolute`. At exactly `seen + idle` it is over (the
/// boundary belongs to the expired side), and likewise for absolute.
pub trait SessionStore {
    /// Looks a key up and, if the session is live, restarts its idle clock.
    fn get_touch(&self, key: SessionKey, now_ms: u64) -> impl Future<Output = Found> + Send;

    /// Stores a new live session, replacing any tombstone or old record for
    /// the same key.
    ///
    /// # Errors
    /// Returns [`Insert::Full`] when the key is new and the store holds
    /// `max_sessions` entries (tombstones included), none of them expired or
    /// claimed (see [`SessionStore::insert_claimed`]): only those are
    /// evicted to make room.
    fn insert(&self, key: SessionKey, record: Record) -> impl Future<Output = Insert> + Send;

    /// Stores a session that only a client vouches for (an app key it
    /// presented again, never learned from a backend). It takes a free slot
    /// but never makes room; when the store is full, [`SessionStore::insert`]
    /// and [`SessionStore::end`] may evict it to make theirs. A later
    /// `insert` of the same key makes it an ordinary entry.
    ///
    /// # Errors
    /// Returns [`Insert::Full`] as `insert` does.
    fn insert_claimed(
        &self,
        key: SessionKey,
        record: Record,
    ) -> impl Future<Output = Insert> + Send;

    /// Failover: pins a live session to `backend`, keeping `created_ms`, and
    /// moves its count. Returns `false` (and changes nothing) when the key is
    /// not a live session.
    fn repin(
        &self,
        key: SessionKey,
        backend: BackendId,
        now_ms: u64,
    ) -> impl Future<Output = bool> + Send;

    /// Ends a session (`end`, `regenerate`): leaves a tombstone that answers
    /// `Over(reason)` until `min(last seen + idle, created + absolute)`, where
    /// this call counts as a sighting. An absent key gets a tombstone valid
    /// for `idle` from now. Tombstones do not count as live.
    ///
    /// A tombstone is what keeps a logged-out id from coming back, so when
    /// the store is full it makes room: an expired or claimed entry goes
    /// first, else a live session (whose cookie still routes it).
    ///
    /// # Errors
    /// Returns [`Insert::Full`] only when the key was absent and every entry
    /// is a tombstone still in force.
    fn end(
        &self,
        key: SessionKey,
        reason: EndReason,
        now_ms: u64,
    ) -> impl Future<Output = Insert> + Send;

    /// Live sessions pinned to `backend`.
    fn sessions_on(&self, backend: BackendId) -> u64;

    /// Live sessions pinned to any backend in `backends`. Costs a look at
    /// each backend *outside* the set that holds sessions (normally none:
    /// the set is the backends taking new sessions), not one per backend in
    /// it, so bounded load can take a mean over a thousand backends per new
    /// session.
    fn sessions_among(&self, backends: &BackendSet) -> u64;

    /// Live sessions in all.
    fn live(&self) -> u64;

    /// Entries held, tombstones included (what `max_sessions` bounds).
    fn len(&self) -> usize;

    /// Whether the store holds no entry at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies new timeouts (config reload). Existing sessions are judged by
    /// the new values from the next call on.
    fn set_timeouts(&self, idle: Duration, absolute: Duration);
}

/// The store the request path holds: one of the known implementations.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    /// The embedded default.
    Memory(MemoryStore),
    /// Shared by many instances through one Redis.
    Redis(RedisStore),
}

impl Store {
    /// The config's name for this store.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    /// Tells the store each backend id's name (the Redis store stores names,
    /// which mean the same on every instance; the memory store needs none).
    pub fn name_backends<'a>(&self, names: impl IntoIterator<Item = (BackendId, &'a str)>) {
        match self {
            Store::Memory(_) => {}
            Store::Redis(r) => r.name_backends(names),
        }
    }
}

impl Store {
    /// Forgets what the store keeps under backend ids whose names are gone
    /// (sessions pinned to them, their counts), so the ids can be given to
    /// other names: a record left under a reused id would send an old name's
    /// session to the new name's backend.
    pub fn forget_backends(&self, ids: &[BackendId]) {
        match self {
            Store::Memory(m) => {
                m.forget_backends(ids);
            }
            Store::Redis(r) => r.forget_backends(ids),
        }
    }
}

// A Redis operation's future is several hundred bytes, and every request's
// future would carry that room inline even on the memory store, to be
// copied with it. Boxed, it costs the Redis path one allocation per
// operation, next to a network round trip.
impl SessionStore for Store {
    async fn get_touch(&self, key: SessionKey, now_ms: u64) -> Found {
        match self {
            Store::Memory(m) => m.get_touch(key, now_ms),
            Store::Redis(r) => Box::pin(r.get_touch(key, now_ms)).await,
        }
    }

    async fn insert(&self, key: SessionKey, record: Record) -> Insert {
        match self {
            Store::Memory(m) => m.insert(key, record),
            Store::Redis(r) => Box::pin(r.insert(key, record)).await,
        }
    }

    async fn insert_claimed(&self, key: SessionKey, record: Record) -> Insert {
        match self {
            Store::Memory(m) => m.insert_claimed(key, record),
            Store::Redis(r) => Box::pin(r.insert(key, record)).await,
        }
    }

    async fn repin(&self, key: SessionKey, backend: BackendId, now_ms: u64) -> bool {
        match self {
            Store::Memory(m) => m.repin(key, backend, now_ms),
            Store::Redis(r) => Box::pin(r.repin(key, backend, now_ms)).await,
        }
    }

    async fn end(&self, key: SessionKey, reason: EndReason, now_ms: u64) -> Insert {
        match self {
            Store::Memory(m) => m.end(key, reason, now_ms),
            Store::Redis(r) => Box::pin(r.end(key, reason, now_ms)).await,
        }
    }

    fn sessions_on(&self, backend: BackendId) -> u64 {
        match self {
            Store::Memory(m) => m.sessions_on(backend),
            Store::Redis(r) => r.sessions_on(backend),
        }
    }

    fn sessions_among(&self, backends: &BackendSet) -> u64 {
        match self {
            Store::Memory(m) => m.sessions_among(backends),
            Store::Redis(r) => r.sessions_among(backends),
        }
    }

    fn live(&self) -> u64 {
        match self {
            Store::Memory(m) => m.live(),
            Store::Redis(r) => r.live(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Store::Memory(m) => m.len(),
            Store::Redis(r) => r.len(),
        }
    }

    fn set_timeouts(&self, idle: Duration, absolute: Duration) {
        match self {
            Store::Memory(m) => m.set_timeouts(idle, absolute),
            Store::Redis(r) => r.set_timeouts(idle, absolute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn session_key_debug_hides_the_value() {
        let shown = format!("{:?}", SessionKey(0xdead_beef_cafe));
        assert_eq!(shown, "SessionKey(..)");
        assert!(!shown.contains("dead"));
    }

    #[tokio::test]
    async fn store_enum_dispatches_to_memory() {
        let store = Store::Memory(MemoryStore::new(10, secs(60), secs(3600)));
        let key = SessionKey(7);
        let rec = Record {
            backend: BackendId(3),
            created_ms: 1_000,
            seen_ms: 1_000,
        };
        assert_eq!(store.get_touch(key, 1_000).await, Found::Missing);
        assert_eq!(store.insert(key, rec).await, Insert::Done);
        assert_eq!(store.get_touch(key, 2_000).await, Found::Live(rec));
        assert!(store.repin(key, BackendId(4), 3_000).await);
        assert_eq!((store.sessions_on(BackendId(4)), store.live()), (1, 1));
        assert_eq!(store.end(key, EndReason::Ended, 4_000).await, Insert::Done);
        assert_eq!(
            store.get_touch(key, 5_000).await,
            Found::Over(EndReason::Ended)
        );
        assert_eq!((store.live(), store.len()), (0, 1));
        store.set_timeouts(secs(1), secs(2));
        assert_eq!(store.get_touch(key, 6_000).await, Found::Missing);
        assert!(store.is_empty());
    }

    #[test]
    fn store_futures_are_send() {
        fn send<T: Send>(_: T) {}
        let store = Store::Memory(MemoryStore::new(1, secs(1), secs(1)));
        let key = SessionKey(1);
        send(store.get_touch(key, 0));
        send(store.end(key, EndReason::Ended, 0));
    }
}
