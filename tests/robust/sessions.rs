//! Sessions under pressure: floods of app keys, store outages, logout with
//! a full store, wall-clock steps, and IPv6 clients under `new_session_rate`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tether::clock::Clock;
use tokio::net::TcpStream;

use crate::support::*;

/// One keep-alive HTTP/1.1 connection, so a flood of a thousand requests
/// costs a thousand requests, not a thousand handshakes.
struct Conn {
    addr: SocketAddr,
    send: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn { addr, send: None }
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        tokio::time::timeout(HANG, self.get_inner(path, headers))
            .await
            .expect("request hung")
    }

    async fn get_inner(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        if !self.send.as_ref().is_some_and(|s| s.is_ready()) {
            let tcp = TcpStream::connect(self.addr).await.unwrap();
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(c);
            self.send = Some(s);
        }
        let mut b = Request::get(path).header("host", "localhost");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let s = self.send.as_mut().unwrap();
        let resp = s
            .send_request(b.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        Resp::read(resp).await
    }
}

async fn pool(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(Backend::start(&format!("app{i}")).await);
    }
    v
}

fn refs(pool: &[Backend]) -> Vec<&Backend> {
    pool.iter().collect()
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Logs in `n` users (the backend sets `JSESSIONID=<prefix>-i`), then sends
/// each one follow-up with that cookie; returns how many follow-ups reached
/// a backend other than the one that set the cookie.
async fn logins_moved(c: &mut Conn, prefix: &str, n: usize) -> usize {
    let mut moved = 0;
    for i in 0..n {
        let value = format!("{prefix}-{i}");
        let login = c.get(&format!("/set-cookie/JSESSIONID/{value}"), &[]).await;
        assert_eq!(login.status, 200);
        let next = c
            .get("/", &[("cookie", &format!("JSESSIONID={value}"))])
            .await;
        assert_eq!(next.status, 200);
        if next.backend() != login.backend() {
            moved += 1;
        }
    }
    moved
}

/// App-key floods: with `source = "app_cookie"` and a small store, a flood
/// of JSESSIONIDs no backend ever issued must not cost a fresh login its
/// backend: keys seen once never enter the store, and keys a client repeats
/// never keep out a pin learned from a backend's Set-Cookie.
#[tokio::test]
async fn app_key_floods_never_cost_a_learned_pin() {
    let pool = pool(4).await;
    let cfg = config(
        "source = \"app_cookie\"\napp_cookie = \"JSESSIONID\"",
        &refs(&pool),
    ) + "\n[store]\nmax_sessions = 100\n";
    let t = Tether::start(&cfg).await;
    let mut c = Conn::new(t.addr());

    // 1,000 keys, each presented once.
    for i in 0..1000 {
        let r = c
            .get("/", &[("cookie", &format!("JSESSIONID=flood-{i}"))])
            .await;
        assert_eq!(r.status, 200, "a flood key is still served");
    }
    let moved_once = logins_moved(&mut c, "login", 60).await;

    // 200 keys, each presented twice: they may take free room, never the
    // room a learned pin needs.
    for i in 0..200 {
        for _ in 0..2 {
            let r = c
                .get("/", &[("cookie", &format!("JSESSIONID=twice-{i}"))])
                .await;
            assert_eq!(r.status, 200);
        }
    }
    // 40 more logins: with the first 60, exactly the store's bound.
    let moved_twice = logins_moved(&mut c, "later", 40).await;
    println!(
        "flood figure: follow-ups moved after 1,000 one-off keys: {moved_once}/60; after 200 repeated keys: {moved_twice}/40"
    );
    assert_eq!(
        (moved_once, moved_twice),
        (0, 0),
        "a learned pin was lost to client-only keys"
    );
    t.stop().await;
}

/// With a client-chosen key (header source), a key seen once is routed but
/// not stored; seen again it is the same session on the same backend.
#[tokio::test]
async fn a_key_seen_twice_is_pinned_where_it_was_first_sent() {
    let pool = pool(4).await;
    let cfg = config(
        "source = \"header\"\nheader = \"X-Session-Id\"",
        &refs(&pool),
    ) + "\n[store]\nmax_sessions = 10\n";
    let t = Tether::start(&cfg).await;
    let mut c = Conn::new(t.addr());
    for i in 0..30 {
        let key = format!("user-{i}");
        let first = c.get("/", &[("x-session-id", &key)]).await;
        assert_eq!(first.state(), "new");
        let second = c.get("/", &[("x-session-id", &key)]).await;
        assert_eq!(
            (second.state(), second.backend()),
            ("continued".to_string(), first.backend()),
            "key {key}"
        );
    }
    t.stop().await;
}

// ---------------------------------------------------------------- outages

fn redis_store(url: &str, extra: &str) -> String {
    format!(
        "\n[store]\nkind = \"redis\"\nurl = \"{url}\"\ncommand_timeout = \"100ms\"\nconnect_timeout = \"200ms\"\n{extra}\n[admin]\nbind = \"127.0.0.1:0\"\n"
    )
}

/// Waits until the instance's store says it is up (or down).
async fn store_up(t: &Tether, up: bool) {
    let admin_addr = t.running().admin_addr().expect("admin listener");
    let want = format!("tether_store_up {}", u8::from(up));
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let (_, body) = admin(admin_addr, "GET", "/metrics", None).await;
        if body.lines().any(|l| l == want) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never saw {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Store outages, every source: while Redis is down, established sessions
/// keyed by a header or an app cookie keep their backend, get no 429 from
/// `new_session_rate` and no 5xx.
#[tokio::test]
async fn a_store_outage_keeps_app_key_sessions_on_their_backend() {
    let pool = pool(4).await;
    for source in ["header", "app_cookie"] {
        let Some(mut redis) = RedisServer::start().await else {
            return;
        };
        let session = match source {
            "header" => "source = \"header\"\nheader = \"X-Session-Id\"",
            _ => "source = \"app_cookie\"\napp_cookie = \"JSESSIONID\"",
        };
        let cfg = config(session, &refs(&pool))
            + "\n[limits]\nnew_session_rate = 5\n"
            + &redis_store(&redis.url(), "");
        let t = Tether::start(&cfg).await;
        store_up(&t, true).await;
        let mut c = Conn::new(t.addr());

        // Four sessions (within the burst of five), each established.
        let mut homes = Vec::new();
        for i in 0..4 {
            let value = format!("{source}-user-{i}");
            let home = if source == "header" {
                c.get("/", &[("x-session-id", &value)]).await.backend()
            } else {
                c.get(&format!("/set-cookie/JSESSIONID/{value}"), &[])
                    .await
                    .backend()
            };
            homes.push((value, home));
        }
        for (value, home) in &homes {
            let r = send_key(&mut c, source, value).await;
            assert_eq!(
                (r.status.as_u16(), r.backend()),
                (200, home.clone()),
                "{source}: established"
            );
        }

        redis.kill();
        store_up(&t, false).await;
        let (mut refused, mut moved, mut failed) = (0, 0, 0);
        for _ in 0..5 {
            for (value, home) in &homes {
                let r = send_key(&mut c, source, value).await;
                match r.status.as_u16() {
                    429 => refused += 1,
                    s if s >= 500 => failed += 1,
                    _ if r.backend() != *home => moved += 1,
                    _ => {}
                }
            }
        }
        assert_eq!(
            (refused, moved, failed),
            (0, 0, 0),
            "{source}: of 20 requests during the outage (429, moved, 5xx)"
        );
        t.stop().await;
    }
}

/// One request carrying `value` as the session key of `source`.
async fn send_key(c: &mut Conn, source: &str, value: &str) -> Resp {
    if source == "header" {
        c.get("/", &[("x-session-id", value)]).await
    } else {
        c.get("/", &[("cookie", &format!("JSESSIONID={value}"))])
            .await
    }
}

// ---------------------------------------------------------------- logout

/// Fills a store of `n` entries with established cookie sessions.
async fn fill(addr: SocketAddr, n: usize) -> Vec<Session> {
    let mut all = Vec::new();
    for _ in 0..n {
        let mut s = Session::new(addr);
        assert_eq!(s.get("/").await.state(), "new");
        assert_eq!(s.get("/").await.state(), "continued");
        all.push(s);
    }
    all
}

/// `end` and `regenerate` leave the old id unusable when the store is full:
/// the returning old cookie is `expired`, never `continued`.
async fn logout_takes(addr: SocketAddr) {
    for control in ["end", "regenerate"] {
        let mut s = Session::new(addr);
        assert_eq!(s.get("/").await.state(), "new");
        assert_eq!(s.get("/").await.state(), "continued");
        let old = s.cookie.clone().unwrap();
        let r = s.get(&format!("/control/{control}")).await;
        assert_eq!(r.status, 200);
        let replay = plain_get(addr, "/", &[("cookie", &format!("tether_sid={old}"))]).await;
        assert_eq!(replay.state(), "expired", "{control}: the old id came back");
        if control == "regenerate" {
            let next = s.get("/").await;
            assert_eq!(next.state(), "continued", "the new id works");
        }
    }
}

#[tokio::test]
async fn logout_takes_with_a_full_memory_store() {
    let pool = pool(3).await;
    let cfg = config("", &refs(&pool)) + "\n[store]\nmax_sessions = 10\n";
    let t = Tether::start(&cfg).await;
    let _held = fill(t.addr(), 10).await;
    logout_takes(t.addr()).await;
    t.stop().await;
}

#[tokio::test]
async fn logout_takes_with_a_full_local_view_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let pool = pool(3).await;
    let cfg = config("", &refs(&pool)) + &redis_store(&redis.url(), "max_sessions = 10\n");
    let t = Tether::start(&cfg).await;
    store_up(&t, true).await;
    let _held = fill(t.addr(), 10).await;
    redis.kill();
    store_up(&t, false).await;
    logout_takes(t.addr()).await;
    t.stop().await;
}

// ---------------------------------------------------------------- time

/// A cookie tether would have issued, with the test config's secret.
fn forge(backend: &str, issued_ms: u64, seen_ms: u64) -> String {
    use tether::session::cookie::{backend_tag, Claims, CookieCodec, SessionId};
    let codec = CookieCodec::new(SECRET.as_bytes(), &[]);
    codec.encode(&Claims {
        id: SessionId::random(),
        backend: backend_tag(backend),
        issued_ms,
        seen_ms,
        binding: 0,
    })
}

/// A cookie stamped in the future beyond the allowed skew is not trusted
/// (`new`, a fresh id); within the skew it is.
#[tokio::test]
async fn a_cookie_stamped_in_the_future_is_not_trusted() {
    let pool = pool(3).await;
    let t = Tether::start(&config("idle_timeout = \"1h\"", &refs(&pool))).await;
    let now = wall_ms();
    let near = forge("app2", now + 1_000, now + 1_000);
    let r = plain_get(t.addr(), "/", &[("cookie", &format!("tether_sid={near}"))]).await;
    assert_eq!(
        (r.state(), r.backend()),
        ("continued".into(), "app2".into()),
        "a second of skew is tolerated"
    );
    for ahead in [60_000, 3_600_000, 86_400_000] {
        let far = forge("app2", now + ahead, now + ahead);
        let r = plain_get(t.addr(), "/", &[("cookie", &format!("tether_sid={far}"))]).await;
        assert_eq!(r.state(), "new", "stamped {ahead} ms ahead");
        assert_ne!(r.cookie_value("tether_sid"), Some(far), "a fresh id");
    }
    // Issued now but seen in the future: the idle clock would never run.
    let seen_ahead = forge("app2", now, now + 3_600_000);
    let r = plain_get(
        t.addr(),
        "/",
        &[("cookie", &format!("tether_sid={seen_ahead}"))],
    )
    .await;
    assert_eq!(r.state(), "new");
    t.stop().await;
}

/// A wall-clock step (NTP, forwards or backwards) neither ends nor extends
/// a session: an hour forward keeps it `continued`, an hour back does not
/// keep it alive past its idle timeout.
#[tokio::test]
async fn a_wall_clock_step_neither_ends_nor_extends_a_session() {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;
    let pool = pool(3).await;
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let wall = move || wall_ms().saturating_add_signed(o.load(Ordering::SeqCst));
    // The real clock's kind (wall read once, then monotonic), on a wall
    // this test steps, and session time the test steps too.
    let clock = Clock::with_wall(wall);
    let t = Tether::start_on(
        &config("idle_timeout = \"10s\"", &refs(&pool)),
        clock.clone(),
    )
    .await;
    let mut s = Session::new(t.addr());
    let home = s.get("/").await.backend();
    assert_eq!(s.get("/").await.state(), "continued");

    offset.store(3_600_000, Ordering::SeqCst);
    let r = s.get("/").await;
    assert_eq!(
        (r.state(), r.backend()),
        ("continued".into(), home.clone()),
        "an hour's step forward ended the session"
    );
    offset.store(-3_600_000, Ordering::SeqCst);
    let r = s.get("/").await;
    assert_eq!((r.state(), r.backend()), ("continued".into(), home));
    // Idle for idle_timeout: over, however far back the wall went (a
    // second short is not: the slack is for the real time this clock
    // also counts).
    clock.advance_ms(9_000);
    assert_eq!(s.get("/").await.state(), "continued");
    clock.advance_ms(10_000);
    assert_eq!(s.get("/").await.state(), "expired");
    t.stop().await;
}

/// Two instances whose walls differ by a step (the second started after
/// its host's clock jumped an hour ahead): the second's cookies are stamped
/// an hour in the first's future, and the first does not trust them
/// (they would otherwise outlive their timeouts by that hour).
#[tokio::test]
async fn an_instance_an_hour_ahead_cannot_extend_sessions_on_another() {
    let pool = pool(3).await;
    let toml = config("idle_timeout = \"1h\"", &refs(&pool));
    let here = Tether::start(&toml).await;
    let ahead = Tether::start_on(&toml, Clock::with_wall(|| wall_ms() + 3_600_000)).await;
    let mut s = Session::new(ahead.addr());
    assert_eq!(s.get("/").await.state(), "new");
    assert_eq!(s.get("/").await.state(), "continued");
    s.addr = here.addr();
    let r = s.get("/").await;
    assert_eq!(
        r.state(),
        "new",
        "a cookie stamped an hour ahead was trusted"
    );
    // The fresh session is this instance's own, and continues here.
    assert_eq!(s.get("/").await.state(), "continued");
    here.stop().await;
    ahead.stop().await;
}
