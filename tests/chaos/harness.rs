//! A cluster on a fresh prefix: in-process services, orchestrator processes, a client,
//! and the checks every test ends with.

use baton::broker::{self, AdminApi, Credentials, Passwords, Role};
use baton::client::Client;
use baton::testcards::{mixed_batch, TestCard};
use baton_amqp as amqp;
use baton_contract::{Names, PaymentResult, Status};
use baton_services::ledger::Ledger;
use baton_services::{RunningService, ServiceConfig, ServiceKind};
use baton_testkit::{
    admin_url, delete_prefix, depth, depth_at_least, free_port, http_get, localhost, scratch_name,
    sqlite_url, Process, ScratchDatabase, ScratchDir, AMQP_ADDRESS, READY_WAIT,
};
use futures_lite::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use std::collections::HashMap;
use std::process::Command;
use std::sync::LazyLock;
use std::time::Duration;
use uuid::Uuid;

/// Shared by tests on the shared broker; a test that needs it to itself takes it
/// exclusively. (A test that stops or restarts a broker runs its own node instead:
/// [`crate::node::RabbitNode`].)
pub static BROKER: LazyLock<tokio::sync::RwLock<()>> =
    LazyLock::new(|| tokio::sync::RwLock::new(()));

/// Where a cluster's broker is.
#[derive(Clone, Debug)]
pub struct BrokerAddr {
    /// `host:port` of its plain AMQP listener.
    pub amqp: String,
    /// Its management API, with the administrator's login.
    pub admin_url: String,
}

impl BrokerAddr {
    /// The broker every test shares, on 5672 (management 15672).
    pub fn shared() -> Self {
        Self {
            amqp: AMQP_ADDRESS.into(),
            admin_url: admin_url(),
        }
    }

    /// The administrator's (guest's) AMQP URL.
    pub fn admin_amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    fn admin_api(&self) -> AdminApi {
        AdminApi::from_url(&self.admin_url).expect("a valid admin URL")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum JournalStore {
    Sqlite,
    Postgres,
}

/// An orchestrator process (a [`Process`]: its log, readiness and exit), killed when
/// dropped.
pub struct Orchestrator {
    pub process: Process,
    /// Its HTTP port on 127.0.0.1.
    pub http: u16,
}

impl Orchestrator {
    /// GET a path on its HTTP port: (status, body), or `None` if it does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(localhost(self.http), path).await.ok()
    }

    /// Waits until `/readyz` says ready (bounded: there is no event across processes).
    pub async fn wait_ready(&mut self) {
        let addr = localhost(self.http);
        self.process.wait_ready(addr, READY_WAIT).await;
    }
}

impl std::ops::Deref for Orchestrator {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Orchestrator {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

pub struct Cluster {
    pub names: Names,
    /// The broker every process of the cluster talks to.
    pub broker: BrokerAddr,
    /// The parking tiers of the workflow the orchestrators run (their queues are deleted
    /// at cleanup): the built-in workflow's unless a test says otherwise.
    pub parking_delays_ms: Vec<u64>,
    /// The test's directory: logs, journal, ledger, card key; removed at cleanup.
    pub dir: ScratchDir,
    pub journal_url: String,
    pub ledger: Ledger,
    pub services: Vec<RunningService>,
    pub client: Client,
    /// The journal's database (PostgreSQL), dropped at cleanup.
    postgres_db: Option<ScratchDatabase>,
    /// Every result seen, by payment id.
    pub results: HashMap<Uuid, Vec<PaymentResult>>,
    spawned: usize,
    /// The broker users every process runs as (`baton broker setup` for this prefix),
    /// each sender verified; the test client stays on the administrator connection.
    pub roles: Credentials,
}

/// The broker role a reference service runs as.
fn role_of(kind: ServiceKind) -> Role {
    Role::of_service(kind.name()).expect("every reference service has a role")
}

impl Cluster {
    /// A cluster on the shared broker.
    pub async fn new(journal: JournalStore) -> Self {
        Self::on(BrokerAddr::shared(), journal).await
    }

