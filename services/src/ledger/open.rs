//! Opening a ledger: the connection pool (SQLite pragmas), the tables, the upgrade of an
//! older version's tables, and the ledger's identity.

use super::store::{Ledger, LedgerError};
use baton_ops::sql::{Backend, Database, OpenMode, SqlError};
use baton_worker::idempotency::{self, now_ms};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Row};
use uuid::Uuid;

/// Tables, in an order that never references a missing one. SQL valid on SQLite and
/// PostgreSQL alike: TEXT keys (uuids), BIGINT amounts, no autoincrement.
const SCHEMA: &[&str] = &[
    // `processed_commands`, the kit's claims ([`idempotency::TABLE`]); its `created_at`
    // (for `prune`) may be NULL only in rows written before it existed: see
    // [`COLUMNS_ADDED`].
    idempotency::TABLE,
    // `merchant_id` and `created_at` (Unix epoch milliseconds) may be NULL only in rows
    // placed before they existed: see [`COLUMNS_ADDED`].
    "CREATE TABLE IF NOT EXISTS holds (
        hold_id TEXT PRIMARY KEY,
        payment_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        status TEXT NOT NULL,
        merchant_id TEXT,
        created_at BIGINT
    )",
    "CREATE INDEX IF NOT EXISTS holds_by_payment ON holds (payment_id)",
    "CREATE TABLE IF NOT EXISTS transfers (
        transfer_id TEXT PRIMARY KEY,
        payment_id TEXT NOT NULL,
        hold_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        merchant_id TEXT NOT NULL,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        settlement_minor BIGINT NOT NULL,
        settlement_currency TEXT NOT NULL,
        fx_rate_micro BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS transfers_by_payment ON transfers (payment_id)",
    "CREATE TABLE IF NOT EXISTS ledger_entries (
        entry_id TEXT PRIMARY KEY,
        transfer_id TEXT NOT NULL,
        account TEXT NOT NULL,
        currency TEXT NOT NULL,
        debit_minor BIGINT NOT NULL,
        credit_minor BIGINT NOT NULL
    )",
    // One row: the ledger's identity, a random id drawn when the database is created
    // (and, for a ledger of an older version, when it is first opened by this one).
    // Authorization's approval carries it; transaction compares it with its own, so two
    // services wired to two different databases say so instead of declining payments.
    "CREATE TABLE IF NOT EXISTS ledger_identity (
        singleton BIGINT PRIMARY KEY,
        ledger_id TEXT NOT NULL
    )",
];

/// Columns added after a table's first release, `(table, column, type)`: a ledger
/// created by an older version gets them on open (SQLite has no `ADD COLUMN IF NOT
/// EXISTS`, so each is looked up first). Old holds keep `merchant_id` NULL — capture
/// then declines `hold_mismatch` (it cannot prove the merchant) and the audit checks
/// their other fields only. Old rows get the time of the upgrade as `created_at`, so an
/// old hold counts as stale one `--max-hold-age` after the upgrade, not at once, and
/// `prune` counts an old record's age from the upgrade too.
const COLUMNS_ADDED: &[(&str, &str, &str)] = &[
    ("holds", "merchant_id", "TEXT"),
    ("holds", "created_at", "BIGINT"),
    ("processed_commands", "created_at", "BIGINT"),
];

