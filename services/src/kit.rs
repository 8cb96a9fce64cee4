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
//! Connection recovery: when the broker connection or a channel drops, the service stops
//! being ready, reconnects with capped exponential backoff and jitter (forever: only a
//! shutdown ends it), declares its queue again and resumes consuming. A command being
//! handled when its channel dies still finishes in the store, but its reply and ack fail:
//! the broker redelivers it (to this or another instance) and the store answers the
//! repeat without acting twice.
//!
//! Observability: each command's span carries `payment_id`, `step`, `command_id` and the
//! `trace_id` of its `traceparent` header, so one payment can be followed across the
//! services' logs. Metrics live in a registry of the running service
//! ([`RunningService::registry`]); with an HTTP port they are served at `/metrics`, and
//! `/readyz` is ready only while connected, declared and consuming.
//!
//! Faults ([`crate::faults`]) are injected here, between decoding and handling.
//!
//! Not here: business rules ([`crate::rules`]), storage ([`crate::ledger`]), CLI parsing
//! ([`crate::cli`]).

use crate::faults::{Dice, Faults, InvalidFailRate, INJECTED_FAULT};
use crate::handler::Handler;
use crate::ledger::{Answer, Ledger};
use crate::metrics::{Metrics, Outcome};
use anyhow::Context as _;
use baton_amqp::{self as amqp, BrokerError};
use baton_contract::{headers, Command, Names, Reply};
use baton_ops::HttpServer;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_retry::strategy::{jitter, ExponentialBackoff};
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

    /// The binary's default HTTP address (`/metrics`, `/healthz`, `/readyz`): one port
    /// per service, so all four run side by side on one machine.
    pub fn default_http_addr(self) -> &'static str {
        match self {
            ServiceKind::Authorization => "127.0.0.1:9461",
            ServiceKind::Risk => "127.0.0.1:9462",
            ServiceKind::Pci => "127.0.0.1:9463",
            ServiceKind::Transaction => "127.0.0.1:9464",
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
    /// PEM file of the CA that signed the broker's TLS certificate, for `amqps://`
    /// (`--amqp-ca-file`); `None`: the system's CA store.
    pub amqp_ca_file: Option<std::path::PathBuf>,
    /// Topology prefix: the service consumes `<prefix>.cmd.<service>`.
    pub prefix: String,
    /// Commands handled at once (the consumer's prefetch).
    pub concurrency: u16,
    /// Ledger database for authorization and transaction; ignored by risk and PCI.
    pub ledger_url: String,
    /// Faults injected from the start (none by default); change them while running with
    /// [`RunningService::set_faults`].
    pub faults: Faults,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`host:port`, port 0 = any free
    /// port); `None` = no HTTP port (in-process tests that don't need one). The binaries
    /// default to [`ServiceKind::default_http_addr`].
    pub http_addr: Option<String>,
    /// Consume `<prefix>.cmd.<queue>` instead of the kind's own queue: e.g. a second risk
    /// instance serving as the fallback `risk-lite` of a workflow
    /// (`fallback = { service = "risk-lite" }`). `None` (the default): the kind's name.
    /// Same rules as a workflow's service names: 1-64 of `a-z 0-9 _ -`.
    pub queue: Option<String>,
    /// The broker users whose commands are obeyed (the orchestrators'). A command whose
    /// RabbitMQ-validated `user_id` is not one of them is dropped and counted. Empty (the
    /// default): commands are not verified, and the start logs a warning.
    pub orchestrator_users: Vec<String>,
    /// Refuse to start with an empty [`ServiceConfig::orchestrator_users`].
    pub require_verified_senders: bool,
    /// The card keys risk recognises fingerprints with (`--card-key-file`, the
    /// orchestrator's file): required by risk, ignored by the others. `Debug` shows key
    /// ids only.
    pub card_keys: Option<baton_contract::CardKeys>,
}

impl ServiceConfig {
    /// The service name whose queue `kind` consumes with this configuration:
    /// [`ServiceConfig::queue`] if set, else the kind's own name.
    pub fn queue_service(&self, kind: ServiceKind) -> &str {
        self.queue.as_deref().unwrap_or(kind.name())
    }