    /// A cluster on `broker`.
    pub async fn on(broker: BrokerAddr, journal: JournalStore) -> Self {
        let names = Names::new(scratch_name("chaos"));
        let dir = ScratchDir::new("chaos");
        let ledger_url = sqlite_url(&dir.join("ledger.db"));
        let (journal_url, postgres_db) = match journal {
            JournalStore::Sqlite => (sqlite_url(&dir.join("journal.db")), None),
            JournalStore::Postgres => {
                let db = ScratchDatabase::create("chaos").await;
                (db.url(), Some(db))
            }
        };
        // One card key file for the risk service here and every `baton run` process,
        // as in production.
        let (card_keys, _) =
            baton_contract::CardKeys::load_or_create(&dir.join("card.key")).unwrap();
        let roles = broker::setup(
            &broker.admin_api(),
            names.prefix(),
            "/",
            &Passwords::default(),
        )
        .await
        .expect("create the prefix's broker users (rabbitmq_management must be on)");
        let url_of = |role: Role| roles.amqp_url(role, &broker.amqp).expect("a password");
        let mut services = Vec::new();
        for kind in ServiceKind::ALL {
            let config = ServiceConfig {
                amqp_url: url_of(role_of(kind)),
                orchestrator_users: vec![Role::Orchestrator.user(names.prefix())],
                require_verified_senders: true,
                prefix: names.prefix().into(),
                concurrency: 64,
                ledger_url: ledger_url.clone(),
                card_keys: Some(card_keys.clone()),
                ..ServiceConfig::default()
            };
            services.push(
                baton_services::start(kind, config)
                    .await
                    .expect("start a service"),
            );
        }
        Self {
            ledger: Ledger::open(&ledger_url).await.unwrap(),
            client: Client::connect(
                &broker.admin_amqp_url(),
                &amqp::TlsOptions::default(),
                names.clone(),
            )
            .await
            .expect("RabbitMQ"),
            names,
            broker,
            parking_delays_ms: baton::workflow::Workflow::builtin().parking().delays_ms(),
            journal_url,
            services,
            dir,
            postgres_db,
            results: HashMap::new(),
            spawned: 0,
            roles,
        }
    }

    /// Starts an orchestrator process (optionally with a crash point) and waits until
    /// it is ready.
    pub async fn orchestrator(
        &mut self,
        crash_at: Option<&str>,
        shutdown_timeout_s: u64,
    ) -> Orchestrator {
        self.orchestrator_with(crash_at, shutdown_timeout_s, &[])
            .await
    }

    /// [`Cluster::orchestrator`] with extra `baton run` arguments.
    pub async fn orchestrator_with(
        &mut self,
        crash_at: Option<&str>,
        shutdown_timeout_s: u64,
        extra: &[&str],
    ) -> Orchestrator {
        self.spawned += 1;
        let log = self.dir.join(format!("orchestrator-{}.log", self.spawned));
        let http = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args(["run", "--prefix", self.names.prefix()])
            .args(["--journal-url", &self.journal_url])
            .args([
                "--card-key-file",
                &self.dir.join("card.key").display().to_string(),
            ])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--instance", &scratch_name(&format!("o{}", self.spawned))])
            .args(["--shutdown-timeout", &shutdown_timeout_s.to_string()])
            .args(extra)
            .env(
                "AMQP_URL",
                self.roles
                    .amqp_url(Role::Orchestrator, &self.broker.amqp)
                    .expect("a password"),
            )
            .env("BATON_SERVICE_USERS", service_users(self.names.prefix()))
            .env("BATON_REQUIRE_VERIFIED_SENDERS", "true")
            .env("RUST_LOG", "info,lapin=warn,sqlx=warn")
            .env_remove("BATON_CRASH_AT");
        if let Some(point) = crash_at {
            command.env("BATON_CRASH_AT", point);
        }
        let mut orchestrator = Orchestrator {
            process: Process::spawn(&format!("orchestrator {}", self.spawned), command, log),
            http,
        };
        orchestrator.wait_ready().await;
        orchestrator
    }

    /// Publishes `cards` (correlation id = payment id) and returns the payment ids.
    pub async fn publish(&self, cards: &[TestCard]) -> Vec<(Uuid, TestCard)> {
        let publisher = self.client.publisher();
        let mut sent = Vec::with_capacity(cards.len());
        let mut tasks = tokio::task::JoinSet::new();
        for card in cards {
            let id = Uuid::new_v4();
            let body = serde_json::to_vec(&card.request_with_id(id)).unwrap();
            let publisher = publisher.clone();
            tasks.spawn(async move { publisher.publish(&body, &id.to_string()).await });
            while tasks.len() >= 64 {
                tasks
                    .join_next()
                    .await
                    .unwrap()
                    .unwrap()
                    .expect("published");
            }
            sent.push((id, *card));
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().expect("published");
        }
        sent
    }

    pub async fn publish_mixed(&self, n: usize) -> Vec<(Uuid, TestCard)> {
        self.publish(&mixed_batch(n)).await
    }

    /// Collects results from the client's reply queue until every payment has one.
    pub async fn collect(&mut self, ids: &[(Uuid, TestCard)], limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !ids.iter().all(|(id, _)| self.results.contains_key(id)) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(received) = self.client.next_result(left).await else {
                let missing = ids
                    .iter()
                    .filter(|(id, _)| !self.results.contains_key(id))
                    .count();
                panic!(
                    "{missing} of {} payments without a result after {limit:?}",
                    ids.len()
                );
            };
            if let Some(result) = received.result {
                self.results
                    .entry(result.payment_id)
                    .or_default()
                    .push(result);
            }
        }
    }

