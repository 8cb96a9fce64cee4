//! What the saga runs with: the ways to the services and the journal (traits), the shared
//! environment, the events and attention items it emits.

use super::*;
use crate::breaker::{BreakerState, Breakers};
use crate::records::{JournalEntry, JournalError, PaymentSummary, SagaRecord};
use crate::workflow::{Step, Workflow};
use baton_contract::{
    CardKeys, Command, PaymentRequest, PaymentResult, PaymentView, Reply, StepRecord,
};
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
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

    pub(super) fn of_entry(payment_id: Uuid, entry: &JournalEntry, at: String) -> Self {
        Self {
            payment_id,
            step: entry.step.clone(),
            action: crate::records::action_name(entry.action).into(),
            outcome: crate::records::outcome_name(entry.record.outcome).into(),
            reason: entry.record.reason.clone(),
            record: Some(entry.record.clone()),
            at,
        }
    }

    pub(crate) fn of_result(result: &PaymentResult, at: String) -> Self {
        Self {
            payment_id: result.payment_id,
            step: "payment".into(),
            action: "result".into(),
            outcome: result.status.as_str().into(),
            reason: result.reason.clone(),
            record: None,
            at,
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
pub struct SagaEnv<T, L, O> {
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
    pub(super) gates: HashMap<String, Semaphore>,
    /// Told of what happens: attempts, fallbacks, parkings… (the metrics).
    pub observer: O,
    /// The keys that make card fingerprints for `card = "fingerprint"` steps (the first
    /// key fingerprints). `None` from [`SagaEnv::new`]; the orchestrator sets them after
    /// [`Workflow::check_card_keys`].
    pub card_keys: Option<CardKeys>,
    /// The payments this process is running now: their journal leases are renewed.
    pub live: LiveSagas,
    /// The wall clock of results, events and attention items: the system's from
    /// [`SagaEnv::new`]; tests set another.
    pub clock: Clock,
}

/// The wall clock the saga stamps results, saga events and attention items with. Durations
/// are measured on tokio's clock instead, which paused tests drive.
#[derive(Clone, Copy, Debug)]
pub struct Clock(pub fn() -> SystemTime);

impl Clock {
    /// The system's clock.
    pub const SYSTEM: Clock = Clock(SystemTime::now);

    /// The time now, RFC 3339 UTC with milliseconds.
    pub fn now_rfc3339(self) -> String {
        humantime::format_rfc3339_millis((self.0)()).to_string()
    }
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
    pub(super) live: LiveSagas,
    pub(super) payment_id: Uuid,
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
pub(super) enum Source<'a> {
    Request(&'a PaymentRequest),
    Journal(Uuid, &'a PaymentSummary),
}

impl Source<'_> {
    pub(super) fn payment_id(&self) -> Uuid {
        match self {
            Source::Request(request) => request.payment_id,
            Source::Journal(id, _) => *id,
        }
    }

    /// The payment as the journal keeps it (no card number): what conditions read.
    pub(super) fn summary(&self) -> PaymentSummary {
        match self {
            Source::Request(request) => PaymentSummary::of(request),
            Source::Journal(_, summary) => (*summary).clone(),
        }
    }

    pub(super) fn amount_minor(&self) -> u64 {
        match self {
            Source::Request(request) => request.amount.minor,
            Source::Journal(_, summary) => summary.amount.minor,
        }
    }

    /// The payment as `step` may see it. From the journal: no number, no fingerprint,
    /// no expiry — only what finishing needs (compensations, asking a service what it did).
    pub(super) fn view(&self, step: &Step, keys: Option<&CardKeys>) -> PaymentView {
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

impl<T: Transport, L: SagaLog, O: SagaObserver + Clone + 'static> SagaEnv<T, L, O> {
    /// An environment for `workflow`, with closed breakers whose changes `observer` is
    /// told of.
    pub fn new(workflow: Workflow, transport: T, log: L, observer: O) -> Self {
        for (service, _) in workflow.breakers() {
            observer.breaker_changed(service, BreakerState::Closed);
        }
        let watcher = observer.clone();
        let breakers = Breakers::new(
            workflow.breakers(),
            Some(std::sync::Arc::new(move |service: &str, state| {
                watcher.breaker_changed(service, state);
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
            observer,
            card_keys: None,
            live: LiveSagas::default(),
            clock: Clock::SYSTEM,
        }
    }
}
