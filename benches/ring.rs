//! Ring lookups: the first candidate (every new session) and the full candidate walk (the worst
//! case of failover), for a small, a large and the largest pool; and, for comparison, the same
//! walks on the `consistent_hash` crate's own ring (whose walk tether used before: it allocates
//! a splay-tree node per backend visited).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tether::balancer::ring::{Ring, VNODES_PER_WEIGHT};

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("app{i}")).collect()
}

fn ring_of(n: usize) -> Ring {
    let names = names(n);
    Ring::new(names.iter().map(|name| (name.as_str(), 1)))
}

fn crate_ring_of(
    n: usize,
) -> consistent_hash::StaticHashRing<'static, String, usize, consistent_hash::DefaultHash> {
    consistent_hash::StaticHashRing::new(
        consistent_hash::DefaultHash,
        names(n).into_iter().enumerate().map(|(i, name)| {
            consistent_hash::Node::new(name)
                .value(i)
                .quantity(VNODES_PER_WEIGHT)
        }),
    )
}

/// Keys spread over the whole u64 range, built before timing starts.
fn keys() -> Vec<u64> {
    (1..=1024u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect()
}

fn bench_ring(c: &mut Criterion) {
    let keys = keys();
    for n in [3, 100, 1000] {
        let ring = ring_of(n);
        let mut i = 0;
        c.bench_function(&format!("ring/first_candidate/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(ring.candidates(black_box(keys[i])).next())
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
        let old = crate_ring_of(n);
        let mut i = 0;
        c.bench_function(&format!("crate_ring/first_candidate/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(
                    old.calc_candidates(black_box(&keys[i]))
                        .next()
                        .map(|n| n.value),
                )
            })
        });
        let mut i = 0;
        c.bench_function(&format!("crate_ring/all_candidates/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(
                    old.calc_candidates(black_box(&keys[i]))
                        .fold(0, |acc, x| acc ^ x.value),
                )
            })
        });
    }
    let names = names(1000);
    c.bench_function("ring/build/1000", |b| {
        b.iter(|| black_box(Ring::new(names.iter().map(|name| (name.as_str(), 1)))))
    });
}

criterion_group!(benches, bench_ring);
criterion_main!(benches);