    /// Checks [`ServiceConfig::queue`]: 1-64 characters of `a-z`, `0-9`, `_` or `-` (the
    /// names a workflow accepts for services).
    pub fn validate_queue(&self) -> Result<(), String> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        let ok = (1..=64).contains(&queue.len())
            && queue
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "queue {queue:?} must be 1-64 characters of a-z, 0-9, '_' or '-'"
            ))
        }
    }
}

impl Default for ServiceConfig {
    /// Local broker, prefix `baton`, 64 at once, `sqlite://baton-ledger.db`, no faults,
    /// no HTTP port.
    fn default() -> Self {
        Self {
            amqp_url: amqp::DEFAULT_AMQP_URL.into(),
            amqp_ca_file: None,
            prefix: "baton".into(),
            concurrency: 64,
            ledger_url: "sqlite://baton-ledger.db".into(),
            faults: Faults::default(),
            http_addr: None,
            queue: None,
            orchestrator_users: Vec::new(),
            require_verified_senders: false,
            card_keys: None,
        }
    }
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("amqp_url", &amqp::redact_url(&self.amqp_url))
            .field("amqp_ca_file", &self.amqp_ca_file)
            .field("prefix", &self.prefix)
            .field("concurrency", &self.concurrency)
            .field("ledger_url", &amqp::redact_url(&self.ledger_url))
            .field("faults", &self.faults)
            .field("http_addr", &self.http_addr)
            .field("queue", &self.queue)
            .field("orchestrator_users", &self.orchestrator_users)
            .field("require_verified_senders", &self.require_verified_senders)
            .field("card_keys", &self.card_keys)
            .finish()
    }
}

/// Whether a service is taking commands, and how often it had to reconnect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Connected, command queue declared and consuming. False while reconnecting and
    /// after shutdown began.
    pub ready: bool,
    /// Times the broker connection (or a channel) was lost and opened again.
    pub reconnects: u64,
}

/// A service consuming its queue. Stop it with [`RunningService::shutdown`].
pub struct RunningService {
    /// Which service this is.
    kind: ServiceKind,
    /// The command queue consumed.
    queue: String,
    /// The name the broker shows for the connection (unique per running service).
    connection_name: String,
    /// Set to `true` to stop consuming; the run loop watches it.
    stop: watch::Sender<bool>,
    /// The faults in force; each delivery reads them when it starts.
    faults: watch::Sender<Faults>,
    /// Readiness and reconnects, published by the run loop.
    health: watch::Receiver<Health>,
    /// The service's own metrics (served at `/metrics` when there is an HTTP port).
    registry: prometheus::Registry,
    /// The HTTP port, if configured; stopped after the run loop.
    http: Option<HttpServer>,
    /// The run loop: ends on shutdown. It survives a lost broker connection (it
    /// reconnects), so an `Err` means a bug (a panic), not an outage.
    task: JoinHandle<anyhow::Result<()>>,
}

impl fmt::Debug for RunningService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningService")
            .field("kind", &self.kind)
            .field("queue", &self.queue)
            .field("connection_name", &self.connection_name)
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

    /// The connection name the broker shows (`baton-<service> <prefix> <id>`), unique per
    /// running service: find its connection in the management UI or `rabbitmqctl`.
    pub fn connection_name(&self) -> &str {
        &self.connection_name
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        *self.faults.borrow()
    }

    /// Changes the faults from the next command on (commands already being handled keep
    /// the faults they started with). E.g. a black hole, then `Faults::default()` to come
    /// back.
    pub fn set_faults(&self, faults: Faults) -> Result<(), InvalidFailRate> {
        faults.validate()?;
        if faults != self.faults() {
            tracing::info!(service = self.kind.name(), ?faults, "faults changed");
        }
        self.faults.send_replace(faults);
        Ok(())
    }

    /// The address the HTTP port is bound to (the real port when 0 was asked for), or
    /// `None` without an HTTP port.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
    }

    /// The registry of this service's metrics (the one `/metrics` serves).
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// Readiness and reconnect count now.
    pub fn health(&self) -> Health {
        *self.health.borrow()
    }

    /// A receiver that sees every change of [`Health`]: wait on it instead of polling
    /// (`wait_for(|h| h.ready && h.reconnects > 0)`).
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// Stops consuming, finishes the commands in flight (their replies are published and
    /// acked), then closes the channels, the connection and the ledger.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // The receiver is gone only if the run loop already ended; its result is below.
        let _ = self.stop.send(true);
        let result = join(self.task).await;
        stop_http(self.http).await;
        result
    }

    /// Runs until the run loop ends (it does not end on a lost connection: it
    /// reconnects).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let RunningService {
            stop,
            mut task,
            http,
            ..
        } = self;
        let result = tokio::select! {
            result = &mut task => flatten(result),
            () = signal => {
                let _ = stop.send(true);
                join(task).await
            }
        };
        stop_http(http).await;
        result
    }
}

