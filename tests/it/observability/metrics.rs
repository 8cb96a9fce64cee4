//! `/metrics` of the orchestrator and the services after a mixed batch: valid for
//! `promtool`, and counting exactly what the batch did.

use super::prometheus_tool;
use crate::app::{spawn_services, Store, RESULT_WAIT};
use baton::demo::run_batch;
use baton::testcards::{mixed_batch, TestCard};
use baton_services::ServiceKind;
use baton_testkit::{http_get_ok, Exposition};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// `promtool check metrics` on the exposition text (through stdin); fails the test with
/// promtool's findings.
fn promtool_check_metrics(text: &str, whose: &str) {
    let mut child = Command::new(prometheus_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics refused the /metrics of {whose}:\n{}{}\n--- exposition:\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// What a batch of test cards must leave in the metrics, from the documented outcomes.
#[derive(Default)]
struct Expected {
    /// `baton_payment_results_total` by (status, reason).
    results: BTreeMap<(String, String), f64>,
    /// `baton_step_duration_seconds_count` by step: one per decided execute.
    step_decisions: BTreeMap<String, f64>,
    /// `baton_step_attempts_total` by (step, outcome): executes and compensations.
    attempts: BTreeMap<(String, String), f64>,
    /// `baton_compensations_total{result="compensated"}` by step.
    compensated: BTreeMap<String, f64>,
    /// `baton_service_commands_total` by (service, action, outcome).
    commands: BTreeMap<(String, String, String), f64>,
}

impl Expected {
    fn of(cards: &[TestCard]) -> Self {
        let mut want = Expected::default();
        for card in cards {
            let e = card.expected();
            *want
                .results
                .entry((e.status.as_str().into(), e.reason.unwrap_or("").into()))
                .or_default() += 1.0;
            // The default workflow: each step's service has the step's name.
            for (step, outcome) in e.steps {
                let (step, outcome) = (step.to_string(), outcome.to_string());
                match outcome.as_str() {
                    "approved" | "declined" => {
                        *want.step_decisions.entry(step.clone()).or_default() += 1.0;
                        *want
                            .attempts
                            .entry((step.clone(), outcome.clone()))
                            .or_default() += 1.0;
                        *want
                            .commands
                            .entry((step, "execute".into(), outcome))
                            .or_default() += 1.0;
                    }
                    "compensated" => {
                        *want.compensated.entry(step.clone()).or_default() += 1.0;
                        *want
                            .attempts
                            .entry((step.clone(), "approved".into()))
                            .or_default() += 1.0;
                        *want
                            .commands
                            .entry((step, "compensate".into(), "approved".into()))
                            .or_default() += 1.0;
                    }
                    other => panic!("unexpected documented outcome {other}"),
                }
            }
        }
        want
    }
}

#[tokio::test]
async fn metrics_after_a_mixed_batch_pass_promtool_and_count_exactly_what_the_batch_did() {
    let mut app = spawn_services(Store::Sqlite, &[]).await;
    let mut service_ports = Vec::new();
    for kind in ServiceKind::ALL {
        service_ports.push((kind, app.start_service_with_http(kind).await));
    }
    let settings = app.orchestrator_settings();
    app.start_orchestrator(settings).await;
    let http = app.orchestrator().http_addr().expect("an HTTP port");

    let cards = mixed_batch(40);
    let report = run_batch(&mut app.client, &cards, RESULT_WAIT, false)
        .await
        .expect("the batch runs");
    assert_eq!(
        (
            report.results,
            report.missing,
            report.duplicates,
            report.unexpected
        ),
        (40, 0, 0, 0),
        "{report:?}"
    );
    let want = Expected::of(&cards);

    // A result is counted once it is published and its request acked, and a payment
    // leaves the in-flight gauge when its task ends: both a moment after the client got
    // the result, with no event to wait on. Poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, metrics) = loop {
        let text = http_get_ok(http, "/metrics").await;
        let metrics = Exposition::parse(&text);
        let settled = metrics.sum("baton_payment_results_total") == 40.0
            && metrics.get("baton_inflight_payments", &[]) == Some(0.0);
        if settled || Instant::now() > deadline {
            break (text, metrics);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    promtool_check_metrics(&text, "the orchestrator");

    assert_eq!(
        metrics.value("baton_payments_received_total", &[]),
        40.0,
        "{text}"
    );
    let good = cards.iter().filter(|c| **c == TestCard::Good).count() as f64;
    assert_eq!(
        metrics.value(
            "baton_payment_results_total",
            &[("status", "completed"), ("reason", "")]
        ),
        good
    );
    // Every (status, reason) exactly as documented, and nothing else (no failed, no
    // rejected).
    let results: BTreeMap<(String, String), f64> = metrics
        .all("baton_payment_results_total")
        .filter(|s| s.value != 0.0)
        .map(|s| {
            (
                (s.labels["status"].clone(), s.labels["reason"].clone()),
                s.value,
            )
        })
        .collect();
    assert_eq!(results, want.results, "{text}");
    assert!(want.results.len() >= 8, "the batch holds every test card");
    assert_eq!(metrics.value("baton_inflight_payments", &[]), 0.0, "{text}");

    // The end-to-end histogram saw every payment.
    assert_eq!(
        metrics.value("baton_payment_duration_seconds_count", &[]),
        40.0
    );
    assert_eq!(
        metrics.value("baton_payment_duration_seconds_bucket", &[("le", "+Inf")]),
        40.0
    );
    assert!(metrics.value("baton_payment_duration_seconds_sum", &[]) > 0.0);
    // Each step's histogram saw each decision of that step.
    for (step, count) in &want.step_decisions {
        assert_eq!(
            metrics.value("baton_step_duration_seconds_count", &[("step", step)]),
            *count,
            "step {step}"
        );
        assert_eq!(
            metrics.value(
                "baton_step_duration_seconds_bucket",
                &[("step", step), ("le", "+Inf")]
            ),
            *count,
            "step {step}"
        );
    }
    // Commands by outcome: exactly the answers the cards give, no error, timeout or
    // breaker_open; no retry, no timeout, no fallback, no parking.
    let attempts: BTreeMap<(String, String), f64> = metrics
        .all("baton_step_attempts_total")
        .filter(|s| s.value != 0.0)
        .map(|s| {
            (
                (s.labels["step"].clone(), s.labels["outcome"].clone()),
                s.value,
            )
        })
        .collect();
    assert_eq!(attempts, want.attempts, "{text}");
    for (step, count) in &want.compensated {
        assert_eq!(
            metrics.value(
                "baton_compensations_total",
                &[("step", step), ("result", "compensated")]
            ),
            *count
        );
    }
    assert_eq!(
        metrics.sum("baton_compensations_total"),
        want.compensated.values().sum::<f64>(),
        "no failed compensation"
    );
    for quiet in [
        "baton_step_retries_total",
        "baton_step_timeouts_total",
        "baton_step_fallbacks_total",
        "baton_parked_total",
        "baton_dead_lettered_total",
        "baton_attention_total",
    ] {
        assert_eq!(metrics.sum(quiet), 0.0, "{quiet} in\n{text}");
    }
    for zero in [
        "baton_broker_reconnects_total",
        "baton_unknown_replies_total",
        "baton_journal_errors_total",
        "baton_events_dropped_total",
    ] {
        assert_eq!(metrics.value(zero, &[]), 0.0, "{zero}");
    }
    for kind in ServiceKind::ALL {
        assert_eq!(
            metrics.value("baton_circuit_breaker_state", &[("service", kind.name())]),
            0.0,
            "breaker of {kind} closed"
        );
    }

    // Each service: its own /metrics, valid, counting its own commands. A service counts
    // a command before publishing the reply, so every count is final by now.
    for (kind, addr) in service_ports {
        let text = http_get_ok(addr, "/metrics").await;
        promtool_check_metrics(&text, &format!("the {kind} service"));
        let metrics = Exposition::parse(&text);
        let service = kind.name();
        let commands: BTreeMap<(String, String, String), f64> = metrics
            .all("baton_service_commands_total")
            .filter(|s| s.value != 0.0)
            .map(|s| {
                (
                    (
                        s.labels["service"].clone(),
                        s.labels["action"].clone(),
                        s.labels["outcome"].clone(),
                    ),
                    s.value,
                )
            })
            .collect();
        let want_commands: BTreeMap<_, _> = want
            .commands
            .iter()
            .filter(|((s, _, _), _)| s == service)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert!(!want_commands.is_empty(), "the batch reaches {service}");
        assert_eq!(commands, want_commands, "{service}:\n{text}");
        // The usual series exist from the start, at 0 when nothing happened.
        assert!(metrics
            .get(
                "baton_service_commands_total",
                &[
                    ("service", service),
                    ("action", "execute"),
                    ("outcome", "error")
                ]
            )
            .is_some_and(|v| v == 0.0));
        let handled: f64 = want_commands.values().sum();
        assert_eq!(
            metrics.value(
                "baton_service_handle_duration_seconds_count",
                &[("service", service)]
            ),
            handled,
            "{service}"
        );
        assert_eq!(
            metrics.value(
                "baton_service_duplicate_commands_total",
                &[("service", service)]
            ),
            0.0
        );
        assert_eq!(metrics.value("baton_broker_reconnects_total", &[]), 0.0);
        assert_eq!(http_get_ok(addr, "/readyz").await, "ready");
        assert_eq!(http_get_ok(addr, "/healthz").await, "ok");
    }
    app.cleanup().await;
}
