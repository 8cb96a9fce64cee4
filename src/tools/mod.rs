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
//! A message is named by its **key**: 12 letters `a`–`p`, 48 bits of a SHA-256 over the
//! message as printed (card numbers masked): its headers except `x-delivery-count` (which
//! grows each time anybody looks), its properties and its body. Letters, not hex digits:
//! a key of 12 decimal digits would itself be masked as a card number. The key stays the
//! same across looks and operators and tells nothing `show` would not print. A payment id
//! names every message of that payment.
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
//!
//! `letters.rs` reads a message (key, reasons, printing); `replay.rs` sends one back.

mod letters;
mod replay;
#[cfg(test)]
mod tests;

use letters::*;

use crate::saga::AttentionItem;
use baton_amqp::{self as amqp, header_text};
use baton_contract::{headers, mask_card_numbers, Names};
use clap::Subcommand;
use lapin::message::Delivery;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;
use uuid::Uuid;

/// `baton dead …` / `baton attention …`. Each works on one snapshot of the whole queue,
/// under a lock (a second operator's command waits): nothing moves by looking.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List every message (key, reason, where from, payment id, detail) without removing
    /// or reordering any
    List {
        /// Print at most this many
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print the messages named: headers, x-death chain and body
    Show {
        /// A message key from `list` (12 letters a–p), or a payment id (all its messages)
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Send the messages named (or all with --all) back: a dead request to the request
    /// queue, an attention item's compensation to its service; removed once that worked
    Replay {
        /// A message key from `list`, or a payment id with one message here
        targets: Vec<String>,
        /// Replay every message
        #[arg(long, conflicts_with = "targets")]
        all: bool,
    },
    /// Remove the messages named for good, printing each first (an in-doubt item
    /// settled by hand, a dead command that must not run)
    Drop {
        /// A message key from `list`, or a payment id with one message here
        #[arg(required = true)]
        targets: Vec<String>,
    },
}

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

/// How long a command waits for the messages it gave back to show in the queue again.
const BACK_WAIT: Duration = Duration::from_secs(10);

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

/// Whether `text` has a key's shape (any case): 12 letters `a`–`p`.
pub fn is_key(text: &str) -> bool {
    text.len() == 12
        && text
            .bytes()
            .all(|b| (b'a'..=b'p').contains(&b.to_ascii_lowercase()))
}

fn parse_target(text: &str) -> anyhow::Result<Target> {
    let text = text.trim();
    if is_key(text) {
        return Ok(Target::Key(text.to_ascii_lowercase()));
    }
    match Uuid::try_parse(text) {
        Ok(id) => Ok(Target::Payment(id)),
        Err(_) => anyhow::bail!(
            "{} is neither a message key (12 letters a–p, from `list`) nor a payment id",
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
        let given_back = snapshot.letters.len() - done.len();
        let mut settled = snapshot.settle(&done).await;
        if settled.is_ok() {
            settled = self.until_back(given_back).await;
        }
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

    /// Waits (up to [`BACK_WAIT`]) until the queue holds at least the `given_back`
    /// messages again. A quorum queue applies a given-back message after the channel
    /// that returned it has closed, so without this wait the next command — another
    /// operator's, or this operator's next `list` — could take the lock and find them
    /// missing. The broker announces nothing: its count is asked again.
    async fn until_back(&self, given_back: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + BACK_WAIT;
        loop {
            let counts =
                amqp::queue_counts(self.connection, self.queue, Duration::from_secs(2)).await;
            // With a consumer on the queue (see `take`'s warning) the count proves nothing.
            if counts
                .is_some_and(|(ready, consumers)| consumers > 0 || ready as usize >= given_back)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{} messages were given back to {} but it does not show them after {} s; \
                     list it again in a moment",
                    given_back,
                    self.queue,
                    BACK_WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes every message of the queue, unacknowledged, in order.
    async fn take(&self) -> anyhow::Result<Snapshot> {
        let queue = self.queue;
        let channel = self.connection.create_channel().await?;
        let declared = amqp::declare_passive(&channel, queue).await.map_err(|e| {
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
