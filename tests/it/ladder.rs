//! The failure ladder against the real broker: retries of a flaky service, a black hole
//! that opens the circuit breaker and parks payments, a fallback service, a declared
//! degraded approval, a side-effecting step whose replies come too late, and a
//! compensation that keeps failing.
//!
//! Every test runs its own workflow with short timeouts, backoffs and parking tiers, so
//! the whole ladder plays out in seconds. Waits are on results (events); only states
//! that announce themselves by no event (a breaker gauge, a counter, a queue depth) are
//! polled, with a deadline.

use crate::app::{spawn_services, Store, TestApp};
use baton::testcards::TestCard;
use baton::workflow::Workflow;
use baton_amqp as amqp;
use baton_contract::{headers, PaymentResult, Status, StepOutcome};
use baton_services::{Faults, ServiceKind};
use baton_testkit::eventually;
use baton_testkit::metric_value;
use serde_json::Value;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a polled condition may take before the test fails.
const POLL: Duration = Duration::from_secs(20);

/// The knobs of a test workflow: the four default steps with short timeouts, backoffs
/// (3 attempts, 20–80 ms) and parking tiers (300 ms, 600 ms).
struct Knobs {
    /// Failures in the window that open a breaker.
    threshold: u32,
    /// How long an open breaker stays open.
    open_ms: u64,
    /// Parkings before a payment fails.
    max_parks: u32,
    /// Timeout of one risk attempt.
    risk_timeout_ms: u64,
    /// Extra keys of the risk step (a fallback).
    risk_extra: &'static str,
    /// Timeout of one transaction attempt.
    transaction_timeout_ms: u64,
}

/// Attempts per visit in every test workflow.
const ATTEMPTS: u32 = 3;
/// Parking tiers of every test workflow.
const TIERS_MS: [u64; 2] = [300, 600];

impl Default for Knobs {
    fn default() -> Self {
        Self {
            threshold: 5,
            open_ms: 500,
            max_parks: 3,
            // Steps not under test get room: on two cores a burst of payments queues on
            // the SQLite ledger, and a spurious timeout is not what these tests test.
            risk_timeout_ms: 5_000,
            risk_extra: "",
            transaction_timeout_ms: 5_000,
        }
    }
}

impl Knobs {
    fn workflow(&self) -> Workflow {
        let text = format!(
            r#"
[defaults]
retry = {{ attempts = {ATTEMPTS}, initial_backoff_ms = 20, max_backoff_ms = 80 }}
breaker = {{ failure_threshold = {threshold}, window_ms = 10000, open_ms = {open_ms} }}

[parking]
tiers_ms = [{tier0}, {tier1}]
max_parks = {max_parks}

[[steps]]
name = "authorization"
timeout_ms = 5000
card = "number"
compensate = true
compensation_retry = {{ attempts = 3, initial_backoff_ms = 20, max_backoff_ms = 80 }}

[[steps]]
name = "risk"
timeout_ms = {risk_timeout_ms}
card = "fingerprint"
{risk_extra}

[[steps]]
name = "pci"
timeout_ms = 5000

[[steps]]
name = "transaction"
timeout_ms = {transaction_timeout_ms}
side_effects = true
"#,
            threshold = self.threshold,
            open_ms = self.open_ms,
            tier0 = TIERS_MS[0],
            tier1 = TIERS_MS[1],
            max_parks = self.max_parks,
            risk_timeout_ms = self.risk_timeout_ms,
            risk_extra = self.risk_extra,
            transaction_timeout_ms = self.transaction_timeout_ms,
        );
        Workflow::parse(&text, "ladder test").expect("the test workflow is valid")
    }
}

/// Fresh prefix and ledger; the four services with the given faults (others: none), in
/// workflow order; an orchestrator running `knobs`' workflow.
async fn ladder_app(knobs: &Knobs, faults: &[(ServiceKind, Faults)]) -> TestApp {
    let mut app = spawn_services(Store::Sqlite, &[]).await;
    for kind in ServiceKind::ALL {
        let faults = faults
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, f)| *f)
            .unwrap_or_default();
        let config = baton_services::ServiceConfig {
            faults,
            ..app.service_config_for(kind)
        };
        app.start_service_with(kind, config).await;
    }
    let mut settings = app.orchestrator_settings();
    settings.workflow = knobs.workflow();
    app.start_orchestrator(settings).await;
    app
}

