//! `pgo/rustc-wrapper`, which cargo runs every rustc through: it adds the
//! committed profile to optimised builds only, and only for a compiler whose
//! LLVM can read it. Driven here with a stand-in `rustc` that reports an LLVM
//! version and prints the arguments it was given.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A directory holding a stand-in `rustc` (and `clippy-driver`) that answer
/// `-vV` with LLVM `llvm` and otherwise print one argument per line.
fn fake_compilers(llvm: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-pgo-{}-{llvm}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = -vV ]; then echo 'rustc 1.0.0'; echo 'LLVM version: {llvm}.1.0'; \
         exit 0; fi\nfor a in \"$@\"; do echo \"$a\"; done\n"
    );
    for name in ["rustc", "clippy-driver"] {
        let path = dir.join(name);
        std::fs::write(&path, &script).unwrap();
        let mut perm = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&path, perm).unwrap();
    }
    dir
}

/// The arguments the wrapper handed the compiler.
fn wrapped(compiler: &Path, args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let out = Command::new(repo().join("pgo/rustc-wrapper"))
        .arg(compiler)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn made_by() -> u32 {
    let text = std::fs::read_to_string(repo().join("pgo/llvm-version")).unwrap();
    text.trim()
        .parse()
        .expect("pgo/llvm-version holds an LLVM major version")
}

#[test]
fn the_profile_is_committed_with_the_llvm_version_that_wrote_it() {
    let profile = std::fs::metadata(repo().join("pgo/tether.profdata")).unwrap();
    assert!(
        profile.len() > 1024,
        "pgo/tether.profdata is {} bytes",
        profile.len()
    );
    assert!(made_by() > 0);
}

/// What, the LLVM major of the compiler, its name, the arguments cargo
/// gives it, the environment, and whether the profile is added.
struct Case<'a>(
    &'a str,
    u32,
    &'a str,
    &'a [&'a str],
    &'a [(&'a str, &'a str)],
    bool,
);

#[test]
fn only_optimised_builds_by_a_compiler_that_reads_the_profile_get_it() {
    let profile = format!(
        "-Cprofile-use={}",
        repo().join("pgo/tether.profdata").display()
    );
    let release = [
        "--crate-name",
        "hyper",
        "-C",
        "opt-level=3",
        "--cfg",
        "feature=\"a b\"",
    ];
    let dev = [
        "--crate-name",
        "hyper",
        "-C",
        "debuginfo=2",
        "--cfg",
        "feature=\"a b\"",
    ];
    let generate = ["-C", "opt-level=3", "-Cprofile-generate=/tmp/x"];
    let llvm = made_by();
    let cases = [
        Case("release", llvm, "rustc", &release, &[], true),
        Case(
            "release, newer LLVM",
            llvm + 1,
            "rustc",
            &release,
            &[],
            true,
        ),
        Case(
            "release, older LLVM",
            llvm - 1,
            "rustc",
            &release,
            &[],
            false,
        ),
        Case("dev build", llvm, "rustc", &dev, &[], false),
        Case(
            "turned off",
            llvm,
            "rustc",
            &release,
            &[("TETHER_PGO", "off")],
            false,
        ),
        Case(
            "turned on",
            llvm,
            "rustc",
            &release,
            &[("TETHER_PGO", "on")],
            true,
        ),
        Case("instrumented build", llvm, "rustc", &generate, &[], false),
        Case(
            "another driver",
            llvm,
            "clippy-driver",
            &release,
            &[],
            false,
        ),
    ];
    for Case(what, version, name, args, env, want) in cases {
        let dir = fake_compilers(version);
        let got = wrapped(&dir.join(name), args, env);
        let (given, added) = got.split_at(args.len());
        assert_eq!(given, args, "{what}: the arguments pass through in order");
        if want {
            assert_eq!(
                added,
                [profile.as_str(), "-Cllvm-args=-no-pgo-warn-mismatch"],
                "{what}"
            );
        } else {
            assert!(added.is_empty(), "{what}: {added:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
