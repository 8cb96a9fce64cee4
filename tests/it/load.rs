//! `baton load` against a running Baton: a fast smoke test of the load generator's
//! exactly-once report (the benchmark itself is not a test).

use crate::app::spawn_app;
use baton_testkit::{amqp_url, delete_prefix, output};
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn baton_load_reports_every_payment_exactly_once() {
    let app = spawn_app().await;
    let prefix = app.names.prefix().to_owned();
    let mut load = Command::new(env!("CARGO_BIN_EXE_baton"));
    load.args(["load", "--prefix", &prefix, "--amqp-url", &amqp_url()])
        .args(["--payments", "40", "--in-flight", "8", "--json"]);
    let output = output(load).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}: {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["sent"], 40);
    assert_eq!(report["results"], 40);
    assert_eq!(report["missing"], 0);
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["unexpected"], 0);
    assert_eq!(
        report["by_outcome"]["completed"], 32,
        "the mix: four in five good"
    );
    assert!(report["payments_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["p99_ms"].as_f64().unwrap() >= report["p50_ms"].as_f64().unwrap());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn baton_load_exits_1_when_payments_go_unanswered() {
    // No orchestrator answers on this prefix: every payment is missing.
    let prefix = baton_testkit::scratch_name("test-noone");
    let mut load = Command::new(env!("CARGO_BIN_EXE_baton"));
    load.args(["load", "--prefix", &prefix, "--amqp-url", &amqp_url()])
        .args(["--payments", "3", "--rate", "50", "--wait", "1", "--json"]);
    let output = output(load).await;
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    assert_eq!(
        (report["sent"].as_u64(), report["missing"].as_u64()),
        (Some(3), Some(3))
    );
    delete_prefix(&amqp_url(), &baton_contract::Names::new(prefix), &[], &[])
        .await
        .unwrap();
}
