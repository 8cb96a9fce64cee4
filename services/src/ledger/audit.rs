//! What an auditor checks (`baton-transaction audit`): no payment paid twice, books
//! balanced per currency, every transfer what its hold authorized, no hold left open too
//! long. Reads only.

use super::holds::StoredHold;
use super::store::{u64_of, Ledger, LedgerError};
use baton_worker::idempotency::now_ms;
use sqlx::Row;
use std::time::Duration;

/// How long a hold may stay open before the audit reports it (and fails): a payment in
/// flight holds for seconds; an hour means the orchestrator neither captured nor voided it.
pub const DEFAULT_MAX_HOLD_AGE: Duration = Duration::from_secs(3600);

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

impl Ledger {
    /// The audit with the default maximum hold age ([`DEFAULT_MAX_HOLD_AGE`]).
    pub async fn audit(&self) -> Result<Audit, LedgerError> {
        self.audit_with(DEFAULT_MAX_HOLD_AGE).await
    }

    /// The audit: transfers, duplicates, per-currency totals, balance, open holds,
    /// transfers that differ from their hold, and holds open longer than `max_hold_age`.
    pub async fn audit_with(&self, max_hold_age: Duration) -> Result<Audit, LedgerError> {
        let transfers: i64 = sqlx::query("SELECT COUNT(*) FROM transfers")
            .fetch_one(self.claims.pool())
            .await?
            .try_get(0)?;
        let duplicate_transfers = sqlx::query(
            "SELECT payment_id, COUNT(*) FROM transfers GROUP BY payment_id
             HAVING COUNT(*) > 1 ORDER BY payment_id",
        )
        .fetch_all(self.claims.pool())
        .await?
        .into_iter()
        .map(|row| Ok((row.try_get::<String, _>(0)?, u64_of(row.try_get(1)?))))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        // SUM of BIGINT is NUMERIC on PostgreSQL, which `Any` cannot decode: cast back.
        let totals = sqlx::query(
            "SELECT currency, CAST(SUM(debit_minor) AS BIGINT), CAST(SUM(credit_minor) AS BIGINT)
             FROM ledger_entries GROUP BY currency ORDER BY currency",
        )
        .fetch_all(self.claims.pool())
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
            .fetch_one(self.claims.pool())
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
        .fetch_all(self.claims.pool())
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
        .fetch_all(self.claims.pool())
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
}
