//! The SQLite backend's operations as synchronous functions of one
//! connection: the writer thread runs the writing ones inside its commit
//! group, a read connection runs the others. Statements shared with
//! PostgreSQL come from the `sql_*` modules; the rest are SQLite's own.

use std::sync::LazyLock;

use rusqlite::Connection;

use super::conn::{Fields, exec, exec_positional, row, rows};
use crate::store::sql::{self, Columns, limit, to_json, to_json_opt};
use crate::store::sql_stream::{self, Dialect, StreamSql};
use crate::store::*;

/// Columns of a whole message row, in the order of [`message_args`].
const MESSAGE_COLUMNS: &str = "id, recipient, sender, envelope, state, attempts, lease_id, \
     lease_until, visible_at, expires_at, created_at, updated_at, acked_at, ended_at, \
     dead_reason, result, idempotency_key, content_hash";
/// Values per message row.
const MESSAGE_ARITY: usize = 18;
/// Rows of one multi-row message insert (a fan-out writes its copies in
/// inserts of this many, the remainder one by one): 576 bind values, far
/// under SQLite's limit, and one cached statement.
const FAN_CHUNK: usize = 32;

/// `INSERT` of `rows` whole messages; conflicts (id or idempotency key)
/// insert nothing. Positional `?n` placeholders ([`exec_positional`]).
fn insert_messages_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..MESSAGE_ARITY {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", r * MESSAGE_ARITY + c + 1));
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

static INSERT_MESSAGE: LazyLock<String> = LazyLock::new(|| insert_messages_sql(1));
static INSERT_MESSAGES: LazyLock<String> = LazyLock::new(|| insert_messages_sql(FAN_CHUNK));

/// A message's bind values; `result` is its JSON text, encoded by the caller.
fn message_args<'a>(m: &'a Message, result: &'a Option<String>) -> [&'a dyn rusqlite::ToSql; 18] {
    [
        &m.id,
        &m.recipient,
        &m.sender,
        &m.envelope,
        &m.state,
        &m.attempts,
        &m.lease_id,
        &m.lease_until,
        &m.visible_at,
        &m.expires_at,
        &m.created_at,
        &m.updated_at,
        &m.acked_at,
        &m.ended_at,
        &m.dead_reason,
        result,
        &m.idempotency_key,
        &m.content_hash,
    ]
}

impl rusqlite::ToSql for Envelope {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            rusqlite::types::ValueRef::Text(self.as_str().as_bytes()),
        ))
    }
}

impl rusqlite::ToSql for MessageState {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            rusqlite::types::ValueRef::Text(self.as_str().as_bytes()),
        ))
    }
}

/// Inserts messages, many per statement; how many were new.
pub(super) fn insert_messages(conn: &Connection, messages: &[Message]) -> StoreResult<u64> {
    let results = messages
        .iter()
        .map(|m| to_json_opt(m.result.as_ref()))
        .collect::<StoreResult<Vec<_>>>()?;
    let mut inserted = 0;
    let mut chunks = messages.chunks_exact(FAN_CHUNK);
    let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(FAN_CHUNK * MESSAGE_ARITY);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        args.clear();
        for (m, result) in chunk.iter().zip(&results[offset..]) {
            args.extend(message_args(m, result));
        }
        inserted += exec_positional(conn, &INSERT_MESSAGES, &args)?;
        offset += FAN_CHUNK;
    }
    for (m, result) in chunks.remainder().iter().zip(&results[offset..]) {
        inserted += exec_positional(conn, &INSERT_MESSAGE, &message_args(m, result))?;
    }
    Ok(inserted)
}

/// `INSERT` of a whole agent; a taken id inserts nothing.
const INSERT_AGENT: &str = "INSERT INTO agents (agent_id, agent_type, metadata, keys, \
     webhook_url, webhook_secret, trusted_agents, last_heartbeat, online, heartbeat_interval_ms, \
     heartbeat_timeout_ms, created_at, updated_at, previous_webhook_secret) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT DO NOTHING";
/// Rewrites an agent (all but its id and `created_at`), same placeholders.
const UPDATE_AGENT: &str = "UPDATE agents SET agent_type = $2, metadata = $3, keys = $4, \
     webhook_url = $5, webhook_secret = $6, trusted_agents = $7, last_heartbeat = $8, \
     online = $9, heartbeat_interval_ms = $10, heartbeat_timeout_ms = $11, updated_at = $13, \
     previous_webhook_secret = $14 \
     WHERE agent_id = $1";

