//! Ring lookups: the first candidate (every new session) and the full candidate walk (the worst
//! case of failover), for a small and a large pool.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tether::balancer::ring::Ring;

fn ring_of(n: usize) -> Ring {
    let names: Vec<String> = (0..n).map(|i| format!("app{i}")).collect();
    Ring::new(names.iter().map(|name| (name.as_str(), 1)))
}

/// Keys spread over the whole u64 range, built before timing starts.
fn keys() -> Vec<u64> {
    (1..=1024u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect()
}

fn bench_ring(c: &mut Criterion) {
    let keys = keys();
    for n in [3, 100] {
        let ring = ring_of(n);
        let mut i = 0;
        c.bench_function(&format!("ring/first_candidate/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(ring.candidates(black_box(keys[i])).next())
            })
        });
        let mut i = 0;
        c.bench_function(&format!("ring/first_where_all_up/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(ring.first_where(black_box(keys[i]), |_| true))
            })
        });
        let mut i = 0;
        c.bench_function(&format!("ring/all_candidates/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(
                    ring.candidates(black_box(keys[i]))
                        .fold(0, |acc, x| acc ^ x),
                )
            })
        });
    }
}

criterion_group!(benches, bench_ring);
criterion_main!(benches);
