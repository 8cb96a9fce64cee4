//! Commands to services, their replies, and the final payment result.

use crate::card_key::CardKeys;
use crate::request::{CardNumber, Currency, Money, PaymentRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// What a command asks a service to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Run the step.
    Execute,
    /// Undo the step's effect (void a hold). Idempotent, like execute.
    Compensate,
    /// A liveness probe from `baton doctor`: answer `approved` at once with the
    /// service's identity ([`Ping`]), touching no store. Carries no payment.
    Ping,
}

/// The `data` key under which a step that keeps state says *which* store it wrote to (a
/// ledger's random id, fixed when the database was created). A later step sharing that
/// store compares it with its own: a mismatch is a wiring fault (`ledger_mismatch`),
/// never a business decline. Services also report it in their ping reply.
pub const LEDGER_ID: &str = "ledger_id";

/// The `data` key beside [`LEDGER_ID`]: where that store is (an absolute file path or a
/// URL without its password), so a mismatch can name both stores.
pub const LEDGER_AT: &str = "ledger";

/// The reason of an `error` reply from a step whose store is not the one an earlier step
/// wrote to (see [`LEDGER_ID`]).
pub const LEDGER_MISMATCH: &str = "ledger_mismatch";

/// A ping command: `{"command_id": "…", "action": "ping"}` on a service's queue, with
/// `reply_to` and `correlation_id` like any command. It has no payment, so it does not
/// decode as a [`Command`]; a service answers it with an `approved` [`Reply`] whose
/// `data` holds `service` (its name), `version`, and for a service with a store its
/// [`LEDGER_ID`] and [`LEDGER_AT`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Unique per ping (`ping:<uuid>`); echoed in the reply.
    pub command_id: String,
    /// Always [`Action::Ping`].
    pub action: Action,
}

impl Ping {
    /// A ping with a fresh command id.
    pub fn new() -> Self {
        Self {
            command_id: format!("ping:{}", Uuid::new_v4()),
            action: Action::Ping,
        }
    }

    /// Decodes a ping; `None` for anything else (a command, garbage).
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Ping>(body)
            .ok()
            .filter(|p| p.action == Action::Ping)
    }
}

impl Default for Ping {
    fn default() -> Self {
        Self::new()
    }
}

/// How much of the card a step receives: the workflow's `card = "…"` of the step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardExposure {
    /// The full number (and last four, expiry): only a step that must charge the card,
    /// such as authorization.
    Number,
    /// A keyed fingerprint (and last four, expiry): a step that must recognise a card
    /// without knowing it, such as risk.
    Fingerprint,
    /// The last four digits and the expiry only (the default).
    #[default]
    Last4,
}

impl CardExposure {
    /// The workflow spelling: `number`, `fingerprint` or `last4`.
    pub fn as_str(self) -> &'static str {
        match self {
            CardExposure::Number => "number",
            CardExposure::Fingerprint => "fingerprint",
            CardExposure::Last4 => "last4",
        }
    }

    /// Parses the workflow spelling.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Number, Self::Fingerprint, Self::Last4]
            .into_iter()
            .find(|e| e.as_str() == text)
    }
}

/// The card as a step sees it: the full number only for steps with `card = "number"`, a
/// fingerprint only for steps with `card = "fingerprint"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardView {
    /// Full number, for steps with `card = "number"` in the workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<CardNumber>,
    /// `<key_id>:<hex HMAC-SHA256 of the digits>` ([`crate::card_key`]), for steps with
    /// `card = "fingerprint"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Last four digits, for every step.
    pub last4: String,
    /// `MM/YY`.
    pub expiry: String,
}

/// The payment as a step sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentView {
    /// Who is paid.
    pub merchant_id: String,
    /// Who pays.
    pub customer_id: String,
    /// What the customer pays.
    pub amount: Money,
    /// Currency the merchant settles in (always filled in).
    pub merchant_currency: Currency,
    /// The card.
    pub card: CardView,
}

