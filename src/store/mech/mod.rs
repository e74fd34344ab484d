//! Mech Storage backend: records in Mech's HTTP NoSQL API, the index in process.
//!
//! Mech has no server-side filters, transactions or conditional writes, so
//! this backend cannot ask Mech "which messages are due" or "lease this one if
//! nobody else did". Instead it keeps the same in-process index as the memory
//! backend (per-inbox ready, expiry, dead-letter and retention orders),
//! rebuilt at start from a paginated scan of every collection, and writes
//! every change through to Mech before it becomes visible: an operation holds
//! its inbox's writer lock across the Mech call, applies the change to the
//! index only once Mech confirmed it, and leaves the index untouched when the
//! call fails. A send therefore answers 201 only after Mech stored the message.
//!
//! **One hub instance only**: two hubs on one Mech app would each trust their
//! own index and could lease the same message twice. The single-instance
//! lock (`lock.rs`) enforces it: a second hub refuses to start, naming the
//! holder, until the holder's heartbeat is stale.
//!
//! Bulk work (sweeps, offline marking, webhook claims) never lists a
//! collection: it picks its records from the index and writes them with at
//! most `MECH_CONCURRENCY` requests in flight, so sweeping 1000 messages costs
//! about 1000 / `MECH_CONCURRENCY` round trips of wall time instead of 1000.
//!
//! Records are the model types serialised with serde (messages and attempts
//! wrapped with their arrival sequence), so a change to the model needs no
//! change here.

pub mod breaker;
pub mod client;
mod console;
mod groups;
pub mod lock;
pub mod security;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::{StreamExt, stream};
use parking_lot::Mutex;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

pub use client::{MechClient, MechError, MechSettings};
pub use groups::{GROUP_MEMBERS, GROUP_POSTS, GROUPS};
pub use lock::HubLock;

use super::memory::Inbox;
use super::*;

/// Mech collection of agents, keyed by agent id.
pub const AGENTS: &str = "admp_agents";
/// Mech collection of messages, keyed by message id.
pub const MESSAGES: &str = "admp_messages";
/// Mech collection of webhook deliveries, keyed by delivery id.
pub const DELIVERIES: &str = "admp_deliveries";
/// Mech collection of webhook attempts, keyed by a random id.
pub const ATTEMPTS: &str = "admp_delivery_attempts";
/// Mech collection of audit events, keyed by the zero-padded `seq`.
pub const AUDIT: &str = "admp_audit";

/// Attempts remembered per agent for the deliveries listing (as the other backends).
const ATTEMPTS_KEPT_PER_AGENT: usize = 100;

/// A message document: the model record plus its arrival sequence, which
/// orders ties in every index and keeps dead-letter cursors valid across restarts.
#[derive(Deserialize)]
struct StoredMessage {
    seq: u64,
    message: Message,
}

/// An attempt document: the model record plus a sequence for newest-first listing.
#[derive(Deserialize)]
struct StoredAttempt {
    seq: u64,
    attempt: DeliveryAttempt,
}

/// One agent's inbox: writers queue on `writer` (held across the Mech call),
/// readers only take `state` briefly and never wait for Mech.
#[derive(Default)]
struct InboxCell {
    writer: tokio::sync::Mutex<()>,
    state: Mutex<Inbox>,
}

/// Webhook deliveries and recent attempts, indexed like the memory backend's.
#[derive(Default)]
struct DeliveryBook {
    deliveries: HashMap<String, Delivery>,
    /// Pending deliveries by due time.
    due: BTreeSet<(Millis, String)>,
    /// Recent attempts per agent (document key, sequence, record), newest last.
    attempts: HashMap<String, VecDeque<(String, u64, DeliveryAttempt)>>,
}

impl DeliveryBook {
    /// Inserts or replaces a delivery, keeping the due index consistent.
    fn put(&mut self, delivery: Delivery) {
        if let Some(old) = self.deliveries.remove(&delivery.id) {
            self.due.remove(&(old.next_attempt_at, old.id));
        }
        if delivery.state == DeliveryState::Pending {
            self.due
                .insert((delivery.next_attempt_at, delivery.id.clone()));
        }
        self.deliveries.insert(delivery.id.clone(), delivery);
    }
}

/// The Mech-backed store (see the module docs; one hub instance only).
pub struct MechStore {
    client: Arc<MechClient>,
    lock: HubLock,
    agents: DashMap<String, Agent>,
    inboxes: DashMap<String, Arc<InboxCell>>,
    /// Message id → recipient; an enqueue reserves its id here before writing.
    owners: DashMap<String, String>,
    seq: AtomicU64,
    delivery_writer: tokio::sync::Mutex<()>,
    deliveries: Mutex<DeliveryBook>,
    audit_writer: tokio::sync::Mutex<()>,
    audit: Mutex<Vec<AuditEvent>>,
    /// Bounds the Mech requests of all bulk work together to `MECH_CONCURRENCY`.
    bulk: Semaphore,
    /// Serialises sweep batches: each plans from the index as the previous
    /// one left it, so concurrent batches never pick the same records (and
    /// come back short while work remains).
    sweeps: tokio::sync::Mutex<()>,
    groups: groups::MechGroups,
    /// Request nonce digest → expiry (security.rs), rebuilt at open like the rest.
    nonces: DashMap<String, Millis>,
}

