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
        let id = BackendId(i as u16);
        assert_eq!(s.sessions_on(id), *n, "backend {i}");
        assert!(
            *n == 0 || s.inner.tally.held(id),
            "backend {i} holds sessions"
        );
    }
    // The total over a set of ids is the sum of their counts.
    let mut evens = BackendSet::new();
    let mut all = BackendSet::new();
    for i in 0..MAX_BACKEND_IDS {
        all.insert(BackendId(i as u16));
        if i % 2 == 0 {
            evens.insert(BackendId(i as u16));
        }
    }
    let even_sum: u64 = per.iter().step_by(2).sum();
    assert_eq!(s.sessions_among(&evens), even_sum, "among the even ids");
    assert_eq!(s.sessions_among(&all), live, "among all ids");
    assert_eq!(s.sessions_among(&BackendSet::new()), 0, "among none");
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
fn sessions_among_counts_the_set_through_moves_ends_and_forgets() {
    let s = store(100);
    let set = |ids: &[u16]| {
        let mut set = BackendSet::new();
        for &i in ids {
            set.insert(BackendId(i));
        }
        set
    };
    for n in 0..12u64 {
        let b = BackendId([1, 2, 3, 300][(n % 4) as usize]);
        assert_eq!(s.insert(key(n), rec(b, T0)), Insert::Done);
    }
    // (what happened, ids asked about, sessions among them)
    let ask = |what: &str, rows: &[(&[u16], u64)]| {
        for (ids, want) in rows {
            assert_eq!(s.sessions_among(&set(ids)), *want, "{what}: among {ids:?}");
        }
        assert_counts_exact(&s);
    };
    ask(
        "3 each",
        &[(&[1, 2], 6), (&[1, 2, 3, 300], 12), (&[300], 3), (&[4], 0)],
    );
    s.repin(key(0), BackendId(2), T0 + 1); // 1 -> 2
    s.repin(key(4), BackendId(300), T0 + 1); // 1 -> 300
    ask(
        "moved two off 1",
        &[(&[1], 1), (&[2], 4), (&[1, 2, 3], 8), (&[300], 4)],
    );
    assert_eq!(s.end(key(1), EndReason::Ended, T0 + 2), Insert::Done); // 2
    ask("ended one on 2", &[(&[2], 3), (&[1, 2, 3, 300], 11)]);
    assert_eq!(s.forget_backends(&[BackendId(300)]), 4);
    ask(
        "forgot 300",
        &[(&[1, 2, 3], 7), (&[300], 0), (&[1, 2, 3, 300], 7)],
    );
    assert_eq!(s.reap(T0 + 10_000), 8);
    ask("all expired", &[(&[1, 2, 3, 300], 0)]);
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
