//! The `tether` command line: parse, load, log, run; exit 2 on a bad config.

use std::alloc::{GlobalAlloc, Layout};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use libmimalloc_sys as mi;

/// mimalloc instead of glibc malloc: the request path allocates per request
/// (hyper's head maps, rustls buffers per connection), and glibc's malloc and
/// free were about 7% of the proxy's CPU in a load profile.
#[global_allocator]
static ALLOC: Mimalloc = Mimalloc;

/// mimalloc as Rust's allocator. Alignments every mimalloc block has anyway
/// go to its plain entry points, as Rust's own `System` does with malloc:
/// its aligned ones take a slower, over-allocating path whenever the size
/// is not a power of two (most allocations above 1 KiB: hyper's buffers,
/// boxed futures).
struct Mimalloc;

/// Every block mimalloc hands out is aligned to a word.
const MIN_ALIGN: usize = std::mem::size_of::<usize>();

// SAFETY: each call forwards to mimalloc, which returns blocks of at least
// the size asked for, aligned to MIN_ALIGN, or to `align` when asked through
// the aligned entry points; `mi_free` takes blocks from either.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
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
    unsafe fn dealloc(&self, p: *mut u8, _: Layout) {
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

#[derive(Parser)]
#[command(name = "tether", version, about = "A sticky-session reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until SIGTERM/SIGINT.
    Run {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file and print the effective configuration.
    Check {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Start three demo backends and a proxy on https://localhost:8443.
    Demo,
    /// Print a new random secret (256 bits) for `[session] secret_file`.
    Secret,
}

extern "C" {
    /// mimalloc: frees what the calling thread's heap no longer uses and,
    /// forced, carries out the purges (pages given back to the OS) that
    /// are due.
    fn mi_collect(force: bool);
}

/// Returns what idle connections freed to the OS. Twice: a forced collect
/// purges the segments of the pages it visits before it frees the empty
/// ones, so the pages it frees are purged by the second.
fn release() {
    // SAFETY: mi_collect takes no pointers; mimalloc is linked (the global
    // allocator above) and may be called from any thread.
    unsafe {
        mi_collect(true);
        mi_collect(true);
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tether::release::set(release);
    match cli.command {
        Command::Secret => match tether::keys::new_secret() {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tether: the OS random number generator failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => match tether::config::load(&config) {
            Ok(c) => {
                print!("{}", c.effective_toml());
                eprintln!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => tether::server::run_file(&config),
        Command::Demo => {
            tether::log::init(false);
            let rt = match tether::server::runtime(0) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tether: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(tether::demo::run(tether::server::terminate_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tether demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment Rust may ask for comes back aligned, keeps
    /// what was written through a realloc, and zeroed when asked.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let sizes = [1, 7, 8, 24, 100, 1000, 1025, 3000, 4096, 5000, 70_000];
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
}
