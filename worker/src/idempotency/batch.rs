//! Group commit for SQLite: the claims taken while one is being worked on share one
//! transaction, and so one `fsync`, instead of one each.
//!
//! SQLite admits one writer at a time, so a service's commands queue for its one writing
//! connection anyway. Here they queue for the batch instead: the first claim opens a
//! transaction (`BEGIN IMMEDIATE`, the write lock up-front), and every claim — that one
//! and each one waiting behind it — runs inside a savepoint of its own, so an error
//! rolls back that command's claim and effects only. A finished claim releases its
//! savepoint and hands the connection to the next waiting claim; the last one (no claim
//! waiting, or [`MAX_BATCH`] reached) commits, and only then does every claim of the
//! batch get its answer. No reply is sent for a write that is not yet durable; a failed
//! commit fails every claim of its batch (each retries, as after any database error).

use super::IdempotencyError;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, Mutex, OwnedMutexGuard};

/// Most claims committed together: bounds the wait of the batch's first command.
pub(super) const MAX_BATCH: usize = 128;

// The savepoint every claim of a batch runs in (one at a time, so one name serves) is
// `claim`: taken by the claim's own statement and released by the one that stores its
// reply (`super::CLAIM_IN_BATCH`, `super::STORE_REPLY_IN_BATCH`), each in the same round
// trip to SQLite's thread as the statement it goes with.

/// One process's shared transaction on a SQLite store.
#[derive(Debug)]
pub(super) struct Batch {
    pool: AnyPool,
    open: Arc<Mutex<Open>>,
    /// Claims waiting for [`Batch::open`]: while there are some, a finished claim leaves
    /// the transaction open for them.
    pub(super) waiting: AtomicUsize,
}

/// The transaction while it is open, and who waits for its commit.
#[derive(Debug, Default)]
struct Open {
    connection: Option<PoolConnection<Any>>,
    /// One per finished claim of this transaction: told once it committed (or failed).
    committed: Vec<oneshot::Sender<Result<(), String>>>,
}

impl Batch {
    pub(super) fn new(pool: AnyPool) -> Self {
        Self {
            pool,
            open: Arc::new(Mutex::new(Open::default())),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// Counts a claim waiting for the batch for as long as it waits. A claim cancelled while
/// waiting may have been the one a finished claim left the transaction open for: then a
/// task of its own takes the turn and passes the batch on, so it is not left uncommitted.
struct Waiting<'a> {
    batch: &'a Arc<Batch>,
    served: bool,
}

impl<'a> Waiting<'a> {
    fn count(batch: &'a Arc<Batch>) -> Self {
        batch.waiting.fetch_add(1, Ordering::SeqCst);
        Self {
            batch,
            served: false,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.batch.waiting.fetch_sub(1, Ordering::SeqCst);
        if self.served {
            return;
        }
        let batch = Arc::clone(self.batch);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let open = Arc::clone(&batch.open).lock_owned().await;
                if open.connection.is_some() {
                    pass_on(&batch, open).await;
                }
            });
        }
    }
}

/// A claim's turn on the batch's connection, inside its savepoint. Dropped without
/// [`Turn::end`] (an error while acting, a cancelled handler), it rolls its savepoint
/// back and passes the batch on, from a task of its own.
pub(super) struct Turn {
    batch: Arc<Batch>,
    open: Option<OwnedMutexGuard<Open>>,
    /// Whether the savepoint was taken (so dropping must roll it back).
    in_savepoint: bool,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("in_savepoint", &self.in_savepoint)
            .finish_non_exhaustive()
    }
}

