//! The operators' tools through the real `baton` binary, against the real broker and an
//! in-process pipeline: `baton dead list|show|replay`, `baton attention list|show|replay`,
//! `baton status` (text and `--json`), and `GET /payments/<id>` on the orchestrator's
//! HTTP port.

use crate::app::{spawn_app, spawn_services, Store, TestApp};
use baton::broker::Role;
use baton::testcards::TestCard;
use baton::workflow::Workflow;
use baton_amqp as amqp;
use baton_contract::{headers, Status, StepOutcome};
use baton_services::{Faults, ServiceConfig, ServiceKind};
use baton_testkit::http_get;
use serde_json::Value;
use uuid::Uuid;

/// What a run of the binary gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `baton --amqp-url … --prefix <app's> <args>`. On a blocking thread: the
/// in-process services must keep answering while the tool waits (attention replay).
async fn baton(app: &TestApp, args: &[&str]) -> Run {
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
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run the baton binary");
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
async fn fast_app(faulty: ServiceKind, faults: Faults) -> TestApp {
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
fn rows(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            let key = line.split_whitespace().next()?;
            (key.len() == 12 && key.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| (key.to_owned(), line.to_owned()))
        })
        .collect()
}

/// The rows of a listing that name `payment_id`.
fn rows_of(stdout: &str, payment_id: Uuid) -> Vec<(String, String)> {
    rows(stdout)
        .into_iter()
        .filter(|(_, line)| line.contains(&payment_id.to_string()))
        .collect()
}

/// The key `list` gives the one message of `payment_id`.
fn key_of(stdout: &str, payment_id: Uuid) -> String {
    let found = rows_of(stdout, payment_id);
    assert_eq!(found.len(), 1, "one row for {payment_id}: {stdout}");
    found[0].0.clone()
}

