//! Keys and order: looking, showing and replaying by key never reorders the dead queue;
//! two operators at once replay a message once, and one waits for the other's command;
//! identical copies share a key and an ambiguous payment id is refused.

use super::{baton, dead_letter, key_of, operator_command, order_of, rows, rows_of};
use crate::app::{spawn_services, Store};
use baton::testcards::TestCard;
use baton_amqp as amqp;
use baton_contract::headers;
use uuid::Uuid;

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

    let mut command = operator_command(&app, &["dead", "list"]);
    command
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