impl MechStore {
    /// Takes the single-instance lock (or refuses, naming the hub that holds
    /// it), then rebuilds the index from a paginated scan of the app.
    pub async fn open(settings: MechSettings) -> StoreResult<Self> {
        let concurrency = settings.concurrency.max(1);
        let client = Arc::new(MechClient::new(settings)?);
        let lock = HubLock::acquire(client.clone()).await?;
        let mut found = client
            .scan(&[
                AGENTS,
                MESSAGES,
                DELIVERIES,
                ATTEMPTS,
                AUDIT,
                security::NONCES,
            ])
            .await?;
        let mut take = |collection: &str| found.remove(collection).unwrap_or_default();
        let (agents, messages, deliveries, attempts, audit, nonces) = (
            take(AGENTS),
            take(MESSAGES),
            take(DELIVERIES),
            take(ATTEMPTS),
            take(AUDIT),
            take(security::NONCES),
        );
        let store = MechStore {
            client,
            lock,
            agents: DashMap::new(),
            inboxes: DashMap::new(),
            owners: DashMap::new(),
            seq: AtomicU64::new(0),
            delivery_writer: tokio::sync::Mutex::new(()),
            deliveries: Mutex::default(),
            audit_writer: tokio::sync::Mutex::new(()),
            audit: Mutex::default(),
            bulk: Semaphore::new(concurrency),
            sweeps: tokio::sync::Mutex::new(()),
            groups: groups::MechGroups::default(),
            nonces: security::nonce_index(&nonces),
        };
        let mut next_seq = 0u64;
        for doc in &agents {
            let agent: Agent = decode(AGENTS, doc)?;
            store.cell_or_create(&agent.agent_id).state.lock().open = true;
            store.agents.insert(agent.agent_id.clone(), agent);
        }
        let mut stored: Vec<StoredMessage> = messages
            .iter()
            .map(|doc| decode(MESSAGES, doc))
            .collect::<StoreResult<_>>()?;
        stored.sort_by_key(|s| s.seq);
        for StoredMessage { seq, message } in stored {
            next_seq = next_seq.max(seq + 1);
            store
                .owners
                .insert(message.id.clone(), message.recipient.clone());
            let cell = store.cell_or_create(&message.recipient);
            cell.state.lock().insert(seq, message);
        }
        {
            let mut book = store.deliveries.lock();
            for doc in &deliveries {
                book.put(decode(DELIVERIES, doc)?);
            }
            let mut logged: Vec<(String, StoredAttempt)> = attempts
                .iter()
                .map(|doc| Ok((doc.key.clone(), decode(ATTEMPTS, doc)?)))
                .collect::<StoreResult<_>>()?;
            logged.sort_by_key(|(_, a)| a.seq);
            for (key, StoredAttempt { seq, attempt }) in logged {
                next_seq = next_seq.max(seq + 1);
                let log = book.attempts.entry(attempt.agent_id.clone()).or_default();
                log.push_back((key, seq, attempt));
                while log.len() > ATTEMPTS_KEPT_PER_AGENT {
                    log.pop_front();
                }
            }
        }
        let mut events: Vec<AuditEvent> = audit
            .iter()
            .map(|doc| decode(AUDIT, doc))
            .collect::<StoreResult<_>>()?;
        events.sort_by_key(|e| e.seq);
        *store.audit.lock() = events;
        store.seq.store(next_seq, Ordering::Relaxed);
        store.load_groups().await?;
        tracing::info!(
            agents = agents.len(),
            messages = messages.len(),
            deliveries = deliveries.len(),
            audit_events = store.audit.lock().len(),
            "Mech index rebuilt"
        );
        Ok(store)
    }

    /// The HTTP client (for its breaker state).
    pub fn client(&self) -> &MechClient {
        &self.client
    }

    /// The single-instance lock this store holds.
    pub fn lock(&self) -> &HubLock {
        &self.lock
    }

    /// Graceful stop: releases the single-instance lock (the next hub starts
    /// at once); every later write is refused.
    pub async fn close(&self) {
        self.lock.release().await;
    }

    fn cell(&self, agent_id: &str) -> Option<Arc<InboxCell>> {
        self.inboxes.get(agent_id).map(|c| c.value().clone())
    }

    fn cell_or_create(&self, agent_id: &str) -> Arc<InboxCell> {
        self.inboxes
            .entry(agent_id.to_string())
            .or_default()
            .clone()
    }

    fn all_cells(&self) -> Vec<Arc<InboxCell>> {
        self.inboxes.iter().map(|c| c.value().clone()).collect()
    }

