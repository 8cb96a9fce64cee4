//! The operators' tools through the real `baton` binary, against the real broker and an
//! in-process pipeline, by topic: `baton dead list|show|replay|drop` (`dead`), their
//! masking of card numbers (`masking`), keys, order and operators at once (`keys`),
//! `baton attention list|show|replay` (`attention`), `baton status` (text and `--json`)
//! and `GET /payments/<id>` on the orchestrator's HTTP port (`status`).

mod attention;
mod dead;
mod keys;
mod masking;
mod status;

use crate::app::{spawn_services, Store, TestApp};
use baton::broker::Role;
use baton::testcards::TestCard;
use baton::workflow::Workflow;
use baton_amqp as amqp;
use baton_contract::headers;
use baton_services::{Faults, ServiceConfig, ServiceKind};
use uuid::Uuid;

/// What a run of the binary gave.
pub(super) struct Run {
    pub(super) code: i32,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

/// `baton --amqp-url … --prefix <app's> <args>` as the operator, logging warnings only.
pub(super) fn operator_command(app: &TestApp, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .args([
            "--amqp-url",
            &app.url_of(Role::Operator),
            "--prefix",
            app.names.prefix(),
        ])
        .args(args)
        .env("RUST_LOG", "warn");
    command
}

/// Runs `baton --amqp-url … --prefix <app's> <args>`. On a blocking thread: the
/// in-process services must keep answering while the tool waits (attention replay).
pub(super) async fn baton(app: &TestApp, args: &[&str]) -> Run {
    let output = baton_testkit::output(operator_command(app, args)).await;
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Short timeouts, backoffs and parking, so failures play out in about a second.
const FAST_WORKFLOW: &str = r#"
[defaults]
retry = { attempts = 2, initial_backoff_ms = 20, max_backoff_ms = 80 }
breaker = { failure_threshold = 5, window_ms = 10000, open_ms = 500 }

[parking]
tiers_ms = [300]
max_parks = 1

[[steps]]
name = "authorization"
timeout_ms = 5000
card = "number"
compensate = true
compensation_retry = { attempts = 2, initial_backoff_ms = 20, max_backoff_ms = 80 }

[[steps]]
name = "risk"
timeout_ms = 300
card = "fingerprint"

[[steps]]
name = "pci"
timeout_ms = 5000

[[steps]]
name = "transaction"
timeout_ms = 5000
side_effects = true
"#;

/// The four services (with `faults` on `faulty`) and an orchestrator on FAST_WORKFLOW.
pub(super) async fn fast_app(faulty: ServiceKind, faults: Faults) -> TestApp {
    let mut app = spawn_services(Store::Sqlite, &[]).await;
    for kind in ServiceKind::ALL {
        let config = ServiceConfig {
            faults: if kind == faulty {
                faults
            } else {
                Faults::default()
            },
            ..app.service_config_for(kind)
        };
        app.start_service_with(kind, config).await;
    }
    let mut settings = app.orchestrator_settings();
    settings.workflow = Workflow::parse(FAST_WORKFLOW, "operator test").unwrap();
    app.start_orchestrator(settings).await;
    app
}

/// The rows of a listing, in order: (key, the whole line).
pub(super) fn rows(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            let key = line.split_whitespace().next()?;
            baton::tools::is_key(key).then(|| (key.to_owned(), line.to_owned()))
        })
        .collect()
}

/// The rows of a listing that name `payment_id`.
pub(super) fn rows_of(stdout: &str, payment_id: Uuid) -> Vec<(String, String)> {
    rows(stdout)
        .into_iter()
        .filter(|(_, line)| line.contains(&payment_id.to_string()))
        .collect()
}

/// The key `list` gives the one message of `payment_id`.
pub(super) fn key_of(stdout: &str, payment_id: Uuid) -> String {
    let found = rows_of(stdout, payment_id);
    assert_eq!(found.len(), 1, "one row for {payment_id}: {stdout}");
    found[0].0.clone()
}

/// Publishes a request as Baton dead-letters one it refused.
pub(super) async fn dead_letter(app: &TestApp, payment_id: Uuid) -> Vec<u8> {
    let body = serde_json::to_vec(&TestCard::Good.request_with_id(payment_id)).unwrap();
    let properties = amqp::json_properties(&[
        (headers::REASON, "invalid_request"),
        (headers::DETAIL, "amount.minor: must be a positive integer"),
    ])
    .with_message_id(payment_id.to_string().into());
    amqp::publish_confirmed(
        app.client.publisher().channel(),
        "",
        &app.names.dead_queue(),
        &body,
        properties,
    )
    .await
    .unwrap();
    body
}

/// The dead queue's order, as the broker holds it: the payment id of each message.
pub(super) async fn order_of(app: &TestApp, queue: &str) -> Vec<Uuid> {
    let taken = app.take_all(queue).await;
    taken
        .iter()
        .map(|(_, body)| baton_contract::PaymentRequest::sniff_payment_id(body).expect("an id"))
        .collect()
}
