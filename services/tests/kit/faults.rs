//! Fault injection: failing, slow and black-holed services, set at start and changed while
//! running.

use crate::helpers::{command, Client, Scratch};
use baton_contract::ReplyOutcome;
use baton_services::{start, Faults, Ledger, ServiceConfig, ServiceKind};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_have_no_effect_and_faults_change_while_running() {
    let scratch = Scratch::new();
    let config = ServiceConfig {
        faults: Faults {
            fail_rate: 1.0,
            ..Faults::default()
        },
        ..scratch.config()
    };
    let service = start(ServiceKind::Authorization, config).await.unwrap();
    let queue = scratch.queue(ServiceKind::Authorization);
    let mut client = Client::connect().await;

    // Every command fails, transiently, and nothing is stored: no hold, and the same
    // command succeeds once the fault is gone.
    let failing = command(ServiceKind::Authorization);
    let reply = client.ask(&queue, &failing).await;
    assert_eq!(reply.outcome, ReplyOutcome::Error, "{reply:?}");
    assert_eq!(reply.reason.as_deref(), Some("injected_fault"));
    let ledger = Ledger::open(&scratch.ledger_url()).await.unwrap();
    assert_eq!(ledger.holds_for(failing.payment_id).await.unwrap(), 0);

    // A black hole takes the command and never answers...
    service
        .set_faults(Faults {
            blackhole: true,
            ..Faults::default()
        })
        .unwrap();
    let lost = command(ServiceKind::Authorization);
    client.send(&queue, &lost, None).await;
    // A negative check needs a window; a real reply comes in milliseconds.
    assert_eq!(client.reply_within(Duration::from_millis(700)).await, None);

    // ...then the service comes back, slow: the orchestrator's retry gets its answer.
    let latency = Duration::from_millis(300);
    service
        .set_faults(Faults {
            latency,
            ..Faults::default()
        })
        .unwrap();
    let asked = Instant::now();
    let reply = client.ask(&queue, &lost).await;
    assert!(asked.elapsed() >= latency, "{:?}", asked.elapsed());
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    service.set_faults(Faults::default()).unwrap();
    let reply = client.ask(&queue, &failing).await;
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    assert!(service
        .set_faults(Faults {
            fail_rate: 1.5,
            ..Faults::default()
        })
        .is_err());

    service.shutdown().await.unwrap();
    // The black-holed command was acked, not left for redelivery: the queue is empty
    // after the consumer is gone.
    let depth = client
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(depth, 0);
    for payment in [&failing, &lost] {
        assert_eq!(ledger.holds_for(payment.payment_id).await.unwrap(), 1);
    }
    ledger.close().await;
    client.clean_up(&scratch.names, &["authorization"]).await;
}

#[tokio::test]
async fn a_fail_rate_outside_zero_to_one_is_refused_at_start() {
    let scratch = Scratch::new();
    let config = ServiceConfig {
        faults: Faults {
            fail_rate: -0.5,
            ..Faults::default()
        },
        ..scratch.config()
    };
    let error = start(ServiceKind::Risk, config).await.unwrap_err();
    assert!(error.to_string().contains("0 to 1"), "{error:#}");
}