    fn concurrency(&self) -> usize {
        self.client.settings().concurrency.max(1)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes one message document (whole record; `exists` picks update or create first).
    async fn write_message(&self, seq: u64, message: &Message, exists: bool) -> StoreResult<()> {
        let doc = json!({ "seq": seq, "message": message });
        Ok(self.client.put(MESSAGES, &message.id, &doc, exists).await?)
    }

    /// Writes existing messages with bounded concurrency; each result keeps its input position.
    async fn write_messages(
        &self,
        items: Vec<(u64, Message)>,
    ) -> Vec<(usize, Message, StoreResult<()>)> {
        stream::iter(items.into_iter().enumerate())
            .map(|(at, (seq, message))| async move {
                let result = {
                    let _permit = self
                        .bulk
                        .acquire()
                        .await
                        .expect("the semaphore is never closed");
                    self.write_message(seq, &message, true).await
                };
                (at, message, result)
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await
    }

    /// Writes one delivery document.
    async fn write_delivery(&self, delivery: &Delivery, exists: bool) -> StoreResult<()> {
        Ok(self
            .client
            .put(DELIVERIES, &delivery.id, &to_doc(delivery)?, exists)
            .await?)
    }

    /// Writes existing deliveries with bounded concurrency, each with its result.
    async fn write_deliveries(&self, items: Vec<Delivery>) -> Vec<(Delivery, StoreResult<()>)> {
        stream::iter(items)
            .map(|delivery| async move {
                let _permit = self
                    .bulk
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                let result = self.write_delivery(&delivery, true).await;
                (delivery, result)
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await
    }

    /// Changes one leased/dead message of one inbox through `change`, checked by `check`.
    async fn change_message(
        &self,
        recipient: &str,
        message_id: &str,
        check: impl FnOnce(&Inbox) -> StoreResult<()>,
        change: impl FnOnce(&mut Message),
    ) -> StoreResult<Message> {
        let cell = self.cell(recipient).ok_or(StoreError::MessageNotFound)?;
        let _writer = cell.writer.lock().await;
        let (seq, mut message) = {
            let state = cell.state.lock();
            check(&state)?;
            let slot = state
                .messages
                .get(message_id)
                .ok_or(StoreError::MessageNotFound)?;
            (slot.seq, slot.message.clone())
        };
        change(&mut message);
        self.write_message(seq, &message, true).await?;
        cell.state.lock().replace(message.clone());
        Ok(message)
    }

    /// Picks, per inbox, up to `limit` ids in total from the index `pick` reads.
    fn plan(
        &self,
        cells: Vec<Arc<InboxCell>>,
        limit: usize,
        pick: impl Fn(&Inbox, usize) -> Vec<String>,
    ) -> Vec<(Arc<InboxCell>, Vec<String>)> {
        let mut plan = Vec::new();
        let mut budget = limit;
        for cell in cells {
            if budget == 0 {
                break;
            }
            let ids = pick(&cell.state.lock(), budget);
            if !ids.is_empty() {
                budget -= ids.len();
                plan.push((cell, ids));
            }
        }
        plan
    }

    /// Runs a sweep plan: per inbox (inboxes in parallel), under its writer
    /// lock, `change` re-checks each picked message and returns its new
    /// version (or `None` if it no longer qualifies); the new versions are
    /// written with bounded concurrency and applied as Mech confirms them.
    /// Returns the applied messages, or the first error if nothing applied.
    async fn sweep(
        &self,
        plan: Vec<(Arc<InboxCell>, Vec<String>)>,
        change: impl Fn(&Message) -> Option<Message> + Sync,
    ) -> StoreResult<Vec<Message>> {
        let change = &change;
        let outcomes: Vec<(Vec<Message>, Option<StoreError>)> = stream::iter(plan)
            .map(|(cell, ids)| async move {
                let _writer = cell.writer.lock().await;
                let items: Vec<(u64, Message)> = {
                    let state = cell.state.lock();
                    ids.iter()
                        .filter_map(|id| state.messages.get(id))
                        .filter_map(|slot| change(&slot.message).map(|m| (slot.seq, m)))
                        .collect()
                };
                self.apply_writes(&cell, items).await
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        collect_outcomes(outcomes)
    }

    /// Writes new versions of one inbox's messages and applies those Mech confirmed.
    async fn apply_writes(
        &self,
        cell: &InboxCell,
        items: Vec<(u64, Message)>,
    ) -> (Vec<Message>, Option<StoreError>) {
        let mut written = self.write_messages(items).await;
        written.sort_by_key(|(at, _, _)| *at);
        let mut applied = Vec::new();
        let mut error = None;
        let mut state = cell.state.lock();
        for (_, message, result) in written {
            match result {
                Ok(()) => {
                    state.replace(message.clone());
                    applied.push(message);
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        (applied, error)
    }

    /// Best-effort removal of a document written by an operation that then
    /// failed; a leftover is logged (it would reappear at the next start).
    async fn compensate(&self, collection: &str, key: &str) {
        if let Err(e) = self.client.delete(collection, key).await {
            tracing::error!(collection, key, error = %e, "could not remove the document of a failed operation; it reappears at the next start");
        }
    }
}

/// Merges per-inbox sweep outcomes: what applied, or the first error when nothing did.
fn collect_outcomes(
    outcomes: Vec<(Vec<Message>, Option<StoreError>)>,
) -> StoreResult<Vec<Message>> {
    let mut applied = Vec::new();
    let mut first_error = None;
    for (done, error) in outcomes {
        applied.extend(done);
        if let Some(e) = error {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) if applied.is_empty() => Err(e),
        Some(e) => {
            tracing::warn!(applied = applied.len(), error = %e, "Mech sweep partly failed; the rest is retried next pass");
            Ok(applied)
        }
        None => Ok(applied),
    }
}

/// A model record as a Mech document.
fn to_doc<T: serde::Serialize>(record: &T) -> StoreResult<Value> {
    serde_json::to_value(record)
        .map_err(|e| StoreError::Internal(format!("encoding a record: {e}")))
}

/// A listed document as a model record; a record that does not decode is logged and fatal.
fn decode<T: DeserializeOwned>(collection: &str, doc: &client::Document) -> StoreResult<T> {
    serde_json::from_value(doc.data.clone()).map_err(|e| {
        tracing::error!(collection, key = %doc.key, error = %e, "undecodable Mech document");
        StoreError::Internal(format!("Mech document {collection}/{}: {e}", doc.key))
    })
}

#[async_trait]
impl Store for MechStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(self.client.ping(AGENTS).await?)
    }

    async fn create_agent(&self, agent: Agent) -> StoreResult<()> {
        let cell = self.cell_or_create(&agent.agent_id);
        let _writer = cell.writer.lock().await;
        if self.agents.contains_key(&agent.agent_id) {
            return Err(StoreError::AgentExists);
        }
        self.client
            .put(AGENTS, &agent.agent_id, &to_doc(&agent)?, false)
            .await?;
        cell.state.lock().open = true;
        self.agents.insert(agent.agent_id.clone(), agent);
        Ok(())
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        Ok(self.agents.get(agent_id).map(|a| a.value().clone()))
    }

    async fn update_agent(&self, agent_id: &str, change: &AgentChange) -> StoreResult<Agent> {
        let cell = self.cell(agent_id).ok_or(StoreError::AgentNotFound)?;
        let _writer = cell.writer.lock().await;
        let mut agent = self
            .agents
            .get(agent_id)
            .map(|a| a.value().clone())
            .ok_or(StoreError::AgentNotFound)?;
        change.apply(&mut agent)?;
        self.client
            .put(AGENTS, agent_id, &to_doc(&agent)?, true)
            .await?;
        self.agents.insert(agent_id.to_string(), agent.clone());
        Ok(agent)
    }

    async fn delete_agent(&self, agent_id: &str, now: Millis) -> StoreResult<bool> {
        let Some(cell) = self.cell(agent_id) else {
            return Ok(false);
        };
        {
            let _writer = cell.writer.lock().await;
            if !self.agents.contains_key(agent_id) {
                return Ok(false);
            }
            // Dead-letter the live inbox first: if that fails the agent stays
            // and the caller can retry; the agent record goes last.
            let live: Vec<(u64, Message)> = {
                let state = cell.state.lock();
                state
                    .ready
                    .values()
                    .filter_map(|id| state.messages.get(id))
                    .map(|slot| {
                        let mut m = slot.message.clone();
                        m.kill(dead_reason::RECIPIENT_DELETED, now);
                        (slot.seq, m)
                    })
                    .collect()
            };
            if let (_, Some(e)) = self.apply_writes(&cell, live).await {
                return Err(e);
            }
            self.client.delete(AGENTS, agent_id).await?;
            cell.state.lock().open = false;
            self.agents.remove(agent_id);
        }
        self.cancel_deliveries(agent_id, now).await?;
        self.groups_forget_agent(agent_id).await?;
        Ok(true)
    }

    async fn mark_offline(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        let _sweep = self.sweeps.lock().await;
        let due: Vec<String> = self
            .agents
            .iter()
            .filter(|a| a.online && a.last_heartbeat + a.heartbeat_timeout_ms as Millis <= now)
            .map(|a| a.agent_id.clone())
            .take(limit)
            .collect();
        let results: Vec<StoreResult<bool>> = stream::iter(due)
            .map(|agent_id| async move {
                let Some(cell) = self.cell(&agent_id) else {
                    return Ok(false);
                };
                let _writer = cell.writer.lock().await;
                let Some(mut agent) = self.agents.get(&agent_id).map(|a| a.value().clone()) else {
                    return Ok(false);
                };
                if !(agent.online
                    && agent.last_heartbeat + agent.heartbeat_timeout_ms as Millis <= now)
                {
                    return Ok(false);
                }
                agent.online = false;
                let _permit = self
                    .bulk
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                self.client
                    .put(AGENTS, &agent_id, &to_doc(&agent)?, true)
                    .await?;
                self.agents.insert(agent_id, agent);
                Ok(true)
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        let mut marked = 0u64;
        let mut first_error = None;
        for result in results {
            match result {
                Ok(done) => marked += u64::from(done),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if marked == 0 => Err(e),
            _ => Ok(marked),
        }
    }

    async fn enqueue(
        &self,
        message: Message,
        quota: u64,
        delivery: Option<Delivery>,
    ) -> StoreResult<Enqueued> {
        let cell = self
            .cell(&message.recipient)
            .ok_or(StoreError::AgentNotFound)?;
        let _writer = cell.writer.lock().await;
        {
            let state = cell.state.lock();
            if !state.open {
                return Err(StoreError::AgentNotFound);
            }
            if let Some(key) = &message.idempotency_key
                && let Some(existing_id) = state.idempotency.get(key)
            {
                let existing = state.message(existing_id)?;
                return if existing.content_hash == message.content_hash {
                    Ok(Enqueued::Duplicate(existing.clone()))
                } else {
                    Err(StoreError::IdempotencyConflict)
                };
            }
            if state.live >= quota {
                return Err(StoreError::InboxFull);
            }
        }
        match self.owners.entry(message.id.clone()) {
            Entry::Occupied(_) => return Err(StoreError::MessageIdTaken),
            Entry::Vacant(slot) => {
                slot.insert(message.recipient.clone());
            }
        }
        let seq = self.next_seq();
        let (stored, scheduled) = tokio::join!(self.write_message(seq, &message, false), async {
            match &delivery {
                Some(d) => self.write_delivery(d, false).await,
                None => Ok(()),
            }
        });
        let failure = match (stored, scheduled) {
            (Ok(()), Ok(())) => None,
            (Err(e), scheduled) => {
                if let (Some(d), Ok(())) = (&delivery, scheduled) {
                    self.compensate(DELIVERIES, &d.id).await;
                }
                Some(e)
            }
            (Ok(()), Err(e)) => {
                self.compensate(MESSAGES, &message.id).await;
                Some(e)
            }
        };
        if let Some(e) = failure {
            self.owners.remove(&message.id);
            return Err(e);
        }
        cell.state.lock().insert(seq, message.clone());
        if let Some(delivery) = delivery {
            self.deliveries.lock().put(delivery);
        }
        Ok(Enqueued::Created(message))
    }

    async fn lease(&self, request: &LeaseRequest) -> StoreResult<Vec<Message>> {
        let Some(cell) = self.cell(&request.recipient) else {
            return Ok(Vec::new());
        };
        let _writer = cell.writer.lock().await;
        let now = request.now;
        let plan: Vec<(u64, Message)> = {
            let state = cell.state.lock();
            let mut plan = Vec::new();
            let mut granted = 0;
            for (&(available_at, seq), id) in state.ready.iter() {
                if available_at > now || granted == request.max_messages {
                    break;
                }
                let Some(slot) = state.messages.get(id) else {
                    continue;
                };
                let mut m = slot.message.clone();
                if m.expires_at <= now {
                    m.end(MessageState::Expired, now);
                } else if m.state == MessageState::Leased && m.attempts >= request.max_attempts {
                    m.kill(dead_reason::MAX_ATTEMPTS, now);
                } else {
                    m.grant_lease(now, request.visibility_ms);
                    granted += 1;
                }
                plan.push((seq, m));
            }
            plan
        };
        let (applied, error) = self.apply_writes(&cell, plan).await;
        let leased: Vec<Message> = applied
            .into_iter()
            .filter(|m| m.state == MessageState::Leased && m.lease_until.is_some_and(|u| u > now))
            .collect();
        match error {
            // Leases that Mech confirmed are handed out even if others failed:
            // the failed ones stay queued in the index and in Mech.
            Some(e) if leased.is_empty() => Err(e),
            _ => Ok(leased),
        }
    }

    async fn lease_held(
        &self,
        request: &LeaseRequest,
        holder: &str,
        from: Option<&str>,
    ) -> StoreResult<Vec<Message>> {
        let Some(cell) = self.cell(&request.recipient) else {
            return Ok(Vec::new());
        };
        let _writer = cell.writer.lock().await;
        let plan = cell.state.lock().plan_held_lease(request, holder, from);
        let (applied, error) = self.apply_writes(&cell, plan).await;
        let leased: Vec<Message> = applied
            .into_iter()
            .filter(|m| m.state == MessageState::Leased)
            .collect();
        match error {
            // As `lease`: confirmed leases are handed out, the rest stay as they were.
            Some(e) if leased.is_empty() => Err(e),
            _ => Ok(leased),
        }
    }

    async fn count_held(&self, recipient: &str, holder: &str, now: Millis) -> StoreResult<u64> {
        Ok(self
            .cell(recipient)
            .map_or(0, |cell| cell.state.lock().count_held(holder, now)))
    }

    async fn release_held(
        &self,
        recipient: &str,
        holder: &str,
        now: Millis,
        max_attempts: u32,
    ) -> StoreResult<ReclaimCounts> {
        let Some(cell) = self.cell(recipient) else {
            return Ok(ReclaimCounts::default());
        };
        let _writer = cell.writer.lock().await;
        let plan = cell
            .state
            .lock()
            .plan_release_held(holder, now, max_attempts);
        let (applied, error) = self.apply_writes(&cell, plan).await;
        match error {
            // A lease Mech did not release stays held and ends at its lease end.
            Some(e) if applied.is_empty() => Err(e),
            _ => Ok(super::memory::released_counts(&applied)),
        }
    }

    async fn ack(&self, request: &AckRequest) -> StoreResult<Message> {
        self.change_message(
            &request.recipient,
            &request.message_id,
            |inbox| inbox.check_lease(&request.message_id, request.lease_id.as_deref()),
            |m| {
                m.end(MessageState::Acked, request.now);
                m.result = request.result.clone();
            },
        )
        .await
    }

    /// Per inbox, under its writer lock: every entry is checked against the
    /// index (and the entries before it), then the acks are written to Mech
    /// in parallel (bounded by `MECH_CONCURRENCY`) instead of one round trip
    /// after the other; each applies to the index once Mech confirmed it.
    async fn ack_many(&self, requests: &[AckRequest]) -> StoreResult<Vec<StoreResult<Message>>> {
        let mut outcomes: Vec<Option<StoreResult<Message>>> =
            requests.iter().map(|_| None).collect();
        let mut recipients: Vec<&str> = requests.iter().map(|r| r.recipient.as_str()).collect();
        recipients.sort_unstable();
        recipients.dedup();
        for recipient in recipients {
            let entries = requests
                .iter()
                .enumerate()
                .filter(|(_, r)| r.recipient == recipient);
            let Some(cell) = self.cell(recipient) else {
                for (i, _) in entries {
                    outcomes[i] = Some(Err(StoreError::MessageNotFound));
                }
                continue;
            };
            let _writer = cell.writer.lock().await;
            let mut items = Vec::new();
            let mut positions = Vec::new();
            {
                let state = cell.state.lock();
                let mut planned: BTreeSet<&str> = BTreeSet::new();
                for (i, request) in entries {
                    let id = request.message_id.as_str();
                    let acked = if planned.contains(id) {
                        Err(StoreError::NotLeased)
                    } else {
                        state
                            .check_lease(id, request.lease_id.as_deref())
                            .and_then(|()| {
                                let slot =
                                    state.messages.get(id).ok_or(StoreError::MessageNotFound)?;
                                let mut m = slot.message.clone();
                                m.end(MessageState::Acked, request.now);
                                m.result = request.result.clone();
                                Ok((slot.seq, m))
                            })
                    };
                    match acked {
                        Ok(item) => {
                            planned.insert(id);
                            positions.push(i);
                            items.push(item);
                        }
                        Err(e) => outcomes[i] = Some(Err(e)),
                    }
                }
            }
            for (at, message, written) in self.write_messages(items).await {
                outcomes[positions[at]] = Some(written.map(|()| {
                    cell.state.lock().replace(message.clone());
                    message
                }));
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every entry is settled"))
            .collect())
    }

    async fn nack(&self, request: &NackRequest) -> StoreResult<Message> {
        self.change_message(
            &request.recipient,
            &request.message_id,
            |inbox| inbox.check_lease(&request.message_id, request.lease_id.as_deref()),
            |m| m.apply_nack(request.action, request.max_attempts, request.now),
        )
        .await
    }

    async fn requeue_dead(
        &self,
        recipient: &str,
        message_id: &str,
        now: Millis,
    ) -> StoreResult<Message> {
        self.change_message(
            recipient,
            message_id,
            |inbox| match inbox.message(message_id)?.state {
                MessageState::Dead => Ok(()),
                _ => Err(StoreError::NotDead),
            },
            |m| {
                m.release(now, now);
                m.attempts = 0;
                m.ended_at = None;
                m.dead_reason = None;
            },
        )
        .await
    }

    async fn get_message(&self, message_id: &str) -> StoreResult<Option<Message>> {
        let Some(recipient) = self.owners.get(message_id).map(|r| r.value().clone()) else {
            return Ok(None);
        };
        let Some(cell) = self.cell(&recipient) else {
            return Ok(None);
        };
        let state = cell.state.lock();
        Ok(state.messages.get(message_id).map(|s| s.message.clone()))
    }

    async fn list_dead(
        &self,
        recipient: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        match self.cell(recipient) {
            Some(cell) => cell.state.lock().dead_page(limit, cursor),
            None => Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            }),
        }
    }

    async fn next_available_at(&self, recipient: &str) -> StoreResult<Option<Millis>> {
        Ok(self
            .cell(recipient)
            .and_then(|cell| cell.state.lock().next_available_at()))
    }

    async fn peek_queued(
        &self,
        recipient: &str,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        Ok(self
            .cell(recipient)
            .map(|cell| cell.state.lock().peek_queued(now, limit))
            .unwrap_or_default())
    }

    async fn inbox_stats(&self, recipient: &str) -> StoreResult<StateCounts> {
        let mut counts = StateCounts::default();
        if let Some(cell) = self.cell(recipient) {
            for slot in cell.state.lock().messages.values() {
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
        for cell in self.all_cells() {
            for slot in cell.state.lock().messages.values() {
                stats.messages.add(slot.message.state, 1);
            }
        }
        Ok(stats)
    }

    async fn reclaim_expired_leases(&self, request: &ReclaimRequest) -> StoreResult<ReclaimCounts> {
        let _sweep = self.sweeps.lock().await;
        let cells = match &request.recipient {
            Some(agent) => self.cell(agent).into_iter().collect(),
            None => self.all_cells(),
        };
        let now = request.now;
        let due = |state: &Inbox, budget: usize| -> Vec<String> {
            state
                .ready
                .range(..=(now, u64::MAX))
                .map(|(_, id)| id.clone())
                .filter(|id| {
                    state
                        .messages
                        .get(id)
                        .is_some_and(|s| s.message.state == MessageState::Leased)
                })
                .take(budget)
                .collect()
        };
        let plan = self.plan(cells, request.limit, due);
        let applied = self
            .sweep(plan, |m| {
                (m.state == MessageState::Leased && m.available_at() <= now).then(|| {
                    let mut m = m.clone();
                    m.end_lease(request.max_attempts, now, now);
                    m
                })
            })
            .await?;
        let mut counts = ReclaimCounts::default();
        for m in applied {
            if m.state == MessageState::Dead {
                counts.dead += 1;
            } else {
                counts.requeued += 1;
            }
        }
        Ok(counts)
    }

    async fn expire_messages(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        let _sweep = self.sweeps.lock().await;
        let plan = self.plan(self.all_cells(), limit, |state, budget| {
            state
                .expiry
                .range(..=(now, u64::MAX))
                .map(|(_, id)| id.clone())
                .take(budget)
                .collect()
        });
        let applied = self
            .sweep(plan, |m| {
                (m.state.is_live() && m.expires_at <= now).then(|| {
                    let mut m = m.clone();
                    m.end(MessageState::Expired, now);
                    m
                })
            })
            .await?;
        Ok(applied.len() as u64)
    }

    async fn purge_retained(&self, ended_before: Millis, limit: usize) -> StoreResult<u64> {
        let _sweep = self.sweeps.lock().await;
        let plan = self.plan(self.all_cells(), limit, |state, budget| {
            state
                .ended
                .range(..(ended_before, 0))
                .map(|(_, id)| id.clone())
                .take(budget)
                .collect()
        });
        let outcomes: Vec<(u64, Option<StoreError>)> = stream::iter(plan)
            .map(|(cell, ids)| async move {
                let _writer = cell.writer.lock().await;
                let due: Vec<String> = {
                    let state = cell.state.lock();
                    ids.into_iter()
                        .filter(|id| {
                            state.messages.get(id).is_some_and(|s| {
                                !s.message.state.is_live()
                                    && s.message.ended_at.unwrap_or(s.message.updated_at)
                                        < ended_before
                            })
                        })
                        .collect()
                };
                let deleted: Vec<(String, Result<(), MechError>)> = stream::iter(due)
                    .map(|id| async move {
                        let _permit = self
                            .bulk
                            .acquire()
                            .await
                            .expect("the semaphore is never closed");
                        let result = self.client.delete(MESSAGES, &id).await;
                        (id, result)
                    })
                    .buffer_unordered(self.concurrency())
                    .collect()
                    .await;
                let mut purged = 0;
                let mut error = None;
                let mut state = cell.state.lock();
                for (id, result) in deleted {
                    match result {
                        Ok(()) => {
                            if state.remove(&id).is_some() {
                                self.owners.remove(&id);
                                purged += 1;
                            }
                        }
                        Err(e) => {
                            error.get_or_insert(StoreError::from(e));
                        }
                    }
                }
                (purged, error)
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        let purged: u64 = outcomes.iter().map(|(n, _)| n).sum();
        match outcomes.into_iter().find_map(|(_, e)| e) {
            Some(e) if purged == 0 => Err(e),
            _ => Ok(purged),
        }
    }

    async fn claim_due_deliveries(
        &self,
        now: Millis,
        limit: usize,
        claim_ms: i64,
    ) -> StoreResult<Vec<Delivery>> {
        let _writer = self.delivery_writer.lock().await;
        let claims: Vec<Delivery> = {
            let book = self.deliveries.lock();
            book.due
                .range(..(now + 1, String::new()))
                .take(limit)
                .filter_map(|(_, id)| book.deliveries.get(id))
                .map(|d| Delivery {
                    next_attempt_at: now + claim_ms,
                    ..d.clone()
                })
                .collect()
        };
        let written = self.write_deliveries(claims).await;
        let mut claimed = Vec::new();
        let mut first_error = None;
        let mut book = self.deliveries.lock();
        for (delivery, result) in written {
            match result {
                Ok(()) => {
                    book.put(delivery.clone());
                    claimed.push(delivery);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        claimed.sort_by(|a, b| (a.next_attempt_at, &a.id).cmp(&(b.next_attempt_at, &b.id)));
        match first_error {
            Some(e) if claimed.is_empty() => Err(e),
            _ => Ok(claimed),
        }
    }

    async fn record_attempt(
        &self,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<()> {
        let _writer = self.delivery_writer.lock().await;
        let updated = self
            .deliveries
            .lock()
            .deliveries
            .get(&attempt.delivery_id)
            .cloned()
            .map(|mut d| {
                d.attempts = d.attempts.max(attempt.attempt);
                d.last_status = attempt.status_code;
                d.last_error = attempt.error.clone();
                d.updated_at = attempt.at;
                if d.state == DeliveryState::Pending {
                    match outcome {
                        AttemptOutcome::Delivered => d.state = DeliveryState::Delivered,
                        AttemptOutcome::Failed => d.state = DeliveryState::Failed,
                        AttemptOutcome::RetryAt(at) => d.next_attempt_at = at,
                    }
                }
                d
            });
        let seq = self.next_seq();
        let key = uuid::Uuid::new_v4().to_string();
        let doc = json!({ "seq": seq, "attempt": attempt });
        let (logged, stored) = tokio::join!(self.client.put(ATTEMPTS, &key, &doc, false), async {
            match &updated {
                Some(d) => self.write_delivery(d, true).await,
                None => Ok(()),
            }
        });
        logged?;
        stored?;
        let evicted: Vec<String> = {
            let mut book = self.deliveries.lock();
            if let Some(d) = updated {
                book.put(d);
            }
            let log = book.attempts.entry(attempt.agent_id.clone()).or_default();
            log.push_back((key, seq, attempt.clone()));
            let mut evicted = Vec::new();
            while log.len() > ATTEMPTS_KEPT_PER_AGENT {
                if let Some((key, _, _)) = log.pop_front() {
                    evicted.push(key);
                }
            }
            evicted
        };
        for key in evicted {
            // Only housekeeping: a leftover is dropped again at the next start.
            if let Err(e) = self.client.delete(ATTEMPTS, &key).await {
                tracing::warn!(key, error = %e, "could not delete an old webhook attempt from Mech");
            }
        }
        Ok(())
    }

    async fn cancel_deliveries(&self, agent_id: &str, now: Millis) -> StoreResult<u64> {
        let _writer = self.delivery_writer.lock().await;
        let pending: Vec<Delivery> = self
            .deliveries
            .lock()
            .deliveries
            .values()
            .filter(|d| d.agent_id == agent_id && d.state == DeliveryState::Pending)
            .map(|d| Delivery {
                state: DeliveryState::Cancelled,
                updated_at: now,
                ..d.clone()
            })
            .collect();
        let written = self.write_deliveries(pending).await;
        let mut cancelled = 0;
        let mut first_error = None;
        let mut book = self.deliveries.lock();
        for (delivery, result) in written {
            match result {
                Ok(()) => {
                    book.put(delivery);
                    cancelled += 1;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(cancelled),
        }
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
            .map(|log| {
                log.iter()
                    .rev()
                    .take(limit)
                    .map(|(_, _, a)| a.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn append_audit(&self, event: NewAuditEvent) -> StoreResult<AuditEvent> {
        let _writer = self.audit_writer.lock().await;
        let (prev, seq) = {
            let log = self.audit.lock();
            let prev = log
                .last()
                .map_or(crate::audit::GENESIS_HASH.to_string(), |e| e.hash.clone());
            (prev, log.len() as u64 + 1)
        };
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
        self.client
            .put(AUDIT, &format!("{seq:020}"), &to_doc(&stored)?, false)
            .await?;
        self.audit.lock().push(stored.clone());
        Ok(stored)
    }

    async fn list_audit(&self, after: Option<u64>, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        let log = self.audit.lock();
        let start = after.unwrap_or(0) as usize;
        Ok(log.iter().skip(start).take(limit).cloned().collect())
    }

    async fn export_agents(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<Agent>> {
        let mut agents: Vec<Agent> = self
            .agents
            .iter()
            .filter(|a| after.is_none_or(|after| a.key().as_str() > after))
            .map(|a| a.value().clone())
            .collect();
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        agents.truncate(limit);
        Ok(agents)
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
        let mut out = Vec::with_capacity(limit.min(ids.len()));
        for (id, recipient) in ids {
            if out.len() == limit {
                break;
            }
            if let Some(cell) = self.cell(&recipient)
                && let Some(slot) = cell.state.lock().messages.get(&id)
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
        let cell = self.cell_or_create(&message.recipient);
        let _writer = cell.writer.lock().await;
        match self.owners.entry(message.id.clone()) {
            Entry::Occupied(_) => return Ok(false),
            Entry::Vacant(slot) => {
                slot.insert(message.recipient.clone());
            }
        }
        let seq = self.next_seq();
        if let Err(e) = self.write_message(seq, &message, false).await {
            self.owners.remove(&message.id);
            return Err(e);
        }
        cell.state.lock().insert(seq, message);
        Ok(true)
    }

    async fn create_group(&self, group: Group, now: Millis) -> StoreResult<()> {
        self.groups_create(group, now).await
    }

    async fn get_group(&self, group_id: &str) -> StoreResult<Option<Group>> {
        Ok(self.groups_index().group(group_id))
    }

    async fn update_group(&self, group_id: &str, change: &GroupChange) -> StoreResult<Group> {
        self.groups_update(group_id, change).await
    }

    async fn delete_group(&self, group_id: &str) -> StoreResult<bool> {
        self.groups_delete(group_id).await
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
        self.groups_add_member(group_id, member).await
    }

    async fn remove_group_member(&self, group_id: &str, agent_id: &str) -> StoreResult<bool> {
        self.groups_remove_member(group_id, agent_id).await
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
        self.groups_post(post, fan).await
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
        self.groups_purge(now, limit).await
    }

    async fn search_agents(
        &self,
        prefix: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Agent>> {
        Ok(self.console_search_agents(prefix, limit, cursor))
    }

    async fn list_dead_all(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        self.console_dead_all(limit, cursor)
    }

    async fn list_failing_deliveries(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Delivery>> {
        self.console_failing(limit, cursor)
    }

    async fn retry_delivery(
        &self,
        delivery_id: &str,
        now: Millis,
    ) -> StoreResult<Option<Delivery>> {
        self.console_retry(delivery_id, now).await
    }

    async fn remember_nonce(
        &self,
        key: &str,
        expires_at: Millis,
        now: Millis,
    ) -> StoreResult<bool> {
        self.remember_nonce_indexed(key, expires_at, now).await
    }

    async fn purge_nonces(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        self.purge_nonces_indexed(now, limit).await
    }

    async fn retire_agent_id(&self, agent_id: &str, now: Millis) -> StoreResult<()> {
        security::retire_agent_id(&self.client, agent_id, now).await
    }

    async fn is_agent_id_retired(&self, agent_id: &str) -> StoreResult<bool> {
        security::is_agent_id_retired(&self.client, agent_id).await
    }

    async fn claim_due_deliveries_fair(
        &self,
        now: Millis,
        limit: usize,
        claim_ms: i64,
        per_agent: usize,
        skip_agents: &[String],
    ) -> StoreResult<Vec<Delivery>> {
        self.claim_fair(now, limit, claim_ms, per_agent, skip_agents)
            .await
    }
}
