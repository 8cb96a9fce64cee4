//! A worker kit for services that answer Baton's commands, in any Rust service:
//! consume `<prefix>.cmd.<service>` with manual ack, verify the sender (the
//! RabbitMQ-validated `user_id`), decode the [`Command`](baton_contract::Command), let a
//! [`Handler`] answer, publish the reply to the command's `reply_to` with publisher
//! confirms, then ack.
//!
//! - [`start`] / [`RunningService`] ([`running`]): start, health, faults, metrics,
//!   graceful shutdown.
//! - [`Handler`] ([`handler`]): what a service plugs in; knows nothing about AMQP.
//! - [`idempotency`]: claim a command id and store its reply in the transaction that
//!   acts, so a repeated command gets the stored reply and acts once.
//! - [`faults`]: fault injection (fail rate, latency, black hole, failing compensations)
//!   to test an orchestrator.
//! - `session`: connection recovery. When the broker connection or a channel drops, the
//!   service stops being ready, reconnects with capped exponential backoff and jitter
//!   (forever: only a shutdown ends it), declares its queue again and resumes. A command
//!   being handled when its channel dies still finishes in the store, but its reply and
//!   ack fail: the broker redelivers it and the store answers the repeat.
//! - `delivery`: one delivery end to end (acked only once its reply is confirmed;
//!   undecodable commands dead-lettered with the reason).
//!
//! Observability: each command's span carries `payment_id`, `step`, `command_id` and the
//! `trace_id` of its `traceparent` header. Metrics live in a registry of the running
//! service ([`RunningService::registry`]); with an HTTP port they are served at
//! `/metrics`, and `/readyz` is ready only while connected, declared and consuming.
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::dbg_macro, clippy::todo)]

pub mod config;
mod delivery;
pub mod error;
pub mod faults;
pub mod handler;
pub mod idempotency;
mod metrics;
pub mod running;
mod session;
mod shared;

pub use baton_contract::trace_id;
pub use config::{validate_queue, WorkerConfig};
pub use error::WorkerError;
pub use faults::{Faults, InvalidFailRate, INJECTED_FAULT};
pub use handler::{Answer, Handler};
pub use running::{start, Health, RunningService};
pub use session::SHUTDOWN_DRAIN;
