//! Replaying: a dead request back to the request queue, an attention item's command back
//! to its service.

use super::*;

use crate::saga::AttentionItem;
use baton_amqp::{self as amqp, header_text, json_properties, publish_confirmed};
use baton_contract::{headers, Names, Reply, ReplyOutcome};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::time::Duration;
use uuid::Uuid;

impl Tool<'_> {
    pub(super) async fn replay_request(
        &self,
        publish: &Channel,
        m: &Delivery,
    ) -> anyhow::Result<String> {
        replay_request(publish, self.names, m, self.sender).await
    }

    pub(super) async fn replay_attention(
        &self,
        publish: &Channel,
        m: &Delivery,
    ) -> anyhow::Result<String> {
        replay_attention(self.connection, publish, self.names, m, self.sender).await
    }
}

/// Whether a dead letter is a payment request, and if not, what it is.
pub(super) fn request_or_why_not(
    properties: &BasicProperties,
    names: &Names,
) -> Result<(), String> {
    let why = why(properties, names);
    if let Some(reason) = header_text(properties, headers::REASON) {
        return if REQUEST_REASONS.contains(&reason.as_str()) {
            Ok(())
        } else {
            Err(format!("{reason}, written by Baton or a service"))
        };
    }
    // RabbitMQ's: where it last died decides, whatever came before (a parked request
    // went requests → retry tier → requests any number of times).
    let requests = names.requests_queue();
    if why.from == requests || is_retry_tier(&why.from, names) {
        Ok(())
    } else if why.chain.is_empty() && why.from == "-" {
        Err("no x-baton-reason and no x-death: neither Baton nor RabbitMQ dead-lettered it".into())
    } else {
        Err(format!(
            "dead-lettered by RabbitMQ: {} in {}",
            why.reason, why.from
        ))
    }
}

/// `<prefix>.retry.<n>ms`: a parking tier of this deployment.
pub(super) fn is_retry_tier(queue: &str, names: &Names) -> bool {
    queue
        .strip_prefix(names.prefix())
        .and_then(|q| q.strip_prefix(".retry."))
        .and_then(|q| q.strip_suffix("ms"))
        .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
}

/// Sends a dead-lettered request back to the request queue, as the client sent it.
/// Only requests: a command a service dead-lettered is not a payment request.
pub(super) async fn replay_request(
    publish: &Channel,
    names: &Names,
    m: &Delivery,
    sender: &str,
) -> anyhow::Result<String> {
    if let Err(what) = request_or_why_not(&m.properties, names) {
        anyhow::bail!("not a payment request ({what}): not replayed");
    }
    if let Some(kept) = header_text(&m.properties, headers::TRUNCATED) {
        // Only the masked first bytes of the body were kept: there is no request to send.
        anyhow::bail!(
            "its body was too large and only {kept} of {} bytes were kept, masked: not \
             replayed (the client must send the payment again)",
            header_text(&m.properties, headers::ORIGINAL_SIZE).unwrap_or_else(|| "?".into())
        );
    }
    let mut properties = amqp::with_sender(m.properties.clone(), sender);
    if let Some(table) = m.properties.headers() {
        let kept: std::collections::BTreeMap<_, _> = table
            .inner()
            .iter()
            .filter(|(k, _)| !ADDED_HEADERS.contains(&k.as_str()) && k.as_str() != DELIVERY_COUNT)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        properties = properties.with_headers(FieldTable::from(kept));
    }
    publish_confirmed(publish, "", &names.requests_queue(), &m.data, properties).await?;
    Ok(format!("back in {}", names.requests_queue()))
}

/// Sends an attention item's command to its service again and waits for the answer.
pub(super) async fn replay_attention(
    connection: &Connection,
    publish: &Channel,
    names: &Names,
    m: &Delivery,
    sender: &str,
) -> anyhow::Result<String> {
    let item: AttentionItem = serde_json::from_slice(&m.data)
        .map_err(|e| anyhow::anyhow!("not an attention item ({e})"))?;
    let Some(command) = item.command else {
        anyhow::bail!(
            "a {} item is settled by hand: check command {} in the {} service's ledger, then drop the item",
            item.kind,
            item.command_id,
            item.step
        );
    };
    let listen = connection.create_channel().await?;
    let (reply_queue, mut replies) = amqp::consume_exclusive(&listen, "").await?;
    let correlation = Uuid::new_v4().to_string();
    let properties = amqp::with_sender(
        json_properties(&[(headers::COMMAND_ID, &command.command_id)]),
        sender,
    )
    .with_correlation_id(correlation.as_str().into())
    .with_reply_to(reply_queue.as_str().into());
    let target = names.command_queue(&item.service);
    publish_confirmed(
        publish,
        "",
        &target,
        &serde_json::to_vec(&command)?,
        properties,
    )
    .await?;
    let reply = loop {
        match tokio::time::timeout(Duration::from_secs(30), replies.next()).await {
            Ok(Some(Ok(d)))
                if d.properties.correlation_id().as_ref().map(|c| c.as_str())
                    == Some(correlation.as_str()) =>
            {
                break serde_json::from_slice::<Reply>(&d.data)?;
            }
            Ok(Some(Ok(_))) => continue,
            _ => anyhow::bail!("{} did not answer within 30 s; the item stays", target),
        }
    };
    let _ = listen.close(200, "done".into()).await;
    match reply.outcome {
        ReplyOutcome::Approved => Ok(format!(
            "{} {:?} approved by {target}",
            item.step, command.action
        )),
        _ => anyhow::bail!(
            "{target} answered {:?} {}; the item stays",
            reply.outcome,
            reply.reason.unwrap_or_default()
        ),
    }
}
