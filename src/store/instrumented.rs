//! A `Store` that wraps another and reports every call to the hub's metrics:
//! latency and failures per operation, plus the message flow the calls
//! complete (sends stored, messages leased, acked, nacked, dead-lettered,
//! expired). Counting at this one boundary covers every caller (handlers,
//! sweeper, webhook worker) without touching the protocol code, and works the
//! same for every backend.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::*;
use crate::telemetry::Metrics;

/// Times and counts the calls made to `inner`.
pub struct InstrumentedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl InstrumentedStore {
    /// Wraps `inner`; calls go through unchanged.
    pub fn wrap(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<dyn Store> {
        Arc::new(InstrumentedStore { inner, metrics })
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .store_call(op, started.elapsed(), result.as_ref().err());
        result
    }
}

#[async_trait]
impl Store for InstrumentedStore {
    async fn ping(&self) -> StoreResult<()> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn create_agent(&self, agent: Agent) -> StoreResult<()> {
        self.timed("create_agent", self.inner.create_agent(agent))
            .await
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        self.timed("get_agent", self.inner.get_agent(agent_id))
            .await
    }

    async fn update_agent(&self, agent_id: &str, change: &AgentChange) -> StoreResult<Agent> {
        self.timed("update_agent", self.inner.update_agent(agent_id, change))
            .await
    }

    async fn delete_agent(&self, agent_id: &str, now: Millis) -> StoreResult<bool> {
        self.timed("delete_agent", self.inner.delete_agent(agent_id, now))
            .await
    }

    async fn mark_offline(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        self.timed("mark_offline", self.inner.mark_offline(now, limit))
            .await
    }

    async fn enqueue(
        &self,
        message: Message,
        quota: u64,
        delivery: Option<Delivery>,
    ) -> StoreResult<Enqueued> {
        let enqueued = self
            .timed("enqueue", self.inner.enqueue(message, quota, delivery))
            .await?;
        self.metrics
            .message_sent(matches!(enqueued, Enqueued::Duplicate(_)));
        Ok(enqueued)
    }

    async fn lease(&self, request: &LeaseRequest) -> StoreResult<Vec<Message>> {
        let leased = self.timed("lease", self.inner.lease(request)).await?;
        if !leased.is_empty() {
            self.metrics.messages_leased(leased.len() as u64);
        }
        Ok(leased)
    }

    async fn lease_held(
        &self,
        request: &LeaseRequest,
        holder: &str,
        from: Option<&str>,
    ) -> StoreResult<Vec<Message>> {
        let leased = self
            .timed("lease_held", self.inner.lease_held(request, holder, from))
            .await?;
        if !leased.is_empty() {
            self.metrics.messages_leased(leased.len() as u64);
        }
        Ok(leased)
    }

    async fn count_held(&self, recipient: &str, holder: &str, now: Millis) -> StoreResult<u64> {
        self.timed("count_held", self.inner.count_held(recipient, holder, now))
            .await
    }

    async fn release_held(
        &self,
        recipient: &str,
        holder: &str,
        now: Millis,
        max_attempts: u32,
    ) -> StoreResult<ReclaimCounts> {
        let counts = self
            .timed(
                "release_held",
                self.inner
                    .release_held(recipient, holder, now, max_attempts),
            )
            .await?;
        if counts.requeued > 0 {
            self.metrics.leases_reclaimed(counts.requeued);
        }
        if counts.dead > 0 {
            self.metrics.dead_lettered("stream_release", counts.dead);
        }
        Ok(counts)
    }

    async fn announce(&self, recipient: &str) -> StoreResult<()> {
        self.timed("announce", self.inner.announce(recipient)).await
    }

    async fn ack(&self, request: &AckRequest) -> StoreResult<Message> {
        let acked = self.timed("ack", self.inner.ack(request)).await?;
        self.metrics.message_acked();
        Ok(acked)
    }

    async fn ack_many(&self, requests: &[AckRequest]) -> StoreResult<Vec<StoreResult<Message>>> {
        self.timed("ack_many", self.inner.ack_many(requests)).await
    }

    async fn nack(&self, request: &NackRequest) -> StoreResult<Message> {
        let message = self.timed("nack", self.inner.nack(request)).await?;
        if message.state == MessageState::Dead {
            self.metrics.dead_lettered("nack", 1);
        } else {
            self.metrics
                .message_nacked(matches!(request.action, NackAction::Extend { .. }));
        }
        Ok(message)
    }

