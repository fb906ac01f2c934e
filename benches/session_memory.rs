//! Bytes per live session in the memory store, measured with a counting
//! global allocator (bytes allocated minus bytes freed) around inserting
//! 1,000,000 sessions. Prints the figure; exits 1 above the 200-byte budget.
//!
//! `cargo bench --bench session_memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tether::store::{BackendId, Insert, MemoryStore, Record, SessionKey};

/// Net heap bytes in use by the whole process.
struct Counting;

static NET: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            NET.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            NET.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        NET.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            NET.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SESSIONS: usize = 1_000_000;
const BUDGET: f64 = 200.0;
const NOW: u64 = 1_700_000_000_000;

/// splitmix64: stands in for the CSPRNG ids (only their spread matters here).
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; there is nothing to configure.
    let mut rng = 0x7e7e_7e7e_u64;
    // Keys are generated before measuring: they are the caller's, not the store's.
    let keys: Vec<u128> = (0..SESSIONS)
        .map(|_| (u128::from(next(&mut rng)) << 64) | u128::from(next(&mut rng)))
        .collect();

    let before = NET.load(Ordering::Relaxed);
    let store = MemoryStore::new(
        SESSIONS * 2,
        Duration::from_secs(30 * 60),
        Duration::from_secs(12 * 3600),
    );
    for (i, k) in keys.iter().enumerate() {
        let rec = Record {
            backend: BackendId((i % 8) as u16),
            created_ms: NOW,
            seen_ms: NOW,
        };
        if store.insert(SessionKey(*k), rec) != Insert::Done {
            eprintln!("insert {i} refused");
            return ExitCode::FAILURE;
        }
    }
    let after = NET.load(Ordering::Relaxed);
    assert_eq!(store.live(), SESSIONS as u64);

    let per = (after - before) as f64 / SESSIONS as f64;
    println!(
        "session_memory: {SESSIONS} live sessions, {} bytes net, {per:.1} bytes/session (budget {BUDGET})",
        after - before
    );
    drop(store);
    if per > BUDGET {
        eprintln!("session_memory: over budget");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
