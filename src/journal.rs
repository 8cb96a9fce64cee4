//! The saga journal: the orchestrator's durable memory of each payment's decisions.
//!
//! **What it is for.** The orchestrator records, keyed by payment id, every step outcome
//! (and every fallback or compensation decision) as it takes it, and the final result
//! once decided. A redelivered request — after a crash, or on another replica — reads the
//! journal and resumes: a step with a recorded outcome is not sent again, and a decision
//! once recorded is never taken differently. The journal also answers "what happened to
//! payment X?" for the CLI and HTTP.
//!
//! **First writer wins.** Several replicas may race on the same payment. Each entry is
//! unique on `(payment_id, step, action)` and each saga has at most one result; a write
//! that finds a decision already stored keeps the stored one and returns it, so every
//! caller continues with *the* decision, never its own.
//!
//! **What it is not for.** It is not a queue (the request and command queues hold the
//! work), not the money ledger (services keep their own effects, idempotent by
//! `command_id`), and not a store of the request: it keeps a [`PaymentSummary`], which
//! has no card number (the last four digits at most), so the full request cannot be
//! rebuilt from it. It does not lease payments to replicas; the broker's delivery does.
//!
//! **Backends.** `sqlite://path` (created if missing; WAL, `synchronous=FULL`) for one
//! machine, or `postgres://…` shared by many replicas. On SQLite every write goes through
//! one writer task that commits the writes waiting at that moment together, in one
//! transaction with one fsync (group commit): each caller still gets its answer only
//! after the commit that made its write durable, but hundreds of sagas share an fsync
//! instead of queueing for one each. PostgreSQL does its own group commit across its
//! connections. Both run the
//! same SQL through sqlx's `Any` driver: `$1` placeholders, `TEXT` for ids and JSON,
//! `BIGINT` for numbers. Each entry's [`StepRecord`], detail and data are stored as one
//! JSON text column, so the schema stays stable as the contract grows.

use baton_contract::{Action, Currency, Money, PaymentRequest, PaymentResult, StepRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, Row};
use std::fmt;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The URL names no supported backend.
    #[error(
        "journal URL {url} is not supported (scheme {}): use sqlite://<path> or postgres://…",
        scheme_of(.url)
    )]
    UnsupportedUrl {
        /// The URL, password removed.
        url: String,
    },
    /// The database could not be reached, or its tables not created.
    #[error("cannot open the journal at {url}: {source}")]
    Open {
        /// The URL, password removed.
        url: String,
        /// What sqlx said.
        source: sqlx::Error,
    },
    /// A query failed (connection lost, lock timeout, …): retry later.
    #[error("journal database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The stored record of a payment cannot be used as asked: unreadable JSON (edited by
    /// hand), or a write that would make it inconsistent (an entry or result for a
    /// payment never begun, a result carrying another payment's id). Retrying does not
    /// help.
    #[error("journal record of payment {payment_id} is unusable: {problem}")]
    Corrupt {
        /// The payment concerned.
        payment_id: Uuid,
        /// What is wrong.
        problem: String,
    },
}

impl JournalError {
    /// Whether retrying the same call later may succeed: database and connection errors
    /// (including failing to open), yes; an unsupported URL or a corrupt record, no.
    pub fn is_transient(&self) -> bool {
        match self {
            JournalError::Database(_) | JournalError::Open { .. } => true,
            JournalError::UnsupportedUrl { .. } | JournalError::Corrupt { .. } => false,
        }
    }
}

/// The scheme of a URL, for error messages.
fn scheme_of(url: &str) -> String {
    match url.split_once(':') {
        Some((scheme, _)) if !scheme.is_empty() => format!("{scheme:?}"),
        _ => "missing".to_owned(),
    }
}

/// What the journal keeps of the request: never the card number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSummary {
    /// Who is paid.
    pub merchant_id: String,
    /// Who pays.
    pub customer_id: String,
    /// What the customer pays.
    pub amount: Money,
    /// Currency the merchant settles in (always filled in).
    pub merchant_currency: Currency,
    /// Last four digits of the card: the only part of the number ever stored.
    pub card_last4: String,
}

impl PaymentSummary {
    /// The summary of `request`; the card number is reduced to its last four digits.
    pub fn of(request: &PaymentRequest) -> Self {
        Self {
            merchant_id: request.merchant_id.clone(),
            customer_id: request.customer_id.clone(),
            amount: request.amount,
            merchant_currency: request.settlement_currency(),
            card_last4: request.card.number.last4().to_owned(),
        }
    }
}

/// One recorded decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Workflow step name.
    pub step: String,
    /// Execute or compensate.
    pub action: Action,
    /// What goes in the result's `steps`.
    pub record: StepRecord,
    /// Human-readable detail of a decline or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The approved reply's data (`hold_id`, `settlement`, …) for later steps.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub data: Map<String, Value>,
    /// When it was recorded, RFC 3339 UTC; [`Journal::record`] sets it if empty.
    #[serde(default)]
    pub recorded_at: String,
}

/// Everything the journal holds about one payment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SagaRecord {
    /// The payment.
    pub payment_id: Uuid,
    /// What was asked (as first begun).
    pub summary: PaymentSummary,
    /// When the saga was begun, RFC 3339 UTC.
    pub started_at: String,
    /// When anything about it was last written, RFC 3339 UTC.
    pub updated_at: String,
    /// Decisions, in the order they were recorded.
    pub entries: Vec<JournalEntry>,
    /// The final result, once decided.
    pub result: Option<PaymentResult>,
    /// How many times the payment was parked (see [`Journal::park`]).
    pub parked: u32,
}

impl SagaRecord {
    /// The recorded decision for `step`'s `action`, if any.
    pub fn entry(&self, step: &str, action: Action) -> Option<&JournalEntry> {
        self.entries
            .iter()
            .find(|e| e.step == step && e.action == action)
    }

    /// `"running"` until a result is recorded, then the result's status (`"completed"`,
    /// `"declined"`, `"failed"`, `"rejected"`).
    pub fn status(&self) -> &'static str {
        match &self.result {
            Some(result) => result.status.as_str(),
            None => "running",
        }
    }
}

