//! Prometheus metrics of one hub.
//!
//! Each hub owns its own recorder instead of installing a global one: a test
//! process runs many hubs at once, and a global recorder would mix their
//! numbers (and can only be installed once). Every recording goes through
//! [`metrics::with_local_recorder`] with this hub's recorder, so the familiar
//! `counter!`/`histogram!` macros work and nothing leaks between hubs.
//!
//! The histograms' samples are buffered until they are folded into their
//! buckets by a scrape or by [`Metrics::upkeep`]; the server calls the latter
//! every few seconds so an unscraped hub does not grow without bound.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::jobs::sweeper::SweepReport;
use crate::store::{AttemptOutcome, HubStats, StoreError};

/// Bucket bounds (seconds) of every `*_seconds` histogram: sub-millisecond
/// store calls up to 20 s long-polls.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 25.0,
];

/// This hub's metrics: a private Prometheus recorder and its renderer.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Sends and acks per minute for the console's overview.
    pub recent: RecentRates,
}

/// Minutes of send/ack counts kept for the console.
pub const RECENT_MINUTES: usize = 15;

/// Sends and acks per wall-clock minute over the last [`RECENT_MINUTES`]
/// (a Prometheus counter has no history; the console shows a short one).
#[derive(Debug, Default)]
pub struct RecentRates {
    minutes: parking_lot::Mutex<std::collections::VecDeque<MinuteCount>>,
}

/// One minute of [`RecentRates`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MinuteCount {
    /// Epoch milliseconds of the minute's start.
    pub minute: i64,
    pub sent: u64,
    pub acked: u64,
}

impl RecentRates {
    fn bump(&self, now_ms: i64, sent: u64, acked: u64) {
        let minute = now_ms - now_ms.rem_euclid(60_000);
        let mut minutes = self.minutes.lock();
        if minutes.back().is_none_or(|m| m.minute < minute) {
            minutes.push_back(MinuteCount {
                minute,
                ..MinuteCount::default()
            });
            while minutes.len() > RECENT_MINUTES {
                minutes.pop_front();
            }
        }
        if let Some(last) = minutes.back_mut() {
            last.sent += sent;
            last.acked += acked;
        }
    }

    /// The last [`RECENT_MINUTES`] minutes up to `now_ms`, oldest first,
    /// quiet minutes included as zeros.
    pub fn snapshot(&self, now_ms: i64) -> Vec<MinuteCount> {
        let current = now_ms - now_ms.rem_euclid(60_000);
        let minutes = self.minutes.lock();
        (0..RECENT_MINUTES as i64)
            .rev()
            .map(|back| {
                let minute = current - back * 60_000;
                minutes
                    .iter()
                    .find(|m| m.minute == minute)
                    .copied()
                    .unwrap_or(MinuteCount {
                        minute,
                        ..MinuteCount::default()
                    })
            })
            .collect()
    }
}

