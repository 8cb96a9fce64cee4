//! The orchestrator process: consumes payment requests from RabbitMQ, runs each one as a
//! saga in its own task, and publishes one result per request before acking it.
//!
//! The unacked request delivery is the orchestrator's lease on a payment: if the process
//! dies, RabbitMQ hands the request to another replica. This module is the broker side
//! only; what happens inside a payment is [`crate::saga`].

use crate::saga::{self, CallError, SagaOutcome, Transport};
use crate::workflow::{Step, Workflow};
use baton_contract::amqp::{self, header_text, json_properties, publish_confirmed, BrokerError};
use baton_contract::{headers, Command, Limits, Names, PaymentRequest, PaymentResult, Reply};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn, Instrument};
use uuid::Uuid;

/// Everything `baton run` needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Broker URL (may hold a password: never log it unredacted).
    pub amqp_url: String,
    /// Names of every exchange and queue.
    pub names: Names,
    /// Payments in flight at once: the request consumer's prefetch.
    pub concurrency: u16,
    /// The steps.
    pub workflow: Workflow,
    /// Bounds on requests.
    pub limits: Limits,
    /// How long a graceful shutdown waits for in-flight payments.
    pub shutdown_timeout: Duration,
    /// This replica's id, in its reply queue's name.
    pub instance: String,
}

impl Settings {
    /// Defaults for everything but the broker URL and prefix.
    pub fn new(amqp_url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            names: Names::new(prefix),
            concurrency: 256,
            workflow: Workflow::builtin(),
            limits: Limits::default(),
            shutdown_timeout: Duration::from_secs(30),
            instance: new_instance_id(),
        }
    }
}

/// A short random id for one orchestrator process.
pub fn new_instance_id() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Counters a running orchestrator keeps (the metrics issue will export them).
#[derive(Debug, Default)]
pub struct Stats {
    /// Replies whose correlation id matched no waiting command.
    pub unknown_replies: AtomicU64,
    /// Requests refused as invalid.
    pub rejected: AtomicU64,
    /// Results published.
    pub results: AtomicU64,
}

/// Commands waiting for their reply, by correlation id.
type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>;

/// Removes a waiter from [`Pending`] when its call ends, however it ends (reply, timeout,
/// cancellation), so the map never holds abandoned entries.
struct PendingGuard {
    pending: Pending,
    correlation_id: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.pending.lock() {
            map.remove(&self.correlation_id);
        }
    }
}

/// The saga's transport over RabbitMQ: commands to `<prefix>.cmd.<service>`, replies on
/// this instance's exclusive reply queue, matched by a fresh correlation id per command.
struct AmqpTransport {
    channel: Channel,
    names: Names,
    reply_queue: String,
    pending: Pending,
}

impl Transport for AmqpTransport {
    async fn call(&self, step: &Step, command: Command) -> Result<Reply, CallError> {
        let correlation_id = Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| CallError::ShuttingDown)?
            .insert(correlation_id.clone(), tx);
        let _guard = PendingGuard {
            pending: self.pending.clone(),
            correlation_id: correlation_id.clone(),
        };
        let body = serde_json::to_vec(&command).map_err(|e| CallError::Send(e.to_string()))?;
        let properties = json_properties(&[(headers::COMMAND_ID, &command.command_id)])
            .with_correlation_id(correlation_id.as_str().into())
            .with_reply_to(self.reply_queue.as_str().into());
        let queue = self.names.command_queue(&step.service);
        debug!(command_id = %command.command_id, queue = %queue, "sending command");
        match publish_confirmed(&self.channel, "", &queue, &body, properties).await {
            Ok(()) => {}
            // The connection is gone: this replica cannot finish the payment; another
            // one (or this one after reconnecting) will, from the unacked request.
            Err(BrokerError::Channel(_)) => return Err(CallError::ShuttingDown),
            Err(e) => return Err(CallError::Send(e.to_string())),
        }
        // A dropped sender means the reply consumer stopped: interrupted, not failed.
        rx.await.map_err(|_| CallError::ShuttingDown)
    }
}

/// What the request handlers share.
struct Shared {
    settings: Settings,
    transport: AmqpTransport,
    stats: Arc<Stats>,
}

/// Why the orchestrator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// Talking to RabbitMQ failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The request consumer ended without being asked to (connection lost).
    #[error("the request consumer stopped unexpectedly: {0}")]
    ConsumerLost(String),
}

impl From<lapin::Error> for OrchestratorError {
    fn from(e: lapin::Error) -> Self {
        OrchestratorError::Broker(BrokerError::Channel(e))
    }
}

/// A running orchestrator.
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), OrchestratorError>>,
    stats: Arc<Stats>,
    reply_queue: String,
}

