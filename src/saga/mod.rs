//! The saga: runs one payment through the workflow's steps, resuming from the journal,
//! applying each step's failure ladder, compensating what was done when a step declines
//! or fails for good, and deciding the final result.
//!
//! It holds no business logic (services decide) and no broker code: it reaches services
//! through the [`Transport`] trait and remembers through the [`SagaLog`] trait, so the
//! same logic runs against RabbitMQ and the journal in production and against fakes in
//! unit tests with paused time.
//!
//! The ladder of one step (all per step in the workflow file):
//! 1. the circuit breaker of the step's service: open → fail fast, nothing sent;
//! 2. a timeout per attempt; transient failures (timeout, `error` reply) are retried with
//!    exponential backoff and jitter, always with the same `command_id`; a `declined`
//!    reply is final;
//! 3. a fallback, for steps without side effects: another service's queue, or a declared
//!    degraded approval under an amount;
//! 4. parking: the payment waits in a delay queue and resumes here later;
//! 5. past the parking limit: `failed` (`service_unavailable`), earlier steps compensated.
//!
//! Every decision is recorded before it is acted on, first writer wins: a replay, or a
//! second replica racing on the same payment, continues with the recorded decision.
//!
//! `env.rs` is what the saga runs with (the traits, the environment, its clock, the
//! events); `observer.rs` what it tells as it runs (the metrics listen); `decide.rs` what
//! a step's attempts mean, as plain functions; `course.rs` what the decided steps mean
//! for the payment (context, what to undo, the result), plain too; `step.rs` one step's
//! command through its ladder and the carrying out of those decisions; `compensate.rs`
//! undoing and handing to operators; this file the run of a payment: stages, steps,
//! compensations, the result recorded.

mod compensate;
mod course;
mod decide;
mod env;
mod observer;
mod step;
#[cfg(test)]
#[path = "../saga_tests.rs"]
mod tests;

use crate::crash;
use crate::records::{JournalEntry, JournalError, PaymentSummary, SagaRecord};
use crate::workflow::Step;
use baton_contract::{
    Action, CardKeys, Command, PaymentRequest, PaymentResult, Status, StepOutcome, StepRecord,
};
use compensate::*;
use course::Course;
pub use decide::ABANDONED;
use decide::{entry, millis, Mode};
pub use env::*;
pub use observer::*;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use step::*;
use tracing::{error, info, warn, Instrument};
use uuid::Uuid;

/// How a saga run ended.
#[derive(Debug)]
pub enum SagaOutcome {
    /// The payment has its final result, to be published (again, if it was already
    /// decided). `dead_letter` names the reason when operators must also get a copy.
    Finished {
        /// The recorded result.
        result: PaymentResult,
        /// `Some(reason)`: also copy the request to the dead-letter queue.
        dead_letter: Option<String>,
    },
    /// A service is unavailable: park the request in delay tier `tier`, ack it, and let
    /// it come back later.
    Park {
        /// Delay tier index.
        tier: usize,
        /// The step that waits.
        step: String,
        /// Why.
        reason: String,
    },
    /// Stopping, or the broker connection was lost: leave the request unacked.
    Interrupted,
    /// The journal failed: the payment cannot safely go on now.
    JournalUnavailable {
        /// What failed.
        error: String,
        /// Worth trying again later (a database error), or not (a corrupt record).
        transient: bool,
    },
    /// The payment id is already in the journal for a payment with other content
    /// (amount, parties, card): this request must not touch that payment.
    Reused(String),
}

/// A `rejected` result for a request that failed validation, finished now by `clock`.
pub fn rejected(payment_id: Uuid, detail: String, clock: Clock) -> PaymentResult {
    PaymentResult {
        payment_id,
        status: Status::Rejected,
        reason: Some("invalid_request".into()),
        detail: Some(detail),
        steps: Vec::new(),
        settlement: None,
        finished_at: clock.now_rfc3339(),
    }
}

fn command(
    source: Source<'_>,
    step: &Step,
    action: Action,
    context: &Map<String, Value>,
    card_keys: Option<&CardKeys>,
) -> Command {
    let payment_id = source.payment_id();
    Command {
        command_id: Command::id_for(payment_id, &step.name, action),
        payment_id,
        step: step.name.clone(),
        action,
        // Only what the step's `card` allows: the number for authorization, a
        // fingerprint for risk, the last four digits for the others.
        payment: source.view(step, card_keys),
        context: context.clone(),
    }
}