/// Stopped last, so `/metrics` can be scraped while commands in flight finish.
async fn stop_http(http: Option<HttpServer>) {
    if let Some(http) = http {
        http.stop().await;
    }
}

async fn join(task: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    flatten(task.await)
}

fn flatten(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    result.context("the service's run loop panicked")?
}

/// Reconnect delays: 200 ms doubling to [`RECONNECT_CAP`], each drawn uniformly below
/// that ("full jitter") so services cut off together do not come back together.
fn reconnect_delays() -> impl Iterator<Item = Duration> {
    ExponentialBackoff::from_millis(2)
        .factor(100)
        .max_delay(RECONNECT_CAP)
        .map(jitter)
}

/// The longest wait between two reconnect attempts.
const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// What outlives a broker connection: shared by the run loop and every delivery task.
struct Shared {
    /// Which service.
    kind: ServiceKind,
    /// The service's handler and store.
    handler: Handler,
    /// Broker URL, for reconnecting.
    amqp_url: String,
    /// How `amqps://` checks the broker's certificate.
    amqp_tls: amqp::TlsOptions,
    /// The broker-visible connection name, the same after a reconnect.
    connection_name: String,
    /// Topology names under the prefix.
    names: Names,
    /// The consumer's prefetch.
    concurrency: u16,
    /// The service name of the queue consumed: the kind's name or
    /// [`ServiceConfig::queue`].
    queue_service: String,
    /// `<prefix>.cmd.<queue_service>`.
    queue: String,
    /// `<prefix>.dead`.
    dead_queue: String,
    /// The faults in force, set through [`RunningService::set_faults`].
    faults: watch::Receiver<Faults>,
    /// Decides which commands an injected fail rate hits.
    dice: Dice,
    /// Readiness and reconnects, read by [`RunningService::health`].
    health: watch::Sender<Health>,
    /// Readiness as `/readyz` reports it, with the reason when not ready.
    readiness: baton_ops::Health,
    /// The service's metrics.
    metrics: Metrics,
    /// This process's broker user, stamped as `user_id` on its replies and dead letters.
    user: String,
    /// Whose commands are obeyed ([`ServiceConfig::orchestrator_users`]).
    orchestrators: Vec<String>,
    /// Whether a command from an unknown sender was logged at WARN already.
    refusal_logged: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Ready: consuming. `/readyz` and [`RunningService::health`] follow.
    fn set_ready(&self) {
        self.readiness.set_ready();
        self.health.send_modify(|h| h.ready = true);
    }

    /// Not ready, and why (shown by `/readyz`).
    fn set_not_ready(&self, reason: &str) {
        self.readiness.set_not_ready(reason);
        self.health.send_modify(|h| h.ready = false);
    }
}

/// One broker connection's worth of state; replaced whole on a reconnect.
struct Session {
    /// Kept to close it on shutdown (dropping it would not say goodbye to the broker).
    connection: Connection,
    /// The consuming channel (prefetch = concurrency).
    consume: Channel,
    /// Deliveries of `<prefix>.cmd.<service>`.
    consumer: Consumer,
    /// What delivery tasks publish on.
    link: Arc<Link>,
}

