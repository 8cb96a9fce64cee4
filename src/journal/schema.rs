//! The journal's tables, created (and migrated) when a process opens it.

use super::time_after;
use sqlx::{AnyConnection, AnyPool, Row};
use uuid::Uuid;

/// Which database the journal is on: only schema creation differs between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Backend {
    /// `sqlite://…`: one machine, the group-commit writer.
    Sqlite,
    /// `postgres://…`: shared by replicas.
    Postgres,
}

/// Tables, valid on SQLite and PostgreSQL alike: TEXT ids, timestamps and JSON, BIGINT
/// numbers (sqlx's `Any` cannot decode unsigned integers).
///
/// Entries are ordered by `seq`, 1, 2, 3 … per payment (see
/// [`Journal::record`](super::Journal::record)); `(payment_id, seq)` is unique as a safety
/// net. `journal_sagas.last_seq` counts record attempts on PostgreSQL: earlier builds
/// numbered a PostgreSQL journal's entries from it, and it stays at least the highest
/// `seq` so that such a process, still running during an upgrade, cannot pick a number
/// already taken. (A SQLite journal's writes skip it: one writer, no such race.)
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS journal_sagas (
        payment_id TEXT PRIMARY KEY,
        summary TEXT NOT NULL,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        result TEXT,
        parked BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        lease_until TEXT
    )",
    "CREATE TABLE IF NOT EXISTS journal_entries (
        payment_id TEXT NOT NULL,
        step TEXT NOT NULL,
        action TEXT NOT NULL,
        seq BIGINT NOT NULL,
        recorded_at TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (payment_id, step, action)
    )",
    "CREATE UNIQUE INDEX IF NOT EXISTS journal_entries_in_order
        ON journal_entries (payment_id, seq)",
    // One row: the journal's identity, drawn when the database is created (or when a
    // journal of an older version is first opened by this one). Orchestrators announce
    // it on the broker, so `baton doctor` can tell replicas that share a journal from
    // replicas that only think they do.
    "CREATE TABLE IF NOT EXISTS journal_identity (
        singleton BIGINT PRIMARY KEY,
        journal_id TEXT NOT NULL
    )",
];

/// Statements run after [`SCHEMA`] and [`SAGA_COLUMNS_ADDED`]: they name columns an older
/// journal gains on open.
const SCHEMA_AFTER_MIGRATION: &[&str] = &[
    // The sweeper's and the metrics' question: which sagas are running, oldest lease first.
    "CREATE INDEX IF NOT EXISTS journal_sagas_running
        ON journal_sagas (lease_until) WHERE result IS NULL",
];

/// Columns of `journal_sagas` added after its first release: a journal created by an older
/// version gets them on open. Running sagas of an old journal get a lease from the time of
/// the upgrade, so the sweeper leaves them one lease to an old process still running them.
const SAGA_COLUMNS_ADDED: &[(&str, &str)] = &[("lease_until", "TEXT")];

/// Key of the PostgreSQL advisory lock that serialises schema creation ("batonjnl").
const SCHEMA_LOCK: i64 = 0x6261_746f_6e6a_6e6c;

/// Creates the tables if missing, in one transaction.
///
/// On PostgreSQL, `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent creation
/// of the same name: the loser fails with a unique violation in the system catalogue.
/// Replicas start together, so creation is serialised on a transaction-scoped advisory
/// lock; a second opener waits, then finds the tables. (PostgreSQL DDL is transactional,
/// so the tables appear together at commit.) On SQLite the transaction takes the
/// database write lock, which serialises openers the same way.
pub(super) async fn create_schema(pool: &AnyPool, backend: Backend) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if backend == Backend::Postgres {
        // `SELECT 1 FROM …`: sqlx's Any driver cannot decode the `void` the function returns.
        sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .fetch_one(&mut *tx)
            .await?;
    }
    for statement in SCHEMA {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    let postgres = backend == Backend::Postgres;
    for (column, kind) in SAGA_COLUMNS_ADDED {
        if sagas_have_column(&mut tx, postgres, column).await? {
            continue;
        }
        let added = sqlx::query(&format!(
            "ALTER TABLE journal_sagas ADD COLUMN {column} {kind}"
        ))
        .execute(&mut *tx)
        .await;
        // Two SQLite processes may both have seen the column missing (a deferred
        // transaction takes the write lock only at its first write): the loser's
        // `ADD COLUMN` fails, and the column is there. PostgreSQL holds the advisory lock.
        if let Err(e) = added {
            if postgres || !sagas_have_column(&mut tx, postgres, column).await? {
                return Err(e);
            }
        }
    }
    // Running sagas from before leases (or begun by an older process still running).
    sqlx::query(
        "UPDATE journal_sagas SET lease_until = $1 WHERE lease_until IS NULL AND result IS NULL",
    )
    .bind(time_after(super::DEFAULT_LEASE))
    .execute(&mut *tx)
    .await?;
    for statement in SCHEMA_AFTER_MIGRATION {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    // The identity: drawn by the first opener, kept by every later one.
    sqlx::query(
        "INSERT INTO journal_identity (singleton, journal_id) VALUES (1, $1) ON CONFLICT DO NOTHING",
    )
    .bind(Uuid::new_v4().to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The journal's identity, as stored by [`create_schema`].
pub(super) async fn read_identity(pool: &AnyPool) -> Result<String, sqlx::Error> {
    sqlx::query("SELECT journal_id FROM journal_identity WHERE singleton = 1")
        .fetch_one(pool)
        .await?
        .try_get(0)
}

/// Whether `journal_sagas` has `column` (SQLite has no `ADD COLUMN IF NOT EXISTS`). Asked
/// inside the schema transaction, which holds the write lock (SQLite) or the advisory lock
/// (PostgreSQL): two openers cannot both add it.
async fn sagas_have_column(
    conn: &mut AnyConnection,
    postgres: bool,
    column: &str,
) -> Result<bool, sqlx::Error> {
    let query = if postgres {
        "SELECT COUNT(*) FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'journal_sagas'
           AND column_name = $1"
    } else {
        "SELECT COUNT(*) FROM pragma_table_info('journal_sagas') WHERE name = $1"
    };
    let count: i64 = sqlx::query(query)
        .bind(column)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    Ok(count > 0)
}
