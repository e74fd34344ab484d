//! Time source. Production reads the system clock; tests move a manual clock
//! forward instead of sleeping (lease expiry, retention, heartbeats).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Epoch-millisecond clock, cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// `None` reads the system clock; `Some` is a manual clock shared by clones.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock { manual: None }
    }

    /// A manual clock starting at the current system time.
    pub fn manual() -> Self {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(system_now_ms()))),
        }
    }

    /// Current time in epoch milliseconds.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(t) => t.load(Ordering::SeqCst),
            None => system_now_ms(),
        }
    }

    /// Current time as a `SystemTime` (for HTTP date checks).
    pub fn now_system(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_millis(self.now_ms().max(0) as u64)
    }

    /// Moves a manual clock forward; panics on the system clock, which cannot be moved.
    pub fn advance_ms(&self, ms: i64) {
        self.manual
            .as_ref()
            .expect("only a manual clock can be advanced")
            .fetch_add(ms, Ordering::SeqCst);
    }
}

fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
