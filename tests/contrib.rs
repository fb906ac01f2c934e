//! What `contrib/` ships is checked by the tools operators run on it: the
//! systemd unit by `systemd-analyze verify` and rated by `systemd-analyze
//! security`, the Kubernetes manifests by `kubernetes-validate --strict`
//! against the API schemas. Without a tool the test says it skipped;
//! `.ci/run` installs both and sets `TETHER_REQUIRE_TOOLS=1`, so CI fails
//! instead.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tool's path, or `None` after saying the test skipped (a failure
/// when `TETHER_REQUIRE_TOOLS=1`).
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("TETHER_REQUIRE_TOOLS").is_none(),
            "{name} is required (TETHER_REQUIRE_TOOLS=1) but not on PATH"
        );
        eprintln!("skipped: {name} is not installed");
    }
    found
}

/// The unit with `/usr/local/bin/tether` pointing at the binary just built.
fn unit_here(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("contrib/systemd/tether.service")).unwrap();
    let path = dir.join("tether.service");
    std::fs::write(
        &path,
        text.replace("/usr/local/bin/tether", env!("CARGO_BIN_EXE_tether")),
    )
    .unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tether-contrib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = unit_here(&dir);
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "verify: {said}"
    );

    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for tether.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    // systemd rates 0-2 as OK; the default for a bare unit is 9.6.
    assert!(
        level <= 2.0,
        "the sandbox loosened: exposure {level}\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_kubernetes_manifests_pass_the_api_schemas() {
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    let manifests: Vec<PathBuf> = std::fs::read_dir(repo().join("contrib/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(manifests.len() >= 2, "{manifests:?}");
    let out = Command::new(validate)
        .arg("--strict")
        .args(&manifests)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    for kind in [
        "deployment/tether",
        "statefulset/app",
        "service/tether-admin",
    ] {
        assert!(
            said.contains(&format!("passed for resource {kind}")),
            "{kind}: {said}"
        );
    }
}
