//! The periodic sweep (PROTOCOL.md §7): end expired leases, expire TTL'd
//! messages, purge records past retention and group history past its TTL,
//! mark silent agents offline.
//!
//! Each step calls one bulk store operation repeatedly, `SWEEP_BATCH_SIZE`
//! records per call. While batches come back full there is a backlog, and up
//! to `SWEEP_CONCURRENCY` calls run at once; the first short batch ends the
//! step, so an idle hub costs one call per step. Every call is a complete,
//! atomic store transition that only touches records still due (a message
//! reclaimed by one call is no longer leased for the next), so concurrent
//! calls, and sweepers of several hub instances on one database, never handle
//! a record twice or count it twice. Store locks are held for one batch at a
//! time, never for a pass, so requests interleave with a sweep.
//!
//! Passes run one after another in a single task: a slow pass delays the next
//! one instead of overlapping it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parking_lot::Mutex;

use serde_json::json;

use crate::audit::AuditKind;
use crate::hub::Hub;
use crate::store::{ReclaimCounts, ReclaimRequest, StoreResult};

/// Batches one step may run in a pass, so a huge backlog cannot make a pass endless.
const MAX_BATCHES_PER_STEP: usize = 100;

/// What one pass did and how long each step took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired leases put back in the queue or dead-lettered.
    pub reclaimed: ReclaimCounts,
    /// Live messages past their TTL, now `expired`.
    pub expired: u64,
    /// Ended records past retention, deleted.
    pub purged: u64,
    /// Group history records past their group's `message_ttl_sec`, deleted.
    pub history_purged: u64,
    /// Agents newly marked offline.
    pub offline: u64,
    /// Request nonces past the replay window, forgotten.
    pub nonces_purged: u64,
    pub durations: StepDurations,
}

/// Wall time of each step of a pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepDurations {
    pub reclaim: Duration,
    pub expire: Duration,
    pub purge: Duration,
    pub offline: Duration,
    pub total: Duration,
}

/// Running totals of the sweeper, for logs and the metrics endpoint.
#[derive(Debug, Default)]
pub struct SweepStats {
    totals: Mutex<SweepTotals>,
}

/// A copy of [`SweepStats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepTotals {
    /// Passes that completed.
    pub passes: u64,
    /// Passes cut short by a store error (retried at the next interval).
    pub failures: u64,
    /// Sums of the [`SweepReport`] counts over all completed passes.
    pub requeued: u64,
    pub dead: u64,
    pub expired: u64,
    pub purged: u64,
    pub offline: u64,
    /// Sum of the passes' durations.
    pub busy: Duration,
    /// The latest completed pass.
    pub last: Option<SweepReport>,
}

impl SweepStats {
    /// Reads the totals.
    pub fn snapshot(&self) -> SweepTotals {
        *self.totals.lock()
    }

    /// Adds one completed pass.
    pub fn record(&self, report: &SweepReport) {
        let mut t = self.totals.lock();
        t.passes += 1;
        t.requeued += report.reclaimed.requeued;
        t.dead += report.reclaimed.dead;
        t.expired += report.expired;
        t.purged += report.purged;
        t.offline += report.offline;
        t.busy += report.durations.total;
        t.last = Some(*report);
    }

    /// Counts a pass that failed.
    pub fn record_failure(&self) {
        self.totals.lock().failures += 1;
    }
}

/// Runs passes every `CLEANUP_INTERVAL_MS` (the first at once) until
/// shutdown; a pass in progress at shutdown is finished first.
pub async fn run(hub: Arc<Hub>, stats: Arc<SweepStats>) {
    let period = Duration::from_millis(hub.config.cleanup_interval_ms);
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = hub.shutdown.cancelled() => return,
        }
        match sweep_once(&hub).await {
            Ok(report) => {
                stats.record(&report);
                tracing::info!(
                    requeued = report.reclaimed.requeued,
                    dead = report.reclaimed.dead,
                    expired = report.expired,
                    purged = report.purged,
                    history_purged = report.history_purged,
                    offline = report.offline,
                    nonces_purged = report.nonces_purged,
                    reclaim_ms = report.durations.reclaim.as_millis() as u64,
                    expire_ms = report.durations.expire.as_millis() as u64,
                    purge_ms = report.durations.purge.as_millis() as u64,
                    offline_ms = report.durations.offline.as_millis() as u64,
                    elapsed_ms = report.durations.total.as_millis() as u64,
                    "sweep finished"
                );
                record(&hub, &report).await;
            }
            Err(e) => {
                stats.record_failure();
                hub.metrics.sweep_failed();
                tracing::warn!(error = %e, "sweep failed; retrying next interval");
            }
        }
    }
}

