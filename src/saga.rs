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

use crate::breaker::Breakers;
use crate::crash;
use crate::metrics::Metrics;
use crate::records::{JournalEntry, JournalError, PaymentSummary, SagaRecord};
use crate::workflow::{Fallback, RetryPolicy, Step, Workflow};
use baton_contract::{
    Action, CardKeys, Command, Money, PaymentRequest, PaymentResult, PaymentView, Reply,
    ReplyOutcome, Status, StepOutcome, StepRecord,
};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{error, info, warn, Instrument};
use uuid::Uuid;

/// Why a command got no usable reply (other than a timeout, which the saga measures).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The command could not be published (queue refused it, message nacked).
    #[error("could not send the command: {0}")]
    Send(String),
    /// The orchestrator is stopping or lost its connection; the payment stays unacked
    /// and is redelivered.
    #[error("the orchestrator is shutting down or lost its broker connection")]
    ShuttingDown,
}

/// Something an operator must look at: a compensation that kept failing, or a step whose
/// effect could not be learned.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttentionItem {
    /// The payment.
    pub payment_id: Uuid,
    /// The step concerned.
    pub step: String,
    /// The service the step's commands go to.
    pub service: String,
    /// `compensation_failed` or `in_doubt`.
    pub kind: String,
    /// The command id the operator can look up in the service.
    pub command_id: String,
    /// What went wrong.
    pub error: String,
    /// When Baton gave up, RFC 3339.
    pub at: String,
    /// The command to send again to settle it (`baton attention replay`), card number
    /// removed; absent when re-sending is not safe (in doubt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
}

/// How the saga reaches services.
pub trait Transport: Send + Sync {
    /// Sends `command` to `service`'s queue and resolves with its reply. The saga applies
    /// timeouts around this call.
    fn call(
        &self,
        service: &str,
        command: Command,
    ) -> impl Future<Output = Result<Reply, CallError>> + Send;

    /// Hands an item to operators (the attention queue). Must not lose it.
    fn attention(&self, item: AttentionItem) -> impl Future<Output = Result<(), CallError>> + Send;

    /// Publishes a saga event for audit consumers: fire and forget, in order, never
    /// blocking or failing the payment.
    fn event(&self, event: SagaEvent);
}

/// What happened in a saga, published as `event.<step>.<outcome>` (and
/// `event.payment.<status>` for the final result) on the payments exchange.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SagaEvent {
    /// The payment.
    pub payment_id: Uuid,
    /// The step, or `payment` for the final result.
    pub step: String,
    /// `execute`, `compensate`, or `result`.
    pub action: String,
    /// The step outcome (`approved`, `declined`, `failed`, `skipped`, `compensated`,
    /// `compensation_failed`) or the payment status.
    pub outcome: String,
    /// Reason code, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The step's result line (absent for the final event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<StepRecord>,
    /// When, RFC 3339.
    pub at: String,
}

impl SagaEvent {
    /// The routing key: `event.<step>.<outcome>`.
    pub fn routing_key(&self) -> String {
        format!("event.{}.{}", self.step, self.outcome)
    }

    fn of_entry(payment_id: Uuid, entry: &JournalEntry) -> Self {
        Self {
            payment_id,
            step: entry.step.clone(),
            action: crate::records::action_name(entry.action).into(),
            outcome: outcome_name(entry.record.outcome).into(),
            reason: entry.record.reason.clone(),
            record: Some(entry.record.clone()),
            at: now_rfc3339(),
        }
    }

    pub(crate) fn of_result(result: &PaymentResult) -> Self {
        Self {
            payment_id: result.payment_id,
            step: "payment".into(),
            action: "result".into(),
            outcome: result.status.as_str().into(),
            reason: result.reason.clone(),
            record: None,
            at: now_rfc3339(),
        }
    }
}

