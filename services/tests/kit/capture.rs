//! Capture checks its hold: a transaction command naming a real hold (placed through the
//! authorization service) but another customer, merchant or amount moves nothing; the
//! honest capture of that hold still completes. Authorization and transaction run
//! in-process on one SQLite ledger, against the real RabbitMQ.

use crate::audit::audit;
use crate::helpers::{command, Client, Scratch};
use baton_contract::{Action, Command, Currency, Money, Reply, ReplyOutcome};
use baton_services::{start, Ledger, ServiceKind};
use serde_json::{json, Value};
use std::process::Output;

/// The transaction command the orchestrator sends after `authorization` approved with
/// `approval`, under `command_id`.
fn transaction_command(authorization: &Command, approval: &Reply, command_id: &str) -> Command {
    let mut context = serde_json::Map::new();
    context.insert("authorization".into(), Value::Object(approval.data.clone()));
    let mut payment = authorization.payment.clone();
    // Transaction sees the last four digits only, as with the default workflow.
    payment.card.number = None;
    Command {
        command_id: command_id.to_owned(),
        payment_id: authorization.payment_id,
        step: "transaction".into(),
        action: Action::Execute,
        payment,
        context,
    }
}

fn audit_report(url: &str) -> (Output, Value) {
    let output = audit(&["--json", "--ledger-url", url]);
    let report = serde_json::from_slice(&output.stdout).expect("one JSON object");
    (output, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_capture_of_a_real_hold_is_declined_and_the_honest_one_completes() {
    let scratch = Scratch::new();
    let authorization = start(ServiceKind::Authorization, scratch.config())
        .await
        .unwrap();
    let transaction = start(ServiceKind::Transaction, scratch.config())
        .await
        .unwrap();
    let mut client = Client::connect().await;

    let authorize = command(ServiceKind::Authorization);
    let payment_id = authorize.payment_id;
    let approval = client
        .ask(&scratch.queue(ServiceKind::Authorization), &authorize)
        .await;
    assert_eq!(approval.outcome, ReplyOutcome::Approved, "{approval:?}");
    let ledger = Ledger::open(&scratch.ledger_url()).await.unwrap();
    let transactions = scratch.queue(ServiceKind::Transaction);

    // The attack of issue 9: the real hold, someone else's money or a bigger amount.
    let honest = transaction_command(
        &authorize,
        &approval,
        &Command::id_for(payment_id, "transaction", Action::Execute),
    );
    let mut forgeries = Vec::new();
    let mut forged = transaction_command(&authorize, &approval, "forged:customer");
    forged.payment.customer_id = "c-victim".into();
    forgeries.push(("customer_id", forged));
    let mut forged = transaction_command(&authorize, &approval, "forged:merchant");
    forged.payment.merchant_id = "m-thief".into();
    forgeries.push(("merchant_id", forged));
    let mut forged = transaction_command(&authorize, &approval, "forged:amount");
    forged.payment.amount = Money {
        minor: 5_000_000_000,
        currency: Currency::parse("EUR").unwrap(),
    };
    forgeries.push(("amount", forged));

    for (field, forged) in &forgeries {
        let reply = client.ask(&transactions, forged).await;
        assert_eq!(reply.outcome, ReplyOutcome::Declined, "{field}: {reply:?}");
        assert_eq!(reply.reason.as_deref(), Some("hold_mismatch"), "{reply:?}");
        let detail = reply.detail.clone().unwrap_or_default();
        assert!(detail.contains(&format!("in {field}:")), "{detail}");
        for value in [
            "c-42",
            "c-victim",
            "m-1001",
            "m-thief",
            "5000000000",
            "4242",
        ] {
            assert!(!detail.contains(value), "{field}: {detail}");
        }
        // Stored like any reply: the repeat gets the same decline.
        assert_eq!(client.ask(&transactions, forged).await, reply);
        assert_eq!(ledger.transfers_for(payment_id).await.unwrap(), 0);
        assert_eq!(
            ledger.hold_status(payment_id).await.unwrap().as_deref(),
            Some("held"),
            "the hold stays for the honest capture (or the void)"
        );
    }
    let (output, report) = audit_report(&scratch.ledger_url());
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(report["transfers"], 0);
    assert_eq!(report["totals"], json!([]), "no money moved");
    assert_eq!(report["open_holds"], 1);

    let reply = client.ask(&transactions, &honest).await;
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    assert_eq!(ledger.transfers_for(payment_id).await.unwrap(), 1);
    assert_eq!(
        ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("captured")
    );
    let (output, report) = audit_report(&scratch.ledger_url());
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(report["transfers"], 1);
    assert_eq!(report["hold_mismatches"], json!([]));
    assert_eq!(
        report["totals"],
        json!([{"currency": "EUR", "debit_minor": 1999, "credit_minor": 1999}])
    );

    ledger.close().await;
    authorization.shutdown().await.unwrap();
    transaction.shutdown().await.unwrap();
    client
        .clean_up(&scratch.names, &["authorization", "transaction"])
        .await;
}
