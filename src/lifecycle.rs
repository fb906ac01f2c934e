//! When a client connection must end for saying nothing (SPEC section 10):
//! the deadline rule as a pure function ([`next`]), the activity record that
//! the connection's stream wrapper (`framing::Sniffed`) and its service
//! write ([`Activity`]), and the future that runs a hyper connection under
//! those deadlines and under graceful shutdown ([`drive`], [`Drain`]).
//! Deadlines inside a request (`client_body`, `response`) belong to the
//! request path; idle upgraded connections to `upgrade.rs`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::wake_flag::WakeFlag;

/// The two limits a client connection lives by (`[timeouts]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// No byte at all, or a request head begun and not ended, for this
    /// long: closed.
    pub client_header: Duration,
    /// Nothing open (HTTP/1.1: between requests; HTTP/2: no stream) for
    /// this long: asked to finish.
    pub keepalive: Duration,
}

impl Limits {
    /// The longest the watchdog sleeps without looking. Deadlines are checked
    /// lazily: activity only moves them, and nothing wakes the watchdog when
    /// it does. A phase that starts after a look has its deadline at least
    /// this far after that look, so none is missed; a quiet connection costs
    /// one timer wake per period, a busy one nothing per request.
    fn recheck(&self) -> Duration {
        if self.keepalive.is_zero() {
            self.client_header
        } else {
            self.client_header.min(self.keepalive)
        }
    }
}

/// What a connection is doing, as far as its deadlines care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No byte yet since the connection was accepted.
    Silent,
    /// A request head has begun and not ended (HTTP/1.x).
    Head,
    /// At least one request is open: its response body has not ended.
    Busy,
    /// Bytes came, and nothing is open now.
    Idle,
}

/// What the watchdog does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing is due: look again at this instant.
    Wait(Instant),
    /// Close the connection now: the client said nothing, or not a whole
    /// head, in time; there is nobody to say goodbye to.
    Close,
    /// Ask the connection to finish: an idle HTTP/1.1 connection closes, an
    /// HTTP/2 one sends GOAWAY.
    Finish,
}

/// `t + d`, capped decades away: durations in the config have no upper
/// bound, and adding an absurd one to an instant panics.
pub fn later(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);
    t.checked_add(d.min(FAR)).unwrap_or(t)
}

/// The deadline rule: given the phase, since when it holds, and now.
pub fn next(phase: Phase, since: Instant, now: Instant, limits: Limits) -> Next {
    let due = match phase {
        Phase::Silent | Phase::Head => Some((later(since, limits.client_header), Next::Close)),
        Phase::Idle => Some((later(since, limits.keepalive), Next::Finish)),
        Phase::Busy => None,
    };
    let look = later(now, limits.recheck());
    match due {
        Some((at, what)) if at <= now => what,
        Some((at, _)) => Next::Wait(at.min(look)),
        None => Next::Wait(look),
    }
}

/// Not set (an instant field of [`Activity`]).
const NEVER: u64 = u64::MAX;

/// What one client connection has been doing, written by its stream wrapper
/// (bytes, heads) and its service (requests open), read by [`drive`].
/// Instants are milliseconds after `opened`, in atomics: the writers run on
/// the connection's task and on response-body tasks (HTTP/2).
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    /// When the head being read began, or [`NEVER`].
    head: AtomicU64,
    /// When the connection last went idle (its first byte, or the end of
    /// its last open request), or [`NEVER`] while it is silent.
    idle: AtomicU64,
    /// Requests whose response body has not ended.
    open: AtomicUsize,
    /// Every byte read so far belongs to a whole request: no part of a
    /// head or a body waits to be read (HTTP/1.x; written by the stream
    /// wrapper).
    between: AtomicBool,
    /// Every byte written has been flushed to the socket.
    flushed: AtomicBool,
    /// The client asked for the connection to end after its answer
    /// (`Connection: close`, HTTP/1.0), or tether ends every connection so:
    /// the answer's last bytes may wait in the socket for the FIN.
    last: AtomicBool,
    /// Bytes wait in the socket for the FIN; pushed if the connection's
    /// task waits for anything first.
    held: AtomicBool,
}