impl PaymentView {
    /// The view of `request` for a step with `exposure`. A fingerprint needs `keys`
    /// (the orchestrator refuses to start a workflow asking for one without them);
    /// without keys the view carries none.
    pub fn of(request: &PaymentRequest, exposure: CardExposure, keys: Option<&CardKeys>) -> Self {
        let number = request.card.number.reveal();
        Self {
            merchant_id: request.merchant_id.clone(),
            customer_id: request.customer_id.clone(),
            amount: request.amount,
            merchant_currency: request.settlement_currency(),
            card: CardView {
                number: (exposure == CardExposure::Number).then(|| request.card.number.clone()),
                fingerprint: match (exposure, keys) {
                    (CardExposure::Fingerprint, Some(keys)) => Some(keys.fingerprint(number)),
                    _ => None,
                },
                last4: request.card.number.last4().to_owned(),
                expiry: request.card.expiry.clone(),
            },
        }
    }
}

/// A command from the orchestrator to one service's queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// `<payment_id>:<step>`, or `<payment_id>:<step>:compensate`: the same for every
    /// attempt, so a service that already acted answers from its store.
    pub command_id: String,
    /// The payment this command belongs to.
    pub payment_id: Uuid,
    /// Step name from the workflow.
    pub step: String,
    /// Execute or compensate.
    pub action: Action,
    /// The payment.
    pub payment: PaymentView,
    /// The `data` of every earlier step's approved reply, keyed by step name (e.g.
    /// `context.authorization.hold_id`).
    #[serde(default)]
    pub context: Map<String, Value>,
}

impl Command {
    /// The deterministic command id of a step's action.
    pub fn id_for(payment_id: Uuid, step: &str, action: Action) -> String {
        match action {
            Action::Execute => format!("{payment_id}:{step}"),
            Action::Compensate => format!("{payment_id}:{step}:compensate"),
            Action::Ping => format!("{payment_id}:{step}:ping"),
        }
    }
}

/// A service's answer to a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyOutcome {
    /// The step succeeded (for a compensation: the effect is undone).
    Approved,
    /// A business answer: final, never retried.
    Declined,
    /// Something transient went wrong; worth retrying.
    Error,
}

/// A service's reply, sent to the command's `reply_to` with its `correlation_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The command answered.
    pub command_id: String,
    /// Approved, declined or error.
    pub outcome: ReplyOutcome,
    /// Machine-readable reason code for declines and errors (`card_declined`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Step output for later steps and the result (`hold_id`, `settlement`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub data: Map<String, Value>,
}

impl Reply {
    /// An approval carrying `data`.
    pub fn approved(command_id: impl Into<String>, data: Map<String, Value>) -> Self {
        Self {
            command_id: command_id.into(),
            outcome: ReplyOutcome::Approved,
            reason: None,
            detail: None,
            data,
        }
    }

    /// A decline with a reason code and detail.
    pub fn declined(
        command_id: impl Into<String>,
        reason: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            command_id: command_id.into(),
            outcome: ReplyOutcome::Declined,
            reason: Some(reason.into()),
            detail: Some(detail.into()),
            data: Map::new(),
        }
    }

    /// A transient error.
    pub fn error(
        command_id: impl Into<String>,
        reason: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            command_id: command_id.into(),
            outcome: ReplyOutcome::Error,
            reason: Some(reason.into()),
            detail: Some(detail.into()),
            data: Map::new(),
        }
    }
}

/// Final status of a payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every step approved; funds moved.
    Completed,
    /// A step gave a business decline; earlier effects compensated.
    Declined,
    /// A step could not be completed (timeout, service error); earlier effects compensated.
    Failed,
    /// The request itself was invalid; no step ran.
    Rejected,
}

impl Status {
    /// The status as in JSON and routing keys.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Declined => "declined",
            Status::Failed => "failed",
            Status::Rejected => "rejected",
        }
    }
}

/// How one step (or its compensation) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// The service approved.
    Approved,
    /// The service declined (a business answer).
    Declined,
    /// No usable answer: timeout or service error.
    Failed,
    /// The step's effect was undone.
    Compensated,
    /// Undoing the step's effect failed; an operator must look.
    CompensationFailed,
    /// The step's condition (`when`) was false for this payment: no command was sent,
    /// and there is nothing to compensate.
    Skipped,
}

/// One line of a result's `steps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step name (for a compensation, the step it undoes).
    pub step: String,
    /// How it ended.
    pub outcome: StepOutcome,
    /// Commands sent for it.
    pub attempts: u32,
    /// Time from first command to final answer.
    pub duration_ms: u64,
    /// Reason code of a decline or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The decision was a declared degraded fallback, not the service's answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
    /// The service that answered, when it was a fallback rather than the step's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl StepRecord {
    /// A record with no reason, not degraded, answered by the step's own service.
    pub fn new(
        step: impl Into<String>,
        outcome: StepOutcome,
        attempts: u32,
        duration_ms: u64,
    ) -> Self {
        Self {
            step: step.into(),
            outcome,
            attempts,
            duration_ms,
            reason: None,
            degraded: false,
            via: None,
        }
    }
}

