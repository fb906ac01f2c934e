//! The binary's global allocator (the library leaves the choice to the
//! binary): mimalloc, with the 8 KiB blocks hyper's read buffers churn
//! through kept per thread for reuse, and the call that gives idle memory
//! back to the OS.
//!
//! mimalloc instead of glibc malloc: the request path allocates per request
//! (hyper's head maps, rustls buffers per connection), and glibc's malloc and
//! free were about 7% of the proxy's CPU in a load profile.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

use libmimalloc_sys as mi;

/// mimalloc as Rust's allocator. Alignments every mimalloc block has anyway
/// go to its plain entry points, as Rust's own `System` does with malloc:
/// its aligned ones take a slower, over-allocating path whenever the size
/// is not a power of two (most allocations above 1 KiB: hyper's buffers,
/// boxed futures).
pub struct Mimalloc;

/// Every block mimalloc hands out is aligned to a word.
const MIN_ALIGN: usize = std::mem::size_of::<usize>();

// SAFETY: each call forwards to mimalloc, which returns blocks of at least
// the size asked for, aligned to MIN_ALIGN, or to `align` when asked through
// the aligned entry points; `mi_free` takes blocks from either. A recycled
// block is one mimalloc gave out for the same size at MIN_ALIGN.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if recycles(l) {
            if let Some(p) = Recycled::take() {
                return p;
            }
        }
        let p = if l.align() <= MIN_ALIGN {
            mi::mi_malloc(l.size())
        } else {
            mi::mi_malloc_aligned(l.size(), l.align())
        };
        p.cast()
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = if l.align() <= MIN_ALIGN {
            mi::mi_zalloc(l.size())
        } else {
            mi::mi_zalloc_aligned(l.size(), l.align())
        };
        p.cast()
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if recycles(l) && Recycled::keep(p) {
            return;
        }
        mi::mi_free(p.cast());
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        let p = if l.align() <= MIN_ALIGN {
            mi::mi_realloc(p.cast(), size)
        } else {
            mi::mi_realloc_aligned(p.cast(), size, l.align())
        };
        p.cast()
    }
}

/// The size of hyper's read buffers. hyper makes room for its next read
/// while the bytes of the head it just parsed are still shared with the
/// request (or response) on its way, so it cannot reuse its buffer: on most
/// requests each side allocates a new one and frees the old a moment later.
/// mimalloc serves 8 KiB blocks from pages of eight, through its slow path,
/// in an order that hands out blocks last touched long ago; a block freed a
/// moment ago is still in the CPU's cache.
const RECYCLED_SIZE: usize = 8192;

/// How many freed blocks a thread keeps: the churn above keeps one or two
/// in play, and a burst of connections closing leaves the rest to mimalloc.
const KEEP: usize = 16;

/// Whether blocks of layout `l` go through [`Recycled`].
fn recycles(l: Layout) -> bool {
    l.size() == RECYCLED_SIZE && l.align() <= MIN_ALIGN
}

/// This thread's freed [`RECYCLED_SIZE`] blocks, the last freed on top.
struct Recycled {
    len: Cell<usize>,
    blocks: [Cell<*mut u8>; KEEP],
}

thread_local! {
    // Its destructor hands the blocks to mimalloc when the thread ends
    // (reload threads come and go). Registering it allocates nothing of
    // RECYCLED_SIZE, so it cannot reenter this cache.
    static RECYCLED: Recycled = const {
        Recycled {
            len: Cell::new(0),
            blocks: [const { Cell::new(std::ptr::null_mut()) }; KEEP],
        }
    };
}

impl Recycled {
    /// The block freed last on this thread, if any is kept.
    fn take() -> Option<*mut u8> {
        RECYCLED
            .try_with(|r| {
                let n = r.len.get().checked_sub(1)?;
                r.len.set(n);
                Some(r.blocks[n].get())
            })
            .ok()
            .flatten()
    }

    /// Keeps `p` for the next allocation; false when the cache is full or
    /// the thread is ending (the caller frees it).
    fn keep(p: *mut u8) -> bool {
        RECYCLED
            .try_with(|r| {
                let n = r.len.get();
                if n == KEEP {
                    return false;
                }
                r.blocks[n].set(p);
                r.len.set(n + 1);
                true
            })
            .unwrap_or(false)
    }

    /// Hands this thread's blocks to mimalloc.
    fn drain() {
        while let Some(p) = Recycled::take() {
            // SAFETY: every kept block came from mi_malloc and is owned by
            // the cache alone.
            unsafe { mi::mi_free(p.cast()) };
        }
    }

    #[cfg(test)]
    fn len() -> usize {
        RECYCLED.with(|r| r.len.get())
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        for b in &self.blocks[..self.len.get()] {
            #[cfg(test)]
            tests::handed_back(b.get());
            // SAFETY: as in `drain`.
            unsafe { mi::mi_free(b.get().cast()) };
        }
    }
}

