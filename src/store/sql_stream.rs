//! The stream-lease operations (`Store::lease_held`, `count_held`,
//! `release_held`), each written once over [`SqlConn`] for SQLite and
//! PostgreSQL. A stream's leases are
//! the rows whose `lease_id` starts with its tag (`<stream_id>~`); the lease
//! statements are `Store::lease`'s (`sql_ops::lease_statement`) with the
//! tag in front of the lease id.

use std::sync::LazyLock;

use super::sql::Columns;
use super::sql_conn::{ByDialect, Dialect, SqlConn, args};
use super::sql_ops::{AVAILABLE, end_lease, lease_rounds, lease_statement};
use super::{LeaseRequest, Message, Millis, ReclaimCounts, StoreResult, holder_tag};

/// Matches rows whose lease id starts with the tag bound at `$n`. With
/// the inbox's recipient, `messages_ready` finds them: its predicate is
/// repeated word for word so SQLite sees that the index applies.
fn held_by(n: u8) -> String {
    format!(
        "state IN ('queued', 'leased') AND state = 'leased' \
         AND substr(lease_id, 1, length(CAST(${n} AS TEXT))) = CAST(${n} AS TEXT)"
    )
}

/// A stream's lease id: its holder tag (bound at `$6`), then a UUID.
fn tagged_lease_id(d: Dialect) -> String {
    format!("CAST($6 AS TEXT) || {}", d.uuid())
}

/// Leases the oldest available messages for a stream (`sql_ops`'s lease
/// statement under the stream's tag). Binds: recipient, now,
/// visibility_ms, max_attempts, limit, new holder tag.
pub(super) static LEASE_AVAILABLE: ByDialect =
    ByDialect::new(|d| lease_statement(d, AVAILABLE, &tagged_lease_id(d)));

/// Takes over what another stream holds. Binds: as [`LEASE_AVAILABLE`],
/// then the earlier holder's tag.
pub(super) static LEASE_FROM: ByDialect =
    ByDialect::new(|d| lease_statement(d, &held_by(7), &tagged_lease_id(d)));

/// Unsettled leases of a stream still running. Binds: recipient, tag, now.
pub(super) static COUNT_HELD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT COUNT(*) AS n FROM messages WHERE recipient = $1 AND {} AND lease_until > $3",
        held_by(2)
    )
});

/// Ends a stream's leases as an expired lease ends. Binds: recipient, tag,
/// now, max_attempts. Returns each released row's new state.
pub(super) static RELEASE_HELD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE messages SET
    {}
WHERE recipient = $1 AND {}
RETURNING state",
        end_lease("$4", "$3", "$3"),
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

/// `Store::lease_held`: lease rounds as in `Store::lease`, under the
/// stream's tag, taking over `from`'s leases when given.
pub(super) async fn lease_held<C: SqlConn>(
    c: &mut C,
    request: &LeaseRequest,
    holder: &str,
    from: Option<&str>,
) -> StoreResult<Vec<Message>> {
    let tag = holder_tag(holder);
    let from_tag = from.map(holder_tag);
    match &from_tag {
        None => lease_rounds(c, LEASE_AVAILABLE.get(C::DIALECT), request, args![&tag]).await,
        Some(from_tag) => {
            lease_rounds(
                c,
                LEASE_FROM.get(C::DIALECT),
                request,
                args![&tag, from_tag],
            )
            .await
        }
    }
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
