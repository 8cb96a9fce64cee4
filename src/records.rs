//! What the saga journal holds, as the saga, the workflow conditions and the tools see it —
//! records and the journal's errors, no SQL: the saga depends on these, not on the journal
//! (which implements the saga's `SagaLog` over them, `journal/saga_log.rs`).

use baton_contract::{
    Action, Currency, Money, PaymentRequest, PaymentResult, StepOutcome, StepRecord,
};
use baton_ops::sql::SqlError;
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
    /// When it was recorded, RFC 3339 UTC; [`Journal::record`](crate::journal::Journal::record) sets it if empty.
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
    /// How many times the payment was parked (see [`Journal::park`](crate::journal::Journal::park)).
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

/// What [`Journal::prune`](crate::journal::Journal::prune) deleted.
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

/// The spelling of a step outcome in saga events and results (`approved`,
/// `compensation_failed`…).
pub fn outcome_name(outcome: StepOutcome) -> &'static str {
    match outcome {
        StepOutcome::Approved => "approved",
        StepOutcome::Declined => "declined",
        StepOutcome::Failed => "failed",
        StepOutcome::Compensated => "compensated",
        StepOutcome::CompensationFailed => "compensation_failed",
        StepOutcome::Skipped => "skipped",
    }
}

/// The action a journal spelling names; `None` for anything else.
pub(crate) fn action_of(name: &str) -> Option<Action> {
    match name {
        "execute" => Some(Action::Execute),
        "compensate" => Some(Action::Compensate),
        _ => None,
    }
}

/// The record of a saga just created.
pub(crate) fn fresh(payment_id: Uuid, summary: &PaymentSummary, now: &str) -> SagaRecord {
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

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The URL names no supported backend.
    #[error(
        "journal URL {url} is not supported (scheme {scheme}): use sqlite://<path> or postgres://…"
    )]
    UnsupportedUrl {
        /// The URL, password removed.
        url: String,
        /// The URL's scheme, quoted, or `missing`.
        scheme: String,
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