impl Running {
    /// Its counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The name of its reply queue.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Stops taking requests, lets in-flight payments finish up to the shutdown timeout,
    /// leaves the rest unacked for another replica, and closes the connection.
    pub async fn shutdown(self) -> Result<(), OrchestratorError> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the orchestrator stops (after [`Running::shutdown`] or a lost
    /// connection).
    pub async fn wait(self) -> Result<(), OrchestratorError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(OrchestratorError::ConsumerLost(e.to_string())),
        }
    }

    /// A handle that can trigger the shutdown from elsewhere (a signal handler).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Connects, declares the topology, and starts consuming. Returns once requests are being
/// consumed.
pub async fn start(settings: Settings) -> Result<Running, OrchestratorError> {
    let connection = amqp::connect(
        &settings.amqp_url,
        &format!("baton orchestrator {}", settings.instance),
    )
    .await?;
    let names = settings.names.clone();

    // Topology first: requests, results and dead letters, and every service queue the
    // workflow sends to, so a command waits in its queue even before its service starts.
    let setup = connection.create_channel().await?;
    amqp::declare_core(&setup, &names).await?;
    for service in settings.workflow.services() {
        amqp::declare_command_queue(&setup, &names, service).await?;
    }

    // Replies: an exclusive queue that disappears with this process, consumed without
    // acks (a reply is only useful to the process that waits for it).
    let reply_queue = names.reply_queue(&settings.instance);
    let reply_channel = connection.create_channel().await?;
    reply_channel
        .queue_declare(
            reply_queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let replies = reply_channel
        .basic_consume(
            reply_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;

    let stats = Arc::new(Stats::default());
    let pending: Pending = Arc::default();
    tokio::spawn(route_replies(replies, pending.clone(), stats.clone()));

    let publish_channel = amqp::confirm_channel(&connection).await?;
    let consume_channel = connection.create_channel().await?;
    consume_channel
        .basic_qos(settings.concurrency, BasicQosOptions::default())
        .await?;
    let consumer_tag = format!("baton-{}", settings.instance);
    let requests = consume_channel
        .basic_consume(
            names.requests_queue().as_str().into(),
            consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(
        instance = %settings.instance,
        broker = %amqp::redact_url(&settings.amqp_url),
        queue = %names.requests_queue(),
        concurrency = settings.concurrency,
        steps = settings.workflow.steps().len(),
        "orchestrator consuming payment requests"
    );

    let shared = Arc::new(Shared {
        transport: AmqpTransport {
            channel: publish_channel,
            names,
            reply_queue: reply_queue.clone(),
            pending,
        },
        settings,
        stats: stats.clone(),
    });
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(consume_requests(
        connection,
        consume_channel,
        consumer_tag,
        requests,
        shared,
        stopped,
    ));
    Ok(Running {
        stop,
        task,
        stats,
        reply_queue,
    })
}

/// Hands each reply to the command waiting for it; counts and drops the rest.
async fn route_replies(mut replies: lapin::Consumer, pending: Pending, stats: Arc<Stats>) {
    while let Some(delivery) = replies.next().await {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "reply consumer failed");
                break;
            }
        };
        let correlation_id = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default();
        let waiter = pending
            .lock()
            .ok()
            .and_then(|mut map| map.remove(&correlation_id));
        let Some(waiter) = waiter else {
            stats.unknown_replies.fetch_add(1, Ordering::Relaxed);
            warn!(correlation_id = %correlation_id, "reply with an unknown or expired correlation id dropped");
            continue;
        };
        let reply = serde_json::from_slice::<Reply>(&delivery.data).unwrap_or_else(|e| {
            // A garbled reply is the service's fault and may be transient.
            let command_id =
                header_text(&delivery.properties, headers::COMMAND_ID).unwrap_or_default();
            Reply::error(command_id, "malformed_reply", e.to_string())
        });
        let _ = waiter.send(reply);
    }
    // Dropping every waiter tells in-flight sagas the replies are gone.
    if let Ok(mut map) = pending.lock() {
        map.clear();
    }
}

/// The request loop: one task per delivery, until asked to stop or the consumer ends.
async fn consume_requests(
    connection: Connection,
    channel: Channel,
    consumer_tag: String,
    mut requests: lapin::Consumer,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), OrchestratorError> {
    let mut tasks = JoinSet::new();
    let outcome = loop {
        tokio::select! {
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    break Ok(());
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            delivery = requests.next() => match delivery {
                Some(Ok(delivery)) => {
                    let shared = shared.clone();
                    tasks.spawn(handle_request(delivery, shared));
                }
                Some(Err(e)) => break Err(OrchestratorError::ConsumerLost(e.to_string())),
                None => break Err(OrchestratorError::ConsumerLost("consumer cancelled".into())),
            }
        }
    };

    // Stop taking new requests; deliveries already prefetched but not started go back
    // to the queue when the channel closes.
    if outcome.is_ok() {
        let _ = channel
            .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
            .await;
        info!(
            in_flight = tasks.len(),
            "shutting down: finishing in-flight payments"
        );
        let deadline = tokio::time::sleep(shared.settings.shutdown_timeout);
        tokio::pin!(deadline);
        while !tasks.is_empty() {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = &mut deadline => {
                    warn!(left = tasks.len(), "shutdown deadline reached; unfinished payments stay unacked for another replica");
                    tasks.abort_all();
                    break;
                }
            }
        }
    } else {
        tasks.abort_all();
    }
    while tasks.join_next().await.is_some() {}
    let _ = connection
        .close(200, "baton orchestrator stopping".into())
        .await;
    outcome
}

