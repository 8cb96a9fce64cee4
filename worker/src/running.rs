//! Starting a worker, and the handle of a running one: faults, health, metrics, shutdown.

use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::faults::{Dice, Faults, InvalidFailRate};
use crate::handler::Handler;
use crate::metrics::Metrics;
use crate::session;
pub use crate::shared::Health;
use crate::shared::Shared;
use baton_amqp as amqp;
use baton_contract::Names;
use baton_ops::HttpServer;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A service consuming its queue. Stop it with [`RunningService::shutdown`]. `K` is
/// whatever the caller calls its services (a kind enum), given to [`start`] and handed
/// back by [`RunningService::kind`].
pub struct RunningService<K = ()> {
    /// The caller's name for this service.
    kind: K,
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
    task: JoinHandle<()>,
}

impl<K: fmt::Debug> fmt::Debug for RunningService<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningService")
            .field("kind", &self.kind)
            .field("queue", &self.queue)
            .field("connection_name", &self.connection_name)
            .finish_non_exhaustive()
    }
}

impl<K: Copy> RunningService<K> {
    /// Which service this is.
    pub fn kind(&self) -> K {
        self.kind
    }
}

impl<K> RunningService<K> {
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
            tracing::info!(queue = %self.queue, ?faults, "faults changed");
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
    /// acked), then closes the channels, the connection and the handler's store.
    pub async fn shutdown(self) -> Result<(), WorkerError> {
        // The receiver is gone only if the run loop already ended; its result is below.
        let _ = self.stop.send(true);
        let result = self.task.await;
        stop_http(self.http).await;
        Ok(result?)
    }

    /// Runs until the run loop ends (it does not end on a lost connection: it
    /// reconnects).
    pub async fn wait(self) -> Result<(), WorkerError> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), WorkerError> {
        let RunningService {
            stop,
            mut task,
            http,
            ..
        } = self;
        let result = tokio::select! {
            result = &mut task => result,
            () = signal => {
                let _ = stop.send(true);
                task.await
            }
        };
        stop_http(http).await;
        Ok(result?)
    }
}

/// Stopped last, so `/metrics` can be scraped while commands in flight finish.
async fn stop_http(http: Option<HttpServer>) {
    if let Some(http) = http {
        http.stop().await;
    }
}

/// Starts a worker: validates `config`, registers the metrics (the handler's too),
/// binds the HTTP port, connects, declares the command queue `<prefix>.cmd.<queue>` and
/// starts consuming with `handler`. Returns once it is consuming. When the broker cannot
/// be reached at start the error is [`WorkerError::Broker`]; once started, a lost
/// connection is re-established in the background. On any error the handler is closed.
pub async fn start<K, H: Handler>(
    config: WorkerConfig,
    kind: K,
    handler: H,
) -> Result<RunningService<K>, WorkerError> {
    let checked = (|| {
        config.validate()?;
        let user = amqp::url_user(&config.amqp_url)?;
        let metrics = Metrics::new(&config.service)?;
        handler.register_metrics(&metrics.registry)?;
        Ok::<_, WorkerError>((user, metrics))
    })();
    let (user, metrics) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            handler.close().await;
            return Err(e);
        }
    };
    if config.orchestrator_users.is_empty() {
        tracing::warn!(
            service = %config.service,
            "commands are not verified: no orchestrator user configured \
             (--orchestrator-user USER); anyone who can publish to the broker can command this service"
        );
    }
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
    let (faults_tx, faults_rx) = watch::channel(config.faults);
    let (health_tx, health_rx) = watch::channel(Health::default());
    let shared = Arc::new(Shared {
        handler,
        amqp_url: config.amqp_url,
        amqp_tls: amqp::TlsOptions::with_ca_file(config.amqp_ca_file),
        // Unique, so a test (or an operator) can find and close exactly this connection.
        connection_name: format!(
            "baton-{} {} {}",
            config.service,
            config.prefix,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        queue: names.command_queue(&config.queue),
        queue_service: config.queue,
        dead_queue: names.dead_queue(),
        names,
        service: config.service,
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
    let session = match session::open(&shared).await {
        Ok(session) => session,
        Err(e) => {
            stop_http(http).await;
            shared.handler.close().await;
            return Err(e.into());
        }
    };
    shared.set_ready();
    if config.faults.any() {
        tracing::warn!(service = %shared.service, faults = ?config.faults, "fault injection on");
    }
    tracing::info!(
        service = %shared.service,
        version = env!("CARGO_PKG_VERSION"),
        broker = %amqp::redact_url(&shared.amqp_url),
        prefix = %shared.names.prefix(),
        queue = %shared.queue,
        concurrency = shared.concurrency,
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
        task: tokio::spawn(session::run(shared, session, stopped)),
    })
}
