//! In-process backend: agents in a concurrent map, one locked inbox per agent.
//!
//! Each inbox keeps its live messages in a ready index ordered by
//! (available_at, sequence), so a pull costs O(log n) whatever the inbox depth,
//! plus indexes for TTL expiry, dead letters and retention. Every operation
//! holds exactly one inbox lock for its whole state transition, which is what
//! makes it atomic. `DashMap` shards the agent map so unrelated agents never
//! contend; a `parking_lot::Mutex` per inbox is held only for in-memory work
//! (never across an `.await`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;

use super::inproc_console::{IdSearch, dead_across, failing_page, retried};
use super::*;

mod groups;

/// Ordering key inside an inbox index: a time, then the arrival sequence.
pub(super) type IndexKey = (Millis, u64);

/// One stored message and its arrival sequence (the tie-breaker of every index).
pub(super) struct Slot {
    pub(super) seq: u64,
    pub(super) message: Message,
}

/// One agent's messages and the indexes over them; shared with the Mech
/// backend, which keeps the same in-process index in front of its HTTP store.
#[derive(Default)]
pub(super) struct Inbox {
    /// False once the agent is deleted: enqueues are refused.
    pub(super) open: bool,
    /// A B-tree, not a hash table: every member inbox of a group grows in
    /// step with the others, so hash tables would all resize (rehash and move
    /// every message) in the same post, stalling it for tens of milliseconds
    /// at a few thousand messages per inbox. A B-tree grows node by node;
    /// boxed slots keep its in-node shifts to pointers.
    pub(super) messages: BTreeMap<String, Box<Slot>>,
    /// Live messages by the time a pull may take them.
    pub(super) ready: BTreeMap<IndexKey, String>,
    /// Live messages by TTL deadline.
    pub(super) expiry: BTreeMap<IndexKey, String>,
    /// Dead letters by the time they died (listing order and cursor).
    dead: BTreeMap<IndexKey, String>,
    /// Every ended message by end time (retention purge).
    pub(super) ended: BTreeMap<IndexKey, String>,
    pub(super) idempotency: HashMap<String, String>,
    pub(super) live: u64,
}

impl Inbox {
    /// Removes a message from the indexes its current state puts it in.
    fn detach(&mut self, id: &str) {
        let Some(slot) = self.messages.get(id) else {
            return;
        };
        let (seq, m) = (slot.seq, &slot.message);
        if m.state.is_live() {
            self.ready.remove(&(m.available_at(), seq));
            self.expiry.remove(&(m.expires_at, seq));
            self.live -= 1;
        } else {
            let ended = m.ended_at.unwrap_or(m.updated_at);
            self.ended.remove(&(ended, seq));
            if m.state == MessageState::Dead {
                self.dead.remove(&(ended, seq));
            }
        }
    }

    /// Adds a message to the indexes its current state calls for.
    fn attach(&mut self, id: &str) {
        let Some(slot) = self.messages.get(id) else {
            return;
        };
        let (seq, m) = (slot.seq, &slot.message);
        if m.state.is_live() {
            self.ready.insert((m.available_at(), seq), id.to_string());
            self.expiry.insert((m.expires_at, seq), id.to_string());
            self.live += 1;
        } else {
            let ended = m.ended_at.unwrap_or(m.updated_at);
            self.ended.insert((ended, seq), id.to_string());
            if m.state == MessageState::Dead {
                self.dead.insert((ended, seq), id.to_string());
            }
        }
    }

    /// When the earliest live message becomes leasable.
    pub(super) fn next_available_at(&self) -> Option<Millis> {
        self.ready.first_key_value().map(|(&(at, _), _)| at)
    }

    /// Inserts a message under arrival sequence `seq`, with its indexes and idempotency key.
    pub(super) fn insert(&mut self, seq: u64, message: Message) {
        let id = message.id.clone();
        if let Some(key) = &message.idempotency_key {
            self.idempotency.insert(key.clone(), id.clone());
        }
        self.messages
            .insert(id.clone(), Box::new(Slot { seq, message }));
        self.attach(&id);
    }

    /// Replaces a stored message by a new version of itself (same id), keeping its sequence.
    pub(super) fn replace(&mut self, message: Message) {
        let id = message.id.clone();
        self.modify(&id, |m| *m = message);
    }

    /// Removes a message, its indexes and its idempotency key.
    pub(super) fn remove(&mut self, id: &str) -> Option<Message> {
        self.detach(id);
        let slot = self.messages.remove(id)?;
        if let Some(key) = &slot.message.idempotency_key
            && self.idempotency.get(key).map(String::as_str) == Some(id)
        {
            self.idempotency.remove(key);
        }
        Some(slot.message)
    }

