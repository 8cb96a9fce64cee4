//! `spawn_app()`: four reference services and an orchestrator in this process, on a fresh
//! prefix against the real broker, plus a client to talk to them.

use baton::broker::{self, AdminApi, Credentials, Passwords, Role};
use baton::client::{Client, Received};
use baton::config::Settings;
use baton::runtime::{self, Running};
use baton::testcards::TestCard;
use baton::workflow::Workflow;
use baton_amqp as amqp;
use baton_contract::{Names, PaymentResult};
use baton_services::ledger::Ledger;
use baton_services::{RunningService, ServiceConfig, ServiceKind};
use baton_testkit::{
    admin_url, amqp_url, depth_at_least, scratch_name, ScratchDatabase, ScratchSqlite, AMQP_ADDRESS,
};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::BasicProperties;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;

/// How long a test waits for a result before calling it missing.
pub const RESULT_WAIT: Duration = Duration::from_secs(60);

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        baton_ops::logging::init(baton_ops::LogFormat::Text, "info");
    }
}

/// Which ledger database the services use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub names: Names,
    pub ledger_url: String,
    pub journal_url: String,
    pub ledger: Ledger,
    pub orchestrator: Option<Running>,
    pub services: Vec<RunningService>,
    pub client: Client,
    /// Results that arrived while a test waited for another one.
    early: HashMap<String, Received>,
    /// The ledger's and the journal's files (SQLite), removed at clean-up.
    sqlite_files: Vec<ScratchSqlite>,
    /// The database of both (PostgreSQL), dropped at clean-up.
    postgres_db: Option<ScratchDatabase>,
    /// Workflows of the orchestrators started: their service and parking queues are
    /// deleted at clean-up too.
    workflows: Vec<Workflow>,
    /// With [`spawn_verified_services`]: the broker users `<prefix>-<role>` every process
    /// runs as (created by `baton broker setup`'s code, deleted at clean-up), and every
    /// sender checked.
    pub roles: Option<Credentials>,
    /// The card key shared by the orchestrator and the risk service, as `baton run`
    /// and `baton-risk` share `--card-key-file`: a throw-away key per test.
    pub card_keys: baton_contract::CardKeys,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Store::Sqlite, &ServiceKind::ALL).await
}

/// Starts the given services (the others stay down: their commands wait in their queues)
/// and an orchestrator.
pub async fn spawn_app_with(store: Store, kinds: &[ServiceKind]) -> TestApp {
    let mut app = spawn_services(store, kinds).await;
    let settings = app.orchestrator_settings();
    app.start_orchestrator(settings).await;
    app
}

/// Like [`spawn_app_with`] but without an orchestrator: start one with
/// [`TestApp::start_orchestrator`] (say, with other settings), or none at all (processes).
pub async fn spawn_services(store: Store, kinds: &[ServiceKind]) -> TestApp {
    spawn(store, kinds, true).await
}

/// Like [`spawn_app_with`], with every process on its own broker user (as
/// `baton broker setup` creates them) and every sender verified: the orchestrator accepts
/// each service's replies only from that service's user, the services obey only the
/// orchestrator's user. The test client stays on the administrator (guest) connection.
pub async fn spawn_verified_app(kinds: &[ServiceKind]) -> TestApp {
    let mut app = spawn_verified_services(kinds).await;
    let settings = app.orchestrator_settings();
    app.start_orchestrator(settings).await;
    app
}

/// [`spawn_verified_app`] without the orchestrator.
pub async fn spawn_verified_services(kinds: &[ServiceKind]) -> TestApp {
    spawn(Store::Sqlite, kinds, true).await
}

/// The management API of the test broker (administrator guest, or `BATON_ADMIN_URL`).
pub fn admin_api() -> AdminApi {
    AdminApi::from_url(&admin_url()).expect("a valid admin URL")
}

async fn spawn(store: Store, kinds: &[ServiceKind], verified: bool) -> TestApp {
    init_logs();
    let names = Names::new(scratch_name("test"));
    let (ledger_url, journal_url, sqlite_files, postgres_db) = match store {
        Store::Sqlite => {
            let ledger = ScratchSqlite::new("test");
            let journal = ScratchSqlite::new("test-journal");
            (ledger.url(), journal.url(), vec![ledger, journal], None)
        }
        Store::Postgres => {
            let db = ScratchDatabase::create("test").await;
            let url = db.url();
            (url.clone(), url, Vec::new(), Some(db))
        }
    };
    let mut app = TestApp {
        ledger: Ledger::open(&ledger_url)
            .await
            .expect("open the test ledger"),
        orchestrator: None,
        services: Vec::new(),
        client: Client::connect(&amqp_url(), &Default::default(), names.clone())
            .await
            .expect("RabbitMQ must run at 127.0.0.1:5672 for the integration tests"),
        early: HashMap::new(),
        names,
        ledger_url,
        journal_url,
        sqlite_files,
        postgres_db,
        workflows: Vec::new(),
        roles: None,
        card_keys: baton_contract::CardKeys::generate("test"),
    };
    if verified {
        let roles = broker::setup(&admin_api(), app.names.prefix(), "/", &Passwords::default())
            .await
            .expect("create the test prefix's broker users (rabbitmq_management must be on)");
        app.roles = Some(roles);
    }
    for kind in kinds {
        app.start_service(*kind).await;
    }
    app
}

