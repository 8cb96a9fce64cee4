//! Baton's four reference business services (authorization, risk, PCI compliance,
//! transaction) on a small shared worker kit: consume → dedupe → handle → reply → ack.
//!
//! The services know nothing about the workflow: each answers the commands on its own
//! queue. The library runs them in-process (demos, tests); the binaries in `src/bin` are
//! thin wrappers around [`cli::main`].
//!
//! Each running service reconnects by itself when the broker connection drops
//! ([`kit`]), serves its own Prometheus metrics and readiness on an optional HTTP port,
//! can inject faults to test the orchestrator ([`faults`]), `baton-transaction audit`
//! checks the ledger's books ([`audit`]) and `baton-transaction prune` deletes its old,
//! finished records ([`prune`]).
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::dbg_macro, clippy::todo)]

pub mod audit;
pub mod cli;
pub mod faults;
pub mod handler;
pub mod kit;
pub mod ledger;
mod metrics;
pub mod prune;
pub mod rules;

pub use faults::Faults;
pub use kit::{start, Health, RunningService, ServiceConfig, ServiceKind};
pub use ledger::{Answer, Audit, CurrencyTotal, Ledger, LedgerError};
