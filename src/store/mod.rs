//! Storage: one trait of whole, atomic operations and one module per backend.
//!
//! The old server read a whole inbox, sorted it in the service layer and wrote
//! records back one by one, which double-leased under concurrency. Every
//! operation here is a complete state transition that the backend makes atomic,
//! so correctness never depends on the caller.

mod group_index;
mod groups;
mod inproc_console;
pub mod instrumented;
pub mod mech;
pub mod memory;
mod model;
pub mod postgres;
pub mod scratch;
mod sql;
mod sql_agents;
mod sql_conn;
mod sql_console;
mod sql_groups;
mod sql_ops;
mod sql_peek;
mod sql_security;
mod sql_stream;
pub mod sqlite;
pub mod transfer;

use async_trait::async_trait;
use serde_json::Value;

pub use groups::*;
pub use model::*;

/// Why a store operation failed; the hub turns these into protocol errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("agent already exists")]
    AgentExists,
    #[error("agent not found")]
    AgentNotFound,
    #[error("message not found")]
    MessageNotFound,
    #[error("message is not leased")]
    NotLeased,
    #[error("lease_id does not match the current lease")]
    LeaseMismatch,
    #[error("message is not dead-lettered")]
    NotDead,
    #[error("recipient inbox is full")]
    InboxFull,
    #[error("idempotency key reused with different content")]
    IdempotencyConflict,
    #[error("message id already used by another inbox")]
    MessageIdTaken,
    #[error("invalid cursor")]
    InvalidCursor,
    #[error("group id already taken")]
    GroupExists,
    #[error("group not found")]
    GroupNotFound,
    #[error("already a member of the group")]
    AlreadyMember,
    #[error("the group has reached max_members")]
    GroupFull,
    #[error("not a member of the group")]
    NotMember,
    /// A change would grow a bounded field past its limit (the field's name).
    #[error("{0} would exceed its size limit")]
    TooLarge(&'static str),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Internal(String),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// The storage contract every backend implements; see `tests/store_conformance.rs`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip used by `/ready`.
    async fn ping(&self) -> StoreResult<()>;

    /// Inserts a new agent; fails with `AgentExists` if the id is taken.
    async fn create_agent(&self, agent: Agent) -> StoreResult<()>;
    /// Fetches one agent.
    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>>;
    /// Applies one change to an agent atomically and returns the new record.
    async fn update_agent(&self, agent_id: &str, change: &AgentChange) -> StoreResult<Agent>;
    /// Deletes an agent and dead-letters its live inbox in the same step.
    async fn delete_agent(&self, agent_id: &str, now: Millis) -> StoreResult<bool>;
    /// Marks agents whose heartbeat is older than their timeout offline; returns how many.
    async fn mark_offline(&self, now: Millis, limit: usize) -> StoreResult<u64>;

    /// Stores a message unless its idempotency key was seen (then returns the
    /// original), enforcing the recipient's live-message quota. A new message's
    /// webhook `delivery` is recorded in the same step (same transaction where
    /// the backend has them); a duplicate schedules nothing.
    async fn enqueue(
        &self,
        message: Message,
        quota: u64,
        delivery: Option<Delivery>,
    ) -> StoreResult<Enqueued>;
    /// Atomically leases the oldest visible messages of one inbox.
    async fn lease(&self, request: &LeaseRequest) -> StoreResult<Vec<Message>>;
    /// When the inbox's earliest live message becomes leasable (`queued` past
    /// its delay, or `leased` past its lease); `None` when it holds none. A
    /// long-poll sleeps until then, since time alone (no send) makes it ready.
    async fn next_available_at(&self, recipient: &str) -> StoreResult<Option<Millis>>;
    /// Acknowledges a leased message.
    async fn ack(&self, request: &AckRequest) -> StoreResult<Message>;
    /// Acknowledges several messages in one step (one transaction where the
    /// backend has them, so a batch costs one commit, not one per entry).
    /// Each entry succeeds or fails on its own, exactly as [`Store::ack`]
    /// would; the outer error means the whole batch could not be attempted.
    async fn ack_many(&self, requests: &[AckRequest]) -> StoreResult<Vec<StoreResult<Message>>> {
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            outcomes.push(self.ack(request).await);
        }
        Ok(outcomes)
    }
    /// Extends a lease or puts the message back (possibly delayed, possibly to the dead letters).
    async fn nack(&self, request: &NackRequest) -> StoreResult<Message>;
    /// Moves a dead-lettered message back to `queued` with its attempts reset.
    async fn requeue_dead(
        &self,
        recipient: &str,
        message_id: &str,
        now: Millis,
    ) -> StoreResult<Message>;
    /// Fetches one message by id.
    async fn get_message(&self, message_id: &str) -> StoreResult<Option<Message>>;
    /// Pages through an inbox's dead letters, oldest first.
    async fn list_dead(
        &self,
        recipient: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>>;
    /// Counts one inbox's messages by state.
    async fn inbox_stats(&self, recipient: &str) -> StoreResult<StateCounts>;
    /// Up to `limit` messages of an inbox that are waiting (`queued`, visible
    /// at `now`, not past their TTL), in the order a pull would take them;
    /// leases nothing.
    async fn peek_queued(
        &self,
        recipient: &str,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Message>>;
    /// Counts agents and messages across the hub.
    async fn stats(&self) -> StoreResult<HubStats>;

    /// Ends expired leases: back to `queued`, or `dead` once attempts reached the maximum.
    async fn reclaim_expired_leases(&self, request: &ReclaimRequest) -> StoreResult<ReclaimCounts>;
    /// Marks live messages past their TTL `expired`.
    async fn expire_messages(&self, now: Millis, limit: usize) -> StoreResult<u64>;
    /// Deletes acked, expired and dead records that ended before `ended_before`.
    async fn purge_retained(&self, ended_before: Millis, limit: usize) -> StoreResult<u64>;

    /// Claims pending deliveries due at `now`: each is returned once and its
    /// `next_attempt_at` moves to `now + claim_ms`, so a worker that dies
    /// mid-attempt only delays the retry. Safe with several workers/instances.
    async fn claim_due_deliveries(
        &self,
        now: Millis,
        limit: usize,
        claim_ms: i64,
    ) -> StoreResult<Vec<Delivery>>;
    /// Records one attempt and moves the delivery to its next state.
    async fn record_attempt(
        &self,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<()>;
    /// Cancels an agent's pending deliveries (webhook removed or agent deleted).
    async fn cancel_deliveries(&self, agent_id: &str, now: Millis) -> StoreResult<u64>;
    /// Fetches one delivery.
    async fn get_delivery(&self, delivery_id: &str) -> StoreResult<Option<Delivery>>;
    /// The agent's most recent attempts, newest first.
    async fn list_attempts(
        &self,
        agent_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryAttempt>>;

    /// Appends to the audit log, assigning the next `seq` and chaining the hash
    /// (`crate::audit::chain_hash`) atomically.
    async fn append_audit(&self, event: NewAuditEvent) -> StoreResult<AuditEvent>;
    /// Audit events with `seq > after`, oldest first.
    async fn list_audit(&self, after: Option<u64>, limit: usize) -> StoreResult<Vec<AuditEvent>>;

    /// Agents ordered by id, after `after` (export).
    async fn export_agents(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<Agent>>;
    /// Messages of every state ordered by id, after `after` (export).
    async fn export_messages(&self, after: Option<&str>, limit: usize)
    -> StoreResult<Vec<Message>>;
    /// Inserts an exported agent as is; false (and no change) if the id exists.
    async fn import_agent(&self, agent: Agent) -> StoreResult<bool>;
    /// Inserts an exported message as is (state, attempts, lease, idempotency
    /// key); false (and no change) if the id exists.
    async fn import_message(&self, message: Message) -> StoreResult<bool>;

    /// Inserts a group and its owner (`created_by`, role owner) in one step;
    /// `GroupExists` if the id is taken, `AgentNotFound` without the owner.
    async fn create_group(&self, group: Group, now: Millis) -> StoreResult<()>;
    /// Fetches a group with its `member_count`.
    async fn get_group(&self, group_id: &str) -> StoreResult<Option<Group>>;
    /// Applies an owner's or admin's change and returns the new group.
    async fn update_group(&self, group_id: &str, change: &GroupChange) -> StoreResult<Group>;
    /// Deletes a group, its members and its history; false if there was none.
    async fn delete_group(&self, group_id: &str) -> StoreResult<bool>;
    /// One membership record.
    async fn group_member(
        &self,
        group_id: &str,
        agent_id: &str,
    ) -> StoreResult<Option<GroupMember>>;
    /// Members ordered by agent id.
    async fn group_members(&self, group_id: &str) -> StoreResult<Vec<GroupMember>>;
    /// Adds one member, enforcing the group's `max_members` exactly under
    /// concurrency: `GroupNotFound`, `AgentNotFound`, `AlreadyMember`, `GroupFull`.
    async fn add_group_member(&self, group_id: &str, member: GroupMember) -> StoreResult<()>;
    /// Removes one member; false if it was none.
    async fn remove_group_member(&self, group_id: &str, agent_id: &str) -> StoreResult<bool>;
    /// The groups an agent belongs to with its role, ordered by group id,
    /// at most `limit` of those after the group id `after` (index range on
    /// `(agent_id, group_id)`: the console pages with it).
    async fn agent_groups(
        &self,
        agent_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> StoreResult<Vec<(Group, GroupRole)>>;
    /// Fans a post out in ONE atomic step: the sender's membership is
    /// checked, the history record and one copy per other member (with its
    /// webhook delivery) are stored together, a member whose inbox is full
    /// only fails its own copy. The idempotency key (scope: the group) makes
    /// a retry return the original post. `NotMember`, `GroupNotFound`,
    /// `IdempotencyConflict`, `MessageIdTaken` store nothing.
    async fn post_to_group(&self, post: GroupPost, fan: FanOut) -> StoreResult<Posted>;
    /// A group's history, newest first, after `cursor` (see [`history_cursor`]).
    async fn group_history(
        &self,
        group_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<GroupPost>>;
    /// Deletes history records past their `expires_at`, at most `limit`.
    async fn purge_group_history(&self, now: Millis, limit: usize) -> StoreResult<u64>;
    /// Agents whose id starts with `prefix` (empty: all), ordered by id,
    /// after `cursor` (the last id of the previous page): the console's search.
    async fn search_agents(
        &self,
        prefix: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Agent>>;
    /// Dead letters of every inbox, oldest first (cursor `<ended_at>.<seq>`).
    async fn list_dead_all(&self, limit: usize, cursor: Option<&str>)
    -> StoreResult<Page<Message>>;
    /// Deliveries whose last attempt failed (`failed`, or `pending` after at
    /// least one attempt), most recently updated first (cursor `<updated_at>.<id>`).
    async fn list_failing_deliveries(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Delivery>>;
    /// Makes a `pending` or `failed` delivery `pending` and due at `now`
    /// (an operator's "retry now"); a delivered or cancelled one is returned
    /// unchanged; `None` when there is no such delivery.
    async fn retry_delivery(&self, delivery_id: &str, now: Millis)
    -> StoreResult<Option<Delivery>>;

    // Security hardening (issue 12): replay protection shared by every
    // instance, and agent ids that deletion retires for good (SECURITY.md).
    /// Remembers a request nonce (`key`, a fixed-size digest) until
    /// `expires_at`, atomically: true when it was new (or only an expired
    /// entry held it), false when a live entry holds it (a replay).
    async fn remember_nonce(&self, key: &str, expires_at: Millis, now: Millis)
    -> StoreResult<bool>;
    /// Forgets up to `limit` nonces that expired at or before `now`; returns how many.
    async fn purge_nonces(&self, now: Millis, limit: usize) -> StoreResult<u64>;
    /// Records that `agent_id` was deleted: it can never be registered again
    /// (a tombstone). Idempotent.
    async fn retire_agent_id(&self, agent_id: &str, now: Millis) -> StoreResult<()>;
    /// Whether `agent_id` was retired by a deletion.
    async fn is_agent_id_retired(&self, agent_id: &str) -> StoreResult<bool>;
    /// [`Store::claim_due_deliveries`], fairly: at most `per_agent`
    /// deliveries of one agent, none of the agents in `skip_agents` (their
    /// receivers already have attempts in flight), oldest due first. So one
    /// slow receiver with a backlog holds at most its share of the worker.
    async fn claim_due_deliveries_fair(
        &self,
        now: Millis,
        limit: usize,
        claim_ms: i64,
        per_agent: usize,
        skip_agents: &[String],
    ) -> StoreResult<Vec<Delivery>>;

    // Streaming delivery (issue 14). A stream's leases carry its id as their
    // lease-id prefix (`holder_tag`): no new column, and the tag ends with
    // the lease, since ack, nack and reclaim all clear or replace the id.
    /// [`Store::lease`] on behalf of stream `holder`: every lease id it
    /// issues carries the holder's tag. With `from`, it takes instead the
    /// messages stream `from` holds leased (whatever their lease end), in
    /// arrival order, up to `max_messages`: a resumed stream taking over
    /// what an earlier connection left unsettled. Either way a message past
    /// its TTL expires and one already leased `max_attempts` times goes to
    /// the dead letters instead of being leased again.
    async fn lease_held(
        &self,
        request: &LeaseRequest,
        holder: &str,
        from: Option<&str>,
    ) -> StoreResult<Vec<Message>>;
    /// How many messages of `recipient` stream `holder` holds under a lease
    /// still running at `now` (its unsettled deliveries).
    async fn count_held(&self, recipient: &str, holder: &str, now: Millis) -> StoreResult<u64>;
    /// Ends every lease stream `holder` holds in `recipient`'s inbox as an
    /// expired lease ends (the delivery counted as an attempt): requeued,
    /// visible at `now`, or dead at `max_attempts`. Wakes the inbox's
    /// waiters on every instance when something was requeued.
    async fn release_held(
        &self,
        recipient: &str,
        holder: &str,
        now: Millis,
        max_attempts: u32,
    ) -> StoreResult<ReclaimCounts>;
    /// Wakes `recipient`'s waiters on every other instance sharing this
    /// store (PostgreSQL: `NOTIFY`); nothing to do where one hub owns the
    /// store. Used when a stream's delivery is settled, freeing a slot.
    async fn announce(&self, _recipient: &str) -> StoreResult<()> {
        Ok(())
    }
}

/// Splits a `<number>.<text>` cursor (dead letters, failing deliveries).
pub fn parse_pair_cursor(cursor: &str) -> StoreResult<(Millis, &str)> {
    let (at, rest) = cursor.split_once('.').ok_or(StoreError::InvalidCursor)?;
    let at = at.parse().map_err(|_| StoreError::InvalidCursor)?;
    if rest.is_empty() {
        return Err(StoreError::InvalidCursor);
    }
    Ok((at, rest))
}

/// The upper bound of ids starting with `prefix` (agent ids are ASCII, so
/// every one of them sorts below `prefix` + U+10FFFF bytewise).
pub fn prefix_upper_bound(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// Picks fair claims from due deliveries listed oldest first (the in-process
/// backends' rule; the SQL ones say the same in SQL).
pub(crate) fn pick_fair<'a>(
    due: impl Iterator<Item = &'a Delivery>,
    limit: usize,
    per_agent: usize,
    skip_agents: &[String],
) -> Vec<&'a Delivery> {
    let mut taken: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut picked = Vec::new();
    for d in due {
        if picked.len() >= limit {
            break;
        }
        if skip_agents.contains(&d.agent_id) {
            continue;
        }
        let n = taken.entry(d.agent_id.as_str()).or_default();
        if *n < per_agent {
            *n += 1;
            picked.push(d);
        }
    }
    picked
}

/// Free-form agent metadata (a JSON object).
pub type Metadata = serde_json::Map<String, Value>;
