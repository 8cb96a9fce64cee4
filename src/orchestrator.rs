//! The orchestrator process: consumes payment requests from RabbitMQ, runs each one as a
//! saga in its own task, and publishes one result per request before acking it.
//!
//! The unacked request delivery is the orchestrator's lease on a payment: if the process
//! dies, RabbitMQ hands the request to another replica, which resumes it from the shared
//! journal. When the broker connection drops, the process reconnects with capped,
//! jittered backoff, declares the topology again and goes on; the payments it was working
//! on come back as redeliveries. This module is the broker side only; what happens inside
//! a payment is [`crate::saga`].

use crate::crash;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::saga::{self, AttentionItem, CallError, SagaEnv, SagaEvent, SagaOutcome, Transport};
use crate::status_page;
use crate::workflow::Workflow;
use baton_contract::amqp::{self, header_text, json_properties, publish_confirmed, BrokerError};
use baton_contract::mask::bounded;
use baton_contract::{
    headers, Action, Command, Limits, Names, PaymentRequest, PaymentResult, Reply,
};
use baton_ops::{AppRequest, Health, HttpServer, Response};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn, Instrument};
use uuid::Uuid;

/// Everything `baton run` needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Broker URL (may hold a password: never log it unredacted).
    pub amqp_url: String,
    /// PEM file of the CA that signed the broker's TLS certificate, for `amqps://`
    /// (`--amqp-ca-file`); `None`: the system's CA store.
    pub amqp_ca_file: Option<std::path::PathBuf>,
    /// Names of every exchange and queue.
    pub names: Names,
    /// Payments in flight at once: the request consumer's prefetch.
    pub concurrency: u16,
    /// The steps and their policies.
    pub workflow: Workflow,
    /// Bounds on requests.
    pub limits: Limits,
    /// How long a graceful shutdown waits for in-flight payments.
    pub shutdown_timeout: Duration,
    /// This replica's id, in its reply queue's name.
    pub instance: String,
    /// The saga journal: `sqlite://file` or `postgres://…` (may hold a password).
    pub journal_url: String,
    /// Where to serve `/metrics`, `/healthz`, `/readyz`, `/payments/<id>`; `None`: nowhere.
    pub http_addr: Option<String>,
    /// When `http_addr` is taken by another process (a second `baton run` on the
    /// default port), listen on a free port of the same host instead, with a warning,
    /// rather than refuse to start. Off: a taken address is an error.
    pub http_fallback_to_free_port: bool,
    /// Publish saga events (`event.<step>.<outcome>`) for audit consumers. They cost
    /// about a fifth of the throughput on a busy two-core machine; turn them off when
    /// nobody consumes them.
    pub events: bool,
    /// The broker user of each service's replies (workflow service name → user). A
    /// reply is accepted only from the user its step's service is configured with; a
    /// service without an entry is not verified (see [`Settings::unverified_services`]).
    pub service_users: BTreeMap<String, String>,
    /// Refuse to start unless every service of the workflow has a configured user.
    pub require_verified_senders: bool,
    /// A file holding the bearer token `/payments/<id>` requires; without one, that path
    /// is served only on a loopback address (see [`baton_ops::AppRoutes`]).
    pub http_token_file: Option<std::path::PathBuf>,
    /// The card keys for `card = "fingerprint"` steps (`--card-key-file`): the first key
    /// fingerprints. `None` (the default): a workflow with such a step is refused at
    /// start. `Debug` shows key ids only.
    pub card_keys: Option<baton_contract::CardKeys>,
    /// How long a running saga stays leased to this process without a renewal
    /// (`--saga-lease`). The process renews its sagas every fifth of it; a saga whose
    /// lease ran out (its owner died and its request is gone, or it was dead-lettered
    /// mid-saga) is finished by the sweeper of any replica, `failed`/`abandoned`.
    pub saga_lease: Duration,
}

/// Consumer argument of an orchestrator's request consumer: its workflow's
/// [`Workflow::digest`]. RabbitMQ keeps consumer arguments and shows them in its
/// management API (`consumer_details` of the queue), which is how `baton doctor` sees
/// every replica consuming a request queue without any clustering of Baton's own.
pub const CONSUMER_WORKFLOW: &str = "x-baton-workflow";
/// Consumer argument: the id of the journal the orchestrator records in.
pub const CONSUMER_JOURNAL: &str = "x-baton-journal";
/// Consumer argument: where that journal is (absolute path or redacted URL).
pub const CONSUMER_JOURNAL_AT: &str = "x-baton-journal-at";
/// Consumer argument: the orchestrator's instance id.
pub const CONSUMER_INSTANCE: &str = "x-baton-instance";

/// Default journal: a SQLite file in the working directory.
pub const DEFAULT_JOURNAL_URL: &str = "sqlite://baton-journal.db";

/// Default HTTP address of the orchestrator.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9460";

impl Settings {
    /// Defaults for everything but the broker URL, prefix and journal.
    pub fn new(
        amqp_url: impl Into<String>,
        prefix: impl Into<String>,
        journal_url: impl Into<String>,
    ) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            amqp_ca_file: None,
            names: Names::new(prefix),
            concurrency: 256,
            workflow: Workflow::builtin(),
            limits: Limits::default(),
            shutdown_timeout: Duration::from_secs(30),
            instance: new_instance_id(),
            journal_url: journal_url.into(),
            http_addr: None,
            http_fallback_to_free_port: false,
            events: true,
            service_users: BTreeMap::new(),
            require_verified_senders: false,
            http_token_file: None,
            card_keys: None,
            saga_lease: crate::journal::DEFAULT_LEASE,
        }
    }

    /// The workflow's services (fallbacks included) whose replies nobody verifies,
    /// because no broker user is configured for them.
    pub fn unverified_services(&self) -> Vec<&str> {
        self.workflow
            .services()
            .into_iter()
            .filter(|service| !self.service_users.contains_key(*service))
            .collect()
    }
}

/// A short random id for one orchestrator process.
pub fn new_instance_id() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A command waiting for its reply, and what an acceptable reply must show.
struct Waiter {
    /// Where the reply goes.
    reply: oneshot::Sender<Reply>,
    /// The command this wait is for: a reply naming another one is refused.
    command_id: String,
    /// The broker user the reply must come from (its RabbitMQ-validated `user_id`);
    /// `None` when no user is configured for the step's service.
    sender: Option<String>,
}

/// Commands waiting for their reply, by correlation id.
type Pending = Arc<Mutex<HashMap<String, Waiter>>>;

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

