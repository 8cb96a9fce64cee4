//! Crash safety and scale-out, with real processes: orchestrators are spawned as the real
//! `baton` binary (so they can crash, be killed or be signalled), the four services run in
//! this process, all against the real RabbitMQ (and PostgreSQL for the shared journal).
//!
//! Tests that stop or restart a broker run a RabbitMQ node of their own (`node.rs`); the
//! shared broker on 5672 never goes away under another test.

mod broker;
mod cold_start;
mod crashes;
mod doctor;
mod harness;
mod liveness;
mod node;
mod replicas;
mod tls;
