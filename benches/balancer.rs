//! A new session's backend under bounded load (`balance_factor = 1.25`)
//! with 3, 100 and 1,000 backends, each holding sessions in a memory store,
//! called the way the request path calls it. `warm` repeats the pick with
//! everything cached; `cold` first evicts L1 and L2 (a 4 MiB walk outside
//! the timing), as a request arriving after others on the core finds them.
//! `cargo bench --bench balancer` (about 15 s)

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use tether::backends::Backend;
use tether::balancer::Balancer;
use tether::store::{BackendId, MemoryStore, Record, SessionKey};

const SESSIONS_PER_BACKEND: usize = 20;

fn pool(n: usize) -> Vec<Arc<Backend>> {
    (0..n)
        .map(|i| {
            Arc::new(Backend::new(
                &format!("app{i}"),
                BackendId(i as u16),
                i as u64,
                "127.0.0.1:1".parse().expect("an address"),
                1,
            ))
        })
        .collect()
}

fn store_for(backends: &[Arc<Backend>]) -> MemoryStore {
    let store = MemoryStore::new(
        backends.len() * SESSIONS_PER_BACKEND,
        Duration::from_secs(1800),
        Duration::from_secs(43200),
    );
    for (i, b) in backends.iter().enumerate() {
        for s in 0..SESSIONS_PER_BACKEND {
            let key = SessionKey(
                ((i * SESSIONS_PER_BACKEND + s) as u128)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
            );
            let rec = Record {
                backend: b.id,
                created_ms: 1,
                seen_ms: 1,
            };
            let _ = store.insert(key, rec);
        }
    }
    store
}

fn keys() -> Vec<u64> {
    (1..=1024u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect()
}

fn bench_pick_new(c: &mut Criterion) {
    let keys = keys();
    for n in [3, 100, 1000] {
        let backends = pool(n);
        let balancer = Balancer::new(&backends);
        let store = store_for(&backends);
        let mut i = 0;
        c.bench_function(&format!("pick_new/warm/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(pick(&balancer, &backends, &store, black_box(keys[i])))
            })
        });
    }
}

/// The request path's call.
fn pick(
    balancer: &Balancer,
    backends: &[Arc<Backend>],
    store: &MemoryStore,
    key: u64,
) -> Option<usize> {
    balancer.pick_new_with(
        key,
        backends,
        1.25,
        |b| store.sessions_on(b.id),
        |up| store.sessions_among(up),
    )
}

/// Median and mean of picks made after evicting L1 and L2 (a 4 MiB walk,
/// untimed), as a request finds them once others have run on the core.
/// Criterion would size the sample by the timed part alone and walk for
/// minutes, so this is a plain loop of `ROUNDS` picks.
fn cold() {
    const ROUNDS: usize = 2000;
    let keys = keys();
    let mut scratch = vec![0u8; 4 << 20];
    for n in [3, 100, 1000] {
        let backends = pool(n);
        let balancer = Balancer::new(&backends);
        let store = store_for(&backends);
        let mut took: Vec<Duration> = (0..ROUNDS)
            .map(|r| {
                for x in scratch.iter_mut().step_by(64) {
                    *x = x.wrapping_add(1);
                }
                black_box(&scratch);
                let key = keys[r % keys.len()];
                let t = Instant::now();
                black_box(pick(&balancer, &backends, &store, black_box(key)));
                t.elapsed()
            })
            .collect();
        took.sort();
        let mean = took.iter().sum::<Duration>() / ROUNDS as u32;
        println!(
            "pick_new/cold/{n}: median {:?}, mean {:?} ({ROUNDS} picks)",
            took[ROUNDS / 2],
            mean
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_pick_new
}

fn main() {
    benches();
    cold();
    Criterion::default().configure_from_args().final_summary();
}
