//! What `baton run` is configured with, and every default of it, written once: the
//! command line (`cli`) and the library's [`Settings::new`] both take them from here.

use crate::workflow::Workflow;
use baton_contract::{Limits, Names};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// Default payments in flight at once (`--concurrency`): the request queue's prefetch.
pub const DEFAULT_CONCURRENCY: u16 = 256;

/// Default wait for in-flight payments on shutdown (`--shutdown-timeout`).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Default lease of a running saga (`--saga-lease`).
pub const DEFAULT_SAGA_LEASE: Duration = crate::journal::DEFAULT_LEASE;

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
            concurrency: DEFAULT_CONCURRENCY,
            workflow: Workflow::builtin(),
            limits: Limits::default(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            instance: new_instance_id(),
            journal_url: journal_url.into(),
            http_addr: None,
            http_fallback_to_free_port: false,
            events: true,
            service_users: BTreeMap::new(),
            require_verified_senders: false,
            http_token_file: None,
            card_keys: None,
            saga_lease: DEFAULT_SAGA_LEASE,
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

/// A short random id for one orchestrator process: 12 hexadecimal digits whose first is
/// a letter, so it never reads as a 12-digit number (Baton's log masker would show it as
/// `****` and four digits, about once in 280 processes).
pub fn new_instance_id() -> String {
    let hex = Uuid::new_v4().simple().to_string();
    let first = b"abcdef"[usize::from(hex.as_bytes()[0]) % 6] as char;
    format!("{first}{}", &hex[1..12])
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_ids_are_twelve_hex_digits_led_by_a_letter() {
        for _ in 0..1000 {
            let id = super::new_instance_id();
            assert_eq!(id.len(), 12, "{id}");
            assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
            assert!(id.as_bytes()[0].is_ascii_lowercase(), "{id}");
            assert_eq!(baton_contract::mask::mask_card_numbers(&id), id.as_str());
        }
    }
}
