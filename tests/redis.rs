//! SPEC section 7: many instances, one Redis. Two tethers A and B share a
//! secret, the backend list and one real `redis-server`; sessions mean the
//! same on both, and a Redis outage never turns into 5xx.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

/// Every Redis call is bounded by this in the tests.
const COMMAND_TIMEOUT_MS: u64 = 100;

fn redis_config(url: &str, session: &str, backends: &[&Backend]) -> String {
    let mut c = config(session, backends);
    c.push_str(&format!(
        "\n[store]\nkind = \"redis\"\nurl = \"{url}\"\ncommand_timeout = \"{COMMAND_TIMEOUT_MS}ms\"\nconnect_timeout = \"200ms\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n"
    ));
    c
}

/// Two instances on one Redis.
async fn pair(redis: &RedisServer, session: &str, backends: &[&Backend]) -> (Tether, Tether) {
    let toml = redis_config(&redis.url(), session, backends);
    (Tether::start(&toml).await, Tether::start(&toml).await)
}

fn admin_of(t: &Tether) -> SocketAddr {
    t.running().admin_addr().expect("admin listener")
}

async fn metric(t: &Tether, line_start: &str) -> Option<String> {
    let (_, body) = admin(admin_of(t), "GET", "/metrics", None).await;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .map(str::to_string)
}

