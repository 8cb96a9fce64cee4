//! Operators' tools for the dead-letter and attention queues: list, show, replay, drop.
//!
//! A quorum queue cannot be browsed: a message is read by taking it, and RabbitMQ (3.10,
//! no delivery limit) puts a message given back at the *back* of the queue. Looking at
//! part of a queue and giving it back therefore reorders it, and numbering by position
//! shifts under the operator's feet. So every command works on one snapshot of the whole
//! queue, under a lock:
//!
//! 1. it takes the queue's lock, an exclusive queue `<queue>.lock` that the broker lets
//!    one connection hold at a time and deletes with it: two operators never work on
//!    one queue at once (the second waits up to [`LOCK_WAIT`]), so neither sees a queue
//!    half held by the other and no message can be replayed twice;
//! 2. it takes every message with `basic.get`, unacknowledged, until the queue is empty;
//! 3. it acts: prints, or publishes a replay and waits for the broker's confirm;
//! 4. it acknowledges what it replayed or dropped, and gives the rest back one by one in
//!    the order it took them, so they stay in their order. If the tool dies midway, the
//!    broker gives them back sorted as they were taken, so the order survives that too;
//!    only a replay confirmed but not yet acknowledged can then be replayed again, and a
//!    replayed request is idempotent by payment id.
//!
//! A message is named by its **key**: 12 hex digits of a SHA-256 over the message as
//! printed (card numbers masked): its headers except `x-delivery-count` (which grows
//! each time anybody looks), its properties and its body. The key stays the same across
//! looks and operators and tells nothing `show` would not print. A payment id names
//! every message of that payment.
//!
//! Reasons: Baton's own (`x-baton-reason`) first; for a message RabbitMQ dead-lettered,
//! the last `x-death` entry (the queue it died in and why: `delivery_limit`, `expired`,
//! `rejected`, `maxlen`), and the whole chain in `show`. A dead letter is replayed as a
//! payment request when Baton refused it as one, or when RabbitMQ dead-lettered it out of
//! the request queue or a retry tier, whatever came before.
//!
//! Replay: a dead letter (a request) goes back to `<prefix>.requests` as it was sent; an
//! attention item that carries a command (a compensation that kept failing) is sent to
//! its service again and removed only when the service approves; an `in_doubt` item is
//! never re-sent (that could move money for a payment reported failed): it is settled
//! by hand against the service's ledger, then dropped.
//!
//! Everything printed goes through [`mask_card_numbers`]: the body (whatever its shape:
//! a card number as a JSON string, number or key), every header key and value, reasons
//! and details. The payment id, a UUID, survives masking.

use crate::cli::QueueCommand;
use crate::saga::AttentionItem;
use baton_amqp::{self as amqp, header_text, json_properties, publish_confirmed};
use baton_contract::{headers, mask_card_numbers, Names, Reply, ReplyOutcome};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;
use uuid::Uuid;

/// Headers Baton or RabbitMQ added on the way to the dead-letter queue, dropped on replay.
const ADDED_HEADERS: [&str; 11] = [
    headers::REASON,
    headers::DETAIL,
    headers::PARKED,
    headers::PARKED_AT,
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
];

/// Added by the quorum queue at each delivery: it changes every time anybody looks, so
/// it is no part of a message's key, and a replay does not carry it.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// How long a command waits for another operator's command on the same queue to finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The most messages one snapshot holds (in memory, unacknowledged). Past it the
/// snapshot is partial, said so, and giving it back puts these behind the rest.
const MAX_SNAPSHOT: usize = 50_000;

/// Baton's reasons for dead-lettering a *request* (the others are commands).
const REQUEST_REASONS: [&str; 4] = [
    "invalid_request",
    "service_unavailable",
    "payment_id_reused",
    "journal_corrupt",
];

/// Runs `baton dead …` or `baton attention …` on `queue`.
pub async fn run(
    amqp_url: &str,
    tls: &amqp::TlsOptions,
    names: &Names,
    queue: &str,
    command: QueueCommand,
) -> anyhow::Result<i32> {
    let connection = amqp::connect(amqp_url, "baton operator tool", tls).await?;
    // What the tool republishes carries its own user as `user_id` (the stored message
    // carries the orchestrator's, which the broker would refuse from this connection).
    let sender = amqp::url_user(amqp_url)?;
    let tool = Tool {
        connection: &connection,
        names,
        queue,
        sender: &sender,
    };
    let result = tool.run(command).await;
    let _ = connection.close(200, "done".into()).await;
    result
}

