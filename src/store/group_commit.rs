//! Group commit for SQLite's one writer connection.
//!
//! Every write operation is queued to one writer task. The task takes
//! whatever is queued (up to [`MAX_GROUP`] operations, never waiting for more:
//! a lone request is committed at once), runs them one after the other inside
//! one `BEGIN IMMEDIATE` transaction and commits once, so a group of N sends
//! costs one commit (one fsync under `synchronous=full`) instead of N. While
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

use futures::future::BoxFuture;
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::sql::db_error;
use super::{StoreError, StoreResult};

/// Most operations one commit holds: bounds the wait of the first operation
/// of a group behind the others (about 10 µs of writer time each).
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
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, (Verdict, Reply)>;
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
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
{
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, (Verdict, Reply)> {
        let Queued { op, reply } = *self;
        Box::pin(async move {
            let result = op(conn).await;
            let verdict = match &result {
                Ok(_) => Verdict::Done,
                Err(StoreError::Unavailable(e)) => {
                    Verdict::Broken(StoreError::Unavailable(e.clone()))
                }
                Err(_) => Verdict::Refused,
            };
            let reply: Reply = Box::new(move |failed: Option<&StoreError>| {
                let _ = reply.send(match (failed, result) {
                    (Some(e), Ok(_)) => Err(replicate(e)),
                    (_, result) => result,
                });
            });
            (verdict, reply)
        })
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

struct Job {
    /// Wrap in a savepoint: the operation may write more than one statement.
    several_writes: bool,
    op: Box<dyn Op>,
}

/// The queue in front of the writer task.
pub(super) struct GroupWriter {
    jobs: mpsc::Sender<Job>,
}

impl GroupWriter {
    /// Starts the writer task on `pool` (a one-connection pool).
    pub(super) fn start(pool: SqlitePool) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, queue));
        GroupWriter { jobs }
    }

    /// Runs `op` in the next group and answers once that group is committed.
    /// `several_writes`: the operation may run more than one writing
    /// statement, so it gets a savepoint of its own.
    pub(super) async fn write<T, F>(&self, several_writes: bool, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            several_writes,
            op: Box::new(Queued { op, reply }),
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?
    }
}

async fn run(pool: SqlitePool, mut queue: mpsc::Receiver<Job>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        commit_group(&pool, std::mem::take(&mut group)).await;
    }
}

async fn commit_group(pool: &SqlitePool, group: Vec<Job>) {
    let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => {
            let e = db_error(e);
            for job in group {
                job.op.fail(&e);
            }
            return;
        }
    };
    let mut replies: Vec<Reply> = Vec::with_capacity(group.len());
    let mut jobs = group.into_iter();
    let mut broken = None;
    for job in jobs.by_ref() {
        let (verdict, reply) = match run_one(&mut tx, job).await {
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
        None => tx.commit().await.map_err(db_error),
        Some(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    };
    let failed = outcome.err();
    for reply in replies {
        reply(failed.as_ref());
    }
    if let Some(e) = &failed {
        for job in jobs {
            job.op.fail(e);
        }
    }
}

/// Runs one job, in a savepoint when it may write several statements.
async fn run_one(tx: &mut Transaction<'static, Sqlite>, job: Job) -> StoreResult<(Verdict, Reply)> {
    if !job.several_writes {
        return Ok(job.op.run(tx).await);
    }
    savepoint(tx, "SAVEPOINT op").await?;
    let (verdict, reply) = job.op.run(tx).await;
    match verdict {
        Verdict::Done => savepoint(tx, "RELEASE op").await?,
        Verdict::Refused => {
            savepoint(tx, "ROLLBACK TO op").await?;
            savepoint(tx, "RELEASE op").await?;
        }
        Verdict::Broken(_) => {}
    }
    Ok((verdict, reply))
}

async fn savepoint(
    tx: &mut Transaction<'static, Sqlite>,
    statement: &'static str,
) -> StoreResult<()> {
    sqlx::query(statement)
        .execute(&mut **tx)
        .await
        .map(drop)
        .map_err(db_error)
}
