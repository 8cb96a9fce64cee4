//! What the journal holds, as the saga and the tools see it: no SQL here.

use baton_contract::{Action, Currency, Money, PaymentRequest, PaymentResult, StepRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

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
    /// When it was recorded, RFC 3339 UTC; [`Journal::record`](super::Journal::record) sets it if empty.
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
    /// How many times the payment was parked (see [`Journal::park`](super::Journal::park)).
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

/// What [`Journal::prune`](super::Journal::prune) deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished sagas deleted.
    pub sagas: u64,
    /// Their entries.
    pub entries: u64,
}

/// The journal's spelling of an action (`execute`, `compensate`).
pub fn action_name(action: Action) -> &'static str {
    match action {
        Action::Execute => "execute",
        Action::Compensate => "compensate",
        // Never journaled: sagas do not ping.
        Action::Ping => "ping",
    }
}

/// The action a journal spelling names; `None` for anything else.
pub(super) fn action_of(name: &str) -> Option<Action> {
    match name {
        "execute" => Some(Action::Execute),
        "compensate" => Some(Action::Compensate),
        _ => None,
    }
}

/// The record of a saga just created.
pub(super) fn fresh(payment_id: Uuid, summary: &PaymentSummary, now: &str) -> SagaRecord {
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