/// The broker objects of one connection; replaced after a reconnect.
struct Session {
    connection: Connection,
    /// Confirm-mode channel for commands, results, parking and dead letters.
    publish: Channel,
    /// Plain channel for saga events: no confirms, so audit events cost the broker and
    /// this process as little as possible and never wait.
    events: Channel,
}

/// The saga's transport over RabbitMQ: commands to `<prefix>.cmd.<service>`, replies on
/// this instance's exclusive reply queue, matched by a fresh correlation id per command.
pub struct AmqpTransport {
    names: Names,
    /// This process's broker user, stamped as `user_id` on everything it publishes.
    user: String,
    /// The broker user each service must reply as (see [`Settings::service_users`]).
    service_users: BTreeMap<String, String>,
    reply_queue: String,
    pending: Pending,
    session: RwLock<Option<Arc<Session>>>,
    /// Saga events, in order, to the one task that publishes them.
    events: tokio::sync::mpsc::Sender<SagaEvent>,
    /// Events dropped because the publisher fell behind (never blocks a payment).
    events_dropped: prometheus::IntCounter,
    /// Whether saga events are published at all.
    events_enabled: bool,
    /// Signalled when a publish finds the channel closed while the connection may still
    /// be up (the broker closes a channel on some errors): the session is then torn down
    /// and reopened, so unacked requests are redelivered instead of waiting forever.
    broken: watch::Sender<u64>,
}

impl AmqpTransport {
    /// Messages in `queue` (a passive declare on a channel of its own, which a missing
    /// queue closes); `None` while disconnected or when the broker does not answer.
    async fn queue_depth(&self, queue: &str) -> Option<u32> {
        let session = self.session.read().ok()?.as_ref().map(Arc::clone)?;
        let channel = session.connection.create_channel().await.ok()?;
        let declared = tokio::time::timeout(
            Duration::from_secs(2),
            channel.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await;
        let depth = match declared {
            Ok(Ok(declared)) => Some(declared.message_count()),
            _ => None,
        };
        let _ = channel.close(200, "queue depth read".into()).await;
        depth
    }

    fn channel(&self) -> Result<Channel, CallError> {
        self.session
            .read()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.publish.clone()))
            .ok_or(CallError::ShuttingDown)
    }

    /// Requests ready in `<prefix>.requests` now, from a passive declare on a channel of
    /// its own (a failed declare closes its channel). `None` when it cannot be asked.
    async fn requests_waiting(&self) -> Option<u32> {
        let session = self.session.read().ok().and_then(|s| s.clone())?;
        let channel = session.connection.create_channel().await.ok()?;
        let declared = channel
            .queue_declare(
                self.names.requests_queue().as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = channel.close(200, "counted".into()).await;
        Some(declared.message_count())
    }

    /// Passes a publish outcome through, noting a dead channel.
    fn watch(&self, outcome: Result<(), BrokerError>) -> Result<(), BrokerError> {
        if let Err(BrokerError::Channel(e)) = &outcome {
            warn!(error = %e, "publish channel failed; the session will be reopened");
            self.broken.send_modify(|failures| *failures += 1);
        }
        outcome
    }

    /// `properties` stamped with this process's broker user as `user_id`.
    fn stamped(&self, properties: BasicProperties) -> BasicProperties {
        amqp::with_sender(properties, &self.user)
    }

    fn events_channel(&self) -> Option<Channel> {
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

/// Publishes saga events in the order they were taken, on the current session's
/// channel, without waiting for confirms: audit events must never slow a payment.
async fn publish_events(
    mut events: tokio::sync::mpsc::Receiver<SagaEvent>,
    shared: std::sync::Weak<Shared>,
) {
    while let Some(event) = events.recv().await {
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let Some(channel) = shared.env.transport.events_channel() else {
            shared.env.transport.events_dropped.inc();
            continue;
        };
        let Ok(body) = serde_json::to_vec(&event) else {
            continue;
        };
        let exchange = shared.settings.names.payments_exchange();
        let published = channel
            .basic_publish(
                exchange.as_str().into(),
                event.routing_key().as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                &body,
                shared
                    .env
                    .transport
                    .stamped(json_properties(&[]))
                    .with_message_id(event.payment_id.to_string().as_str().into()),
            )
            .await;
        if published.is_err() {
            shared.env.transport.events_dropped.inc();
        }
    }
}

tokio::task_local! {
    /// The W3C `traceparent` of the request being handled, passed on to its commands.
    static TRACEPARENT: Option<String>;
}

fn current_traceparent() -> Option<String> {
    TRACEPARENT.try_with(|t| t.clone()).ok().flatten()
}

/// The trace id (second field) of a W3C traceparent `00-<trace_id>-<span_id>-<flags>`.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace_id)
}

fn add_header(properties: BasicProperties, key: &str, value: &str) -> BasicProperties {
    let mut table = properties.headers().clone().unwrap_or_default();
    table.insert(key.into(), AMQPValue::LongString(value.into()));
    properties.with_headers(table)
}

/// What the request handlers share.
struct Shared {
    settings: Settings,
    env: SagaEnv<AmqpTransport, Journal>,
    health: Health,
}

/// Why the orchestrator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// Talking to RabbitMQ failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The HTTP port could not be opened.
    #[error(transparent)]
    Http(#[from] baton_ops::OpsError),
    /// `--require-verified-senders` and some services have no configured broker user.
    #[error(
        "--require-verified-senders: no broker user configured for {0}; pass \
         --service-user SERVICE=USER (BATON_SERVICE_USERS) for each"
    )]
    UnverifiedSenders(String),
    /// The workflow cannot run with these settings (a fingerprint step without card keys).
    #[error(transparent)]
    Workflow(#[from] crate::workflow::WorkflowError),
    /// The request loop ended without being asked to.
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
    shared: Arc<Shared>,
    http: Option<HttpServer>,
}

