//! The four services' handlers together, on a SQLite ledger: a payment through every
//! service, declines, a ledger mismatch, a closed ledger. No broker.

use crate::authorization::{self, Authorization};
use crate::ledger::tests::sqlite_ledger;
use crate::pci::Pci;
use crate::risk::{self, Risk};
use crate::transaction::Transaction;
use baton_contract::{Action, CardKeys, Command, LEDGER_AT, LEDGER_ID, LEDGER_MISMATCH};
use baton_contract::{CardNumber, CardView, Currency, Money, PaymentView, ReplyOutcome};
use baton_worker::Handler;
use serde_json::json;
use serde_json::{Map, Value};
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
    let authorization = Authorization::new(db.ledger.clone());
    let transaction = Transaction::new(db.ledger.clone());
    let payment_id = Uuid::new_v4();
    let card = Some("4242424242424242");

    let auth = authorization
        .answer(&command(payment_id, "authorization", Action::Execute, card))
        .await
        .reply;
    assert_eq!(auth.outcome, ReplyOutcome::Approved, "{auth:?}");
    let risk = Risk::new(test_keys())
        .answer(&command(payment_id, "risk", Action::Execute, card))
        .await
        .reply;
    assert_eq!(risk.outcome, ReplyOutcome::Approved, "risk: {risk:?}");
    let pci = Pci
        .answer(&command(payment_id, "pci", Action::Execute, card))
        .await
        .reply;
    assert_eq!(pci.outcome, ReplyOutcome::Approved, "pci: {pci:?}");
    let mut capture = command(payment_id, "transaction", Action::Execute, None);
    capture
        .context
        .insert("authorization".into(), Value::Object(auth.data.clone()));
    let reply = transaction.answer(&capture).await.reply;
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    assert_eq!(
        reply.data["settlement"],
        json!({"minor": 2150, "currency": "USD"})
    );
    let repeat = transaction.answer(&capture).await;
    assert!(repeat.replayed, "a repeat is answered from the store");
    assert_eq!(repeat.reply, reply);
    assert_eq!(db.ledger.transfers_for(payment_id).await.unwrap(), 1);

    let undo = transaction
        .answer(&command(
            payment_id,
            "transaction",
            Action::Compensate,
            None,
        ))
        .await
        .reply;
    assert_eq!(undo.reason.as_deref(), Some("not_compensable"));
    db.ledger.close().await;
}

#[tokio::test]
async fn declines_and_misconfigurations_are_explained() {
    let db = sqlite_ledger().await;
    let authorization = Authorization::new(db.ledger.clone());
    let cases = [
        (Some(authorization::CARD_DECLINED), "card_declined"),
        (
            Some(authorization::CARD_INSUFFICIENT_FUNDS),
            "insufficient_funds",
        ),
        (Some("4242424242424241"), "invalid_card"),
        (None, "card_number_missing"),
    ];
    for (number, reason) in cases {
        let payment_id = Uuid::new_v4();
        let reply = authorization
            .answer(&command(
                payment_id,
                "authorization",
                Action::Execute,
                number,
            ))
            .await
            .reply;
        assert_eq!(reply.reason.as_deref(), Some(reason));
        assert_eq!(db.ledger.holds_for(payment_id).await.unwrap(), 0);
    }
    let risk = Risk::new(test_keys())
        .answer(&command(
            Uuid::new_v4(),
            "risk",
            Action::Execute,
            Some(risk::CARD_HIGH_RISK),
        ))
        .await
        .reply;
    assert_eq!(risk.reason.as_deref(), Some("high_risk"));
    let mut pci = command(Uuid::new_v4(), "pci", Action::Execute, None);
    pci.payment.merchant_id = "noncompliant-1".into();
    assert_eq!(
        Pci.answer(&pci).await.reply.reason.as_deref(),
        Some("merchant_not_compliant")
    );
    let no_hold = Transaction::new(db.ledger.clone())
        .answer(&command(
            Uuid::new_v4(),
            "transaction",
            Action::Execute,
            None,
        ))
        .await
        .reply;
    assert_eq!(no_hold.reason.as_deref(), Some("hold_missing"));
    db.ledger.close().await;
}

#[tokio::test]
async fn a_capture_against_another_ledger_is_an_error_not_a_decline() {
    let (one, other) = (sqlite_ledger().await, sqlite_ledger().await);
    assert_ne!(one.ledger.id(), other.ledger.id());
    let payment_id = Uuid::new_v4();
    let auth = Authorization::new(one.ledger.clone())
        .answer(&command(
            payment_id,
            "authorization",
            Action::Execute,
            Some("4242424242424242"),
        ))
        .await
        .reply;
    assert_eq!(auth.data[LEDGER_ID], one.ledger.id());
    assert_eq!(auth.data[LEDGER_AT], one.ledger.location());
    let mut capture = command(payment_id, "transaction", Action::Execute, None);
    capture
        .context
        .insert("authorization".into(), Value::Object(auth.data.clone()));
    let transaction = Transaction::new(other.ledger.clone());
    let registry = prometheus::Registry::new();
    transaction.register_metrics(&registry).unwrap();
    assert_eq!(mismatches(&registry), Some(0), "exposed from the start");
    let reply = transaction.answer(&capture).await.reply;
    assert_eq!(reply.outcome, ReplyOutcome::Error, "{reply:?}");
    assert_eq!(reply.reason.as_deref(), Some(LEDGER_MISMATCH));
    assert_eq!(mismatches(&registry), Some(1), "counted");
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
    let rewired = Transaction::new(one.ledger.clone())
        .answer(&capture)
        .await
        .reply;
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
    let reply = Authorization::new(db.ledger.clone())
        .answer(&command(
            Uuid::new_v4(),
            "authorization",
            Action::Execute,
            Some("4242424242424242"),
        ))
        .await
        .reply;
    assert_eq!(reply.outcome, ReplyOutcome::Error, "{reply:?}");
    assert_eq!(reply.reason.as_deref(), Some("ledger_unavailable"));
}

/// `baton_service_ledger_mismatches_total{service="transaction"}` in `registry`.
fn mismatches(registry: &prometheus::Registry) -> Option<u64> {
    let family = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "baton_service_ledger_mismatches_total")?;
    let metric = family.get_metric().first()?;
    let labelled = metric
        .get_label()
        .iter()
        .any(|l| l.name() == "service" && l.value() == "transaction");
    labelled.then(|| metric.get_counter().get_value() as u64)
}
