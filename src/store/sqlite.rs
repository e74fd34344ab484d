//! SQLite backend: the embedded default, one file on one machine.
//!
//! - **WAL** journal: readers never block the writer and a crash never
//!   leaves a half-written transaction behind.
//! - **Durability** is the `synchronous` pragma, chosen by `SQLITE_SYNCHRONOUS`:
//!   `full` (default) syncs the WAL on every commit, so an answered request
//!   survives a power loss; `normal` syncs only at checkpoints, which survives
//!   a process crash (SIGKILL, panic, OOM kill) but may lose the last
//!   commits on power loss or kernel crash. See docs/STORAGE.md.
//! - **One writer connection**: SQLite allows one writer at a time anyway;
//!   queueing writes on a one-connection pool in process is cheaper and
//!   fairer than letting several connections spin on `SQLITE_BUSY`.
//!   Multi-statement writes open with `BEGIN IMMEDIATE` so that another
//!   process on the same file (an operator's `sqlite3` shell) waits on the
//!   busy timeout instead of failing the transaction halfway.
//! - **Reader pool** (`DATABASE_MAX_CONNECTIONS`) for lookups and listings.
//! - Leasing is one `UPDATE … FROM (SELECT … ORDER BY … LIMIT) RETURNING`.
//!
//! Use it from one hub process: several hubs on one file would work but
//! serialise on the file lock and never see each other's long-poll wake-ups.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow,
};
use sqlx::{Row, Sqlite, SqliteConnection, SqliteExecutor};

use super::group_commit::GroupWriter;
use super::sql::{self, db_error, limit, to_json, to_json_opt};
use super::sql_stream::{self, Dialect, StreamSql};
use super::*;
use crate::config::SqliteSynchronous;

/// Migrations embedded in the binary, applied at open.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for a pooled connection before reporting `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

type SqliteQuery = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

/// A SQLite database file holding the whole hub.
pub struct SqliteStore {
    /// The only connection that writes, used by `groups` (and migrations).
    writer: SqlitePool,
    /// The group-commit queue in front of `writer`.
    groups: GroupWriter,
    /// Concurrent readers beside the writer.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating with `mode=rwc`) the database at `url`, e.g.
    /// `sqlite://admp.db?mode=rwc`, and applies pending migrations.
    pub async fn open(
        url: &str,
        max_connections: u32,
        synchronous: SqliteSynchronous,
    ) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Internal(format!("DATABASE_URL: {e}")))?;
        if options.get_filename().as_os_str() == ":memory:" {
            return Err(StoreError::Internal(
                "DATABASE_URL must name a file: an in-memory SQLite database is not shared \
                 between connections (use STORAGE_BACKEND=memory instead)"
                    .into(),
            ));
        }
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match synchronous {
                SqliteSynchronous::Full => sqlx::sqlite::SqliteSynchronous::Full,
                SqliteSynchronous::Normal => sqlx::sqlite::SqliteSynchronous::Normal,
            })
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(db_error)?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| StoreError::Internal(format!("migrating the SQLite database: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        let groups = GroupWriter::start(writer.clone());
        Ok(SqliteStore {
            writer,
            groups,
            reader,
        })
    }

    /// Closes every connection (the WAL is checkpointed when the last one closes).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Runs one writing statement in the next commit group; rows changed.
    async fn execute(&self, query: SqliteQuery) -> StoreResult<u64> {
        self.write(move |tx| {
            Box::pin(async move {
                let done = query.execute(tx).await.map_err(db_error)?;
                Ok(done.rows_affected())
            })
        })
        .await
    }

    /// Runs one writing statement in the next commit group; rows returned.
    async fn fetch_all(&self, query: SqliteQuery) -> StoreResult<Vec<SqliteRow>> {
        self.write(move |tx| Box::pin(async move { query.fetch_all(tx).await.map_err(db_error) }))
            .await
    }

    /// A transaction on the writer between commit groups, for the group
    /// operations (their own transaction; not yet batched by group commit).
    async fn write_tx(&self) -> StoreResult<sqlx::Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }

    /// Runs a one-statement write in the next commit group.
    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>>
            + Send
            + 'static,
    {
        self.groups.write(false, op).await
    }

    /// Runs a write of several statements in the next commit group, inside a
    /// savepoint of its own.
    async fn write_all<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>>
            + Send
            + 'static,
    {
        self.groups.write(true, op).await
    }
}

/// Message state and lease id as seen by a fresh read, to explain a refused ack/nack.
async fn lease_state<'e>(
    executor: impl SqliteExecutor<'e>,
    recipient: &str,
    message_id: &str,
) -> StoreResult<Option<(String, Option<String>)>> {
    let row = sqlx::query("SELECT state, lease_id FROM messages WHERE id = $1 AND recipient = $2")
        .bind(message_id)
        .bind(recipient)
        .fetch_optional(executor)
        .await
        .map_err(db_error)?;
    row.map(|r| {
        Ok((
            r.try_get("state").map_err(db_error)?,
            r.try_get("lease_id").map_err(db_error)?,
        ))
    })
    .transpose()
}