    /// Collects results from the durable `<prefix>.results` queue (which survives the
    /// client's connection), reconnecting if the broker goes away.
    pub async fn collect_from_results_queue(&mut self, ids: &[(Uuid, TestCard)], limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !ids.iter().all(|(id, _)| self.results.contains_key(id)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {} payments without a result after {limit:?}",
                ids.iter()
                    .filter(|(id, _)| !self.results.contains_key(id))
                    .count(),
                ids.len()
            );
            let Ok(connection) = amqp::connect(
                &self.broker.admin_amqp_url(),
                "chaos results reader",
                &amqp::TlsOptions::default(),
            )
            .await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let channel = connection.create_channel().await.unwrap();
            let mut consumer = channel
                .basic_consume(
                    self.names.results_queue().as_str().into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            while !ids.iter().all(|(id, _)| self.results.contains_key(id)) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, consumer.next()).await {
                    Ok(Some(Ok(delivery))) => {
                        if let Ok(result) = serde_json::from_slice::<PaymentResult>(&delivery.data)
                        {
                            self.results
                                .entry(result.payment_id)
                                .or_default()
                                .push(result);
                        }
                    }
                    Ok(_) => break,
                    Err(_) => panic!(
                        "{} of {} payments without a result after {limit:?}",
                        ids.iter()
                            .filter(|(id, _)| !self.results.contains_key(id))
                            .count(),
                        ids.len()
                    ),
                }
            }
            let _ = connection.close(200, "done".into()).await;
        }
    }

    /// Every payment has one outcome (every copy of its result is the same), the one its
    /// test card documents; funds moved once per completed payment and never otherwise;
    /// the ledger balances; no hold is left open.
    pub async fn verify(&self, ids: &[(Uuid, TestCard)]) {
        let mut completed = 0u64;
        for (id, card) in ids {
            let results = &self.results[id];
            assert!(
                results.iter().all(|r| *r == results[0]),
                "payment {id} got different results: {results:?}"
            );
            let result = &results[0];
            let want = card.expected();
            assert_eq!(
                (result.status, result.reason.as_deref()),
                (want.status, want.reason),
                "{card:?} {id}"
            );
            let transfers = self.ledger.transfers_for(*id).await.unwrap();
            let expected = u64::from(result.status == Status::Completed);
            assert_eq!(
                transfers, expected,
                "payment {id} ({card:?}) moved funds {transfers} times"
            );
            completed += expected;
        }
        let audit = self.ledger.audit().await.unwrap();
        assert_eq!(audit.transfers, completed, "{audit:?}");
        assert!(audit.duplicate_transfers.is_empty(), "{audit:?}");
        assert!(audit.balanced, "{audit:?}");
        assert_eq!(audit.open_holds, 0, "{audit:?}");
        // Issue 10's bar: once the test settles, no saga is left running in the journal.
        let journal = baton::journal::Journal::open(&self.journal_url)
            .await
            .expect("open the journal");
        let running = journal.running().await.expect("count running sagas");
        journal.close().await;
        assert_eq!(running.count, 0, "sagas left running: {running:?}");
    }

    pub async fn cleanup(mut self) {
        for service in self.services.drain(..) {
            let _ = service.shutdown().await;
        }
        // A fresh connection: the client's may have died with the broker in the test.
        let services: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.name()).collect();
        let url = self.broker.admin_amqp_url();
        let _ = delete_prefix(&url, &self.names, &services, &self.parking_delays_ms).await;
        self.client.close().await;
        let _ = broker::teardown(&self.broker.admin_api(), self.names.prefix()).await;
        self.ledger.close().await;
        if let Some(db) = self.postgres_db {
            db.drop_now().await;
        }
    }
}

/// `BATON_SERVICE_USERS` for `baton run`: each reference service's role user.
pub fn service_users(prefix: &str) -> String {
    ServiceKind::ALL
        .iter()
        .map(|kind| format!("{}={}", kind.name(), role_of(*kind).user(prefix)))
        .collect::<Vec<_>>()
        .join(",")
}

impl Cluster {
    /// Messages ready in `queue` now (a passive declare).
    pub async fn depth(&self, queue: &str) -> u32 {
        depth(self.client.publisher().channel(), queue).await
    }

    /// The payment got exactly one result, `failed`/`abandoned`; its hold is voided and the
    /// ledger has no open hold and no transfer.
    pub async fn assert_abandoned_with_its_hold_voided(&self, payment_id: Uuid) {
        let results = &self.results[&payment_id];
        assert_eq!(results.len(), 1, "{results:?}");
        assert_eq!(results[0].status, Status::Failed, "{results:?}");
        assert_eq!(
            results[0].reason.as_deref(),
            Some("abandoned"),
            "{results:?}"
        );
        let hold = self.ledger.hold_status(payment_id).await.unwrap();
        assert_eq!(hold.as_deref(), Some("voided"));
        let audit = self.ledger.audit().await.unwrap();
        assert_eq!((audit.open_holds, audit.transfers), (0, 0), "{audit:?}");
    }

    /// Waits until `queue` holds at least one message, up to `within` (the broker has no
    /// event for a queue's length: polled, bounded).
    pub async fn wait_for_a_message_in(&self, queue: &str, within: Duration) {
        let publisher = self.client.publisher();
        assert!(
            depth_at_least(publisher.channel(), queue, 1, within).await > 0,
            "no message in {queue} within {within:?}"
        );
    }
}
