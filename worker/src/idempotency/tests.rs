//! The claims on both stores: SQLite with group commit on its writer thread, and a
//! transaction per claim on the pool (the PostgreSQL path; run here on SQLite, which
//! takes the same statements).

use super::*;
use baton_contract::ReplyOutcome;
use baton_ops::sql::{Database, OpenMode};
use serde_json::Map;
use sqlx::Row as _;
use std::sync::mpsc as blocking;

/// A fresh SQLite store with [`TABLE`] and a marker table the effects write to; the
/// files are removed on drop.
struct Store {
    pool: AnyPool,
    claims: Claims,
    file: baton_testkit::ScratchSqlite,
}

/// A store with group commit on the writer thread (`batched`) or a transaction per
/// claim on the pool.
async fn store(batched: bool) -> Store {
    let file = baton_testkit::ScratchSqlite::new("idem");
    let database = Database::new(&file.url(), OpenMode::Create).unwrap();
    let pool = database
        .pool(sqlx::any::AnyPoolOptions::new().max_connections(1))
        .await
        .unwrap();
    sqlx::query(TABLE).execute(&pool).await.unwrap();
    sqlx::query("CREATE TABLE effects (command_id TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    let claims = if batched {
        Claims::batched(
            pool.clone(),
            database.sqlite_thread("test-writer").await.unwrap(),
        )
    } else {
        Claims::pooled(pool.clone())
    };
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

/// Writes its marker row, then approves — or, with `fail`, fails after writing it; with
/// `hold`, waits for a word from the test first (on the writer thread, holding its batch).
struct Mark {
    command_id: String,
    fail: bool,
    /// Panics after writing its marker (a bug in an effect).
    panic: bool,
    hold: Option<blocking::Receiver<()>>,
    /// Told once the marker is written (before the hold).
    wrote: Option<blocking::Sender<()>>,
}

fn mark(command_id: &str) -> Mark {
    Mark {
        command_id: command_id.to_owned(),
        fail: false,
        panic: false,
        hold: None,
        wrote: None,
    }
}

impl Effect for Mark {
    async fn apply(self, db: &mut impl Exec) -> Result<Reply, IdempotencyError> {
        db.execute(
            "INSERT INTO effects VALUES ($1)",
            &[Param::Text(&self.command_id)],
        )
        .await?;
        if let Some(wrote) = self.wrote {
            let _ = wrote.send(());
        }
        if let Some(hold) = self.hold {
            let _ = hold.recv();
        }
        assert!(!self.panic, "a bug in the effect of {}", self.command_id);
        if self.fail {
            return Err(IdempotencyError::Database(sqlx::Error::Protocol(
                "the effect failed".into(),
            )));
        }
        Ok(Reply::approved(&self.command_id, Map::new()))
    }
}

/// Pre-empts `other`, then approves.
struct PreEmpt {
    command_id: String,
    other: String,
}

impl Effect for PreEmpt {
    async fn apply(self, db: &mut impl Exec) -> Result<Reply, IdempotencyError> {
        let pre_empt = Reply::declined(&self.other, "too_late", "undone first");
        assert!(record(db, "test", &pre_empt).await?);
        assert!(!record(db, "test", &pre_empt).await?, "once");
        Ok(Reply::approved(&self.command_id, Map::new()))
    }
}

async fn act(claims: &Claims, command_id: &str) -> Answer {
    run_once(claims, command_id, "test", mark(command_id))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_repeated_command_gets_the_stored_reply_and_acts_once() {
    for batched in [false, true] {
        let store = store(batched).await;
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
async fn a_failed_effect_rolls_back_with_its_claim() {
    for batched in [false, true] {
        let store = store(batched).await;
        let failing = Mark {
            fail: true,
            ..mark("c1")
        };
        let e = run_once(&store.claims, "c1", "test", failing)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("the effect failed"), "{e}");
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
    for batched in [false, true] {
        let store = store(batched).await;
        let undo = PreEmpt {
            command_id: "undo".into(),
            other: "do".into(),
        };
        run_once(&store.claims, "undo", "test", undo).await.unwrap();
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
    for batched in [false, true] {
        let store = store(batched).await;
        sqlx::query(
            "INSERT INTO processed_commands (command_id, service, reply) VALUES ('c1', 't', '{')",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let e = run_once(&store.claims, "c1", "test", mark("c1"))
            .await
            .unwrap_err();
        assert!(matches!(e, IdempotencyError::CorruptReply { .. }), "{e}");
        assert_eq!(effects(&store.pool).await, 0);
    }
}

/// A second connection to the store's file, outside its pool: it sees committed writes
/// only.
async fn outside(store: &Store) -> AnyPool {
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&store.file.url())
        .await
        .unwrap()
}

/// Waits until `n` claims are handed over and not yet in a batch (an event of the
/// batch's queue, polled).
async fn until_queued(claims: &Claims, n: usize) {
    let batch = claims.batch.as_ref().expect("batched");
    for _ in 0..100_000 {
        if batch.queued() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{n} claims never queued for the batch");
}

/// Starts claim "z", which holds the writer thread inside its batch (its marker written,
/// nothing committed) until the returned sender says go; returns once it is there.
async fn hold_the_writer(
    claims: &Claims,
) -> (
    tokio::task::JoinHandle<Result<Answer, IdempotencyError>>,
    blocking::Sender<()>,
) {
    let (go, hold) = blocking::channel();
    let (wrote, written) = blocking::channel();
    let z = Mark {
        hold: Some(hold),
        wrote: Some(wrote),
        ..mark("z")
    };
    let claims_z = claims.clone();
    let z = tokio::spawn(async move { run_once(&claims_z, "z", "test", z).await });
    tokio::task::spawn_blocking(move || written.recv().unwrap())
        .await
        .unwrap();
    (z, go)
}

#[tokio::test]
async fn claims_that_arrive_during_a_batch_share_the_next_commit_and_wait_for_it() {
    let store = store(true).await;
    let outside = outside(&store).await;
    let (z, go) = hold_the_writer(&store.claims).await;
    let spawn = |id: &'static str| {
        let claims = store.claims.clone();
        tokio::spawn(async move { run_once(&claims, id, "test", mark(id)).await })
    };
    let (a, b) = (spawn("a"), spawn("b"));
    until_queued(&store.claims, 2).await;
    assert_eq!(
        effects(&outside).await,
        0,
        "z's marker is not durable before its batch commits"
    );
    assert!(
        !z.is_finished(),
        "z is answered only once its batch commits"
    );
    go.send(()).unwrap();
    assert!(!z.await.unwrap().unwrap().replayed);
    assert!(!a.await.unwrap().unwrap().replayed);
    assert!(!b.await.unwrap().unwrap().replayed);
    assert_eq!(effects(&outside).await, 3);
    assert_eq!(
        store.claims.batch.as_ref().unwrap().commits(),
        2,
        "z alone, then a and b in one transaction"
    );
}

#[tokio::test]
async fn a_claim_that_fails_in_a_batch_takes_only_its_own_effects() {
    let store = store(true).await;
    let (z, go) = hold_the_writer(&store.claims).await;
    let claims = store.claims.clone();
    let a = tokio::spawn(async move { run_once(&claims, "a", "test", mark("a")).await });
    let claims = store.claims.clone();
    let failing = Mark {
        fail: true,
        ..mark("b")
    };
    let b = tokio::spawn(async move { run_once(&claims, "b", "test", failing).await });
    until_queued(&store.claims, 2).await;
    go.send(()).unwrap();
    z.await.unwrap().unwrap();
    assert!(b.await.unwrap().is_err(), "b failed");
    assert!(!a.await.unwrap().unwrap().replayed, "a is committed");
    assert_eq!(store.claims.batch.as_ref().unwrap().commits(), 2);
    assert_eq!(
        effects(&store.pool).await,
        2,
        "z's and a's effects, not b's"
    );
    assert!(
        !act(&store.claims, "b").await.replayed,
        "b's claim went too: a retry acts"
    );
    assert!(act(&store.claims, "a").await.replayed);
    assert_eq!(effects(&store.pool).await, 3);
}

#[tokio::test]
async fn a_closed_store_fails_a_claim_and_stores_nothing() {
    for batched in [false, true] {
        let store = store(batched).await;
        act(&store.claims, "before").await;
        store.claims.close().await;
        assert!(run_once(&store.claims, "after", "test", mark("after"))
            .await
            .is_err());
        let outside = outside(&store).await;
        assert_eq!(
            effects(&outside).await,
            1,
            "only the claim before the close"
        );
    }
}

#[tokio::test]
async fn an_effect_that_panics_fails_its_batch_and_the_next_batch_is_written() {
    let store = store(true).await;
    let panicking = Mark {
        panic: true,
        ..mark("z")
    };
    let e = run_once(&store.claims, "z", "test", panicking)
        .await
        .unwrap_err();
    assert!(matches!(e, IdempotencyError::Commit(_)), "{e}");
    // The panic left the batch's transaction open on the writer's connection: the writer
    // thread rolls it back, so the next batch's writes are committed and z's marker is not.
    assert!(!act(&store.claims, "a").await.replayed);
    let outside = outside(&store).await;
    assert_eq!(effects(&outside).await, 1, "a's marker only");
    assert!(
        !act(&store.claims, "z").await.replayed,
        "z's claim went too"
    );
}
