//! SQLite's own piece of the shared operations: inserting many messages per
//! statement with values bound by position (binding hundreds of values by
//! name is quadratic in SQLite: it finds each name by a linear walk).

use rusqlite::Connection;

use super::conn::exec_positional;
use crate::store::sql::to_json_opt;
use crate::store::sql_conn::Dialect;
use crate::store::sql_ops::{INSERT_CHUNK, INSERT_MESSAGE, INSERT_MESSAGES, MESSAGE_ARITY};
use crate::store::*;

/// A message's bind values in `sql_ops::MESSAGE_COLUMNS` order; `result` is
/// its JSON text, encoded by the caller.
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
    let mut chunks = messages.chunks_exact(INSERT_CHUNK);
    let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(INSERT_CHUNK * MESSAGE_ARITY);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        args.clear();
        for (m, result) in chunk.iter().zip(&results[offset..]) {
            args.extend(message_args(m, result));
        }
        inserted += exec_positional(conn, INSERT_MESSAGES.get(Dialect::Sqlite), &args)?;
        offset += INSERT_CHUNK;
    }
    for (m, result) in chunks.remainder().iter().zip(&results[offset..]) {
        let sql = INSERT_MESSAGE.get(Dialect::Sqlite);
        inserted += exec_positional(conn, sql, &message_args(m, result))?;
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::super::conn::Sqlite;
    use super::*;
    use crate::store::sql_conn::{Dialect as SqlDialect, run_now};
    use crate::store::{sql_ops, sql_stream};

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
            run_now(sql_ops::lease(&mut Sqlite(&conn), request)).unwrap();
        }
        let statement = conn
            .prepare_cached(sql_ops::LEASE.get(SqlDialect::Sqlite))
            .unwrap();
        assert_eq!(statement.get_status(StatementStatus::RePrepare), 0);
    }

    #[test]
    fn stream_leases_are_prepared_once() {
        let (conn, requests) = lease_requests();
        let holder = "0123456789abcdef0123456789abcdef";
        for request in &requests {
            for from in [None, Some("fedcba9876543210fedcba9876543210")] {
                let mut c = Sqlite(&conn);
                run_now(sql_stream::lease_held(&mut c, request, holder, from)).unwrap();
            }
        }
        for sql in [&sql_stream::LEASE_AVAILABLE, &sql_stream::LEASE_FROM] {
            let sql = sql.get(SqlDialect::Sqlite);
            let statement = conn.prepare_cached(sql).unwrap();
            assert_eq!(statement.get_status(StatementStatus::RePrepare), 0);
        }
    }

    /// Every statement that reads one inbox finds its rows through an index
    /// (a partial index applies only when SQLite sees that the statement's
    /// predicate implies the index's, so a reworded predicate would quietly
    /// turn a search into a scan of every message).
    #[test]
    fn inbox_statements_search_an_index() {
        let (conn, _) = lease_requests();
        let statements = [
            sql_ops::LEASE.get(SqlDialect::Sqlite),
            sql_ops::RECLAIM_INBOX.get(SqlDialect::Sqlite),
            sql_ops::INBOX_STATS,
            sql_ops::LIST_DEAD,
            crate::store::sql_peek::PEEK_QUEUED,
            sql_stream::LEASE_AVAILABLE.get(SqlDialect::Sqlite),
            sql_stream::LEASE_FROM.get(SqlDialect::Sqlite),
            &sql_stream::COUNT_HELD,
            &sql_stream::RELEASE_HELD,
        ];
        for sql in statements {
            let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            // Unbound placeholders are NULL: the plan does not depend on them.
            let mut rows = plan.raw_query();
            let mut steps: Vec<String> = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                steps.push(row.get(3).unwrap());
            }
            assert!(
                steps.iter().all(|step| !step.starts_with("SCAN messages")),
                "{sql}\n{steps:?}"
            );
        }
    }
}
