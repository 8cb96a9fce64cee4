//! One message of a snapshot: its key, why it is there, how it prints (masked).

use super::*;

use baton_amqp::header_text;
use baton_contract::{headers, mask_card_numbers, Names};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;
use uuid::Uuid;

impl Letter {
    pub(super) fn new(delivery: Delivery) -> Letter {
        let exact = canonical(&delivery);
        let digest = Sha256::digest(mask_card_numbers(&exact).as_bytes());
        let key = key_of_digest(&digest);
        Letter {
            delivery,
            key,
            exact,
        }
    }
}

/// A key from the first 48 bits of a digest: 12 letters `a`–`p`, one per 4 bits. Not
/// hex digits: 12 hex digits can all be decimal ones (about 1 key in 280), which the card
/// masker takes for a card number, so that key would show as `****` and the operator
/// could not name its message.
pub(super) fn key_of_digest(digest: &[u8]) -> String {
    digest[..6]
        .iter()
        .flat_map(|b| [b >> 4, b & 0x0f])
        .map(|nibble| char::from(b'a' + nibble))
        .collect()
}

impl Snapshot {
    /// Acknowledges the messages in `done` and gives the others back, in order.
    pub(super) async fn settle(self, done: &BTreeSet<usize>) -> anyhow::Result<()> {
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

pub(super) fn is_locked(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 405)
}

/// The messages `target` names, in queue order.
pub(super) fn matching(letters: &[Letter], target: &Target) -> Vec<usize> {
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
pub(super) fn canonical(m: &Delivery) -> String {
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
pub(super) struct Death {
    pub(super) queue: String,
    pub(super) reason: String,
    pub(super) count: i64,
    pub(super) time: Option<u64>,
}

/// Why a message is where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Why {
    /// Baton's reason if Baton wrote the message, else RabbitMQ's last one.
    pub(super) reason: String,
    /// `baton`, or the queue RabbitMQ dead-lettered it out of.
    pub(super) from: String,
    /// `x-death`, most recent first.
    pub(super) chain: Vec<Death>,
}

/// `x-death`, most recent first (RabbitMQ moves an entry that recurs to the front).
pub(super) fn deaths(properties: &BasicProperties) -> Vec<Death> {
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

pub(super) fn why(properties: &BasicProperties, _names: &Names) -> Why {
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
pub(super) fn describe(m: &Delivery, why: &Why, detail: &str) -> String {
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

pub(super) fn payment_id_of(m: &Delivery) -> Option<Uuid> {
    m.properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::try_parse(id.as_str()).ok())
        .or_else(|| baton_contract::PaymentRequest::sniff_payment_id(&m.data))
}

/// A header value as text: strings as themselves, tables and arrays entry by entry (so a
/// card number inside is text the masker sees, never a list of bytes), other values as
/// their type and value.
pub(super) fn show_value(value: &AMQPValue) -> String {
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