impl Activity {
    /// A connection accepted at `opened` that has said nothing yet.
    pub fn new(opened: Instant) -> Activity {
        Activity {
            opened,
            head: AtomicU64::new(NEVER),
            idle: AtomicU64::new(NEVER),
            open: AtomicUsize::new(0),
            between: AtomicBool::new(true),
            flushed: AtomicBool::new(true),
            last: AtomicBool::new(false),
            held: AtomicBool::new(false),
        }
    }

    /// The connection ends after the answer now due (a request said so).
    pub fn answer_is_last(&self) {
        self.last.store(true, Ordering::Relaxed);
    }

    /// Whether the connection ends after the answer now due.
    pub fn last_answer(&self) -> bool {
        self.last.load(Ordering::Relaxed)
    }

    /// Bytes of the last answer wait in the socket for its FIN.
    pub fn hold(&self) {
        self.held.store(true, Ordering::Relaxed);
    }

    /// The held bytes left, with the FIN or because the socket closed.
    pub fn release(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    /// Whether bytes wait in the socket, forgetting them: the caller pushes
    /// them out.
    pub fn take_held(&self) -> bool {
        // Loaded first: nearly every call finds nothing held, and a plain
        // load costs less than a swap.
        self.held.load(Ordering::Relaxed) && self.held.swap(false, Ordering::Relaxed)
    }

    /// Whether the bytes read so far end at a request boundary.
    pub fn between_requests(&self, yes: bool) {
        self.between.store(yes, Ordering::Relaxed);
    }

    /// Bytes were handed to the socket; a flush is due.
    pub fn wrote(&self) {
        self.flushed.store(false, Ordering::Relaxed);
    }

    /// Everything written has been flushed.
    pub fn flushed(&self) {
        self.flushed.store(true, Ordering::Relaxed);
    }

    /// Nothing half read, nothing unflushed: an idle HTTP/1 connection in
    /// this state can be handed back from hyper and resumed later without
    /// losing a byte.
    pub fn settled(&self) -> bool {
        self.between.load(Ordering::Relaxed) && self.flushed.load(Ordering::Relaxed)
    }

    fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.opened)
            .as_millis()
            .try_into()
            .unwrap_or(NEVER - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        later(self.opened, Duration::from_millis(ms))
    }

    /// The first byte arrived (called once).
    pub fn heard(&self) {
        self.idle.store(self.now(), Ordering::Release);
    }

    /// A request head began and did not end within the same read.
    pub fn head_begun(&self) {
        self.head.store(self.now(), Ordering::Release);
    }

    /// The head being read ended (or is no longer followed).
    pub fn head_ended(&self) {
        self.head.store(NEVER, Ordering::Release);
    }

    /// A request is open until the returned guard drops (with its response
    /// body).
    pub fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// The phase now and since when it holds (`Busy` has no start).
    pub fn phase(&self) -> (Phase, Instant) {
        let idle = self.idle.load(Ordering::Acquire);
        if idle == NEVER {
            return (Phase::Silent, self.opened);
        }
        let head = self.head.load(Ordering::Acquire);
        if head != NEVER {
            return (Phase::Head, self.at(head));
        }
        if self.open.load(Ordering::Acquire) > 0 {
            return (Phase::Busy, self.opened);
        }
        (Phase::Idle, self.at(self.idle.load(Ordering::Acquire)))
    }
}

