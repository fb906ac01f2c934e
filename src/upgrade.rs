//! Upgraded connections (WebSocket and other `Upgrade` protocols): once the
//! backend answers 101, the client and backend streams are spliced byte for
//! byte. They outlive their HTTP exchange, so they are tracked here for
//! shutdown, which waits for them and closes what is left when
//! `shutdown_grace` ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

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
/// either side closes, or shutdown closes it.
pub async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    (_guard, mut close): (UpgradeGuard, watch::Receiver<bool>),
) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let mut c = hyper_util::rt::TokioIo::new(c);
            let mut u = hyper_util::rt::TokioIo::new(u);
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upgraded connection closed with an error");
                    }
                }
                _ = close.wait_for(|c| *c) => {
                    tracing::debug!("upgraded connection closed at the end of shutdown grace");
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
    }
}
