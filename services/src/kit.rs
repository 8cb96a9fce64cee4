//! The worker kit every service runs on: consume `<prefix>.cmd.<service>` with manual
//! ack, decode the [`Command`], let the [`Handler`] answer, publish the [`Reply`] to the
//! command's `reply_to` with publisher confirms, then ack.
//!
//! Guarantees: a delivery is acked only once its reply is confirmed by the broker (or
//! cannot ever be delivered: no `reply_to`, or the orchestrator's reply queue is gone —
//! the orchestrator re-sends after it resumes and the services are idempotent). An
//! undecodable command goes to `<prefix>.dead` with the reason in headers and is acked,
//! so it never loops. A transient publish failure nacks with requeue; the quorum queue's
//! delivery limit dead-letters a command that keeps failing.
//!
//! Not here: business rules ([`crate::rules`]), storage ([`crate::ledger`]), CLI parsing
//! ([`crate::cli`]). Reconnecting is left to the process supervisor: when the connection
//! drops, [`RunningService::wait`] returns the error and the binary exits non-zero.

use crate::handler::Handler;
use crate::ledger::Ledger;
use anyhow::Context as _;
use baton_contract::amqp::{self, BrokerError};
use baton_contract::{headers, Command, Names};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument as _;

/// W3C trace context header, copied from command to reply so a payment can be followed
/// across services.
const TRACEPARENT: &str = "traceparent";

/// The four reference services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// Checks the card and places a hold.
    Authorization,
    /// Scores the payment's risk.
    Risk,
    /// Checks the merchant's PCI DSS compliance.
    Pci,
    /// Captures the hold and moves the money.
    Transaction,
}

impl ServiceKind {
    /// Every service, in workflow order.
    pub const ALL: [ServiceKind; 4] = [
        ServiceKind::Authorization,
        ServiceKind::Risk,
        ServiceKind::Pci,
        ServiceKind::Transaction,
    ];

    /// The service name: its queue is `<prefix>.cmd.<name>`.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Authorization => "authorization",
            ServiceKind::Risk => "risk",
            ServiceKind::Pci => "pci",
            ServiceKind::Transaction => "transaction",
        }
    }

    /// Whether the service keeps state in the ledger (and so needs `ledger_url`).
    pub fn uses_ledger(self) -> bool {
        matches!(self, ServiceKind::Authorization | ServiceKind::Transaction)
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a service connects and how much it does at once.
#[derive(Clone)]
pub struct ServiceConfig {
    /// Broker URL (may hold a password: never printed unredacted).
    pub amqp_url: String,
    /// Topology prefix: the service consumes `<prefix>.cmd.<service>`.
    pub prefix: String,
    /// Commands handled at once (the consumer's prefetch).
    pub concurrency: u16,
    /// Ledger database for authorization and transaction; ignored by risk and PCI.
    pub ledger_url: String,
}

impl Default for ServiceConfig {
    /// Local broker, prefix `baton`, 64 at once, `sqlite://baton-ledger.db`.
    fn default() -> Self {
        Self {
            amqp_url: amqp::DEFAULT_AMQP_URL.into(),
            prefix: "baton".into(),
            concurrency: 64,
            ledger_url: "sqlite://baton-ledger.db".into(),
        }
    }
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("amqp_url", &amqp::redact_url(&self.amqp_url))
            .field("prefix", &self.prefix)
            .field("concurrency", &self.concurrency)
            .field("ledger_url", &amqp::redact_url(&self.ledger_url))
            .finish()
    }
}

/// A service consuming its queue. Stop it with [`RunningService::shutdown`].
pub struct RunningService {
    /// Which service this is.
    kind: ServiceKind,
    /// The command queue consumed.
    queue: String,
    /// Set to `true` to stop consuming; the run loop watches it.
    stop: watch::Sender<bool>,
    /// The run loop: ends on shutdown (Ok) or when the broker connection fails (Err).
    task: JoinHandle<anyhow::Result<()>>,
}

impl fmt::Debug for RunningService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningService")
            .field("kind", &self.kind)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl RunningService {
    /// Which service this is.
    pub fn kind(&self) -> ServiceKind {
        self.kind
    }

    /// The command queue it consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops consuming, finishes the commands in flight (their replies are published and
    /// acked), then closes the channels, the connection and the ledger.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // The receiver is gone only if the run loop already ended; its result is below.
        let _ = self.stop.send(true);
        join(self.task).await
    }

    /// Runs until the service fails (e.g. the broker connection is lost).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `signal` completes (then shuts down gracefully) or the service fails.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let RunningService { stop, mut task, .. } = self;
        tokio::select! {
            result = &mut task => flatten(result),
            () = signal => {
                let _ = stop.send(true);
                join(task).await
            }
        }
    }
}

async fn join(task: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    flatten(task.await)
}

