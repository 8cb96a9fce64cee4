//! Requests that cannot be processed: a `rejected` result when they can be answered, a
//! dead letter with the reason always, and the orchestrator keeps serving.

use crate::app::spawn_app;
use baton::testcards::TestCard;
use baton_amqp as amqp;
use baton_contract::{headers, Status};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use uuid::Uuid;

/// Takes the next message from the dead-letter queue: (reason header, detail, body).
async fn next_dead_letter(app: &crate::app::TestApp) -> (String, String, Vec<u8>) {
    let (properties, body) = next_dead_message(app).await;
    (
        amqp::header_text(&properties, headers::REASON).unwrap_or_default(),
        amqp::header_text(&properties, headers::DETAIL).unwrap_or_default(),
        body,
    )
}

/// Takes the next message from the dead-letter queue: (properties, body).
async fn next_dead_message(app: &crate::app::TestApp) -> (BasicProperties, Vec<u8>) {
    let dead = app.names.dead_queue();
    assert!(
        app.queue_depth(&dead, 1).await >= 1,
        "nothing dead-lettered"
    );
    let channel = app.client.publisher().channel().clone();
    let message = channel
        .basic_get(dead.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a dead letter");
    message
        .delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    (
        message.delivery.properties.clone(),
        message.delivery.data.clone(),
    )
}

#[tokio::test]
async fn an_invalid_request_is_rejected_dead_lettered_and_the_next_one_completes() {
    let mut app = spawn_app().await;
    let payment_id = Uuid::new_v4();
    let mut request = TestCard::Good.request_with_id(payment_id);
    request["amount"]["minor"] = serde_json::json!(-5);
    let body = serde_json::to_vec(&request).unwrap();
    app.send(&body, "bad").await;

    let rejected = app.result_for("bad").await.result.unwrap();
    assert_eq!(rejected.payment_id, payment_id);
    assert_eq!(rejected.status, Status::Rejected);
    assert_eq!(rejected.reason.as_deref(), Some("invalid_request"));
    let detail = rejected.detail.unwrap();
    assert!(detail.contains("amount.minor"), "{detail}");
    assert!(rejected.steps.is_empty());

    let (reason, dead_detail, dead_body) = next_dead_letter(&app).await;
    assert_eq!(reason, "invalid_request");
    assert_eq!(dead_detail, detail);
    assert_eq!(dead_body, body, "the raw request is kept for operators");

    let (result, _) = app.pay(TestCard::Good).await;
    assert_eq!(result.status, Status::Completed);
    app.cleanup().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_dead_lettered_without_stopping_the_orchestrator() {
    let mut app = spawn_app().await;
    app.send(b"\x00\xffnot json at all", "garbage").await;
    let (reason, detail, body) = next_dead_letter(&app).await;
    assert_eq!(reason, "invalid_request");
    assert!(detail.contains("not valid JSON"), "{detail}");
    assert_eq!(body, b"\x00\xffnot json at all");

    let (result, _) = app.pay(TestCard::Good).await;
    assert_eq!(result.status, Status::Completed);
    app.cleanup().await;
}

/// One kind of bad input: how to break a valid request, and what Baton must say.
struct BadCase {
    name: &'static str,
    /// Turns a valid request (JSON) into the body to send.
    body: fn(serde_json::Value) -> Vec<u8>,
    /// Content type to publish with (`application/json` otherwise).
    content_type: Option<&'static str>,
    /// Headers to publish with, over the client's own (`baton-schema: 1`).
    headers: Vec<(&'static str, AMQPValue)>,
    /// The field the detail must start with.
    field: &'static str,
    /// Words the detail must contain.
    problem: &'static str,
    /// Whether a `rejected` result can be published (the payment id is readable).
    answered: bool,
}

fn json(value: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

/// The request-size limit of the table test's orchestrator: a valid request is ~250 bytes.
const SMALL_BODY_LIMIT: usize = 1024;
const SMALL_AMOUNT_LIMIT: u64 = 1_000_000;

fn bad_cases() -> Vec<BadCase> {
    vec![
        BadCase {
            name: "wrong content type",
            body: json,
            content_type: Some("text/plain"),
            headers: Vec::new(),
            field: "content_type",
            problem: "must be application/json",
            answered: true,
        },
        BadCase {
            // The client's content type is never quoted back: not in the result, the
            // x-baton-detail header or the log.
            name: "content type carrying a card number",
            body: json,
            content_type: Some("text/plain; card=5105 1051 0510 5100"),
            headers: Vec::new(),
            field: "content_type",
            problem: "must be application/json",
            answered: true,
        },
        BadCase {
            name: "card number as merchant_id",
            body: |mut r| {
                r["merchant_id"] = "4012-8888-8888-1881".into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "merchant_id",
            problem: "must not contain a card number",
            answered: true,
        },
        BadCase {
            name: "card number as customer_id",
            body: |mut r| {
                r["customer_id"] = "c-5555555555554444".into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "customer_id",
            problem: "must not contain a card number",
            answered: true,
        },
        BadCase {
            name: "missing field",
            body: |mut r| {
                r.as_object_mut().unwrap().remove("customer_id");
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "customer_id",
            problem: "is required",
            answered: true,
        },
        BadCase {
            name: "mistyped field",
            body: |mut r| {
                r["merchant_id"] = serde_json::json!(1001);
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "merchant_id",
            problem: "must be a string, got a number",
            answered: true,
        },
        BadCase {
            name: "payment_id not a UUID",
            body: |mut r| {
                r["payment_id"] = "order-42".into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "payment_id",
            problem: "must be a UUID",
            answered: false,
        },
        BadCase {
            name: "amount zero",
            body: |mut r| {
                r["amount"]["minor"] = 0.into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "amount.minor",
            problem: "must be a positive integer",
            answered: true,
        },
        BadCase {
            name: "amount negative",
            body: |mut r| {
                r["amount"]["minor"] = (-1999).into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "amount.minor",
            problem: "got a negative number",
            answered: true,
        },
        BadCase {
            name: "amount fractional",
            body: |mut r| {
                r["amount"]["minor"] = 19.99.into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "amount.minor",
            problem: "got a fractional number",
            answered: true,
        },
        BadCase {
            name: "amount over max_amount_minor",
            body: |mut r| {
                r["amount"]["minor"] = (SMALL_AMOUNT_LIMIT + 1).into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "amount.minor",
            problem: "must be at most 1000000",
            answered: true,
        },
        BadCase {
            name: "currency lower-case",
            body: |mut r| {
                r["amount"]["currency"] = "eur".into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "amount.currency",
            problem: "three upper-case letters",
            answered: true,
        },
        BadCase {
            // Issue 10: a reader keeping the first amount (a proxy) would see 1999, serde
            // keeping the last charged 9999.
            name: "amount given twice",
            body: |r| {
                String::from_utf8(json(r))
                    .unwrap()
                    .replace(r#""minor":1999"#, r#""minor":1999,"minor":9999"#)
                    .into_bytes()
            },
            content_type: None,
            headers: Vec::new(),
            field: "amount.minor",
            problem: "is given more than once",
            answered: true,
        },
        BadCase {
            name: "card number given twice",
            body: |r| {
                String::from_utf8(json(r))
                    .unwrap()
                    .replace(r#""expiry":"#, r#""number":"4000000000000002","expiry":"#)
                    .into_bytes()
            },
            content_type: None,
            headers: Vec::new(),
            field: "card.number",
            problem: "is given more than once",
            answered: true,
        },
        BadCase {
            // The payment id itself twice: no result can say which payment it was.
            name: "payment_id given twice",
            body: |r| {
                String::from_utf8(json(r))
                    .unwrap()
                    .replacen(
                        '{',
                        r#"{"payment_id":"00000000-0000-4000-8000-000000000000","#,
                        1,
                    )
                    .into_bytes()
            },
            content_type: None,
            headers: Vec::new(),
            field: "payment_id",
            problem: "is given more than once",
            answered: false,
        },
        BadCase {
            name: "unknown schema version",
            body: json,
            content_type: None,
            headers: vec![("baton-schema", AMQPValue::LongLongInt(99))],
            field: "baton-schema",
            problem: "is version 99; this orchestrator reads schema version(s) 1",
            answered: true,
        },
        BadCase {
            name: "schema version as unreadable text",
            body: json,
            content_type: None,
            headers: vec![("baton-schema", AMQPValue::LongString("v1".into()))],
            field: "baton-schema",
            problem: "is not a version number",
            answered: true,
        },
        BadCase {
            // Issue 10: it parsed, then authorization declined it `expired_card`.
            name: "expiry with signs",
            body: |mut r| {
                r["card"]["expiry"] = "+1/+9".into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "card.expiry",
            problem: "must be MM/YY",
            answered: true,
        },
        BadCase {
            name: "payment_id upper-case",
            body: |mut r| {
                r["payment_id"] = r["payment_id"].as_str().unwrap().to_uppercase().into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "payment_id",
            problem: "canonical form",
            answered: false,
        },
        BadCase {
            name: "payment_id braced",
            body: |mut r| {
                r["payment_id"] = format!("{{{}}}", r["payment_id"].as_str().unwrap()).into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "payment_id",
            problem: "canonical form",
            answered: false,
        },
        BadCase {
            name: "body over the size limit",
            body: |mut r| {
                r["note"] = "x".repeat(SMALL_BODY_LIMIT).into();
                json(r)
            },
            content_type: None,
            headers: Vec::new(),
            field: "body",
            problem: "over the limit of 1024 bytes",
            answered: true,
        },
    ]
}

#[tokio::test]
async fn every_kind_of_bad_input_is_rejected_with_its_field_dead_lettered_and_the_next_completes() {
    let mut app =
        crate::app::spawn_services(crate::app::Store::Sqlite, &baton_services::ServiceKind::ALL)
            .await;
    let mut settings = app.orchestrator_settings();
    settings.limits.max_body_bytes = SMALL_BODY_LIMIT;
    settings.limits.max_amount_minor = SMALL_AMOUNT_LIMIT;
    app.start_orchestrator(settings).await;

    let mut results_published = 0;
    for (i, case) in bad_cases().into_iter().enumerate() {
        let name = case.name;
        let payment_id = Uuid::new_v4();
        let body = (case.body)(TestCard::Good.request_with_id(payment_id));
        let bad = format!("bad-{i}");
        let publisher = app.client.publisher();
        let mut properties = publisher.request_properties(&bad);
        if let Some(content_type) = case.content_type {
            properties = properties.with_content_type(content_type.into());
        }
        if !case.headers.is_empty() {
            let mut table = properties.headers().clone().unwrap_or_default();
            for (key, value) in &case.headers {
                table.insert((*key).into(), value.clone());
            }
            properties = properties.with_headers(table);
        }
        amqp::publish_confirmed(
            publisher.channel(),
            "",
            &app.names.requests_queue(),
            &body,
            properties,
        )
        .await
        .unwrap();

        // A valid payment right after it completes: the orchestrator kept serving.
        let (result, _) = app.pay(TestCard::Good).await;
        assert_eq!(result.status, Status::Completed, "{name}: the next payment");
        results_published += 1;

        let (reason, detail, dead_body) = next_dead_letter(&app).await;
        assert_eq!(reason, "invalid_request", "{name}");
        assert!(
            detail.starts_with(&format!("{}: ", case.field)) && detail.contains(case.problem),
            "{name}: {detail}"
        );
        if body.len() > SMALL_BODY_LIMIT {
            // Oversized: kept masked (and truncated past 4 KiB; see the 2 MiB test).
            assert_eq!(
                dead_body,
                baton_contract::mask_card_numbers(std::str::from_utf8(&body).unwrap()).as_bytes(),
                "{name}: the body is kept masked"
            );
        } else {
            assert_eq!(dead_body, body, "{name}: the raw request is kept");
        }
        assert!(
            !detail.contains("4242424242424242"),
            "{name}: the detail echoes the card: {detail}"
        );
        assert_eq!(
            baton_contract::mask_card_numbers(&detail),
            detail,
            "{name}: the detail holds a card-like number"
        );
        for echoed in ["text/plain", "5105", "8888", "5555555555554444"] {
            assert!(
                !detail.contains(echoed),
                "{name}: {echoed} echoed: {detail}"
            );
        }

        if case.answered {
            let rejected = app.result_for(&bad).await.result.unwrap();
            assert_eq!(rejected.payment_id, payment_id, "{name}");
            assert_eq!(rejected.status, Status::Rejected, "{name}");
            assert_eq!(
                rejected.reason.as_deref(),
                Some("invalid_request"),
                "{name}"
            );
            assert_eq!(rejected.detail.as_deref(), Some(detail.as_str()), "{name}");
            assert!(rejected.steps.is_empty(), "{name}");
            results_published += 1;
        } else {
            // No result can be addressed without a payment id. The dead letter is
            // published before a result would be: wait until the request is done
            // (nothing in flight), then count every result ever published.
            let done = baton_testkit::eventually(std::time::Duration::from_secs(10), || {
                app.orchestrator().metrics().inflight.get() == 0
            })
            .await;
            assert!(done, "{name}: the request is still in flight");
            assert_eq!(
                app.queue_depth(&app.names.results_queue(), results_published)
                    .await,
                results_published,
                "{name}: a result was published for a request without a payment id"
            );
        }
        // Nothing ran for it: no hold, no transfer.
        assert_eq!(app.ledger.holds_for(payment_id).await.unwrap(), 0, "{name}");
    }
    assert_eq!(
        app.queue_depth(&app.names.results_queue(), results_published)
            .await,
        results_published
    );
    assert_eq!(app.queue_depth(&app.names.dead_queue(), 0).await, 0);
    app.cleanup().await;
}

/// Issue 10: a 2 MiB body was republished whole to `.dead`. Now the dead letter keeps the
/// client's headers and properties and the first 4 KiB of the body, masked — a card
/// number the cut splits is dropped, not left as a dozen digits — with headers saying it
/// was truncated and how large the body was.
#[tokio::test]
async fn an_oversized_request_is_dead_lettered_truncated_and_masked_with_its_headers() {
    let mut app = spawn_app().await;
    let payment_id = Uuid::new_v4();
    const SIZE: usize = 2 * 1024 * 1024;
    let head = format!(
        r#"{{"payment_id":"{payment_id}","merchant_id":"m-1001","customer_id":"c-42","amount":{{"minor":1999,"currency":"EUR"}},"card":{{"number":"4242424242424242","expiry":"12/30"}},"note":""#
    );
    // A second card number, grouped, straddling the 4096th byte.
    let split_card = "4111 1111 1111 1111";
    let mut body = head.clone();
    body.push_str(&"x".repeat(4096 - 9 - head.len()));
    body.push_str(split_card);
    let tail = r#""}"#;
    body.push_str(&"y".repeat(SIZE - body.len() - tail.len()));
    body.push_str(tail);
    assert_eq!(body.len(), SIZE);

    let correlation = "huge";
    let publisher = app.client.publisher();
    let mut table = FieldTable::default();
    table.insert(
        "traceparent".into(),
        AMQPValue::LongString("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    );
    table.insert("x-client-note".into(), AMQPValue::LongString("kept".into()));
    let mut properties = publisher.request_properties(correlation);
    let mut headers_sent = properties.headers().clone().unwrap_or_default();
    for (key, value) in table.inner() {
        headers_sent.insert(key.clone(), value.clone());
    }
    properties = properties.with_headers(headers_sent);
    amqp::publish_confirmed(
        publisher.channel(),
        "",
        &app.names.requests_queue(),
        body.as_bytes(),
        properties,
    )
    .await
    .unwrap();

    let rejected = app.result_for(correlation).await.result.unwrap();
    assert_eq!(rejected.payment_id, payment_id);
    assert_eq!(rejected.status, Status::Rejected);
    let detail = rejected.detail.unwrap();
    assert!(
        detail.starts_with("body: is 2097152 bytes, over the limit of 65536 bytes"),
        "{detail}"
    );

    // `baton dead replay` refuses it: there is no request left to send.
    assert_eq!(app.queue_depth(&app.names.dead_queue(), 1).await, 1);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .args(["--amqp-url", &baton_testkit::amqp_url(), "--prefix"])
        .args([app.names.prefix(), "dead", "replay", "--all"])
        .env("RUST_LOG", "warn");
    let output = baton_testkit::output(command).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bytes were kept, masked: not replayed"),
        "{stderr}"
    );

    let (dead, dead_body) = next_dead_message(&app).await;
    let text = String::from_utf8(dead_body.clone()).unwrap();
    let header = |key: &str| amqp::header_text(&dead, key);
    assert_eq!(header(headers::REASON).as_deref(), Some("invalid_request"));
    assert_eq!(header(headers::DETAIL).as_deref(), Some(detail.as_str()));
    assert_eq!(
        header(headers::ORIGINAL_SIZE).as_deref(),
        Some("2097152"),
        "the original size"
    );
    assert_eq!(
        header(headers::TRUNCATED),
        Some(dead_body.len().to_string()),
        "the bytes kept"
    );
    assert!(
        (4000..=4096).contains(&dead_body.len()),
        "{} bytes kept",
        dead_body.len()
    );
    assert!(
        text.starts_with(&format!(r#"{{"payment_id":"{payment_id}""#)),
        "{text}"
    );
    assert!(
        text.contains(r#""number":"****4242""#),
        "the whole card is masked"
    );
    assert!(!text.contains("42424242"), "{text}");
    assert!(
        !text.contains("4111") && text.ends_with('x'),
        "the split card is dropped whole: {}",
        &text[text.len() - 40..]
    );
    assert_eq!(
        header("traceparent").as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(header("x-client-note").as_deref(), Some("kept"));
    assert_eq!(
        dead.correlation_id().as_ref().map(|c| c.as_str()),
        Some(correlation)
    );
    assert!(dead.reply_to().is_some(), "the client's reply_to is kept");

    let (result, _) = app.pay(TestCard::Good).await;
    assert_eq!(result.status, Status::Completed);
    assert_eq!(app.queue_depth(&app.names.dead_queue(), 0).await, 0);
    app.cleanup().await;
}
