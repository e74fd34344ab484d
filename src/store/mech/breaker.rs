//! Circuit breaker for the Mech client: after a run of failed operations the
//! hub stops calling a Mech that is down and answers 503 at once, instead of
//! making every request wait out its timeouts and retries.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through; `failures` consecutive operations have failed so far.
    Closed { failures: u32 },
    /// Calls are refused until `until`; then one probe is let through.
    Open { until: Instant },
    /// One probe is in flight; everything else is refused until it reports.
    HalfOpen,
}

/// Counts consecutive failed operations and fails fast while Mech is down.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    reset_after: Duration,
    state: Mutex<State>,
}

/// A call the breaker let through; report how it ended with
/// [`Breaker::succeeded`] or [`Breaker::failed`].
#[derive(Debug)]
#[must_use]
pub struct Permit {
    probe: bool,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures; probes again after `reset_after`.
    pub fn new(threshold: u32, reset_after: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            reset_after,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Lets a call through, or says how long until the next probe when open.
    pub fn admit(&self) -> Result<Permit, Duration> {
        let mut state = self.state.lock();
        match *state {
            State::Closed { .. } => Ok(Permit { probe: false }),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = State::HalfOpen;
                    Ok(Permit { probe: true })
                } else {
                    Err(until - now)
                }
            }
            // The probe decides; until then wait as long as a fresh open would.
            State::HalfOpen => Err(self.reset_after),
        }
    }

    /// The call behind `permit` succeeded: Mech answers, so close.
    pub fn succeeded(&self, permit: Permit) {
        let _ = permit;
        *self.state.lock() = State::Closed { failures: 0 };
    }

    /// The call behind `permit` failed (timeouts, connection errors, 5xx after every retry).
    pub fn failed(&self, permit: Permit) {
        let mut state = self.state.lock();
        let failures = match *state {
            State::Closed { failures } => failures + 1,
            // A failed probe reopens at once.
            State::HalfOpen if permit.probe => self.threshold,
            // Another call failed while the breaker is already open: keep it open.
            State::Open { .. } | State::HalfOpen => return,
        };
        *state = if failures >= self.threshold {
            tracing::warn!(
                failures,
                reset_after_ms = self.reset_after.as_millis() as u64,
                "Mech circuit breaker open: storage calls fail fast with 503 until a probe succeeds"
            );
            State::Open {
                until: Instant::now() + self.reset_after,
            }
        } else {
            State::Closed { failures }
        };
    }

    /// True while calls are refused (open, or half-open with the probe out).
    pub fn is_open(&self) -> bool {
        !matches!(*self.state.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_reset() {
        let breaker = Breaker::new(3, Duration::ZERO);
        for _ in 0..2 {
            let permit = breaker.admit().unwrap();
            breaker.failed(permit);
        }
        assert!(!breaker.is_open());
        let permit = breaker.admit().unwrap();
        breaker.failed(permit);
        assert!(breaker.is_open());
        // Reset of zero: the next call is the probe, and only it goes through.
        let probe = breaker.admit().unwrap();
        assert!(breaker.admit().is_err());
        breaker.failed(probe);
        assert!(breaker.is_open());
        let probe = breaker.admit().unwrap();
        breaker.succeeded(probe);
        assert!(!breaker.is_open());
    }

    #[test]
    fn open_breaker_refuses_with_the_remaining_time() {
        let breaker = Breaker::new(1, Duration::from_secs(60));
        let permit = breaker.admit().unwrap();
        breaker.failed(permit);
        let wait = breaker.admit().unwrap_err();
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::new(2, Duration::from_secs(60));
        let permit = breaker.admit().unwrap();
        breaker.failed(permit);
        let permit = breaker.admit().unwrap();
        breaker.succeeded(permit);
        let permit = breaker.admit().unwrap();
        breaker.failed(permit);
        assert!(!breaker.is_open());
    }
}
