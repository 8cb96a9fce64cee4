//! The broker goes away under load: connections closed, then the broker application
//! stopped and started. Everything reconnects and every payment completes once.

use crate::harness::{Cluster, JournalStore, BROKER};
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
    let orchestrator = cluster.orchestrator(None, 30);
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
    let (_, metrics) = orchestrator.get("/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("baton_broker_reconnects_total") && !l.ends_with(" 0")),
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
    let _broker = BROKER.write().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    let mut orchestrator = cluster.orchestrator(None, 30);
    let ids = cluster.publish_mixed(400).await;
    cluster.collect(&ids[..30], Duration::from_secs(60)).await;

    rabbitmqctl(&["stop_app"]);
    // While the broker is down the orchestrator says it is not ready.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut saw_not_ready = false;
    while std::time::Instant::now() < deadline {
        if let Some((503, _)) = orchestrator.get("/readyz") {
            saw_not_ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    assert!(
        saw_not_ready,
        "/readyz must say not ready while the broker is down"
    );
    orchestrator.wait_ready();

    // The client's own connection died with the broker: read the durable results queue.
    cluster
        .collect_from_results_queue(&ids, Duration::from_secs(300))
        .await;
    cluster.verify(&ids).await;
    drop(orchestrator);
    cluster.cleanup().await;
}
