//! Baton's wire contract: the JSON messages that cross RabbitMQ, and the names of the
//! exchanges and queues they cross it on.
//!
//! Clients and business services depend on this crate alone; it knows nothing about how
//! the orchestrator runs a workflow, and nothing about AMQP (that is `baton-amqp`).
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::dbg_macro, clippy::todo)]

pub mod card_key;
pub mod mask;
mod message;
mod names;
mod redact;
mod request;
mod strict_json;

pub use card_key::{CardKeyError, CardKeys};
pub use mask::{contains_card_number, mask_card_numbers};
pub use message::{
    Action, CardExposure, CardView, Command, PaymentResult, PaymentView, Ping, Reply, ReplyOutcome,
    Status, StepOutcome, StepRecord, LEDGER_AT, LEDGER_ID, LEDGER_MISMATCH,
};
pub use names::{
    headers, parse_prefix, trace_id, Names, CONTENT_TYPE, KNOWN_SCHEMA_VERSIONS, SCHEMA_VERSION,
};
pub use redact::{database_location, redact_url};
pub use request::{
    parse_expiry, parse_payment_id, Card, CardNumber, Currency, InvalidRequest, Limits, Money,
    PaymentRequest,
};
