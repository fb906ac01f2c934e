//! The same get/insert as `benches/store.rs`, on a `moka::sync::Cache` with
//! time_to_idle/time_to_live at 1,000,000 entries: how the sharded map
//! compares with a well-kept TTL cache.
//!
//! Why tether keeps its own map anyway: moka expires lazily and evicts by
//! TinyLFU at its capacity, so (1) at the bound it evicts *live* sessions,
//! which SPEC §9 forbids (a cookieless flood would log users out); (2) counts
//! kept from its eviction listener lag behind expiry, so `sessions_on` could
//! not be exact; (3) tombstones with "until the session would have expired"
//! need per-entry expiry and a separate value kind. See the report in the
//! store's commit for the numbers.
//!
//! `cargo bench --features bench-moka --bench store_moka`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use moka::sync::Cache;
use tether::store::{BackendId, Record};

const LIVE: usize = 1_000_000;
const NOW: u64 = 1_700_000_000_000;

/// splitmix64, as in benches/store.rs.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn keys(seed: u64, n: usize) -> Vec<u128> {
    let mut s = seed;
    (0..n)
        .map(|_| (u128::from(next(&mut s)) << 64) | u128::from(next(&mut s)))
        .collect()
}

fn record(i: usize) -> Record {
    Record {
        backend: BackendId((i % 8) as u16),
        created_ms: NOW,
        seen_ms: NOW,
    }
}

fn bench(c: &mut Criterion) {
    let cache: Cache<u128, Record> = Cache::builder()
        .max_capacity(LIVE as u64 * 16)
        .time_to_idle(Duration::from_secs(30 * 60))
        .time_to_live(Duration::from_secs(12 * 3600))
        .build();
    let live = keys(1, LIVE);
    for (i, k) in live.iter().enumerate() {
        cache.insert(*k, record(i));
    }
    cache.run_pending_tasks();
    let absent = keys(2, LIVE);
    let mut g = c.benchmark_group("moka_1M");

    // A moka `get` is the touch: it resets the entry's time-to-idle clock.
    let mut i = 0usize;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 1) % LIVE;
            black_box(cache.get(&live[i]))
        })
    });

    let mut i = 0usize;
    g.bench_function("get_miss", |b| {
        b.iter(|| {
            i = (i + 1) % LIVE;
            black_box(cache.get(&absent[i]))
        })
    });

    // Fresh keys in chunks, invalidated untimed after each chunk so the cache
    // stays near 1M entries.
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
                    cache.insert(*k, record(j));
                }
                timed += began.elapsed();
                for k in &fresh {
                    cache.invalidate(k);
                }
                cache.run_pending_tasks();
            }
            timed
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
