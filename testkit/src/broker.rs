//! The local RabbitMQ the suites share (127.0.0.1:5672, management API on 15672, user
//! guest) and what tests ask it: a queue's depth, whether a queue exists, and the
//! deletion of a scratch prefix's queues and exchange.

use baton_amqp as amqp;
use baton_contract::Names;
use lapin::{Channel, Connection};
use std::time::Duration;

/// The shared broker's administrator (guest) URL; [`amqp_url`] lets `AMQP_URL` override it.
pub const AMQP_URL: &str = amqp::DEFAULT_AMQP_URL;

/// The shared broker's AMQP `host:port`.
pub const AMQP_ADDRESS: &str = "127.0.0.1:5672";

/// The shared broker's management API, with the administrator's login;
/// [`admin_url`] lets `BATON_ADMIN_URL` override it.
pub const ADMIN_URL: &str = "http://guest:guest@127.0.0.1:15672";

/// The broker URL the tests use: `AMQP_URL` if set, else [`AMQP_URL`].
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| AMQP_URL.to_owned())
}

/// The management API URL the tests use: `BATON_ADMIN_URL` if set, else [`ADMIN_URL`].
pub fn admin_url() -> String {
    std::env::var("BATON_ADMIN_URL").unwrap_or_else(|_| ADMIN_URL.to_owned())
}

/// A connection named `name` to `url` (plain AMQP); fails the test if there is none.
pub async fn connect(url: &str, name: &str) -> Connection {
    amqp::connect(url, name, &amqp::TlsOptions::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ must run for the tests: {e}"))
}

/// Messages ready in `queue` now (a passive declare); fails the test if there is no
/// such queue.
pub async fn depth(channel: &Channel, queue: &str) -> u32 {
    amqp::declare_passive(channel, queue)
        .await
        .unwrap_or_else(|e| panic!("queue {queue} exists: {e}"))
        .message_count()
}

/// Messages ready in `queue` once there are at least `at_least`, or the count after
/// `within` if they never came (the broker has no event for a queue's length: polled
/// every 50 ms, bounded).
pub async fn depth_at_least(
    channel: &Channel,
    queue: &str,
    at_least: u32,
    within: Duration,
) -> u32 {
    let reached = crate::wait::poll(within, Duration::from_millis(50), || async move {
        let count = depth(channel, queue).await;
        (count >= at_least).then_some(count)
    })
    .await;
    match reached {
        Some(count) => count,
        None => depth(channel, queue).await,
    }
}

/// Whether `queue` exists on the broker at `url`.
pub async fn queue_exists(url: &str, queue: &str) -> bool {
    let connection = connect(url, "test probe").await;
    let exists = amqp::queue_counts(&connection, queue, Duration::from_secs(10))
        .await
        .is_some();
    let _ = connection.close(200, "done".into()).await;
    exists
}

/// A connection named `name` to `url` with a server-named exclusive queue bound to
/// `exchange` with `key` and consumed without acks: what a test sees published there
/// from now on. The queue goes with the connection (close it at the end).
pub async fn listen(
    url: &str,
    name: &str,
    exchange: &str,
    key: &str,
) -> (Connection, lapin::Consumer) {
    let connection = connect(url, name).await;
    let channel = connection.create_channel().await.expect("a channel");
    let (queue, consumer) = amqp::consume_exclusive(&channel, "")
        .await
        .expect("consume a queue of the test's own");
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            key.into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("bind a queue to {exchange} with {key}: {e}"));
    (connection, consumer)
}

/// Deletes a scratch prefix's queues (the core ones, `services`' command queues, the
/// parking queues of `parking_delays_ms`) and its exchange, on a connection of its own to
/// `url` (a test's own may have died with the broker).
pub async fn delete_prefix(
    url: &str,
    names: &Names,
    services: &[&str],
    parking_delays_ms: &[u64],
) -> Result<(), amqp::BrokerError> {
    let connection = amqp::connect(url, "test cleanup", &amqp::TlsOptions::default()).await?;
    let channel = connection.create_channel().await?;
    let deleted =
        amqp::delete_topology_with_parking(&channel, names, services, parking_delays_ms).await;
    let _ = connection.close(200, "cleaned up".into()).await;
    deleted
}