/// Tables, valid on SQLite and PostgreSQL alike: TEXT ids, timestamps and JSON, BIGINT
/// numbers (sqlx's `Any` cannot decode unsigned integers).
///
/// `journal_sagas.last_seq` is the per-payment counter that orders entries (see
/// [`Journal::record`]); `(payment_id, seq)` is unique as a safety net.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS journal_sagas (
        payment_id TEXT PRIMARY KEY,
        summary TEXT NOT NULL,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        result TEXT,
        parked BIGINT NOT NULL,
        last_seq BIGINT NOT NULL
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
];

/// Key of the PostgreSQL advisory lock that serialises schema creation ("batonjnl").
const SCHEMA_LOCK: i64 = 0x6261_746f_6e6a_6e6c;

/// Per-connection SQLite settings. The busy timeout comes first so that even switching to
/// WAL waits for another process instead of failing; FULL sync so a committed decision
/// survives a power cut.
const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA busy_timeout = 10000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
];

/// What an entry's JSON `body` column holds; step, action, order and time have columns.
#[derive(Serialize, Deserialize)]
struct EntryBody {
    record: StepRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    data: Map<String, Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The saga journal database. Cheap to clone (a connection pool); `Debug` shows the URL
/// without its password.
#[derive(Clone)]
pub struct Journal {
    /// Pool of `Any` connections: the same code runs on SQLite and PostgreSQL. On SQLite
    /// it serves reads only; writes go to `writer`.
    pool: AnyPool,
    /// SQLite's group-commit writer; `None` on PostgreSQL.
    writer: Option<mpsc::Sender<(Job, Done)>>,
    /// The URL, password removed.
    url: String,
}

/// A write for the SQLite writer task.
enum Job {
    Begin {
        id: String,
        summary: String,
        now: String,
    },
    Record {
        payment_id: Uuid,
        entry: JournalEntry,
        body: String,
    },
    Finish {
        payment_id: Uuid,
        text: String,
    },
    Park {
        payment_id: Uuid,
    },
}

/// What a write gave, sent back once its batch is committed.
enum Written {
    /// `true` if this write created the saga.
    Begun(bool),
    Recorded(JournalEntry),
    Finished(PaymentResult),
    Parked(u32),
}

type Done = oneshot::Sender<Result<Written, JournalError>>;

/// The record of a saga just created.
fn fresh(payment_id: Uuid, summary: &PaymentSummary, now: &str) -> SagaRecord {
    SagaRecord {
        payment_id,
        summary: summary.clone(),
        started_at: now.to_owned(),
        updated_at: now.to_owned(),
        entries: Vec::new(),
        result: None,
        parked: 0,
    }
}

/// Largest number of writes committed together.
const MAX_BATCH: usize = 512;

/// The SQLite writer: takes every write waiting, runs them in one `BEGIN IMMEDIATE`
/// transaction (the write lock from the first statement, so another process writing the
/// same file cannot slip in between a check and an insert), commits, then answers each
/// caller. A failed statement rolls the whole batch back and every caller gets the error
/// (and retries or parks its payment); a decision that only concerns one write (not
/// begun, already decided) is that write's answer and does not disturb the others.
async fn write_batches(mut connection: AnyConnection, mut jobs: mpsc::Receiver<(Job, Done)>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (work, answers): (Vec<Job>, Vec<Done>) = batch.into_iter().unzip();
        match run_batch(&mut connection, &work).await {
            Ok(results) => {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result);
                }
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut connection).await;
                let message = e.to_string();
                for answer in answers {
                    let _ = answer.send(Err(JournalError::Database(sqlx::Error::Protocol(
                        message.clone(),
                    ))));
                }
            }
        }
    }
    let _ = connection.close().await;
}

async fn run_batch(
    connection: &mut AnyConnection,
    work: &[Job],
) -> Result<Vec<Result<Written, JournalError>>, sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *connection)
        .await?;
    let mut results = Vec::with_capacity(work.len());
    for job in work {
        results.push(run_job(connection, job).await?);
    }
    sqlx::query("COMMIT").execute(&mut *connection).await?;
    Ok(results)
}

/// One write inside the writer's transaction. `Err` aborts the batch (a database
/// error); `Ok(Err(_))` is this write's own answer.
async fn run_job(
    connection: &mut AnyConnection,
    job: &Job,
) -> Result<Result<Written, JournalError>, sqlx::Error> {
    let now = now();
    Ok(match job {
        Job::Begin {
            id,
            summary,
            now: started,
        } => {
            let inserted = sqlx::query(
                "INSERT INTO journal_sagas
                    (payment_id, summary, started_at, updated_at, result, parked, last_seq)
                 VALUES ($1, $2, $3, $4, NULL, 0, 0)
                 ON CONFLICT (payment_id) DO NOTHING",
            )
            .bind(id)
            .bind(summary)
            .bind(started)
            .bind(started)
            .execute(&mut *connection)
            .await?
            .rows_affected();
            Ok(Written::Begun(inserted == 1))
        }
        Job::Record {
            payment_id,
            entry,
            body,
        } => {
            // One statement in the common case. The writer holds SQLite's write lock for
            // the whole batch (BEGIN IMMEDIATE), so the next sequence number can be taken
            // as MAX + 1 inside the insert; HAVING keeps a payment that was never begun
            // from getting entries.
            let id = payment_id.to_string();
            let action = action_name(entry.action);
            let inserted = sqlx::query(
                "INSERT INTO journal_entries (payment_id, step, action, seq, recorded_at, body)
                 SELECT $1, $2, $3, COALESCE(MAX(seq), 0) + 1, $4, $5
                 FROM journal_entries WHERE payment_id = $1
                 HAVING EXISTS (SELECT 1 FROM journal_sagas WHERE payment_id = $1)
                 ON CONFLICT (payment_id, step, action) DO NOTHING",
            )
            .bind(&id)
            .bind(&entry.step)
            .bind(action)
            .bind(&entry.recorded_at)
            .bind(body)
            .execute(&mut *connection)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(Ok(Written::Recorded(entry.clone())));
            }
            // Not inserted: a decision was there first, or the saga was never begun.
            let stored = sqlx::query(&format!(
                "SELECT {ENTRY_COLUMNS} FROM journal_entries
                 WHERE payment_id = $1 AND step = $2 AND action = $3"
            ))
            .bind(&id)
            .bind(&entry.step)
            .bind(action)
            .fetch_optional(&mut *connection)
            .await?;
            match stored {
                Some(row) => entry_of(*payment_id, &row).map(Written::Recorded),
                None => Err(not_begun(*payment_id)),
            }
        }
        Job::Finish { payment_id, text } => {
            let id = payment_id.to_string();
            sqlx::query(
                "UPDATE journal_sagas SET result = $1, updated_at = $2
                 WHERE payment_id = $3 AND result IS NULL",
            )
            .bind(text)
            .bind(&now)
            .bind(&id)
            .execute(&mut *connection)
            .await?;
            let Some(row) = sqlx::query("SELECT result FROM journal_sagas WHERE payment_id = $1")
                .bind(&id)
                .fetch_optional(&mut *connection)
                .await?
            else {
                return Ok(Err(not_begun(*payment_id)));
            };
            let stored: Option<String> = row.try_get(0)?;
            match stored {
                None => Err(corrupt(*payment_id, "result written but not found")),
                Some(stored) => serde_json::from_str::<PaymentResult>(&stored)
                    .map(Written::Finished)
                    .map_err(|e| corrupt(*payment_id, format!("result: {e}"))),
            }
        }
        Job::Park { payment_id } => {
            let Some(row) = sqlx::query(
                "UPDATE journal_sagas SET parked = parked + 1, updated_at = $1
                 WHERE payment_id = $2
                 RETURNING parked",
            )
            .bind(&now)
            .bind(payment_id.to_string())
            .fetch_optional(&mut *connection)
            .await?
            else {
                return Ok(Err(not_begun(*payment_id)));
            };
            let parked: i64 = row.try_get(0)?;
            u32::try_from(parked)
                .map(Written::Parked)
                .map_err(|_| corrupt(*payment_id, format!("parked count {parked}")))
        }
    })
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("url", &self.url)
            .field("connections", &self.pool.size())
            .field("closed", &self.pool.is_closed())
            .finish()
    }
}

