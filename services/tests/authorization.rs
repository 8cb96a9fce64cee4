//! The authorization service, in-process, against the real RabbitMQ: replies are
//! correlated, repeats are answered from the ledger, garbage is dead-lettered.
//!
//! Needs RabbitMQ at `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`). Each
//! run uses its own prefix and ledger file, and deletes its queues at the end.

use baton_amqp::{self as amqp, BrokerError};
use baton_contract::{
    Action, CardNumber, CardView, Command, Currency, Money, Names, PaymentView, Reply, ReplyOutcome,
};
use baton_services::{start, Ledger, ServiceConfig, ServiceKind};
use baton_testkit::{amqp_url, scratch_name, ScratchSqlite};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use std::time::Duration;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(15);

fn command(payment_id: Uuid) -> Command {
    Command {
        command_id: Command::id_for(payment_id, "authorization", Action::Execute),
        payment_id,
        step: "authorization".into(),
        action: Action::Execute,
        payment: PaymentView {
            merchant_id: "m-1001".into(),
            customer_id: "c-42".into(),
            amount: Money {
                minor: 1999,
                currency: Currency::parse("EUR").unwrap(),
            },
            merchant_currency: Currency::parse("EUR").unwrap(),
            card: CardView {
                number: Some(CardNumber::new("4242424242424242")),
                fingerprint: None,
                last4: "4242".into(),
                expiry: "12/99".into(),
            },
        },
        context: Default::default(),
    }
}

/// The next delivery of `consumer`, or a failure after [`DEADLINE`].
async fn next(consumer: &mut Consumer, what: &str) -> Delivery {
    tokio::time::timeout(DEADLINE, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
        .unwrap_or_else(|| panic!("consumer ended before the {what}"))
        .expect("delivery")
}

/// Publishes `body` as a command and waits for the reply on `reply_queue`.
async fn ask(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    reply_queue: &str,
    replies: &mut Consumer,
) -> (Reply, Delivery) {
    let correlation_id = Uuid::new_v4().to_string();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let properties = amqp::json_properties(&[("traceparent", traceparent)])
        .with_correlation_id(correlation_id.as_str().into())
        .with_reply_to(reply_queue.into());
    amqp::publish_confirmed(channel, "", queue, body, properties)
        .await
        .expect("publish the command");
    let delivery = next(replies, "reply").await;
    let got = delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.to_string());
    assert_eq!(
        got.as_deref(),
        Some(correlation_id.as_str()),
        "correlation id echoed"
    );
    assert_eq!(
        amqp::header_text(&delivery.properties, "traceparent").as_deref(),
        Some(traceparent),
        "traceparent copied"
    );
    let reply: Reply = serde_json::from_slice(&delivery.data).expect("a Reply");
    (reply, delivery)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_replies_dedupes_and_dead_letters() {
    let prefix = scratch_name("test");
    let names = Names::new(prefix.as_str());
    let ledger_file = ScratchSqlite::new("it");
    let ledger_url = ledger_file.url();
    let config = ServiceConfig {
        amqp_url: amqp_url(),
        prefix: prefix.clone(),
        concurrency: 8,
        ledger_url: ledger_url.clone(),
        ..ServiceConfig::default()
    };
    let service = start(ServiceKind::Authorization, config)
        .await
        .expect("start");
    assert_eq!(service.queue(), names.command_queue("authorization"));

    let connection = amqp::connect(&amqp_url(), "baton-services-test", &Default::default())
        .await
        .unwrap();
    let channel = amqp::confirm_channel(&connection).await.unwrap();
    let (reply_queue, mut replies) = amqp::consume_exclusive(&channel, "").await.unwrap();

    // A command gets an approved reply with a hold.
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&command(payment_id)).unwrap();
    let queue = names.command_queue("authorization");
    let (first, _) = ask(&channel, &queue, &body, &reply_queue, &mut replies).await;
    assert_eq!(first.outcome, ReplyOutcome::Approved, "{first:?}");
    assert_eq!(first.command_id, format!("{payment_id}:authorization"));
    let hold_id = first.data["hold_id"].as_str().expect("hold_id").to_owned();

    // The same command again: the same hold, nothing placed twice.
    let (second, _) = ask(&channel, &queue, &body, &reply_queue, &mut replies).await;
    assert_eq!(second, first);
    assert_eq!(second.data["hold_id"], hold_id.as_str());

    // Garbage lands in <prefix>.dead with the reason, and the service keeps working.
    let garbage = b"{\"not\": \"a command\", \"card\": \"4242424242424242\"}";
    let properties = amqp::json_properties(&[]).with_reply_to(reply_queue.as_str().into());
    amqp::publish_confirmed(&channel, "", &queue, garbage, properties)
        .await
        .unwrap();
    let mut dead = channel
        .basic_consume(
            names.dead_queue().as_str().into(),
            "dead".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let letter = next(&mut dead, "dead letter").await;
    assert_eq!(
        letter.data, b"{\"not\": \"a command\", \"card\": \"****4242\"}",
        "the original body is kept, its card number masked"
    );
    assert_eq!(
        amqp::header_text(&letter.properties, baton_contract::headers::REASON).as_deref(),
        Some("malformed_command")
    );
    let detail = amqp::header_text(&letter.properties, baton_contract::headers::DETAIL).unwrap();
    assert!(detail.contains("not a Baton command"), "{detail}");
    assert!(!detail.contains("4242424242424242"), "{detail}");
    letter.acker.ack(BasicAckOptions::default()).await.unwrap();

    let other = Uuid::new_v4();
    let body = serde_json::to_vec(&command(other)).unwrap();
    let (third, _) = ask(&channel, &queue, &body, &reply_queue, &mut replies).await;
    assert_eq!(third.outcome, ReplyOutcome::Approved);
    assert_ne!(third.data["hold_id"], hold_id.as_str());

    service.shutdown().await.expect("graceful shutdown");

    // The ledger holds exactly one hold per payment.
    let ledger = Ledger::open(&ledger_url).await.unwrap();
    assert_eq!(ledger.holds_for(payment_id).await.unwrap(), 1);
    assert_eq!(
        ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("held")
    );
    ledger.close().await;

    for queue in [names.command_queue("authorization"), names.dead_queue()] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_broker_is_a_connect_error_without_the_password() {
    let config = ServiceConfig {
        amqp_url: "amqp://guest:s3cret@127.0.0.1:1/%2f".into(),
        prefix: scratch_name("test"),
        card_keys: Some(baton_contract::CardKeys::generate("t")),
        ..ServiceConfig::default()
    };
    let error = start(ServiceKind::Risk, config).await.unwrap_err();
    // Everything the error says, its sources included.
    let mut said = format!("{error} {error:?}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        said.push_str(&format!(" {cause} {cause:?}"));
        source = cause.source();
    }
    assert!(!said.contains("s3cret"), "{said}");
    let message = error.to_string();
    assert!(message.contains("guest:***@127.0.0.1:1"), "{message}");
    assert_eq!(error.exit_code(), 2, "{error}");
    assert!(
        matches!(error.into_broker(), Ok(BrokerError::Connect { .. })),
        "the broker's own error"
    );
}