impl Running {
    /// Its metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.env.metrics
    }

    /// Its readiness.
    pub fn health(&self) -> &Health {
        &self.shared.health
    }

    /// Its journal.
    pub fn journal(&self) -> &Journal {
        &self.shared.env.log
    }

    /// The name of its reply queue.
    pub fn reply_queue(&self) -> &str {
        &self.shared.env.transport.reply_queue
    }

    /// The address its HTTP port is bound to, if it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
    }

    /// Stops taking requests, lets in-flight payments finish up to the shutdown timeout,
    /// leaves the rest unacked for another replica, and closes the connection.
    pub async fn shutdown(self) -> Result<(), OrchestratorError> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the orchestrator stops (after [`Running::shutdown`] or a
    /// [`Running::stopper`] signal).
    pub async fn wait(self) -> Result<(), OrchestratorError> {
        let outcome = match self.task.await {
            Ok(result) => result,
            Err(e) => Err(OrchestratorError::ConsumerLost(e.to_string())),
        };
        if let Some(http) = self.http {
            http.stop().await;
        }
        self.shared.env.log.close().await;
        outcome
    }

    /// A handle that can trigger the shutdown from elsewhere (a signal handler).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Opens the journal, connects, declares the topology, and starts consuming. Returns
/// once requests are being consumed (and the HTTP port, if any, is listening).
pub async fn start(settings: Settings) -> Result<Running, OrchestratorError> {
    settings
        .workflow
        .check_card_keys(settings.card_keys.is_some())?;
    let journal = Journal::open(&settings.journal_url)
        .await?
        .with_lease(settings.saga_lease);
    let metrics = Metrics::new();
    let health = Health::new();
    let (events, event_queue) = tokio::sync::mpsc::channel(16_384);
    let user = amqp::url_user(&settings.amqp_url)?;
    let unverified = settings.unverified_services();
    if !unverified.is_empty() {
        if settings.require_verified_senders {
            return Err(OrchestratorError::UnverifiedSenders(unverified.join(", ")));
        }
        warn!(
            services = %unverified.join(","),
            "replies are not verified: no broker user configured for these services \
             (--service-user SERVICE=USER); anyone who can publish to the broker can answer them"
        );
    }
    let transport = AmqpTransport {
        names: settings.names.clone(),
        user,
        service_users: settings.service_users.clone(),
        reply_queue: settings.names.reply_queue(&settings.instance),
        pending: Arc::default(),
        session: RwLock::new(None),
        events,
        events_dropped: metrics.events_dropped.clone(),
        events_enabled: settings.events,
        broken: watch::Sender::new(0),
    };
    let mut env = SagaEnv::new(
        settings.workflow.clone(),
        transport,
        journal.clone(),
        metrics,
    );
    env.card_keys = settings.card_keys.clone();
    let shared = Arc::new(Shared {
        settings,
        env,
        health,
    });

    tokio::spawn(publish_events(event_queue, Arc::downgrade(&shared)));
    let (stop, stopped) = watch::channel(false);
    let http = match &shared.settings.http_addr {
        Some(addr) => {
            let journal = journal.clone();
            let token = match &shared.settings.http_token_file {
                Some(path) => Some(baton_ops::BearerToken::from_file(path)?),
                None => None,
            };
            let weak = Arc::downgrade(&shared);
            let handler = baton_ops::request_handler(move |request: AppRequest| {
                let journal = journal.clone();
                let shared = weak.clone();
                async move {
                    if request.path == "/" {
                        // Gone only while the process stops.
                        let shared = shared.upgrade()?;
                        let overview = overview(&shared, &journal).await;
                        let html = status_page::index(&overview, &shared.settings.workflow);
                        return Some(Response::html(200, html));
                    }
                    payment_status(&journal, &request).await
                }
            });
            let routes = baton_ops::AppRoutes::new(handler).with_token(token);
            let serve = |addr: String| {
                let mut stop_http = stopped.clone();
                let registry = shared.env.metrics.registry.clone();
                let health = shared.health.clone();
                let routes = routes.clone();
                async move {
                    let stop = async move {
                        let _ = stop_http.wait_for(|s| *s).await;
                    };
                    HttpServer::start(&addr, registry, health, Some(routes), stop).await
                }
            };
            match serve(addr.clone()).await {
                Err(e) if e.is_addr_in_use() && shared.settings.http_fallback_to_free_port => {
                    let host = addr
                        .rsplit_once(':')
                        .map_or(addr.as_str(), |(host, _)| host);
                    let server = serve(format!("{host}:0")).await?;
                    warn!(
                        taken = %addr,
                        addr = %server.local_addr(),
                        "HTTP port taken (another baton run on this machine?): listening on a free \
                         port instead; give each replica its own with --http-addr / BATON_HTTP_ADDR"
                    );
                    Some(server)
                }
                served => Some(served?),
            }
        }
        None => None,
    };

    // The first connection must succeed: an unreachable broker at start is a
    // configuration problem to report, not to retry silently.
    let session = open_session(&shared).await?;
    tokio::spawn(keep_sagas(Arc::downgrade(&shared), stopped.clone()));
    let task = tokio::spawn(supervise(shared.clone(), session, stopped));
    Ok(Running {
        stop,
        task,
        shared,
        http,
    })
}

/// How often the leases of this process's sagas are renewed and the sweeper looks for
/// sagas whose lease ran out: a fifth of the lease, between 100 ms and 60 s.
fn keeper_tick(lease: Duration) -> Duration {
    (lease / 5).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// While requests wait in the queue, the sweeper takes only sagas whose lease ran out this
/// many leases ago (20 minutes with the default lease).
const BACKLOG_GRACE_LEASES: u32 = 4;

/// Sagas the sweeper takes over per round.
const SWEEP_BATCH: u32 = 32;

/// Renews the leases of the sagas this process runs, keeps `baton_sagas_running` and
/// `baton_saga_oldest_running_seconds`, and sweeps: takes over sagas whose lease ran out
/// and finishes them ([`saga::abandon`]). Every replica sweeps; the journal's claim lets
/// one of them take each saga. Stops with the process.
async fn keep_sagas(shared: std::sync::Weak<Shared>, mut stopped: watch::Receiver<bool>) {
    let Some(tick) = shared.upgrade().map(|s| keeper_tick(s.settings.saga_lease)) else {
        return;
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let journal = shared.env.log.clone();
        if let Err(e) = journal.renew(&shared.env.live.ids()).await {
            shared.env.metrics.journal_errors.inc();
            warn!(error = %e, "could not renew the leases of running sagas");
        }
        match journal.running().await {
            Ok(running) => {
                let metrics = &shared.env.metrics;
                metrics
                    .sagas_running
                    .set(i64::try_from(running.count).unwrap_or(i64::MAX));
                let age = running
                    .oldest_started_at
                    .and_then(|t| humantime::parse_rfc3339(&t).ok())
                    .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                    .unwrap_or_default();
                metrics.saga_oldest_running_seconds.set(age.as_secs_f64());
            }
            Err(e) => {
                shared.env.metrics.journal_errors.inc();
                warn!(error = %e, "could not count running sagas");
            }
        }
        // Finishing a saga sends compensations and publishes a result: not while the
        // broker is away (its lease runs out again and a later round takes it). And not
        // while requests wait in the queue: after an outage longer than a lease, the
        // requests of expired sagas are back in the queue, and resuming them is better
        // than abandoning them; each renews its saga's lease when it begins again.
        let overdue = match shared.env.transport.requests_waiting().await {
            Some(0) => Duration::ZERO,
            // A backlog: take only sagas overdue by far more than any backlog delays a
            // request, so a sweeper still works on a system that never drains.
            Some(_) => shared.settings.saga_lease * BACKLOG_GRACE_LEASES,
            None => continue,
        };
        match journal.stuck_for(SWEEP_BATCH, overdue).await {
            Ok(stuck) => {
                for saga in stuck {
                    match journal.claim(saga.payment_id).await {
                        Ok(true) => {
                            tokio::spawn(sweep_one(shared.clone(), saga));
                        }
                        Ok(false) => {}
                        Err(e) => warn!(error = %e, "could not claim a stuck saga"),
                    }
                }
            }
            Err(e) => {
                shared.env.metrics.journal_errors.inc();
                warn!(error = %e, "could not look for stuck sagas");
            }
        }
    }
}

/// Finishes one saga the sweeper claimed, and publishes its result.
async fn sweep_one(shared: Arc<Shared>, stuck: crate::journal::StuckSaga) {
    let span = tracing::info_span!("sweep", payment_id = %stuck.payment_id);
    async {
        let detail = format!(
            "nobody drove it since its lease ran out at {} (begun {}, parked {} times): \
             its request is gone",
            stuck.lease_until, stuck.started_at, stuck.parked
        );
        match finish_from_journal(&shared, stuck.payment_id, &detail).await {
            Ok(true) => shared
                .env
                .metrics
                .sagas_swept
                .with_label_values(&["finished"])
                .inc(),
            Ok(false) => shared
                .env
                .metrics
                .sagas_swept
                .with_label_values(&["left"])
                .inc(),
            Err(e) => {
                shared
                    .env
                    .metrics
                    .sagas_swept
                    .with_label_values(&["left"])
                    .inc();
                warn!(error = %e, "could not finish a stuck saga; a later sweep will");
            }
        }
    }
    .instrument(span)
    .await
}

/// Drives the saga of `payment_id` to an end from the journal ([`saga::abandon`]) and
/// publishes its result to the payments exchange (the client's `reply_to` is not in the
/// journal). `Ok(false)`: it could not be finished now (a service or the journal away);
/// its lease runs out again and a later sweep takes it.
async fn finish_from_journal(
    shared: &Shared,
    payment_id: Uuid,
    detail: &str,
) -> Result<bool, String> {
    let record = shared
        .env
        .log
        .load(payment_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("payment {payment_id} is not in the journal"))?;
    let already = record.result.is_some();
    let SagaOutcome::Finished { result, .. } = saga::abandon(&shared.env, &record, detail).await
    else {
        return Ok(false);
    };
    if already {
        // Someone finished it meanwhile and published its result.
        return Ok(true);
    }
    warn!(status = result.status.as_str(), reason = ?result.reason, "abandoned payment finished");
    let no_client = BasicProperties::default();
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let published = match shared.env.transport.channel() {
            Ok(channel) => publish_result(&channel, &result, &no_client, shared)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match published {
            Ok(()) => {
                count_result(&result, shared);
                return Ok(true);
            }
            Err(e) if attempt < 10 => {
                warn!(error = %e, attempt, "could not publish an abandoned payment's result; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(format!(
                    "the result is in the journal but could not be published: {e}"
                ))
            }
        }
    }
}

/// What the status page (`GET /`) shows, gathered now: the journal's recent payments,
/// this replica's breakers, and the depths of the parking and operators' queues.
async fn overview(shared: &Shared, journal: &Journal) -> status_page::Overview {
    let names = &shared.settings.names;
    let workflow = &shared.settings.workflow;
    let breakers = workflow
        .services()
        .into_iter()
        .map(|service| {
            let state = shared
                .env
                .metrics
                .breaker_state
                .with_label_values(&[service])
                .get();
            (service.to_owned(), state)
        })
        .collect();
    let mut parked = Vec::new();
    for delay_ms in workflow.parking().delays_ms() {
        let queue = names.retry_queue(delay_ms);
        let depth = shared.env.transport.queue_depth(&queue).await;
        parked.push((queue, depth));
    }
    status_page::Overview {
        instance: shared.settings.instance.clone(),
        prefix: names.prefix().to_owned(),
        recent: journal
            .recent(status_page::RECENT_PAYMENTS)
            .await
            .map_err(|e| e.to_string()),
        breakers,
        parked,
        dead: shared.env.transport.queue_depth(&names.dead_queue()).await,
        attention: shared
            .env
            .transport
            .queue_depth(&names.attention_queue())
            .await,
    }
}

/// `GET /payments/<id>`: the journal's record as JSON, or as an HTML page when a browser
/// asks for one.
async fn payment_status(journal: &Journal, request: &AppRequest) -> Option<Response> {
    let id = request.path.strip_prefix("/payments/")?;
    let Ok(payment_id) = Uuid::try_parse(id) else {
        if request.wants_html {
            return Some(Response::text(400, "the payment id must be a UUID"));
        }
        return Some(Response::json(
            400,
            br#"{"error":"the payment id must be a UUID"}"#.to_vec(),
        ));
    };
    let loaded = journal.load(payment_id).await;
    if request.wants_html {
        return Some(match loaded {
            Ok(Some(record)) => Response::html(200, status_page::payment(&record)),
            Ok(None) => Response::text(404, "unknown payment"),
            Err(e) => Response::text(503, format!("journal unavailable: {e}")),
        });
    }
    Some(match loaded {
        Ok(Some(record)) => match serde_json::to_vec(&record) {
            Ok(body) => Response::json(200, body),
            Err(e) => Response::json(500, error_json(&e.to_string())),
        },
        Ok(None) => Response::json(404, br#"{"error":"unknown payment"}"#.to_vec()),
        Err(e) => Response::json(503, error_json(&format!("journal unavailable: {e}"))),
    })
}

fn error_json(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}

/// A connected session with its consumers.
struct Live {
    session: Arc<Session>,
    consume: Channel,
    requests: lapin::Consumer,
    replies: lapin::Consumer,
    consumer_tag: String,
}

/// Connects and declares everything; the session is installed in the transport.
async fn open_session(shared: &Shared) -> Result<Live, OrchestratorError> {
    let settings = &shared.settings;
    let names = &settings.names;
    let connection = amqp::connect(
        &settings.amqp_url,
        &format!(
            "baton orchestrator {} {}",
            names.prefix(),
            settings.instance
        ),
        &amqp::TlsOptions::with_ca_file(settings.amqp_ca_file.clone()),
    )
    .await?;

    // Topology first: requests, results, dead letters, attention, parking, and every
    // service queue the workflow sends to, so a command waits in its queue even before
    // its service starts.
    let setup = connection.create_channel().await?;
    amqp::declare_core(&setup, names).await?;
    amqp::declare_attention(&setup, names).await?;
    for delay_ms in settings.workflow.parking().delays_ms() {
        amqp::declare_parking(&setup, names, delay_ms).await?;
    }
    for service in settings.workflow.services() {
        amqp::declare_command_queue(&setup, names, service).await?;
    }
    let _ = setup.close(200, "declared".into()).await;

    // Replies: an exclusive queue that disappears with this connection, consumed without
    // acks (a reply is only useful to the process that waits for it).
    let reply_queue = &shared.env.transport.reply_queue;
    let reply_channel = connection.create_channel().await?;
    let (_, replies) = amqp::consume_exclusive(&reply_channel, reply_queue).await?;

    let publish = amqp::confirm_channel(&connection).await?;
    let events = connection.create_channel().await?;
    let consume = connection.create_channel().await?;
    consume
        .basic_qos(settings.concurrency, BasicQosOptions::default())
        .await?;
    let consumer_tag = format!("baton-{}", settings.instance);
    let mut announce = FieldTable::default();
    let journal = &shared.env.log;
    for (key, value) in [
        (CONSUMER_WORKFLOW, settings.workflow.digest()),
        (CONSUMER_JOURNAL, journal.id().to_owned()),
        (CONSUMER_JOURNAL_AT, journal.location().to_owned()),
        (CONSUMER_INSTANCE, settings.instance.clone()),
    ] {
        announce.insert(key.into(), AMQPValue::LongString(value.into()));
    }
    let requests = consume
        .basic_consume(
            names.requests_queue().as_str().into(),
            consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            announce,
        )
        .await?;
    let session = Arc::new(Session {
        connection,
        publish,
        events,
    });
    if let Ok(mut current) = shared.env.transport.session.write() {
        *current = Some(session.clone());
    }
    shared.health.set_ready();
    let steps: Vec<String> = settings
        .workflow
        .steps()
        .iter()
        .map(|s| format!("{}->{}", s.name, names.command_queue(&s.service)))
        .collect();
    info!(
        instance = %settings.instance,
        version = env!("CARGO_PKG_VERSION"),
        broker = %amqp::redact_url(&settings.amqp_url),
        prefix = %names.prefix(),
        queue = %names.requests_queue(),
        journal = %journal.location(),
        journal_id = %journal.id(),
        workflow = %settings.workflow.source_name(),
        workflow_digest = %settings.workflow.digest(),
        steps = %steps.join(","),
        concurrency = settings.concurrency,
        "orchestrator consuming payment requests"
    );
    Ok(Live {
        session,
        consume,
        requests,
        replies,
        consumer_tag,
    })
}

/// Runs sessions until asked to stop, reconnecting after every loss.
async fn supervise(
    shared: Arc<Shared>,
    first: Live,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), OrchestratorError> {
    let mut live = first;
    loop {
        match serve(&shared, live, &mut stopped).await {
            SessionEnd::Stopped => return Ok(()),
            SessionEnd::Lost(why) => {
                shared
                    .health
                    .set_not_ready("broker connection lost; reconnecting");
                warn!(error = %why, "broker connection lost; reconnecting");
            }
        }
        let mut delays = tokio_retry::strategy::ExponentialBackoff::from_millis(2)
            .factor(50)
            .max_delay(Duration::from_secs(5))
            .map(tokio_retry::strategy::jitter);
        live = loop {
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            match open_session(&shared).await {
                Ok(live) => {
                    shared.env.metrics.reconnects.inc();
                    info!("reconnected to the broker");
                    break live;
                }
                Err(e) => warn!(error = %e, "reconnect failed; retrying"),
            }
        };
    }
}

enum SessionEnd {
    Stopped,
    Lost(String),
}

/// One connection's life: route replies, take requests, one task each.
async fn serve(
    shared: &Arc<Shared>,
    live: Live,
    stopped: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let Live {
        session,
        consume,
        mut requests,
        replies,
        consumer_tag,
    } = live;
    let pending = shared.env.transport.pending.clone();
    let metrics = shared.env.metrics.clone();
    let mut router = tokio::spawn(route_replies(replies, pending, metrics));
    // Failures seen from here on concern this session's channels only.
    let mut broken = shared.env.transport.broken.subscribe();
    broken.mark_unchanged();
    let mut tasks = JoinSet::new();
    let end = loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => break SessionEnd::Stopped,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = &mut router => break SessionEnd::Lost("reply consumer ended".into()),
            _ = broken.changed() => {
                break SessionEnd::Lost("the publish channel was closed by the broker".into())
            }
            delivery = requests.next() => match delivery {
                Some(Ok(delivery)) => {
                    tasks.spawn(handle_request(delivery, shared.clone()));
                }
                Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                None => break SessionEnd::Lost("request consumer cancelled by the broker".into()),
            }
        }
    };

    match end {
        SessionEnd::Stopped => {
            // Stop taking new requests; deliveries prefetched but not started go back to
            // the queue when the channel closes.
            let _ = consume
                .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
                .await;
            shared.health.set_not_ready("shutting down");
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
                        break;
                    }
                }
            }
        }
        SessionEnd::Lost(_) => {}
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    router.abort();
    if let Ok(mut current) = shared.env.transport.session.write() {
        *current = None;
    }
    if let Ok(mut map) = shared.env.transport.pending.lock() {
        map.clear();
    }
    let _ = session
        .connection
        .close(200, "baton orchestrator stopping".into())
        .await;
    end
}

