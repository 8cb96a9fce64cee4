//! `baton dead list|show|replay|drop`: dead letters listed without removing them, shown
//! and replayed as sent; a request dead-lettered mid-saga or past the delivery limit
//! replayed to its result; a dead command refused by replay and removed by drop.

use super::{baton, dead_letter, fast_app, order_of, rows, rows_of};
use crate::app::{spawn_app, spawn_services, Store, TestApp};
use baton::testcards::TestCard;
use baton_amqp as amqp;
use baton_contract::{headers, Status};
use baton_services::{Faults, ServiceKind};
use uuid::Uuid;

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
    let run = baton(&app, &["dead", "show", "abcdefghijkl"]).await;
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
