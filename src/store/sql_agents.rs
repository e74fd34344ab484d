//! Agents, their webhook deliveries and the audit chain on both SQL
//! backends, each operation written once over [`SqlConn`] (see `sql_conn`).
//!
//! The statements are the same on SQLite and PostgreSQL except for row
//! locks: PostgreSQL runs many instances on one database, so a read that
//! precedes a rewrite locks its row and a sweep skips rows another instance
//! holds; SQLite's one writer runs one operation at a time and needs none.
//! Those clauses come from `sql_conn::Dialect`, and each statement that
//! takes one is built once per dialect (`ByDialect`). Operations of several statements expect the
//! caller to have made them atomic (SQLite: a savepoint; PostgreSQL: a
//! transaction).

use super::sql::{self, Columns, limit, to_json, to_json_opt};
use super::sql_conn::{ByDialect, SqlConn, args};
use super::*;

/// One agent, locked for its rewrite. Binds: agent id.
static AGENT_FOR_UPDATE: ByDialect =
    ByDialect::new(|d| format!("SELECT * FROM agents WHERE agent_id = $1{}", d.for_update()));

/// Marks a batch of agents offline whose heartbeat timed out. Binds: now,
/// limit. The update re-checks the pick (PostgreSQL may have waited for the
/// row).
static MARK_OFFLINE: ByDialect = ByDialect::new(|d| {
    format!(
        "WITH due AS ( \
             SELECT agent_id FROM agents WHERE online AND offline_at <= $1 \
             ORDER BY offline_at LIMIT $2{}) \
         UPDATE agents SET online = FALSE FROM due \
         WHERE agents.agent_id = due.agent_id AND agents.online \
           AND agents.offline_at <= $1",
        d.skip_locked()
    )
});

/// Claims a batch of due deliveries for `claim_ms`. Binds: now, limit,
/// claim_ms.
static CLAIM_DUE: ByDialect = ByDialect::new(|d| {
    format!(
        "WITH due AS ( \
             SELECT id FROM deliveries \
             WHERE state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $2{}) \
         UPDATE deliveries SET next_attempt_at = $1 + $3 \
         FROM due WHERE deliveries.id = due.id \
         RETURNING {}",
        d.skip_locked(),
        d.returning_row("deliveries")
    )
});

/// The audit chain's head, locked: the lock orders appends from every
/// instance into one chain.
static AUDIT_HEAD: ByDialect = ByDialect::new(|d| {
    format!(
        "SELECT seq, hash FROM audit_head WHERE id = 1{}",
        d.for_update()
    )
});

/// A webhook delivery row. Binds: the delivery's columns in table order.
const INSERT_DELIVERY: &str = "INSERT INTO deliveries (id, message_id, agent_id, state, \
     attempts, next_attempt_at, created_at, updated_at, last_status, last_error) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Records the webhook delivery of a stored message (a send's, a group
/// copy's), in the caller's transaction.
pub(super) async fn insert_delivery(c: &mut impl SqlConn, d: &Delivery) -> StoreResult<()> {
    c.exec(
        INSERT_DELIVERY,
        args![
            &d.id,
            &d.message_id,
            &d.agent_id,
            d.state.as_str(),
            d.attempts,
            d.next_attempt_at,
            d.created_at,
            d.updated_at,
            d.last_status.map(i64::from),
            &d.last_error,
        ],
    )
    .await
    .map(drop)
}

// Agents.

/// An agent's JSON text columns, encoded once for its insert or update.
struct AgentJson {
    metadata: String,
    keys: String,
    trusted_agents: String,
    previous_webhook_secret: Option<String>,
}

impl AgentJson {
    fn of(a: &Agent) -> StoreResult<Self> {
        Ok(AgentJson {
            metadata: to_json(&a.metadata)?,
            keys: to_json(&a.keys)?,
            trusted_agents: to_json(&a.trusted_agents)?,
            previous_webhook_secret: to_json_opt(a.previous_webhook_secret.as_ref())?,
        })
    }
}

/// Inserts a whole agent (`create_agent`, `import_agent`); a taken id
/// inserts nothing. Rows inserted.
pub(super) async fn insert_agent(c: &mut impl SqlConn, a: &Agent) -> StoreResult<u64> {
    let json = AgentJson::of(a)?;
    c.exec(
        "INSERT INTO agents (agent_id, agent_type, metadata, keys, webhook_url, webhook_secret, \
         trusted_agents, last_heartbeat, online, heartbeat_interval_ms, heartbeat_timeout_ms, \
         created_at, updated_at, previous_webhook_secret) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT DO NOTHING",
        args![
            &a.agent_id,
            &a.agent_type,
            &json.metadata,
            &json.keys,
            &a.webhook_url,
            &a.webhook_secret,
            &json.trusted_agents,
            a.last_heartbeat,
            a.online,
            a.heartbeat_interval_ms as i64,
            a.heartbeat_timeout_ms as i64,
            a.created_at,
            a.updated_at,
            &json.previous_webhook_secret,
        ],
    )
    .await
}

