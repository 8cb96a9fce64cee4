//! What the saga tells about itself as it runs: a narrow trait named for saga happenings
//! (an attempt ended, a fallback taken, a payment parked…), so the saga names no metrics
//! library. The orchestrator's Prometheus metrics implement it (`crate::metrics`); tests
//! record the calls; `()` ignores them (`baton workflow test`).
//!
//! Not for decisions: nothing the observer does changes what the saga does next.

use crate::breaker::BreakerState;
use std::time::Duration;

/// How one attempt of a step's command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The service approved.
    Approved,
    /// The service declined (a final answer).
    Declined,
    /// The service replied `error` (transient).
    Error,
    /// No reply within the step's timeout.
    Timeout,
    /// The service's circuit breaker is open: nothing was sent.
    BreakerOpen,
    /// The command could not be published.
    BrokerError,
}

impl AttemptEnd {
    /// Its name, as metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptEnd::Approved => "approved",
            AttemptEnd::Declined => "declined",
            AttemptEnd::Error => "error",
            AttemptEnd::Timeout => "timeout",
            AttemptEnd::BreakerOpen => "breaker_open",
            AttemptEnd::BrokerError => "broker_error",
        }
    }
}

/// Which fallback a step took when its service was unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackKind {
    /// Its command went to another service.
    Service,
    /// It was approved as a declared degraded decision.
    Degraded,
}

impl FallbackKind {
    /// Its name, as metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackKind::Service => "service",
            FallbackKind::Degraded => "degraded",
        }
    }
}

/// Told of every saga happening; implementations must be quick and must not fail.
pub trait SagaObserver: Send + Sync {
    /// An attempt of `step`'s command ended as `end` (or was not sent: breaker open).
    fn attempt_ended(&self, step: &str, end: AttemptEnd);
    /// `step`'s command is about to be sent again (an attempt after the first).
    fn retrying(&self, step: &str);
    /// `service`'s circuit breaker is in `state`: at start (closed) and after each change.
    fn breaker_changed(&self, service: &str, state: BreakerState);
    /// `step`'s service was unavailable and the step took its fallback.
    fn fallback_taken(&self, step: &str, kind: FallbackKind);
    /// The payment was parked, waiting for `step`'s service.
    fn parked(&self, step: &str);
    /// An item of `kind` (`in_doubt`, `compensation_failed`) reached the operators.
    fn attention_raised(&self, kind: &str);
    /// `step` got its final answer (approved or declined), `duration` after its first
    /// command.
    fn step_answered(&self, step: &str, duration: Duration);
    /// A compensation of `step` ended: undone, or handed to operators.
    fn compensation_ended(&self, step: &str, undone: bool);
    /// A journal read or write failed.
    fn journal_failed(&self);
}

/// Observes nothing.
impl SagaObserver for () {
    fn attempt_ended(&self, _: &str, _: AttemptEnd) {}
    fn retrying(&self, _: &str) {}
    fn breaker_changed(&self, _: &str, _: BreakerState) {}
    fn fallback_taken(&self, _: &str, _: FallbackKind) {}
    fn parked(&self, _: &str) {}
    fn attention_raised(&self, _: &str) {}
    fn step_answered(&self, _: &str, _: Duration) {}
    fn compensation_ended(&self, _: &str, _: bool) {}
    fn journal_failed(&self) {}
}
