//! Baton's four reference business services (authorization, risk, PCI compliance,
//! transaction) on a small shared worker kit: consume → dedupe → handle → reply → ack.
//!
//! The services know nothing about the workflow: each answers the commands on its own
//! queue. The library runs them in-process (demos, tests); the binaries in `src/bin` are
//! thin wrappers around [`cli::main`].
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::dbg_macro, clippy::todo)]

pub mod cli;
pub mod handler;
pub mod kit;
pub mod ledger;
pub mod rules;

pub use kit::{start, RunningService, ServiceConfig, ServiceKind};
pub use ledger::{Audit, CurrencyTotal, Ledger, LedgerError};
