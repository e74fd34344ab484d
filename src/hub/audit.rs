//! The audit log (PROTOCOL.md §8): appending security-relevant events and
//! reading them back a page at a time with the hash chain checked.

use serde_json::Value;

use super::{Hub, HubError, HubResult};
use crate::audit::{self, AuditKind, GENESIS_HASH};
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
        if let Err(e) = self.store.append_audit(event).await {
            self.metrics.audit_write_failed();
            tracing::error!(error = %e, kind = kind.as_str(), "audit event not written");
        }
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
        Ok(AuditPage {
            events,
            next_cursor,
            chain_valid: broken_at.is_none(),
            broken_at,
        })
    }
}
