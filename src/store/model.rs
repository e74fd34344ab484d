//! Records and requests shared by every backend.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::Metadata;

/// Epoch milliseconds: the unit of every stored time (compat with the Node server).
pub type Millis = i64;

/// One public key of an agent; several are active during a rotation overlap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentKey {
    /// Standard base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// 1 for the key given at registration, +1 per rotation.
    pub version: u32,
    /// When this key stops verifying; `None` for the current key.
    pub valid_until: Option<Millis>,
}

/// A registered agent as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub agent_id: String,
    pub agent_type: String,
    pub metadata: Metadata,
    /// Current key last; older keys carry `valid_until`.
    pub keys: Vec<AgentKey>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    /// The secret the last webhook change replaced, still signing next to the
    /// current one for a while so receivers switch without refusing requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_webhook_secret: Option<RetiringSecret>,
    pub trusted_agents: Vec<String>,
    pub last_heartbeat: Millis,
    pub online: bool,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Agent {
    /// The key new signatures should use.
    pub fn current_key(&self) -> Option<&AgentKey> {
        self.keys.iter().find(|k| k.valid_until.is_none())
    }

    /// Version of the current key (0 if the agent somehow has none).
    pub fn key_version(&self) -> u32 {
        self.current_key().map_or(0, |k| k.version)
    }

    /// The webhook secrets to sign with at `now`: the current one first, then
    /// the replaced one while its overlap lasts (PROTOCOL.md §6: several `v1,`
    /// signatures, a receiver accepts any).
    pub fn webhook_signing_secrets(&self, now: Millis) -> Vec<&str> {
        let retiring = self
            .previous_webhook_secret
            .as_ref()
            .filter(|previous| previous.valid_until > now)
            .map(|previous| previous.secret.as_str());
        self.webhook_secret
            .as_deref()
            .into_iter()
            .chain(retiring)
            .collect()
    }

    /// Keys that still verify at `now`: the current one plus those inside their overlap window.
    pub fn active_keys(&self, now: Millis) -> impl Iterator<Item = &AgentKey> {
        self.keys
            .iter()
            .filter(move |k| k.valid_until.is_none_or(|until| until > now))
    }
}

/// A webhook secret being rotated out, and until when it still signs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiringSecret {
    pub secret: String,
    pub valid_until: Millis,
}

/// A single atomic change to an agent record.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentChange {
    /// Refreshes the heartbeat and merges metadata shallowly; refused with
    /// `TooLarge` when the merged metadata would exceed `max_metadata_bytes`
    /// serialized (checked on the merged record, so many small heartbeats
    /// cannot grow it either).
    Heartbeat {
        now: Millis,
        metadata: Option<Metadata>,
        max_metadata_bytes: usize,
    },
    /// Adds an id to the trust list (no duplicates).
    AddTrusted { agent_id: String, now: Millis },
    /// Removes an id from the trust list.
    RemoveTrusted { agent_id: String, now: Millis },
    /// Sets or clears the webhook. A replaced secret keeps signing until
    /// `overlap_until`; clearing the webhook drops every secret at once.
    SetWebhook {
        url: Option<String>,
        secret: Option<String>,
        overlap_until: Millis,
        now: Millis,
    },
    /// Makes `public_key` current; the old current key verifies until `overlap_until`.
    RotateKey {
        public_key: String,
        overlap_until: Millis,
        now: Millis,
    },
}

