//! The worker kit in-process against the real RabbitMQ: fault injection, connection
//! recovery, metrics, capture checking its hold, and the `baton-transaction audit` tool.
//!
//! Needs RabbitMQ at `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`). Each test
//! uses its own prefix and ledger file, and deletes its queues at the end.

mod audit;
mod capture;
mod faults;
mod helpers;
mod metrics;
mod reconnect;
