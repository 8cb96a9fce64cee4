//! `baton-transaction prune`: deleting old, finished records — never an open hold, its
//! payment's command records, or anything the audit would report.

use super::store::{u64_of, Ledger, LedgerError};
use baton_worker::idempotency::now_ms;
use sqlx::Row;
use std::time::Duration;

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

impl Ledger {
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
            let mut tx = self.claims.pool().begin().await?;
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
                .execute(self.claims.pool())
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
                .fetch_one(self.claims.pool())
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
}
