//! The ledger store shared by the authorization and transaction services: holds,
//! transfers, double-entry lines, and the replies already given, keyed by `command_id`.
//!
//! Every effect runs in one database transaction whose *first* statement claims the
//! command id (`INSERT … ON CONFLICT DO NOTHING`). That first write makes SQLite take its
//! write lock up-front and makes PostgreSQL serialise concurrent duplicates on the unique
//! key, so a repeated command — even two deliveries at once, from two processes — gets
//! the stored reply and moves nothing twice. Approved and declined replies are stored; a
//! database error rolls everything back so a retry may act.
//!
//! A hold records what was authorized — customer, merchant, amount, currency — and when;
//! a capture moves money only for exactly those (`hold_mismatch` otherwise), so a command
//! naming a real hold cannot pay with another customer's money, pay another merchant or
//! raise the amount. [`Ledger::audit`] checks every transfer against its hold again.
//!
//! Backends: `sqlite://path` (created if missing, WAL, `synchronous=FULL`) or
//! `postgres://…`, through sqlx's `Any` driver with `$1` placeholders on both. Opening a
//! ledger of an older version upgrades its tables (holds gain `merchant_id`, `created_at`).
//! This module knows the rules only through [`crate::rules`]; it knows nothing about AMQP.

use crate::rules::{self, Decline};
use baton_contract::{Money, Reply};
use baton_ops::sql::{Backend, Database, OpenMode, SqlError};
use serde_json::{json, Map, Value};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};
use std::sync::Arc;
#[cfg(test)]
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// Errors of the ledger. All but [`LedgerError::UnsupportedUrl`] may go away on retry.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The URL names no supported backend.
    #[error("ledger URL {url} is not supported: use sqlite://<path> or postgres://…")]
    UnsupportedUrl {
        /// The URL, password removed.
        url: String,
    },
    /// The database could not be opened (its message names the file or the URL without
    /// its password), or its tables not created.
    #[error("cannot open the ledger: {cause}")]
    Open {
        /// Why, as the SQL opener says it.
        cause: SqlError,
    },
    /// A query failed (connection lost, lock timeout, …): retry later.
    #[error("ledger database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored reply cannot be read back: the database was edited by hand.
    #[error("stored reply of command {command_id} is unreadable: {problem}")]
    CorruptReply {
        /// The command whose reply is damaged.
        command_id: String,
        /// What is wrong.
        problem: String,
    },
}

/// Totals of one currency over every ledger line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrencyTotal {
    /// ISO code.
    pub currency: String,
    /// Sum of debits, minor units.
    pub debit_minor: i64,
    /// Sum of credits, minor units.
    pub credit_minor: i64,
}

/// A transfer that is not what its hold authorized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferMismatch {
    /// The transfer.
    pub transfer_id: String,
    /// Its payment.
    pub payment_id: String,
    /// The hold it names.
    pub hold_id: String,
    /// What differs from the hold: `hold_missing` (no such hold), `payment_id` (the hold
    /// is another payment's), `status` (the hold is not captured), `amount`, `currency`,
    /// `customer_id`, `merchant_id`. Names only, never values.
    pub fields: Vec<String>,
}

/// A hold neither captured nor voided for longer than the audit's maximum hold age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleHold {
    /// The hold.
    pub hold_id: String,
    /// Its payment.
    pub payment_id: String,
    /// How long it has been open (whole seconds).
    pub age: Duration,
}

/// What an auditor checks: no payment paid twice, books balanced per currency, every
/// transfer what its hold authorized, no hold left open too long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    /// Transfers recorded.
    pub transfers: u64,
    /// Payments with more than one transfer, and how many each has (should be empty).
    pub duplicate_transfers: Vec<(String, u64)>,
    /// Debit and credit totals per currency.
    pub totals: Vec<CurrencyTotal>,
    /// Whether debits equal credits in every currency.
    pub balanced: bool,
    /// Holds neither captured nor voided.
    pub open_holds: u64,
    /// Transfers that differ from their hold, or whose hold is missing (should be empty).
    pub hold_mismatches: Vec<TransferMismatch>,
    /// The age past which an open hold is stale.
    pub max_hold_age: Duration,
    /// Open holds older than [`Audit::max_hold_age`], oldest first (should be empty).
    pub stale_holds: Vec<StaleHold>,
}

impl Audit {
    /// No payment paid twice, debits equal to credits in every currency, every transfer
    /// matching its hold, and no hold open longer than [`Audit::max_hold_age`]. Younger
    /// open holds are normal (payments in flight) and do not count.
    pub fn is_sound(&self) -> bool {
        self.balanced
            && self.duplicate_transfers.is_empty()
            && self.hold_mismatches.is_empty()
            && self.stale_holds.is_empty()
    }
}

/// What a transaction step needs to capture a hold and move the money.
#[derive(Clone, Debug)]
pub struct Capture {
    /// The payment.
    pub payment_id: Uuid,
    /// The hold placed by authorization.
    pub hold_id: String,
    /// Who pays.
    pub customer_id: String,
    /// Who is paid.
    pub merchant_id: String,
    /// What the customer pays.
    pub amount: Money,
    /// What the merchant is paid in.
    pub settlement_currency: baton_contract::Currency,
}

/// Tables, in an order that never references a missing one. SQL valid on SQLite and
/// PostgreSQL alike: TEXT keys (uuids), BIGINT amounts, no autoincrement.
const SCHEMA: &[&str] = &[
    // `created_at` (Unix epoch milliseconds, for `prune`) may be NULL only in rows
    // written before it existed: see [`COLUMNS_ADDED`].
    "CREATE TABLE IF NOT EXISTS processed_commands (
        command_id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        reply TEXT,
        created_at BIGINT
    )",
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

/// How long a hold may stay open before the audit reports it (and fails): a payment in
/// flight holds for seconds; an hour means the orchestrator neither captured nor voided it.
pub const DEFAULT_MAX_HOLD_AGE: Duration = Duration::from_secs(3600);

/// How old a record must be before `prune` deletes it, by default: 30 days.
pub const DEFAULT_PRUNE_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The shortest age `prune` accepts: a processed command is what makes a repeated
/// command harmless, and a request can come back long after it was first processed (a
/// dead letter replayed, a client re-sending), so forgetting faster than a day would
/// let an authorization repeated after that place a second hold.
pub const MIN_PRUNE_AGE: Duration = Duration::from_secs(24 * 3600);

/// Rows `prune` deletes per statement or transaction, so that a large prune never holds
/// SQLite's one write lock (or PostgreSQL row locks) long enough to stall the services.
const PRUNE_BATCH: i64 = 500;

/// What [`Ledger::prune`] deleted (or, in a dry run, would delete).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Records of processed commands (with their stored replies).
    pub processed_commands: u64,
    /// Voided holds (no money moved).
    pub voided_holds: u64,
    /// Captured holds, each deleted with its one transfer.
    pub captured_holds: u64,
    /// Transfers (one per captured hold above).
    pub transfers: u64,
    /// Double-entry lines of those transfers (they balance per currency, so the books
    /// stay balanced).
    pub ledger_entries: u64,
}

/// Captured holds `prune` may delete with their transfer (`h`, `t`; `$1` = the cutoff):
/// placed before the cutoff, exactly one transfer for the hold and for the payment, the
/// transfer matching the hold in every field the audit checks, and the transfer's lines
/// balanced per currency. Anything the audit would report stays, for the audit to
/// report: a duplicate transfer, a transfer unlike its hold, unbalanced lines.
const PRUNABLE_CAPTURES: &str = "FROM holds h JOIN transfers t ON t.hold_id = h.hold_id
    WHERE h.status = 'captured' AND h.created_at < $1
      AND t.payment_id = h.payment_id AND t.customer_id = h.customer_id
      AND t.amount_minor = h.amount_minor AND t.currency = h.currency
      AND (h.merchant_id IS NULL OR h.merchant_id = t.merchant_id)
      AND (SELECT COUNT(*) FROM transfers o WHERE o.payment_id = h.payment_id) = 1
      AND (SELECT COUNT(*) FROM transfers o WHERE o.hold_id = h.hold_id) = 1
      AND NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.transfer_id = t.transfer_id
          GROUP BY e.currency HAVING SUM(e.debit_minor) <> SUM(e.credit_minor))";

/// Voided holds `prune` may delete (`h`): placed before the cutoff, and no transfer
/// names them (one that did would be an audit finding).
const PRUNABLE_VOIDS: &str = "FROM holds h
    WHERE h.status = 'voided' AND h.created_at < $1
      AND NOT EXISTS (SELECT 1 FROM transfers t WHERE t.hold_id = h.hold_id)";

