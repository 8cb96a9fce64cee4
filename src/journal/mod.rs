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
//! machine, or `postgres://…` shared by many replicas. Both run the same SQL
//! (`statements.rs`, written against `baton_ops::exec::Exec`); they differ only in how
//! writes reach the database (`store.rs`): one writer task commits the writes waiting at
//! that moment together, in one transaction (group commit) — each caller still gets its
//! answer only after the commit that made its write durable — on SQLite on a connection
//! on a thread of its own, on PostgreSQL (sqlx's `Any` driver) on a pooled connection.
//! Reads go through sqlx's pool on both. Each entry's `StepRecord`, detail and data are
//! stored as one JSON text column, so the schema stays stable as the contract grows.
//!
//! Modules: `schema.rs` (tables and migrations),
//! `statements.rs` (every write), `store.rs` (the two writers), `reads.rs` (queries),
//! `saga_log.rs` (the saga's view of the journal). What is stored is [`crate::records`]:
//! the saga and the tools read those types without any SQL.

mod reads;
mod saga_log;
mod schema;
mod statements;
mod store;
#[cfg(test)]
mod tests;

pub use crate::records::{
    action_name, JournalEntry, JournalError, PaymentSummary, Pruned, RunningSagas, SagaRecord,
    StuckSaga,
};

use crate::records::fresh;
use baton_contract::PaymentResult;
use baton_ops::sql::{self, Database, OpenMode, SqlError};
use schema::{create_schema, read_identity, Backend};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use statements::{EntryBody, Job, Written};
use std::fmt;
use std::time::{Duration, SystemTime};
use store::Store;
use uuid::Uuid;

/// How long a running saga stays leased to whoever runs it without a renewal: the
/// default of `--saga-lease`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);

