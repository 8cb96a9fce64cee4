//! The saga: runs one payment through the workflow's steps, compensates what was done when
//! a step declines or fails, and decides the final result.
//!
//! It holds no business logic (services decide) and no broker code: it talks to services
//! through the [`Transport`] trait, so the same logic runs against RabbitMQ in production
//! and against a fake in unit tests with paused time.

use crate::workflow::{Step, Workflow};
use baton_contract::{
    Action, Command, Money, PaymentRequest, PaymentResult, PaymentView, Reply, ReplyOutcome,
    Status, StepOutcome, StepRecord,
};
use serde_json::{Map, Value};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

/// Why a command got no usable reply (other than a timeout, which the saga measures).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The command could not be published (broker down, queue missing).
    #[error("could not send the command: {0}")]
    Send(String),
    /// The orchestrator is stopping; the payment stays unacked for another replica.
    #[error("the orchestrator is shutting down")]
    ShuttingDown,
}

/// How the saga reaches services: send one command to a step's service and wait for its
/// reply. Timeouts are applied by the saga around this call.
pub trait Transport: Send + Sync {
    /// Sends `command` to `step.service` and resolves with the service's reply.
    fn call(
        &self,
        step: &Step,
        command: Command,
    ) -> impl Future<Output = Result<Reply, CallError>> + Send;
}

/// What one attempt at a step ended with.
enum Answer {
    Reply(Reply),
    Timeout,
    Error(CallError),
}

