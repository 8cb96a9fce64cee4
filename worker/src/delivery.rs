//! One delivery, end to end: verify the sender, decode the [`Command`], inject faults,
//! let the [`Handler`] answer, publish the [`Reply`] to the command's `reply_to` with
//! publisher confirms, then ack. Never panics on bad input.
//!
//! A delivery is acked only once its reply is confirmed by the broker (or cannot ever be
//! delivered: no `reply_to`, or the orchestrator's reply queue is gone — the orchestrator
//! re-sends after it resumes and the handler is idempotent). An undecodable command goes
//! to `<prefix>.dead` with the reason in headers and is acked, so it never loops. A
//! transient publish failure nacks with requeue; the quorum queue's delivery limit
//! dead-letters a command that keeps failing.

use crate::faults::INJECTED_FAULT;
use crate::handler::{Answer, Handler};
use crate::metrics::Outcome;
use crate::shared::{Link, Shared};
use baton_amqp::{self as amqp, BrokerError};
use baton_contract::{headers, trace_id, Action, Command, Reply};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

/// W3C trace context header, copied from command to reply so a payment can be followed
/// across services.
const TRACEPARENT: &str = "traceparent";

/// Handles one delivery end to end.
pub(crate) async fn process<H: Handler>(
    shared: Arc<Shared<H>>,
    link: Arc<Link>,
    delivery: Delivery,
) {
    // A ping is answered whoever sends it (`baton doctor` runs as an operator, not as an
    // orchestrator): it does nothing and reveals only what the handler's ping says.
    if let Some(ping) = baton_contract::Ping::parse(&delivery.data) {
        return answer_ping(&shared, &link, &delivery, &ping.command_id).await;
    }
    if !obeys(&shared, &delivery.properties) {
        return ack(&delivery).await;
    }
    let command: Command = match serde_json::from_slice(&delivery.data) {
        Ok(command) => command,
        Err(e) => {
            shared.metrics.command(None, Outcome::Malformed);
            return dead_letter(&shared, &link, delivery, &decode_problem(&e)).await;
        }
    };
    let traceparent = amqp::header_text(&delivery.properties, TRACEPARENT);
    let span = tracing::info_span!(
        "command",
        payment_id = %command.payment_id,
        step = %command.step,
        command_id = %command.command_id,
        action = ?command.action,
        trace_id = tracing::field::Empty,
    );
    if let Some(id) = traceparent.as_deref().and_then(trace_id) {
        span.record("trace_id", tracing::field::display(id));
    }
    async move {
        // Copied: a change of faults applies to the next command, not halfway through.
        let faults = *shared.faults.borrow();
        if faults.blackhole {
            tracing::info!("blackhole fault: acked without a reply");
            shared
                .metrics
                .command(Some(command.action), Outcome::Blackholed);
            return ack(&delivery).await;
        }
        let started = Instant::now();
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        let answer = if faults.injects_error(command.action, |rate| shared.dice.roll(rate)) {
            // Before the handler: an injected fault has no effect and stores nothing, like
            // a real transient failure the orchestrator may retry.
            Answer::fresh(Reply::error(
                &command.command_id,
                INJECTED_FAULT,
                "fault injection: this service fails a share of its commands on purpose",
            ))
        } else if command.action == Action::Ping {
            Answer::fresh(shared.handler.ping(&command.command_id))
        } else {
            shared.handler.answer(&command).await
        };
        let reply = answer.reply;
        let metrics = &shared.metrics;
        metrics.handled_in(started.elapsed());
        metrics.command(Some(command.action), Outcome::Replied(reply.outcome));
        if answer.replayed {
            metrics.duplicate();
        }
        tracing::info!(
            outcome = ?reply.outcome,
            reason = reply.reason.as_deref(),
            replayed = answer.replayed,
            "handled"
        );
        let Some(reply_to) = reply_to(&delivery) else {
            tracing::warn!("command has no reply_to: acked without a reply");
            return ack(&delivery).await;
        };
        let body = match serde_json::to_vec(&reply) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "reply cannot be encoded: acked without a reply");
                return ack(&delivery).await;
            }
        };
        let mut extra = vec![(headers::COMMAND_ID, command.command_id.as_str())];
        if let Some(traceparent) = traceparent.as_deref() {
            extra.push((TRACEPARENT, traceparent));
        }
        let properties = reply_properties(&shared, &delivery, &extra);
        match amqp::publish_confirmed(&link.publish, "", &reply_to, &body, properties).await {
            Ok(()) => ack(&delivery).await,
            Err(e @ BrokerError::Unroutable { .. }) => {
                // The orchestrator instance is gone; it re-sends after it resumes and gets
                // the same answer (idempotent), so this reply is not needed.
                tracing::warn!(error = %e, reply_to = %reply_to, "reply queue is gone: acked");
                ack(&delivery).await
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "publishing the reply failed: requeued");
                link.check();
                nack_requeue(&delivery).await
            }
            Err(e) => {
                tracing::error!(error = %e, "the reply cannot be published: acked");
                ack(&delivery).await
            }
        }
    }
    .instrument(span)
    .await
}

fn reply_to(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .reply_to()
        .as_ref()
        .map(|q| q.as_str().to_owned())
}

/// A reply's properties: JSON, `extra` headers, this process's user, the command's
/// correlation id.
fn reply_properties<H>(
    shared: &Shared<H>,
    delivery: &Delivery,
    extra: &[(&str, &str)],
) -> BasicProperties {
    let properties = amqp::with_sender(amqp::json_properties(extra), &shared.user);
    match delivery.properties.correlation_id() {
        Some(correlation_id) => properties.with_correlation_id(correlation_id.clone()),
        None => properties,
    }
}

