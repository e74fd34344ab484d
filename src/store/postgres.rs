//! PostgreSQL backend: the scale-out path, several hub instances on one database.
//!
//! - **Leasing** is one statement: a CTE picks the oldest available messages
//!   of the inbox `FOR UPDATE SKIP LOCKED` and the `UPDATE` leases them, so
//!   concurrent pulls on any number of instances never lease a message twice
//!   and never wait on each other's rows.
//! - **Sweeps** (lease reclaim, TTL, retention, offline) pick their batch the
//!   same way, so every instance may sweep at once: a row is handled by
//!   whichever transaction locks it first and re-checked after the lock, so
//!   nothing is counted twice or updated from a stale read.
//! - **Writes that read first** (enqueue's quota and idempotency checks,
//!   agent updates) lock the agent row; the audit chain locks its head row.
//! - **Wake-ups**: enqueue and every requeue `NOTIFY` a channel with the
//!   recipient id (delivered at commit); a listener task on each instance
//!   wakes that instance's long-polls. If the listener loses its connection
//!   it reconnects and wakes every long-poll, since notifications may have
//!   been missed meanwhile.
//!
//! Tables live in the connection's current schema (`search_path`, e.g.
//! `?options=-c%20search_path%3Dadmp` in `DATABASE_URL`), and the channel is
//! named after it, so several hubs can share one database in separate schemas.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Postgres, Row};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::sql::{self, db_error, to_json, to_json_opt};
use super::sql_conn::{Arg, Dialect as SqlDialect, SqlConn};
use super::sql_groups;
use super::sql_ops;
use super::sql_stream;
use super::*;
use super::{sql_agents, sql_console, sql_security};
use crate::hub::InboxWakers;

/// Migrations embedded in the binary, applied at open.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a call waits for a pooled connection before reporting `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between attempts to re-establish a broken `LISTEN`.
const MAX_LISTEN_BACKOFF: Duration = Duration::from_secs(30);
/// PostgreSQL truncates identifiers (and refuses channel names) beyond this.
const MAX_IDENTIFIER_BYTES: usize = 63;

type PgQuery = sqlx::query::Query<'static, Postgres, PgArguments>;

/// A PostgreSQL schema holding the whole hub; safe to share between instances.
pub struct PostgresStore {
    pool: PgPool,
    /// The task that turns notifications into long-poll wake-ups.
    listener: JoinHandle<()>,
    /// Recipients to announce to every instance, queued after commit.
    wake_queue: mpsc::UnboundedSender<String>,
    /// The task that sends the queued wake-ups (see [`send_wakeups`]).
    notifier: JoinHandle<()>,
}

impl PostgresStore {
    /// Connects to `url`, applies pending migrations (under sqlx's advisory
    /// lock, so instances starting together migrate once) and starts
    /// listening for wake-ups on behalf of `wakers`.
    pub async fn open(
        url: &str,
        max_connections: u32,
        wakers: Arc<InboxWakers>,
    ) -> StoreResult<Self> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Internal(format!("DATABASE_URL: {e}")))?;
        // `admp` in pg_stat_activity unless the URL names the instance itself.
        if options.get_application_name().is_none() {
            options = options.application_name("admp");
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(db_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Internal(format!("migrating the PostgreSQL schema: {e}")))?;
        let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await
            .map_err(db_error)?;
        let schema = schema.ok_or_else(|| {
            StoreError::Internal("no current schema: check search_path in DATABASE_URL".into())
        })?;
        let channel = channel_name(&schema);

        // The listener keeps its own connection so it never starves the pool.
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        let mut listener = PgListener::connect_with(&listener_pool)
            .await
            .map_err(db_error)?;
        listener.listen(&channel).await.map_err(db_error)?;
        let listener = tokio::spawn(forward_wakeups(listener, wakers));
        let (wake_queue, queued) = mpsc::unbounded_channel();
        let notifier = tokio::spawn(send_wakeups(pool.clone(), channel, queued));
        Ok(PostgresStore {
            pool,
            listener,
            wake_queue,
            notifier,
        })
    }

    /// Stops listening and closes every connection.
    pub async fn close(&self) {
        self.listener.abort();
        self.notifier.abort();
        self.pool.close().await;
    }

    /// Wakes long-polls of `recipients` on every instance, after the commit
    /// that made their messages available (the caller has committed).
    /// `NOTIFY` inside the writing transaction would take PostgreSQL's
    /// notify-queue lock from the commit on, serialising every commit of
    /// every instance behind it; sent from here, wake-ups cost the writers
    /// nothing and go out in batches. A wake-up lost to a crash between the
    /// commit and the send only delays a long-poll to its next look.
    fn wake(&self, recipients: &[String]) {
        for r in recipients {
            // The receiver lives as long as the store; a send fails only at shutdown.
            let _ = self.wake_queue.send(r.clone());
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.notifier.abort();
    }
}

