//! The whole pipeline, end to end: every test card, both ways in, a large batch, and a
//! stray reply.

use crate::app::{spawn_app, spawn_app_with, Store, RESULT_WAIT};
use baton::demo::run_batch;
use baton::testcards::{mixed_batch, TestCard};
use baton_amqp as amqp;
use baton_contract::{headers, Reply, Status};
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

/// The arguments RabbitMQ reports for every queue of `prefix`, by queue name:
/// `argument → value` as `rabbitmqctl` prints them in JSON.
fn queue_arguments(
    prefix: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, serde_json::Value>> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "name",
            "arguments",
            "--formatter",
            "json",
        ])
        .output()
        .expect("rabbitmqctl");
    assert!(output.status.success(), "{output:?}");
    let listing: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    listing
        .iter()
        .filter_map(|queue| {
            let name = queue["name"].as_str()?;
            name.starts_with(&format!("{prefix}.")).then(|| {
                let arguments = queue["arguments"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| (a[0].as_str().unwrap().to_owned(), a[2].clone()))
                    .collect();
                (name.to_owned(), arguments)
            })
        })
        .collect()
}

#[tokio::test]
async fn payments_are_dead_lettered_at_least_once_and_the_unread_queues_are_bounded() {
    let app = spawn_app().await;
    let prefix = app.names.prefix().to_owned();
    let queues = queue_arguments(&prefix);
    let arg = |queue: &str, key: &str| {
        queues
            .get(queue)
            .unwrap_or_else(|| panic!("{queue} not declared: {queues:?}"))
            .get(key)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    let at_least_once_to = |queue: &str, target: &str| {
        assert_eq!(
            arg(queue, "x-dead-letter-strategy"),
            "at-least-once",
            "{queue}"
        );
        // Without reject-publish RabbitMQ silently falls back to at-most-once.
        assert_eq!(arg(queue, "x-overflow"), "reject-publish", "{queue}");
        assert_eq!(arg(queue, "x-dead-letter-routing-key"), target, "{queue}");
        assert!(queues.contains_key(target), "{queue}'s target {target}");
    };
    let dead = app.names.dead_queue();
    let requests = app.names.requests_queue();
    at_least_once_to(&requests, &dead);
    for kind in ServiceKind::ALL {
        at_least_once_to(&app.names.command_queue(kind.name()), &dead);
    }
    let parking = baton::workflow::Workflow::builtin().parking().delays_ms();
    for delay in &parking {
        at_least_once_to(&app.names.retry_queue(*delay), &requests);
    }
    assert_eq!(
        queues.keys().filter(|q| q.contains(".retry.")).count(),
        parking.len()
    );

    let results = app.names.results_queue();
    assert_eq!(
        arg(&results, "x-max-length"),
        amqp::bounds::RESULTS_MAX_LENGTH
    );
    assert_eq!(arg(&results, "x-message-ttl"), amqp::bounds::RESULTS_TTL_MS);
    assert_eq!(
        arg(&results, "x-overflow"),
        "drop-head",
        "a full results queue must never refuse a result"
    );
    assert_eq!(arg(&dead, "x-max-length"), amqp::bounds::DEAD_MAX_LENGTH);
    assert_eq!(arg(&dead, "x-overflow"), "reject-publish", "never drop");
    let attention = app.names.attention_queue();
    assert_eq!(
        arg(&attention, "x-max-length"),
        amqp::bounds::ATTENTION_MAX_LENGTH
    );
    assert_eq!(
        arg(&attention, "x-overflow"),
        "reject-publish",
        "never drop"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_queue_an_older_baton_declared_is_a_clear_error_naming_it() {
    let app = spawn_app().await;
    // A queue as the previous release declared it: no dead-letter strategy.
    let names = baton_contract::Names::new(format!("{}-old", app.names.prefix()));
    let mut old = lapin::types::FieldTable::default();
    old.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    let connection = baton_testkit::broker::connect(&baton_testkit::amqp_url(), "old queue").await;
    let setup = connection.create_channel().await.unwrap();
    setup
        .queue_declare(
            names.dead_queue().as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            old,
        )
        .await
        .unwrap();
    let refused = amqp::declare_core(&setup, &names).await.unwrap_err();
    assert!(!refused.is_transient(), "{refused}");
    let message = refused.to_string();
    assert!(
        matches!(refused, amqp::BrokerError::QueueArguments { ref queue, .. } if *queue == names.dead_queue()),
        "{message}"
    );
    assert!(
        message.contains("x-max-length") && message.contains("Upgrading queue arguments"),
        "{message}"
    );
    let cleanup = connection.create_channel().await.unwrap();
    let _ = cleanup
        .queue_delete(names.dead_queue().as_str().into(), Default::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    app.cleanup().await;
}
