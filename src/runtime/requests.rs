//! What becomes of one payment request: run, answered, parked, set aside or rejected.

use super::publish::{count_result, dead_letter_copy, publish_result, publish_to_client};
use super::transport::{add_header, TRACEPARENT};
use super::Shared;
use crate::crash;
use crate::saga::{self, SagaEvent, SagaOutcome, Transport};
use baton_amqp::{self as amqp, header_text, publish_confirmed, BrokerError};
use baton_contract::{headers, Limits, PaymentRequest, PaymentResult};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{BasicProperties, Channel};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn, Instrument};
/// Counts the payment as in flight while it lives.
pub(super) struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs one request from delivery to ack.
pub(super) async fn handle_request(delivery: Delivery, shared: Arc<Shared>) {
    let metrics = &shared.metrics;
    metrics.received.inc();
    let _in_flight = InFlight::new(&metrics.inflight);
    let started = Instant::now();
    let request = match check_content_type(&delivery.properties)
        .and_then(|()| amqp::check_schema(&delivery.properties))
        .and_then(|()| PaymentRequest::parse(&delivery.data, &shared.settings.limits))
    {
        Ok(request) => request,
        Err(invalid) => {
            // Boxed: rare, and held in place its state (3.7 KiB) would be carried by
            // every payment's task.
            Box::pin(reject(delivery, invalid, &shared)).await;
            return;
        }
    };
    let traceparent = header_text(&delivery.properties, "traceparent");
    let trace_id = traceparent
        .as_deref()
        .and_then(baton_contract::trace_id)
        .unwrap_or("")
        .to_owned();
    let span =
        tracing::info_span!("payment", payment_id = %request.payment_id, trace_id = %trace_id);
    // The payment's future is built in the call, not bound to a local first: a local
    // moved into `scope` keeps its own storage in this future beside the scope's copy.
    TRACEPARENT
        .scope(
            traceparent,
            run_payment(&delivery, &request, &shared, started).instrument(span),
        )
        .await
}

/// The payment's saga and what its outcome asks for: the result, parking, a dead letter.
async fn run_payment(
    delivery: &Delivery,
    request: &PaymentRequest,
    shared: &Shared,
    started: Instant,
) {
    let metrics = &shared.metrics;
    info!(
        amount_minor = request.amount.minor,
        currency = %request.amount.currency,
        card = %request.card.number,
        redelivered = delivery.redelivered,
        "payment received"
    );
    // Not `match saga::run(…).await`: a match keeps its scrutinee's temporaries (the
    // saga's finished future, 4 KiB) until its end, beside the arms' futures.
    let outcome = saga::run(&shared.env, request).await;
    match outcome {
        SagaOutcome::Finished {
            result,
            dead_letter,
        } => {
            info!(status = result.status.as_str(), reason = ?result.reason, "payment finished");
            if finish(delivery, &result, dead_letter.as_deref(), shared).await {
                count_result(&result, shared);
                metrics
                    .payment_duration
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        SagaOutcome::Park { tier, step, reason } => {
            park(delivery, tier, &step, &reason, shared).await;
        }
        SagaOutcome::JournalUnavailable {
            error,
            transient: true,
        } => {
            park(delivery, 0, "journal", &error, shared).await;
        }
        SagaOutcome::JournalUnavailable {
            error,
            transient: false,
        } => {
            // Parking would bring it back forever: an operator must look.
            set_aside(delivery, "journal_corrupt", &error, shared).await;
        }
        SagaOutcome::Reused(detail) => {
            // Answer this client only: the payments exchange carries the real
            // payment's one result, not this request's.
            let result = saga::rejected(request.payment_id, detail.clone(), shared.env.clock);
            if let Ok(channel) = shared.env.transport.channel() {
                let _ = publish_to_client(&channel, &result, &delivery.properties, shared).await;
            }
            set_aside(delivery, "payment_id_reused", &detail, shared).await;
        }
        SagaOutcome::Interrupted => {
            // Leave it unacked: when the channel closes RabbitMQ redelivers it.
            warn!("payment interrupted; it will be redelivered");
        }
    }
}

pub(super) fn check_content_type(
    properties: &BasicProperties,
) -> Result<(), baton_contract::InvalidRequest> {
    let Some(content_type) = properties.content_type() else {
        return Ok(());
    };
    // The media type before any parameter (`; charset=utf-8`), compared case-insensitively
    // as RFC 9110 says.
    let media_type = content_type.as_str().split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    // The client's value is not quoted: it would travel into the result's detail, the
    // x-baton-detail header and the log, and it can hold anything (a card number too).
    Err(baton_contract::InvalidRequest::new(
        None,
        "content_type",
        "must be application/json (parameters such as \"; charset=utf-8\" are allowed) \
         or absent; the request's content type was something else",
    ))
}

/// Returns a delivery to its queue after a pause, so that a failure that persists for a
/// while (a result that cannot be published) does not spin through the queue's delivery
/// limit in milliseconds.
pub(super) async fn nack(delivery: &Delivery) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await;
}

/// Publishes the result (to the client's `reply_to`, if any, and to the payments
/// exchange), copies the request to the dead-letter queue if asked, then acks. If
/// publishing fails the request goes back to the queue: the journal answers it again.
pub(super) async fn finish(
    delivery: &Delivery,
    result: &PaymentResult,
    dead_letter: Option<&str>,
    shared: &Shared,
) -> bool {
    let Ok(channel) = shared.env.transport.channel() else {
        return false;
    };
    if let Err(e) = publish_result(&channel, result, &delivery.properties, shared).await {
        error!(error = %e, "could not publish the result; returning the request to the queue");
        nack(delivery).await;
        return false;
    }
    crash::point("after_result_published");
    if let Some(reason) = dead_letter {
        let detail = result.detail.clone().unwrap_or_default();
        if let Err(e) = dead_letter_copy(&channel, delivery, reason, &detail, shared).await {
            error!(error = %e, "could not copy the request to the dead-letter queue; returning it to the queue");
            nack(delivery).await;
            return false;
        }
    }
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        warn!(error = %e, "could not ack the request after publishing its result");
        return false;
    }
    true
}

