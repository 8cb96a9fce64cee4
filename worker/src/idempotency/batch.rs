//! Group commit for SQLite: the claims that arrive while a batch is being written share
//! the next transaction, and so one `fsync`, instead of one each.
//!
//! SQLite admits one writer at a time, so a service's commands queue for its one writing
//! connection anyway. Here they queue for the batch's task: it takes every claim waiting
//! (at most [`MAX_BATCH`]) and hands them to the store's writer thread in one go. The
//! thread opens a transaction (`BEGIN IMMEDIATE`, the write lock up-front), runs every
//! claim in a savepoint of its own — a claim whose effect fails rolls back to it, undoing
//! that command only — and commits; only then does every claim of the batch get its
//! answer. No reply is sent for a write that is not yet durable; a failed commit fails
//! every claim of its batch (each retries, as after any database error).
//!
//! A claim handed over runs even if its caller stops waiting (a handler cancelled at
//! shutdown): it is then committed with its reply, and the command's redelivery gets
//! that reply.

use super::IdempotencyError;
use crate::handler::Answer;
use baton_ops::sqlite::SqliteThread;
use rusqlite::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most claims committed together: bounds the wait of the batch's first command.
pub(super) const MAX_BATCH: usize = 128;

/// One claim: its statements, run on the writer thread's connection.
pub(super) type Work = Box<dyn FnOnce(&mut Connection) -> Result<Answer, IdempotencyError> + Send>;

type Done = oneshot::Sender<Result<Answer, IdempotencyError>>;

/// What the batch's task receives.
enum Message {
    Claim(Work, Done),
    /// Stop after the claims received before this one; told once stopped.
    Close(oneshot::Sender<()>),
}

/// One process's group commit on a SQLite store.
#[derive(Debug)]
pub(super) struct Batch {
    queue: mpsc::Sender<Message>,
    /// Transactions committed (each with one or more claims), for the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    commits: Arc<AtomicU64>,
}

impl Batch {
    /// Starts the batch's task on `thread`.
    pub(super) fn start(thread: SqliteThread) -> Self {
        let (queue, waiting) = mpsc::channel(4 * MAX_BATCH);
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_batches(thread, waiting, Arc::clone(&commits)));
        Self { queue, commits }
    }

    /// Runs `work` in the next batch and answers once that batch is committed.
    pub(super) async fn run(&self, work: Work) -> Result<Answer, IdempotencyError> {
        let stopped = || IdempotencyError::Commit("the store's writer has stopped".into());
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Message::Claim(work, done))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Stops the batch's task once the claims handed over before are answered, which
    /// closes the writer's connection; a claim handed over later fails. Returns once the
    /// task has stopped.
    pub(super) async fn close(&self) {
        let (stopped, done) = oneshot::channel();
        if self.queue.send(Message::Close(stopped)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Claims handed over and not yet taken into a batch (for the tests).
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Transactions committed so far (for the tests).
    #[cfg(test)]
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }
}

/// The batch's task: every claim waiting, to the thread at once, until the batch is
/// closed or its last handle is gone.
async fn write_batches(
    thread: SqliteThread,
    mut waiting: mpsc::Receiver<Message>,
    commits: Arc<AtomicU64>,
) {
    let mut closed = None;
    while closed.is_none() {
        let mut batch = Vec::new();
        match waiting.recv().await {
            Some(Message::Claim(work, done)) => batch.push((work, done)),
            Some(Message::Close(stopped)) => closed = Some(stopped),
            None => break,
        }
        while closed.is_none() && !batch.is_empty() && batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(Message::Claim(work, done)) => batch.push((work, done)),
                Ok(Message::Close(stopped)) => closed = Some(stopped),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let (work, answers): (Vec<Work>, Vec<Done>) = batch.into_iter().unzip();
        let outcome = thread
            .run(move |connection| run_batch(connection, work))
            .await
            .map_err(|e| e.to_string())
            .and_then(|outcome| outcome);
        match outcome {
            Ok(results) => {
                commits.fetch_add(1, Ordering::SeqCst);
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result);
                }
            }
            Err(problem) => {
                for answer in answers {
                    let _ = answer.send(Err(IdempotencyError::Commit(problem.clone())));
                }
            }
        }
    }
    // Claims still queued are dropped with the receiver: their callers get an error.
    drop(waiting);
    drop(thread);
    if let Some(stopped) = closed {
        let _ = stopped.send(());
    }
}

/// One transaction: each claim in its savepoint, then the commit. `Err`: nothing of the
/// batch is stored.
fn run_batch(
    connection: &mut Connection,
    work: Vec<Work>,
) -> Result<Vec<Result<Answer, IdempotencyError>>, String> {
    let abort = |connection: &mut Connection, e: rusqlite::Error| {
        let _ = connection.execute_batch("ROLLBACK");
        e.to_string()
    };
    connection
        .execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| e.to_string())?;
    let mut results = Vec::with_capacity(work.len());
    for claim in work {
        if let Err(e) = connection.execute_batch("SAVEPOINT claim") {
            return Err(abort(connection, e));
        }
        let result = claim(connection);
        let end = if result.is_ok() {
            "RELEASE claim"
        } else {
            "ROLLBACK TO claim; RELEASE claim"
        };
        if let Err(e) = connection.execute_batch(end) {
            return Err(abort(connection, e));
        }
        results.push(result);
    }
    if let Err(e) = connection.execute_batch("COMMIT") {
        return Err(abort(connection, e));
    }
    Ok(results)
}
