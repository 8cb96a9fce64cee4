//! What outlives a broker connection, shared by the run loop and every delivery task
//! ([`Shared`]), and what one connection's delivery tasks publish on ([`Link`]).

use crate::faults::{Dice, Faults};
use crate::metrics::Metrics;
use baton_amqp as amqp;
use baton_contract::Names;
use lapin::Channel;
use tokio::sync::{watch, Notify};

/// Whether a service is taking commands, and how often it had to reconnect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Connected, command queue declared and consuming. False while reconnecting and
    /// after shutdown began.
    pub ready: bool,
    /// Times the broker connection (or a channel) was lost and opened again.
    pub reconnects: u64,
}

/// What outlives a broker connection: shared by the run loop and every delivery task.
pub(crate) struct Shared<H> {
    /// The service's handler and store.
    pub(crate) handler: H,
    /// The service's name (metrics label, logs, consumer tag).
    pub(crate) service: String,
    /// Broker URL, for reconnecting.
    pub(crate) amqp_url: String,
    /// How `amqps://` checks the broker's certificate.
    pub(crate) amqp_tls: amqp::TlsOptions,
    /// The broker-visible connection name, the same after a reconnect.
    pub(crate) connection_name: String,
    /// Topology names under the prefix.
    pub(crate) names: Names,
    /// The consumer's prefetch.
    pub(crate) concurrency: u16,
    /// The service name of the queue consumed.
    pub(crate) queue_service: String,
    /// `<prefix>.cmd.<queue_service>`.
    pub(crate) queue: String,
    /// `<prefix>.dead`.
    pub(crate) dead_queue: String,
    /// The faults in force, set through the running service's `set_faults`.
    pub(crate) faults: watch::Receiver<Faults>,
    /// Decides which commands an injected fail rate hits.
    pub(crate) dice: Dice,
    /// Readiness and reconnects, read by the running service's `health`.
    pub(crate) health: watch::Sender<Health>,
    /// Readiness as `/readyz` reports it, with the reason when not ready.
    pub(crate) readiness: baton_ops::Health,
    /// The service's metrics.
    pub(crate) metrics: Metrics,
    /// This process's broker user, stamped as `user_id` on its replies and dead letters.
    pub(crate) user: String,
    /// Whose commands are obeyed.
    pub(crate) orchestrators: Vec<String>,
    /// Whether a command from an unknown sender was logged at WARN already.
    pub(crate) refusal_logged: std::sync::atomic::AtomicBool,
}

impl<H> Shared<H> {
    /// Ready: consuming. `/readyz` and the running service's `health` follow.
    pub(crate) fn set_ready(&self) {
        self.readiness.set_ready();
        self.health.send_modify(|h| h.ready = true);
    }

    /// Not ready, and why (shown by `/readyz`).
    pub(crate) fn set_not_ready(&self, reason: &str) {
        self.readiness.set_not_ready(reason);
        self.health.send_modify(|h| h.ready = false);
    }
}

/// The part of a session each delivery task holds. A task started on a session that
/// has since died still holds it: its publish and ack fail, and the broker redelivers
/// the command (the handler is idempotent), so such tasks simply end.
pub(crate) struct Link {
    /// Confirm-mode channel for replies and dead letters: separate from the consuming
    /// channel so a publish never waits behind deliveries (lapin's advice).
    pub(crate) publish: Channel,
    /// Signalled by a task whose publish found this channel closed, so the run loop
    /// reconnects even while the consuming channel still looks healthy.
    pub(crate) broken: Notify,
}

impl Link {
    /// After a failed publish: if the channel itself is gone, tell the run loop to
    /// reconnect (a closed publishing channel alone does not end the consumer).
    pub(crate) fn check(&self) {
        if !self.publish.status().connected() {
            self.broken.notify_one();
        }
    }
}
