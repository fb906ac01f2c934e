//! README's many-instance walk, run as written: `examples/many_instances.sh`
//! with the binaries this test run built. Needs redis-server (skipped
//! without it, a failure under `TETHER_REQUIRE_REDIS=1`) and curl.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_many_instance_walk_runs_and_every_step_holds() {
    let has = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("redis-server") {
        assert!(
            std::env::var_os("TETHER_REQUIRE_REDIS").is_none(),
            "redis-server is required (TETHER_REQUIRE_REDIS=1)"
        );
        eprintln!("skipped: redis-server is not installed");
        return;
    }
    let tether = PathBuf::from(env!("CARGO_BIN_EXE_tether"));
    let backend = tether
        .parent()
        .expect("the target directory")
        .join("examples/bench_backend");
    assert!(
        backend.is_file(),
        "cargo test builds the examples: {backend:?}"
    );
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(repo.join("examples/many_instances.sh"))
        .env("TETHER_BIN", &tether)
        .env("BACKEND_BIN", &backend)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "2. the same cookie on B",
        "4. the old cookie on A:             refused",
        "6. without Redis, A and B still serve",
    ] {
        assert!(said.contains(step), "missing step {step:?}:\n{said}");
    }
}
