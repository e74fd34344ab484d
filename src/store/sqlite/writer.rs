//! Group commit on one dedicated writer thread.
//!
//! Every write operation is a closure sent to the thread that owns SQLite's
//! only writing connection. The thread takes whatever is queued (up to
//! [`MAX_GROUP`] operations, never waiting for more: a lone request is
//! committed at once), runs them one after the other inside one
//! `BEGIN IMMEDIATE` transaction and commits once, so a group of N sends
//! costs one commit (one fsync under `synchronous=full`) instead of N, and
//! one hand-off between threads per operation (the closure runs all of an
//! operation's statements without coming back to the async runtime). While
//! one group commits, the next one gathers in the queue.
//!
//! - **Each operation stays all-or-nothing on its own**: an operation that may
//!   write more than one statement runs inside a savepoint, rolled back when
//!   it fails; a one-statement operation is atomic by itself (SQLite undoes a
//!   failed statement and keeps the transaction). A failing operation
//!   therefore changes nothing and affects no other operation of its group.
//! - **Answered only when durable**: an operation's result is held until the
//!   commit of its group returned; if the commit fails, every operation of the
//!   group gets that error (none of them happened).
//! - **When the database itself fails** (I/O error, disk full, lock timeout:
//!   [`StoreError::Unavailable`]) SQLite may have rolled back the whole
//!   transaction, so the group stops there, is rolled back, and all of its
//!   operations get the error; nothing of it is committed.

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::conn::exec;
use crate::store::{StoreError, StoreResult};

/// Most operations one commit holds: bounds the wait of the first operation
/// of a group behind the others.
pub(super) const MAX_GROUP: usize = 256;
/// Operations waiting for the writer beyond this make callers wait to queue.
const QUEUE: usize = 4096;

/// How an operation ended inside its group.
enum Verdict {
    /// Succeeded (its writes stay in the group's transaction).
    Done,
    /// Refused or failed on its own: its savepoint (if any) is rolled back.
    Refused,
    /// The database failed: the whole group is rolled back.
    Broken(StoreError),
}

/// Sends the caller its result once the group's fate is known (`Some` error
/// when the group was not committed).
type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// One queued write operation.
trait Op: Send {
    /// Runs the operation on the writer's open transaction.
    fn run(self: Box<Self>, conn: &Connection) -> (Verdict, Reply);
    /// Answers the caller without running (the group could not start).
    fn fail(self: Box<Self>, error: &StoreError);
}

struct Queued<T, F> {
    op: F,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Op for Queued<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> (Verdict, Reply) {
        let Queued { op, reply } = *self;
        let result = op(conn);
        let verdict = match &result {
            Ok(_) => Verdict::Done,
            Err(StoreError::Unavailable(e)) => Verdict::Broken(StoreError::Unavailable(e.clone())),
            Err(_) => Verdict::Refused,
        };
        let reply: Reply = Box::new(move |failed: Option<&StoreError>| {
            let _ = reply.send(match (failed, result) {
                (Some(e), Ok(_)) => Err(replicate(e)),
                (_, result) => result,
            });
        });
        (verdict, reply)
    }

    fn fail(self: Box<Self>, error: &StoreError) {
        let _ = self.reply.send(Err(replicate(error)));
    }
}

/// One error for many callers.
fn replicate(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(e) => StoreError::Unavailable(e.clone()),
        other => StoreError::Internal(other.to_string()),
    }
}

enum Job {
    Write {
        /// Wrap in a savepoint: the operation may write more than one statement.
        several_writes: bool,
        op: Box<dyn Op>,
    },
    /// Close the connection (checkpointing the WAL) and stop.
    Stop(oneshot::Sender<()>),
}

/// The queue in front of the writer thread.
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the SQLite writer has stopped".into())
}

impl Writer {
    /// Starts the writer thread, which owns `conn` from now on.
    pub(super) fn start(conn: Connection) -> StoreResult<Self> {
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, queue))
            .map_err(|e| StoreError::Internal(format!("starting the SQLite writer: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Runs `op` in the next group and answers once that group is committed.
    /// `several_writes`: the operation may run more than one writing
    /// statement and may fail after one of them, so it gets a savepoint of
    /// its own.
    pub(super) async fn write<T, F>(&self, several_writes: bool, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job::Write {
            several_writes,
            op: Box::new(Queued { op, reply }),
        };
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Finishes the queued operations, then closes the writing connection.
    pub(super) async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.jobs.send(Job::Stop(done)).await.is_ok() {
            let _ = stopped.await;
        }
    }
}

fn run(conn: Connection, mut queue: mpsc::Receiver<Job>) {
    let mut group: Vec<(bool, Box<dyn Op>)> = Vec::with_capacity(MAX_GROUP);
    let mut stop = None;
    while stop.is_none() {
        let Some(first) = queue.blocking_recv() else {
            break;
        };
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write { several_writes, op } => group.push((several_writes, op)),
                Job::Stop(done) => {
                    stop = Some(done);
                    break;
                }
            }
            if group.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit_group(&conn, std::mem::take(&mut group));
        }
    }
    queue.close();
    while let Ok(job) = queue.try_recv() {
        match job {
            Job::Write { op, .. } => op.fail(&stopped()),
            Job::Stop(done) => {
                let _ = done.send(());
            }
        }
    }
    drop(conn);
    if let Some(done) = stop {
        let _ = done.send(());
    }
}

fn commit_group(conn: &Connection, group: Vec<(bool, Box<dyn Op>)>) {
    if let Err(e) = statement(conn, "BEGIN IMMEDIATE") {
        for (_, op) in group {
            op.fail(&e);
        }
        return;
    }
    let mut replies: Vec<Reply> = Vec::with_capacity(group.len());
    let mut jobs = group.into_iter();
    let mut broken = None;
    for (several_writes, op) in jobs.by_ref() {
        let (verdict, reply) = match run_one(conn, several_writes, op) {
            Ok(ran) => ran,
            Err(e) => {
                broken = Some(e);
                break;
            }
        };
        replies.push(reply);
        if let Verdict::Broken(e) = verdict {
            broken = Some(e);
            break;
        }
    }
    let outcome = match broken {
        None => statement(conn, "COMMIT"),
        Some(e) => {
            if !conn.is_autocommit() {
                let _ = statement(conn, "ROLLBACK");
            }
            Err(e)
        }
    };
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = statement(conn, "ROLLBACK");
    }
    let failed = outcome.err();
    for reply in replies {
        reply(failed.as_ref());
    }
    if let Some(e) = &failed {
        for (_, op) in jobs {
            op.fail(e);
        }
    }
}

/// Runs one operation, in a savepoint when it may write several statements.
fn run_one(
    conn: &Connection,
    several_writes: bool,
    op: Box<dyn Op>,
) -> StoreResult<(Verdict, Reply)> {
    if !several_writes {
        return Ok(op.run(conn));
    }
    if let Err(e) = statement(conn, "SAVEPOINT op") {
        op.fail(&e);
        return Err(e);
    }
    let (verdict, reply) = op.run(conn);
    let closed = match verdict {
        Verdict::Done => statement(conn, "RELEASE op"),
        Verdict::Refused => {
            statement(conn, "ROLLBACK TO op").and_then(|()| statement(conn, "RELEASE op"))
        }
        Verdict::Broken(_) => Ok(()),
    };
    if let Err(e) = closed {
        reply(Some(&e));
        return Err(e);
    }
    Ok((verdict, reply))
}

/// Runs one transaction-control statement (prepared once, cached).
fn statement(conn: &Connection, sql: &str) -> StoreResult<()> {
    exec(conn, sql, &[]).map(drop)
}
