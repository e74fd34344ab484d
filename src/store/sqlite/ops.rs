//! The SQLite backend's operations as synchronous functions of one
//! connection: the writer thread runs the writing ones inside its commit
//! group, a read connection runs the others. Statements shared with
//! PostgreSQL come from the `sql_*` modules; the rest are SQLite's own.

use std::sync::LazyLock;

use rusqlite::Connection;

use super::conn::{Fields, exec, exec_positional, row, rows};
use crate::store::sql::{self, Columns, limit, to_json, to_json_opt};
use crate::store::sql_agents;
use crate::store::sql_groups::{
    self, group_from_row, member_from_row, post_from_row, role_from_row,
};
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

/// Lease statement: classifies the oldest available messages of one inbox and
/// moves each to `leased` (with a fresh UUID v4 lease id), `expired` (past
/// TTL) or `dead` (an expired lease at the attempt limit), in one statement.
/// Binds: recipient, now, visibility_ms, max_attempts, limit. The limit is
/// an expression, not a bare placeholder: SQLite re-prepares a statement
/// whose `LIMIT` is a bare placeholder on every run (measured: 13 % of the
/// hub's CPU in a drain; `lease_is_prepared_once` keeps it so).
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
    LIMIT CAST($5 AS INTEGER)
) AS picked
WHERE messages.seq = picked.picked_seq
RETURNING *";

/// The stream-lease statements in SQLite's words (`sql_stream`).
pub(super) static STREAM: LazyLock<StreamSql> = LazyLock::new(|| {
    StreamSql::new(&Dialect {
        random_id: "lower(hex(randomblob(16)))",
        lock: "",
        returning: "*",
    })
});

/// The agent, delivery and audit statements in SQLite's words
/// (`sql_agents`): one writer, so no row locks.
pub(super) static AGENT_SQL: LazyLock<sql_agents::Statements> = LazyLock::new(|| {
    sql_agents::Statements::new(&sql_agents::Dialect {
        lock: "",
        skip_locked: "",
        delivery_row: "*",
    })
});

/// Lease rounds (as `sql_stream::lease_held`'s) inside one writer operation.
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

/// `Store::lease`: every round in this one operation.
pub(super) fn lease(conn: &Connection, r: &LeaseRequest) -> StoreResult<Vec<Message>> {
    let max_attempts = i64::from(r.max_attempts);
    lease_rounds(r.max_messages, |wanted| {
        rows(
            conn,
            LEASE,
            &[
                &r.recipient,
                &r.now,
                &r.visibility_ms,
                &max_attempts,
                &limit(wanted),
            ],
            message_seq,
        )
    })
}

/// Ends expired leases (all inboxes, or one). Returns each row's new state.
pub(super) fn reclaim(conn: &Connection, r: &ReclaimRequest) -> StoreResult<ReclaimCounts> {
    let inbox = if r.recipient.is_some() {
        "recipient = $4 AND "
    } else {
        ""
    };
    let sql = format!(
        "UPDATE messages SET
    state = CASE WHEN attempts >= $2 THEN 'dead' ELSE 'queued' END,
    lease_id = NULL,
    lease_until = NULL,
    visible_at = CASE WHEN attempts >= $2 THEN visible_at ELSE $1 END,
    ended_at = CASE WHEN attempts >= $2 THEN $1 ELSE ended_at END,
    dead_reason = CASE WHEN attempts >= $2 THEN 'max_attempts' ELSE dead_reason END,
    updated_at = $1
WHERE seq IN (
    SELECT seq FROM messages
    WHERE {inbox}state = 'leased' AND lease_until <= $1
    ORDER BY lease_until
    LIMIT $3
)
RETURNING state"
    );
    let max_attempts = i64::from(r.max_attempts);
    let batch = limit(r.limit);
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&r.now, &max_attempts, &batch];
    if let Some(recipient) = &r.recipient {
        args.push(recipient);
    }
    let states = rows(conn, &sql, &args, state)?;
    Ok(sql_stream::released(&states))
}

// Groups (statements in `sql_groups`). SQLite has one writer, so the
// checks below cannot race: no row locks.

fn agent_exists(conn: &Connection, agent_id: &str) -> StoreResult<bool> {
    Ok(row(
        conn,
        "SELECT 1 FROM agents WHERE agent_id = $1",
        &[&agent_id],
        |_| Ok(()),
    )?
    .is_some())
}