/// `Store::get_agent`.
pub(super) async fn get_agent(c: &mut impl SqlConn, agent_id: &str) -> StoreResult<Option<Agent>> {
    c.row(
        "SELECT * FROM agents WHERE agent_id = $1",
        args![agent_id],
        |r| sql::agent_from_row(r),
    )
    .await
}

/// `Store::update_agent`: reads the agent (locked), changes it, writes it back.
pub(super) async fn update_agent<C: SqlConn>(
    c: &mut C,
    agent_id: &str,
    change: &AgentChange,
) -> StoreResult<Agent> {
    let mut agent = c
        .row(AGENT_FOR_UPDATE.get(C::DIALECT), args![agent_id], |r| {
            sql::agent_from_row(r)
        })
        .await?
        .ok_or(StoreError::AgentNotFound)?;
    change.apply(&mut agent)?;
    let a = &agent;
    let json = AgentJson::of(a)?;
    c.exec(
        "UPDATE agents SET agent_type = $2, metadata = $3, keys = $4, webhook_url = $5, \
         webhook_secret = $6, trusted_agents = $7, last_heartbeat = $8, online = $9, \
         heartbeat_interval_ms = $10, heartbeat_timeout_ms = $11, updated_at = $12, \
         previous_webhook_secret = $13 \
         WHERE agent_id = $1",
        args![
            agent_id,
            &a.agent_type,
            &json.metadata,
            &json.keys,
            &a.webhook_url,
            &a.webhook_secret,
            &json.trusted_agents,
            a.last_heartbeat,
            a.online,
            a.heartbeat_interval_ms as i64,
            a.heartbeat_timeout_ms as i64,
            a.updated_at,
            &json.previous_webhook_secret,
        ],
    )
    .await?;
    Ok(agent)
}

/// `Store::delete_agent`: deletes the agent, dead-letters its live inbox and
/// cancels its deliveries; false (and nothing else done that matters) when
/// there is no such agent.
///
/// The inbox's count row goes first: on PostgreSQL deleting it waits for
/// in-flight sends (they lock it), and later sends find no row, hence no
/// recipient, so nothing slips in after the sweep below. On SQLite it only
/// drops a count the sweep would bring to zero (a missing row counts zero).
pub(super) async fn delete_agent(
    c: &mut impl SqlConn,
    agent_id: &str,
    now: Millis,
) -> StoreResult<bool> {
    c.exec(
        "DELETE FROM inbox_live WHERE recipient = $1",
        args![agent_id],
    )
    .await?;
    if c.exec("DELETE FROM agents WHERE agent_id = $1", args![agent_id])
        .await?
        == 0
    {
        return Ok(false);
    }
    c.exec(
        "UPDATE messages SET state = 'dead', dead_reason = $3, lease_id = NULL, \
         lease_until = NULL, ended_at = $2, updated_at = $2 \
         WHERE recipient = $1 AND state IN ('queued', 'leased')",
        args![agent_id, now, dead_reason::RECIPIENT_DELETED],
    )
    .await?;
    cancel_deliveries(c, agent_id, now).await?;
    Ok(true)
}

/// `Store::mark_offline`.
pub(super) async fn mark_offline<C: SqlConn>(
    c: &mut C,
    now: Millis,
    batch: usize,
) -> StoreResult<u64> {
    c.exec(MARK_OFFLINE.get(C::DIALECT), args![now, limit(batch)])
        .await
}

/// `Store::export_agents`: a page of agents in id order.
pub(super) async fn export_agents(
    c: &mut impl SqlConn,
    after: Option<&str>,
    count: usize,
) -> StoreResult<Vec<Agent>> {
    c.rows(
        "SELECT * FROM agents WHERE agent_id > $1 ORDER BY agent_id LIMIT $2",
        args![after.unwrap_or_default(), limit(count)],
        |r| sql::agent_from_row(r),
    )
    .await
}

// Webhook deliveries.

/// `Store::claim_due_deliveries`.
pub(super) async fn claim_due_deliveries<C: SqlConn>(
    c: &mut C,
    now: Millis,
    batch: usize,
    claim_ms: i64,
) -> StoreResult<Vec<Delivery>> {
    c.rows(
        CLAIM_DUE.get(C::DIALECT),
        args![now, limit(batch), claim_ms],
        |r| sql::delivery_from_row(r),
    )
    .await
}