/// Waits until the instance's store says it is up (or down).
async fn store_up(t: &Tether, up: bool) {
    let want = format!("tether_store_up {}", u8::from(up));
    let deadline = tokio::time::Instant::now() + HANG;
    while metric(t, "tether_store_up ").await.as_deref() != Some(want.as_str()) {
        assert!(tokio::time::Instant::now() < deadline, "never saw {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Session keys Redis holds now.
async fn stored_sessions(redis: &RedisServer) -> usize {
    let r = redis.command(&["KEYS", "tether:s:*"]).await.unwrap();
    r.lines()
        .next()
        .and_then(|l| l.strip_prefix('*'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Begins a session on `t` and returns it once its cookie has come back
/// once (the return is what stores it).
async fn begun(t: &Tether) -> (Session, String) {
    let mut s = Session::new(t.addr());
    let r = s.get("/").await;
    assert_eq!(r.state(), "new");
    let r = s.get("/").await;
    assert_eq!(r.state(), "continued");
    (s, r.backend())
}

#[tokio::test]
async fn a_session_made_on_a_continues_on_b_on_the_same_backend() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (b1, b2, b3) = (
        Backend::start("app1").await,
        Backend::start("app2").await,
        Backend::start("app3").await,
    );
    let (a, b) = pair(&redis, "", &[&b1, &b2, &b3]).await;
    store_up(&a, true).await;

    let (mut s, pinned) = begun(&a).await;
    // A wrote the session to Redis behind the response.
    let deadline = tokio::time::Instant::now() + HANG;
    while stored_sessions(&redis).await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.addr = b.addr();
    for _ in 0..3 {
        let r = s.get("/").await;
        assert_eq!(
            (r.state(), r.backend()),
            ("continued".into(), pinned.clone())
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn activity_on_b_keeps_the_session_alive_past_a_idle_window() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (b1, b2) = (Backend::start("app1").await, Backend::start("app2").await);
    // One clock for both instances, stepped: 10 s of session time pass in
    // no real time (Redis's own expiry, in real time, never comes first).
    let clock = manual_clock();
    let toml = redis_config(&redis.url(), "idle_timeout = \"10s\"", &[&b1, &b2]);
    let a = Tether::start_on(&toml, clock.clone()).await;
    let b = Tether::start_on(&toml, clock.clone()).await;
    let (mut s, pinned) = begun(&a).await;
    seen_in_redis(&redis, clock.now_ms()).await;

    // 12 s of requests on B, one every 3 s: A sees none of them.
    s.addr = b.addr();
    for _ in 0..4 {
        clock.advance_ms(3_000);
        let r = s.get("/").await;
        assert_eq!(
            (r.state(), r.backend()),
            ("continued".into(), pinned.clone())
        );
    }
    seen_in_redis(&redis, clock.now_ms()).await;
    // A's own view went idle long ago, and so did every touch before B's
    // last; Redis says the session is alive.
    clock.advance_ms(3_000);
    s.addr = a.addr();
    let r = s.get("/").await;
    assert_eq!((r.state(), r.backend()), ("continued".into(), pinned));

    // And idleness is still enforced, to the millisecond, with no request
    // anywhere: one short of idle_timeout is alive, idle_timeout is over.
    clock.advance_ms(9_999);
    s.addr = b.addr();
    assert_eq!(s.get("/").await.state(), "continued");
    clock.advance_ms(10_000);
    assert_eq!(s.get("/").await.state(), "expired");
    a.stop().await;
    b.stop().await;
}

/// Waits until Redis's record of the one session it holds was last seen
/// at `ms` (writes go to Redis behind the response).
async fn seen_in_redis(redis: &RedisServer, ms: u64) {
    async fn seen(redis: &RedisServer) -> Option<u64> {
        let keys = redis.command(&["KEYS", "tether:s:*"]).await?;
        let key = keys.lines().find(|l| l.starts_with("tether:s:"))?;
        let value = redis.command(&["GET", key]).await?;
        let record = value.lines().find(|l| l.contains('|'))?;
        record.split('|').nth(1)?.parse().ok()
    }
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let now = seen(redis).await;
        if now == Some(ms) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never saw the session at {ms}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn end_on_a_ends_it_on_b_at_once() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (b1, b2) = (Backend::start("app1").await, Backend::start("app2").await);
    let (a, b) = pair(&redis, "", &[&b1, &b2]).await;
    let (mut s, _) = begun(&a).await;
    // B has verified (and cached) the session.
    s.addr = b.addr();
    assert_eq!(s.get("/").await.state(), "continued");
    let old = s.cookie.clone().unwrap();

    s.addr = a.addr();
    let r = s.get("/control/end").await;
    assert!(r.set_cookie("tether_sid").unwrap().contains("Max-Age=0"));

    let cookie = format!("tether_sid={old}");
    for t in [&b, &a] {
        let r = plain_get(t.addr(), "/", &[("cookie", &cookie)]).await;
        assert_eq!(r.state(), "expired", "on {}", t.addr());
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn regenerate_on_b_kills_the_old_id_on_a() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (b1, b2) = (Backend::start("app1").await, Backend::start("app2").await);
    let (a, b) = pair(&redis, "", &[&b1, &b2]).await;
    let (mut s, pinned) = begun(&a).await;
    let old = s.cookie.clone().unwrap();

    s.addr = b.addr();
    let r = s.get("/control/regenerate").await;
    assert_eq!(r.backend(), pinned);
    let new = s.cookie.clone().unwrap();
    assert_ne!(new, old);

    let r = plain_get(a.addr(), "/", &[("cookie", &format!("tether_sid={old}"))]).await;
    assert_eq!(r.state(), "expired");
    s.addr = a.addr();
    let r = s.get("/").await;
    assert_eq!((r.state(), r.backend()), ("continued".into(), pinned));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_failover_on_a_is_seen_by_b() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (b1, b2, b3) = (
        Backend::start("app1").await,
        Backend::start("app2").await,
        Backend::start("app3").await,
    );
    let (a, b) = pair(&redis, "", &[&b1, &b2, &b3]).await;
    let (mut s, pinned) = begun(&a).await;
    let old_cookie = s.cookie.clone().unwrap();
    s.addr = b.addr();
    assert_eq!(s.get("/").await.state(), "continued");

    // Only A takes the pinned backend out.
    let (st, body) = admin(
        admin_of(&a),
        "POST",
        &format!("/api/backends/{pinned}/disable"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    s.addr = a.addr();
    let r = s.get("/").await;
    assert_eq!(r.state(), "failover");
    let moved = r.backend();
    assert_ne!(moved, pinned);

    // B still thinks the old backend is fine, but the session moved: B
    // follows the store, even for the old cookie that names the old backend.
    for cookie in [s.cookie.clone().unwrap(), old_cookie] {
        let r = plain_get(
            b.addr(),
            "/",
            &[("cookie", &format!("tether_sid={cookie}"))],
        )
        .await;
        assert_eq!(
            (r.state(), r.backend()),
            ("continued".into(), moved.clone())
        );
    }
    a.stop().await;
    b.stop().await;
}

/// One request per session, alternating instances: status < 500, bounded by
/// the command timeout plus a margin for a debug build on a shared machine,
/// and always on the session's backend.
async fn traffic(sessions: &mut [(Session, String)], a: &Tether, b: &Tether, round: usize) {
    let bound = Duration::from_millis(COMMAND_TIMEOUT_MS + 900);
    for (i, (s, pinned)) in sessions.iter_mut().enumerate() {
        s.addr = if (round + i) % 2 == 0 {
            a.addr()
        } else {
            b.addr()
        };
        let path = if i == 3 && round % 5 == 4 {
            "/control/regenerate"
        } else {
            "/"
        };
        let took = Instant::now();
        let r = s.get(path).await;
        assert!(r.status.as_u16() < 500, "round {round}: {}", r.status);
        assert!(
            took.elapsed() < bound,
            "round {round}: took {:?}",
            took.elapsed()
        );
        assert_eq!(&r.backend(), pinned, "round {round}");
    }
}

#[tokio::test]
async fn redis_killed_mid_traffic_gives_no_5xx_and_no_hang_then_recovers() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let (b1, b2) = (Backend::start("app1").await, Backend::start("app2").await);
    let (a, b) = pair(&redis, "", &[&b1, &b2]).await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(begun(&a).await);
    }
    for round in 0..10 {
        traffic(&mut sessions, &a, &b, round).await;
    }
    redis.kill();
    for round in 10..40 {
        traffic(&mut sessions, &a, &b, round).await;
    }
    store_up(&a, false).await;
    store_up(&b, false).await;
    let errors = metric(&a, "tether_store_errors_total ").await.unwrap();
    assert_ne!(errors, "tether_store_errors_total 0");

    // Back on the same port: both instances find it by themselves, and
    // sessions are stored and shared again.
    assert!(redis.spawn().await, "redis restarts");
    store_up(&a, true).await;
    store_up(&b, true).await;
    for round in 40..45 {
        traffic(&mut sessions, &a, &b, round).await;
    }
    let (mut s, _) = begun(&a).await;
    s.addr = b.addr();
    assert_eq!(s.get("/").await.state(), "continued");
    let old = s.cookie.clone().unwrap();
    s.addr = a.addr();
    s.get("/control/end").await;
    let r = plain_get(b.addr(), "/", &[("cookie", &format!("tether_sid={old}"))]).await;
    assert_eq!(r.state(), "expired");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn starts_without_redis_and_connects_when_it_appears() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    redis.kill();
    let b1 = Backend::start("app1").await;
    let toml = redis_config(&redis.url(), "", &[&b1]);
    let started = Instant::now();
    let a = Tether::start(&toml).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "start does not wait for Redis"
    );
    store_up(&a, false).await;
    let mut s = Session::new(a.addr());
    assert_eq!(s.get("/").await.state(), "new");
    assert_eq!(s.get("/").await.state(), "continued");

    assert!(redis.spawn().await, "redis starts");
    store_up(&a, true).await;
    let (_s, _) = begun(&a).await;
    let deadline = tokio::time::Instant::now() + HANG;
    while stored_sessions(&redis).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.stop().await;
}

/// Store calls name the script by its digest (`EVALSHA`), and a Redis that
/// has forgotten it (`SCRIPT FLUSH`, a restart between two pings) is given it
/// again: no write is lost and the store never reads as down.
#[tokio::test]
async fn calls_are_evalsha_and_a_forgotten_script_is_loaded_again() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (b1, b2) = (Backend::start("app1").await, Backend::start("app2").await);
    let (a, b) = pair(&redis, "", &[&b1, &b2]).await;
    store_up(&a, true).await;
    store_up(&b, true).await;
    let (mut s, _) = begun(&a).await;
    s.addr = b.addr();
    assert_eq!(s.get("/").await.state(), "continued");
    let old = s.cookie.clone().unwrap();

    // A pipelined write (B ends it; B has it cached, so nothing is read first).
    let flushed = redis.command(&["SCRIPT", "FLUSH"]).await.unwrap();
    assert!(flushed.starts_with("+OK"), "{flushed}");
    s.get("/control/end").await;
    let r = plain_get(a.addr(), "/", &[("cookie", &format!("tether_sid={old}"))]).await;
    assert_eq!(r.state(), "expired");

    // A read (B has never seen this session).
    redis.command(&["SCRIPT", "FLUSH"]).await.unwrap();
    let (mut s, pinned) = begun(&a).await;
    s.addr = b.addr();
    let r = s.get("/").await;
    assert_eq!((r.state(), r.backend()), ("continued".into(), pinned));

    for t in [&a, &b] {
        let errors = metric(t, "tether_store_errors_total ").await;
        assert_eq!(errors.as_deref(), Some("tether_store_errors_total 0"));
        let up = metric(t, "tether_store_up ").await;
        assert_eq!(up.as_deref(), Some("tether_store_up 1"));
    }
    let stats = redis.command(&["INFO", "commandstats"]).await.unwrap();
    assert!(stats.contains("cmdstat_evalsha:"), "{stats}");
    assert!(!stats.contains("cmdstat_eval:"), "{stats}");
    a.stop().await;
    b.stop().await;
}

/// The live total is the sum of the per-backend counts at every moment:
/// when a reload's scrub forgets a backend id, its sessions leave the total
/// at once, not at the next background count. (Bounded load takes its mean
/// from this total, less the backends not taking new sessions.)
#[tokio::test]
async fn a_forgotten_backend_leaves_the_live_total_at_once() {
    use std::sync::Arc;
    use tether::store::{BackendId, BackendSet, Record, RedisSettings, RedisStore, SessionKey};

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let settings = RedisSettings {
        url: redis.url(),
        sentinel: None,
        key_prefix: "tether:".into(),
        connect_timeout: Duration::from_millis(200),
        command_timeout: Duration::from_millis(COMMAND_TIMEOUT_MS),
        max_cached: 1000,
        // Counted every 500 ms (a quarter of the idle timeout).
        idle: Duration::from_secs(2),
        absolute: Duration::from_secs(3600),
    };
    let metrics = Arc::new(tether::metrics::Metrics::new());
    let store = RedisStore::start(settings, metrics, wall_ms).await.unwrap();
    let (a, b) = (BackendId(1), BackendId(2));
    store.name_backends([(a, "a"), (b, "b")]);
    let now = wall_ms();
    for (n, backend) in [a, a, a, b, b].into_iter().enumerate() {
        let rec = Record {
            backend,
            created_ms: now,
            seen_ms: now,
        };
        let _ = store.insert(SessionKey(n as u128 + 1), rec).await;
    }
    let deadline = Instant::now() + HANG;
    while (store.live(), store.sessions_on(a)) != (5, 3) {
        assert!(Instant::now() < deadline, "never counted: {}", store.live());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.forget_backends(&[a]);
    assert_eq!(
        (store.live(), store.sessions_on(a), store.sessions_on(b)),
        (2, 0, 2)
    );
    let mut both = BackendSet::new();
    both.insert(a);
    both.insert(b);
    assert_eq!(store.sessions_among(&both), 2);
}
