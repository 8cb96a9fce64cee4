//! Operations plumbing shared by every Baton binary: the HTTP port that serves
//! `/metrics`, `/healthz`, `/readyz` and, optionally, a few application read-only
//! paths (the orchestrator's `GET /payments/<id>`).
//!
//! It also holds [`sql`], the one opener of the journal's and the ledger's databases;
//! [`exec`], the statements' interface that runs on sqlx and on [`sqlite`], a SQLite
//! connection on a thread of its own for a store's one writer.
//!
//! What it is for: one small, dependable HTTP/1 server that the orchestrator and the
//! four services start the same way, so Prometheus, container health checks and
//! operators see the same endpoints everywhere.
//!
//! What it is not: a web framework. There is no routing beyond the three built-in
//! paths, no request bodies, no TLS; it owns no metrics (the application owns the
//! [`prometheus::Registry`] and hands a clone in).
//!
//! ```no_run
//! # async fn demo() -> Result<(), baton_ops::OpsError> {
//! use baton_ops::{Health, HttpServer};
//! let registry = prometheus::Registry::new();
//! let health = Health::default(); // not ready ("starting") until the app says so
//! let server = HttpServer::start(
//!     "0.0.0.0:9460",
//!     registry,
//!     health.clone(),
//!     None,
//!     async { let _ = tokio::signal::ctrl_c().await; },
//! )
//! .await?;
//! health.set_ready();
//! server.wait().await; // returns once the shutdown future resolved and connections drained
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::dbg_macro, clippy::todo, clippy::unwrap_used)]

mod error;
pub mod exec;
mod health;
mod lifecycle;
pub mod logging;
mod metrics;
mod server;
pub mod sql;
pub mod sqlite;

pub use error::OpsError;
pub use health::Health;
pub use lifecycle::{
    reconnect_delays, shutdown_signal, EXIT_BROKER_UNREACHABLE, RECONNECT_MAX_DELAY,
};
pub use logging::LogFormat;
pub use metrics::histogram_buckets_seconds;
pub use server::{
    handler, request_handler, AppRequest, Handler, HttpServer, Response, DRAIN_TIMEOUT,
};
pub use server::{AppRoutes, BearerToken};
pub use sql::SqlError;
