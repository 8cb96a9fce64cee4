//! A payment request published twice moves funds once, with either ledger store.

use crate::app::{spawn_app_with, Store};
use baton::testcards::TestCard;
use baton_contract::Status;
use baton_services::ServiceKind;
use uuid::Uuid;

async fn the_same_request_twice_moves_funds_once(store: Store) {
    let mut app = spawn_app_with(store, &ServiceKind::ALL).await;
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&TestCard::Good.request_with_id(payment_id)).unwrap();
    // Back to back: both deliveries may be in flight at the same time.
    app.send(&body, "first").await;
    app.send(&body, "second").await;
    let first = app.result_for("first").await.result.unwrap();
    let second = app.result_for("second").await.result.unwrap();
    for result in [&first, &second] {
        assert_eq!(result.payment_id, payment_id);
        assert_eq!(result.status, Status::Completed, "{result:?}");
    }
    assert_eq!(first.settlement, second.settlement);
    assert_eq!(app.ledger.transfers_for(payment_id).await.unwrap(), 1);
    let audit = app.ledger.audit().await.unwrap();
    assert_eq!(audit.transfers, 1, "{audit:?}");
    assert!(audit.balanced, "{audit:?}");
    assert_eq!(
        app.ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("captured")
    );
    app.cleanup().await;
}

#[tokio::test]
async fn the_same_request_twice_moves_funds_once_with_sqlite() {
    the_same_request_twice_moves_funds_once(Store::Sqlite).await;
}

#[tokio::test]
async fn the_same_request_twice_moves_funds_once_with_postgres() {
    the_same_request_twice_moves_funds_once(Store::Postgres).await;
}

#[tokio::test]
async fn a_payment_id_reused_for_another_payment_is_refused_and_changes_nothing() {
    let mut app = spawn_app_with(Store::Sqlite, &ServiceKind::ALL).await;
    let payment_id = Uuid::new_v4();
    let original = TestCard::Good.request_with_id(payment_id);
    app.send(&serde_json::to_vec(&original).unwrap(), "original")
        .await;
    let first = app.result_for("original").await.result.unwrap();
    assert_eq!(first.status, Status::Completed);

    // Same id, another amount and customer: must not be charged, nor answered as if it
    // were the first payment.
    let mut other = original.clone();
    other["amount"]["minor"] = serde_json::json!(999_999);
    other["customer_id"] = serde_json::json!("c-someone-else");
    app.send(&serde_json::to_vec(&other).unwrap(), "reused")
        .await;
    let refused = app.result_for("reused").await.result.unwrap();
    assert_eq!(refused.status, Status::Rejected);
    assert!(
        refused.detail.as_deref().unwrap().contains("already used"),
        "{refused:?}"
    );

    assert_eq!(app.ledger.transfers_for(payment_id).await.unwrap(), 1);
    // The payments exchange carries the payment's one result only (waiting up to 10 s
    // for a second one that must not come).
    let results = app.queue_depth(&app.names.results_queue(), 2).await;
    assert_eq!(results, 1);
    let dead = app.queue_depth(&app.names.dead_queue(), 1).await;
    assert_eq!(dead, 1, "the refused request is kept for operators");
    app.cleanup().await;
}

#[tokio::test]
async fn an_invalid_copy_of_a_known_payment_does_not_give_it_a_second_result() {
    let mut app = spawn_app_with(Store::Sqlite, &ServiceKind::ALL).await;
    let payment_id = Uuid::new_v4();
    let mut request = TestCard::Good.request_with_id(payment_id);
    app.send(&serde_json::to_vec(&request).unwrap(), "good")
        .await;
    assert_eq!(
        app.result_for("good").await.result.unwrap().status,
        Status::Completed
    );

    request["amount"]["minor"] = serde_json::json!(-5);
    app.send(&serde_json::to_vec(&request).unwrap(), "broken")
        .await;
    // Issue 10: the client gets the payment's own result, not a `rejected` that would
    // contradict it; what was wrong with this copy is in its dead letter.
    let answer = app.result_for("broken").await.result.unwrap();
    assert_eq!(answer.status, Status::Completed, "{answer:?}");
    assert_eq!(answer.payment_id, payment_id);
    assert_eq!(app.queue_depth(&app.names.dead_queue(), 1).await, 1);
    let dead = app.take_all(&app.names.dead_queue()).await;
    assert_eq!(dead.len(), 1, "the invalid copy is kept for operators");
    let detail =
        baton_amqp::header_text(&dead[0].0, baton_contract::headers::DETAIL).unwrap_or_default();
    assert!(detail.starts_with("amount.minor"), "{detail}");
    assert_eq!(
        app.queue_depth(&app.names.results_queue(), 2).await,
        1,
        "no rejected result for a completed payment on the exchange"
    );
    app.cleanup().await;
}