/// Answers a ping (`baton doctor`) with the handler's identity, no store touched. A
/// black-hole fault swallows pings too, as a hung service would; injected errors and
/// latency do not apply (they stand for failing work, and a ping does none).
async fn answer_ping<H: Handler>(
    shared: &Shared<H>,
    link: &Link,
    delivery: &Delivery,
    command_id: &str,
) {
    if shared.faults.borrow().blackhole {
        return ack(delivery).await;
    }
    shared.metrics.command(
        Some(Action::Ping),
        Outcome::Replied(baton_contract::ReplyOutcome::Approved),
    );
    let reply = shared.handler.ping(command_id);
    let Some(reply_to) = reply_to(delivery) else {
        return ack(delivery).await;
    };
    let Ok(body) = serde_json::to_vec(&reply) else {
        return ack(delivery).await;
    };
    let properties = reply_properties(shared, delivery, &[(headers::COMMAND_ID, command_id)]);
    match amqp::publish_confirmed(&link.publish, "", &reply_to, &body, properties).await {
        Err(e) if e.is_transient() && !matches!(e, BrokerError::Unroutable { .. }) => {
            link.check();
            nack_requeue(delivery).await
        }
        // Delivered, or the pinger is gone (nobody waits any more).
        _ => ack(delivery).await,
    }
}

/// Whether a delivery comes from a configured orchestrator user (always, when none is
/// configured). One that does not is counted and logged with ids only — at WARN the
/// first time, then at DEBUG, so a flood cannot flood the log — and dropped unread:
/// neither handled nor dead-lettered, since nothing in it can be trusted.
fn obeys<H>(shared: &Shared<H>, properties: &BasicProperties) -> bool {
    if shared.orchestrators.is_empty() {
        return true;
    }
    let sender = amqp::sender(properties);
    if sender.is_some_and(|user| shared.orchestrators.iter().any(|o| o == user)) {
        return true;
    }
    shared.metrics.rejected(crate::metrics::WRONG_SENDER);
    let command_id = amqp::header_text(properties, headers::COMMAND_ID).unwrap_or_default();
    let first = !shared
        .refusal_logged
        .swap(true, std::sync::atomic::Ordering::Relaxed);
    let sender = sender.unwrap_or("");
    if first {
        tracing::warn!(
            queue = %shared.queue,
            sender,
            command_id = %baton_contract::mask::bounded(&command_id, 128),
            "command from a sender that is not a configured orchestrator: dropped \
             (further ones are logged at debug)"
        );
    } else {
        tracing::debug!(queue = %shared.queue, sender, "command from an unknown sender dropped");
    }
    false
}

/// Moves an undecodable delivery to the dead-letter queue with the reason, then acks it;
/// requeues only if the dead-letter publish itself failed transiently.
async fn dead_letter<H>(shared: &Shared<H>, link: &Link, delivery: Delivery, detail: &str) {
    tracing::warn!(queue = %shared.queue, detail, "malformed command: dead-lettered");
    let mut table = FieldTable::default();
    let mut text = |key: &str, value: &str| {
        table.insert(key.into(), AMQPValue::LongString(value.into()));
    };
    text(headers::REASON, "malformed_command");
    text(headers::DETAIL, detail);
    text("x-baton-queue", &shared.queue);
    let mut properties = amqp::with_sender(
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(table),
        &shared.user,
    );
    let original = &delivery.properties;
    if let Some(content_type) = original.content_type() {
        properties = properties.with_content_type(content_type.clone());
    }
    if let Some(correlation_id) = original.correlation_id() {
        properties = properties.with_correlation_id(correlation_id.clone());
    }
    // A malformed command cannot be replayed as it is; keep it for operators, but without
    // a card number (authorization and risk commands carry one).
    let kept =
        baton_contract::mask_card_numbers(&String::from_utf8_lossy(&delivery.data)).into_owned();
    match amqp::publish_confirmed(
        &link.publish,
        "",
        &shared.dead_queue,
        kept.as_bytes(),
        properties,
    )
    .await
    {
        Ok(()) => ack(&delivery).await,
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "dead-lettering failed: requeued");
            link.check();
            nack_requeue(&delivery).await
        }
        Err(e) => {
            // Not requeued: it would fail the same way forever.
            tracing::error!(error = %e, "dead-letter queue unreachable: message dropped");
            ack(&delivery).await
        }
    }
}

/// Why a body is not a command, masked and capped: serde quotes the offending value, and
/// a card number in the wrong place must not reach a header or a log in full, nor a
/// megabyte-long string grow the `x-baton-detail` header.
fn decode_problem(error: &serde_json::Error) -> String {
    baton_contract::mask::bounded(&format!("body is not a Baton command: {error}"), 200)
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker redelivers, and the handler is idempotent.
        tracing::warn!(error = %e, "ack failed");
    }
}

async fn nack_requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = delivery.acker.nack(options).await {
        tracing::warn!(error = %e, "nack failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_problems_never_echo_card_numbers() {
        for body in [
            r#"{"command_id": 4242424242424242}"#,
            r#"{"command_id": ["4242424242424242"]}"#,
            r#"{"command_id": "4242 4242 4242 4242", "x": }"#,
            r#"{"4242-4242-4242-4242": 1}"#,
        ] {
            let e = serde_json::from_str::<Command>(body).unwrap_err();
            let p = decode_problem(&e);
            assert!(
                !p.contains("424242") && !p.contains("4242 4242 4242"),
                "{p}"
            );
            assert!(p.starts_with("body is not a Baton command"), "{p}");
        }
        let long = format!(r#"{{"command_id": ["{}"]}}"#, "x".repeat(10_000));
        let e = serde_json::from_str::<Command>(&long).unwrap_err();
        assert!(decode_problem(&e).chars().count() <= 201, "capped");
    }
}