/// Processed commands `prune` may delete (`p`): recorded before the cutoff, and not of
/// a payment whose hold is still open — a compensation that finds no record of its
/// authorization records a pre-emption instead of voiding, so an open hold's records
/// must stay for as long as it is open. Command ids are `<payment_id>:<step>…`.
const PRUNABLE_COMMANDS: &str = "FROM processed_commands p
    WHERE p.created_at < $1
      AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.status = 'held'
          AND h.payment_id = substr(p.command_id, 1, 36)
          AND substr(p.command_id, 37, 1) = ':')";

/// Outcome of claiming a command id at the start of a transaction.
enum Claim {
    /// First time: act inside this transaction, then [`Ledger::finish`].
    Fresh(Transaction<'static, Any>),
    /// Already answered: this is the stored reply.
    Done(Answer),
}

/// A reply, and whether it was the stored answer to a repeated command (the service
/// counts those: many repeats mean the orchestrator retries a lot).
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The reply to send.
    pub reply: Reply,
    /// True when the command had been processed before and nothing was done now.
    pub replayed: bool,
}

impl Answer {
    /// A reply computed now.
    pub fn fresh(reply: Reply) -> Self {
        Self {
            reply,
            replayed: false,
        }
    }
}

/// The ledger database. Cheap to clone (a connection pool).
#[derive(Clone, Debug)]
pub struct Ledger {
    /// Pool of `Any` connections: the same code runs on SQLite and PostgreSQL.
    pool: AnyPool,
    /// The database's identity (`ledger_identity`), read once at open: pings and
    /// approvals report it without touching the database.
    id: Arc<str>,
    /// Where the database is: an absolute file path or the URL without its password.
    location: Arc<str>,
}

/// Registers sqlx's `Any` drivers, once per process (the tests' own connections; the
/// opener registers them for `open`).
#[cfg(test)]
fn install_drivers() {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
}

/// `sqlite://x.db` → `sqlite://x.db?mode=rwc` so a missing file is created (the tests'
/// own connections).
#[cfg(test)]
fn with_create_mode(url: &str) -> String {
    if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

fn i64_of(value: u64, what: &str) -> Result<i64, Decline> {
    i64::try_from(value).map_err(|_| Decline {
        reason: "amount_too_large",
        detail: format!("{what} {value} is too large to store"),
    })
}

fn u64_of(value: i64) -> u64 {
    // Counts and stored amounts are never negative.
    u64::try_from(value).unwrap_or(0)
}

/// The columns of a hold a capture must match, as stored.
struct StoredHold {
    /// `held`, `captured` or `voided`.
    status: String,
    customer_id: String,
    /// NULL in holds placed before merchants were recorded.
    merchant_id: Option<String>,
    amount_minor: i64,
    currency: String,
}

impl StoredHold {
    fn of(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            status: row.try_get(0)?,
            customer_id: row.try_get(1)?,
            merchant_id: row.try_get(2)?,
            amount_minor: row.try_get(3)?,
            currency: row.try_get(4)?,
        })
    }

    /// Names of the fields in which a capture (or transfer) differs from this hold, in
    /// a fixed order. A hold without a merchant matches no merchant.
    fn differences(
        &self,
        customer_id: &str,
        merchant_id: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if self.amount_minor != amount_minor {
            fields.push("amount");
        }
        if self.currency != currency {
            fields.push("currency");
        }
        if self.customer_id != customer_id {
            fields.push("customer_id");
        }
        if self.merchant_id.as_deref() != Some(merchant_id) {
            fields.push("merchant_id");
        }
        fields
    }
}

/// The decline of a capture that differs from its hold in `fields`. It names the fields,
/// never a value: the command's may be anything, the hold's are the real customer's.
fn hold_mismatch(fields: &[&str]) -> Decline {
    let fields = if fields.is_empty() {
        // Only if the hold changed between the update and the read: it never does.
        "the hold".to_owned()
    } else {
        fields.join(", ")
    };
    Decline {
        reason: "hold_mismatch",
        detail: format!(
            "the capture differs from its authorization hold in {fields}: a capture must \
             be for the authorized amount, customer and merchant; nothing was moved"
        ),
    }
}

fn declined(command_id: &str, decline: Decline) -> Reply {
    Reply::declined(command_id, decline.reason, decline.detail)
}

