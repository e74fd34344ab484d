//! The stream-lease operations (`Store::lease_held`, `count_held`,
//! `release_held`), each written once over [`SqlConn`] for SQLite and
//! PostgreSQL. A stream's leases are
//! the rows whose `lease_id` starts with its tag (`<stream_id>~`); the
//! statements differ between the two only in how a random id is made and in
//! PostgreSQL's row locks, which [`Dialect`] supplies.

use std::sync::LazyLock;

use super::sql::{Columns, limit};
use super::sql_conn::{SqlConn, args};
use super::{LeaseRequest, Message, Millis, ReclaimCounts, StoreResult, holder_tag};

/// What differs between the two SQL backends in these statements.
pub(super) struct Dialect {
    /// An expression giving a fresh random text (the lease id's random part).
    pub random_id: &'static str,
    /// Appended to the picking sub-select (PostgreSQL: skip rows other
    /// transactions hold, so instances never wait on each other).
    pub lock: &'static str,
    /// What the `UPDATE` returns: the message row only.
    pub returning: &'static str,
}

/// The statements of one dialect.
pub(super) struct StreamSql {
    /// Leases the oldest available messages for a stream. Binds: recipient,
    /// now, visibility_ms, max_attempts, limit, new holder tag.
    pub lease_available: String,
    /// Takes over what another stream holds. Binds: as `lease_available`,
    /// then the earlier holder's tag.
    pub lease_from: String,
}

/// Matches rows whose lease id starts with the tag bound at `$n`.
fn held_by(n: u8) -> String {
    format!(
        "state = 'leased' AND substr(lease_id, 1, length(CAST(${n} AS TEXT))) = CAST(${n} AS TEXT)"
    )
}

/// One statement picks the rows (`filter`, `order`) in a CTE (PostgreSQL
/// materialises it once, so the locked pick is never re-run by the join;
/// the limit is an expression so SQLite prepares it once, see `LEASE` in
/// `sqlite/ops.rs`)
/// and moves each to
/// `leased` under the new holder's tag, `expired` past its TTL or `dead` at
/// the attempt limit, exactly as `Store::lease` does.
fn lease_statement(d: &Dialect, filter: &str, order: &str) -> String {
    format!(
        "WITH picked AS (
    SELECT seq AS picked_seq,
           available_at AS was_available_at,
           CASE WHEN expires_at <= $2 THEN 'expired'
                WHEN state = 'leased' AND attempts >= $4 THEN 'dead'
                ELSE 'leased' END AS next_state
    FROM messages
    WHERE recipient = $1 AND {filter}
    ORDER BY {order}
    LIMIT CAST($5 AS INTEGER){lock}
)
UPDATE messages SET
    state = picked.next_state,
    attempts = CASE WHEN picked.next_state = 'leased' THEN attempts + 1 ELSE attempts END,
    lease_id = CASE WHEN picked.next_state = 'leased' THEN CAST($6 AS TEXT) || {random} END,
    lease_until = CASE WHEN picked.next_state = 'leased' THEN $2 + $3 END,
    visible_at = picked.was_available_at,
    ended_at = CASE WHEN picked.next_state = 'leased' THEN ended_at ELSE $2 END,
    dead_reason = CASE WHEN picked.next_state = 'dead' THEN 'max_attempts' ELSE dead_reason END,
    updated_at = $2
FROM picked
WHERE messages.seq = picked.picked_seq
RETURNING {returning}",
        random = d.random_id,
        lock = d.lock,
        returning = d.returning,
    )
}

impl StreamSql {
    /// Builds the statements of `dialect` (once per backend, at first use).
    pub(super) fn new(d: &Dialect) -> Self {
        StreamSql {
            lease_available: lease_statement(
                d,
                "state IN ('queued', 'leased') AND available_at <= $2",
                "available_at, seq",
            ),
            lease_from: lease_statement(d, &held_by(7), "available_at, seq"),
        }
    }
}