/// `admp_wake_<schema>`, cut to PostgreSQL's identifier length (a shared
/// prefix only costs spurious wake-ups).
fn channel_name(schema: &str) -> String {
    let mut name = format!("admp_wake_{schema}");
    while name.len() > MAX_IDENTIFIER_BYTES {
        name.pop();
    }
    name
}

/// Most wake-ups sent in one `pg_notify` statement.
const MAX_WAKE_BATCH: usize = 1024;

/// Sends queued wake-ups, each batch (deduplicated) in one statement, until
/// the queue closes. A failed send is logged and dropped: long-polls fall
/// back to their deadline, exactly as for a lost `LISTEN` connection.
async fn send_wakeups(pool: PgPool, channel: String, mut queued: mpsc::UnboundedReceiver<String>) {
    let mut batch = Vec::new();
    while queued.recv_many(&mut batch, MAX_WAKE_BATCH).await > 0 {
        batch.sort_unstable();
        batch.dedup();
        if let Err(e) = sqlx::query("SELECT pg_notify($1, r) FROM unnest($2::text[]) AS r")
            .bind(&channel)
            .bind(&batch)
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, recipients = batch.len(),
                "NOTIFY failed; other instances' long-polls fall back to their deadline");
        }
        batch.clear();
    }
}

/// Wakes the long-polls of each notified recipient until the task is aborted.
async fn forward_wakeups(mut listener: PgListener, wakers: Arc<InboxWakers>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                wakers.wake(notification.payload());
                backoff = Duration::from_millis(100);
            }
            Ok(None) => {
                tracing::warn!("LISTEN connection lost and re-established; waking every long-poll");
                wakers.wake_all();
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "LISTEN connection failed; long-polls fall back to their deadline");
                wakers.wake_all();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_LISTEN_BACKOFF);
            }
        }
    }
}

fn message(row: &PgRow) -> StoreResult<Message> {
    sql::message_from_row(row).map(|(_, m)| m)
}

