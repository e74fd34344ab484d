//! The SQL of the security hardening (issue 12), shared by the SQLite and
//! PostgreSQL backends: request nonces (replay protection across restarts
//! and instances) and retired agent ids (tombstones). Both dialects take the
//! same statements; PostgreSQL runs them here, SQLite on its writer thread
//! (`sqlite/ops.rs`).

use sqlx::PgPool;

use super::sql::db_error;
use super::{Delivery, Millis, StoreResult};

/// Inserts the nonce, or takes over an expired entry; a live entry is left
/// alone and the statement touches no row (a replay).
pub(super) const REMEMBER_NONCE: &str = "INSERT INTO request_nonces (nonce_key, expires_at) VALUES ($1, $2) \
     ON CONFLICT (nonce_key) DO UPDATE SET expires_at = excluded.expires_at \
     WHERE request_nonces.expires_at <= $3";
/// Deletes up to `$2` nonces expired at `$1`.
pub(super) const PURGE_NONCES: &str = "DELETE FROM request_nonces WHERE nonce_key IN ( \
     SELECT nonce_key FROM request_nonces WHERE expires_at <= $1 LIMIT $2)";
/// Records a tombstone once.
pub(super) const RETIRE_AGENT_ID: &str = "INSERT INTO retired_agents (agent_id, retired_at) VALUES ($1, $2) \
     ON CONFLICT (agent_id) DO NOTHING";
/// Whether a tombstone exists.
pub(super) const IS_RETIRED: &str = "SELECT 1 AS one FROM retired_agents WHERE agent_id = $1";

/// Fair claim on SQLite (one writer, so no row locks): due deliveries ranked
/// per agent, the first `$4` of each agent not in the JSON array `$5`.
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
/// delivery) the oldest `$6` due deliveries of agents not in `$5`, rank them
/// per agent, claim the first `$4` of each.
const CLAIM_FAIR_POSTGRES: &str = "WITH locked AS ( \
         SELECT id, agent_id, next_attempt_at FROM deliveries \
         WHERE state = 'pending' AND next_attempt_at <= $1 AND NOT (agent_id = ANY($5)) \
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

/// See `Store::claim_due_deliveries_fair`.
pub(super) async fn postgres_claim_fair(
    pool: &PgPool,
    now: Millis,
    batch: usize,
    claim_ms: i64,
    per_agent: usize,
    skip_agents: &[String],
) -> StoreResult<Vec<Delivery>> {
    let rows = sqlx::query(CLAIM_FAIR_POSTGRES)
        .bind(now)
        .bind(limit(batch))
        .bind(claim_ms)
        .bind(limit(per_agent))
        .bind(skip_agents)
        .bind(FAIR_SCAN.max(limit(batch)))
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
    rows.iter().map(super::sql::delivery_from_row).collect()
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

macro_rules! sql_security_ops {
    ($module:ident, $pool:ty) => {
        /// The statements above on one driver's pool.
        pub(super) mod $module {
            use super::*;

            /// See `Store::remember_nonce`.
            pub(in crate::store) async fn remember_nonce(
                pool: &$pool,
                key: &str,
                expires_at: Millis,
                now: Millis,
            ) -> StoreResult<bool> {
                let done = sqlx::query(REMEMBER_NONCE)
                    .bind(key)
                    .bind(expires_at)
                    .bind(now)
                    .execute(pool)
                    .await
                    .map_err(db_error)?;
                Ok(done.rows_affected() == 1)
            }

            /// See `Store::purge_nonces`.
            pub(in crate::store) async fn purge_nonces(
                pool: &$pool,
                now: Millis,
                batch: usize,
            ) -> StoreResult<u64> {
                let done = sqlx::query(PURGE_NONCES)
                    .bind(now)
                    .bind(limit(batch))
                    .execute(pool)
                    .await
                    .map_err(db_error)?;
                Ok(done.rows_affected())
            }

            /// See `Store::retire_agent_id`.
            pub(in crate::store) async fn retire_agent_id(
                pool: &$pool,
                agent_id: &str,
                now: Millis,
            ) -> StoreResult<()> {
                sqlx::query(RETIRE_AGENT_ID)
                    .bind(agent_id)
                    .bind(now)
                    .execute(pool)
                    .await
                    .map_err(db_error)?;
                Ok(())
            }

            /// See `Store::is_agent_id_retired`.
            pub(in crate::store) async fn is_agent_id_retired(
                pool: &$pool,
                agent_id: &str,
            ) -> StoreResult<bool> {
                let row = sqlx::query(IS_RETIRED)
                    .bind(agent_id)
                    .fetch_optional(pool)
                    .await
                    .map_err(db_error)?;
                Ok(row.is_some())
            }
        }
    };
}

sql_security_ops!(postgres, PgPool);
