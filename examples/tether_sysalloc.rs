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
    let c = match tether::config::load(std::path::Path::new(config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    tether::log::init(c.log.format == tether::config::LogFormat::Json);
    let rt = match tether::server::runtime(c.runtime.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async {
        let hup = tether::server::hangup_signals();
        tether::server::run(c, tether::server::terminate_signal(), hup).await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {e}");
            ExitCode::FAILURE
        }
    }
}
