//! Running statements on one rusqlite connection, the pool of read
//! connections, and SQLite errors as [`StoreError`]s.
//!
//! The statements are shared with PostgreSQL (`$1`-style placeholders, which
//! SQLite takes as named parameters): [`bind`] resolves each placeholder by
//! its number, so a statement may use `$2` before `$1` or `$1` twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::types::{FromSql, ToSql, ToSqlOutput};
use rusqlite::{Connection, ErrorCode, OpenFlags, Row, Statement};

use super::super::sql::Columns;
use super::super::sql_conn::{Arg, Dialect, SqlConn};
use super::super::{Message, StoreError, StoreResult};
use crate::config::SqliteSynchronous;

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection: every statement the backend
/// runs fits, so none is prepared twice.
const STATEMENT_CACHE: usize = 128;

/// Bind values of one statement, `$1` first.
pub(super) type Args<'a> = &'a [&'a dyn ToSql];

/// Maps a SQLite error: the environment (busy, locked, I/O, disk full,
/// cannot open) is `Unavailable`, anything else `Internal`.
pub(super) fn db_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

/// The database file a `sqlite:` URL names (`sqlite://admp.db?mode=rwc`,
/// `sqlite:///abs/path.db`, `sqlite:admp.db`); the query string is ignored
/// (the file is always created when missing).
pub fn path_from_url(url: &str) -> StoreResult<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::Internal(format!("DATABASE_URL: not a sqlite URL: {url}")))?;
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::Internal(
            "DATABASE_URL must name a file: an in-memory SQLite database is not shared \
             between connections (use STORAGE_BACKEND=memory instead)"
                .into(),
        ));
    }
    Ok(PathBuf::from(path))
}

/// Opens one connection with the hub's settings: WAL, the chosen
/// `synchronous`, the busy timeout, a statement cache for every statement.
pub(super) fn open(path: &Path, synchronous: SqliteSynchronous) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(db_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "journal_mode", "wal")
        .map_err(db_error)?;
    let synchronous = match synchronous {
        SqliteSynchronous::Full => "full",
        SqliteSynchronous::Normal => "normal",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(db_error)?;
    // Savepoints' sub-journals in memory, not in temporary files.
    conn.pragma_update(None, "temp_store", "memory")
        .map_err(db_error)?;
    add_least_greatest(&conn)?;
    Ok(conn)
}

/// PostgreSQL's `LEAST` and `GREATEST` (SQLite spells them `min` and `max`),
/// so the shared statements are written once. NULLs are ignored, as there.
fn add_least_greatest(conn: &Connection) -> StoreResult<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    for (name, pick) in [
        ("least", i64::min as fn(i64, i64) -> i64),
        ("greatest", i64::max),
    ] {
        conn.create_scalar_function(name, 2, flags, move |ctx| {
            let (a, b) = (ctx.get::<Option<i64>>(0)?, ctx.get::<Option<i64>>(1)?);
            Ok(match (a, b) {
                (Some(a), Some(b)) => Some(pick(a, b)),
                (one, other) => one.or(other),
            })
        })
        .map_err(db_error)?;
    }
    Ok(())
}

/// Pages the writer keeps cached (KiB, SQLite's negative `cache_size`): a
/// commit group's pages stay in memory until the commit instead of spilling
/// to the WAL halfway, and the hot part of the indexes stays cached.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

/// Opens the writing connection: [`open`], a larger page cache, and no
/// automatic checkpoints (the [`Checkpointer`] runs them off the writer's
/// thread).
pub(super) fn open_writer(path: &Path, synchronous: SqliteSynchronous) -> StoreResult<Connection> {
    let conn = open(path, synchronous)?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
        .map_err(db_error)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(db_error)?;
    Ok(conn)
}