/// Hands each reply to the command waiting for it, if it comes from the broker user of
/// that command's service and names that command; counts and drops the rest. A refused
/// reply leaves the wait in place: the service's real answer can still arrive.
async fn route_replies(mut replies: lapin::Consumer, pending: Pending, metrics: Metrics) {
    let mut refusals = Refusals::default();
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
        // Parsed before taking the lock; a garbled reply is the service's fault and may
        // be transient. The parser's message can quote the offending value: keep only
        // where it was.
        let parsed = serde_json::from_slice::<Reply>(&delivery.data).map_err(|e| {
            format!(
                "not a valid reply (line {}, column {})",
                e.line(),
                e.column()
            )
        });
        let sender = amqp::sender(&delivery.properties);
        let verdict = match pending.lock() {
            Ok(mut map) => match map.get(&correlation_id) {
                None => Verdict::Unknown,
                Some(waiter) => match check_reply(waiter, sender, parsed.as_ref()) {
                    Err(reason) => Verdict::Refused(reason, waiter.command_id.clone()),
                    Ok(()) => {
                        let waiter = map.remove(&correlation_id).expect("just found");
                        Verdict::Accepted(waiter)
                    }
                },
            },
            Err(_) => break,
        };
        match verdict {
            Verdict::Unknown => {
                metrics.unknown_replies.inc();
                warn!(correlation_id = %bounded(&correlation_id, 64), "reply with an unknown or expired correlation id dropped");
            }
            Verdict::Refused(reason, command_id) => {
                metrics.replies_rejected.with_label_values(&[reason]).inc();
                refusals.log(reason, &correlation_id, &command_id, sender);
            }
            Verdict::Accepted(waiter) => {
                let reply = parsed.unwrap_or_else(|problem| {
                    Reply::error(&waiter.command_id, "malformed_reply", problem)
                });
                let _ = waiter.reply.send(reply);
            }
        }
    }
    // Dropping every waiter tells in-flight sagas the replies are gone.
    if let Ok(mut map) = pending.lock() {
        map.clear();
    }
}

