//! What Baton's test suites share, so each is written once: the integration tests
//! (`tests/it/`), the chaos and sweeper tests (`tests/chaos/`, `tests/sweeper/`), the
//! services' and the worker kit's tests (`services/tests/`), and every crate's unit and
//! integration tests that need a scratch file, directory or database (the journal's, the
//! ledger's, the idempotency store's, the SQL opener's and the HTTP port's).
//!
//! - [`scratch`]: a test's own names: a prefix, directory, SQLite file, in which no digit
//!   run can ever be masked as a card number;
//! - [`postgres`]: a PostgreSQL database of its own on the local server;
//! - [`broker`]: the local RabbitMQ's addresses, a queue's depth, a prefix's clean-up;
//! - [`http`]: free ports and one `GET` for the HTTP ports of Baton's processes;
//! - [`process`]: other processes, with their logs, readiness and exit, killed on drop;
//! - [`metrics`]: the Prometheus text exposition, read back;
//! - [`wait`]: bounded polling for states that raise no event.
//!
//! What it is not: a way to start Baton. It depends on neither `baton` nor
//! `baton-services`, so every crate's tests can use it; starting an orchestrator or a
//! cluster of processes stays in the suite that does it (`tests/it/app.rs`,
//! `tests/chaos/harness.rs`), built on this kit. A dev-dependency only, never published.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod broker;
pub mod http;
pub mod metrics;
pub mod postgres;
pub mod process;
pub mod scratch;
pub mod wait;

pub use broker::{
    admin_url, amqp_url, delete_prefix, depth, depth_at_least, listen, queue_exists, ADMIN_URL,
    AMQP_ADDRESS, AMQP_URL,
};
pub use http::{free_addr, free_port, http_get, http_get_ok, localhost};
pub use metrics::{metric_value, Exposition};
pub use postgres::{postgres_url, ScratchDatabase, POSTGRES_ADMIN_URL};
pub use process::{logged_http_addr, output, tail, workspace_binary, Process, READY_WAIT};
pub use scratch::{
    remove_sqlite, scratch_hex, scratch_id, scratch_name, scratch_path, sqlite_url, ScratchDir,
    ScratchSqlite,
};
pub use wait::{eventually, poll, POLL_EVERY};
