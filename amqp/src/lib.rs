//! RabbitMQ plumbing every Baton binary shares: connecting with a useful error, declaring
//! the topology idempotently, and publishing with publisher confirms.
//!
//! One function per part of the topology, so each binary declares exactly what it uses and
//! can simply call it again after a reconnect.
//!
//! - `connect.rs`: connecting (plain or TLS) with an error that says what to fix;
//! - `topology.rs`: every queue and exchange, declared idempotently, with their bounds;
//! - `publish.rs`: message properties, the sender's `user_id`, confirmed publishing.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connect;
mod publish;
#[cfg(test)]
mod tests;
pub mod topology;

pub use baton_contract::{database_location, redact_url};
pub use connect::{confirm_channel, connect, TlsOptions};
pub use publish::{
    check_schema, header_text, json_properties, long, publish_confirmed, sender, short, url_user,
    with_sender,
};
pub use topology::{
    bounds, consume_exclusive, declare_attention, declare_command_queue, declare_core,
    declare_parking, declare_passive, delete_topology, delete_topology_with_parking, queue_counts,
};

/// How many times RabbitMQ delivers a request or command before dead-lettering it, by
/// default: a poison backstop only. A message that crashes its consumer every time ends in
/// `<prefix>.dead` instead of looping. RabbitMQ counts every return, a closed channel's
/// too (a restart, a reconnect), so it is high: a payment's own retries are counted in
/// the journal (parkings), and a saga whose request is dead-lettered mid-way is finished
/// by the orchestrator's sweeper.
pub const DELIVERY_LIMIT: i64 = 100;

/// The delivery limit queues are declared with: `BATON_DELIVERY_LIMIT` if set (every
/// process of a deployment must use the same value: a queue declared with another one is
/// refused with `PRECONDITION_FAILED`), else [`DELIVERY_LIMIT`].
pub fn delivery_limit() -> i64 {
    static LIMIT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("BATON_DELIVERY_LIMIT")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|n| *n >= 1)
            .unwrap_or(DELIVERY_LIMIT)
    })
}

/// Default broker URL.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Errors of the shared broker plumbing. Each variant says what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached, refused the login, or its TLS certificate was not
    /// trusted.
    #[error("cannot connect to RabbitMQ at {url}: {cause}; {hint}")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// What went wrong, in a few words (the client library's words for plain errors).
        cause: String,
        /// What to do about it.
        hint: String,
    },
    /// The CA file given for `amqps://` cannot be used (or is given with a plain URL).
    #[error("cannot use the CA file {path} (--amqp-ca-file / AMQP_CA_FILE): {problem}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The URL is not an AMQP URL.
    #[error("AMQP_URL {url} is not a valid amqp:// URL: {problem}")]
    BadUrl {
        /// The URL, password removed.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The broker refused the message (negative confirm): retry later.
    #[error("RabbitMQ refused the message published to {target} (nack)")]
    PublishNacked {
        /// Exchange/routing key.
        target: String,
    },
    /// No queue is bound where the message was published: retrying will not help until
    /// the topology changes.
    #[error("message published to {target} was unroutable: no queue is bound there")]
    Unroutable {
        /// Exchange/routing key.
        target: String,
    },
    /// A queue exists with other arguments than this version declares (made by an older
    /// Baton, or by hand): RabbitMQ refuses to change them, so nothing starts until the
    /// queue is recreated (README "Upgrading queue arguments").
    #[error(
        "queue {queue} exists with other arguments than this Baton declares ({detail}); \
         recreate it as README \"Upgrading queue arguments\" says"
    )]
    QueueArguments {
        /// The queue.
        queue: String,
        /// RabbitMQ's words: which argument differs, and its two values.
        detail: String,
    },
    /// The channel or connection failed underneath.
    #[error("RabbitMQ channel error: {0}")]
    Channel(#[from] lapin::Error),
}

impl BrokerError {
    /// Whether trying again later (after a reconnect, if needed) may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            BrokerError::BadUrl { .. }
                | BrokerError::Unroutable { .. }
                | BrokerError::CaFile { .. }
                | BrokerError::QueueArguments { .. }
        )
    }
}
