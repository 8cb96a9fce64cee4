//! Baton's four reference business services — authorization, risk, PCI compliance,
//! transaction — each a [`baton_worker::Handler`] on the worker kit (consume → verify →
//! handle → reply → ack, reconnects, metrics, faults: [`baton_worker`]).
//!
//! The services know nothing about the workflow: each answers the commands on its own
//! queue. The library runs them in-process ([`start`]: demos, tests); the binaries in
//! `src/bin` are thin wrappers around [`cli::main`].
//!
//! - One module per service, its business rules beside its handler: [`authorization`],
//!   [`risk`], [`pci`], [`transaction`]. These are *reference* implementations that make
//!   the orchestrator observable end to end with well-known test cards, not a real card
//!   processor.
//! - [`ledger`]: the store authorization and transaction share (holds, transfers,
//!   audit, prune), exactly-once through the kit's [`baton_worker::idempotency`].
//! - [`cli`]: flags, logging, exit codes; `baton-transaction audit` checks the ledger's
//!   books and `baton-transaction prune` deletes its old, finished records.
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::dbg_macro, clippy::todo)]

pub mod authorization;
pub mod cli;
mod config;
#[cfg(test)]
mod handler_tests;
pub mod ledger;
mod ledgered;
pub mod pci;
pub mod reply;
pub mod risk;
pub mod transaction;

pub use baton_worker::{Faults, Health, InvalidFailRate};
pub use config::{ServiceConfig, ServiceKind};
pub use ledger::{Answer, Audit, CurrencyTotal, Ledger, LedgerError};

use baton_amqp::BrokerError;
use baton_worker::WorkerError;

/// A service consuming its queue ([`start`]); stop it with `shutdown`.
pub type RunningService = baton_worker::RunningService<ServiceKind>;

/// Why a service could not start, or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration makes no sense for this service (the message says what to pass).
    #[error("{0}")]
    Config(String),
    /// The ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The kit: bad settings, the broker, the HTTP port, the metrics.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

impl ServiceError {
    /// The binaries' exit code: 2 when the broker is unreachable or its URL unusable (as
    /// `baton` exits), 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServiceError::Worker(e) if e.is_broker_unreachable() => 2,
            _ => 1,
        }
    }

    /// The broker's error, if that is what this is (callers that classify errors by the
    /// broker's, like `baton`'s exit codes); the error itself otherwise.
    pub fn into_broker(self) -> Result<BrokerError, Self> {
        match self {
            ServiceError::Worker(WorkerError::Broker(e)) => Ok(e),
            other => Err(other),
        }
    }
}

/// Starts `kind`: checks the settings, opens the ledger if the service has one, then
/// connects, declares its command queue and starts consuming. Returns once it is
/// consuming. When the broker cannot be reached at start the error is
/// [`ServiceError::Worker`] with [`BrokerError::Connect`] (exit code 2); once started, a
/// lost connection is re-established in the background.
pub async fn start(
    kind: ServiceKind,
    config: ServiceConfig,
) -> Result<RunningService, ServiceError> {
    let worker = config.worker(kind);
    // Before the ledger is opened: a bad setting touches nothing.
    worker.validate()?;
    let started = match kind {
        ServiceKind::Authorization => {
            let handler = authorization::Authorization::new(open_ledger(&config).await?);
            baton_worker::start(worker, kind, handler).await
        }
        ServiceKind::Transaction => {
            let handler = transaction::Transaction::new(open_ledger(&config).await?);
            baton_worker::start(worker, kind, handler).await
        }
        ServiceKind::Risk => {
            let keys = config.card_keys.ok_or_else(|| {
                ServiceError::Config(
                    "the risk service needs the card key to recognise card fingerprints: \
                     pass --card-key-file FILE (BATON_CARD_KEY_FILE), the file the \
                     orchestrator fingerprints with"
                        .to_owned(),
                )
            })?;
            baton_worker::start(worker, kind, risk::Risk::new(keys)).await
        }
        ServiceKind::Pci => baton_worker::start(worker, kind, pci::Pci).await,
    };
    Ok(started?)
}

async fn open_ledger(config: &ServiceConfig) -> Result<Ledger, LedgerError> {
    let ledger = Ledger::open(&config.ledger_url).await?;
    tracing::info!(
        ledger = %ledger.location(),
        ledger_id = %ledger.id(),
        "ledger open"
    );
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(e.exit_code(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_broker_or_a_bad_url_exits_2() {
        let unreachable = ServiceConfig {
            amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            ..ServiceConfig::default()
        };
        let e = start(ServiceKind::Pci, unreachable).await.unwrap_err();
        assert!(
            matches!(
                &e,
                ServiceError::Worker(WorkerError::Broker(BrokerError::Connect { .. }))
            ),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
        assert!(e.into_broker().is_ok());
        let bad_url = ServiceConfig {
            amqp_url: "http://nope".into(),
            ..ServiceConfig::default()
        };
        let e = start(ServiceKind::Pci, bad_url).await.unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        // A setting the service itself refuses is not the broker's fault.
        let no_key = ServiceConfig {
            amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            ..ServiceConfig::default()
        };
        let e = start(ServiceKind::Risk, no_key).await.unwrap_err();
        assert!(e.to_string().contains("--card-key-file"), "{e}");
        assert_eq!(e.exit_code(), 1);
    }
}
