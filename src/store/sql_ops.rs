//! The store operations both SQL backends share, each written once over
//! [`SqlConn`]. SQLite's writer thread drives them with `run_now` inside its
//! commit group; PostgreSQL awaits them on the pool or in a transaction.
//! Multi-statement operations expect the caller to have made them atomic.

use super::sql::{self, Columns, limit, to_json_opt};
use super::sql_conn::{Arg, ByDialect, Dialect, SqlConn, args};
use super::*;
use std::sync::LazyLock;

/// A whole message row.
pub(super) fn message(row: &impl Columns) -> StoreResult<Message> {
    sql::message_from_row(row).map(|(_, m)| m)
}

/// Message state and lease id as seen by a fresh read, to explain a refused ack/nack.
pub(super) async fn lease_state(
    c: &mut impl SqlConn,
    recipient: &str,
    message_id: &str,
) -> StoreResult<Option<(String, Option<String>)>> {
    c.row(
        "SELECT state, lease_id FROM messages WHERE id = $1 AND recipient = $2",
        args![message_id, recipient],
        |r| Ok((r.text("state")?, r.text_opt("lease_id")?)),
    )
    .await
}

/// The `SET` list that ends a lease as an expired lease ends: back to the
/// queue, visible at `visible_at`, or to the dead letters (ended at `now`)
/// once the message has had `max_attempts`. Each argument is a placeholder
/// such as `$2`; written once for nacks, lease reclaims and stream releases.
pub(super) fn end_lease(max_attempts: &str, now: &str, visible_at: &str) -> String {
    format!(
        "state = CASE WHEN attempts >= {max_attempts} THEN 'dead' ELSE 'queued' END,
    lease_id = NULL,
    lease_until = NULL,
    visible_at = CASE WHEN attempts >= {max_attempts} THEN visible_at ELSE {visible_at} END,
    ended_at = CASE WHEN attempts >= {max_attempts} THEN {now} ELSE ended_at END,
    dead_reason = CASE WHEN attempts >= {max_attempts} THEN 'max_attempts' ELSE dead_reason END,
    updated_at = {now}"
    )
}

/// The message an ack or nack names, while leased (and under the lease id
/// when one is given). Binds: message id, recipient, lease id or NULL.
const HELD_LEASE: &str = "WHERE id = $1 AND recipient = $2 AND state = 'leased' \
     AND (CAST($3 AS TEXT) IS NULL OR lease_id = $3) RETURNING *";

/// Acks one message. Binds: [`HELD_LEASE`]'s, now, result.
static ACK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE messages SET state = 'acked', lease_id = NULL, lease_until = NULL, \
         acked_at = $4, ended_at = $4, updated_at = $4, result = $5 {HELD_LEASE}"
    )
});

/// Extends a lease, up to a cap. Binds: [`HELD_LEASE`]'s, now, extend_ms,
/// the cap.
static NACK_EXTEND: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE messages SET \
         lease_until = LEAST(GREATEST(COALESCE(lease_until, $4), $4) + $5, $6), \
         updated_at = $4 {HELD_LEASE}"
    )
});

/// Ends a lease now. Binds: [`HELD_LEASE`]'s, now, max_attempts, visible_at.
static NACK_REQUEUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE messages SET {} {HELD_LEASE}",
        end_lease("$5", "$4", "$6")
    )
});

/// The message a lease statement changed, or why it changed none.
async fn leased_or_refused(
    c: &mut impl SqlConn,
    found: Option<Message>,
    recipient: &str,
    message_id: &str,
    lease_id: Option<&str>,
) -> StoreResult<Message> {
    match found {
        Some(m) => Ok(m),
        None => Err(sql::lease_refusal(
            lease_state(c, recipient, message_id).await?,
            lease_id,
        )),
    }
}

