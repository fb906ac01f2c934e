//! Active health checks: a pure rise/fall hysteresis and a thin probe task per
//! backend. This is the only writer that turns a `down` backend back `up`;
//! state changes are logged once, not per probe.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::backends::Backend;
use crate::config;
use crate::upstream::Pool;

/// Consecutive-result hysteresis: `rise` successes to go up, `fall`
/// failures to go down (HAProxy's and rpxy's counter).
#[derive(Debug, Clone)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    up: bool,
    streak: u32,
}

impl Hysteresis {
    /// Starts in `up` (a new backend is trusted until proven otherwise, as HAProxy does).
    pub fn new(rise: u32, fall: u32, up: bool) -> Hysteresis {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            up,
            streak: 0,
        }
    }

    /// Records one probe result; returns the new state if it flipped.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }

    /// Current conclusion.
    pub fn is_up(&self) -> bool {
        self.up
    }
}

/// Called with (backend, ok) after every probe (metrics).
pub type OnProbe = Arc<dyn Fn(&Backend, bool) + Send + Sync>;

/// Probes `backend` over its `pool`'s link (the transport requests take):
/// `GET path`, 2xx and 3xx are healthy.
async fn check_loop(
    backend: Arc<Backend>,
    pool: Arc<Pool>,
    cfg: config::Health,
    on_probe: OnProbe,
) {
    let mut h = Hysteresis::new(cfg.rise, cfg.fall, backend.healthy());
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = pool.link().probe(&cfg.path, cfg.timeout).await;
        let ok = matches!(&result, Ok(s) if s.is_success() || s.is_redirection());
        on_probe(&backend, ok);
        // Passive detection may have marked it down between probes.
        if backend.healthy() != h.is_up() {
            h = Hysteresis::new(cfg.rise, cfg.fall, backend.healthy());
        }
        if let Some(up) = h.observe(ok) {
            backend.set_healthy(up);
            if up {
                backend.passive_success();
                tracing::info!(
                    backend = &*backend.name,
                    state = backend.state().as_str(),
                    "backend is up"
                );
            } else {
                let why = match &result {
                    Ok(s) => format!("status {}", s.as_u16()),
                    Err(e) => e.clone(),
                };
                tracing::warn!(backend = &*backend.name, reason = why, "backend is down");
            }
        }
    }
}

/// Owns one probe task per backend; `sync` starts and stops them to match
/// the current backend set. Tasks are aborted on drop.
#[derive(Default)]
pub struct Checker {
    tasks: HashMap<usize, (Arc<Backend>, JoinHandle<()>)>,
    cfg: Option<config::Health>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

impl Checker {
    /// Makes the running probes match `backends` and `cfg`: keeps the probe
    /// of a backend object that survived a reload, starts new ones, stops
    /// the rest. A change of `[health]` restarts them all.
    pub fn sync(
        &mut self,
        backends: &[Arc<Backend>],
        pools: &[Arc<Pool>],
        cfg: &config::Health,
        on_probe: &OnProbe,
    ) {
        let same_cfg = self.cfg.as_ref().is_some_and(|c| {
            c.path == cfg.path
                && c.interval == cfg.interval
                && c.timeout == cfg.timeout
                && c.rise == cfg.rise
                && c.fall == cfg.fall
        });
        let mut next = HashMap::new();
        for (b, pool) in backends.iter().zip(pools) {
            let key = Arc::as_ptr(b) as usize;
            match self.tasks.remove(&key) {
                Some(t) if same_cfg => {
                    next.insert(key, t);
                }
                old => {
                    if let Some((_, h)) = old {
                        h.abort();
                    }
                    let task = tokio::spawn(check_loop(
                        b.clone(),
                        pool.clone(),
                        cfg.clone(),
                        on_probe.clone(),
                    ));
                    next.insert(key, (b.clone(), task));
                }
            }
        }
        for (_, (_, h)) in self.tasks.drain() {
            h.abort();
        }
        self.tasks = next;
        self.cfg = Some(cfg.clone());
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for (_, (_, h)) in self.tasks.drain() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut h = Hysteresis::new(2, 3, true);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(false));
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(true));
    }

    #[test]
    fn a_success_resets_a_failure_streak() {
        let mut h = Hysteresis::new(1, 2, true);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(false));
    }
}
