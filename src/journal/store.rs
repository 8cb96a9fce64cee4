//! Where writes go: the storage behind [`Journal`](super::Journal). Both backends run the
//! same [`run_job`]; they differ only in how writes share a transaction.
//!
//! - **SQLite**: one writer task owns the only writing connection, which lives on a thread
//!   of its own ([`SqliteThread`]). It takes every write waiting at that moment and hands
//!   them to that thread at once, which runs them in one `BEGIN IMMEDIATE` transaction
//!   (the write lock from the first statement, so another process writing the same file
//!   cannot slip in between a check and an insert) and commits — one fsync for all of
//!   them (group commit) — and then the task answers each caller. One hand-over between
//!   threads per batch, where sqlx's SQLite driver costs two per statement.
//! - **PostgreSQL**: each write is its own transaction on the pool; PostgreSQL does its
//!   own group commit across connections.

use super::statements::{run_job, Job, Written};
use super::JournalError;
use baton_ops::exec::Exec;
use baton_ops::sqlite::SqliteThread;
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

/// Largest number of writes committed together.
const MAX_BATCH: usize = 512;

type Done = oneshot::Sender<Result<Written, JournalError>>;

/// The journal's writer.
#[derive(Clone)]
pub(super) enum Store {
    /// SQLite's group-commit writer task.
    Batched(mpsc::Sender<(Job, Done)>),
    /// PostgreSQL: a transaction per write, on the shared pool.
    Pooled(AnyPool),
}

impl Store {
    /// Starts the writer task on `thread`, SQLite's one writing connection.
    pub(super) fn batched(thread: SqliteThread) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_batches(thread, queue));
        Store::Batched(jobs)
    }

    /// Runs `job` and answers once it is committed.
    pub(super) async fn write(&self, job: Job) -> Result<Written, JournalError> {
        match self {
            Store::Batched(writer) => {
                let (done, answer) = oneshot::channel();
                let closed = || JournalError::Database(sqlx::Error::PoolClosed);
                // A slot first, then the job: `send(job)` would hold a second copy of
                // the job in its future while it waits.
                let slot = writer.reserve().await.map_err(|_| closed())?;
                slot.send((job, done));
                answer.await.map_err(|_| closed())?
            }
            // Boxed: held in place, the PostgreSQL path's state (sqlx's futures, 2 KiB)
            // would be carried by every write's future on SQLite too, and so by every
            // payment in flight.
            Store::Pooled(pool) => Box::pin(write_pooled(pool, &job)).await,
        }
    }
}

/// PostgreSQL: `job` in a transaction of its own.
async fn write_pooled(pool: &AnyPool, job: &Job) -> Result<Written, JournalError> {
    let mut tx = pool.begin().await?;
    match run_job(&mut *tx, job, true).await? {
        Ok(written) => {
            tx.commit().await?;
            Ok(written)
        }
        Err(answer) => {
            tx.rollback().await?;
            Err(answer)
        }
    }
}

/// The SQLite writer. A failed statement rolls the whole batch back and every caller gets
/// the error (and retries or parks its payment); an answer that only concerns one write
/// (not begun, unreadable) is that write's and does not disturb the others.
async fn write_batches(thread: SqliteThread, mut jobs: mpsc::Receiver<(Job, Done)>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (work, answers): (Vec<Job>, Vec<Done>) = batch.into_iter().unzip();
        // The thread's statements never wait on anything but SQLite, so the batch's future
        // finishes in one poll there.
        let outcome = thread
            .run(move |connection| {
                // A batch that panicked halfway left its transaction open: end it first.
                if !connection.is_autocommit() {
                    let _ = connection.execute_batch("ROLLBACK");
                }
                let outcome = futures_lite::future::block_on(run_batch(connection, &work));
                if outcome.is_err() {
                    let _ = connection.execute_batch("ROLLBACK");
                }
                outcome
            })
            .await
            .and_then(|outcome| outcome);
        match outcome {
            Ok(results) => {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result);
                }
            }
            Err(e) => {
                let message = e.to_string();
                for answer in answers {
                    let _ = answer.send(Err(JournalError::Database(sqlx::Error::Protocol(
                        message.clone(),
                    ))));
                }
            }
        }
    }
}

async fn run_batch(
    db: &mut impl Exec,
    work: &[Job],
) -> Result<Vec<Result<Written, JournalError>>, sqlx::Error> {
    db.execute("BEGIN IMMEDIATE", &[]).await?;
    let mut results = Vec::with_capacity(work.len());
    for job in work {
        results.push(run_job(db, job, false).await?);
    }
    db.execute("COMMIT", &[]).await?;
    Ok(results)
}