    /// Up to `limit` waiting messages in pull order, untouched (`Store::peek_queued`).
    pub(super) fn peek_queued(&self, now: Millis, limit: usize) -> Vec<Message> {
        self.ready
            .range(..=(now, u64::MAX))
            .filter_map(|(_, id)| self.messages.get(id))
            .map(|slot| &slot.message)
            .filter(|m| m.state == MessageState::Queued && m.expires_at > now)
            .take(limit)
            .cloned()
            .collect()
    }

    /// One page of dead letters, oldest first, after `cursor` (`<ended_at>.<seq>`).
    pub(super) fn dead_page(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        let start = match cursor.map(parse_cursor) {
            Some(Some((at, seq))) => std::ops::Bound::Excluded((at, seq)),
            Some(None) => return Err(StoreError::InvalidCursor),
            None => std::ops::Bound::Unbounded,
        };
        let mut page: Vec<(IndexKey, Message)> = self
            .dead
            .range((start, std::ops::Bound::Unbounded))
            .take(limit + 1)
            .filter_map(|(k, id)| self.messages.get(id).map(|s| (*k, s.message.clone())))
            .collect();
        let next_cursor = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|((at, seq), _)| format!("{at}.{seq}"))
        } else {
            None
        };
        Ok(Page {
            items: page.into_iter().map(|(_, m)| m).collect(),
            next_cursor,
        })
    }

    /// Up to `n` dead-letter index entries after `after`, oldest first
    /// (the hub-wide listing merges these across inboxes).
    pub(super) fn dead_keys(&self, after: Option<IndexKey>, n: usize) -> Vec<(IndexKey, String)> {
        let start = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        self.dead
            .range((start, std::ops::Bound::Unbounded))
            .take(n)
            .map(|(k, id)| (*k, id.clone()))
            .collect()
    }

    /// Runs `change` on one message, keeping every index consistent.
    fn modify<T>(&mut self, id: &str, change: impl FnOnce(&mut Message) -> T) -> Option<T> {
        if !self.messages.contains_key(id) {
            return None;
        }
        self.detach(id);
        let out = change(&mut self.messages.get_mut(id)?.message);
        self.attach(id);
        Some(out)
    }

    /// The stored message, or `MessageNotFound`.
    pub(super) fn message(&self, id: &str) -> StoreResult<&Message> {
        self.messages
            .get(id)
            .map(|s| &s.message)
            .ok_or(StoreError::MessageNotFound)
    }

    /// Checks that `id` is leased under `lease_id` (when one is given).
    pub(super) fn check_lease(&self, id: &str, lease_id: Option<&str>) -> StoreResult<()> {
        let m = self.message(id)?;
        if m.state != MessageState::Leased {
            return Err(StoreError::NotLeased);
        }
        match lease_id {
            Some(given) if m.lease_id.as_deref() != Some(given) => Err(StoreError::LeaseMismatch),
            _ => Ok(()),
        }
    }

    /// The messages a stream lease takes (`Store::lease_held`) in their new
    /// state, with their sequence, not yet applied: the memory backend
    /// applies them at once, the Mech one once Mech stored them.
    pub(super) fn plan_held_lease(
        &self,
        request: &LeaseRequest,
        holder: &str,
        from: Option<&str>,
    ) -> Vec<(u64, Message)> {
        let now = request.now;
        let candidates: Box<dyn Iterator<Item = (u64, &Message)> + '_> = match from {
            None => Box::new(
                self.ready
                    .range(..=(now, u64::MAX))
                    .filter_map(|(_, id)| self.messages.get(id))
                    .map(|slot| (slot.seq, &slot.message)),
            ),
            Some(from) => {
                let mut held = self.held(&holder_tag(from));
                held.sort_by_key(|(seq, m)| (m.available_at(), *seq));
                Box::new(held.into_iter())
            }
        };
        let mut plan = Vec::new();
        let mut granted = 0;
        for (seq, m) in candidates {
            if granted == request.max_messages {
                break;
            }
            let mut m = m.clone();
            if m.expires_at <= now {
                m.end(MessageState::Expired, now);
            } else if m.state == MessageState::Leased && m.attempts >= request.max_attempts {
                m.kill(dead_reason::MAX_ATTEMPTS, now);
            } else {
                m.grant_held_lease(now, request.visibility_ms, holder);
                granted += 1;
            }
            plan.push((seq, m));
        }
        plan
    }

    /// Live messages leased under a lease id starting with `tag`.
    fn held(&self, tag: &str) -> Vec<(u64, &Message)> {
        self.ready
            .values()
            .filter_map(|id| self.messages.get(id))
            .filter(|slot| slot.message.held_by(tag))
            .map(|slot| (slot.seq, &slot.message))
            .collect()
    }

    /// How many messages stream `holder` holds under a lease running at `now`
    /// (those sit in the ready index after `now`, at their lease end).
    pub(super) fn count_held(&self, holder: &str, now: Millis) -> u64 {
        let tag = holder_tag(holder);
        self.ready
            .range((now.saturating_add(1), 0)..)
            .filter_map(|(_, id)| self.messages.get(id))
            .filter(|slot| slot.message.held_by(&tag))
            .count() as u64
    }

    /// Every lease stream `holder` holds, ended as an expired lease ends
    /// (`Store::release_held`), not yet applied.
    pub(super) fn plan_release_held(
        &self,
        holder: &str,
        now: Millis,
        max_attempts: u32,
    ) -> Vec<(u64, Message)> {
        self.held(&holder_tag(holder))
            .into_iter()
            .map(|(seq, m)| {
                let mut m = m.clone();
                m.end_lease(max_attempts, now, now);
                (seq, m)
            })
            .collect()
    }

    /// Ends expired leases of this inbox, at most `limit`.
    fn reclaim(&mut self, now: Millis, max_attempts: u32, limit: usize) -> ReclaimCounts {
        let due: Vec<String> = self
            .ready
            .range(..=(now, u64::MAX))
            .map(|(_, id)| id.clone())
            .filter(|id| {
                self.messages
                    .get(id)
                    .is_some_and(|s| s.message.state == MessageState::Leased)
            })
            .take(limit)
            .collect();
        let mut counts = ReclaimCounts::default();
        for id in due {
            let dead = self.modify(&id, |m| {
                m.end_lease(max_attempts, now, now);
                m.state == MessageState::Dead
            });
            match dead {
                Some(true) => counts.dead += 1,
                Some(false) => counts.requeued += 1,
                None => {}
            }
        }
        counts
    }
}