/// `sqlite://x.db` → `sqlite://x.db?mode=rwc` so a missing file is created (the tests'
/// own connections; `open` goes through [`Database`]).
#[cfg(test)]
pub(super) fn with_create_mode(url: &str) -> String {
    if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// Key of the PostgreSQL advisory lock that serialises schema set-up: two processes
/// creating one ledger at once could otherwise both pass a `CREATE … IF NOT EXISTS`
/// check, and the loser fail on the catalog's unique key.
const SCHEMA_LOCK: i64 = 0x6261_746f_6e4c_6467; // "batonLdg"

/// Creates the tables missing from [`SCHEMA`] and upgrades those of an older version. On
/// PostgreSQL in one transaction under [`SCHEMA_LOCK`] (DDL is transactional there); on
/// SQLite statement by statement, each atomic under its write lock.
async fn create_schema(pool: &AnyPool, postgres: bool) -> Result<(), sqlx::Error> {
    if postgres {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await?;
        apply_schema(&mut tx, postgres).await?;
        tx.commit().await
    } else {
        apply_schema(&mut *pool.acquire().await?, postgres).await
    }
}

/// Whether `table` has `column`. A catalog query, not a probe that fails: a failed
/// statement would abort PostgreSQL's transaction.
async fn has_column(
    conn: &mut AnyConnection,
    postgres: bool,
    table: &str,
    column: &str,
) -> Result<bool, sqlx::Error> {
    let query = if postgres {
        "SELECT COUNT(*) FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
    } else {
        "SELECT COUNT(*) FROM pragma_table_info($1) WHERE name = $2"
    };
    let count: i64 = sqlx::query(query)
        .bind(table)
        .bind(column)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    Ok(count > 0)
}

/// Runs [`SCHEMA`], then brings a ledger created by an older version up to it: adds the
/// [`COLUMNS_ADDED`] it lacks and dates undated holds and processed commands.
async fn apply_schema(conn: &mut AnyConnection, postgres: bool) -> Result<(), sqlx::Error> {
    for statement in SCHEMA {
        sqlx::query(statement).execute(&mut *conn).await?;
    }
    for (table, column, kind) in COLUMNS_ADDED {
        if has_column(conn, postgres, table, column).await? {
            continue;
        }
        let added = sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
            .execute(&mut *conn)
            .await;
        // Two SQLite processes may both have seen the column missing: the loser's
        // `ADD COLUMN` fails, and the column is there.
        if let Err(e) = added {
            if postgres || !has_column(conn, postgres, table, column).await? {
                return Err(e);
            }
        }
    }
    // Rows from before `created_at` (or written by an older process still running).
    for table in ["holds", "processed_commands"] {
        sqlx::query(&format!(
            "UPDATE {table} SET created_at = $1 WHERE created_at IS NULL"
        ))
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    }
    // The identity: drawn by whichever opener comes first, read by every later one.
    sqlx::query(
        "INSERT INTO ledger_identity (singleton, ledger_id) VALUES (1, $1) ON CONFLICT DO NOTHING",
    )
    .bind(Uuid::new_v4().to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The ledger's identity, as stored by [`apply_schema`].
async fn read_identity(pool: &AnyPool) -> Result<String, sqlx::Error> {
    sqlx::query("SELECT ledger_id FROM ledger_identity WHERE singleton = 1")
        .fetch_one(pool)
        .await?
        .try_get(0)
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `url`, creates its tables and upgrades
    /// those of an older version (holds gain `merchant_id` and `created_at`).
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        Self::open_with(url, OpenMode::Create).await
    }

    /// Opens an existing ledger, for tools that read it (`baton-transaction audit`,
    /// `prune`): a missing SQLite file is an error naming the absolute path looked at,
    /// never a new empty ledger, and a database without the ledger's tables is refused.
    /// (An older ledger's tables are upgraded, as `open` does.)
    pub async fn open_existing(url: &str) -> Result<Self, LedgerError> {
        Self::open_with(url, OpenMode::MustExist).await
    }

    async fn open_with(url: &str, mode: OpenMode) -> Result<Self, LedgerError> {
        let open_error = |cause: SqlError| match cause {
            SqlError::UnsupportedUrl { url, scheme } => LedgerError::UnsupportedUrl { url, scheme },
            cause => LedgerError::Open { cause },
        };
        let database = Database::new(url, mode).map_err(open_error)?;
        let postgres = database.backend() == Backend::Postgres;
        // SQLite admits one writer at a time. Several connections in one process would
        // only wait on each other in SQLite's busy handler, which sleeps in steps of up to
        // 100 ms: commands are written by the one writer thread (group commit), and the
        // pool's one connection serves reads, pruning and the audit.
        let options = AnyPoolOptions::new().max_connections(if postgres { 16 } else { 1 });
        let (pool, id) = database
            .open_store(
                options,
                "processed_commands",
                "Baton ledger",
                async |pool| {
                    create_schema(pool, postgres).await?;
                    read_identity(pool).await
                },
            )
            .await
            .map_err(open_error)?;
        let claims = if postgres {
            idempotency::Claims::pooled(pool)
        } else {
            match database.sqlite_thread("ledger-writer").await {
                Ok(thread) => idempotency::Claims::batched(pool, thread),
                Err(e) => {
                    pool.close().await;
                    return Err(open_error(e));
                }
            }
        };
        Ok(Self {
            claims,
            id: id.into(),
            location: database.location().into(),
        })
    }
}