/// Acks one message on `conn`: a pooled connection, or the open transaction
/// of a batch.
async fn ack_on(conn: &mut SqliteConnection, request: &AckRequest) -> StoreResult<Message> {
    let row = sqlx::query(
        "UPDATE messages SET state = 'acked', lease_id = NULL, lease_until = NULL, \
         acked_at = $4, ended_at = $4, updated_at = $4, result = $5 \
         WHERE id = $1 AND recipient = $2 AND state = 'leased' \
           AND ($3 IS NULL OR lease_id = $3) \
         RETURNING *",
    )
    .bind(&request.message_id)
    .bind(&request.recipient)
    .bind(&request.lease_id)
    .bind(request.now)
    .bind(to_json_opt(request.result.as_ref())?)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    match row {
        Some(row) => message(&row),
        None => Err(sql::lease_refusal(
            lease_state(&mut *conn, &request.recipient, &request.message_id).await?,
            request.lease_id.as_deref(),
        )),
    }
}

fn message(row: &SqliteRow) -> StoreResult<Message> {
    sql::message_from_row(row).map(|(_, m)| m)
}

fn messages(rows: &[SqliteRow]) -> StoreResult<Vec<Message>> {
    rows.iter().map(message).collect()
}

/// `INSERT` of a whole message; conflicts (id or idempotency key) insert nothing.
fn insert_message(m: &Message) -> StoreResult<SqliteQuery> {
    Ok(sqlx::query(
        "INSERT INTO messages (id, recipient, sender, envelope, state, attempts, lease_id, \
         lease_until, visible_at, expires_at, created_at, updated_at, acked_at, ended_at, \
         dead_reason, result, idempotency_key, content_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT DO NOTHING",
    )
    .bind(m.id.clone())
    .bind(m.recipient.clone())
    .bind(m.sender.clone())
    .bind(to_json(&m.envelope)?)
    .bind(m.state.as_str())
    .bind(i64::from(m.attempts))
    .bind(m.lease_id.clone())
    .bind(m.lease_until)
    .bind(m.visible_at)
    .bind(m.expires_at)
    .bind(m.created_at)
    .bind(m.updated_at)
    .bind(m.acked_at)
    .bind(m.ended_at)
    .bind(m.dead_reason.clone())
    .bind(to_json_opt(m.result.as_ref())?)
    .bind(m.idempotency_key.clone())
    .bind(m.content_hash.clone()))
}

/// `INSERT` of a whole agent; a taken id inserts nothing.
fn insert_agent(a: &Agent) -> StoreResult<SqliteQuery> {
    Ok(sqlx::query(
        "INSERT INTO agents (agent_id, agent_type, metadata, keys, webhook_url, webhook_secret, \
         trusted_agents, last_heartbeat, online, heartbeat_interval_ms, heartbeat_timeout_ms, \
         created_at, updated_at, previous_webhook_secret) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT DO NOTHING",
    )
    .bind(a.agent_id.clone())
    .bind(a.agent_type.clone())
    .bind(to_json(&a.metadata)?)
    .bind(to_json(&a.keys)?)
    .bind(a.webhook_url.clone())
    .bind(a.webhook_secret.clone())
    .bind(to_json(&a.trusted_agents)?)
    .bind(a.last_heartbeat)
    .bind(a.online)
    .bind(a.heartbeat_interval_ms as i64)
    .bind(a.heartbeat_timeout_ms as i64)
    .bind(a.created_at)
    .bind(a.updated_at)
    .bind(to_json_opt(a.previous_webhook_secret.as_ref())?))
}

fn insert_delivery(d: &Delivery) -> SqliteQuery {
    sqlx::query(
        "INSERT INTO deliveries (id, message_id, agent_id, state, attempts, next_attempt_at, \
         created_at, updated_at, last_status, last_error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(d.id.clone())
    .bind(d.message_id.clone())
    .bind(d.agent_id.clone())
    .bind(d.state.as_str())
    .bind(i64::from(d.attempts))
    .bind(d.next_attempt_at)
    .bind(d.created_at)
    .bind(d.updated_at)
    .bind(d.last_status.map(i64::from))
    .bind(d.last_error.clone())
}

/// Lease statement: classifies the oldest available messages of one inbox and
/// moves each to `leased` (with a fresh UUID v4 lease id), `expired` (past
/// TTL) or `dead` (an expired lease at the attempt limit), in one statement.
/// Binds: recipient, now, visibility_ms, max_attempts, limit.
const LEASE: &str = "\
UPDATE messages SET
    state = picked.next_state,
    attempts = CASE WHEN picked.next_state = 'leased' THEN attempts + 1 ELSE attempts END,
    lease_id = CASE WHEN picked.next_state = 'leased' THEN
        lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) ||
        substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))) END,
    lease_until = CASE WHEN picked.next_state = 'leased' THEN $2 + $3 END,
    visible_at = picked.was_available_at,
    ended_at = CASE WHEN picked.next_state = 'leased' THEN ended_at ELSE $2 END,
    dead_reason = CASE WHEN picked.next_state = 'dead' THEN 'max_attempts' ELSE dead_reason END,
    updated_at = $2
