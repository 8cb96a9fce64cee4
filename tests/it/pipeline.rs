//! The whole pipeline, end to end: every test card, both ways in, a large batch, and a
//! stray reply.

use crate::app::{spawn_app, spawn_app_with, Store, RESULT_WAIT};
use baton::demo::run_batch;
use baton::testcards::{mixed_batch, TestCard};
use baton_contract::{amqp, headers, Reply, Status};
use baton_services::ServiceKind;
use uuid::Uuid;

#[tokio::test]
async fn every_test_card_gives_its_documented_status_reason_and_steps() {
    let mut app = spawn_app().await;
    for card in TestCard::ALL {
        let (result, body) = app.pay(card).await;
        let want = card.expected();
        assert_eq!(result.status, want.status, "{card:?}: {body}");
        assert_eq!(result.reason.as_deref(), want.reason, "{card:?}: {body}");
        let steps: Vec<(String, String)> = result
            .steps
            .iter()
            .map(|s| {
                let outcome = serde_json::to_value(s.outcome).unwrap();
                (s.step.clone(), outcome.as_str().unwrap().to_owned())
            })
            .collect();
        let want_steps: Vec<(String, String)> = want
            .steps
            .iter()
            .map(|(s, o)| (s.to_string(), o.to_string()))
            .collect();
        assert_eq!(steps, want_steps, "{card:?}");
        assert!(result.steps.iter().all(|s| s.attempts == 1));

        // No card number in the result, ever.
        for digits in ["4242424242424242", "4000000000000002", "4100000000000019"] {
            assert!(
                !body.contains(digits),
                "{card:?} leaked the card number: {body}"
            );
        }

        // Holds: captured when completed, voided after a later decline, none otherwise.
        let hold = app.ledger.hold_status(result.payment_id).await.unwrap();
        let want_hold = match (card.places_hold(), result.status) {
            (false, _) => None,
            (true, Status::Completed) => Some("captured"),
            (true, _) => Some("voided"),
        };
        assert_eq!(hold.as_deref(), want_hold, "{card:?}");

        match result.status {
            Status::Completed => {
                let settlement = result.settlement.expect("a completed payment settles");
                // 19.99 EUR at the documented rate of 1.0755 USD per EUR.
                assert_eq!(
                    (settlement.minor, settlement.currency.as_str()),
                    (2150, "USD")
                );
                assert_eq!(
                    app.ledger.transfers_for(result.payment_id).await.unwrap(),
                    1
                );
            }
            _ => {
                assert_eq!(result.settlement, None);
                assert_eq!(
                    app.ledger.transfers_for(result.payment_id).await.unwrap(),
                    0
                );
            }
        }
    }
    app.cleanup().await;
}

#[tokio::test]
async fn requests_are_taken_from_the_exchange_and_straight_from_the_queue() {
    let mut app = spawn_app().await;
    let publisher = app.client.publisher();
    let via_exchange = TestCard::Good.request();
    let via_queue = TestCard::Good.request();
    publisher
        .publish(&serde_json::to_vec(&via_exchange).unwrap(), "exchange")
        .await
        .unwrap();
    publisher
        .publish_to_queue(&serde_json::to_vec(&via_queue).unwrap(), "queue")
        .await
        .unwrap();
    for (correlation, request) in [("exchange", via_exchange), ("queue", via_queue)] {
        let received = app.result_for(correlation).await;
        let result = received.result.unwrap();
        assert_eq!(result.status, Status::Completed);
        assert_eq!(result.payment_id.to_string(), request["payment_id"]);
    }
    // Both results were also published to the results queue.
    assert_eq!(app.queue_depth(&app.names.results_queue(), 2).await, 2);
    app.cleanup().await;
}

#[tokio::test]
async fn a_thousand_payments_at_once_each_get_one_result_and_the_ledger_balances() {
    let mut app = spawn_app().await;
    let cards = mixed_batch(1000);
    let report = run_batch(&mut app.client, &cards, RESULT_WAIT * 3, false)
        .await
        .unwrap();
    assert_eq!(report.sent, 1000);
    assert_eq!(report.results, 1000, "{report:?}");
    assert_eq!((report.missing, report.duplicates), (0, 0));
    assert_eq!(report.unexpected, 0, "{:?}", report.by_outcome);

    let completed = cards.iter().filter(|c| **c == TestCard::Good).count() as u64;
    let audit = app.ledger.audit().await.unwrap();
    assert_eq!(
        audit.transfers, completed,
        "one transfer per completed payment"
    );
    assert!(audit.duplicate_transfers.is_empty(), "{audit:?}");
    assert!(audit.balanced, "debits must equal credits: {audit:?}");
    assert_eq!(
        audit.open_holds, 0,
        "every hold captured or voided: {audit:?}"
    );
    assert_eq!(
        app.queue_depth(&app.names.results_queue(), 1000).await,
        1000
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_reply_with_an_unknown_correlation_id_changes_nothing() {
    // Risk is down: the payment waits at the risk step, its command in the risk queue.
    let kinds = [
        ServiceKind::Authorization,
        ServiceKind::Pci,
        ServiceKind::Transaction,
    ];
    let mut app = spawn_app_with(Store::Sqlite, &kinds).await;
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&TestCard::Good.request_with_id(payment_id)).unwrap();
    app.send(&body, "stray").await;
    let risk_queue = app.names.command_queue("risk");
    assert_eq!(app.queue_depth(&risk_queue, 1).await, 1);

    // A forged "declined" for the very command that is waiting, with the wrong
    // correlation id, straight into the orchestrator's reply queue.
    let forged = Reply::declined(format!("{payment_id}:risk"), "high_risk", "forged");
    let properties = amqp::json_properties(&[(headers::COMMAND_ID, "forged")])
        .with_correlation_id(Uuid::new_v4().to_string().as_str().into());
    amqp::publish_confirmed(
        app.client.publisher().channel(),
        "",
        app.orchestrator().reply_queue(),
        &serde_json::to_vec(&forged).unwrap(),
        properties,
    )
    .await
    .unwrap();

    app.start_service(ServiceKind::Risk).await;
    let result = app.result_for("stray").await.result.unwrap();
    assert_eq!(result.status, Status::Completed, "{result:?}");
    assert_eq!(app.orchestrator().metrics().unknown_replies.get(), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn a_channel_closed_by_the_broker_is_reopened_and_the_payment_completes() {
    let mut app = spawn_app().await;
    // Deleting the payments exchange makes the broker close the orchestrator's publish
    // channel (404) when it publishes the result; the connection itself stays up.
    let channel = app.client.publisher().channel().clone();
    channel
        .exchange_delete(
            app.names.payments_exchange().as_str().into(),
            Default::default(),
        )
        .await
        .unwrap();
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&TestCard::Good.request_with_id(payment_id)).unwrap();
    app.client
        .publisher()
        .publish_to_queue(&body, "reopened")
        .await
        .unwrap();
    let result = app.result_for("reopened").await.result.unwrap();
    assert_eq!(result.status, Status::Completed);
    assert!(
        app.orchestrator().metrics().reconnects.get() >= 1,
        "the session was reopened"
    );
    assert_eq!(app.ledger.transfers_for(payment_id).await.unwrap(), 1);
    app.cleanup().await;
}
