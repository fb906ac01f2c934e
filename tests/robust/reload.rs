//! Reload churn and `tether check`: backend names that come and go without
//! limit, reloads off the request runtime, and a Redis store without a secret.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

/// Fresh backend names each churning reload brings: six such reloads used to
/// exhaust the ids one process could ever hand out.
const PODS: usize = 800;

/// A config with the `keep` backends (tether name, test backend) and `pods`
/// names `pod-{generation}-{i}`, all at `pods_at`. Health probes are slowed to
/// once an hour: the test is about names, not probes.
fn churn_config(
    keep: &[(&str, &Backend)],
    generation: usize,
    pods: usize,
    pods_at: SocketAddr,
) -> tether::config::Config {
    let mut s = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[session]\nsecret = \"{SECRET}\"\n\n[health]\ninterval = \"1h\"\n\n[log]\naccess = false\n\n[admin]\nbind = \"127.0.0.1:0\"\n"
    );
    for (name, b) in keep {
        s.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddress = \"{}\"\n",
            b.addr
        ));
    }
    for i in 0..pods {
        s.push_str(&format!(
            "\n[[backend]]\nname = \"pod-{generation}-{i}\"\naddress = \"{pods_at}\"\n"
        ));
    }
    tether::config::from_str(&s, &repo().join("test.toml"), None)
        .unwrap_or_else(|e| panic!("churn config is invalid: {e}"))
}

/// Plain GETs without a cookie in a loop until stopped; counts what was
/// served and what was not.
struct Traffic {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), served.clone());
        let task = tokio::spawn(async move {
            let mut bad = vec![];
            while !s.load(Ordering::Relaxed) {
                let r = plain_get(addr, "/", &[]).await;
                if r.status == 200 {
                    n.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)));
                }
                // Pacing, so the churn is not drowned in requests.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            bad
        });
        Traffic { stop, served, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let bad = tokio::time::timeout(HANG, self.task)
            .await
            .expect("traffic loop hung")
            .expect("traffic loop panicked");
        assert!(bad.is_empty(), "requests failed during reloads: {bad:?}");
        self.served.load(Ordering::Relaxed)
    }
}

/// A new session that has been seen twice, so the store holds its pin.
async fn stored_session(addr: SocketAddr) -> (Session, String) {
    let mut s = Session::new(addr);
    let first = s.get("/").await;
    assert_eq!(first.status, 200);
    let second = s.get("/").await;
    assert_eq!(
        (second.status, second.state(), second.backend()),
        (
            http::StatusCode::OK,
            "continued".to_string(),
            first.backend()
        )
    );
    (s, first.backend())
}

/// SPEC 10 "Reloads": backends named and renamed without limit never crash
/// tether. Seven reloads each bring 800 names never seen before (and the last
/// brings back the first churn's names), with requests served throughout.
/// Sessions of names that stay keep their backend; a session whose backend
/// name is gone fails over and never continues on a new name that inherited
/// the old one's id; per-backend session counts of new names start at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_names_churn_without_limit_across_reloads() {
    let (a, b, pods) = (
        Backend::start("app-a").await,
        Backend::start("app-b").await,
        Backend::start("pods").await,
    );
    let keep = [("keep-a", &a), ("keep-b", &b)];
    let t = Tether::from_config(
        churn_config(&keep, 0, 0, pods.addr),
        tether::clock::Clock::system(),
    )
    .await;
    let addr = t.addr();
    let admin_addr = t.running().admin_addr().expect("admin listener");

    // Sessions of the names that stay, on their backends before any churn.
    let mut kept = vec![];
    for _ in 0..8 {
        kept.push(stored_session(addr).await);
    }
    let traffic = Traffic::start(addr);
    let mut orphans: Vec<Session> = vec![];
    let mut took = vec![];
    let mut on_pods_now = 0;
    for generation in 1..=7 {
        // The last reload brings back the names of the first churn.
        let names = if generation == 7 { 1 } else { generation };
        let next = churn_config(&keep, names, PODS, pods.addr);
        let started = Instant::now();
        t.running()
            .apply(next)
            .unwrap_or_else(|e| panic!("reload {generation} refused: {e}"));
        took.push(started.elapsed());

        for (s, home) in &mut kept {
            let r = s.get("/").await;
            assert_eq!(
                (r.status, r.state(), r.backend()),
                (http::StatusCode::OK, "continued".to_string(), home.clone()),
                "reload {generation}: a session of a name that stayed moved"
            );
        }
        // Sessions pinned to names this reload removed: never `continued`
        // (that would mean a new name took over the old one's sessions).
        let mut next_orphans = vec![];
        for mut s in orphans.drain(..) {
            let r = s.get("/").await;
            assert_eq!(
                (r.status, r.state()),
                (http::StatusCode::OK, "failover".to_string()),
                "reload {generation}: a session of a removed name"
            );
            match r.backend().as_str() {
                "pods" => next_orphans.push(s),
                home => kept.push((s, home.to_string())),
            }
        }
        // New sessions: most land on the pods; half of those are abandoned
        // (their records stay in the store, pinned to names about to go).
        // None on the first churn's names, which the last reload brings
        // back: a name that returns while a request in flight still holds
        // its old backend (some here take over a second) keeps its id and
        // the live sessions pinned to it, which then rightly count; once
        // nothing holds it, they are forgotten with its id. Which of the
        // two happens is timing.
        let abandon = generation != 1;
        let mut abandoned = 0;
        for i in 0..8 {
            let (s, home) = stored_session(addr).await;
            match home.as_str() {
                "pods" if abandon && i % 2 == 0 => abandoned += 1,
                "pods" => next_orphans.push(s),
                _ => kept.push((s, home)),
            }
        }
        on_pods_now = next_orphans.len() + abandoned;
        orphans = next_orphans;
    }
    let served = traffic.finish().await;
    assert!(served > 0, "no request was served during the reloads");

    // Counts: the pods of the last reload hold exactly this reload's pod
    // sessions, nothing left over from names that held their ids before.
    let listed = backends(admin_addr).await;
    assert_eq!(listed.len(), 2 + PODS);
    let count = |n: &str| listed.iter().find(|(name, _, _)| name == n).map(|b| b.2);
    let home_count = |h: &str| kept.iter().filter(|(_, home)| home == h).count() as u64;
    assert_eq!(count("keep-a"), Some(home_count("app-a")));
    assert_eq!(count("keep-b"), Some(home_count("app-b")));
    let on_pods: u64 = listed
        .iter()
        .filter(|(n, _, _)| n.starts_with("pod-"))
        .map(|b| b.2)
        .sum();
    assert_eq!(on_pods, on_pods_now as u64, "sessions counted on the pods");
    println!(
        "reload with {} backends took {:?} (each of {} reloads: {took:?}); {served} requests served meanwhile",
        2 + PODS,
        took.iter().min().copied().unwrap_or_default(),
        took.len()
    );
    t.stop().await;
}

