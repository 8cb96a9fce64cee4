//! The broker goes away under load: connections closed (on the shared broker), then a
//! broker of the test's own stopped and started, under load and with payments parked in
//! the retry tiers. Everything reconnects and every payment gets one result.

use crate::harness::{Cluster, JournalStore, BROKER};
use crate::node::RabbitNode;
use baton::testcards::TestCard;
use baton_contract::Status;
use baton_services::{Faults, ServiceKind};
use baton_testkit::Exposition;
use std::process::Command;
use std::time::Duration;

fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Closes every connection whose name mentions `prefix` (orchestrator and services; the
/// test's own client connection is named without it and stays).
fn close_connections_of(prefix: &str) -> usize {
    // The name Baton gives a connection is in its client properties.
    let listing = rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"]);
    let mut closed = 0;
    for line in listing.lines() {
        let Some((pid, properties)) = line.split_once('\t') else {
            continue;
        };
        if properties.contains(prefix) {
            // The connection may be gone already; that is fine.
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "close_connection", pid, "chaos test"])
                .output();
            closed += 1;
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_connections_under_load_reconnect_and_every_payment_completes_once() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    let orchestrator = cluster.orchestrator(None, 30).await;
    let ids = cluster.publish_mixed(600).await;
    cluster.collect(&ids[..50], Duration::from_secs(60)).await;
    let closed = close_connections_of(cluster.names.prefix());
    assert!(
        closed >= 5,
        "orchestrator and four services: closed {closed} of {}",
        rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"])
    );

    cluster.collect(&ids, Duration::from_secs(240)).await;
    cluster.verify(&ids).await;
    // Every payment may have been answered before the connections were closed: the
    // reconnects then happen after the last result. Watch for them, bounded (the
    // orchestrator is another process: its metrics are the only thing to watch).
    let reconnected =
        |metrics: &str| Exposition::parse(metrics).sum("baton_broker_reconnects_total") > 0.0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut metrics = String::new();
    while std::time::Instant::now() < deadline {
        metrics = orchestrator
            .get("/metrics")
            .await
            .map(|(_, m)| m)
            .unwrap_or_default();
        if reconnected(&metrics) && cluster.services.iter().all(|s| s.health().reconnects >= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reconnected(&metrics),
        "the orchestrator counted its reconnect: {}",
        metrics
            .lines()
            .filter(|l| l.contains("reconnects"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    for service in &cluster.services {
        assert!(
            service.health().reconnects >= 1,
            "{} reconnected",
            service.kind().name()
        );
    }
    drop(orchestrator);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_under_load_loses_nothing_and_readiness_follows_it() {
    // A node of our own: stopping the shared one would fail every other test running.
    let node = RabbitNode::with_management("restart");
    let mut cluster = Cluster::on(node.addr(), JournalStore::Sqlite).await;
    let mut orchestrator = cluster.orchestrator(None, 30).await;
    let ids = cluster.publish_mixed(400).await;
    cluster.collect(&ids[..30], Duration::from_secs(60)).await;

    let stopped = node.ctl(&["stop_app"]);
    assert!(stopped.status.success(), "stop_app: {stopped:?}");
    // While the broker is down the orchestrator says it is not ready.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut saw_not_ready = false;
    while std::time::Instant::now() < deadline {
        if let Some((503, _)) = orchestrator.get("/readyz").await {
            saw_not_ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for args in [&["start_app"][..], &["await_startup"][..]] {
        let done = node.ctl(args);
        assert!(done.status.success(), "{args:?}: {done:?}");
    }
    assert!(
        saw_not_ready,
        "/readyz must say not ready while the broker is down"
    );
    orchestrator.wait_ready().await;

    // The client's own connection died with the broker: read the durable results queue.
    cluster
        .collect_from_results_queue(&ids, Duration::from_secs(300))
        .await;
    cluster.verify(&ids).await;
    drop(orchestrator);
    cluster.cleanup().await;
}

/// A workflow whose risk step gives up at once and parks the payment for `park_ms`, as
/// often as it takes.
fn parking_workflow(park_ms: u64) -> String {
    format!(
        "[parking]\ntiers_ms = [{park_ms}]\nmax_parks = 50\n\n\
         [[steps]]\nname = \"authorization\"\ntimeout_ms = 5000\ncard = \"number\"\ncompensate = true\n\n\
         [[steps]]\nname = \"risk\"\ntimeout_ms = 1000\ncard = \"fingerprint\"\n\
         retry = {{ attempts = 1 }}\nbreaker = {{ failure_threshold = 1000 }}\n\n\
         [[steps]]\nname = \"pci\"\ntimeout_ms = 2000\n\n\
         [[steps]]\nname = \"transaction\"\ntimeout_ms = 10000\nside_effects = true\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn payments_parked_across_a_broker_restart_each_complete_once() {
    const PARK_MS: u64 = 3000;
    let node = RabbitNode::with_management("parked");
    let mut cluster = Cluster::on(node.addr(), JournalStore::Sqlite).await;
    let workflow = cluster.dir.join("parking.toml");
    std::fs::write(&workflow, parking_workflow(PARK_MS)).unwrap();
    cluster.parking_delays_ms = vec![PARK_MS];
    let risk = cluster
        .services
        .iter()
        .position(|s| s.kind() == ServiceKind::Risk)
        .unwrap();
    cluster.services[risk]
        .set_faults(Faults {
            fail_rate: 1.0,
            ..Faults::default()
        })
        .unwrap();
    let orchestrator = cluster
        .orchestrator_with(None, 30, &["--workflow", &workflow.display().to_string()])
        .await;
    let ids = cluster.publish(&[TestCard::Good; 40]).await;

    // Every payment authorized and parked once (bounded: no event across processes).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = orchestrator.get("/metrics").await.expect("metrics");
        if Exposition::parse(&metrics).sum("baton_parked_total") >= ids.len() as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "payments not parked: {}",
            orchestrator.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The whole node goes down with payments parked. Their delay runs out while it is
    // down (a stop and a boot take longer than PARK_MS), so RabbitMQ dead-letters them
    // back to the requests queue while the node's queues are still coming up: the moment
    // at-most-once dead-lettering drops a message whose target is not ready.
    let stopped_at = std::time::Instant::now();
    node.stop();
    let down = Duration::from_millis(PARK_MS) + Duration::from_secs(1);
    if let Some(left) = down.checked_sub(stopped_at.elapsed()) {
        // Only when the stop itself was faster than the delay: the point is that the
        // delay passes with the node down.
        std::thread::sleep(left);
    }
    node.boot();
    cluster.services[risk]
        .set_faults(Faults::default())
        .unwrap();

    cluster
        .collect_from_results_queue(&ids, Duration::from_secs(240))
        .await;
    // Every payment has a result (none was lost in the dead-lettering), one decision
    // (`verify`: every copy of a payment's result is the same recorded result, and the
    // money moved once), and it completed. A payment may get its result more than once:
    // dead-lettering is at-least-once, and a request whose ack the stopping node did not
    // keep is delivered again, so two deliveries can each publish the recorded result
    // (seen once in CI on a loaded machine: two identical copies, the same
    // `finished_at`).
    cluster.verify(&ids).await;
    for (id, _) in &ids {
        assert_eq!(cluster.results[id][0].status, Status::Completed, "{id}");
    }
    drop(orchestrator);
    cluster.cleanup().await;
}
