//! Exactly-once effects for a service with a SQL store (SQLite or PostgreSQL): claim the
//! command id as the *first* statement of the transaction that acts, and store the reply
//! in that same transaction.
//!
//! ```text
//! struct Hold { command_id: String, /* what the statements need */ }
//! impl Effect for Hold {
//!     async fn apply(self, db: &mut impl Exec) -> Result<Reply, IdempotencyError> {
//!         db.execute("INSERT INTO holds …", &[Param::Text(&self.command_id), …]).await?;
//!         Ok(Reply::approved(&self.command_id, data))
//!     }
//! }
//! let claims = Claims::pooled(pool);                 // PostgreSQL (or Claims::batched)
//! let answer = run_once(&claims, command_id, "authorization", hold).await?;
//! // answer.replayed: the command was processed before; this is its stored reply
//! ```
//!
//! The claim is `INSERT … ON CONFLICT DO NOTHING` into [`TABLE`]: that first write makes
//! SQLite take its write lock up-front and makes PostgreSQL serialise concurrent
//! duplicates on the unique key, so a repeated command — even two deliveries at once,
//! from two processes — gets the stored reply and acts once. An effect that fails rolls
//! its claim back with whatever it wrote, so a retry may act.
//!
//! An effect is written once against [`Exec`] and runs on both stores:
//! - **PostgreSQL** ([`Claims::pooled`]): each claim is a transaction of its own on the
//!   pool (PostgreSQL groups commits across connections itself).
//! - **SQLite** ([`Claims::batched`]): group commit on the store's writer thread
//!   ([`SqliteThread`]). The claims that arrive while a batch is being written wait and
//!   then go to the thread together: one transaction, each claim in a savepoint of its
//!   own (a failed effect undoes that command only), one `fsync`, one hand-over between
//!   threads for the whole batch; every claim of a batch gets its answer only once the
//!   batch is committed ([`batch`]). There an effect's statements are all it may await:
//!   it runs to its end in one poll on that thread.

mod batch;

use crate::handler::Answer;
use batch::Batch;
use baton_contract::Reply;
use baton_ops::exec::{Exec, Param};
use baton_ops::sqlite::SqliteThread;
use sqlx::AnyPool;
use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The table of processed commands, valid on SQLite and PostgreSQL: create it with the
/// store's other tables. `reply` is NULL only inside the claiming transaction;
/// `created_at` is Unix epoch milliseconds (for pruning old records).
pub const TABLE: &str = "CREATE TABLE IF NOT EXISTS processed_commands (
        command_id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        reply TEXT,
        created_at BIGINT
    )";

/// Errors of a claim and its effect.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// A query failed (connection lost, lock timeout, …): retry later.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The shared transaction this claim was written in did not commit (SQLite group
    /// commit): nothing of it is stored; retry later.
    #[error("the batch of claims did not commit: {0}")]
    Commit(String),
    /// A stored reply cannot be read back (the database was edited by hand), or a reply
    /// cannot be encoded.
    #[error("stored reply of command {command_id} is unreadable: {problem}")]
    CorruptReply {
        /// The command whose reply is damaged.
        command_id: String,
        /// What is wrong.
        problem: String,
    },
}

/// What a command does, inside the transaction that claimed it: its statements and the
/// reply to store with them. `Err` undoes the claim and everything the effect wrote.
pub trait Effect: Send + 'static {
    /// Runs the effect's statements on `db` and returns the reply. On SQLite it runs on
    /// the store's writer thread: it must await nothing but `db`.
    fn apply(self, db: &mut impl Exec) -> impl Future<Output = Result<Reply, IdempotencyError>>;
}

/// Where claims are taken: the store's pool and, on SQLite, the batch its claims share.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Claims {
    pool: AnyPool,
    batch: Option<Arc<Batch>>,
}

impl Claims {
    /// Claims on `pool`, each in a transaction of its own (PostgreSQL).
    pub fn pooled(pool: AnyPool) -> Self {
        Self { pool, batch: None }
    }

    /// Claims group-committed on `thread`, the SQLite store's one writer (see the module
    /// docs); `pool` serves the store's reads. Starts the batch's task: call from within
    /// a tokio runtime.
    pub fn batched(pool: AnyPool, thread: SqliteThread) -> Self {
        Self {
            pool,
            batch: Some(Arc::new(Batch::start(thread))),
        }
    }

    /// The pool of the store (for its reads).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the store: the writer (once the claims handed to it are answered; a claim
    /// after this fails) and the pool (once its connections are back).
    pub async fn close(&self) {
        if let Some(batch) = &self.batch {
            batch.close().await;
        }
        self.pool.close().await;
    }
}

