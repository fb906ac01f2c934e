//! A waker that remembers it was woken.
//!
//! A connection's task polls its hyper connection on every wake-up, and
//! beside it two futures that are rarely ready: the shutdown signal and the
//! connection's deadline. Polling those on every wake-up costs: each poll of
//! tokio's `Notified` takes its waiters' lock, each poll of a timer swaps
//! its waker. Polled with a [`WakeFlag`]'s waker instead, they are polled
//! again only once they have woken the task (or were told to be, after a
//! timer is reset), and pass their wake-ups on to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

/// The waker for the rarely ready futures, and whether they are due a poll.
pub struct WakeFlag {
    inner: Arc<Inner>,
    waker: Waker,
    /// The task's waker as last handed to `inner`.
    task: Option<Waker>,
}

struct Inner {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Inner {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(t) = &*self.task.lock().unwrap_or_else(|e| e.into_inner()) {
            t.wake_by_ref();
        }
    }
}

impl Default for WakeFlag {
    fn default() -> WakeFlag {
        WakeFlag::new()
    }
}

impl WakeFlag {
    /// Due at once: its futures have not been polled yet.
    pub fn new() -> WakeFlag {
        let inner = Arc::new(Inner {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        WakeFlag {
            waker: Waker::from(inner.clone()),
            inner,
            task: None,
        }
    }

    /// Whether the futures behind [`WakeFlag::waker`] are due a poll (they
    /// woke the task since their last one); clears it. `task` is the waker
    /// of the poll at hand: their wake-ups go on to it.
    pub fn due(&mut self, task: &Waker) -> bool {
        if !self.task.as_ref().is_some_and(|t| t.will_wake(task)) {
            self.task = Some(task.clone());
            *self.inner.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.clone());
        }
        self.inner.woken.load(Ordering::Relaxed) && self.inner.woken.swap(false, Ordering::Acquire)
    }

    /// The waker to poll the rarely ready futures with.
    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// Makes them due: one of them must be polled to arm it again.
    pub fn poke(&self) {
        self.inner.woken.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn due_first_then_only_after_a_wake_or_a_poke() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let mut f = WakeFlag::new();
        assert!(f.due(&task), "never polled: due");
        assert!(!f.due(&task), "nothing woke it since");
        f.waker().wake_by_ref();
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            1,
            "the wake reaches the task"
        );
        assert!(f.due(&task));
        assert!(!f.due(&task));
        f.poke();
        assert!(f.due(&task));
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "a poke wakes nobody");
    }

    #[test]
    fn wakes_go_to_the_task_of_the_latest_poll() {
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let mut f = WakeFlag::new();
        f.due(&Waker::from(a.clone()));
        f.due(&Waker::from(b.clone()));
        let owned = f.waker().clone();
        owned.wake();
        assert_eq!(a.0.load(Ordering::Relaxed), 0);
        assert_eq!(b.0.load(Ordering::Relaxed), 1);
    }
}
