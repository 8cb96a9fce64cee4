//! What each service does with one decoded command: apply its rules (and, for
//! authorization and transaction, its ledger) and produce the reply. No AMQP here, so
//! handlers are tested without a broker.

use crate::kit::ServiceKind;
use crate::ledger::{Answer, Capture, Ledger, LedgerError};
use crate::rules::{self, Decline, RiskRules, YearMonth};
use baton_contract::{Action, CardKeys, Command, Reply, LEDGER_AT, LEDGER_ID, LEDGER_MISMATCH};
use serde_json::{Map, Value};

/// A service's command handler, with the store it needs.
#[derive(Clone, Debug)]
pub enum Handler {
    /// Places and voids holds in the ledger.
    Authorization(Ledger),
    /// Pure risk rules, on card fingerprints (never card numbers).
    Risk(RiskRules),
    /// Pure PCI compliance rules.
    Pci,
    /// Captures holds and records transfers in the ledger.
    Transaction(Ledger),
}

fn decided(command: &Command, decision: Result<(), Decline>) -> Reply {
    match decision {
        Ok(()) => Reply::approved(&command.command_id, Map::new()),
        Err(d) => Reply::declined(&command.command_id, d.reason, d.detail),
    }
}

/// The hold id authorization gave: `context.authorization.hold_id`, or else the
/// `hold_id` of any earlier step (a workflow may name the authorization step otherwise).
fn hold_id(context: &Map<String, Value>) -> Option<String> {
    let of = |step: &Value| step.get("hold_id")?.as_str().map(str::to_owned);
    context
        .get("authorization")
        .and_then(of)
        .or_else(|| context.values().find_map(of))
}

/// The `error` reply to a command whose context shows an earlier step wrote to another
/// ledger than `ledger`: a wiring fault the orchestrator retries, parks and finally fails
/// `service_unavailable` (voiding the hold), never a decline. `None` when every earlier
/// step that names a ledger names this one (or none does: an older authorization).
fn ledger_mismatch(command: &Command, ledger: &Ledger, service: &str) -> Option<Reply> {
    let (step, data) = command.context.iter().find_map(|(step, data)| {
        let id = data.get(LEDGER_ID)?.as_str()?;
        (id != ledger.id()).then_some((step, data))
    })?;
    let theirs = data.get(LEDGER_ID).and_then(Value::as_str).unwrap_or("?");
    let at = data
        .get(LEDGER_AT)
        .and_then(Value::as_str)
        .unwrap_or("an unnamed database");
    Some(Reply::error(
        &command.command_id,
        LEDGER_MISMATCH,
        format!(
            "step {step} wrote to ledger {theirs} at {at}, but this {service} service uses \
             ledger {} at {}: give both services the same --ledger-url (BATON_LEDGER_URL, \
             one shared database) and restart them; nothing was moved",
            ledger.id(),
            ledger.location()
        ),
    ))
}

impl Handler {
    /// The handler of `kind`; `ledger` is required for authorization and transaction,
    /// `card_keys` for risk (it knows its high-risk cards only by their fingerprints).
    pub fn new(
        kind: ServiceKind,
        ledger: Option<Ledger>,
        card_keys: Option<CardKeys>,
    ) -> Result<Self, String> {
        let no_ledger = || format!("the {kind} service needs a ledger");
        Ok(match kind {
            ServiceKind::Authorization => Handler::Authorization(ledger.ok_or_else(no_ledger)?),
            ServiceKind::Risk => Handler::Risk(RiskRules::new(card_keys.ok_or_else(|| {
                "the risk service needs the card key to recognise card fingerprints: pass \
                 --card-key-file FILE (BATON_CARD_KEY_FILE), the file the orchestrator \
                 fingerprints with"
                    .to_owned()
            })?)),
            ServiceKind::Pci => Handler::Pci,
            ServiceKind::Transaction => Handler::Transaction(ledger.ok_or_else(no_ledger)?),
        })
    }

    /// Handles one command. Never fails: a store error becomes a transient `error`
    /// reply (nothing was stored, so the orchestrator's retry may act).
    pub async fn handle(&self, command: &Command) -> Reply {
        self.answer(command).await.reply
    }