/// The one final answer for a payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentResult {
    /// The request's payment id.
    pub payment_id: Uuid,
    /// Final status.
    pub status: Status,
    /// Reason code (`card_declined`, `invalid_request`, `step_timeout`), null on success.
    pub reason: Option<String>,
    /// Human-readable detail, null on success.
    pub detail: Option<String>,
    /// Every step and compensation, in the order they ran.
    pub steps: Vec<StepRecord>,
    /// What the merchant receives, when funds moved.
    pub settlement: Option<Money>,
    /// When the orchestrator decided, RFC 3339 UTC.
    pub finished_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Limits;

    #[test]
    fn command_ids_are_deterministic() {
        let id = Uuid::nil();
        assert_eq!(
            Command::id_for(id, "authorization", Action::Execute),
            "00000000-0000-0000-0000-000000000000:authorization"
        );
        assert_eq!(
            Command::id_for(id, "authorization", Action::Compensate),
            "00000000-0000-0000-0000-000000000000:authorization:compensate"
        );
    }

    #[test]
    fn only_trusted_steps_see_the_card_number() {
        let body = br#"{"payment_id":"6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10","merchant_id":"m",
            "customer_id":"c","amount":{"minor":1,"currency":"EUR"},
            "card":{"number":"4242424242424242","expiry":"12/30"}}"#;
        let request = PaymentRequest::parse(body, &Limits::default()).unwrap();
        let keys = CardKeys::generate("k1");
        let view = |exposure| {
            serde_json::to_value(PaymentView::of(&request, exposure, Some(&keys))).unwrap()
        };
        let last4 = view(CardExposure::Last4);
        assert_eq!(
            last4["card"],
            serde_json::json!({"last4": "4242", "expiry": "12/30"})
        );
        let fingerprint = view(CardExposure::Fingerprint);
        assert!(!fingerprint.to_string().contains("4242424242424242"));
        assert_eq!(
            fingerprint["card"]["fingerprint"],
            keys.fingerprint("4242424242424242").as_str()
        );
        assert_eq!(fingerprint["card"]["last4"], "4242");
        let full = view(CardExposure::Number);
        assert_eq!(full["card"]["number"], "4242424242424242");
        assert!(full["card"].get("fingerprint").is_none());
        // Without keys a fingerprint view carries none (the orchestrator refuses to
        // start such a workflow).
        let keyless = PaymentView::of(&request, CardExposure::Fingerprint, None);
        assert_eq!(keyless.card.fingerprint, None);
        for e in [
            CardExposure::Number,
            CardExposure::Fingerprint,
            CardExposure::Last4,
        ] {
            assert_eq!(CardExposure::parse(e.as_str()), Some(e));
        }
        assert_eq!(CardExposure::parse("full"), None);
    }

    #[test]
    fn pings_decode_only_as_pings() {
        let ping = Ping::new();
        let body = serde_json::to_vec(&ping).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap()["action"],
            "ping"
        );
        assert_eq!(Ping::parse(&body), Some(ping));
        assert!(serde_json::from_slice::<Command>(&body).is_err());
        assert_eq!(
            Ping::parse(br#"{"command_id":"x","action":"execute"}"#),
            None
        );
        assert_eq!(Ping::parse(b"garbage"), None);
    }

    #[test]
    fn results_serialise_to_the_documented_shape() {
        let result = PaymentResult {
            payment_id: Uuid::nil(),
            status: Status::Declined,
            reason: Some("high_risk".into()),
            detail: Some("risk declined".into()),
            steps: vec![StepRecord::new(
                "authorization",
                StepOutcome::Compensated,
                1,
                3,
            )],
            settlement: None,
            finished_at: "2026-11-26T04:00:00.000Z".into(),
        };
        let json: Value = serde_json::to_value(&result).unwrap();
        assert_eq!(json["status"], "declined");
        assert_eq!(json["steps"][0]["outcome"], "compensated");
        assert_eq!(json["settlement"], Value::Null);
        let back: PaymentResult = serde_json::from_value(json).unwrap();
        assert_eq!(back, result);
    }
}
