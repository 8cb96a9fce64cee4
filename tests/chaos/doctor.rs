//! A deployment wired wrong says so: two services on two ledgers fail payments as
//! `service_unavailable` (the hold voided), never as a decline, and `baton doctor` — the
//! real binary, against real orchestrator processes — names each fault in the exact line
//! the operator sees: the ledger mismatch, a step without a consumer, two orchestrators
//! with different workflows, a refused login.

use crate::harness::{Cluster, JournalStore, BROKER};
use baton::broker::Role;
use baton::testcards::TestCard;
use baton::workflow::Workflow;
use baton_amqp as amqp;
use baton_contract::Status;
use baton_services::ledger::Ledger;
use baton_services::{ServiceConfig, ServiceKind};
use baton_testkit::{metric_value, scratch_name, ScratchDir, AMQP_URL};
use std::process::Command;
use std::time::Duration;

/// A workflow that gives up on an unavailable step within a second or two: one attempt,
/// one short parking.
const FAST_FAILING: &str = r#"
[defaults]
retry = { attempts = 1, initial_backoff_ms = 10, max_backoff_ms = 10 }

[parking]
tiers_ms = [200]
max_parks = 1

[[steps]]
name = "authorization"
timeout_ms = 5000
card = "number"
compensate = true

[[steps]]
name = "risk"
timeout_ms = 2000
card = "fingerprint"

[[steps]]
name = "pci"
timeout_ms = 2000

[[steps]]
name = "transaction"
timeout_ms = 5000
side_effects = true
"#;

/// Runs `baton doctor` for the cluster's prefix as the broker's administrator: (exit
/// code, stdout lines).
fn doctor(prefix: &str, amqp_url: &str, extra: &[&str]) -> (i32, Vec<String>) {
    let output = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["doctor", "--prefix", prefix])
        .args(extra)
        .env("AMQP_URL", amqp_url)
        .env_remove("BATON_WORKFLOW")
        .env_remove("BATON_JOURNAL_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("run baton doctor");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let code = output.status.code().expect("exited");
    (code, stdout.lines().map(str::to_owned).collect())
}

fn line_starting<'a>(lines: &'a [String], start: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{}", lines.join("\n")))
}

