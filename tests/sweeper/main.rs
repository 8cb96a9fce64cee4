//! The sweeper, with real processes: a crash loop that passes the request queue's delivery
//! limit dead-letters a payment mid-saga, and a later orchestrator's sweeper finishes it —
//! one result, its hold voided, no saga left running.
//!
//! Its own test binary: the delivery limit (`BATON_DELIVERY_LIMIT`) is process-wide and
//! must be the same for every process that declares the queues (this one, whose client
//! and services declare them, and the orchestrators it spawns), and it is lowered here so
//! that the loop passes it in a few restarts instead of a hundred.

#[path = "../chaos/harness.rs"]
#[allow(dead_code)]
mod harness;

use baton::testcards::TestCard;
use baton_services::ServiceKind;
use baton_testkit::Exposition;
use harness::{Cluster, JournalStore};
use std::time::Duration;

/// Waits until the orchestrator works on a payment (its in-flight gauge says 1). A
/// separate process: its metrics are the only thing to watch.
async fn wait_in_flight(orchestrator: &harness::Orchestrator) -> bool {
    let in_flight = baton_testkit::poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let (status, metrics) = orchestrator.get("/metrics").await?;
            let in_flight = Exposition::parse(&metrics).get("baton_inflight_payments", &[]);
            (status == 200 && in_flight == Some(1.0)).then_some(())
        },
    )
    .await;
    in_flight.is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loop_past_the_delivery_limit_gets_one_result_and_its_hold_voided() {
    // The only test of this binary, set before anything declares a queue.
    std::env::set_var("BATON_DELIVERY_LIMIT", "2");
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    // Risk does not answer: the payment waits on it after authorization placed the hold.
    let risk = cluster
        .services
        .iter()
        .position(|s| s.queue() == cluster.names.command_queue(ServiceKind::Risk.name()))
        .unwrap();
    cluster.services.remove(risk).shutdown().await.unwrap();

    let lease = ["--saga-lease", "2s"];
    let ids = cluster.publish(&[TestCard::Good]).await;
    let (payment_id, _) = ids[0];
    let requests = cluster.names.requests_queue();
    let dead = cluster.names.dead_queue();
    let mut kills = 0;
    while cluster.depth(&dead).await == 0 {
        let mut orchestrator = cluster.orchestrator_with(None, 1, &lease).await;
        assert!(
            wait_in_flight(&orchestrator).await,
            "the payment was not redelivered; log: {}",
            orchestrator.log_text()
        );
        orchestrator.signal("KILL");
        orchestrator
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap();
        kills += 1;
        assert!(kills <= 6, "still redelivered after {kills} kills");
        // The broker returns the request when the connection drops; past the limit it
        // dead-letters it instead. Give it a moment to do either.
        for _ in 0..40 {
            if cluster.depth(&requests).await + cluster.depth(&dead).await > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(kills >= 2, "killed {kills} times");
    assert_eq!(cluster.depth(&requests).await, 0);
    assert_eq!(
        cluster.depth(&cluster.names.dead_queue()).await,
        1,
        "the request is dead-lettered past the limit"
    );
    assert_eq!(
        cluster
            .ledger
            .hold_status(payment_id)
            .await
            .unwrap()
            .as_deref(),
        Some("held"),
        "left mid-saga with its hold"
    );

    // Any orchestrator's sweeper finishes the saga once its lease ran out (risk is still
    // down: the open step is not sent, it is failed `abandoned`, the hold voided).
    let sweeper = cluster.orchestrator_with(None, 5, &lease).await;
    cluster
        .collect_from_results_queue(&ids, Duration::from_secs(60))
        .await;
    cluster
        .assert_abandoned_with_its_hold_voided(payment_id)
        .await;
    assert!(
        sweeper.log_contains("abandoned payment finished"),
        "{}",
        sweeper.log_text()
    );

    // The journal: nothing running, and the operators' tool agrees.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["sagas", "stuck", "--journal-url", &cluster.journal_url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("0 running, 0 whose lease ran out"),
        "{text}"
    );
    drop(sweeper);
    cluster.cleanup().await;
}