/// A send whose idempotency key its inbox already holds: the original when
/// the content is the same, a conflict when it is not; `None` when the key
/// is new (or the send has none).
pub(super) async fn seen_before(
    c: &mut impl SqlConn,
    m: &Message,
) -> StoreResult<Option<Enqueued>> {
    let Some(key) = &m.idempotency_key else {
        return Ok(None);
    };
    let existing = c
        .row(
            "SELECT * FROM messages WHERE recipient = $1 AND idempotency_key = $2",
            args![&m.recipient, key],
            |r| message(r),
        )
        .await?;
    match existing {
        None => Ok(None),
        Some(original) if original.content_hash == m.content_hash => {
            Ok(Some(Enqueued::Duplicate(original)))
        }
        Some(_) => Err(StoreError::IdempotencyConflict),
    }
}

/// `Store::enqueue` as a series of statements: recipient and quota (one
/// read of the maintained `inbox_live` count), idempotency, then the message
/// and its delivery. For an engine whose writes of one operation cannot
/// interleave with another's (SQLite's writer thread); PostgreSQL does the
/// same in one statement (`postgres::ENQUEUE`), since a data-modifying CTE
/// (which SQLite lacks) saves it the round trips and the row locks.
pub(super) async fn enqueue_in_steps(
    c: &mut impl SqlConn,
    message: Message,
    quota: u64,
    delivery: Option<Delivery>,
) -> StoreResult<Enqueued> {
    let live = c
        .row(
            "SELECT (SELECT live FROM inbox_live WHERE recipient = $1) AS live \
             FROM agents WHERE agent_id = $1",
            args![&message.recipient],
            |r| r.int_opt("live"),
        )
        .await?
        .ok_or(StoreError::AgentNotFound)?;
    if let Some(original) = seen_before(c, &message).await? {
        return Ok(original);
    }
    if u64::try_from(live.unwrap_or(0)).unwrap_or(0) >= quota {
        return Err(StoreError::InboxFull);
    }
    if c.insert_messages(std::slice::from_ref(&message)).await? == 0 {
        return Err(StoreError::MessageIdTaken);
    }
    if let Some(delivery) = &delivery {
        super::sql_agents::insert_delivery(c, delivery).await?;
    }
    Ok(Enqueued::Created(message))
}

/// Acks one message.
pub(super) async fn ack(c: &mut impl SqlConn, r: &AckRequest) -> StoreResult<Message> {
    let result = to_json_opt(r.result.as_ref())?;
    let found = c
        .row(
            &ACK,
            args![&r.message_id, &r.recipient, &r.lease_id, r.now, &result],
            |r| message(r),
        )
        .await?;
    leased_or_refused(c, found, &r.recipient, &r.message_id, r.lease_id.as_deref()).await
}

/// Extends or ends one lease.
pub(super) async fn nack(c: &mut impl SqlConn, r: &NackRequest) -> StoreResult<Message> {
    let found = match r.action {
        NackAction::Extend {
            extend_ms,
            max_lease_until,
        } => {
            c.row(
                &NACK_EXTEND,
                args![
                    &r.message_id,
                    &r.recipient,
                    &r.lease_id,
                    r.now,
                    extend_ms,
                    max_lease_until
                ],
                |r| message(r),
            )
            .await?
        }
        NackAction::Requeue { visible_at } => {
            c.row(
                &NACK_REQUEUE,
                args![
                    &r.message_id,
                    &r.recipient,
                    &r.lease_id,
                    r.now,
                    r.max_attempts,
                    visible_at
                ],
                |r| message(r),
            )
            .await?
        }
    };
    leased_or_refused(c, found, &r.recipient, &r.message_id, r.lease_id.as_deref()).await
}

/// Puts one dead letter back in its inbox.
pub(super) async fn requeue_dead(
    c: &mut impl SqlConn,
    recipient: &str,
    message_id: &str,
    now: Millis,
) -> StoreResult<Message> {
    let found = c
        .row(
            "UPDATE messages SET state = 'queued', attempts = 0, lease_id = NULL, \
             lease_until = NULL, visible_at = $3, ended_at = NULL, dead_reason = NULL, \
             updated_at = $3 \
             WHERE id = $1 AND recipient = $2 AND state = 'dead' \
             RETURNING *",
            args![message_id, recipient, now],
            |r| message(r),
        )
        .await?;
    match found {
        Some(m) => Ok(m),
        None => match lease_state(c, recipient, message_id).await? {
            Some(_) => Err(StoreError::NotDead),
            None => Err(StoreError::MessageNotFound),
        },
    }
}