    async fn requeue_dead(
        &self,
        recipient: &str,
        message_id: &str,
        now: Millis,
    ) -> StoreResult<Message> {
        self.timed(
            "requeue_dead",
            self.inner.requeue_dead(recipient, message_id, now),
        )
        .await
    }

    async fn get_message(&self, message_id: &str) -> StoreResult<Option<Message>> {
        self.timed("get_message", self.inner.get_message(message_id))
            .await
    }

    async fn list_dead(
        &self,
        recipient: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        self.timed("list_dead", self.inner.list_dead(recipient, limit, cursor))
            .await
    }

    async fn next_available_at(&self, recipient: &str) -> StoreResult<Option<Millis>> {
        self.timed("next_available_at", self.inner.next_available_at(recipient))
            .await
    }

    async fn peek_queued(
        &self,
        recipient: &str,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        self.timed("peek_queued", self.inner.peek_queued(recipient, now, limit))
            .await
    }

    async fn inbox_stats(&self, recipient: &str) -> StoreResult<StateCounts> {
        self.timed("inbox_stats", self.inner.inbox_stats(recipient))
            .await
    }

    async fn stats(&self) -> StoreResult<HubStats> {
        self.timed("stats", self.inner.stats()).await
    }

    async fn reclaim_expired_leases(&self, request: &ReclaimRequest) -> StoreResult<ReclaimCounts> {
        let counts = self
            .timed(
                "reclaim_expired_leases",
                self.inner.reclaim_expired_leases(request),
            )
            .await?;
        if counts.requeued > 0 {
            self.metrics.leases_reclaimed(counts.requeued);
        }
        if counts.dead > 0 {
            self.metrics.dead_lettered("lease_expiry", counts.dead);
        }
        Ok(counts)
    }

    async fn expire_messages(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        let n = self
            .timed("expire_messages", self.inner.expire_messages(now, limit))
            .await?;
        if n > 0 {
            self.metrics.messages_expired(n);
        }
        Ok(n)
    }

    async fn purge_retained(&self, ended_before: Millis, limit: usize) -> StoreResult<u64> {
        self.timed(
            "purge_retained",
            self.inner.purge_retained(ended_before, limit),
        )
        .await
    }

    async fn claim_due_deliveries(
        &self,
        now: Millis,
        limit: usize,
        claim_ms: i64,
    ) -> StoreResult<Vec<Delivery>> {
        self.timed(
            "claim_due_deliveries",
            self.inner.claim_due_deliveries(now, limit, claim_ms),
        )
        .await
    }

