//! The SQLite writer thread (`baton_ops::sqlite`) against sqlx's `Any` connection: the same
//! statements give the same rows, the connection has the pragmas durability needs, and
//! its errors read as sqlx's do.

use baton_ops::exec::{Cell, Exec, Param, Row};
use baton_ops::sql::{Database, OpenMode, SqlError};
use baton_testkit::{ScratchDir, ScratchSqlite};
use rusqlite::Connection;

const SETUP: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, n BIGINT, note TEXT)",
    "DELETE FROM t",
];

/// Every statement shape the journal writes: a `$n` used twice and out of order, a
/// `RETURNING`, an `ON CONFLICT DO NOTHING` that changes nothing, a NULL read back.
async fn exercise(db: &mut impl Exec) -> (Vec<u64>, Vec<Option<Row>>) {
    for statement in SETUP {
        db.execute(statement, &[]).await.expect("setup");
    }
    let insert = "INSERT INTO t (id, n, note) VALUES ($2, $1, $3) ON CONFLICT (id) DO NOTHING";
    let mut changed = vec![];
    let mut rows = vec![];
    changed.push(
        db.execute(insert, &[Param::Int(7), Param::Text("a"), Param::Text("x")])
            .await
            .expect("insert"),
    );
    changed.push(
        db.execute(insert, &[Param::Int(8), Param::Text("a"), Param::Text("y")])
            .await
            .expect("conflicting insert"),
    );
    changed.push(
        db.execute(
            "INSERT INTO t (id, n, note) SELECT $1, n + 1, NULL FROM t WHERE id = $2 AND $1 <> $2",
            &[Param::Text("b"), Param::Text("a")],
        )
        .await
        .expect("insert select"),
    );
    rows.push(
        db.fetch_optional(
            "UPDATE t SET n = n * $1 WHERE id = $2 RETURNING n, note",
            &[Param::Int(10), Param::Text("b")],
        )
        .await
        .expect("update returning"),
    );
    rows.push(
        db.fetch_optional(
            "SELECT id, n, note FROM t WHERE id = $1",
            &[Param::Text("a")],
        )
        .await
        .expect("select"),
    );
    rows.push(
        db.fetch_optional("SELECT id FROM t WHERE id = $1", &[Param::Text("none")])
            .await
            .expect("select nothing"),
    );
    (changed, rows)
}

fn database(file: &ScratchSqlite) -> Database {
    Database::new(&file.url(), OpenMode::Create).unwrap()
}

#[tokio::test]
async fn the_thread_and_sqlx_give_the_same_answers_to_the_same_statements() {
    let file = ScratchSqlite::new("exec-same");
    let database = database(&file);
    let mut sqlx_connection = database.connect().await.unwrap();
    let by_sqlx = exercise(&mut sqlx_connection).await;

    let thread = database.sqlite_thread("test-writer").await.unwrap();
    let by_thread = thread
        .run(|connection| futures_lite::future::block_on(exercise(connection)))
        .await
        .unwrap();

    let expected = (
        vec![1, 0, 1],
        vec![
            Some(Row(vec![Cell::Int(80), Cell::Null])),
            Some(Row(vec![
                Cell::Text("a".into()),
                Cell::Int(7),
                Cell::Text("x".into()),
            ])),
            None,
        ],
    );
    assert_eq!(by_sqlx, expected, "sqlx");
    assert_eq!(by_thread, expected, "the SQLite thread");
}

#[tokio::test]
async fn the_threads_connection_has_wal_full_sync_and_the_busy_timeout() {
    let file = ScratchSqlite::new("exec-pragmas");
    let thread = database(&file).sqlite_thread("test-writer").await.unwrap();
    let settings = thread
        .run(|connection: &mut Connection| {
            let read = |pragma: &str| -> String {
                connection
                    .query_row(pragma, [], |row| row.get::<_, rusqlite::types::Value>(0))
                    .map(|value| format!("{value:?}"))
                    .unwrap()
            };
            (
                read("PRAGMA journal_mode"),
                read("PRAGMA synchronous"),
                read("PRAGMA busy_timeout"),
            )
        })
        .await
        .unwrap();
    assert_eq!(
        settings,
        (
            "Text(\"wal\")".to_owned(),
            "Integer(2)".to_owned(),
            "Integer(10000)".to_owned()
        ),
        "synchronous = FULL (2): a commit is on disk before the writer answers"
    );
}

#[tokio::test]
async fn a_locked_database_reads_as_sqlites_busy_code_as_sqlx_says_it() {
    let file = ScratchSqlite::new("exec-busy");
    let database = database(&file);
    let mut holder = database.connect().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let thread = database.sqlite_thread("test-writer").await.unwrap();
    let e = thread
        .run(|connection| {
            connection.busy_timeout(std::time::Duration::ZERO).unwrap();
            futures_lite::future::block_on(Exec::execute(connection, "BEGIN IMMEDIATE", &[]))
        })
        .await
        .unwrap()
        .unwrap_err();
    let sqlx::Error::Database(db) = &e else {
        panic!("not a database error: {e:?}");
    };
    assert_eq!(db.code().as_deref(), Some("5"), "SQLITE_BUSY: {e}");
    assert!(db.message().contains("locked"), "{e}");
}

#[tokio::test]
async fn a_parameter_without_a_value_is_refused_naming_it() {
    let file = ScratchSqlite::new("exec-params");
    let thread = database(&file).sqlite_thread("test-writer").await.unwrap();
    let e = thread
        .run(|connection| {
            futures_lite::future::block_on(
                connection.fetch_optional("SELECT $1, $3", &[Param::Int(1), Param::Int(2)]),
            )
        })
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("($3)"), "{e}");
}

#[tokio::test]
async fn a_batch_that_panics_fails_alone_and_the_thread_serves_the_next() {
    let file = ScratchSqlite::new("exec-panic");
    let thread = database(&file).sqlite_thread("test-writer").await.unwrap();
    let failed = thread
        .run(|connection| -> u32 {
            connection.execute_batch("BEGIN IMMEDIATE").unwrap();
            panic!("a bug in one batch, inside its transaction")
        })
        .await;
    assert!(failed.is_err(), "the panicking batch gets an error");
    let next = thread
        .run(|connection| {
            let open = !connection.is_autocommit();
            let answer = connection.query_row("SELECT 41 + 1", [], |row| row.get::<_, i64>(0));
            (open, answer)
        })
        .await
        .unwrap();
    assert!(!next.0, "the panicked batch's transaction was rolled back");
    assert_eq!(next.1.unwrap(), 42);
}

#[tokio::test]
async fn must_exist_opens_no_thread_on_a_missing_file() {
    let dir = ScratchDir::new("exec-missing");
    let path = dir.path().join("absent.db");
    let database =
        Database::new(&format!("sqlite://{}", path.display()), OpenMode::MustExist).unwrap();
    let e = database.sqlite_thread("test-writer").await.unwrap_err();
    assert!(matches!(e, SqlError::Missing { .. }), "{e:?}");
    assert!(!path.exists(), "nothing created");
}