/// One command on one queue.
struct Tool<'a> {
    connection: &'a Connection,
    names: &'a Names,
    queue: &'a str,
    /// The tool's broker user, stamped on what it republishes.
    sender: &'a str,
}

/// One message of the snapshot.
struct Letter {
    delivery: Delivery,
    /// [`key_of`] the message.
    key: String,
    /// The message in full (card numbers and all), to tell identical copies from
    /// different messages that mask alike. Never printed.
    exact: String,
}

/// Every message of the queue, taken unacknowledged, in queue order.
struct Snapshot {
    channel: Channel,
    letters: Vec<Letter>,
}

/// How an operator names a message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Key(String),
    Payment(Uuid),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Key(key) => write!(f, "key {key}"),
            Target::Payment(id) => write!(f, "payment {id}"),
        }
    }
}

fn parse_target(text: &str) -> anyhow::Result<Target> {
    let text = text.trim();
    if text.len() == 12 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Target::Key(text.to_ascii_lowercase()));
    }
    match Uuid::try_parse(text) {
        Ok(id) => Ok(Target::Payment(id)),
        Err(_) => anyhow::bail!(
            "{} is neither a message key (12 hex digits, from `list`) nor a payment id",
            mask_card_numbers(text)
        ),
    }
}

impl Tool<'_> {
    async fn run(&self, command: QueueCommand) -> anyhow::Result<i32> {
        // Check every name before taking anything.
        let targets = match &command {
            QueueCommand::List { .. } => Vec::new(),
            QueueCommand::Show { targets }
            | QueueCommand::Replay { targets, .. }
            | QueueCommand::Drop { targets } => targets
                .iter()
                .map(|t| parse_target(t))
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        if let QueueCommand::Replay { all: false, .. } = command {
            if targets.is_empty() {
                anyhow::bail!(
                    "say which message to replay (a key or payment id from `list`) or --all"
                );
            }
        }
        let lock = self.lock().await?;
        let snapshot = self.take().await?;
        // What was replayed or dropped, by index: acknowledged when the command is done,
        // whatever else failed, so a confirmed replay is never given back to be replayed
        // again.
        let mut done = BTreeSet::new();
        let outcome = self.act(command, &targets, &snapshot, &mut done).await;
        let settled = snapshot.settle(&done).await;
        let _ = lock.close(200, "unlocked".into()).await;
        settled?;
        outcome
    }

    async fn act(
        &self,
        command: QueueCommand,
        targets: &[Target],
        snapshot: &Snapshot,
        done: &mut BTreeSet<usize>,
    ) -> anyhow::Result<i32> {
        let letters = &snapshot.letters;
        match command {
            QueueCommand::List { limit } => {
                self.list(letters, limit);
                Ok(0)
            }
            QueueCommand::Show { .. } => {
                let mut code = 0;
                for target in targets {
                    let found = matching(letters, target);
                    if found.is_empty() {
                        eprintln!("{}", self.not_found(target));
                        code = 1;
                    }
                    for i in found {
                        println!("{}\n", mask_card_numbers(&self.describe(&letters[i])));
                    }
                }
                Ok(code)
            }
            QueueCommand::Replay { all, .. } => {
                // Picked one at a time, after the ones before are done: `replay K K` on
                // two identical copies replays each once, never one twice.
                let wanted: Vec<Option<&Target>> = if all {
                    letters.iter().map(|_| None).collect()
                } else {
                    targets.iter().map(Some).collect()
                };
                if wanted.is_empty() {
                    eprintln!("{} is empty: nothing to replay", self.queue);
                    return Ok(1);
                }
                let publish = amqp::confirm_channel(self.connection).await?;
                let mut failures = 0;
                for (n, target) in wanted.into_iter().enumerate() {
                    let choice = match target {
                        Some(target) => self.pick(letters, target, done),
                        None => Ok(n),
                    };
                    let i = match choice {
                        Ok(i) => i,
                        Err(why) => {
                            failures += 1;
                            eprintln!("{}", mask_card_numbers(&why));
                            continue;
                        }
                    };
                    let letter = &letters[i];
                    let name = self.name_of(letter);
                    let replayed = if self.queue == self.names.attention_queue() {
                        self.replay_attention(&publish, &letter.delivery).await
                    } else {
                        self.replay_request(&publish, &letter.delivery).await
                    };
                    match replayed {
                        Ok(what) => {
                            done.insert(i);
                            println!("{}", mask_card_numbers(&format!("replayed {name}: {what}")));
                        }
                        Err(e) => {
                            failures += 1;
                            let line = format!("not replayed {name}: {e:#}");
                            eprintln!("{}", mask_card_numbers(&line));
                        }
                    }
                }
                let _ = publish.close(200, "replayed".into()).await;
                Ok(i32::from(failures > 0))
            }
            QueueCommand::Drop { .. } => {
                let mut failures = 0;
                for target in targets {
                    match self.pick(letters, target, done) {
                        Ok(i) => {
                            done.insert(i);
                            let letter = &letters[i];
                            // The whole message, masked, into the operator's terminal or
                            // log: the last trace of it.
                            println!("{}\n", mask_card_numbers(&self.describe(letter)));
                            println!("dropped {}", self.name_of(letter));
                        }
                        Err(why) => {
                            failures += 1;
                            eprintln!("{}", mask_card_numbers(&why));
                        }
                    }
                }
                Ok(i32::from(failures > 0))
            }
        }
    }

    /// Waits (up to [`LOCK_WAIT`]) for the queue's lock and returns the channel whose
    /// connection holds it.
    async fn lock(&self) -> anyhow::Result<Channel> {
        let name = format!("{}.lock", self.queue);
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut said = false;
        loop {
            let channel = self.connection.create_channel().await?;
            let declared = channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(_) => return Ok(channel),
                Err(e) if is_locked(&e) => {
                    if tokio::time::Instant::now() >= deadline {
                        anyhow::bail!(
                            "another operator's command has held {} for over {} s; try again later",
                            self.queue,
                            LOCK_WAIT.as_secs()
                        );
                    }
                    if !said {
                        eprintln!(
                            "another operator's command is working on {}; waiting for it (up to {} s)",
                            self.queue,
                            LOCK_WAIT.as_secs()
                        );
                        said = true;
                    }
                    // The broker tells nobody when an exclusive queue goes: ask again.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => anyhow::bail!(
                    "cannot take the lock {name} ({e}); the operator user needs configure \
                     permission on it (`baton broker setup` grants it)"
                ),
            }
        }
    }

    /// Takes every message of the queue, unacknowledged, in order.
    async fn take(&self) -> anyhow::Result<Snapshot> {
        let queue = self.queue;
        let channel = self.connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!("queue {queue} cannot be read ({e}); is the prefix right?")
            })?;
        if declared.consumer_count() > 0 {
            eprintln!(
                "warning: {queue} has {} consumer(s) other than this tool: the messages they \
                 hold are not in this snapshot",
                declared.consumer_count()
            );
        }
        let mut letters = Vec::with_capacity(declared.message_count() as usize);
        while let Some(got) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        {
            letters.push(Letter::new(got.delivery));
            if letters.len() >= MAX_SNAPSHOT && got.message_count > 0 {
                eprintln!(
                    "warning: {queue} holds more than {MAX_SNAPSHOT} messages: this snapshot \
                     has the first {MAX_SNAPSHOT} only, and they go back behind the others"
                );
                break;
            }
        }
        Ok(Snapshot { channel, letters })
    }

    fn list(&self, letters: &[Letter], limit: usize) {
        if letters.is_empty() {
            println!("{} is empty", self.queue);
            return;
        }
        println!(
            "{:<12}  {:<22} {:<24} {:<36}  DETAIL",
            "KEY", "REASON", "FROM", "PAYMENT ID"
        );
        for letter in letters.iter().take(limit) {
            let why = why(&letter.delivery.properties, self.names);
            let line = format!(
                "{:<12}  {:<22} {:<24} {:<36}  {}",
                letter.key,
                why.reason,
                self.short(&why.from),
                payment_id_of(&letter.delivery)
                    .map(|id| id.to_string())
                    .unwrap_or_else(|| "-".into()),
                baton_contract::mask::bounded(&self.detail_of(letter, &why), 120)
            );
            println!("{}", mask_card_numbers(&line));
        }
        if letters.len() > limit {
            println!(
                "{} messages in {}; the first {limit} shown (--limit for more)",
                letters.len(),
                self.queue
            );
        } else {
            println!("{} messages in {}", letters.len(), self.queue);
        }
    }

    /// A queue name without this deployment's prefix, for narrow columns.
    fn short<'n>(&self, queue: &'n str) -> &'n str {
        queue
            .strip_prefix(self.names.prefix())
            .and_then(|q| q.strip_prefix('.'))
            .unwrap_or(queue)
    }

    /// The one message `target` names, not already acted on in this command.
    fn pick(
        &self,
        letters: &[Letter],
        target: &Target,
        done: &BTreeSet<usize>,
    ) -> Result<usize, String> {
        let found: Vec<usize> = matching(letters, target)
            .into_iter()
            .filter(|i| !done.contains(i))
            .collect();
        match found.as_slice() {
            [] => Err(self.not_found(target)),
            [one] => Ok(*one),
            [first, rest @ ..]
                if rest
                    .iter()
                    .all(|i| letters[*i].exact == letters[*first].exact) =>
            {
                // Identical copies: any one is the same message.
                Ok(*first)
            }
            several => Err(format!(
                "{target} names {} different messages in {} (keys {}): name one by its key",
                several.len(),
                self.queue,
                several
                    .iter()
                    .map(|i| letters[*i].key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn not_found(&self, target: &Target) -> String {
        format!(
            "no message in {} has {target} (replayed or dropped already? `list` shows what is there)",
            self.queue
        )
    }

    /// `<key> <payment id>`, how replay and drop name what they acted on.
    fn name_of(&self, letter: &Letter) -> String {
        match payment_id_of(&letter.delivery) {
            Some(id) => format!("{} {id}", letter.key),
            None => letter.key.clone(),
        }
    }

    /// What `show` prints of a message, before masking: key, reason, where it came from,
    /// payment id, detail, the death chain, every header, then the body (pretty JSON
    /// when it is JSON). The caller masks the whole text, so a card number is caught in a
    /// header key or value and in a JSON key, string or number alike.
    fn describe(&self, letter: &Letter) -> String {
        let m = &letter.delivery;
        let why = why(&m.properties, self.names);
        let mut out = String::new();
        let _ = writeln!(out, "key         {}", letter.key);
        out.push_str(&describe(m, &why, &self.detail_of(letter, &why)));
        out
    }

    fn detail_of(&self, letter: &Letter, why: &Why) -> String {
        let m = &letter.delivery;
        if let Some(detail) = header_text(&m.properties, headers::DETAIL) {
            return detail;
        }
        if let Ok(item) = serde_json::from_slice::<AttentionItem>(&m.data) {
            return format!("{} {}: {}", item.step, item.kind, item.error);
        }
        // A RabbitMQ dead letter: its way here, oldest first.
        why.chain
            .iter()
            .rev()
            .map(|d| format!("{} {} ×{}", self.short(&d.queue), d.reason, d.count))
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

impl Letter {
    fn new(delivery: Delivery) -> Letter {
        let exact = canonical(&delivery);
        let digest = Sha256::digest(mask_card_numbers(&exact).as_bytes());
        let key = digest[..6].iter().fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        });
        Letter {
            delivery,
            key,
            exact,
        }
    }
}

impl Snapshot {
    /// Acknowledges the messages in `done` and gives the others back, in order.
    async fn settle(self, done: &BTreeSet<usize>) -> anyhow::Result<()> {
        for (i, letter) in self.letters.iter().enumerate() {
            let acker = &letter.delivery.acker;
            if done.contains(&i) {
                acker.ack(BasicAckOptions::default()).await?;
            } else {
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await?;
            }
        }
        // Closing waits for the broker's close-ok, after every ack and nack before it.
        self.channel.close(200, "settled".into()).await?;
        Ok(())
    }
}

fn is_locked(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 405)
}

/// The messages `target` names, in queue order.
fn matching(letters: &[Letter], target: &Target) -> Vec<usize> {
    letters
        .iter()
        .enumerate()
        .filter(|(_, l)| match target {
            Target::Key(key) => &l.key == key,
            Target::Payment(id) => payment_id_of(&l.delivery) == Some(*id),
        })
        .map(|(i, _)| i)
        .collect()
}

/// The message as text, card numbers and all (headers but `x-delivery-count`, the
/// properties that identify it, the body): what its key is a hash of, once masked.
fn canonical(m: &Delivery) -> String {
    let mut out = String::new();
    if let Some(table) = m.properties.headers() {
        for (key, value) in table.inner() {
            if key.as_str() != DELIVERY_COUNT {
                let _ = writeln!(out, "{key}={}", show_value(value));
            }
        }
    }
    let p = &m.properties;
    let _ = writeln!(
        out,
        "message_id={:?} correlation_id={:?} reply_to={:?} timestamp={:?} type={:?} app_id={:?} content_type={:?}",
        p.message_id(),
        p.correlation_id(),
        p.reply_to(),
        p.timestamp(),
        p.kind(),
        p.app_id(),
        p.content_type()
    );
    out.push_str(&String::from_utf8_lossy(&m.data));
    out
}

/// One `x-death` entry: RabbitMQ dead-lettered the message `count` times out of `queue`
/// for `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Death {
    queue: String,
    reason: String,
    count: i64,
    time: Option<u64>,
}

/// Why a message is where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Why {
    /// Baton's reason if Baton wrote the message, else RabbitMQ's last one.
    reason: String,
    /// `baton`, or the queue RabbitMQ dead-lettered it out of.
    from: String,
    /// `x-death`, most recent first.
    chain: Vec<Death>,
}

/// `x-death`, most recent first (RabbitMQ moves an entry that recurs to the front).
fn deaths(properties: &BasicProperties) -> Vec<Death> {
    let Some(AMQPValue::FieldArray(array)) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    else {
        return Vec::new();
    };
    array
        .as_slice()
        .iter()
        .filter_map(|entry| {
            let AMQPValue::FieldTable(table) = entry else {
                return None;
            };
            let table = table.inner();
            let text = |key: &str| match table.get(key) {
                Some(AMQPValue::LongString(s)) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
                _ => None,
            };
            let count = match table.get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                Some(AMQPValue::LongInt(n)) => i64::from(*n),
                Some(AMQPValue::LongUInt(n)) => i64::from(*n),
                Some(AMQPValue::ShortInt(n)) => i64::from(*n),
                _ => 1,
            };
            let time = match table.get("time") {
                Some(AMQPValue::Timestamp(t)) => Some(*t),
                _ => None,
            };
            Some(Death {
                queue: text("queue")?,
                reason: text("reason").unwrap_or_else(|| "-".into()),
                count,
                time,
            })
        })
        .collect()
}

