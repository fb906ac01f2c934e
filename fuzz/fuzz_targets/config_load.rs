//! The config loader on arbitrary text: never panics, and every refusal is one line that
//! starts with the file name (SPEC §1: "one message naming the file, line and column").
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    // The loader reads the files a config names (cert, key, secret, token). Device and proc
    // files can be endless or block (`/dev/zero`, `/dev/stdin`): trusted operator input, not
    // what this target is about.
    if text.contains("/dev") || text.contains("/proc") || text.contains("/sys") {
        return;
    }
    if let Err(e) = tether::config::from_str(text, Path::new("fuzz.toml"), None) {
        let msg = e.to_string();
        assert!(msg.starts_with("fuzz.toml:"), "error not located: {msg:?}");
        assert!(
            !msg.contains(['\n', '\r']),
            "error is more than one line: {msg:?}"
        );
        if let Some((line, column)) = e.location() {
            assert!(line >= 1 && column >= 1, "0-based location in {msg:?}");
            let lines = text.split('\n').count().max(1);
            assert!(
                line <= lines,
                "line {line} past the end ({lines} lines): {msg:?}"
            );
        }
    }
});