/// Runs [`INSERT_AGENT`] or [`UPDATE_AGENT`] with `a`'s columns; rows changed.
fn write_agent(conn: &Connection, statement: &str, a: &Agent) -> StoreResult<u64> {
    exec(
        conn,
        statement,
        &[
            &a.agent_id,
            &a.agent_type,
            &to_json(&a.metadata)?,
            &to_json(&a.keys)?,
            &a.webhook_url,
            &a.webhook_secret,
            &to_json(&a.trusted_agents)?,
            &a.last_heartbeat,
            &a.online,
            &(a.heartbeat_interval_ms as i64),
            &(a.heartbeat_timeout_ms as i64),
            &a.created_at,
            &a.updated_at,
            &to_json_opt(a.previous_webhook_secret.as_ref())?,
        ],
    )
}

/// Inserts a whole agent; a taken id inserts nothing. Rows inserted.
pub(super) fn insert_agent(conn: &Connection, a: &Agent) -> StoreResult<u64> {
    write_agent(conn, INSERT_AGENT, a)
}

fn insert_delivery(conn: &Connection, d: &Delivery) -> StoreResult<()> {
    exec(
        conn,
        "INSERT INTO deliveries (id, message_id, agent_id, state, attempts, next_attempt_at, \
         created_at, updated_at, last_status, last_error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &d.id,
            &d.message_id,
            &d.agent_id,
            &d.state.as_str(),
            &d.attempts,
            &d.next_attempt_at,
            &d.created_at,
            &d.updated_at,
            &d.last_status,
            &d.last_error,
        ],
    )
    .map(drop)
}

/// A whole message row.
pub(super) fn message(row: &Fields<'_, '_>) -> StoreResult<Message> {
    sql::message_from_row(row).map(|(_, m)| m)
}

/// A whole message row with its `seq`.
pub(super) fn message_seq(row: &Fields<'_, '_>) -> StoreResult<(i64, Message)> {
    sql::message_from_row(row)
}

/// The `state` column.
fn state(row: &Fields<'_, '_>) -> StoreResult<String> {
    row.text("state")
}

/// Reads, changes and writes one agent (a single write, so no savepoint).
pub(super) fn update_agent(
    conn: &Connection,
    agent_id: &str,
    change: &AgentChange,
) -> StoreResult<Agent> {
    let mut agent = row(
        conn,
        "SELECT * FROM agents WHERE agent_id = $1",
        &[&agent_id],
        |r| sql::agent_from_row(r),
    )?
    .ok_or(StoreError::AgentNotFound)?;
    change.apply(&mut agent)?;
    write_agent(conn, UPDATE_AGENT, &agent)?;
    Ok(agent)
}

/// Cancels an agent's pending deliveries. Binds: agent, now.
const CANCEL_DELIVERIES: &str = "UPDATE deliveries SET state = 'cancelled', updated_at = $2 \
     WHERE agent_id = $1 AND state = 'pending'";

/// Cancels an agent's pending deliveries; how many.
pub(super) fn cancel_deliveries(
    conn: &Connection,
    agent_id: &str,
    now: Millis,
) -> StoreResult<u64> {
    exec(conn, CANCEL_DELIVERIES, &[&agent_id, &now])
}

/// Deletes an agent, dead-letters its live inbox and cancels its deliveries.
pub(super) fn delete_agent(conn: &Connection, agent_id: &str, now: Millis) -> StoreResult<bool> {
    if exec(conn, "DELETE FROM agents WHERE agent_id = $1", &[&agent_id])? == 0 {
        return Ok(false);
    }
    exec(
        conn,
        "UPDATE messages SET state = 'dead', dead_reason = $3, lease_id = NULL, \
         lease_until = NULL, ended_at = $2, updated_at = $2 \
         WHERE recipient = $1 AND state IN ('queued', 'leased')",
        &[&agent_id, &now, &dead_reason::RECIPIENT_DELETED],
    )?;
    cancel_deliveries(conn, agent_id, now)?;
    Ok(true)
}

/// Enqueue: recipient and quota (one read of the maintained `inbox_live`
/// count), idempotency, then the message and its delivery.
pub(super) fn enqueue(
    conn: &Connection,
    message: Message,
    quota: u64,
    delivery: Option<Delivery>,
) -> StoreResult<Enqueued> {
    let live = row(
        conn,
        "SELECT (SELECT live FROM inbox_live WHERE recipient = $1) AS live \
         FROM agents WHERE agent_id = $1",
        &[&message.recipient],
        |r| r.int_opt("live"),
    )?
    .ok_or(StoreError::AgentNotFound)?;
    if let Some(key) = &message.idempotency_key {
        let existing = row(
            conn,
            "SELECT * FROM messages WHERE recipient = $1 AND idempotency_key = $2",
            &[&message.recipient, key],
            message_row,
        )?;
        if let Some(existing) = existing {
            return if existing.content_hash == message.content_hash {
                Ok(Enqueued::Duplicate(existing))
            } else {
                Err(StoreError::IdempotencyConflict)
            };
        }
    }
    if u64::try_from(live.unwrap_or(0)).unwrap_or(0) >= quota {
        return Err(StoreError::InboxFull);
    }
    if insert_messages(conn, std::slice::from_ref(&message))? == 0 {
        return Err(StoreError::MessageIdTaken);
    }
    if let Some(delivery) = &delivery {
        insert_delivery(conn, delivery)?;
    }
    Ok(Enqueued::Created(message))
}