/// Publishes one request for `card` with `amount`; the correlation id is the payment id.
async fn publish(app: &mut TestApp, card: TestCard, amount: u64) -> (Uuid, Vec<u8>) {
    let payment_id = Uuid::new_v4();
    let mut request = card.request_with_id(payment_id);
    request["amount"]["minor"] = amount.into();
    let body = serde_json::to_vec(&request).unwrap();
    app.send(&body, &payment_id.to_string()).await;
    (payment_id, body)
}

/// Publishes `n` good payments at once and returns their ids.
async fn publish_good(app: &mut TestApp, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(publish(app, TestCard::Good, 1999).await.0);
    }
    ids
}

/// The result of `payment_id` (decoded, raw).
async fn result_of(app: &mut TestApp, payment_id: Uuid) -> (PaymentResult, Value) {
    let received = app.result_for(&payment_id.to_string()).await;
    let raw: Value = serde_json::from_slice(&received.body).expect("a JSON result");
    (received.result.expect("a well-formed result"), raw)
}

fn step<'a>(result: &'a PaymentResult, name: &str) -> &'a baton_contract::StepRecord {
    result
        .steps
        .iter()
        .find(|s| s.step == name)
        .unwrap_or_else(|| panic!("no {name} step in {result:?}"))
}

fn outcomes(result: &PaymentResult) -> Vec<(String, String)> {
    result
        .steps
        .iter()
        .map(|s| {
            let outcome = serde_json::to_value(s.outcome).unwrap();
            (s.step.clone(), outcome.as_str().unwrap().to_owned())
        })
        .collect()
}

fn service_metric(app: &TestApp, service: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(app.service(service).registry(), name, labels)
}

fn orchestrator_metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&app.orchestrator().metrics().registry, name, labels)
}

async fn parked_count(app: &TestApp, payment_id: Uuid) -> u32 {
    app.orchestrator()
        .journal()
        .load(payment_id)
        .await
        .unwrap()
        .expect("the payment is in the journal")
        .parked
}