fn why(properties: &BasicProperties, _names: &Names) -> Why {
    let chain = deaths(properties);
    if let Some(reason) = header_text(properties, headers::REASON) {
        return Why {
            reason,
            from: "baton".into(),
            chain,
        };
    }
    // RabbitMQ 3.13+ says the last death outright; before, it is x-death's first entry.
    let last_reason = header_text(properties, "x-last-death-reason")
        .or_else(|| chain.first().map(|d| d.reason.clone()));
    let last_queue = header_text(properties, "x-last-death-queue")
        .or_else(|| chain.first().map(|d| d.queue.clone()));
    Why {
        reason: last_reason
            .or_else(|| header_text(properties, "x-first-death-reason"))
            .unwrap_or_else(|| "-".into()),
        from: last_queue
            .or_else(|| header_text(properties, "x-first-death-queue"))
            .unwrap_or_else(|| "-".into()),
        chain,
    }
}

/// [`Tool::describe`] without the key.
fn describe(m: &Delivery, why: &Why, detail: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "reason      {}", why.reason);
    let _ = writeln!(out, "from        {}", why.from);
    if let Some(id) = payment_id_of(m) {
        let _ = writeln!(out, "payment_id  {id}");
    }
    let _ = writeln!(out, "detail      {detail}");
    for (n, death) in why.chain.iter().rev().enumerate() {
        let _ = writeln!(
            out,
            "death {:<4}  {} {} ×{}{}",
            n + 1,
            death.queue,
            death.reason,
            death.count,
            death
                .time
                .and_then(|t| {
                    let at = std::time::UNIX_EPOCH.checked_add(Duration::from_secs(t))?;
                    Some(format!(
                        " (first at {})",
                        humantime::format_rfc3339_seconds(at)
                    ))
                })
                .unwrap_or_default()
        );
    }
    if let Some(table) = m.properties.headers() {
        // Not x-delivery-count: it counts the looks, this one included.
        for (key, value) in table
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != DELIVERY_COUNT)
        {
            let _ = writeln!(out, "header      {key} = {}", show_value(value));
        }
    }
    out.push('\n');
    match serde_json::from_slice::<serde_json::Value>(&m.data) {
        Ok(json) => {
            out.push_str(&serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string()))
        }
        Err(_) => out.push_str(&String::from_utf8_lossy(&m.data)),
    }
    out
}

