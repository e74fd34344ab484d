//! Background work that keeps the hub tidy and pushes webhooks without
//! blocking requests: the periodic sweeper and the webhook delivery worker.

pub mod sweeper;
pub mod webhooks;

use std::sync::Arc;

/// Live counters of the background jobs, shared with whoever reports them
/// (logs today, the metrics endpoint later).
#[derive(Debug, Clone, Default)]
pub struct JobStats {
    pub sweep: Arc<sweeper::SweepStats>,
    pub webhooks: Arc<webhooks::WebhookStats>,
}