/// Unsettled leases of a stream still running. Binds: recipient, tag, now.
static COUNT_HELD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT COUNT(*) AS n FROM messages WHERE recipient = $1 AND {} AND lease_until > $3",
        held_by(2)
    )
});

/// Ends a stream's leases as an expired lease ends. Binds: recipient, tag,
/// now, max_attempts. Returns each released row's new state.
static RELEASE_HELD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE messages SET
    state = CASE WHEN attempts >= $4 THEN 'dead' ELSE 'queued' END,
    lease_id = NULL,
    lease_until = NULL,
    visible_at = CASE WHEN attempts >= $4 THEN visible_at ELSE $3 END,
    ended_at = CASE WHEN attempts >= $4 THEN $3 ELSE ended_at END,
    dead_reason = CASE WHEN attempts >= $4 THEN 'max_attempts' ELSE dead_reason END,
    updated_at = $3
WHERE recipient = $1 AND {}
RETURNING state",
        held_by(2)
    )
});

/// Counts a release's outcome from the states `RELEASE_HELD` returned.
pub(super) fn released(states: &[String]) -> ReclaimCounts {
    let dead = states.iter().filter(|s| *s == "dead").count() as u64;
    ReclaimCounts {
        requeued: states.len() as u64 - dead,
        dead,
    }
}

/// Adds one lease round's grants to `leased`; false when the round found
/// fewer candidates than `wanted` (no further round can find more).
pub(super) fn take_round(
    leased: &mut Vec<Message>,
    wanted: usize,
    rows: Vec<(i64, Message)>,
) -> bool {
    let touched = rows.len();
    leased.extend(super::sql::granted_in_order(rows));
    touched >= wanted
}

/// `Store::lease_held` with the dialect's statements `s`: lease rounds until
/// `max_messages` are leased or a round finds no more candidates (messages
/// expired or dead-lettered on the way do not count, as in `Store::lease`).
/// Each round is one atomic statement.
pub(super) async fn lease_held(
    c: &mut impl SqlConn,
    s: &StreamSql,
    request: &LeaseRequest,
    holder: &str,
    from: Option<&str>,
) -> StoreResult<Vec<Message>> {
    let sql = match from {
        None => s.lease_available.as_str(),
        Some(_) => s.lease_from.as_str(),
    };
    let tag = holder_tag(holder);
    let from_tag = from.map(holder_tag);
    // `lease_available` takes no earlier holder: bind only what it names.
    let bound = if from.is_some() { 7 } else { 6 };
    let mut leased = Vec::new();
    while leased.len() < request.max_messages {
        let wanted = request.max_messages - leased.len();
        let rows = c
            .rows(
                sql,
                &args![
                    &request.recipient,
                    request.now,
                    request.visibility_ms,
                    request.max_attempts,
                    limit(wanted),
                    &tag,
                    &from_tag,
                ][..bound],
                |r| super::sql::message_from_row(r),
            )
            .await?;
        if !take_round(&mut leased, wanted, rows) {
            break;
        }
    }
    Ok(leased)
}

/// `Store::count_held`.
pub(super) async fn count_held(
    c: &mut impl SqlConn,
    recipient: &str,
    holder: &str,
    now: Millis,
) -> StoreResult<u64> {
    let n = c
        .row(
            COUNT_HELD.as_str(),
            args![recipient, &holder_tag(holder), now],
            |r| r.unsigned::<u64>("n"),
        )
        .await?;
    Ok(n.unwrap_or(0))
}

/// `Store::release_held`, without a wake-up (PostgreSQL's caller sends it).
pub(super) async fn release_held(
    c: &mut impl SqlConn,
    recipient: &str,
    holder: &str,
    now: Millis,
    max_attempts: u32,
) -> StoreResult<ReclaimCounts> {
    let states = c
        .rows(
            RELEASE_HELD.as_str(),
            args![recipient, &holder_tag(holder), now, max_attempts],
            |r| r.text("state"),
        )
        .await?;
    Ok(released(&states))
}
