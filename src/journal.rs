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
//! rebuilt from it. Work is handed out by the broker's delivery, not by the journal; but
//! every running saga carries a **lease** (`lease_until`): the process running it renews
//! it, a parked saga's lease covers its parking delay, and a saga whose lease ran out has
//! nobody driving it (its request was lost, dead-lettered past the delivery limit, or its
//! owner died and the request is gone). The sweeper ([`Journal::stuck`],
//! [`Journal::claim`]) finds those and drives them to an end.
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
use baton_ops::sql::{self, Database, OpenMode, SqlError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, Row};
use std::fmt;
use std::time::{Duration, SystemTime};
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
    /// The database could not be opened (its message names the file or the URL without
    /// its password), or its tables not created.
    #[error("cannot open the journal: {cause}")]
    Open {
        /// Why, as the SQL opener says it.
        cause: SqlError,
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
    /// (a server down or slow at open), yes; an unsupported URL, a missing or foreign
    /// database, or a corrupt record, no.
    pub fn is_transient(&self) -> bool {
        match self {
            JournalError::Database(_) => true,
            JournalError::Open { cause } => cause.is_transient(),
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
    /// The card brand (`visa`, …: `CardNumber::brand`, no digit of the number), which
    /// workflow conditions read. Empty in a record begun before Baton kept it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub card_brand: String,
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
            card_brand: request.card.number.brand().to_owned(),
        }
    }

    /// Whether `self` (from a request) is the payment `stored` was begun with. A record
    /// begun before the journal kept the brand has none, and matches on the rest.
    pub fn same_payment(&self, stored: &PaymentSummary) -> bool {
        if stored.card_brand.is_empty() {
            let without = PaymentSummary {
                card_brand: String::new(),
                ..self.clone()
            };
            return without == *stored;
        }
        self == stored
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

/// How long a running saga stays leased to whoever runs it without a renewal: the
/// default of `--saga-lease`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);

/// Key of the PostgreSQL advisory lock that serialises schema creation ("batonjnl").
const SCHEMA_LOCK: i64 = 0x6261_746f_6e6a_6e6c;

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
    /// The journal's identity (`journal_identity`), read once at open.
    id: String,
    /// Where the journal is: the file's absolute path, or the URL without its password.
    location: String,
    /// How long a begun saga is leased before it needs a renewal ([`Journal::renew`]).
    lease: Duration,
}

/// A running saga whose lease ran out: nobody is driving it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StuckSaga {
    /// The payment.
    pub payment_id: Uuid,
    /// When it was begun, RFC 3339 UTC.
    pub started_at: String,
    /// When its lease ran out, RFC 3339 UTC.
    pub lease_until: String,
    /// How many times it was parked.
    pub parked: u32,
}

/// How many sagas are running, and since when the oldest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunningSagas {
    /// Sagas without a result.
    pub count: u64,
    /// `started_at` of the oldest of them.
    pub oldest_started_at: Option<String>,
}

/// What [`Journal::prune`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished sagas deleted.
    pub sagas: u64,
    /// Their entries.
    pub entries: u64,
}

/// A write for the SQLite writer task.
enum Job {
    Begin {
        id: String,
        summary: String,
        now: String,
        lease_until: String,
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
        lease_until: String,
    },
    /// Renew the leases of these running sagas.
    Renew {
        ids: Vec<String>,
        lease_until: String,
    },
    /// Take over a saga whose lease ran out.
    Claim {
        id: String,
        now: String,
        lease_until: String,
    },
    /// Delete finished sagas older than the cutoff.
    Prune {
        before: String,
    },
}