// ---------------------------------------------------------------- the binary

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-robust-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` into the FIFO at `path` from another thread: the write
/// blocks until tether opens the FIFO to read it.
fn feed(path: &Path, text: String) -> std::thread::JoinHandle<()> {
    let path = path.to_path_buf();
    std::thread::spawn(move || std::fs::write(&path, text).expect("write the FIFO"))
}

/// SPEC 10 "Reloads": reading the file never stalls traffic. The config file
/// is a FIFO, so a SIGHUP reload waits on its read until the test writes it;
/// on `worker_threads = 1` (one current-thread runtime) requests and the
/// admin API must still be served meanwhile, and the reload then applies.
#[tokio::test]
async fn a_reload_waiting_on_its_file_does_not_pause_traffic() {
    let a = Backend::start("app1").await;
    let b = Backend::start("app2").await;
    let dir = temp_dir("fifo");
    let fifo = dir.join("tether.toml");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo");
    let tail = "\n[admin]\nbind = \"127.0.0.1:0\"\n[runtime]\nworker_threads = 1\n";
    let start = feed(&fifo, config("", &[&a]) + tail);
    let (child, addrs, logs) = spawn_tether(&fifo, 2);
    start.join().unwrap();
    let (proxy, adm) = (addrs[0], addrs[1]);
    assert_eq!(plain_get(proxy, "/", &[]).await.status, 200);

    signal(&child, "-HUP");
    loop {
        let line = logs.recv_timeout(HANG).expect("tether logs the SIGHUP");
        if line.contains("SIGHUP") {
            break;
        }
    }
    // The reload now waits for the FIFO's writer; traffic must not.
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(2), plain_get(proxy, "/", &[]))
            .await
            .expect("a request is served while the reload waits on its file");
        assert_eq!(r.status, 200);
    }
    let listed = tokio::time::timeout(Duration::from_secs(2), backends(adm))
        .await
        .expect("the admin API answers while the reload waits on its file");
    assert_eq!(listed.len(), 1, "nothing changed yet");

    let second = feed(&fifo, config("", &[&a, &b]) + tail);
    let deadline = Instant::now() + HANG;
    while backends(adm).await.len() != 2 {
        assert!(Instant::now() < deadline, "the reload never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    second.join().unwrap();
    assert_eq!(plain_get(proxy, "/", &[]).await.status, 200);
    signal(&child, "-TERM");
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Runs `tether <args>` to completion within a few seconds; a process still
/// running then (a `run` that started when it should have refused) fails.
fn run_briefly(args: &[&str], config: &Path, env_secret: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = tether_bin();
    cmd.args(args)
        .arg(config)
        .env_remove("TETHER_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(s) = env_secret {
        cmd.env("TETHER_SECRET", s);
    }
    let mut child = Proc(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "tether {args:?} kept running instead of refusing the config"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err)
}

/// SPEC 10 "`tether check`": a Redis store without a shared secret is
/// refused by `check` and `run` alike (exit 2), with the location of the
/// store kind and what to set; any of the three secret sources satisfies it.
#[test]
fn a_redis_store_needs_a_shared_secret() {
    let dir = temp_dir("redis-secret");
    let body = "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1/0\"\n\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n";
    let bare = dir.join("tether.toml");
    std::fs::write(&bare, body).unwrap();
    for args in [["check", "-c"], ["run", "-c"]] {
        let (code, err) = run_briefly(&args, &bare, None);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        let want = format!(
            "{}:5:8: [store] kind = \"redis\" needs a shared session secret",
            bare.display()
        );
        assert!(err.starts_with(&want), "{args:?}: got {err}\nwant {want}");
        for name in ["secret_file", "secret", "TETHER_SECRET"] {
            assert!(err.contains(name), "{args:?}: names {name}: {err}");
        }
        assert_eq!(err.trim_end().lines().count(), 1, "one message: {err}");
    }

    let (code, err) = run_briefly(&["check", "-c"], &bare, Some(SECRET));
    assert_eq!(code, Some(0), "TETHER_SECRET is a shared secret: {err}");
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let with_file = dir.join("with-file.toml");
    std::fs::write(
        &with_file,
        body.replace(
            "[store]",
            &format!(
                "[session]\nsecret_file = \"{}\"\n\n[store]",
                secret_file.display()
            ),
        ),
    )
    .unwrap();
    let (code, err) = run_briefly(&["check", "-c"], &with_file, None);
    assert_eq!(code, Some(0), "secret_file: {err}");
    let inline = dir.join("inline.toml");
    std::fs::write(
        &inline,
        body.replace(
            "[store]",
            &format!("[session]\nsecret = \"{SECRET}\"\n\n[store]"),
        ),
    )
    .unwrap();
    let (code, err) = run_briefly(&["check", "-c"], &inline, None);
    assert_eq!(code, Some(0), "secret: {err}");
}

// ---------------------------------------------------------------- new_session_rate

/// A config listening on every address, IPv4 and IPv6 (`[::]:0`), with
/// `new_session_rate = 1` (a burst of one new session per client).
fn dual_stack(b: &Backend) -> String {
    config("", &[b]).replace("127.0.0.1:0", "[::]:0") + "\n[limits]\nnew_session_rate = 1\n"
}

/// SPEC 10 "`new_session_rate`": on a dual-stack listener IPv4 clients arrive
/// as IPv4-mapped IPv6 peers; each IPv4 address still has its own bucket
/// (they must not share the bucket of one /64), and an IPv6 client has one.
#[tokio::test]
async fn new_session_rate_keeps_ipv4_clients_apart_on_a_dual_stack_listener() {
    let b = Backend::start("app1").await;
    let t = Tether::start(&dual_stack(&b)).await;
    let port = t.addr().port();
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    for from in ["127.0.0.1", "127.0.0.2"] {
        let ip: IpAddr = from.parse().unwrap();
        let first = plain_get_from(ip, v4, "/", &[]).await;
        assert_eq!(first.status, 200, "{from}: its first new session");
        let second = plain_get_from(ip, v4, "/", &[]).await;
        assert_eq!(second.status, 429, "{from}: over its own limit");
    }
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    assert_eq!(plain_get(v6, "/", &[]).await.status, 200, "::1 has its own");
    assert_eq!(plain_get(v6, "/", &[]).await.status, 429, "::1 is limited");
    t.stop().await;
}

/// Settings fixed at start are reported by a reload and kept, so what the
/// running config says is what runs: the connection cap (its semaphore is
/// sized once), the admin token and the log format.
#[tokio::test]
async fn a_reload_keeps_what_only_a_restart_can_change() {
    let b = Backend::start("app1").await;
    let token = std::env::temp_dir().join(format!("tether-token-{}", std::process::id()));
    std::fs::write(&token, "first-token").unwrap();
    let with = |cap: usize, tok: &str, format: &str| {
        std::fs::write(&token, tok).unwrap();
        let mut s = config("", &[&b]).replace("[log]\naccess = false\n", "");
        s.push_str(&format!(
            "\n[limits]\nmax_connections = {cap}\n\n[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\n[log]\naccess = false\nformat = \"{format}\"\n",
            token.display()
        ));
        s
    };
    let t = Tether::start(&with(2, "first-token", "text")).await;
    let next = tether::config::from_str(
        &with(100, "second-token", "json"),
        &repo().join("test.toml"),
        None,
    )
    .unwrap();
    t.running().apply(next).expect("the reload applies");
    let snap = t.running().shared().snapshot.load();
    let c = &snap.config;
    assert_eq!(
        c.limits.max_connections, 2,
        "the cap in force stays the one reported"
    );
    assert_eq!(
        c.admin.as_ref().and_then(|a| a.token.as_deref()),
        Some("first-token")
    );
    assert_eq!(c.log.format, tether::config::LogFormat::Text);
    drop(snap);
    let _ = std::fs::remove_file(&token);
    t.stop().await;
}
