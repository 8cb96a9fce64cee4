//! The bare pipeline: `bench-echo` answers every command at once, `bench-relay` sends
//! each request's four commands in order and publishes the result.

use super::*;
use baton_amqp::{self as amqp, json_properties, publish_confirmed};
use baton_contract::{headers, Names, Reply};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;
use uuid::Uuid;

/// `baton bench-echo`: answers every command on the four command queues at once.
pub async fn echo(amqp_url: &str, tls: &amqp::TlsOptions, names: &Names) -> anyhow::Result<()> {
    // The relay declares the same queues at the same moment, and RabbitMQ 3.10 can fail
    // a consume on a quorum queue whose Raft server is still starting (`noproc`, which
    // closes the whole connection): then the set-up starts again on a new connection.
    let mut attempt = 0;
    let (_connection, publish, consumers) = loop {
        match echo_setup(amqp_url, tls, names).await {
            Ok(set_up) => break set_up,
            Err(e) if attempt < 5 => {
                attempt += 1;
                eprintln!("bench-echo: set-up failed ({e}); again");
                tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (channel, mut consumer) in consumers {
        let publish = publish.clone();
        tasks.spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let publish = publish.clone();
                tokio::spawn(async move {
                    let command_id = amqp::header_text(&delivery.properties, headers::COMMAND_ID)
                        .unwrap_or_default();
                    let reply = Reply::approved(command_id, serde_json::Map::new());
                    let body = serde_json::to_vec(&reply).unwrap_or_default();
                    let mut properties = json_properties(&[]);
                    if let Some(c) = delivery.properties.correlation_id() {
                        properties = properties.with_correlation_id(c.clone());
                    }
                    if let Some(reply_to) = delivery.properties.reply_to() {
                        let _ =
                            publish_confirmed(&publish, "", reply_to.as_str(), &body, properties)
                                .await;
                    }
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                });
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The echo's connection, its confirm channel, and a consumer on each command queue.
async fn echo_setup(
    amqp_url: &str,
    tls: &amqp::TlsOptions,
    names: &Names,
) -> anyhow::Result<(
    lapin::Connection,
    lapin::Channel,
    Vec<(lapin::Channel, lapin::Consumer)>,
)> {
    let connection = amqp::connect(
        amqp_url,
        &format!("baton bench echo {}", names.prefix()),
        tls,
    )
    .await?;
    let publish = amqp::confirm_channel(&connection).await?;
    let mut consumers = Vec::new();
    for service in SERVICES {
        let channel = connection.create_channel().await?;
        amqp::declare_command_queue(&channel, names, service).await?;
        channel.basic_qos(512, BasicQosOptions::default()).await?;
        let consumer = channel
            .basic_consume(
                names.command_queue(service).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consumers.push((channel, consumer));
    }
    Ok((connection, publish, consumers))
}

/// `baton bench-relay`: Baton's message flow without Baton's work — four commands in
/// order, each awaited, then the result, then the ack.
pub async fn relay(
    amqp_url: &str,
    tls: &amqp::TlsOptions,
    names: &Names,
    concurrency: u16,
) -> anyhow::Result<()> {
    let connection = amqp::connect(
        amqp_url,
        &format!("baton bench relay {}", names.prefix()),
        tls,
    )
    .await?;
    let setup = connection.create_channel().await?;
    amqp::declare_core(&setup, names).await?;
    for service in SERVICES {
        amqp::declare_command_queue(&setup, names, service).await?;
    }
    let reply_queue = names.reply_queue(&format!(
        "relay-{}",
        &Uuid::new_v4().simple().to_string()[..8]
    ));
    let replies_channel = connection.create_channel().await?;
    let (_, mut replies) = amqp::consume_exclusive(&replies_channel, &reply_queue).await?;
    let waiting: Waiting = Arc::default();
    let router = waiting.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = replies.next().await {
            let id = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default();
            if let Some(tx) = router.lock().ok().and_then(|mut m| m.remove(&id)) {
                let _ = tx.send(());
            }
        }
    });
    let publish = amqp::confirm_channel(&connection).await?;
    let consume = connection.create_channel().await?;
    consume
        .basic_qos(concurrency, BasicQosOptions::default())
        .await?;
    let mut requests = consume
        .basic_consume(
            names.requests_queue().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let names = Arc::new(names.clone());
    let reply_queue = Arc::new(reply_queue);
    while let Some(Ok(delivery)) = requests.next().await {
        let (publish, waiting, names, reply_queue) = (
            publish.clone(),
            waiting.clone(),
            names.clone(),
            reply_queue.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            for service in SERVICES {
                let correlation = Uuid::new_v4().to_string();
                let (tx, rx) = oneshot::channel();
                if let Ok(mut m) = waiting.lock() {
                    m.insert(correlation.clone(), tx);
                }
                let properties = json_properties(&[(headers::COMMAND_ID, service)])
                    .with_correlation_id(correlation.as_str().into())
                    .with_reply_to(reply_queue.as_str().into());
                // The request body stands in for a command: about the same size.
                if publish_confirmed(
                    &publish,
                    "",
                    &names.command_queue(service),
                    &delivery.data,
                    properties,
                )
                .await
                .is_err()
                {
                    return;
                }
                if rx.await.is_err() {
                    return;
                }
            }
            let payment_id = baton_contract::PaymentRequest::sniff_payment_id(&delivery.data)
                .unwrap_or_default();
            let result = crate::saga::rejected(
                payment_id,
                format!("bench relay {} ms", started.elapsed().as_millis()),
                crate::saga::Clock::SYSTEM,
            );
            let result = baton_contract::PaymentResult {
                status: baton_contract::Status::Completed,
                reason: None,
                detail: None,
                ..result
            };
            let body = serde_json::to_vec(&result).unwrap_or_default();
            let mut properties = json_properties(&[]);
            if let Some(c) = delivery.properties.correlation_id() {
                properties = properties.with_correlation_id(c.clone());
            }
            let exchange = names.payments_exchange();
            let to_exchange = publish_confirmed(
                &publish,
                &exchange,
                "result.completed",
                &body,
                properties.clone(),
            );
            let to_client = async {
                match delivery.properties.reply_to() {
                    Some(r) => {
                        publish_confirmed(&publish, "", r.as_str(), &body, properties.clone()).await
                    }
                    None => Ok(()),
                }
            };
            let (a, b) = tokio::join!(to_exchange, to_client);
            if a.is_ok() && b.is_ok() {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        });
    }
    Ok(())
}