/// What [`route_replies`] does with one reply.
enum Verdict {
    /// No command waits under its correlation id.
    Unknown,
    /// A command waits, but this reply may not answer it (the reason label, and the
    /// command id waited for).
    Refused(&'static str, String),
    /// It answers the waiting command.
    Accepted(Waiter),
}

/// Whether a reply may answer `waiter`: it must come from the waiter's broker user, when
/// one is configured, and name the waiter's command (a reply that cannot be read is
/// taken, from the right sender, as that command's transient error).
fn check_reply(
    waiter: &Waiter,
    sender: Option<&str>,
    reply: Result<&Reply, &String>,
) -> Result<(), &'static str> {
    if let Some(expected) = &waiter.sender {
        if sender != Some(expected.as_str()) {
            return Err("wrong_sender");
        }
    }
    match reply {
        Ok(reply) if reply.command_id != waiter.command_id => Err("wrong_command_id"),
        _ => Ok(()),
    }
}

/// Refused replies are logged at WARN the first time each reason is seen on a
/// connection, then at DEBUG: a flood of forged replies must not flood the log (the
/// metric counts every one).
#[derive(Default)]
struct Refusals(std::collections::HashSet<&'static str>);

impl Refusals {
    fn log(
        &mut self,
        reason: &'static str,
        correlation_id: &str,
        command_id: &str,
        sender: Option<&str>,
    ) {
        // Only the command id is ours; the rest came off the wire.
        let correlation_id = bounded(correlation_id, 64);
        let sender = bounded(sender.unwrap_or(""), 64);
        let (correlation_id, sender) = (correlation_id.as_str(), sender.as_str());
        if self.0.insert(reason) {
            warn!(
                reason,
                correlation_id,
                command_id,
                sender,
                "reply refused and dropped (further refusals for this reason are logged at debug)"
            );
        } else {
            debug!(
                reason,
                correlation_id, command_id, sender, "reply refused and dropped"
            );
        }
    }
}

/// Counts the payment as in flight while it lives.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs one request from delivery to ack.
async fn handle_request(delivery: Delivery, shared: Arc<Shared>) {
    let metrics = &shared.env.metrics;
    metrics.received.inc();
    let _in_flight = InFlight::new(&metrics.inflight);
    let started = Instant::now();
    let request = match check_content_type(&delivery.properties)
        .and_then(|()| amqp::check_schema(&delivery.properties))
        .and_then(|()| PaymentRequest::parse(&delivery.data, &shared.settings.limits))
    {
        Ok(request) => request,
        Err(invalid) => {
            reject(delivery, invalid, &shared).await;
            return;
        }
    };
    let traceparent = header_text(&delivery.properties, "traceparent");
    let trace_id = traceparent
        .as_deref()
        .and_then(trace_id_of)
        .unwrap_or("")
        .to_owned();
    let span =
        tracing::info_span!("payment", payment_id = %request.payment_id, trace_id = %trace_id);
    let work = async {
        info!(
            amount_minor = request.amount.minor,
            currency = %request.amount.currency,
            card = %request.card.number,
            redelivered = delivery.redelivered,
            "payment received"
        );
        match saga::run(&shared.env, &request).await {
            SagaOutcome::Finished {
                result,
                dead_letter,
            } => {
                info!(status = result.status.as_str(), reason = ?result.reason, "payment finished");
                if finish(&delivery, &result, dead_letter.as_deref(), &shared).await {
                    count_result(&result, &shared);
                    metrics
                        .payment_duration
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            SagaOutcome::Park { tier, step, reason } => {
                park(&delivery, tier, &step, &reason, &shared).await;
            }
            SagaOutcome::JournalUnavailable {
                error,
                transient: true,
            } => {
                park(&delivery, 0, "journal", &error, &shared).await;
            }
            SagaOutcome::JournalUnavailable {
                error,
                transient: false,
            } => {
                // Parking would bring it back forever: an operator must look.
                set_aside(&delivery, "journal_corrupt", &error, &shared).await;
            }
            SagaOutcome::Reused(detail) => {
                // Answer this client only: the payments exchange carries the real
                // payment's one result, not this request's.
                let result = saga::rejected(request.payment_id, detail.clone());
                if let Ok(channel) = shared.env.transport.channel() {
                    let _ =
                        publish_to_client(&channel, &result, &delivery.properties, &shared).await;
                }
                set_aside(&delivery, "payment_id_reused", &detail, &shared).await;
            }
            SagaOutcome::Interrupted => {
                // Leave it unacked: when the channel closes RabbitMQ redelivers it.
                warn!("payment interrupted; it will be redelivered");
            }
        }
    }
    .instrument(span);
    TRACEPARENT.scope(traceparent, work).await
}

fn check_content_type(properties: &BasicProperties) -> Result<(), baton_contract::InvalidRequest> {
    let Some(content_type) = properties.content_type() else {
        return Ok(());
    };
    // The media type before any parameter (`; charset=utf-8`), compared case-insensitively
    // as RFC 9110 says.
    let media_type = content_type.as_str().split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    // The client's value is not quoted: it would travel into the result's detail, the
    // x-baton-detail header and the log, and it can hold anything (a card number too).
    Err(baton_contract::InvalidRequest::new(
        None,
        "content_type",
        "must be application/json (parameters such as \"; charset=utf-8\" are allowed) \
         or absent; the request's content type was something else",
    ))
}

/// Returns a delivery to its queue after a pause, so that a failure that persists for a
/// while (a result that cannot be published) does not spin through the queue's delivery
/// limit in milliseconds.
async fn nack(delivery: &Delivery) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await;
}

/// Publishes the result (to the client's `reply_to`, if any, and to the payments
/// exchange), copies the request to the dead-letter queue if asked, then acks. If
/// publishing fails the request goes back to the queue: the journal answers it again.
async fn finish(
    delivery: &Delivery,
    result: &PaymentResult,
    dead_letter: Option<&str>,
    shared: &Shared,
) -> bool {
    let Ok(channel) = shared.env.transport.channel() else {
        return false;
    };
    if let Err(e) = publish_result(&channel, result, &delivery.properties, shared).await {
        error!(error = %e, "could not publish the result; returning the request to the queue");
        nack(delivery).await;
        return false;
    }
    crash::point("after_result_published");
    if let Some(reason) = dead_letter {
        let detail = result.detail.clone().unwrap_or_default();
        if let Err(e) = dead_letter_copy(&channel, delivery, reason, &detail, shared).await {
            error!(error = %e, "could not copy the request to the dead-letter queue; returning it to the queue");
            nack(delivery).await;
            return false;
        }
    }
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        warn!(error = %e, "could not ack the request after publishing its result");
        return false;
    }
    true
}

async fn publish_result(
    channel: &Channel,
    result: &PaymentResult,
    request: &BasicProperties,
    shared: &Shared,
) -> Result<(), BrokerError> {
    let body = serde_json::to_vec(result).expect("a PaymentResult always serialises");
    let mut properties = shared
        .env
        .transport
        .stamped(json_properties(&[]))
        .with_message_id(result.payment_id.to_string().as_str().into());
    if let Some(correlation_id) = request.correlation_id() {
        properties = properties.with_correlation_id(correlation_id.clone());
    }
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

/// Moves a request that cannot go on to the dead-letter queue with the reason and acks
/// it; returns it to the queue (after a pause) if even that fails.
async fn set_aside(delivery: &Delivery, reason: &str, detail: &str, shared: &Shared) {
    let Ok(channel) = shared.env.transport.channel() else {
        return;
    };
    match dead_letter_copy(&channel, delivery, reason, detail, shared).await {
        Ok(()) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            error!(error = %e, "could not dead-letter a request; returning it to the queue");
            nack(delivery).await;
        }
    }
}

/// Counts a published result in `baton_payment_results_total{status,reason}`.
fn count_result(result: &PaymentResult, shared: &Shared) {
    let reason = shared
        .settings
        .workflow
        .reason_label(result.reason.as_deref());
    shared
        .env
        .metrics
        .results
        .with_label_values(&[result.status.as_str(), reason])
        .inc();
}

/// The client's `reply_to` queue does not exist: the client went away. Not an error — the
/// result is still on the payments exchange (and its results queue); counted and logged.
fn client_gone(reply_to: &str, shared: &Shared) {
    shared.env.metrics.client_replies_unroutable.inc();
    warn!(reply_to = %bounded(reply_to, 64), "the client's reply_to queue does not exist; the result is only on the payments exchange");
}

/// Publishes a result to the request's `reply_to` only (not to the payments exchange). A
/// `reply_to` queue that no longer exists is not an error ([`client_gone`]).
async fn publish_to_client(
    channel: &Channel,
    result: &PaymentResult,
    request: &BasicProperties,
    shared: &Shared,
) -> Result<(), BrokerError> {
    let Some(reply_to) = request.reply_to() else {
        return Ok(());
    };
    let body = serde_json::to_vec(result).expect("a PaymentResult always serialises");
    let mut properties = shared
        .env
        .transport
        .stamped(json_properties(&[]))
        .with_message_id(result.payment_id.to_string().as_str().into());
    if let Some(correlation_id) = request.correlation_id() {
        properties = properties.with_correlation_id(correlation_id.clone());
    }
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
const DEAD_LETTER_BODY_KEEP: usize = 4096;

/// Headers the broker owns (it writes them when it dead-letters a message): never
/// copied onto a message Baton publishes.
fn is_broker_death_header(key: &str) -> bool {
    key == "x-death" || key.starts_with("x-first-death-") || key.starts_with("x-last-death-")
}

/// A copy of the request for operators: the client's properties and headers, Baton's
/// reason on top. A body over the request size limit is kept truncated
/// ([`DEAD_LETTER_BODY_KEEP`] bytes, masked: [`baton_contract::mask::truncated`]), with
/// [`headers::TRUNCATED`] and [`headers::ORIGINAL_SIZE`] saying so.
async fn dead_letter_copy(
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
        .env
        .metrics
        .dead_lettered
        .with_label_values(&[reason])
        .inc();
    Ok(())
}

/// Moves the request to a parking queue (same body and properties, a parking count in
/// its headers) and acks it; it comes back to the request queue after the tier's delay.
async fn park(delivery: &Delivery, tier: usize, step: &str, reason: &str, shared: &Shared) {
    let tiers = &shared.settings.workflow.parking().tiers;
    let delay = tiers[tier.min(tiers.len() - 1)];
    let Ok(channel) = shared.env.transport.channel() else {
        return;
    };
    let parked = header_text(&delivery.properties, headers::PARKED)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    // Stamped with this process's user: the client's own `user_id`, if it set one, is
    // not ours to publish (the broker would refuse it).
    let properties = shared.env.transport.stamped(add_header(
        add_header(
            delivery.properties.clone(),
            headers::PARKED,
            &parked.to_string(),
        ),
        headers::PARKED_AT,
        step,
    ));
    let queue = shared.settings.names.retry_queue(delay.as_millis() as u64);
    let parked_copy = publish_confirmed(&channel, "", &queue, &delivery.data, properties).await;
    match shared.env.transport.watch(parked_copy) {
        Ok(()) => {
            info!(
                step,
                delay_ms = delay.as_millis() as u64,
                reason,
                "payment parked"
            );
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                warn!(error = %e, "could not ack a parked request; it may run twice (safely)");
            }
        }
        Err(e) => {
            error!(error = %e, "could not park the payment; returning it to the queue");
            nack(delivery).await;
        }
    }
}

/// An invalid request. A payment the journal does not know gets a `rejected` result (to
/// the client and the payments exchange: `rejected` is never final, see the README's
/// contract) and its request goes to the dead-letter queue. A payment the journal knows
/// is never left unfinished by an invalid copy ([`reject_known`]). The request is acked
/// once everything is published; if publishing fails it goes back to the queue.
async fn reject(delivery: Delivery, invalid: baton_contract::InvalidRequest, shared: &Shared) {
    let payment_id = invalid
        .payment_id
        .or_else(|| PaymentRequest::sniff_payment_id(&delivery.data));
    warn!(payment_id = ?payment_id, field = %invalid.field, problem = %invalid.problem, "request rejected");
    let detail = invalid.to_string();
    if let Some(id) = payment_id {
        match shared.env.log.load(id).await {
            Ok(Some(record)) => return reject_known(delivery, record, &detail, shared).await,
            Ok(None) => {}
            Err(e) => {
                // Whether the journal knows it decides what to answer: ask again later.
                shared.env.metrics.journal_errors.inc();
                park(&delivery, 0, "journal", &e.to_string(), shared).await;
                return;
            }
        }
    }
    let Ok(channel) = shared.env.transport.channel() else {
        return;
    };
    let answered = match payment_id {
        Some(id) => {
            let result = saga::rejected(id, detail.clone());
            let published = publish_result(&channel, &result, &delivery.properties, shared).await;
            if published.is_ok() {
                shared.env.transport.event(SagaEvent::of_result(&result));
                shared
                    .env
                    .metrics
                    .results
                    .with_label_values(&["rejected", "invalid_request"])
                    .inc();
            }
            published
        }
        None => Ok(()),
    };
    // The result first: if the dead-letter copy then fails, the request comes back and
    // its (identical) rejection is published again, rather than copied twice to `.dead`.
    set_aside_answered(&channel, &delivery, answered, &detail, shared).await;
}

/// After the client was answered (`answered`), copies an invalid request to the
/// dead-letter queue and acks it; if either failed it goes back to the queue (after a
/// pause) and is answered again, rather than copied twice to `.dead`.
async fn set_aside_answered(
    channel: &Channel,
    delivery: &Delivery,
    answered: Result<(), BrokerError>,
    detail: &str,
    shared: &Shared,
) {
    let done = match answered {
        Ok(()) => dead_letter_copy(channel, delivery, "invalid_request", detail, shared).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            error!(error = %e, "could not answer and dead-letter an invalid request; returning it to the queue");
            nack(delivery).await;
        }
    }
}

