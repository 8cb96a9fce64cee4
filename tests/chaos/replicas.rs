//! Several orchestrator processes on one PostgreSQL journal; requests that wait for an
//! orchestrator; graceful shutdown; one payment delivered to two replicas at once.

use crate::harness::{Cluster, JournalStore, BROKER};
use baton::testcards::TestCard;
use baton_testkit::Exposition;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_one_killed_mid_run_every_payment_completes_once() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Postgres).await;
    // 32 payments in flight per replica: what the in-process services on this machine's
    // two cores answer within the authorization step's 5 s timeout. At the default 256
    // per replica (768 at once) authorization's queue outgrows its timeout, retries and
    // parkings pile up and payments take longer than this test's windows: an overload
    // test, not the failover this one is about.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(
            cluster
                .orchestrator_with(None, 30, &["--concurrency", "32"])
                .await,
        );
    }
    let ids = cluster.publish_mixed(2000).await;

    // Kill one with SIGKILL once results are flowing.
    let (first, rest) = ids.split_at(300);
    cluster.collect(first, Duration::from_secs(120)).await;
    replicas[0].child.kill().unwrap();
    replicas[0].child.wait().unwrap();
    let _ = rest;

    cluster.collect(&ids, Duration::from_secs(300)).await;
    cluster.verify(&ids).await;
    // The two survivors both took part.
    for survivor in &replicas[1..] {
        let (_, metrics) = survivor.get("/metrics").await.expect("metrics");
        let received = Exposition::parse(&metrics).sum("baton_payments_received_total");
        assert!(received > 0.0, "every replica takes its share");
    }
    drop(replicas);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_wait_in_the_queue_while_no_orchestrator_runs() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    let ids = cluster.publish_mixed(1000).await;
    let waiting = cluster.depth(&cluster.names.requests_queue()).await;
    assert_eq!(waiting, 1000, "all requests wait, none lost");
    let orchestrator = cluster.orchestrator(None, 30).await;
    cluster.collect(&ids, Duration::from_secs(300)).await;
    cluster.verify(&ids).await;
    drop(orchestrator);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_payments_and_exits_zero() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    let mut first = cluster.orchestrator(None, 10).await;
    let ids = cluster.publish_mixed(400).await;
    cluster.collect(&ids[..20], Duration::from_secs(60)).await;

    let signalled = Instant::now();
    first.signal("TERM");
    let status = first
        .wait_exit(Duration::from_secs(25))
        .await
        .expect("exits within the deadline");
    assert!(
        status.success(),
        "exit 0 after SIGTERM, got {status}; log: {}",
        first.log_text()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "within the 10 s deadline (plus start-up slack)"
    );
    assert!(first.log_contains("shutting down"), "{}", first.log_text());

    // Whatever it did not take or finish is still in the queue for the next one.
    let next = cluster.orchestrator(None, 10).await;
    cluster.collect(&ids, Duration::from_secs(180)).await;
    cluster.verify(&ids).await;
    drop(next);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_payment_at_two_replicas_at_once_has_one_effect() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Postgres).await;
    let a = cluster.orchestrator(None, 30).await;
    let b = cluster.orchestrator(None, 30).await;
    let publisher = cluster.client.publisher();
    let mut ids = Vec::new();
    // Many pairs, so that some pairs really are taken by both replicas at once.
    for _ in 0..50 {
        let id = Uuid::new_v4();
        let body = serde_json::to_vec(&TestCard::Good.request_with_id(id)).unwrap();
        let correlation = id.to_string();
        let (x, y) = tokio::join!(
            publisher.publish(&body, &correlation),
            publisher.publish(&body, &correlation)
        );
        x.unwrap();
        y.unwrap();
        ids.push((id, TestCard::Good));
    }
    cluster.collect(&ids, Duration::from_secs(120)).await;
    // Both deliveries of each payment are answered, with the same recorded result.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ids.iter().any(|(id, _)| cluster.results[id].len() < 2) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let received = cluster
            .client
            .next_result(left)
            .await
            .expect("a second result for each");
        if let Some(result) = received.result {
            cluster
                .results
                .entry(result.payment_id)
                .or_default()
                .push(result);
        }
    }
    cluster.verify(&ids).await;
    drop((a, b));
    cluster.cleanup().await;
}
