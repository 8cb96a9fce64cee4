//! Which service, and how it connects: [`ServiceKind`] and [`ServiceConfig`], turned into
//! the kit's [`WorkerConfig`] for the start.

use baton_amqp as amqp;
use baton_worker::{Faults, WorkerConfig};
use std::fmt;

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
    /// [`crate::RunningService::set_faults`].
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
        self.queue
            .as_deref()
            .map_or(Ok(()), baton_worker::validate_queue)
    }

    /// The kit's settings for running `kind` with this configuration.
    pub fn worker(&self, kind: ServiceKind) -> WorkerConfig {
        WorkerConfig {
            service: kind.name().to_owned(),
            queue: self.queue_service(kind).to_owned(),
            amqp_url: self.amqp_url.clone(),
            amqp_ca_file: self.amqp_ca_file.clone(),
            prefix: self.prefix.clone(),
            concurrency: self.concurrency,
            faults: self.faults,
            http_addr: self.http_addr.clone(),
            orchestrator_users: self.orchestrator_users.clone(),
            require_verified_senders: self.require_verified_senders,
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

#[cfg(test)]
mod tests {
    use super::*;
    use baton_contract::Names;

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
        let worker = lite.worker(ServiceKind::Risk);
        assert_eq!(
            (worker.service.as_str(), worker.queue.as_str()),
            ("risk", "risk-lite")
        );
        assert!(lite.validate_queue().is_ok());
        assert!(format!("{lite:?}").contains("risk-lite"));
        for bad in ["", "Risk", "a b", "a.b", "é", &"x".repeat(65)] {
            let config = ServiceConfig {
                queue: Some(bad.into()),
                ..ServiceConfig::default()
            };
            assert!(config.validate_queue().is_err(), "{bad:?}");
            assert!(
                config.worker(ServiceKind::Risk).validate().is_err(),
                "{bad:?}"
            );
        }
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