/// Publishes a request as Baton dead-letters one it refused.
async fn dead_letter(app: &TestApp, payment_id: Uuid) -> Vec<u8> {
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

/// Plays a consumer in a crash loop on `queue`: every delivery is given back
/// (`basic.nack` with requeue, which RabbitMQ counts like a closed channel) until the
/// quorum queue's delivery limit dead-letters the one message there.
async fn crash_loop(app: &TestApp, queue: &str) {
    use futures_lite::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicNackOptions};
    use lapin::types::AMQPValue;
    let channel = app.client.publisher().channel().clone();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "crash-loop".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    loop {
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(30), consumer.next())
            .await
            .expect("a delivery within 30 s")
            .expect("the consumer goes on")
            .expect("a delivery");
        let count = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
        if matches!(count, Some(AMQPValue::LongLongInt(n)) if n >= amqp::delivery_limit()) {
            break;
        }
    }
    channel
        .basic_cancel("crash-loop".into(), Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn dead_letters_are_listed_without_removing_them_shown_and_replayed_as_sent() {
    let mut app = spawn_app().await;
    let dead = app.names.dead_queue();
    let payment_id = Uuid::new_v4();
    let mut request = TestCard::Good.request_with_id(payment_id);
    request["amount"]["minor"] = serde_json::json!(-5);
    let body = serde_json::to_vec(&request).unwrap();
    app.send(&body, "bad").await;
    let first = app.result_for("bad").await.result.unwrap();
    assert_eq!(first.status, Status::Rejected);
    assert_eq!(app.queue_depth(&dead, 1).await, 1);

    // list: the key, the reason, who wrote it, the payment id, the detail; nothing
    // removed.
    let run = baton(&app, &["dead", "list"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = rows(&run.stdout);
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    let key = lines[0].0.clone();
    for part in [
        "invalid_request",
        " baton ",
        &payment_id.to_string(),
        "amount.minor: must be a positive integer",
    ] {
        assert!(lines[0].1.contains(part), "{part} missing: {}", run.stdout);
    }
    assert!(
        run.stdout.contains(&format!("1 messages in {dead}")),
        "{}",
        run.stdout
    );
    assert_eq!(
        app.queue_depth(&dead, 1).await,
        1,
        "list removed the message"
    );

    // show: key, reason, detail, headers and the body; by key or by payment id alike.
    let run = baton(&app, &["dead", "show", &key]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let by_payment = baton(&app, &["dead", "show", &payment_id.to_string()]).await;
    assert_eq!(by_payment.stdout, run.stdout);
    for part in [
        &format!("key         {key}"),
        "reason      invalid_request",
        "from        baton",
        &format!("payment_id  {payment_id}"),
        "header      x-baton-reason = invalid_request",
        "header      x-baton-detail = amount.minor:",
        "\"minor\": -5",
        "\"merchant_id\": \"m-1001\"",
    ] {
        assert!(run.stdout.contains(part), "{part} missing: {}", run.stdout);
    }
    assert_eq!(
        app.queue_depth(&dead, 1).await,
        1,
        "show removed the message"
    );
    let run = baton(&app, &["dead", "show", "0123456789ab"]).await;
    assert_eq!(run.code, 1, "there is no such key: {}", run.stdout);
    assert!(run.stderr.contains("no message in"), "{}", run.stderr);
    let run = baton(&app, &["dead", "show", "2"]).await;
    assert_eq!(run.code, 1, "a position is no name: {}", run.stdout);
    assert!(
        run.stderr.contains("neither a message key"),
        "{}",
        run.stderr
    );

    // replay: back to the request queue as it was sent (reply_to and correlation id
    // included), so it is rejected again and answered to the same client.
    let run = baton(&app, &["dead", "replay", &key]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "replayed {key} {payment_id}: back in {}",
            app.names.requests_queue()
        )),
        "{}",
        run.stdout
    );
    let again = app.result_for("bad").await.result.unwrap();
    assert_eq!(again.payment_id, payment_id);
    assert_eq!(again.status, Status::Rejected);
    assert_eq!(again.detail, first.detail);
    // The replayed message left the dead queue; its new rejection is the one there.
    assert_eq!(app.queue_depth(&dead, 1).await, 1);
    let letters = app.take_all(&dead).await;
    assert_eq!(letters.len(), 1);
    let (properties, dead_body) = &letters[0];
    assert_eq!(*dead_body, body, "replayed byte for byte");
    assert_eq!(
        amqp::header_text(properties, headers::REASON).as_deref(),
        Some("invalid_request")
    );
    app.cleanup().await;
}

/// A dead letter as RabbitMQ leaves one (a request over its delivery limit keeps the
/// client's headers) with card numbers in every shape: a JSON number, spaced, dashed,
/// a JSON key, a header value, a header key, an integer header.
#[tokio::test]
async fn dead_show_and_list_mask_card_numbers_in_every_shape_and_keep_the_payment_id() {
    use lapin::types::AMQPValue;
    let app = spawn_app().await;
    let dead = app.names.dead_queue();
    let payment_id = Uuid::new_v4();
    let body = serde_json::json!({
        "payment_id": payment_id,
        "merchant_id": "m-1001",
        "customer_id": "c-42",
        "amount": {"minor": 1999, "currency": "EUR"},
        "card": {"number": 5555555555554444u64, "expiry": "12/30"},
        "note": "5105 1051 0510 5100",
        "alt": "4012-8888-8888-1881",
        "4000056655665556": "as a key",
    });
    let mut properties = amqp::json_properties(&[
        (headers::REASON, "invalid_request"),
        (
            headers::DETAIL,
            "card.number: must be a string, got a number",
        ),
        ("x-card", "pan 4242 4242 4242 4242"),
        ("x-6011111111111117", "as a header key"),
    ]);
    let mut table = properties.headers().clone().unwrap_or_default();
    table.insert("x-number".into(), AMQPValue::LongLongInt(378282246310005));
    properties = properties
        .with_headers(table)
        .with_message_id(payment_id.to_string().into());
    amqp::publish_confirmed(
        app.client.publisher().channel(),
        "",
        &dead,
        &serde_json::to_vec(&body).unwrap(),
        properties,
    )
    .await
    .unwrap();
    assert_eq!(app.queue_depth(&dead, 1).await, 1);

    let shown = baton(&app, &["dead", "show", &payment_id.to_string()]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let listed = baton(&app, &["dead", "list"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    for output in [&shown.stdout, &shown.stderr, &listed.stdout, &listed.stderr] {
        for full in [
            "5555555555554444",
            "5105 1051 0510 5100",
            "4012-8888-8888-1881",
            "4000056655665556",
            "4242 4242 4242 4242",
            "6011111111111117",
            "378282246310005",
        ] {
            assert!(!output.contains(full), "{full} printed: {output}");
        }
    }
    // The honest data is all there: the payment id, the amount, the ids, each last four.
    for kept in [
        &format!("payment_id  {payment_id}"),
        &format!("\"payment_id\": \"{payment_id}\""),
        "\"minor\": 1999",
        "\"merchant_id\": \"m-1001\"",
        "\"number\": ****4444",
        "\"note\": \"****5100\"",
        "\"alt\": \"****1881\"",
        "\"****5556\": \"as a key\"",
        "header      x-card = pan ****4242",
        "header      x-****1117 = as a header key",
        "header      x-number = LongLongInt(****0005)",
    ] {
        assert!(
            shown.stdout.contains(kept),
            "{kept} missing: {}",
            shown.stdout
        );
    }
    assert!(
        rows(&listed.stdout)[0].1.contains(&payment_id.to_string()),
        "{}",
        listed.stdout
    );
    assert_eq!(
        app.queue_depth(&dead, 1).await,
        1,
        "looking removed nothing"
    );
    app.cleanup().await;
}

/// A message the broker returns (published `mandatory` to a queue that is gone) is
/// logged by lapin, body and all, at WARN, and every frame at TRACE: the default filter
/// and any RUST_LOG keep those targets capped, and Baton's own error names the queue
/// only. Here `baton dead replay` sends a request with a card number back to a request
/// queue that does not exist.
#[tokio::test]
async fn a_returned_message_never_puts_its_card_number_in_the_log() {
    let app = spawn_app().await;
    // A prefix with a dead-letter queue and nothing else.
    let prefix = format!("{}-gone", app.names.prefix());
    let dead = format!("{prefix}.dead");
    let channel = app.client.publisher().channel().clone();
    channel
        .queue_declare(
            dead.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&TestCard::Good.request_with_id(payment_id)).unwrap();
    let properties = amqp::json_properties(&[(headers::REASON, "invalid_request")])
        .with_message_id(payment_id.to_string().into());
    amqp::publish_confirmed(&channel, "", &dead, &body, properties)
        .await
        .unwrap();

    for rust_log in [None, Some("warn"), Some("trace"), Some("lapin=trace")] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args([
                "--amqp-url",
                &baton_testkit::amqp_url(),
                "--prefix",
                &prefix,
            ])
            .args(["dead", "replay", &payment_id.to_string()])
            .env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{rust_log:?}: {stdout} {stderr}"
        );
        assert!(
            stderr.contains("not replayed ")
                && stderr.contains(&format!("{payment_id}: "))
                && stderr.contains(&format!("{prefix}.requests was unroutable")),
            "{rust_log:?}: {stderr}"
        );
        // lapin prints bodies as byte lists: the card number's bytes must not show either.
        let as_bytes = format!("{:?}", b"4242424242424242");
        let as_bytes = as_bytes.trim_start_matches('[').trim_end_matches(']');
        for output in [&stdout, &stderr] {
            assert!(
                !output.contains("4242424242424242")
                    && !output.contains(as_bytes)
                    && !output.contains("Server returned us"),
                "{rust_log:?}: the returned message was logged: {output}"
            );
        }
    }
    assert_eq!(
        app.queue_depth(&dead, 1).await,
        1,
        "not replayed, still there"
    );
    channel
        .queue_delete(
            dead.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn a_request_dead_lettered_for_service_unavailable_replays_to_its_recorded_result() {
    let hole = Faults {
        blackhole: true,
        ..Faults::default()
    };
    let mut app = fast_app(ServiceKind::Risk, hole).await;
    let dead = app.names.dead_queue();
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&TestCard::Good.request_with_id(payment_id)).unwrap();
    app.send(&body, "unavailable").await;
    let failed = app.result_for("unavailable").await.result.unwrap();
    assert_eq!(failed.status, Status::Failed, "{failed:?}");
    assert_eq!(failed.reason.as_deref(), Some("service_unavailable"));
    assert_eq!(app.queue_depth(&dead, 1).await, 1);
    let run = baton(&app, &["dead", "list"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = rows(&run.stdout);
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    assert!(
        lines[0].1.contains("service_unavailable") && lines[0].1.contains(&payment_id.to_string()),
        "{}",
        run.stdout
    );

    // Risk is back; the replayed request reaches the orchestrator again. The payment was
    // decided (its client got `failed`, its hold was voided): the journal's first
    // decision wins, so the replay publishes the recorded result again and moves no
    // money — a payment never gets two different results.
    app.service("risk").set_faults(Faults::default()).unwrap();
    let run = baton(&app, &["dead", "replay", &payment_id.to_string()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let replayed = app.result_for("unavailable").await.result.unwrap();
    assert_eq!(replayed, failed, "the recorded result, unchanged");
    assert_eq!(app.ledger.transfers_for(payment_id).await.unwrap(), 0);
    assert_eq!(
        app.ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("voided")
    );
    // The replay took the original out of the dead queue; republishing a recorded
    // `service_unavailable` failure copies the request there again (after the result).
    assert_eq!(app.queue_depth(&dead, 1).await, 1);
    let letters = app.take_all(&dead).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1, body);
    app.cleanup().await;
}

#[tokio::test]
async fn a_failed_compensation_is_listed_and_replayed_once_the_service_recovers() {
    let failing = Faults {
        fail_compensations: true,
        ..Faults::default()
    };
    let mut app = fast_app(ServiceKind::Authorization, failing).await;
    let attention = app.names.attention_queue();
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&TestCard::HighRisk.request_with_id(payment_id)).unwrap();
    app.send(&body, "risky").await;
    let result = app.result_for("risky").await.result.unwrap();
    assert_eq!(result.status, Status::Declined);
    assert_eq!(
        result.steps.last().map(|s| s.outcome),
        Some(StepOutcome::CompensationFailed)
    );
    assert_eq!(app.queue_depth(&attention, 1).await, 1);

    let run = baton(&app, &["attention", "list"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = rows(&run.stdout);
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    let key = lines[0].0.clone();
    for part in [
        "compensation_failed",
        &payment_id.to_string(),
        "authorization compensation_failed",
    ] {
        assert!(lines[0].1.contains(part), "{part} missing: {}", run.stdout);
    }
    assert_eq!(
        app.queue_depth(&attention, 1).await,
        1,
        "list removed the item"
    );

    let run = baton(&app, &["attention", "show", &key]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let command_id = format!("{payment_id}:authorization:compensate");
    assert!(run.stdout.contains(&command_id), "{}", run.stdout);
    assert!(!run.stdout.contains("4100000000000019"), "{}", run.stdout);

    // While the service still fails, a replay fails and the item stays.
    let run = baton(&app, &["attention", "replay", &key]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("the item stays"), "{}", run.stderr);
    assert_eq!(app.queue_depth(&attention, 1).await, 1);
    assert_eq!(
        app.ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("held")
    );

    // The service recovers: the replay voids the hold and removes the item.
    app.service("authorization")
        .set_faults(Faults::default())
        .unwrap();
    let run = baton(&app, &["attention", "replay", &payment_id.to_string()]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!("replayed {key} {payment_id}")),
        "{}",
        run.stdout
    );
    assert_eq!(
        app.ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("voided")
    );
    let run = baton(&app, &["attention", "list"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("is empty"), "{}", run.stdout);
    assert_eq!(app.queue_depth(&attention, 0).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn status_and_the_http_port_show_the_journal_of_a_payment() {
    let mut app = spawn_app().await;
    let (result, _) = app.pay(TestCard::Good).await;
    assert_eq!(result.status, Status::Completed);
    let id = result.payment_id.to_string();
    let journal = ["--journal-url", app.journal_url.as_str()];
    let record = app
        .orchestrator()
        .journal()
        .load(result.payment_id)
        .await
        .unwrap()
        .expect("in the journal");
    let want = serde_json::to_value(&record).unwrap();

    // Text: every step with its action and outcome, and the result.
    let run = baton(&app, &[&["status", id.as_str()][..], &journal].concat()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("payment   {id}")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("status    completed"), "{}", run.stdout);
    assert!(run.stdout.contains("****4242"), "{}", run.stdout);
    assert!(!run.stdout.contains("4242424242424242"), "{}", run.stdout);
    for step in ["authorization", "risk", "pci", "transaction"] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with(step))
            .unwrap_or_else(|| panic!("no {step} line: {}", run.stdout));
        assert!(
            line.contains("execute") && line.contains("approved"),
            "{line}"
        );
    }
    assert!(run.stdout.contains("result    completed"), "{}", run.stdout);
    assert!(run.stdout.contains("settled   2150 USD"), "{}", run.stdout);

    // JSON: the journal's record, exactly.
    let run = baton(
        &app,
        &[&["status", id.as_str(), "--json"][..], &journal].concat(),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let printed: Value = serde_json::from_str(&run.stdout).expect("--json prints JSON");
    assert_eq!(printed, want);
    assert_eq!(printed["result"]["status"], "completed");
    assert_eq!(printed["entries"].as_array().unwrap().len(), 4);

    // An unknown payment: exit 1, said on stderr.
    let unknown = Uuid::new_v4().to_string();
    let run = baton(
        &app,
        &[&["status", unknown.as_str()][..], &journal].concat(),
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("not in the journal"), "{}", run.stderr);

    // The HTTP port serves the same document.
    let addr = app.orchestrator().http_addr().expect("an HTTP port");
    let (status, body) = http_get(addr, &format!("/payments/{id}")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let served: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(served, want);
    let (status, body) = http_get(addr, &format!("/payments/{unknown}"))
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_get(addr, "/payments/not-a-uuid").await.unwrap();
    assert_eq!(status, 400, "{body}");
    app.cleanup().await;
}

/// The dead queue's order, as the broker holds it: the payment id of each message.
async fn order_of(app: &TestApp, queue: &str) -> Vec<Uuid> {
    let taken = app.take_all(queue).await;
    taken
        .iter()
        .map(|(_, body)| baton_contract::PaymentRequest::sniff_payment_id(body).expect("an id"))
        .collect()
}

/// A quorum queue gives a message back at its tail: a tool that looked at the first N
/// messages and gave them back rotated the queue, and `show 2` twice showed two
/// payments. Keys stay, and after any number of looks the broker holds the messages in
/// their order.
#[tokio::test]
async fn looking_showing_and_replaying_by_key_never_reorders_the_dead_queue() {
    let app = spawn_services(Store::Sqlite, &[]).await;
    let dead = app.names.dead_queue();
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        dead_letter(&app, *id).await;
    }
    assert_eq!(app.queue_depth(&dead, 4).await, 4);

    let listed = baton(&app, &["dead", "list"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let keys: Vec<String> = ids.iter().map(|id| key_of(&listed.stdout, *id)).collect();
    let order: Vec<String> = rows(&listed.stdout).into_iter().map(|(k, _)| k).collect();
    assert_eq!(order, keys, "listed in queue order: {}", listed.stdout);
    for _ in 0..3 {
        let shown = baton(&app, &["dead", "show", &keys[1]]).await;
        assert_eq!(shown.code, 0, "{}", shown.stderr);
        assert!(
            shown.stdout.contains(&format!("payment_id  {}", ids[1])),
            "{}",
            shown.stdout
        );
        let shown = baton(&app, &["dead", "show", &ids[2].to_string()]).await;
        assert!(shown.stdout.contains(&format!("key         {}", keys[2])));
        let again = baton(&app, &["dead", "list"]).await;
        let order: Vec<String> = rows(&again.stdout).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            order, keys,
            "the same keys in the same order: {}",
            again.stdout
        );
    }

    // Replaying the second takes it out and leaves the others in their order.
    let replayed = baton(&app, &["dead", "replay", &keys[1]]).await;
    assert_eq!(replayed.code, 0, "{}", replayed.stderr);
    assert!(
        replayed
            .stdout
            .contains(&format!("replayed {} {}", keys[1], ids[1])),
        "{}",
        replayed.stdout
    );
    let gone = baton(&app, &["dead", "show", &keys[1]]).await;
    assert_eq!(gone.code, 1, "{}", gone.stdout);
    let requests = app.take_all(&app.names.requests_queue()).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(
        baton_contract::PaymentRequest::sniff_payment_id(&requests[0].1),
        Some(ids[1])
    );
    assert_eq!(
        order_of(&app, &dead).await,
        vec![ids[0], ids[2], ids[3]],
        "the broker's order after looks and a replay"
    );
    app.cleanup().await;
}

/// Two operators replay the same key at once: the queue's lock makes one wait for the
/// other, so the message is replayed once and the one left is not touched.
#[tokio::test]
async fn two_operators_replaying_one_message_at_once_replay_it_once() {
    let app = spawn_services(Store::Sqlite, &[]).await;
    let dead = app.names.dead_queue();
    let (wanted, other) = (Uuid::new_v4(), Uuid::new_v4());
    dead_letter(&app, wanted).await;
    dead_letter(&app, other).await;
    assert_eq!(app.queue_depth(&dead, 2).await, 2);
    let listed = baton(&app, &["dead", "list"]).await;
    let key = key_of(&listed.stdout, wanted);

    let args = ["dead", "replay", key.as_str()];
    let (first, second) = tokio::join!(baton(&app, &args), baton(&app, &args));
    let mut codes = [first.code, second.code];
    codes.sort_unstable();
    assert_eq!(
        codes,
        [0, 1],
        "one replays, one finds it gone:\n{}{}\n{}{}",
        first.stdout,
        first.stderr,
        second.stdout,
        second.stderr
    );
    let loser = if first.code == 1 { &first } else { &second };
    assert!(
        loser
            .stderr
            .contains(&format!("no message in {dead} has key {key}")),
        "{}",
        loser.stderr
    );
    let requests = app.take_all(&app.names.requests_queue()).await;
    assert_eq!(requests.len(), 1, "replayed exactly once");
    assert_eq!(order_of(&app, &dead).await, vec![other]);
    app.cleanup().await;
}

/// While one operator's command holds a queue, another's waits for it rather than
/// seeing the queue empty (the messages held are invisible to anybody else), then sees
/// every message.
#[tokio::test]
async fn a_command_waits_for_another_operators_command_on_the_same_queue() {
    use std::io::BufRead;
    let app = spawn_services(Store::Sqlite, &[]).await;
    let dead = app.names.dead_queue();
    let payment_id = Uuid::new_v4();
    dead_letter(&app, payment_id).await;
    assert_eq!(app.queue_depth(&dead, 1).await, 1);
    // Hold the lock as a command in progress does.
    let holder = app.client.publisher().channel().clone();
    let lock = format!("{dead}.lock");
    let held = lapin::options::QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    holder
        .queue_declare(lock.as_str().into(), held, Default::default())
        .await
        .unwrap();

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .args([
            "--amqp-url",
            &app.url_of(Role::Operator),
            "--prefix",
            app.names.prefix(),
            "dead",
            "list",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let first_line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stderr)
            .read_line(&mut line)
            .unwrap();
        line
    })
    .await
    .unwrap();
    assert!(
        first_line.contains(&format!(
            "another operator's command is working on {dead}; waiting"
        )),
        "{first_line}"
    );
    holder
        .queue_delete(lock.as_str().into(), Default::default())
        .await
        .unwrap();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(rows_of(&stdout, payment_id).len(), 1, "{stdout}");
    app.cleanup().await;
}

/// A parked request that then passed the request queue's delivery limit (a crash loop)
/// was listed as `expired` and refused by replay, which read only the first death (the
/// retry tier's). The last death decides: `delivery_limit` out of the request queue, and
/// replayed it completes.
#[tokio::test]
async fn a_parked_request_past_the_delivery_limit_is_listed_as_such_and_replayed() {
    let mut app = spawn_services(Store::Sqlite, &ServiceKind::ALL).await;
    let dead = app.names.dead_queue();
    let channel = app.client.publisher().channel().clone();
    // The built-in workflow's first tier (clean-up deletes it).
    let retry = amqp::declare_parking(&channel, &app.names, 1000)
        .await
        .unwrap();
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&TestCard::Good.request_with_id(payment_id)).unwrap();
    let properties = app
        .client
        .publisher()
        .request_properties("parked")
        .with_message_id(payment_id.to_string().into());
    // Parked: in the tier until its TTL sends it back to the request queue, where a
    // crash-looping consumer returns it until RabbitMQ dead-letters it.
    amqp::publish_confirmed(&channel, "", &retry, &body, properties)
        .await
        .unwrap();
    crash_loop(&app, &app.names.requests_queue()).await;
    assert_eq!(app.queue_depth(&dead, 1).await, 1);

    let listed = baton(&app, &["dead", "list"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let row = rows_of(&listed.stdout, payment_id);
    assert_eq!(row.len(), 1, "{}", listed.stdout);
    let (key, line) = &row[0];
    let requests = app.names.requests_queue();
    let short = requests
        .strip_prefix(&format!("{}.", app.names.prefix()))
        .unwrap();
    assert!(
        line.contains("delivery_limit") && line.contains(&format!(" {short} ")),
        "the last death, and where: {line}"
    );
    assert!(
        line.contains("retry.1000ms expired ×1 → requests delivery_limit ×1"),
        "the chain, oldest first: {line}"
    );
    let shown = baton(&app, &["dead", "show", key]).await;
    for part in [
        "reason      delivery_limit",
        &format!("from        {requests}"),
        &format!("death 1     {retry} expired ×1"),
        &format!("death 2     {requests} delivery_limit ×1"),
    ] {
        assert!(
            shown.stdout.contains(part),
            "{part} missing: {}",
            shown.stdout
        );
    }

    let settings = app.orchestrator_settings();
    app.start_orchestrator(settings).await;
    let replayed = baton(&app, &["dead", "replay", key]).await;
    assert_eq!(replayed.code, 0, "{}", replayed.stderr);
    let result = app.result_for("parked").await.result.unwrap();
    assert_eq!(result.payment_id, payment_id);
    assert_eq!(result.status, Status::Completed, "{result:?}");
    assert_eq!(app.queue_depth(&dead, 0).await, 0);
    app.cleanup().await;
}

/// A command RabbitMQ dead-lettered out of a service's queue is not a payment request:
/// listed with that queue and why, refused by replay with both named, and removed by
/// `drop`, which prints it first.
#[tokio::test]
async fn a_dead_command_is_refused_by_replay_and_removed_by_drop() {
    let app = spawn_services(Store::Sqlite, &[]).await;
    let dead = app.names.dead_queue();
    let channel = app.client.publisher().channel().clone();
    let queue = amqp::declare_command_queue(&channel, &app.names, "risk")
        .await
        .unwrap();
    let payment_id = Uuid::new_v4();
    let kept = Uuid::new_v4();
    dead_letter(&app, kept).await;
    let body =
        serde_json::json!({"payment_id": payment_id, "command_id": format!("{payment_id}:risk")});
    let properties = amqp::json_properties(&[]).with_message_id(payment_id.to_string().into());
    amqp::publish_confirmed(
        &channel,
        "",
        &queue,
        &serde_json::to_vec(&body).unwrap(),
        properties,
    )
    .await
    .unwrap();
    crash_loop(&app, &queue).await;
    assert_eq!(app.queue_depth(&dead, 2).await, 2);

    let listed = baton(&app, &["dead", "list"]).await;
    let row = rows_of(&listed.stdout, payment_id);
    assert_eq!(row.len(), 1, "{}", listed.stdout);
    let (key, line) = &row[0];
    assert!(
        line.contains("delivery_limit") && line.contains(" cmd.risk "),
        "{line}"
    );
    let refused = baton(&app, &["dead", "replay", key]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains(&format!(
            "not a payment request (dead-lettered by RabbitMQ: delivery_limit in {queue})"
        )),
        "{}",
        refused.stderr
    );
    let dropped = baton(&app, &["dead", "drop", key]).await;
    assert_eq!(dropped.code, 0, "{}", dropped.stderr);
    assert!(
        dropped
            .stdout
            .contains(&format!("dropped {key} {payment_id}"))
            && dropped
                .stdout
                .contains(&format!("command_id\": \"{payment_id}:risk")),
        "{}",
        dropped.stdout
    );
    assert_eq!(
        order_of(&app, &dead).await,
        vec![kept],
        "only the command went"
    );
    app.cleanup().await;
}

/// Byte-identical copies (one request dead-lettered twice) share a key: a replay takes
/// one copy at a time. A payment id that names two different messages names neither:
/// replay and drop ask for a key and list them.
#[tokio::test]
async fn identical_copies_share_a_key_and_an_ambiguous_payment_id_is_refused() {
    let app = spawn_services(Store::Sqlite, &[]).await;
    let dead = app.names.dead_queue();
    let copied = Uuid::new_v4();
    dead_letter(&app, copied).await;
    dead_letter(&app, copied).await;
    // The same payment, refused for another reason: a different message.
    let twice = Uuid::new_v4();
    dead_letter(&app, twice).await;
    let body = serde_json::to_vec(&TestCard::Good.request_with_id(twice)).unwrap();
    let properties = amqp::json_properties(&[(headers::REASON, "payment_id_reused")])
        .with_message_id(twice.to_string().into());
    amqp::publish_confirmed(
        app.client.publisher().channel(),
        "",
        &dead,
        &body,
        properties,
    )
    .await
    .unwrap();
    assert_eq!(app.queue_depth(&dead, 4).await, 4);

    let listed = baton(&app, &["dead", "list"]).await;
    let copies = rows_of(&listed.stdout, copied);
    assert_eq!(copies.len(), 2, "{}", listed.stdout);
    assert_eq!(copies[0].0, copies[1].0, "identical copies, one key");
    let key = copies[0].0.clone();
    let different = rows_of(&listed.stdout, twice);
    assert_eq!(different.len(), 2, "{}", listed.stdout);
    assert_ne!(different[0].0, different[1].0);

    let refused = baton(&app, &["dead", "replay", &twice.to_string()]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains(&format!(
            "payment {twice} names 2 different messages in {dead} (keys {}, {}): name one by its key",
            different[0].0, different[1].0
        )),
        "{}",
        refused.stderr
    );
    let refused = baton(&app, &["dead", "drop", &twice.to_string()]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);

    // One key twice in one command: each copy once.
    let replayed = baton(&app, &["dead", "replay", &key, &key]).await;
    assert_eq!(replayed.code, 0, "{}", replayed.stderr);
    assert_eq!(
        replayed.stdout.matches("replayed ").count(),
        2,
        "{}",
        replayed.stdout
    );
    assert_eq!(app.take_all(&app.names.requests_queue()).await.len(), 2);
    let again = baton(&app, &["dead", "replay", &key]).await;
    assert_eq!(again.code, 1, "no copy left: {}", again.stdout);
    assert_eq!(app.take_all(&app.names.requests_queue()).await.len(), 0);
    assert_eq!(order_of(&app, &dead).await, vec![twice, twice]);
    app.cleanup().await;
}
