//! The topology: every exchange and queue a deployment uses, declared idempotently, one
//! function per part so each binary declares exactly what it uses (and again after a
//! reconnect).

use crate::{delivery_limit, BrokerError};
use baton_contract::Names;
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
use std::time::Duration;

/// Bounds of the queues nobody but a person or an optional consumer empties. They are
/// queue arguments, the same in every binary (a queue declared twice with different
/// arguments is refused); a deployment that needs lower ones sets a `max-length` policy
/// (RabbitMQ applies the smaller of policy and argument). README "Queue bounds".
pub mod bounds {
    /// `<prefix>.results` keeps at most this many results; past it the oldest is dropped
    /// (`drop-head`). Every result is also in the journal and went to its `reply_to`.
    pub const RESULTS_MAX_LENGTH: i64 = 100_000;
    /// A result unconsumed for 7 days leaves `<prefix>.results`.
    pub const RESULTS_TTL_MS: i64 = 7 * 24 * 60 * 60 * 1000;
    /// `<prefix>.dead` refuses more than this (`reject-publish`): nothing is dropped;
    /// RabbitMQ keeps what it could not dead-letter in the source queue, Baton's own
    /// dead-letter publishes are refused and retried. Alert `BatonDeadLettersFilling`
    /// fires at 80 %.
    pub const DEAD_MAX_LENGTH: i64 = 100_000;
    /// `<prefix>.attention` refuses more than this (`reject-publish`), as `.dead`. Alert
    /// `BatonAttentionFilling` fires at 80 %.
    pub const ATTENTION_MAX_LENGTH: i64 = 10_000;
}

/// Arguments of a durable quorum queue, built one concern at a time.
struct QueueArgs(FieldTable);

impl QueueArgs {
    fn quorum() -> Self {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        Self(args)
    }

    fn text(mut self, key: &str, value: &str) -> Self {
        self.0
            .insert(key.into(), AMQPValue::LongString(value.into()));
        self
    }

    fn number(mut self, key: &str, value: i64) -> Self {
        self.0.insert(key.into(), AMQPValue::LongLongInt(value));
        self
    }

    /// Dead-letters to the queue `target` (through the default exchange), at least once.
    ///
    /// Quorum queues dead-letter at most once by default: a message whose target is
    /// unavailable at that instant is dropped. Baton's dead letters are payments (a parked
    /// request on its way back, a request or command past its delivery limit), so
    /// RabbitMQ (3.10+) keeps each in the source queue until the target has confirmed it.
    /// That strategy requires `reject-publish` overflow (with any other, RabbitMQ falls
    /// back to at-most-once); none of these queues has a length bound, so it never
    /// refuses a publish. The target must exist: every `declare_*` declares it first.
    fn dead_letter_to(self, target: &str) -> Self {
        self.text("x-dead-letter-exchange", "")
            .text("x-dead-letter-routing-key", target)
            .text("x-dead-letter-strategy", "at-least-once")
            .text("x-overflow", "reject-publish")
    }

    /// A message delivered [`delivery_limit`] times is dead-lettered to `dead`.
    fn delivery_limit_to(self, dead: &str) -> Self {
        self.number("x-delivery-limit", delivery_limit())
            .dead_letter_to(dead)
    }
}

/// Declares a durable queue; a queue that exists with other arguments (an older Baton's,
/// or a hand-made one) is [`BrokerError::QueueArguments`].
async fn declare(channel: &Channel, queue: &str, args: QueueArgs) -> Result<(), BrokerError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match channel.queue_declare(queue.into(), options, args.0).await {
        Ok(_) => Ok(()),
        Err(e) => Err(queue_arguments_error(queue, e)),
    }
}

/// `PRECONDITION_FAILED` on a declare means the queue exists with other arguments.
fn queue_arguments_error(queue: &str, error: lapin::Error) -> BrokerError {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e)
            if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) =>
        {
            BrokerError::QueueArguments {
                queue: queue.to_owned(),
                detail: e.get_message().as_str().to_owned(),
            }
        }
        _ => BrokerError::Channel(error),
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
    declare_dead(channel, names).await?;
    let requests = names.requests_queue();
    declare(
        channel,
        &requests,
        QueueArgs::quorum().delivery_limit_to(&names.dead_queue()),
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
    // Dropping the oldest, not refusing the newest: a refused result would hold up the
    // payment that produced it (its request stays unacked until the result is confirmed),
    // and a results queue nobody reads would stop every payment.
    let bounded = QueueArgs::quorum()
        .number("x-max-length", bounds::RESULTS_MAX_LENGTH)
        .text("x-overflow", "drop-head")
        .number("x-message-ttl", bounds::RESULTS_TTL_MS);
    declare(channel, &results, bounded).await?;
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

/// The dead-letter queue: bounded, refusing rather than dropping at the bound.
async fn declare_dead(channel: &Channel, names: &Names) -> Result<(), BrokerError> {
    let args = QueueArgs::quorum()
        .number("x-max-length", bounds::DEAD_MAX_LENGTH)
        .text("x-overflow", "reject-publish");
    declare(channel, &names.dead_queue(), args).await
}

/// Declares the operators' attention queue: bounded, refusing rather than dropping at
/// the bound. Idempotent.
pub async fn declare_attention(channel: &Channel, names: &Names) -> Result<String, BrokerError> {
    let queue = names.attention_queue();
    let args = QueueArgs::quorum()
        .number("x-max-length", bounds::ATTENTION_MAX_LENGTH)
        .text("x-overflow", "reject-publish");
    declare(channel, &queue, args).await?;
    Ok(queue)
}

/// Declares a parking queue: messages wait `delay_ms`, then RabbitMQ dead-letters them
/// back to the request queue, at least once. Plain TTL and dead-lettering: no plugin
/// needed. The request queue must exist ([`declare_core`] first). Idempotent.
pub async fn declare_parking(
    channel: &Channel,
    names: &Names,
    delay_ms: u64,
) -> Result<String, BrokerError> {
    let queue = names.retry_queue(delay_ms);
    let args = QueueArgs::quorum()
        .number("x-message-ttl", i64::try_from(delay_ms).unwrap_or(i64::MAX))
        .dead_letter_to(&names.requests_queue());
    declare(channel, &queue, args).await?;
    Ok(queue)
}

/// Declares one service's command queue (and the dead-letter queue it overflows to).
/// Idempotent.
pub async fn declare_command_queue(
    channel: &Channel,
    names: &Names,
    service: &str,
) -> Result<String, BrokerError> {
    declare_dead(channel, names).await?;
    let queue = names.command_queue(service);
    declare(
        channel,
        &queue,
        QueueArgs::quorum().delivery_limit_to(&names.dead_queue()),
    )
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

/// Declares `queue` passively: its message and consumer counts, or the broker's refusal
/// (a passive declare of a missing queue closes the channel it was asked on).
pub async fn declare_passive(channel: &Channel, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// `(messages, consumers)` of `queue`, asked on a channel of its own within `wait`; `None`
/// when the queue does not exist, the connection is gone or the broker does not answer.
pub async fn queue_counts(
    connection: &Connection,
    queue: &str,
    wait: Duration,
) -> Option<(u32, u32)> {
    let channel = connection.create_channel().await.ok()?;
    let declared = tokio::time::timeout(wait, declare_passive(&channel, queue)).await;
    let counts = match declared {
        Ok(Ok(declared)) => Some((declared.message_count(), declared.consumer_count())),
        _ => None,
    };
    let _ = channel.close(200, "counted".into()).await;
    counts
}
