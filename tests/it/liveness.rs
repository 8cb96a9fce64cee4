//! No payment left without a result: an invalid copy of a running payment, a rejection
//! whose client is gone.

use crate::app::{spawn_app, spawn_services, Store};
use baton::testcards::TestCard;
use baton::workflow::Workflow;
use baton_amqp::publish_confirmed;
use baton_contract::{headers, Limits, Status, StepOutcome};
use baton_services::ServiceKind;
use baton_testkit::metric_value;
use lapin::BasicProperties;
use std::time::Duration;
use uuid::Uuid;

/// Risk answers nothing (it is not running): every payment parks after authorization.
const PARKING_WORKFLOW: &str = r#"
[parking]
tiers_ms = [300]
max_parks = 100
[[steps]]
name = "authorization"
timeout_ms = 2000
card = "number"
compensate = true
[[steps]]
name = "risk"
timeout_ms = 200
retry = { attempts = 1, initial_backoff_ms = 10, max_backoff_ms = 10 }
[[steps]]
name = "transaction"
timeout_ms = 2000
side_effects = true
"#;

#[tokio::test]
async fn a_parked_payment_whose_limit_was_lowered_gets_one_result_and_its_hold_voided() {
    let mut app = spawn_services(
        Store::Sqlite,
        &[ServiceKind::Authorization, ServiceKind::Transaction],
    )
    .await;
    let workflow = Workflow::parse(PARKING_WORKFLOW, "test").unwrap();
    let mut settings = app.orchestrator_settings();
    settings.workflow = workflow.clone();
    app.start_orchestrator(settings).await;

    let payment_id = Uuid::new_v4();
    let mut request = TestCard::Good.request_with_id(payment_id);
    request["amount"]["minor"] = 1999.into();
    let correlation = payment_id.to_string();
    app.send(&serde_json::to_vec(&request).unwrap(), &correlation)
        .await;
    // Parked at least once, with its hold placed.
    let journal = app.orchestrator().journal().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let record = journal.load(payment_id).await.unwrap();
        if record.is_some_and(|r| r.parked >= 1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never parked");
        // The journal offers no change notification: poll it, bounded.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("held")
    );

    // Restarted with a limit the parked request no longer passes.
    let old = app.orchestrator.take().unwrap();
    old.shutdown().await.unwrap();
    let mut settings = app.orchestrator_settings();
    settings.workflow = workflow;
    settings.limits = Limits {
        max_amount_minor: 1000,
        ..Limits::default()
    };
    app.start_orchestrator(settings).await;

    let result = app.result_for(&correlation).await.result.unwrap();
    assert_eq!(result.payment_id, payment_id);
    assert_eq!(result.status, Status::Failed, "{result:?}");
    assert_eq!(result.reason.as_deref(), Some("abandoned"), "{result:?}");
    assert!(
        result.detail.as_deref().unwrap_or("").contains("amount"),
        "the detail says why: {result:?}"
    );
    assert!(result
        .steps
        .iter()
        .any(|s| s.step == "authorization" && s.outcome == StepOutcome::Compensated));
    assert_eq!(
        app.ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("voided")
    );
    let journal = app.orchestrator().journal().clone();
    let record = journal.load(payment_id).await.unwrap().unwrap();
    assert_eq!(
        record.result.as_ref(),
        Some(&result),
        "the journal's result"
    );

    // One result on the payments exchange, and one copy of the request for operators.
    app.orchestrator.take().unwrap().shutdown().await.unwrap();
    let results: Vec<_> = app
        .take_all(&app.names.results_queue())
        .await
        .into_iter()
        .filter(|(p, _)| p.message_id().as_ref().map(|m| m.as_str()) == Some(&correlation))
        .collect();
    assert_eq!(results.len(), 1, "exactly one result for the payment");
    let dead = app.take_all(&app.names.dead_queue()).await;
    assert_eq!(dead.len(), 1);
    let reason = dead[0]
        .0
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(headers::REASON).cloned());
    assert_eq!(
        reason
            .as_ref()
            .and_then(|r| r.as_long_string())
            .map(|r| r.to_string()),
        Some("invalid_request".to_owned())
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_rejection_whose_client_is_gone_is_dead_lettered_once_and_acked() {
    let mut app = spawn_app().await;
    let channel = app.client.publisher().channel().clone();
    let payment_id = Uuid::new_v4();
    let mut request = TestCard::Good.request_with_id(payment_id);
    request["amount"]["minor"] = serde_json::json!(-5);
    let gone = format!("{}.client-that-left", app.names.prefix());
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(gone.as_str().into())
        .with_correlation_id(payment_id.to_string().as_str().into());
    publish_confirmed(
        &channel,
        &app.names.payments_exchange(),
        app.names.request_routing_key(),
        &serde_json::to_vec(&request).unwrap(),
        properties,
    )
    .await
    .unwrap();

    assert_eq!(app.queue_depth(&app.names.dead_queue(), 1).await, 1);
    let registry = app.orchestrator().metrics().registry.clone();
    assert!(
        baton_testkit::eventually(Duration::from_secs(10), || {
            metric_value(&registry, "baton_client_replies_unroutable_total", &[]) >= 1.0
        })
        .await,
        "the gone client is counted"
    );
    // The rejection still reached the payments exchange.
    let results = app.take_all(&app.names.results_queue()).await;
    assert_eq!(results.len(), 1);
    // Stopping returns anything unacked to the queue: nothing is.
    app.orchestrator.take().unwrap().shutdown().await.unwrap();
    assert_eq!(app.queue_depth(&app.names.requests_queue(), 0).await, 0);
    assert_eq!(
        app.take_all(&app.names.dead_queue()).await.len(),
        1,
        "one dead letter, not one per redelivery"
    );
    app.cleanup().await;
}

/// `baton sagas finish` ends a running saga's lease; the running orchestrator's sweeper
/// settles it and the tool prints the result. Without an orchestrator it says so, exit 1.
#[tokio::test]
async fn sagas_finish_settles_a_saga_through_the_running_sweeper() {
    let mut app = spawn_services(Store::Sqlite, &ServiceKind::ALL).await;
    let mut settings = app.orchestrator_settings();
    // The sweeper looks every fifth of the lease.
    settings.saga_lease = Duration::from_secs(1);
    app.start_orchestrator(settings).await;
    // A saga some owner begun and left with a long lease (5 min, the default; nothing will
    // ever renew it): only `finish` makes it the sweeper's within this test.
    let journal = baton::journal::Journal::open(&app.journal_url)
        .await
        .unwrap();
    let payment_id = Uuid::new_v4();
    let request = TestCard::Good.request_with_id(payment_id);
    let request = baton_contract::PaymentRequest::parse(
        &serde_json::to_vec(&request).unwrap(),
        &Limits::default(),
    )
    .unwrap();
    journal
        .begin(payment_id, &baton::journal::PaymentSummary::of(&request))
        .await
        .unwrap();
    let baton = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args(args)
            .args(["--journal-url", &app.journal_url])
            .env("RUST_LOG", "warn");
        command
    };
    let stuck = baton(&["sagas", "stuck"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&stuck.stdout).starts_with("1 running, 0 whose lease ran out"),
        "leased: not stuck yet"
    );
    let finish = baton(&["sagas", "finish", &payment_id.to_string(), "--wait", "30s"]);
    let output = baton_testkit::output(finish).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: baton_contract::PaymentResult = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result.status, Status::Failed);
    assert_eq!(result.reason.as_deref(), Some("abandoned"));
    assert_eq!(
        journal.load(payment_id).await.unwrap().unwrap().result,
        Some(result)
    );

    // No orchestrator: the lease is ended, nobody finishes it, the tool says so.
    app.orchestrator.take().unwrap().shutdown().await.unwrap();
    let other = Uuid::new_v4();
    journal
        .begin(other, &baton::journal::PaymentSummary::of(&request))
        .await
        .unwrap();
    let output = baton(&["sagas", "finish", &other.to_string(), "--wait", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is an orchestrator running on this journal"),
        "{stderr}"
    );
    let stuck = baton(&["sagas", "stuck", "--json"]).output().unwrap();
    assert!(String::from_utf8_lossy(&stuck.stdout).contains(&other.to_string()));
    journal.close().await;
    app.cleanup().await;
}
