//! What the orchestrator publishes besides commands: results, and dead-letter copies.

use super::transport::add_header;
use super::Shared;
use baton_amqp::{header_text, json_properties, publish_confirmed, BrokerError};
use baton_contract::mask::bounded;
use baton_contract::{headers, PaymentResult};
use lapin::message::Delivery;
use lapin::{BasicProperties, Channel};
use tracing::warn;

/// A result's properties: JSON, this process's `user_id`, the payment id as `message_id`,
/// and the request's `correlation_id` so the client can match it.
fn result_properties(
    result: &PaymentResult,
    request: &BasicProperties,
    shared: &Shared,
) -> BasicProperties {
    let properties = shared
        .env
        .transport
        .stamped(json_properties(&[]))
        .with_message_id(result.payment_id.to_string().as_str().into());
    match request.correlation_id() {
        Some(correlation_id) => properties.with_correlation_id(correlation_id.clone()),
        None => properties,
    }
}

/// Publishes a result to the payments exchange (routed by status) and to the request's
/// `reply_to`, at once, both confirmed; a `reply_to` that is gone is [`client_gone`].
pub(super) async fn publish_result(
    channel: &Channel,
    result: &PaymentResult,
    request: &BasicProperties,
    shared: &Shared,
) -> Result<(), BrokerError> {
    let body = serde_json::to_vec(result).expect("a PaymentResult always serialises");
    let mut properties = result_properties(result, request, shared);
    if let Some(traceparent) = header_text(request, "traceparent") {
        properties = add_header(properties, "traceparent", &traceparent);
    }
    let names = &shared.settings.names;
    let exchange = names.payments_exchange();
    let routing_key = names.result_routing_key(result.status.as_str());
    let to_exchange =
        publish_confirmed(channel, &exchange, &routing_key, &body, properties.clone());
    let to_client = async {
        let Some(reply_to) = request.reply_to() else {
            return Ok(());
        };
        match publish_confirmed(channel, "", reply_to.as_str(), &body, properties.clone()).await {
            Err(BrokerError::Unroutable { .. }) => {
                client_gone(reply_to.as_str(), shared);
                Ok(())
            }
            other => other,
        }
    };
    let (to_exchange, to_client) = tokio::join!(to_exchange, to_client);
    shared.env.transport.watch(to_exchange.and(to_client))
}

/// Counts a published result in `baton_payment_results_total{status,reason}`.
pub(super) fn count_result(result: &PaymentResult, shared: &Shared) {
    let reason = shared
        .settings
        .workflow
        .reason_label(result.reason.as_deref());
    shared
        .metrics
        .results
        .with_label_values(&[result.status.as_str(), reason])
        .inc();
}

/// The client's `reply_to` queue does not exist: the client went away. Not an error — the
/// result is still on the payments exchange (and its results queue); counted and logged.
pub(super) fn client_gone(reply_to: &str, shared: &Shared) {
    shared.metrics.client_replies_unroutable.inc();
    warn!(reply_to = %bounded(reply_to, 64), "the client's reply_to queue does not exist; the result is only on the payments exchange");
}

/// Publishes a result to the request's `reply_to` only (not to the payments exchange). A
/// `reply_to` queue that no longer exists is not an error ([`client_gone`]).
pub(super) async fn publish_to_client(
    channel: &Channel,
    result: &PaymentResult,
    request: &BasicProperties,
    shared: &Shared,
) -> Result<(), BrokerError> {
    let Some(reply_to) = request.reply_to() else {
        return Ok(());
    };
    let body = serde_json::to_vec(result).expect("a PaymentResult always serialises");
    let properties = result_properties(result, request, shared);
    match publish_confirmed(channel, "", reply_to.as_str(), &body, properties).await {
        Err(BrokerError::Unroutable { .. }) => {
            client_gone(reply_to.as_str(), shared);
            Ok(())
        }
        other => other,
    }
}

/// Most of a body over the request size limit that a dead letter keeps: enough to see
/// the payment id, the merchant and what made it large; the rest would only fill
/// `<prefix>.dead` (a body is never larger than the broker's `max_message_size`).
pub(super) const DEAD_LETTER_BODY_KEEP: usize = 4096;

/// Headers the broker owns (it writes them when it dead-letters a message): never
/// copied onto a message Baton publishes.
pub(super) fn is_broker_death_header(key: &str) -> bool {
    key == "x-death" || key.starts_with("x-first-death-") || key.starts_with("x-last-death-")
}

/// A copy of the request for operators: the client's properties and headers, Baton's
/// reason on top. A body over the request size limit is kept truncated
/// ([`DEAD_LETTER_BODY_KEEP`] bytes, masked: [`baton_contract::mask::truncated`]), with
/// [`headers::TRUNCATED`] and [`headers::ORIGINAL_SIZE`] saying so.
pub(super) async fn dead_letter_copy(
    channel: &Channel,
    delivery: &Delivery,
    reason: &str,
    detail: &str,
    shared: &Shared,
) -> Result<(), BrokerError> {
    let oversized = delivery.data.len() > shared.settings.limits.max_body_bytes;
    let kept;
    let body: &[u8] = if oversized {
        kept = baton_contract::mask::truncated(&delivery.data, DEAD_LETTER_BODY_KEEP);
        kept.as_bytes()
    } else {
        &delivery.data
    };
    let original_size = delivery.data.len().to_string();
    let kept_size = body.len().to_string();
    let mut baton_headers = vec![(headers::REASON, reason), (headers::DETAIL, detail)];
    if oversized {
        baton_headers.push((headers::TRUNCATED, kept_size.as_str()));
        baton_headers.push((headers::ORIGINAL_SIZE, original_size.as_str()));
    }
    let mut properties = shared
        .env
        .transport
        .stamped(json_properties(&baton_headers));
    // Keep what the client sent, so an operator can see and replay it as it was: its
    // headers (its own `baton-schema` and `traceparent` included) under Baton's.
    if let Some(client) = delivery.properties.headers() {
        let mut table = properties.headers().clone().unwrap_or_default();
        let baton_says = [
            headers::REASON,
            headers::DETAIL,
            headers::TRUNCATED,
            headers::ORIGINAL_SIZE,
        ];
        for (key, value) in client.inner() {
            let key_text = key.as_str();
            if !baton_says.contains(&key_text) && !is_broker_death_header(key_text) {
                table.insert(key.clone(), value.clone());
            }
        }
        properties = properties.with_headers(table);
    }
    if let Some(ct) = delivery.properties.content_type() {
        properties = properties.with_content_type(ct.clone());
    }
    if let Some(reply_to) = delivery.properties.reply_to() {
        properties = properties.with_reply_to(reply_to.clone());
    }
    if let Some(correlation_id) = delivery.properties.correlation_id() {
        properties = properties.with_correlation_id(correlation_id.clone());
    }
    let dead = shared.settings.names.dead_queue();
    shared
        .env
        .transport
        .watch(publish_confirmed(channel, "", &dead, body, properties).await)?;
    shared
        .metrics
        .dead_lettered
        .with_label_values(&[reason])
        .inc();
    Ok(())
}
