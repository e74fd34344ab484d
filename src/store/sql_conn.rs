//! The one interface the shared SQL operations ([`super::sql_ops`]) run on,
//! so each operation is written once for SQLite and PostgreSQL.
//!
//! An operation is an `async fn` generic over [`SqlConn`]. PostgreSQL's
//! connection awaits the server; SQLite's runs each statement synchronously
//! on the thread that polls it and never returns `Pending`, so the writer
//! thread drives a whole operation with [`run_now`] (no runtime, no
//! hand-off per statement).
//!
//! Statements are written once with `$n` placeholders (SQLite binds them by
//! number) and in the SQL both dialects accept: `CAST($n AS TEXT)` where
//! PostgreSQL must be told a parameter's type, `LEAST`/`GREATEST` (SQLite
//! gets them as functions, see `sqlite::conn`). What differs for real (row
//! locks, random ids, whole strategies) stays in small per-dialect pieces.

use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use super::sql::Columns;
use super::{Message, StoreResult};

/// One bound value, the same for both drivers.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    Bool(Option<bool>),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Arg::Text(v.as_deref())
    }
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl From<u32> for Arg<'_> {
    fn from(v: u32) -> Self {
        Arg::Int(Some(i64::from(v)))
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(Some(v))
    }
}

/// A flag a statement may leave unchanged (NULL), e.g. a group update's.
impl From<Option<bool>> for Arg<'_> {
    fn from(v: Option<bool>) -> Self {
        Arg::Bool(v)
    }
}

/// `args![a, b, c]`: the bound values of one statement, `$1` first.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        &[$($crate::store::sql_conn::Arg::from($value)),*]
    };
}
pub(super) use args;

/// The two SQL dialects, for the few clauses in which they really differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// A fresh random UUID v4 as text (lease ids).
    pub(super) fn uuid(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || \
                 substr(lower(hex(randomblob(2))), 2) || '-' || \
                 substr('89ab', 1 + (random() & 3), 1) || \
                 substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))))"
            }
            Dialect::Postgres => "gen_random_uuid()::text",
        }
    }

    /// Marks a placeholder bound by position, before its number: SQLite's
    /// `?n` is bound without a name lookup (the multi-row inserts), and
    /// PostgreSQL numbers every placeholder `$n`.
    pub(super) fn positional(self) -> char {
        match self {
            Dialect::Sqlite => '?',
            Dialect::Postgres => '$',
        }
    }

    /// Ends a sub-select that picks rows to change: PostgreSQL locks them
    /// and skips rows other transactions hold, so hub instances never wait
    /// on each other; SQLite has one writer and no row locks.
    pub(super) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// What an `UPDATE <table> … FROM` returns to give the updated rows
    /// alone (SQLite's `RETURNING` sees only the updated table and refuses
    /// `table.*`; PostgreSQL's `*` would add the joined columns).
    pub(super) fn returning_row(self, table: &str) -> String {
        match self {
            Dialect::Sqlite => "*".to_string(),
            Dialect::Postgres => format!("{table}.*"),
        }
    }

    /// Ends a read of a row that must go on existing, unchanged, until the
    /// operation commits (the agent a group is created for, the group a post
    /// goes to).
    pub(super) fn for_share(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR SHARE",
        }
    }

    /// Ends a select of rows a statement is about to change: PostgreSQL
    /// locks them in the select's order, so two statements over the same
    /// rows queue instead of deadlocking.
    pub(super) fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

/// A statement built from a dialect's clauses, once per dialect, at first use.
pub(super) struct ByDialect {
    built: [OnceLock<String>; 2],
    build: fn(Dialect) -> String,
}

impl ByDialect {
    /// The statement `build` makes.
    pub(super) const fn new(build: fn(Dialect) -> String) -> Self {
        ByDialect {
            built: [OnceLock::new(), OnceLock::new()],
            build,
        }
    }

    /// The statement in `dialect`.
    pub(super) fn get(&self, dialect: Dialect) -> &str {
        self.built[dialect as usize].get_or_init(|| (self.build)(dialect))
    }
}

/// A connection (or open transaction) the shared operations run statements
/// on. Multi-statement operations assume the caller made them atomic
/// (SQLite: a savepoint in the writer's group; PostgreSQL: a transaction).
pub(super) trait SqlConn {
    /// A result row.
    type Row<'r>: Columns;
    /// Whose SQL this connection speaks.
    const DIALECT: Dialect;

    /// Runs `sql` to its end, turning every row it returns into a `T`.
    async fn rows<T>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        read: impl FnMut(&Self::Row<'_>) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>>;

    /// Runs `sql`, which returns no rows; rows changed.
    async fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64>;

    /// Inserts whole messages (a group post's copies); a conflict (id or
    /// idempotency key) inserts nothing. How many were new. Per driver:
    /// SQLite writes many rows per statement with positional binds (hot),
    /// PostgreSQL one statement per message.
    async fn insert_messages(&mut self, messages: &[Message]) -> StoreResult<u64>;

    /// The first row `sql` returns, if any.
    async fn row<T>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        read: impl FnMut(&Self::Row<'_>) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        Ok(self.rows(sql, args, read).await?.into_iter().next())
    }
}

/// Drives a future that never waits (a shared operation on SQLite's
/// connection) to its end on this thread.
///
/// # Panics
/// If the future is pending: only SQLite's [`SqlConn`], which never waits,
/// may be driven this way.
pub(super) fn run_now<F: Future>(operation: F) -> F::Output {
    let mut operation = pin!(operation);
    match operation
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a SQLite operation waited"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_future_that_never_waits_runs_to_its_end() {
        assert_eq!(run_now(async { 40 + 2 }), 42);
    }

    #[test]
    #[should_panic(expected = "a SQLite operation waited")]
    fn a_waiting_future_is_refused() {
        run_now(std::future::pending::<()>());
    }
}