/// What a write gave, sent back once its batch is committed.
enum Written {
    /// `true` if this write created the saga.
    Begun(bool),
    Recorded(JournalEntry),
    Finished(PaymentResult),
    Parked(u32),
    /// Rows changed (renewed, claimed).
    Changed(u64),
    Pruned(Pruned),
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

/// `now + d` as the journal writes times: RFC 3339 UTC with milliseconds, a fixed width, so
/// that times compare as text on both backends.
fn time_after(d: Duration) -> String {
    stamp(SystemTime::now() + d)
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Statement text with `$from..$from+n` placeholders, comma-separated.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ids renewed per statement.
const RENEW_CHUNK: usize = 500;

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
            lease_until,
        } => {
            let inserted = sqlx::query(BEGIN_INSERT)
                .bind(id)
                .bind(summary)
                .bind(started)
                .bind(started)
                .bind(lease_until)
                .execute(&mut *connection)
                .await?
                .rows_affected();
            if inserted == 0 {
                sqlx::query(BEGIN_RENEW)
                    .bind(lease_until)
                    .bind(id)
                    .execute(&mut *connection)
                    .await?;
            }
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
        Job::Park {
            payment_id,
            lease_until,
        } => {
            let Some(row) = sqlx::query(PARK)
                .bind(&now)
                .bind(lease_until)
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
        Job::Renew { ids, lease_until } => {
            let mut changed = 0;
            for chunk in ids.chunks(RENEW_CHUNK) {
                let text = renew_text(chunk.len());
                changed += renew_query(&text, chunk, lease_until)
                    .execute(&mut *connection)
                    .await?
                    .rows_affected();
            }
            Ok(Written::Changed(changed))
        }
        Job::Claim {
            id,
            now,
            lease_until,
        } => {
            let changed = sqlx::query(CLAIM)
                .bind(lease_until)
                .bind(id)
                .bind(now)
                .execute(&mut *connection)
                .await?
                .rows_affected();
            Ok(Written::Changed(changed))
        }
        Job::Prune { before } => Ok(Written::Pruned(prune_in(&mut *connection, before).await?)),
    })
}

/// Creates a saga, or does nothing if it exists (then [`BEGIN_RENEW`] renews its lease).
const BEGIN_INSERT: &str = "INSERT INTO journal_sagas
        (payment_id, summary, started_at, updated_at, result, parked, last_seq, lease_until)
     VALUES ($1, $2, $3, $4, NULL, 0, 0, $5)
     ON CONFLICT (payment_id) DO NOTHING";

/// A saga begun again (a redelivery, a parked request back): whoever runs it now holds it.
const BEGIN_RENEW: &str =
    "UPDATE journal_sagas SET lease_until = $1 WHERE payment_id = $2 AND result IS NULL";

/// A parked saga is leased until it should be back, plus one lease.
const PARK: &str = "UPDATE journal_sagas SET parked = parked + 1, updated_at = $1, lease_until = $2
     WHERE payment_id = $3
     RETURNING parked";

/// Takes over a saga only if its lease has run out; the condition is checked again under
/// the row's lock (PostgreSQL, READ COMMITTED) or the write lock (SQLite), so of two
/// sweepers one claims it.
const CLAIM: &str = "UPDATE journal_sagas SET lease_until = $1
     WHERE payment_id = $2 AND result IS NULL AND lease_until < $3";

/// The statement renewing `n` sagas' leases, for [`renew_query`].
fn renew_text(n: usize) -> String {
    format!(
        "UPDATE journal_sagas SET lease_until = $1
         WHERE result IS NULL AND payment_id IN ({})",
        placeholders(2, n)
    )
}

fn renew_query<'q>(
    text: &'q str,
    ids: &'q [String],
    lease_until: &'q str,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    let mut query = sqlx::query(text).bind(lease_until);
    for id in ids {
        query = query.bind(id);
    }
    query
}