/// One open request of a connection (see [`Activity::open`]).
#[derive(Debug)]
pub struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        // The idle instant is written before the count falls, so a reader
        // that sees nothing open also sees when that began.
        self.0.idle.store(self.0.now(), Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request open until hyper is done with it
/// (HTTP/2: a stream is open until its response body ends).
#[derive(Debug)]
pub struct Counted<B> {
    body: B,
    _open: Open,
}

impl<B> Counted<B> {
    /// `body`, holding `open` until it is dropped.
    pub fn new(body: B, open: Open) -> Counted<B> {
        Counted { body, _open: open }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How a driven connection ended, when it did not end by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// hyper finished it (the client closed, an error, an upgrade, or a
    /// graceful finish completed).
    Done,
    /// Closed by a deadline in this phase.
    Expired(Phase),
    /// Idle and settled for `park` (see [`drive`]): the connection's
    /// caller takes the socket back from hyper and [`park`]s it.
    Parked,
}

/// When an idle connection may be parked: `park` after it went idle.
/// `None` while it is not idle.
pub fn park_at(phase: Phase, since: Instant, park: Duration) -> Option<Instant> {
    (phase == Phase::Idle).then(|| later(since, park))
}

/// Runs `conn` (a hyper server connection; `finish` is its
/// `graceful_shutdown`) under `limits`, asks it to finish when `drain`
/// flips, and closes it when a deadline passes. A connection asked to finish
/// (by a deadline) that is still open `client_header` later is closed: an
/// HTTP/2 client that never answers the GOAWAY's PING would otherwise keep
/// it.
///
/// With `park` set (HTTP/1), a connection found idle that long, with
/// nothing half read or unflushed ([`Activity::settled`]), ends as
/// [`Ended::Parked`] with `conn` still open: hyper holds buffers of some
/// 30 KiB per connection that an idle one does not need. The watchdog then
/// looks every `park`, so a connection is parked between `park` and twice
/// that after its last response. Such a connection arms its watchdog only
/// once it is first found not busy (see the body).
///
/// # Errors
/// What `conn` ends with.
pub async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    mut finish: impl FnMut(Pin<&mut C>),
    activity: &Activity,
    limits: Limits,
    drain: &mut watch::Receiver<bool>,
    park: Option<Duration>,
) -> Result<Ended, E>
where
    C: Future<Output = Result<(), E>>,
{
    // HTTP/1 (`park` set): while a request is open no deadline is due, and
    // a drain only needs to be seen before the response's head is written,
    // which happens in a poll of this task. So until the connection is
    // first found not busy, it takes neither a timer nor a place among the
    // drain signal's waiters (each under a lock), and looks at the signal
    // (one atomic load) before each poll: a connection that serves one
    // request and closes never registers either.
    let mut finished = false;
    if park.is_some() {
        let busy = std::future::poll_fn(|cx| {
            if drain.has_changed().unwrap_or(true) {
                return Poll::Ready(Event::Drain);
            }
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Conn(r));
            }
            if activity.phase().0 == Phase::Busy {
                return Poll::Pending;
            }
            Poll::Ready(Event::Deadline)
        })
        .await;
        match busy {
            Event::Conn(r) => return r.map(|()| Ended::Done),
            Event::Drain => {
                finish(conn.as_mut());
                finished = true;
            }
            // Not busy: the deadlines are looked at below.
            Event::Deadline => {}
        }
    }
    let now = Instant::now();
    let (phase, since) = activity.phase();
    let first = match next(phase, since, now, limits) {
        Next::Wait(at) => capped(park, now, at),
        _ => now,
    };
    let sleep = tokio::time::sleep_until(first);
    tokio::pin!(sleep);
    // The shutdown signal and the deadline are polled only when they woke
    // the task: most wake-ups are the connection's own.
    let mut side = WakeFlag::new();
    let mut drained = std::pin::pin!(drain.wait_for(|d| *d));
    let mut finishing_since: Option<Instant> = None;
    loop {
        let event = std::future::poll_fn(|cx| {
            // The connection first: bytes that arrived with a deadline are
            // read (and a request opened) before the deadline is judged.
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Conn(r));
            }
            if !side.due(cx.waker()) {
                return Poll::Pending;
            }
            let mut rare = Context::from_waker(side.waker());
            if !finished && drained.as_mut().poll(&mut rare).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            if sleep.as_mut().poll(&mut rare).is_ready() {
                return Poll::Ready(Event::Deadline);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Conn(r) => return r.map(|()| Ended::Done),
            Event::Drain => {
                finish(conn.as_mut());
                finished = true;
                // The deadline was not looked at in the poll that saw the
                // signal.
                side.poke();
            }
            Event::Deadline => {
                let wake = match look(activity, limits, park, finished, &mut finishing_since) {
                    Look::End(ended) => return Ok(ended),
                    Look::Wait(wake) => wake,
                    Look::Finish(wake) => {
                        if !finished {
                            finish(conn.as_mut());
                            finished = true;
                        }
                        wake
                    }
                };
                sleep.as_mut().reset(wake);
                // A timer is armed by a poll: poll it after a reset rather
                // than count on the reset keeping the waker it fired.
                side.poke();
            }
        }
    }
}

/// What woke [`drive`]'s loop.
enum Event<E> {
    Conn(Result<(), E>),
    Drain,
    Deadline,
}