/// The claim: a row back when this command is claimed now, none when it was before.
const CLAIM: &str = "INSERT INTO processed_commands (command_id, service, reply, created_at)
     VALUES ($1, $2, NULL, $3) ON CONFLICT DO NOTHING RETURNING command_id";

/// The reply stored for the claimed command.
const STORE_REPLY: &str = "UPDATE processed_commands SET reply = $1 WHERE command_id = $2";

/// Runs `effect` for `command_id` once: claims the id, applies the effect and stores its
/// reply in one transaction, and returns that reply; or, if the id was claimed before,
/// returns the stored reply (`replayed`) and applies nothing. `service` is stored with
/// the claim.
pub async fn run_once(
    claims: &Claims,
    command_id: &str,
    service: &str,
    effect: impl Effect,
) -> Result<Answer, IdempotencyError> {
    match &claims.batch {
        Some(batch) => {
            let (command_id, service) = (command_id.to_owned(), service.to_owned());
            batch
                .run(Box::new(move |connection| {
                    // The effect awaits only this connection, which never waits: one
                    // poll runs it to its end.
                    futures_lite::future::block_on(claim_and_apply(
                        connection,
                        &command_id,
                        &service,
                        effect,
                    ))
                }))
                .await
        }
        None => {
            let mut tx = claims.pool.begin().await?;
            // On an error the transaction is dropped: rolled back, claim and effect.
            let answer = claim_and_apply(&mut *tx, command_id, service, effect).await?;
            tx.commit().await?;
            Ok(answer)
        }
    }
}

/// The claim, then the effect and its stored reply — or the stored reply of an earlier
/// claim — inside the caller's transaction.
async fn claim_and_apply(
    db: &mut impl Exec,
    command_id: &str,
    service: &str,
    effect: impl Effect,
) -> Result<Answer, IdempotencyError> {
    let claimed = db
        .fetch_optional(
            CLAIM,
            &[
                Param::Text(command_id),
                Param::Text(service),
                Param::Int(now_ms()),
            ],
        )
        .await?
        .is_some();
    if !claimed {
        return stored_reply(db, command_id).await;
    }
    let reply = effect.apply(db).await?;
    let text = encode(command_id, &reply)?;
    db.execute(STORE_REPLY, &[Param::Text(&text), Param::Text(command_id)])
        .await?;
    Ok(Answer::fresh(reply))
}

/// The reply stored for a command claimed before.
async fn stored_reply(db: &mut impl Exec, command_id: &str) -> Result<Answer, IdempotencyError> {
    let corrupt = |problem: String| IdempotencyError::CorruptReply {
        command_id: command_id.to_owned(),
        problem,
    };
    let row = db
        .fetch_optional(
            "SELECT reply FROM processed_commands WHERE command_id = $1",
            &[Param::Text(command_id)],
        )
        .await?
        .ok_or_else(|| corrupt("claimed, and then not found".into()))?;
    let text = row
        .opt_text(0)?
        .ok_or_else(|| corrupt("no reply stored".into()))?;
    let mut reply: Reply = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    reply.command_id = command_id.to_owned();
    Ok(Answer {
        reply,
        replayed: true,
    })
}

/// Inside an effect: stores `reply` as the answer to *another* command
/// (`reply.command_id`) of `service`, unless that command was processed (or claimed)
/// already. Returns whether it was stored. A compensation that arrives before its execute
/// uses this to pre-empt it: the late execute then gets this reply and acts never. On
/// PostgreSQL, a concurrent claim of that command makes this wait until it commits or
/// rolls back.
pub async fn record(
    db: &mut impl Exec,
    service: &str,
    reply: &Reply,
) -> Result<bool, IdempotencyError> {
    let text = encode(&reply.command_id, reply)?;
    let inserted = db
        .fetch_optional(
            "INSERT INTO processed_commands (command_id, service, reply, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING command_id",
            &[
                Param::Text(&reply.command_id),
                Param::Text(service),
                Param::Text(&text),
                Param::Int(now_ms()),
            ],
        )
        .await?
        .is_some();
    Ok(inserted)
}

fn encode(command_id: &str, reply: &Reply) -> Result<String, IdempotencyError> {
    serde_json::to_string(reply).map_err(|e| IdempotencyError::CorruptReply {
        command_id: command_id.to_owned(),
        problem: e.to_string(),
    })
}

/// Now, in Unix epoch milliseconds (the unit of `created_at`).
pub fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
