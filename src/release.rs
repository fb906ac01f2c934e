//! Giving freed memory back to the OS after connections go idle.
//!
//! A parked connection drops hyper's buffers (some 40 KiB), but allocators
//! keep freed pages resident and return them lazily, from inside later
//! allocations. A proxy that goes quiet after a burst of connections, all
//! idle now, would keep the burst's pages for good. So the binary, which
//! owns the global allocator, registers how to release ([`set`]), and each
//! park asks for one release a little later ([`freed`]): a burst of parks
//! costs one release, and a busy proxy whose connections never idle pays
//! nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

static RELEASE: OnceLock<fn()> = OnceLock::new();
static SCHEDULED: AtomicBool = AtomicBool::new(false);

/// How long after a park the release runs: the rest of a burst parks in
/// the meantime and is released with it.
const AFTER: Duration = Duration::from_millis(250);

/// Registers the allocator's release call (once; later calls are ignored).
pub fn set(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Memory was freed by a connection that went idle: runs the release
/// [`AFTER`] from now unless one is already due. Must be called on a tokio
/// runtime.
pub fn freed() {
    let Some(&release) = RELEASE.get() else {
        return;
    };
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(AFTER).await;
        SCHEDULED.store(false, Ordering::Release);
        release();
    });
}
