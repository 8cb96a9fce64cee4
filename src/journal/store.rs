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
//! - **PostgreSQL**: the same writer task, its batch in one transaction on a connection of
//!   the pool, each saga row locked as it is written (`RECORD_LOCK`: other replicas
//!   write the same journal). Batches save the begin and commit round trips of a
//!   transaction per write. Two replicas writing the same two payments in opposite
//!   orders (only when one takes over the other's sagas) can deadlock: PostgreSQL aborts
//!   one batch, and its writes fail and are retried like after any database error.

use super::statements::{run_job, Job, Written};
use super::JournalError;
use baton_ops::exec::Exec;
use baton_ops::sqlite::SqliteThread;
use sqlx::{AnyPool, Connection as _};
use tokio::sync::{mpsc, oneshot};

/// Largest number of writes committed together.
const MAX_BATCH: usize = 512;

type Done = oneshot::Sender<Result<Written, JournalError>>;

/// The journal's writer: a task that commits the writes waiting at that moment together
/// (one transaction, one commit), and only then answers each caller.
#[derive(Clone)]
pub(super) struct Store(mpsc::Sender<(Job, Done)>);

/// Where the writer task runs its batches.
enum Backend {
    /// SQLite's one writing connection, on its thread.
    Thread(SqliteThread),
    /// PostgreSQL: a connection of the pool per batch, with the saga rows locked
    /// (`lock_rows`: other replicas write the same journal).
    Pool(AnyPool),
}

impl Store {
    /// Starts the writer task on `thread`, SQLite's one writing connection.
    pub(super) fn batched(thread: SqliteThread) -> Self {
        Self::start(Backend::Thread(thread))
    }

    /// Starts the writer task on `pool`, a PostgreSQL pool.
    pub(super) fn pooled(pool: AnyPool) -> Self {
        Self::start(Backend::Pool(pool))
    }

    fn start(backend: Backend) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_batches(backend, queue));
        Store(jobs)
    }

    /// Runs `job` and answers once it is committed.
    pub(super) async fn write(&self, job: Job) -> Result<Written, JournalError> {
        let (done, answer) = oneshot::channel();
        let closed = || JournalError::Database(sqlx::Error::PoolClosed);
        // A slot first, then the job: `send(job)` would hold a second copy of the job in
        // its future while it waits.
        let slot = self.0.reserve().await.map_err(|_| closed())?;
        slot.send((job, done));
        answer.await.map_err(|_| closed())?
    }
}

/// The writer. A failed statement rolls the whole batch back and every caller gets the
/// error (and retries or parks its payment); an answer that only concerns one write (not
/// begun, unreadable) is that write's and does not disturb the others.
async fn write_batches(backend: Backend, mut jobs: mpsc::Receiver<(Job, Done)>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (work, answers): (Vec<Job>, Vec<Done>) = batch.into_iter().unzip();
        let outcome = match &backend {
            Backend::Thread(thread) => on_thread(thread, work).await,
            Backend::Pool(pool) => on_pool(pool, &work).await,
        };
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

/// A batch on the SQLite thread. Its statements never wait on anything but SQLite, so
/// the batch's future finishes in one poll there.
async fn on_thread(
    thread: &SqliteThread,
    work: Vec<Job>,
) -> Result<Vec<Result<Written, JournalError>>, sqlx::Error> {
    thread
        .run(move |connection| {
            let outcome = futures_lite::future::block_on(run_batch(
                connection,
                "BEGIN IMMEDIATE",
                &work,
                false,
            ));
            if outcome.is_err() {
                let _ = connection.execute_batch("ROLLBACK");
            }
            outcome
        })
        .await
        .and_then(|outcome| outcome)
}

/// A batch on a PostgreSQL connection of the pool, the saga rows locked as they are
/// written. On an error the connection is closed rather than returned to the pool (its
/// transaction may be open), and the next batch takes another.
async fn on_pool(
    pool: &AnyPool,
    work: &[Job],
) -> Result<Vec<Result<Written, JournalError>>, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let outcome = run_batch(&mut *connection, "BEGIN", work, true).await;
    if outcome.is_err() {
        let _ = connection.detach().close().await;
    }
    outcome
}

async fn run_batch(
    db: &mut impl Exec,
    begin: &str,
    work: &[Job],
    lock_rows: bool,
) -> Result<Vec<Result<Written, JournalError>>, sqlx::Error> {
    db.execute(begin, &[]).await?;
    let mut results = Vec::with_capacity(work.len());
    for job in work {
        results.push(run_job(db, job, lock_rows).await?);
    }
    db.execute("COMMIT", &[]).await?;
    Ok(results)
}
