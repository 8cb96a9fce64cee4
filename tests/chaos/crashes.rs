//! A crash at any named point, with payments in flight: a new process finishes every
//! payment, each with one outcome, funds moved at most once, the ledger balanced.

use crate::harness::{Cluster, JournalStore, BROKER};
use std::time::Duration;

async fn crash_and_recover(point: &str, nth: u32) {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    let mut doomed = cluster
        .orchestrator(Some(&format!("{point}:{nth}")), 30)
        .await;
    let ids = cluster.publish_mixed(200).await;

    let status = doomed
        .wait_exit(Duration::from_secs(120))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the orchestrator never reached {point}; log: {}",
                doomed.log_text()
            )
        });
    assert!(
        !status.success(),
        "it must have aborted at {point}, got {status}"
    );
    assert!(
        doomed.log_contains(&format!("aborting at {point}")),
        "{}",
        doomed.log_text()
    );

    let survivor = cluster.orchestrator(None, 30).await;
    cluster.collect(&ids, Duration::from_secs(180)).await;
    cluster.verify(&ids).await;
    drop(survivor);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_a_command_is_published() {
    crash_and_recover("after_command_published", 150).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_a_step_outcome_is_recorded() {
    crash_and_recover("after_step_recorded", 150).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_result_is_published_before_the_ack() {
    crash_and_recover("after_result_published", 60).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_in_the_middle_of_a_compensation() {
    crash_and_recover("mid_compensation", 5).await;
}
