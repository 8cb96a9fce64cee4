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