/// Moves a request that cannot go on to the dead-letter queue with the reason and acks
/// it; returns it to the queue (after a pause) if even that fails.
pub(super) async fn set_aside(delivery: &Delivery, reason: &str, detail: &str, shared: &Shared) {
    let Ok(channel) = shared.env.transport.channel() else {
        return;
    };
    match dead_letter_copy(&channel, delivery, reason, detail, shared).await {
        Ok(()) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            error!(error = %e, "could not dead-letter a request; returning it to the queue");
            nack(delivery).await;
        }
    }
}

/// Moves the request to a parking queue (same body and properties, a parking count in
/// its headers) and acks it; it comes back to the request queue after the tier's delay.
pub(super) async fn park(
    delivery: &Delivery,
    tier: usize,
    step: &str,
    reason: &str,
    shared: &Shared,
) {
    let tiers = &shared.settings.workflow.parking().tiers;
    let delay = tiers[tier.min(tiers.len() - 1)];
    let Ok(channel) = shared.env.transport.channel() else {
        return;
    };
    let parked = header_text(&delivery.properties, headers::PARKED)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    // Stamped with this process's user: the client's own `user_id`, if it set one, is
    // not ours to publish (the broker would refuse it).
    let properties = shared.env.transport.stamped(add_header(
        add_header(
            delivery.properties.clone(),
            headers::PARKED,
            &parked.to_string(),
        ),
        headers::PARKED_AT,
        step,
    ));
    let queue = shared.settings.names.retry_queue(delay.as_millis() as u64);
    let parked_copy = publish_confirmed(&channel, "", &queue, &delivery.data, properties).await;
    match shared.env.transport.watch(parked_copy) {
        Ok(()) => {
            info!(
                step,
                delay_ms = delay.as_millis() as u64,
                reason,
                "payment parked"
            );
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                warn!(error = %e, "could not ack a parked request; it may run twice (safely)");
            }
        }
        Err(e) => {
            error!(error = %e, "could not park the payment; returning it to the queue");
            nack(delivery).await;
        }
    }
}

/// An invalid request. A payment the journal does not know gets a `rejected` result (to
/// the client and the payments exchange: `rejected` is never final, see the README's
/// contract) and its request goes to the dead-letter queue. A payment the journal knows
/// is never left unfinished by an invalid copy ([`reject_known`]). The request is acked
/// once everything is published; if publishing fails it goes back to the queue.
pub(super) async fn reject(
    delivery: Delivery,
    invalid: baton_contract::InvalidRequest,
    shared: &Shared,
) {
    let payment_id = invalid
        .payment_id
        .or_else(|| PaymentRequest::sniff_payment_id(&delivery.data));
    warn!(payment_id = ?payment_id, field = %invalid.field, problem = %invalid.problem, "request rejected");
    let detail = invalid.to_string();
    if let Some(id) = payment_id {
        match shared.env.log.load(id).await {
            Ok(Some(record)) => return reject_known(delivery, record, &detail, shared).await,
            Ok(None) => {}
            Err(e) => {
                // Whether the journal knows it decides what to answer: ask again later.
                shared.metrics.journal_errors.inc();
                park(&delivery, 0, "journal", &e.to_string(), shared).await;
                return;
            }
        }
    }
    let Ok(channel) = shared.env.transport.channel() else {
        return;
    };
    let answered = match payment_id {
        Some(id) => {
            let result = saga::rejected(id, detail.clone(), shared.env.clock);
            let published = publish_result(&channel, &result, &delivery.properties, shared).await;
            if published.is_ok() {
                shared.env.transport.event(SagaEvent::of_result(
                    &result,
                    shared.env.clock.now_rfc3339(),
                ));
                shared
                    .metrics
                    .results
                    .with_label_values(&["rejected", "invalid_request"])
                    .inc();
            }
            published
        }
        None => Ok(()),
    };
    // The result first: if the dead-letter copy then fails, the request comes back and
    // its (identical) rejection is published again, rather than copied twice to `.dead`.
    set_aside_answered(&channel, &delivery, answered, &detail, shared).await;
}