/// Columns of a whole message row, in the order both backends bind them.
pub(super) const MESSAGE_COLUMNS: &str = "id, recipient, sender, envelope, state, attempts, \
     lease_id, lease_until, visible_at, expires_at, created_at, updated_at, acked_at, ended_at, \
     dead_reason, result, idempotency_key, content_hash";
/// Values per message row.
pub(super) const MESSAGE_ARITY: usize = 18;
/// Rows of one multi-row message insert (a fan-out writes its copies in
/// inserts of this many, the remainder one by one): 576 values, far under
/// either engine's limit, and one prepared statement.
pub(super) const INSERT_CHUNK: usize = 32;

/// `INSERT` of `rows` whole messages, values numbered in order; conflicts
/// (id or idempotency key) insert nothing.
fn insert_messages_sql(d: Dialect, rows: usize) -> String {
    let mut sql = format!("INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..MESSAGE_ARITY {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("{}{}", d.positional(), r * MESSAGE_ARITY + c + 1));
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// One message's insert.
pub(super) static INSERT_MESSAGE: ByDialect = ByDialect::new(|d| insert_messages_sql(d, 1));
/// [`INSERT_CHUNK`] messages' insert.
pub(super) static INSERT_MESSAGES: ByDialect =
    ByDialect::new(|d| insert_messages_sql(d, INSERT_CHUNK));

/// A whole message row with its `seq`.
fn message_seq(row: &impl Columns) -> StoreResult<(i64, Message)> {
    sql::message_from_row(row)
}

/// Lease statement: picks the oldest available messages of one inbox and
/// moves each to `leased` (fresh lease id: `lease_id`, an expression),
/// `expired` (past TTL) or `dead` (an expired lease at the attempt limit).
/// The pick is a CTE (PostgreSQL materialises it once, so the locked pick is
/// never re-run by the join) whose limit is an expression, not a bare
/// placeholder: SQLite re-prepares a statement with a bare `LIMIT $n` on
/// every run (13 % of the hub's CPU in a drain; `lease_is_prepared_once`
/// keeps it so). Binds: recipient, now, visibility_ms, max_attempts, limit,
/// then whatever `filter` and `lease_id` bind.
pub(super) fn lease_statement(d: Dialect, filter: &str, lease_id: &str) -> String {
    format!(
        "WITH picked AS (
    SELECT seq AS picked_seq,
           available_at AS was_available_at,
           CASE WHEN expires_at <= $2 THEN 'expired'
                WHEN state = 'leased' AND attempts >= $4 THEN 'dead'
                ELSE 'leased' END AS next_state
    FROM messages
    WHERE recipient = $1 AND {filter}
    ORDER BY available_at, seq
    LIMIT CAST($5 AS INTEGER){lock}
)
UPDATE messages SET
    state = picked.next_state,
    attempts = CASE WHEN picked.next_state = 'leased' THEN attempts + 1 ELSE attempts END,
    lease_id = CASE WHEN picked.next_state = 'leased' THEN {lease_id} END,
    lease_until = CASE WHEN picked.next_state = 'leased' THEN $2 + $3 END,
    visible_at = picked.was_available_at,
    ended_at = CASE WHEN picked.next_state = 'leased' THEN ended_at ELSE $2 END,
    dead_reason = CASE WHEN picked.next_state = 'dead' THEN 'max_attempts' ELSE dead_reason END,
    updated_at = $2
FROM picked
WHERE messages.seq = picked.picked_seq
RETURNING {returning}",
        lock = d.skip_locked(),
        returning = d.returning_row("messages"),
    )
}

/// Messages a pull may take now.
pub(super) const AVAILABLE: &str = "state IN ('queued', 'leased') AND available_at <= $2";

/// `Store::lease`'s statement.
pub(super) static LEASE: ByDialect = ByDialect::new(|d| lease_statement(d, AVAILABLE, d.uuid()));

/// Runs lease rounds until `max` messages are leased or a round finds no
/// more candidates: messages expired or dead-lettered on the way do not
/// count against `max`. Each round is `sql` (see [`lease_statement`]), one
/// atomic statement, with `extra` bound after the five common values.
pub(super) async fn lease_rounds(
    c: &mut impl SqlConn,
    sql: &str,
    r: &LeaseRequest,
    extra: &[Arg<'_>],
) -> StoreResult<Vec<Message>> {
    let mut leased = Vec::new();
    while leased.len() < r.max_messages {
        let wanted = r.max_messages - leased.len();
        let mut bound: Vec<Arg<'_>> = Vec::with_capacity(5 + extra.len());
        bound.extend_from_slice(args![
            &r.recipient,
            r.now,
            r.visibility_ms,
            r.max_attempts,
            limit(wanted)
        ]);
        bound.extend_from_slice(extra);
        let rows = c.rows(sql, &bound, |row| message_seq(row)).await?;
        let touched = rows.len();
        leased.extend(sql::granted_in_order(rows));
        if touched < wanted {
            break;
        }
    }
    Ok(leased)
}

/// `Store::lease`.
pub(super) async fn lease<C: SqlConn>(c: &mut C, r: &LeaseRequest) -> StoreResult<Vec<Message>> {
    lease_rounds(c, LEASE.get(C::DIALECT), r, &[]).await
}

/// Ends expired leases (all inboxes, or one): back to the queue, or to the
/// dead letters at the attempt limit. The inboxes' count rows are locked
/// first, in recipient order (PostgreSQL: a lease ending in the dead letters
/// changes its inbox's `inbox_live` row through a trigger, so two sweeps
/// over the same inboxes queue instead of deadlocking). Binds: now,
/// max_attempts, limit, then the recipient for one inbox.
fn reclaim_statement(d: Dialect, inbox: &str) -> String {
    format!(
        "WITH due AS (
    SELECT seq AS due_seq, recipient AS due_recipient FROM messages
    WHERE {inbox}state = 'leased' AND lease_until <= $1
    ORDER BY lease_until
    LIMIT CAST($3 AS INTEGER){skip_locked}
),
counts AS (
    SELECT 1 FROM inbox_live WHERE recipient IN (SELECT due_recipient FROM due)
    ORDER BY recipient{for_update}
)
UPDATE messages SET
    {end_lease}
FROM due
WHERE messages.seq = due.due_seq AND (SELECT count(*) FROM counts) >= 0
RETURNING state, recipient",
        skip_locked = d.skip_locked(),
        for_update = d.for_update(),
        end_lease = end_lease("$2", "$1", "$1"),
    )
}

static RECLAIM_ALL: ByDialect = ByDialect::new(|d| reclaim_statement(d, ""));
/// One inbox: its live messages (`messages_ready`, whose predicate this
/// repeats so SQLite uses it) whose lease has ended.
pub(super) static RECLAIM_INBOX: ByDialect = ByDialect::new(|d| {
    reclaim_statement(
        d,
        "recipient = $4 AND state IN ('queued', 'leased') AND available_at <= $1 AND ",
    )
});

/// `Store::reclaim_expired_leases`: the counts, and the inboxes that got a
/// message back (to wake their waiting pulls).
pub(super) async fn reclaim<C: SqlConn>(
    c: &mut C,
    r: &ReclaimRequest,
) -> StoreResult<(ReclaimCounts, Vec<String>)> {
    let common = args![r.now, r.max_attempts, limit(r.limit)];
    let changed = match &r.recipient {
        None => {
            c.rows(RECLAIM_ALL.get(C::DIALECT), common, |r| changed_state(r))
                .await?
        }
        Some(recipient) => {
            let mut bound = common.to_vec();
            bound.push(recipient.into());
            c.rows(RECLAIM_INBOX.get(C::DIALECT), &bound, |r| changed_state(r))
                .await?
        }
    };
    Ok(counts_and_requeued(changed))
}

/// A changed row's new state and inbox.
fn changed_state(row: &impl Columns) -> StoreResult<(String, String)> {
    Ok((row.text("state")?, row.text("recipient")?))
}

/// How many rows went back to the queue or to the dead letters, and the
/// inboxes that got a message back.
fn counts_and_requeued(changed: Vec<(String, String)>) -> (ReclaimCounts, Vec<String>) {
    let mut counts = ReclaimCounts::default();
    let mut requeued_in: Vec<String> = Vec::new();
    for (state, recipient) in changed {
        if state == MessageState::Queued.as_str() {
            counts.requeued += 1;
            if !requeued_in.contains(&recipient) {
                requeued_in.push(recipient);
            }
        } else {
            counts.dead += 1;
        }
    }
    (counts, requeued_in)
}

/// Expires live messages past their TTL, oldest first; count rows locked
/// first as in [`reclaim_statement`]. Binds: now, limit.
static EXPIRE: ByDialect = ByDialect::new(|d| {
    format!(
        "WITH due AS (
    SELECT seq AS due_seq, recipient AS due_recipient FROM messages
    WHERE state IN ('queued', 'leased') AND expires_at <= $1
    ORDER BY expires_at
    LIMIT CAST($2 AS INTEGER){skip_locked}
),
counts AS (
    SELECT 1 FROM inbox_live WHERE recipient IN (SELECT due_recipient FROM due)
    ORDER BY recipient{for_update}
)
UPDATE messages SET state = 'expired', lease_id = NULL, lease_until = NULL,
    ended_at = $1, updated_at = $1
FROM due
WHERE messages.seq = due.due_seq AND (SELECT count(*) FROM counts) >= 0",
        skip_locked = d.skip_locked(),
        for_update = d.for_update(),
    )
});