#[tokio::test]
async fn a_service_failing_thirty_percent_of_calls_costs_retries_not_payments() {
    let flaky = Faults {
        fail_rate: 0.3,
        ..Faults::default()
    };
    // A success resets the breaker's count, so only 10 failures in a row open it
    // (0.3^10 ≈ 6e-6 per run of calls): this test is about retries. If parkings happen
    // anyway (3 failed attempts in one visit, 0.3^3 ≈ 3 %), 5 of them are allowed.
    let knobs = Knobs {
        threshold: 10,
        max_parks: 5,
        ..Knobs::default()
    };
    let mut app = ladder_app(
        &knobs,
        &[(ServiceKind::Risk, flaky), (ServiceKind::Pci, flaky)],
    )
    .await;
    let ids = publish_good(&mut app, 100).await;
    let mut retried = 0;
    for id in &ids {
        let (result, _) = result_of(&mut app, *id).await;
        assert_eq!(result.status, Status::Completed, "{result:?}");
        assert_eq!(app.ledger.transfers_for(*id).await.unwrap(), 1);
        if step(&result, "risk").attempts > 1 || step(&result, "pci").attempts > 1 {
            retried += 1;
        }
    }
    // 1 - 0.7² ≈ 51 % of payments meet at least one injected error.
    assert!(retried > 0, "no result shows a retry");
    for service in ["risk", "pci"] {
        let errors = service_metric(
            &app,
            service,
            "baton_service_commands_total",
            &[("action", "execute"), ("outcome", "error")],
        );
        assert!(errors > 0.0, "{service} injected no error");
    }
    let retries = orchestrator_metric(&app, "baton_step_retries_total", &[]);
    assert!(
        retries >= retried as f64,
        "{retries} retries for {retried} retried payments"
    );
    let audit = app.ledger.audit().await.unwrap();
    assert_eq!(audit.transfers, 100);
    assert!(audit.is_sound() && audit.open_holds == 0, "{audit:?}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_black_hole_opens_the_breaker_parks_payments_and_they_complete_when_it_heals() {
    const N: usize = 30;
    let knobs = Knobs {
        risk_timeout_ms: 300,
        // Parked payments must outlast the black hole and the breaker's recovery:
        // 300 ms + 9 × 600 ms of parking.
        max_parks: 10,
        ..Knobs::default()
    };
    let hole = Faults {
        blackhole: true,
        ..Faults::default()
    };
    let mut app = ladder_app(&knobs, &[(ServiceKind::Risk, hole)]).await;
    let started = Instant::now();
    let ids = publish_good(&mut app, N).await;

    // The breaker opens (gauge 2)...
    let breaker_open = eventually(POLL, || {
        orchestrator_metric(&app, "baton_circuit_breaker_state", &[("service", "risk")]) == 2.0
    })
    .await;
    assert!(breaker_open, "the risk breaker never opened");
    // ...payments park, and come back, and park again while it stays a black hole (on
    // average twice each)...
    let parked_risk = || {
        app.orchestrator()
            .metrics()
            .parked
            .with_label_values(&["risk"])
            .get()
    };
    let parked = eventually(POLL, || parked_risk() >= 2 * N as u64).await;
    assert!(parked, "payments did not park: {} parkings", parked_risk());
    // ...and wait in a retry queue (no event for a queue's depth: polled).
    let deadline = Instant::now() + POLL;
    loop {
        let mut waiting = 0;
        for tier in TIERS_MS {
            waiting += app.queue_depth(&app.names.retry_queue(tier), 0).await;
        }
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the retry queues stayed empty");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.queue_depth(&app.names.results_queue(), 0).await,
        0,
        "no payment decided while risk is a black hole"
    );

    // Risk heals: every payment completes.
    let blackholed_for = started.elapsed();
    let parked_while_blackholed = parked_risk();
    app.service("risk").set_faults(Faults::default()).unwrap();
    for id in &ids {
        let (result, _) = result_of(&mut app, *id).await;
        assert_eq!(result.status, Status::Completed, "{result:?}");
    }

    // The open breaker kept risk from being flooded. While it is closed, each payment
    // sends its first command, and each of the first threshold-1 failures may allow one
    // retry before the threshold-th opens it; once open, only one half-open probe per
    // open period gets through (a failed probe opens it again for open_ms).
    let blackholed = service_metric(
        &app,
        "risk",
        "baton_service_commands_total",
        &[("outcome", "blackholed")],
    ) as u64;
    let closed_wave = N as u64 + u64::from(knobs.threshold - 1);
    let probes = blackholed_for.as_millis() as u64 / knobs.open_ms + 1;
    let bound = closed_wave + probes;
    assert!(
        blackholed <= bound,
        "{blackholed} commands reached the black hole in {blackholed_for:?}, bound {bound}"
    );
    // Without the breaker every visit of the risk step (the first one of each payment,
    // and one after each parking) would have sent ATTEMPTS commands into the hole.
    let without_breaker = (N as u64 + parked_while_blackholed) * u64::from(ATTEMPTS);
    assert!(
        bound < without_breaker / 2,
        "the bound {bound} should be far below {without_breaker}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn an_unavailable_step_falls_back_to_its_alternate_service_queue() {
    let knobs = Knobs {
        risk_timeout_ms: 300,
        risk_extra: r#"fallback = { service = "risk-lite" }"#,
        ..Knobs::default()
    };
    let hole = Faults {
        blackhole: true,
        ..Faults::default()
    };
    let mut app = ladder_app(&knobs, &[(ServiceKind::Risk, hole)]).await;
    // A second risk instance on <prefix>.cmd.risk-lite.
    let lite = baton_services::ServiceConfig {
        queue: Some("risk-lite".into()),
        ..app.service_config_for(ServiceKind::Risk)
    };
    app.start_service_with(ServiceKind::Risk, lite).await;
    assert_eq!(
        app.service("risk-lite").queue(),
        app.names.command_queue("risk-lite")
    );

    let ids = publish_good(&mut app, 10).await;
    for id in &ids {
        let (result, raw) = result_of(&mut app, *id).await;
        assert_eq!(result.status, Status::Completed, "{raw}");
        let risk = step(&result, "risk");
        assert_eq!(risk.outcome, StepOutcome::Approved, "{raw}");
        assert_eq!(risk.via.as_deref(), Some("risk-lite"), "{raw}");
        assert!(!risk.degraded, "{raw}");
        let raw_risk = raw["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "risk")
            .unwrap();
        assert_eq!(raw_risk["via"], "risk-lite", "{raw}");
        // The other steps were answered by their own services.
        for other in ["authorization", "pci", "transaction"] {
            assert_eq!(step(&result, other).via, None, "{raw}");
        }
    }
    let answered_by_lite = service_metric(
        &app,
        "risk-lite",
        "baton_service_commands_total",
        &[("outcome", "approved")],
    );
    assert_eq!(answered_by_lite, 10.0);
    assert_eq!(
        app.orchestrator()
            .metrics()
            .parked
            .with_label_values(&["risk"])
            .get(),
        0,
        "a fallback that answers means no parking"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_degraded_approval_below_the_limit_and_parking_then_failure_above_it() {
    let knobs = Knobs {
        risk_timeout_ms: 300,
        risk_extra: "fallback = { approve_below_minor = 5000 }",
        max_parks: 3,
        ..Knobs::default()
    };
    let hole = Faults {
        blackhole: true,
        ..Faults::default()
    };
    let mut app = ladder_app(&knobs, &[(ServiceKind::Risk, hole)]).await;
    let (small, _) = publish(&mut app, TestCard::Good, 1999).await;
    let (large, large_body) = publish(&mut app, TestCard::Good, 9999).await;

    let (result, raw) = result_of(&mut app, small).await;
    assert_eq!(result.status, Status::Completed, "{raw}");
    let risk = step(&result, "risk");
    assert_eq!(risk.outcome, StepOutcome::Approved, "{raw}");
    assert!(risk.degraded, "{raw}");
    let raw_risk = raw["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "risk")
        .unwrap();
    assert_eq!(raw_risk["degraded"], true, "{raw}");
    assert_eq!(app.ledger.transfers_for(small).await.unwrap(), 1);

    let (result, raw) = result_of(&mut app, large).await;
    assert_eq!(result.status, Status::Failed, "{raw}");
    assert_eq!(
        result.reason.as_deref(),
        Some("service_unavailable"),
        "{raw}"
    );
    let detail = result.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("risk"),
        "the detail names the step: {detail}"
    );
    assert_eq!(
        outcomes(&result),
        [
            ("authorization".to_owned(), "approved".to_owned()),
            ("risk".to_owned(), "failed".to_owned()),
            ("authorization".to_owned(), "compensated".to_owned()),
        ],
        "{raw}"
    );
    assert_eq!(parked_count(&app, large).await, knobs.max_parks);
    assert_eq!(
        app.ledger.hold_status(large).await.unwrap().as_deref(),
        Some("voided")
    );
    assert_eq!(app.ledger.transfers_for(large).await.unwrap(), 0);

    // A copy of the request for operators.
    assert_eq!(app.queue_depth(&app.names.dead_queue(), 1).await, 1);
    let dead = app.take_all(&app.names.dead_queue()).await;
    assert_eq!(dead.len(), 1);
    let (properties, body) = &dead[0];
    assert_eq!(
        amqp::header_text(properties, headers::REASON).as_deref(),
        Some("service_unavailable")
    );
    assert_eq!(*body, large_body, "the request as the client sent it");
    app.cleanup().await;
}

#[tokio::test]
async fn a_side_effecting_step_whose_replies_come_too_late_moves_money_once() {
    const N: usize = 10;
    let knobs = Knobs {
        transaction_timeout_ms: 300,
        // The payments park while the replies are late, and must outlast that.
        max_parks: 10,
        ..Knobs::default()
    };
    let slow = Faults {
        latency: Duration::from_millis(600),
        ..Faults::default()
    };
    let mut app = ladder_app(&knobs, &[(ServiceKind::Transaction, slow)]).await;
    let ids = publish_good(&mut app, N).await;

    // The first attempts time out but act; the retries, with the same command id, are
    // answered from the transaction store — too late as well.
    let answered_from_store = eventually(POLL, || {
        service_metric(
            &app,
            "transaction",
            "baton_service_duplicate_commands_total",
            &[],
        ) > 0.0
    })
    .await;
    assert!(
        answered_from_store,
        "no retry reached the transaction store"
    );
    assert!(
        orchestrator_metric(
            &app,
            "baton_step_timeouts_total",
            &[("step", "transaction")]
        ) > 0.0
    );

    // The replies come in time again.
    app.service("transaction")
        .set_faults(Faults::default())
        .unwrap();
    for id in &ids {
        let (result, raw) = result_of(&mut app, *id).await;
        assert_eq!(result.status, Status::Completed, "{raw}");
        let retried = step(&result, "transaction").attempts > 1;
        let parked = parked_count(&app, *id).await > 0;
        assert!(
            retried || parked,
            "the transaction step was neither retried nor parked: {raw}"
        );
        assert_eq!(
            app.ledger.transfers_for(*id).await.unwrap(),
            1,
            "exactly one transfer for {id}"
        );
        assert_eq!(
            app.ledger.hold_status(*id).await.unwrap().as_deref(),
            Some("captured")
        );
    }
    let audit = app.ledger.audit().await.unwrap();
    assert_eq!(audit.transfers, N as u64, "{audit:?}");
    assert!(audit.duplicate_transfers.is_empty(), "{audit:?}");
    assert!(audit.balanced, "{audit:?}");
    assert_eq!(audit.open_holds, 0, "{audit:?}");
    // Every repeat was answered from the store under the same command id: the
    // transaction service acted (approved fresh) exactly once per payment.
    let duplicates = service_metric(
        &app,
        "transaction",
        "baton_service_duplicate_commands_total",
        &[],
    );
    let approved = service_metric(
        &app,
        "transaction",
        "baton_service_commands_total",
        &[("action", "execute"), ("outcome", "approved")],
    );
    assert!(duplicates > 0.0);
    assert_eq!(
        approved - duplicates,
        N as f64,
        "fresh approvals = payments: no second command id"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_compensation_that_keeps_failing_lands_in_the_attention_queue() {
    let failing = Faults {
        fail_compensations: true,
        ..Faults::default()
    };
    let mut app = ladder_app(&Knobs::default(), &[(ServiceKind::Authorization, failing)]).await;
    let (id, _) = publish(&mut app, TestCard::HighRisk, 1999).await;
    let (result, raw) = result_of(&mut app, id).await;
    assert_eq!(result.status, Status::Declined, "{raw}");
    assert_eq!(result.reason.as_deref(), Some("high_risk"), "{raw}");
    let last = result.steps.last().unwrap();
    assert_eq!(
        (last.step.as_str(), last.outcome),
        ("authorization", StepOutcome::CompensationFailed),
        "{raw}"
    );
    assert_eq!(last.attempts, 3, "the compensation retry policy: {raw}");
    // The hold is still there: an operator must settle it.
    assert_eq!(
        app.ledger.hold_status(id).await.unwrap().as_deref(),
        Some("held")
    );

    let attention = app.names.attention_queue();
    assert_eq!(app.queue_depth(&attention, 1).await, 1);
    let items = app.take_all(&attention).await;
    assert_eq!(items.len(), 1);
    let (properties, body) = &items[0];
    assert_eq!(
        amqp::header_text(properties, headers::REASON).as_deref(),
        Some("compensation_failed")
    );
    let text = String::from_utf8(body.clone()).unwrap();
    let item: Value = serde_json::from_str(&text).expect("a JSON item");
    assert_eq!(item["kind"], "compensation_failed", "{text}");
    assert_eq!(item["step"], "authorization", "{text}");
    assert_eq!(item["payment_id"], id.to_string(), "{text}");
    let command_id = format!("{id}:authorization:compensate");
    assert_eq!(item["command_id"], command_id.as_str(), "{text}");
    assert_eq!(item["command"]["command_id"], command_id.as_str(), "{text}");
    assert_eq!(item["command"]["action"], "compensate", "{text}");
    assert!(
        item["error"].as_str().unwrap().contains("injected_fault"),
        "{text}"
    );
    assert!(
        !text.contains("4100000000000019"),
        "the card number leaked into the attention item: {text}"
    );
    let compensations_failed = service_metric(
        &app,
        "authorization",
        "baton_service_commands_total",
        &[("action", "compensate"), ("outcome", "error")],
    );
    assert_eq!(compensations_failed, 3.0);
    app.cleanup().await;
}