/// After the client was answered (`answered`), copies an invalid request to the
/// dead-letter queue and acks it; if either failed it goes back to the queue (after a
/// pause) and is answered again, rather than copied twice to `.dead`.
pub(super) async fn set_aside_answered(
    channel: &Channel,
    delivery: &Delivery,
    answered: Result<(), BrokerError>,
    detail: &str,
    shared: &Shared,
) {
    let done = match answered {
        Ok(()) => dead_letter_copy(channel, delivery, "invalid_request", detail, shared).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            error!(error = %e, "could not answer and dead-letter an invalid request; returning it to the queue");
            nack(delivery).await;
        }
    }
}

/// An invalid copy of a payment the journal knows gets that payment's result:
/// - decided: the recorded result, to this client only (the payments exchange has it);
/// - running, and this copy is the payment the journal begun (same amount, parties,
///   card) but no longer passes validation (a limit lowered while it was parked): nobody
///   can run it any more, so it is finished now from the journal ([`saga::abandon`]:
///   compensated, `failed`/`abandoned`) and its result published like any other;
/// - running, and this copy is another payment under the same id (a client resending a
///   broken copy while the real one runs): it waits in the last parking tier and comes
///   back for the result.
pub(super) async fn reject_known(
    delivery: Delivery,
    record: crate::journal::SagaRecord,
    detail: &str,
    shared: &Shared,
) {
    if let Some(result) = &record.result {
        let Ok(channel) = shared.env.transport.channel() else {
            return;
        };
        let answered = publish_to_client(&channel, result, &delivery.properties, shared).await;
        set_aside_answered(&channel, &delivery, answered, detail, shared).await;
        return;
    }
    let unbounded = Limits {
        max_body_bytes: usize::MAX,
        max_amount_minor: u64::MAX,
    };
    let same_payment = PaymentRequest::parse(&delivery.data, &unbounded)
        .map(|request| crate::journal::PaymentSummary::of(&request) == record.summary)
        .unwrap_or(false);
    if !same_payment {
        let tiers = shared.settings.workflow.parking().tiers.len();
        info!("an invalid copy of a running payment waits for that payment's result");
        park(
            &delivery,
            tiers.saturating_sub(1),
            "journal",
            detail,
            shared,
        )
        .await;
        return;
    }
    let why = format!("its request no longer passes validation: {detail}");
    match saga::abandon(&shared.env, &record, &why).await {
        SagaOutcome::Finished { result, .. } => {
            warn!(status = result.status.as_str(), reason = ?result.reason, "payment finished without running on");
            if finish(&delivery, &result, Some("invalid_request"), shared).await {
                count_result(&result, shared);
            }
        }
        SagaOutcome::Park { tier, step, reason } => {
            park(&delivery, tier, &step, &reason, shared).await;
        }
        SagaOutcome::JournalUnavailable { error, .. } => {
            park(&delivery, 0, "journal", &error, shared).await;
        }
        SagaOutcome::Reused(_) | SagaOutcome::Interrupted => {
            warn!("payment interrupted; it will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_compared_as_media_types() {
        let with = |ct: &str| BasicProperties::default().with_content_type(ct.into());
        assert!(
            check_content_type(&BasicProperties::default()).is_ok(),
            "absent is accepted"
        );
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
        ] {
            assert!(check_content_type(&with(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/jsonx",
            "application/json-seq",
            "",
        ] {
            let e = check_content_type(&with(bad)).unwrap_err();
            assert_eq!(e.field, "content_type", "{bad}");
        }
    }

    #[test]
    fn a_refused_content_type_is_never_echoed() {
        let sneaky = "text/plain; card=4242424242424242; x=5105 1051 0510 5100";
        let e = check_content_type(&BasicProperties::default().with_content_type(sneaky.into()))
            .unwrap_err();
        let detail = e.to_string();
        assert!(
            detail.starts_with("content_type: must be application/json"),
            "{detail}"
        );
        for leaked in ["text/plain", "4242", "5100", "card="] {
            assert!(!detail.contains(leaked), "{leaked} in {detail}");
        }
    }
}