impl TestApp {
    /// `role`'s AMQP URL: its own user with [`spawn_verified_app`], else the shared one.
    pub fn url_of(&self, role: Role) -> String {
        match &self.roles {
            Some(roles) => roles
                .amqp_url(role, AMQP_ADDRESS)
                .expect("setup generated every password"),
            None => amqp_url(),
        }
    }

    /// A service's configuration: with [`spawn_verified_app`], its role's user and
    /// commands obeyed from the orchestrator's user only.
    pub fn service_config_for(&self, kind: ServiceKind) -> ServiceConfig {
        let mut config = self.service_config();
        if self.roles.is_some() {
            config.amqp_url = self.url_of(role_of(kind));
            // The operator's user too: `baton attention replay` re-sends compensations.
            config.orchestrator_users = vec![
                Role::Orchestrator.user(self.names.prefix()),
                Role::Operator.user(self.names.prefix()),
            ];
            config.require_verified_senders = true;
        }
        config
    }

    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            amqp_url: amqp_url(),
            prefix: self.names.prefix().to_owned(),
            concurrency: 32,
            ledger_url: self.ledger_url.clone(),
            card_keys: Some(self.card_keys.clone()),
            ..ServiceConfig::default()
        }
    }

    /// Settings for an orchestrator on this app's prefix and journal, with an HTTP port
    /// on a free port.
    pub fn orchestrator_settings(&self) -> Settings {
        let mut settings = Settings::new(amqp_url(), self.names.prefix(), self.journal_url.clone());
        settings.http_addr = Some("127.0.0.1:0".into());
        settings.card_keys = Some(self.card_keys.clone());
        if self.roles.is_some() {
            settings.amqp_url = self.url_of(Role::Orchestrator);
            settings.service_users = ServiceKind::ALL
                .iter()
                .map(|kind| {
                    (
                        kind.name().to_owned(),
                        role_of(*kind).user(self.names.prefix()),
                    )
                })
                .collect();
            settings.require_verified_senders = true;
        }
        settings
    }

    pub async fn start_service(&mut self, kind: ServiceKind) {
        let service = baton_services::start(kind, self.service_config_for(kind))
            .await
            .expect("start a service");
        self.services.push(service);
    }

    /// Starts `kind` with an HTTP port on a free port (`/metrics`, `/healthz`, `/readyz`)
    /// and returns the address it is bound to.
    pub async fn start_service_with_http(&mut self, kind: ServiceKind) -> SocketAddr {
        let config = ServiceConfig {
            http_addr: Some("127.0.0.1:0".into()),
            ..self.service_config_for(kind)
        };
        let service = baton_services::start(kind, config)
            .await
            .expect("start a service");
        let addr = service.http_addr().expect("the service has an HTTP port");
        self.services.push(service);
        addr
    }

    /// Starts a service with its own configuration (faults from the start, another
    /// queue); build it from [`TestApp::service_config`] to keep the app's prefix and
    /// ledger.
    pub async fn start_service_with(&mut self, kind: ServiceKind, config: ServiceConfig) {
        let service = baton_services::start(kind, config)
            .await
            .expect("start a service");
        self.services.push(service);
    }

    /// The running service consuming `<prefix>.cmd.<queue_service>` (the first one, if
    /// several do).
    pub fn service(&self, queue_service: &str) -> &RunningService {
        let queue = self.names.command_queue(queue_service);
        self.services
            .iter()
            .find(|s| s.queue() == queue)
            .unwrap_or_else(|| panic!("no service consumes {queue}"))
    }

    pub async fn start_orchestrator(&mut self, mut settings: Settings) {
        if self.roles.is_some() {
            // A fallback service of a test workflow (`risk-lite`) runs as the reference
            // service it is a second instance of (`baton-risk --queue risk-lite`).
            let unverified: Vec<String> = settings
                .unverified_services()
                .into_iter()
                .map(str::to_owned)
                .collect();
            for service in unverified {
                let kind = ServiceKind::ALL
                    .into_iter()
                    .find(|k| service.split('-').next() == Some(k.name()))
                    .unwrap_or_else(|| panic!("no reference service runs {service}"));
                let user = role_of(kind).user(self.names.prefix());
                settings.service_users.insert(service, user);
            }
        }
        self.workflows.push(settings.workflow.clone());
        let running = runtime::start(settings)
            .await
            .expect("start the orchestrator");
        self.orchestrator = Some(running);
    }

    pub fn orchestrator(&self) -> &Running {
        self.orchestrator.as_ref().expect("orchestrator running")
    }

    /// Publishes a request body with `correlation` and waits for the result carrying it.
    pub async fn send(&mut self, body: &[u8], correlation: &str) {
        self.client
            .publisher()
            .publish(body, correlation)
            .await
            .expect("publish a request");
    }

    /// The result for `correlation`; others that arrive first are kept for later calls.
    pub async fn result_for(&mut self, correlation: &str) -> Received {
        if let Some(received) = self.early.remove(correlation) {
            return received;
        }
        let deadline = tokio::time::Instant::now() + RESULT_WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let received =
                self.client.next_result(left).await.unwrap_or_else(|| {
                    panic!("no result for {correlation} within {RESULT_WAIT:?}")
                });
            match received.correlation_id.clone() {
                Some(id) if id == correlation => return received,
                Some(id) => {
                    self.early.insert(id, received);
                }
                None => {}
            }
        }
    }

    /// Pays with a test card and returns the decoded result and its raw body.
    pub async fn pay(&mut self, card: TestCard) -> (PaymentResult, String) {
        let payment_id = Uuid::new_v4();
        let body = serde_json::to_vec(&card.request_with_id(payment_id)).unwrap();
        let correlation = payment_id.to_string();
        self.send(&body, &correlation).await;
        let received = self.result_for(&correlation).await;
        let text = String::from_utf8(received.body).unwrap();
        (received.result.expect("a well-formed result"), text)
    }

    /// Messages ready in `queue` (waits up to 10 s for at least `at_least`; 0: now).
    pub async fn queue_depth(&self, queue: &str, at_least: u32) -> u32 {
        let publisher = self.client.publisher();
        depth_at_least(
            publisher.channel(),
            queue,
            at_least,
            Duration::from_secs(10),
        )
        .await
    }

    /// What is published on the payments exchange with routing `key` from now on, on a
    /// connection of its own to close at the end ([`baton_testkit::listen`]).
    pub async fn listen(&self, key: &str) -> (lapin::Connection, lapin::Consumer) {
        let exchange = self.names.payments_exchange();
        baton_testkit::listen(&amqp_url(), "test listener", &exchange, key).await
    }

    /// Takes every message ready in `queue` (acking them): (properties, body) each.
    pub async fn take_all(&self, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
        let channel = self.client.publisher().channel().clone();
        let mut taken = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            taken.push((
                message.delivery.properties.clone(),
                message.delivery.data.clone(),
            ));
        }
        taken
    }

    /// Stops everything and deletes the prefix's queues and the test database.
    pub async fn cleanup(mut self) {
        if let Some(orchestrator) = self.orchestrator.take() {
            orchestrator
                .shutdown()
                .await
                .expect("orchestrator stops cleanly");
        }
        for service in self.services.drain(..) {
            service.shutdown().await.expect("service stops cleanly");
        }
        let channel = self.client.publisher().channel().clone();
        // The reference services' queues and the built-in parking tiers, plus every queue
        // the workflows of this app's orchestrators named (fallback services, their
        // parking tiers).
        let builtin = Workflow::builtin();
        let mut services: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.name()).collect();
        let mut parking: Vec<u64> = Vec::new();
        for workflow in std::iter::once(&builtin).chain(&self.workflows) {
            services.extend(workflow.services());
            parking.extend(workflow.parking().delays_ms());
        }
        services.sort_unstable();
        services.dedup();
        parking.sort_unstable();
        parking.dedup();
        amqp::delete_topology_with_parking(&channel, &self.names, &services, &parking)
            .await
            .expect("delete the test topology");
        self.client.close().await;
        if self.roles.is_some() {
            broker::teardown(&admin_api(), self.names.prefix())
                .await
                .expect("delete the test prefix's broker users");
        }
        drop(self.ledger);
        drop(self.sqlite_files);
        if let Some(db) = self.postgres_db {
            db.drop_now().await;
        }
    }
}

/// The broker role a reference service runs as.
pub fn role_of(kind: ServiceKind) -> Role {
    Role::of_service(kind.name()).expect("every reference service has a role")
}