/// Runs `request` through the workflow, from wherever the journal says it stands.
pub async fn run<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    request: &PaymentRequest,
) -> SagaOutcome {
    let payment_id = request.payment_id;
    let summary = PaymentSummary::of(request);
    let saga = match env.log.begin(payment_id, &summary).await {
        Ok(saga) => saga,
        Err(e) => return journal_failed(env, e),
    };
    if !summary.same_payment(&saga.summary) {
        warn!("payment id reused for a different payment; refusing it");
        return SagaOutcome::Reused(format!(
            "payment_id: {payment_id} is already used by a payment with another amount, \
             merchant, customer or card; use a new payment_id"
        ));
    }
    if let Some(result) = saga.result.clone() {
        info!("payment already decided; publishing the recorded result again");
        let dead_letter = dead_letter_reason(&result);
        return SagaOutcome::Finished {
            result,
            dead_letter,
        };
    }
    let _live = env.live.hold(payment_id);
    drive(env, Source::Request(request), &saga, Mode::Live).await
}

/// Drives a saga that nobody can run any more to an end, from the journal alone: its
/// request is gone (dead-lettered past the delivery limit, lost, or no longer valid) and
/// its lease ran out, or an operator settles it. Recorded decisions stand. The first step
/// without one is settled without sending it: a step with side effects that cannot be
/// compensated (a funds transfer) is asked once, with the same command id, what it did
/// (the service answers from its store, or acts now, exactly once); any other is recorded
/// `failed`, reason `abandoned`. Then, as for any failure, what was approved is
/// compensated (an in-doubt compensable step too: its compensation is safe either way),
/// and the result is recorded and returned. Commands carry no card number or fingerprint:
/// the journal has none.
pub async fn abandon<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    saga: &SagaRecord,
    detail: &str,
) -> SagaOutcome {
    if let Some(result) = saga.result.clone() {
        return SagaOutcome::Finished {
            result,
            dead_letter: None,
        };
    }
    let _live = env.live.hold(saga.payment_id);
    let source = Source::Journal(saga.payment_id, &saga.summary);
    drive(env, source, saga, Mode::Abandon(detail)).await
}

/// The saga's loop: each step from its recorded decision, or settled as `mode` says;
/// compensations; the result.
async fn drive<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    source: Source<'_>,
    saga: &SagaRecord,
    mode: Mode<'_>,
) -> SagaOutcome {
    let payment_id = source.payment_id();
    let mut course = Course::new();

    // What conditions read of the payment: the same in both modes, so a sweeper
    // finishing the saga decides a condition as the live run would have.
    let summary = source.summary();
    let steps = env.workflow.steps();
    let mut next = 0;
    while next < steps.len() && course.completing() {
        // A stage: one step, or a group whose steps decide at once (their commands are
        // sent together, each with the context of the stages before).
        let len = match &steps[next].group {
            Some(group) => steps[next..]
                .iter()
                .take_while(|s| s.group.as_ref() == Some(group))
                .count(),
            None => 1,
        };
        let stage = &steps[next..next + len];
        next += len;
        let undecided: Vec<&Step> = stage
            .iter()
            .filter(|s| saga.entry(&s.name, Action::Execute).is_none())
            .collect();
        let context = &course.context;
        let decisions = match undecided.as_slice() {
            // One step (most stages): awaited in place, not boxed by `join_all`.
            [step] => vec![open_step(env, source, step, context, &summary, saga, mode).await],
            group => {
                join_all(
                    group
                        .iter()
                        .map(|step| open_step(env, source, step, context, &summary, saga, mode))
                        .collect(),
                )
                .await
            }
        };
        let mut fresh: HashMap<&str, JournalEntry> = HashMap::new();
        for (step, decision) in undecided.iter().zip(decisions) {
            match decision {
                StepDecision::Recorded(entry) => {
                    fresh.insert(step.name.as_str(), entry);
                }
                // The others' decisions are recorded; the payment resumes from them.
                StepDecision::Leave(outcome) => return outcome,
            }
        }
        for step in stage {
            let decided = match fresh.remove(step.name.as_str()) {
                Some(entry) => entry,
                None => saga
                    .entry(&step.name, Action::Execute)
                    .expect("decided in the journal or just now")
                    .clone(),
            };
            course.step(step, decided);
        }
    }

    for step in course.to_undo() {
        let span = tracing::info_span!("compensation", step = %step.name);
        let decided = match saga.entry(&step.name, Action::Compensate) {
            Some(recorded) => recorded.clone(),
            // Boxed: most payments never compensate, and the state of an await held in
            // place is carried by every payment's future, in flight or not compensating.
            None => match Box::pin(compensate(env, source, step, &course.context).instrument(span))
                .await
            {
                StepDecision::Recorded(entry) => entry,
                StepDecision::Leave(outcome) => return outcome,
            },
        };
        course.compensation(decided);
    }

    let result = course.result(payment_id, env.clock.now_rfc3339());
    match env.log.finish(payment_id, &result).await {
        Ok(result) => {
            env.transport
                .event(SagaEvent::of_result(&result, env.clock.now_rfc3339()));
            let dead_letter = dead_letter_reason(&result);
            SagaOutcome::Finished {
                result,
                dead_letter,
            }
        }
        Err(e) => journal_failed(env, e),
    }
}