/// Wall-clock epoch milliseconds (the recent rates are about real minutes).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh recorder with every metric described (so `/metrics` documents
    /// them with `# HELP` from the first scrape).
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let metrics = Metrics {
            recorder,
            handle,
            recent: RecentRates::default(),
        };
        metrics.record(describe);
        metrics.record(|| {
            gauge!("admp_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        });
        metrics
    }

    /// Runs `f` with this hub's recorder as the current one.
    fn record<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// The Prometheus text exposition of everything recorded so far.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds buffered histogram samples into their buckets (bounded memory
    /// between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// One HTTP request: `route` is the matched path template (never the raw
    /// path, which would make one series per agent).
    pub fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let labels = [
            ("method", method.to_string()),
            ("route", route.to_string()),
            ("status", status.to_string()),
        ];
        self.record(|| {
            counter!("admp_http_requests_total", &labels).increment(1);
            histogram!("admp_http_request_duration_seconds", &labels).record(elapsed);
        });
    }

    /// One store call. Only operational failures count as errors; refusals
    /// such as "not leased" are answers, not failures.
    pub fn store_call(&self, op: &'static str, elapsed: Duration, error: Option<&StoreError>) {
        self.record(|| {
            histogram!("admp_store_call_duration_seconds", "op" => op).record(elapsed);
            let kind = match error {
                Some(StoreError::Unavailable(_)) => "unavailable",
                Some(StoreError::Internal(_)) => "internal",
                _ => return,
            };
            counter!("admp_store_errors_total", "op" => op, "kind" => kind).increment(1);
        });
    }

    /// A send stored a new message, or recognised a duplicate.
    pub fn message_sent(&self, duplicate: bool) {
        let outcome = if duplicate { "duplicate" } else { "created" };
        if !duplicate {
            self.recent.bump(wall_ms(), 1, 0);
        }
        self.record(|| counter!("admp_messages_sent_total", "outcome" => outcome).increment(1));
    }

    /// Messages handed out under a lease by pulls.
    pub fn messages_leased(&self, n: u64) {
        self.record(|| counter!("admp_messages_leased_total").increment(n));
    }

    /// A message acknowledged.
    pub fn message_acked(&self) {
        self.recent.bump(wall_ms(), 0, 1);
        self.record(|| counter!("admp_messages_acked_total").increment(1));
    }

    /// A nack: the lease extended, or the message given back.
    pub fn message_nacked(&self, extended: bool) {
        let action = if extended { "extend" } else { "requeue" };
        self.record(|| counter!("admp_messages_nacked_total", "action" => action).increment(1));
    }

    /// Expired leases put back in the queue.
    pub fn leases_reclaimed(&self, n: u64) {
        self.record(|| counter!("admp_leases_reclaimed_total").increment(n));
    }

    /// Messages moved to the dead letters; `source` is `nack` or `lease_expiry`.
    pub fn dead_lettered(&self, source: &'static str, n: u64) {
        self.record(|| {
            counter!("admp_messages_dead_lettered_total", "source" => source).increment(n);
        });
    }

    /// Live messages that reached their TTL.
    pub fn messages_expired(&self, n: u64) {
        self.record(|| counter!("admp_messages_expired_total").increment(n));
    }

    /// Messages and agents by state, read from the store at scrape time.
    pub fn set_counts(&self, stats: &HubStats) {
        let m = &stats.messages;
        self.record(|| {
            for (state, n) in [
                ("queued", m.queued),
                ("leased", m.leased),
                ("acked", m.acked),
                ("expired", m.expired),
                ("dead", m.dead),
            ] {
                gauge!("admp_messages", "state" => state).set(n as f64);
            }
            gauge!("admp_agents", "status" => "online").set(stats.agents_online as f64);
            let offline = stats.agents_total.saturating_sub(stats.agents_online);
            gauge!("admp_agents", "status" => "offline").set(offline as f64);
        });
    }

    /// A request refused by a rate limit, by route template.
    pub fn rate_limited(&self, route: &str) {
        let route = route.to_string();
        self.record(|| counter!("admp_rate_limited_total", "route" => route).increment(1));
    }

    /// A request refused for its credentials or signature; `code` is the error code.
    pub fn auth_failure(&self, code: &'static str) {
        self.record(|| counter!("admp_auth_failures_total", "code" => code).increment(1));
    }

    /// An audit event that could not be written (the request itself went on).
    pub fn audit_write_failed(&self) {
        self.record(|| counter!("admp_audit_write_failures_total").increment(1));
    }

    /// One sweep pass: how long it and each step took, and what each step did.
    pub fn sweep(&self, report: &SweepReport) {
        let d = &report.durations;
        self.record(|| {
            counter!("admp_sweeps_total", "result" => "ok").increment(1);
            histogram!("admp_sweep_duration_seconds").record(d.total);
            for (step, took) in [
                ("reclaim", d.reclaim),
                ("expire", d.expire),
                ("purge", d.purge),
                ("offline", d.offline),
            ] {
                histogram!("admp_sweep_step_duration_seconds", "step" => step).record(took);
            }
            for (outcome, n) in [
                ("requeued", report.reclaimed.requeued),
                ("dead", report.reclaimed.dead),
                ("expired", report.expired),
                ("purged", report.purged),
                ("offline", report.offline),
            ] {
                counter!("admp_sweep_records_total", "outcome" => outcome).increment(n);
            }
        });
    }

    /// A sweep pass cut short by a store error.
    pub fn sweep_failed(&self) {
        self.record(|| counter!("admp_sweeps_total", "result" => "error").increment(1));
    }

    /// One webhook delivery attempt: what it meant for its delivery
    /// (`delivered`, `retry`, `failed`) and how long it took.
    pub fn webhook_attempt(&self, outcome: AttemptOutcome, elapsed: Duration) {
        let outcome = match outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::RetryAt(_) => "retry",
            AttemptOutcome::Failed => "failed",
        };
        self.record(|| {
            counter!("admp_webhook_attempts_total", "outcome" => outcome).increment(1);
            histogram!("admp_webhook_attempt_duration_seconds").record(elapsed);
        });
    }

    /// Pending deliveries cancelled because their agent or webhook was gone.
    pub fn webhooks_cancelled(&self, n: u64) {
        self.record(|| counter!("admp_webhook_deliveries_cancelled_total").increment(n));
    }
}

