//! The saga's transport over RabbitMQ: commands out, replies matched back by correlation
//! id, attention items, saga events, and the trace context passed along.

use super::Shared;
use crate::crash;
use crate::saga::{AttentionItem, CallError, SagaEvent, Transport};
use baton_amqp::{self as amqp, json_properties, publish_confirmed, BrokerError};
use baton_contract::{headers, Action, Command, Names, Reply};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};
use uuid::Uuid;
/// A command waiting for its reply, and what an acceptable reply must show.
pub(super) struct Waiter {
    /// Where the reply goes.
    pub(super) reply: oneshot::Sender<Reply>,
    /// The command this wait is for: a reply naming another one is refused.
    pub(super) command_id: String,
    /// The broker user the reply must come from (its RabbitMQ-validated `user_id`);
    /// `None` when no user is configured for the step's service.
    pub(super) sender: Option<String>,
}

/// Commands waiting for their reply, by correlation id.
pub(super) type Pending = Arc<Mutex<HashMap<String, Waiter>>>;

/// Removes a waiter from [`Pending`] when its call ends, however it ends (reply, timeout,
/// cancellation), so the map never holds abandoned entries.
pub(super) struct PendingGuard {
    pub(super) pending: Pending,
    pub(super) correlation_id: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.pending.lock() {
            map.remove(&self.correlation_id);
        }
    }
}

/// The broker objects of one connection; replaced after a reconnect.
pub(super) struct Session {
    pub(super) connection: Connection,
    /// Confirm-mode channel for commands, results, parking and dead letters.
    pub(super) publish: Channel,
    /// Plain channel for saga events: no confirms, so audit events cost the broker and
    /// this process as little as possible and never wait.
    pub(super) events: Channel,
}

/// The saga's transport over RabbitMQ: commands to `<prefix>.cmd.<service>`, replies on
/// this instance's exclusive reply queue, matched by a fresh correlation id per command.
pub struct AmqpTransport {
    pub(super) names: Names,
    /// This process's broker user, stamped as `user_id` on everything it publishes.
    pub(super) user: String,
    /// The broker user each service must reply as (see [`Settings::service_users`]).
    pub(super) service_users: BTreeMap<String, String>,
    pub(super) reply_queue: String,
    pub(super) pending: Pending,
    pub(super) session: RwLock<Option<Arc<Session>>>,
    /// Saga events, in order, to the one task that publishes them.
    pub(super) events: tokio::sync::mpsc::Sender<SagaEvent>,
    /// Events dropped because the publisher fell behind (never blocks a payment).
    pub(super) events_dropped: prometheus::IntCounter,
    /// Whether saga events are published at all.
    pub(super) events_enabled: bool,
    /// Signalled when a publish finds the channel closed while the connection may still
    /// be up (the broker closes a channel on some errors): the session is then torn down
    /// and reopened, so unacked requests are redelivered instead of waiting forever.
    pub(super) broken: watch::Sender<u64>,
}

impl AmqpTransport {
    /// Messages in `queue` (a passive declare on a channel of its own, which a missing
    /// queue closes); `None` while disconnected or when the broker does not answer.
    pub(super) async fn queue_depth(&self, queue: &str) -> Option<u32> {
        let session = self.session.read().ok()?.as_ref().map(Arc::clone)?;
        amqp::queue_counts(&session.connection, queue, Duration::from_secs(2))
            .await
            .map(|(messages, _)| messages)
    }

    pub(super) fn channel(&self) -> Result<Channel, CallError> {
        self.session
            .read()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.publish.clone()))
            .ok_or(CallError::ShuttingDown)
    }

    /// Requests ready in `<prefix>.requests` now, from a passive declare on a channel of
    /// its own (a failed declare closes its channel). `None` when it cannot be asked.
    pub(super) async fn requests_waiting(&self) -> Option<u32> {
        self.queue_depth(&self.names.requests_queue()).await
    }

    /// Passes a publish outcome through, noting a dead channel.
    pub(super) fn watch(&self, outcome: Result<(), BrokerError>) -> Result<(), BrokerError> {
        if let Err(BrokerError::Channel(e)) = &outcome {
            warn!(error = %e, "publish channel failed; the session will be reopened");
            self.broken.send_modify(|failures| *failures += 1);
        }
        outcome
    }

    /// `properties` stamped with this process's broker user as `user_id`.
    pub(super) fn stamped(&self, properties: BasicProperties) -> BasicProperties {
        amqp::with_sender(properties, &self.user)
    }

    pub(super) fn events_channel(&self) -> Option<Channel> {
        self.session
            .read()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.events.clone()))
    }
}