fn payment_id_of(m: &Delivery) -> Option<Uuid> {
    m.properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::try_parse(id.as_str()).ok())
        .or_else(|| baton_contract::PaymentRequest::sniff_payment_id(&m.data))
}

/// A header value as text: strings as themselves, tables and arrays entry by entry (so a
/// card number inside is text the masker sees, never a list of bytes), other values as
/// their type and value.
fn show_value(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::ByteArray(bytes) => String::from_utf8_lossy(bytes.as_slice()).into_owned(),
        AMQPValue::FieldArray(array) => format!(
            "[{}]",
            array
                .as_slice()
                .iter()
                .map(show_value)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::FieldTable(table) => format!(
            "{{{}}}",
            table
                .inner()
                .iter()
                .map(|(k, v)| format!("{k}: {}", show_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{other:?}"),
    }
}

impl Tool<'_> {
    async fn replay_request(&self, publish: &Channel, m: &Delivery) -> anyhow::Result<String> {
        replay_request(publish, self.names, m, self.sender).await
    }

    async fn replay_attention(&self, publish: &Channel, m: &Delivery) -> anyhow::Result<String> {
        replay_attention(self.connection, publish, self.names, m, self.sender).await
    }
}

/// Whether a dead letter is a payment request, and if not, what it is.
fn request_or_why_not(properties: &BasicProperties, names: &Names) -> Result<(), String> {
    let why = why(properties, names);
    if let Some(reason) = header_text(properties, headers::REASON) {
        return if REQUEST_REASONS.contains(&reason.as_str()) {
            Ok(())
        } else {
            Err(format!("{reason}, written by Baton or a service"))
        };
    }
    // RabbitMQ's: where it last died decides, whatever came before (a parked request
    // went requests → retry tier → requests any number of times).
    let requests = names.requests_queue();
    if why.from == requests || is_retry_tier(&why.from, names) {
        Ok(())
    } else if why.chain.is_empty() && why.from == "-" {
        Err("no x-baton-reason and no x-death: neither Baton nor RabbitMQ dead-lettered it".into())
    } else {
        Err(format!(
            "dead-lettered by RabbitMQ: {} in {}",
            why.reason, why.from
        ))
    }
}

/// `<prefix>.retry.<n>ms`: a parking tier of this deployment.
fn is_retry_tier(queue: &str, names: &Names) -> bool {
    queue
        .strip_prefix(names.prefix())
        .and_then(|q| q.strip_prefix(".retry."))
        .and_then(|q| q.strip_suffix("ms"))
        .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
}

/// Sends a dead-lettered request back to the request queue, as the client sent it.
/// Only requests: a command a service dead-lettered is not a payment request.
async fn replay_request(
    publish: &Channel,
    names: &Names,
    m: &Delivery,
    sender: &str,
) -> anyhow::Result<String> {
    if let Err(what) = request_or_why_not(&m.properties, names) {
        anyhow::bail!("not a payment request ({what}): not replayed");
    }
    if let Some(kept) = header_text(&m.properties, headers::TRUNCATED) {
        // Only the masked first bytes of the body were kept: there is no request to send.
        anyhow::bail!(
            "its body was too large and only {kept} of {} bytes were kept, masked: not \
             replayed (the client must send the payment again)",
            header_text(&m.properties, headers::ORIGINAL_SIZE).unwrap_or_else(|| "?".into())
        );
    }
    let mut properties = amqp::with_sender(m.properties.clone(), sender);
    if let Some(table) = m.properties.headers() {
        let kept: std::collections::BTreeMap<_, _> = table
            .inner()
            .iter()
            .filter(|(k, _)| !ADDED_HEADERS.contains(&k.as_str()) && k.as_str() != DELIVERY_COUNT)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        properties = properties.with_headers(FieldTable::from(kept));
    }
    publish_confirmed(publish, "", &names.requests_queue(), &m.data, properties).await?;
    Ok(format!("back in {}", names.requests_queue()))
}

/// Sends an attention item's command to its service again and waits for the answer.
async fn replay_attention(
    connection: &Connection,
    publish: &Channel,
    names: &Names,
    m: &Delivery,
    sender: &str,
) -> anyhow::Result<String> {
    let item: AttentionItem = serde_json::from_slice(&m.data)
        .map_err(|e| anyhow::anyhow!("not an attention item ({e})"))?;
    let Some(command) = item.command else {
        anyhow::bail!(
            "a {} item is settled by hand: check command {} in the {} service's ledger, then drop the item",
            item.kind,
            item.command_id,
            item.step
        );
    };
    let listen = connection.create_channel().await?;
    let (reply_queue, mut replies) = amqp::consume_exclusive(&listen, "").await?;
    let correlation = Uuid::new_v4().to_string();
    let properties = amqp::with_sender(
        json_properties(&[(headers::COMMAND_ID, &command.command_id)]),
        sender,
    )
    .with_correlation_id(correlation.as_str().into())
    .with_reply_to(reply_queue.as_str().into());
    let target = names.command_queue(&item.service);
    publish_confirmed(
        publish,
        "",
        &target,
        &serde_json::to_vec(&command)?,
        properties,
    )
    .await?;
    let reply = loop {
        match tokio::time::timeout(Duration::from_secs(30), replies.next()).await {
            Ok(Some(Ok(d)))
                if d.properties.correlation_id().as_ref().map(|c| c.as_str())
                    == Some(correlation.as_str()) =>
            {
                break serde_json::from_slice::<Reply>(&d.data)?;
            }
            Ok(Some(Ok(_))) => continue,
            _ => anyhow::bail!("{} did not answer within 30 s; the item stays", target),
        }
    };
    let _ = listen.close(200, "done".into()).await;
    match reply.outcome {
        ReplyOutcome::Approved => Ok(format!(
            "{} {:?} approved by {target}",
            item.step, command.action
        )),
        _ => anyhow::bail!(
            "{target} answered {:?} {}; the item stays",
            reply.outcome,
            reply.reason.unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    fn delivery(body: &[u8], headers: &[(&str, AMQPValue)]) -> Delivery {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), v.clone());
        }
        let mut d = Delivery::mock(1, "".into(), "q".into(), false, body.to_vec());
        d.properties = BasicProperties::default()
            .with_message_id("6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10".into())
            .with_headers(table);
        d
    }

    fn names() -> Names {
        Names::new("acme")
    }

    fn death(queue: &str, reason: &str, count: i64) -> AMQPValue {
        let mut t = FieldTable::default();
        t.insert("queue".into(), AMQPValue::LongString(queue.into()));
        t.insert("reason".into(), AMQPValue::LongString(reason.into()));
        t.insert("count".into(), AMQPValue::LongLongInt(count));
        t.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        t.insert("exchange".into(), AMQPValue::LongString("".into()));
        AMQPValue::FieldTable(t)
    }

    fn chain(entries: Vec<AMQPValue>) -> AMQPValue {
        AMQPValue::FieldArray(entries.into())
    }

    /// A parked request that then passed the request queue's delivery limit: RabbitMQ's
    /// first death is the retry tier's `expired`, the last the request queue's limit.
    fn parked_then_limited() -> Delivery {
        delivery(
            b"{}",
            &[
                (
                    "x-death",
                    chain(vec![
                        death("acme.requests", "delivery_limit", 1),
                        death("acme.retry.1000ms", "expired", 3),
                    ]),
                ),
                (
                    "x-first-death-queue",
                    AMQPValue::LongString("acme.retry.1000ms".into()),
                ),
                (
                    "x-first-death-reason",
                    AMQPValue::LongString("expired".into()),
                ),
            ],
        )
    }

    #[test]
    fn the_last_death_is_the_reason_and_the_whole_chain_is_kept() {
        let m = parked_then_limited();
        let why = why(&m.properties, &names());
        assert_eq!(why.reason, "delivery_limit");
        assert_eq!(why.from, "acme.requests");
        assert_eq!(why.chain.len(), 2);
        assert_eq!(why.chain[1].count, 3);
        let shown = describe(&m, &why, "");
        assert!(
            shown.contains("death 1     acme.retry.1000ms expired ×3"),
            "{shown}"
        );
        assert!(
            shown.contains("death 2     acme.requests delivery_limit ×1"),
            "{shown}"
        );
    }

    #[test]
    fn a_request_is_replayable_when_it_died_in_the_request_queue_or_a_retry_tier() {
        let names = names();
        assert_eq!(
            request_or_why_not(&parked_then_limited().properties, &names),
            Ok(())
        );
        let from_tier = delivery(
            b"{}",
            &[(
                "x-death",
                chain(vec![death("acme.retry.5000ms", "maxlen", 1)]),
            )],
        );
        assert_eq!(request_or_why_not(&from_tier.properties, &names), Ok(()));
        let command = delivery(
            b"{}",
            &[(
                "x-death",
                chain(vec![death("acme.cmd.risk", "delivery_limit", 1)]),
            )],
        );
        assert_eq!(
            request_or_why_not(&command.properties, &names),
            Err("dead-lettered by RabbitMQ: delivery_limit in acme.cmd.risk".into())
        );
        // Another deployment's tier is not ours.
        let other = delivery(
            b"{}",
            &[(
                "x-death",
                chain(vec![death("acme2.retry.1000ms", "expired", 1)]),
            )],
        );
        assert!(request_or_why_not(&other.properties, &names).is_err());
        let refused = delivery(
            b"{}",
            &[(
                headers::REASON,
                AMQPValue::LongString("invalid_request".into()),
            )],
        );
        assert_eq!(request_or_why_not(&refused.properties, &names), Ok(()));
        let malformed = delivery(
            b"{}",
            &[(
                headers::REASON,
                AMQPValue::LongString("malformed_command".into()),
            )],
        );
        assert!(request_or_why_not(&malformed.properties, &names).is_err());
        assert!(request_or_why_not(&delivery(b"{}", &[]).properties, &names).is_err());
    }

    #[test]
    fn a_key_ignores_the_delivery_count_and_hides_the_card_number() {
        let body = br#"{"card": {"number": "4242424242424242"}}"#;
        let first = Letter::new(delivery(body, &[]));
        let looked_at = Letter::new(delivery(
            body,
            &[(DELIVERY_COUNT, AMQPValue::LongLongInt(7))],
        ));
        assert_eq!(first.key, looked_at.key);
        assert_eq!(first.key.len(), 12);
        // The key is a hash of the masked text: another card with the same last four
        // gives the same key (told apart by `exact`), so the key cannot confirm a guess.
        let other_card = Letter::new(delivery(
            br#"{"card": {"number": "4000000000004242"}}"#,
            &[],
        ));
        assert_eq!(first.key, other_card.key);
        assert_ne!(first.exact, other_card.exact);
        let other_body = Letter::new(delivery(
            br#"{"card": {"number": "4242424242424243"}}"#,
            &[],
        ));
        assert_ne!(first.key, other_body.key);
        assert_eq!(
            parse_target(&first.key.to_uppercase()).unwrap(),
            Target::Key(first.key.clone())
        );
    }

    #[test]
    fn show_masks_card_numbers_in_every_shape() {
        let body = br#"{"payment_id": "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10",
            "card": {"number": 5555555555554444, "expiry": "12/30"},
            "note": "5105 1051 0510 5100", "alt": "4012-8888-8888-1881",
            "4242424242424242": "as a key", "amount": {"minor": 1999}}"#;
        let m = delivery(
            body,
            &[
                (
                    "x-card",
                    AMQPValue::LongString(LongString::from("pan 4000056655665556")),
                ),
                ("x-number", AMQPValue::LongLongInt(5200828282828210)),
                ("x-378282246310005", AMQPValue::Boolean(true)),
            ],
        );
        let shown =
            mask_card_numbers(&describe(&m, &why(&m.properties, &names()), "")).into_owned();
        for full in [
            "5555555555554444",
            "5105 1051 0510 5100",
            "4012-8888-8888-1881",
            "4242424242424242",
            "4000056655665556",
            "5200828282828210",
            "378282246310005",
        ] {
            assert!(!shown.contains(full), "{full} in {shown}");
        }
        for kept in [
            "****4444",
            "****5100",
            "****1881",
            "****4242",
            "****5556",
            "****8210",
            "****0005",
            "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10",
            "1999",
        ] {
            assert!(shown.contains(kept), "{kept} missing from {shown}");
        }
    }

    #[test]
    fn show_masks_a_body_that_is_not_json() {
        let m = delivery(b"garbage 4242424242424242 {", &[]);
        let shown =
            mask_card_numbers(&describe(&m, &why(&m.properties, &names()), "")).into_owned();
        assert!(!shown.contains("4242424242424242") && shown.contains("garbage ****4242 {"));
    }
}
