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