extern "C" {
    /// mimalloc: frees what the calling thread's heap no longer uses and,
    /// forced, carries out the purges (pages given back to the OS) that
    /// are due.
    fn mi_collect(force: bool);
}

/// Returns what idle connections freed to the OS: the blocks this thread
/// keeps, then mimalloc's. Twice: a forced collect purges the segments of
/// the pages it visits before it frees the empty ones, so the pages it
/// frees are purged by the second.
pub fn release() {
    Recycled::drain();
    // SAFETY: mi_collect takes no pointers; mimalloc is linked (the global
    // allocator above) and may be called from any thread.
    unsafe {
        mi_collect(true);
        mi_collect(true);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    static ALLOC: Mimalloc = Mimalloc;

    /// Every size and alignment Rust may ask for comes back aligned, keeps
    /// what was written through a realloc, and zeroed when asked.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let sizes = [1, 7, 8, 24, 100, 1000, 1025, 3000, 4096, 5000, 8192, 70_000];
        for align in [1, 2, 4, 8, 16, 64, 4096] {
            for size in sizes.iter().map(|s| s.max(&align)) {
                let l = Layout::from_size_align(*size, align).expect("a layout");
                // SAFETY: `l` has a non-zero size; every block is freed with its layout.
                unsafe {
                    let z = ALLOC.alloc_zeroed(l);
                    assert_eq!(z as usize % align, 0, "zeroed {size} at {align}");
                    assert!(std::slice::from_raw_parts(z, *size).iter().all(|b| *b == 0));
                    ALLOC.dealloc(z, l);
                    let p = ALLOC.alloc(l);
                    assert_eq!(p as usize % align, 0, "{size} at {align}");
                    std::ptr::write_bytes(p, 0xa5, *size);
                    let grown = ALLOC.realloc(p, l, size * 3);
                    assert_eq!(grown as usize % align, 0, "grown {size} at {align}");
                    let kept = std::slice::from_raw_parts(grown, *size);
                    assert!(kept.iter().all(|b| *b == 0xa5), "{size} at {align}");
                    ALLOC.dealloc(
                        grown,
                        Layout::from_size_align(size * 3, align).expect("a layout"),
                    );
                }
            }
        }
    }

    /// Which layouts the cache takes: hyper's read buffer exactly, at an
    /// alignment mimalloc's plain blocks have.
    #[test]
    fn only_word_aligned_8_kib_blocks_are_recycled() {
        let cases = [
            (8192, 1, true),
            (8192, 8, true),
            (8192, 16, false),
            (8191, 1, false),
            (8193, 1, false),
            (4096, 1, false),
            (16384, 1, false),
        ];
        for (size, align, want) in cases {
            let l = Layout::from_size_align(size, align).expect("a layout");
            assert_eq!(recycles(l), want, "{size} at {align}");
        }
    }

    /// The block freed last comes back first, up to KEEP of them; the rest
    /// go to mimalloc, and a release empties the cache.
    #[test]
    fn the_last_freed_block_comes_back_first_and_release_empties_the_cache() {
        let l = Layout::from_size_align(RECYCLED_SIZE, 1).expect("a layout");
        Recycled::drain();
        // SAFETY: each block is allocated and freed with `l`.
        unsafe {
            let blocks: Vec<*mut u8> = (0..KEEP + 4).map(|_| ALLOC.alloc(l)).collect();
            for &b in &blocks {
                ALLOC.dealloc(b, l);
            }
            assert_eq!(Recycled::len(), KEEP);
            let again: Vec<*mut u8> = (0..KEEP).map(|_| ALLOC.alloc(l)).collect();
            let kept: Vec<*mut u8> = blocks[..KEEP].iter().rev().copied().collect();
            assert_eq!(again, kept);
            assert_eq!(Recycled::len(), 0);
            for b in again {
                std::ptr::write_bytes(b, 0x5a, RECYCLED_SIZE);
                ALLOC.dealloc(b, l);
            }
        }
        assert_eq!(Recycled::len(), KEEP);
        release();
        assert_eq!(Recycled::len(), 0);
    }

    /// Blocks the ending threads' caches handed to mimalloc.
    static HANDED_BACK: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

    pub(super) fn handed_back(p: *mut u8) {
        HANDED_BACK.lock().expect("not poisoned").push(p as usize);
    }

    /// A thread's kept blocks go back to mimalloc when the thread ends.
    #[test]
    fn a_thread_hands_its_blocks_back_when_it_ends() {
        let l = Layout::from_size_align(RECYCLED_SIZE, 1).expect("a layout");
        let (block, kept) = std::thread::spawn(move || {
            // SAFETY: allocated and freed with `l`.
            let p = unsafe { ALLOC.alloc(l) };
            unsafe { ALLOC.dealloc(p, l) };
            (p as usize, Recycled::len())
        })
        .join()
        .expect("the thread ends");
        assert_eq!(kept, 1);
        assert!(HANDED_BACK.lock().expect("not poisoned").contains(&block));
    }
}