    /// [`Handler::handle`], also saying whether the reply was replayed from the store
    /// (a repeated command: nothing was done now).
    pub async fn answer(&self, command: &Command) -> Answer {
        if let (Handler::Authorization(ledger) | Handler::Transaction(ledger), Action::Execute) =
            (self, command.action)
        {
            if let Some(reply) = ledger_mismatch(command, ledger, self.name()) {
                return Answer::fresh(reply);
            }
        }
        let stored = match (self, command.action) {
            (_, Action::Ping) => return Answer::fresh(self.ping(&command.command_id)),
            (Handler::Risk(rules), Action::Execute) => {
                let card = &command.payment.card;
                return Answer::fresh(match rules.assess(&command.step, card) {
                    // The score, for later steps' conditions (`steps.risk.score > 70`).
                    Ok(()) => {
                        let mut data = Map::new();
                        data.insert("score".into(), rules.score(card).into());
                        Reply::approved(&command.command_id, data)
                    }
                    Err(d) => Reply::declined(&command.command_id, d.reason, d.detail),
                });
            }
            (Handler::Pci, Action::Execute) => {
                return Answer::fresh(decided(
                    command,
                    rules::check_pci(&command.payment.merchant_id),
                ))
            }
            // Risk and PCI have no effect to undo.
            (Handler::Risk(_) | Handler::Pci, Action::Compensate) => {
                return Answer::fresh(Reply::approved(&command.command_id, Map::new()))
            }
            (Handler::Authorization(ledger), Action::Execute) => {
                let decision =
                    rules::authorize(&command.step, &command.payment.card, YearMonth::now_utc());
                ledger
                    .place_hold_answer(
                        &command.command_id,
                        command.payment_id,
                        &command.payment.customer_id,
                        &command.payment.merchant_id,
                        command.payment.amount,
                        decision,
                    )
                    .await
            }
            (Handler::Authorization(ledger), Action::Compensate) => {
                let execute_id =
                    Command::id_for(command.payment_id, &command.step, Action::Execute);
                ledger
                    .void_hold_answer(&command.command_id, &execute_id, command.payment_id)
                    .await
            }
            (Handler::Transaction(ledger), Action::Execute) => {
                let Some(hold_id) = hold_id(&command.context) else {
                    return Answer::fresh(Reply::declined(
                        &command.command_id,
                        "hold_missing",
                        "the command's context has no authorization.hold_id: the \
                         authorization step must run (and approve) before transaction",
                    ));
                };
                let capture = Capture {
                    payment_id: command.payment_id,
                    hold_id,
                    customer_id: command.payment.customer_id.clone(),
                    merchant_id: command.payment.merchant_id.clone(),
                    amount: command.payment.amount,
                    settlement_currency: command.payment.merchant_currency,
                };
                ledger.capture_answer(&command.command_id, &capture).await
            }
            (Handler::Transaction(_), Action::Compensate) => {
                return Answer::fresh(Reply::declined(
                    &command.command_id,
                    "not_compensable",
                    "a transfer cannot be compensated: refund it instead",
                ))
            }
        };
        stored.unwrap_or_else(|e: LedgerError| {
            tracing::warn!(error = %e, command_id = %command.command_id, "ledger unavailable");
            Answer::fresh(Reply::error(
                &command.command_id,
                "ledger_unavailable",
                e.to_string(),
            ))
        })
    }

    /// The answer to a ping: `approved`, with the service's name and version and, for a
    /// service with a ledger, the ledger's id and location. Touches no store: the id was
    /// read when the ledger was opened.
    pub fn ping(&self, command_id: &str) -> Reply {
        let mut data = Map::new();
        data.insert("service".into(), self.name().into());
        data.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        if let Some(ledger) = self.ledger() {
            data.insert(LEDGER_ID.into(), ledger.id().into());
            data.insert(LEDGER_AT.into(), ledger.location().into());
        }
        Reply::approved(command_id, data)
    }