/// An invalid copy of a payment the journal knows gets that payment's result:
/// - decided: the recorded result, to this client only (the payments exchange has it);
/// - running, and this copy is the payment the journal begun (same amount, parties,
///   card) but no longer passes validation (a limit lowered while it was parked): nobody
///   can run it any more, so it is finished now from the journal ([`saga::abandon`]:
///   compensated, `failed`/`abandoned`) and its result published like any other;
/// - running, and this copy is another payment under the same id (a client resending a
///   broken copy while the real one runs): it waits in the last parking tier and comes
///   back for the result.
async fn reject_known(
    delivery: Delivery,
    record: crate::journal::SagaRecord,
    detail: &str,
    shared: &Shared,
) {
    if let Some(result) = &record.result {
        let Ok(channel) = shared.env.transport.channel() else {
            return;
        };
        let answered = publish_to_client(&channel, result, &delivery.properties, shared).await;
        set_aside_answered(&channel, &delivery, answered, detail, shared).await;
        return;
    }
    let unbounded = Limits {
        max_body_bytes: usize::MAX,
        max_amount_minor: u64::MAX,
    };
    let same_payment = PaymentRequest::parse(&delivery.data, &unbounded)
        .map(|request| crate::journal::PaymentSummary::of(&request) == record.summary)
        .unwrap_or(false);
    if !same_payment {
        let tiers = shared.settings.workflow.parking().tiers.len();
        info!("an invalid copy of a running payment waits for that payment's result");
        park(
            &delivery,
            tiers.saturating_sub(1),
            "journal",
            detail,
            shared,
        )
        .await;
        return;
    }
    let why = format!("its request no longer passes validation: {detail}");
    match saga::abandon(&shared.env, &record, &why).await {
        SagaOutcome::Finished { result, .. } => {
            warn!(status = result.status.as_str(), reason = ?result.reason, "payment finished without running on");
            if finish(&delivery, &result, Some("invalid_request"), shared).await {
                count_result(&result, shared);
            }
        }
        SagaOutcome::Park { tier, step, reason } => {
            park(&delivery, tier, &step, &reason, shared).await;
        }
        SagaOutcome::JournalUnavailable { error, .. } => {
            park(&delivery, 0, "journal", &error, shared).await;
        }
        SagaOutcome::Reused(_) | SagaOutcome::Interrupted => {
            warn!("payment interrupted; it will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_compared_as_media_types() {
        let with = |ct: &str| BasicProperties::default().with_content_type(ct.into());
        assert!(
            check_content_type(&BasicProperties::default()).is_ok(),
            "absent is accepted"
        );
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
        ] {
            assert!(check_content_type(&with(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/jsonx",
            "application/json-seq",
            "",
        ] {
            let e = check_content_type(&with(bad)).unwrap_err();
            assert_eq!(e.field, "content_type", "{bad}");
        }
    }

    #[test]
    fn a_refused_content_type_is_never_echoed() {
        let sneaky = "text/plain; card=4242424242424242; x=5105 1051 0510 5100";
        let e = check_content_type(&BasicProperties::default().with_content_type(sneaky.into()))
            .unwrap_err();
        let detail = e.to_string();
        assert!(
            detail.starts_with("content_type: must be application/json"),
            "{detail}"
        );
        for leaked in ["text/plain", "4242", "5100", "card="] {
            assert!(!detail.contains(leaked), "{leaked} in {detail}");
        }
    }

    #[test]
    fn trace_ids_are_read_from_w3c_traceparent() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id_of("garbage"), None);
    }
}
