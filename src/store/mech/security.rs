//! The security hardening (issue 12) on Mech: request nonces and retired
//! agent ids, straight through the client (no in-process index: both are
//! checked by key, and Mech's create-if-absent is the atomic step).
//!
//! Purging expired nonces lists the nonce collection: Mech has no filtered
//! deletes. The collection holds at most the nonces of the last replay
//! window, so a sweep's scan stays proportional to recent signed traffic.

use serde_json::{Value, json};

use super::{Delivery, MechClient, Millis, StoreError, StoreResult, pick_fair};

/// Mech collection of request nonces, keyed by the nonce digest.
pub const NONCES: &str = "admp_request_nonces";
/// Mech collection of retired agent ids (tombstones), keyed by agent id.
pub const RETIRED: &str = "admp_retired_agents";

fn expires_at(doc: &Value) -> Option<Millis> {
    doc.get("expires_at").and_then(Value::as_i64)
}

/// See `Store::remember_nonce`. A create that finds the key takes it over
/// only when the entry expired (an expired entry's request would already
/// fail the ±300 s `Date` check, so a lost race there admits nothing new).
pub(super) async fn remember_nonce(
    client: &MechClient,
    key: &str,
    until: Millis,
    now: Millis,
) -> StoreResult<bool> {
    let doc = json!({ "expires_at": until });
    if client.create(NONCES, key, &doc).await? {
        return Ok(true);
    }
    match client.read(NONCES, key).await? {
        Some(old) if expires_at(&old).is_some_and(|t| t > now) => Ok(false),
        _ => {
            client.put(NONCES, key, &doc, true).await?;
            Ok(true)
        }
    }
}

/// See `Store::purge_nonces`.
pub(super) async fn purge_nonces(
    client: &MechClient,
    now: Millis,
    limit: usize,
) -> StoreResult<u64> {
    let due: Vec<String> = client
        .list_all(NONCES)
        .await?
        .into_iter()
        .filter(|d| expires_at(&d.data).is_none_or(|t| t <= now))
        .take(limit)
        .map(|d| d.key)
        .collect();
    for key in &due {
        client.delete(NONCES, key).await?;
    }
    Ok(due.len() as u64)
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
