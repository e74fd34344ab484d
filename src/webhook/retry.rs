//! When a failed attempt is tried again: the configured schedule (5 s … 4 h
//! by default), jittered so that a receiver coming back up is not hit by every
//! delivery at once, and never sooner than the receiver asked with `Retry-After`.

use std::time::{Duration, SystemTime};

/// Jitter amplitude: each delay is scaled by a factor in [0.8, 1.2].
const JITTER: f64 = 0.2;

/// Longest `Retry-After` honoured, the protocol's longest step: a receiver
/// cannot park a delivery for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(4 * 3600);

/// Delay before the next attempt once `attempts_made` attempts have failed,
/// or `None` when the schedule is exhausted and the delivery has failed.
/// `jitter` is drawn from [-1, 1] by the caller (a parameter, so tests are exact).
pub fn next_attempt_delay(
    schedule: &[Duration],
    attempts_made: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    let step = attempts_made.checked_sub(1)? as usize;
    let base = *schedule.get(step)?;
    let jittered = base.mul_f64(1.0 + JITTER * jitter.clamp(-1.0, 1.0));
    Some(match retry_after {
        Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
        None => jittered,
    })
}

/// Parses `Retry-After`: delay seconds or an HTTP date (a past date means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_webhook_retry_schedule;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn follows_the_protocol_schedule_then_gives_up() {
        let schedule = default_webhook_retry_schedule();
        let delays: Vec<u64> = (1..=8)
            .map(|n| {
                next_attempt_delay(&schedule, n, None, 0.0)
                    .unwrap()
                    .as_secs()
            })
            .collect();
        assert_eq!(delays, [5, 30, 120, 600, 1_800, 3_600, 7_200, 14_400]);
        assert_eq!(next_attempt_delay(&schedule, 9, None, 0.0), None);
        assert_eq!(next_attempt_delay(&schedule, 0, None, 0.0), None);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let schedule = [S(100)];
        assert_eq!(next_attempt_delay(&schedule, 1, None, -1.0), Some(S(80)));
        assert_eq!(next_attempt_delay(&schedule, 1, None, 1.0), Some(S(120)));
        assert_eq!(next_attempt_delay(&schedule, 1, None, 7.0), Some(S(120)));
    }

    #[test]
    fn retry_after_delays_but_never_hastens_and_is_capped() {
        let schedule = [S(30)];
        assert_eq!(
            next_attempt_delay(&schedule, 1, Some(S(90)), 0.0),
            Some(S(90))
        );
        assert_eq!(
            next_attempt_delay(&schedule, 1, Some(S(1)), 0.0),
            Some(S(30))
        );
        assert_eq!(
            next_attempt_delay(&schedule, 1, Some(S(86_400)), 0.0),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after(" 120 ", now), Some(S(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(S(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