/// Deletes the parking queue of [`FAST_FAILING`] (the cluster's clean-up knows only the
/// built-in tiers).
async fn delete_fast_parking(cluster: &Cluster) {
    let connection = amqp::connect(AMQP_URL, "doctor cleanup", &Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(
            cluster.names.retry_queue(200).as_str().into(),
            Default::default(),
        )
        .await;
    let _ = connection.close(200, "cleaned".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_ledgers_fail_payments_unavailable_never_declined_and_doctor_names_both() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    let scratch = ScratchDir::new("doctor");
    let workflow = scratch.file("fast.toml", FAST_FAILING);
    let workflow_arg = workflow.display().to_string();
    // Transaction on a ledger of its own, as when each service runs in its own working
    // directory with the default relative `sqlite://baton-ledger.db`.
    let position = cluster
        .services
        .iter()
        .position(|s| s.kind() == ServiceKind::Transaction)
        .unwrap();
    cluster.services.remove(position).shutdown().await.unwrap();
    let other_url = format!("sqlite://{}", scratch.join("ledger.db").display());
    let prefix = cluster.names.prefix().to_owned();
    let transaction = baton_services::start(
        ServiceKind::Transaction,
        ServiceConfig {
            amqp_url: cluster
                .roles
                .amqp_url(Role::Transaction, &cluster.broker.amqp)
                .unwrap(),
            orchestrator_users: vec![Role::Orchestrator.user(&prefix)],
            require_verified_senders: true,
            prefix: prefix.clone(),
            ledger_url: other_url.clone(),
            ..ServiceConfig::default()
        },
    )
    .await
    .unwrap();
    let metrics = transaction.registry().clone();
    cluster.services.push(transaction);
    let orchestrator = cluster
        .orchestrator_with(None, 5, &["--workflow", &workflow_arg])
        .await;

    let ids = cluster.publish(&[TestCard::Good, TestCard::Good]).await;
    cluster.collect(&ids, Duration::from_secs(60)).await;
    for (id, _) in &ids {
        let result = &cluster.results[id][0];
        assert_eq!(result.status, Status::Failed, "{result:?}");
        assert_eq!(result.reason.as_deref(), Some("service_unavailable"));
        assert!(
            result
                .detail
                .as_deref()
                .unwrap_or("")
                .contains("ledger_mismatch"),
            "{result:?}"
        );
        assert_eq!(
            cluster.ledger.hold_status(*id).await.unwrap().as_deref(),
            Some("voided"),
            "the hold is voided"
        );
    }
    let counted = metric_value(&metrics, "baton_service_ledger_mismatches_total", &[]);
    assert!(
        counted >= 2.0,
        "every refused capture is counted: {counted}"
    );

    let shared = Ledger::open(&format!("sqlite://{}", cluster.ledger.location()))
        .await
        .unwrap();
    let own = Ledger::open(&other_url).await.unwrap();
    let (code, lines) = doctor(
        &prefix,
        AMQP_URL,
        &[
            "--workflow",
            &workflow_arg,
            "--journal-url",
            &cluster.journal_url,
        ],
    );
    let expected = format!(
        "✗ ledger: authorization uses ledger {} at {}, transaction uses ledger {} at {}: they \
         must share one database — give every service the same --ledger-url \
         (BATON_LEDGER_URL), an absolute sqlite path on a shared volume or one postgres://… \
         URL, and restart them",
        shared.id(),
        shared.location(),
        own.id(),
        own.location()
    );
    println!("{}", lines.join("\n"));
    assert_eq!(line_starting(&lines, "✗ ledger:"), expected);
    assert_eq!(code, 1);
    // The rest of the deployment is fine, and doctor says so.
    for start in [
        "✓ broker:",
        "✓ ping authorization:",
        "✓ ping transaction:",
        "✓ orchestrators:",
        "✓ journal writable:",
    ] {
        line_starting(&lines, start);
    }
    shared.close().await;
    own.close().await;
    drop(orchestrator);
    delete_fast_parking(&cluster).await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_a_sound_deployment_and_names_a_step_without_a_consumer() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    let orchestrator = cluster.orchestrator(None, 5).await;
    let prefix = cluster.names.prefix().to_owned();

    let (code, lines) = doctor(&prefix, AMQP_URL, &["--json"]);
    let report: serde_json::Value = serde_json::from_str(&lines.join("\n")).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(code, 0);
    let journal = &cluster.journal_url["sqlite://".len()..];
    let (_, lines) = doctor(&prefix, AMQP_URL, &[]);
    assert!(
        lines.iter().any(
            |l| l.starts_with("✓ journal: 1 orchestrator(s) record in journal")
                && l.ends_with(&format!(" at {journal}"))
        ),
        "{}",
        lines.join("\n")
    );

    let position = cluster
        .services
        .iter()
        .position(|s| s.kind() == ServiceKind::Pci)
        .unwrap();
    cluster.services.remove(position).shutdown().await.unwrap();
    let (code, lines) = doctor(&prefix, AMQP_URL, &[]);
    println!("{}", lines.join("\n"));
    assert_eq!(
        line_starting(&lines, &format!("✗ queue {prefix}.cmd.pci:")),
        format!(
            "✗ queue {prefix}.cmd.pci: no consumer: start the pci service (baton-pci --prefix \
             {prefix}, or --queue pci); commands wait there until one consumes them"
        )
    );
    assert_eq!(code, 1);
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("✗") && !l.contains(".cmd.pci")),
        "only the missing consumer fails:\n{}",
        lines.join("\n")
    );

    // A service that scales to zero waits with no consumer: that passes, and nothing
    // pings it.
    let (code, lines) = doctor(&prefix, AMQP_URL, &["--scaled-to-zero", "pci"]);
    assert_eq!(
        line_starting(&lines, &format!("✓ queue {prefix}.cmd.pci:")),
        format!(
            "✓ queue {prefix}.cmd.pci: no consumer now, 0 command(s) waiting: pci scales to \
             zero, a waiting command starts it"
        )
    );
    assert!(
        !lines.iter().any(|l| l.contains(" ping pci:")),
        "{}",
        lines.join("\n")
    );
    assert_eq!(code, 0, "{}", lines.join("\n"));
    // A name that is no service of the workflow is a typo: refused, never ignored.
    let (code, lines) = doctor(&prefix, AMQP_URL, &["--scaled-to-zero", "pci,sanctions"]);
    assert!(
        line_starting(&lines, "✗ scaled-to-zero sanctions: ").contains(
            "not a service of the workflow (its services: authorization, risk, pci, transaction)"
        ),
        "{}",
        lines.join("\n")
    );
    assert_eq!(code, 1);
    drop(orchestrator);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_orchestrators_that_run_different_workflows() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    let scratch = ScratchDir::new("doctor");
    let builtin = Workflow::builtin();
    // The default workflow with one timeout changed: same steps, different behaviour.
    let changed_text = include_str!("../../workflows/default.toml")
        .replace("timeout_ms = 2000", "timeout_ms = 2500");
    let changed = scratch.file("changed.toml", &changed_text);
    let changed_digest = Workflow::load(&changed).unwrap().digest();
    assert_ne!(changed_digest, builtin.digest());
    let first = cluster.orchestrator(None, 5).await;
    let second = cluster
        .orchestrator_with(None, 5, &["--workflow", &changed.display().to_string()])
        .await;
    let prefix = cluster.names.prefix().to_owned();

    let (code, lines) = doctor(&prefix, AMQP_URL, &[]);
    println!("{}", lines.join("\n"));
    let line = line_starting(&lines, "✗ orchestrators:");
    let start =
        format!("✗ orchestrators: {prefix}.requests is consumed with different workflows: ");
    assert!(line.starts_with(&start), "{line}");
    for digest in [builtin.digest(), changed_digest] {
        assert!(line.contains(&format!(" with workflow {digest}")), "{line}");
    }
    assert!(
        line.ends_with(&format!(
            "; every orchestrator of a prefix must run the same --workflow file (this one is \
             {}): restart the odd ones with it",
            builtin.digest()
        )),
        "{line}"
    );
    assert_eq!(code, 1);
    drop((first, second));
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_a_refused_login_not_a_broker_that_is_down() {
    let _broker = BROKER.read().await;
    let prefix = scratch_name("chaos");
    let url = "amqp://guest:not-the-password@127.0.0.1:5672/%2f";
    let (code, lines) = doctor(&prefix, url, &[]);
    assert_eq!(
        lines,
        [
            "✗ broker: cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:5672/%2f: the \
             broker refused the login of user guest (ACCESS_REFUSED); the broker is running: \
             check the user and password in AMQP_URL / --amqp-url (`baton broker setup` \
             writes them to its credentials file)",
            "1 of 1 checks failed",
        ]
    );
    assert_eq!(code, 1);
    assert!(lines.iter().all(|l| !l.contains("not-the-password")));

    // `baton run` says the same, in one line, and never "is it running?".
    let scratch = ScratchDir::new("doctor");
    let output = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["run", "--prefix", &prefix, "--http-addr", "off"])
        .args([
            "--journal-url",
            &format!("sqlite://{}", scratch.join("j.db").display()),
        ])
        .env("AMQP_URL", url)
        .env("RUST_LOG", "error,lapin=off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the broker refused the login of user guest (ACCESS_REFUSED)"),
        "{stderr}"
    );
    assert!(!stderr.contains("is it running"), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "{stderr}");
    assert!(!output.status.success());
}
