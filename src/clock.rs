//! Time for sessions: unix milliseconds that never run backwards.
//!
//! Cookies carry wall-clock times (another instance must understand them), but
//! idle clocks must not jump when NTP steps the system clock. So the clock
//! reads the wall clock once, at start, and advances it with a monotonic
//! `Instant`: a step after start (forwards or backwards) neither ends nor
//! extends a session. The price: an error in the wall clock *at start* stays
//! until restart, so tether should start after time sync, and instances must
//! agree within `session::FUTURE_SKEW_MS`.
//!
//! `server::start` takes the clock, so tests never wait out a session
//! timeout: [`Clock::manual`] stands still until stepped (exact edges), and
//! [`Clock::with_wall`] runs like the real clock from a wall the test
//! controls, plus whatever the test steps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of "now" in unix milliseconds.
#[derive(Clone, Debug)]
pub struct Clock(Inner);

#[derive(Clone, Debug)]
enum Inner {
    System {
        base_ms: u64,
        start: Instant,
    },
    /// `System` plus the steps a test took. Its own variant so the
    /// production clock carries no counter to read.
    Stepped {
        base_ms: u64,
        start: Instant,
        steps: Arc<AtomicU64>,
    },
    Manual(Arc<AtomicU64>),
}

/// The machine's wall clock in unix milliseconds.
fn system_wall() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Clock {
    /// The real clock: wall time at start, advanced monotonically.
    pub fn system() -> Clock {
        Clock(Inner::System {
            base_ms: system_wall(),
            start: Instant::now(),
        })
    }

    /// The real clock, reading the wall (unix ms) from `wall` instead of the
    /// system: a seam for tests that step the wall without touching the
    /// machine's. Like [`Clock::system`], it reads `wall` once, now; unlike
    /// it, [`Clock::advance_ms`] moves it forward.
    pub fn with_wall(wall: impl Fn() -> u64) -> Clock {
        Clock(Inner::Stepped {
            base_ms: wall(),
            start: Instant::now(),
            steps: Arc::default(),
        })
    }

    /// A clock that stands still at `start_ms` until told to move (tests:
    /// exact timeout edges, whatever the machine's speed).
    pub fn manual(start_ms: u64) -> Clock {
        Clock(Inner::Manual(Arc::new(AtomicU64::new(start_ms))))
    }

    /// Moves a manual or stepped clock forward (every clone of it); a no-op
    /// on the system clock.
    pub fn advance_ms(&self, ms: u64) {
        match &self.0 {
            Inner::System { .. } => {}
            Inner::Stepped { steps: n, .. } | Inner::Manual(n) => {
                n.fetch_add(ms, Ordering::SeqCst);
            }
        }
    }

    /// Now, in unix milliseconds.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            // A manual clock reads no machine clock at all.
            Inner::Manual(now) => now.load(Ordering::SeqCst),
            _ => self.ms_at(Instant::now()),
        }
    }

    /// The time at `t`, an instant the caller read from the monotonic clock
    /// (at or after this clock was made), in unix milliseconds: what
    /// [`Clock::now_ms`] would have said then. A request reads the machine's
    /// clock once and lets that read serve several uses. A manual clock
    /// ignores `t`: it says what it was told.
    #[inline]
    pub fn ms_at(&self, t: Instant) -> u64 {
        let since = |start: &Instant| t.saturating_duration_since(*start).as_millis() as u64;
        match &self.0 {
            Inner::System { base_ms, start } => base_ms + since(start),
            Inner::Stepped {
                base_ms,
                start,
                steps,
            } => base_ms + since(start) + steps.load(Ordering::SeqCst),
            Inner::Manual(now) => now.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn a_wall_step_after_start_moves_nothing() {
        use std::sync::atomic::AtomicI64;
        let wall = Arc::new(AtomicI64::new(1_700_000_000_000));
        let w = wall.clone();
        let c = Clock::with_wall(move || w.load(Ordering::SeqCst) as u64);
        let a = c.now_ms();
        for step in [3_600_000, -7_200_000] {
            wall.fetch_add(step, Ordering::SeqCst);
            let b = c.now_ms();
            assert!(b >= a && b - a < 1_000, "stepped {step}: {a} -> {b}");
        }
    }

    #[test]
    fn a_stepped_clock_runs_and_moves_when_told() {
        let c = Clock::with_wall(|| 1_700_000_000_000);
        let shared = c.clone();
        let a = c.now_ms();
        shared.advance_ms(3_600_000);
        let b = c.now_ms();
        assert!(b >= a + 3_600_000 && b - a < 3_601_000, "{a} -> {b}");
        // The system clock takes no steps.
        let s = Clock::system();
        let before = s.now_ms();
        s.advance_ms(3_600_000);
        assert!(s.now_ms() - before < 1_000);
    }

    #[test]
    fn one_read_of_the_machine_clock_says_what_now_ms_would_have() {
        let start = Instant::now();
        let real = Clock::system();
        let stepped = Clock::with_wall(|| 1_700_000_000_000);
        stepped.advance_ms(250);
        let manual = Clock::manual(1000);
        // Between two reads of now_ms, ms_at of an instant read between them
        // lies between them too; a manual clock ignores the instant.
        for c in [&real, &stepped] {
            let before = c.now_ms();
            let t = Instant::now();
            let after = c.now_ms();
            let at = c.ms_at(t);
            assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
            assert_eq!(c.ms_at(t), at, "the same instant, the same time");
            assert!(c.ms_at(t + Duration::from_millis(1500)) - at >= 1499);
        }
        assert_eq!(manual.ms_at(start), 1000);
        assert_eq!(manual.ms_at(Instant::now() + Duration::from_secs(9)), 1000);
        // An instant before the clock was made counts as its start.
        assert_eq!(
            real.ms_at(start),
            real.ms_at(start - Duration::from_millis(5))
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(1000);
        assert_eq!(c.now_ms(), 1000);
        c.advance_ms(250);
        assert_eq!(c.now_ms(), 1250);
    }
}