/// What [`drive`]'s watchdog does when its timer fires.
enum Look {
    /// End the connection so.
    End(Ended),
    /// Ask hyper to finish (once), and look again then.
    Finish(Instant),
    /// Look again then.
    Wait(Instant),
}

/// The watchdog's look when its timer fires, from the connection's
/// activity: `finished` says hyper was asked to finish, `finishing_since`
/// since when the deadlines asked it (set here when they first do).
fn look(
    activity: &Activity,
    limits: Limits,
    park: Option<Duration>,
    finished: bool,
    finishing_since: &mut Option<Instant>,
) -> Look {
    let now = Instant::now();
    let (phase, since) = activity.phase();
    if let Some(at) = *finishing_since {
        if now >= later(at, limits.client_header) {
            return Look::End(Ended::Expired(phase));
        }
    }
    let (wake, finish) = match next(phase, since, now, limits) {
        Next::Wait(at) => match park.and_then(|p| park_at(phase, since, p)) {
            Some(at) if at <= now && !finished && activity.settled() => {
                return Look::End(Ended::Parked);
            }
            _ => (capped(park, now, at), false),
        },
        Next::Close => return Look::End(Ended::Expired(phase)),
        Next::Finish => {
            let since = *finishing_since.get_or_insert(now);
            (later(since, limits.client_header), true)
        }
    };
    let wake = match *finishing_since {
        Some(at) => wake.min(later(at, limits.client_header)),
        None => wake,
    };
    if finish {
        Look::Finish(wake)
    } else {
        Look::Wait(wake)
    }
}

/// `wake`, or sooner when parking is on: the watchdog looks every `park`
/// to find the moment a connection may be parked.
fn capped(park: Option<Duration>, now: Instant, wake: Instant) -> Instant {
    match park {
        Some(p) => wake.min(later(now, p)),
        None => wake,
    }
}

/// What ended a [`park`].
#[derive(Debug)]
pub enum Woken {
    /// The client sent this many bytes (at the front of the buffer).
    Read(usize),
    /// The connection is over (closed by the client, a deadline, or
    /// shutdown); the socket has been shut down where it was still open.
    Ended(Ended),
}

/// Waits, holding nothing but the socket, for an HTTP/1 connection's next
/// bytes (read into `buf`), under the same deadlines as [`drive`]: a
/// silent connection is closed at `client_header`; an idle one, and every
/// one at shutdown, is finished as hyper finishes an idle connection (the
/// write side shut down, TLS's close_notify sent).
///
/// # Errors
/// Reading from the socket failed.
pub async fn park<I>(
    io: &mut I,
    buf: &mut BytesMut,
    activity: &Activity,
    limits: Limits,
    drain: &mut watch::Receiver<bool>,
) -> io::Result<Woken>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let now = Instant::now();
        let (phase, since) = activity.phase();
        let wake = match next(phase, since, now, limits) {
            Next::Wait(at) => at,
            Next::Close => return Ok(Woken::Ended(Ended::Expired(phase))),
            Next::Finish => {
                finish_parked(io, now, limits).await;
                return Ok(Woken::Ended(Ended::Expired(phase)));
            }
        };
        let closing = tokio::select! {
            biased;
            r = io.read_buf(buf) => match r? {
                0 => Ended::Done,
                n => return Ok(Woken::Read(n)),
            },
            _ = drain.wait_for(|d| *d) => Ended::Done,
            () = tokio::time::sleep_until(wake) => continue,
        };
        finish_parked(io, now, limits).await;
        return Ok(Woken::Ended(closing));
    }
}

/// Shuts a parked connection's write side down, giving up after
/// `client_header` (a client that reads nothing cannot hold it).
async fn finish_parked<I: AsyncWrite + Unpin>(io: &mut I, now: Instant, limits: Limits) {
    let _ = tokio::time::timeout_at(later(now, limits.client_header), io.shutdown()).await;
}

/// Graceful shutdown of client connections: each driven connection holds a
/// [`Drain::watch`]; [`Drain::close`] asks every one to finish, then waits
/// until all have ended (their receivers dropped).
#[derive(Debug)]
pub struct Drain(watch::Sender<bool>);

impl Default for Drain {
    fn default() -> Self {
        Drain(watch::channel(false).0)
    }
}

