//! Operators' tools for the dead-letter and attention queues: list, show, replay.
//!
//! Listing takes the messages without acknowledging them and then closes the channel, so
//! RabbitMQ puts them back: nothing is removed by looking. Numbers are positions in that
//! listing; `show` and `replay` list again and pick by number, and print the payment id
//! they acted on so the operator can check it was the intended one.
//!
//! Replay: a dead letter (a request) goes back to `<prefix>.requests` as it was sent; an
//! attention item that carries a command (a compensation that kept failing) is sent to
//! its service again and removed only when the service approves; an `in_doubt` item is
//! never re-sent (that could move money for a payment reported failed): it is settled
//! by hand against the service's ledger.
//!
//! Everything printed goes through [`mask_card_numbers`]: the body (whatever its shape:
//! a card number as a JSON string, number or key), every header key and value, reasons
//! and details. The payment id, a UUID, survives masking.

use crate::cli::QueueCommand;
use crate::saga::AttentionItem;
use baton_contract::amqp::{self, header_text, json_properties, publish_confirmed};
use baton_contract::{headers, mask_card_numbers, Names, Reply, ReplyOutcome};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use std::time::Duration;
use uuid::Uuid;

/// Headers Baton or RabbitMQ added on the way to the dead-letter queue, dropped on replay.
const ADDED_HEADERS: [&str; 7] = [
    headers::REASON,
    headers::DETAIL,
    headers::PARKED,
    headers::PARKED_AT,
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
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
    let code = match command {
        QueueCommand::List { limit } => {
            let (channel, messages) = take(&connection, queue, limit).await?;
            if messages.is_empty() {
                println!("{queue} is empty");
            }
            for (i, m) in messages.iter().enumerate() {
                let line = format!(
                    "{:>4}  {:<24} {:<38} {}",
                    i + 1,
                    reason_of(&m.properties),
                    payment_id_of(m)
                        .map(|id| id.to_string())
                        .unwrap_or_else(|| "-".into()),
                    baton_contract::mask::bounded(&detail_of(m), 100)
                );
                println!("{}", mask_card_numbers(&line));
            }
            let _ = channel.close(200, "listed".into()).await;
            0
        }
        QueueCommand::Show { n } => {
            let (channel, messages) = take(&connection, queue, n).await?;
            let code = match messages.get(n.wrapping_sub(1)) {
                None => {
                    eprintln!(
                        "{queue} has {} messages; there is no number {n}",
                        messages.len()
                    );
                    1
                }
                Some(m) => {
                    println!("{}", mask_card_numbers(&describe(m)));
                    0
                }
            };
            let _ = channel.close(200, "shown".into()).await;
            code
        }
        QueueCommand::Replay { n, all } => {
            let wanted = if all { usize::MAX } else { n.unwrap_or(0) };
            if wanted == 0 {
                anyhow::bail!("say which message to replay (a number from `list`) or --all");
            }
            let (channel, messages) = take(&connection, queue, wanted).await?;
            let chosen: Vec<&Delivery> = if all {
                messages.iter().collect()
            } else {
                messages.get(wanted - 1).into_iter().collect()
            };
            if chosen.is_empty() {
                eprintln!("{queue} has {} messages; nothing to replay", messages.len());
                let _ = channel.close(200, "nothing".into()).await;
                return Ok(1);
            }
            let publish = amqp::confirm_channel(&connection).await?;
            let mut failures = 0;
            for m in chosen {
                let id = payment_id_of(m)
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "-".into());
                let replayed = if queue == names.attention_queue() {
                    replay_attention(&connection, &publish, names, m, &sender).await
                } else {
                    replay_request(&publish, names, m, &sender).await
                };
                match replayed {
                    Ok(what) => {
                        m.acker.ack(BasicAckOptions::default()).await?;
                        println!("{}", mask_card_numbers(&format!("replayed {id}: {what}")));
                    }
                    Err(e) => {
                        failures += 1;
                        let line = format!("not replayed {id}: {e:#}");
                        eprintln!("{}", mask_card_numbers(&line));
                    }
                }
            }
            let _ = channel.close(200, "replayed".into()).await;
            i32::from(failures > 0)
        }
    };
    let _ = connection.close(200, "done".into()).await;
    Ok(code)
}