/// The part of a [`Session`] each delivery task holds. A task started on a session that
/// has since died still holds it: its publish and ack fail, and the broker redelivers
/// the command (the handler is idempotent), so such tasks simply end.
struct Link {
    /// Confirm-mode channel for replies and dead letters: separate from the consuming
    /// channel so a publish never waits behind deliveries (lapin's advice).
    publish: Channel,
    /// Signalled by a task whose publish found this channel closed, so the run loop
    /// reconnects even while the consuming channel still looks healthy.
    broken: Notify,
}

/// Starts `kind`: connects, opens the ledger if the service has one, declares its command
/// queue and starts consuming. Returns once it is consuming. When the broker cannot be
/// reached at start, the error's root is [`BrokerError::Connect`]; once started, a lost
/// connection is re-established in the background.
pub async fn start(kind: ServiceKind, config: ServiceConfig) -> anyhow::Result<RunningService> {
    anyhow::ensure!(config.concurrency > 0, "concurrency must be at least 1");
    config.faults.validate()?;
    config.validate_queue().map_err(anyhow::Error::msg)?;
    let user = amqp::url_user(&config.amqp_url)?;
    if config.orchestrator_users.is_empty() {
        anyhow::ensure!(
            !config.require_verified_senders,
            "--require-verified-senders: no orchestrator user configured; pass \
             --orchestrator-user USER (BATON_ORCHESTRATOR_USERS)"
        );
        tracing::warn!(
            service = kind.name(),
            "commands are not verified: no orchestrator user configured \
             (--orchestrator-user USER); anyone who can publish to the broker can command this service"
        );
    }
    let ledger = if kind.uses_ledger() {
        let ledger = Ledger::open(&config.ledger_url).await?;
        tracing::info!(
            ledger = %ledger.location(),
            ledger_id = %ledger.id(),
            "ledger open"
        );
        Some(ledger)
    } else {
        None
    };
    let handler =
        Handler::new(kind, ledger, config.card_keys.clone()).map_err(anyhow::Error::msg)?;
    let metrics = Metrics::new(kind.name()).context("registering the metrics")?;
    let readiness = baton_ops::Health::new();
    let (stop, stopped) = watch::channel(false);
    // The HTTP port first: a taken port fails the start before anything connects, and
    // `/readyz` answers "starting" while the broker connection is made.
    let http = match &config.http_addr {
        None => None,
        Some(addr) => {
            let mut stopped = stopped.clone();
            // Also ends the port when the RunningService is dropped without a shutdown.
            let stop_or_drop = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let started = HttpServer::start(
                addr,
                metrics.registry.clone(),
                readiness.clone(),
                None,
                stop_or_drop,
            )
            .await;
            match started {
                Ok(http) => Some(http),
                Err(e) => {
                    handler.close().await;
                    return Err(e.into());
                }
            }
        }
    };
    let names = Names::new(config.prefix.as_str());
    let queue_service = config.queue_service(kind).to_owned();
    let (faults_tx, faults_rx) = watch::channel(config.faults);
    let (health_tx, health_rx) = watch::channel(Health::default());
    let shared = Arc::new(Shared {
        kind,
        handler,
        amqp_url: config.amqp_url,
        amqp_tls: amqp::TlsOptions::with_ca_file(config.amqp_ca_file),
        // Unique, so a test (or an operator) can find and close exactly this connection.
        connection_name: format!(
            "baton-{} {} {}",
            kind.name(),
            config.prefix,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        queue: names.command_queue(&queue_service),
        queue_service,
        dead_queue: names.dead_queue(),
        names,
        concurrency: config.concurrency,
        faults: faults_rx,
        dice: Dice::new(),
        health: health_tx,
        readiness,
        metrics,
        user,
        orchestrators: config.orchestrator_users,
        refusal_logged: Default::default(),
    });
    let session = match open_session(&shared).await {
        Ok(session) => session,
        Err(e) => {
            stop_http(http).await;
            shared.handler.close().await;
            return Err(e);
        }
    };
    shared.set_ready();
    if config.faults.any() {
        tracing::warn!(service = kind.name(), faults = ?config.faults, "fault injection on");
    }
    let ledger = shared.handler.ledger();
    tracing::info!(
        service = kind.name(),
        version = env!("CARGO_PKG_VERSION"),
        broker = %amqp::redact_url(&shared.amqp_url),
        prefix = %shared.names.prefix(),
        queue = %shared.queue,
        ledger = ledger.map(Ledger::location),
        ledger_id = ledger.map(Ledger::id),
        concurrency = config.concurrency,
        connection = %shared.connection_name,
        "consuming commands"
    );
    Ok(RunningService {
        kind,
        queue: shared.queue.clone(),
        connection_name: shared.connection_name.clone(),
        stop,
        faults: faults_tx,
        health: health_rx,
        registry: shared.metrics.registry.clone(),
        http,
        task: tokio::spawn(run(shared, session, stopped)),
    })
}

/// Connects, declares the command queue (again, after a reconnect: the topology function
/// is idempotent) and starts consuming.
async fn open_session(shared: &Shared) -> anyhow::Result<Session> {
    let connection =
        amqp::connect(&shared.amqp_url, &shared.connection_name, &shared.amqp_tls).await?;
    let result = async {
        let consume = connection
            .create_channel()
            .await
            .map_err(BrokerError::from)?;
        amqp::declare_command_queue(&consume, &shared.names, &shared.queue_service).await?;
        // Prefetch = concurrency: the broker never hands us more than we work on at once,
        // which also bounds the delivery tasks.
        consume
            .basic_qos(shared.concurrency, BasicQosOptions::default())
            .await
            .map_err(BrokerError::from)?;
        let publish = amqp::confirm_channel(&connection).await?;
        let tag = format!(
            "baton-{}-{}",
            shared.kind.name(),
            uuid::Uuid::new_v4().simple()
        );
        let consumer = consume
            .basic_consume(
                shared.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::from)?;
        let link = Arc::new(Link {
            publish,
            broken: Notify::new(),
        });
        anyhow::Ok((consume, consumer, link))
    }
    .await;
    match result {
        Ok((consume, consumer, link)) => Ok(Session {
            connection,
            consume,
            consumer,
            link,
        }),
        Err(e) => {
            // Don't leave a half-set-up connection behind.
            let _ = connection.close(200, "set-up failed".into()).await;
            Err(e)
        }
    }
}

/// The service's life: consume until stopped; when the connection or a channel is lost,
/// reconnect (forever, with backoff) and consume again. Ends only on shutdown.
async fn run(
    shared: Arc<Shared>,
    mut session: Session,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // One set across sessions: tasks of a dead session still finish (or fail) on their own.
    let mut tasks = JoinSet::new();
    loop {
        let lost = tokio::select! {
            // `Err` means the RunningService was dropped: stop as well.
            _ = stopped.changed() => break,
            lost = consume(&shared, &mut session, &mut tasks) => lost,
        };
        shared.set_not_ready("reconnecting to the broker");
        tracing::warn!(
            service = shared.kind.name(),
            error = %format!("{lost:#}"),
            "broker connection lost: reconnecting"
        );
        // The connection may be half alive (only a channel died): close it so the broker
        // requeues what it still holds for us. Bounded: a dead socket must not hang here.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            session.connection.close(200, "reconnecting".into()),
        )
        .await;
        match reconnect(&shared, &mut stopped).await {
            Some(next) => {
                session = next;
                shared.metrics.reconnected();
                shared.health.send_modify(|h| h.reconnects += 1);
                shared.set_ready();
                tracing::info!(service = shared.kind.name(), queue = %shared.queue, "reconnected: consuming again");
            }
            None => {
                drain(&mut tasks).await;
                shared.handler.close().await;
                tracing::info!(queue = %shared.queue, "stopped while reconnecting");
                return Ok(());
            }
        }
    }
    shared.set_not_ready("shutting down");
    tracing::info!(queue = %shared.queue, in_flight = tasks.len(), "stopping: finishing commands in flight");
    // Deliveries buffered but not started stay unacked and return to the queue when the
    // channel closes below.
    if let Err(e) = session
        .consume
        .basic_cancel(session.consumer.tag(), BasicCancelOptions::default())
        .await
    {
        tracing::warn!(error = %e, "cancelling the consumer failed");
    }
    drain(&mut tasks).await;
    let Session {
        connection,
        consume,
        consumer,
        link,
    } = session;
    drop(consumer);
    let _ = consume.close(200, "shutdown".into()).await;
    let _ = link.publish.close(200, "shutdown".into()).await;
    let _ = connection.close(200, "shutdown".into()).await;
    shared.handler.close().await;
    tracing::info!(queue = %shared.queue, "stopped");
    Ok(())
}