impl AgentChange {
    /// Applies the change in place; every backend calls this inside its own
    /// transaction or lock. A refused change (`TooLarge`) leaves `agent` as it was.
    pub fn apply(&self, agent: &mut Agent) -> Result<(), super::StoreError> {
        match self {
            AgentChange::Heartbeat {
                now,
                metadata,
                max_metadata_bytes,
            } => {
                if let Some(patch) = metadata {
                    let mut merged = agent.metadata.clone();
                    for (k, v) in patch {
                        merged.insert(k.clone(), v.clone());
                    }
                    if metadata_size(&merged) > *max_metadata_bytes {
                        return Err(super::StoreError::TooLarge("metadata"));
                    }
                    agent.metadata = merged;
                }
                agent.last_heartbeat = *now;
                agent.online = true;
                agent.updated_at = *now;
            }
            AgentChange::AddTrusted { agent_id, now } => {
                if !agent.trusted_agents.contains(agent_id) {
                    if agent.trusted_agents.len() >= MAX_TRUSTED_AGENTS {
                        return Err(super::StoreError::TooLarge("trusted_agents"));
                    }
                    agent.trusted_agents.push(agent_id.clone());
                }
                agent.updated_at = *now;
            }
            AgentChange::RemoveTrusted { agent_id, now } => {
                agent.trusted_agents.retain(|a| a != agent_id);
                agent.updated_at = *now;
            }
            AgentChange::SetWebhook {
                url,
                secret,
                overlap_until,
                now,
            } => {
                let same_secret = url.is_some() && agent.webhook_secret == *secret;
                if !same_secret {
                    let keeps_signing = url.is_some() && overlap_until > now;
                    agent.previous_webhook_secret = agent
                        .webhook_secret
                        .take()
                        .filter(|_| keeps_signing)
                        .map(|old| RetiringSecret {
                            secret: old,
                            valid_until: *overlap_until,
                        });
                }
                agent.webhook_url = url.clone();
                agent.webhook_secret = secret.clone();
                agent.updated_at = *now;
            }
            AgentChange::RotateKey {
                public_key,
                overlap_until,
                now,
            } => {
                let next_version = agent.keys.iter().map(|k| k.version).max().unwrap_or(0) + 1;
                // At most two keys verify at once: the new one and the one it
                // replaces. A rotation inside the overlap ends the older
                // retiring key, so repeated rotations cannot pile up keys that
                // every verification would have to try.
                agent.keys.retain(|k| k.valid_until.is_none());
                for key in &mut agent.keys {
                    if key.valid_until.is_none() {
                        key.valid_until = Some(*overlap_until);
                    }
                }
                agent.keys.push(AgentKey {
                    public_key: public_key.clone(),
                    version: next_version,
                    valid_until: None,
                });
                agent.updated_at = *now;
            }
        }
        Ok(())
    }
}

/// Most agents one trust list may hold.
pub const MAX_TRUSTED_AGENTS: usize = 1_000;

/// Size of agent metadata as stored: its compact JSON in bytes.
pub fn metadata_size(metadata: &Metadata) -> usize {
    serde_json::to_vec(metadata).map_or(usize::MAX, |v| v.len())
}

/// Lifecycle state of a message (PROTOCOL.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    Queued,
    Leased,
    Acked,
    Expired,
    Dead,
}

impl MessageState {
    /// Wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Leased => "leased",
            MessageState::Acked => "acked",
            MessageState::Expired => "expired",
            MessageState::Dead => "dead",
        }
    }

    /// Parses a stored state name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => MessageState::Queued,
            "leased" => MessageState::Leased,
            "acked" => MessageState::Acked,
            "expired" => MessageState::Expired,
            "dead" => MessageState::Dead,
            _ => return None,
        })
    }

    /// Live messages count against the quota and can still be delivered.
    pub fn is_live(self) -> bool {
        matches!(self, MessageState::Queued | MessageState::Leased)
    }
}

/// Why a message was dead-lettered.
pub mod dead_reason {
    /// Its lease ended without ack after `MAX_DELIVERY_ATTEMPTS` pulls.
    pub const MAX_ATTEMPTS: &str = "max_attempts";
    /// Its recipient was deleted.
    pub const RECIPIENT_DELETED: &str = "recipient_deleted";
}

/// A message envelope kept as its compact JSON text rather than a `Value`
/// tree: a stored message then costs about its wire size instead of ~3 KiB of
/// ordered maps, and pulls write it out without re-serialising. It serialises
/// as the very same JSON object (the text is inserted verbatim by serde_json),
/// so stored, exported and delivered bytes are unchanged.
#[derive(Clone)]
pub struct Envelope(Box<RawValue>);

impl Envelope {
    /// The compact JSON of an envelope object, keys in their order.
    pub fn from_object(object: &Map<String, Value>) -> Self {
        let text = serde_json::to_string(object).expect("a JSON map always serialises");
        Envelope(RawValue::from_string(text).expect("serde_json output is valid JSON"))
    }

    /// Takes stored JSON text as it is (validated, not re-ordered).
    pub fn from_json_text(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Envelope)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// A parsed copy, for the rare reader of individual fields (replies).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).expect("an Envelope always holds valid JSON")
    }
}

impl From<Value> for Envelope {
    fn from(value: Value) -> Self {
        let text = value.to_string();
        Envelope(RawValue::from_string(text).expect("serde_json output is valid JSON"))
    }
}

impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    /// Through a `Value`, so it works from any deserializer (text or `from_value`).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Envelope::from)
    }
}

