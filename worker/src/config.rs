//! How a worker connects and how much it does at once.

use crate::error::WorkerError;
use crate::faults::Faults;
use baton_amqp as amqp;
use std::fmt;

/// A worker's settings. Build it with [`WorkerConfig::new`] and change the fields.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The service's name: the `service` label of its metrics, its connection and
    /// consumer names, its logs.
    pub service: String,
    /// The service name of the queue consumed, `<prefix>.cmd.<queue>`: usually
    /// [`WorkerConfig::service`]; another for e.g. a second risk instance serving as a
    /// workflow's fallback `risk-lite`. 1-64 of `a-z 0-9 _ -`, as a workflow's names.
    pub queue: String,
    /// Broker URL (may hold a password: never printed unredacted).
    pub amqp_url: String,
    /// PEM file of the CA that signed the broker's TLS certificate, for `amqps://`;
    /// `None`: the system's CA store.
    pub amqp_ca_file: Option<std::path::PathBuf>,
    /// Topology prefix.
    pub prefix: String,
    /// Commands handled at once (the consumer's prefetch).
    pub concurrency: u16,
    /// Faults injected from the start (none by default).
    pub faults: Faults,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`host:port`, port 0 = any
    /// free port); `None` = no HTTP port.
    pub http_addr: Option<String>,
    /// The broker users whose commands are obeyed. A command whose RabbitMQ-validated
    /// `user_id` is not one of them is dropped and counted. Empty: commands are not
    /// verified, and the start logs a warning.
    pub orchestrator_users: Vec<String>,
    /// Refuse to start with an empty [`WorkerConfig::orchestrator_users`].
    pub require_verified_senders: bool,
}

impl WorkerConfig {
    /// `service` consuming its own queue on the local broker, prefix `baton`, 64 at once,
    /// no faults, no HTTP port, senders not verified.
    pub fn new(service: impl Into<String>) -> Self {
        let service = service.into();
        Self {
            queue: service.clone(),
            service,
            amqp_url: amqp::DEFAULT_AMQP_URL.into(),
            amqp_ca_file: None,
            prefix: "baton".into(),
            concurrency: 64,
            faults: Faults::default(),
            http_addr: None,
            orchestrator_users: Vec::new(),
            require_verified_senders: false,
        }
    }

    /// Checks everything that can be checked without connecting: concurrency, faults,
    /// queue name, broker URL, verified senders. [`crate::start`] does it first; a service
    /// with a store calls it before opening the store.
    pub fn validate(&self) -> Result<(), WorkerError> {
        if self.concurrency == 0 {
            return Err(WorkerError::Config("concurrency must be at least 1".into()));
        }
        self.faults.validate()?;
        validate_queue(&self.queue).map_err(WorkerError::Config)?;
        amqp::url_user(&self.amqp_url)?;
        if self.orchestrator_users.is_empty() && self.require_verified_senders {
            return Err(WorkerError::Config(
                "--require-verified-senders: no orchestrator user configured; pass \
                 --orchestrator-user USER (BATON_ORCHESTRATOR_USERS)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Checks a queue's service name: 1-64 characters of `a-z`, `0-9`, `_` or `-` (the
/// names a workflow accepts for services).
pub fn validate_queue(queue: &str) -> Result<(), String> {
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

impl fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("service", &self.service)
            .field("queue", &self.queue)
            .field("amqp_url", &amqp::redact_url(&self.amqp_url))
            .field("amqp_ca_file", &self.amqp_ca_file)
            .field("prefix", &self.prefix)
            .field("concurrency", &self.concurrency)
            .field("faults", &self.faults)
            .field("http_addr", &self.http_addr)
            .field("orchestrator_users", &self.orchestrator_users)
            .field("require_verified_senders", &self.require_verified_senders)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_workflow_rules() {
        for good in ["risk", "risk-lite", "a_1", &"x".repeat(64)] {
            assert!(validate_queue(good).is_ok(), "{good:?}");
        }
        for bad in ["", "Risk", "a b", "a.b", "é", &"x".repeat(65)] {
            let e = validate_queue(bad).unwrap_err();
            assert!(e.contains("1-64 characters"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn validation_refuses_what_cannot_work() {
        assert!(WorkerConfig::new("risk").validate().is_ok());
        let zero = WorkerConfig {
            concurrency: 0,
            ..WorkerConfig::new("risk")
        };
        assert!(zero
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at least 1"));
        let bad_url = WorkerConfig {
            amqp_url: "not a url".into(),
            ..WorkerConfig::new("risk")
        };
        let e = bad_url.validate().unwrap_err();
        assert!(
            e.is_broker_unreachable(),
            "a bad URL exits like an unreachable broker: {e}"
        );
        let unverified = WorkerConfig {
            require_verified_senders: true,
            ..WorkerConfig::new("risk")
        };
        let e = unverified.validate().unwrap_err().to_string();
        assert!(e.contains("--orchestrator-user"), "{e}");
        assert!(!e.contains("guest"), "{e}");
    }

    #[test]
    fn debug_hides_the_password() {
        let config = WorkerConfig {
            amqp_url: "amqp://u:secret@h/".into(),
            ..WorkerConfig::new("pci")
        };
        assert!(!format!("{config:?}").contains("secret"));
    }
}
