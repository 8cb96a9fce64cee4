//! RabbitMQ plumbing every Baton binary shares: connecting with a useful error, declaring
//! the topology idempotently, and publishing with publisher confirms.
//!
//! One function per part of the topology, so each binary declares exactly what it uses and
//! can simply call it again after a reconnect.

use crate::names::{headers, Names, CONTENT_TYPE, SCHEMA_VERSION};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// How many times RabbitMQ delivers a request or command before dead-lettering it. A
/// message that crashes its consumer every time ends in `<prefix>.dead` instead of looping.
pub const DELIVERY_LIMIT: i64 = 20;

/// Default broker URL.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Errors of the shared broker plumbing. Each variant says what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached or refused the login.
    #[error(
        "cannot connect to RabbitMQ at {url} ({cause}). Is it running? Start it with \
         `rabbitmq-server -detached` (or `docker compose up -d rabbitmq`), or point \
         AMQP_URL / --amqp-url at it"
    )]
    Connect {
        /// The URL, password removed.
        url: String,
        /// What the client library said.
        cause: String,
    },
    /// The URL is not an AMQP URL.
    #[error("AMQP_URL {url} is not a valid amqp:// URL: {problem}")]
    BadUrl {
        /// The URL, password removed.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The broker refused the message (negative confirm): retry later.
    #[error("RabbitMQ refused the message published to {target} (nack)")]
    PublishNacked {
        /// Exchange/routing key.
        target: String,
    },
    /// No queue is bound where the message was published: retrying will not help until
    /// the topology changes.
    #[error("message published to {target} was unroutable: no queue is bound there")]
    Unroutable {
        /// Exchange/routing key.
        target: String,
    },
    /// The channel or connection failed underneath.
    #[error("RabbitMQ channel error: {0}")]
    Channel(#[from] lapin::Error),
}

impl BrokerError {
    /// Whether trying again later (after a reconnect, if needed) may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            BrokerError::BadUrl { .. } | BrokerError::Unroutable { .. }
        )
    }
}

/// `amqp://guest:***@host/…`: the URL without its password, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user information ends at the last `@` (a password may contain `/`, `?` or
    // `@`); without an `@` there is no password to hide.
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host_and_path) = (&rest[..at], &rest[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host_and_path}"),
        None => format!("{scheme}://{userinfo}@{host_and_path}"),
    }
}

/// Connects to `url`, naming the connection `name` in the management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(BrokerError::BadUrl {
            url: redact_url(url),
            problem: "it must start with amqp://".into(),
        });
    }
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .map_err(|e| BrokerError::Connect {
            url: redact_url(url),
            cause: root_cause(&e),
        })
}

/// The innermost message of an error chain, which is the one that says what happened
/// (lapin repeats it at each level).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A channel in confirm mode, for publishing.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