/// Runs one pass now.
pub async fn sweep_once(hub: &Hub) -> StoreResult<SweepReport> {
    let config = &hub.config;
    let limits = Limits {
        batch: config.sweep_batch_size as usize,
        concurrency: config.sweep_concurrency as usize,
    };
    let store = &hub.store;
    let now = || hub.clock.now_ms();
    let mut report = SweepReport::default();
    let pass = Instant::now();

    let step = Instant::now();
    report.reclaimed = drain(limits, || async move {
        let request = ReclaimRequest {
            now: now(),
            max_attempts: config.max_delivery_attempts,
            limit: limits.batch,
            recipient: None,
        };
        store.reclaim_expired_leases(&request).await
    })
    .await?;
    report.durations.reclaim = step.elapsed();

    let step = Instant::now();
    report.expired = drain(limits, || store.expire_messages(now(), limits.batch)).await?;
    report.durations.expire = step.elapsed();

    let step = Instant::now();
    let ended_before = now() - (config.message_retention_sec * 1000) as i64;
    report.purged = drain(limits, || store.purge_retained(ended_before, limits.batch)).await?;
    report.history_purged =
        drain(limits, || store.purge_group_history(now(), limits.batch)).await?;
    report.durations.purge = step.elapsed();

    let step = Instant::now();
    report.offline = drain(limits, || store.mark_offline(now(), limits.batch)).await?;
    report.durations.offline = step.elapsed();

    report.nonces_purged = drain(limits, || store.purge_nonces(now(), limits.batch)).await?;

    report.durations.total = pass.elapsed();
    Ok(report)
}

/// Batch size and how many batches of one step may be in flight.
#[derive(Debug, Clone, Copy)]
struct Limits {
    batch: usize,
    concurrency: usize,
}

/// What one bulk store call reports: how many records it handled.
trait BatchCount: Copy + Default {
    fn handled(&self) -> u64;
    fn add(&mut self, other: Self);
}

impl BatchCount for u64 {
    fn handled(&self) -> u64 {
        *self
    }
    fn add(&mut self, other: Self) {
        *self += other;
    }
}

impl BatchCount for ReclaimCounts {
    fn handled(&self) -> u64 {
        self.requeued + self.dead
    }
    fn add(&mut self, other: Self) {
        self.requeued += other.requeued;
        self.dead += other.dead;
    }
}

/// Calls `batch` until one comes back short: one call at first, then, while
/// batches come back full (a backlog), up to `limits.concurrency` at once.
async fn drain<T, F, Fut>(limits: Limits, batch: F) -> StoreResult<T>
where
    T: BatchCount,
    F: Fn() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    let mut total = T::default();
    let mut in_flight = FuturesUnordered::new();
    in_flight.push(batch());
    let mut issued = 1;
    let mut drained = false;
    while let Some(result) = in_flight.next().await {
        let counts = result?;
        total.add(counts);
        drained |= (counts.handled() as usize) < limits.batch;
        while !drained && in_flight.len() < limits.concurrency && issued < MAX_BATCHES_PER_STEP {
            in_flight.push(batch());
            issued += 1;
        }
    }
    Ok(total)
}

/// Reports a pass to the metrics, and its dead-lettering to the audit log
/// (one event per pass with the count; the messages are in the dead letters).
async fn record(hub: &Hub, report: &SweepReport) {
    hub.metrics.sweep(report);
    if report.reclaimed.dead > 0 {
        let detail = json!({ "source": "sweeper", "count": report.reclaimed.dead });
        hub.audit(AuditKind::DeadLettered, None, detail).await;
    }
}