/// Applies planned new versions of messages to an inbox; returns them.
fn apply_plan(inbox: &mut Inbox, plan: Vec<(u64, Message)>) -> Vec<Message> {
    plan.into_iter()
        .map(|(_, m)| {
            inbox.replace(m.clone());
            m
        })
        .collect()
}

/// What a release of stream leases did, from the released messages.
pub(super) fn released_counts(released: &[Message]) -> ReclaimCounts {
    let dead = released
        .iter()
        .filter(|m| m.state == MessageState::Dead)
        .count() as u64;
    ReclaimCounts {
        requeued: released.len() as u64 - dead,
        dead,
    }
}

/// Attempts remembered per agent for the deliveries listing.
const ATTEMPTS_KEPT_PER_AGENT: usize = 100;

#[derive(Default)]
struct DeliveryBook {
    deliveries: HashMap<String, Delivery>,
    /// Pending deliveries by due time.
    due: BTreeSet<(Millis, String)>,
    /// Recent attempts per agent, newest last.
    attempts: HashMap<String, VecDeque<DeliveryAttempt>>,
}

impl DeliveryBook {
    fn insert(&mut self, delivery: Delivery) {
        if delivery.state == DeliveryState::Pending {
            self.due
                .insert((delivery.next_attempt_at, delivery.id.clone()));
        }
        self.deliveries.insert(delivery.id.clone(), delivery);
    }

    /// Runs `change` on one delivery, keeping the due index consistent.
    fn modify(&mut self, id: &str, change: impl FnOnce(&mut Delivery)) {
        let Some(mut delivery) = self.deliveries.remove(id) else {
            return;
        };
        self.due
            .remove(&(delivery.next_attempt_at, delivery.id.clone()));
        change(&mut delivery);
        self.insert(delivery);
    }
}

/// Message id → recipient. Many small shards: a hash table rehashes all
/// of its entries when it grows, and with a few large shards that is tens of
/// milliseconds for the one request that crosses the threshold (measured:
/// 22 ms at 230k messages, 41 ms at 460k). With `OWNER_SHARDS` shards each
/// resize moves a few hundred entries.
struct Owners(DashMap<String, String>);

/// Shards of [`Owners`] (a power of two).
const OWNER_SHARDS: usize = 1024;

impl Default for Owners {
    fn default() -> Self {
        Owners(DashMap::with_shard_amount(OWNER_SHARDS))
    }
}