fn quorum_args(dead_letter_to: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(dead) = dead_letter_to {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(dead.into()),
        );
    }
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares what requests, results and dead letters need: the payments exchange, the
/// request queue (bound to `request`), the results queue (bound to `result.*`) and the
/// dead-letter queue. Idempotent.
pub async fn declare_core(channel: &Channel, names: &Names) -> Result<(), BrokerError> {
    let exchange = names.payments_exchange();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let dead = names.dead_queue();
    channel
        .queue_declare(dead.as_str().into(), durable(), quorum_args(None))
        .await?;
    let requests = names.requests_queue();
    channel
        .queue_declare(
            requests.as_str().into(),
            durable(),
            quorum_args(Some(&dead)),
        )
        .await?;
    channel
        .queue_bind(
            requests.as_str().into(),
            exchange.as_str().into(),
            names.request_routing_key().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let results = names.results_queue();
    channel
        .queue_declare(results.as_str().into(), durable(), quorum_args(None))
        .await?;
    channel
        .queue_bind(
            results.as_str().into(),
            exchange.as_str().into(),
            "result.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares the operators' attention queue. Idempotent.
pub async fn declare_attention(channel: &Channel, names: &Names) -> Result<String, BrokerError> {
    let queue = names.attention_queue();
    channel
        .queue_declare(queue.as_str().into(), durable(), quorum_args(None))
        .await?;
    Ok(queue)
}

/// Declares a parking queue: messages wait `delay_ms`, then RabbitMQ dead-letters them
/// back to the request queue. Plain TTL and dead-lettering: no plugin needed.
/// Idempotent.
pub async fn declare_parking(
    channel: &Channel,
    names: &Names,
    delay_ms: u64,
) -> Result<String, BrokerError> {
    let queue = names.retry_queue(delay_ms);
    let mut args = quorum_args(None);
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(delay_ms).unwrap_or(i64::MAX)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(names.requests_queue().as_str().into()),
    );
    channel
        .queue_declare(queue.as_str().into(), durable(), args)
        .await?;
    Ok(queue)
}

/// Declares one service's command queue (and the dead-letter queue it overflows to).
/// Idempotent.
pub async fn declare_command_queue(
    channel: &Channel,
    names: &Names,
    service: &str,
) -> Result<String, BrokerError> {
    let dead = names.dead_queue();
    channel
        .queue_declare(dead.as_str().into(), durable(), quorum_args(None))
        .await?;
    let queue = names.command_queue(service);
    channel
        .queue_declare(queue.as_str().into(), durable(), quorum_args(Some(&dead)))
        .await?;
    Ok(queue)
}

/// Deletes every queue and the exchange of a deployment: for demos and tests that run on
/// a throw-away prefix. Never called by the orchestrator or the services themselves.
pub async fn delete_topology(
    channel: &Channel,
    names: &Names,
    services: &[&str],
) -> Result<(), BrokerError> {
    delete_topology_with_parking(channel, names, services, &[]).await
}

/// [`delete_topology`], plus the parking queues of the given delays.
pub async fn delete_topology_with_parking(
    channel: &Channel,
    names: &Names,
    services: &[&str],
    parking_delays_ms: &[u64],
) -> Result<(), BrokerError> {
    let mut queues = vec![
        names.requests_queue(),
        names.results_queue(),
        names.dead_queue(),
        names.attention_queue(),
    ];
    queues.extend(services.iter().map(|s| names.command_queue(s)));
    queues.extend(parking_delays_ms.iter().map(|d| names.retry_queue(*d)));
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(
            names.payments_exchange().as_str().into(),
            Default::default(),
        )
        .await?;
    Ok(())
}

/// Declares an exclusive, auto-deleted queue named `name` (the broker picks a name when
/// `name` is empty) and consumes it without acks: the reply queue of one process, which
/// disappears with its connection. Returns the queue's name and the consumer.
pub async fn consume_exclusive(
    channel: &Channel,
    name: &str,
) -> Result<(String, lapin::Consumer), BrokerError> {
    let queue = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = queue.name().as_str().to_owned();
    let consumer = channel
        .basic_consume(
            name.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..lapin::options::BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((name, consumer))
}

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
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let target = || {
        if exchange.is_empty() {
            format!("queue {routing_key}")
        } else {
            format!("{exchange}/{routing_key}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqp://u:p@ss@host"),
            "amqp://u:***@host",
            "an @ inside the password is still hidden"
        );
        assert_eq!(redact_url("amqp://host:5672/vh"), "amqp://host:5672/vh");
        assert_eq!(
            redact_url("amqp://svc:ab/cd+ef==@broker:5672/%2f"),
            "amqp://svc:***@broker:5672/%2f",
            "a base64 password with a slash"
        );
        assert_eq!(
            redact_url("postgres://u:p?x@db/baton"),
            "postgres://u:***@db/baton"
        );
        assert_eq!(redact_url("amqp://user@host/"), "amqp://user@host/");
    }
}