/// Binds a whole message's columns as `$1`–`$18`, in `messages` column order.
fn bind_message(query: PgQuery, m: &Message) -> StoreResult<PgQuery> {
    Ok(query
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

/// A send in one statement (one round trip, one commit). It locks the
/// recipient's `inbox_live` row (not the agent row: readers and other
/// writers of the agent never wait on a send), which orders sends to one
/// inbox against each other and against `delete_agent` (which deletes that
/// row first), and reads the count as of the lock, so the quota is exact.
/// The insert happens only under the quota and when the idempotency key is
/// unseen in the statement's snapshot; a key committed meanwhile makes the
/// insert a no-op through the unique index, and the caller looks again.
/// Binds: the message ($1-$18), its delivery ($19-$27), quota ($28).
/// Returns `live` (NULL: no such recipient) and `inserted`.
const ENQUEUE: &str = "\
WITH live AS (
    SELECT live FROM inbox_live WHERE recipient = $2 FOR UPDATE
),
existing AS (
    SELECT 1 FROM messages
    WHERE $17::text IS NOT NULL AND recipient = $2 AND idempotency_key = $17
),
inserted AS (
    INSERT INTO messages (id, recipient, sender, envelope, state, attempts, lease_id,
        lease_until, visible_at, expires_at, created_at, updated_at, acked_at, ended_at,
        dead_reason, result, idempotency_key, content_hash)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18
    FROM live
    WHERE live.live < $28 AND NOT EXISTS (SELECT 1 FROM existing)
    ON CONFLICT DO NOTHING
    RETURNING id
),
delivery AS (
    INSERT INTO deliveries (id, message_id, agent_id, state, attempts, next_attempt_at,
        created_at, updated_at, last_status, last_error)
    SELECT $19, id, $20, $21, $22, $23, $24, $25, $26, $27 FROM inserted
    WHERE $19::text IS NOT NULL
)
SELECT (SELECT live FROM live) AS live, (SELECT count(*) FROM inserted) AS inserted";

/// Binds [`ENQUEUE`].
fn enqueue_query(m: &Message, d: Option<&Delivery>, quota: u64) -> StoreResult<PgQuery> {
    Ok(bind_message(sqlx::query(ENQUEUE), m)?
        .bind(d.map(|d| d.id.clone()))
        .bind(d.map(|d| d.agent_id.clone()))
        .bind(d.map(|d| d.state.as_str()))
        .bind(d.map(|d| i64::from(d.attempts)))
        .bind(d.map(|d| d.next_attempt_at))
        .bind(d.map(|d| d.created_at))
        .bind(d.map(|d| d.updated_at))
        .bind(d.and_then(|d| d.last_status.map(i64::from)))
        .bind(d.and_then(|d| d.last_error.clone()))
        .bind(i64::try_from(quota).unwrap_or(i64::MAX)))
}

/// A batch of acks in one statement: each entry acks its message when it is
/// leased under the given lease (or any, for a null lease id). An id given
/// twice is acked once (the first entry; the second is refused as already
/// acked, as one-by-one acks would). Binds: ids, recipients, lease ids, nows,
/// results (arrays of equal length).
const ACK_MANY: &str = "\
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
        WITH ORDINALITY AS b(id, recipient, lease_id, now, result, n)
),
first AS (
    SELECT DISTINCT ON (id) * FROM batch ORDER BY id, n
)
UPDATE messages m SET state = 'acked', lease_id = NULL, lease_until = NULL,
    acked_at = first.now, ended_at = first.now, updated_at = first.now, result = first.result
FROM first
WHERE m.id = first.id AND m.recipient = first.recipient AND m.state = 'leased'
  AND (first.lease_id IS NULL OR m.lease_id = first.lease_id)
RETURNING m.*";