impl std::ops::Deref for Owners {
    type Target = DashMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// The in-memory backend: fast, and gone when the process exits.
#[derive(Default)]
pub struct MemoryStore {
    agents: DashMap<String, Agent>,
    inboxes: DashMap<String, Arc<Mutex<Inbox>>>,
    /// Message id → recipient, so a message can be found by id alone.
    owners: Owners,
    seq: AtomicU64,
    deliveries: Mutex<DeliveryBook>,
    audit: Mutex<Vec<AuditEvent>>,
    groups: Mutex<super::group_index::GroupIndex>,
    /// Request nonce digests → when they may be forgotten.
    nonces: DashMap<String, Millis>,
    /// Agent ids retired by deletion → when.
    retired: DashMap<String, Millis>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored audit rows, editable behind the hash chain's back: the
    /// in-memory equivalent of an `UPDATE` on a database's audit table, for
    /// tests that check tampering is detected.
    pub fn edit_audit_rows<T>(&self, edit: impl FnOnce(&mut Vec<AuditEvent>) -> T) -> T {
        edit(&mut self.audit.lock())
    }

    fn inbox(&self, agent_id: &str) -> Option<Arc<Mutex<Inbox>>> {
        self.inboxes.get(agent_id).map(|i| i.value().clone())
    }

    fn inbox_or_missing(&self, agent_id: &str) -> StoreResult<Arc<Mutex<Inbox>>> {
        self.inbox(agent_id).ok_or(StoreError::MessageNotFound)
    }

    fn all_inboxes(&self) -> Vec<Arc<Mutex<Inbox>>> {
        self.inboxes.iter().map(|e| e.value().clone()).collect()
    }

    /// Inserts a message into a locked inbox with its indexes.
    fn insert_message(&self, inbox: &mut Inbox, message: Message) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        inbox.insert(seq, message);
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn create_agent(&self, agent: Agent) -> StoreResult<()> {
        match self.agents.entry(agent.agent_id.clone()) {
            Entry::Occupied(_) => Err(StoreError::AgentExists),
            Entry::Vacant(slot) => {
                // Lock order is always agents → inbox, never the reverse.
                let inbox = self
                    .inboxes
                    .entry(agent.agent_id.clone())
                    .or_default()
                    .clone();
                inbox.lock().open = true;
                slot.insert(agent);
                Ok(())
            }
        }
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        Ok(self.agents.get(agent_id).map(|a| a.value().clone()))
    }

    async fn update_agent(&self, agent_id: &str, change: &AgentChange) -> StoreResult<Agent> {
        let mut agent = self
            .agents
            .get_mut(agent_id)
            .ok_or(StoreError::AgentNotFound)?;
        change.apply(&mut agent)?;
        Ok(agent.clone())
    }

    async fn delete_agent(&self, agent_id: &str, now: Millis) -> StoreResult<bool> {
        if self.agents.remove(agent_id).is_none() {
            return Ok(false);
        }
        if let Some(inbox) = self.inbox(agent_id) {
            let mut inbox = inbox.lock();
            inbox.open = false;
            let live: Vec<String> = inbox.ready.values().cloned().collect();
            for id in live {
                inbox.modify(&id, |m| m.kill(dead_reason::RECIPIENT_DELETED, now));
            }
        }
        self.cancel_deliveries(agent_id, now).await?;
        self.groups.lock().forget_agent(agent_id);
        Ok(true)
    }

    async fn mark_offline(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        let mut marked = 0;
        for mut agent in self.agents.iter_mut() {
            if marked as usize >= limit {
                break;
            }
            let deadline = agent.last_heartbeat + agent.heartbeat_timeout_ms as Millis;
            if agent.online && deadline <= now {
                agent.online = false;
                marked += 1;
            }
        }
        Ok(marked)
    }

    async fn enqueue(
        &self,
        message: Message,
        quota: u64,
        delivery: Option<Delivery>,
    ) -> StoreResult<Enqueued> {
        let inbox = self
            .inbox(&message.recipient)
            .ok_or(StoreError::AgentNotFound)?;
        let mut inbox = inbox.lock();
        if !inbox.open {
            return Err(StoreError::AgentNotFound);
        }
        if let Some(key) = &message.idempotency_key
            && let Some(existing_id) = inbox.idempotency.get(key)
        {
            let existing = inbox.message(existing_id)?;
            return if existing.content_hash == message.content_hash {
                Ok(Enqueued::Duplicate(existing.clone()))
            } else {
                Err(StoreError::IdempotencyConflict)
            };
        }
        if inbox.live >= quota {
            return Err(StoreError::InboxFull);
        }
        match self.owners.entry(message.id.clone()) {
            Entry::Occupied(_) => return Err(StoreError::MessageIdTaken),
            Entry::Vacant(slot) => {
                slot.insert(message.recipient.clone());
            }
        }
        self.insert_message(&mut inbox, message.clone());
        if let Some(delivery) = delivery {
            self.deliveries.lock().insert(delivery);
        }
        Ok(Enqueued::Created(message))
    }

