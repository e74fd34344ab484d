//! Latency summaries and the report rows the benchmark prints, kept apart
//! from the load generation so the arithmetic can be tested without a hub.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Percentiles of one latency series, in milliseconds (what people compare).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentile of an ascending series: the smallest sample with
/// at least `p` % of the samples at or below it. `None` for an empty series.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Summarises a series (sorts it in place); `None` when it is empty.
pub fn summarize(samples: &mut [Duration]) -> Option<Summary> {
    samples.sort_unstable();
    let ms = |p: f64| percentile(samples, p).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    (!samples.is_empty()).then(|| Summary {
        count: samples.len(),
        p50_ms: ms(50.0),
        p90_ms: ms(90.0),
        p99_ms: ms(99.0),
        max_ms: ms(100.0),
    })
}

/// One line of the benchmark's output.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario and variant, e.g. `drain (session, batch 100)`.
    pub scenario: String,
    /// Operations completed (messages sent, acked, agents registered, wake-ups seen).
    pub ops: u64,
    /// Failed requests (non-2xx, transport errors, refused batch entries).
    pub errors: u64,
    /// Wall time the operations took.
    pub elapsed_sec: f64,
    /// `ops / elapsed_sec`.
    pub ops_per_sec: f64,
    /// Latency of the scenario's main request (send, pull, register, wake-up).
    pub latency: Option<Summary>,
    /// Latency of the acks, for the drain scenarios.
    pub ack_latency: Option<Summary>,
    /// Server resident memory after the scenario, when its PID is known.
    pub rss_mib: Option<f64>,
    /// Anything a reader must know to interpret the row (e.g. a depth not reached).
    pub note: Option<String>,
}

impl Report {
    /// A row from counts, wall time and latency samples.
    pub fn new(
        scenario: impl Into<String>,
        ops: u64,
        errors: u64,
        elapsed: Duration,
        latency: &mut [Duration],
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        Report {
            scenario: scenario.into(),
            ops,
            errors,
            elapsed_sec: secs,
            ops_per_sec: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
            latency: summarize(latency),
            ack_latency: None,
            rss_mib: None,
            note: None,
        }
    }
}

/// The human-readable table: a header and one row per report, latencies in ms.
pub fn table(reports: &[Report]) -> String {
    let mut out = header();
    for r in reports {
        out.push_str(&row(r));
    }
    out
}

/// The table's header line.
pub fn header() -> String {
    format!(
        "{:<34} {:>9} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  note\n",
        "scenario",
        "ops",
        "errors",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "ack p99",
        "RSS MiB"
    )
}

/// One table line.
pub fn row(r: &Report) -> String {
    let num =
        |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"));
    let l = r.latency.as_ref();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:>9} {:>6} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {}",
        r.scenario,
        r.ops,
        r.errors,
        r.ops_per_sec,
        num(l.map(|s| s.p50_ms), 2),
        num(l.map(|s| s.p90_ms), 2),
        num(l.map(|s| s.p99_ms), 2),
        num(l.map(|s| s.max_ms), 2),
        num(r.ack_latency.as_ref().map(|s| s.p99_ms), 2),
        num(r.rss_mib, 1),
        r.note.as_deref().unwrap_or("")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&sorted, 90.0), Some(Duration::from_millis(90)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&sorted, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&sorted, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn small_series_round_up() {
        let sorted = ms(&[10, 20, 30]);
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(20)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(30)));
        assert_eq!(percentile(&ms(&[7]), 50.0), Some(Duration::from_millis(7)));
    }

    #[test]
    fn summary_sorts_and_reports_milliseconds() {
        let mut samples = ms(&[40, 10, 30, 20]);
        let s = summarize(&mut samples).expect("non-empty");
        assert_eq!(s.count, 4);
        assert_eq!(s.p50_ms, 20.0);
        assert_eq!(s.p99_ms, 40.0);
        assert_eq!(s.max_ms, 40.0);
        assert_eq!(summarize(&mut []), None);
    }

    #[test]
    fn report_rate_and_table_row() {
        let mut samples = ms(&[1, 2, 3]);
        let report = Report::new("send", 300, 1, Duration::from_secs(2), &mut samples);
        assert_eq!(report.ops_per_sec, 150.0);
        let text = table(&[report]);
        let row = text.lines().nth(1).expect("a data row");
        assert!(row.starts_with("send "), "{row}");
        assert!(row.contains(" 150 "), "{row}");
        let zero = Report::new("empty", 0, 0, Duration::ZERO, &mut []);
        assert_eq!(zero.ops_per_sec, 0.0);
        assert!(zero.latency.is_none());
    }
}