/// `Store::expire_messages`.
pub(super) async fn expire_messages<C: SqlConn>(
    c: &mut C,
    now: Millis,
    batch: usize,
) -> StoreResult<u64> {
    c.exec(EXPIRE.get(C::DIALECT), args![now, limit(batch)])
        .await
}

/// Deletes ended messages past retention, oldest first. Binds: cutoff, limit.
static PURGE: ByDialect = ByDialect::new(|d| {
    format!(
        "DELETE FROM messages WHERE seq IN (
    SELECT seq FROM messages
    WHERE state IN ('acked', 'expired', 'dead') AND ended_at < $1
    ORDER BY ended_at
    LIMIT CAST($2 AS INTEGER){}
)",
        d.skip_locked()
    )
});

/// `Store::purge_retained`.
pub(super) async fn purge_retained<C: SqlConn>(
    c: &mut C,
    ended_before: Millis,
    batch: usize,
) -> StoreResult<u64> {
    c.exec(PURGE.get(C::DIALECT), args![ended_before, limit(batch)])
        .await
}

/// `Store::get_message`.
pub(super) async fn get_message(
    c: &mut impl SqlConn,
    message_id: &str,
) -> StoreResult<Option<Message>> {
    c.row(
        "SELECT * FROM messages WHERE id = $1",
        args![message_id],
        |r| message(r),
    )
    .await
}

