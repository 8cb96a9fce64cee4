//! Broker roles: one RabbitMQ user per Baton process, each allowed only the exchanges,
//! queues and routing keys that process really touches (`baton broker setup`), and the
//! same users as a RabbitMQ definitions file for brokers that load one at boot
//! (`baton broker definitions`, `deploy/rabbitmq/definitions.json`).
//!
//! [`grant`] is the one place the permissions are written down: `setup` sends them to a
//! running broker through its management HTTP API, `definitions` writes them into a file,
//! and the tests check both against what each process does on a real broker.
//!
//! What it is not: it cannot stop a user who may publish to the default exchange
//! (services answering replies, the orchestrator sending commands) from publishing to any
//! queue by name; RabbitMQ has no per-queue write check there. Verified senders (the
//! AMQP `user_id` property, checked by the broker and by the receivers) close that gap.
//!
//! Modules: `roles.rs` (what each role may touch), `passwords.rs` (generated passwords and
//! RabbitMQ's hashes), `admin.rs` (the management HTTP API), `setup.rs` (users on a broker
//! or in a definitions file), `command.rs` (`baton broker …`).

mod admin;
mod command;
mod passwords;
mod roles;
mod setup;
#[cfg(test)]
mod tests;

pub use admin::{AdminApi, BrokerSetupError};
pub use command::{run, AdminArgs, BrokerCommand, DefinitionsArgs, SetupArgs};
pub use hyper::Method;
pub use passwords::*;
pub use roles::{grant, Grant, Role};
pub use setup::*;
use std::time::Duration;

/// Default administrator URL of the management API: the local broker as guest.
pub const DEFAULT_ADMIN_URL: &str = "http://guest:guest@127.0.0.1:15672";

/// How long one management API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(15);

/// The hashing algorithm RabbitMQ uses by default, and the one `password_hash` values
/// of this module are in.
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";