FROM (
    SELECT seq AS picked_seq,
           available_at AS was_available_at,
           CASE WHEN expires_at <= $2 THEN 'expired'
                WHEN state = 'leased' AND attempts >= $4 THEN 'dead'
                ELSE 'leased' END AS next_state
    FROM messages
    WHERE recipient = $1 AND state IN ('queued', 'leased') AND available_at <= $2
    ORDER BY available_at, seq
    LIMIT $5
) AS picked
WHERE messages.seq = picked.picked_seq
RETURNING *";

/// The stream-lease statements in SQLite's words (`sql_stream`).
static SQLITE_STREAM: LazyLock<StreamSql> = LazyLock::new(|| {
    StreamSql::new(&Dialect {
        random_id: "lower(hex(randomblob(16)))",
        lock: "",
        returning: "*",
    })
});

sql_stream::stream_ops!(SqliteStore, SQLITE_STREAM, reader);

/// Reclaim of expired leases, all inboxes. Binds: now, max_attempts, limit.
const RECLAIM_ALL: &str = "\
UPDATE messages SET
    state = CASE WHEN attempts >= $2 THEN 'dead' ELSE 'queued' END,
    lease_id = NULL,
    lease_until = NULL,
    visible_at = CASE WHEN attempts >= $2 THEN visible_at ELSE $1 END,
    ended_at = CASE WHEN attempts >= $2 THEN $1 ELSE ended_at END,
    dead_reason = CASE WHEN attempts >= $2 THEN 'max_attempts' ELSE dead_reason END,
    updated_at = $1
WHERE seq IN (
    SELECT seq FROM messages
    WHERE state = 'leased' AND lease_until <= $1
    ORDER BY lease_until
    LIMIT $3
)
RETURNING state";

/// Reclaim of expired leases, one inbox. Binds: now, max_attempts, limit, recipient.
const RECLAIM_INBOX: &str = "\
UPDATE messages SET
    state = CASE WHEN attempts >= $2 THEN 'dead' ELSE 'queued' END,
    lease_id = NULL,
    lease_until = NULL,
    visible_at = CASE WHEN attempts >= $2 THEN visible_at ELSE $1 END,
    ended_at = CASE WHEN attempts >= $2 THEN $1 ELSE ended_at END,
    dead_reason = CASE WHEN attempts >= $2 THEN 'max_attempts' ELSE dead_reason END,
    updated_at = $1
WHERE seq IN (
    SELECT seq FROM messages
    WHERE recipient = $4 AND state = 'leased' AND lease_until <= $1
    ORDER BY lease_until
    LIMIT $3
)
RETURNING state";

