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

/// `llvm-profdata`, from the toolchain's `llvm-tools`; `None` after saying
/// the test skipped (a failure when `TETHER_REQUIRE_TOOLS=1`).
fn profdata() -> Option<PathBuf> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let lib = PathBuf::from(String::from_utf8(sysroot.stdout).unwrap().trim()).join("lib/rustlib");
    let found = std::fs::read_dir(lib).ok().and_then(|targets| {
        targets
            .flatten()
            .map(|t| t.path().join("bin/llvm-profdata"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("TETHER_REQUIRE_TOOLS").is_none(),
            "llvm-profdata is required (TETHER_REQUIRE_TOOLS=1): rustup component add llvm-tools"
        );
        eprintln!("skipped: llvm-profdata is not installed (rustup component add llvm-tools)");
    }
    found
}

/// An object file defining functions by these symbol names, as a build
/// of tether would.
fn object_with(dir: &Path, name: &str, symbols: &[String]) -> PathBuf {
    let mut c = String::new();
    for (i, s) in symbols.iter().enumerate() {
        c.push_str(&format!(
            "void f{i}(void) __asm__(\"{s}\");\nvoid f{i}(void) {{}}\n"
        ));
    }
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, c).unwrap();
    let obj = dir.join(format!("{name}.o"));
    let cc = Command::new("cc")
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    obj
}

/// `pgo/check.sh` tells a build whose symbols are the profile's from one
/// whose symbols carry another crate hash (a new dependency, say), which
/// would silently run without the profile.
#[test]
fn the_profile_check_tells_a_fitting_build_from_a_stale_one() {
    let Some(profdata) = profdata() else { return };
    let shown = Command::new(&profdata)
        .args(["show", "--all-functions"])
        .arg(repo().join("pgo/tether.profdata"))
        .output()
        .unwrap();
    let text = String::from_utf8(shown.stdout).unwrap();
    // tether's own functions, by the names a C compiler takes as they are.
    let names: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.strip_suffix(':'))
        .map(|n| n.rsplit(';').next().unwrap().to_string())
        .filter(|n| {
            n.contains("6tether") && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .take(40)
        .collect();
    assert!(
        names.len() >= 10,
        "tether functions in the profile: {names:?}"
    );
    let rehashed: Vec<String> = names
        .iter()
        .map(|n| {
            let cut = n.len() - "0123456789abcdefE".len();
            format!("{}0123456789abcdefE", &n[..cut])
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("tether-pgo-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |obj: &Path| {
        Command::new(repo().join("pgo/check.sh"))
            .arg(obj)
            .output()
            .unwrap()
    };
    let fits = check(&object_with(&dir, "fits", &names));
    let said = String::from_utf8_lossy(&fits.stderr).to_string();
    assert_eq!(fits.status.code(), Some(0), "{said}");
    assert!(said.contains("the profile fits"), "{said}");
    let stale = check(&object_with(&dir, "stale", &rehashed));
    let said = String::from_utf8_lossy(&stale.stderr).to_string();
    assert_eq!(stale.status.code(), Some(1), "{said}");
    assert!(said.contains("Retrain it (pgo/train.sh)"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}
