//! SPEC section 12, "Redis Sentinel": with `[store] sentinels` and
//! `master_name`, tether asks the sentinels for the primary and follows a
//! failover by itself. Real processes on loopback: one `redis-server`
//! primary, one replica, three sentinels (`redis-server --sentinel`), two
//! in-process tethers and three backends.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const MASTER: &str = "mymaster";
/// Every Redis call is bounded by this in the tests.
const COMMAND_TIMEOUT_MS: u64 = 100;

// ---------------------------------------------------------------- processes

/// One `redis-server` process (a data node or a sentinel) on a loopback
/// port, killed by PID on drop.
struct Node {
    port: u16,
    child: Option<std::process::Child>,
}

impl Node {
    /// Kills it (SIGKILL, by PID) and reaps it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        query(self.port, args).await
    }

    async fn info(&self, section: &str, field: &str) -> Option<String> {
        info(self.port, section, field).await
    }
}

/// One command to the node on `port` over a fresh connection (no retries:
/// the node may be gone), its reply as `T`; `None` on any error.
async fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).ok()?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_millis(500))
        .set_response_timeout(Duration::from_millis(500));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async::<T>(&mut conn).await.ok()
}

/// A field of `INFO <section>` of the node on `port`.
async fn info(port: u16, section: &str, field: &str) -> Option<String> {
    let text: String = query(port, &["INFO", section]).await?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port the OS just handed out (redis refuses port 0; the tiny race with
/// other binders shows up as a node that never answers).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns `redis-server` with `args` on `port` and waits (bounded) until it
/// answers PING.
async fn spawn_node(port: u16, args: &[String]) -> Node {
    let child = std::process::Command::new("redis-server")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server spawns");
    let node = Node {
        port,
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.query::<String>(&["PING"]).await.as_deref() != Some("PONG") {
        assert!(
            Instant::now() < deadline,
            "redis-server {args:?} never answered on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node
}

/// A primary, its replica and three sentinels watching them as `mymaster`
/// (quorum 2, `down-after-milliseconds 500`, `failover-timeout 2000`). The
/// sentinels are told about each other and the replica in their configs, so
/// they need no discovery round (hello messages come every 2 s).
struct Cluster {
    primary: Node,
    replica: Node,
    sentinels: Vec<Node>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.sentinels {
            s.kill();
        }
        self.primary.kill();
        self.replica.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    /// Starts it, or `None` (after printing why) without `redis-server`; with
    /// `TETHER_REQUIRE_REDIS=1` (CI) its absence panics.
    async fn start() -> Option<Cluster> {
        if !redis_available() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "tether-sentinel-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // A replica writes the copy it syncs to its working directory; a
        // primary waits 5 s for more replicas before a diskless sync.
        let dir_arg = dir.display().to_string();
        let data = |port: u16| -> Vec<String> {
            ["--port", &port.to_string(), "--bind", "127.0.0.1"]
                .into_iter()
                .chain(["--save", "", "--appendonly", "no", "--dir", &dir_arg])
                .chain(["--repl-diskless-sync-delay", "0"])
                .map(String::from)
                .collect()
        };
        let (pp, rp) = (free_port(), free_port());
        let primary = spawn_node(pp, &data(pp)).await;
        let mut replica_args = data(rp);
        replica_args.extend(["--replicaof".into(), "127.0.0.1".into(), pp.to_string()]);
        let replica = spawn_node(rp, &replica_args).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while replica
            .info("replication", "master_link_status")
            .await
            .as_deref()
            != Some("up")
        {
            assert!(Instant::now() < deadline, "the replica never synced");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let ids: Vec<String> = (0..3)
            .map(|_| format!("{:040x}", rand::random::<u128>()))
            .collect();
        let mut sentinels = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let mut conf = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel myid {id}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {pp} 2\n\
                 sentinel down-after-milliseconds {MASTER} 500\n\
                 sentinel failover-timeout {MASTER} 2000\n\
                 sentinel known-replica {MASTER} 127.0.0.1 {rp}\n",
                dir = dir.display(),
                id = ids[i],
            );
            for (j, other) in ports.iter().enumerate() {
                if j != i {
                    conf.push_str(&format!(
                        "sentinel known-sentinel {MASTER} 127.0.0.1 {other} {}\n",
                        ids[j]
                    ));
                }
            }
            let path = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(&path, conf).unwrap();
            let args = [path.display().to_string(), "--sentinel".into()];
            sentinels.push(spawn_node(*port, &args).await);
        }
        let cluster = Cluster {
            primary,
            replica,
            sentinels,
            dir,
        };
        cluster.ready().await;
        Some(cluster)
    }

    /// Waits until every sentinel could fail over: it names the primary,
    /// reaches a quorum and sees the replica in sync.
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for s in &self.sentinels {
            loop {
                let quorum: Option<String> = s.query(&["SENTINEL", "CKQUORUM", MASTER]).await;
                let replicas: Option<Vec<HashMap<String, String>>> =
                    s.query(&["SENTINEL", "REPLICAS", MASTER]).await;
                let replica_ok = replicas.is_some_and(|r| {
                    r.iter().any(|r| {
                        r.get("port") == Some(&self.replica.port.to_string())
                            && r.get("flags").map(String::as_str) == Some("slave")
                            && r.get("master-link-status").map(String::as_str) == Some("ok")
                    })
                });
                if quorum.is_some_and(|q| q.starts_with("OK 3 usable")) && replica_ok {
                    break;
                }
                assert!(Instant::now() < deadline, "sentinel {} never ready", s.port);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// `[store]` naming the sentinels (not the primary).
    fn store_config(&self) -> String {
        let ports: Vec<u16> = self.sentinels.iter().map(|s| s.port).collect();
        store_config(&ports)
    }
}

/// `[store]` naming `sentinels` (ports on 127.0.0.1), in that order.
fn store_config(sentinels: &[u16]) -> String {
    let list: Vec<String> = sentinels
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!(
        "\n[store]\nkind = \"redis\"\nsentinels = [{}]\nmaster_name = \"{MASTER}\"\ncommand_timeout = \"{COMMAND_TIMEOUT_MS}ms\"\nconnect_timeout = \"200ms\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n",
        list.join(", ")
    )
}

// ---------------------------------------------------------------- tether

fn admin_of(t: &Tether) -> SocketAddr {
    t.running().admin_addr().expect("admin listener")
}

async fn metric(t: &Tether, line_start: &str) -> Option<String> {
    let (_, body) = admin(admin_of(t), "GET", "/metrics", None).await;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .map(str::to_string)
}

/// Waits until the instance's store says it is up.
async fn store_up(t: &Tether) {
    let deadline = tokio::time::Instant::now() + HANG;
    while metric(t, "tether_store_up ").await.as_deref() != Some("tether_store_up 1") {
        assert!(tokio::time::Instant::now() < deadline, "store never up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Begins a session on `t` and returns it once its cookie has come back
/// once (the return is what stores it).
async fn begun(t: &Tether) -> (Session, String) {
    let mut s = Session::new(t.addr());
    let r = s.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.state(), "new");
    let r = s.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.state(), "continued");
    (s, r.backend())
}

/// What `cookie` gets on `t`: its status and session state.
async fn state_of(t: &Tether, cookie: &str) -> (u16, String) {
    let r = plain_get(
        t.addr(),
        "/",
        &[("cookie", &format!("tether_sid={cookie}"))],
    )
    .await;
    let state = if r.status == 200 {
        r.state()
    } else {
        String::new()
    };
    (r.status.as_u16(), state)
}

/// Waits until `t` refuses `cookie` as over; fails if it still takes it a
/// second later. `end` and `regenerate` reach an instance that has the
/// session cached through Redis pub/sub, which can trail the response by a
/// few milliseconds on a busy machine (up to 15 ms seen here).
async fn refused(t: &Tether, cookie: &str) {
    let asked = Instant::now();
    loop {
        let (status, state) = state_of(t, cookie).await;
        assert_eq!(status, 200);
        if state == "expired" {
            return;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{} still takes an ended session a second later: {state}",
            t.addr()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a traffic loop saw.
#[derive(Default, Debug)]
struct Seen {
    requests: u64,
    /// (round, status) of every answer that was not 2xx.
    failed: Vec<(u64, u16)>,
    /// (round, pinned, answered by) of every answer from another backend.
    moved: Vec<(u64, String, String)>,
}

/// Sends one request per session per round, alternating the instances,
/// until told to stop; counts the rounds done in `rounds`.
async fn traffic(
    mut sessions: Vec<(Session, String)>,
    addrs: [SocketAddr; 2],
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
) -> (Vec<(Session, String)>, Seen) {
    let mut seen = Seen::default();
    let mut round = 0u64;
    while !stop.load(Ordering::Acquire) {
        for (i, (s, pinned)) in sessions.iter_mut().enumerate() {
            s.addr = addrs[(round as usize + i) % 2];
            let r = s.get("/").await;
            seen.requests += 1;
            if !r.status.is_success() {
                seen.failed.push((round, r.status.as_u16()));
            } else if r.backend() != *pinned {
                seen.moved.push((round, pinned.clone(), r.backend()));
            }
        }
        round += 1;
        rounds.store(round, Ordering::Release);
    }
    (sessions, seen)
}

/// Calls of `EVALSHA` the node on `port` has served (tether's every store
/// operation; a replica sees their effects, not the calls).
async fn evalsha_calls(port: u16) -> u64 {
    info(port, "commandstats", "cmdstat_evalsha")
        .await
        .and_then(|v| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The primary is killed under traffic through two instances: no request
/// fails or leaves its backend meanwhile (the outage rules), and once the
/// sentinels name the replica both instances use it by themselves, so `end`
/// and `regenerate` are shared again. Prints how long each step took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_through_sentinel_with_no_5xx_and_end_shared_again() {
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    let (b1, b2, b3) = (
        Backend::start("app1").await,
        Backend::start("app2").await,
        Backend::start("app3").await,
    );
    let toml = config("", &[&b1, &b2, &b3]) + &cluster.store_config();
    let a = Tether::start(&toml).await;
    let b = Tether::start(&toml).await;
    store_up(&a).await;
    store_up(&b).await;

    // Six sessions, made through both instances, stored on the primary and
    // copied to the replica before it goes.
    let mut sessions = Vec::new();
    for i in 0..6 {
        sessions.push(begun(if i % 2 == 0 { &a } else { &b }).await);
    }
    let deadline = Instant::now() + HANG;
    loop {
        let keys: Vec<String> = cluster
            .replica
            .query(&["KEYS", "tether:s:*"])
            .await
            .unwrap_or_default();
        if keys.len() == sessions.len() {
            break;
        }
        assert!(Instant::now() < deadline, "never replicated: {keys:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = evalsha_calls(cluster.replica.port).await;

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let looping = tokio::spawn(traffic(
        sessions,
        [a.addr(), b.addr()],
        stop.clone(),
        rounds.clone(),
    ));
    // A few rounds against the healthy pair first.
    eventually("traffic before the kill", || {
        rounds.load(Ordering::Acquire) >= 3
    })
    .await;

    let killed = Instant::now();
    cluster.primary.kill();

    // Timed from the kill: the replica made primary (the sentinels' part),
    // the first store call it serves, and the first `end` honoured across
    // the instances.
    let steps = tokio::spawn(failover_steps(
        cluster.replica.port,
        cluster.sentinels.iter().map(|s| s.port).collect(),
        before,
        killed,
    ));
    let mut probes = Probe::default();
    let deadline = Instant::now() + HANG;
    while !ends_across(&a, &b, &mut probes).await {
        assert!(Instant::now() < deadline, "`end` never shared again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end_shared = killed.elapsed();
    let steps = tokio::time::timeout(HANG, steps)
        .await
        .expect("no write on the new primary")
        .unwrap();
    store_up(&a).await;
    store_up(&b).await;
    // A few more rounds on the new primary.
    let now = rounds.load(Ordering::Acquire);
    eventually("traffic after recovery", || {
        rounds.load(Ordering::Acquire) >= now + 3
    })
    .await;
    stop.store(true, Ordering::Release);
    let (mut sessions, seen) = tokio::time::timeout(HANG, looping)
        .await
        .expect("traffic loop hung")
        .expect("traffic loop panicked");
    println!(
        "sentinel failover, from the kill: replica made primary {:?}, named by a sentinel {:?}, first store write on it {:?}, `end` shared again {end_shared:?}; {} requests, {} not 2xx, {} on another backend",
        steps.promoted,
        steps.announced,
        steps.first_write,
        seen.requests + probes.requests,
        seen.failed.len() + probes.failed.len(),
        seen.moved.len()
    );
    assert!(seen.requests > 0);
    assert_eq!(seen.failed, vec![], "answers that were not 2xx");
    assert_eq!(probes.failed, Vec::<u16>::new(), "probe answers not 2xx");
    assert_eq!(seen.moved, vec![], "sessions that left their backend");

    // The shared truth is back on the new primary: `end` on A is refused on
    // B (which has been serving that session all along)...
    let (s0, _) = &mut sessions[0];
    s0.addr = a.addr();
    let old = s0.cookie.clone().unwrap();
    let r = s0.get("/control/end").await;
    assert!(r.set_cookie("tether_sid").unwrap().contains("Max-Age=0"));
    refused(&b, &old).await;
    // ... and `regenerate` on B kills the old id on A, the new one continues
    // there on its backend.
    let (s1, pinned) = &mut sessions[1];
    s1.addr = b.addr();
    let old = s1.cookie.clone().unwrap();
    let r = s1.get("/control/regenerate").await;
    assert_eq!(r.backend(), *pinned);
    let new = s1.cookie.clone().unwrap();
    assert_ne!(new, old);
    refused(&a, &old).await;
    s1.addr = a.addr();
    let r = s1.get("/").await;
    assert_eq!(
        (r.state(), r.backend()),
        ("continued".into(), pinned.clone())
    );

    a.stop().await;
    b.stop().await;
}

/// When, since the kill, the failover reached each step.
#[derive(Debug)]
struct Steps {
    /// The replica answers `ROLE` as a primary.
    promoted: Duration,
    /// A sentinel names it as the primary.
    announced: Duration,
    /// It has served a store call (more `EVALSHA`s than before the kill).
    first_write: Duration,
}

/// Polls the replica on `port` and the sentinels until the failover has
/// reached every step of [`Steps`].
async fn failover_steps(port: u16, sentinels: Vec<u16>, before: u64, since: Instant) -> Steps {
    let (mut promoted, mut announced) = (None, None);
    loop {
        if promoted.is_none() {
            let role: Option<Vec<redis::Value>> = query(port, &["ROLE"]).await;
            if role.and_then(|r| r.into_iter().next())
                == Some(redis::Value::BulkString(b"master".to_vec()))
            {
                promoted = Some(since.elapsed());
            }
        }
        if announced.is_none() {
            for s in &sentinels {
                let named: Option<(String, String)> =
                    query(*s, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]).await;
                if named.is_some_and(|(_, p)| p == port.to_string()) {
                    announced = Some(since.elapsed());
                    break;
                }
            }
        }
        if let (Some(promoted), Some(announced)) = (promoted, announced) {
            if evalsha_calls(port).await > before {
                return Steps {
                    promoted,
                    announced,
                    first_write: since.elapsed(),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Requests the `end` probes sent, and the statuses of those not 2xx.
#[derive(Default)]
struct Probe {
    requests: u64,
    failed: Vec<u16>,
}

impl Probe {
    fn saw(&mut self, status: u16) -> bool {
        self.requests += 1;
        let ok = (200..300).contains(&status);
        if !ok {
            self.failed.push(status);
        }
        ok
    }
}

/// Makes a session on `a`, ends it there, and tells whether `b` then refuses
/// its cookie: whether `end` is shared between the instances right now.
async fn ends_across(a: &Tether, b: &Tether, probe: &mut Probe) -> bool {
    let mut s = Session::new(a.addr());
    for _ in 0..2 {
        if !probe.saw(s.get("/").await.status.as_u16()) {
            return false;
        }
    }
    let Some(cookie) = s.cookie.clone() else {
        return false;
    };
    if !probe.saw(s.get("/control/end").await.status.as_u16()) {
        return false;
    }
    let (status, state) = state_of(b, &cookie).await;
    probe.saw(status) && state == "expired"
}

/// An operator's switchover (`SENTINEL FAILOVER`): the replica is made
/// primary while the old primary keeps running, still a primary itself
/// until the sentinels get round to demoting it (seconds later). Both
/// instances move to the new one as soon as the sentinels announce it:
/// writes land there, not on the old one, and `end` is shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_moves_both_instances_to_the_new_primary_at_once() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (b1, b2) = (Backend::start("app1").await, Backend::start("app2").await);
    let toml = config("", &[&b1, &b2]) + &cluster.store_config();
    let a = Tether::start(&toml).await;
    let b = Tether::start(&toml).await;
    store_up(&a).await;
    store_up(&b).await;
    let (mut s, pinned) = begun(&a).await;

    let answer: Option<String> = cluster.sentinels[0]
        .query(&["SENTINEL", "FAILOVER", MASTER])
        .await;
    assert_eq!(answer.as_deref(), Some("OK"));
    // Announced: every sentinel names the replica.
    let deadline = Instant::now() + HANG;
    for sentinel in &cluster.sentinels {
        loop {
            let named: Option<(String, String)> = sentinel
                .query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])
                .await;
            if named.is_some_and(|(_, p)| p == cluster.replica.port.to_string()) {
                break;
            }
            assert!(Instant::now() < deadline, "the switch was never announced");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let announced = Instant::now();

    // Moved: a round of sessions made and ended on both instances, each
    // seen by the other, all on the new primary and none on the old one.
    // The old primary answers as a primary until it is demoted, several
    // seconds on: only the announcement can move the instances this soon.
    let mut probes = Probe::default();
    loop {
        let old = evalsha_calls(cluster.primary.port).await;
        let new = evalsha_calls(cluster.replica.port).await;
        let shared =
            ends_across(&a, &b, &mut probes).await && ends_across(&b, &a, &mut probes).await;
        if shared
            && evalsha_calls(cluster.primary.port).await == old
            && evalsha_calls(cluster.replica.port).await > new
        {
            break;
        }
        assert!(
            announced.elapsed() < Duration::from_secs(2),
            "still on the old primary 2 s after the switch was announced"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "sentinel switchover: on the new primary, `end` shared, {:?} after the sentinels announced it",
        announced.elapsed()
    );
    store_up(&a).await;
    store_up(&b).await;
    assert_eq!(probes.failed, Vec::<u16>::new(), "answers not 2xx");

    // Moved for good: a stretch of traffic on both adds no store error,
    // and every store call it makes goes to the new primary.
    let before = (
        metric(&a, "tether_store_errors_total ").await,
        metric(&b, "tether_store_errors_total ").await,
        evalsha_calls(cluster.replica.port).await,
        evalsha_calls(cluster.primary.port).await,
    );
    for i in 0..20 {
        s.addr = if i % 2 == 0 { a.addr() } else { b.addr() };
        let r = s.get("/").await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, pinned.clone()));
    }
    let (mut fresh, _) = begun(&b).await;
    fresh.addr = a.addr();
    assert_eq!(fresh.get("/").await.state(), "continued");
    let after = (
        metric(&a, "tether_store_errors_total ").await,
        metric(&b, "tether_store_errors_total ").await,
        evalsha_calls(cluster.replica.port).await,
        evalsha_calls(cluster.primary.port).await,
    );
    assert_eq!((&after.0, &after.1), (&before.0, &before.1), "store errors");
    assert!(after.2 > before.2, "the new primary served nothing");
    assert_eq!(after.3, before.3, "the old primary still served");

    // And the session made before the switch ends everywhere.
    let old = s.cookie.clone().unwrap();
    s.addr = b.addr();
    s.get("/control/end").await;
    refused(&a, &old).await;
    a.stop().await;
    b.stop().await;
}

/// The sentinels are asked in turn: one that refuses connections and one
/// that is no sentinel at all (a data node, which refuses `SENTINEL`) are
/// passed over, and the store comes up on the primary.
#[tokio::test]
async fn a_dead_or_wrong_sentinel_is_passed_over() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let b1 = Backend::start("app1").await;
    let mut ports = vec![free_port(), cluster.replica.port];
    ports.extend(cluster.sentinels.iter().map(|s| s.port));
    let a = Tether::start(&(config("", &[&b1]) + &store_config(&ports))).await;
    store_up(&a).await;
    let before = evalsha_calls(cluster.primary.port).await;
    let (mut s, _) = begun(&a).await;
    s.get("/control/end").await;
    assert!(evalsha_calls(cluster.primary.port).await > before);
    a.stop().await;
}