super::sql_groups::group_sql!(SqliteConnection, SqliteRow, "", "");
/// Reads, changes and writes one agent (a single write, so no savepoint).
async fn update_agent_on(
    tx: &mut SqliteConnection,
    agent_id: &str,
    change: &AgentChange,
) -> StoreResult<Agent> {
    let row = sqlx::query("SELECT * FROM agents WHERE agent_id = $1")
        .bind(agent_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?
        .ok_or(StoreError::AgentNotFound)?;
    let mut agent = sql::agent_from_row(&row)?;
    change.apply(&mut agent)?;
    sqlx::query(
        "UPDATE agents SET agent_type = $2, metadata = $3, keys = $4, webhook_url = $5, \
         webhook_secret = $6, trusted_agents = $7, last_heartbeat = $8, online = $9, \
         heartbeat_interval_ms = $10, heartbeat_timeout_ms = $11, updated_at = $12, \
         previous_webhook_secret = $13 \
         WHERE agent_id = $1",
    )
    .bind(agent_id)
    .bind(&agent.agent_type)
    .bind(to_json(&agent.metadata)?)
    .bind(to_json(&agent.keys)?)
    .bind(&agent.webhook_url)
    .bind(&agent.webhook_secret)
    .bind(to_json(&agent.trusted_agents)?)
    .bind(agent.last_heartbeat)
    .bind(agent.online)
    .bind(agent.heartbeat_interval_ms as i64)
    .bind(agent.heartbeat_timeout_ms as i64)
    .bind(agent.updated_at)
    .bind(to_json_opt(agent.previous_webhook_secret.as_ref())?)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    Ok(agent)
}

/// Deletes an agent, dead-letters its live inbox and cancels its deliveries.
async fn delete_agent_on(
    tx: &mut SqliteConnection,
    agent_id: &str,
    now: Millis,
) -> StoreResult<bool> {
    let deleted = sqlx::query("DELETE FROM agents WHERE agent_id = $1")
        .bind(agent_id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    if deleted.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE messages SET state = 'dead', dead_reason = $3, lease_id = NULL, \
         lease_until = NULL, ended_at = $2, updated_at = $2 \
         WHERE recipient = $1 AND state IN ('queued', 'leased')",
    )
    .bind(agent_id)
    .bind(now)
    .bind(dead_reason::RECIPIENT_DELETED)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    sqlx::query(
        "UPDATE deliveries SET state = 'cancelled', updated_at = $2 \
         WHERE agent_id = $1 AND state = 'pending'",
    )
    .bind(agent_id)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    Ok(true)
}

/// Enqueue: recipient and quota (one read of the maintained `inbox_live`
/// count), idempotency, then the message and its delivery.
async fn enqueue_on(
    tx: &mut SqliteConnection,
    message: Message,
    quota: u64,
    delivery: Option<Delivery>,
) -> StoreResult<Enqueued> {
    let live: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT (SELECT live FROM inbox_live WHERE recipient = $1) FROM agents WHERE agent_id = $1",
    )
    .bind(&message.recipient)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?;
    let Some(live) = live else {
        return Err(StoreError::AgentNotFound);
    };
    if let Some(key) = &message.idempotency_key {
        let existing =
            sqlx::query("SELECT * FROM messages WHERE recipient = $1 AND idempotency_key = $2")
                .bind(&message.recipient)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        if let Some(row) = existing {
            let existing = self::message(&row)?;
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
    let inserted = insert_message(&message)?
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::MessageIdTaken);
    }
    if let Some(delivery) = &delivery {
        insert_delivery(delivery)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }
    Ok(Enqueued::Created(message))
}

/// Extends or ends one lease.
async fn nack_on(tx: &mut SqliteConnection, request: &NackRequest) -> StoreResult<Message> {
    let query = match request.action {
        NackAction::Extend {
            extend_ms,
            max_lease_until,
        } => sqlx::query(
            "UPDATE messages SET \
                 lease_until = min(max(coalesce(lease_until, $4), $4) + $5, $6), \
                 updated_at = $4 \
             WHERE id = $1 AND recipient = $2 AND state = 'leased' \
               AND ($3 IS NULL OR lease_id = $3) \
             RETURNING *",
        )
        .bind(&request.message_id)
        .bind(&request.recipient)
        .bind(&request.lease_id)
        .bind(request.now)
        .bind(extend_ms)
        .bind(max_lease_until),
        NackAction::Requeue { visible_at } => sqlx::query(
            "UPDATE messages SET \
                 state = CASE WHEN attempts >= $5 THEN 'dead' ELSE 'queued' END, \
                 lease_id = NULL, \
                 lease_until = NULL, \
                 visible_at = CASE WHEN attempts >= $5 THEN visible_at ELSE $6 END, \
                 ended_at = CASE WHEN attempts >= $5 THEN $4 ELSE ended_at END, \
                 dead_reason = CASE WHEN attempts >= $5 THEN 'max_attempts' ELSE dead_reason END, \
                 updated_at = $4 \
             WHERE id = $1 AND recipient = $2 AND state = 'leased' \
               AND ($3 IS NULL OR lease_id = $3) \
             RETURNING *",
        )
        .bind(&request.message_id)
        .bind(&request.recipient)
        .bind(&request.lease_id)
        .bind(request.now)
        .bind(i64::from(request.max_attempts))
        .bind(visible_at),
    };
    let row = query.fetch_optional(&mut *tx).await.map_err(db_error)?;
    match row {
        Some(row) => message(&row),
        None => Err(sql::lease_refusal(
            lease_state(&mut *tx, &request.recipient, &request.message_id).await?,
            request.lease_id.as_deref(),
        )),
    }
}

/// Puts one dead letter back in its inbox.
async fn requeue_dead_on(
    tx: &mut SqliteConnection,
    recipient: &str,
    message_id: &str,
    now: Millis,
) -> StoreResult<Message> {
    let row = sqlx::query(
        "UPDATE messages SET state = 'queued', attempts = 0, lease_id = NULL, \
         lease_until = NULL, visible_at = $3, ended_at = NULL, dead_reason = NULL, \
         updated_at = $3 \
         WHERE id = $1 AND recipient = $2 AND state = 'dead' \
         RETURNING *",
    )
    .bind(message_id)
    .bind(recipient)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?;
    match row {
        Some(row) => message(&row),
        None => match lease_state(&mut *tx, recipient, message_id).await? {
            Some(_) => Err(StoreError::NotDead),
            None => Err(StoreError::MessageNotFound),
        },
    }
}

