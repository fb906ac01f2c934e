//! The status page as a browser shows it: headless Chromium renders the
//! admin page of a live tether with one and with 200 backends, and the page
//! of an empty pool, and the DOM it builds holds the charts, the table and
//! the events. Skipped without Chromium; `.ci/run` installs it and sets
//! `TETHER_REQUIRE_TOOLS=1`, so CI fails instead.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("TETHER_REQUIRE_TOOLS").is_none(),
            "chromium is required (TETHER_REQUIRE_TOOLS=1) but not on PATH"
        );
        eprintln!("skipped: chromium is not installed");
    }
    found
}

/// The DOM Chromium builds for `url`, and a screenshot of it in `png`.
/// (Blocking: run it off the runtime that serves the page.)
fn chrome(browser: &Path, url: &str, png: &Path) -> String {
    let run = |extra: &str| {
        let out = Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1100,1300",
                extra,
                url,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run("--dump-dom");
    run(&format!("--screenshot={}", png.display()));
    let png_len = std::fs::metadata(png).map(|m| m.len()).unwrap_or(0);
    assert!(png_len > 10_000, "a screenshot was drawn ({png_len} bytes)");
    dom
}

async fn render(browser: &Path, url: &str, png: &Path) -> String {
    let (browser, url, png) = (browser.to_path_buf(), url.to_string(), png.to_path_buf());
    tokio::task::spawn_blocking(move || chrome(&browser, &url, &png))
        .await
        .unwrap()
}

fn check(dom: &str, rows: usize) {
    assert_eq!(dom.matches("<svg").count(), 4, "four charts");
    assert_eq!(
        dom.matches("<td class=\"name\">").count(),
        rows,
        "one row per backend"
    );
    assert!(dom.contains("Recent events"), "the events section");
}

fn work_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-page-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_in_a_browser_with_one_and_200_backends() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = work_dir("live");
    let a = Backend::start("app1").await;
    let t = Tether::start(&(config("", &[&a]) + "\n[admin]\nbind = \"127.0.0.1:0\"\n")).await;
    let url = format!("http://{}/", t.running().admin_addr().unwrap());
    let dom = render(&browser, &url, &dir.join("one.png")).await;
    check(&dom, 1);
    assert!(
        dom.contains("tether started (1 backends)"),
        "the first event is there"
    );

    // 200 backends on ports nothing listens on: all down, all listed.
    let mut many = String::from(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[session]\nsecret = \"an integration test secret of 32+ bytes\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[log]\naccess = false\n",
    );
    for i in 0..200 {
        many.push_str(&format!(
            "\n[[backend]]\nname = \"b{i:03}\"\naddress = \"127.0.0.1:{}\"\n",
            1 + i
        ));
    }
    let t = Tether::start(&many).await;
    let url = format!("http://{}/", t.running().admin_addr().unwrap());
    let started = std::time::Instant::now();
    let (status, body) = admin(t.running().admin_addr().unwrap(), "GET", "/", None).await;
    eprintln!(
        "status page with 200 backends: {} bytes in {:?} (debug build)",
        body.len(),
        started.elapsed()
    );
    assert_eq!(status, 200);
    let dom = render(&browser, &url, &dir.join("many.png")).await;
    check(&dom, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_page_of_an_empty_pool_renders_in_a_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = work_dir("empty");
    let view = tether::admin::page::StatusView {
        version: "0.0.0",
        uptime_secs: 0,
        mode: "sticky",
        live_sessions: 0,
        store_kind: "memory",
        backends: Vec::new(),
        now_ms: 0,
        samples: Vec::new(),
        events: Vec::new(),
    };
    let html = dir.join("empty.html");
    std::fs::write(&html, tether::admin::page::render(&view)).unwrap();
    let dom = render(
        &browser,
        &format!("file://{}", html.display()),
        &dir.join("empty.png"),
    )
    .await;
    check(&dom, 0);
    assert!(dom.contains("No backends configured."));
    let _ = std::fs::remove_dir_all(&dir);
}