fn flatten(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    result.context("the service's run loop panicked")?
}

/// What every delivery task shares.
struct Worker {
    /// The service's handler and store.
    handler: Handler,
    /// Confirm-mode channel for replies and dead letters: separate from the consuming
    /// channel so a publish never waits behind deliveries (lapin's advice).
    publish: Channel,
    /// `<prefix>.dead`.
    dead_queue: String,
    /// The queue consumed, recorded on dead letters.
    queue: String,
}

/// Starts `kind`: connects, opens the ledger if the service has one, declares its command
/// queue and starts consuming. Returns once it is consuming. When the broker cannot be
/// reached, the error's root is [`BrokerError::Connect`].
pub async fn start(kind: ServiceKind, config: ServiceConfig) -> anyhow::Result<RunningService> {
    anyhow::ensure!(config.concurrency > 0, "concurrency must be at least 1");
    let connection_name = format!("baton-{}", kind.name());
    let connection = amqp::connect(&config.amqp_url, &connection_name).await?;
    match setup(kind, &config, &connection).await {
        Ok((worker, consume, consumer)) => {
            let (stop, stopped) = watch::channel(false);
            let queue = worker.queue.clone();
            tracing::info!(
                service = kind.name(),
                queue = %queue,
                concurrency = config.concurrency,
                "consuming commands"
            );
            let task = tokio::spawn(run(
                Arc::new(worker),
                connection,
                consume,
                consumer,
                stopped,
            ));
            Ok(RunningService {
                kind,
                queue,
                stop,
                task,
            })
        }
        Err(e) => {
            // Don't leave a half-set-up connection behind.
            let _ = connection.close(200, "start-up failed".into()).await;
            Err(e)
        }
    }
}

async fn setup(
    kind: ServiceKind,
    config: &ServiceConfig,
    connection: &Connection,
) -> anyhow::Result<(Worker, Channel, Consumer)> {
    let ledger = if kind.uses_ledger() {
        let ledger = Ledger::open(&config.ledger_url).await?;
        tracing::info!(ledger = %amqp::redact_url(&config.ledger_url), "ledger open");
        Some(ledger)
    } else {
        None
    };
    let handler = Handler::new(kind, ledger).context("the service needs a ledger")?;
    let result = async {
        let names = Names::new(config.prefix.as_str());
        let consume = connection
            .create_channel()
            .await
            .map_err(BrokerError::from)?;
        let queue = amqp::declare_command_queue(&consume, &names, kind.name()).await?;
        // Prefetch = concurrency: the broker never hands us more than we work on at once,
        // which also bounds the delivery tasks.
        consume
            .basic_qos(config.concurrency, BasicQosOptions::default())
            .await
            .map_err(BrokerError::from)?;
        let publish = amqp::confirm_channel(connection).await?;
        let tag = format!("baton-{}-{}", kind.name(), uuid::Uuid::new_v4().simple());
        let consumer = consume
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::from)?;
        let worker = Worker {
            handler: handler.clone(),
            publish,
            dead_queue: names.dead_queue(),
            queue,
        };
        anyhow::Ok((worker, consume, consumer))
    }
    .await;
    if result.is_err() {
        handler.close().await;
    }
    result
}

/// The consume loop: one task per delivery (bounded by the prefetch), until stopped or
/// the consumer fails; then drains the tasks and closes everything.
async fn run(
    worker: Arc<Worker>,
    connection: Connection,
    consume: Channel,
    mut consumer: Consumer,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    let outcome = loop {
        tokio::select! {
            // `Err` means the RunningService was dropped: stop as well.
            _ = stopped.changed() => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    tasks.spawn(process(worker.clone(), delivery));
                }
                Some(Err(e)) => {
                    break Err(anyhow::Error::from(BrokerError::from(e))
                        .context(format!("consuming {} failed", worker.queue)));
                }
                None => break Err(anyhow::anyhow!(
                    "the broker cancelled the consumer of {} (queue deleted?)", worker.queue
                )),
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_task_end(done),
        }
    };
    if outcome.is_ok() {
        tracing::info!(queue = %worker.queue, in_flight = tasks.len(), "stopping: finishing commands in flight");
        // Deliveries buffered but not started stay unacked and return to the queue when
        // the channel closes below.
        if let Err(e) = consume
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await
        {
            tracing::warn!(error = %e, "cancelling the consumer failed");
        }
    }
    while let Some(done) = tasks.join_next().await {
        log_task_end(done);
    }
    drop(consumer);
    if outcome.is_ok() {
        let _ = consume.close(200, "shutdown".into()).await;
        let _ = worker.publish.close(200, "shutdown".into()).await;
        let _ = connection.close(200, "shutdown".into()).await;
        tracing::info!(queue = %worker.queue, "stopped");
    }
    worker.handler.close().await;
    outcome
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        // The delivery stays unacked and is redelivered when the channel closes.
        tracing::error!(error = %e, "a command task panicked");
    }
}

