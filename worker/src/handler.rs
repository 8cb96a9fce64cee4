//! What a service plugs into the kit: a [`Handler`] that answers one decoded command.
//! No AMQP here, so a handler is tested without a broker.

use baton_contract::{Command, Reply};
use std::future::Future;

/// A reply, and whether it was the stored answer to a repeated command (the kit counts
/// those: many repeats mean the orchestrator retries a lot).
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The reply to send.
    pub reply: Reply,
    /// True when the command had been processed before and nothing was done now.
    pub replayed: bool,
}

impl Answer {
    /// A reply computed now.
    pub fn fresh(reply: Reply) -> Self {
        Self {
            reply,
            replayed: false,
        }
    }
}

/// A service's business: answers the commands of its queue. The kit calls it for every
/// decoded `execute` and `compensate` command from a trusted sender (pings are answered
/// with [`Handler::ping`], without touching any store).
///
/// `answer` never fails: a store error becomes a transient `error` reply (nothing was
/// stored, so the orchestrator's retry may act). For exactly-once effects, claim the
/// command id first ([`crate::idempotency`]).
pub trait Handler: Send + Sync + 'static {
    /// Answers one command.
    fn answer(&self, command: &Command) -> impl Future<Output = Answer> + Send;

    /// The answer to a ping (`baton doctor`): `approved`, with whatever identifies the
    /// service (name, version, its store). Must not touch a store.
    fn ping(&self, command_id: &str) -> Reply;

    /// Registers the handler's own metrics in the service's registry (the one
    /// `/metrics` serves), once at start. None by default.
    fn register_metrics(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        let _ = registry;
        Ok(())
    }

    /// Closes the handler's store, after the last command finished (or when the start
    /// fails). Nothing by default.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
