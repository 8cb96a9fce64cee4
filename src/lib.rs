//! Baton, a queue-driven payment orchestrator on RabbitMQ.
//!
//! A client publishes a payment request; the [`orchestrator`] consumes it and runs it as a
//! [`saga`] through the steps of a [`workflow`] (authorization → risk → PCI → transaction
//! by default), each a business service behind its own queue, then publishes one result.
//! The orchestrator decides which step runs next and what to do when one fails; the
//! services hold the business logic. The wire contract lives in the `baton-contract` crate.
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::dbg_macro, clippy::todo)]

#[cfg(feature = "dev-tools")]
pub mod bench;
pub mod breaker;
pub mod broker;
pub mod cli;
pub mod client;
pub mod condition;
pub mod config;
pub mod crash;
#[cfg(feature = "dev-tools")]
pub mod demo;
pub mod doctor;
pub mod harness;
pub mod journal;
pub mod journal_tools;
#[cfg(feature = "dev-tools")]
pub mod load;
pub mod metrics;
pub mod records;
pub mod runtime;
pub mod saga;
pub mod scripted;
pub mod status_page;
#[cfg(feature = "dev-tools")]
pub mod testcards;
pub mod tools;
pub mod workflow;