/// A stored message and its delivery state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    /// Normalised recipient agent id.
    pub recipient: String,
    /// Normalised sender agent id.
    pub sender: String,
    /// The envelope as accepted (server-filled defaults included), delivered verbatim.
    pub envelope: Envelope,
    pub state: MessageState,
    /// Number of leases issued; only pulls add to it.
    pub attempts: u32,
    pub lease_id: Option<String>,
    pub lease_until: Option<Millis>,
    /// When a queued message becomes visible to pulls (nack delay).
    pub visible_at: Millis,
    /// TTL deadline for live messages.
    pub expires_at: Millis,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub acked_at: Option<Millis>,
    /// When the message reached acked, expired or dead; retention counts from here.
    pub ended_at: Option<Millis>,
    pub dead_reason: Option<String>,
    /// The consumer's ack `result`.
    pub result: Option<Value>,
    /// Scope: the recipient.
    pub idempotency_key: Option<String>,
    /// Hash of (from, subject, type, correlation_id, body hash) to tell a retry from a conflict.
    pub content_hash: String,
}

impl Message {
    /// A message as a send stores it: queued, visible from `now`, expiring
    /// `ttl_ms` later, with no idempotency key and an empty content hash
    /// (the send pipeline sets both).
    pub fn queued(
        id: String,
        recipient: String,
        sender: String,
        envelope: Envelope,
        now: Millis,
        ttl_ms: i64,
    ) -> Self {
        Message {
            id,
            recipient,
            sender,
            envelope,
            state: MessageState::Queued,
            attempts: 0,
            lease_id: None,
            lease_until: None,
            visible_at: now,
            expires_at: now + ttl_ms,
            created_at: now,
            updated_at: now,
            acked_at: None,
            ended_at: None,
            dead_reason: None,
            result: None,
            idempotency_key: None,
            content_hash: String::new(),
        }
    }

    /// Moves the message to an end state.
    pub fn end(&mut self, state: MessageState, now: Millis) {
        self.state = state;
        self.lease_id = None;
        self.lease_until = None;
        self.ended_at = Some(now);
        self.updated_at = now;
        if state == MessageState::Acked {
            self.acked_at = Some(now);
        }
    }

    /// Moves the message to the dead letters.
    pub fn kill(&mut self, reason: &str, now: Millis) {
        self.end(MessageState::Dead, now);
        self.dead_reason = Some(reason.to_string());
    }

    /// Issues a fresh lease.
    pub fn grant_lease(&mut self, now: Millis, visibility_ms: i64) {
        self.state = MessageState::Leased;
        self.attempts += 1;
        self.lease_id = Some(uuid::Uuid::new_v4().to_string());
        self.lease_until = Some(now + visibility_ms);
        self.updated_at = now;
    }

    /// Issues a fresh lease held by stream `holder`: the lease id carries
    /// the holder's tag ([`holder_tag`]), so any instance can tell which
    /// stream holds it and the tag ends with the lease (ack, nack, reclaim).
    pub fn grant_held_lease(&mut self, now: Millis, visibility_ms: i64, holder: &str) {
        self.grant_lease(now, visibility_ms);
        self.lease_id = Some(format!("{}{}", holder_tag(holder), uuid::Uuid::new_v4()));
    }

    /// Whether this message is leased under a lease whose id starts with `tag`.
    pub fn held_by(&self, tag: &str) -> bool {
        self.state == MessageState::Leased
            && self.lease_id.as_deref().is_some_and(|l| l.starts_with(tag))
    }

    /// Applies a nack (the lease is already checked).
    pub fn apply_nack(&mut self, action: NackAction, max_attempts: u32, now: Millis) {
        match action {
            NackAction::Extend {
                extend_ms,
                max_lease_until,
            } => {
                let base = self.lease_until.unwrap_or(now).max(now);
                self.lease_until = Some((base + extend_ms).min(max_lease_until));
                self.updated_at = now;
            }
            NackAction::Requeue { visible_at } => self.end_lease(max_attempts, visible_at, now),
        }
    }

    /// Puts the message back in the queue, visible at `visible_at`.
    pub fn release(&mut self, visible_at: Millis, now: Millis) {
        self.state = MessageState::Queued;
        self.lease_id = None;
        self.lease_until = None;
        self.visible_at = visible_at;
        self.updated_at = now;
    }

    /// Time from which a pull may take this message (queued: visible_at, leased: lease end).
    pub fn available_at(&self) -> Millis {
        match self.state {
            MessageState::Leased => self.lease_until.unwrap_or(self.visible_at),
            _ => self.visible_at,
        }
    }