fn insert_member(conn: &Connection, group_id: &str, m: &GroupMember) -> StoreResult<()> {
    exec(
        conn,
        sql_groups::INSERT_MEMBER,
        &[&group_id, &m.agent_id, &m.role.as_str(), &m.joined_at],
    )
    .map(drop)
}

/// `Store::create_group`.
pub(super) fn create_group(conn: &Connection, group: &Group, now: Millis) -> StoreResult<()> {
    if !agent_exists(conn, &group.created_by)? {
        return Err(StoreError::AgentNotFound);
    }
    let inserted = exec(
        conn,
        sql_groups::INSERT_GROUP,
        &[
            &group.id,
            &group.name,
            &group.created_by,
            &group.access.as_str(),
            &group.join_key_hash,
            &group.settings.history_visible,
            &group.settings.max_members,
            &i64::try_from(group.settings.message_ttl_sec).unwrap_or(i64::MAX),
            &group.created_at,
            &group.updated_at,
        ],
    )?;
    if inserted == 0 {
        return Err(StoreError::GroupExists);
    }
    insert_member(
        conn,
        &group.id,
        &GroupMember {
            agent_id: group.created_by.clone(),
            role: GroupRole::Owner,
            joined_at: now,
        },
    )
}

/// `Store::get_group`.
pub(super) fn get_group(conn: &Connection, group_id: &str) -> StoreResult<Option<Group>> {
    row(conn, sql_groups::GET_GROUP.as_str(), &[&group_id], |r| {
        group_from_row(r)
    })
}

/// `Store::update_group`.
pub(super) fn update_group(
    conn: &Connection,
    group_id: &str,
    change: &GroupChange,
) -> StoreResult<Group> {
    let updated = exec(
        conn,
        sql_groups::UPDATE_GROUP,
        &[
            &group_id,
            &change.name,
            &change.history_visible,
            &change.max_members,
            &change
                .message_ttl_sec
                .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
            &change.now,
        ],
    )?;
    if updated == 0 {
        return Err(StoreError::GroupNotFound);
    }
    get_group(conn, group_id)?.ok_or(StoreError::GroupNotFound)
}

/// `Store::delete_group`.
pub(super) fn delete_group(conn: &Connection, group_id: &str) -> StoreResult<bool> {
    Ok(exec(conn, sql_groups::DELETE_GROUP, &[&group_id])? > 0)
}

/// `Store::group_member`.
pub(super) fn group_member(
    conn: &Connection,
    group_id: &str,
    agent_id: &str,
) -> StoreResult<Option<GroupMember>> {
    row(conn, sql_groups::MEMBER, &[&group_id, &agent_id], |r| {
        member_from_row(r)
    })
}

/// `Store::group_members`.
pub(super) fn group_members(conn: &Connection, group_id: &str) -> StoreResult<Vec<GroupMember>> {
    rows(conn, sql_groups::MEMBERS, &[&group_id], |r| {
        member_from_row(r)
    })
}

/// `Store::add_group_member`: exact, since the writer runs one operation at a time.
pub(super) fn add_group_member(
    conn: &Connection,
    group_id: &str,
    member: &GroupMember,
) -> StoreResult<()> {
    let max = row(
        conn,
        "SELECT max_members FROM group_info WHERE id = $1",
        &[&group_id],
        |r| r.int("max_members"),
    )?
    .ok_or(StoreError::GroupNotFound)?;
    if group_member(conn, group_id, &member.agent_id)?.is_some() {
        return Err(StoreError::AlreadyMember);
    }
    let count = row(conn, sql_groups::COUNT_MEMBERS, &[&group_id], |r| {
        r.at::<i64>(0)
    })?
    .unwrap_or(0);
    if count >= max {
        return Err(StoreError::GroupFull);
    }
    if !agent_exists(conn, &member.agent_id)? {
        return Err(StoreError::AgentNotFound);
    }
    insert_member(conn, group_id, member)
}

/// `Store::remove_group_member`.
pub(super) fn remove_group_member(
    conn: &Connection,
    group_id: &str,
    agent_id: &str,
) -> StoreResult<bool> {
    Ok(exec(conn, sql_groups::REMOVE_MEMBER, &[&group_id, &agent_id])? > 0)
}

/// `Store::agent_groups`.
pub(super) fn agent_groups(
    conn: &Connection,
    agent_id: &str,
    count: usize,
    after: Option<&str>,
) -> StoreResult<Vec<(Group, GroupRole)>> {
    rows(
        conn,
        sql_groups::AGENT_GROUPS.as_str(),
        &[&agent_id, &limit(count), &after.unwrap_or("")],
        |r| Ok((group_from_row(r)?, role_from_row(r)?)),
    )
}

