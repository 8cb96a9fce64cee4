//! Why a worker could not start or ended badly.

use baton_amqp::BrokerError;

/// Errors of [`crate::start`] and of a running worker's end.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration makes no sense (the message says which setting and why).
    #[error("{0}")]
    Config(String),
    /// An injected fail rate outside 0 to 1.
    #[error(transparent)]
    Faults(#[from] crate::faults::InvalidFailRate),
    /// The broker: unreachable at start ([`BrokerError::Connect`]), a bad URL
    /// ([`BrokerError::BadUrl`]), or a queue that cannot be declared.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The metrics could not be registered (a handler registered a duplicate name).
    #[error("registering the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP port could not be bound.
    #[error(transparent)]
    Http(#[from] baton_ops::OpsError),
    /// The run loop panicked: a bug, not an outage (outages are reconnected).
    #[error("the service's run loop panicked: {0}")]
    Panicked(#[from] tokio::task::JoinError),
}

impl WorkerError {
    /// Whether the broker could not be reached or its URL is unusable: what the binaries
    /// exit 2 for, as `baton` does.
    pub fn is_broker_unreachable(&self) -> bool {
        matches!(
            self,
            WorkerError::Broker(BrokerError::Connect { .. } | BrokerError::BadUrl { .. })
        )
    }
}
