//! The consumer side: pull under a lease (with long-poll), ack, nack, dead
//! letters, reclaim and status (PROTOCOL.md §4–5).

use std::time::Duration;

use super::{Caller, Hub, HubError, HubResult};
use crate::config::AgentAuth;
use crate::store::{
    AckRequest, LeaseRequest, Message, NackAction, NackRequest, Page, ReclaimCounts,
    ReclaimRequest, StateCounts,
};

/// Default lease length in seconds.
pub const DEFAULT_VISIBILITY_SEC: u64 = 60;
/// Longest lease, and the cap on a lease extended by nack (12 h).
pub const MAX_VISIBILITY_SEC: u64 = 43_200;
/// Longest long-poll.
pub const MAX_WAIT_SEC: u64 = 20;
/// Largest batch for batch pull and batch ack.
pub const MAX_BATCH: u64 = 100;
/// Default page size of the dead-letter listing.
pub const DEFAULT_DEAD_PAGE: usize = 50;
/// Default and largest number of waiting messages a peek shows.
pub const DEFAULT_PEEK: usize = 5;
pub const MAX_PEEK: usize = 20;

/// Pull parameters as sent by the client (validated here).
#[derive(Debug, Default, Clone)]
pub struct PullInput {
    pub visibility_timeout: Option<u64>,
    pub wait_sec: Option<u64>,
    pub max_messages: Option<u64>,
}

/// One entry of a batch ack.
#[derive(Debug, Default, Clone)]
pub struct AckInput {
    pub message_id: String,
    pub lease_id: Option<String>,
    pub result: Option<serde_json::Value>,
}

/// Nack parameters as sent by the client.
#[derive(Debug, Default, Clone)]
pub struct NackInput {
    pub extend_sec: Option<u64>,
    pub delay_sec: Option<u64>,
    pub lease_id: Option<String>,
}

impl Hub {
    /// Checks that `caller` may act for `agent_id`, and that the agent exists
    /// when the caller is not the agent itself (operator or legacy mode).
    pub async fn scope(&self, caller: &Caller, agent_id: &str) -> HubResult<()> {
        self.authorize_gate(caller)?;
        self.authorize_agent(caller, agent_id)?;
        if caller.agent_id() != Some(agent_id) {
            self.agent(agent_id).await?;
        }
        Ok(())
    }

