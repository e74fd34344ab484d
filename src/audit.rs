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
