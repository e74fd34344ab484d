//! The console's listings and "retry now" on the SQL backends (SQLite and
//! PostgreSQL share the statements). Each listing is one indexed range scan
//! of one page (migrations 0030): agents by primary key from the search
//! prefix, dead letters by `messages_dead_all`, failing deliveries by
//! `deliveries_failing`.

use super::sql::{self, db_error, limit};
use super::*;

/// Binds: prefix (lower bound), upper bound, cursor (exclusive), limit.
pub(super) const SEARCH_AGENTS: &str = "SELECT * FROM agents \
     WHERE agent_id >= $1 AND agent_id < $2 AND agent_id > $3 \
     ORDER BY agent_id LIMIT $4";

/// Binds: cursor ended_at, cursor seq, limit.
pub(super) const DEAD_ALL: &str = "SELECT * FROM messages \
     WHERE state = 'dead' AND (ended_at, seq) > ($1, $2) \
     ORDER BY ended_at, seq LIMIT $3";

/// Binds: cursor updated_at, cursor id, limit. The WHERE clause is the
/// partial index's predicate, word for word, so the planners use it.
pub(super) const FAILING: &str = "SELECT * FROM deliveries \
     WHERE (state = 'failed' OR (state = 'pending' AND attempts > 0)) \
     AND (updated_at, id) < ($1, $2) \
     ORDER BY updated_at DESC, id DESC LIMIT $3";

/// Binds: now, id. Only a pending or failed delivery changes.
pub(super) const RETRY: &str = "UPDATE deliveries \
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

macro_rules! console_sql {
    ($pool:ty) => {
        /// See [`Store::search_agents`].
        pub(in crate::store) async fn search_agents(
            pool: &$pool,
            prefix: &str,
            page_size: usize,
            cursor: Option<&str>,
        ) -> StoreResult<Page<Agent>> {
            let rows = sqlx::query(SEARCH_AGENTS)
                .bind(prefix)
                .bind(prefix_upper_bound(prefix))
                .bind(cursor.unwrap_or(""))
                .bind(limit(page_size.saturating_add(1)))
                .fetch_all(pool)
                .await
                .map_err(db_error)?;
            let agents = rows
                .iter()
                .map(sql::agent_from_row)
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(paged(agents, page_size, |a| a.agent_id.clone()))
        }

        /// See [`Store::list_dead_all`].
        pub(in crate::store) async fn list_dead_all(
            pool: &$pool,
            page_size: usize,
            cursor: Option<&str>,
        ) -> StoreResult<Page<Message>> {
            let (after_at, after_seq) = match cursor {
                Some(c) => sql::parse_dead_cursor(c)?,
                None => (Millis::MIN, i64::MIN),
            };
            let rows = sqlx::query(DEAD_ALL)
                .bind(after_at)
                .bind(after_seq)
                .bind(limit(page_size.saturating_add(1)))
                .fetch_all(pool)
                .await
                .map_err(db_error)?;
            let messages = rows
                .iter()
                .map(sql::message_from_row)
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(dead_page(messages, page_size))
        }

        /// See [`Store::list_failing_deliveries`].
        pub(in crate::store) async fn list_failing_deliveries(
            pool: &$pool,
            page_size: usize,
            cursor: Option<&str>,
        ) -> StoreResult<Page<Delivery>> {
            let (before_at, before_id) = failing_bounds(cursor)?;
            let rows = sqlx::query(FAILING)
                .bind(before_at)
                .bind(before_id)
                .bind(limit(page_size.saturating_add(1)))
                .fetch_all(pool)
                .await
                .map_err(db_error)?;
            let deliveries = rows
                .iter()
                .map(sql::delivery_from_row)
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(paged(deliveries, page_size, failing_cursor))
        }

        /// See [`Store::retry_delivery`]; `writer` takes the update, then it is read back.
        pub(in crate::store) async fn retry_delivery(
            writer: &$pool,
            delivery_id: &str,
            now: Millis,
        ) -> StoreResult<Option<Delivery>> {
            sqlx::query(RETRY)
                .bind(now)
                .bind(delivery_id)
                .execute(writer)
                .await
                .map_err(db_error)?;
            sqlx::query("SELECT * FROM deliveries WHERE id = $1")
                .bind(delivery_id)
                .fetch_optional(writer)
                .await
                .map_err(db_error)?
                .map(|r| sql::delivery_from_row(&r))
                .transpose()
        }
    };
}

/// PostgreSQL.
pub(super) mod postgres {
    use super::*;
    console_sql!(sqlx::PgPool);
}