fn message_row(row: &Fields<'_, '_>) -> StoreResult<Message> {
    message(row)
}

/// The stream-lease statements in SQLite's words (`sql_stream`).
static STREAM: LazyLock<StreamSql> = LazyLock::new(|| {
    StreamSql::new(&Dialect {
        random_id: "lower(hex(randomblob(16)))",
        lock: "",
        returning: "*",
    })
});

/// Lease rounds (see `sql_stream::lease_rounds`) inside one writer operation.
fn lease_rounds(
    max: usize,
    mut round: impl FnMut(usize) -> StoreResult<Vec<(i64, Message)>>,
) -> StoreResult<Vec<Message>> {
    let mut leased = Vec::new();
    while leased.len() < max {
        let wanted = max - leased.len();
        if !sql_stream::take_round(&mut leased, wanted, round(wanted)?) {
            break;
        }
    }
    Ok(leased)
}

/// `Store::lease_held`.
pub(super) fn lease_held(
    conn: &Connection,
    r: &LeaseRequest,
    holder: &str,
    from: Option<&str>,
) -> StoreResult<Vec<Message>> {
    let max_attempts = i64::from(r.max_attempts);
    let tag = holder_tag(holder);
    let from_tag = from.map(holder_tag);
    let sql = match from {
        None => STREAM.lease_available.as_str(),
        Some(_) => STREAM.lease_from.as_str(),
    };
    lease_rounds(r.max_messages, |wanted| {
        let wanted = limit(wanted);
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![
            &r.recipient,
            &r.now,
            &r.visibility_ms,
            &max_attempts,
            &wanted,
            &tag,
        ];
        if let Some(from_tag) = &from_tag {
            args.push(from_tag);
        }
        rows(conn, sql, &args, message_seq)
    })
}

/// `Store::count_held`.
pub(super) fn count_held(
    conn: &Connection,
    recipient: &str,
    holder: &str,
    now: Millis,
) -> StoreResult<u64> {
    let n = row(
        conn,
        sql_stream::COUNT_HELD.as_str(),
        &[&recipient, &holder_tag(holder), &now],
        |r| r.at::<i64>(0),
    )?;
    Ok(n.unwrap_or(0) as u64)
}

/// `Store::release_held`.
pub(super) fn release_held(
    conn: &Connection,
    recipient: &str,
    holder: &str,
    now: Millis,
    max_attempts: u32,
) -> StoreResult<ReclaimCounts> {
    let states = rows(
        conn,
        sql_stream::RELEASE_HELD.as_str(),
        &[
            &recipient,
            &holder_tag(holder),
            &now,
            &i64::from(max_attempts),
        ],
        state,
    )?;
    Ok(sql_stream::released(&states))
}

/// Records one webhook attempt, moves its delivery on and trims the agent's history.
pub(super) fn record_attempt(
    conn: &Connection,
    attempt: &DeliveryAttempt,
    outcome: AttemptOutcome,
) -> StoreResult<()> {
    let (next_state, retry_at) = sql::attempt_transition(outcome);
    exec(
        conn,
        "UPDATE deliveries SET \
             attempts = max(attempts, $2), last_status = $3, last_error = $4, updated_at = $5, \
             state = CASE WHEN state = 'pending' THEN $6 ELSE state END, \
             next_attempt_at = CASE WHEN state = 'pending' \
                 THEN coalesce($7, next_attempt_at) ELSE next_attempt_at END \
         WHERE id = $1",
        &[
            &attempt.delivery_id,
            &attempt.attempt,
            &attempt.status_code,
            &attempt.error,
            &attempt.at,
            &next_state.as_str(),
            &retry_at,
        ],
    )?;
    exec(
        conn,
        "INSERT INTO delivery_attempts (delivery_id, message_id, agent_id, attempt, at, \
         status_code, latency_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &attempt.delivery_id,
            &attempt.message_id,
            &attempt.agent_id,
            &attempt.attempt,
            &attempt.at,
            &attempt.status_code,
            &i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX),
            &attempt.error,
        ],
    )?;
    exec(
        conn,
        "DELETE FROM delivery_attempts WHERE agent_id = $1 AND seq <= ( \
             SELECT seq FROM delivery_attempts WHERE agent_id = $1 \
             ORDER BY seq DESC LIMIT 1 OFFSET $2)",
        &[&attempt.agent_id, &sql::ATTEMPTS_KEPT_PER_AGENT],
    )?;
    Ok(())
}

