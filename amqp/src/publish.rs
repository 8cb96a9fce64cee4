//! Message properties (schema header, the sender's `user_id`) and confirmed publishing.

use crate::BrokerError;
use baton_contract::redact_url;
use baton_contract::{headers, CONTENT_TYPE, KNOWN_SCHEMA_VERSIONS, SCHEMA_VERSION};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use std::future::Future;
use std::pin::Pin;

/// Properties of a persistent JSON message with Baton's schema header and `extra` headers.
pub fn json_properties(extra: &[(&str, &str)]) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(
        headers::SCHEMA.into(),
        AMQPValue::LongLongInt(i64::from(SCHEMA_VERSION)),
    );
    for (key, value) in extra {
        table.insert((*key).into(), AMQPValue::LongString((*value).into()));
    }
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_headers(table)
}

/// The broker user a connection to `url` logs in as: the URL's user name, percent-decoded,
/// or `guest` when the URL names none (the client library's default). RabbitMQ accepts a
/// message's `user_id` property only when it equals this name, so it is what every Baton
/// binary stamps on what it publishes ([`with_sender`]).
pub fn url_user(url: &str) -> Result<String, BrokerError> {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .map_err(|problem| BrokerError::BadUrl {
            url: redact_url(url),
            problem,
        })
}

/// `properties` with `user_id` set to `user`: RabbitMQ refuses the publish unless `user`
/// is the connection's own user, so a receiver that checks `user_id` knows who sent it.
/// A user name over AMQP's 255-byte limit cannot be stamped (nor exist in RabbitMQ).
pub fn with_sender(properties: BasicProperties, user: &str) -> BasicProperties {
    match short(user) {
        Some(user) => properties.with_user_id(user),
        None => properties,
    }
}

/// The broker-validated sender of a delivery: its `user_id` property, if set.
pub fn sender(properties: &BasicProperties) -> Option<&str> {
    properties.user_id().as_ref().map(|u| u.as_str())
}

/// Checks a request's `baton-schema` header: absent means version 1; present, it must
/// name one of [`KNOWN_SCHEMA_VERSIONS`], as an integer of any AMQP width or as decimal
/// text (clients' AMQP libraries differ in how they send a number). Anything else is
/// refused naming the versions known, never guessed at: a body of another version may
/// mean something else under the same field names.
pub fn check_schema(properties: &BasicProperties) -> Result<(), baton_contract::InvalidRequest> {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|table| table.inner().get(headers::SCHEMA))
    else {
        return Ok(());
    };
    let version: Option<i128> = match value {
        AMQPValue::ShortShortInt(v) => Some(i128::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i128::from(*v)),
        AMQPValue::ShortInt(v) => Some(i128::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i128::from(*v)),
        AMQPValue::LongInt(v) => Some(i128::from(*v)),
        AMQPValue::LongUInt(v) => Some(i128::from(*v)),
        AMQPValue::LongLongInt(v) => Some(i128::from(*v)),
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            let text = header_text(properties, headers::SCHEMA).unwrap_or_default();
            let digits =
                !text.is_empty() && text.len() <= 9 && text.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| text.parse().ok()).flatten()
        }
        _ => None,
    };
    if version.is_some_and(|v| KNOWN_SCHEMA_VERSIONS.iter().any(|&k| i128::from(k) == v)) {
        return Ok(());
    }
    let known = KNOWN_SCHEMA_VERSIONS
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    // The value is described, not quoted, beyond a number: a header can hold anything.
    let got = match version {
        Some(v) => format!("version {v}"),
        None => "not a version number".to_owned(),
    };
    Err(baton_contract::InvalidRequest::new(
        None,
        headers::SCHEMA,
        &format!(
            "is {got}; this orchestrator reads schema version(s) {known} (an absent header \
             means 1): send it as the integer or text of a known version"
        ),
    ))
}

/// A header's text value, if present and textual.
pub fn header_text(properties: &BasicProperties, key: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(key)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A string as an AMQP short string, or `None` if over AMQP's 255-byte limit.
pub fn short(text: &str) -> Option<ShortString> {
    ShortString::try_new(text).ok()
}

/// A string as an AMQP long string header value.
pub fn long(text: &str) -> LongString {
    text.into()
}

/// Publishes on a confirm-mode channel with `mandatory` set and waits for the broker's
/// confirm: `Ok` means the message is routed to at least one queue and, for persistent
/// messages on durable queues, safely stored.
///
/// The future is boxed: lapin's publish and confirm futures and the properties take about
/// 1.8 KiB, which a caller awaiting this in place would carry for as long as it lives —
/// the orchestrator's command call does, for the whole wait for the reply, once per
/// payment in flight. One allocation per publish instead.
pub fn publish_confirmed<'a>(
    channel: &'a Channel,
    exchange: &'a str,
    routing_key: &'a str,
    body: &'a [u8],
    properties: BasicProperties,
) -> Pin<Box<impl Future<Output = Result<(), BrokerError>> + Send + 'a>> {
    Box::pin(publish_in_place(
        channel,
        exchange,
        routing_key,
        body,
        properties,
    ))
}

async fn publish_in_place(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    // Names only, never the body: the error reaches logs. Masked and capped, since a
    // routing key can be a client's `reply_to`.
    let target = || {
        let key = baton_contract::mask::bounded(routing_key, 128);
        if exchange.is_empty() {
            format!("queue {key}")
        } else {
            format!("{}/{key}", baton_contract::mask::bounded(exchange, 128))
        }
    };
    let (Some(exchange_name), Some(key)) = (short(exchange), short(routing_key)) else {
        return Err(BrokerError::Unroutable { target: target() });
    };
    let confirm = channel
        .basic_publish(
            exchange_name,
            key,
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    if confirm.is_nack() {
        return Err(BrokerError::PublishNacked { target: target() });
    }
    if confirm.take_message().is_some() {
        return Err(BrokerError::Unroutable { target: target() });
    }
    Ok(())
}