/// Spawns a task per delivery until the session fails; returns why it failed.
async fn consume(
    shared: &Arc<Shared>,
    session: &mut Session,
    tasks: &mut JoinSet<()>,
) -> anyhow::Error {
    loop {
        tokio::select! {
            next = session.consumer.next() => match next {
                Some(Ok(delivery)) => {
                    tasks.spawn(process(shared.clone(), session.link.clone(), delivery));
                }
                Some(Err(e)) => {
                    return anyhow::Error::from(BrokerError::from(e))
                        .context(format!("consuming {} failed", shared.queue));
                }
                // Also what a deleted queue looks like: the reconnect declares it again.
                None => return anyhow::anyhow!(
                    "the broker cancelled the consumer of {}", shared.queue
                ),
            },
            () = session.link.broken.notified() => {
                return anyhow::anyhow!("the reply channel of {} closed", shared.queue);
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_task_end(done),
        }
    }
}

/// Opens a new session after [`reconnect_delays`], until it works or the service is
/// stopped (then `None`).
async fn reconnect(shared: &Shared, stopped: &mut watch::Receiver<bool>) -> Option<Session> {
    for (attempt, delay) in (1u32..).zip(reconnect_delays()) {
        let opened = async {
            tokio::time::sleep(delay).await;
            open_session(shared).await
        };
        tokio::select! {
            _ = stopped.changed() => return None,
            opened = opened => match opened {
                Ok(session) => return Some(session),
                Err(e) => tracing::warn!(
                    service = shared.kind.name(),
                    attempt,
                    error = %format!("{e:#}"),
                    "reconnecting failed: trying again"
                ),
            },
        }
    }
    // The backoff never ends.
    None
}

/// How long a shutdown waits for the commands in flight. A command still unfinished then
/// is abandoned unacked: the broker redelivers it (to another instance) and the store
/// answers the repeat, so a task stuck on a dead channel cannot hold a shutdown forever.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);

async fn drain(tasks: &mut JoinSet<()>) {
    let finished = tokio::time::timeout(SHUTDOWN_DRAIN, async {
        while let Some(done) = tasks.join_next().await {
            log_task_end(done);
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "commands still unfinished at the shutdown deadline: abandoned unacked, the broker redelivers them"
        );
        tasks.shutdown().await;
    }
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        // The delivery stays unacked and is redelivered when the channel closes.
        tracing::error!(error = %e, "a command task panicked");
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex
/// flags>`), if the header is well formed; an all-zero id is invalid.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let mut parts = traceparent.trim().split('-');
    let (version, id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may append more.
    let fields_ok = version != "00" || parts.next().is_none();
    let valid = hex(version, 2)
        && version != "ff"
        && hex(id, 32)
        && id.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2)
        && fields_ok;
    valid.then_some(id)
}

/// Handles one delivery end to end; never panics on bad input.
async fn process(shared: Arc<Shared>, link: Arc<Link>, delivery: Delivery) {
    // A ping is answered whoever sends it (`baton doctor` runs as an operator, not as an
    // orchestrator): it does nothing and reveals only the service's name, version and
    // ledger id and location.
    if is_ping(&delivery.data) {
        return answer_ping(&shared, &link, &delivery).await;
    }
    if !shared.obeys(&delivery.properties) {
        return ack(&delivery).await;
    }
    let command: Command = match serde_json::from_slice(&delivery.data) {
        Ok(command) => command,
        Err(e) => {
            shared.metrics.command(None, Outcome::Malformed);
            return link
                .dead_letter(&shared, delivery, &decode_problem(&e))
                .await;
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
        } else {
            shared.handler.answer(&command).await
        };
        let reply = answer.reply;
        let metrics = &shared.metrics;
        if reply.reason.as_deref() == Some(baton_contract::LEDGER_MISMATCH) {
            metrics.ledger_mismatch();
            tracing::error!(
                detail = reply.detail.as_deref().unwrap_or_default(),
                "ledger mismatch: this service and an earlier step use different ledger \
                 databases; answered error (the payment fails service_unavailable, never \
                 declined)"
            );
        }
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
        let mut extra = vec![(headers::COMMAND_ID, command.command_id.as_str())];
        if let Some(traceparent) = traceparent.as_deref() {
            extra.push((TRACEPARENT, traceparent));
        }
        let mut reply_properties = amqp::with_sender(amqp::json_properties(&extra), &shared.user);
        if let Some(correlation_id) = properties.correlation_id() {
            reply_properties = reply_properties.with_correlation_id(correlation_id.clone());
        }
        match amqp::publish_confirmed(&link.publish, "", &reply_to, &body, reply_properties).await {
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

fn is_ping(body: &[u8]) -> bool {
    baton_contract::Ping::parse(body).is_some()
}

/// Answers a ping (`baton doctor`): the handler's identity, no store touched. A black-hole
/// fault swallows pings too, as a hung service would; injected errors and latency do not
/// apply (they stand for failing work, and a ping does none).
async fn answer_ping(shared: &Shared, link: &Link, delivery: &Delivery) {
    let Some(ping) = baton_contract::Ping::parse(&delivery.data) else {
        return ack(delivery).await;
    };
    if shared.faults.borrow().blackhole {
        return ack(delivery).await;
    }
    shared.metrics.command(
        Some(baton_contract::Action::Ping),
        Outcome::Replied(baton_contract::ReplyOutcome::Approved),
    );
    let reply = shared.handler.ping(&ping.command_id);
    let Some(reply_to) = delivery
        .properties
        .reply_to()
        .as_ref()
        .map(|q| q.as_str().to_owned())
    else {
        return ack(delivery).await;
    };
    let Ok(body) = serde_json::to_vec(&reply) else {
        return ack(delivery).await;
    };
    let mut properties = amqp::with_sender(
        amqp::json_properties(&[(headers::COMMAND_ID, ping.command_id.as_str())]),
        &shared.user,
    );
    if let Some(correlation_id) = delivery.properties.correlation_id() {
        properties = properties.with_correlation_id(correlation_id.clone());
    }
    match amqp::publish_confirmed(&link.publish, "", &reply_to, &body, properties).await {
        Err(e) if e.is_transient() && !matches!(e, BrokerError::Unroutable { .. }) => {
            link.check();
            nack_requeue(delivery).await
        }
        // Delivered, or the pinger is gone (nobody waits any more).
        _ => ack(delivery).await,
    }
}

impl Shared {
    /// Whether a delivery comes from a configured orchestrator user (always, when none
    /// is configured). One that does not is counted and logged with ids only — at WARN
    /// the first time, then at DEBUG, so a flood cannot flood the log — and dropped
    /// unread: neither handled nor dead-lettered, since nothing in it can be trusted.
    fn obeys(&self, properties: &BasicProperties) -> bool {
        if self.orchestrators.is_empty() {
            return true;
        }
        let sender = amqp::sender(properties);
        if sender.is_some_and(|user| self.orchestrators.iter().any(|o| o == user)) {
            return true;
        }
        self.metrics.rejected(crate::metrics::WRONG_SENDER);
        let command_id = amqp::header_text(properties, headers::COMMAND_ID).unwrap_or_default();
        let first = !self
            .refusal_logged
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        let sender = sender.unwrap_or("");
        if first {
            tracing::warn!(
                queue = %self.queue,
                sender,
                command_id = %baton_contract::mask::bounded(&command_id, 128),
                "command from a sender that is not a configured orchestrator: dropped \
                 (further ones are logged at debug)"
            );
        } else {
            tracing::debug!(queue = %self.queue, sender, "command from an unknown sender dropped");
        }
        false
    }
}

impl Link {
    /// After a failed publish: if the channel itself is gone, tell the run loop to
    /// reconnect (a closed publishing channel alone does not end the consumer).
    fn check(&self) {
        if !self.publish.status().connected() {
            self.broken.notify_one();
        }
    }

    /// Moves an undecodable delivery to the dead-letter queue with the reason, then acks
    /// it; requeues only if the dead-letter publish itself failed transiently.
    async fn dead_letter(&self, shared: &Shared, delivery: Delivery, detail: &str) {
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
        // A malformed command cannot be replayed as it is; keep it for operators, but
        // without a card number (authorization and risk commands carry one).
        let kept = baton_contract::mask_card_numbers(&String::from_utf8_lossy(&delivery.data))
            .into_owned();
        match amqp::publish_confirmed(
            &self.publish,
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
                self.check();
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

/// Why a body is not a command, masked and capped: serde quotes the offending value,
/// and a card number in the wrong place must not reach a header or a log in full, nor
/// a megabyte-long string grow the `x-baton-detail` header.
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

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_drain_waits_for_commands_up_to_its_deadline_only() {
        let mut tasks = JoinSet::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = done_tx.send(());
        });
        tasks.spawn(std::future::pending::<()>());
        let started = tokio::time::Instant::now();
        drain(&mut tasks).await;
        assert_eq!(started.elapsed(), SHUTDOWN_DRAIN, "stopped at the deadline");
        assert!(tasks.is_empty(), "the stuck task was abandoned");
        assert!(done_rx.await.is_ok(), "the finishing one finished first");
    }

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

    #[test]
    fn trace_ids_come_from_well_formed_traceparents_only() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), Some(id));
        // A later version may append fields.
        assert_eq!(
            trace_id(&format!("01-{id}-00f067aa0ba902b7-01-x")),
            Some(id)
        );
        for bad in [
            "",
            "garbage",
            &format!("00-{id}-00f067aa0ba902b7"),
            &format!("00-{id}-00f067aa0ba902b7-01-extra"),
            &format!("ff-{id}-00f067aa0ba902b7-01"),
            &format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            &format!("00-{}-00f067aa0ba902b7-01", &id[1..]),
            &format!("00-{id}-00f067aa0ba902b-01"),
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn service_names_match_the_queues() {
        let names: Vec<_> = ServiceKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["authorization", "risk", "pci", "transaction"]);
        assert!(ServiceKind::Authorization.uses_ledger() && ServiceKind::Transaction.uses_ledger());
        assert!(!ServiceKind::Risk.uses_ledger() && !ServiceKind::Pci.uses_ledger());
    }

    #[test]
    fn the_queue_option_names_the_consumed_queue() {
        let config = ServiceConfig::default();
        assert_eq!(config.queue_service(ServiceKind::Risk), "risk");
        assert!(config.validate_queue().is_ok());
        let lite = ServiceConfig {
            queue: Some("risk-lite".into()),
            ..ServiceConfig::default()
        };
        assert_eq!(lite.queue_service(ServiceKind::Risk), "risk-lite");
        assert_eq!(
            Names::new("p").command_queue(lite.queue_service(ServiceKind::Risk)),
            "p.cmd.risk-lite"
        );
        assert!(lite.validate_queue().is_ok());
        assert!(format!("{lite:?}").contains("risk-lite"));
        for bad in ["", "Risk", "a b", "a.b", "é", &"x".repeat(65)] {
            let config = ServiceConfig {
                queue: Some(bad.into()),
                ..ServiceConfig::default()
            };
            assert!(config.validate_queue().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_bad_queue_name_is_refused_before_connecting() {
        let config = ServiceConfig {
            // Nothing listens here: the check must come first.
            amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            queue: Some("no spaces".into()),
            ..ServiceConfig::default()
        };
        let e = start(ServiceKind::Risk, config).await.unwrap_err();
        assert!(format!("{e:#}").contains("no spaces"), "{e:#}");
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
