//! A step whose service scales to zero (deploy/kubernetes: the sanctions step, KEDA
//! `minReplicaCount: 0`): its first command waits in the queue while no process consumes
//! it, the step's timeout, retries and parking carry the payment through, and once the
//! service starts (as KEDA would start its pod) the payment completes, slower, not failed.

use std::process::Command;
use std::time::{Duration, Instant};

use baton::broker::Role;
use baton::testcards::TestCard;
use baton_amqp as amqp;
use baton_contract::{Status, StepOutcome};
use lapin::options::QueueDeleteOptions;

use crate::harness::{service_users, Cluster, JournalStore, BROKER};
use baton_testkit::{depth, workspace_binary, Process, AMQP_URL};

/// The sanctions stand-in of deploy/kubernetes: the pci service on `cmd.pci-sanctions`.
const SERVICE: &str = "pci-sanctions";
const PARKING_MS: [u64; 3] = [300, 600, 1000];

/// The workflow: the four reference steps and a sanctions step with a short timeout,
/// two attempts, and parking enough for a cold start (ten parkings, about 8 s in all).
fn workflow() -> String {
    format!(
        "[parking]\ntiers_ms = {PARKING_MS:?}\nmax_parks = 10\n\n\
         [[steps]]\nname = \"authorization\"\ntimeout_ms = 5000\ncard = \"number\"\ncompensate = true\n\n\
         [[steps]]\nname = \"risk\"\ntimeout_ms = 2000\ncard = \"fingerprint\"\n\n\
         [[steps]]\nname = \"pci\"\ntimeout_ms = 2000\n\n\
         [[steps]]\nname = \"sanctions\"\nservice = \"{SERVICE}\"\ntimeout_ms = 300\n\
         retry = {{ attempts = 2, initial_backoff_ms = 50, max_backoff_ms = 100 }}\n\n\
         [[steps]]\nname = \"transaction\"\ntimeout_ms = 10000\nside_effects = true\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_start_of_a_scaled_to_zero_step_makes_the_payment_slower_not_failed() {
    let _broker = BROKER.read().await;
    let mut cluster = Cluster::new(JournalStore::Sqlite).await;
    let prefix = cluster.names.prefix().to_owned();
    let dir = baton_testkit::ScratchDir::new("cold-start");
    let workflow_file = dir.file("workflow.toml", &workflow());
    let users = format!(
        "{},{SERVICE}={}",
        service_users(&prefix),
        Role::Pci.user(&prefix)
    );
    let orchestrator = cluster
        .orchestrator_with(
            None,
            5,
            &[
                "--workflow",
                &workflow_file.display().to_string(),
                "--service-user",
                &users,
            ],
        )
        .await;

    let started = Instant::now();
    let ids = cluster.publish(&[TestCard::Good]).await;
    let payment_id = ids[0].0;

    // The command waits in the queue with nobody consuming it, and the step's ladder
    // has run out its attempts and parked the payment: the cold start is under way.
    let connection = amqp::connect(AMQP_URL, "cold start test", &amqp::TlsOptions::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = cluster.names.command_queue(SERVICE);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = depth(&channel, &queue).await;
        let parked = orchestrator
            .get(&format!("/payments/{payment_id}"))
            .await
            .and_then(|(status, body)| (status == 200).then_some(body))
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|record| record["parked"].as_u64())
            .unwrap_or(0);
        if waiting >= 1 && parked >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no command waiting in {queue} ({waiting}) and parked ({parked}) within 30 s; log: {}",
            orchestrator.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cluster.client.next_result(Duration::ZERO).await.is_none(),
        "no result while the step's service is down"
    );

    // The service starts, as KEDA starts its pod on the queue's depth.
    let mut command = Command::new(workspace_binary(env!("CARGO_BIN_EXE_baton"), "baton-pci"));
    command
        .env(
            "AMQP_URL",
            cluster
                .roles
                .amqp_url(Role::Pci, &cluster.broker.amqp)
                .expect("a password"),
        )
        .env("BATON_PREFIX", &prefix)
        .env("BATON_QUEUE", SERVICE)
        .env("BATON_ORCHESTRATOR_USERS", Role::Orchestrator.user(&prefix))
        .env("BATON_REQUIRE_VERIFIED_SENDERS", "true")
        .env("BATON_HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info");
    let service = Process::spawn("baton-pci", command, dir.join("pci-sanctions.log"));

    cluster.collect(&ids, Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    let result = &cluster.results[&payment_id][0];
    assert_eq!(result.status, Status::Completed, "{result:?}");
    let sanctions = result
        .steps
        .iter()
        .find(|s| s.step == "sanctions")
        .expect("the sanctions step ran");
    assert_eq!(sanctions.outcome, StepOutcome::Approved, "{result:?}");
    // Slower: at least the two timed-out attempts of the first visit.
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    cluster.verify(&ids).await;
    // Every duplicate command the cold start left behind was answered (and the late
    // replies dropped): nothing is left waiting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while depth(&channel, &queue).await > 0 {
        assert!(Instant::now() < deadline, "commands left in {queue}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stopped first: a running service declares its queue (and the dead-letter queue)
    // again when its consumer is cancelled by the delete.
    drop(service);
    for queue in
        std::iter::once(queue).chain(PARKING_MS.iter().map(|ms| cluster.names.retry_queue(*ms)))
    {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
    drop(orchestrator);
    cluster.cleanup().await;
}