    async fn lease(&self, request: &LeaseRequest) -> StoreResult<Vec<Message>> {
        let Some(inbox) = self.inbox(&request.recipient) else {
            return Ok(Vec::new());
        };
        let mut inbox = inbox.lock();
        let now = request.now;
        let mut leased = Vec::new();
        while leased.len() < request.max_messages {
            let Some((&(available_at, _), id)) = inbox.ready.first_key_value() else {
                break;
            };
            if available_at > now {
                break;
            }
            let id = id.clone();
            let granted = inbox.modify(&id, |m| {
                if m.expires_at <= now {
                    m.end(MessageState::Expired, now);
                    None
                } else if m.state == MessageState::Leased && m.attempts >= request.max_attempts {
                    m.kill(dead_reason::MAX_ATTEMPTS, now);
                    None
                } else {
                    m.grant_lease(now, request.visibility_ms);
                    Some(m.clone())
                }
            });
            leased.extend(granted.flatten());
        }
        Ok(leased)
    }

    async fn lease_held(
        &self,
        request: &LeaseRequest,
        holder: &str,
        from: Option<&str>,
    ) -> StoreResult<Vec<Message>> {
        let Some(inbox) = self.inbox(&request.recipient) else {
            return Ok(Vec::new());
        };
        let mut inbox = inbox.lock();
        let plan = inbox.plan_held_lease(request, holder, from);
        Ok(apply_plan(&mut inbox, plan)
            .into_iter()
            .filter(|m| m.state == MessageState::Leased)
            .collect())
    }

    async fn count_held(&self, recipient: &str, holder: &str, now: Millis) -> StoreResult<u64> {
        Ok(self
            .inbox(recipient)
            .map_or(0, |inbox| inbox.lock().count_held(holder, now)))
    }

    async fn release_held(
        &self,
        recipient: &str,
        holder: &str,
        now: Millis,
        max_attempts: u32,
    ) -> StoreResult<ReclaimCounts> {
        let Some(inbox) = self.inbox(recipient) else {
            return Ok(ReclaimCounts::default());
        };
        let mut inbox = inbox.lock();
        let plan = inbox.plan_release_held(holder, now, max_attempts);
        Ok(released_counts(&apply_plan(&mut inbox, plan)))
    }

    async fn next_available_at(&self, recipient: &str) -> StoreResult<Option<Millis>> {
        Ok(self
            .inbox(recipient)
            .and_then(|inbox| inbox.lock().next_available_at()))
    }

    async fn ack(&self, request: &AckRequest) -> StoreResult<Message> {
        let inbox = self.inbox_or_missing(&request.recipient)?;
        let mut inbox = inbox.lock();
        inbox.check_lease(&request.message_id, request.lease_id.as_deref())?;
        inbox
            .modify(&request.message_id, |m| {
                m.end(MessageState::Acked, request.now);
                m.result = request.result.clone();
                m.clone()
            })
            .ok_or(StoreError::MessageNotFound)
    }

    async fn nack(&self, request: &NackRequest) -> StoreResult<Message> {
        let inbox = self.inbox_or_missing(&request.recipient)?;
        let mut inbox = inbox.lock();
        inbox.check_lease(&request.message_id, request.lease_id.as_deref())?;
        inbox
            .modify(&request.message_id, |m| {
                m.apply_nack(request.action, request.max_attempts, request.now);
                m.clone()
            })
            .ok_or(StoreError::MessageNotFound)
    }

    async fn requeue_dead(
        &self,
        recipient: &str,
        message_id: &str,
        now: Millis,
    ) -> StoreResult<Message> {
        let inbox = self.inbox_or_missing(recipient)?;
        let mut inbox = inbox.lock();
        if inbox.message(message_id)?.state != MessageState::Dead {
            return Err(StoreError::NotDead);
        }
        inbox
            .modify(message_id, |m| {
                m.release(now, now);
                m.attempts = 0;
                m.ended_at = None;
                m.dead_reason = None;
                m.clone()
            })
            .ok_or(StoreError::MessageNotFound)
    }

