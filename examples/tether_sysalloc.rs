//! `tether run -c CONFIG` with the system allocator instead of mimalloc, for
//! heaptrack (which sees only malloc) and for telling the allocator's own
//! overhead from live bytes in a memory bench:
//!
//! ```text
//! cargo build --release --example tether_sysalloc
//! heaptrack target/release/examples/tether_sysalloc run -c config.toml
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let config = match args.as_slice() {
        [_, run, c, path] if run == "run" && (c == "-c" || c == "--config") => path,
        _ => {
            eprintln!("usage: tether_sysalloc run -c CONFIG");
            return ExitCode::from(2);
        }
    };
    tether::server::run_file(std::path::Path::new(config))
}