    /// What a lease that ends without ack does to this message: requeue, or dead-letter at the limit.
    pub fn end_lease(&mut self, max_attempts: u32, visible_at: Millis, now: Millis) {
        if self.attempts >= max_attempts {
            self.kill(dead_reason::MAX_ATTEMPTS, now);
        } else {
            self.release(visible_at, now);
        }
    }
}

/// Outcome of `enqueue`.
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// A new message was stored.
    Created(Message),
    /// The idempotency key was seen with the same content: the original message.
    Duplicate(Message),
}

/// Parameters of one pull.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub recipient: String,
    pub now: Millis,
    pub visibility_ms: i64,
    pub max_messages: usize,
    /// Expired leases found on the way are dead-lettered at this many attempts.
    pub max_attempts: u32,
}

/// Parameters of one ack.
#[derive(Debug, Clone)]
pub struct AckRequest {
    pub recipient: String,
    pub message_id: String,
    pub lease_id: Option<String>,
    pub result: Option<Value>,
    pub now: Millis,
}

/// What a nack does with the lease.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NackAction {
    /// Keeps the lease, extended by `extend_ms` from its end (or from now if it
    /// already ended), but never past `max_lease_until`.
    Extend {
        extend_ms: i64,
        max_lease_until: Millis,
    },
    /// Ends the lease; the message is visible again at `visible_at`.
    Requeue { visible_at: Millis },
}

/// Parameters of one nack.
#[derive(Debug, Clone)]
pub struct NackRequest {
    pub recipient: String,
    pub message_id: String,
    pub lease_id: Option<String>,
    pub action: NackAction,
    pub max_attempts: u32,
    pub now: Millis,
}

/// Parameters of a lease-reclaim sweep.
#[derive(Debug, Clone)]
pub struct ReclaimRequest {
    pub now: Millis,
    pub max_attempts: u32,
    pub limit: usize,
    /// Restricts the sweep to one inbox (the agent's own reclaim route).
    pub recipient: Option<String>,
}

/// Separates a stream's id from the random part of the lease ids it holds.
/// Never part of a plain lease id (a UUID), nor of a stream id.
pub const HOLDER_SEPARATOR: char = '~';

/// The lease-id prefix of the leases stream `holder` holds (`<holder>~`):
/// the lease-holder tag (STORAGE.md, "Stream leases").
pub fn holder_tag(holder: &str) -> String {
    format!("{holder}{HOLDER_SEPARATOR}")
}

/// What a reclaim sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReclaimCounts {
    pub requeued: u64,
    pub dead: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Cuts `rows`, read with one row more than `size`, into a page: the
    /// extra row only tells that another page exists, and the cursor is the
    /// last row kept.
    pub fn from_overfetch(mut rows: Vec<T>, size: usize, cursor: impl Fn(&T) -> String) -> Self {
        if rows.len() <= size {
            return Page {
                items: rows,
                next_cursor: None,
            };
        }
        rows.truncate(size);
        let next_cursor = rows.last().map(cursor);
        Page {
            items: rows,
            next_cursor,
        }
    }
}

/// Message counts by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    pub total: u64,
    pub queued: u64,
    pub leased: u64,
    pub acked: u64,
    pub expired: u64,
    pub dead: u64,
}

impl StateCounts {
    /// Adds one message in `state`.
    pub fn add(&mut self, state: MessageState, n: u64) {
        self.total += n;
        match state {
            MessageState::Queued => self.queued += n,
            MessageState::Leased => self.leased += n,
            MessageState::Acked => self.acked += n,
            MessageState::Expired => self.expired += n,
            MessageState::Dead => self.dead += n,
        }
    }
}

/// Hub-wide counts for `/api/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    pub agents_total: u64,
    pub agents_online: u64,
    pub messages: StateCounts,
}

/// Where a webhook delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its next attempt (or being attempted under a claim).
    Pending,
    /// A 2xx was received.
    Delivered,
    /// Every retry failed.
    Failed,
    /// The agent or its webhook was removed.
    Cancelled,
}

impl DeliveryState {
    /// Storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            "cancelled" => DeliveryState::Cancelled,
            _ => return None,
        })
    }
}

/// A durable webhook notification for one stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Standard Webhooks `webhook-id`, stable across retries.
    pub id: String,
    pub message_id: String,
    pub agent_id: String,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (a claim pushes it forward).
    pub next_attempt_at: Millis,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// One HTTP attempt of a delivery, kept for `GET …/webhook/deliveries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub delivery_id: String,
    pub message_id: String,
    pub agent_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at: Millis,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// What an attempt means for its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Try again at this time.
    RetryAt(Millis),
    /// Give up.
    Failed,
}

