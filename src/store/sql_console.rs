//! The console's listings and "retry now" on the SQL backends, each written
//! once over [`SqlConn`] for SQLite and PostgreSQL. Each listing is one
//! indexed range scan of one page (migrations 0030): agents by primary key
//! from the search prefix, dead letters by `messages_dead_all`, failing
//! deliveries by `deliveries_failing`.

use super::sql::{self, limit};
use super::sql_conn::{SqlConn, args};
use super::*;

/// Binds: prefix (lower bound), upper bound, cursor (exclusive), limit.
const SEARCH_AGENTS: &str = "SELECT * FROM agents \
     WHERE agent_id >= $1 AND agent_id < $2 AND agent_id > $3 \
     ORDER BY agent_id LIMIT $4";

/// Binds: cursor ended_at, cursor seq, limit.
const DEAD_ALL: &str = "SELECT * FROM messages \
     WHERE state = 'dead' AND (ended_at, seq) > ($1, $2) \
     ORDER BY ended_at, seq LIMIT $3";

/// Binds: cursor updated_at, cursor id, limit. The WHERE clause is the
/// partial index's predicate, word for word, so the planners use it.
const FAILING: &str = "SELECT * FROM deliveries \
     WHERE (state = 'failed' OR (state = 'pending' AND attempts > 0)) \
     AND (updated_at, id) < ($1, $2) \
     ORDER BY updated_at DESC, id DESC LIMIT $3";

/// Binds: now, id. Only a pending or failed delivery changes.
const RETRY: &str = "UPDATE deliveries \
     SET state = 'pending', next_attempt_at = $1, updated_at = $1 \
     WHERE id = $2 AND state IN ('pending', 'failed')";

/// Cuts `rows` (fetched with `limit + 1`) to a page, the cursor from its last item.
pub(super) fn paged<T>(
    mut rows: Vec<T>,
    page_size: usize,
    cursor: impl Fn(&T) -> String,
) -> Page<T> {
    let next_cursor = if rows.len() > page_size {
        rows.truncate(page_size);
        rows.last().map(cursor)
    } else {
        None
    };
    Page {
        items: rows,
        next_cursor,
    }
}

/// A dead-letter page from `limit + 1` rows with their `seq`.
pub(super) fn dead_page(found: Vec<(i64, Message)>, page_size: usize) -> Page<Message> {
    let page = paged(found, page_size, |(seq, m)| {
        sql::dead_cursor(m.ended_at.unwrap_or(m.updated_at), *seq)
    });
    Page {
        items: page.items.into_iter().map(|(_, m)| m).collect(),
        next_cursor: page.next_cursor,
    }
}

/// `(updated_at, id)` a failing-deliveries page starts below.
pub(super) fn failing_bounds(cursor: Option<&str>) -> StoreResult<(Millis, &str)> {
    match cursor {
        Some(c) => parse_pair_cursor(c),
        // Above every stored id ('~' follows every uuid character).
        None => Ok((Millis::MAX, "~")),
    }
}

/// The cursor after a failing delivery.
pub(super) fn failing_cursor(d: &Delivery) -> String {
    format!("{}.{}", d.updated_at, d.id)
}

/// `Store::search_agents`: a page of agents whose id starts with `prefix`.
pub(super) async fn search_agents(
    c: &mut impl SqlConn,
    prefix: &str,
    page_size: usize,
    cursor: Option<&str>,
) -> StoreResult<Page<Agent>> {
    let agents = c
        .rows(
            SEARCH_AGENTS,
            args![
                prefix,
                &prefix_upper_bound(prefix),
                cursor.unwrap_or(""),
                limit(page_size.saturating_add(1)),
            ],
            |r| sql::agent_from_row(r),
        )
        .await?;
    Ok(paged(agents, page_size, |a| a.agent_id.clone()))
}

/// `Store::list_dead_all`: a page of every inbox's dead letters.
pub(super) async fn list_dead_all(
    c: &mut impl SqlConn,
    page_size: usize,
    cursor: Option<&str>,
) -> StoreResult<Page<Message>> {
    let (after_at, after_seq) = match cursor {
        Some(c) => sql::parse_dead_cursor(c)?,
        None => (Millis::MIN, i64::MIN),
    };
    let found = c
        .rows(
            DEAD_ALL,
            args![after_at, after_seq, limit(page_size.saturating_add(1))],
            |r| sql::message_from_row(r),
        )
        .await?;
    Ok(dead_page(found, page_size))
}

/// `Store::list_failing_deliveries`: a page of failed or retrying deliveries.
pub(super) async fn list_failing_deliveries(
    c: &mut impl SqlConn,
    page_size: usize,
    cursor: Option<&str>,
) -> StoreResult<Page<Delivery>> {
    let (before_at, before_id) = failing_bounds(cursor)?;
    let deliveries = c
        .rows(
            FAILING,
            args![before_at, before_id, limit(page_size.saturating_add(1))],
            |r| sql::delivery_from_row(r),
        )
        .await?;
    Ok(paged(deliveries, page_size, failing_cursor))
}

/// `Store::retry_delivery`: the update, then the delivery read back.
pub(super) async fn retry_delivery(
    c: &mut impl SqlConn,
    delivery_id: &str,
    now: Millis,
) -> StoreResult<Option<Delivery>> {
    c.exec(RETRY, args![now, delivery_id]).await?;
    super::sql_agents::get_delivery(c, delivery_id).await
}