/// Records one webhook attempt, moves its delivery on and trims the agent's history.
async fn record_attempt_on(
    tx: &mut SqliteConnection,
    attempt: &DeliveryAttempt,
    outcome: AttemptOutcome,
) -> StoreResult<()> {
    let (next_state, retry_at) = sql::attempt_transition(outcome);
    sqlx::query(
        "UPDATE deliveries SET \
             attempts = max(attempts, $2), last_status = $3, last_error = $4, updated_at = $5, \
             state = CASE WHEN state = 'pending' THEN $6 ELSE state END, \
             next_attempt_at = CASE WHEN state = 'pending' \
                 THEN coalesce($7, next_attempt_at) ELSE next_attempt_at END \
         WHERE id = $1",
    )
    .bind(&attempt.delivery_id)
    .bind(i64::from(attempt.attempt))
    .bind(attempt.status_code.map(i64::from))
    .bind(&attempt.error)
    .bind(attempt.at)
    .bind(next_state.as_str())
    .bind(retry_at)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, message_id, agent_id, attempt, at, \
         status_code, latency_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&attempt.delivery_id)
    .bind(&attempt.message_id)
    .bind(&attempt.agent_id)
    .bind(i64::from(attempt.attempt))
    .bind(attempt.at)
    .bind(attempt.status_code.map(i64::from))
    .bind(i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX))
    .bind(&attempt.error)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    sqlx::query(
        "DELETE FROM delivery_attempts WHERE agent_id = $1 AND seq <= ( \
             SELECT seq FROM delivery_attempts WHERE agent_id = $1 \
             ORDER BY seq DESC LIMIT 1 OFFSET $2)",
    )
    .bind(&attempt.agent_id)
    .bind(sql::ATTEMPTS_KEPT_PER_AGENT)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Appends one link to the audit chain.
