//! SQL of the stream-lease operations (`Store::lease_held`, `count_held`,
//! `release_held`), shared by SQLite and PostgreSQL. A stream's leases are
//! the rows whose `lease_id` starts with its tag (`<stream_id>~`); the
//! statements differ between the two only in how a random id is made and in
//! PostgreSQL's row locks, which [`Dialect`] supplies.

use std::future::Future;
use std::sync::LazyLock;

use super::{Message, StoreResult};

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
pub(super) static COUNT_HELD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT COUNT(*) FROM messages WHERE recipient = $1 AND {} AND lease_until > $3",
        held_by(2)
    )
});

/// Ends a stream's leases as an expired lease ends. Binds: recipient, tag,
/// now, max_attempts. Returns each released row's new state.
pub(super) static RELEASE_HELD: LazyLock<String> = LazyLock::new(|| {
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
pub(super) fn released(states: &[String]) -> super::ReclaimCounts {
    let dead = states.iter().filter(|s| *s == "dead").count() as u64;
    super::ReclaimCounts {
        requeued: states.len() as u64 - dead,
        dead,
    }
}

/// Runs lease rounds until `max` messages are leased or a round finds no
/// more candidates: messages expired or dead-lettered on the way do not
/// count against `max` (as `Store::lease` in both backends). `round(n)` is
/// one atomic statement returning the rows it changed, with their `seq`.
pub(super) async fn lease_rounds<F, Fut>(max: usize, mut round: F) -> StoreResult<Vec<Message>>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = StoreResult<Vec<(i64, Message)>>>,
{
    let mut leased = Vec::new();
    while leased.len() < max {
        let wanted = max - leased.len();
        if !take_round(&mut leased, wanted, round(wanted).await?) {
            break;
        }
    }
    Ok(leased)
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

/// Expands to the stream-lease operations of one SQL backend, as inherent
/// methods the `Store` impl delegates to (`async_trait` cannot see into a
/// macro): `stream_ops!(Store type, its StreamSql static, reader pool field)`.
/// The backend supplies `fetch_all(query)`, which runs a write (SQLite: in
/// the next commit group).
macro_rules! stream_ops {
    ($store:ty, $statements:ident, $reader:ident) => {
        impl $store {
            /// `Store::lease_held`.
            async fn held_lease(
                &self,
                request: &LeaseRequest,
                holder: &str,
                from: Option<&str>,
            ) -> StoreResult<Vec<Message>> {
                let sql = match from {
                    None => $statements.lease_available.as_str(),
                    Some(_) => $statements.lease_from.as_str(),
                };
                sql_stream::lease_rounds(request.max_messages, |wanted| {
                    let mut query = sqlx::query(sql)
                        .bind(request.recipient.clone())
                        .bind(request.now)
                        .bind(request.visibility_ms)
                        .bind(i64::from(request.max_attempts))
                        .bind(limit(wanted))
                        .bind(holder_tag(holder));
                    if let Some(from) = from {
                        query = query.bind(holder_tag(from));
                    }
                    async move {
                        let rows = self.fetch_all(query).await?;
                        rows.iter().map(sql::message_from_row).collect()
                    }
                })
                .await
            }

            /// `Store::count_held`.
            async fn held_count(
                &self,
                recipient: &str,
                holder: &str,
                now: Millis,
            ) -> StoreResult<u64> {
                let n: i64 = sqlx::query_scalar(sql_stream::COUNT_HELD.as_str())
                    .bind(recipient.to_string())
                    .bind(holder_tag(holder))
                    .bind(now)
                    .fetch_one(&self.$reader)
                    .await
                    .map_err(db_error)?;
                Ok(n as u64)
            }

            /// `Store::release_held`, without the wake-up.
            async fn held_release(
                &self,
                recipient: &str,
                holder: &str,
                now: Millis,
                max_attempts: u32,
            ) -> StoreResult<ReclaimCounts> {
                let query = sqlx::query(sql_stream::RELEASE_HELD.as_str())
                    .bind(recipient.to_string())
                    .bind(holder_tag(holder))
                    .bind(now)
                    .bind(i64::from(max_attempts));
                let rows = self.fetch_all(query).await?;
                let states = rows
                    .iter()
                    .map(|r| r.try_get("state").map_err(db_error))
                    .collect::<StoreResult<Vec<String>>>()?;
                Ok(sql_stream::released(&states))
            }
        }
    };
}
pub(super) use stream_ops;
