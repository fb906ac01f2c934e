//! Time for sessions: unix milliseconds that never run backwards.
//!
//! Cookies carry wall-clock times (another instance must understand them), but
//! idle clocks must not jump when NTP steps the system clock. So the clock
//! reads the wall clock once, at start, and advances it with a monotonic
//! `Instant`. Tests use [`Clock::manual`] and move time by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of "now" in unix milliseconds.
#[derive(Clone, Debug)]
pub struct Clock(Inner);

#[derive(Clone, Debug)]
enum Inner {
    System { base_ms: u64, start: Instant },
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The real clock: wall time at start, advanced monotonically.
    pub fn system() -> Clock {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock(Inner::System {
            base_ms,
            start: Instant::now(),
        })
    }

    /// A clock that only moves when told to (unit tests).
    pub fn manual(start_ms: u64) -> Clock {
        Clock(Inner::Manual(Arc::new(AtomicU64::new(start_ms))))
    }

    /// Moves a manual clock forward; a no-op on the system clock.
    pub fn advance_ms(&self, ms: u64) {
        if let Inner::Manual(now) = &self.0 {
            now.fetch_add(ms, Ordering::SeqCst);
        }
    }

    /// Now, in unix milliseconds.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Inner::System { base_ms, start } => base_ms + start.elapsed().as_millis() as u64,
            Inner::Manual(now) => now.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_near_wall_time_and_monotonic() {
        let c = Clock::system();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let a = c.now_ms();
        assert!(a.abs_diff(wall) < 1000);
        assert!(c.now_ms() >= a);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(1000);
        assert_eq!(c.now_ms(), 1000);
        c.advance_ms(250);
        assert_eq!(c.now_ms(), 1250);
    }
}
