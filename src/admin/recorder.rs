//! Feeds the status page's history: once a second, reads the counters, the
//! backends' states and sessions, the store's health and the config's
//! generation into a [`Reading`] for [`History::observe`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::history::{BackendReading, History, Reading};
use crate::service::Shared;
use crate::store::SessionStore;

/// How often the counters are read (events are noticed at this resolution).
pub const EVERY: Duration = Duration::from_secs(1);

/// Wall-clock now, ms since the Unix epoch (the history's time).
pub fn read_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the counters and backends say now.
pub fn read(shared: &Shared) -> Reading {
    let snap = shared.snapshot.load();
    Reading {
        at_ms: read_clock(),
        totals: shared
            .metrics
            .totals(snap.backends.iter().map(|b| b.id.0 as usize)),
        backends: snap
            .backends
            .iter()
            .map(|b| BackendReading {
                name: Arc::from(&*b.name),
                state: b.state().as_str(),
                sessions: shared.store.sessions_on(b.id),
                requests: b.requests.load(Ordering::Relaxed),
            })
            .collect(),
        store_up: shared.metrics.store_is_up(),
        generation: snap.generation,
    }
}

/// Reads into `history` every [`EVERY`], forever (the caller aborts it).
pub async fn record(shared: Arc<Shared>, history: Arc<History>) {
    let first = read(&shared);
    history.note(
        first.at_ms,
        false,
        format!("tether started ({} backends)", first.backends.len()),
    );
    history.observe(first);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        history.observe(read(&shared));
    }
}
