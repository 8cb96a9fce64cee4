//! Exactly-once effects for a service with a SQL store (sqlx's `Any` driver, SQLite or
//! PostgreSQL): claim the command id as the *first* statement of the transaction that
//! acts, and store the reply in that same transaction.
//!
//! ```text
//! let claims = Claims::new(pool, group_commit);     // once, at open
//! match try_begin(&claims, command_id, "authorization").await? {
//!     Begin::Done(answer) => answer,            // a repeat: the stored reply, nothing done
//!     Begin::Start(mut tx) => {                 // first time: act inside `tx`...
//!         /* INSERT … (&mut *tx) */
//!         finish(tx, reply).await?              // ...store the reply and commit both
//!     }
//! }
//! ```
//!
//! The claim is `INSERT … ON CONFLICT DO NOTHING` into [`TABLE`]: that first write makes
//! SQLite take its write lock up-front and makes PostgreSQL serialise concurrent
//! duplicates on the unique key, so a repeated command — even two deliveries at once,
//! from two processes — gets the stored reply and acts once. Dropping the transaction
//! (an error while acting) rolls the claim back with the effect, so a retry may act.
//!
//! On PostgreSQL each claim is a transaction of its own (PostgreSQL groups commits across
//! connections itself). On SQLite, with group commit on ([`Claims::new`]), the claims
//! taken while one is being worked on share one transaction — each in a savepoint of its
//! own, so an error undoes only its command — and one `fsync` ([`batch`]); every claim
//! of a batch gets its answer only once the batch is committed.

mod batch;

use crate::handler::Answer;
use batch::{Batch, Turn};
use baton_contract::Reply;
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};
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

/// Errors of the claim and the finish.
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

/// What [`try_begin`] found.
pub enum Begin {
    /// First time: act inside this transaction, then [`finish`] it.
    Start(Claimed),
    /// Already answered: this is the stored reply (`replayed`).
    Done(Answer),
}

/// Where claims are taken: the store's pool and, on SQLite with group commit, the batch
/// its claims share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Claims {
    pool: AnyPool,
    batch: Option<Arc<Batch>>,
}

impl Claims {
    /// Claims on `pool`; `group_commit` (for SQLite, whose one writer makes commands
    /// queue anyway) lets claims taken while one is being worked on share its
    /// transaction. Without it every claim is a transaction of its own (PostgreSQL).
    pub fn new(pool: AnyPool, group_commit: bool) -> Self {
        let batch = group_commit.then(|| Arc::new(Batch::new(pool.clone())));
        Self { pool, batch }
    }

    /// The pool claims are taken on (for the store's reads).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// A claimed command: the transaction holding the claim, and the id claimed.
pub struct Claimed {
    tx: Held,
    command_id: String,
}

/// The transaction a claim is written in.
enum Held {
    /// Its own.
    Own(Transaction<'static, Any>),
    /// Its turn in the batch's shared transaction.
    Shared(Turn),
}

impl Held {
    async fn begin(claims: &Claims) -> Result<Self, IdempotencyError> {
        Ok(match &claims.batch {
            Some(batch) => Held::Shared(Turn::take(batch).await?),
            None => Held::Own(claims.pool.begin().await?),
        })
    }

    /// Commits what the claim wrote (in a batch: once the batch commits).
    async fn commit(self) -> Result<(), IdempotencyError> {
        match self {
            Held::Own(tx) => Ok(tx.commit().await?),
            Held::Shared(turn) => turn.end().await,
        }
    }
}

impl std::ops::Deref for Held {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            Held::Own(tx) => tx,
            Held::Shared(turn) => turn.connection_ref(),
        }
    }
}

impl std::ops::DerefMut for Held {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Held::Own(tx) => tx,
            Held::Shared(turn) => turn.connection(),
        }
    }
}