/// Takes up to `limit` messages of `queue` without acking them.
async fn take(
    connection: &Connection,
    queue: &str,
    limit: usize,
) -> anyhow::Result<(Channel, Vec<Delivery>)> {
    let channel = connection.create_channel().await?;
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
        .map_err(|e| anyhow::anyhow!("queue {queue} cannot be read ({e}); is the prefix right?"))?;
    let wanted = limit.min(declared.message_count() as usize);
    let mut messages = Vec::with_capacity(wanted);
    if wanted == 0 {
        return Ok((channel, messages));
    }
    channel
        .basic_qos(
            u16::try_from(wanted).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while messages.len() < wanted {
        match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(Some(Ok(delivery))) => messages.push(delivery),
            Ok(Some(Err(e))) => return Err(e.into()),
            // Fewer than counted (another consumer took some): list what came.
            Ok(None) | Err(_) => break,
        }
    }
    Ok((channel, messages))
}

/// What `show` prints of a message, before masking: reason, payment id, detail, every
/// header, then the body (pretty JSON when it is JSON). The caller masks the whole text,
/// so a card number is caught in a header key or value and in a JSON key, string or
/// number alike.
fn describe(m: &Delivery) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "reason      {}", reason_of(&m.properties));
    if let Some(id) = payment_id_of(m) {
        let _ = writeln!(out, "payment_id  {id}");
    }
    let _ = writeln!(out, "detail      {}", detail_of(m));
    if let Some(table) = m.properties.headers() {
        for (key, value) in table.inner() {
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

fn reason_of(properties: &BasicProperties) -> String {
    header_text(properties, headers::REASON)
        .or_else(|| header_text(properties, "x-first-death-reason"))
        .unwrap_or_else(|| "-".into())
}

fn detail_of(m: &Delivery) -> String {
    if let Some(detail) = header_text(&m.properties, headers::DETAIL) {
        return detail;
    }
    match serde_json::from_slice::<AttentionItem>(&m.data) {
        Ok(item) => format!("{} {}: {}", item.step, item.kind, item.error),
        Err(_) => String::new(),
    }
}

fn payment_id_of(m: &Delivery) -> Option<Uuid> {
    m.properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::try_parse(id.as_str()).ok())
        .or_else(|| baton_contract::PaymentRequest::sniff_payment_id(&m.data))
}

fn show_value(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// Sends a dead-lettered request back to the request queue, as the client sent it.
/// Only requests: a command a service dead-lettered is not a payment request.
async fn replay_request(
    publish: &Channel,
    names: &Names,
    m: &Delivery,
    sender: &str,
) -> anyhow::Result<String> {
    let baton_reason = header_text(&m.properties, headers::REASON);
    let from = header_text(&m.properties, "x-first-death-queue");
    let is_request = match baton_reason.as_deref() {
        Some(
            "invalid_request" | "service_unavailable" | "payment_id_reused" | "journal_corrupt",
        ) => true,
        Some(_) => false,
        None => from.as_deref() == Some(names.requests_queue().as_str()),
    };
    if !is_request {
        anyhow::bail!(
            "not a payment request ({}, from {}): not replayed",
            baton_reason.unwrap_or_else(|| "dead-lettered by RabbitMQ".into()),
            from.unwrap_or_else(|| "a service".into())
        );
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
            .filter(|(k, _)| !ADDED_HEADERS.contains(&k.as_str()))
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
            "a {} item is settled by hand: check command {} in the {} service's ledger, then remove the item",
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
        let shown = mask_card_numbers(&describe(&m)).into_owned();
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
        let shown = mask_card_numbers(&describe(&m)).into_owned();
        assert!(!shown.contains("4242424242424242") && shown.contains("garbage ****4242 {"));
    }
}