fn data(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Now, in Unix epoch milliseconds (the unit of `holds.created_at`).
fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
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

    /// Opens an existing ledger, for tools that read it (`baton-transaction audit`): a
    /// missing SQLite file is an error naming the absolute path looked at, never a new
    /// empty ledger, and a database without the ledger's tables is refused. (An older
    /// ledger's tables are upgraded, as `open` does.)
    pub async fn open_existing(url: &str) -> Result<Self, LedgerError> {
        Self::open_with(url, OpenMode::MustExist).await
    }

    async fn open_with(url: &str, mode: OpenMode) -> Result<Self, LedgerError> {
        let open_error = |cause: SqlError| match cause {
            SqlError::UnsupportedUrl { url, .. } => LedgerError::UnsupportedUrl { url },
            cause => LedgerError::Open { cause },
        };
        let database = Database::new(url, mode).map_err(open_error)?;
        let postgres = database.backend() == Backend::Postgres;
        // SQLite admits one writer at a time. Several connections in one process would
        // only wait on each other in SQLite's busy handler, which sleeps in steps of up to
        // 100 ms; one connection queues them fairly in the pool.
        let options = AnyPoolOptions::new().max_connections(if postgres { 16 } else { 1 });
        let pool = database.pool(options).await.map_err(open_error)?;
        let schema = async {
            if mode == OpenMode::MustExist {
                database
                    .require_table(&pool, "processed_commands", "Baton ledger")
                    .await?;
            }
            create_schema(&pool, postgres)
                .await
                .map_err(|e| database.error(e))?;
            read_identity(&pool).await.map_err(|e| database.error(e))
        };
        let id = match schema.await {
            Ok(id) => id,
            Err(e) => {
                pool.close().await;
                return Err(open_error(e));
            }
        };
        Ok(Self {
            pool,
            id: id.into(),
            location: database.location().into(),
        })
    }

    /// The ledger's identity: a random id drawn when the database was created, the same
    /// for every process that opens this database and different for any other.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the ledger is: the database file's absolute path, or the URL without its
    /// password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Closes every connection (waits for checked-out ones to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a transaction whose first statement claims `command_id`.
    async fn claim(&self, command_id: &str, service: &str) -> Result<Claim, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO processed_commands (command_id, service, reply, created_at)
             VALUES ($1, $2, NULL, $3) ON CONFLICT DO NOTHING",
        )
        .bind(command_id)
        .bind(service)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Claim::Fresh(tx));
        }
        let row = sqlx::query("SELECT reply FROM processed_commands WHERE command_id = $1")
            .bind(command_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        let stored: Option<String> = row.try_get(0)?;
        let corrupt = |problem: String| LedgerError::CorruptReply {
            command_id: command_id.to_owned(),
            problem,
        };
        let text = stored.ok_or_else(|| corrupt("no reply stored".into()))?;
        let mut reply: Reply = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        // A reply stored on behalf of another command (a compensation pre-empting an
        // execute) is answered under the id actually asked.
        reply.command_id = command_id.to_owned();
        Ok(Claim::Done(Answer {
            reply,
            replayed: true,
        }))
    }

    /// Stores `reply` for the claimed command and commits the effect with it.
    async fn finish(
        &self,
        mut tx: Transaction<'static, Any>,
        command_id: &str,
        reply: Reply,
    ) -> Result<Answer, LedgerError> {
        let text = serde_json::to_string(&reply).map_err(|e| LedgerError::CorruptReply {
            command_id: command_id.to_owned(),
            problem: e.to_string(),
        })?;
        sqlx::query("UPDATE processed_commands SET reply = $1 WHERE command_id = $2")
            .bind(text)
            .bind(command_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Answer::fresh(reply))
    }

    /// Authorization, execute: if `decision` approves, places a hold of `customer_id`
    /// for `amount` payable to `merchant_id` — exactly what a capture must then match —
    /// and replies `{"hold_id"}`; otherwise stores the decline. Idempotent by `command_id`.
    pub async fn place_hold(
        &self,
        command_id: &str,
        payment_id: Uuid,
        customer_id: &str,
        merchant_id: &str,
        amount: Money,
        decision: Result<(), Decline>,
    ) -> Result<Reply, LedgerError> {
        self.place_hold_answer(
            command_id,
            payment_id,
            customer_id,
            merchant_id,
            amount,
            decision,
        )
        .await
        .map(|answer| answer.reply)
    }

    /// [`Ledger::place_hold`], saying whether the reply was replayed from the store.
    pub async fn place_hold_answer(
        &self,
        command_id: &str,
        payment_id: Uuid,
        customer_id: &str,
        merchant_id: &str,
        amount: Money,
        decision: Result<(), Decline>,
    ) -> Result<Answer, LedgerError> {
        let mut tx = match self.claim(command_id, "authorization").await? {
            Claim::Done(answer) => return Ok(answer),
            Claim::Fresh(tx) => tx,
        };
        let amount_minor = match decision.and_then(|()| i64_of(amount.minor, "amount")) {
            Ok(minor) => minor,
            Err(decline) => {
                return self
                    .finish(tx, command_id, declined(command_id, decline))
                    .await
            }
        };
        let hold_id = Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO holds (hold_id, payment_id, customer_id, merchant_id, amount_minor,
                currency, status, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'held', $7)",
        )
        .bind(&hold_id)
        .bind(payment_id.to_string())
        .bind(customer_id)
        .bind(merchant_id)
        .bind(amount_minor)
        .bind(amount.currency.as_str())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        // The ledger's identity travels with the hold: the capture checks it is looking at
        // the same ledger before it looks for the hold.
        let reply = Reply::approved(
            command_id,
            data(json!({
                "hold_id": hold_id,
                baton_contract::LEDGER_ID: self.id(),
                baton_contract::LEDGER_AT: self.location(),
            })),
        );
        self.finish(tx, command_id, reply).await
    }

    /// Authorization, compensate: voids the payment's hold. If the execute command
    /// (`execute_command_id`) was never processed, stores a decline under its id first,
    /// so a late execute can never place a hold afterwards. Idempotent by `command_id`.
    pub async fn void_hold(
        &self,
        command_id: &str,
        execute_command_id: &str,
        payment_id: Uuid,
    ) -> Result<Reply, LedgerError> {
        self.void_hold_answer(command_id, execute_command_id, payment_id)
            .await
            .map(|answer| answer.reply)
    }

    /// [`Ledger::void_hold`], saying whether the reply was replayed from the store.
    pub async fn void_hold_answer(
        &self,
        command_id: &str,
        execute_command_id: &str,
        payment_id: Uuid,
    ) -> Result<Answer, LedgerError> {
        let mut tx = match self.claim(command_id, "authorization").await? {
            Claim::Done(answer) => return Ok(answer),
            Claim::Fresh(tx) => tx,
        };
        let pre_empt = Reply::declined(
            execute_command_id,
            "voided_before_authorization",
            "the authorization was compensated before it was processed",
        );
        let pre_empt = serde_json::to_string(&pre_empt).map_err(|e| LedgerError::CorruptReply {
            command_id: execute_command_id.to_owned(),
            problem: e.to_string(),
        })?;
        // On PostgreSQL this waits for an execute still in flight to commit or roll back,
        // so the answer below never misses a hold being placed concurrently.
        let pre_empted = sqlx::query(
            "INSERT INTO processed_commands (command_id, service, reply, created_at)
             VALUES ($1, 'authorization', $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(execute_command_id)
        .bind(pre_empt)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let reply = if pre_empted {
            Reply::approved(command_id, data(json!({ "voided": false })))
        } else {
            let voided = sqlx::query(
                "UPDATE holds SET status = 'voided' WHERE payment_id = $1 AND status = 'held'",
            )
            .bind(payment_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let captured: i64 = sqlx::query(
                "SELECT COUNT(*) FROM holds WHERE payment_id = $1 AND status = 'captured'",
            )
            .bind(payment_id.to_string())
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            if voided == 0 && captured > 0 {
                Reply::declined(
                    command_id,
                    "hold_captured",
                    "the hold was already captured: the money has moved and cannot be voided",
                )
            } else {
                Reply::approved(command_id, data(json!({ "voided": voided > 0 })))
            }
        };
        self.finish(tx, command_id, reply).await
    }

    /// Transaction, execute: captures the hold, records one transfer and its balanced
    /// double-entry lines, and replies with the settlement. Idempotent by `command_id`.
    pub async fn capture(&self, command_id: &str, capture: &Capture) -> Result<Reply, LedgerError> {
        self.capture_answer(command_id, capture)
            .await
            .map(|answer| answer.reply)
    }

    /// [`Ledger::capture`], saying whether the reply was replayed from the store.
    pub async fn capture_answer(
        &self,
        command_id: &str,
        capture: &Capture,
    ) -> Result<Answer, LedgerError> {
        let mut tx = match self.claim(command_id, "transaction").await? {
            Claim::Done(answer) => return Ok(answer),
            Claim::Fresh(tx) => tx,
        };
        let conversion = match rules::convert(capture.amount, capture.settlement_currency) {
            Ok(c) => c,
            Err(decline) => {
                return self
                    .finish(tx, command_id, declined(command_id, decline))
                    .await
            }
        };
        let settlement = conversion.settlement;
        let amounts = i64_of(capture.amount.minor, "amount").and_then(|a| {
            Ok((
                a,
                i64_of(settlement.minor, "settlement")?,
                i64_of(conversion.fx_rate_micro, "fx rate")?,
            ))
        });
        let (amount_minor, settlement_minor, fx_rate_micro) = match amounts {
            Ok(values) => values,
            Err(decline) => {
                return self
                    .finish(tx, command_id, declined(command_id, decline))
                    .await
            }
        };
        let payment_id = capture.payment_id.to_string();
        // Only a capture of exactly what was authorized — this customer, this merchant,
        // this amount — moves money; the status condition makes it race-safe against a
        // concurrent void or a second capture under another command id. A hold's other
        // columns never change, so the explanation read below is the one that applied.
        let captured = sqlx::query(
            "UPDATE holds SET status = 'captured'
             WHERE hold_id = $1 AND payment_id = $2 AND status = 'held'
               AND customer_id = $3 AND merchant_id = $4 AND amount_minor = $5
               AND currency = $6",
        )
        .bind(&capture.hold_id)
        .bind(&payment_id)
        .bind(&capture.customer_id)
        .bind(&capture.merchant_id)
        .bind(amount_minor)
        .bind(capture.amount.currency.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if captured != 1 {
            let hold = sqlx::query(
                "SELECT status, customer_id, merchant_id, amount_minor, currency
                 FROM holds WHERE hold_id = $1 AND payment_id = $2",
            )
            .bind(&capture.hold_id)
            .bind(&payment_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row: AnyRow| StoredHold::of(&row))
            .transpose()?;
            let decline = match hold {
                Some(hold) if hold.status == "voided" => Decline {
                    reason: "hold_voided",
                    detail: "the authorization hold was voided".into(),
                },
                Some(hold) if hold.status != "held" => Decline {
                    reason: "hold_captured",
                    detail: "the authorization hold was already captured by another command".into(),
                },
                Some(hold) => hold_mismatch(&hold.differences(
                    &capture.customer_id,
                    &capture.merchant_id,
                    amount_minor,
                    capture.amount.currency.as_str(),
                )),
                None => Decline {
                    reason: "hold_not_found",
                    detail: format!("no hold {} for this payment", capture.hold_id),
                },
            };
            return self
                .finish(tx, command_id, declined(command_id, decline))
                .await;
        }
        let transfer_id = Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO transfers (transfer_id, payment_id, hold_id, customer_id, merchant_id,
                amount_minor, currency, settlement_minor, settlement_currency, fx_rate_micro)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&transfer_id)
        .bind(&payment_id)
        .bind(&capture.hold_id)
        .bind(&capture.customer_id)
        .bind(&capture.merchant_id)
        .bind(amount_minor)
        .bind(capture.amount.currency.as_str())
        .bind(settlement_minor)
        .bind(settlement.currency.as_str())
        .bind(fx_rate_micro)
        .execute(&mut *tx)
        .await?;
        let entries = rules::transfer_entries(
            &capture.customer_id,
            &capture.merchant_id,
            capture.amount,
            settlement,
        );
        for entry in entries {
            // Each line fits: it is the amount or the settlement, both checked above.
            let debit = i64_of(entry.debit_minor, "debit").unwrap_or(i64::MAX);
            let credit = i64_of(entry.credit_minor, "credit").unwrap_or(i64::MAX);
            sqlx::query(
                "INSERT INTO ledger_entries
                    (entry_id, transfer_id, account, currency, debit_minor, credit_minor)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(Uuid::new_v4().to_string())
            .bind(&transfer_id)
            .bind(entry.account)
            .bind(entry.currency.as_str())
            .bind(debit)
            .bind(credit)
            .execute(&mut *tx)
            .await?;
        }
        let reply = Reply::approved(
            command_id,
            data(json!({
                "transfer_id": transfer_id,
                "settlement": settlement,
                "fx_rate_micro": conversion.fx_rate_micro,
            })),
        );
        self.finish(tx, command_id, reply).await
    }

    /// The audit with the default maximum hold age ([`DEFAULT_MAX_HOLD_AGE`]).
    pub async fn audit(&self) -> Result<Audit, LedgerError> {
        self.audit_with(DEFAULT_MAX_HOLD_AGE).await
    }

    /// The audit: transfers, duplicates, per-currency totals, balance, open holds,
    /// transfers that differ from their hold, and holds open longer than `max_hold_age`.
    pub async fn audit_with(&self, max_hold_age: Duration) -> Result<Audit, LedgerError> {
        let transfers: i64 = sqlx::query("SELECT COUNT(*) FROM transfers")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let duplicate_transfers = sqlx::query(
            "SELECT payment_id, COUNT(*) FROM transfers GROUP BY payment_id
             HAVING COUNT(*) > 1 ORDER BY payment_id",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|row| Ok((row.try_get::<String, _>(0)?, u64_of(row.try_get(1)?))))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        // SUM of BIGINT is NUMERIC on PostgreSQL, which `Any` cannot decode: cast back.
        let totals = sqlx::query(
            "SELECT currency, CAST(SUM(debit_minor) AS BIGINT), CAST(SUM(credit_minor) AS BIGINT)
             FROM ledger_entries GROUP BY currency ORDER BY currency",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|row| {
            Ok(CurrencyTotal {
                currency: row.try_get(0)?,
                debit_minor: row.try_get(1)?,
                credit_minor: row.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let open_holds: i64 = sqlx::query("SELECT COUNT(*) FROM holds WHERE status = 'held'")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(Audit {
            transfers: u64_of(transfers),
            duplicate_transfers,
            balanced: totals.iter().all(|t| t.debit_minor == t.credit_minor),
            totals,
            open_holds: u64_of(open_holds),
            hold_mismatches: self.hold_mismatches().await?,
            stale_holds: self.stale_holds(max_hold_age).await?,
            max_hold_age,
        })
    }

    /// Transfers that are not what their hold authorized. The database picks the
    /// suspects (a ledger is mostly sound); the fields are named here.
    async fn hold_mismatches(&self) -> Result<Vec<TransferMismatch>, LedgerError> {
        let rows = sqlx::query(
            "SELECT t.transfer_id, t.payment_id, t.hold_id, t.customer_id, t.merchant_id,
                t.amount_minor, t.currency,
                h.hold_id, h.payment_id, h.status, h.customer_id, h.merchant_id,
                h.amount_minor, h.currency
             FROM transfers t LEFT JOIN holds h ON h.hold_id = t.hold_id
             WHERE h.hold_id IS NULL OR h.payment_id <> t.payment_id
                OR h.status <> 'captured' OR h.customer_id <> t.customer_id
                OR h.amount_minor <> t.amount_minor OR h.currency <> t.currency
                OR (h.merchant_id IS NOT NULL AND h.merchant_id <> t.merchant_id)
             ORDER BY t.payment_id, t.transfer_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut mismatches = Vec::with_capacity(rows.len());
        for row in rows {
            let hold_payment: Option<String> = row.try_get(8)?;
            let payment_id: String = row.try_get(1)?;
            let fields = match hold_payment {
                None => vec!["hold_missing".to_owned()],
                Some(hold_payment) => {
                    let hold = StoredHold {
                        status: row.try_get(9)?,
                        customer_id: row.try_get(10)?,
                        merchant_id: row.try_get(11)?,
                        amount_minor: row.try_get(12)?,
                        currency: row.try_get(13)?,
                    };
                    let merchant_id: String = row.try_get(4)?;
                    // A hold from before merchants were recorded cannot say: not counted.
                    let known_merchant = hold.merchant_id.is_some();
                    let mut fields = Vec::new();
                    if hold_payment != payment_id {
                        fields.push("payment_id");
                    }
                    if hold.status != "captured" {
                        fields.push("status");
                    }
                    fields.extend(
                        hold.differences(
                            &row.try_get::<String, _>(3)?,
                            &merchant_id,
                            row.try_get(5)?,
                            &row.try_get::<String, _>(6)?,
                        )
                        .into_iter()
                        .filter(|field| known_merchant || *field != "merchant_id"),
                    );
                    fields.into_iter().map(str::to_owned).collect()
                }
            };
            mismatches.push(TransferMismatch {
                transfer_id: row.try_get(0)?,
                payment_id,
                hold_id: row.try_get(2)?,
                fields,
            });
        }
        Ok(mismatches)
    }

    /// Holds still `held` that were placed more than `max_hold_age` ago, oldest first.
    async fn stale_holds(&self, max_hold_age: Duration) -> Result<Vec<StaleHold>, LedgerError> {
        let now = now_ms();
        let max_ms = i64::try_from(max_hold_age.as_millis()).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT hold_id, payment_id, created_at FROM holds
             WHERE status = 'held' AND created_at < $1
             ORDER BY created_at, hold_id",
        )
        .bind(now.saturating_sub(max_ms))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let created_at: i64 = row.try_get(2)?;
                let age_ms = u64_of(now.saturating_sub(created_at));
                Ok(StaleHold {
                    hold_id: row.try_get(0)?,
                    payment_id: row.try_get(1)?,
                    age: Duration::from_secs(age_ms / 1000),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(LedgerError::from)
    }

    /// Deletes what is older than `older_than` and finished: processed-command records,
    /// voided holds, and captured holds together with their transfer and its ledger
    /// lines — never an open (`held`) hold nor the records of its payment's commands,
    /// and nothing the audit would report (see [`PRUNABLE_CAPTURES`]), so the audit of
    /// what remains is as sound as before. With `dry_run`, counts instead. In batches of
    /// [`PRUNE_BATCH`], each its own transaction: safe while the services run, and an
    /// interrupted prune leaves a consistent ledger (run it again).
    ///
    /// A command repeated after its record is pruned is processed as new: a transaction
    /// finds its hold gone (`hold_not_found`), an authorization places a new hold. Keep
    /// `older_than` above the time a request can still come back.
    pub async fn prune(&self, older_than: Duration, dry_run: bool) -> Result<Pruned, LedgerError> {
        let age_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(age_ms);
        if dry_run {
            return self.count_prunable(cutoff).await;
        }
        let mut pruned = Pruned::default();
        loop {
            let mut tx = self.pool.begin().await?;
            let pairs = sqlx::query(&format!(
                "SELECT h.hold_id, t.transfer_id {PRUNABLE_CAPTURES}
                 ORDER BY h.created_at LIMIT {PRUNE_BATCH}"
            ))
            .bind(cutoff)
            .fetch_all(&mut *tx)
            .await?;
            if pairs.is_empty() {
                tx.commit().await?;
                break;
            }
            for row in pairs {
                let hold_id: String = row.try_get(0)?;
                let transfer_id: String = row.try_get(1)?;
                pruned.ledger_entries +=
                    sqlx::query("DELETE FROM ledger_entries WHERE transfer_id = $1")
                        .bind(&transfer_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                pruned.transfers +=
                    sqlx::query("DELETE FROM transfers WHERE transfer_id = $1 AND hold_id = $2")
                        .bind(&transfer_id)
                        .bind(&hold_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                pruned.captured_holds +=
                    sqlx::query("DELETE FROM holds WHERE hold_id = $1 AND status = 'captured'")
                        .bind(&hold_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
            }
            tx.commit().await?;
        }
        pruned.voided_holds = self
            .delete_in_batches(
                "holds",
                "hold_id",
                &format!("SELECT h.hold_id {PRUNABLE_VOIDS}"),
                cutoff,
            )
            .await?;
        pruned.processed_commands = self
            .delete_in_batches(
                "processed_commands",
                "command_id",
                &format!("SELECT p.command_id {PRUNABLE_COMMANDS}"),
                cutoff,
            )
            .await?;
        Ok(pruned)
    }

    /// Deletes the rows of `table` whose `key` `select` returns (bound to `cutoff`),
    /// [`PRUNE_BATCH`] per statement, until none is left; returns how many.
    async fn delete_in_batches(
        &self,
        table: &str,
        key: &str,
        select: &str,
        cutoff: i64,
    ) -> Result<u64, LedgerError> {
        let statement =
            format!("DELETE FROM {table} WHERE {key} IN ({select} LIMIT {PRUNE_BATCH})");
        let mut deleted = 0;
        loop {
            let batch = sqlx::query(&statement)
                .bind(cutoff)
                .execute(&self.pool)
                .await?
                .rows_affected();
            if batch == 0 {
                return Ok(deleted);
            }
            deleted += batch;
        }
    }

    /// What [`Ledger::prune`] would delete now with this cutoff.
    async fn count_prunable(&self, cutoff: i64) -> Result<Pruned, LedgerError> {
        let count = |sql: String| async move {
            let n: i64 = sqlx::query(&sql)
                .bind(cutoff)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
            Ok::<_, LedgerError>(u64_of(n))
        };
        let captured = count(format!("SELECT COUNT(*) {PRUNABLE_CAPTURES}")).await?;
        Ok(Pruned {
            processed_commands: count(format!("SELECT COUNT(*) {PRUNABLE_COMMANDS}")).await?,
            voided_holds: count(format!("SELECT COUNT(*) {PRUNABLE_VOIDS}")).await?,
            captured_holds: captured,
            transfers: captured,
            ledger_entries: count(format!(
                "SELECT COUNT(*) FROM ledger_entries WHERE transfer_id IN
                 (SELECT t.transfer_id {PRUNABLE_CAPTURES})"
            ))
            .await?,
        })
    }

    /// Status of the payment's hold (`held`, `voided`, `captured`), if it has one.
    pub async fn hold_status(&self, payment_id: Uuid) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query("SELECT status FROM holds WHERE payment_id = $1")
            .bind(payment_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// How many transfers the payment has (0 or 1 unless something is very wrong).
    pub async fn transfers_for(&self, payment_id: Uuid) -> Result<u64, LedgerError> {
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM transfers WHERE payment_id = $1")
            .bind(payment_id.to_string())
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64_of(count))
    }

    /// How many holds the payment has.
    pub async fn holds_for(&self, payment_id: Uuid) -> Result<u64, LedgerError> {
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM holds WHERE payment_id = $1")
            .bind(payment_id.to_string())
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64_of(count))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use baton_contract::{Currency, ReplyOutcome};
    use sqlx::Connection as _;

    /// A ledger on a fresh SQLite file; the file is removed on drop.
    pub(crate) struct SqliteLedger {
        pub(crate) ledger: Ledger,
        path: std::path::PathBuf,
    }

    impl Drop for SqliteLedger {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = self.path.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }

    pub(crate) async fn sqlite_ledger() -> SqliteLedger {
        let path = std::env::temp_dir().join(format!("baton-ledger-{}.db", Uuid::new_v4()));
        let ledger = Ledger::open(&format!("sqlite://{}", path.display()))
            .await
            .expect("open a SQLite ledger");
        SqliteLedger { ledger, path }
    }

    const POSTGRES_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    /// Runs `body` against a ledger in a new, uniquely named PostgreSQL database, then
    /// drops the database.
    async fn with_postgres_ledger<F, Fut>(body: F)
    where
        F: FnOnce(Ledger) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        with_postgres_database(|url| async move {
            let ledger = Ledger::open(&url)
                .await
                .expect("open the PostgreSQL ledger");
            body(ledger.clone()).await;
            ledger.close().await;
        })
        .await;
    }

    /// Runs `body` with the URL of a new, empty, uniquely named PostgreSQL database, then
    /// drops the database (`body` closes what it opened).
    async fn with_postgres_database<F, Fut>(body: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        install_drivers();
        let database = format!("baton_test_{}", Uuid::new_v4().simple());
        let mut admin = sqlx::AnyConnection::connect(POSTGRES_ADMIN)
            .await
            .expect("PostgreSQL must run at 127.0.0.1:5432 (user postgres, trust auth)");
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        body(format!("postgres://postgres@127.0.0.1:5432/{database}")).await;
        // FORCE: a pool connection may still be closing on the server side.
        sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .expect("drop the test database");
        admin.close().await.ok();
    }

    fn money(minor: u64, code: &str) -> Money {
        Money {
            minor,
            currency: Currency::parse(code).unwrap(),
        }
    }

    fn hold_of(reply: &Reply) -> String {
        assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
        reply.data["hold_id"].as_str().expect("hold_id").to_owned()
    }

    fn capture_of(payment_id: Uuid, hold_id: &str, amount: Money, to: &str) -> Capture {
        Capture {
            payment_id,
            hold_id: hold_id.to_owned(),
            customer_id: "c-42".into(),
            merchant_id: "m-1001".into(),
            amount,
            settlement_currency: Currency::parse(to).unwrap(),
        }
    }

    async fn hold(ledger: &Ledger, payment_id: Uuid, amount: Money) -> String {
        let id = format!("{payment_id}:authorization");
        hold_of(
            &ledger
                .place_hold(&id, payment_id, "c-42", "m-1001", amount, Ok(()))
                .await
                .unwrap(),
        )
    }

    /// Repeats, and concurrent duplicates, of an execute place one hold and give one reply.
    async fn holds_are_placed_once(ledger: &Ledger) {
        let payment_id = Uuid::new_v4();
        let id = format!("{payment_id}:authorization");
        let first = ledger
            .place_hold(
                &id,
                payment_id,
                "c-42",
                "m-1001",
                money(1999, "EUR"),
                Ok(()),
            )
            .await
            .unwrap();
        let again = ledger
            .place_hold(
                &id,
                payment_id,
                "c-42",
                "m-1001",
                money(1999, "EUR"),
                Ok(()),
            )
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(ledger.holds_for(payment_id).await.unwrap(), 1);
        assert_eq!(
            ledger.hold_status(payment_id).await.unwrap().as_deref(),
            Some("held")
        );

        let payment_id = Uuid::new_v4();
        let id = format!("{payment_id}:authorization");
        let attempts = (0..8).map(|_| {
            let ledger = ledger.clone();
            let id = id.clone();
            tokio::spawn(async move {
                ledger
                    .place_hold(&id, payment_id, "c-42", "m-1001", money(500, "EUR"), Ok(()))
                    .await
                    .unwrap()
            })
        });
        let mut replies = Vec::new();
        for attempt in attempts.collect::<Vec<_>>() {
            replies.push(attempt.await.unwrap());
        }
        let hold_id = hold_of(&replies[0]);
        assert!(replies.iter().all(|r| hold_of(r) == hold_id), "{replies:?}");
        assert_eq!(ledger.holds_for(payment_id).await.unwrap(), 1);
    }

    /// A decline is stored: the same command later gets the decline, never a hold.
    async fn declines_are_stored(ledger: &Ledger) {
        let payment_id = Uuid::new_v4();
        let id = format!("{payment_id}:authorization");
        let decline = Decline {
            reason: "card_declined",
            detail: "no".into(),
        };
        let first = ledger
            .place_hold(
                &id,
                payment_id,
                "c-42",
                "m-1001",
                money(1, "EUR"),
                Err(decline),
            )
            .await
            .unwrap();
        assert_eq!(first.reason.as_deref(), Some("card_declined"));
        let again = ledger
            .place_hold(&id, payment_id, "c-42", "m-1001", money(1, "EUR"), Ok(()))
            .await
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(ledger.holds_for(payment_id).await.unwrap(), 0);
    }

    /// Compensate voids the hold once; capture of a voided hold is declined.
    async fn compensation_voids_the_hold(ledger: &Ledger) {
        let payment_id = Uuid::new_v4();
        let hold_id = hold(ledger, payment_id, money(1999, "EUR")).await;
        let execute = format!("{payment_id}:authorization");
        let compensate = format!("{payment_id}:authorization:compensate");
        let void = ledger
            .void_hold(&compensate, &execute, payment_id)
            .await
            .unwrap();
        assert_eq!(void.outcome, ReplyOutcome::Approved);
        assert_eq!(void.data["voided"], true);
        assert_eq!(
            ledger.hold_status(payment_id).await.unwrap().as_deref(),
            Some("voided")
        );
        let again = ledger
            .void_hold(&compensate, &execute, payment_id)
            .await
            .unwrap();
        assert_eq!(again, void);
        let capture = capture_of(payment_id, &hold_id, money(1999, "EUR"), "EUR");
        let reply = ledger
            .capture(&format!("{payment_id}:transaction"), &capture)
            .await
            .unwrap();
        assert_eq!(reply.reason.as_deref(), Some("hold_voided"));
        assert_eq!(ledger.transfers_for(payment_id).await.unwrap(), 0);
    }

    /// A compensation that overtakes its execute makes the late execute a decline.
    async fn compensation_before_execute_blocks_it(ledger: &Ledger) {
        let payment_id = Uuid::new_v4();
        let execute = format!("{payment_id}:authorization");
        let compensate = format!("{payment_id}:authorization:compensate");
        let void = ledger
            .void_hold(&compensate, &execute, payment_id)
            .await
            .unwrap();
        assert_eq!(void.outcome, ReplyOutcome::Approved);
        assert_eq!(void.data["voided"], false);
        let late = ledger
            .place_hold(
                &execute,
                payment_id,
                "c-42",
                "m-1001",
                money(1, "EUR"),
                Ok(()),
            )
            .await
            .unwrap();
        assert_eq!(late.outcome, ReplyOutcome::Declined);
        assert_eq!(late.reason.as_deref(), Some("voided_before_authorization"));
        assert_eq!(late.command_id, execute);
        assert_eq!(ledger.holds_for(payment_id).await.unwrap(), 0);
    }

    /// Capture moves the money once, balanced, even with concurrent duplicates; the hold
    /// can then no longer be voided.
    async fn capture_moves_money_once(ledger: &Ledger) {
        let payment_id = Uuid::new_v4();
        let hold_id = hold(ledger, payment_id, money(1999, "EUR")).await;
        let capture = capture_of(payment_id, &hold_id, money(1999, "EUR"), "USD");
        let id = format!("{payment_id}:transaction");
        let attempts: Vec<_> = (0..8)
            .map(|_| {
                let (ledger, capture, id) = (ledger.clone(), capture.clone(), id.clone());
                tokio::spawn(async move { ledger.capture(&id, &capture).await.unwrap() })
            })
            .collect();
        let mut replies = Vec::new();
        for attempt in attempts {
            replies.push(attempt.await.unwrap());
        }
        let first = &replies[0];
        assert_eq!(first.outcome, ReplyOutcome::Approved, "{first:?}");
        assert!(replies.iter().all(|r| r == first), "{replies:?}");
        assert_eq!(first.data["settlement"]["minor"], 2150);
        assert_eq!(first.data["settlement"]["currency"], "USD");
        assert_eq!(first.data["fx_rate_micro"], 1_075_500);
        assert_eq!(ledger.transfers_for(payment_id).await.unwrap(), 1);
        assert_eq!(
            ledger.hold_status(payment_id).await.unwrap().as_deref(),
            Some("captured")
        );

        // Another command id cannot capture the same hold again.
        let other = ledger
            .capture(&format!("{id}-again"), &capture)
            .await
            .unwrap();
        assert_eq!(other.reason.as_deref(), Some("hold_captured"));
        let void = ledger
            .void_hold(
                &format!("{payment_id}:authorization:compensate"),
                &format!("{payment_id}:authorization"),
                payment_id,
            )
            .await
            .unwrap();
        assert_eq!(void.reason.as_deref(), Some("hold_captured"));

        let unknown = capture_of(payment_id, "no-such-hold", money(1, "EUR"), "EUR");
        let reply = ledger.capture(&format!("{id}-x"), &unknown).await.unwrap();
        assert_eq!(reply.reason.as_deref(), Some("hold_not_found"));
        let exotic = capture_of(payment_id, &hold_id, money(1, "EUR"), "XAU");
        let reply = ledger.capture(&format!("{id}-y"), &exotic).await.unwrap();
        assert_eq!(reply.reason.as_deref(), Some("currency_not_supported"));

        let audit = ledger.audit().await.unwrap();
        assert!(audit.balanced, "{audit:?}");
        assert!(audit.duplicate_transfers.is_empty(), "{audit:?}");
        assert!(audit.transfers >= 1);
        let usd = audit.totals.iter().find(|t| t.currency == "USD").unwrap();
        assert!(usd.debit_minor >= 2150 && usd.debit_minor == usd.credit_minor);
    }

    /// A capture that differs from its hold in customer, merchant, amount or currency is
    /// declined `hold_mismatch` (stored, named by field, no value), moves nothing and
    /// leaves the hold held; the honest capture then completes.
    async fn capture_checks_its_hold(ledger: &Ledger) {
        let payment_id = Uuid::new_v4();
        let hold_id = hold(ledger, payment_id, money(1999, "EUR")).await;
        let honest = capture_of(payment_id, &hold_id, money(1999, "EUR"), "EUR");
        let forgeries = [
            (
                "customer_id",
                Capture {
                    customer_id: "c-victim".into(),
                    ..honest.clone()
                },
            ),
            (
                "merchant_id",
                Capture {
                    merchant_id: "m-thief".into(),
                    ..honest.clone()
                },
            ),
            (
                "amount",
                Capture {
                    amount: money(5_000_000_000, "EUR"),
                    ..honest.clone()
                },
            ),
            (
                "currency",
                Capture {
                    amount: money(1999, "GBP"),
                    ..honest.clone()
                },
            ),
        ];
        for (field, forged) in &forgeries {
            let id = format!("{payment_id}:transaction:forged-{field}");
            let answer = ledger.capture_answer(&id, forged).await.unwrap();
            let reply = &answer.reply;
            assert_eq!(reply.outcome, ReplyOutcome::Declined, "{field}: {reply:?}");
            assert_eq!(reply.reason.as_deref(), Some("hold_mismatch"), "{reply:?}");
            let detail = reply.detail.as_deref().unwrap_or_default();
            assert!(
                detail.contains(&format!("in {field}:")),
                "{field}: {detail}"
            );
            for value in [
                "c-42",
                "c-victim",
                "m-1001",
                "m-thief",
                "1999",
                "5000000000",
            ] {
                assert!(!detail.contains(value), "{field}: {detail}");
            }
            assert!(!answer.replayed);
            let again = ledger.capture_answer(&id, &honest).await.unwrap();
            assert!(again.replayed, "a repeat gets the stored decline");
            assert_eq!(&again.reply, reply);
            assert_eq!(ledger.transfers_for(payment_id).await.unwrap(), 0);
            assert_eq!(
                ledger.hold_status(payment_id).await.unwrap().as_deref(),
                Some("held")
            );
        }
        let everything = Capture {
            customer_id: "c-victim".into(),
            merchant_id: "m-thief".into(),
            amount: money(1, "USD"),
            ..honest.clone()
        };
        let reply = ledger
            .capture(&format!("{payment_id}:transaction:forged-all"), &everything)
            .await
            .unwrap();
        assert!(
            reply
                .detail
                .as_deref()
                .unwrap_or_default()
                .contains("in amount, currency, customer_id, merchant_id:"),
            "{reply:?}"
        );
        let audit = ledger.audit().await.unwrap();
        assert!(audit.is_sound(), "{audit:?}");

        let reply = ledger
            .capture(&format!("{payment_id}:transaction"), &honest)
            .await
            .unwrap();
        assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
        assert_eq!(ledger.transfers_for(payment_id).await.unwrap(), 1);
        assert_eq!(
            ledger.hold_status(payment_id).await.unwrap().as_deref(),
            Some("captured")
        );
    }

    async fn every_scenario(ledger: Ledger) {
        holds_are_placed_once(&ledger).await;
        declines_are_stored(&ledger).await;
        compensation_voids_the_hold(&ledger).await;
        compensation_before_execute_blocks_it(&ledger).await;
        capture_moves_money_once(&ledger).await;
        capture_checks_its_hold(&ledger).await;
        // Holds left open above: the first two scenarios' holds.
        assert_eq!(ledger.audit().await.unwrap().open_holds, 2);
    }

    /// Runs `statements` on the database at `url` over a connection of its own.
    async fn execute(url: &str, statements: &[&str]) {
        install_drivers();
        let url = if url.starts_with("sqlite:") {
            with_create_mode(url)
        } else {
            url.to_owned()
        };
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        for statement in statements {
            sqlx::query(statement)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        conn.close().await.unwrap();
    }

    /// The audit fails on transfers that differ from their hold (tampered by hand, as an
    /// old bug or a forger with database access would) and on holds open too long.
    async fn audit_finds_transfers_unlike_their_hold_and_stale_holds(ledger: Ledger) {
        let pool = &ledger.pool;
        let paid = Uuid::new_v4();
        let hold_id = hold(&ledger, paid, money(1999, "EUR")).await;
        let capture = capture_of(paid, &hold_id, money(1999, "EUR"), "EUR");
        let reply = ledger
            .capture(&format!("{paid}:transaction"), &capture)
            .await
            .unwrap();
        assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
        let in_flight = Uuid::new_v4();
        hold(&ledger, in_flight, money(500, "EUR")).await;
        let audit = ledger.audit().await.unwrap();
        assert!(audit.is_sound(), "{audit:?}");
        assert_eq!(
            audit.open_holds, 1,
            "a young open hold is listed, not stale"
        );

        // What the forged capture of issue 9 did: another customer, a huge amount.
        sqlx::query(
            "UPDATE transfers SET customer_id = 'c-victim', amount_minor = 5000000000
             WHERE payment_id = $1",
        )
        .bind(paid.to_string())
        .execute(pool)
        .await
        .unwrap();
        // A transfer on a hold that does not exist, and one on a voided hold.
        sqlx::query(
            "INSERT INTO transfers VALUES ('t-nohold', $1, 'no-such-hold', 'c-1', 'm-1', 1, \
             'EUR', 1, 'EUR', 1000000)",
        )
        .bind(Uuid::nil().to_string())
        .execute(pool)
        .await
        .unwrap();
        let voided = Uuid::new_v4();
        let voided_hold = hold(&ledger, voided, money(700, "EUR")).await;
        ledger
            .void_hold(
                &format!("{voided}:authorization:compensate"),
                &format!("{voided}:authorization"),
                voided,
            )
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO transfers VALUES ('t-voided', $1, $2, 'c-42', 'm-1001', 700, 'EUR', \
             700, 'EUR', 1000000)",
        )
        .bind(voided.to_string())
        .bind(&voided_hold)
        .execute(pool)
        .await
        .unwrap();
        // An abandoned hold, placed two hours ago.
        let abandoned = Uuid::new_v4();
        let abandoned_hold = hold(&ledger, abandoned, money(900, "EUR")).await;
        sqlx::query("UPDATE holds SET created_at = created_at - 7200000 WHERE hold_id = $1")
            .bind(&abandoned_hold)
            .execute(pool)
            .await
            .unwrap();

        let audit = ledger.audit().await.unwrap();
        assert!(audit.balanced, "the lines are untouched: {audit:?}");
        assert!(!audit.is_sound(), "{audit:?}");
        let mut mismatches: Vec<_> = audit
            .hold_mismatches
            .iter()
            .map(|m| (m.transfer_id.as_str(), m.hold_id.as_str(), m.fields.clone()))
            .collect();
        mismatches.sort();
        let fields = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let forged_transfer = reply.data["transfer_id"].as_str().unwrap();
        let mut expected = vec![
            (
                forged_transfer,
                hold_id.as_str(),
                fields(&["amount", "customer_id"]),
            ),
            ("t-nohold", "no-such-hold", fields(&["hold_missing"])),
            ("t-voided", voided_hold.as_str(), fields(&["status"])),
        ];
        expected.sort();
        assert_eq!(mismatches, expected);
        assert_eq!(audit.max_hold_age, DEFAULT_MAX_HOLD_AGE);
        assert_eq!(audit.open_holds, 2);
        assert_eq!(audit.stale_holds.len(), 1, "{audit:?}");
        let stale = &audit.stale_holds[0];
        assert_eq!(stale.hold_id, abandoned_hold);
        assert_eq!(stale.payment_id, abandoned.to_string());
        assert!(
            (Duration::from_secs(7200)..Duration::from_secs(7300)).contains(&stale.age),
            "{stale:?}"
        );
        let lenient = ledger
            .audit_with(Duration::from_secs(3 * 3600))
            .await
            .unwrap();
        assert!(lenient.stale_holds.is_empty(), "{lenient:?}");
        assert_eq!(lenient.hold_mismatches, audit.hold_mismatches);
    }

    /// The holds table of the first release: no merchant, no creation time.
    const OLD_SCHEMA: &[&str] = &[
        "CREATE TABLE holds (
            hold_id TEXT PRIMARY KEY,
            payment_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            amount_minor BIGINT NOT NULL,
            currency TEXT NOT NULL,
            status TEXT NOT NULL
        )",
        "CREATE TABLE transfers (
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
        "CREATE TABLE processed_commands (
            command_id TEXT PRIMARY KEY,
            service TEXT NOT NULL,
            reply TEXT
        )",
        "INSERT INTO processed_commands VALUES ('00000000-0000-0000-0000-00000000000b:x',
            'transaction', NULL)",
        "INSERT INTO holds VALUES
            ('h-old-open', '00000000-0000-0000-0000-00000000000a', 'c-42', 1999, 'EUR', 'held'),
            ('h-old-paid', '00000000-0000-0000-0000-00000000000b', 'c-42', 1999, 'EUR', 'captured')",
        "INSERT INTO transfers VALUES ('t-old', '00000000-0000-0000-0000-00000000000b',
            'h-old-paid', 'c-42', 'm-1001', 1999, 'EUR', 1999, 'EUR', 1000000)",
    ];

    /// A ledger made by the first release is upgraded on open — by two processes at once
    /// — and keeps working: old transfers still audit clean, an old open hold (which
    /// cannot prove its merchant) is not captured, new holds record everything.
    async fn an_old_ledger_is_upgraded_on_open(url: String) {
        execute(&url, OLD_SCHEMA).await;
        let (first, second) = tokio::join!(Ledger::open(&url), Ledger::open(&url));
        let (ledger, second) = (first.unwrap(), second.unwrap());
        second.close().await;
        let audit = ledger.audit().await.unwrap();
        assert!(audit.is_sound(), "{audit:?}");
        assert_eq!((audit.transfers, audit.open_holds), (1, 1), "{audit:?}");
        let undated: i64 = sqlx::query("SELECT COUNT(*) FROM holds WHERE created_at IS NULL")
            .fetch_one(&ledger.pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(undated, 0, "old holds are dated at the upgrade");
        let undated: i64 =
            sqlx::query("SELECT COUNT(*) FROM processed_commands WHERE created_at IS NULL")
                .fetch_one(&ledger.pool)
                .await
                .unwrap()
                .get(0);
        assert_eq!(
            undated, 0,
            "old processed commands are dated at the upgrade"
        );

        let old_open = Uuid::parse_str("00000000-0000-0000-0000-00000000000a").unwrap();
        let capture = capture_of(old_open, "h-old-open", money(1999, "EUR"), "EUR");
        let reply = ledger
            .capture(&format!("{old_open}:transaction"), &capture)
            .await
            .unwrap();
        assert_eq!(reply.reason.as_deref(), Some("hold_mismatch"), "{reply:?}");
        assert!(reply.detail.unwrap().contains("in merchant_id:"));
        assert_eq!(ledger.transfers_for(old_open).await.unwrap(), 0);

        let payment_id = Uuid::new_v4();
        let hold_id = hold(&ledger, payment_id, money(1999, "EUR")).await;
        let capture = capture_of(payment_id, &hold_id, money(1999, "EUR"), "EUR");
        let reply = ledger
            .capture(&format!("{payment_id}:transaction"), &capture)
            .await
            .unwrap();
        assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
        assert!(ledger.audit().await.unwrap().is_sound());
        ledger.close().await;
    }

    /// Moves every record of `payment_id` `days` into the past.
    async fn age(ledger: &Ledger, payment_id: Uuid, days: i64) {
        let shift = days * 24 * 3600 * 1000;
        sqlx::query("UPDATE holds SET created_at = created_at - $1 WHERE payment_id = $2")
            .bind(shift)
            .bind(payment_id.to_string())
            .execute(&ledger.pool)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE processed_commands SET created_at = created_at - $1
             WHERE substr(command_id, 1, 36) = $2",
        )
        .bind(shift)
        .bind(payment_id.to_string())
        .execute(&ledger.pool)
        .await
        .unwrap();
    }

    async fn processed_for(ledger: &Ledger, payment_id: Uuid) -> i64 {
        sqlx::query("SELECT COUNT(*) FROM processed_commands WHERE substr(command_id, 1, 36) = $1")
            .bind(payment_id.to_string())
            .fetch_one(&ledger.pool)
            .await
            .unwrap()
            .get(0)
    }

    /// `prune` deletes old finished records only — never an open hold or its payment's
    /// records, nor anything the audit reports — and the audit says the same after.
    async fn prune_deletes_old_finished_records_only(ledger: Ledger) {
        let month = 31;
        let capture = |payment_id: Uuid, hold_id: &str| {
            capture_of(payment_id, hold_id, money(1999, "EUR"), "USD")
        };
        // Old and captured: pruned with its transfer and lines.
        let paid = Uuid::new_v4();
        let hold_id = hold(&ledger, paid, money(1999, "EUR")).await;
        let reply = ledger
            .capture(&format!("{paid}:transaction"), &capture(paid, &hold_id))
            .await
            .unwrap();
        assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
        // Old and voided: pruned.
        let voided = Uuid::new_v4();
        hold(&ledger, voided, money(1999, "EUR")).await;
        ledger
            .void_hold(
                &format!("{voided}:authorization:compensate"),
                &format!("{voided}:authorization"),
                voided,
            )
            .await
            .unwrap();
        // Old and still held: kept, with its records.
        let open = Uuid::new_v4();
        hold(&ledger, open, money(1999, "EUR")).await;
        // Old, compensated before it was authorized: only records, pruned.
        let pre_empted = Uuid::new_v4();
        ledger
            .void_hold(
                &format!("{pre_empted}:authorization:compensate"),
                &format!("{pre_empted}:authorization"),
                pre_empted,
            )
            .await
            .unwrap();
        // Old, but its transfer differs from its hold: an audit finding, kept.
        let tampered = Uuid::new_v4();
        let tampered_hold = hold(&ledger, tampered, money(1999, "EUR")).await;
        ledger
            .capture(
                &format!("{tampered}:transaction"),
                &capture(tampered, &tampered_hold),
            )
            .await
            .unwrap();
        sqlx::query("UPDATE transfers SET amount_minor = 1 WHERE payment_id = $1")
            .bind(tampered.to_string())
            .execute(&ledger.pool)
            .await
            .unwrap();
        // Captured yesterday: younger than the cutoff, kept.
        let recent = Uuid::new_v4();
        let recent_hold = hold(&ledger, recent, money(1999, "EUR")).await;
        ledger
            .capture(
                &format!("{recent}:transaction"),
                &capture(recent, &recent_hold),
            )
            .await
            .unwrap();
        for payment in [paid, voided, open, pre_empted, tampered] {
            age(&ledger, payment, month).await;
        }
        age(&ledger, recent, 1).await;

        let entries_of_paid: i64 = sqlx::query(
            "SELECT COUNT(*) FROM ledger_entries e JOIN transfers t ON t.transfer_id = e.transfer_id
             WHERE t.payment_id = $1",
        )
        .bind(paid.to_string())
        .fetch_one(&ledger.pool)
        .await
        .unwrap()
        .get(0);
        assert_eq!(
            entries_of_paid, 4,
            "a cross-currency transfer has four lines"
        );
        let expected = Pruned {
            // paid ×2, voided ×2, pre_empted ×2, tampered ×2 (its records, not its rows).
            processed_commands: 8,
            voided_holds: 1,
            captured_holds: 1,
            transfers: 1,
            ledger_entries: 4,
        };
        let before = ledger.audit().await.unwrap();
        let dry = ledger.prune(DEFAULT_PRUNE_AGE, true).await.unwrap();
        assert_eq!(dry, expected, "the dry run counts");
        assert_eq!(ledger.audit().await.unwrap(), before, "and deletes nothing");

        let pruned = ledger.prune(DEFAULT_PRUNE_AGE, false).await.unwrap();
        assert_eq!(pruned, expected);
        let after = ledger.audit().await.unwrap();
        assert_eq!(after.transfers, before.transfers - 1);
        assert_eq!(
            after.open_holds, before.open_holds,
            "no open hold is pruned"
        );
        assert_eq!(
            after.hold_mismatches, before.hold_mismatches,
            "findings stay"
        );
        assert_eq!(after.stale_holds, before.stale_holds);
        assert_eq!(after.duplicate_transfers, before.duplicate_transfers);
        assert!(after.balanced && before.balanced);
        assert_eq!(after.hold_mismatches.len(), 1, "{after:?}");
        assert_eq!(after.hold_mismatches[0].payment_id, tampered.to_string());

        assert_eq!(ledger.holds_for(paid).await.unwrap(), 0);
        assert_eq!(ledger.transfers_for(paid).await.unwrap(), 0);
        assert_eq!(ledger.holds_for(voided).await.unwrap(), 0);
        assert_eq!(processed_for(&ledger, pre_empted).await, 0);
        assert_eq!(
            ledger.hold_status(open).await.unwrap().as_deref(),
            Some("held")
        );
        assert_eq!(
            processed_for(&ledger, open).await,
            1,
            "the open hold's record stays"
        );
        assert_eq!(ledger.holds_for(tampered).await.unwrap(), 1);
        assert_eq!(ledger.transfers_for(tampered).await.unwrap(), 1);
        assert_eq!(ledger.transfers_for(recent).await.unwrap(), 1);
        assert_eq!(processed_for(&ledger, recent).await, 2);

        // The open hold can still be voided: its authorization's record was kept.
        let reply = ledger
            .void_hold(
                &format!("{open}:authorization:compensate"),
                &format!("{open}:authorization"),
                open,
            )
            .await
            .unwrap();
        assert_eq!(reply.data["voided"], json!(true), "{reply:?}");
        // A capture repeated after its records went moves nothing.
        let reply = ledger
            .capture(&format!("{paid}:transaction"), &capture(paid, &hold_id))
            .await
            .unwrap();
        assert_eq!(reply.reason.as_deref(), Some("hold_not_found"), "{reply:?}");
        assert_eq!(ledger.transfers_for(paid).await.unwrap(), 0);

        // Ages count from when a record was written: the hold voided just now was
        // placed a month ago, so the next prune takes it and its authorization's record,
        // but not the compensation's record of today. Nothing else is left to take.
        let again = ledger.prune(DEFAULT_PRUNE_AGE, false).await.unwrap();
        let just_voided = Pruned {
            processed_commands: 1,
            voided_holds: 1,
            ..Pruned::default()
        };
        assert_eq!(again, just_voided);
        assert_eq!(processed_for(&ledger, open).await, 1);
        let nothing = ledger.prune(DEFAULT_PRUNE_AGE, false).await.unwrap();
        assert_eq!(nothing, Pruned::default());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_prune_deletes_old_finished_records_only() {
        let db = sqlite_ledger().await;
        prune_deletes_old_finished_records_only(db.ledger.clone()).await;
        db.ledger.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_prune_deletes_old_finished_records_only() {
        with_postgres_ledger(prune_deletes_old_finished_records_only).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_audit_finds_transfers_unlike_their_hold_and_stale_holds() {
        let db = sqlite_ledger().await;
        audit_finds_transfers_unlike_their_hold_and_stale_holds(db.ledger.clone()).await;
        db.ledger.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_audit_finds_transfers_unlike_their_hold_and_stale_holds() {
        with_postgres_ledger(audit_finds_transfers_unlike_their_hold_and_stale_holds).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_old_ledger_is_upgraded_on_open() {
        let path = std::env::temp_dir().join(format!("baton-ledger-{}.db", Uuid::new_v4()));
        an_old_ledger_is_upgraded_on_open(format!("sqlite://{}", path.display())).await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_old_ledger_is_upgraded_on_open() {
        with_postgres_database(an_old_ledger_is_upgraded_on_open).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_ledger_is_idempotent_and_balanced() {
        let db = sqlite_ledger().await;
        let mut conn = db.ledger.pool.acquire().await.unwrap();
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(mode.to_lowercase(), "wal");
        let sync: i64 = sqlx::query("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(sync, 2, "synchronous = FULL");
        let busy: i64 = sqlx::query("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(busy, 10_000);
        drop(conn);
        every_scenario(db.ledger.clone()).await;
        // Opening again (a second process, a restart) keeps the data: tables are created
        // only if missing.
        let again = Ledger::open(&format!("sqlite://{}", db.path.display()))
            .await
            .unwrap();
        assert_eq!(again.audit().await.unwrap().transfers, 2);
        again.close().await;
        db.ledger.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_ledger_is_idempotent_and_balanced() {
        with_postgres_ledger(every_scenario).await;
    }

    #[tokio::test]
    async fn unsupported_urls_are_refused() {
        let e = Ledger::open("mysql://u:pw@h/db").await.unwrap_err();
        assert!(matches!(e, LedgerError::UnsupportedUrl { .. }));
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[tokio::test]
    async fn audit_detects_unbalanced_books_and_duplicates() {
        // The audit must be able to fail: write a bad state by hand.
        let db = sqlite_ledger().await;
        let pool = &db.ledger.pool;
        for (transfer, payment) in [("t1", "p1"), ("t2", "p1")] {
            sqlx::query(
                "INSERT INTO transfers VALUES ($1, $2, 'h', 'c', 'm', 1, 'EUR', 1, 'EUR', 1000000)",
            )
            .bind(transfer)
            .bind(payment)
            .execute(pool)
            .await
            .unwrap();
        }
        sqlx::query("INSERT INTO ledger_entries VALUES ('e1', 't1', 'customer:c', 'EUR', 5, 0)")
            .execute(pool)
            .await
            .unwrap();
        let audit = db.ledger.audit().await.unwrap();
        assert_eq!(audit.transfers, 2);
        assert_eq!(audit.duplicate_transfers, vec![("p1".to_owned(), 2)]);
        assert!(!audit.balanced);
        db.ledger.close().await;
    }
}