/// An audit event before the store gives it a place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub at: Millis,
    pub kind: String,
    pub agent_id: Option<String>,
    pub detail: Value,
}

/// An audit event in the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// 1, 2, 3… in append order.
    pub seq: u64,
    pub at: Millis,
    pub kind: String,
    pub agent_id: Option<String>,
    pub detail: Value,
    /// `crate::audit::chain_hash(previous hash, this event)`.
    pub hash: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The compact text keeps key order (integer-like keys included), numbers
    /// and escapes exactly as the `Value` it replaced serialised them.
    #[test]
    fn envelope_serialises_as_the_same_json_object() {
        let value = json!({"version": "1.0", "z": 1, "a": {"10": true, "2": [1.5, 1e-7]},
            "text": "é\u{2028}\"", "big": 12345678901234567890_u64});
        let envelope = Envelope::from(value.clone());
        assert_eq!(envelope.as_str(), value.to_string());
        assert_eq!(serde_json::to_string(&envelope).unwrap(), value.to_string());
        let wrapped = json!({"envelope": envelope.clone()});
        assert_eq!(wrapped["envelope"], value);
        assert_eq!(envelope.to_value(), value);
        let Value::Object(map) = value.clone() else {
            unreachable!()
        };
        assert_eq!(Envelope::from_object(&map), envelope);
    }

    #[test]
    fn envelope_deserialises_from_text_and_from_values() {
        let value = json!({"b": 1, "a": [null, false]});
        let from_text: Envelope = serde_json::from_str(&value.to_string()).unwrap();
        let from_value: Envelope = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(from_text, from_value);
        assert_eq!(from_text.as_str(), r#"{"b":1,"a":[null,false]}"#);
        assert!(Envelope::from_json_text("{not json".into()).is_err());
        assert_eq!(
            Envelope::from_json_text(value.to_string()).unwrap(),
            from_text
        );
    }

    fn agent_with_secret(secret: &str) -> Agent {
        Agent {
            agent_id: "bob".into(),
            agent_type: "generic".into(),
            metadata: Metadata::new(),
            keys: Vec::new(),
            webhook_url: Some("https://example.com/hook".into()),
            webhook_secret: Some(secret.into()),
            previous_webhook_secret: None,
            trusted_agents: Vec::new(),
            last_heartbeat: 0,
            online: true,
            heartbeat_interval_ms: 60_000,
            heartbeat_timeout_ms: 300_000,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn set_webhook(url: Option<&str>, secret: Option<&str>, overlap_until: Millis) -> AgentChange {
        AgentChange::SetWebhook {
            url: url.map(str::to_string),
            secret: secret.map(str::to_string),
            overlap_until,
            now: 1_000,
        }
    }

    const URL: Option<&str> = Some("https://example.com/hook");

    #[test]
    fn a_new_secret_keeps_the_old_one_signing_until_the_overlap_ends() {
        let mut agent = agent_with_secret("old");
        set_webhook(URL, Some("new"), 61_000)
            .apply(&mut agent)
            .unwrap();
        assert_eq!(agent.webhook_signing_secrets(60_999), ["new", "old"]);
        assert_eq!(agent.webhook_signing_secrets(61_000), ["new"]);

        // Setting the same secret again is no rotation: the overlap stays.
        set_webhook(URL, Some("new"), 99_000)
            .apply(&mut agent)
            .unwrap();
        assert_eq!(
            agent.previous_webhook_secret.as_ref().unwrap().valid_until,
            61_000
        );
    }

    #[test]
    fn no_overlap_or_a_removed_webhook_drops_the_old_secret_at_once() {
        let mut agent = agent_with_secret("old");
        set_webhook(URL, Some("new"), 1_000)
            .apply(&mut agent)
            .unwrap();
        assert_eq!(agent.webhook_signing_secrets(1_000), ["new"]);
        assert!(agent.previous_webhook_secret.is_none());

        let mut agent = agent_with_secret("old");
        set_webhook(URL, Some("new"), 61_000)
            .apply(&mut agent)
            .unwrap();
        set_webhook(None, None, 1_000).apply(&mut agent).unwrap();
        assert!(agent.webhook_signing_secrets(1_000).is_empty());
        assert!(agent.previous_webhook_secret.is_none());
    }
}