impl Transport for AmqpTransport {
    async fn call(&self, service: &str, command: Command) -> Result<Reply, CallError> {
        let channel = self.channel()?;
        let correlation_id = Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            reply: tx,
            command_id: command.command_id.clone(),
            sender: self.service_users.get(service).cloned(),
        };
        self.pending
            .lock()
            .map_err(|_| CallError::ShuttingDown)?
            .insert(correlation_id.clone(), waiter);
        let _guard = PendingGuard {
            pending: self.pending.clone(),
            correlation_id: correlation_id.clone(),
        };
        let body = serde_json::to_vec(&command).map_err(|e| CallError::Send(e.to_string()))?;
        let mut properties = self
            .stamped(json_properties(&[(
                headers::COMMAND_ID,
                &command.command_id,
            )]))
            .with_correlation_id(correlation_id.as_str().into())
            .with_reply_to(self.reply_queue.as_str().into());
        if let Some(traceparent) = current_traceparent() {
            properties = add_header(properties, "traceparent", &traceparent);
        }
        let queue = self.names.command_queue(service);
        debug!(command_id = %command.command_id, queue = %queue, "sending command");
        match self.watch(publish_confirmed(&channel, "", &queue, &body, properties).await) {
            Ok(()) => {}
            // The connection is gone: this replica cannot finish the payment; another
            // one (or this one after reconnecting) will, from the unacked request.
            Err(BrokerError::Channel(_)) => return Err(CallError::ShuttingDown),
            Err(e) => return Err(CallError::Send(e.to_string())),
        }
        crash::point(match command.action {
            Action::Execute => "after_command_published",
            Action::Compensate => "mid_compensation",
            // Sagas never ping (only `baton doctor` does).
            Action::Ping => "after_ping_published",
        });
        // A dropped sender means the reply consumer stopped: interrupted, not failed.
        rx.await.map_err(|_| CallError::ShuttingDown)
    }

    async fn attention(&self, item: AttentionItem) -> Result<(), CallError> {
        let channel = self.channel()?;
        let body = serde_json::to_vec(&item).map_err(|e| CallError::Send(e.to_string()))?;
        let properties = self
            .stamped(json_properties(&[
                (headers::REASON, &item.kind),
                (headers::COMMAND_ID, &item.command_id),
            ]))
            .with_message_id(item.payment_id.to_string().as_str().into());
        let queue = self.names.attention_queue();
        match self.watch(publish_confirmed(&channel, "", &queue, &body, properties).await) {
            Ok(()) => Ok(()),
            Err(BrokerError::Channel(_)) => Err(CallError::ShuttingDown),
            Err(e) => Err(CallError::Send(e.to_string())),
        }
    }

    fn event(&self, event: SagaEvent) {
        if !self.events_enabled {
            return;
        }
        if self.events.try_send(event).is_err() {
            self.events_dropped.inc();
        }
    }
}

/// Most saga events published together.
const EVENT_BATCH: usize = 64;

/// Publishes saga events in the order they were taken, on the current session's
/// channel, without waiting for confirms: audit events must never slow a payment. The
/// events waiting at the moment go out together — queued on the channel in order, then
/// one hand-over to lapin's I/O thread for all of them instead of one each.
pub(super) async fn publish_events(
    mut events: tokio::sync::mpsc::Receiver<SagaEvent>,
    shared: std::sync::Weak<Shared>,
) {
    while let Some(first) = events.recv().await {
        let mut batch = vec![first];
        while batch.len() < EVENT_BATCH {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let dropped = &shared.env.transport.events_dropped;
        let Some(channel) = shared.env.transport.events_channel() else {
            dropped.inc_by(batch.len() as u64);
            continue;
        };
        let exchange = shared.settings.names.payments_exchange();
        let encoded: Vec<(&SagaEvent, Vec<u8>)> = batch
            .iter()
            .filter_map(|event| Some((event, serde_json::to_vec(event).ok()?)))
            .collect();
        let publishes = encoded
            .iter()
            .map(|(event, body)| {
                channel.basic_publish(
                    exchange.as_str().into(),
                    event.routing_key().as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    body,
                    shared
                        .env
                        .transport
                        .stamped(json_properties(&[]))
                        .with_message_id(event.payment_id.to_string().as_str().into()),
                )
            })
            .collect();
        let failed = crate::saga::join_all(publishes)
            .await
            .iter()
            .filter(|published| published.is_err())
            .count();
        dropped.inc_by(failed as u64);
    }
}

tokio::task_local! {
    /// The W3C `traceparent` of the request being handled, passed on to its commands.
    pub(super) static TRACEPARENT: Option<String>;
}

pub(super) fn current_traceparent() -> Option<String> {
    TRACEPARENT.try_with(|t| t.clone()).ok().flatten()
}

pub(super) fn add_header(properties: BasicProperties, key: &str, value: &str) -> BasicProperties {
    let mut table = properties.headers().clone().unwrap_or_default();
    table.insert(key.into(), AMQPValue::LongString(value.into()));
    properties.with_headers(table)
}