/// Handles one delivery end to end; never panics on bad input.
async fn process(worker: Arc<Worker>, delivery: Delivery) {
    let command: Command = match serde_json::from_slice(&delivery.data) {
        Ok(command) => command,
        Err(e) => return worker.dead_letter(delivery, &decode_problem(&e)).await,
    };
    let span = tracing::info_span!(
        "command",
        payment_id = %command.payment_id,
        step = %command.step,
        command_id = %command.command_id,
        action = ?command.action,
    );
    async move {
        let reply = worker.handler.handle(&command).await;
        tracing::info!(outcome = ?reply.outcome, reason = reply.reason.as_deref(), "handled");
        let properties = &delivery.properties;
        let Some(reply_to) = properties
            .reply_to()
            .as_ref()
            .map(|q| q.as_str().to_owned())
        else {
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
        let traceparent = amqp::header_text(properties, TRACEPARENT);
        let mut extra = vec![(headers::COMMAND_ID, command.command_id.as_str())];
        if let Some(traceparent) = traceparent.as_deref() {
            extra.push((TRACEPARENT, traceparent));
        }
        let mut reply_properties = amqp::json_properties(&extra);
        if let Some(correlation_id) = properties.correlation_id() {
            reply_properties = reply_properties.with_correlation_id(correlation_id.clone());
        }
        match amqp::publish_confirmed(&worker.publish, "", &reply_to, &body, reply_properties).await
        {
            Ok(()) => ack(&delivery).await,
            Err(e @ BrokerError::Unroutable { .. }) => {
                // The orchestrator instance is gone; it re-sends after it resumes and gets
                // the same answer (idempotent), so this reply is not needed.
                tracing::warn!(error = %e, reply_to = %reply_to, "reply queue is gone: acked");
                ack(&delivery).await
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "publishing the reply failed: requeued");
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

impl Worker {
    /// Moves an undecodable delivery to the dead-letter queue with the reason, then acks
    /// it; requeues only if the dead-letter publish itself failed transiently.
    async fn dead_letter(&self, delivery: Delivery, detail: &str) {
        tracing::warn!(queue = %self.queue, detail, "malformed command: dead-lettered");
        let mut table = FieldTable::default();
        let mut text = |key: &str, value: &str| {
            table.insert(key.into(), AMQPValue::LongString(value.into()));
        };
        text(headers::REASON, "malformed_command");
        text(headers::DETAIL, detail);
        text("x-baton-queue", &self.queue);
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(table);
        let original = &delivery.properties;
        if let Some(content_type) = original.content_type() {
            properties = properties.with_content_type(content_type.clone());
        }
        if let Some(correlation_id) = original.correlation_id() {
            properties = properties.with_correlation_id(correlation_id.clone());
        }
        match amqp::publish_confirmed(
            &self.publish,
            "",
            &self.dead_queue,
            &delivery.data,
            properties,
        )
        .await
        {
            Ok(()) => ack(&delivery).await,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "dead-lettering failed: requeued");
                nack_requeue(&delivery).await
            }
            Err(e) => {
                // Not requeued: it would fail the same way forever.
                tracing::error!(error = %e, "dead-letter queue unreachable: message dropped");
                ack(&delivery).await
            }
        }
    }
}

/// Why a body is not a command, without echoing long digit runs: serde quotes offending
/// strings, and a card number in the wrong place must not reach a header or a log.
fn decode_problem(error: &serde_json::Error) -> String {
    let message = format!("body is not a Baton command: {error}");
    let mut out = String::with_capacity(message.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 6 {
            out.push_str("<digits>");
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in message.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
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
        let e = serde_json::from_str::<Command>(r#"{"command_id": 4242424242424242}"#).unwrap_err();
        let p = decode_problem(&e);
        assert!(!p.contains("4242424242424242"), "{p}");
        let e =
            serde_json::from_str::<Command>(r#"{"command_id": ["4242424242424242"]}"#).unwrap_err();
        assert!(!decode_problem(&e).contains("424242"));
        assert!(decode_problem(&e).starts_with("body is not a Baton command"));
    }

    #[test]
    fn service_names_match_the_queues() {
        let names: Vec<_> = ServiceKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["authorization", "risk", "pci", "transaction"]);
        assert!(ServiceKind::Authorization.uses_ledger() && ServiceKind::Transaction.uses_ledger());
        assert!(!ServiceKind::Risk.uses_ledger() && !ServiceKind::Pci.uses_ledger());
    }

    #[test]
    fn config_debug_hides_passwords() {
        let config = ServiceConfig {
            amqp_url: "amqp://u:secret@h/".into(),
            ledger_url: "postgres://p:hunter2@db/ledger".into(),
            ..ServiceConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("hunter2"),
            "{debug}"
        );
    }
}
