//! The ledger handle ([`Ledger`]), its errors, and what every part of it uses.

use crate::reply::Decline;
use baton_worker::idempotency::{Claims, IdempotencyError};
use serde_json::{Map, Value};
use sqlx::Row;
use std::sync::Arc;
#[cfg(test)]
use std::sync::Once;
use uuid::Uuid;

/// Errors of the ledger. All but [`LedgerError::UnsupportedUrl`] may go away on retry.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The URL names no supported backend.
    #[error(
        "ledger URL {url} is not supported (scheme {scheme}): use sqlite://<path> or postgres://…"
    )]
    UnsupportedUrl {
        /// The URL, password removed.
        url: String,
        /// The URL's scheme, quoted, or `missing`.
        scheme: String,
    },
    /// The database could not be opened (its message names the file or the URL without
    /// its password), or its tables not created.
    #[error("cannot open the ledger: {cause}")]
    Open {
        /// Why, as the SQL opener says it.
        cause: baton_ops::sql::SqlError,
    },
    /// A query failed (connection lost, lock timeout, …): retry later.
    #[error("ledger database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The shared transaction of a batch of commands did not commit (SQLite group
    /// commit): nothing of this command is stored; retry later.
    #[error("ledger database error: {0}")]
    Uncommitted(String),
    /// A stored reply cannot be read back: the database was edited by hand.
    #[error("stored reply of command {command_id} is unreadable: {problem}")]
    CorruptReply {
        /// The command whose reply is damaged.
        command_id: String,
        /// What is wrong.
        problem: String,
    },
}

impl From<IdempotencyError> for LedgerError {
    fn from(e: IdempotencyError) -> Self {
        match e {
            IdempotencyError::Database(e) => LedgerError::Database(e),
            IdempotencyError::Commit(problem) => LedgerError::Uncommitted(problem),
            IdempotencyError::CorruptReply {
                command_id,
                problem,
            } => LedgerError::CorruptReply {
                command_id,
                problem,
            },
        }
    }
}

/// The ledger database. Cheap to clone (a connection pool).
#[derive(Clone, Debug)]
pub struct Ledger {
    /// Where commands are claimed, on a pool of `Any` connections (the same code runs on
    /// SQLite and PostgreSQL); on SQLite with group commit: one `fsync` for the commands
    /// that arrive while one is being written. Reads use its pool.
    pub(super) claims: Claims,
    /// The database's identity (`ledger_identity`), read once at open: pings and
    /// approvals report it without touching the database.
    pub(super) id: Arc<str>,
    /// Where the database is: an absolute file path or the URL without its password.
    pub(super) location: Arc<str>,
}

/// Registers sqlx's `Any` drivers, once per process (the tests' own connections; the
/// opener registers them for `open`).
#[cfg(test)]
pub(crate) fn install_drivers() {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
}

pub(super) fn i64_of(value: u64, what: &str) -> Result<i64, Decline> {
    i64::try_from(value).map_err(|_| Decline {
        reason: "amount_too_large",
        detail: format!("{what} {value} is too large to store"),
    })
}

pub(super) fn u64_of(value: i64) -> u64 {
    // Counts and stored amounts are never negative.
    u64::try_from(value).unwrap_or(0)
}

pub(super) fn data(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

impl Ledger {
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
        self.claims.close().await;
    }

    /// Status of the payment's hold (`held`, `voided`, `captured`), if it has one.
    pub async fn hold_status(&self, payment_id: Uuid) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query("SELECT status FROM holds WHERE payment_id = $1")
            .bind(payment_id.to_string())
            .fetch_optional(self.claims.pool())
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// How many transfers the payment has (0 or 1 unless something is very wrong).
    pub async fn transfers_for(&self, payment_id: Uuid) -> Result<u64, LedgerError> {
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM transfers WHERE payment_id = $1")
            .bind(payment_id.to_string())
            .fetch_one(self.claims.pool())
            .await?
            .try_get(0)?;
        Ok(u64_of(count))
    }

    /// How many holds the payment has.
    pub async fn holds_for(&self, payment_id: Uuid) -> Result<u64, LedgerError> {
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM holds WHERE payment_id = $1")
            .bind(payment_id.to_string())
            .fetch_one(self.claims.pool())
            .await?
            .try_get(0)?;
        Ok(u64_of(count))
    }
}
