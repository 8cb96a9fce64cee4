//! The tools never show a card number: `dead show|list` mask every shape of one, and a
//! message the broker returns to `dead replay` keeps its body out of the log.

use super::{baton, rows};
use crate::app::spawn_app;
use baton::testcards::TestCard;
use baton_amqp as amqp;
use baton_contract::headers;
use uuid::Uuid;

/// A dead letter as RabbitMQ leaves one (a request over its delivery limit keeps the
/// client's headers) with card numbers in every shape: a JSON number, spaced, dashed,
/// a JSON key, a header value, a header key, an integer header.
#[tokio::test]
async fn dead_show_and_list_mask_card_numbers_in_every_shape_and_keep_the_payment_id() {
    use lapin::types::AMQPValue;
    let app = spawn_app().await;
    let dead = app.names.dead_queue();
    let payment_id = Uuid::new_v4();
    let body = serde_json::json!({
        "payment_id": payment_id,
        "merchant_id": "m-1001",
        "customer_id": "c-42",
        "amount": {"minor": 1999, "currency": "EUR"},
        "card": {"number": 5555555555554444u64, "expiry": "12/30"},
        "note": "5105 1051 0510 5100",
        "alt": "4012-8888-8888-1881",
        "4000056655665556": "as a key",
    });
    let mut properties = amqp::json_properties(&[
        (headers::REASON, "invalid_request"),
        (
            headers::DETAIL,
            "card.number: must be a string, got a number",
        ),
        ("x-card", "pan 4242 4242 4242 4242"),
        ("x-6011111111111117", "as a header key"),
    ]);
    let mut table = properties.headers().clone().unwrap_or_default();
    table.insert("x-number".into(), AMQPValue::LongLongInt(378282246310005));
    properties = properties
        .with_headers(table)
        .with_message_id(payment_id.to_string().into());
    amqp::publish_confirmed(
        app.client.publisher().channel(),
        "",
        &dead,
        &serde_json::to_vec(&body).unwrap(),
        properties,
    )
    .await
    .unwrap();
    assert_eq!(app.queue_depth(&dead, 1).await, 1);

    let shown = baton(&app, &["dead", "show", &payment_id.to_string()]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let listed = baton(&app, &["dead", "list"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    for output in [&shown.stdout, &shown.stderr, &listed.stdout, &listed.stderr] {
        for full in [
            "5555555555554444",
            "5105 1051 0510 5100",
            "4012-8888-8888-1881",
            "4000056655665556",
            "4242 4242 4242 4242",
            "6011111111111117",
            "378282246310005",
        ] {
            assert!(!output.contains(full), "{full} printed: {output}");
        }
    }
    // The honest data is all there: the payment id, the amount, the ids, each last four.
    for kept in [
        &format!("payment_id  {payment_id}"),
        &format!("\"payment_id\": \"{payment_id}\""),
        "\"minor\": 1999",
        "\"merchant_id\": \"m-1001\"",
        "\"number\": ****4444",
        "\"note\": \"****5100\"",
        "\"alt\": \"****1881\"",
        "\"****5556\": \"as a key\"",
        "header      x-card = pan ****4242",
        "header      x-****1117 = as a header key",
        "header      x-number = LongLongInt(****0005)",
    ] {
        assert!(
            shown.stdout.contains(kept),
            "{kept} missing: {}",
            shown.stdout
        );
    }
    assert!(
        rows(&listed.stdout)[0].1.contains(&payment_id.to_string()),
        "{}",
        listed.stdout
    );
    assert_eq!(
        app.queue_depth(&dead, 1).await,
        1,
        "looking removed nothing"
    );
    app.cleanup().await;
}

/// A message the broker returns (published `mandatory` to a queue that is gone) is
/// logged by lapin, body and all, at WARN, and every frame at TRACE: the default filter
/// and any RUST_LOG keep those targets capped, and Baton's own error names the queue
/// only. Here `baton dead replay` sends a request with a card number back to a request
/// queue that does not exist.
#[tokio::test]
async fn a_returned_message_never_puts_its_card_number_in_the_log() {
    let app = spawn_app().await;
    // A prefix with a dead-letter queue and nothing else.
    let prefix = format!("{}-gone", app.names.prefix());
    let dead = format!("{prefix}.dead");
    let channel = app.client.publisher().channel().clone();
    channel
        .queue_declare(
            dead.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&TestCard::Good.request_with_id(payment_id)).unwrap();
    let properties = amqp::json_properties(&[(headers::REASON, "invalid_request")])
        .with_message_id(payment_id.to_string().into());
    amqp::publish_confirmed(&channel, "", &dead, &body, properties)
        .await
        .unwrap();

    for rust_log in [None, Some("warn"), Some("trace"), Some("lapin=trace")] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args([
                "--amqp-url",
                &baton_testkit::amqp_url(),
                "--prefix",
                &prefix,
            ])
            .args(["dead", "replay", &payment_id.to_string()])
            .env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let output = baton_testkit::output(command).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{rust_log:?}: {stdout} {stderr}"
        );
        assert!(
            stderr.contains("not replayed ")
                && stderr.contains(&format!("{payment_id}: "))
                && stderr.contains(&format!("{prefix}.requests was unroutable")),
            "{rust_log:?}: {stderr}"
        );
        // lapin prints bodies as byte lists: the card number's bytes must not show either.
        let as_bytes = format!("{:?}", b"4242424242424242");
        let as_bytes = as_bytes.trim_start_matches('[').trim_end_matches(']');
        for output in [&stdout, &stderr] {
            assert!(
                !output.contains("4242424242424242")
                    && !output.contains(as_bytes)
                    && !output.contains("Server returned us"),
                "{rust_log:?}: the returned message was logged: {output}"
            );
        }
    }
    assert_eq!(
        app.queue_depth(&dead, 1).await,
        1,
        "not replayed, still there"
    );
    channel
        .queue_delete(
            dead.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    app.cleanup().await;
}