/// Where the saga records its decisions (the journal; an in-memory fake in tests).
pub trait SagaLog: Send + Sync {
    /// Creates the payment's record if absent and returns it as it stands.
    fn begin(
        &self,
        payment_id: Uuid,
        summary: &PaymentSummary,
    ) -> impl Future<Output = Result<SagaRecord, JournalError>> + Send;
    /// Records a decision; returns the one actually stored (an earlier one wins).
    fn record(
        &self,
        payment_id: Uuid,
        entry: &JournalEntry,
    ) -> impl Future<Output = Result<JournalEntry, JournalError>> + Send;
    /// Records the final result; returns the one actually stored.
    fn finish(
        &self,
        payment_id: Uuid,
        result: &PaymentResult,
    ) -> impl Future<Output = Result<PaymentResult, JournalError>> + Send;
    /// Counts one more parking and returns the new count; the payment should be back
    /// within `back_within`.
    fn park(
        &self,
        payment_id: Uuid,
        back_within: Duration,
    ) -> impl Future<Output = Result<u32, JournalError>> + Send;
}

/// What the saga runs with: the workflow and everything shared between payments.
pub struct SagaEnv<T, L> {
    /// The steps and their policies.
    pub workflow: Workflow,
    /// The way to the services.
    pub transport: T,
    /// The journal.
    pub log: L,
    /// One circuit breaker per service.
    pub breakers: Breakers,
    /// Bounds the commands in flight toward each service from this process, so a service
    /// that recovers is not stampeded by every waiting payment at once.
    gates: HashMap<String, Semaphore>,
    /// Metrics.
    pub metrics: Metrics,
    /// The keys that make card fingerprints for `card = "fingerprint"` steps (the first
    /// key fingerprints). `None` from [`SagaEnv::new`]; the orchestrator sets them after
    /// [`Workflow::check_card_keys`].
    pub card_keys: Option<CardKeys>,
    /// The payments this process is running now: their journal leases are renewed.
    pub live: LiveSagas,
}

/// The set of payments a process is running, shared with whatever renews their leases.
#[derive(Clone, Debug, Default)]
pub struct LiveSagas(std::sync::Arc<std::sync::Mutex<HashMap<Uuid, usize>>>);

impl LiveSagas {
    /// Counts `payment_id` as running until the guard is dropped (a payment may run twice
    /// at once in one process: a redelivered copy beside a client's resend).
    pub fn hold(&self, payment_id: Uuid) -> LiveGuard {
        *self
            .0
            .lock()
            .expect("live set")
            .entry(payment_id)
            .or_default() += 1;
        LiveGuard {
            live: self.clone(),
            payment_id,
        }
    }

    /// The payments running now.
    pub fn ids(&self) -> Vec<Uuid> {
        self.0.lock().expect("live set").keys().copied().collect()
    }
}

/// Keeps a payment in [`LiveSagas`] while it lives.
#[derive(Debug)]
pub struct LiveGuard {
    live: LiveSagas,
    payment_id: Uuid,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut live = self.live.0.lock().expect("live set");
        if let Some(n) = live.get_mut(&self.payment_id) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.payment_id);
            }
        }
    }
}

/// What commands are built from: the request itself (a payment received), or only the
/// journal's summary (a saga finished without its request, which has no card number).
#[derive(Clone, Copy)]
enum Source<'a> {
    Request(&'a PaymentRequest),
    Journal(Uuid, &'a PaymentSummary),
}

impl Source<'_> {
    fn payment_id(&self) -> Uuid {
        match self {
            Source::Request(request) => request.payment_id,
            Source::Journal(id, _) => *id,
        }
    }

    /// The payment as the journal keeps it (no card number): what conditions read.
    fn summary(&self) -> PaymentSummary {
        match self {
            Source::Request(request) => PaymentSummary::of(request),
            Source::Journal(_, summary) => (*summary).clone(),
        }
    }

    fn amount_minor(&self) -> u64 {
        match self {
            Source::Request(request) => request.amount.minor,
            Source::Journal(_, summary) => summary.amount.minor,
        }
    }

    /// The payment as `step` may see it. From the journal: no number, no fingerprint,
    /// no expiry — only what finishing needs (compensations, asking a service what it did).
    fn view(&self, step: &Step, keys: Option<&CardKeys>) -> PaymentView {
        match self {
            Source::Request(request) => PaymentView::of(request, step.card, keys),
            Source::Journal(_, summary) => PaymentView {
                merchant_id: summary.merchant_id.clone(),
                customer_id: summary.customer_id.clone(),
                amount: summary.amount,
                merchant_currency: summary.merchant_currency,
                card: baton_contract::CardView {
                    number: None,
                    fingerprint: None,
                    last4: summary.card_last4.clone(),
                    expiry: String::new(),
                },
            },
        }
    }
}