/// One inbox's dead letters after a cursor (`messages_dead`). Binds:
/// recipient, cursor ended_at, cursor seq, limit.
pub(super) const LIST_DEAD: &str = "SELECT * FROM messages \
     WHERE recipient = $1 AND state = 'dead' AND (ended_at, seq) > ($2, $3) \
     ORDER BY ended_at, seq LIMIT $4";

/// `Store::list_dead`: oldest ended first, paged by (ended_at, seq).
pub(super) async fn list_dead(
    c: &mut impl SqlConn,
    recipient: &str,
    page_size: usize,
    cursor: Option<&str>,
) -> StoreResult<Page<Message>> {
    let (after_at, after_seq) = match cursor {
        Some(cursor) => sql::parse_dead_cursor(cursor)?,
        None => (Millis::MIN, i64::MIN),
    };
    let found = c
        .rows(
            LIST_DEAD,
            args![
                recipient,
                after_at,
                after_seq,
                limit(page_size.saturating_add(1))
            ],
            |r| message_seq(r),
        )
        .await?;
    Ok(super::sql_console::dead_page(found, page_size))
}

/// `Store::next_available_at`.
pub(super) async fn next_available_at(
    c: &mut impl SqlConn,
    recipient: &str,
) -> StoreResult<Option<Millis>> {
    let found = c
        .row(sql::NEXT_AVAILABLE_AT, args![recipient], |r| {
            r.int_opt("next")
        })
        .await?;
    Ok(found.flatten())
}

