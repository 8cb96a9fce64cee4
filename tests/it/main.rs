//! Integration tests against the real RabbitMQ (and PostgreSQL for the shared-store
//! cases). One test binary; each test gets its own prefix, ledger, journal and reply
//! queues, so tests run in parallel on one broker without seeing each other.

mod app;
mod bad_input;
mod binaries;
mod card_data;
mod conditions;
mod deploy;
mod idempotency;
mod ladder;
mod liveness;
mod load;
mod observability;
mod operator;
mod pipeline;
mod roles;
mod senders;
mod status_page;
mod workflow_test;