/// Runs one request from delivery to ack.
async fn handle_request(delivery: Delivery, shared: Arc<Shared>) {
    let request = match check_content_type(&delivery.properties)
        .and_then(|()| PaymentRequest::parse(&delivery.data, &shared.settings.limits))
    {
        Ok(request) => request,
        Err(invalid) => {
            reject(delivery, invalid, &shared).await;
            return;
        }
    };
    let span = tracing::info_span!("payment", payment_id = %request.payment_id);
    async {
        info!(
            amount_minor = request.amount.minor,
            currency = %request.amount.currency,
            card = %request.card.number,
            redelivered = delivery.redelivered,
            "payment received"
        );
        match saga::run(&request, &shared.settings.workflow, &shared.transport).await {
            SagaOutcome::Finished(result) => {
                info!(status = result.status.as_str(), reason = ?result.reason, "payment finished");
                finish(delivery, &result, &shared).await;
            }
            SagaOutcome::Interrupted => {
                // Leave it unacked: when the channel closes RabbitMQ redelivers it.
                warn!("payment interrupted; it will be redelivered");
            }
        }
    }
    .instrument(span)
    .await
}

fn check_content_type(properties: &BasicProperties) -> Result<(), baton_contract::InvalidRequest> {
    match properties.content_type() {
        Some(ct) if !ct.as_str().trim().starts_with("application/json") => {
            Err(baton_contract::InvalidRequest {
                payment_id: None,
                field: "content_type".into(),
                problem: format!(
                    "must be application/json, got {:?}",
                    ct.as_str().chars().take(64).collect::<String>()
                ),
            })
        }
        _ => Ok(()),
    }
}

/// Publishes the result (to the client's `reply_to`, if any, and to the payments
/// exchange), then acks the request. If the result cannot be published the request is
/// returned to the queue, so the payment is decided again rather than lost.
async fn finish(delivery: Delivery, result: &PaymentResult, shared: &Shared) {
    match publish_result(result, &delivery.properties, shared).await {
        Ok(()) => {
            shared.stats.results.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                warn!(error = %e, "could not ack the request after publishing its result");
            }
        }
        Err(e) => {
            error!(error = %e, "could not publish the result; returning the request to the queue");
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
    }
}

async fn publish_result(
    result: &PaymentResult,
    request: &BasicProperties,
    shared: &Shared,
) -> Result<(), BrokerError> {
    let body = serde_json::to_vec(result).expect("a PaymentResult always serialises");
    let mut properties =
        json_properties(&[]).with_message_id(result.payment_id.to_string().as_str().into());
    if let Some(correlation_id) = request.correlation_id() {
        properties = properties.with_correlation_id(correlation_id.clone());
    }
    let channel = &shared.transport.channel;
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
            // The client is gone; the result is still in the results queue.
            Err(BrokerError::Unroutable { .. }) => {
                warn!(reply_to = %reply_to, "the client's reply_to queue does not exist; result only in the results queue");
                Ok(())
            }
            other => other,
        }
    };
    let (to_exchange, to_client) = tokio::join!(to_exchange, to_client);
    to_exchange.and(to_client)
}

/// Sends an invalid request to the dead-letter queue with the reason, publishes a
/// `rejected` result when the request has a readable payment id, and acks it.
async fn reject(delivery: Delivery, invalid: baton_contract::InvalidRequest, shared: &Shared) {
    let payment_id = invalid
        .payment_id
        .or_else(|| PaymentRequest::sniff_payment_id(&delivery.data));
    shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
    warn!(payment_id = ?payment_id, field = %invalid.field, problem = %invalid.problem, "request rejected");

    let detail = invalid.to_string();
    let mut properties = json_properties(&[
        (headers::REASON, "invalid_request"),
        (headers::DETAIL, &detail),
    ]);
    // Keep what the client sent, so an operator can see and replay it as it was.
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
    let dead_lettered = publish_confirmed(
        &shared.transport.channel,
        "",
        &dead,
        &delivery.data,
        properties,
    )
    .await;
    let answered = match payment_id {
        Some(id) => publish_result(&saga::rejected(id, detail), &delivery.properties, shared).await,
        None => Ok(()),
    };
    match dead_lettered.and(answered) {
        Ok(()) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            error!(error = %e, "could not dead-letter an invalid request; returning it to the queue");
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
    }
}