impl std::ops::Deref for Claimed {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for Claimed {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// The claim: a row back when this command is claimed now, none when it was before.
/// (`RETURNING`, not the rows affected: in a batch the statement follows a `SAVEPOINT`,
/// and SQLite counts changes per connection, not per statement.)
macro_rules! claim_sql {
    () => {
        "INSERT INTO processed_commands (command_id, service, reply, created_at)
         VALUES ($1, $2, NULL, $3) ON CONFLICT DO NOTHING RETURNING command_id"
    };
}
/// The claim in a transaction of its own.
const CLAIM: &str = claim_sql!();
/// The claim in a batch: its savepoint taken in the same round trip to SQLite's thread.
const CLAIM_IN_BATCH: &str = concat!("SAVEPOINT claim; ", claim_sql!());

macro_rules! store_reply_sql {
    () => {
        "UPDATE processed_commands SET reply = $1 WHERE command_id = $2"
    };
}
/// The reply stored for the claimed command.
const STORE_REPLY: &str = store_reply_sql!();
/// The reply stored in a batch, the claim's savepoint released in the same round trip.
const STORE_REPLY_IN_BATCH: &str = concat!(store_reply_sql!(), "; RELEASE SAVEPOINT claim");

/// Begins a transaction whose first statement claims `command_id` for `service`.
pub async fn try_begin(
    claims: &Claims,
    command_id: &str,
    service: &str,
) -> Result<Begin, IdempotencyError> {
    let mut tx = Held::begin(claims).await?;
    let claim = match &mut tx {
        Held::Own(_) => CLAIM,
        Held::Shared(turn) => {
            turn.savepoint_taken();
            CLAIM_IN_BATCH
        }
    };
    // `fetch_all`: the first result of the batch's claim is its `SAVEPOINT`'s, no row.
    let inserted = !sqlx::query(claim)
        .bind(command_id)
        .bind(service)
        .bind(now_ms())
        .fetch_all(&mut *tx)
        .await?
        .is_empty();
    if inserted {
        return Ok(Begin::Start(Claimed {
            tx,
            command_id: command_id.to_owned(),
        }));
    }
    let row = sqlx::query("SELECT reply FROM processed_commands WHERE command_id = $1")
        .bind(command_id)
        .fetch_one(&mut *tx)
        .await?;
    // In a batch the stored reply may be one of this batch's, not yet durable: answered
    // only once the batch commits.
    tx.commit().await?;
    let stored: Option<String> = row.try_get(0)?;
    let corrupt = |problem: String| IdempotencyError::CorruptReply {
        command_id: command_id.to_owned(),
        problem,
    };
    let text = stored.ok_or_else(|| corrupt("no reply stored".into()))?;
    let mut reply: Reply = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    // A reply stored on behalf of another command (see [`record`]) is answered under the
    // id actually asked.
    reply.command_id = command_id.to_owned();
    Ok(Begin::Done(Answer {
        reply,
        replayed: true,
    }))
}

/// Stores `reply` for the claimed command and commits the effect with it.
pub async fn finish(mut claimed: Claimed, reply: Reply) -> Result<Answer, IdempotencyError> {
    let text = encode(&claimed.command_id, &reply)?;
    let store = match &claimed.tx {
        Held::Own(_) => STORE_REPLY,
        Held::Shared(_) => STORE_REPLY_IN_BATCH,
    };
    sqlx::query(store)
        .bind(text)
        .bind(&claimed.command_id)
        .execute(&mut *claimed.tx)
        .await?;
    match claimed.tx {
        Held::Own(tx) => tx.commit().await?,
        Held::Shared(mut turn) => {
            turn.savepoint_released();
            turn.end().await?
        }
    }
    Ok(Answer::fresh(reply))
}

/// Inside a claimed transaction, answers *another* command in advance: stores `reply`
/// as `reply.command_id`'s answer unless that command was processed (or claimed) already.
/// True when stored: the other command, arriving later, gets this reply and does
/// nothing (a compensation pre-empting its execute). On PostgreSQL this waits for a
/// claim of that command still in flight to commit or roll back.
pub async fn record(
    claimed: &mut Claimed,
    service: &str,
    reply: &Reply,
) -> Result<bool, IdempotencyError> {
    let text = encode(&reply.command_id, reply)?;
    let inserted = sqlx::query(
        "INSERT INTO processed_commands (command_id, service, reply, created_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(&reply.command_id)
    .bind(service)
    .bind(text)
    .bind(now_ms())
    .execute(&mut *claimed.tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
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
mod tests {
    use super::*;
    use baton_contract::ReplyOutcome;
    use serde_json::Map;

    /// A pool on a fresh SQLite file with [`TABLE`], and a marker table the "effect"
    /// writes to; the files are removed on drop.
    struct Store {
        pool: AnyPool,
        claims: Claims,
        file: baton_testkit::ScratchSqlite,
    }

    /// A store with group commit on or off (the tests run both ways).
    async fn store(group_commit: bool) -> Store {
        sqlx::any::install_default_drivers();
        let file = baton_testkit::ScratchSqlite::new("idem");
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}?mode=rwc", file.url()))
            .await
            .unwrap();
        sqlx::query(TABLE).execute(&pool).await.unwrap();
        sqlx::query("CREATE TABLE effects (command_id TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        let claims = Claims::new(pool.clone(), group_commit);
        Store { pool, claims, file }
    }

    async fn effects(pool: &AnyPool) -> i64 {
        sqlx::query("SELECT COUNT(*) FROM effects")
            .fetch_one(pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap()
    }

    /// Acts once for `command_id`: the effect and the reply, or the stored reply.
    async fn act(claims: &Claims, command_id: &str) -> Answer {
        match try_begin(claims, command_id, "test").await.unwrap() {
            Begin::Done(answer) => answer,
            Begin::Start(mut claimed) => {
                sqlx::query("INSERT INTO effects VALUES ($1)")
                    .bind(command_id)
                    .execute(&mut *claimed)
                    .await
                    .unwrap();
                finish(claimed, Reply::approved(command_id, Map::new()))
                    .await
                    .unwrap()
            }
        }
    }

    #[tokio::test]
    async fn a_repeated_command_gets_the_stored_reply_and_acts_once() {
        for group_commit in [false, true] {
            let store = store(group_commit).await;
            let first = act(&store.claims, "c1").await;
            assert!(!first.replayed);
            let again = act(&store.claims, "c1").await;
            assert!(again.replayed, "answered from the store");
            assert_eq!(again.reply, first.reply);
            assert_eq!(effects(&store.pool).await, 1);
            act(&store.claims, "c2").await;
            assert_eq!(effects(&store.pool).await, 2);
        }
    }

    #[tokio::test]
    async fn an_unfinished_claim_rolls_back_with_its_effect() {
        for group_commit in [false, true] {
            let store = store(group_commit).await;
            let Begin::Start(mut claimed) = try_begin(&store.claims, "c1", "test").await.unwrap()
            else {
                panic!("first claim");
            };
            sqlx::query("INSERT INTO effects VALUES ('c1')")
                .execute(&mut *claimed)
                .await
                .unwrap();
            drop(claimed);
            assert_eq!(
                effects(&store.pool).await,
                0,
                "the effect went with the claim"
            );
            assert!(!act(&store.claims, "c1").await.replayed, "a retry acts");
            assert_eq!(effects(&store.pool).await, 1);
        }
    }

    #[tokio::test]
    async fn a_recorded_answer_pre_empts_the_other_command() {
        for group_commit in [false, true] {
            let store = store(group_commit).await;
            let Begin::Start(mut claimed) = try_begin(&store.claims, "undo", "test").await.unwrap()
            else {
                panic!("first claim");
            };
            let pre_empt = Reply::declined("do", "too_late", "undone first");
            assert!(record(&mut claimed, "test", &pre_empt).await.unwrap());
            assert!(
                !record(&mut claimed, "test", &pre_empt).await.unwrap(),
                "once"
            );
            finish(claimed, Reply::approved("undo", Map::new()))
                .await
                .unwrap();
            let late = act(&store.claims, "do").await;
            assert!(late.replayed);
            assert_eq!(late.reply.outcome, ReplyOutcome::Declined);
            assert_eq!(late.reply.reason.as_deref(), Some("too_late"));
            assert_eq!(
                effects(&store.pool).await,
                0,
                "the pre-empted command did nothing"
            );
        }
    }

    #[tokio::test]
    async fn an_unreadable_stored_reply_is_an_error_not_a_replay() {
        for group_commit in [false, true] {
            let store = store(group_commit).await;
            sqlx::query(
            "INSERT INTO processed_commands (command_id, service, reply) VALUES ('c1', 't', '{')",
        )
        .execute(&store.pool)
        .await
        .unwrap();
            let Err(e) = try_begin(&store.claims, "c1", "test").await else {
                panic!("a damaged reply is not replayed");
            };
            assert!(matches!(e, IdempotencyError::CorruptReply { .. }), "{e}");
        }
    }

    /// A second connection to the store's file, outside its pool: it sees committed
    /// writes only.
    async fn outside(store: &Store) -> AnyPool {
        sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&store.file.url())
            .await
            .unwrap()
    }

    /// Waits until `n` claims wait for the batch (an event in the batch, polled).
    async fn until_waiting(claims: &Claims, n: usize) {
        let batch = claims.batch.as_ref().expect("group commit on");
        for _ in 0..10_000 {
            if batch.waiting.load(std::sync::atomic::Ordering::SeqCst) == n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{n} claims never waited for the batch");
    }

    /// Claims "b" and writes its effect, says so, and finishes it only once `go` fires
    /// (or drops it, undone, when `go` is dropped).
    fn claim_b_and_wait(
        claims: &Claims,
        acting: tokio::sync::oneshot::Sender<()>,
        go: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<Option<Answer>> {
        let claims = claims.clone();
        tokio::spawn(async move {
            let Begin::Start(mut claimed) = try_begin(&claims, "b", "test").await.unwrap() else {
                panic!("first claim of b");
            };
            sqlx::query("INSERT INTO effects VALUES ('b')")
                .execute(&mut *claimed)
                .await
                .unwrap();
            acting.send(()).unwrap();
            match go.await {
                Ok(()) => Some(
                    finish(claimed, Reply::approved("b", Map::new()))
                        .await
                        .unwrap(),
                ),
                Err(_) => None,
            }
        })
    }

    /// Claims "a" and writes its effect; lets "b" queue behind it; finishes a (in a task
    /// of its own), and returns once b has its turn and has written its effect: a's
    /// answer, b's task, and what lets b finish (dropped: b fails).
    async fn a_finished_while_b_acts(
        store: &Store,
    ) -> (
        tokio::task::JoinHandle<Result<Answer, IdempotencyError>>,
        tokio::task::JoinHandle<Option<Answer>>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let Begin::Start(mut a) = try_begin(&store.claims, "a", "test").await.unwrap() else {
            panic!("first claim of a");
        };
        sqlx::query("INSERT INTO effects VALUES ('a')")
            .execute(&mut *a)
            .await
            .unwrap();
        let (acting, b_acting) = tokio::sync::oneshot::channel();
        let (go, b_go) = tokio::sync::oneshot::channel();
        let b = claim_b_and_wait(&store.claims, acting, b_go);
        until_waiting(&store.claims, 1).await;
        let a_done = tokio::spawn(finish(a, Reply::approved("a", Map::new())));
        b_acting.await.unwrap();
        (a_done, b, go)
    }

    #[tokio::test]
    async fn claims_taken_while_one_is_worked_on_share_its_commit() {
        let store = store(true).await;
        let outside = outside(&store).await;
        let (a_done, b, go) = a_finished_while_b_acts(&store).await;
        // a is finished and b works in the same transaction: nothing is committed yet,
        // and a has no answer yet.
        assert_eq!(
            effects(&outside).await,
            0,
            "a is not durable before the batch commits"
        );
        assert!(
            !a_done.is_finished(),
            "a is answered only once its batch commits"
        );
        go.send(()).unwrap();
        assert!(!b.await.unwrap().unwrap().replayed);
        assert!(!a_done.await.unwrap().unwrap().replayed);
        assert_eq!(effects(&outside).await, 2, "one commit made both durable");
    }

    #[tokio::test]
    async fn a_claim_undone_in_a_batch_takes_only_its_own_effects() {
        let store = store(true).await;
        let (a_done, b, go) = a_finished_while_b_acts(&store).await;
        drop(go); // b fails after writing its effect
        assert!(b.await.unwrap().is_none());
        assert!(!a_done.await.unwrap().unwrap().replayed, "a is committed");
        assert_eq!(effects(&store.pool).await, 1, "only a's effect is kept");
        assert!(
            !act(&store.claims, "b").await.replayed,
            "b's claim went too: a retry acts"
        );
        assert!(act(&store.claims, "a").await.replayed);
        assert_eq!(effects(&store.pool).await, 2);
    }
}