fn redact(url: &str) -> String {
    baton_contract::amqp::redact_url(url)
}

/// `sqlite://x.db` → `sqlite://x.db?mode=rwc` so a missing file is created.
fn with_create_mode(url: &str) -> String {
    if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The current UTC time, RFC 3339 with milliseconds.
fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Execute => "execute",
        Action::Compensate => "compensate",
    }
}

fn action_of(name: &str) -> Option<Action> {
    match name {
        "execute" => Some(Action::Execute),
        "compensate" => Some(Action::Compensate),
        _ => None,
    }
}

fn corrupt(payment_id: Uuid, problem: impl Into<String>) -> JournalError {
    JournalError::Corrupt {
        payment_id,
        problem: problem.into(),
    }
}

fn not_begun(payment_id: Uuid) -> JournalError {
    corrupt(payment_id, "no saga was begun for this payment")
}

/// Columns read for an entry, in this order.
const ENTRY_COLUMNS: &str = "step, action, recorded_at, body";

fn entry_of(payment_id: Uuid, row: &AnyRow) -> Result<JournalEntry, JournalError> {
    let step: String = row.try_get(0)?;
    let action: String = row.try_get(1)?;
    let recorded_at: String = row.try_get(2)?;
    let body: String = row.try_get(3)?;
    let action = action_of(&action).ok_or_else(|| {
        corrupt(
            payment_id,
            format!("step {step}: unknown action {action:?}"),
        )
    })?;
    let body: EntryBody = serde_json::from_str(&body).map_err(|e| {
        corrupt(
            payment_id,
            format!("step {step} ({}): {e}", action_name(action)),
        )
    })?;
    Ok(JournalEntry {
        step,
        action,
        record: body.record,
        detail: body.detail,
        data: body.data,
        recorded_at,
    })
}