/// What to do with a step the journal has no decision for.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// Run it: send its command through its ladder.
    Live,
    /// Nobody can run the payment any more: settle the step without its request (see
    /// [`abandon`]), with this detail.
    Abandon(&'a str),
}

impl<T: Transport, L: SagaLog> SagaEnv<T, L> {
    /// An environment for `workflow`, with closed breakers whose state `metrics` exports.
    pub fn new(workflow: Workflow, transport: T, log: L, metrics: Metrics) -> Self {
        let gauge = metrics.breaker_state.clone();
        for (service, _) in workflow.breakers() {
            gauge.with_label_values(&[service]).set(0);
        }
        let breakers = Breakers::new(
            workflow.breakers(),
            Some(std::sync::Arc::new(move |service: &str, state| {
                gauge.with_label_values(&[service]).set(state as i64);
            })),
        );
        let gates = workflow
            .services()
            .into_iter()
            .map(|s| {
                (
                    s.to_owned(),
                    Semaphore::new(workflow.max_in_flight_per_service()),
                )
            })
            .collect();
        Self {
            workflow,
            transport,
            log,
            breakers,
            gates,
            metrics,
            card_keys: None,
            live: LiveSagas::default(),
        }
    }
}

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

/// The final decision before it is stamped with a time.
struct Verdict {
    status: Status,
    reason: Option<String>,
    detail: Option<String>,
}

