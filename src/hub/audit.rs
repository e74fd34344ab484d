//! The audit log (PROTOCOL.md §8): appending security-relevant events and
//! reading them back a page at a time with the hash chain checked.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use serde_json::{Value, json};

use super::{Hub, HubError, HubResult};
use crate::audit::{self, AuditKind, CHECKPOINT_KIND, GENESIS_HASH, checkpoint_message};
use crate::signing::keys;
use crate::store::{AuditEvent, NewAuditEvent};

/// Default page size of the audit listing.
pub const DEFAULT_AUDIT_PAGE: usize = 100;
/// Largest page of the audit listing.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// One page of the audit log.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// `seq` of the last event when more may follow.
    pub next_cursor: Option<String>,
    /// Every event of the page chains onto the one before it (the genesis
    /// hash for the first page, the previous page's last event otherwise).
    pub chain_valid: bool,
    /// The first event whose hash does not verify.
    pub broken_at: Option<u64>,
    /// Every signed checkpoint on the page verifies with the hub's audit key
    /// and matches the event it anchors; `None` when the hub has no key.
    pub checkpoints_valid: Option<bool>,
    /// The first checkpoint that does not verify.
    pub checkpoint_failed_at: Option<u64>,
}

impl Hub {
    /// Appends one event. A failed write is logged and counted but never
    /// fails the caller: the action it records has already happened.
    pub async fn audit(&self, kind: AuditKind, agent_id: Option<&str>, detail: Value) {
        let event = NewAuditEvent {
            at: self.now(),
            kind: kind.as_str().to_string(),
            agent_id: agent_id.map(str::to_string),
            detail,
        };
        match self.store.append_audit(event).await {
            Ok(event) => self.checkpoint_after(&event).await,
            Err(e) => {
                self.metrics.audit_write_failed();
                tracing::error!(error = %e, kind = kind.as_str(), "audit event not written");
            }
        }
    }

    /// After every `AUDIT_CHECKPOINT_EVERY`th event, appends a checkpoint
    /// signed with the hub's audit key (when `AUDIT_SIGNING_KEY_FILE` gave one).
    async fn checkpoint_after(&self, event: &AuditEvent) {
        let Some(key) = &self.audit_key else {
            return;
        };
        if event.kind == CHECKPOINT_KIND
            || !event.seq.is_multiple_of(self.config.audit_checkpoint_every)
        {
            return;
        }
        let message = checkpoint_message(event.seq, &event.hash, event.at);
        let detail = json!({
            "seq": event.seq,
            "hash": event.hash,
            "at": event.at,
            "public_key": keys::encode_public_key(&key.verifying_key()),
            "signature": BASE64.encode(key.sign(message.as_bytes()).to_bytes()),
        });
        let checkpoint = NewAuditEvent {
            at: self.now(),
            kind: CHECKPOINT_KIND.to_string(),
            agent_id: None,
            detail,
        };
        if let Err(e) = self.store.append_audit(checkpoint).await {
            self.metrics.audit_write_failed();
            tracing::error!(error = %e, "audit checkpoint not written");
        }
    }

    /// The public key (base64) that signs audit checkpoints, when the hub has one.
    pub fn audit_public_key(&self) -> Option<String> {
        self.audit_key
            .as_ref()
            .map(|k| keys::encode_public_key(&k.verifying_key()))
    }

    /// The first checkpoint among `events` that fails: a signature that is
    /// not the hub's key's, or an anchored hash that differs from the
    /// stored event's (a row rewritten and the chain recomputed).
    async fn first_bad_checkpoint(
        &self,
        key: &SigningKey,
        events: &[AuditEvent],
    ) -> HubResult<Option<u64>> {
        let public = key.verifying_key();
        for cp in events.iter().filter(|e| e.kind == CHECKPOINT_KIND) {
            let seq = cp.detail["seq"].as_u64();
            let hash = cp.detail["hash"].as_str();
            let at = cp.detail["at"].as_i64();
            let signature = cp.detail["signature"]
                .as_str()
                .and_then(|s| BASE64.decode(s).ok())
                .and_then(|b| Signature::from_slice(&b).ok());
            let (Some(seq), Some(hash), Some(at), Some(signature)) = (seq, hash, at, signature)
            else {
                return Ok(Some(cp.seq));
            };
            let message = checkpoint_message(seq, hash, at);
            if public.verify(message.as_bytes(), &signature).is_err() {
                return Ok(Some(cp.seq));
            }
            let anchored = match events.iter().find(|e| e.seq == seq) {
                Some(e) => Some(e.clone()),
                None => self
                    .store
                    .list_audit(Some(seq.saturating_sub(1)), 1)
                    .await?
                    .pop()
                    .filter(|e| e.seq == seq),
            };
            if !anchored.is_some_and(|e| e.hash == hash && e.at == at) {
                return Ok(Some(cp.seq));
            }
        }
        Ok(None)
    }

    /// The events after `cursor` (a `seq`), oldest first, with the chain
    /// verified from the event at `cursor` (or from genesis on the first
    /// page). Walking every page from the start verifies the whole log.
    pub async fn audit_page(
        &self,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> HubResult<AuditPage> {
        let limit = limit.unwrap_or(DEFAULT_AUDIT_PAGE);
        if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
            return Err(HubError::invalid(
                "limit",
                format!("must be between 1 and {MAX_AUDIT_PAGE}"),
            ));
        }
        let after = match cursor {
            None => 0,
            Some(c) => c
                .parse::<u64>()
                .map_err(|_| HubError::invalid("cursor", "invalid cursor"))?,
        };
        let anchor = if after == 0 {
            GENESIS_HASH.to_string()
        } else {
            match self.store.list_audit(Some(after - 1), 1).await?.pop() {
                Some(e) if e.seq == after => e.hash,
                _ => return Err(HubError::invalid("cursor", "invalid cursor")),
            }
        };
        let events = self.store.list_audit(Some(after), limit).await?;
        let broken_at = audit::first_broken_link(&anchor, &events);
        let next_cursor = (events.len() == limit)
            .then(|| events.last().map(|e| e.seq.to_string()))
            .flatten();
        let (checkpoints_valid, checkpoint_failed_at) = match &self.audit_key {
            Some(key) => {
                let failed = self.first_bad_checkpoint(key, &events).await?;
                (Some(failed.is_none()), failed)
            }
            None => (None, None),
        };
        Ok(AuditPage {
            events,
            next_cursor,
            chain_valid: broken_at.is_none(),
            broken_at,
            checkpoints_valid,
            checkpoint_failed_at,
        })
    }
}