/// How often the checkpointer copies the WAL back into the database. A
/// page changed many times between two checkpoints is copied once, so
/// checkpoints far apart copy less; 500 ms against 100 ms gave the fan-out
/// and the batch drain 8–10 % (docs/PERFORMANCE.md), and keeps the WAL to
/// what half a second of writes adds.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Checkpoints the WAL on a thread of its own, so the writer never stops a
/// commit group to copy pages and fsync the database file (SQLite's
/// automatic checkpoint runs inside the commit that crosses 1000 pages).
/// `PASSIVE`: it never waits for the writer or readers, and whatever it
/// cannot copy now it copies next time. Stops when dropped or stopped.
pub(super) struct Checkpointer {
    stop: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl Checkpointer {
    /// Starts checkpointing `path` every [`CHECKPOINT_EVERY`].
    pub(super) fn start(path: &Path, synchronous: SqliteSynchronous) -> StoreResult<Self> {
        let conn = open(path, synchronous)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::warn!(error = %e, "SQLite checkpoint failed; retrying");
                    }
                }
            })
            .map_err(|e| StoreError::Internal(format!("starting the SQLite checkpointer: {e}")))?;
        Ok(Checkpointer {
            stop: Mutex::new(Some(stop)),
        })
    }

    /// Stops the thread (its connection closes with it).
    pub(super) fn stop(&self) {
        self.stop.lock().take();
    }
}

/// Binds `args` to a statement written with `$n` placeholders.
fn bind(statement: &mut Statement<'_>, args: &[impl ToSql]) -> StoreResult<()> {
    for index in 1..=statement.parameter_count() {
        let n = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=args.len()).contains(n))
            .ok_or_else(|| {
                StoreError::Internal(format!("statement placeholder {index} unbound"))
            })?;
        statement
            .raw_bind_parameter(index, &args[n - 1])
            .map_err(db_error)?;
    }
    Ok(())
}

/// Runs a statement that returns no rows; rows changed.
pub(super) fn exec(conn: &Connection, sql: &str, args: Args<'_>) -> StoreResult<u64> {
    exec_with(conn, sql, args)
}

/// [`exec`] with bind values of one type.
fn exec_with(conn: &Connection, sql: &str, args: &[impl ToSql]) -> StoreResult<u64> {
    let mut statement = conn.prepare_cached(sql).map_err(db_error)?;
    bind(&mut statement, args)?;
    statement.raw_execute().map(|n| n as u64).map_err(db_error)
}

/// Runs a statement written with `?n` placeholders numbered `1..=args.len()`
/// in order, binding by position: for statements with hundreds of values
/// (multi-row inserts), where looking each placeholder's name up (linear in
/// SQLite) would cost more than the insert.
pub(super) fn exec_positional(conn: &Connection, sql: &str, args: Args<'_>) -> StoreResult<u64> {
    let mut statement = conn.prepare_cached(sql).map_err(db_error)?;
    if statement.parameter_count() != args.len() {
        return Err(StoreError::Internal(format!(
            "statement takes {} values, {} given",
            statement.parameter_count(),
            args.len()
        )));
    }
    for (index, value) in args.iter().enumerate() {
        statement
            .raw_bind_parameter(index + 1, value)
            .map_err(db_error)?;
    }
    statement.raw_execute().map(|n| n as u64).map_err(db_error)
}

/// One result row with its statement's column names: a column is found by
/// name with a string comparison per column (rusqlite's own lookup asks
/// SQLite for every column's name, for every lookup).
pub(super) struct Fields<'r, 's> {
    row: &'r Row<'s>,
    names: &'r [String],
}

impl Fields<'_, '_> {
    /// The column at `index`.
    pub(super) fn at<T: FromSql>(&self, index: usize) -> StoreResult<T> {
        self.row.get(index).map_err(db_error)
    }

    fn named<T: FromSql>(&self, column: &'static str) -> StoreResult<T> {
        let index = self
            .names
            .iter()
            .position(|name| name == column)
            .ok_or_else(|| StoreError::Internal(format!("no column {column} in the row")))?;
        self.row
            .get(index)
            .map_err(|e| StoreError::Internal(format!("corrupt {column} in storage: {e}")))
    }
}

impl Columns for Fields<'_, '_> {
    fn text_opt(&self, column: &'static str) -> StoreResult<Option<String>> {
        self.named(column)
    }
    fn int_opt(&self, column: &'static str) -> StoreResult<Option<i64>> {
        self.named(column)
    }
    fn flag(&self, column: &'static str) -> StoreResult<bool> {
        self.named(column)
    }
}

