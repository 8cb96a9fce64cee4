//! `baton attention list|show|replay`: a failed compensation listed, and replayed once
//! the service recovers.

use super::{baton, fast_app, rows};
use baton::testcards::TestCard;
use baton_contract::{Status, StepOutcome};
use baton_services::{Faults, ServiceKind};
use uuid::Uuid;

#[tokio::test]
async fn a_failed_compensation_is_listed_and_replayed_once_the_service_recovers() {
    let failing = Faults {
        fail_compensations: true,
        ..Faults::default()
    };
    let mut app = fast_app(ServiceKind::Authorization, failing).await;
    let attention = app.names.attention_queue();
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&TestCard::HighRisk.request_with_id(payment_id)).unwrap();
    app.send(&body, "risky").await;
    let result = app.result_for("risky").await.result.unwrap();
    assert_eq!(result.status, Status::Declined);
    assert_eq!(
        result.steps.last().map(|s| s.outcome),
        Some(StepOutcome::CompensationFailed)
    );
    assert_eq!(app.queue_depth(&attention, 1).await, 1);

    let run = baton(&app, &["attention", "list"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = rows(&run.stdout);
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    let key = lines[0].0.clone();
    for part in [
        "compensation_failed",
        &payment_id.to_string(),
        "authorization compensation_failed",
    ] {
        assert!(lines[0].1.contains(part), "{part} missing: {}", run.stdout);
    }
    assert_eq!(
        app.queue_depth(&attention, 1).await,
        1,
        "list removed the item"
    );

    let run = baton(&app, &["attention", "show", &key]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let command_id = format!("{payment_id}:authorization:compensate");
    assert!(run.stdout.contains(&command_id), "{}", run.stdout);
    assert!(!run.stdout.contains("4100000000000019"), "{}", run.stdout);

    // While the service still fails, a replay fails and the item stays.
    let run = baton(&app, &["attention", "replay", &key]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("the item stays"), "{}", run.stderr);
    assert_eq!(app.queue_depth(&attention, 1).await, 1);
    assert_eq!(
        app.ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("held")
    );

    // The service recovers: the replay voids the hold and removes the item.
    app.service("authorization")
        .set_faults(Faults::default())
        .unwrap();
    let run = baton(&app, &["attention", "replay", &payment_id.to_string()]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!("replayed {key} {payment_id}")),
        "{}",
        run.stdout
    );
    assert_eq!(
        app.ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("voided")
    );
    let run = baton(&app, &["attention", "list"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("is empty"), "{}", run.stdout);
    assert_eq!(app.queue_depth(&attention, 0).await, 0);
    app.cleanup().await;
}
