//! Authorization's half of the ledger: placing a hold (what a capture must then match)
//! and voiding it, each idempotent by command id ([`baton_worker::idempotency`]).

use super::store::{data, i64_of, Ledger, LedgerError};
use crate::reply::{declined, Decline};
use baton_contract::{Money, Reply};
use baton_ops::exec::{Exec, Param, Row};
use baton_worker::idempotency::{self, now_ms, run_once, Effect, IdempotencyError};
use baton_worker::Answer;
use serde_json::json;
use std::sync::Arc;
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
    /// From the columns `status, customer_id, merchant_id, amount_minor, currency`.
    pub(super) fn of(row: &Row) -> Result<Self, sqlx::Error> {
        Ok(Self {
            status: row.text(0)?,
            customer_id: row.text(1)?,
            merchant_id: row.opt_text(2)?,
            amount_minor: row.int(3)?,
            currency: row.text(4)?,
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
        let hold = PlaceHold {
            command_id: command_id.to_owned(),
            payment_id,
            customer_id: customer_id.to_owned(),
            merchant_id: merchant_id.to_owned(),
            amount,
            decision,
            ledger_id: Arc::clone(&self.id),
            location: Arc::clone(&self.location),
        };
        Ok(run_once(&self.claims, command_id, "authorization", hold).await?)
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
        let void = VoidHold {
            command_id: command_id.to_owned(),
            execute_command_id: execute_command_id.to_owned(),
            payment_id,
        };
        Ok(run_once(&self.claims, command_id, "authorization", void).await?)
    }
}

/// [`Ledger::place_hold`]'s statements.
struct PlaceHold {
    command_id: String,
    payment_id: Uuid,
    customer_id: String,
    merchant_id: String,
    amount: Money,
    decision: Result<(), Decline>,
    ledger_id: Arc<str>,
    location: Arc<str>,
}

impl Effect for PlaceHold {
    async fn apply(self, db: &mut impl Exec) -> Result<Reply, IdempotencyError> {
        let command_id = &self.command_id;
        let amount_minor = match self
            .decision
            .and_then(|()| i64_of(self.amount.minor, "amount"))
        {
            Ok(minor) => minor,
            Err(decline) => return Ok(declined(command_id, decline)),
        };
        let hold_id = Uuid::new_v4().to_string();
        let payment_id = self.payment_id.to_string();
        db.execute(
            "INSERT INTO holds (hold_id, payment_id, customer_id, merchant_id, amount_minor,
                currency, status, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'held', $7)",
            &[
                Param::Text(&hold_id),
                Param::Text(&payment_id),
                Param::Text(&self.customer_id),
                Param::Text(&self.merchant_id),
                Param::Int(amount_minor),
                Param::Text(self.amount.currency.as_str()),
                Param::Int(now_ms()),
            ],
        )
        .await?;
        // The ledger's identity travels with the hold: the capture checks it is looking at
        // the same ledger before it looks for the hold.
        Ok(Reply::approved(
            command_id,
            data(json!({
                "hold_id": hold_id,
                baton_contract::LEDGER_ID: &*self.ledger_id,
                baton_contract::LEDGER_AT: &*self.location,
            })),
        ))
    }
}

/// [`Ledger::void_hold`]'s statements.
struct VoidHold {
    command_id: String,
    execute_command_id: String,
    payment_id: Uuid,
}

impl Effect for VoidHold {
    async fn apply(self, db: &mut impl Exec) -> Result<Reply, IdempotencyError> {
        let command_id = &self.command_id;
        let pre_empt = Reply::declined(
            &self.execute_command_id,
            "voided_before_authorization",
            "the authorization was compensated before it was processed",
        );
        // On PostgreSQL this waits for an execute still in flight to commit or roll back,
        // so the answer below never misses a hold being placed concurrently.
        if idempotency::record(db, "authorization", &pre_empt).await? {
            return Ok(Reply::approved(
                command_id,
                data(json!({ "voided": false })),
            ));
        }
        let payment_id = self.payment_id.to_string();
        let voided = db
            .execute(
                "UPDATE holds SET status = 'voided' WHERE payment_id = $1 AND status = 'held'",
                &[Param::Text(&payment_id)],
            )
            .await?;
        let captured = db
            .fetch_optional(
                "SELECT COUNT(*) FROM holds WHERE payment_id = $1 AND status = 'captured'",
                &[Param::Text(&payment_id)],
            )
            .await?
            .map(|row| row.int(0))
            .transpose()?
            .unwrap_or(0);
        Ok(if voided == 0 && captured > 0 {
            Reply::declined(
                command_id,
                "hold_captured",
                "the hold was already captured: the money has moved and cannot be voided",
            )
        } else {
            Reply::approved(command_id, data(json!({ "voided": voided > 0 })))
        })
    }
}
