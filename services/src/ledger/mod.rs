//! The ledger store shared by the authorization and transaction services: holds,
//! transfers, double-entry lines, and the replies already given, keyed by `command_id`.
//!
//! Every effect runs in one database transaction whose *first* statement claims the
//! command id ([`baton_worker::idempotency`]: `INSERT … ON CONFLICT DO NOTHING`). That
//! first write makes SQLite take its write lock up-front and makes PostgreSQL serialise
//! concurrent duplicates on the unique key, so a repeated command — even two deliveries at once, from two processes — gets
//! the stored reply and moves nothing twice. Approved and declined replies are stored; a
//! database error rolls everything back so a retry may act.
//!
//! A hold records what was authorized — customer, merchant, amount, currency — and when;
//! a capture moves money only for exactly those (`hold_mismatch` otherwise), so a command
//! naming a real hold cannot pay with another customer's money, pay another merchant or
//! raise the amount. [`Ledger::audit`] checks every transfer against its hold again.
//!
//! Backends: `sqlite://path` (created if missing, WAL, `synchronous=FULL`) or
//! `postgres://…`, with `$1` placeholders on both. The effects are written once against
//! `baton_ops::exec::Exec`: on SQLite they run on the ledger's writer thread, group
//! committed; on PostgreSQL through sqlx's `Any` driver. Reads use sqlx on both. Opening a
//! ledger of an older version upgrades its tables (holds gain `merchant_id`, `created_at`).
//! Claims and stored replies are the kit's ([`baton_worker::idempotency`]); the rules come
//! from the services' modules; nothing here knows about AMQP.
//!
//! Split by topic: `store` (the handle, its errors, counts), `open` (pool, tables,
//! upgrades), `holds` (authorization), `transfers` (transaction), `audit`, `prune`.

mod audit;
mod holds;
mod open;
mod prune;
mod store;
#[cfg(test)]
pub(crate) mod tests;
mod transfers;

pub use audit::{Audit, CurrencyTotal, StaleHold, TransferMismatch, DEFAULT_MAX_HOLD_AGE};
pub use baton_worker::Answer;
pub use prune::{Pruned, DEFAULT_PRUNE_AGE, MIN_PRUNE_AGE};
pub use store::{Ledger, LedgerError};
pub use transfers::{Capture, Conversion, Entry, Settlement};