impl Journal {
    /// Opens the journal at `url` — `sqlite://path` (the file is created if missing) or
    /// `postgres://…` — and creates its tables if missing. Several processes may open the
    /// same journal at the same time.
    pub async fn open(url: &str) -> Result<Self, JournalError> {
        sqlx::any::install_default_drivers();

        let (connect_url, backend) = if url.starts_with("sqlite:") {
            (with_create_mode(url), Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (url.to_owned(), Backend::Postgres)
        } else {
            return Err(JournalError::UnsupportedUrl { url: redact(url) });
        };
        let open_error = |source| JournalError::Open {
            url: redact(url),
            source,
        };
        let options = AnyPoolOptions::new().after_connect(|conn, _meta| {
            Box::pin(async move {
                if conn.backend_name() == "SQLite" {
                    for pragma in SQLITE_PRAGMAS {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                }
                Ok(())
            })
        });
        let options = match backend {
            // Reads only (writes go to the writer task): WAL readers do not block each
            // other or the writer.
            Backend::Sqlite => options
                .max_connections(4)
                .idle_timeout(None)
                .max_lifetime(None),
            Backend::Postgres => options.max_connections(16),
        };
        let pool = options.connect(&connect_url).await.map_err(open_error)?;
        if let Err(e) = create_schema(&pool, backend).await {
            pool.close().await;
            return Err(open_error(e));
        }
        let writer = match backend {
            Backend::Postgres => None,
            Backend::Sqlite => {
                let mut connection = AnyConnection::connect(&connect_url)
                    .await
                    .map_err(open_error)?;
                for pragma in SQLITE_PRAGMAS {
                    sqlx::query(pragma)
                        .execute(&mut connection)
                        .await
                        .map_err(open_error)?;
                }
                let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
                tokio::spawn(write_batches(connection, queue));
                Some(jobs)
            }
        };
        Ok(Self {
            pool,
            writer,
            url: redact(url),
        })
    }

    /// Hands a write to the SQLite writer and waits until it is committed.
    async fn write(&self, job: Job) -> Result<Written, JournalError> {
        let writer = self.writer.as_ref().expect("only called on SQLite");
        let (done, answer) = oneshot::channel();
        let closed = || JournalError::Database(sqlx::Error::PoolClosed);
        writer.send((job, done)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Closes every connection (waits for checked-out ones to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins the saga of `payment_id` if the journal has none (the first summary is
    /// kept; a later, different one is ignored), and returns the full current record —
    /// with the entries and result of an earlier run when this is a redelivery. Compare
    /// the returned summary with the request's to detect a payment id reused for a
    /// different payment.
    pub async fn begin(
        &self,
        payment_id: Uuid,
        summary: &PaymentSummary,
    ) -> Result<SagaRecord, JournalError> {
        let text = serde_json::to_string(summary)
            .map_err(|e| corrupt(payment_id, format!("summary: {e}")))?;
        let now = now();
        if self.writer.is_some() {
            let created = self
                .write(Job::Begin {
                    id: payment_id.to_string(),
                    summary: text,
                    now: now.clone(),
                })
                .await?;
            if matches!(created, Written::Begun(true)) {
                // A new saga has nothing to read back.
                return Ok(fresh(payment_id, summary, &now));
            }
            return self
                .load(payment_id)
                .await?
                .ok_or_else(|| not_begun(payment_id));
        }
        let inserted = sqlx::query(
            "INSERT INTO journal_sagas
                (payment_id, summary, started_at, updated_at, result, parked, last_seq)
             VALUES ($1, $2, $3, $4, NULL, 0, 0)
             ON CONFLICT (payment_id) DO NOTHING",
        )
        .bind(payment_id.to_string())
        .bind(text)
        .bind(&now)
        .bind(&now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(fresh(payment_id, summary, &now));
        }
        self.load(payment_id)
            .await?
            // Saga rows are never deleted, so the row inserted or found is still there.
            .ok_or_else(|| not_begun(payment_id))
    }

    /// Records `entry` for `payment_id` unless a decision for the same `(step, action)`
    /// is already stored, and returns the entry actually stored: `entry` (with
    /// `recorded_at` filled in if it was empty) if it is the first, otherwise the
    /// earlier one, which the caller must continue with. The saga must have been begun.
    ///
    /// Ordering: entries get a per-payment sequence number, 1, 2, 3 …, taken from a
    /// counter in the saga row *in the same transaction* as the insert. The counter's
    /// `UPDATE` is the transaction's first statement, so concurrent writers of one
    /// payment serialise on it until commit: on PostgreSQL on the saga row's lock (a
    /// waiter re-reads the committed counter, READ COMMITTED), on SQLite on the database
    /// write lock. Hence the numbers follow commit order on both backends, are unique
    /// (also enforced by an index) and never go backwards, whatever the replicas' clocks
    /// say; a losing writer rolls back, so it leaves no gap. `MAX(seq) + 1` without that
    /// lock would let two PostgreSQL writers pick the same number.
    ///
    /// First writer wins: `(payment_id, step, action)` is the primary key and the insert
    /// is `ON CONFLICT (payment_id, step, action) DO NOTHING` (naming the key, so that a
    /// clash on the sequence index would be an error, never mistaken for a decision
    /// already taken). A writer that inserts nothing reads the stored entry, which is
    /// committed and visible: the winner held the saga row's lock (or SQLite's write
    /// lock) until it committed.
    pub async fn record(
        &self,
        payment_id: Uuid,
        entry: &JournalEntry,
    ) -> Result<JournalEntry, JournalError> {
        let id = payment_id.to_string();
        let action = action_name(entry.action);
        // Fast path for a redelivery: the decision is already there; no write lock. (The
        // SQLite writer makes the same check inside its single statement.)
        if self.writer.is_none() {
            if let Some(stored) = self
                .stored_entry(&self.pool, payment_id, &entry.step, action)
                .await?
            {
                return Ok(stored);
            }
        }

        let mut entry = entry.clone();
        if entry.recorded_at.is_empty() {
            entry.recorded_at = now();
        }
        let body = serde_json::to_string(&EntryBody {
            record: entry.record.clone(),
            detail: entry.detail.clone(),
            data: entry.data.clone(),
        })
        .map_err(|e| corrupt(payment_id, format!("step {}: {e}", entry.step)))?;
        if self.writer.is_some() {
            return match self
                .write(Job::Record {
                    payment_id,
                    entry,
                    body,
                })
                .await?
            {
                Written::Recorded(stored) => Ok(stored),
                _ => Err(corrupt(payment_id, "the writer answered another write")),
            };
        }

        let mut tx = self.pool.begin().await?;
        let seq: i64 = match sqlx::query(
            "UPDATE journal_sagas SET last_seq = last_seq + 1, updated_at = $1
             WHERE payment_id = $2
             RETURNING last_seq",
        )
        .bind(now())
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?
        {
            Some(row) => row.try_get(0)?,
            None => {
                tx.rollback().await?;
                return Err(not_begun(payment_id));
            }
        };
        let inserted = sqlx::query(
            "INSERT INTO journal_entries (payment_id, step, action, seq, recorded_at, body)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (payment_id, step, action) DO NOTHING",
        )
        .bind(&id)
        .bind(&entry.step)
        .bind(action)
        .bind(seq)
        .bind(&entry.recorded_at)
        .bind(body)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            tx.commit().await?;
            return Ok(entry);
        }
        let stored = self
            .stored_entry(&mut *tx, payment_id, &entry.step, action)
            .await?;
        // Give the sequence number back: nothing of ours is kept.
        tx.rollback().await?;
        stored.ok_or_else(|| {
            corrupt(
                payment_id,
                format!(
                    "step {} ({action}): entry neither inserted nor found",
                    entry.step
                ),
            )
        })
    }

    /// The stored entry of `(payment_id, step, action)`, if any.
    async fn stored_entry<'e, E>(
        &self,
        executor: E,
        payment_id: Uuid,
        step: &str,
        action: &str,
    ) -> Result<Option<JournalEntry>, JournalError>
    where
        E: sqlx::Executor<'e, Database = Any>,
    {
        let row = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM journal_entries
             WHERE payment_id = $1 AND step = $2 AND action = $3"
        ))
        .bind(payment_id.to_string())
        .bind(step)
        .bind(action)
        .fetch_optional(executor)
        .await?;
        row.map(|row| entry_of(payment_id, &row)).transpose()
    }

    /// Records the final result of `payment_id` unless one is already stored, and
    /// returns the stored one: `result` if it was the first, otherwise the earlier
    /// result, which is the payment's answer. The saga must have been begun.
    ///
    /// First writer wins with `UPDATE … WHERE result IS NULL`: on PostgreSQL a
    /// concurrent writer waits for the row lock and re-checks the condition against the
    /// committed row, so only one update applies; on SQLite writes are serialised.
    pub async fn finish(
        &self,
        payment_id: Uuid,
        result: &PaymentResult,
    ) -> Result<PaymentResult, JournalError> {
        if result.payment_id != payment_id {
            return Err(corrupt(
                payment_id,
                format!("refusing a result for payment {}", result.payment_id),
            ));
        }
        let text = serde_json::to_string(result)
            .map_err(|e| corrupt(payment_id, format!("result: {e}")))?;
        if self.writer.is_some() {
            return match self.write(Job::Finish { payment_id, text }).await? {
                Written::Finished(stored) => Ok(stored),
                _ => Err(corrupt(payment_id, "the writer answered another write")),
            };
        }
        let id = payment_id.to_string();
        sqlx::query(
            "UPDATE journal_sagas SET result = $1, updated_at = $2
             WHERE payment_id = $3 AND result IS NULL",
        )
        .bind(text)
        .bind(now())
        .bind(&id)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT result FROM journal_sagas WHERE payment_id = $1")
            .bind(&id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_begun(payment_id))?;
        let stored: Option<String> = row.try_get(0)?;
        let stored = stored.ok_or_else(|| corrupt(payment_id, "result written but not found"))?;
        serde_json::from_str(&stored).map_err(|e| corrupt(payment_id, format!("result: {e}")))
    }

    /// Counts one more time `payment_id` was parked (set aside to be retried later, for
    /// instance because a step's service is unavailable) and returns the new count. The
    /// saga must have been begun.
    pub async fn park(&self, payment_id: Uuid) -> Result<u32, JournalError> {
        if self.writer.is_some() {
            return match self.write(Job::Park { payment_id }).await? {
                Written::Parked(count) => Ok(count),
                _ => Err(corrupt(payment_id, "the writer answered another write")),
            };
        }
        let row = sqlx::query(
            "UPDATE journal_sagas SET parked = parked + 1, updated_at = $1
             WHERE payment_id = $2
             RETURNING parked",
        )
        .bind(now())
        .bind(payment_id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_begun(payment_id))?;
        let parked: i64 = row.try_get(0)?;
        u32::try_from(parked).map_err(|_| corrupt(payment_id, format!("parked count {parked}")))
    }

    /// The record of `payment_id`, or `None` if it was never begun.
    pub async fn load(&self, payment_id: Uuid) -> Result<Option<SagaRecord>, JournalError> {
        let id = payment_id.to_string();
        // The saga row is read before the entries: entries are only ever added, so the
        // entries read are at least those that existed when the row was read.
        let Some(row) = sqlx::query(
            "SELECT summary, started_at, updated_at, result, parked
             FROM journal_sagas WHERE payment_id = $1",
        )
        .bind(&id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let summary: String = row.try_get(0)?;
        let summary: PaymentSummary = serde_json::from_str(&summary)
            .map_err(|e| corrupt(payment_id, format!("summary: {e}")))?;
        let result: Option<String> = row.try_get(3)?;
        let result = result
            .map(|text| serde_json::from_str::<PaymentResult>(&text))
            .transpose()
            .map_err(|e| corrupt(payment_id, format!("result: {e}")))?;
        let parked: i64 = row.try_get(4)?;
        let parked = u32::try_from(parked)
            .map_err(|_| corrupt(payment_id, format!("parked count {parked}")))?;

        let rows = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM journal_entries WHERE payment_id = $1 ORDER BY seq"
        ))
        .bind(&id)
        .fetch_all(&self.pool)
        .await?;
        let entries = rows
            .iter()
            .map(|row| entry_of(payment_id, row))
            .collect::<Result<Vec<_>, _>>()?;

        // The SQLite writer records entries without touching the saga row: the last
        // change is the later of the row's time and the newest entry's.
        let mut updated_at: String = row.try_get(2)?;
        if let Some(newest) = entries.iter().map(|e| &e.recorded_at).max() {
            if *newest > updated_at {
                updated_at = newest.clone();
            }
        }
        Ok(Some(SagaRecord {
            payment_id,
            summary,
            started_at: row.try_get(1)?,
            updated_at,
            entries,
            result,
            parked,
        }))
    }
}

/// Creates the tables if missing, in one transaction.
///
/// On PostgreSQL, `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent creation
/// of the same name: the loser fails with a unique violation in the system catalogue.
/// Replicas start together, so creation is serialised on a transaction-scoped advisory
/// lock; a second opener waits, then finds the tables. (PostgreSQL DDL is transactional,
/// so the tables appear together at commit.) On SQLite the transaction takes the
/// database write lock, which serialises openers the same way.
async fn create_schema(pool: &AnyPool, backend: Backend) -> Result<(), sqlx::Error> {
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
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_contract::{Limits, Status, StepOutcome};
    use serde_json::json;
    use std::path::PathBuf;
    use std::sync::Arc;
    use tokio::sync::Barrier;

    const POSTGRES_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
    const CARD: &str = "4242424242424242";

    /// A fresh journal database, removed (SQLite file) or dropped (PostgreSQL database)
    /// when the value is dropped, even if the test panicked.
    enum TestDb {
        Sqlite(PathBuf),
        Postgres(String),
    }

    impl TestDb {
        fn sqlite() -> Self {
            TestDb::Sqlite(
                std::env::temp_dir().join(format!("baton-journal-{}.db", Uuid::new_v4())),
            )
        }

        async fn postgres() -> Self {
            sqlx::any::install_default_drivers();
            let name = format!("baton_journal_test_{}", Uuid::new_v4().simple());
            let mut admin = sqlx::AnyConnection::connect(POSTGRES_ADMIN)
                .await
                .expect("PostgreSQL must run at 127.0.0.1:5432 (user postgres, trust auth)");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .expect("create the test database");
            admin.close().await.ok();
            TestDb::Postgres(name)
        }

        fn url(&self) -> String {
            match self {
                TestDb::Sqlite(path) => format!("sqlite://{}", path.display()),
                TestDb::Postgres(name) => format!("postgres://postgres@127.0.0.1:5432/{name}"),
            }
        }

        async fn open(&self) -> Journal {
            Journal::open(&self.url()).await.expect("open the journal")
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            match self {
                TestDb::Sqlite(path) => {
                    for suffix in ["", "-wal", "-shm"] {
                        let mut path = path.clone().into_os_string();
                        path.push(suffix);
                        let _ = std::fs::remove_file(path);
                    }
                }
                TestDb::Postgres(name) => {
                    // Drop cannot await: drop the database from a thread with its own
                    // runtime. FORCE: pool connections may still be open or closing.
                    let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let dropped = std::thread::spawn(move || {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("a runtime")
                            .block_on(async move {
                                let mut admin =
                                    sqlx::AnyConnection::connect(POSTGRES_ADMIN).await?;
                                sqlx::query(&statement).execute(&mut admin).await?;
                                admin.close().await
                            })
                    })
                    .join();
                    if !std::thread::panicking() {
                        dropped
                            .expect("the drop thread")
                            .expect("drop the test database");
                    }
                }
            }
        }
    }

    fn request(payment_id: Uuid) -> PaymentRequest {
        let body = json!({
            "payment_id": payment_id,
            "merchant_id": "m-1001",
            "customer_id": "c-42",
            "amount": {"minor": 1999, "currency": "EUR"},
            "merchant_currency": "USD",
            "card": {"number": CARD, "expiry": "12/30"},
        });
        PaymentRequest::parse(body.to_string().as_bytes(), &Limits::default())
            .expect("a valid request")
    }

    fn summary() -> PaymentSummary {
        PaymentSummary::of(&request(Uuid::new_v4()))
    }

    fn entry(step: &str, action: Action, outcome: StepOutcome, attempts: u32) -> JournalEntry {
        JournalEntry {
            step: step.to_owned(),
            action,
            record: StepRecord::new(step, outcome, attempts, 10 * u64::from(attempts)),
            detail: None,
            data: Map::new(),
            recorded_at: String::new(),
        }
    }

    fn approved(step: &str, hold_id: &str) -> JournalEntry {
        let mut entry = entry(step, Action::Execute, StepOutcome::Approved, 1);
        entry.data.insert("hold_id".into(), json!(hold_id));
        entry
    }

    fn declined(step: &str, detail: &str) -> JournalEntry {
        let mut entry = entry(step, Action::Execute, StepOutcome::Declined, 2);
        entry.record.reason = Some("card_declined".into());
        entry.detail = Some(detail.to_owned());
        entry
    }

    fn result(payment_id: Uuid, status: Status, reason: Option<&str>) -> PaymentResult {
        PaymentResult {
            payment_id,
            status,
            reason: reason.map(str::to_owned),
            detail: reason.map(|r| format!("because {r}")),
            steps: vec![StepRecord::new(
                "authorization",
                StepOutcome::Approved,
                1,
                3,
            )],
            settlement: None,
            finished_at: now(),
        }
    }

    /// Every text stored for the payment, all tables, all columns.
    async fn stored_text(journal: &Journal, payment_id: Uuid) -> String {
        let mut text = String::new();
        let saga = sqlx::query(
            "SELECT payment_id, summary, started_at, updated_at, COALESCE(result, '')
             FROM journal_sagas WHERE payment_id = $1",
        )
        .bind(payment_id.to_string())
        .fetch_all(&journal.pool)
        .await
        .unwrap();
        let entries = sqlx::query(
            "SELECT payment_id, step, action, recorded_at, body
             FROM journal_entries WHERE payment_id = $1",
        )
        .bind(payment_id.to_string())
        .fetch_all(&journal.pool)
        .await
        .unwrap();
        for row in saga.iter().chain(&entries) {
            for i in 0..5 {
                text.push_str(&row.get::<String, _>(i));
                text.push('\n');
            }
        }
        text
    }

    /// Sequence numbers of a payment's entries, in recording order.
    async fn sequence(journal: &Journal, payment_id: Uuid) -> Vec<i64> {
        sqlx::query("SELECT seq FROM journal_entries WHERE payment_id = $1 ORDER BY seq")
            .bind(payment_id.to_string())
            .fetch_all(&journal.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<i64, _>(0))
            .collect()
    }

    async fn begin_is_idempotent_and_stores_no_card_number(journal: &Journal) {
        let payment_id = Uuid::new_v4();
        let summary = PaymentSummary::of(&request(payment_id));
        assert_eq!(summary.card_last4, "4242");
        assert_eq!(summary.merchant_currency.as_str(), "USD");
        assert!(journal.load(payment_id).await.unwrap().is_none());

        let first = journal.begin(payment_id, &summary).await.unwrap();
        assert_eq!(first.payment_id, payment_id);
        assert_eq!(first.summary, summary);
        assert_eq!(first.status(), "running");
        assert!(first.entries.is_empty() && first.result.is_none() && first.parked == 0);
        assert!(
            humantime::parse_rfc3339(&first.started_at).is_ok(),
            "{first:?}"
        );

        let again = journal.begin(payment_id, &summary).await.unwrap();
        assert_eq!(again, first);
        // A different summary under the same id does not replace the first.
        let mut other = summary.clone();
        other.amount.minor = 1;
        assert_eq!(journal.begin(payment_id, &other).await.unwrap(), first);
        assert_eq!(journal.load(payment_id).await.unwrap(), Some(first));

        // Nothing stored holds more than the last four digits: every 5-digit window of
        // 4242424242424242 is 42424 or 24242.
        let text = stored_text(journal, payment_id).await;
        assert!(text.contains(r#""card_last4":"4242""#), "{text}");
        assert!(!text.contains("42424") && !text.contains("24242"), "{text}");
    }

    async fn first_decision_is_kept(journal: &Journal) {
        let payment_id = Uuid::new_v4();
        journal.begin(payment_id, &summary()).await.unwrap();

        let first = journal
            .record(payment_id, &approved("authorization", "h-1"))
            .await
            .unwrap();
        assert!(
            humantime::parse_rfc3339(&first.recorded_at).is_ok(),
            "{first:?}"
        );
        let mut expected = approved("authorization", "h-1");
        expected.recorded_at = first.recorded_at.clone();
        assert_eq!(first, expected);

        // A different decision for the same step and action: the first comes back.
        let second = journal
            .record(payment_id, &declined("authorization", "no"))
            .await
            .unwrap();
        assert_eq!(second, first);
        // The compensation of that step is a decision of its own.
        let compensated = journal
            .record(
                payment_id,
                &entry(
                    "authorization",
                    Action::Compensate,
                    StepOutcome::Compensated,
                    1,
                ),
            )
            .await
            .unwrap();
        assert_eq!(compensated.record.outcome, StepOutcome::Compensated);

        let record = journal.load(payment_id).await.unwrap().unwrap();
        assert_eq!(record.entries, vec![first.clone(), compensated.clone()]);
        assert_eq!(record.entry("authorization", Action::Execute), Some(&first));
        assert_eq!(
            record.entry("authorization", Action::Compensate),
            Some(&compensated)
        );
        assert_eq!(record.entry("risk", Action::Execute), None);
        assert_eq!(record.entries[0].data["hold_id"], "h-1");
        assert_eq!(sequence(journal, payment_id).await, vec![1, 2]);

        // A caller-supplied time is kept.
        let mut timed = approved("risk", "-");
        timed.recorded_at = "2026-01-02T03:04:05.678Z".into();
        assert_eq!(journal.record(payment_id, &timed).await.unwrap(), timed);
    }

    async fn finish_load_and_park(journal: &Journal) {
        let payment_id = Uuid::new_v4();
        let summary = summary();
        journal.begin(payment_id, &summary).await.unwrap();
        // Recorded in an order that is neither alphabetical nor by attempts.
        let recorded = [
            entry("transaction", Action::Execute, StepOutcome::Failed, 3),
            entry("authorization", Action::Execute, StepOutcome::Approved, 2),
            entry("risk", Action::Execute, StepOutcome::Declined, 1),
            entry(
                "authorization",
                Action::Compensate,
                StepOutcome::Compensated,
                1,
            ),
        ];
        let mut stored = Vec::new();
        for entry in &recorded {
            // Another payment's entries interleave with this one's.
            let other = Uuid::new_v4();
            journal.begin(other, &summary).await.unwrap();
            journal.record(other, entry).await.unwrap();
            stored.push(journal.record(payment_id, entry).await.unwrap());
        }

        let declined = result(payment_id, Status::Declined, Some("high_risk"));
        assert_eq!(
            journal.finish(payment_id, &declined).await.unwrap(),
            declined
        );
        let completed = result(payment_id, Status::Completed, None);
        assert_eq!(
            journal.finish(payment_id, &completed).await.unwrap(),
            declined
        );

        assert_eq!(journal.park(payment_id).await.unwrap(), 1);
        assert_eq!(journal.park(payment_id).await.unwrap(), 2);
        assert_eq!(journal.park(payment_id).await.unwrap(), 3);

        let record = journal.load(payment_id).await.unwrap().unwrap();
        assert_eq!(record.entries, stored);
        let order: Vec<_> = record
            .entries
            .iter()
            .map(|e| (e.step.as_str(), e.action))
            .collect();
        assert_eq!(
            order,
            [
                ("transaction", Action::Execute),
                ("authorization", Action::Execute),
                ("risk", Action::Execute),
                ("authorization", Action::Compensate),
            ]
        );
        assert_eq!(record.result, Some(declined.clone()));
        assert_eq!(record.status(), "declined");
        assert_eq!(record.parked, 3);
        assert_eq!(record.summary, summary);
        assert!(record.updated_at >= record.started_at, "{record:?}");
        // Begin on a finished payment returns it finished (a redelivery after the end).
        assert_eq!(journal.begin(payment_id, &summary).await.unwrap(), record);

        // Writes for a payment never begun, or a result for another payment, are
        // refused, permanently.
        let stranger = Uuid::new_v4();
        for e in [
            journal
                .record(stranger, &approved("a", "h"))
                .await
                .unwrap_err(),
            journal
                .finish(stranger, &result(stranger, Status::Failed, Some("x")))
                .await
                .unwrap_err(),
            journal.park(stranger).await.unwrap_err(),
            journal
                .finish(payment_id, &result(stranger, Status::Failed, Some("x")))
                .await
                .unwrap_err(),
        ] {
            assert!(matches!(e, JournalError::Corrupt { .. }), "{e:?}");
            assert!(!e.is_transient());
        }
        assert!(journal.load(stranger).await.unwrap().is_none());
        assert_eq!(journal.load(payment_id).await.unwrap().unwrap(), record);
    }

    async fn corrupt_rows_are_reported(journal: &Journal) {
        let payment_id = Uuid::new_v4();
        journal.begin(payment_id, &summary()).await.unwrap();
        journal
            .record(payment_id, &approved("authorization", "h"))
            .await
            .unwrap();
        sqlx::query("UPDATE journal_entries SET body = '{' WHERE payment_id = $1")
            .bind(payment_id.to_string())
            .execute(&journal.pool)
            .await
            .unwrap();
        let e = journal.load(payment_id).await.unwrap_err();
        assert!(
            matches!(&e, JournalError::Corrupt { payment_id: p, .. } if *p == payment_id),
            "{e:?}"
        );
        assert!(!e.is_transient());
        assert!(e.to_string().contains("authorization"), "{e}");
    }

    /// Eight replicas (separate pools) race to record different decisions for the same
    /// step, then to record eight different steps, then to finish differently.
    async fn replicas_race(db: &TestDb) {
        let journal = db.open().await;
        let payment_id = Uuid::new_v4();
        journal.begin(payment_id, &summary()).await.unwrap();
        let mut replicas = Vec::new();
        for _ in 0..8 {
            replicas.push(db.open().await);
        }

        let barrier = Arc::new(Barrier::new(replicas.len()));
        let tasks: Vec<_> = replicas
            .iter()
            .enumerate()
            .map(|(i, replica)| {
                let (replica, barrier) = (replica.clone(), barrier.clone());
                let attempts = u32::try_from(i).unwrap() + 1;
                let mut decision = entry(
                    "authorization",
                    Action::Execute,
                    StepOutcome::Approved,
                    attempts,
                );
                decision.detail = Some(format!("replica {i}"));
                tokio::spawn(async move {
                    barrier.wait().await;
                    replica.record(payment_id, &decision).await.unwrap()
                })
            })
            .collect();
        let mut stored = Vec::new();
        for task in tasks {
            stored.push(task.await.unwrap());
        }
        assert!(stored.iter().all(|e| *e == stored[0]), "{stored:#?}");
        let count: i64 =
            sqlx::query("SELECT COUNT(*) FROM journal_entries WHERE payment_id = $1 AND step = $2")
                .bind(payment_id.to_string())
                .bind("authorization")
                .fetch_one(&journal.pool)
                .await
                .unwrap()
                .get(0);
        assert_eq!(count, 1);
        let record = journal.load(payment_id).await.unwrap().unwrap();
        assert_eq!(record.entries, vec![stored[0].clone()]);

        // Different steps at once: all kept, numbered 2..=9 without gaps or repeats,
        // loaded in that order.
        let barrier = Arc::new(Barrier::new(replicas.len()));
        let tasks: Vec<_> = replicas
            .iter()
            .enumerate()
            .map(|(i, replica)| {
                let (replica, barrier) = (replica.clone(), barrier.clone());
                let decision = approved(&format!("step-{i}"), &format!("h-{i}"));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let stored = replica.record(payment_id, &decision).await.unwrap();
                    assert_eq!(stored.data, decision.data);
                    stored
                })
            })
            .collect();
        let mut stored = Vec::new();
        for task in tasks {
            stored.push(task.await.unwrap());
        }
        assert_eq!(
            sequence(&journal, payment_id).await,
            (1..=9).collect::<Vec<_>>()
        );
        let record = journal.load(payment_id).await.unwrap().unwrap();
        assert_eq!(record.entries.len(), 9);
        for entry in &stored {
            assert!(record.entries.contains(entry), "{entry:?} missing");
        }

        // Different results at once: one wins, everyone gets it.
        let barrier = Arc::new(Barrier::new(replicas.len()));
        let tasks: Vec<_> = replicas
            .iter()
            .enumerate()
            .map(|(i, replica)| {
                let (replica, barrier) = (replica.clone(), barrier.clone());
                let mut outcome = result(payment_id, Status::Failed, Some("step_timeout"));
                outcome.detail = Some(format!("replica {i}"));
                tokio::spawn(async move {
                    barrier.wait().await;
                    replica.finish(payment_id, &outcome).await.unwrap()
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        assert!(results.iter().all(|r| *r == results[0]), "{results:#?}");
        let record = journal.load(payment_id).await.unwrap().unwrap();
        assert_eq!(record.result.as_ref(), Some(&results[0]));

        for replica in &replicas {
            replica.close().await;
        }
        journal.close().await;
    }

    async fn every_scenario(db: &TestDb) {
        let journal = db.open().await;
        begin_is_idempotent_and_stores_no_card_number(&journal).await;
        first_decision_is_kept(&journal).await;
        finish_load_and_park(&journal).await;
        corrupt_rows_are_reported(&journal).await;
        journal.close().await;
        replicas_race(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_journal_keeps_the_first_decision() {
        let db = TestDb::sqlite();
        let TestDb::Sqlite(path) = &db else {
            unreachable!()
        };
        assert!(!path.exists());
        let journal = db.open().await;
        assert!(path.exists(), "the file is created");
        let mut conn = journal.pool.acquire().await.unwrap();
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
        drop(conn);

        every_scenario(&db).await;

        // Reopening (a restart) keeps the data.
        let payment_id = Uuid::new_v4();
        journal.begin(payment_id, &summary()).await.unwrap();
        journal
            .record(payment_id, &approved("authorization", "h"))
            .await
            .unwrap();
        journal.close().await;
        let again = db.open().await;
        let record = again.load(payment_id).await.unwrap().unwrap();
        assert_eq!(record.entries.len(), 1);
        again.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_journal_keeps_the_first_decision() {
        let db = TestDb::postgres().await;
        every_scenario(&db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_open_a_fresh_postgres_journal_at_once() {
        let db = TestDb::postgres().await;
        let barrier = Arc::new(Barrier::new(6));
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let (url, barrier) = (db.url(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    Journal::open(&url).await
                })
            })
            .collect();
        let mut journals = Vec::new();
        for open in opens {
            journals.push(
                open.await
                    .unwrap()
                    .expect("every replica opens the journal"),
            );
        }
        let payment_id = Uuid::new_v4();
        journals[0].begin(payment_id, &summary()).await.unwrap();
        assert!(journals[5].load(payment_id).await.unwrap().is_some());
        for journal in journals {
            journal.close().await;
        }
    }

    #[tokio::test]
    async fn two_sqlite_openers_at_once_both_succeed() {
        let db = TestDb::sqlite();
        let url = db.url();
        let (a, b) = tokio::join!(Journal::open(&url), Journal::open(&url));
        let (a, b) = (a.unwrap(), b.unwrap());
        let payment_id = Uuid::new_v4();
        a.begin(payment_id, &summary()).await.unwrap();
        assert!(b.load(payment_id).await.unwrap().is_some());
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn unsupported_urls_are_refused_by_scheme() {
        let e = Journal::open("mysql://u:pw@h/db").await.unwrap_err();
        assert!(matches!(e, JournalError::UnsupportedUrl { .. }), "{e:?}");
        let message = e.to_string();
        assert!(message.contains("\"mysql\""), "{message}");
        assert!(
            !message.contains("pw") && !format!("{e:?}").contains("pw"),
            "{message}"
        );
        assert!(!e.is_transient());
        let e = Journal::open("/var/lib/baton/journal.db")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("scheme missing"), "{e}");
    }

    #[tokio::test]
    async fn passwords_never_show() {
        // Trust authentication ignores the password, so the open succeeds.
        let db = TestDb::postgres().await;
        let TestDb::Postgres(name) = &db else {
            unreachable!()
        };
        let url = format!("postgres://postgres:s3cret@127.0.0.1:5432/{name}");
        let journal = Journal::open(&url).await.unwrap();
        let debug = format!("{journal:?}");
        assert!(
            !debug.contains("s3cret") && debug.contains("postgres:***@"),
            "{debug}"
        );
        journal.close().await;

        // A database that does not exist: the open fails without the password.
        let e = Journal::open(&format!("{url}_missing")).await.unwrap_err();
        assert!(matches!(e, JournalError::Open { .. }), "{e:?}");
        assert!(e.is_transient());
        assert!(!e.to_string().contains("s3cret") && !format!("{e:?}").contains("s3cret"));
    }
}
