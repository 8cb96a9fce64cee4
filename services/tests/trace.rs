//! A service's log lines carry the trace id of the command's `traceparent`, so one
//! payment can be followed across the services' logs. Its own test binary: it installs
//! a process-wide log subscriber that captures the output.

// Shared with the kit tests; this binary uses only part of it.
#[allow(dead_code)]
#[path = "kit/helpers.rs"]
mod helpers;

use baton_contract::ReplyOutcome;
use baton_services::{start, ServiceKind};
use helpers::{command, Client, Scratch, DEADLINE};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Collects every log line written.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_the_trace_id() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("baton_services=info,baton_worker=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let scratch = Scratch::new();
    let service = start(ServiceKind::Risk, scratch.config()).await.unwrap();
    let queue = scratch.queue(ServiceKind::Risk);
    let mut client = Client::connect().await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let sent = command(ServiceKind::Risk);
    client
        .send(
            &queue,
            &sent,
            Some(&format!("00-{trace_id}-b7ad6b7169203331-01")),
        )
        .await;
    let reply = client.reply_within(DEADLINE).await.expect("a reply");
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    service.shutdown().await.unwrap();
    client.clean_up(&scratch.names, &["risk"]).await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let handled = logs
        .lines()
        .find(|line| line.contains("handled") && line.contains(&sent.payment_id.to_string()))
        .unwrap_or_else(|| panic!("no `handled` line for the payment in:\n{logs}"));
    assert!(
        handled.contains(&format!("trace_id={trace_id}")),
        "{handled}"
    );
    assert!(
        !logs.contains("4242424242424242"),
        "a card number reached the log"
    );
}
