//! Step conditions (`when`) on the real broker with the reference services: the issue's
//! three example conditions, each both ways, in one workflow. The conditional steps are
//! second PCI instances on their own queues (`baton-pci --queue pci-fx`, …): each
//! approves what it is sent, so what matters is whether it is sent anything at all.

use crate::app::{spawn_services, Store, TestApp};
use baton::saga::SagaEvent;
use baton::workflow::Workflow;
use baton_contract::{PaymentResult, Status, StepOutcome};
use baton_services::ServiceKind;
use baton_testkit::metric_value;
use futures_lite::StreamExt;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const WORKFLOW: &str = r#"
[[steps]]
name = "authorization"
timeout_ms = 5000
card = "number"
compensate = true

[[steps]]
name = "fx"
service = "pci-fx"
timeout_ms = 5000
when = "payment.merchant_currency != payment.amount.currency"

[[steps]]
name = "risk"
timeout_ms = 5000
card = "fingerprint"

[[steps]]
name = "three_ds"
service = "pci-3ds"
timeout_ms = 5000
when = "steps.risk.score > 70"

[[steps]]
name = "edd"
service = "pci-edd"
timeout_ms = 5000
when = "payment.amount.minor >= 1000000"

[[steps]]
name = "pci"
timeout_ms = 5000

[[steps]]
name = "transaction"
timeout_ms = 5000
side_effects = true
"#;

/// The elevated-risk test card: risk approves it with score 85.
const ELEVATED: &str = "4000000000003220";

async fn conditional_app() -> TestApp {
    let mut app = spawn_services(Store::Sqlite, &ServiceKind::ALL).await;
    for queue in ["pci-fx", "pci-3ds", "pci-edd"] {
        let config = baton_services::ServiceConfig {
            queue: Some(queue.into()),
            ..app.service_config_for(ServiceKind::Pci)
        };
        app.start_service_with(ServiceKind::Pci, config).await;
    }
    let mut settings = app.orchestrator_settings();
    settings.workflow = Workflow::parse(WORKFLOW, "conditions test").unwrap();
    app.start_orchestrator(settings).await;
    app
}

async fn pay(
    app: &mut TestApp,
    minor: u64,
    merchant_currency: &str,
    card: &str,
) -> (PaymentResult, String) {
    let payment_id = Uuid::new_v4();
    let body = json!({
        "payment_id": payment_id.to_string(), "merchant_id": "m-1001", "customer_id": "c-42",
        "amount": {"minor": minor, "currency": "EUR"}, "merchant_currency": merchant_currency,
        "card": {"number": card, "expiry": "12/30"},
    });
    app.send(&serde_json::to_vec(&body).unwrap(), &payment_id.to_string())
        .await;
    let received = app.result_for(&payment_id.to_string()).await;
    let text = String::from_utf8(received.body).unwrap();
    (received.result.expect("a well-formed result"), text)
}

fn outcomes(result: &PaymentResult) -> Vec<(&str, StepOutcome, u32)> {
    result
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.outcome, s.attempts))
        .collect()
}

/// Commands a conditional step's service answered.
fn handled(app: &TestApp, queue: &str) -> f64 {
    metric_value(
        app.service(queue).registry(),
        "baton_service_commands_total",
        &[("outcome", "approved")],
    )
}

#[tokio::test]
async fn the_example_conditions_skip_and_run_their_steps() {
    let mut app = conditional_app().await;
    let (connection, mut skipped_events) = app.listen("event.*.skipped").await;

    // Same currency, a low risk score, a small amount: the three are skipped.
    let (result, raw) = pay(&mut app, 1999, "EUR", "4242424242424242").await;
    assert_eq!(result.status, Status::Completed, "{raw}");
    use StepOutcome::{Approved, Skipped};
    assert_eq!(
        outcomes(&result),
        [
            ("authorization", Approved, 1),
            ("fx", Skipped, 0),
            ("risk", Approved, 1),
            ("three_ds", Skipped, 0),
            ("edd", Skipped, 0),
            ("pci", Approved, 1),
            ("transaction", Approved, 1),
        ],
        "{raw}"
    );
    assert!(raw.contains(r#""step":"fx","outcome":"skipped""#), "{raw}");
    let mut keys = Vec::new();
    for _ in 0..3 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), skipped_events.next())
            .await
            .unwrap_or_else(|_| panic!("no further skipped event after {keys:?}"))
            .expect("consuming")
            .expect("a delivery");
        let event: SagaEvent = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(event.payment_id, result.payment_id);
        assert_eq!(event.outcome, "skipped");
        keys.push(delivery.routing_key.as_str().to_owned());
    }
    assert_eq!(
        keys,
        [
            "event.fx.skipped",
            "event.three_ds.skipped",
            "event.edd.skipped"
        ]
    );
    // The journal has the skips: a replay takes them from there.
    let saga = app
        .orchestrator()
        .journal()
        .load(result.payment_id)
        .await
        .unwrap()
        .expect("journalled");
    let fx = saga
        .entry("fx", baton_contract::Action::Execute)
        .expect("fx recorded");
    assert_eq!(fx.record.outcome, Skipped);

    // Currencies differ, risk scores 85, 10 000.00: the three run.
    let (result, raw) = pay(&mut app, 1_000_000, "USD", ELEVATED).await;
    assert_eq!(result.status, Status::Completed, "{raw}");
    assert!(result.steps.iter().all(|s| s.outcome == Approved), "{raw}");
    assert_eq!(result.steps.len(), 7, "{raw}");
    for queue in ["pci-fx", "pci-3ds", "pci-edd"] {
        assert_eq!(
            handled(&app, queue),
            1.0,
            "{queue}: sent only when its condition held"
        );
    }
    drop(connection);
    app.cleanup().await;
}