/// Runs a statement to its end, turning every row it returns into a `T`.
pub(super) fn rows<T>(
    conn: &Connection,
    sql: &str,
    args: Args<'_>,
    read: impl FnMut(&Fields<'_, '_>) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    rows_with(conn, sql, args, read)
}

/// [`rows`] with bind values of one type.
fn rows_with<T>(
    conn: &Connection,
    sql: &str,
    args: &[impl ToSql],
    mut read: impl FnMut(&Fields<'_, '_>) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut statement = conn.prepare_cached(sql).map_err(db_error)?;
    bind(&mut statement, args)?;
    let names: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db_error)? {
        out.push(read(&Fields { row, names: &names })?);
    }
    Ok(out)
}

/// The first row a statement returns, if any (the statement still runs to
/// its end, so a writing statement completes).
pub(super) fn row<T>(
    conn: &Connection,
    sql: &str,
    args: Args<'_>,
    read: impl FnMut(&Fields<'_, '_>) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    Ok(rows(conn, sql, args, read)?.into_iter().next())
}

/// A connection as the shared operations see it (`sql_conn`): every
/// statement runs to its end before the call returns.
pub(super) struct Sqlite<'c>(pub &'c Connection);

impl SqlConn for Sqlite<'_> {
    type Row<'r> = Fields<'r, 'r>;
    const DIALECT: Dialect = Dialect::Sqlite;

    async fn rows<T>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        mut read: impl FnMut(&Self::Row<'_>) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        rows_with(self.0, sql, args, |row| read(row))
    }

    async fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        exec_with(self.0, sql, args)
    }

    async fn insert_messages(&mut self, messages: &[Message]) -> StoreResult<u64> {
        super::ops::insert_messages(self.0, messages)
    }
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::ValueRef;
        Ok(ToSqlOutput::Borrowed(match *self {
            Arg::Text(Some(v)) => ValueRef::Text(v.as_bytes()),
            Arg::Int(Some(v)) => ValueRef::Integer(v),
            Arg::Bool(Some(v)) => ValueRef::Integer(i64::from(v)),
            Arg::Text(None) | Arg::Int(None) | Arg::Bool(None) => ValueRef::Null,
        }))
    }
}

/// Read connections beside the writer: a call takes one (opening one when
/// none is idle) and puts it back, keeping at most `max_idle` idle.
pub(super) struct Readers {
    path: PathBuf,
    synchronous: SqliteSynchronous,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl Readers {
    /// A pool of connections to `path`; opens none yet.
    pub(super) fn new(path: PathBuf, synchronous: SqliteSynchronous, max_idle: usize) -> Self {
        Readers {
            path,
            synchronous,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        }
    }

    /// Runs `read` on a read connection.
    pub(super) fn with<T>(
        &self,
        read: impl FnOnce(&Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let taken = self.idle.lock().pop();
        let conn = match taken {
            Some(conn) => conn,
            None => open(&self.path, self.synchronous)?,
        };
        let result = read(&conn);
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
        result
    }

    /// Closes the idle connections.
    pub(super) fn close(&self) {
        self.idle.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_file() {
        assert_eq!(
            path_from_url("sqlite://admp.db?mode=rwc").unwrap(),
            PathBuf::from("admp.db")
        );
        assert_eq!(
            path_from_url("sqlite:///tmp/x/admp.db").unwrap(),
            PathBuf::from("/tmp/x/admp.db")
        );
        assert_eq!(path_from_url("sqlite:a.db").unwrap(), PathBuf::from("a.db"));
        assert!(path_from_url("sqlite::memory:").is_err());
        assert!(path_from_url("postgres://x").is_err());
    }

    #[test]
    fn placeholders_bind_by_number() {
        let conn = Connection::open_in_memory().unwrap();
        let got = row(
            &conn,
            "SELECT $2 - $1 AS d, $2 AS again",
            &[&1_i64, &10_i64],
            |r| Ok((r.int("d").unwrap(), r.int("again").unwrap())),
        )
        .unwrap();
        assert_eq!(got, Some((9, 10)));
    }
}
