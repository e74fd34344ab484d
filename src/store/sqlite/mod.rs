//! SQLite backend: the embedded default, one file on one machine.
//!
//! - **WAL** journal: readers never block the writer and a crash never
//!   leaves a half-written transaction behind.
//! - **Durability** is the `synchronous` pragma, chosen by `SQLITE_SYNCHRONOUS`:
//!   `full` (default) syncs the WAL on every commit, so an answered request
//!   survives a power loss; `normal` syncs only at checkpoints, which survives
//!   a process crash (SIGKILL, panic, OOM kill) but may lose the last
//!   commits on power loss or kernel crash. See docs/STORAGE.md.
//! - **One writer thread** ([`writer`]) owns the only connection that
//!   writes and commits concurrent operations in groups: one commit per
//!   group, one thread hand-off per operation. The driver is rusqlite,
//!   synchronous: an operation's statements run back to back on that thread
//!   (the async driver this replaced handed every statement to its own
//!   worker thread and back; docs/PERFORMANCE.md has the measurements).
//!   Transactions open with `BEGIN IMMEDIATE`, so another process on the
//!   same file (an operator's `sqlite3` shell) waits on the busy timeout
//!   instead of failing a transaction halfway.
//! - **Read connections** (`DATABASE_MAX_CONNECTIONS` kept idle) answer
//!   lookups inline on the calling task (an indexed point read costs
//!   microseconds, less than a hand-off); scans (stats, exports, listings)
//!   run on tokio's blocking pool.
//! - Leasing is one `UPDATE … FROM (SELECT … ORDER BY … LIMIT) RETURNING`.
//!
//! Use it from one hub process: several hubs on one file would work but
//! serialise on the file lock and never see each other's long-poll wake-ups.

mod conn;
mod migrate;
mod ops;
mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::Connection;

use self::conn::{Checkpointer, Readers, Sqlite, row};
use self::writer::Writer;
use super::sql_conn::run_now;
use super::sql_groups;
use super::sql_ops;
use super::*;
use super::{sql_agents, sql_console, sql_security, sql_stream};
use crate::config::SqliteSynchronous;

pub use self::conn::path_from_url;

/// A SQLite database file holding the whole hub.
pub struct SqliteStore {
    /// The writer thread's queue.
    writer: Writer,
    /// Read connections beside the writer.
    readers: Arc<Readers>,
    /// Copies the WAL back into the database off the writer's thread.
    checkpointer: Checkpointer,
}

impl SqliteStore {
    /// Opens (creating it when missing) the database at `url`, e.g.
    /// `sqlite://admp.db?mode=rwc`, and applies pending migrations.
    pub async fn open(
        url: &str,
        max_connections: u32,
        synchronous: SqliteSynchronous,
    ) -> StoreResult<Self> {
        let path = path_from_url(url)?;
        let opened = path.clone();
        let conn = tokio::task::spawn_blocking(move || {
            let mut conn = conn::open_writer(&opened, synchronous)?;
            migrate::run(&mut conn)?;
            Ok::<_, StoreError>(conn)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("opening the SQLite database: {e}")))??;
        Ok(SqliteStore {
            writer: Writer::start(conn)?,
            checkpointer: Checkpointer::start(&path, synchronous)?,
            readers: Arc::new(Readers::new(path, synchronous, max_connections as usize)),
        })
    }

    /// Finishes queued writes and closes every connection (the WAL is
    /// checkpointed when the last one closes).
    pub async fn close(&self) {
        self.checkpointer.stop();
        self.readers.close();
        self.writer.stop().await;
    }