    /// [`Hub::scope`], except that the operator may also read what a deleted
    /// (retired) agent left behind: its dead letters, until retention purges
    /// them. Nobody else can, since nobody can authenticate as a retired id.
    pub async fn scope_retained(&self, caller: &Caller, agent_id: &str) -> HubResult<()> {
        match self.scope(caller, agent_id).await {
            Err(HubError::AgentNotFound(_))
                if *caller == Caller::Master
                    && self.store.is_agent_id_retired(agent_id).await? =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Leases up to `max_messages` (1 when absent); with `wait_sec` waits for
    /// the first message to arrive, returning empty at the deadline or on shutdown.
    pub async fn pull(&self, agent_id: &str, input: &PullInput) -> HubResult<Vec<Message>> {
        let visibility = input.visibility_timeout.unwrap_or(DEFAULT_VISIBILITY_SEC);
        if !(1..=MAX_VISIBILITY_SEC).contains(&visibility) {
            return Err(HubError::invalid(
                "visibility_timeout",
                format!("must be between 1 and {MAX_VISIBILITY_SEC} seconds"),
            ));
        }
        let wait = input.wait_sec.unwrap_or(0);
        if wait > MAX_WAIT_SEC {
            return Err(HubError::invalid(
                "wait_sec",
                format!("must be between 0 and {MAX_WAIT_SEC}"),
            ));
        }
        let max = input.max_messages.unwrap_or(1);
        if !(1..=MAX_BATCH).contains(&max) {
            return Err(HubError::invalid(
                "max_messages",
                format!("must be between 1 and {MAX_BATCH}"),
            ));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let notify = self.wakers.get(agent_id);
        loop {
            // Register interest before looking, so a send between the look and
            // the wait still wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let request = LeaseRequest {
                recipient: agent_id.to_string(),
                now: self.now(),
                visibility_ms: (visibility * 1000) as i64,
                max_messages: max as usize,
                max_attempts: self.config.max_delivery_attempts,
            };
            let leased = self.store.lease(&request).await?;
            let timed_out = tokio::time::Instant::now() >= deadline;
            if !leased.is_empty() || timed_out || self.shutdown.is_cancelled() {
                return Ok(leased);
            }
            // A delayed nack or an expiring lease makes a message leasable
            // without any send to wake us: look again at that moment.
            let recheck = match self.store.next_available_at(agent_id).await? {
                Some(at) if at > request.now => {
                    let after = Duration::from_millis((at - request.now) as u64);
                    deadline.min(tokio::time::Instant::now() + after)
                }
                _ => deadline,
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(recheck) => {}
                _ = self.shutdown.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// Acknowledges a leased message.
    pub async fn ack(
        &self,
        agent_id: &str,
        message_id: &str,
        lease_id: Option<String>,
        result: Option<serde_json::Value>,
    ) -> HubResult<Message> {
        let request = AckRequest {
            recipient: agent_id.to_string(),
            message_id: message_id.to_string(),
            lease_id,
            result,
            now: self.now(),
        };
        let acked = self
            .store
            .ack(&request)
            .await
            .map_err(|e| not_found_as(e.into(), message_id))?;
        self.settled(agent_id, std::slice::from_ref(&request.lease_id))
            .await;
        Ok(acked)
    }

    /// Acknowledges 1..=`MAX_BATCH` messages in one store step; each entry
    /// gets its own outcome, as a single ack would.
    pub async fn ack_batch(
        &self,
        agent_id: &str,
        entries: Vec<AckInput>,
    ) -> HubResult<Vec<HubResult<Message>>> {
        if !(1..=MAX_BATCH as usize).contains(&entries.len()) {
            return Err(HubError::invalid(
                "acks",
                format!("must hold between 1 and {MAX_BATCH} entries"),
            ));
        }
        let now = self.now();
        let requests: Vec<AckRequest> = entries
            .into_iter()
            .map(|entry| AckRequest {
                recipient: agent_id.to_string(),
                message_id: entry.message_id,
                lease_id: entry.lease_id,
                result: entry.result,
                now,
            })
            .collect();
        let outcomes = self.store.ack_many(&requests).await?;
        let lease_ids: Vec<Option<String>> = requests.iter().map(|r| r.lease_id.clone()).collect();
        self.settled(agent_id, &lease_ids).await;
        Ok(outcomes
            .into_iter()
            .zip(&requests)
            .map(|(outcome, request)| {
                outcome.map_err(|e| not_found_as(e.into(), &request.message_id))
            })
            .collect())
    }

    /// Extends a lease, or requeues the message (visible after `delay_sec`).
    pub async fn nack(
        &self,
        agent_id: &str,
        message_id: &str,
        input: NackInput,
    ) -> HubResult<Message> {
        let now = self.now();
        let max_lease_until = now + (MAX_VISIBILITY_SEC * 1000) as i64;
        let action = match (input.extend_sec, input.delay_sec) {
            (Some(extend), _) if extend > 0 => {
                if extend > MAX_VISIBILITY_SEC {
                    return Err(HubError::invalid(
                        "extend_sec",
                        format!("must be at most {MAX_VISIBILITY_SEC}"),
                    ));
                }
                NackAction::Extend {
                    extend_ms: (extend * 1000) as i64,
                    max_lease_until,
                }
            }
            (_, delay) => {
                let delay = delay.unwrap_or(0);
                if delay > MAX_VISIBILITY_SEC {
                    return Err(HubError::invalid(
                        "delay_sec",
                        format!("must be at most {MAX_VISIBILITY_SEC}"),
                    ));
                }
                NackAction::Requeue {
                    visible_at: now + (delay * 1000) as i64,
                }
            }
        };
        let request = NackRequest {
            recipient: agent_id.to_string(),
            message_id: message_id.to_string(),
            lease_id: input.lease_id,
            action,
            max_attempts: self.config.max_delivery_attempts,
            now,
        };
        let message = self
            .store
            .nack(&request)
            .await
            .map_err(|e| not_found_as(e.into(), message_id))?;
        self.settled(agent_id, std::slice::from_ref(&request.lease_id))
            .await;
        if matches!(action, NackAction::Requeue { visible_at } if visible_at <= now) {
            self.wakers.wake(agent_id);
        }
        Ok(message)
    }

    /// Message status, visible to its sender, its recipient and the operator.
    pub async fn message_status(&self, caller: &Caller, message_id: &str) -> HubResult<Message> {
        // Refuse a caller without credentials before the lookup, so that the
        // answer (401 or 404) does not tell whether the message exists.
        if *caller == Caller::Anonymous && self.config.agent_auth != AgentAuth::Legacy {
            return Err(HubError::AuthRequired);
        }
        let message = self
            .store
            .get_message(message_id)
            .await?
            .ok_or_else(|| HubError::MessageNotFound(message_id.to_string()))?;
        match caller {
            Caller::Master => Ok(message),
            Caller::Agent { agent_id, .. }
                if *agent_id == message.sender || *agent_id == message.recipient =>
            {
                Ok(message)
            }
            Caller::Agent { .. } => Err(HubError::Forbidden(
                "only the sender or recipient may read a message's status".into(),
            )),
            Caller::Anonymous => {
                self.authorize_agent(caller, &message.recipient)?;
                Ok(message)
            }
        }
    }

    /// Counts of one inbox by state.
    pub async fn inbox_stats(&self, agent_id: &str) -> HubResult<StateCounts> {
        Ok(self.store.inbox_stats(agent_id).await?)
    }

    /// The next `limit` (1..=20, default 5) waiting messages, in pull order,
    /// without leasing them: what an inbox overview shows.
    pub async fn peek_inbox(
        &self,
        agent_id: &str,
        limit: Option<usize>,
    ) -> HubResult<Vec<Message>> {
        let limit = limit.unwrap_or(DEFAULT_PEEK);
        if !(1..=MAX_PEEK).contains(&limit) {
            return Err(HubError::invalid(
                "limit",
                format!("must be between 1 and {MAX_PEEK}"),
            ));
        }
        Ok(self.store.peek_queued(agent_id, self.now(), limit).await?)
    }

    /// The inbox's counts once they are no longer `unchanged`: at once if
    /// they already differ, else as soon as a message becomes available (the
    /// wake-ups long-poll uses) or at the end of `wait_sec`, whichever comes
    /// first. Leases nothing: a watcher learns that mail arrived without
    /// taking it from the consumer that will pull it.
    pub async fn watch_inbox_stats(
        &self,
        agent_id: &str,
        wait_sec: u64,
        unchanged: impl Fn(&StateCounts) -> bool,
    ) -> HubResult<StateCounts> {
        if wait_sec > MAX_WAIT_SEC {
            return Err(HubError::invalid(
                "wait_sec",
                format!("must be between 0 and {MAX_WAIT_SEC}"),
            ));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_sec);
        let notify = self.wakers.get(agent_id);
        loop {
            // Register interest before counting, so a send in between still wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let counts = self.store.inbox_stats(agent_id).await?;
            if !unchanged(&counts)
                || tokio::time::Instant::now() >= deadline
                || self.shutdown.is_cancelled()
            {
                return Ok(counts);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Ends this agent's expired leases now instead of waiting for the sweeper.
    pub async fn reclaim(&self, agent_id: &str) -> HubResult<ReclaimCounts> {
        let counts = self
            .store
            .reclaim_expired_leases(&ReclaimRequest {
                now: self.now(),
                max_attempts: self.config.max_delivery_attempts,
                limit: usize::MAX,
                recipient: Some(agent_id.to_string()),
            })
            .await?;
        if counts.requeued > 0 {
            self.wakers.wake(agent_id);
        }
        Ok(counts)
    }

    /// One page of dead letters.
    pub async fn dead_letters(
        &self,
        agent_id: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> HubResult<Page<Message>> {
        let limit = limit.unwrap_or(DEFAULT_DEAD_PAGE);
        if !(1..=MAX_BATCH as usize).contains(&limit) {
            return Err(HubError::invalid(
                "limit",
                format!("must be between 1 and {MAX_BATCH}"),
            ));
        }
        Ok(self.store.list_dead(agent_id, limit, cursor).await?)
    }

    /// Moves a dead letter back to the queue with its attempts reset.
    pub async fn requeue_dead(&self, agent_id: &str, message_id: &str) -> HubResult<Message> {
        let message = self
            .store
            .requeue_dead(agent_id, message_id, self.now())
            .await
            .map_err(|e| not_found_as(e.into(), message_id))?;
        self.wakers.wake(agent_id);
        Ok(message)
    }
}

/// Store "not found" errors carry no id; name the message the caller asked about.
fn not_found_as(e: HubError, message_id: &str) -> HubError {
    match e {
        HubError::MessageNotFound(_) => HubError::MessageNotFound(message_id.to_string()),
        e => e,
    }
}
