//! Upgraded connections (WebSocket and other `Upgrade` protocols): once the
//! backend answers 101, the client and backend streams are spliced byte for
//! byte (`copy.rs`: no buffer is held while the tunnel idles). They outlive
//! their HTTP exchange, so they are tracked here for shutdown, which waits
//! for them and closes what is left when `shutdown_grace` ends. One that
//! moves no byte either way for `timeouts.tunnel` is closed. (Its
//! `max_connections` slot rides with the client socket, so it is held until
//! the splice ends; see `listener.rs`.)

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::passthrough::write_through;

/// Tracks upgraded connections so shutdown can wait for them, then close
/// what is still open at the end of `shutdown_grace`.
#[derive(Debug)]
pub struct Upgrades {
    live: AtomicUsize,
    idle: Notify,
    close: watch::Sender<bool>,
}

impl Default for Upgrades {
    fn default() -> Self {
        Upgrades {
            live: AtomicUsize::new(0),
            idle: Notify::new(),
            close: watch::channel(false).0,
        }
    }
}

/// Keeps one upgraded connection counted while it lives.
pub struct UpgradeGuard(Arc<Upgrades>);

impl Drop for UpgradeGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Upgrades {
    /// Upgraded connections open now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Waits until no upgraded connection is open.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Closes every upgraded connection still open.
    pub fn close_all(&self) {
        let _ = self.close.send(true);
    }

    /// Registers one upgraded connection; pass the result to [`splice`].
    pub fn enter(self: &Arc<Self>) -> (UpgradeGuard, watch::Receiver<bool>) {
        self.live.fetch_add(1, Ordering::AcqRel);
        (UpgradeGuard(self.clone()), self.close.subscribe())
    }
}

/// Copies bytes both ways between an upgraded client and backend until
/// either side closes, no byte has moved either way for `idle`
/// (`timeouts.tunnel`), or shutdown closes it.
pub async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    (_guard, mut close): (UpgradeGuard, watch::Receiver<bool>),
    idle: Duration,
) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let moved = Moved::new();
            let mut c = Watched {
                io: hyper_util::rt::TokioIo::new(c),
                moved: &moved,
            };
            let mut u = Watched {
                io: hyper_util::rt::TokioIo::new(u),
                moved: &moved,
            };
            tokio::select! {
                r = crate::copy::copy_both_ways(&mut c, &mut u) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upgraded connection closed with an error");
                    }
                }
                () = moved.idle_for(idle) => {
                    tracing::debug!(?idle, "upgraded connection closed: idle both ways");
                }
                _ = close.wait_for(|c| *c) => {
                    tracing::debug!("upgraded connection closed at the end of shutdown grace");
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
    }
}

/// When a byte last moved through a tunnel, either way (milliseconds after
/// `start`). Every byte written was first read from the other side, so
/// reads alone tell.
struct Moved {
    start: Instant,
    last: AtomicU64,
}

impl Moved {
    fn new() -> Moved {
        Moved {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self
            .start
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `idle`. Sleeps to the deadline
    /// of the last byte it knows of, then looks: traffic costs no wake-ups.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.last.load(Ordering::Relaxed);
            let due = crate::lifecycle::later(self.start + Duration::from_millis(last), idle);
            tokio::time::sleep_until(due).await;
            if self.last.load(Ordering::Relaxed) == last {
                return;
            }
        }
    }
}

/// One side of a tunnel, noting in `moved` every read that brought bytes.
struct Watched<'a, T> {
    io: T,
    moved: &'a Moved,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved.touch();
        }
        polled
    }
}

write_through!([T] Watched<'_, T>, io);
