//! The built binary: `check` exit codes and messages, SIGTERM behaviour.

mod support;

use std::time::Duration;

use support::*;

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("tether.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn secret_prints_a_new_256_bit_secret_that_a_config_accepts() {
    let run = || {
        let out = tether_bin().arg("secret").output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b) = (run(), run());
    let secret = a.trim_end();
    assert!(
        secret.len() >= 43,
        "{secret:?}: at least 256 bits as base64"
    );
    assert!(secret.bytes().all(|c| c.is_ascii_graphic()), "{secret:?}");
    assert_ne!(a, b, "each call makes a new secret");
    let dir = write_config("secret", "");
    let file = dir.with_file_name("secret");
    std::fs::write(&file, &a).unwrap();
    let p = write_config(
        "secret",
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[session]\nsecret_file = \"secret\"\n\
         [[backend]]\nname = \"app1\"\naddress = \"127.0.0.1:9001\"\n",
    );
    let out = tether_bin().args(["check", "-c"]).arg(&p).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_accepts_the_example_and_prints_the_effective_config() {
    let out = tether_bin()
        .args(["check", "-c"])
        .arg(repo().join("config.toml.example"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("idle_timeout"), "{stdout}");
    assert!(stdout.contains("[[backend]]"), "{stdout}");
}

#[test]
fn check_refuses_a_bad_file_with_exit_2_and_file_line_col() {
    let p = write_config(
        "typo",
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[session]\nidle_timout = \"5m\"\n\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
    );
    let out = tether_bin()
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:5:1: unknown field `idle_timout`", p.display());
    assert!(err.starts_with(&want), "got: {err}\nwant prefix: {want}");
    assert_eq!(err.trim_end().lines().count(), 1, "one message: {err}");
}

#[test]
fn run_refuses_a_bad_file_without_starting() {
    let p = write_config("nobackend", "[[listener]]\nbind = \"127.0.0.1:0\"\n");
    let out = tether_bin().args(["run", "-c"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backend"));
}

#[tokio::test]
async fn sighup_reloads_the_file_and_refuses_a_broken_one() {
    let a = Backend::start("app1").await;
    let b = Backend::start("app2").await;
    // One worker: the current-thread runtime serves, reloads and stops too.
    let admin_section = "\n[admin]\nbind = \"127.0.0.1:0\"\n[runtime]\nworker_threads = 1\n";
    let p = write_config("hup", &(config("", &[&a]) + admin_section));
    let (mut child, addrs, logs) = spawn_tether(&p, 2);
    let (proxy, adm) = (addrs[0], addrs[1]);
    assert_eq!(backends(adm).await.len(), 1);
    std::fs::write(&p, config("", &[&a, &b]) + admin_section).unwrap();
    signal(&child, "-HUP");
    let deadline = std::time::Instant::now() + HANG;
    while backends(adm).await.len() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not add the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(&p, "[[listener]]\nbind = 12\n").unwrap();
    signal(&child, "-HUP");
    let refused = loop {
        let line = logs
            .recv_timeout(HANG)
            .expect("a log line about the refused reload");
        if line.contains("reload refused") {
            break line;
        }
    };
    assert!(refused.contains("tether.toml:2:"), "{refused}");
    assert_eq!(backends(adm).await.len(), 2, "the old config stays");
    assert_eq!(plain_get(proxy, "/", &[]).await.status, 200);
    signal(&child, "-TERM");
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let a = Backend::start("app1").await;
    let p = write_config("term", &config("", &[&a]));
    let (mut child, addrs, _logs) = spawn_tether(&p, 1);
    let addr = addrs[0];
    let inflight = tokio::spawn(async move { plain_get(addr, "/slow/1000", &[]).await.status });
    eventually("the slow request reached the backend", || a.hits() == 1).await;
    signal(&child, "-TERM");
    assert_eq!(
        inflight.await.unwrap(),
        200,
        "the in-flight request finished"
    );
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn the_demo_serves_its_backends_over_tls_with_the_embedded_certificate() {
    let mut backends = vec![];
    for name in ["demo-app1", "demo-app2", "demo-app3"] {
        backends.push((name, tether::demo::spawn_backend(name).await.unwrap()));
    }
    // The demo's own config, on free ports instead of 8443/9901.
    let cfg = tether::demo::demo_config("sticky", 0, Some(0), &backends).unwrap();
    let running = tether::server::start(cfg, tether::clock::Clock::system())
        .await
        .unwrap();
    let addr = running.addrs()[0];
    let req = || {
        http::Request::get("/")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let r = send(addr, Proto::TlsH1, req()).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.starts_with("demo-app") && text.contains("session: new"),
        "{text}"
    );
    let r = send(addr, Proto::TlsH2, req()).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    let admin = running.admin_addr().expect("the demo has an admin API");
    assert_eq!(backends_of(admin).await, 3);
    running.shutdown().await;
}

/// With every slot of `max_connections` taken, new clients wait in the
/// listen backlog, which is as large: none of a burst has its SYN dropped
/// and waits a second for the retry. Run as its own process, so that its
/// descriptors are not the test's.
#[tokio::test]
async fn a_burst_past_max_connections_waits_in_the_backlog() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SLOTS: usize = 200;
    const BURST: usize = 190;
    let a = Backend::start("app1").await;
    let p = write_config(
        "backlog",
        &(config("", &[&a]) + &format!("\n[limits]\nmax_connections = {SLOTS}\n")),
    );
    let (_child, addrs, _logs) = spawn_tether(&p, 1);
    // Every slot held by a served, idle keep-alive connection.
    let held = futures_util::future::join_all((0..SLOTS).map(|_| async {
        let mut c = tokio::net::TcpStream::connect(addrs[0]).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0; 12];
        tokio::time::timeout(HANG, c.read_exact(&mut head))
            .await
            .expect("a held connection is served")
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        c
    }))
    .await;
    let burst = futures_util::future::join_all((0..BURST).map(|_| {
        tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addrs[0]),
        )
    }))
    .await;
    let queued = burst.iter().filter(|c| matches!(c, Ok(Ok(_)))).count();
    assert_eq!(queued, BURST, "connects left waiting for a SYN retry");
    drop(held);
}

async fn backends_of(admin: std::net::SocketAddr) -> usize {
    backends(admin).await.len()
}
