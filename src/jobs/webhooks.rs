//! The webhook delivery worker (PROTOCOL.md §6).
//!
//! Deliveries are durable store records scheduled together with their
//! message. The worker claims due ones in batches no larger than its free
//! capacity (`WEBHOOK_CONCURRENCY`), so every claimed delivery is attempted at
//! once and its claim (`WEBHOOK_TIMEOUT_MS` + a margin) covers the whole
//! attempt. The claim is what makes several workers, in one process or on
//! several hub instances, safe: a delivery is handed to one claimant at a
//! time, and one whose worker died is simply retried when its claim runs out.
//!
//! Claims are fair (`Store::claim_due_deliveries_fair`): an agent whose
//! receiver has attempts in flight gets no new claims, and each agent at most
//! `WEBHOOK_PER_AGENT_CONCURRENCY` per claim, so a receiver that accepts and
//! never answers holds only its share of the slots while the others' deliveries
//! keep flowing.
//!
//! Each attempt reads the agent's *current* webhook URL and secret, so a
//! changed webhook takes effect for pending retries, and a removed webhook or
//! deleted agent cancels them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::hub::Hub;
use crate::store::{AttemptOutcome, Delivery, DeliveryAttempt, StoreResult};
use crate::webhook::{self, Notification, WebhookError};

/// Added to the attempt timeout to form the claim: time to record the outcome.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);

/// Webhook outcome counters since start, for logs and the metrics endpoint.
#[derive(Debug, Default)]
pub struct WebhookStats {
    attempts: AtomicU64,
    delivered: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
}

/// A copy of [`WebhookStats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WebhookCounts {
    /// HTTP attempts made (including those refused by the SSRF guard).
    pub attempts: u64,
    /// Deliveries that got a 2xx.
    pub delivered: u64,
    /// Failed attempts with a retry scheduled.
    pub retried: u64,
    /// Deliveries given up: the schedule ran out, or the message was gone.
    pub failed: u64,
    /// Deliveries cancelled at attempt time because the agent or webhook was gone.
    pub cancelled: u64,
}

impl WebhookStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> WebhookCounts {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WebhookCounts {
            attempts: read(&self.attempts),
            delivered: read(&self.delivered),
            retried: read(&self.retried),
            failed: read(&self.failed),
            cancelled: read(&self.cancelled),
        }
    }

    /// Counts one attempt and what it meant for its delivery.
    fn count(&self, outcome: AttemptOutcome) {
        let bump = |counter: &AtomicU64| counter.fetch_add(1, Ordering::Relaxed);
        bump(&self.attempts);
        bump(match outcome {
            AttemptOutcome::Delivered => &self.delivered,
            AttemptOutcome::RetryAt(_) => &self.retried,
            AttemptOutcome::Failed => &self.failed,
        });
    }
}

/// Attempts due deliveries until `hub.shutdown`, then waits for the attempts
/// in flight (each bounded by the timeout) before returning.
pub async fn run(hub: Arc<Hub>, stats: Arc<WebhookStats>) {
    let allow_private = hub.config.webhook_allow_private;
    let http = match webhook::http_client(allow_private, hub.config.webhook_timeout()) {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks stay pending");
            return;
        }
    };
    let worker = Arc::new(Worker {
        hub,
        http,
        stats,
        busy: Mutex::default(),
    });
    worker.run().await;
}

struct Worker {
    hub: Arc<Hub>,
    http: reqwest::Client,
    stats: Arc<WebhookStats>,
    /// Attempts in flight per agent (this worker's).
    busy: Mutex<HashMap<String, usize>>,
}

/// Where and with which secret an attempt is sent.
struct Target {
    url: String,
    /// Current secret first, then one being rotated out.
    secrets: Vec<String>,
}

impl Target {
    fn secret_refs(&self) -> Vec<&str> {
        self.secrets.iter().map(String::as_str).collect()
    }
}