/// Deletes finished sagas (and their entries) last changed before `before`; never a
/// running one.
async fn prune_in(connection: &mut AnyConnection, before: &str) -> Result<Pruned, sqlx::Error> {
    let entries = sqlx::query(
        "DELETE FROM journal_entries WHERE payment_id IN
            (SELECT payment_id FROM journal_sagas WHERE result IS NOT NULL AND updated_at < $1)",
    )
    .bind(before)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    let sagas =
        sqlx::query("DELETE FROM journal_sagas WHERE result IS NOT NULL AND updated_at < $1")
            .bind(before)
            .execute(&mut *connection)
            .await?
            .rows_affected();
    Ok(Pruned { sagas, entries })
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

/// The current UTC time, RFC 3339 with milliseconds.
fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The journal's spelling of an action (`execute`, `compensate`).
pub(crate) fn action_name(action: Action) -> &'static str {
    match action {
        Action::Execute => "execute",
        Action::Compensate => "compensate",
        // Never journaled: sagas do not ping.
        Action::Ping => "ping",
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
        Self::open_with(url, OpenMode::Create).await
    }

    /// Opens an existing journal, for operators' tools (`baton status`, `sagas`,
    /// `journal prune`, `doctor`): a missing SQLite file is an error naming the absolute
    /// path looked at, never a new empty journal, and a database without the journal's
    /// tables is refused. (An older journal's tables are upgraded, as `open` does.)
    pub async fn open_existing(url: &str) -> Result<Self, JournalError> {
        Self::open_with(url, OpenMode::MustExist).await
    }

    async fn open_with(url: &str, mode: OpenMode) -> Result<Self, JournalError> {
        let open_error = |cause: SqlError| match cause {
            SqlError::UnsupportedUrl { url, .. } => JournalError::UnsupportedUrl { url },
            cause => JournalError::Open { cause },
        };
        let database = Database::new(url, mode).map_err(open_error)?;
        let (backend, options) = match database.backend() {
            // Reads only (writes go to the writer task): WAL readers do not block each
            // other or the writer.
            sql::Backend::Sqlite => (
                Backend::Sqlite,
                AnyPoolOptions::new()
                    .max_connections(4)
                    .idle_timeout(None)
                    .max_lifetime(None),
            ),
            sql::Backend::Postgres => {
                (Backend::Postgres, AnyPoolOptions::new().max_connections(16))
            }
        };
        let pool = database.pool(options).await.map_err(open_error)?;
        let schema = async {
            if mode == OpenMode::MustExist {
                database
                    .require_table(&pool, "journal_sagas", "Baton journal")
                    .await?;
            }
            create_schema(&pool, backend)
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
        let writer = match backend {
            Backend::Postgres => None,
            Backend::Sqlite => {
                let connection = database.connect().await.map_err(open_error)?;
                let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
                tokio::spawn(write_batches(connection, queue));
                Some(jobs)
            }
        };
        Ok(Self {
            pool,
            writer,
            url: redact(url),
            id,
            location: baton_contract::amqp::database_location(url),
            lease: DEFAULT_LEASE,
        })
    }

    /// The journal's identity: a random id drawn when the database was created, the same
    /// for every process that opens this database.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the journal is: the database file's absolute path, or the URL without its
    /// password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes to the journal without changing it (rewrites its identity row): `Ok` means
    /// this process can record decisions. For `baton doctor`.
    pub async fn check_writable(&self) -> Result<(), JournalError> {
        sqlx::query("UPDATE journal_identity SET journal_id = journal_id WHERE singleton = 1")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The same journal, leasing begun sagas for `lease` (default [`DEFAULT_LEASE`]). A
    /// process renews the sagas it runs ([`Journal::renew`]) well within it; a saga whose
    /// lease ran out is the sweeper's.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a begun saga stays leased without a renewal.
    pub fn lease(&self) -> Duration {
        self.lease
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
        let lease_until = time_after(self.lease);
        if self.writer.is_some() {
            let created = self
                .write(Job::Begin {
                    id: payment_id.to_string(),
                    summary: text,
                    now: now.clone(),
                    lease_until,
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
        let inserted = sqlx::query(BEGIN_INSERT)
            .bind(payment_id.to_string())
            .bind(text)
            .bind(&now)
            .bind(&now)
            .bind(&lease_until)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if inserted == 1 {
            return Ok(fresh(payment_id, summary, &now));
        }
        sqlx::query(BEGIN_RENEW)
            .bind(&lease_until)
            .bind(payment_id.to_string())
            .execute(&self.pool)
            .await?;
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
    /// saga must have been begun. Its lease is extended to `back_within` (when the
    /// parked request should be back) plus one lease: nobody holds it meanwhile, and the
    /// sweeper only takes it if the request does not come back.
    pub async fn park(&self, payment_id: Uuid, back_within: Duration) -> Result<u32, JournalError> {
        let lease_until = time_after(back_within + self.lease);
        if self.writer.is_some() {
            return match self
                .write(Job::Park {
                    payment_id,
                    lease_until,
                })
                .await?
            {
                Written::Parked(count) => Ok(count),
                _ => Err(corrupt(payment_id, "the writer answered another write")),
            };
        }
        let row = sqlx::query(PARK)
            .bind(now())
            .bind(&lease_until)
            .bind(payment_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_begun(payment_id))?;
        let parked: i64 = row.try_get(0)?;
        u32::try_from(parked).map_err(|_| corrupt(payment_id, format!("parked count {parked}")))
    }

    /// Renews the leases of `payment_ids` (the running sagas of this process) for one
    /// more lease; finished ones are left alone. Returns how many were renewed.
    pub async fn renew(&self, payment_ids: &[Uuid]) -> Result<u64, JournalError> {
        self.set_lease(payment_ids, time_after(self.lease)).await
    }

    /// Ends the lease of `payment_id` now, if it is running: the next sweep of any
    /// orchestrator finishes it (`baton sagas finish`). `false` if it is not running.
    pub async fn expire(&self, payment_id: Uuid) -> Result<bool, JournalError> {
        let expired = stamp(SystemTime::UNIX_EPOCH);
        Ok(self.set_lease(&[payment_id], expired).await? == 1)
    }

    async fn set_lease(
        &self,
        payment_ids: &[Uuid],
        lease_until: String,
    ) -> Result<u64, JournalError> {
        if payment_ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = payment_ids.iter().map(Uuid::to_string).collect();
        if self.writer.is_some() {
            return match self.write(Job::Renew { ids, lease_until }).await? {
                Written::Changed(n) => Ok(n),
                _ => Err(JournalError::Database(sqlx::Error::Protocol(
                    "the writer answered another write".into(),
                ))),
            };
        }
        let mut changed = 0;
        for chunk in ids.chunks(RENEW_CHUNK) {
            let text = renew_text(chunk.len());
            changed += renew_query(&text, chunk, &lease_until)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(changed)
    }

    /// Running sagas whose lease ran out, oldest lease first, at most `limit`.
    pub async fn stuck(&self, limit: u32) -> Result<Vec<StuckSaga>, JournalError> {
        self.stuck_for(limit, Duration::ZERO).await
    }

    /// Running sagas whose lease ran out at least `overdue` ago, oldest lease first, at
    /// most `limit`.
    pub async fn stuck_for(
        &self,
        limit: u32,
        overdue: Duration,
    ) -> Result<Vec<StuckSaga>, JournalError> {
        let before = stamp(SystemTime::now() - overdue);
        let rows = sqlx::query(
            "SELECT payment_id, started_at, lease_until, parked FROM journal_sagas
             WHERE result IS NULL AND lease_until < $1
             ORDER BY lease_until LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0)?;
                let payment_id = Uuid::parse_str(&id)
                    .map_err(|e| JournalError::Database(sqlx::Error::Decode(Box::new(e))))?;
                let parked: i64 = row.try_get(3)?;
                Ok(StuckSaga {
                    payment_id,
                    started_at: row.try_get(1)?,
                    lease_until: row.try_get(2)?,
                    parked: u32::try_from(parked).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    /// Takes over `payment_id` for one lease if it is running and its lease ran out;
    /// `false` if it is finished, leased (someone runs it), or another sweeper was first.
    pub async fn claim(&self, payment_id: Uuid) -> Result<bool, JournalError> {
        let id = payment_id.to_string();
        let now = now();
        let lease_until = time_after(self.lease);
        if self.writer.is_some() {
            return match self
                .write(Job::Claim {
                    id,
                    now,
                    lease_until,
                })
                .await?
            {
                Written::Changed(n) => Ok(n == 1),
                _ => Err(corrupt(payment_id, "the writer answered another write")),
            };
        }
        let changed = sqlx::query(CLAIM)
            .bind(&lease_until)
            .bind(&id)
            .bind(&now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(changed == 1)
    }

    /// How many sagas are running and when the oldest began.
    pub async fn running(&self) -> Result<RunningSagas, JournalError> {
        let row =
            sqlx::query("SELECT COUNT(*), MIN(started_at) FROM journal_sagas WHERE result IS NULL")
                .fetch_one(&self.pool)
                .await?;
        let count: i64 = row.try_get(0)?;
        Ok(RunningSagas {
            count: u64::try_from(count).unwrap_or(0),
            oldest_started_at: row.try_get(1)?,
        })
    }

    /// Deletes finished sagas, with their entries, last changed more than `older_than`
    /// ago. Running sagas are never deleted, however old.
    pub async fn prune(&self, older_than: Duration) -> Result<Pruned, JournalError> {
        let before = stamp(SystemTime::now() - older_than);
        if self.writer.is_some() {
            return match self.write(Job::Prune { before }).await? {
                Written::Pruned(pruned) => Ok(pruned),
                _ => Err(JournalError::Database(sqlx::Error::Protocol(
                    "the writer answered another write".into(),
                ))),
            };
        }
        let mut tx = self.pool.begin().await?;
        let pruned = prune_in(&mut tx, &before).await?;
        tx.commit().await?;
        Ok(pruned)
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
    /// The records of the `limit` most recently begun payments, newest first (the status
    /// page's list). Read-only.
    pub async fn recent(&self, limit: u32) -> Result<Vec<SagaRecord>, JournalError> {
        let rows = sqlx::query(
            "SELECT payment_id FROM journal_sagas ORDER BY started_at DESC, payment_id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0)?;
            let payment_id = Uuid::parse_str(&id)
                .map_err(|e| JournalError::Database(sqlx::Error::Decode(Box::new(e))))?;
            // Pruned between the two reads: simply not listed.
            if let Some(record) = self.load(payment_id).await? {
                records.push(record);
            }
        }
        Ok(records)
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
    .bind(time_after(DEFAULT_LEASE))
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
async fn read_identity(pool: &AnyPool) -> Result<String, sqlx::Error> {
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

        assert_eq!(journal.park(payment_id, Duration::ZERO).await.unwrap(), 1);
        assert_eq!(journal.park(payment_id, Duration::ZERO).await.unwrap(), 2);
        assert_eq!(journal.park(payment_id, Duration::ZERO).await.unwrap(), 3);

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
            journal.park(stranger, Duration::ZERO).await.unwrap_err(),
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

    /// Leases: a begun saga is leased, renewals and a redelivery keep it, a parked one
    /// is leased past its delay, one whose lease ran out is stuck until a single claimer
    /// takes it; prune deletes finished sagas only.
    async fn leases_claims_and_prune(db: &TestDb) {
        // Times are millisecond stamps: a lease of 1 ms has surely run out 20 ms later.
        let lapse = || tokio::time::sleep(Duration::from_millis(20));
        let short = db.open().await.with_lease(Duration::from_millis(1));
        let long = short.clone().with_lease(Duration::from_secs(3600));
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        short.begin(a, &summary()).await.unwrap();
        short
            .record(a, &approved("authorization", "h-a"))
            .await
            .unwrap();
        short.begin(b, &summary()).await.unwrap();
        short
            .finish(b, &result(b, Status::Completed, None))
            .await
            .unwrap();
        long.begin(c, &summary()).await.unwrap();
        lapse().await;
        let stuck: Vec<Uuid> = short
            .stuck(10)
            .await
            .unwrap()
            .iter()
            .map(|s| s.payment_id)
            .collect();
        assert_eq!(stuck, vec![a], "only the running saga whose lease ran out");
        let running = short.running().await.unwrap();
        assert_eq!(running.count, 2, "a and c run; b is finished");
        assert!(running.oldest_started_at.is_some());

        // The owner's renewal keeps it; a finished saga is not renewed.
        assert_eq!(long.renew(&[a, b]).await.unwrap(), 1);
        assert!(short.stuck(10).await.unwrap().is_empty());

        // Ended by hand, it is stuck; of two claimers one takes it, then it is leased.
        assert!(short.expire(a).await.unwrap());
        assert!(
            !short.expire(b).await.unwrap(),
            "a finished saga has no lease"
        );
        let other = long.clone();
        let (first, second) = tokio::join!(long.claim(a), other.claim(a));
        assert!(
            first.unwrap() ^ second.unwrap(),
            "exactly one claimer takes it"
        );
        assert!(!long.claim(a).await.unwrap(), "leased now");
        assert!(!long.claim(b).await.unwrap(), "finished");
        assert!(short.stuck(10).await.unwrap().is_empty());

        // A redelivery (begin again) takes it back from an expired lease.
        short.expire(a).await.unwrap();
        long.begin(a, &summary()).await.unwrap();
        assert!(short.stuck(10).await.unwrap().is_empty());

        // Parked: leased until it should be back, plus a lease.
        short.park(a, Duration::ZERO).await.unwrap();
        lapse().await;
        assert_eq!(short.stuck(10).await.unwrap().len(), 1);
        short.park(a, Duration::from_secs(60)).await.unwrap();
        assert!(short.stuck(10).await.unwrap().is_empty());

        // Prune: finished sagas only, and only those old enough.
        short
            .finish(a, &result(a, Status::Failed, Some("x")))
            .await
            .unwrap();
        assert_eq!(
            short.prune(Duration::from_secs(3600)).await.unwrap(),
            Pruned::default()
        );
        lapse().await;
        let pruned = short.prune(Duration::from_millis(1)).await.unwrap();
        assert_eq!(
            pruned,
            Pruned {
                sagas: 2,
                entries: 1
            }
        );
        assert!(short.load(a).await.unwrap().is_none());
        assert!(short.load(b).await.unwrap().is_none());
        assert!(
            short.load(c).await.unwrap().is_some(),
            "running: never pruned"
        );
        assert_eq!(short.running().await.unwrap().count, 1);
        short.close().await;
    }

    /// A journal created before leases: opening it adds the column and gives its running
    /// sagas a lease from now, so the sweeper does not take them at once.
    async fn an_old_journal_gains_leases(db: &TestDb) {
        let mut conn = Database::new(&db.url(), OpenMode::Create)
            .unwrap()
            .connect()
            .await
            .unwrap();
        for statement in [
            "CREATE TABLE journal_sagas (payment_id TEXT PRIMARY KEY, summary TEXT NOT NULL,
                started_at TEXT NOT NULL, updated_at TEXT NOT NULL, result TEXT,
                parked BIGINT NOT NULL, last_seq BIGINT NOT NULL)",
            "CREATE TABLE journal_entries (payment_id TEXT NOT NULL, step TEXT NOT NULL,
                action TEXT NOT NULL, seq BIGINT NOT NULL, recorded_at TEXT NOT NULL,
                body TEXT NOT NULL, PRIMARY KEY (payment_id, step, action))",
        ] {
            sqlx::query(statement).execute(&mut conn).await.unwrap();
        }
        let old = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO journal_sagas VALUES ($1, $2, '2026-01-01T00:00:00.000Z',
                '2026-01-01T00:00:00.000Z', NULL, 0, 0)",
        )
        .bind(old.to_string())
        .bind(serde_json::to_string(&summary()).unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();

        let journal = db.open().await;
        assert!(
            journal.stuck(10).await.unwrap().is_empty(),
            "leased from the upgrade"
        );
        assert_eq!(journal.running().await.unwrap().count, 1);
        assert!(journal.expire(old).await.unwrap(), "the column is there");
        assert_eq!(journal.stuck(10).await.unwrap()[0].payment_id, old);
        // It gained an identity, which every later opener sees, and stays writable.
        assert!(Uuid::parse_str(journal.id()).is_ok(), "{}", journal.id());
        journal.check_writable().await.unwrap();
        let again = db.open().await;
        assert_eq!(again.id(), journal.id());
        again.close().await;
        journal.close().await;
    }

    #[tokio::test]
    async fn sqlite_journal_leases_its_running_sagas() {
        leases_claims_and_prune(&TestDb::sqlite()).await;
        an_old_journal_gains_leases(&TestDb::sqlite()).await;
    }

    #[tokio::test]
    async fn postgres_journal_leases_its_running_sagas() {
        leases_claims_and_prune(&TestDb::postgres().await).await;
        an_old_journal_gains_leases(&TestDb::postgres().await).await;
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
