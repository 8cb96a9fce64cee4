//! Requests that cannot be processed: a `rejected` result when they can be answered, a
//! dead letter with the reason always, and the orchestrator keeps serving.

use crate::app::spawn_app;
use baton::testcards::TestCard;
use baton_contract::{amqp, headers, Status};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use uuid::Uuid;

/// Takes the next message from the dead-letter queue: (reason header, detail, body).
async fn next_dead_letter(app: &crate::app::TestApp) -> (String, String, Vec<u8>) {
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
    let properties = &message.delivery.properties;
    (
        amqp::header_text(properties, headers::REASON).unwrap_or_default(),
        amqp::header_text(properties, headers::DETAIL).unwrap_or_default(),
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
            field: "amount.currency",
            problem: "three upper-case letters",
            answered: true,
        },
        BadCase {
            name: "body over the size limit",
            body: |mut r| {
                r["note"] = "x".repeat(SMALL_BODY_LIMIT).into();
                json(r)
            },
            content_type: None,
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
        assert_eq!(dead_body, body, "{name}: the raw request is kept");
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
            let done = crate::app::eventually(std::time::Duration::from_secs(10), || {
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