async fn append_audit_on(
    tx: &mut SqliteConnection,
    event: NewAuditEvent,
) -> StoreResult<AuditEvent> {
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
    let prev_seq: i64 = head.try_get("seq").map_err(db_error)?;
    let prev_hash: String = head.try_get("hash").map_err(db_error)?;
    let stored = sql::chain(prev_seq, &prev_hash, event);
    sqlx::query(
        "INSERT INTO audit_events (seq, at, kind, agent_id, detail, hash) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(stored.seq as i64)
    .bind(stored.at)
    .bind(&stored.kind)
    .bind(&stored.agent_id)
    .bind(to_json(&stored.detail)?)
    .bind(&stored.hash)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(stored.seq as i64)
        .bind(&stored.hash)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    Ok(stored)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn create_agent(&self, agent: Agent) -> StoreResult<()> {
        let insert = insert_agent(&agent)?;
        let inserted = self.execute(insert).await?;
        if inserted == 0 {
            return Err(StoreError::AgentExists);
        }
        Ok(())
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        sqlx::query("SELECT * FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_error)?
            .map(|r| sql::agent_from_row(&r))
            .transpose()
    }

    async fn update_agent(&self, agent_id: &str, change: &AgentChange) -> StoreResult<Agent> {
        let (agent_id, change) = (agent_id.to_string(), change.clone());
        self.write(move |tx| Box::pin(async move { update_agent_on(tx, &agent_id, &change).await }))
            .await
    }

    async fn delete_agent(&self, agent_id: &str, now: Millis) -> StoreResult<bool> {
        let agent_id = agent_id.to_string();
        self.write_all(move |tx| Box::pin(async move { delete_agent_on(tx, &agent_id, now).await }))
            .await
    }

    async fn mark_offline(&self, now: Millis, batch: usize) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE agents SET online = FALSE WHERE agent_id IN ( \
                 SELECT agent_id FROM agents WHERE online AND offline_at <= $1 \
                 ORDER BY offline_at LIMIT $2)",
        )
        .bind(now)
        .bind(limit(batch));
        self.execute(done).await
    }

    async fn enqueue(
        &self,
        message: Message,
        quota: u64,
        delivery: Option<Delivery>,
    ) -> StoreResult<Enqueued> {
        self.write_all(move |tx| {
            Box::pin(async move { enqueue_on(tx, message, quota, delivery).await })
        })
        .await
    }

    async fn lease(&self, request: &LeaseRequest) -> StoreResult<Vec<Message>> {
        let mut leased = Vec::new();
        // Messages expired or dead-lettered on the way do not count against
        // `max_messages`: lease again for the remainder while the statement
        // keeps finding candidates. Each round is one atomic statement.
        while leased.len() < request.max_messages {
            let wanted = request.max_messages - leased.len();
            let rows = sqlx::query(LEASE)
                .bind(request.recipient.clone())
                .bind(request.now)
                .bind(request.visibility_ms)
                .bind(i64::from(request.max_attempts))
                .bind(limit(wanted));
            let rows = self.fetch_all(rows).await?;
            let touched = rows.len();
            let rows = rows
                .iter()
                .map(sql::message_from_row)
                .collect::<StoreResult<Vec<_>>>()?;
            let granted = sql::granted_in_order(rows);
            leased.extend(granted);
            if touched < wanted {
                break;
            }
        }
        Ok(leased)
    }

    async fn lease_held(
        &self,
        request: &LeaseRequest,
        holder: &str,
        from: Option<&str>,
    ) -> StoreResult<Vec<Message>> {
        self.held_lease(request, holder, from).await
    }

    async fn count_held(&self, recipient: &str, holder: &str, now: Millis) -> StoreResult<u64> {
        self.held_count(recipient, holder, now).await
    }

    async fn release_held(
        &self,
        recipient: &str,
        holder: &str,
        now: Millis,
        max_attempts: u32,
    ) -> StoreResult<ReclaimCounts> {
        self.held_release(recipient, holder, now, max_attempts)
            .await
    }

    async fn ack(&self, request: &AckRequest) -> StoreResult<Message> {
        let request = request.clone();
        self.write(move |tx| Box::pin(async move { ack_on(tx, &request).await }))
            .await
    }

    async fn ack_many(&self, requests: &[AckRequest]) -> StoreResult<Vec<StoreResult<Message>>> {
        // Each ack is one statement, atomic on its own: no savepoints needed.
        let requests = requests.to_vec();
        self.write(move |tx| {
            Box::pin(async move {
                let mut outcomes = Vec::with_capacity(requests.len());
                for request in &requests {
                    let outcome = ack_on(&mut *tx, request).await;
                    if let Err(StoreError::Unavailable(e)) = &outcome {
                        return Err(StoreError::Unavailable(e.clone()));
                    }
                    outcomes.push(outcome);
                }
                Ok(outcomes)
            })
        })
        .await
    }

    async fn nack(&self, request: &NackRequest) -> StoreResult<Message> {
        let request = request.clone();
        self.write(move |tx| Box::pin(async move { nack_on(tx, &request).await }))
            .await
    }

    async fn requeue_dead(
        &self,
        recipient: &str,
        message_id: &str,
        now: Millis,
    ) -> StoreResult<Message> {
        let (recipient, message_id) = (recipient.to_string(), message_id.to_string());
        self.write(move |tx| {
            Box::pin(async move { requeue_dead_on(tx, &recipient, &message_id, now).await })
        })
        .await
    }

    async fn get_message(&self, message_id: &str) -> StoreResult<Option<Message>> {
        sqlx::query("SELECT * FROM messages WHERE id = $1")
            .bind(message_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_error)?
            .map(|r| message(&r))
            .transpose()
    }

    async fn list_dead(
        &self,
        recipient: &str,
        page_size: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        let (after_at, after_seq) = match cursor {
            Some(c) => sql::parse_dead_cursor(c)?,
            None => (Millis::MIN, i64::MIN),
        };
        let rows = sqlx::query(
            "SELECT * FROM messages \
             WHERE recipient = $1 AND state = 'dead' AND (ended_at, seq) > ($2, $3) \
             ORDER BY ended_at, seq LIMIT $4",
        )
        .bind(recipient)
        .bind(after_at)
        .bind(after_seq)
        .bind(limit(page_size.saturating_add(1)))
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        let mut page = rows
            .iter()
            .map(sql::message_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        let next_cursor = if page.len() > page_size {
            page.truncate(page_size);
            page.last()
                .map(|(seq, m)| sql::dead_cursor(m.ended_at.unwrap_or(m.updated_at), *seq))
        } else {
            None
        };
        Ok(Page {
            items: page.into_iter().map(|(_, m)| m).collect(),
            next_cursor,
        })
    }

    async fn next_available_at(&self, recipient: &str) -> StoreResult<Option<Millis>> {
        sqlx::query_scalar(sql::NEXT_AVAILABLE_AT)
            .bind(recipient)
            .fetch_one(&self.reader)
            .await
            .map_err(db_error)
    }

    async fn peek_queued(
        &self,
        recipient: &str,
        now: Millis,
        page: usize,
    ) -> StoreResult<Vec<Message>> {
        let rows = sqlx::query(super::sql_peek::PEEK_QUEUED)
            .bind(recipient)
            .bind(now)
            .bind(limit(page))
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| sql::message_from_row(row).map(|(_, m)| m))
            .collect()
    }

    async fn inbox_stats(&self, recipient: &str) -> StoreResult<StateCounts> {
        let rows = sqlx::query(
            "SELECT state, count(*) AS n FROM messages WHERE recipient = $1 GROUP BY state",
        )
        .bind(recipient)
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        sql::count_states(&rows)
    }

    async fn stats(&self) -> StoreResult<HubStats> {
        let rows = sqlx::query("SELECT state, count(*) AS n FROM messages GROUP BY state")
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        let messages = sql::count_states(&rows)?;
        let agents = sqlx::query(
            "SELECT count(*) AS total, count(*) FILTER (WHERE online) AS online FROM agents",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(db_error)?;
        let total: i64 = agents.try_get("total").map_err(db_error)?;
        let online: i64 = agents.try_get("online").map_err(db_error)?;
        Ok(HubStats {
            agents_total: total as u64,
            agents_online: online as u64,
            messages,
        })
    }

    async fn reclaim_expired_leases(&self, request: &ReclaimRequest) -> StoreResult<ReclaimCounts> {
        let (statement, recipient) = match &request.recipient {
            None => (RECLAIM_ALL, None),
            Some(agent) => (RECLAIM_INBOX, Some(agent.as_str())),
        };
        let mut query = sqlx::query(statement)
            .bind(request.now)
            .bind(i64::from(request.max_attempts))
            .bind(limit(request.limit));
        if let Some(agent) = recipient {
            query = query.bind(agent.to_string());
        }
        let rows = self.fetch_all(query).await?;
        sql::reclaim_counts(&rows)
    }

    async fn expire_messages(&self, now: Millis, batch: usize) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE messages SET state = 'expired', lease_id = NULL, lease_until = NULL, \
             ended_at = $1, updated_at = $1 \
             WHERE seq IN (SELECT seq FROM messages \
                 WHERE state IN ('queued', 'leased') AND expires_at <= $1 \
                 ORDER BY expires_at LIMIT $2)",
        )
        .bind(now)
        .bind(limit(batch));
        self.execute(done).await
    }

    async fn purge_retained(&self, ended_before: Millis, batch: usize) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages \
                 WHERE state IN ('acked', 'expired', 'dead') AND ended_at < $1 \
                 ORDER BY ended_at LIMIT $2)",
        )
        .bind(ended_before)
        .bind(limit(batch));
        self.execute(done).await
    }

    async fn claim_due_deliveries(
        &self,
        now: Millis,
        batch: usize,
        claim_ms: i64,
    ) -> StoreResult<Vec<Delivery>> {
        let rows = sqlx::query(
            "UPDATE deliveries SET next_attempt_at = $1 + $3 \
             WHERE id IN (SELECT id FROM deliveries \
                 WHERE state = 'pending' AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at, id LIMIT $2) \
             RETURNING *",
        )
        .bind(now)
        .bind(limit(batch))
        .bind(claim_ms);
        let rows = self.fetch_all(rows).await?;
        rows.iter().map(sql::delivery_from_row).collect()
    }

    async fn record_attempt(
        &self,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<()> {
        let attempt = attempt.clone();
        self.write_all(move |tx| {
            Box::pin(async move { record_attempt_on(tx, &attempt, outcome).await })
        })
        .await
    }

    async fn cancel_deliveries(&self, agent_id: &str, now: Millis) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE deliveries SET state = 'cancelled', updated_at = $2 \
             WHERE agent_id = $1 AND state = 'pending'",
        )
        .bind(agent_id.to_string())
        .bind(now);
        self.execute(done).await
    }

    async fn get_delivery(&self, delivery_id: &str) -> StoreResult<Option<Delivery>> {
        sqlx::query("SELECT * FROM deliveries WHERE id = $1")
            .bind(delivery_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_error)?
            .map(|r| sql::delivery_from_row(&r))
            .transpose()
    }

    async fn list_attempts(
        &self,
        agent_id: &str,
        count: usize,
    ) -> StoreResult<Vec<DeliveryAttempt>> {
        let rows = sqlx::query(
            "SELECT * FROM delivery_attempts WHERE agent_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(agent_id)
        .bind(limit(count))
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        rows.iter().map(sql::attempt_from_row).collect()
    }

    async fn append_audit(&self, event: NewAuditEvent) -> StoreResult<AuditEvent> {
        self.write_all(move |tx| Box::pin(async move { append_audit_on(tx, event).await }))
            .await
    }

    async fn list_audit(&self, after: Option<u64>, count: usize) -> StoreResult<Vec<AuditEvent>> {
        let rows = sqlx::query("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX)))
            .bind(limit(count))
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        rows.iter().map(sql::audit_from_row).collect()
    }

    async fn export_agents(&self, after: Option<&str>, count: usize) -> StoreResult<Vec<Agent>> {
        let rows =
            sqlx::query("SELECT * FROM agents WHERE agent_id > $1 ORDER BY agent_id LIMIT $2")
                .bind(after.unwrap_or_default())
                .bind(limit(count))
                .fetch_all(&self.reader)
                .await
                .map_err(db_error)?;
        rows.iter().map(sql::agent_from_row).collect()
    }

    async fn export_messages(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> StoreResult<Vec<Message>> {
        let rows = sqlx::query("SELECT * FROM messages WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after.unwrap_or_default())
            .bind(limit(count))
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        messages(&rows)
    }

    async fn import_agent(&self, agent: Agent) -> StoreResult<bool> {
        let insert = insert_agent(&agent)?;
        Ok(self.execute(insert).await? == 1)
    }

    async fn import_message(&self, message: Message) -> StoreResult<bool> {
        let insert = insert_message(&message)?;
        Ok(self.execute(insert).await? == 1)
    }

    async fn remember_nonce(
        &self,
        key: &str,
        expires_at: Millis,
        now: Millis,
    ) -> StoreResult<bool> {
        super::sql_security::sqlite::remember_nonce(&self.writer, key, expires_at, now).await
    }

    async fn purge_nonces(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        super::sql_security::sqlite::purge_nonces(&self.writer, now, limit).await
    }

    async fn retire_agent_id(&self, agent_id: &str, now: Millis) -> StoreResult<()> {
        super::sql_security::sqlite::retire_agent_id(&self.writer, agent_id, now).await
    }

    async fn is_agent_id_retired(&self, agent_id: &str) -> StoreResult<bool> {
        super::sql_security::sqlite::is_agent_id_retired(&self.reader, agent_id).await
    }

    async fn claim_due_deliveries_fair(
        &self,
        now: Millis,
        limit: usize,
        claim_ms: i64,
        per_agent: usize,
        skip_agents: &[String],
    ) -> StoreResult<Vec<Delivery>> {
        super::sql_security::sqlite_claim_fair(
            &self.writer,
            now,
            limit,
            claim_ms,
            per_agent,
            skip_agents,
        )
        .await
    }

    async fn search_agents(
        &self,
        prefix: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Agent>> {
        sql_console::sqlite::search_agents(&self.reader, prefix, limit, cursor).await
    }

    async fn list_dead_all(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        sql_console::sqlite::list_dead_all(&self.reader, limit, cursor).await
    }

    async fn list_failing_deliveries(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Delivery>> {
        sql_console::sqlite::list_failing_deliveries(&self.reader, limit, cursor).await
    }

    async fn retry_delivery(
        &self,
        delivery_id: &str,
        now: Millis,
    ) -> StoreResult<Option<Delivery>> {
        sql_console::sqlite::retry_delivery(&self.writer, delivery_id, now).await
    }

    async fn create_group(&self, group: Group, now: Millis) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        group_sql::create(&mut tx, &group, now).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn get_group(&self, group_id: &str) -> StoreResult<Option<Group>> {
        group_sql::get_group(
            &mut *self.reader.acquire().await.map_err(db_error)?,
            group_id,
        )
        .await
    }

    async fn update_group(&self, group_id: &str, change: &GroupChange) -> StoreResult<Group> {
        let mut tx = self.write_tx().await?;
        let group = group_sql::update(&mut tx, group_id, change).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(group)
    }

    async fn delete_group(&self, group_id: &str) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let deleted = group_sql::delete(&mut tx, group_id).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(deleted)
    }

    async fn group_member(
        &self,
        group_id: &str,
        agent_id: &str,
    ) -> StoreResult<Option<GroupMember>> {
        group_sql::member(
            &mut *self.reader.acquire().await.map_err(db_error)?,
            group_id,
            agent_id,
        )
        .await
    }

    async fn group_members(&self, group_id: &str) -> StoreResult<Vec<GroupMember>> {
        group_sql::members(
            &mut *self.reader.acquire().await.map_err(db_error)?,
            group_id,
        )
        .await
    }

    async fn add_group_member(&self, group_id: &str, member: GroupMember) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        group_sql::add_member(&mut tx, group_id, &member).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn remove_group_member(&self, group_id: &str, agent_id: &str) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let removed = group_sql::remove_member(&mut tx, group_id, agent_id).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(removed)
    }

    async fn agent_groups(
        &self,
        agent_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> StoreResult<Vec<(Group, GroupRole)>> {
        group_sql::agent_groups(
            &mut *self.reader.acquire().await.map_err(db_error)?,
            agent_id,
            limit,
            after,
        )
        .await
    }

    async fn post_to_group(&self, post: GroupPost, fan: FanOut) -> StoreResult<Posted> {
        let mut tx = self.write_tx().await?;
        let (posted, _woken) = group_sql::post(&mut tx, post, &fan).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(posted)
    }

    async fn group_history(
        &self,
        group_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<GroupPost>> {
        group_sql::history(
            &mut *self.reader.acquire().await.map_err(db_error)?,
            group_id,
            limit,
            cursor,
        )
        .await
    }

    async fn purge_group_history(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let purged = group_sql::purge_history(&mut tx, now, limit).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(purged)
    }
}
