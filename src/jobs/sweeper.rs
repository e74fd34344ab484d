//! The periodic sweep (PROTOCOL.md §7): end expired leases, expire TTL'd
//! messages, purge records past retention, mark silent agents offline.
//! Each step uses the store's bulk operations in bounded batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hub::Hub;
use crate::store::{ReclaimCounts, ReclaimRequest, StoreResult};

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub reclaimed: ReclaimCounts,
    pub expired: u64,
    pub purged: u64,
    pub offline: u64,
}

/// Batches a single step may run in one pass, so a huge backlog cannot starve the next pass.
const MAX_BATCHES_PER_STEP: usize = 100;

/// Runs one sweep pass now.
pub async fn sweep_once(hub: &Hub) -> StoreResult<SweepReport> {
    let config = &hub.config;
    let batch = config.sweep_batch_size as usize;
    let mut report = SweepReport::default();
    for _ in 0..MAX_BATCHES_PER_STEP {
        let counts = hub
            .store
            .reclaim_expired_leases(&ReclaimRequest {
                now: hub.clock.now_ms(),
                max_attempts: config.max_delivery_attempts,
                limit: batch,
                recipient: None,
            })
            .await?;
        report.reclaimed.requeued += counts.requeued;
        report.reclaimed.dead += counts.dead;
        if ((counts.requeued + counts.dead) as usize) < batch {
            break;
        }
    }
    report.expired = repeat_batches(batch, || {
        hub.store.expire_messages(hub.clock.now_ms(), batch)
    })
    .await?;
    let retention_ms = (config.message_retention_sec * 1000) as i64;
    report.purged = repeat_batches(batch, || {
        hub.store
            .purge_retained(hub.clock.now_ms() - retention_ms, batch)
    })
    .await?;
    report.offline =
        repeat_batches(batch, || hub.store.mark_offline(hub.clock.now_ms(), batch)).await?;
    Ok(report)
}

async fn repeat_batches<F, Fut>(batch: usize, mut step: F) -> StoreResult<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<u64>>,
{
    let mut total = 0;
    for _ in 0..MAX_BATCHES_PER_STEP {
        let n = step().await?;
        total += n;
        if (n as usize) < batch {
            break;
        }
    }
    Ok(total)
}

/// Runs passes every `CLEANUP_INTERVAL_MS` until shutdown; a slow pass delays
/// the next one instead of overlapping it.
pub async fn run(hub: Arc<Hub>) {
    let mut interval = tokio::time::interval(Duration::from_millis(hub.config.cleanup_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = hub.shutdown.cancelled() => return,
        }
        let started = Instant::now();
        match sweep_once(&hub).await {
            Ok(report) => tracing::info!(
                requeued = report.reclaimed.requeued,
                dead = report.reclaimed.dead,
                expired = report.expired,
                purged = report.purged,
                offline = report.offline,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sweep finished"
            ),
            Err(e) => tracing::warn!(error = %e, "sweep failed; retrying next interval"),
        }
    }
}