/// Decides one step the journal has no decision for: skipped if its condition is false,
/// else run (live) or settled without its request (abandoned).
async fn open_step<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    source: Source<'_>,
    step: &Step,
    context: &Map<String, Value>,
    summary: &PaymentSummary,
    saga: &SagaRecord,
    mode: Mode<'_>,
) -> StepDecision {
    let span = tracing::info_span!("step", step = %step.name);
    let skip = match &step.when {
        Some(when) => !should_run(when, summary, context, &span),
        None => false,
    };
    if skip {
        let record_ = StepRecord::new(step.name.clone(), StepOutcome::Skipped, 0, 0);
        span.in_scope(|| info!(when = %when_source(step), "condition false; step skipped"));
        return record(
            env,
            source.payment_id(),
            entry(step, Action::Execute, record_, None, Map::new()),
        )
        .instrument(span)
        .await;
    }
    settle(env, source, step, context, saga, mode)
        .instrument(span)
        .await
}

/// Runs the futures at once and returns their outputs in order. Each poll polls them in
/// order, so the first effects of each (a publish's frames queued on a channel) happen
/// in order too.
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// Whether a step with condition `when` runs for this payment. A condition that cannot
/// be evaluated (an earlier step's data lacks the field it reads, or holds another type)
/// runs the step: a check is never skipped by accident. The error is logged.
fn should_run(
    when: &crate::condition::Condition,
    summary: &PaymentSummary,
    context: &Map<String, Value>,
    span: &tracing::Span,
) -> bool {
    match when.evaluate(summary, context) {
        Ok(run) => run,
        Err(e) => {
            let _entered = span.enter();
            warn!(when = %when.source(), error = %e, "condition could not be evaluated; running the step");
            true
        }
    }
}

fn when_source(step: &Step) -> &str {
    step.when.as_ref().map(|w| w.source()).unwrap_or_default()
}

fn dead_letter_reason(result: &PaymentResult) -> Option<String> {
    (result.reason.as_deref() == Some("service_unavailable"))
        .then(|| "service_unavailable".to_owned())
}

fn journal_failed<T, L, O: SagaObserver>(env: &SagaEnv<T, L, O>, e: JournalError) -> SagaOutcome {
    env.observer.journal_failed();
    error!(error = %e, "saga journal unavailable");
    SagaOutcome::JournalUnavailable {
        transient: e.is_transient(),
        error: e.to_string(),
    }
}

enum StepDecision {
    /// The decision as stored in the journal.
    Recorded(JournalEntry),
    /// Stop here and let the orchestrator act (park, leave unacked, journal down).
    Leave(SagaOutcome),
}

/// Records `entry`, returning the stored decision (or what to do if the journal fails).
async fn record<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    payment_id: Uuid,
    entry: JournalEntry,
) -> StepDecision {
    match env.log.record(payment_id, &entry).await {
        Ok(stored) => {
            crash::point("after_step_recorded");
            env.transport.event(SagaEvent::of_entry(
                payment_id,
                &stored,
                env.clock.now_rfc3339(),
            ));
            StepDecision::Recorded(stored)
        }
        Err(e) => StepDecision::Leave(journal_failed(env, e)),
    }
}