/// The saga journal database. Cheap to clone (a connection pool); `Debug` shows the URL
/// without its password.
#[derive(Clone)]
pub struct Journal {
    /// Pool of `Any` connections: the same code runs on SQLite and PostgreSQL. On SQLite
    /// it serves reads only; writes go to the writer task.
    pool: AnyPool,
    /// Where writes go.
    store: Store,
    /// The URL, password removed.
    url: String,
    /// The journal's identity (`journal_identity`), read once at open.
    id: String,
    /// Where the journal is: the file's absolute path, or the URL without its password.
    location: String,
    /// How long a begun saga is leased before it needs a renewal ([`Journal::renew`]).
    lease: Duration,
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

/// `now + d` as the journal writes times: RFC 3339 UTC with milliseconds, a fixed width, so
/// that times compare as text on both backends.
fn time_after(d: Duration) -> String {
    stamp(SystemTime::now() + d)
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The current UTC time, RFC 3339 with milliseconds.
fn now() -> String {
    stamp(SystemTime::now())
}

fn redact(url: &str) -> String {
    baton_amqp::redact_url(url)
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

/// The store answered a write with another write's kind of answer (a bug).
fn mismatched() -> JournalError {
    JournalError::Database(sqlx::Error::Protocol(
        "the journal's writer answered another write".into(),
    ))
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
            SqlError::UnsupportedUrl { url, scheme } => {
                JournalError::UnsupportedUrl { url, scheme }
            }
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
        let (pool, id) = database
            .open_store(options, "journal_sagas", "Baton journal", async |pool| {
                create_schema(pool, backend).await?;
                read_identity(pool).await
            })
            .await
            .map_err(open_error)?;
        let store = match backend {
            Backend::Postgres => Store::pooled(pool.clone()),
            Backend::Sqlite => {
                let thread = database
                    .sqlite_thread("journal-writer")
                    .await
                    .map_err(open_error)?;
                Store::batched(thread)
            }
        };
        Ok(Self {
            pool,
            store,
            url: redact(url),
            id,
            location: baton_amqp::database_location(url),
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
        match self
            .store
            .write(Job::Begin {
                id: payment_id.to_string(),
                summary: text,
                now: now.clone(),
                lease_until: time_after(self.lease),
            })
            .await?
        {
            // A new saga has nothing to read back.
            Written::Begun(true) => Ok(fresh(payment_id, summary, &now)),
            // Saga rows are only deleted once finished and old: the row found is there.
            Written::Begun(false) => self
                .load(payment_id)
                .await?
                .ok_or_else(|| not_begun(payment_id)),
            _ => Err(mismatched()),
        }
    }

    /// Records `entry` for `payment_id` unless a decision for the same `(step, action)`
    /// is already stored, and returns the entry actually stored: `entry` (with
    /// `recorded_at` filled in if it was empty) if it is the first, otherwise the
    /// earlier one, which the caller must continue with. The saga must have been begun.
    ///
    /// Ordering: entries get a per-payment sequence number, 1, 2, 3 …, one past the
    /// payment's highest, taken in the transaction whose first statement locks the saga
    /// row. Concurrent writers of one payment therefore serialise until commit: on
    /// PostgreSQL on the row's lock (a waiter's next statement sees what the winner
    /// committed, READ COMMITTED), on SQLite on the database write lock. Hence the numbers
    /// follow commit order on both backends, are unique (also enforced by an index), have
    /// no gaps and never go backwards, whatever the replicas' clocks say.
    ///
    /// First writer wins: `(payment_id, step, action)` is the primary key and the insert
    /// is `ON CONFLICT (payment_id, step, action) DO NOTHING`. A writer that inserts
    /// nothing reads the stored entry, which is committed and visible.
    pub async fn record(
        &self,
        payment_id: Uuid,
        entry: &JournalEntry,
    ) -> Result<JournalEntry, JournalError> {
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
        match self
            .store
            .write(Job::Record {
                payment_id,
                entry,
                body,
            })
            .await?
        {
            Written::Recorded(stored) => Ok(stored),
            _ => Err(mismatched()),
        }
    }

    /// Records the final result of `payment_id` unless one is already stored, and
    /// returns the stored one: `result` if it was the first, otherwise the earlier
    /// result, which is the payment's answer. The saga must have been begun.
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
        match self.store.write(Job::Finish { payment_id, text }).await? {
            Written::Finished(stored) => Ok(stored),
            _ => Err(mismatched()),
        }
    }

    /// Counts one more time `payment_id` was parked (set aside to be retried later, for
    /// instance because a step's service is unavailable) and returns the new count. The
    /// saga must have been begun. Its lease is extended to `back_within` (when the
    /// parked request should be back) plus one lease: nobody holds it meanwhile, and the
    /// sweeper only takes it if the request does not come back.
    pub async fn park(&self, payment_id: Uuid, back_within: Duration) -> Result<u32, JournalError> {
        match self
            .store
            .write(Job::Park {
                payment_id,
                lease_until: time_after(back_within + self.lease),
            })
            .await?
        {
            Written::Parked(count) => Ok(count),
            _ => Err(mismatched()),
        }
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
        let ids = payment_ids.iter().map(Uuid::to_string).collect();
        match self.store.write(Job::Renew { ids, lease_until }).await? {
            Written::Changed(n) => Ok(n),
            _ => Err(mismatched()),
        }
    }

    /// Takes over `payment_id` for one lease if it is running and its lease ran out;
    /// `false` if it is finished, leased (someone runs it), or another sweeper was first.
    pub async fn claim(&self, payment_id: Uuid) -> Result<bool, JournalError> {
        match self
            .store
            .write(Job::Claim {
                id: payment_id.to_string(),
                now: now(),
                lease_until: time_after(self.lease),
            })
            .await?
        {
            Written::Changed(n) => Ok(n == 1),
            _ => Err(mismatched()),
        }
    }

    /// Deletes finished sagas, with their entries, last changed more than `older_than`
    /// ago. Running sagas are never deleted, however old.
    pub async fn prune(&self, older_than: Duration) -> Result<Pruned, JournalError> {
        let before = stamp(SystemTime::now() - older_than);
        match self.store.write(Job::Prune { before }).await? {
            Written::Pruned(pruned) => Ok(pruned),
            _ => Err(mismatched()),
        }
    }
}