    async fn get_message(&self, message_id: &str) -> StoreResult<Option<Message>> {
        let Some(recipient) = self.owners.get(message_id).map(|r| r.value().clone()) else {
            return Ok(None);
        };
        let Some(inbox) = self.inbox(&recipient) else {
            return Ok(None);
        };
        let inbox = inbox.lock();
        Ok(inbox.messages.get(message_id).map(|s| s.message.clone()))
    }

    async fn list_dead(
        &self,
        recipient: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        let Some(inbox) = self.inbox(recipient) else {
            return Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            });
        };
        inbox.lock().dead_page(limit, cursor)
    }

    async fn peek_queued(
        &self,
        recipient: &str,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        Ok(self
            .inbox(recipient)
            .map(|inbox| inbox.lock().peek_queued(now, limit))
            .unwrap_or_default())
    }

    async fn inbox_stats(&self, recipient: &str) -> StoreResult<StateCounts> {
        let mut counts = StateCounts::default();
        if let Some(inbox) = self.inbox(recipient) {
            for slot in inbox.lock().messages.values() {
                counts.add(slot.message.state, 1);
            }
        }
        Ok(counts)
    }

    async fn stats(&self) -> StoreResult<HubStats> {
        let mut stats = HubStats::default();
        for agent in self.agents.iter() {
            stats.agents_total += 1;
            stats.agents_online += u64::from(agent.online);
        }
        for inbox in self.all_inboxes() {
            for slot in inbox.lock().messages.values() {
                stats.messages.add(slot.message.state, 1);
            }
        }
        Ok(stats)
    }

    async fn reclaim_expired_leases(&self, request: &ReclaimRequest) -> StoreResult<ReclaimCounts> {
        let inboxes = match &request.recipient {
            Some(agent) => self.inbox(agent).into_iter().collect(),
            None => self.all_inboxes(),
        };
        let mut total = ReclaimCounts::default();
        for inbox in inboxes {
            let budget = request.limit - (total.requeued + total.dead) as usize;
            if budget == 0 {
                break;
            }
            let counts = inbox
                .lock()
                .reclaim(request.now, request.max_attempts, budget);
            total.requeued += counts.requeued;
            total.dead += counts.dead;
        }
        Ok(total)
    }

    async fn expire_messages(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        let mut expired = 0u64;
        for inbox in self.all_inboxes() {
            let mut inbox = inbox.lock();
            let due: Vec<String> = inbox
                .expiry
                .range(..=(now, u64::MAX))
                .map(|(_, id)| id.clone())
                .take(limit - expired as usize)
                .collect();
            for id in due {
                inbox.modify(&id, |m| m.end(MessageState::Expired, now));
                expired += 1;
            }
            if expired as usize >= limit {
                break;
            }
        }
        Ok(expired)
    }

    async fn purge_retained(&self, ended_before: Millis, limit: usize) -> StoreResult<u64> {
        let mut purged = 0u64;
        for inbox in self.all_inboxes() {
            let mut inbox = inbox.lock();
            let due: Vec<String> = inbox
                .ended
                .range(..(ended_before, 0))
                .map(|(_, id)| id.clone())
                .take(limit - purged as usize)
                .collect();
            for id in due {
                if inbox.remove(&id).is_some() {
                    self.owners.remove(&id);
                    purged += 1;
                }
            }
            if purged as usize >= limit {
                break;
            }
        }
        Ok(purged)
    }

    async fn claim_due_deliveries(
        &self,
        now: Millis,
        limit: usize,
        claim_ms: i64,
    ) -> StoreResult<Vec<Delivery>> {
        let mut book = self.deliveries.lock();
        let due: Vec<String> = book
            .due
            .range(..(now + 1, String::new()))
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect();
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            book.modify(&id, |d| {
                d.next_attempt_at = now + claim_ms;
                claimed.push(d.clone());
            });
        }
        Ok(claimed)
    }

    async fn record_attempt(
        &self,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<()> {
        let mut book = self.deliveries.lock();
        book.modify(&attempt.delivery_id, |d| {
            d.attempts = d.attempts.max(attempt.attempt);
            d.last_status = attempt.status_code;
            d.last_error = attempt.error.clone();
            d.updated_at = attempt.at;
            if d.state != DeliveryState::Pending {
                return;
            }
            match outcome {
                AttemptOutcome::Delivered => d.state = DeliveryState::Delivered,
                AttemptOutcome::Failed => d.state = DeliveryState::Failed,
                AttemptOutcome::RetryAt(at) => d.next_attempt_at = at,
            }
        });
        let log = book.attempts.entry(attempt.agent_id.clone()).or_default();
        log.push_back(attempt.clone());
        while log.len() > ATTEMPTS_KEPT_PER_AGENT {
            log.pop_front();
        }
        Ok(())
    }

    async fn cancel_deliveries(&self, agent_id: &str, now: Millis) -> StoreResult<u64> {
        let mut book = self.deliveries.lock();
        let pending: Vec<String> = book
            .deliveries
            .values()
            .filter(|d| d.agent_id == agent_id && d.state == DeliveryState::Pending)
            .map(|d| d.id.clone())
            .collect();
        for id in &pending {
            book.modify(id, |d| {
                d.state = DeliveryState::Cancelled;
                d.updated_at = now;
            });
        }
        Ok(pending.len() as u64)
    }

    async fn get_delivery(&self, delivery_id: &str) -> StoreResult<Option<Delivery>> {
        Ok(self.deliveries.lock().deliveries.get(delivery_id).cloned())
    }

    async fn list_attempts(
        &self,
        agent_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryAttempt>> {
        let book = self.deliveries.lock();
        Ok(book
            .attempts
            .get(agent_id)
            .map(|log| log.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn append_audit(&self, event: NewAuditEvent) -> StoreResult<AuditEvent> {
        let mut log = self.audit.lock();
        let prev = log
            .last()
            .map_or(crate::audit::GENESIS_HASH.to_string(), |e| e.hash.clone());
        let seq = log.len() as u64 + 1;
        let hash = crate::audit::chain_hash(
            &prev,
            seq,
            event.at,
            &event.kind,
            event.agent_id.as_deref(),
            &event.detail,
        );
        let stored = AuditEvent {
            seq,
            at: event.at,
            kind: event.kind,
            agent_id: event.agent_id,
            detail: event.detail,
            hash,
        };
        log.push(stored.clone());
        Ok(stored)
    }

    async fn list_audit(&self, after: Option<u64>, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        let log = self.audit.lock();
        let start = after.unwrap_or(0) as usize;
        Ok(log.iter().skip(start).take(limit).cloned().collect())
    }

    async fn export_agents(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<Agent>> {
        let mut ids: Vec<String> = self
            .agents
            .iter()
            .map(|a| a.key().clone())
            .filter(|id| after.is_none_or(|after| id.as_str() > after))
            .collect();
        ids.sort();
        ids.truncate(limit);
        Ok(ids
            .iter()
            .filter_map(|id| self.agents.get(id).map(|a| a.value().clone()))
            .collect())
    }

    async fn export_messages(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let mut ids: Vec<(String, String)> = self
            .owners
            .iter()
            .filter(|e| after.is_none_or(|after| e.key().as_str() > after))
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        ids.sort();
        ids.truncate(limit);
        let mut out = Vec::with_capacity(ids.len());
        for (id, recipient) in ids {
            if let Some(inbox) = self.inbox(&recipient)
                && let Some(slot) = inbox.lock().messages.get(&id)
            {
                out.push(slot.message.clone());
            }
        }
        Ok(out)
    }

    async fn import_agent(&self, agent: Agent) -> StoreResult<bool> {
        match self.create_agent(agent).await {
            Ok(()) => Ok(true),
            Err(StoreError::AgentExists) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn import_message(&self, message: Message) -> StoreResult<bool> {
        let inbox = self
            .inboxes
            .entry(message.recipient.clone())
            .or_default()
            .clone();
        let mut inbox = inbox.lock();
        match self.owners.entry(message.id.clone()) {
            Entry::Occupied(_) => return Ok(false),
            Entry::Vacant(slot) => {
                slot.insert(message.recipient.clone());
            }
        }
        self.insert_message(&mut inbox, message);
        Ok(true)
    }

    async fn create_group(&self, group: Group, now: Millis) -> StoreResult<()> {
        self.groups_create(group, now)
    }

    async fn get_group(&self, group_id: &str) -> StoreResult<Option<Group>> {
        Ok(self.groups_index().group(group_id))
    }

    async fn update_group(&self, group_id: &str, change: &GroupChange) -> StoreResult<Group> {
        self.groups_index().update(group_id, change)
    }

    async fn delete_group(&self, group_id: &str) -> StoreResult<bool> {
        Ok(self.groups_index().delete(group_id).is_some())
    }

    async fn group_member(
        &self,
        group_id: &str,
        agent_id: &str,
    ) -> StoreResult<Option<GroupMember>> {
        Ok(self.groups_index().member(group_id, agent_id))
    }

    async fn group_members(&self, group_id: &str) -> StoreResult<Vec<GroupMember>> {
        Ok(self.groups_index().members(group_id))
    }

    async fn add_group_member(&self, group_id: &str, member: GroupMember) -> StoreResult<()> {
        self.groups_add_member(group_id, member)
    }

    async fn remove_group_member(&self, group_id: &str, agent_id: &str) -> StoreResult<bool> {
        Ok(self.groups_index().remove(group_id, agent_id))
    }

    async fn agent_groups(
        &self,
        agent_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> StoreResult<Vec<(Group, GroupRole)>> {
        Ok(self.groups_index().agent_groups(agent_id, limit, after))
    }

    async fn post_to_group(&self, post: GroupPost, fan: FanOut) -> StoreResult<Posted> {
        self.groups_post(post, fan)
    }

    async fn group_history(
        &self,
        group_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<GroupPost>> {
        self.groups_index().history(group_id, limit, cursor)
    }

    async fn purge_group_history(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        Ok(self.groups_purge(now, limit))
    }

    async fn search_agents(
        &self,
        prefix: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Agent>> {
        let mut search = IdSearch::new(prefix, limit, cursor);
        for agent in self.agents.iter() {
            search.offer(agent.key());
        }
        let (ids, next_cursor) = search.finish();
        let items = ids
            .iter()
            .filter_map(|id| self.agents.get(id).map(|a| a.value().clone()))
            .collect();
        Ok(Page { items, next_cursor })
    }

    async fn list_dead_all(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        dead_across(&self.all_inboxes(), |i| i.as_ref(), limit, cursor)
    }

    async fn list_failing_deliveries(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Delivery>> {
        failing_page(&self.deliveries.lock().deliveries, limit, cursor)
    }

    async fn retry_delivery(
        &self,
        delivery_id: &str,
        now: Millis,
    ) -> StoreResult<Option<Delivery>> {
        let mut book = self.deliveries.lock();
        book.modify(delivery_id, |d| *d = retried(d.clone(), now));
        Ok(book.deliveries.get(delivery_id).cloned())
    }

    async fn remember_nonce(
        &self,
        key: &str,
        expires_at: Millis,
        now: Millis,
    ) -> StoreResult<bool> {
        match self.nonces.entry(key.to_string()) {
            Entry::Occupied(e) if *e.get() > now => Ok(false),
            Entry::Occupied(mut e) => {
                e.insert(expires_at);
                Ok(true)
            }
            Entry::Vacant(e) => {
                e.insert(expires_at);
                Ok(true)
            }
        }
    }

    async fn purge_nonces(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        let expired: Vec<String> = self
            .nonces
            .iter()
            .filter(|e| *e.value() <= now)
            .take(limit)
            .map(|e| e.key().clone())
            .collect();
        let mut purged = 0;
        for key in expired {
            if self
                .nonces
                .remove_if(&key, |_, until| *until <= now)
                .is_some()
            {
                purged += 1;
            }
        }
        Ok(purged)
    }

    async fn retire_agent_id(&self, agent_id: &str, now: Millis) -> StoreResult<()> {
        self.retired.entry(agent_id.to_string()).or_insert(now);
        Ok(())
    }

    async fn is_agent_id_retired(&self, agent_id: &str) -> StoreResult<bool> {
        Ok(self.retired.contains_key(agent_id))
    }

    async fn claim_due_deliveries_fair(
        &self,
        now: Millis,
        limit: usize,
        claim_ms: i64,
        per_agent: usize,
        skip_agents: &[String],
    ) -> StoreResult<Vec<Delivery>> {
        let mut book = self.deliveries.lock();
        let due = book
            .due
            .range(..(now + 1, String::new()))
            .filter_map(|(_, id)| book.deliveries.get(id));
        let ids: Vec<String> = pick_fair(due, limit, per_agent, skip_agents)
            .into_iter()
            .map(|d| d.id.clone())
            .collect();
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            book.modify(&id, |d| {
                d.next_attempt_at = now + claim_ms;
                claimed.push(d.clone());
            });
        }
        Ok(claimed)
    }
}

/// Parses a dead-letter cursor of the form `<ended_at>.<seq>`.
pub(super) fn parse_cursor(cursor: &str) -> Option<IndexKey> {
    let (at, seq) = cursor.split_once('.')?;
    Some((at.parse().ok()?, seq.parse().ok()?))
}
