//! Crash safety and scale-out, with real processes: orchestrators are spawned as the real
//! `baton` binary (so they can crash, be killed or be signalled), the four services run in
//! this process, all against the real RabbitMQ (and PostgreSQL for the shared journal).
//!
//! Tests that stop the broker take the broker lock exclusively; the others share it, so
//! no test sees the broker go away unless it asked for it.

mod broker;
mod crashes;
mod doctor;
mod harness;
mod replicas;
mod tls;