impl Turn {
    /// Waits for the connection and opens the transaction if this claim is the batch's
    /// first. The caller's first statement takes the savepoint ([`Turn::savepoint_taken`]).
    pub(super) async fn take(batch: &Arc<Batch>) -> Result<Self, IdempotencyError> {
        let open = {
            let mut waiting = Waiting::count(batch);
            let open = Arc::clone(&batch.open).lock_owned().await;
            waiting.served = true;
            open
        };
        let mut turn = Turn {
            batch: Arc::clone(batch),
            open: Some(open),
            in_savepoint: false,
        };
        let open = turn.open.as_mut().expect("held until the turn ends");
        if open.connection.is_none() {
            let mut connection = batch.pool.acquire().await?;
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *connection)
                .await?;
            open.connection = Some(connection);
        }
        Ok(turn)
    }

    /// The next statement takes the savepoint: from here, dropping the turn rolls it back.
    /// (Said before the statement runs: should it fail halfway, the rollback to a
    /// savepoint that was never taken fails, and the batch is ended with the error.)
    pub(super) fn savepoint_taken(&mut self) {
        self.in_savepoint = true;
    }

    /// The savepoint was released by the statement that ran last.
    pub(super) fn savepoint_released(&mut self) {
        self.in_savepoint = false;
    }

    pub(super) fn connection(&mut self) -> &mut AnyConnection {
        self.open
            .as_mut()
            .and_then(|open| open.connection.as_mut())
            .expect("a turn holds the open transaction")
    }

    pub(super) fn connection_ref(&self) -> &AnyConnection {
        self.open
            .as_ref()
            .and_then(|open| open.connection.as_ref())
            .expect("a turn holds the open transaction")
    }

    /// Keeps what this claim wrote (releasing its savepoint if a statement has not),
    /// passes the batch on, and returns once the batch has committed: from here the
    /// claim's writes are durable.
    pub(super) async fn end(mut self) -> Result<(), IdempotencyError> {
        let (done, committed) = oneshot::channel();
        let released = if self.in_savepoint {
            sqlx::query("RELEASE SAVEPOINT claim")
                .execute(self.connection())
                .await
                .map(|_| ())
        } else {
            Ok(())
        };
        self.in_savepoint = false;
        let mut open = self.open.take().expect("held until the turn ends");
        open.committed.push(done);
        match released {
            Ok(_) => pass_on(&self.batch, open).await,
            // The transaction is in an unknown state: end it, failing every claim in it.
            Err(e) => end_batch(open, Err(e.to_string())).await,
        }
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(problem)) => Err(IdempotencyError::Commit(problem)),
            Err(_) => Err(IdempotencyError::Commit("the batch was abandoned".into())),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(mut open) = self.open.take() else {
            return;
        };
        let batch = Arc::clone(&self.batch);
        let in_savepoint = self.in_savepoint;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if in_savepoint {
                let undone = match open.connection.as_mut() {
                    Some(connection) => {
                        let rolled = sqlx::query("ROLLBACK TO SAVEPOINT claim")
                            .execute(&mut **connection)
                            .await;
                        match rolled {
                            Ok(_) => sqlx::query("RELEASE SAVEPOINT claim")
                                .execute(&mut **connection)
                                .await
                                .map(|_| ()),
                            Err(e) => Err(e),
                        }
                    }
                    None => Ok(()),
                };
                if let Err(e) = undone {
                    return end_batch(open, Err(e.to_string())).await;
                }
            }
            pass_on(&batch, open).await;
        });
    }
}

/// Hands the open transaction to the next waiting claim, or commits it when none waits
/// or the batch is full.
async fn pass_on(batch: &Batch, open: OwnedMutexGuard<Open>) {
    if batch.waiting.load(Ordering::SeqCst) > 0 && open.committed.len() < MAX_BATCH {
        return; // dropping the guard wakes the next claim
    }
    end_batch(open, Ok(())).await;
}

/// Commits the transaction (or, when `outcome` is already an error, rolls it back) and
/// tells every finished claim of it.
async fn end_batch(mut open: OwnedMutexGuard<Open>, outcome: Result<(), String>) {
    let mut outcome = outcome;
    if let Some(mut connection) = open.connection.take() {
        let statement = if outcome.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        if let Err(e) = sqlx::query(statement).execute(&mut *connection).await {
            if outcome.is_ok() {
                outcome = Err(e.to_string());
                // A failed COMMIT may leave the transaction open: never return it to the
                // pool that way.
                let _ = sqlx::query("ROLLBACK").execute(&mut *connection).await;
            }
        }
    }
    let told = std::mem::take(&mut open.committed);
    drop(open);
    for done in told {
        let _ = done.send(outcome.clone());
    }
}