impl Drain {
    /// For one connection; already `true` once closing has begun.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }

    /// Asks every connection to finish and waits until all have ended.
    pub async fn close(&self) {
        self.0.send_replace(true);
        self.0.closed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        client_header: Duration::from_secs(10),
        keepalive: Duration::from_secs(75),
    };

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_deadline_rule() {
        let t0 = Instant::now();
        let at = |n| t0 + s(n);
        #[rustfmt::skip]
        let table = [
            // phase, since, now, limits -> next
            (Phase::Silent, 0, 0, L, Next::Wait(at(10))),
            (Phase::Silent, 0, 9, L, Next::Wait(at(10))),
            (Phase::Silent, 0, 10, L, Next::Close),
            (Phase::Head, 5, 14, L, Next::Wait(at(15))),
            (Phase::Head, 5, 15, L, Next::Close),
            // Idle: keepalive, looked at again every client_header meanwhile.
            (Phase::Idle, 0, 0, L, Next::Wait(at(10))),
            (Phase::Idle, 0, 70, L, Next::Wait(at(75))),
            (Phase::Idle, 0, 75, L, Next::Finish),
            (Phase::Idle, 0, 80, L, Next::Finish),
            (Phase::Busy, 0, 500, L, Next::Wait(at(510))),
            // keepalive shorter than client_header: looks every keepalive.
            (Phase::Busy, 0, 0, Limits { client_header: s(10), keepalive: s(2) }, Next::Wait(at(2))),
            (Phase::Silent, 0, 3, Limits { client_header: s(10), keepalive: s(2) }, Next::Wait(at(5))),
            (Phase::Idle, 0, 2, Limits { client_header: s(10), keepalive: s(2) }, Next::Finish),
            // keepalive 0: finish as soon as idle; look every client_header.
            (Phase::Idle, 4, 4, Limits { client_header: s(10), keepalive: s(0) }, Next::Finish),
            (Phase::Busy, 0, 4, Limits { client_header: s(10), keepalive: s(0) }, Next::Wait(at(14))),
        ];
        for (i, (phase, since, now, limits, want)) in table.into_iter().enumerate() {
            assert_eq!(next(phase, at(since), at(now), limits), want, "row {i}");
        }
    }

    #[test]
    fn no_deadline_that_starts_after_a_look_is_missed() {
        // Whatever phase begins at `later` (after the look at `now`), its
        // deadline is no earlier than the next look.
        let t0 = Instant::now();
        for limits in [
            L,
            Limits {
                client_header: s(10),
                keepalive: s(2),
            },
        ] {
            for now in 0..20 {
                let Next::Wait(look) = next(Phase::Busy, t0, t0 + s(now), limits) else {
                    panic!("busy never expires");
                };
                for later in now..now + 20 {
                    for phase in [Phase::Head, Phase::Idle] {
                        let since = t0 + s(later);
                        let due = match phase {
                            Phase::Head => since + limits.client_header,
                            _ => since + limits.keepalive,
                        };
                        assert!(due >= look, "{phase:?} at {later} due before the look");
                    }
                }
            }
        }
    }

    #[test]
    fn absurd_limits_do_not_overflow() {
        let huge = Limits {
            client_header: Duration::MAX,
            keepalive: Duration::MAX,
        };
        let t0 = Instant::now();
        for phase in [Phase::Silent, Phase::Head, Phase::Busy, Phase::Idle] {
            assert!(matches!(next(phase, t0, t0, huge), Next::Wait(at) if at > t0));
        }
    }

    #[test]
    fn activity_phases() {
        let a = Arc::new(Activity::new(Instant::now()));
        assert_eq!(a.phase().0, Phase::Silent);
        a.heard();
        assert_eq!(a.phase().0, Phase::Idle);
        a.head_begun();
        assert_eq!(a.phase().0, Phase::Head);
        a.head_ended();
        let one = a.open();
        let two = a.open();
        assert_eq!(a.phase().0, Phase::Busy);
        // A pipelined head begun while a request is open is still a head.
        a.head_begun();
        assert_eq!(a.phase().0, Phase::Head);
        a.head_ended();
        drop(one);
        assert_eq!(a.phase().0, Phase::Busy);
        drop(two);
        assert_eq!(a.phase().0, Phase::Idle);
    }
}
