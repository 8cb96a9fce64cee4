//! Replies from services: each one is handed to the command waiting for it, or refused.

use super::transport::{Pending, Waiter};
use crate::metrics::Metrics;
use baton_amqp as amqp;
use baton_contract::mask::bounded;
use baton_contract::Reply;
use futures_lite::StreamExt;
use tracing::{debug, warn};
/// Hands each reply to the command waiting for it, if it comes from the broker user of
/// that command's service and names that command; counts and drops the rest. A refused
/// reply leaves the wait in place: the service's real answer can still arrive.
pub(super) async fn route_replies(
    mut replies: lapin::Consumer,
    pending: Pending,
    metrics: Metrics,
) {
    let mut refusals = Refusals::default();
    while let Some(delivery) = replies.next().await {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "reply consumer failed");
                break;
            }
        };
        let correlation_id = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default();
        // Parsed before taking the lock; a garbled reply is the service's fault and may
        // be transient. The parser's message can quote the offending value: keep only
        // where it was.
        let parsed = serde_json::from_slice::<Reply>(&delivery.data).map_err(|e| {
            format!(
                "not a valid reply (line {}, column {})",
                e.line(),
                e.column()
            )
        });
        let sender = amqp::sender(&delivery.properties);
        let verdict = match pending.lock() {
            Ok(mut map) => match map.get(&correlation_id) {
                None => Verdict::Unknown,
                Some(waiter) => match check_reply(waiter, sender, parsed.as_ref()) {
                    Err(reason) => Verdict::Refused(reason, waiter.command_id.clone()),
                    Ok(()) => {
                        let waiter = map.remove(&correlation_id).expect("just found");
                        Verdict::Accepted(waiter)
                    }
                },
            },
            Err(_) => break,
        };
        match verdict {
            Verdict::Unknown => {
                metrics.unknown_replies.inc();
                warn!(correlation_id = %bounded(&correlation_id, 64), "reply with an unknown or expired correlation id dropped");
            }
            Verdict::Refused(reason, command_id) => {
                metrics.replies_rejected.with_label_values(&[reason]).inc();
                refusals.log(reason, &correlation_id, &command_id, sender);
            }
            Verdict::Accepted(waiter) => {
                let reply = parsed.unwrap_or_else(|problem| {
                    Reply::error(&waiter.command_id, "malformed_reply", problem)
                });
                let _ = waiter.reply.send(reply);
            }
        }
    }
    // Dropping every waiter tells in-flight sagas the replies are gone.
    if let Ok(mut map) = pending.lock() {
        map.clear();
    }
}

/// What [`route_replies`] does with one reply.
pub(super) enum Verdict {
    /// No command waits under its correlation id.
    Unknown,
    /// A command waits, but this reply may not answer it (the reason label, and the
    /// command id waited for).
    Refused(&'static str, String),
    /// It answers the waiting command.
    Accepted(Waiter),
}

/// Whether a reply may answer `waiter`: it must come from the waiter's broker user, when
/// one is configured, and name the waiter's command (a reply that cannot be read is
/// taken, from the right sender, as that command's transient error).
pub(super) fn check_reply(
    waiter: &Waiter,
    sender: Option<&str>,
    reply: Result<&Reply, &String>,
) -> Result<(), &'static str> {
    if let Some(expected) = &waiter.sender {
        if sender != Some(expected.as_str()) {
            return Err("wrong_sender");
        }
    }
    match reply {
        Ok(reply) if reply.command_id != waiter.command_id => Err("wrong_command_id"),
        _ => Ok(()),
    }
}

/// Refused replies are logged at WARN the first time each reason is seen on a
/// connection, then at DEBUG: a flood of forged replies must not flood the log (the
/// metric counts every one).
#[derive(Default)]
pub(super) struct Refusals(std::collections::HashSet<&'static str>);

impl Refusals {
    fn log(
        &mut self,
        reason: &'static str,
        correlation_id: &str,
        command_id: &str,
        sender: Option<&str>,
    ) {
        // Only the command id is ours; the rest came off the wire.
        let correlation_id = bounded(correlation_id, 64);
        let sender = bounded(sender.unwrap_or(""), 64);
        let (correlation_id, sender) = (correlation_id.as_str(), sender.as_str());
        if self.0.insert(reason) {
            warn!(
                reason,
                correlation_id,
                command_id,
                sender,
                "reply refused and dropped (further refusals for this reason are logged at debug)"
            );
        } else {
            debug!(
                reason,
                correlation_id, command_id, sender, "reply refused and dropped"
            );
        }
    }
}
