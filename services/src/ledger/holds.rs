//! Authorization's half of the ledger: placing a hold (what a capture must then match)
//! and voiding it, each idempotent by command id ([`baton_worker::idempotency`]).

use super::store::{data, finish, i64_of, Ledger, LedgerError};
use crate::reply::{declined, Decline};
use baton_contract::{Money, Reply};
use baton_worker::idempotency::{self, now_ms, try_begin, Begin};
use baton_worker::Answer;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

/// The columns of a hold a capture must match, as stored.
pub(super) struct StoredHold {
    /// `held`, `captured` or `voided`.
    pub(super) status: String,
    pub(super) customer_id: String,
    /// NULL in holds placed before merchants were recorded.
    pub(super) merchant_id: Option<String>,
    pub(super) amount_minor: i64,
    pub(super) currency: String,
}

impl StoredHold {
    pub(super) fn of(row: &AnyRow) -> Result<Self, sqlx::Error> {
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
    pub(super) fn differences(
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
pub(super) fn hold_mismatch(fields: &[&str]) -> Decline {
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

impl Ledger {
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
    ) -> Result<Answer, LedgerError> {
        let mut tx = match try_begin(&self.claims, command_id, "authorization").await? {
            Begin::Done(answer) => return Ok(answer),
            Begin::Start(tx) => tx,
        };
        let amount_minor = match decision.and_then(|()| i64_of(amount.minor, "amount")) {
            Ok(minor) => minor,
            Err(decline) => return finish(tx, declined(command_id, decline)).await,
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
        finish(tx, reply).await
    }

    /// Authorization, compensate: voids the payment's hold. If the execute command
    /// (`execute_command_id`) was never processed, stores a decline under its id first,
    /// so a late execute can never place a hold afterwards. Idempotent by `command_id`.
    pub async fn void_hold(
        &self,
        command_id: &str,
        execute_command_id: &str,
        payment_id: Uuid,
    ) -> Result<Answer, LedgerError> {
        let mut tx = match try_begin(&self.claims, command_id, "authorization").await? {
            Begin::Done(answer) => return Ok(answer),
            Begin::Start(tx) => tx,
        };
        let pre_empt = Reply::declined(
            execute_command_id,
            "voided_before_authorization",
            "the authorization was compensated before it was processed",
        );
        // On PostgreSQL this waits for an execute still in flight to commit or roll back,
        // so the answer below never misses a hold being placed concurrently.
        let pre_empted = idempotency::record(&mut tx, "authorization", &pre_empt).await?;
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
        finish(tx, reply).await
    }
}