/// `Store::peek_queued`.
pub(super) async fn peek_queued(
    c: &mut impl SqlConn,
    recipient: &str,
    now: Millis,
    page: usize,
) -> StoreResult<Vec<Message>> {
    c.rows(
        super::sql_peek::PEEK_QUEUED,
        args![recipient, now, limit(page)],
        |r| message(r),
    )
    .await
}

/// Counts the rows of one `GROUP BY state` statement.
async fn count_states(
    c: &mut impl SqlConn,
    sql: &str,
    bound: &[Arg<'_>],
) -> StoreResult<StateCounts> {
    let mut counts = StateCounts::default();
    for (state, n) in c.rows(sql, bound, |r| sql::state_count(r)).await? {
        counts.add(state, n);
    }
    Ok(counts)
}

/// One inbox's messages by state. Each half reads one partial index
/// (`messages_ready`, which carries `state`, and `messages_ended_inbox`):
/// the predicates are the indexes' own, word for word, so SQLite sees that
/// they apply. Binds: recipient.
pub(super) const INBOX_STATS: &str = "SELECT state, count(*) AS n FROM messages \
     WHERE recipient = $1 AND state IN ('queued', 'leased') GROUP BY state \
     UNION ALL \
     SELECT state, count(*) AS n FROM messages \
     WHERE recipient = $1 AND state IN ('acked', 'expired', 'dead') GROUP BY state";

/// `Store::inbox_stats`.
pub(super) async fn inbox_stats(c: &mut impl SqlConn, recipient: &str) -> StoreResult<StateCounts> {
    count_states(c, INBOX_STATS, args![recipient]).await
}

/// `Store::stats`.
pub(super) async fn stats(c: &mut impl SqlConn) -> StoreResult<HubStats> {
    let messages = count_states(
        c,
        "SELECT state, count(*) AS n FROM messages GROUP BY state",
        &[],
    )
    .await?;
    let (agents_total, agents_online) = c
        .row(
            "SELECT count(*) AS total, count(*) FILTER (WHERE online) AS online FROM agents",
            &[],
            |r| Ok((r.unsigned::<u64>("total")?, r.unsigned::<u64>("online")?)),
        )
        .await?
        .unwrap_or_default();
    Ok(HubStats {
        agents_total,
        agents_online,
        messages,
    })
}

/// `Store::export_messages`: a page by id.
pub(super) async fn export_messages(
    c: &mut impl SqlConn,
    after: Option<&str>,
    count: usize,
) -> StoreResult<Vec<Message>> {
    c.rows(
        "SELECT * FROM messages WHERE id > $1 ORDER BY id LIMIT $2",
        args![after.unwrap_or_default(), limit(count)],
        |r| message(r),
    )
    .await
}

/// `Store::import_message`: the row as it is; an id or idempotency key
/// already stored inserts nothing.
pub(super) async fn import_message(c: &mut impl SqlConn, message: &Message) -> StoreResult<bool> {
    Ok(c.insert_messages(std::slice::from_ref(message)).await? == 1)
}
