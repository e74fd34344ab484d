//! The security hardening (issue 12) on both SQL backends, each operation
//! written once over [`SqlConn`]: request nonces (replay protection across
//! restarts and instances), retired agent ids (tombstones) and fair webhook
//! claims. Only the fair claim's statement differs between the dialects
//! (PostgreSQL locks what it claims); each backend passes its own.

use super::sql::{self, limit, to_json};
use super::sql_conn::{SqlConn, args};
use super::{Delivery, Millis, StoreResult};

/// `Store::remember_nonce`: inserts the nonce, or takes over an expired
/// entry; a live entry is left alone and the statement touches no row (a
/// replay). True when the nonce is new.
pub(super) async fn remember_nonce(
    c: &mut impl SqlConn,
    key: &str,
    expires_at: Millis,
    now: Millis,
) -> StoreResult<bool> {
    let changed = c
        .exec(
            "INSERT INTO request_nonces (nonce_key, expires_at) VALUES ($1, $2) \
             ON CONFLICT (nonce_key) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE request_nonces.expires_at <= $3",
            args![key, expires_at, now],
        )
        .await?;
    Ok(changed == 1)
}

/// `Store::purge_nonces`: deletes up to `batch` nonces expired at `now`.
pub(super) async fn purge_nonces(
    c: &mut impl SqlConn,
    now: Millis,
    batch: usize,
) -> StoreResult<u64> {
    c.exec(
        "DELETE FROM request_nonces WHERE nonce_key IN ( \
             SELECT nonce_key FROM request_nonces WHERE expires_at <= $1 LIMIT $2)",
        args![now, limit(batch)],
    )
    .await
}

/// `Store::retire_agent_id`: records a tombstone once.
pub(super) async fn retire_agent_id(
    c: &mut impl SqlConn,
    agent_id: &str,
    now: Millis,
) -> StoreResult<()> {
    c.exec(
        "INSERT INTO retired_agents (agent_id, retired_at) VALUES ($1, $2) \
         ON CONFLICT (agent_id) DO NOTHING",
        args![agent_id, now],
    )
    .await
    .map(drop)
}

/// `Store::is_agent_id_retired`: whether a tombstone exists.
pub(super) async fn is_agent_id_retired(c: &mut impl SqlConn, agent_id: &str) -> StoreResult<bool> {
    let found = c
        .row(
            "SELECT 1 AS one FROM retired_agents WHERE agent_id = $1",
            args![agent_id],
            |_| Ok(()),
        )
        .await?;
    Ok(found.is_some())
}

/// Fair claim on SQLite (one writer, so no row locks): due deliveries ranked
/// per agent, the first `$4` of each agent not in the JSON array `$5`.
/// Binds as [`claim_due_deliveries_fair`] (`$6` unused).
pub(super) const CLAIM_FAIR_SQLITE: &str = "UPDATE deliveries SET next_attempt_at = $1 + $3 \
     WHERE id IN (SELECT id FROM ( \
         SELECT id, next_attempt_at, ROW_NUMBER() OVER ( \
             PARTITION BY agent_id ORDER BY next_attempt_at, id) AS rank \
         FROM deliveries \
         WHERE state = 'pending' AND next_attempt_at <= $1 \
           AND agent_id NOT IN (SELECT value FROM json_each($5))) \
       WHERE rank <= $4 ORDER BY next_attempt_at, id LIMIT $2) \
     RETURNING *";
/// Fair claim on PostgreSQL: lock (SKIP LOCKED, so instances never share a
/// delivery) the oldest `$6` due deliveries of agents not in the JSON array
/// `$5` (made an array once, an init plan), rank them per agent, claim the
/// first `$4` of each.
pub(super) const CLAIM_FAIR_POSTGRES: &str = "WITH locked AS ( \
         SELECT id, agent_id, next_attempt_at FROM deliveries \
         WHERE state = 'pending' AND next_attempt_at <= $1 \
           AND NOT (agent_id = ANY(ARRAY( \
               SELECT json_array_elements_text(CAST($5 AS JSON))))) \
         ORDER BY next_attempt_at, id LIMIT $6 FOR UPDATE SKIP LOCKED), \
     ranked AS ( \
         SELECT id, next_attempt_at, ROW_NUMBER() OVER ( \
             PARTITION BY agent_id ORDER BY next_attempt_at, id) AS rank FROM locked), \
     picked AS (SELECT id FROM ranked WHERE rank <= $4 ORDER BY next_attempt_at, id LIMIT $2) \
     UPDATE deliveries d SET next_attempt_at = $1 + $3 FROM picked WHERE d.id = picked.id \
     RETURNING d.*";
/// Due deliveries PostgreSQL looks at per fair claim: enough that one
/// agent's backlog ahead of the others does not hide them.
const FAIR_SCAN: i64 = 5_000;

/// `Store::claim_due_deliveries_fair` with the backend's `statement`
/// ([`CLAIM_FAIR_SQLITE`] or [`CLAIM_FAIR_POSTGRES`]). Binds: now, limit,
/// claim_ms, per-agent limit, the skipped agents as a JSON array, the scan.
pub(super) async fn claim_due_deliveries_fair(
    c: &mut impl SqlConn,
    statement: &str,
    now: Millis,
    batch: usize,
    claim_ms: i64,
    per_agent: usize,
    skip_agents: &[String],
) -> StoreResult<Vec<Delivery>> {
    let skip_agents = to_json(skip_agents)?;
    c.rows(
        statement,
        args![
            now,
            limit(batch),
            claim_ms,
            limit(per_agent),
            &skip_agents,
            FAIR_SCAN.max(limit(batch)),
        ],
        |r| sql::delivery_from_row(r),
    )
    .await
}
