//! The hash chain of the audit log: each event's hash covers the previous
//! hash and the event itself, so editing or deleting a stored row breaks
//! every hash after it.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::store::AuditEvent;

/// The hash that stands before the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `sha256(prev_hash ‖ canonical event)`, hex. The canonical event is the
/// compact JSON of `[seq, at, kind, agent_id, detail]`.
pub fn chain_hash(
    prev_hash: &str,
    seq: u64,
    at: i64,
    kind: &str,
    agent_id: Option<&str>,
    detail: &serde_json::Value,
) -> String {
    let canonical = json!([seq, at, kind, agent_id, detail]).to_string();
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// Recomputes the chain over consecutive events starting after `prev_hash`;
/// returns the sequence number of the first event that does not verify.
pub fn first_broken_link(prev_hash: &str, events: &[AuditEvent]) -> Option<u64> {
    let mut prev = prev_hash.to_string();
    for e in events {
        let expected = chain_hash(
            &prev,
            e.seq,
            e.at,
            &e.kind,
            e.agent_id.as_deref(),
            &e.detail,
        );
        if expected != e.hash {
            return Some(e.seq);
        }
        prev = expected;
    }
    None
}

/// Stored `kind` of a checkpoint event.
pub const CHECKPOINT_KIND: &str = "audit.checkpoint";

/// What a checkpoint signs: the sequence, hash and time of the event it
/// anchors. With the hub's key kept outside the database, whoever can write
/// the database can no longer rewrite the chain up to a checkpoint and
/// recompute the hashes: the signed hash would no longer match.
pub fn checkpoint_message(seq: u64, hash: &str, at: i64) -> String {
    format!("admp-audit-checkpoint\n{seq}\n{hash}\n{at}")
}

/// The kinds of security-relevant events the hub records (PROTOCOL.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    AgentRegistered,
    AgentDeleted,
    KeyRotated,
    WebhookSet,
    WebhookRemoved,
    TrustAdded,
    TrustRemoved,
    /// A request refused for its credentials or signature (any 401 or 403).
    AuthFailed,
    /// A request refused with 429 `RATE_LIMITED`.
    RateLimited,
    /// Messages moved to the dead letters.
    DeadLettered,
    /// A group was created (its creator owns it).
    GroupCreated,
    /// A group's name or settings changed.
    GroupUpdated,
    /// A group was deleted with its members and history.
    GroupDeleted,
    /// An owner or admin added a member: who may post to whom changed.
    GroupMemberAdded,
    /// An owner or admin removed a member.
    GroupMemberRemoved,
    /// An agent joined a group itself (open or key-protected).
    GroupJoined,
    /// An agent left a group.
    GroupLeft,
    /// An operator opened a console session.
    ConsoleLogin,
    /// A console login with a wrong key (or refused by its rate limit).
    ConsoleLoginFailed,
    /// An operator closed a console session.
    ConsoleLogout,
    /// An operator requeued dead letters from the console.
    ConsoleRequeued,
    /// An operator made a webhook delivery due now from the console.
    ConsoleDeliveryRetried,
    /// A signed checkpoint of the chain (see [`checkpoint_message`]).
    Checkpoint,
}

impl AuditKind {
    /// The stored `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::AgentRegistered => "agent.registered",
            AuditKind::AgentDeleted => "agent.deleted",
            AuditKind::KeyRotated => "agent.key_rotated",
            AuditKind::WebhookSet => "agent.webhook_set",
            AuditKind::WebhookRemoved => "agent.webhook_removed",
            AuditKind::TrustAdded => "agent.trust_added",
            AuditKind::TrustRemoved => "agent.trust_removed",
            AuditKind::AuthFailed => "auth.failed",
            AuditKind::RateLimited => "rate_limit.exceeded",
            AuditKind::DeadLettered => "message.dead_lettered",
            AuditKind::GroupCreated => "group.created",
            AuditKind::GroupUpdated => "group.updated",
            AuditKind::GroupDeleted => "group.deleted",
            AuditKind::GroupMemberAdded => "group.member_added",
            AuditKind::GroupMemberRemoved => "group.member_removed",
            AuditKind::GroupJoined => "group.joined",
            AuditKind::GroupLeft => "group.left",
            AuditKind::ConsoleLogin => "console.login",
            AuditKind::ConsoleLoginFailed => "console.login_failed",
            AuditKind::ConsoleLogout => "console.logout",
            AuditKind::ConsoleRequeued => "console.requeued",
            AuditKind::ConsoleDeliveryRetried => "console.delivery_retried",
            AuditKind::Checkpoint => CHECKPOINT_KIND,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let detail = json!({ "n": seq });
                let hash = chain_hash(
                    &prev,
                    seq,
                    seq as i64,
                    "agent.registered",
                    Some("a"),
                    &detail,
                );
                prev = hash.clone();
                AuditEvent {
                    seq,
                    at: seq as i64,
                    kind: "agent.registered".into(),
                    agent_id: Some("a".into()),
                    detail,
                    hash,
                }
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_from_genesis_and_from_any_anchor() {
        let events = chain(5);
        assert_eq!(first_broken_link(GENESIS_HASH, &events), None);
        assert_eq!(first_broken_link(&events[1].hash, &events[2..]), None);
    }

    #[test]
    fn edits_deletions_and_reordering_break_the_chain() {
        let mut edited = chain(5);
        edited[2].detail = json!({ "n": 99 });
        assert_eq!(first_broken_link(GENESIS_HASH, &edited), Some(3));

        let mut deleted = chain(5);
        deleted.remove(2);
        assert_eq!(first_broken_link(GENESIS_HASH, &deleted), Some(4));

        let mut swapped = chain(5);
        swapped.swap(1, 2);
        assert_eq!(first_broken_link(GENESIS_HASH, &swapped), Some(3));

        // Recomputing the edited row's own hash still breaks the next link.
        let mut rehashed = chain(5);
        rehashed[2].detail = json!({ "n": 99 });
        rehashed[2].hash = chain_hash(
            &rehashed[1].hash,
            3,
            3,
            "agent.registered",
            Some("a"),
            &rehashed[2].detail,
        );
        assert_eq!(first_broken_link(GENESIS_HASH, &rehashed), Some(4));
    }
}