    /// Runs a write in the next commit group without a savepoint: for an
    /// operation of at most one writing statement, or one that refuses only
    /// before its first write (a group post), so a refusal leaves nothing
    /// to undo.
    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.writer.write(false, op).await
    }

    /// Runs a write of several statements in the next commit group, inside a
    /// savepoint of its own.
    async fn write_all<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.writer.write(true, op).await
    }

    /// A point read, inline.
    fn read<T>(&self, op: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        self.readers.with(op)
    }

    /// A read that may scan many rows, on the blocking pool.
    async fn scan<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(op))
            .await
            .map_err(|e| StoreError::Internal(format!("SQLite read task: {e}")))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| row(c, "SELECT 1", &[], |_| Ok(())).map(drop))
    }

    async fn create_agent(&self, agent: Agent) -> StoreResult<()> {
        let inserted = self
            .write(move |c| run_now(sql_agents::insert_agent(&mut Sqlite(c), &agent)))
            .await?;
        if inserted == 0 {
            return Err(StoreError::AgentExists);
        }
        Ok(())
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        self.read(|c| run_now(sql_agents::get_agent(&mut Sqlite(c), agent_id)))
    }

    async fn update_agent(&self, agent_id: &str, change: &AgentChange) -> StoreResult<Agent> {
        let (agent_id, change) = (agent_id.to_string(), change.clone());
        self.write(move |c| run_now(sql_agents::update_agent(&mut Sqlite(c), &agent_id, &change)))
            .await
    }

    async fn delete_agent(&self, agent_id: &str, now: Millis) -> StoreResult<bool> {
        let agent_id = agent_id.to_string();
        self.write_all(move |c| run_now(sql_agents::delete_agent(&mut Sqlite(c), &agent_id, now)))
            .await
    }

    async fn mark_offline(&self, now: Millis, batch: usize) -> StoreResult<u64> {
        self.write(move |c| run_now(sql_agents::mark_offline(&mut Sqlite(c), now, batch)))
            .await
    }

    async fn enqueue(
        &self,
        message: Message,
        quota: u64,
        delivery: Option<Delivery>,
    ) -> StoreResult<Enqueued> {
        // Without a delivery the only write is the message's INSERT: atomic
        // by itself, no savepoint needed.
        self.writer
            .write(delivery.is_some(), move |c| {
                run_now(sql_ops::enqueue_in_steps(
                    &mut Sqlite(c),
                    message,
                    quota,
                    delivery,
                ))
            })
            .await
    }

    async fn lease(&self, request: &LeaseRequest) -> StoreResult<Vec<Message>> {
        // Every round (messages expired or dead-lettered on the way do not
        // count against `max_messages`) is one statement, atomic by itself,
        // as when each round was an operation of its own: no savepoint.
        let request = request.clone();
        self.write(move |c| run_now(sql_ops::lease(&mut Sqlite(c), &request)))
            .await
    }

    async fn lease_held(
        &self,
        request: &LeaseRequest,
        holder: &str,
        from: Option<&str>,
    ) -> StoreResult<Vec<Message>> {
        let (request, holder) = (request.clone(), holder.to_string());
        let from = from.map(str::to_string);
        self.write(move |c| {
            run_now(sql_stream::lease_held(
                &mut Sqlite(c),
                &request,
                &holder,
                from.as_deref(),
            ))
        })
        .await
    }

    async fn count_held(&self, recipient: &str, holder: &str, now: Millis) -> StoreResult<u64> {
        self.read(|c| {
            run_now(sql_stream::count_held(
                &mut Sqlite(c),
                recipient,
                holder,
                now,
            ))
        })
    }

    async fn release_held(
        &self,
        recipient: &str,
        holder: &str,
        now: Millis,
        max_attempts: u32,
    ) -> StoreResult<ReclaimCounts> {
        let (recipient, holder) = (recipient.to_string(), holder.to_string());
        self.write(move |c| {
            run_now(sql_stream::release_held(
                &mut Sqlite(c),
                &recipient,
                &holder,
                now,
                max_attempts,
            ))
        })
        .await
    }

    async fn ack(&self, request: &AckRequest) -> StoreResult<Message> {
        let request = request.clone();
        self.write(move |c| run_now(sql_ops::ack(&mut Sqlite(c), &request)))
            .await
    }

    async fn ack_many(&self, requests: &[AckRequest]) -> StoreResult<Vec<StoreResult<Message>>> {
        // Each ack is one statement, atomic on its own: no savepoints needed.
        let requests = requests.to_vec();
        self.write(move |c| {
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in &requests {
                let outcome = run_now(sql_ops::ack(&mut Sqlite(c), request));
                if let Err(StoreError::Unavailable(e)) = &outcome {
                    return Err(StoreError::Unavailable(e.clone()));
                }
                outcomes.push(outcome);
            }
            Ok(outcomes)
        })
        .await
    }

    async fn nack(&self, request: &NackRequest) -> StoreResult<Message> {
        let request = request.clone();
        self.write(move |c| run_now(sql_ops::nack(&mut Sqlite(c), &request)))
            .await
    }

    async fn requeue_dead(
        &self,
        recipient: &str,
        message_id: &str,
        now: Millis,
    ) -> StoreResult<Message> {
        let (recipient, message_id) = (recipient.to_string(), message_id.to_string());
        self.write(move |c| {
            run_now(sql_ops::requeue_dead(
                &mut Sqlite(c),
                &recipient,
                &message_id,
                now,
            ))
        })
        .await
    }

    async fn get_message(&self, message_id: &str) -> StoreResult<Option<Message>> {
        self.read(|c| run_now(sql_ops::get_message(&mut Sqlite(c), message_id)))
    }

    async fn list_dead(
        &self,
        recipient: &str,
        page_size: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        let (recipient, cursor) = (recipient.to_string(), cursor.map(str::to_string));
        self.scan(move |c| {
            run_now(sql_ops::list_dead(
                &mut Sqlite(c),
                &recipient,
                page_size,
                cursor.as_deref(),
            ))
        })
        .await
    }

    async fn next_available_at(&self, recipient: &str) -> StoreResult<Option<Millis>> {
        self.read(|c| run_now(sql_ops::next_available_at(&mut Sqlite(c), recipient)))
    }

    async fn peek_queued(
        &self,
        recipient: &str,
        now: Millis,
        page: usize,
    ) -> StoreResult<Vec<Message>> {
        self.read(|c| run_now(sql_ops::peek_queued(&mut Sqlite(c), recipient, now, page)))
    }

    async fn inbox_stats(&self, recipient: &str) -> StoreResult<StateCounts> {
        let recipient = recipient.to_string();
        self.scan(move |c| run_now(sql_ops::inbox_stats(&mut Sqlite(c), &recipient)))
            .await
    }

    async fn stats(&self) -> StoreResult<HubStats> {
        self.scan(|c| run_now(sql_ops::stats(&mut Sqlite(c)))).await
    }

    async fn reclaim_expired_leases(&self, request: &ReclaimRequest) -> StoreResult<ReclaimCounts> {
        let request = request.clone();
        let (counts, _requeued_in) = self
            .write(move |c| run_now(sql_ops::reclaim(&mut Sqlite(c), &request)))
            .await?;
        Ok(counts)
    }

    async fn expire_messages(&self, now: Millis, batch: usize) -> StoreResult<u64> {
        self.write(move |c| run_now(sql_ops::expire_messages(&mut Sqlite(c), now, batch)))
            .await
    }

    async fn purge_retained(&self, ended_before: Millis, batch: usize) -> StoreResult<u64> {
        self.write(move |c| run_now(sql_ops::purge_retained(&mut Sqlite(c), ended_before, batch)))
            .await
    }

    async fn claim_due_deliveries(
        &self,
        now: Millis,
        batch: usize,
        claim_ms: i64,
    ) -> StoreResult<Vec<Delivery>> {
        self.write(move |c| {
            run_now(sql_agents::claim_due_deliveries(
                &mut Sqlite(c),
                now,
                batch,
                claim_ms,
            ))
        })
        .await
    }

    async fn record_attempt(
        &self,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<()> {
        let attempt = attempt.clone();
        self.write_all(move |c| {
            run_now(sql_agents::record_attempt(
                &mut Sqlite(c),
                &attempt,
                outcome,
            ))
        })
        .await
    }

    async fn cancel_deliveries(&self, agent_id: &str, now: Millis) -> StoreResult<u64> {
        let agent_id = agent_id.to_string();
        self.write(move |c| {
            run_now(sql_agents::cancel_deliveries(
                &mut Sqlite(c),
                &agent_id,
                now,
            ))
        })
        .await
    }

    async fn get_delivery(&self, delivery_id: &str) -> StoreResult<Option<Delivery>> {
        self.read(|c| run_now(sql_agents::get_delivery(&mut Sqlite(c), delivery_id)))
    }

    async fn list_attempts(
        &self,
        agent_id: &str,
        count: usize,
    ) -> StoreResult<Vec<DeliveryAttempt>> {
        let agent_id = agent_id.to_string();
        self.scan(move |c| run_now(sql_agents::list_attempts(&mut Sqlite(c), &agent_id, count)))
            .await
    }

    async fn append_audit(&self, event: NewAuditEvent) -> StoreResult<AuditEvent> {
        self.write_all(move |c| run_now(sql_agents::append_audit(&mut Sqlite(c), event)))
            .await
    }

    async fn list_audit(&self, after: Option<u64>, count: usize) -> StoreResult<Vec<AuditEvent>> {
        self.scan(move |c| run_now(sql_agents::list_audit(&mut Sqlite(c), after, count)))
            .await
    }

    async fn export_agents(&self, after: Option<&str>, count: usize) -> StoreResult<Vec<Agent>> {
        let after = after.map(str::to_string);
        self.scan(move |c| {
            run_now(sql_agents::export_agents(
                &mut Sqlite(c),
                after.as_deref(),
                count,
            ))
        })
        .await
    }

    async fn export_messages(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> StoreResult<Vec<Message>> {
        let after = after.map(str::to_string);
        self.scan(move |c| {
            run_now(sql_ops::export_messages(
                &mut Sqlite(c),
                after.as_deref(),
                count,
            ))
        })
        .await
    }

    async fn import_agent(&self, agent: Agent) -> StoreResult<bool> {
        let inserted = self
            .write(move |c| run_now(sql_agents::insert_agent(&mut Sqlite(c), &agent)))
            .await?;
        Ok(inserted == 1)
    }

    async fn import_message(&self, message: Message) -> StoreResult<bool> {
        self.write(move |c| run_now(sql_ops::import_message(&mut Sqlite(c), &message)))
            .await
    }

    async fn remember_nonce(
        &self,
        key: &str,
        expires_at: Millis,
        now: Millis,
    ) -> StoreResult<bool> {
        let key = key.to_string();
        self.write(move |c| {
            run_now(sql_security::remember_nonce(
                &mut Sqlite(c),
                &key,
                expires_at,
                now,
            ))
        })
        .await
    }

    async fn purge_nonces(&self, now: Millis, batch: usize) -> StoreResult<u64> {
        self.write(move |c| run_now(sql_security::purge_nonces(&mut Sqlite(c), now, batch)))
            .await
    }

    async fn retire_agent_id(&self, agent_id: &str, now: Millis) -> StoreResult<()> {
        let agent_id = agent_id.to_string();
        self.write(move |c| {
            run_now(sql_security::retire_agent_id(
                &mut Sqlite(c),
                &agent_id,
                now,
            ))
        })
        .await
    }

    async fn is_agent_id_retired(&self, agent_id: &str) -> StoreResult<bool> {
        self.read(|c| run_now(sql_security::is_agent_id_retired(&mut Sqlite(c), agent_id)))
    }

    async fn claim_due_deliveries_fair(
        &self,
        now: Millis,
        batch: usize,
        claim_ms: i64,
        per_agent: usize,
        skip_agents: &[String],
    ) -> StoreResult<Vec<Delivery>> {
        let skip_agents = skip_agents.to_vec();
        self.write(move |c| {
            run_now(sql_security::claim_due_deliveries_fair(
                &mut Sqlite(c),
                sql_security::CLAIM_FAIR_SQLITE,
                now,
                batch,
                claim_ms,
                per_agent,
                &skip_agents,
            ))
        })
        .await
    }

    async fn search_agents(
        &self,
        prefix: &str,
        page_size: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Agent>> {
        let (prefix, cursor) = (prefix.to_string(), cursor.map(str::to_string));
        self.scan(move |c| {
            run_now(sql_console::search_agents(
                &mut Sqlite(c),
                &prefix,
                page_size,
                cursor.as_deref(),
            ))
        })
        .await
    }

    async fn list_dead_all(
        &self,
        page_size: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        let cursor = cursor.map(str::to_string);
        self.scan(move |c| {
            run_now(sql_console::list_dead_all(
                &mut Sqlite(c),
                page_size,
                cursor.as_deref(),
            ))
        })
        .await
    }

    async fn list_failing_deliveries(
        &self,
        page_size: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Delivery>> {
        let cursor = cursor.map(str::to_string);
        self.scan(move |c| {
            run_now(sql_console::list_failing_deliveries(
                &mut Sqlite(c),
                page_size,
                cursor.as_deref(),
            ))
        })
        .await
    }

    async fn retry_delivery(
        &self,
        delivery_id: &str,
        now: Millis,
    ) -> StoreResult<Option<Delivery>> {
        let delivery_id = delivery_id.to_string();
        self.write(move |c| {
            run_now(sql_console::retry_delivery(
                &mut Sqlite(c),
                &delivery_id,
                now,
            ))
        })
        .await
    }

    async fn create_group(&self, group: Group, now: Millis) -> StoreResult<()> {
        self.write_all(move |c| run_now(sql_groups::create_group(&mut Sqlite(c), &group, now)))
            .await
    }

    async fn get_group(&self, group_id: &str) -> StoreResult<Option<Group>> {
        self.read(|c| run_now(sql_groups::get_group(&mut Sqlite(c), group_id)))
    }

    async fn update_group(&self, group_id: &str, change: &GroupChange) -> StoreResult<Group> {
        let (group_id, change) = (group_id.to_string(), change.clone());
        self.write(move |c| run_now(sql_groups::update_group(&mut Sqlite(c), &group_id, &change)))
            .await
    }

    async fn delete_group(&self, group_id: &str) -> StoreResult<bool> {
        // The delete's trigger removes members and history: several writes.
        let group_id = group_id.to_string();
        self.write_all(move |c| run_now(sql_groups::delete_group(&mut Sqlite(c), &group_id)))
            .await
    }

    async fn group_member(
        &self,
        group_id: &str,
        agent_id: &str,
    ) -> StoreResult<Option<GroupMember>> {
        self.read(|c| run_now(sql_groups::group_member(&mut Sqlite(c), group_id, agent_id)))
    }

    async fn group_members(&self, group_id: &str) -> StoreResult<Vec<GroupMember>> {
        let group_id = group_id.to_string();
        self.scan(move |c| run_now(sql_groups::group_members(&mut Sqlite(c), &group_id)))
            .await
    }

    async fn add_group_member(&self, group_id: &str, member: GroupMember) -> StoreResult<()> {
        let group_id = group_id.to_string();
        self.write(move |c| {
            run_now(sql_groups::add_group_member(
                &mut Sqlite(c),
                &group_id,
                &member,
            ))
        })
        .await
    }

    async fn remove_group_member(&self, group_id: &str, agent_id: &str) -> StoreResult<bool> {
        let (group_id, agent_id) = (group_id.to_string(), agent_id.to_string());
        self.write(move |c| {
            run_now(sql_groups::remove_group_member(
                &mut Sqlite(c),
                &group_id,
                &agent_id,
            ))
        })
        .await
    }

    async fn agent_groups(
        &self,
        agent_id: &str,
        count: usize,
        after: Option<&str>,
    ) -> StoreResult<Vec<(Group, GroupRole)>> {
        let (agent_id, after) = (agent_id.to_string(), after.map(str::to_string));
        self.scan(move |c| {
            run_now(sql_groups::agent_groups(
                &mut Sqlite(c),
                &agent_id,
                count,
                after.as_deref(),
            ))
        })
        .await
    }

    async fn post_to_group(&self, post: GroupPost, fan: FanOut) -> StoreResult<Posted> {
        // No savepoint: a post refuses (group, membership, idempotency,
        // taken ids) before its first write and cannot fail for its own
        // reasons after it, so it never needs undoing on its own; a failure
        // of the database itself rolls the whole group back. A savepoint
        // would copy every page the post touches into the sub-journal
        // (measured: a fifth of the writer's time in a fan-out).
        self.write(move |c| run_now(sql_groups::post_to_group(&mut Sqlite(c), post, &fan)))
            .await
    }

    async fn group_history(
        &self,
        group_id: &str,
        count: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<GroupPost>> {
        let (group_id, cursor) = (group_id.to_string(), cursor.map(str::to_string));
        self.scan(move |c| {
            run_now(sql_groups::group_history(
                &mut Sqlite(c),
                &group_id,
                count,
                cursor.as_deref(),
            ))
        })
        .await
    }

    async fn purge_group_history(&self, now: Millis, count: usize) -> StoreResult<u64> {
        self.write(move |c| run_now(sql_groups::purge_group_history(&mut Sqlite(c), now, count)))
            .await
    }
}
