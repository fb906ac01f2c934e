//! Logging: tracing to stderr, text or JSON, level from `RUST_LOG`.
//!
//! The access log is the `tether::access` target at info level; turning it off
//! in the config keeps the call sites cheap (a boolean check, no formatting).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `json` picks the format. Calling it twice is harmless.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        // Colour only for people; files and pipes get plain, greppable text.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
