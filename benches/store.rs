//! Memory store with 1,000,000 live sessions: insert, get_touch (hit and
//! miss), and touch from 1 vs 2 threads at once (equal per-op times mean no
//! global lock). `cargo bench --bench store`

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tether::store::{BackendId, MemoryStore, Record, SessionKey};

const LIVE: usize = 1_000_000;
const NOW: u64 = 1_700_000_000_000;
const IDLE: Duration = Duration::from_secs(30 * 60);
const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);

/// splitmix64: stands in for the CSPRNG ids (only their spread matters here).
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn keys(seed: u64, n: usize) -> Vec<SessionKey> {
    let mut s = seed;
    (0..n)
        .map(|_| SessionKey((u128::from(next(&mut s)) << 64) | u128::from(next(&mut s))))
        .collect()
}

fn record(i: usize, at: u64) -> Record {
    Record {
        backend: BackendId((i % 8) as u16),
        created_ms: at,
        seen_ms: at,
    }
}

fn filled() -> (MemoryStore, Vec<SessionKey>) {
    let store = MemoryStore::new(LIVE * 16, IDLE, ABSOLUTE);
    let live = keys(1, LIVE);
    for (i, k) in live.iter().enumerate() {
        let _ = store.insert(*k, record(i, NOW));
    }
    (store, live)
}

fn bench(c: &mut Criterion) {
    let (store, live) = filled();
    let absent = keys(2, LIVE);
    let mut g = c.benchmark_group("memory_store_1M");

    let mut i = 0usize;
    g.bench_function("get_touch_hit", |b| {
        b.iter(|| {
            i = (i + 1) % LIVE;
            black_box(store.get_touch(live[i], NOW + 1))
        })
    });

    let mut i = 0usize;
    g.bench_function("get_touch_miss", |b| {
        b.iter(|| {
            i = (i + 1) % LIVE;
            black_box(store.get_touch(absent[i], NOW + 1))
        })
    });

    // Fresh keys each time, in chunks: each chunk is inserted already idle
    // at NOW (seen two idle periods ago), so an untimed reap(NOW) after it
    // removes exactly those and the store stays at 1M live throughout.
    let stale = NOW - 2 * IDLE.as_millis() as u64;
    let mut seed = 100;
    g.bench_function("insert", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(100_000);
                left -= n;
                seed += 1;
                let fresh = keys(seed, n);
                let began = Instant::now();
                for (j, k) in fresh.iter().enumerate() {
                    let _ = black_box(store.insert(*k, record(j, stale)));
                }
                timed += began.elapsed();
                store.reap(NOW);
            }
            timed
        })
    });
    g.finish();

    // The same loop on 1 and 2 threads, each over its own half of the keys.
    // With a global lock the 2-thread time per op would at least double. The
    // control runs 2 threads on two separate stores (nothing shared): it is
    // the best this machine can do with 2 threads, so compare against it,
    // not against 1 thread, on a host whose cores are shared.
    let (other, _) = filled();
    let shared = [&store, &store];
    let separate = [&store, &other];
    let mut g = c.benchmark_group("memory_store_1M_touch_threads");
    for (name, threads, stores) in [
        ("threads=1", 1usize, shared),
        ("threads=2_shared_store", 2, shared),
        ("threads=2_separate_stores_control", 2, separate),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Barrier::new(threads);
                let per_thread = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|t| {
                            let (store, live, start) = (stores[t], &live, &start);
                            s.spawn(move || {
                                let half = &live[t * LIVE / 2..(t + 1) * LIVE / 2];
                                start.wait();
                                let began = Instant::now();
                                for n in 0..iters as usize {
                                    black_box(store.get_touch(half[n % half.len()], NOW + 2));
                                }
                                began.elapsed()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("bench thread"))
                        .collect::<Vec<_>>()
                });
                // Each thread did `iters` touches; report the slowest thread,
                // i.e. the wall time for `iters` touches per thread.
                per_thread.into_iter().max().unwrap_or_default()
            })
        });
    }
    g.finish();
    assert_eq!(store.live(), LIVE as u64);
}

criterion_group!(benches, bench);
criterion_main!(benches);