impl Worker {
    async fn run(self: Arc<Self>) {
        let hub = &self.hub;
        let capacity = hub.config.webhook_concurrency as usize;
        let claim_ms = (hub.config.webhook_timeout() + CLAIM_MARGIN).as_millis() as i64;
        let poll = Duration::from_millis(hub.config.webhook_poll_interval_ms);
        let slots = Arc::new(Semaphore::new(capacity));
        let per_agent = hub.config.webhook_per_agent_concurrency as usize;
        let mut in_flight = JoinSet::new();
        loop {
            while in_flight.try_join_next().is_some() {}
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = hub.shutdown.cancelled() => break,
            };
            let mut permits = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                permits.push(permit);
            }
            let wanted = permits.len();
            // Fairness: an agent whose receiver still has attempts in flight
            // gets no new claims, and each agent at most its share per
            // claim, so one slow receiver holds at most
            // `WEBHOOK_PER_AGENT_CONCURRENCY` slots.
            let busy: Vec<String> = self.busy.lock().keys().cloned().collect();
            let claimed = match hub
                .store
                .claim_due_deliveries_fair(hub.clock.now_ms(), wanted, claim_ms, per_agent, &busy)
                .await
            {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming webhook deliveries failed");
                    Vec::new()
                }
            };
            let drained = claimed.len() < wanted;
            for (delivery, permit) in claimed.into_iter().zip(permits) {
                let worker = self.clone();
                *self
                    .busy
                    .lock()
                    .entry(delivery.agent_id.clone())
                    .or_default() += 1;
                in_flight.spawn(async move {
                    let agent_id = delivery.agent_id.clone();
                    worker.attempt(delivery).await;
                    worker.done(&agent_id);
                    drop(permit);
                });
            }
            if drained {
                tokio::select! {
                    _ = hub.webhook_wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = hub.shutdown.cancelled() => break,
                }
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// One attempt for `agent_id` ended: its receiver may be claimed for again.
    fn done(&self, agent_id: &str) {
        let mut busy = self.busy.lock();
        if let Some(n) = busy.get_mut(agent_id) {
            *n -= 1;
            if *n == 0 {
                busy.remove(agent_id);
            }
        }
    }

    /// Makes one attempt of a claimed delivery and records its outcome. A
    /// store error leaves the delivery claimed: it is retried when the claim ends.
    async fn attempt(&self, delivery: Delivery) {
        if let Err(e) = self.try_attempt(&delivery).await {
            tracing::warn!(delivery = %delivery.id, error = %e, "webhook attempt not recorded; retried after its claim");
        }
    }

    async fn try_attempt(&self, delivery: &Delivery) -> StoreResult<()> {
        let hub = &self.hub;
        let Some(target) = self.current_target(delivery).await? else {
            return Ok(());
        };
        let number = delivery.attempts + 1;
        let at = hub.clock.now_ms();
        let started = Instant::now();
        let result = match hub.store.get_message(&delivery.message_id).await? {
            Some(message) => {
                let request = Notification {
                    delivery_id: &delivery.id,
                    message_id: &message.id,
                    envelope: &message.envelope,
                    attempt: number,
                    at_ms: at,
                }
                .build(&target.secret_refs());
                self.send(&target.url, request).await
            }
            None => Err(Failure {
                permanent: true,
                ..Failure::error("the message is no longer stored")
            }),
        };
        let latency_ms = started.elapsed().as_millis() as u64;

        let (status_code, error) = match &result {
            Ok(status) => (Some(*status), None),
            Err(failure) => (failure.status, Some(failure.error.clone())),
        };
        let outcome = self.outcome(number, result.err());
        self.stats.count(outcome);
        hub.metrics.webhook_attempt(outcome, started.elapsed());
        tracing::info!(
            delivery = %delivery.id,
            message = %delivery.message_id,
            agent = %delivery.agent_id,
            attempt = number,
            status = status_code,
            latency_ms,
            error = error.as_deref(),
            outcome = ?outcome,
            "webhook attempt"
        );
        let record = DeliveryAttempt {
            delivery_id: delivery.id.clone(),
            message_id: delivery.message_id.clone(),
            agent_id: delivery.agent_id.clone(),
            attempt: number,
            at,
            status_code,
            latency_ms,
            error,
        };
        hub.store.record_attempt(&record, outcome).await
    }

    /// The agent's webhook as it is now; `None` (after cancelling the agent's
    /// pending deliveries) when the agent or its webhook is gone.
    async fn current_target(&self, delivery: &Delivery) -> StoreResult<Option<Target>> {
        let store = &self.hub.store;
        let agent = store.get_agent(&delivery.agent_id).await?;
        if let Some(agent) = agent
            && let Some(url) = &agent.webhook_url
        {
            let secrets = agent.webhook_signing_secrets(self.hub.clock.now_ms());
            return Ok(Some(Target {
                url: url.clone(),
                secrets: secrets.into_iter().map(str::to_string).collect(),
            }));
        }
        let cancelled = store
            .cancel_deliveries(&delivery.agent_id, self.hub.clock.now_ms())
            .await?;
        self.stats.cancelled.fetch_add(cancelled, Ordering::Relaxed);
        self.hub.metrics.webhooks_cancelled(cancelled);
        tracing::info!(agent = %delivery.agent_id, cancelled, "agent or webhook gone; deliveries cancelled");
        Ok(None)
    }

    /// Delivered, or when to retry (jittered schedule, never before
    /// `Retry-After`), or failed once the schedule is exhausted.
    fn outcome(&self, attempts_made: u32, failure: Option<Failure>) -> AttemptOutcome {
        let Some(failure) = failure else {
            return AttemptOutcome::Delivered;
        };
        if failure.permanent {
            return AttemptOutcome::Failed;
        }
        let delay = webhook::next_attempt_delay(
            &self.hub.config.webhook_retry_schedule,
            attempts_made,
            failure.retry_after,
            rand::thread_rng().gen_range(-1.0..=1.0),
        );
        match delay {
            Some(delay) => {
                AttemptOutcome::RetryAt(self.hub.clock.now_ms() + delay.as_millis() as i64)
            }
            None => AttemptOutcome::Failed,
        }
    }

    /// Sends one request; `Ok(status)` for a 2xx, otherwise why it failed.
    async fn send(&self, url: &str, request: webhook::WebhookRequest) -> Result<u16, Failure> {
        let url = webhook::check_url(url, self.hub.config.webhook_allow_private)
            .map_err(|e| Failure::error(e.to_string()))?;
        let mut builder = self.http.post(url).body(request.body);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let response = builder
            .send()
            .await
            .map_err(|e| Failure::from_transport(&e, &self.hub))?;
        let status = response.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| webhook::parse_retry_after(v, self.hub.clock.now_system()));
        let error = if status.is_redirection() {
            "redirect not followed".to_string()
        } else {
            format!("receiver answered {status}")
        };
        Err(Failure {
            status: Some(status.as_u16()),
            error,
            retry_after,
            permanent: false,
        })
    }
}

/// Why an attempt did not get a 2xx.
struct Failure {
    status: Option<u16>,
    error: String,
    retry_after: Option<Duration>,
    /// Retrying cannot help (the message is gone): fail the delivery now.
    permanent: bool,
}

impl Failure {
    fn error(error: impl Into<String>) -> Self {
        Failure {
            status: None,
            error: error.into(),
            retry_after: None,
            permanent: false,
        }
    }

    /// Names the cause of a transport error: timeout, SSRF refusal, or connection.
    fn from_transport(e: &reqwest::Error, hub: &Hub) -> Self {
        if e.is_timeout() {
            return Failure::error(format!(
                "timed out after {} ms",
                hub.config.webhook_timeout_ms
            ));
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(cause) = source {
            if let Some(guard) = cause.downcast_ref::<WebhookError>() {
                return Failure::error(guard.to_string());
            }
            source = cause.source();
        }
        Failure::error(format!("request failed: {}", error_chain(e)))
    }
}

/// `outer: inner: innermost`, since reqwest's own message hides the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