async fn attempt<T: Transport>(transport: &T, step: &Step, command: Command) -> Answer {
    match tokio::time::timeout(step.timeout, transport.call(step, command)).await {
        Ok(Ok(reply)) => Answer::Reply(reply),
        Ok(Err(e)) => Answer::Error(e),
        Err(_) => Answer::Timeout,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The final decision before it is stamped with a time.
struct Verdict {
    status: Status,
    reason: Option<String>,
    detail: Option<String>,
}

/// Outcome of running a saga that was not interrupted.
#[derive(Debug)]
pub enum SagaOutcome {
    /// The payment reached a final result, to be published.
    Finished(PaymentResult),
    /// The orchestrator is stopping before the payment finished; leave it unacked.
    Interrupted,
}

/// Runs `request` through `workflow` and returns its result.
pub async fn run<T: Transport>(
    request: &PaymentRequest,
    workflow: &Workflow,
    transport: &T,
) -> SagaOutcome {
    let mut context = Map::new();
    let mut records = Vec::new();
    let mut to_compensate: Vec<&Step> = Vec::new();
    // The merchant's settlement: from the last approved step whose reply carried one.
    let mut settlement: Option<Money> = None;
    let mut verdict = Verdict {
        status: Status::Completed,
        reason: None,
        detail: None,
    };

    for step in workflow.steps() {
        let span = tracing::info_span!("step", step = %step.name);
        let command = Command {
            command_id: Command::id_for(request.payment_id, &step.name, Action::Execute),
            payment_id: request.payment_id,
            step: step.name.clone(),
            action: Action::Execute,
            payment: PaymentView::of(request, step.card_number),
            context: context.clone(),
        };
        let started = Instant::now();
        let answer = attempt(transport, step, command)
            .instrument(span.clone())
            .await;
        let duration_ms = millis(started.elapsed());
        let mut record = StepRecord::new(step.name.clone(), StepOutcome::Approved, 1, duration_ms);
        let _entered = span.enter();
        match answer {
            Answer::Reply(reply) => match reply.outcome {
                ReplyOutcome::Approved => {
                    info!(duration_ms, "step approved");
                    if let Some(money) = reply
                        .data
                        .get("settlement")
                        .and_then(|s| serde_json::from_value::<Money>(s.clone()).ok())
                    {
                        settlement = Some(money);
                    }
                    context.insert(step.name.clone(), Value::Object(reply.data));
                    if step.compensate {
                        to_compensate.push(step);
                    }
                    records.push(record);
                    continue;
                }
                ReplyOutcome::Declined => {
                    let reason = reply.reason.unwrap_or_else(|| "declined".into());
                    info!(reason = %reason, "step declined");
                    record.outcome = StepOutcome::Declined;
                    record.reason = Some(reason.clone());
                    verdict = Verdict {
                        status: Status::Declined,
                        detail: Some(
                            reply
                                .detail
                                .unwrap_or_else(|| format!("{} declined the payment", step.name)),
                        ),
                        reason: Some(reason),
                    };
                }
                ReplyOutcome::Error => {
                    let reason = reply.reason.unwrap_or_else(|| "error".into());
                    warn!(reason = %reason, "step failed with a service error");
                    record.outcome = StepOutcome::Failed;
                    record.reason = Some("service_error".into());
                    verdict = Verdict {
                        status: Status::Failed,
                        reason: Some("service_error".into()),
                        detail: Some(format!(
                            "{} reported an error: {}{}",
                            step.name,
                            reason,
                            reply.detail.map(|d| format!(" ({d})")).unwrap_or_default()
                        )),
                    };
                }
            },
            Answer::Timeout => {
                warn!(timeout_ms = millis(step.timeout), "step timed out");
                record.outcome = StepOutcome::Failed;
                record.reason = Some("step_timeout".into());
                verdict = Verdict {
                    status: Status::Failed,
                    reason: Some("step_timeout".into()),
                    detail: Some(format!(
                        "{} did not answer within {} ms",
                        step.name,
                        millis(step.timeout)
                    )),
                };
            }
            Answer::Error(CallError::ShuttingDown) => return SagaOutcome::Interrupted,
            Answer::Error(e) => {
                warn!(error = %e, "step could not be sent");
                record.outcome = StepOutcome::Failed;
                record.reason = Some("broker_error".into());
                verdict = Verdict {
                    status: Status::Failed,
                    reason: Some("broker_error".into()),
                    detail: Some(format!("{}: {e}", step.name)),
                };
            }
        }
        records.push(record);
        break;
    }

    if verdict.status != Status::Completed {
        for step in to_compensate.into_iter().rev() {
            match compensate(request, step, &context, transport).await {
                Some(record) => records.push(record),
                None => return SagaOutcome::Interrupted,
            }
        }
    }

    let settlement = settlement.filter(|_| verdict.status == Status::Completed);
    SagaOutcome::Finished(PaymentResult {
        payment_id: request.payment_id,
        status: verdict.status,
        reason: verdict.reason,
        detail: verdict.detail,
        steps: records,
        settlement,
        finished_at: now_rfc3339(),
    })
}

/// Undoes one approved step; `None` when interrupted by shutdown.
async fn compensate<T: Transport>(
    request: &PaymentRequest,
    step: &Step,
    context: &Map<String, Value>,
    transport: &T,
) -> Option<StepRecord> {
    let span = tracing::info_span!("compensation", step = %step.name);
    let command = Command {
        command_id: Command::id_for(request.payment_id, &step.name, Action::Compensate),
        payment_id: request.payment_id,
        step: step.name.clone(),
        action: Action::Compensate,
        payment: PaymentView::of(request, step.card_number),
        context: context.clone(),
    };
    let started = Instant::now();
    let answer = attempt(transport, step, command)
        .instrument(span.clone())
        .await;
    let mut record = StepRecord::new(
        step.name.clone(),
        StepOutcome::Compensated,
        1,
        millis(started.elapsed()),
    );
    let _entered = span.enter();
    let failure = match answer {
        Answer::Reply(reply) if reply.outcome == ReplyOutcome::Approved => None,
        Answer::Reply(reply) => Some(
            reply
                .reason
                .unwrap_or_else(|| "compensation_refused".into()),
        ),
        Answer::Timeout => Some("step_timeout".into()),
        Answer::Error(CallError::ShuttingDown) => return None,
        Answer::Error(_) => Some("broker_error".into()),
    };
    match failure {
        None => info!("step compensated"),
        Some(reason) => {
            tracing::error!(reason = %reason, "compensation failed; an operator must check this step");
            record.outcome = StepOutcome::CompensationFailed;
            record.reason = Some(reason);
        }
    }
    Some(record)
}

/// The current UTC time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A `rejected` result for a request that failed validation.
pub fn rejected(payment_id: uuid::Uuid, detail: String) -> PaymentResult {
    PaymentResult {
        payment_id,
        status: Status::Rejected,
        reason: Some("invalid_request".into()),
        detail: Some(detail),
        steps: Vec::new(),
        settlement: None,
        finished_at: now_rfc3339(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_contract::{Currency, Limits};
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// How a fake service answers a command: `None` means it never answers.
    type Rule = Box<dyn Fn(&Command) -> Option<Reply> + Send + Sync>;

    /// A fake service landscape: each service answers by a rule, and every command is
    /// recorded so tests can check what was sent.
    #[derive(Default)]
    struct FakeServices {
        rules: HashMap<String, Rule>,
        sent: Mutex<Vec<Command>>,
    }

    impl FakeServices {
        fn on(
            mut self,
            service: &str,
            rule: impl Fn(&Command) -> Option<Reply> + Send + Sync + 'static,
        ) -> Self {
            self.rules.insert(service.into(), Box::new(rule));
            self
        }

        fn sent(&self) -> Vec<Command> {
            self.sent.lock().unwrap().clone()
        }
    }

    impl Transport for FakeServices {
        async fn call(&self, step: &Step, command: Command) -> Result<Reply, CallError> {
            self.sent.lock().unwrap().push(command.clone());
            let reply = match self.rules.get(&step.service) {
                Some(rule) => rule(&command),
                None => Some(Reply::approved(command.command_id.clone(), Map::new())),
            };
            match reply {
                Some(reply) => Ok(reply),
                // A service that never answers.
                None => std::future::pending().await,
            }
        }
    }

    fn request() -> PaymentRequest {
        let body = br#"{"payment_id":"6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10","merchant_id":"m-1",
            "customer_id":"c-1","amount":{"minor":1999,"currency":"EUR"},"merchant_currency":"USD",
            "card":{"number":"4242424242424242","expiry":"12/30"}}"#;
        PaymentRequest::parse(body, &Limits::default()).unwrap()
    }

    fn finished(outcome: SagaOutcome) -> PaymentResult {
        match outcome {
            SagaOutcome::Finished(result) => result,
            SagaOutcome::Interrupted => panic!("saga was interrupted"),
        }
    }

    fn data(json: serde_json::Value) -> Map<String, Value> {
        json.as_object().unwrap().clone()
    }

    fn transaction_settles() -> impl Fn(&Command) -> Option<Reply> + Send + Sync {
        |c: &Command| {
            Some(Reply::approved(
                c.command_id.clone(),
                data(serde_json::json!({"settlement": {"minor": 2150, "currency": "USD"}})),
            ))
        }
    }

    fn outcomes(result: &PaymentResult) -> Vec<(String, StepOutcome)> {
        result
            .steps
            .iter()
            .map(|s| (s.step.clone(), s.outcome))
            .collect()
    }

    #[tokio::test]
    async fn every_step_approves_and_the_settlement_is_reported() {
        let services = FakeServices::default()
            .on("authorization", |c| {
                Some(Reply::approved(
                    c.command_id.clone(),
                    data(serde_json::json!({"hold_id": "h-1"})),
                ))
            })
            .on("transaction", transaction_settles());
        let result = finished(run(&request(), &Workflow::builtin(), &services).await);
        assert_eq!(result.status, Status::Completed);
        assert_eq!(result.reason, None);
        assert_eq!(
            result.settlement,
            Some(Money {
                minor: 2150,
                currency: Currency::parse("USD").unwrap()
            })
        );
        assert_eq!(
            outcomes(&result),
            [
                ("authorization".into(), StepOutcome::Approved),
                ("risk".into(), StepOutcome::Approved),
                ("pci".into(), StepOutcome::Approved),
                ("transaction".into(), StepOutcome::Approved),
            ]
        );
        let sent = services.sent();
        let ids: Vec<_> = sent.iter().map(|c| c.command_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10:authorization",
                "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10:risk",
                "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10:pci",
                "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10:transaction",
            ]
        );
        // Later steps see earlier steps' output.
        assert_eq!(sent[3].context["authorization"]["hold_id"], "h-1");
    }

    #[tokio::test]
    async fn only_steps_trusted_with_the_card_number_receive_it() {
        let services = FakeServices::default();
        finished(run(&request(), &Workflow::builtin(), &services).await);
        for command in services.sent() {
            let json = serde_json::to_string(&command).unwrap();
            let trusted = command.step == "authorization" || command.step == "risk";
            assert_eq!(
                json.contains("4242424242424242"),
                trusted,
                "{}",
                command.step
            );
            assert_eq!(command.payment.card.last4, "4242");
        }
    }

    #[tokio::test]
    async fn a_decline_after_authorization_voids_the_hold() {
        let services = FakeServices::default().on("risk", |c| {
            Some(Reply::declined(
                c.command_id.clone(),
                "high_risk",
                "too risky",
            ))
        });
        let result = finished(run(&request(), &Workflow::builtin(), &services).await);
        assert_eq!(result.status, Status::Declined);
        assert_eq!(result.reason.as_deref(), Some("high_risk"));
        assert_eq!(result.detail.as_deref(), Some("too risky"));
        assert_eq!(result.settlement, None);
        assert_eq!(
            outcomes(&result),
            [
                ("authorization".into(), StepOutcome::Approved),
                ("risk".into(), StepOutcome::Declined),
                ("authorization".into(), StepOutcome::Compensated),
            ]
        );
        let last = services.sent().pop().unwrap();
        assert_eq!(last.action, Action::Compensate);
        assert_eq!(
            last.command_id,
            "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10:authorization:compensate"
        );
    }

    #[tokio::test]
    async fn a_decline_at_the_first_step_compensates_nothing() {
        let services = FakeServices::default().on("authorization", |c| {
            Some(Reply::declined(c.command_id.clone(), "card_declined", "no"))
        });
        let result = finished(run(&request(), &Workflow::builtin(), &services).await);
        assert_eq!(result.status, Status::Declined);
        assert_eq!(result.steps.len(), 1);
        assert_eq!(services.sent().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_service_times_out_and_earlier_steps_are_compensated() {
        let services = FakeServices::default().on("pci", |_| None);
        let result = finished(run(&request(), &Workflow::builtin(), &services).await);
        assert_eq!(result.status, Status::Failed);
        assert_eq!(result.reason.as_deref(), Some("step_timeout"));
        assert!(result
            .detail
            .unwrap()
            .contains("pci did not answer within 10000 ms"));
        let pci = &result.steps[2];
        assert_eq!(
            (pci.outcome, pci.duration_ms),
            (StepOutcome::Failed, 10_000)
        );
        assert_eq!(result.steps[3].outcome, StepOutcome::Compensated);
    }

    #[tokio::test]
    async fn a_service_error_fails_the_payment() {
        let services = FakeServices::default().on("transaction", |c| {
            Some(Reply::error(
                c.command_id.clone(),
                "ledger_unavailable",
                "db down",
            ))
        });
        let result = finished(run(&request(), &Workflow::builtin(), &services).await);
        assert_eq!(result.status, Status::Failed);
        assert_eq!(result.reason.as_deref(), Some("service_error"));
        assert!(result.detail.unwrap().contains("ledger_unavailable"));
        assert_eq!(
            result.steps.last().unwrap().outcome,
            StepOutcome::Compensated
        );
    }

    #[tokio::test]
    async fn a_refused_compensation_is_reported_not_hidden() {
        let services = FakeServices::default()
            .on("risk", |c| {
                Some(Reply::declined(c.command_id.clone(), "high_risk", "x"))
            })
            .on("authorization", |c| match c.action {
                Action::Execute => Some(Reply::approved(c.command_id.clone(), Map::new())),
                Action::Compensate => {
                    Some(Reply::error(c.command_id.clone(), "hold_store_down", "x"))
                }
            });
        let result = finished(run(&request(), &Workflow::builtin(), &services).await);
        assert_eq!(result.status, Status::Declined);
        let last = result.steps.last().unwrap();
        assert_eq!(last.outcome, StepOutcome::CompensationFailed);
        assert_eq!(last.reason.as_deref(), Some("hold_store_down"));
    }

    #[tokio::test]
    async fn shutdown_interrupts_without_a_result() {
        struct Stopping;
        impl Transport for Stopping {
            async fn call(&self, _: &Step, _: Command) -> Result<Reply, CallError> {
                Err(CallError::ShuttingDown)
            }
        }
        let outcome = run(&request(), &Workflow::builtin(), &Stopping).await;
        assert!(matches!(outcome, SagaOutcome::Interrupted));
    }
}