/// `# HELP` text and units of every metric.
fn describe() {
    describe_counter!(
        "admp_http_requests_total",
        "HTTP requests by method, route template and status."
    );
    describe_histogram!(
        "admp_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method, route template and status."
    );
    describe_histogram!(
        "admp_store_call_duration_seconds",
        Unit::Seconds,
        "Storage call latency by operation."
    );
    describe_counter!(
        "admp_store_errors_total",
        "Storage calls that failed (unavailable or internal) by operation."
    );
    describe_counter!(
        "admp_messages_sent_total",
        "Sends and replies stored (created) or recognised as duplicates."
    );
    describe_counter!(
        "admp_messages_leased_total",
        "Messages handed out by pulls."
    );
    describe_counter!("admp_messages_acked_total", "Messages acknowledged.");
    describe_counter!(
        "admp_messages_nacked_total",
        "Nacks by action (extend the lease, requeue)."
    );
    describe_counter!(
        "admp_leases_reclaimed_total",
        "Expired leases put back in the queue."
    );
    describe_counter!(
        "admp_messages_dead_lettered_total",
        "Messages dead-lettered after MAX_DELIVERY_ATTEMPTS, by source (nack, lease_expiry)."
    );
    describe_counter!(
        "admp_messages_expired_total",
        "Live messages that reached their TTL."
    );
    describe_gauge!(
        "admp_messages",
        "Messages held by state, read from storage at scrape time."
    );
    describe_gauge!(
        "admp_agents",
        "Registered agents by heartbeat status, read at scrape time."
    );
    describe_counter!(
        "admp_rate_limited_total",
        "Requests refused with 429 RATE_LIMITED, by route template."
    );
    describe_counter!(
        "admp_auth_failures_total",
        "Requests refused for their credentials or signatures, by error code."
    );
    describe_counter!(
        "admp_audit_write_failures_total",
        "Audit events that could not be written."
    );
    describe_counter!("admp_sweeps_total", "Sweeper passes by result (ok, error).");
    describe_histogram!(
        "admp_sweep_duration_seconds",
        Unit::Seconds,
        "Duration of a sweeper pass."
    );
    describe_histogram!(
        "admp_sweep_step_duration_seconds",
        Unit::Seconds,
        "Duration of each step of a sweeper pass (reclaim, expire, purge, offline)."
    );
    describe_counter!(
        "admp_sweep_records_total",
        "Records the sweeper handled, by outcome (requeued, dead, expired, purged, offline)."
    );
    describe_counter!(
        "admp_webhook_attempts_total",
        "Webhook delivery attempts by outcome (delivered, retry, failed)."
    );
    describe_counter!(
        "admp_webhook_deliveries_cancelled_total",
        "Pending webhook deliveries cancelled because the agent or its webhook was gone."
    );
    describe_histogram!(
        "admp_webhook_attempt_duration_seconds",
        Unit::Seconds,
        "Duration of a webhook delivery attempt."
    );
    describe_gauge!(
        "admp_build_info",
        "Always 1; the version label says which build runs."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_hubs_keep_separate_numbers() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.http_request("GET", "/health", 200, Duration::from_millis(3));
        a.message_sent(false);
        let text = a.render();
        assert!(
            text.contains(
                r#"admp_http_requests_total{method="GET",route="/health",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("admp_http_request_duration_seconds_bucket"));
        assert!(text.contains(r#"admp_messages_sent_total{outcome="created"} 1"#));
        assert!(!b.render().contains("admp_http_requests_total{"));
    }
}