/// Appends one link to the audit chain.
pub(super) fn append_audit(conn: &Connection, event: NewAuditEvent) -> StoreResult<AuditEvent> {
    let (prev_seq, prev_hash) = row(
        conn,
        "SELECT seq, hash FROM audit_head WHERE id = 1",
        &[],
        |r| Ok((r.int("seq")?, r.text("hash")?)),
    )?
    .ok_or_else(|| StoreError::Internal("audit_head row missing".into()))?;
    let stored = sql::chain(prev_seq, &prev_hash, event);
    let seq = stored.seq as i64;
    exec(
        conn,
        "INSERT INTO audit_events (seq, at, kind, agent_id, detail, hash) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &seq,
            &stored.at,
            &stored.kind,
            &stored.agent_id,
            &to_json(&stored.detail)?,
            &stored.hash,
        ],
    )?;
    exec(
        conn,
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
        &[&seq, &stored.hash],
    )?;
    Ok(stored)
}

/// Claims due deliveries (`Store::claim_due_deliveries`).
pub(super) fn claim_due(
    conn: &Connection,
    now: Millis,
    batch: usize,
    claim_ms: i64,
) -> StoreResult<Vec<Delivery>> {
    rows(
        conn,
        "UPDATE deliveries SET next_attempt_at = $1 + $3 \
         WHERE id IN (SELECT id FROM deliveries \
             WHERE state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $2) \
         RETURNING *",
        &[&now, &limit(batch), &claim_ms],
        |r| sql::delivery_from_row(r),
    )
}

/// `Store::claim_due_deliveries_fair`.
pub(super) fn claim_fair(
    conn: &Connection,
    now: Millis,
    batch: usize,
    claim_ms: i64,
    per_agent: usize,
    skip_agents: &[String],
) -> StoreResult<Vec<Delivery>> {
    rows(
        conn,
        crate::store::sql_security::CLAIM_FAIR_SQLITE,
        &[
            &now,
            &limit(batch),
            &claim_ms,
            &limit(per_agent),
            &to_json(skip_agents)?,
        ],
        |r| sql::delivery_from_row(r),
    )
}

/// `Store::retry_delivery`: the update, then the delivery read back.
pub(super) fn retry_delivery(
    conn: &Connection,
    delivery_id: &str,
    now: Millis,
) -> StoreResult<Option<Delivery>> {
    exec(
        conn,
        crate::store::sql_console::RETRY,
        &[&now, &delivery_id],
    )?;
    get_delivery(conn, delivery_id)
}

/// One delivery.
pub(super) fn get_delivery(conn: &Connection, delivery_id: &str) -> StoreResult<Option<Delivery>> {
    row(
        conn,
        "SELECT * FROM deliveries WHERE id = $1",
        &[&delivery_id],
        |r| sql::delivery_from_row(r),
    )
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::super::conn::Sqlite;
    use super::*;
    use crate::store::sql_conn::{Dialect, run_now};
    use crate::store::sql_ops;

    /// A migrated in-memory database and lease requests whose limits differ.
    fn lease_requests() -> (Connection, Vec<LeaseRequest>) {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate::run(&mut conn).unwrap();
        let requests = (1..=5)
            .map(|n| LeaseRequest {
                recipient: "nobody".into(),
                now: n,
                visibility_ms: 1_000,
                max_messages: n as usize,
                max_attempts: 3,
            })
            .collect();
        (conn, requests)
    }

    #[test]
    fn lease_is_prepared_once() {
        let (conn, requests) = lease_requests();
        for request in &requests {
            run_now(sql_ops::lease(&mut Sqlite(&conn), request)).unwrap();
        }
        let statement = conn
            .prepare_cached(sql_ops::LEASE.get(Dialect::Sqlite))
            .unwrap();
        assert_eq!(statement.get_status(StatementStatus::RePrepare), 0);
    }

    #[test]
    fn stream_leases_are_prepared_once() {
        let (conn, requests) = lease_requests();
        for request in &requests {
            lease_held(&conn, request, "0123456789abcdef0123456789abcdef", None).unwrap();
            lease_held(
                &conn,
                request,
                "0123456789abcdef0123456789abcdef",
                Some("fedcba9876543210fedcba9876543210"),
            )
            .unwrap();
        }
        for sql in [&STREAM.lease_available, &STREAM.lease_from] {
            let statement = conn.prepare_cached(sql).unwrap();
            assert_eq!(statement.get_status(StatementStatus::RePrepare), 0);
        }
    }
}