/// The pool, or one connection (an open transaction), as the shared
/// operations see it (`sql_conn`).
pub(super) enum Pg<'c> {
    Pool(&'c PgPool),
    Conn(&'c mut PgConnection),
}

/// `sql` with `args` bound in order.
fn bind_args<'q>(sql: &'q str, args: &[Arg<'q>]) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for arg in args {
        query = match *arg {
            Arg::Text(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::Bool(v) => query.bind(v),
        };
    }
    query
}

impl SqlConn for Pg<'_> {
    type Row<'r> = PgRow;
    const DIALECT: SqlDialect = SqlDialect::Postgres;

    async fn rows<T>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        read: impl FnMut(&PgRow) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let query = bind_args(sql, args);
        let rows = match self {
            Pg::Pool(pool) => query.fetch_all(*pool).await,
            Pg::Conn(conn) => query.fetch_all(&mut **conn).await,
        }
        .map_err(db_error)?;
        rows.iter().map(read).collect()
    }

    async fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        let query = bind_args(sql, args);
        let done = match self {
            Pg::Pool(pool) => query.execute(*pool).await,
            Pg::Conn(conn) => query.execute(&mut **conn).await,
        }
        .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn insert_messages(&mut self, messages: &[Message]) -> StoreResult<u64> {
        // Many rows per statement (a fan-out's copies: a few round trips,
        // not one per member), the remainder one by one.
        let mut inserted = 0;
        let mut rest = messages;
        while !rest.is_empty() {
            let (statement, n) = if rest.len() >= sql_ops::INSERT_CHUNK {
                (&sql_ops::INSERT_MESSAGES, sql_ops::INSERT_CHUNK)
            } else {
                (&sql_ops::INSERT_MESSAGE, 1)
            };
            let (rows, tail) = rest.split_at(n);
            rest = tail;
            let sql = statement.get(SqlDialect::Postgres);
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for m in rows {
                query = bind_message(query, m)?;
            }
            let done = match self {
                Pg::Pool(pool) => query.execute(*pool).await,
                Pg::Conn(conn) => query.execute(&mut **conn).await,
            }
            .map_err(db_error)?;
            inserted += done.rows_affected();
        }
        Ok(inserted)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn create_agent(&self, agent: Agent) -> StoreResult<()> {
        if sql_agents::insert_agent(&mut Pg::Pool(&self.pool), &agent).await? == 0 {
            return Err(StoreError::AgentExists);
        }
        Ok(())
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        sql_agents::get_agent(&mut Pg::Pool(&self.pool), agent_id).await
    }

    async fn update_agent(&self, agent_id: &str, change: &AgentChange) -> StoreResult<Agent> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let agent = sql_agents::update_agent(&mut Pg::Conn(&mut tx), agent_id, change).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(agent)
    }

    async fn delete_agent(&self, agent_id: &str, now: Millis) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let deleted = sql_agents::delete_agent(&mut Pg::Conn(&mut tx), agent_id, now).await?;
        // No such agent: roll back (dropping the transaction), as nothing changed.
        if deleted {
            tx.commit().await.map_err(db_error)?;
        }
        Ok(deleted)
    }

    async fn mark_offline(&self, now: Millis, batch: usize) -> StoreResult<u64> {
        sql_agents::mark_offline(&mut Pg::Pool(&self.pool), now, batch).await
    }

    async fn enqueue(
        &self,
        message: Message,
        quota: u64,
        delivery: Option<Delivery>,
    ) -> StoreResult<Enqueued> {
        // One round trip (autocommit); a second only to return the original
        // of a duplicate or to explain a refused insert.
        let row = enqueue_query(&message, delivery.as_ref(), quota)?
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        let live: Option<i64> = row.try_get("live").map_err(db_error)?;
        let inserted: i64 = row.try_get("inserted").map_err(db_error)?;
        let Some(live) = live else {
            return Err(StoreError::AgentNotFound);
        };
        if inserted == 1 {
            self.wake(std::slice::from_ref(&message.recipient));
            return Ok(Enqueued::Created(message));
        }
        if let Some(original) = sql_ops::seen_before(&mut Pg::Pool(&self.pool), &message).await? {
            return Ok(original);
        }
        // Not the quota, no original: the id is taken by another inbox (or
        // the original was purged since the statement's snapshot); the hub
        // retries under a fresh id.
        if u64::try_from(live).unwrap_or(0) >= quota {
            return Err(StoreError::InboxFull);
        }
        Err(StoreError::MessageIdTaken)
    }

    async fn lease(&self, request: &LeaseRequest) -> StoreResult<Vec<Message>> {
        sql_ops::lease(&mut Pg::Pool(&self.pool), request).await
    }

    async fn lease_held(
        &self,
        request: &LeaseRequest,
        holder: &str,
        from: Option<&str>,
    ) -> StoreResult<Vec<Message>> {
        sql_stream::lease_held(&mut Pg::Pool(&self.pool), request, holder, from).await
    }

    async fn count_held(&self, recipient: &str, holder: &str, now: Millis) -> StoreResult<u64> {
        sql_stream::count_held(&mut Pg::Pool(&self.pool), recipient, holder, now).await
    }

    async fn release_held(
        &self,
        recipient: &str,
        holder: &str,
        now: Millis,
        max_attempts: u32,
    ) -> StoreResult<ReclaimCounts> {
        let counts = sql_stream::release_held(
            &mut Pg::Pool(&self.pool),
            recipient,
            holder,
            now,
            max_attempts,
        )
        .await?;
        if counts.requeued > 0 {
            self.wake(&[recipient.to_string()]);
        }
        Ok(counts)
    }

    async fn announce(&self, recipient: &str) -> StoreResult<()> {
        self.wake(&[recipient.to_string()]);
        Ok(())
    }

    async fn ack(&self, request: &AckRequest) -> StoreResult<Message> {
        sql_ops::ack(&mut Pg::Pool(&self.pool), request).await
    }

    async fn ack_many(&self, requests: &[AckRequest]) -> StoreResult<Vec<StoreResult<Message>>> {
        // One statement for the whole batch; a second only when some entry
        // was refused, to say why (from the state after the batch, as a
        // one-by-one loop would have seen it).
        let mut ids = Vec::with_capacity(requests.len());
        let mut recipients = Vec::with_capacity(requests.len());
        let mut lease_ids = Vec::with_capacity(requests.len());
        let mut nows = Vec::with_capacity(requests.len());
        let mut results = Vec::with_capacity(requests.len());
        for r in requests {
            ids.push(r.message_id.clone());
            recipients.push(r.recipient.clone());
            lease_ids.push(r.lease_id.clone());
            nows.push(r.now);
            results.push(to_json_opt(r.result.as_ref())?);
        }
        let rows = sqlx::query(ACK_MANY)
            .bind(&ids)
            .bind(&recipients)
            .bind(&lease_ids)
            .bind(&nows)
            .bind(&results)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut acked = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let m = message(row)?;
            acked.insert((m.recipient.clone(), m.id.clone()), m);
        }
        let mut outcomes: Vec<StoreResult<Message>> = requests
            .iter()
            .map(|r| {
                acked
                    .remove(&(r.recipient.clone(), r.message_id.clone()))
                    .ok_or(StoreError::NotLeased)
            })
            .collect();
        let refused: Vec<usize> = (0..requests.len())
            .filter(|&i| outcomes[i].is_err())
            .collect();
        if !refused.is_empty() {
            let found = sqlx::query(
                "SELECT id, recipient, state, lease_id FROM messages \
                 WHERE id = ANY($1) AND recipient = ANY($2)",
            )
            .bind(refused.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>())
            .bind(
                refused
                    .iter()
                    .map(|&i| recipients[i].clone())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            let mut states = std::collections::HashMap::with_capacity(found.len());
            for row in &found {
                let key: (String, String) = (
                    row.try_get("recipient").map_err(db_error)?,
                    row.try_get("id").map_err(db_error)?,
                );
                let state: (String, Option<String>) = (
                    row.try_get("state").map_err(db_error)?,
                    row.try_get("lease_id").map_err(db_error)?,
                );
                states.insert(key, state);
            }
            for i in refused {
                let r = &requests[i];
                let state = states
                    .get(&(r.recipient.clone(), r.message_id.clone()))
                    .cloned();
                outcomes[i] = Err(sql::lease_refusal(state, r.lease_id.as_deref()));
            }
        }
        Ok(outcomes)
    }

    async fn nack(&self, request: &NackRequest) -> StoreResult<Message> {
        let message = sql_ops::nack(&mut Pg::Pool(&self.pool), request).await?;
        if message.state == MessageState::Queued {
            self.wake(std::slice::from_ref(&message.recipient));
        }
        Ok(message)
    }

    async fn requeue_dead(
        &self,
        recipient: &str,
        message_id: &str,
        now: Millis,
    ) -> StoreResult<Message> {
        let message =
            sql_ops::requeue_dead(&mut Pg::Pool(&self.pool), recipient, message_id, now).await?;
        self.wake(std::slice::from_ref(&message.recipient));
        Ok(message)
    }

    async fn get_message(&self, message_id: &str) -> StoreResult<Option<Message>> {
        sql_ops::get_message(&mut Pg::Pool(&self.pool), message_id).await
    }

    async fn list_dead(
        &self,
        recipient: &str,
        page_size: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        sql_ops::list_dead(&mut Pg::Pool(&self.pool), recipient, page_size, cursor).await
    }

    async fn next_available_at(&self, recipient: &str) -> StoreResult<Option<Millis>> {
        sql_ops::next_available_at(&mut Pg::Pool(&self.pool), recipient).await
    }

    async fn peek_queued(
        &self,
        recipient: &str,
        now: Millis,
        page: usize,
    ) -> StoreResult<Vec<Message>> {
        sql_ops::peek_queued(&mut Pg::Pool(&self.pool), recipient, now, page).await
    }

    async fn inbox_stats(&self, recipient: &str) -> StoreResult<StateCounts> {
        sql_ops::inbox_stats(&mut Pg::Pool(&self.pool), recipient).await
    }

    async fn stats(&self) -> StoreResult<HubStats> {
        sql_ops::stats(&mut Pg::Pool(&self.pool)).await
    }

    async fn reclaim_expired_leases(&self, request: &ReclaimRequest) -> StoreResult<ReclaimCounts> {
        let (counts, requeued_in) = sql_ops::reclaim(&mut Pg::Pool(&self.pool), request).await?;
        self.wake(&requeued_in);
        Ok(counts)
    }

    async fn expire_messages(&self, now: Millis, batch: usize) -> StoreResult<u64> {
        sql_ops::expire_messages(&mut Pg::Pool(&self.pool), now, batch).await
    }

    async fn purge_retained(&self, ended_before: Millis, batch: usize) -> StoreResult<u64> {
        sql_ops::purge_retained(&mut Pg::Pool(&self.pool), ended_before, batch).await
    }

    async fn claim_due_deliveries(
        &self,
        now: Millis,
        batch: usize,
        claim_ms: i64,
    ) -> StoreResult<Vec<Delivery>> {
        sql_agents::claim_due_deliveries(&mut Pg::Pool(&self.pool), now, batch, claim_ms).await
    }

    async fn record_attempt(
        &self,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sql_agents::record_attempt(&mut Pg::Conn(&mut tx), attempt, outcome).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn cancel_deliveries(&self, agent_id: &str, now: Millis) -> StoreResult<u64> {
        sql_agents::cancel_deliveries(&mut Pg::Pool(&self.pool), agent_id, now).await
    }

    async fn get_delivery(&self, delivery_id: &str) -> StoreResult<Option<Delivery>> {
        sql_agents::get_delivery(&mut Pg::Pool(&self.pool), delivery_id).await
    }

    async fn list_attempts(
        &self,
        agent_id: &str,
        count: usize,
    ) -> StoreResult<Vec<DeliveryAttempt>> {
        sql_agents::list_attempts(&mut Pg::Pool(&self.pool), agent_id, count).await
    }

    async fn append_audit(&self, event: NewAuditEvent) -> StoreResult<AuditEvent> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let stored = sql_agents::append_audit(&mut Pg::Conn(&mut tx), event).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(stored)
    }

    async fn list_audit(&self, after: Option<u64>, count: usize) -> StoreResult<Vec<AuditEvent>> {
        sql_agents::list_audit(&mut Pg::Pool(&self.pool), after, count).await
    }

    async fn export_agents(&self, after: Option<&str>, count: usize) -> StoreResult<Vec<Agent>> {
        sql_agents::export_agents(&mut Pg::Pool(&self.pool), after, count).await
    }

    async fn export_messages(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> StoreResult<Vec<Message>> {
        sql_ops::export_messages(&mut Pg::Pool(&self.pool), after, count).await
    }

    async fn import_agent(&self, agent: Agent) -> StoreResult<bool> {
        Ok(sql_agents::insert_agent(&mut Pg::Pool(&self.pool), &agent).await? == 1)
    }

    async fn import_message(&self, message: Message) -> StoreResult<bool> {
        sql_ops::import_message(&mut Pg::Pool(&self.pool), &message).await
    }

    async fn create_group(&self, group: Group, now: Millis) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sql_groups::create_group(&mut Pg::Conn(&mut tx), &group, now).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn get_group(&self, group_id: &str) -> StoreResult<Option<Group>> {
        sql_groups::get_group(&mut Pg::Pool(&self.pool), group_id).await
    }

    async fn update_group(&self, group_id: &str, change: &GroupChange) -> StoreResult<Group> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let group = sql_groups::update_group(&mut Pg::Conn(&mut tx), group_id, change).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(group)
    }

    async fn delete_group(&self, group_id: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let deleted = sql_groups::delete_group(&mut Pg::Conn(&mut tx), group_id).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(deleted)
    }

    async fn group_member(
        &self,
        group_id: &str,
        agent_id: &str,
    ) -> StoreResult<Option<GroupMember>> {
        sql_groups::group_member(&mut Pg::Pool(&self.pool), group_id, agent_id).await
    }

    async fn group_members(&self, group_id: &str) -> StoreResult<Vec<GroupMember>> {
        sql_groups::group_members(&mut Pg::Pool(&self.pool), group_id).await
    }

    async fn add_group_member(&self, group_id: &str, member: GroupMember) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sql_groups::add_group_member(&mut Pg::Conn(&mut tx), group_id, &member).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn remove_group_member(&self, group_id: &str, agent_id: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let removed =
            sql_groups::remove_group_member(&mut Pg::Conn(&mut tx), group_id, agent_id).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(removed)
    }

    async fn agent_groups(
        &self,
        agent_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> StoreResult<Vec<(Group, GroupRole)>> {
        sql_groups::agent_groups(&mut Pg::Pool(&self.pool), agent_id, limit, after).await
    }

    async fn post_to_group(&self, post: GroupPost, fan: FanOut) -> StoreResult<Posted> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // Sends serialise on their inbox's count row, not on the agent row:
        // lock the members' count rows (in recipient order, as sweeps do) so
        // the fan-out's quota check and its copies are exact against
        // concurrent sends, and against `delete_agent`, which deletes that row first.
        sqlx::query(
            "SELECT 1 FROM inbox_live WHERE recipient IN ( \
                 SELECT agent_id FROM group_members WHERE group_id = $1 AND agent_id <> $2) \
             ORDER BY recipient FOR UPDATE",
        )
        .bind(&post.group_id)
        .bind(&post.sender)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let posted = sql_groups::post_to_group(&mut Pg::Conn(&mut tx), post, &fan).await?;
        tx.commit().await.map_err(db_error)?;
        if let Posted::Created(post) = &posted {
            // The members that got a copy.
            let woken: Vec<String> = post
                .deliveries
                .iter()
                .filter(|d| d.status == COPY_DELIVERED)
                .map(|d| d.agent_id.clone())
                .collect();
            self.wake(&woken);
        }
        Ok(posted)
    }

    async fn group_history(
        &self,
        group_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<GroupPost>> {
        sql_groups::group_history(&mut Pg::Pool(&self.pool), group_id, limit, cursor).await
    }

    async fn purge_group_history(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let purged = sql_groups::purge_group_history(&mut Pg::Conn(&mut tx), now, limit).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(purged)
    }

    async fn search_agents(
        &self,
        prefix: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Agent>> {
        sql_console::search_agents(&mut Pg::Pool(&self.pool), prefix, limit, cursor).await
    }

    async fn list_dead_all(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        sql_console::list_dead_all(&mut Pg::Pool(&self.pool), limit, cursor).await
    }

    async fn list_failing_deliveries(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Delivery>> {
        sql_console::list_failing_deliveries(&mut Pg::Pool(&self.pool), limit, cursor).await
    }

    async fn retry_delivery(
        &self,
        delivery_id: &str,
        now: Millis,
    ) -> StoreResult<Option<Delivery>> {
        sql_console::retry_delivery(&mut Pg::Pool(&self.pool), delivery_id, now).await
    }

    async fn remember_nonce(
        &self,
        key: &str,
        expires_at: Millis,
        now: Millis,
    ) -> StoreResult<bool> {
        sql_security::remember_nonce(&mut Pg::Pool(&self.pool), key, expires_at, now).await
    }

    async fn purge_nonces(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        sql_security::purge_nonces(&mut Pg::Pool(&self.pool), now, limit).await
    }

    async fn retire_agent_id(&self, agent_id: &str, now: Millis) -> StoreResult<()> {
        sql_security::retire_agent_id(&mut Pg::Pool(&self.pool), agent_id, now).await
    }

    async fn is_agent_id_retired(&self, agent_id: &str) -> StoreResult<bool> {
        sql_security::is_agent_id_retired(&mut Pg::Pool(&self.pool), agent_id).await
    }

    async fn claim_due_deliveries_fair(
        &self,
        now: Millis,
        limit: usize,
        claim_ms: i64,
        per_agent: usize,
        skip_agents: &[String],
    ) -> StoreResult<Vec<Delivery>> {
        sql_security::claim_due_deliveries_fair(
            &mut Pg::Pool(&self.pool),
            sql_security::CLAIM_FAIR_POSTGRES,
            now,
            limit,
            claim_ms,
            per_agent,
            skip_agents,
        )
        .await
    }
}