    async fn record_attempt(
        &self,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<()> {
        self.timed(
            "record_attempt",
            self.inner.record_attempt(attempt, outcome),
        )
        .await
    }

    async fn cancel_deliveries(&self, agent_id: &str, now: Millis) -> StoreResult<u64> {
        self.timed(
            "cancel_deliveries",
            self.inner.cancel_deliveries(agent_id, now),
        )
        .await
    }

    async fn get_delivery(&self, delivery_id: &str) -> StoreResult<Option<Delivery>> {
        self.timed("get_delivery", self.inner.get_delivery(delivery_id))
            .await
    }

    async fn list_attempts(
        &self,
        agent_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryAttempt>> {
        self.timed("list_attempts", self.inner.list_attempts(agent_id, limit))
            .await
    }

    async fn append_audit(&self, event: NewAuditEvent) -> StoreResult<AuditEvent> {
        self.timed("append_audit", self.inner.append_audit(event))
            .await
    }

    async fn list_audit(&self, after: Option<u64>, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        self.timed("list_audit", self.inner.list_audit(after, limit))
            .await
    }

    async fn export_agents(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<Agent>> {
        self.timed("export_agents", self.inner.export_agents(after, limit))
            .await
    }

    async fn export_messages(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        self.timed("export_messages", self.inner.export_messages(after, limit))
            .await
    }

    async fn import_agent(&self, agent: Agent) -> StoreResult<bool> {
        self.timed("import_agent", self.inner.import_agent(agent))
            .await
    }

    async fn import_message(&self, message: Message) -> StoreResult<bool> {
        self.timed("import_message", self.inner.import_message(message))
            .await
    }

    async fn create_group(&self, group: Group, now: Millis) -> StoreResult<()> {
        self.timed("create_group", self.inner.create_group(group, now))
            .await
    }

    async fn get_group(&self, group_id: &str) -> StoreResult<Option<Group>> {
        self.timed("get_group", self.inner.get_group(group_id))
            .await
    }

    async fn update_group(&self, group_id: &str, change: &GroupChange) -> StoreResult<Group> {
        self.timed("update_group", self.inner.update_group(group_id, change))
            .await
    }

    async fn delete_group(&self, group_id: &str) -> StoreResult<bool> {
        self.timed("delete_group", self.inner.delete_group(group_id))
            .await
    }

    async fn group_member(
        &self,
        group_id: &str,
        agent_id: &str,
    ) -> StoreResult<Option<GroupMember>> {
        self.timed("group_member", self.inner.group_member(group_id, agent_id))
            .await
    }

    async fn group_members(&self, group_id: &str) -> StoreResult<Vec<GroupMember>> {
        self.timed("group_members", self.inner.group_members(group_id))
            .await
    }

    async fn add_group_member(&self, group_id: &str, member: GroupMember) -> StoreResult<()> {
        self.timed(
            "add_group_member",
            self.inner.add_group_member(group_id, member),
        )
        .await
    }

    async fn remove_group_member(&self, group_id: &str, agent_id: &str) -> StoreResult<bool> {
        self.timed(
            "remove_group_member",
            self.inner.remove_group_member(group_id, agent_id),
        )
        .await
    }

    async fn agent_groups(
        &self,
        agent_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> StoreResult<Vec<(Group, GroupRole)>> {
        self.timed(
            "agent_groups",
            self.inner.agent_groups(agent_id, limit, after),
        )
        .await
    }

    async fn post_to_group(&self, post: GroupPost, fan: FanOut) -> StoreResult<Posted> {
        self.timed("post_to_group", self.inner.post_to_group(post, fan))
            .await
    }

    async fn group_history(
        &self,
        group_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<GroupPost>> {
        self.timed(
            "group_history",
            self.inner.group_history(group_id, limit, cursor),
        )
        .await
    }

    async fn search_agents(
        &self,
        prefix: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Agent>> {
        self.timed(
            "search_agents",
            self.inner.search_agents(prefix, limit, cursor),
        )
        .await
    }

    async fn purge_group_history(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        self.timed(
            "purge_group_history",
            self.inner.purge_group_history(now, limit),
        )
        .await
    }

    async fn remember_nonce(
        &self,
        key: &str,
        expires_at: Millis,
        now: Millis,
    ) -> StoreResult<bool> {
        self.timed(
            "remember_nonce",
            self.inner.remember_nonce(key, expires_at, now),
        )
        .await
    }

    async fn list_dead_all(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        self.timed("list_dead_all", self.inner.list_dead_all(limit, cursor))
            .await
    }

    async fn list_failing_deliveries(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Delivery>> {
        self.timed(
            "list_failing_deliveries",
            self.inner.list_failing_deliveries(limit, cursor),
        )
        .await
    }

    async fn purge_nonces(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        self.timed("purge_nonces", self.inner.purge_nonces(now, limit))
            .await
    }

    async fn retire_agent_id(&self, agent_id: &str, now: Millis) -> StoreResult<()> {
        self.timed("retire_agent_id", self.inner.retire_agent_id(agent_id, now))
            .await
    }

    async fn is_agent_id_retired(&self, agent_id: &str) -> StoreResult<bool> {
        self.timed(
            "is_agent_id_retired",
            self.inner.is_agent_id_retired(agent_id),
        )
        .await
    }

    async fn retry_delivery(
        &self,
        delivery_id: &str,
        now: Millis,
    ) -> StoreResult<Option<Delivery>> {
        self.timed(
            "retry_delivery",
            self.inner.retry_delivery(delivery_id, now),
        )
        .await
    }

    async fn claim_due_deliveries_fair(
        &self,
        now: Millis,
        limit: usize,
        claim_ms: i64,
        per_agent: usize,
        skip_agents: &[String],
    ) -> StoreResult<Vec<Delivery>> {
        self.timed(
            "claim_due_deliveries_fair",
            self.inner
                .claim_due_deliveries_fair(now, limit, claim_ms, per_agent, skip_agents),
        )
        .await
    }
}
