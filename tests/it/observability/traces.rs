//! One `traceparent` followed through the logs of five processes: the orchestrator and
//! the four service binaries, each logging its part with the payment id.

use crate::app::{spawn_services, Store, RESULT_WAIT};
use baton::testcards::TestCard;
use baton_amqp as amqp;
use baton_contract::Status;
use baton_services::ServiceKind;
use baton_testkit::{
    amqp_url, scratch_hex, tail, workspace_binary, Process, ScratchDir, READY_WAIT,
};
use futures_lite::StreamExt;
use lapin::types::AMQPValue;
use std::path::PathBuf;
use std::process::Command;
use tokio::time::Instant;
use uuid::Uuid;

/// Processes killed on drop (also when the test fails half-way).
#[derive(Default)]
struct Processes(Vec<Process>);

impl Processes {
    fn spawn(&mut self, name: &str, mut command: Command, log: PathBuf) {
        command
            .env("AMQP_URL", amqp_url())
            .env("RUST_LOG", "info")
            .env("BATON_LOG_FORMAT", "text")
            .env_remove("BATON_CRASH_AT")
            .env_remove("BATON_HTTP_ADDR");
        self.0.push(Process::spawn(name, command, log));
    }

    /// Waits until each process has logged its HTTP address and answers `/readyz` with
    /// 200, all within a minute (there is no event across processes: the log and the
    /// port are polled, bounded).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WAIT;
        for process in &mut self.0 {
            let left = deadline.saturating_duration_since(Instant::now());
            process.wait_logged_ready(left).await;
        }
    }
}

#[tokio::test]
async fn one_traceparent_is_in_the_logs_of_the_orchestrator_and_all_four_services() {
    let mut app = spawn_services(Store::Sqlite, &[]).await;
    let dir = ScratchDir::new("trace");
    let prefix = app.names.prefix().to_owned();

    // One card key file for risk and `baton run`, as in production.
    baton_contract::CardKeys::load_or_create(&dir.join("card.key")).unwrap();
    let card_key_file = dir.join("card.key").display().to_string();
    let mut processes = Processes::default();
    for kind in ServiceKind::ALL {
        let binary = format!("baton-{}", kind.name());
        let mut command = Command::new(workspace_binary(env!("CARGO_BIN_EXE_baton"), &binary));
        command.args(["--prefix", &prefix, "--http-addr", "127.0.0.1:0"]);
        if kind.uses_ledger() {
            command.args(["--ledger-url", &app.ledger_url]);
        }
        if kind == ServiceKind::Risk {
            command.args(["--card-key-file", &card_key_file]);
        }
        processes.spawn(&binary, command, dir.join(format!("{binary}.log")));
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command.args(["run", "--prefix", &prefix, "--http-addr", "127.0.0.1:0"]);
    command.args(["--journal-url", &app.journal_url]);
    command.args(["--card-key-file", &card_key_file]);
    processes.spawn("baton run", command, dir.join("baton.log"));
    processes.wait_ready().await;

    // Results of this prefix, with their headers, on a queue of our own.
    let (connection, mut results) = app.listen("result.*").await;

    // Hexadecimal, as a traceparent's ids are, and never masked in a log.
    let trace_id = scratch_hex(32);
    let span_id = scratch_hex(16);
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    let payment_id = Uuid::new_v4();
    let correlation = payment_id.to_string();
    let publisher = app.client.publisher();
    let properties = publisher.request_properties(&correlation);
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(traceparent.as_str().into()),
    );
    let body = serde_json::to_vec(&TestCard::Good.request_with_id(payment_id)).unwrap();
    amqp::publish_confirmed(
        publisher.channel(),
        &app.names.payments_exchange(),
        app.names.request_routing_key(),
        &body,
        properties.with_headers(headers),
    )
    .await
    .expect("publish the request");

    let received = app.result_for(&correlation).await;
    let result = received.result.expect("a well-formed result");
    assert_eq!(
        (result.payment_id, result.status),
        (payment_id, Status::Completed)
    );
    // The result carries the request's traceparent.
    let delivery = tokio::time::timeout(RESULT_WAIT, results.next())
        .await
        .expect("the result on the bound queue")
        .expect("consuming")
        .expect("a delivery");
    assert_eq!(
        amqp::header_text(&delivery.properties, "traceparent").as_deref(),
        Some(traceparent.as_str()),
        "the result's traceparent header"
    );

    // Each process logged its part before the result existed (a service before
    // replying, the orchestrator before publishing), so the logs are complete now.
    for process in &processes.0 {
        let (name, text) = (&process.name, process.log_all());
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&trace_id)).collect();
        assert!(
            !lines.is_empty(),
            "trace id {trace_id} not in the log of {name}:\n{}",
            tail(&text)
        );
        assert!(
            lines.iter().any(|l| l.contains(&correlation)),
            "{name}: the trace id comes with the payment id: {lines:?}"
        );
        assert!(
            !text.contains("4242424242424242"),
            "{name} logged a card number"
        );
    }
    drop(processes);
    let _ = connection.close(200, "done".into()).await;
    app.cleanup().await;
}
