//! The security hardening (issue 12) on Mech: request nonces (an
//! in-process expiry index rebuilt at open, written through to Mech, whose
//! create-if-absent is the atomic step), retired agent ids (read by key), and
//! fair webhook claims.

use dashmap::DashMap;
use serde_json::{Value, json};

use super::client::Document;
use super::{Delivery, MechClient, Millis, StoreError, StoreResult, pick_fair};

/// Mech collection of request nonces, keyed by the nonce digest.
pub const NONCES: &str = "admp_request_nonces";
/// Mech collection of retired agent ids (tombstones), keyed by agent id.
pub const RETIRED: &str = "admp_retired_agents";

fn expires_at(doc: &Value) -> Option<Millis> {
    doc.get("expires_at").and_then(Value::as_i64)
}

/// The nonce index of the documents listed at open.
pub(super) fn nonce_index(docs: &[Document]) -> DashMap<String, Millis> {
    docs.iter()
        .filter_map(|d| Some((d.key.clone(), expires_at(&d.data)?)))
        .collect()
}

impl super::MechStore {
    /// See `Store::remember_nonce`. The index answers a live replay without
    /// a round trip (one instance only, like the rest of this backend); a
    /// new nonce is created in Mech first, and Mech's create-if-absent
    /// decides between two concurrent first uses. An expired entry is taken
    /// over (its request would already fail the ±300 s `Date` check).
    pub(super) async fn remember_nonce_indexed(
        &self,
        key: &str,
        until: Millis,
        now: Millis,
    ) -> StoreResult<bool> {
        if self.nonces.get(key).is_some_and(|t| *t > now) {
            return Ok(false);
        }
        let doc = json!({ "expires_at": until });
        let fresh = if self.client.create(NONCES, key, &doc).await? {
            true
        } else {
            match self.client.read(NONCES, key).await? {
                Some(old) if expires_at(&old).is_some_and(|t| t > now) => false,
                _ => {
                    self.client.put(NONCES, key, &doc, true).await?;
                    true
                }
            }
        };
        if fresh {
            self.nonces.insert(key.to_string(), until);
        }
        Ok(fresh)
    }

    /// See `Store::purge_nonces`: expired keys come from the index, so a
    /// sweep with nothing to purge makes no request.
    pub(super) async fn purge_nonces_indexed(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        let due: Vec<String> = self
            .nonces
            .iter()
            .filter(|e| *e.value() <= now)
            .take(limit)
            .map(|e| e.key().clone())
            .collect();
        let mut purged = 0;
        for key in due {
            self.client.delete(NONCES, &key).await?;
            if self.nonces.remove_if(&key, |_, t| *t <= now).is_some() {
                purged += 1;
            }
        }
        Ok(purged)
    }
}

/// See `Store::retire_agent_id`.
pub(super) async fn retire_agent_id(
    client: &MechClient,
    agent_id: &str,
    now: Millis,
) -> StoreResult<()> {
    client
        .create(RETIRED, agent_id, &json!({ "retired_at": now }))
        .await
        .map(|_| ())
        .map_err(StoreError::from)
}

/// See `Store::is_agent_id_retired`.
pub(super) async fn is_agent_id_retired(client: &MechClient, agent_id: &str) -> StoreResult<bool> {
    Ok(client.read(RETIRED, agent_id).await?.is_some())
}

impl super::MechStore {
    /// See `Store::claim_due_deliveries_fair`: picked from the in-process
    /// due index like the plain claim, then written through to Mech; only
    /// the claims Mech confirmed are returned.
    pub(super) async fn claim_fair(
        &self,
        now: Millis,
        limit: usize,
        claim_ms: i64,
        per_agent: usize,
        skip_agents: &[String],
    ) -> StoreResult<Vec<Delivery>> {
        let _writer = self.delivery_writer.lock().await;
        let claims: Vec<Delivery> = {
            let book = self.deliveries.lock();
            let due = book
                .due
                .range(..(now + 1, String::new()))
                .filter_map(|(_, id)| book.deliveries.get(id));
            pick_fair(due, limit, per_agent, skip_agents)
                .into_iter()
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
}
