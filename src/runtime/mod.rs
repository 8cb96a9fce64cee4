//! The orchestrator process: consumes payment requests from RabbitMQ, runs each one as a
//! saga in its own task, and publishes one result per request before acking it.
//!
//! The unacked request delivery is the orchestrator's lease on a payment: if the process
//! dies, RabbitMQ hands the request to another replica, which resumes it from the shared
//! journal. When the broker connection drops, the process reconnects with capped,
//! jittered backoff, declares the topology again and goes on; the payments it was working
//! on come back as redeliveries. This module is the broker side only; what happens inside
//! a payment is [`crate::saga`].
//!
//! - `transport.rs`: the saga's [`Transport`](crate::saga::Transport) over RabbitMQ —
//!   commands, correlation map, attention items, saga events, trace context;
//! - `session.rs`: one connection's life — topology, consumers, reconnects;
//! - `replies.rs`: a reply to the command waiting for it, or refused;
//! - `requests.rs`: one request's disposition — run, answered, parked, set aside, rejected;
//! - `publish.rs`: results and dead-letter copies;
//! - `sweeper.rs`: leases of running sagas, and sagas nobody drives finished;
//! - `http.rs`: the status page and `GET /payments/<id>`.

mod http;
mod publish;
mod replies;
mod requests;
mod session;
mod sweeper;
mod transport;

pub use transport::AmqpTransport;

use crate::config::Settings;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::saga::SagaEnv;
use baton_amqp::{self as amqp, BrokerError};
use baton_ops::{Health, HttpServer};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;
use tracing::warn;

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

/// What the request handlers share.
struct Shared {
    settings: Settings,
    env: SagaEnv<AmqpTransport, Journal, Metrics>,
    /// The same metrics the saga counts in (its observer), for what the runtime counts.
    metrics: Metrics,
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
        &self.shared.metrics
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
        metrics.clone(),
    );
    env.card_keys = settings.card_keys.clone();
    let shared = Arc::new(Shared {
        settings,
        env,
        metrics,
        health,
    });

    tokio::spawn(transport::publish_events(
        event_queue,
        Arc::downgrade(&shared),
    ));
    let (stop, stopped) = watch::channel(false);
    let http = http::serve(&shared, &journal, &stopped).await?;

    // The first connection must succeed: an unreachable broker at start is a
    // configuration problem to report, not to retry silently.
    let session = session::open_session(&shared).await?;
    tokio::spawn(sweeper::keep_sagas(
        Arc::downgrade(&shared),
        stopped.clone(),
    ));
    let task = tokio::spawn(session::supervise(shared.clone(), session, stopped));
    Ok(Running {
        stop,
        task,
        shared,
        http,
    })
}