    /// The service's name (`authorization`, `risk`, `pci`, `transaction`).
    pub fn name(&self) -> &'static str {
        match self {
            Handler::Authorization(_) => "authorization",
            Handler::Risk(_) => "risk",
            Handler::Pci => "pci",
            Handler::Transaction(_) => "transaction",
        }
    }

    /// The ledger this handler writes to, if any.
    pub fn ledger(&self) -> Option<&Ledger> {
        match self {
            Handler::Authorization(ledger) | Handler::Transaction(ledger) => Some(ledger),
            Handler::Risk(_) | Handler::Pci => None,
        }
    }

    /// Closes the handler's store, if any.
    pub async fn close(&self) {
        if let Handler::Authorization(ledger) | Handler::Transaction(ledger) = self {
            ledger.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::sqlite_ledger;
    use baton_contract::{CardNumber, CardView, Currency, Money, PaymentView, ReplyOutcome};
    use serde_json::json;
    use uuid::Uuid;

    /// One key for every handler test: commands carry its fingerprints.
    fn test_keys() -> CardKeys {
        static KEYS: std::sync::OnceLock<CardKeys> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| CardKeys::generate("t1")).clone()
    }

    fn command(payment_id: Uuid, step: &str, action: Action, number: Option<&str>) -> Command {
        Command {
            command_id: Command::id_for(payment_id, step, action),
            payment_id,
            step: step.into(),
            action,
            payment: PaymentView {
                merchant_id: "m-1001".into(),
                customer_id: "c-42".into(),
                amount: Money {
                    minor: 1999,
                    currency: Currency::parse("EUR").unwrap(),
                },
                merchant_currency: Currency::parse("USD").unwrap(),
                card: CardView {
                    number: number.map(CardNumber::new),
                    fingerprint: number.map(|n| test_keys().fingerprint(n)),
                    last4: "4242".into(),
                    expiry: "12/99".into(),
                },
            },
            context: Map::new(),
        }
    }

    #[tokio::test]
    async fn a_payment_runs_through_every_service() {
        let db = sqlite_ledger().await;
        let authorization =
            Handler::new(ServiceKind::Authorization, Some(db.ledger.clone()), None).unwrap();
        let transaction =
            Handler::new(ServiceKind::Transaction, Some(db.ledger.clone()), None).unwrap();
        let payment_id = Uuid::new_v4();
        let card = Some("4242424242424242");

        let auth = authorization
            .handle(&command(payment_id, "authorization", Action::Execute, card))
            .await;
        assert_eq!(auth.outcome, ReplyOutcome::Approved, "{auth:?}");
        for kind in [ServiceKind::Risk, ServiceKind::Pci] {
            let reply = Handler::new(kind, None, Some(test_keys()))
                .unwrap()
                .handle(&command(payment_id, kind.name(), Action::Execute, card))
                .await;
            assert_eq!(reply.outcome, ReplyOutcome::Approved, "{kind}: {reply:?}");
        }
        let mut capture = command(payment_id, "transaction", Action::Execute, None);
        capture
            .context
            .insert("authorization".into(), Value::Object(auth.data.clone()));
        let reply = transaction.handle(&capture).await;
        assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
        assert_eq!(
            reply.data["settlement"],
            json!({"minor": 2150, "currency": "USD"})
        );
        assert_eq!(
            transaction.handle(&capture).await,
            reply,
            "a repeat is answered from the store"
        );
        assert_eq!(db.ledger.transfers_for(payment_id).await.unwrap(), 1);

        let undo = transaction
            .handle(&command(
                payment_id,
                "transaction",
                Action::Compensate,
                None,
            ))
            .await;
        assert_eq!(undo.reason.as_deref(), Some("not_compensable"));
        db.ledger.close().await;
    }

    #[tokio::test]
    async fn declines_and_misconfigurations_are_explained() {
        let db = sqlite_ledger().await;
        let authorization = Handler::Authorization(db.ledger.clone());
        let cases = [
            (Some(crate::rules::CARD_DECLINED), "card_declined"),
            (
                Some(crate::rules::CARD_INSUFFICIENT_FUNDS),
                "insufficient_funds",
            ),
            (Some("4242424242424241"), "invalid_card"),
            (None, "card_number_missing"),
        ];
        for (number, reason) in cases {
            let payment_id = Uuid::new_v4();
            let reply = authorization
                .handle(&command(
                    payment_id,
                    "authorization",
                    Action::Execute,
                    number,
                ))
                .await;
            assert_eq!(reply.reason.as_deref(), Some(reason));
            assert_eq!(db.ledger.holds_for(payment_id).await.unwrap(), 0);
        }
        let risk = Handler::Risk(RiskRules::new(test_keys()))
            .handle(&command(
                Uuid::new_v4(),
                "risk",
                Action::Execute,
                Some(crate::rules::CARD_HIGH_RISK),
            ))
            .await;
        assert_eq!(risk.reason.as_deref(), Some("high_risk"));
        let mut pci = command(Uuid::new_v4(), "pci", Action::Execute, None);
        pci.payment.merchant_id = "noncompliant-1".into();
        assert_eq!(
            Handler::Pci.handle(&pci).await.reason.as_deref(),
            Some("merchant_not_compliant")
        );
        let no_hold = Handler::Transaction(db.ledger.clone())
            .handle(&command(
                Uuid::new_v4(),
                "transaction",
                Action::Execute,
                None,
            ))
            .await;
        assert_eq!(no_hold.reason.as_deref(), Some("hold_missing"));
        db.ledger.close().await;
    }

    #[tokio::test]
    async fn a_capture_against_another_ledger_is_an_error_not_a_decline() {
        let (one, other) = (sqlite_ledger().await, sqlite_ledger().await);
        assert_ne!(one.ledger.id(), other.ledger.id());
        let payment_id = Uuid::new_v4();
        let auth = Handler::Authorization(one.ledger.clone())
            .handle(&command(
                payment_id,
                "authorization",
                Action::Execute,
                Some("4242424242424242"),
            ))
            .await;
        assert_eq!(auth.data[LEDGER_ID], one.ledger.id());
        assert_eq!(auth.data[LEDGER_AT], one.ledger.location());
        let mut capture = command(payment_id, "transaction", Action::Execute, None);
        capture
            .context
            .insert("authorization".into(), Value::Object(auth.data.clone()));
        let transaction = Handler::Transaction(other.ledger.clone());
        let reply = transaction.handle(&capture).await;
        assert_eq!(reply.outcome, ReplyOutcome::Error, "{reply:?}");
        assert_eq!(reply.reason.as_deref(), Some(LEDGER_MISMATCH));
        let detail = reply.detail.unwrap();
        for part in [
            one.ledger.id(),
            one.ledger.location(),
            other.ledger.id(),
            other.ledger.location(),
            "--ledger-url",
        ] {
            assert!(detail.contains(part), "{part} missing in {detail}");
        }
        // Nothing stored: once rewired, the same command id captures.
        let rewired = Handler::Transaction(one.ledger.clone())
            .handle(&capture)
            .await;
        assert_eq!(rewired.outcome, ReplyOutcome::Approved, "{rewired:?}");
        // Pings report the ledger without touching it.
        let ping = transaction.ping("ping:1");
        assert_eq!(ping.data[LEDGER_ID], other.ledger.id());
        assert_eq!(ping.data["service"], "transaction");
        other.ledger.close().await;
        assert_eq!(transaction.ping("ping:2").outcome, ReplyOutcome::Approved);
        one.ledger.close().await;
    }

    #[tokio::test]
    async fn a_closed_ledger_gives_a_transient_error_and_stores_nothing() {
        let db = sqlite_ledger().await;
        db.ledger.close().await;
        let reply = Handler::Authorization(db.ledger.clone())
            .handle(&command(
                Uuid::new_v4(),
                "authorization",
                Action::Execute,
                Some("4242424242424242"),
            ))
            .await;
        assert_eq!(reply.outcome, ReplyOutcome::Error, "{reply:?}");
        assert_eq!(reply.reason.as_deref(), Some("ledger_unavailable"));
    }
}
