//! No payment left without a result, with real `baton run` processes: a restart with a
//! lower amount limit while a payment is parked, and a rejection whose client is gone.

use crate::harness::{Cluster, JournalStore, BROKER};
use baton::testcards::TestCard;
use baton_amqp::publish_confirmed;
use baton_services::ServiceKind;
use baton_testkit::{poll, Exposition};
use lapin::BasicProperties;
use std::time::Duration;

/// Risk is given little patience, so a payment parks soon after authorization.
const WORKFLOW: &str = r#"
[parking]
tiers_ms = [500]
max_parks = 100
[[steps]]
name = "authorization"
timeout_ms = 5000
card = "number"
compensate = true
[[steps]]
name = "risk"
timeout_ms = 300
retry = { attempts = 1 }
card = "fingerprint"
[[steps]]
name = "pci"
timeout_ms = 2000
[[steps]]
name = "transaction"
timeout_ms = 5000
side_effects = true
"#;

fn stop_risk(cluster: &mut Cluster) -> baton_services::RunningService {
    let queue = cluster.names.command_queue(ServiceKind::Risk.name());
    let at = cluster
        .services
        .iter()
        .position(|s| s.queue() == queue)
        .unwrap();
    cluster.services.remove(at)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_with_a_lower_limit_while_parked_gives_one_result_and_voids_the_hold() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    stop_risk(&mut cluster).shutdown().await.unwrap();
    let workflow = cluster.dir.file("workflow.toml", WORKFLOW);
    let workflow_arg = workflow.display().to_string();

    let first = cluster
        .orchestrator_with(None, 5, &["--workflow", &workflow_arg])
        .await;
    let ids = cluster.publish(&[TestCard::Good]).await;
    let (payment_id, _) = ids[0];
    // Parked (its hold placed): the orchestrator's own view of the payment says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, body)) = first.get(&format!("/payments/{payment_id}")).await {
            let record: serde_json::Value = serde_json::from_str(&body).unwrap();
            if record["parked"].as_u64().unwrap_or(0) >= 1 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never parked: {}",
            first.log_text()
        );
        // Another process: its HTTP answer is the only thing to watch.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cluster
            .ledger
            .hold_status(payment_id)
            .await
            .unwrap()
            .as_deref(),
        Some("held")
    );
    let mut first = first;
    first.signal("TERM");
    assert!(first
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap()
        .success());

    // The amount (1999) is now over the limit: the parked request comes back invalid.
    let second = cluster
        .orchestrator_with(
            None,
            5,
            &["--workflow", &workflow_arg, "--max-amount-minor", "1000"],
        )
        .await;
    cluster.collect(&ids, Duration::from_secs(60)).await;
    cluster
        .assert_abandoned_with_its_hold_voided(payment_id)
        .await;
    let (_, body) = second
        .get(&format!("/payments/{payment_id}"))
        .await
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        record["result"]["reason"], "abandoned",
        "the journal's result: {body}"
    );
    // The copy for operators is published after the result.
    let dead = cluster.names.dead_queue();
    cluster
        .wait_for_a_message_in(&dead, Duration::from_secs(20))
        .await;
    drop(second);
    assert_eq!(
        cluster.depth(&dead).await,
        1,
        "one copy of the request, now invalid"
    );
    // The cleanup knows the built-in parking tiers only.
    cluster
        .client
        .publisher()
        .channel()
        .queue_delete(
            cluster.names.retry_queue(500).as_str().into(),
            Default::default(),
        )
        .await
        .unwrap();
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_whose_client_is_gone_gives_one_dead_letter_not_one_per_redelivery() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    let mut orchestrator = cluster.orchestrator(None, 5).await;
    let channel = cluster.client.publisher().channel().clone();
    let payment_id = uuid::Uuid::new_v4();
    let mut request = TestCard::Good.request_with_id(payment_id);
    request["amount"]["minor"] = serde_json::json!(-5);
    let gone = format!("{}.client-that-left", cluster.names.prefix());
    publish_confirmed(
        &channel,
        &cluster.names.payments_exchange(),
        cluster.names.request_routing_key(),
        &serde_json::to_vec(&request).unwrap(),
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(gone.as_str().into())
            .with_correlation_id(payment_id.to_string().as_str().into()),
    )
    .await
    .unwrap();
    let dead = cluster.names.dead_queue();
    cluster
        .wait_for_a_message_in(&dead, Duration::from_secs(20))
        .await;
    let counted = poll(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let (_, metrics) = orchestrator.get("/metrics").await?;
            let unroutable =
                Exposition::parse(&metrics).get("baton_client_replies_unroutable_total", &[]);
            (unroutable == Some(1.0)).then_some(())
        },
    )
    .await;
    assert!(counted.is_some(), "{}", orchestrator.log_text());
    // Stopping returns anything unacked to the queue: nothing is, and nothing more came.
    orchestrator.signal("TERM");
    assert!(orchestrator
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap()
        .success());
    assert_eq!(cluster.depth(&cluster.names.requests_queue()).await, 0);
    assert_eq!(cluster.depth(&dead).await, 1, "one dead letter");
    cluster.cleanup().await;
}

/// After an outage longer than the saga lease, the requests of the crashed replica's
/// sagas are back in the queue: the next orchestrator resumes them (each payment its
/// card's documented result), its sweeper does not abandon them.
#[tokio::test(flavor = "multi_thread")]
async fn sagas_whose_requests_come_back_after_their_lease_are_resumed_not_abandoned() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    let mut doomed = cluster
        .orchestrator_with(Some("after_step_recorded:20"), 5, &["--saga-lease", "3s"])
        .await;
    let ids = cluster.publish_mixed(30).await;
    let status = doomed
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("it aborts at its crash point");
    assert!(!status.success());
    // Nobody drives the begun sagas for longer than their lease: the lease running out
    // is the behaviour under test, so time passing is what the test waits for.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // One payment at a time: the others wait in the queue with expired leases while the
    // survivor's sweeper looks every 600 ms (a fifth of the lease). With requests waiting
    // it takes only sagas overdue by four leases (12 s), more than this backlog lasts.
    let survivor = cluster
        .orchestrator_with(None, 5, &["--saga-lease", "3s", "--concurrency", "1"])
        .await;
    cluster.collect(&ids, Duration::from_secs(120)).await;
    // Each payment has its card's result: none was failed `abandoned`.
    cluster.verify(&ids).await;
    assert!(
        !survivor.log_contains("abandoned payment finished"),
        "{}",
        survivor.log_text()
    );
    drop(survivor);
    cluster.cleanup().await;
}
