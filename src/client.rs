//! A client of Baton, as any application would write one: publish requests with
//! publisher confirms and a `reply_to` queue of its own, and collect the results.
//!
//! `baton pay`, `baton demo` and the integration tests use it; it goes through the broker
//! only, never through the orchestrator's internals.

use baton_amqp::{self as amqp, json_properties, publish_confirmed, BrokerError};
use baton_contract::{Names, PaymentResult};
use futures_lite::StreamExt;
use lapin::{BasicProperties, Channel, Connection};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// A result as the client received it.
#[derive(Debug)]
pub struct Received {
    /// The decoded result (`None` if the body was not a result).
    pub result: Option<PaymentResult>,
    /// The raw body.
    pub body: Vec<u8>,
    /// The `correlation_id` it came back with.
    pub correlation_id: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

/// A connection that publishes payment requests and receives their results on its own
/// exclusive queue.
pub struct Client {
    connection: Connection,
    publisher: Publisher,
    results: mpsc::UnboundedReceiver<Received>,
}

/// The publishing half of a [`Client`]: cheap to clone, so many tasks can publish at once
/// on the client's confirm-mode channel.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    names: Names,
    reply_queue: String,
}

impl Client {
    /// Connects and starts listening on a fresh exclusive reply queue.
    pub async fn connect(
        amqp_url: &str,
        tls: &amqp::TlsOptions,
        names: Names,
    ) -> Result<Self, BrokerError> {
        let connection = amqp::connect(amqp_url, "baton client", tls).await?;
        let channel = amqp::confirm_channel(&connection).await?;
        // The orchestrator declares the topology; a client-role user may not, and needs
        // not (README "Broker roles").
        crate::broker::declare_core_if_missing(&connection, &names).await?;
        let reply_queue = format!("{}.client.{}", names.prefix(), Uuid::new_v4().simple());
        let listen = connection.create_channel().await?;
        let (_, mut consumer) = amqp::consume_exclusive(&listen, &reply_queue).await?;
        let (tx, results) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Keeps the listening channel alive as long as the consumer runs.
            let _listen = listen;
            while let Some(Ok(delivery)) = consumer.next().await {
                let received = Received {
                    result: serde_json::from_slice(&delivery.data).ok(),
                    correlation_id: delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.to_string()),
                    body: delivery.data,
                    at: Instant::now(),
                };
                if tx.send(received).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            connection,
            publisher: Publisher {
                channel,
                names,
                reply_queue,
            },
            results,
        })
    }

    /// A publisher on this client's channel, answered to this client's queue.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The next result, or `None` after `timeout` without one.
    pub async fn next_result(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.results.recv())
            .await
            .ok()
            .flatten()
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "client done".into()).await;
    }
}

impl Publisher {
    /// The queue results come back on.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// The confirm-mode channel, for tests that publish something unusual.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Properties of a request: persistent JSON, answered to this client's queue with
    /// `correlation_id` = `correlation`.
    pub fn request_properties(&self, correlation: &str) -> BasicProperties {
        json_properties(&[])
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation.into())
    }

    /// Publishes a request body to the payments exchange (routing key `request`) and waits
    /// for the broker's confirm.
    pub async fn publish(&self, body: &[u8], correlation: &str) -> Result<(), BrokerError> {
        publish_confirmed(
            &self.channel,
            &self.names.payments_exchange(),
            self.names.request_routing_key(),
            body,
            self.request_properties(correlation),
        )
        .await
    }

    /// Publishes a request body straight to the request queue.
    pub async fn publish_to_queue(
        &self,
        body: &[u8],
        correlation: &str,
    ) -> Result<(), BrokerError> {
        publish_confirmed(
            &self.channel,
            "",
            &self.names.requests_queue(),
            body,
            self.request_properties(correlation),
        )
        .await
    }
}
