//! The saga events on the payments exchange: a payment's in order, and the result event
//! of a rejected request.

use crate::app::spawn_app;
use baton::saga::SagaEvent;
use baton::testcards::TestCard;
use baton_contract::{PaymentResult, Status};
use futures_lite::StreamExt;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn the_saga_events_of_a_high_risk_payment_arrive_in_order() {
    let mut app = spawn_app().await;
    let (connection, mut events) = app.listen("event.#").await;

    let (result, body): (PaymentResult, String) = app.pay(TestCard::HighRisk).await;
    assert_eq!(
        (result.status, result.reason.as_deref()),
        (Status::Declined, Some("high_risk")),
        "{body}"
    );

    let mut seen = Vec::new();
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap_or_else(|_| panic!("no further event after {seen:?}"))
            .expect("consuming")
            .expect("a delivery");
        let key = delivery.routing_key.as_str().to_owned();
        let event: SagaEvent = serde_json::from_slice(&delivery.data).unwrap_or_else(|e| {
            panic!(
                "{key}: not a SagaEvent ({e}): {}",
                String::from_utf8_lossy(&delivery.data)
            )
        });
        assert_eq!(event.payment_id, result.payment_id, "{key}");
        assert_eq!(
            event.routing_key(),
            key,
            "the key names the event's step and outcome"
        );
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            Some(result.payment_id.to_string()),
            "{key}: message_id is the payment id"
        );
        let last = key == "event.payment.declined";
        seen.push((key, event));
        if last {
            break;
        }
    }
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "event.authorization.approved",
            "event.risk.declined",
            "event.authorization.compensated",
            "event.payment.declined",
        ]
    );
    let actions: Vec<&str> = seen.iter().map(|(_, e)| e.action.as_str()).collect();
    assert_eq!(actions, ["execute", "execute", "compensate", "result"]);
    assert_eq!(seen[1].1.reason.as_deref(), Some("high_risk"));
    assert_eq!(seen[3].1.reason.as_deref(), Some("high_risk"));
    // Each step event carries the step's line of the result; the final one none.
    for ((_, event), line) in seen.iter().zip(&result.steps) {
        assert_eq!(event.record.as_ref(), Some(line));
    }
    assert!(seen[3].1.record.is_none());
    let _ = connection.close(200, "done".into()).await;
    app.cleanup().await;
}

/// The README (Topology) promises `event.payment.<status>` for every result, a request
/// rejected as invalid included.
#[tokio::test]
async fn a_rejected_request_publishes_event_payment_rejected() {
    let mut app = spawn_app().await;
    let (connection, mut events) = app.listen("event.#").await;

    let payment_id = Uuid::new_v4();
    let mut request = TestCard::Good.request_with_id(payment_id);
    request["amount"]["minor"] = serde_json::json!(0);
    app.send(
        &serde_json::to_vec(&request).unwrap(),
        &payment_id.to_string(),
    )
    .await;
    let received = app.result_for(&payment_id.to_string()).await;
    assert_eq!(received.result.expect("a result").status, Status::Rejected);
    let delivery = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event for the rejected payment within 10 s")
        .expect("consuming")
        .expect("a delivery");
    assert_eq!(delivery.routing_key.as_str(), "event.payment.rejected");
    let _ = connection.close(200, "done".into()).await;
    app.cleanup().await;
}