/// What trying a service through its ladder gave.
enum Ladder {
    /// A final answer (approved or declined).
    Answer {
        reply: Reply,
        attempts: u32,
    },
    /// No final answer: retries spent or breaker open.
    Unavailable {
        attempts: u32,
        /// Some attempt timed out on a side-effecting step: it may have happened.
        in_doubt: bool,
        last_error: String,
    },
    Interrupted,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The current UTC time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A `rejected` result for a request that failed validation.
pub fn rejected(payment_id: Uuid, detail: String) -> PaymentResult {
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

fn entry(
    step: &Step,
    action: Action,
    record: StepRecord,
    detail: Option<String>,
    data: Map<String, Value>,
) -> JournalEntry {
    JournalEntry {
        step: step.name.clone(),
        action,
        record,
        detail,
        data,
        recorded_at: String::new(),
    }
}

/// Runs `request` through the workflow, from wherever the journal says it stands.
pub async fn run<T: Transport, L: SagaLog>(
    env: &SagaEnv<T, L>,
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

/// Reason of a saga finished without its request (see [`abandon`]).
pub const ABANDONED: &str = "abandoned";

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
pub async fn abandon<T: Transport, L: SagaLog>(
    env: &SagaEnv<T, L>,
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
async fn drive<T: Transport, L: SagaLog>(
    env: &SagaEnv<T, L>,
    source: Source<'_>,
    saga: &SagaRecord,
    mode: Mode<'_>,
) -> SagaOutcome {
    let payment_id = source.payment_id();
    let mut context = Map::new();
    let mut applied: Vec<JournalEntry> = Vec::new();
    let mut to_compensate: Vec<&Step> = Vec::new();
    let mut verdict = Verdict {
        status: Status::Completed,
        reason: None,
        detail: None,
    };

    // What conditions read of the payment: the same in both modes, so a sweeper
    // finishing the saga decides a condition as the live run would have.
    let summary = source.summary();
    let steps = env.workflow.steps();
    let mut next = 0;
    while next < steps.len() {
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
        let decisions = join_all(
            undecided
                .iter()
                .map(|step| decide(env, source, step, &context, &summary, saga, mode))
                .collect(),
        )
        .await;
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
            let span = tracing::info_span!("step", step = %step.name);
            let decided = match fresh.remove(step.name.as_str()) {
                Some(entry) => entry,
                None => saga
                    .entry(&step.name, Action::Execute)
                    .expect("decided in the journal or just now")
                    .clone(),
            };
            let _entered = span.enter();
            let outcome = decided.record.outcome;
            match outcome {
                StepOutcome::Approved => {
                    context.insert(step.name.clone(), Value::Object(decided.data.clone()));
                    if step.compensate {
                        to_compensate.push(step);
                    }
                }
                StepOutcome::Declined | StepOutcome::Failed => {
                    let reason = decided
                        .record
                        .reason
                        .clone()
                        .unwrap_or_else(|| outcome_name(outcome).into());
                    // In a group several may decline at once: the first in file order
                    // gives the result.
                    if verdict.status != Status::Completed {
                        applied.push(decided);
                        continue;
                    }
                    verdict = Verdict {
                        status: if outcome == StepOutcome::Declined {
                            Status::Declined
                        } else {
                            Status::Failed
                        },
                        detail: decided
                            .detail
                            .clone()
                            .or_else(|| Some(format!("{} {}", step.name, outcome_name(outcome)))),
                        reason: Some(reason),
                    };
                    // An in-doubt step that failed for good may still have acted: undo it
                    // too if it can be undone (its compensation is safe either way).
                    if outcome == StepOutcome::Failed && step.compensate {
                        to_compensate.push(step);
                    }
                }
                // Skipped: no command went out, so nothing to undo and no data for later
                // steps (`steps.<name>` is absent from their conditions and commands).
                StepOutcome::Skipped
                | StepOutcome::Compensated
                | StepOutcome::CompensationFailed => {}
            }
            applied.push(decided);
        }
        if verdict.status != Status::Completed {
            break;
        }
    }

    if verdict.status != Status::Completed {
        for step in to_compensate.into_iter().rev() {
            let span = tracing::info_span!("compensation", step = %step.name);
            let decided = match saga.entry(&step.name, Action::Compensate) {
                Some(recorded) => recorded.clone(),
                None => match compensate(env, source, step, &context)
                    .instrument(span)
                    .await
                {
                    StepDecision::Recorded(entry) => entry,
                    StepDecision::Leave(outcome) => return outcome,
                },
            };
            applied.push(decided);
        }
    }

    let settlement = if verdict.status == Status::Completed {
        applied
            .iter()
            .filter_map(|e| e.data.get("settlement"))
            .filter_map(|s| serde_json::from_value::<Money>(s.clone()).ok())
            .next_back()
    } else {
        None
    };
    let result = PaymentResult {
        payment_id,
        status: verdict.status,
        reason: verdict.reason,
        detail: verdict.detail,
        steps: applied.into_iter().map(|e| e.record).collect(),
        settlement,
        finished_at: now_rfc3339(),
    };
    match env.log.finish(payment_id, &result).await {
        Ok(result) => {
            env.transport.event(SagaEvent::of_result(&result));
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
async fn decide<T: Transport, L: SagaLog>(
    env: &SagaEnv<T, L>,
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
    match mode {
        Mode::Live => {
            execute(env, source, step, context, saga)
                .instrument(span)
                .await
        }
        Mode::Abandon(detail) => {
            give_up(env, source, step, context, detail)
                .instrument(span)
                .await
        }
    }
}

/// Runs the futures at once and returns their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
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

fn journal_failed<T, L>(env: &SagaEnv<T, L>, e: JournalError) -> SagaOutcome {
    env.metrics.journal_errors.inc();
    error!(error = %e, "saga journal unavailable");
    SagaOutcome::JournalUnavailable {
        transient: e.is_transient(),
        error: e.to_string(),
    }
}

fn outcome_name(outcome: StepOutcome) -> &'static str {
    match outcome {
        StepOutcome::Approved => "approved",
        StepOutcome::Declined => "declined",
        StepOutcome::Failed => "failed",
        StepOutcome::Compensated => "compensated",
        StepOutcome::CompensationFailed => "compensation_failed",
        StepOutcome::Skipped => "skipped",
    }
}

enum StepDecision {
    /// The decision as stored in the journal.
    Recorded(JournalEntry),
    /// Stop here and let the orchestrator act (park, leave unacked, journal down).
    Leave(SagaOutcome),
}

/// Records `entry`, returning the stored decision (or what to do if the journal fails).
async fn record<T: Transport, L: SagaLog>(
    env: &SagaEnv<T, L>,
    payment_id: Uuid,
    entry: JournalEntry,
) -> StepDecision {
    match env.log.record(payment_id, &entry).await {
        Ok(stored) => {
            crash::point("after_step_recorded");
            env.transport
                .event(SagaEvent::of_entry(payment_id, &stored));
            StepDecision::Recorded(stored)
        }
        Err(e) => StepDecision::Leave(journal_failed(env, e)),
    }
}

/// Runs one step's ladder and records the decision.
async fn execute<T: Transport, L: SagaLog>(
    env: &SagaEnv<T, L>,
    source: Source<'_>,
    step: &Step,
    context: &Map<String, Value>,
    saga: &SagaRecord,
) -> StepDecision {
    let started = Instant::now();
    let cmd = command(
        source,
        step,
        Action::Execute,
        context,
        env.card_keys.as_ref(),
    );
    let outcome = ladder(env, step, &step.service, &cmd, &step.retry, true).await;
    let (mut attempts, mut in_doubt, mut last_error) = match outcome {
        Ladder::Answer { reply, attempts } => {
            return record(
                env,
                source.payment_id(),
                answered(env, step, reply, attempts, started, None),
            )
            .await;
        }
        Ladder::Interrupted => return StepDecision::Leave(SagaOutcome::Interrupted),
        Ladder::Unavailable {
            attempts,
            in_doubt,
            last_error,
        } => (attempts, in_doubt, last_error),
    };

    // Fallbacks (never for side-effecting steps: the workflow refuses that).
    match &step.fallback {
        Some(Fallback::Service(alternate)) => {
            env.metrics
                .step_fallbacks
                .with_label_values(&[&step.name, "service"])
                .inc();
            info!(alternate = %alternate, "step unavailable; trying its fallback service");
            match ladder(env, step, alternate, &cmd, &step.retry, true).await {
                Ladder::Answer {
                    reply,
                    attempts: more,
                } => {
                    let entry = answered(
                        env,
                        step,
                        reply,
                        attempts + more,
                        started,
                        Some(alternate.clone()),
                    );
                    return record(env, source.payment_id(), entry).await;
                }
                Ladder::Interrupted => return StepDecision::Leave(SagaOutcome::Interrupted),
                Ladder::Unavailable {
                    attempts: more,
                    in_doubt: doubt,
                    last_error: e,
                } => {
                    attempts += more;
                    in_doubt |= doubt;
                    last_error = e;
                }
            }
        }
        Some(Fallback::Approve { max_amount_minor })
            if source.amount_minor() <= *max_amount_minor =>
        {
            env.metrics
                .step_fallbacks
                .with_label_values(&[&step.name, "degraded"])
                .inc();
            warn!(last_error = %last_error, "step unavailable; approving as a declared degraded decision");
            let mut record_ = StepRecord::new(
                step.name.clone(),
                StepOutcome::Approved,
                attempts,
                millis(started.elapsed()),
            );
            record_.degraded = true;
            record_.reason = Some("service_unavailable".into());
            let detail = Some(format!(
                "{} unavailable ({last_error}); approved as degraded: amount at most {max_amount_minor}",
                step.name
            ));
            return record(
                env,
                source.payment_id(),
                entry(step, Action::Execute, record_, detail, Map::new()),
            )
            .await;
        }
        _ => {}
    }

    // Park, or give up past the limit.
    let parking = env.workflow.parking();
    if saga.parked < parking.max_parks {
        let back_within = parking.tiers.iter().copied().max().unwrap_or_default();
        return match env.log.park(source.payment_id(), back_within).await {
            Ok(count) => {
                env.metrics.parked.with_label_values(&[&step.name]).inc();
                let tier = parking.tier_for(count.saturating_sub(1));
                warn!(parked = count, tier, last_error = %last_error, "step unavailable; parking the payment");
                StepDecision::Leave(SagaOutcome::Park {
                    tier,
                    step: step.name.clone(),
                    reason: last_error,
                })
            }
            Err(e) => StepDecision::Leave(journal_failed(env, e)),
        };
    }

    // An earlier visit that ended in parking may have sent the command too (its timeouts
    // are not in this visit's count, and an open breaker may have kept this visit from
    // sending at all): a side-effecting step of a payment parked before stays in doubt.
    let in_doubt = in_doubt || (step.side_effects && saga.parked > 0);
    if in_doubt {
        // It may have happened. Ask once more with the same command id: the service
        // answers from its store if it acted. Only a definite answer is taken.
        if let Ladder::Answer {
            reply,
            attempts: more,
        } = ladder(
            env,
            step,
            &step.service,
            &cmd,
            &RetryPolicy {
                attempts: 1,
                ..step.retry.clone()
            },
            false,
        )
        .await
        {
            return record(
                env,
                source.payment_id(),
                answered(env, step, reply, attempts + more, started, None),
            )
            .await;
        }
        if !step.compensate {
            let item = AttentionItem {
                payment_id: source.payment_id(),
                step: step.name.clone(),
                service: step.service.clone(),
                kind: "in_doubt".into(),
                command_id: cmd.command_id.clone(),
                error: format!("no answer after {attempts} attempts and {} parkings; the effect may have happened: {last_error}", saga.parked),
                at: now_rfc3339(),
                command: None,
            };
            if let Some(outcome) = send_attention(env, item).await {
                return StepDecision::Leave(outcome);
            }
        }
    }
    error!(parked = saga.parked, last_error = %last_error, "step unavailable past the parking limit; failing the payment");
    let mut record_ = StepRecord::new(
        step.name.clone(),
        StepOutcome::Failed,
        attempts,
        millis(started.elapsed()),
    );
    record_.reason = Some("service_unavailable".into());
    let detail = Some(format!(
        "{} stayed unavailable after {} parkings: {last_error}",
        step.name, saga.parked
    ));
    record(
        env,
        source.payment_id(),
        entry(step, Action::Execute, record_, detail, Map::new()),
    )
    .await
}

/// Settles a step of an abandoned saga without its request (see [`abandon`]).
async fn give_up<T: Transport, L: SagaLog>(
    env: &SagaEnv<T, L>,
    source: Source<'_>,
    step: &Step,
    context: &Map<String, Value>,
    detail: &str,
) -> StepDecision {
    let started = Instant::now();
    let mut attempts = 0;
    if step.side_effects && !step.compensate {
        // It may have acted, and cannot be undone: ask it, with the same command id.
        let cmd = command(source, step, Action::Execute, context, None);
        let once = RetryPolicy {
            attempts: 1,
            ..step.retry.clone()
        };
        match ladder(env, step, &step.service, &cmd, &once, false).await {
            Ladder::Answer {
                reply,
                attempts: asked,
            } => {
                let entry = answered(env, step, reply, asked, started, None);
                return record(env, source.payment_id(), entry).await;
            }
            Ladder::Interrupted => return StepDecision::Leave(SagaOutcome::Interrupted),
            Ladder::Unavailable {
                attempts: asked,
                last_error,
                ..
            } => {
                attempts = asked;
                let item = AttentionItem {
                    payment_id: source.payment_id(),
                    step: step.name.clone(),
                    service: step.service.clone(),
                    kind: "in_doubt".into(),
                    command_id: cmd.command_id.clone(),
                    error: format!(
                        "the payment was abandoned ({detail}) and {} did not say whether it \
                         acted: {last_error}",
                        step.service
                    ),
                    at: now_rfc3339(),
                    command: None,
                };
                if let Some(outcome) = send_attention(env, item).await {
                    return StepDecision::Leave(outcome);
                }
            }
        }
    }
    warn!(detail, "payment abandoned; failing its open step");
    let mut record_ = StepRecord::new(
        step.name.clone(),
        StepOutcome::Failed,
        attempts,
        millis(started.elapsed()),
    );
    record_.reason = Some(ABANDONED.into());
    let detail = Some(format!("{} abandoned: {detail}", step.name));
    record(
        env,
        source.payment_id(),
        entry(step, Action::Execute, record_, detail, Map::new()),
    )
    .await
}

/// The journal entry for a final answer.
fn answered<T, L>(
    env: &SagaEnv<T, L>,
    step: &Step,
    reply: Reply,
    attempts: u32,
    started: Instant,
    via: Option<String>,
) -> JournalEntry {
    let duration = started.elapsed();
    env.metrics
        .step_duration
        .with_label_values(&[&step.name])
        .observe(duration.as_secs_f64());
    let approved = reply.outcome == ReplyOutcome::Approved;
    let mut record_ = StepRecord::new(
        step.name.clone(),
        if approved {
            StepOutcome::Approved
        } else {
            StepOutcome::Declined
        },
        attempts,
        millis(duration),
    );
    record_.via = via;
    if approved {
        info!(attempts, duration_ms = record_.duration_ms, "step approved");
    } else {
        record_.reason = Some(reply.reason.clone().unwrap_or_else(|| "declined".into()));
        info!(reason = ?record_.reason, "step declined");
    }
    let detail = (!approved).then(|| {
        reply
            .detail
            .clone()
            .unwrap_or_else(|| format!("{} declined the payment", step.name))
    });
    entry(step, Action::Execute, record_, detail, reply.data)
}

/// Sends an attention item; `Some(outcome)` when the saga must stop (it could not).
async fn send_attention<T: Transport, L: SagaLog>(
    env: &SagaEnv<T, L>,
    item: AttentionItem,
) -> Option<SagaOutcome> {
    let kind = item.kind.clone();
    match env.transport.attention(item).await {
        Ok(()) => {
            env.metrics.attention.with_label_values(&[&kind]).inc();
            None
        }
        Err(CallError::ShuttingDown) => Some(SagaOutcome::Interrupted),
        Err(e) => {
            // The channel is alive but the item was refused: park the payment (it comes
            // back and tries again) rather than hold its delivery unacked.
            error!(error = %e, "could not reach the attention queue; parking the payment");
            Some(SagaOutcome::Park {
                tier: 0,
                step: "attention".into(),
                reason: e.to_string(),
            })
        }
    }
}

/// Undoes one step, with its own retry policy; a compensation that keeps failing goes to
/// the attention queue and is recorded as `compensation_failed`.
async fn compensate<T: Transport, L: SagaLog>(
    env: &SagaEnv<T, L>,
    source: Source<'_>,
    step: &Step,
    context: &Map<String, Value>,
) -> StepDecision {
    let started = Instant::now();
    let cmd = command(
        source,
        step,
        Action::Compensate,
        context,
        env.card_keys.as_ref(),
    );
    let (failure, attempts) = match ladder(
        env,
        step,
        &step.service,
        &cmd,
        &step.compensation_retry,
        false,
    )
    .await
    {
        Ladder::Answer { reply, attempts } if reply.outcome == ReplyOutcome::Approved => {
            (None, attempts)
        }
        Ladder::Answer { reply, attempts } => (
            Some(
                reply
                    .reason
                    .unwrap_or_else(|| "compensation_refused".into()),
            ),
            attempts,
        ),
        Ladder::Unavailable {
            attempts,
            last_error,
            ..
        } => (Some(last_error), attempts),
        Ladder::Interrupted => return StepDecision::Leave(SagaOutcome::Interrupted),
    };
    let mut record_ = StepRecord::new(
        step.name.clone(),
        StepOutcome::Compensated,
        attempts,
        millis(started.elapsed()),
    );
    let mut detail = None;
    match failure {
        None => {
            env.metrics
                .compensations
                .with_label_values(&[&step.name, "compensated"])
                .inc();
            info!(attempts, "step compensated");
        }
        Some(reason) => {
            env.metrics
                .compensations
                .with_label_values(&[&step.name, "failed"])
                .inc();
            error!(reason = %reason, attempts, "compensation failed; handing it to operators");
            let item = AttentionItem {
                payment_id: source.payment_id(),
                step: step.name.clone(),
                service: step.service.clone(),
                kind: "compensation_failed".into(),
                command_id: cmd.command_id.clone(),
                error: reason.clone(),
                at: now_rfc3339(),
                command: Some(Command {
                    payment: PaymentView {
                        card: baton_contract::CardView {
                            number: None,
                            ..cmd.payment.card.clone()
                        },
                        ..cmd.payment.clone()
                    },
                    ..cmd.clone()
                }),
            };
            if let Some(outcome) = send_attention(env, item).await {
                return StepDecision::Leave(outcome);
            }
            record_.outcome = StepOutcome::CompensationFailed;
            detail = Some(format!("compensating {} failed: {reason}", step.name));
            record_.reason = Some(reason);
        }
    }
    record(
        env,
        source.payment_id(),
        entry(step, Action::Compensate, record_, detail, Map::new()),
    )
    .await
}

/// Sends `cmd` to `service` with timeouts, retries and the breaker.
async fn ladder<T: Transport, L: SagaLog>(
    env: &SagaEnv<T, L>,
    step: &Step,
    service: &str,
    cmd: &Command,
    retry: &RetryPolicy,
    respect_breaker: bool,
) -> Ladder {
    let mut delays = retry.delays();
    let mut attempts = 0;
    let mut in_doubt = false;
    let breaker = env.breakers.get(service);
    let gate = env.gates.get(service);
    loop {
        let permit = match breaker {
            Some(b) => match b.try_acquire() {
                Some(p) => Some(p),
                None if respect_breaker => {
                    env.metrics
                        .step_attempts
                        .with_label_values(&[&step.name, "breaker_open"])
                        .inc();
                    return Ladder::Unavailable {
                        attempts,
                        in_doubt,
                        last_error: format!("circuit breaker of {service} is open"),
                    };
                }
                // Compensations go through an open breaker: they must be tried.
                None => None,
            },
            None => None,
        };
        let _slot = match gate {
            Some(g) => Some(g.acquire().await.expect("gates are never closed")),
            None => None,
        };
        attempts += 1;
        if attempts > 1 {
            env.metrics
                .step_retries
                .with_label_values(&[&step.name])
                .inc();
        }
        let sent =
            tokio::time::timeout(step.timeout, env.transport.call(service, cmd.clone())).await;
        drop(_slot);
        let last_error = match sent {
            Ok(Ok(reply)) if reply.outcome != ReplyOutcome::Error => {
                let label = if reply.outcome == ReplyOutcome::Approved {
                    "approved"
                } else {
                    "declined"
                };
                env.metrics
                    .step_attempts
                    .with_label_values(&[&step.name, label])
                    .inc();
                if let Some(p) = permit {
                    p.success();
                }
                return Ladder::Answer { reply, attempts };
            }
            Ok(Ok(reply)) => {
                env.metrics
                    .step_attempts
                    .with_label_values(&[&step.name, "error"])
                    .inc();
                if let Some(p) = permit {
                    p.failure();
                }
                let reason = reply.reason.unwrap_or_else(|| "error".into());
                warn!(attempt = attempts, reason = %reason, "service reported an error");
                format!(
                    "{service} reported {reason}{}",
                    reply.detail.map(|d| format!(" ({d})")).unwrap_or_default()
                )
            }
            Ok(Err(CallError::ShuttingDown)) => return Ladder::Interrupted,
            Ok(Err(e)) => {
                env.metrics
                    .step_attempts
                    .with_label_values(&[&step.name, "broker_error"])
                    .inc();
                warn!(attempt = attempts, error = %e, "command not sent");
                e.to_string()
            }
            Err(_) => {
                env.metrics
                    .step_attempts
                    .with_label_values(&[&step.name, "timeout"])
                    .inc();
                env.metrics
                    .step_timeouts
                    .with_label_values(&[&step.name])
                    .inc();
                if let Some(p) = permit {
                    p.failure();
                }
                in_doubt |= step.side_effects && cmd.action == Action::Execute;
                warn!(
                    attempt = attempts,
                    timeout_ms = millis(step.timeout),
                    "no reply in time"
                );
                format!(
                    "{service} did not answer within {} ms",
                    millis(step.timeout)
                )
            }
        };
        match delays.next() {
            Some(delay) => tokio::time::sleep(delay).await,
            None => {
                return Ladder::Unavailable {
                    attempts,
                    in_doubt,
                    last_error,
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "saga_tests.rs"]
mod tests;
