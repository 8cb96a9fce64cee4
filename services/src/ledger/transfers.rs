//! Transaction's half of the ledger: capturing a hold — exactly what it authorized —
//! into one transfer with balanced double-entry lines, idempotent by command id.

use super::holds::{hold_mismatch, StoredHold};
use super::store::{data, i64_of, Ledger, LedgerError};
use crate::reply::{declined, Decline};
use baton_contract::{Currency, Money, Reply};
use baton_ops::exec::{Exec, Param};
use baton_worker::idempotency::{run_once, Effect, IdempotencyError};
use baton_worker::Answer;
use serde_json::json;
use uuid::Uuid;

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

/// The result of converting an amount for settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conversion {
    /// What the merchant receives.
    pub settlement: Money,
    /// Units of the settlement currency per unit of the amount's, in millionths.
    pub fx_rate_micro: u64,
}

/// One double-entry line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `customer:<id>`, `merchant:<id>` or `fx:<currency>`.
    pub account: String,
    /// Currency of the line.
    pub currency: Currency,
    /// Debit, minor units.
    pub debit_minor: u64,
    /// Credit, minor units.
    pub credit_minor: u64,
}

/// What a capture moves, decided by the transaction service's rules before the ledger
/// checks the hold: the conversion and the transfer's double-entry lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The amount in the merchant's currency, and the rate.
    pub conversion: Conversion,
    /// The transfer's lines, balanced per currency.
    pub entries: Vec<Entry>,
}

impl Ledger {
    /// Transaction, execute: if `settlement` (the rules' decision,
    /// [`crate::transaction::settle`]) is one, captures the hold — only if it is exactly
    /// what was authorized — records one transfer and its balanced double-entry lines,
    /// and replies with the settlement; otherwise stores the decline. Idempotent by
    /// `command_id`.
    pub async fn capture(
        &self,
        command_id: &str,
        capture: &Capture,
        settlement: Result<Settlement, Decline>,
    ) -> Result<Answer, LedgerError> {
        let effect = CaptureHold {
            command_id: command_id.to_owned(),
            capture: capture.clone(),
            settlement,
        };
        Ok(run_once(&self.claims, command_id, "transaction", effect).await?)
    }
}

/// [`Ledger::capture`]'s statements.
struct CaptureHold {
    command_id: String,
    capture: Capture,
    settlement: Result<Settlement, Decline>,
}

impl Effect for CaptureHold {
    async fn apply(self, db: &mut impl Exec) -> Result<Reply, IdempotencyError> {
        let CaptureHold {
            command_id,
            capture,
            settlement,
        } = self;
        let command_id = command_id.as_str();
        let Settlement {
            conversion,
            entries,
        } = match settlement {
            Ok(settlement) => settlement,
            Err(decline) => return Ok(declined(command_id, decline)),
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
            Err(decline) => return Ok(declined(command_id, decline)),
        };
        let payment_id = capture.payment_id.to_string();
        // Only a capture of exactly what was authorized — this customer, this merchant,
        // this amount — moves money; the status condition makes it race-safe against a
        // concurrent void or a second capture under another command id. A hold's other
        // columns never change, so the explanation read below is the one that applied.
        let captured = db
            .execute(
                "UPDATE holds SET status = 'captured'
                 WHERE hold_id = $1 AND payment_id = $2 AND status = 'held'
                   AND customer_id = $3 AND merchant_id = $4 AND amount_minor = $5
                   AND currency = $6",
                &[
                    Param::Text(&capture.hold_id),
                    Param::Text(&payment_id),
                    Param::Text(&capture.customer_id),
                    Param::Text(&capture.merchant_id),
                    Param::Int(amount_minor),
                    Param::Text(capture.amount.currency.as_str()),
                ],
            )
            .await?;
        if captured != 1 {
            let hold = db
                .fetch_optional(
                    "SELECT status, customer_id, merchant_id, amount_minor, currency
                     FROM holds WHERE hold_id = $1 AND payment_id = $2",
                    &[Param::Text(&capture.hold_id), Param::Text(&payment_id)],
                )
                .await?
                .map(|row| StoredHold::of(&row))
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
            return Ok(declined(command_id, decline));
        }
        let transfer_id = Uuid::new_v4().to_string();
        db.execute(
            "INSERT INTO transfers (transfer_id, payment_id, hold_id, customer_id, merchant_id,
                amount_minor, currency, settlement_minor, settlement_currency, fx_rate_micro)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                Param::Text(&transfer_id),
                Param::Text(&payment_id),
                Param::Text(&capture.hold_id),
                Param::Text(&capture.customer_id),
                Param::Text(&capture.merchant_id),
                Param::Int(amount_minor),
                Param::Text(capture.amount.currency.as_str()),
                Param::Int(settlement_minor),
                Param::Text(settlement.currency.as_str()),
                Param::Int(fx_rate_micro),
            ],
        )
        .await?;
        for entry in entries {
            // Each line fits: it is the amount or the settlement, both checked above.
            let debit = i64_of(entry.debit_minor, "debit").unwrap_or(i64::MAX);
            let credit = i64_of(entry.credit_minor, "credit").unwrap_or(i64::MAX);
            let entry_id = Uuid::new_v4().to_string();
            db.execute(
                "INSERT INTO ledger_entries
                    (entry_id, transfer_id, account, currency, debit_minor, credit_minor)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    Param::Text(&entry_id),
                    Param::Text(&transfer_id),
                    Param::Text(&entry.account),
                    Param::Text(entry.currency.as_str()),
                    Param::Int(debit),
                    Param::Int(credit),
                ],
            )
            .await?;
        }
        Ok(Reply::approved(
            command_id,
            data(json!({
                "transfer_id": transfer_id,
                "settlement": settlement,
                "fx_rate_micro": conversion.fx_rate_micro,
            })),
        ))
    }
}