/// `Store::post_to_group`: the whole fan-out in one writer operation. The
/// recipients and their live counts come from one join (the maintained
/// `inbox_live` count, not a scan of each inbox), the copies go in
/// multi-row inserts.
pub(super) fn post_to_group(
    conn: &Connection,
    mut post: GroupPost,
    fan: &FanOut,
) -> StoreResult<Posted> {
    if row(
        conn,
        "SELECT 1 FROM group_info WHERE id = $1",
        &[&post.group_id],
        |_| Ok(()),
    )?
    .is_none()
    {
        return Err(StoreError::GroupNotFound);
    }
    if group_member(conn, &post.group_id, &post.sender)?.is_none() {
        return Err(StoreError::NotMember);
    }
    if let Some(key) = &post.idempotency_key {
        let existing = row(conn, sql_groups::POST_BY_KEY, &[&post.group_id, key], |r| {
            post_from_row(r)
        })?;
        if let Some(existing) = existing {
            return if existing.content_hash == post.content_hash {
                Ok(Posted::Duplicate(existing))
            } else {
                Err(StoreError::IdempotencyConflict)
            };
        }
    }
    let recipients = rows(
        conn,
        "SELECT a.agent_id, a.webhook_url, coalesce(l.live, 0) AS live \
         FROM group_members m JOIN agents a ON a.agent_id = m.agent_id \
         LEFT JOIN inbox_live l ON l.recipient = m.agent_id \
         WHERE m.group_id = $1 AND m.agent_id <> $2 ORDER BY m.agent_id",
        &[&post.group_id, &post.sender],
        |r| {
            let live: u64 = r.unsigned("live")?;
            Ok(Recipient {
                agent_id: r.text("agent_id")?,
                push: r.text_opt("webhook_url")?.is_some(),
                full: live >= fan.quota,
            })
        },
    )?;
    let plan = plan_fan_out(&mut post, fan, recipients);
    let inserted = exec(
        conn,
        sql_groups::INSERT_POST,
        &[
            &post.id,
            &post.group_id,
            &post.sender,
            &post.envelope.as_str(),
            &post.created_at,
            &post.expires_at,
            &post.idempotency_key,
            &post.content_hash,
            &to_json(&post.deliveries)?,
        ],
    )?;
    if inserted == 0 {
        return Err(StoreError::MessageIdTaken);
    }
    if insert_messages(conn, &plan.copies)? < plan.copies.len() as u64 {
        return Err(StoreError::MessageIdTaken);
    }
    for delivery in &plan.deliveries {
        insert_delivery(conn, delivery)?;
    }
    Ok(Posted::Created(post))
}

/// `Store::group_history`.
pub(super) fn group_history(
    conn: &Connection,
    group_id: &str,
    count: usize,
    cursor: Option<&str>,
) -> StoreResult<Page<GroupPost>> {
    let (before_at, before_id) = sql_groups::history_bounds(cursor)?;
    let items = rows(
        conn,
        sql_groups::HISTORY,
        &[
            &group_id,
            &before_at,
            &before_id,
            &limit(count.saturating_add(1)),
        ],
        |r| post_from_row(r),
    )?;
    Ok(crate::store::sql_console::paged(
        items,
        count,
        history_cursor,
    ))
}

/// `Store::purge_group_history`.
pub(super) fn purge_group_history(
    conn: &Connection,
    now: Millis,
    count: usize,
) -> StoreResult<u64> {
    exec(conn, sql_groups::PURGE_HISTORY, &[&now, &limit(count)])
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::super::conn::Sqlite;
    use super::*;
    use crate::store::sql_conn::run_now;

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
            lease(&conn, request).unwrap();
        }
        let statement = conn.prepare_cached(LEASE).unwrap();
        assert_eq!(statement.get_status(StatementStatus::RePrepare), 0);
    }

    #[test]
    fn stream_leases_are_prepared_once() {
        let (conn, requests) = lease_requests();
        let holder = "0123456789abcdef0123456789abcdef";
        for request in &requests {
            for from in [None, Some("fedcba9876543210fedcba9876543210")] {
                let mut c = Sqlite(&conn);
                run_now(sql_stream::lease_held(
                    &mut c, &STREAM, request, holder, from,
                ))
                .unwrap();
            }
        }
        for sql in [&STREAM.lease_available, &STREAM.lease_from] {
            let statement = conn.prepare_cached(sql).unwrap();
            assert_eq!(statement.get_status(StatementStatus::RePrepare), 0);
        }
    }
}