/// `Store::record_attempt`: records one webhook attempt, moves its delivery
/// on and trims the agent's attempt history.
pub(super) async fn record_attempt(
    c: &mut impl SqlConn,
    attempt: &DeliveryAttempt,
    outcome: AttemptOutcome,
) -> StoreResult<()> {
    let (next_state, retry_at) = sql::attempt_transition(outcome);
    let status_code = attempt.status_code.map(i64::from);
    c.exec(
        "UPDATE deliveries SET \
             attempts = GREATEST(attempts, $2), last_status = $3, last_error = $4, \
             updated_at = $5, \
             state = CASE WHEN state = 'pending' THEN $6 ELSE state END, \
             next_attempt_at = CASE WHEN state = 'pending' \
                 THEN COALESCE($7, next_attempt_at) ELSE next_attempt_at END \
         WHERE id = $1",
        args![
            &attempt.delivery_id,
            attempt.attempt,
            status_code,
            &attempt.error,
            attempt.at,
            next_state.as_str(),
            retry_at,
        ],
    )
    .await?;
    c.exec(
        "INSERT INTO delivery_attempts (delivery_id, message_id, agent_id, attempt, at, \
         status_code, latency_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        args![
            &attempt.delivery_id,
            &attempt.message_id,
            &attempt.agent_id,
            attempt.attempt,
            attempt.at,
            status_code,
            i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX),
            &attempt.error,
        ],
    )
    .await?;
    c.exec(
        "DELETE FROM delivery_attempts WHERE agent_id = $1 AND seq <= ( \
             SELECT seq FROM delivery_attempts WHERE agent_id = $1 \
             ORDER BY seq DESC LIMIT 1 OFFSET $2)",
        args![&attempt.agent_id, sql::ATTEMPTS_KEPT_PER_AGENT],
    )
    .await?;
    Ok(())
}

/// `Store::cancel_deliveries`: cancels an agent's pending deliveries; how many.
pub(super) async fn cancel_deliveries(
    c: &mut impl SqlConn,
    agent_id: &str,
    now: Millis,
) -> StoreResult<u64> {
    c.exec(
        "UPDATE deliveries SET state = 'cancelled', updated_at = $2 \
         WHERE agent_id = $1 AND state = 'pending'",
        args![agent_id, now],
    )
    .await
}

/// `Store::get_delivery`.
pub(super) async fn get_delivery(
    c: &mut impl SqlConn,
    delivery_id: &str,
) -> StoreResult<Option<Delivery>> {
    c.row(
        "SELECT * FROM deliveries WHERE id = $1",
        args![delivery_id],
        |r| sql::delivery_from_row(r),
    )
    .await
}

/// `Store::list_attempts`: an agent's latest attempts, newest first.
pub(super) async fn list_attempts(
    c: &mut impl SqlConn,
    agent_id: &str,
    count: usize,
) -> StoreResult<Vec<DeliveryAttempt>> {
    c.rows(
        "SELECT * FROM delivery_attempts WHERE agent_id = $1 ORDER BY seq DESC LIMIT $2",
        args![agent_id, limit(count)],
        |r| sql::attempt_from_row(r),
    )
    .await
}

// The audit chain.

/// `Store::append_audit`: appends one link to the chain after its (locked) head.
pub(super) async fn append_audit<C: SqlConn>(
    c: &mut C,
    event: NewAuditEvent,
) -> StoreResult<AuditEvent> {
    let (prev_seq, prev_hash) = c
        .row(AUDIT_HEAD.get(C::DIALECT), args![], |r| {
            Ok((r.int("seq")?, r.text("hash")?))
        })
        .await?
        .ok_or_else(|| StoreError::Internal("audit_head row missing".into()))?;
    let stored = sql::chain(prev_seq, &prev_hash, event);
    let seq = stored.seq as i64;
    let detail = to_json(&stored.detail)?;
    c.exec(
        "INSERT INTO audit_events (seq, at, kind, agent_id, detail, hash) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        args![
            seq,
            stored.at,
            &stored.kind,
            &stored.agent_id,
            &detail,
            &stored.hash
        ],
    )
    .await?;
    c.exec(
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
        args![seq, &stored.hash],
    )
    .await?;
    Ok(stored)
}

/// `Store::list_audit`: events after `after`, in chain order.
pub(super) async fn list_audit(
    c: &mut impl SqlConn,
    after: Option<u64>,
    count: usize,
) -> StoreResult<Vec<AuditEvent>> {
    let after = after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX));
    c.rows(
        "SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        args![after, limit(count)],
        |r| sql::audit_from_row(r),
    )
    .await
}
