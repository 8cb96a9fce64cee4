//! Circuit breakers, one per service: when a service keeps failing, calls to it fail fast
//! for a while instead of piling up on its queue, then one probe tests whether it healed.
//!
//! closed → (failure_threshold failures within window) → open → (open_for elapsed) →
//! half-open: one probe at a time → success closes, failure re-opens. Only failures
//! count (timeouts, `error` replies); a `declined` reply is a healthy service's answer.
//! Time comes from tokio's clock, so tests drive it with paused time.

use crate::workflow::BreakerPolicy;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;
use tracing::{info, warn};

/// The externally visible state (also the `baton_circuit_breaker_state` gauge value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed = 0,
    /// One probe is allowed through.
    HalfOpen = 1,
    /// Calls fail fast.
    Open = 2,
}

#[derive(Debug)]
enum Inner {
    Closed { failures: VecDeque<Instant> },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Observer of breaker transitions: `(service, new state)`.
pub type StateObserver = Arc<dyn Fn(&str, BreakerState) + Send + Sync>;

/// One service's breaker.
pub struct CircuitBreaker {
    service: String,
    policy: BreakerPolicy,
    inner: Mutex<Inner>,
    /// Called with the new state on every transition (metrics).
    on_change: Option<StateObserver>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("service", &self.service)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Permission to make one call; report how it went with [`Permit::success`] or
/// [`Permit::failure`]. Dropping it without reporting (the payment was interrupted)
/// frees a half-open probe slot without judging the service.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    reported: bool,
}

impl Permit<'_> {
    /// The call got a usable answer.
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.on_success(self.probe);
    }

    /// The call timed out or the service reported an error.
    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.on_failure(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            if let Ok(mut inner) = self.breaker.inner.lock() {
                if let Inner::HalfOpen { probing } = &mut *inner {
                    *probing = false;
                }
            }
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker for `service`.
    pub fn new(service: impl Into<String>, policy: BreakerPolicy) -> Self {
        Self {
            service: service.into(),
            policy,
            inner: Mutex::new(Inner::Closed {
                failures: VecDeque::new(),
            }),
            on_change: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        match &*inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// A permit to call the service, or `None` while open (or while a half-open probe is
    /// already in flight): fail fast.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        match &mut *inner {
            Inner::Closed { .. } => Some(Permit {
                breaker: self,
                probe: false,
                reported: false,
            }),
            Inner::Open { .. } => None,
            Inner::HalfOpen { probing } if *probing => None,
            Inner::HalfOpen { probing } => {
                *probing = true;
                Some(Permit {
                    breaker: self,
                    probe: true,
                    reported: false,
                })
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open → half-open once the open period is over.
    fn refresh(&self, inner: &mut Inner) {
        if let Inner::Open { until } = inner {
            if Instant::now() >= *until {
                *inner = Inner::HalfOpen { probing: false };
                info!(service = %self.service, "circuit breaker half-open: probing");
                self.notify(BreakerState::HalfOpen);
            }
        }
    }

    fn on_success(&self, probe: bool) {
        let mut inner = self.lock();
        match &mut *inner {
            Inner::HalfOpen { .. } if probe => {
                *inner = Inner::Closed {
                    failures: VecDeque::new(),
                };
                info!(service = %self.service, "circuit breaker closed: the service answered");
                self.notify(BreakerState::Closed);
            }
            Inner::Closed { failures } => failures.clear(),
            _ => {}
        }
    }

    fn on_failure(&self, probe: bool) {
        let now = Instant::now();
        let mut inner = self.lock();
        let open = match &mut *inner {
            Inner::HalfOpen { .. } => probe,
            Inner::Closed { failures } => {
                failures.push_back(now);
                while failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.policy.window)
                {
                    failures.pop_front();
                }
                failures.len() >= self.policy.failure_threshold as usize
            }
            Inner::Open { .. } => false,
        };
        if open {
            *inner = Inner::Open {
                until: now + self.policy.open_for,
            };
            warn!(
                service = %self.service,
                open_ms = self.policy.open_for.as_millis() as u64,
                "circuit breaker open: calls fail fast"
            );
            self.notify(BreakerState::Open);
        }
    }

    fn notify(&self, state: BreakerState) {
        if let Some(observer) = &self.on_change {
            observer(&self.service, state);
        }
    }
}

/// Every service's breaker, created from the workflow.
#[derive(Debug, Default)]
pub struct Breakers {
    by_service: HashMap<String, CircuitBreaker>,
}

impl Breakers {
    /// One closed breaker per `(service, policy)`; `on_change` observes transitions.
    pub fn new(policies: &[(String, BreakerPolicy)], on_change: Option<StateObserver>) -> Self {
        let by_service = policies
            .iter()
            .map(|(service, policy)| {
                let mut breaker = CircuitBreaker::new(service.clone(), policy.clone());
                breaker.on_change = on_change.clone();
                (service.clone(), breaker)
            })
            .collect();
        Self { by_service }
    }

    /// The breaker of `service`.
    pub fn get(&self, service: &str) -> Option<&CircuitBreaker> {
        self.by_service.get(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            "risk",
            BreakerPolicy {
                failure_threshold: 3,
                window: Duration::from_secs(10),
                open_for: Duration::from_secs(5),
            },
        )
    }

    fn fail(b: &CircuitBreaker, n: usize) {
        for _ in 0..n {
            b.try_acquire().expect("closed").failure();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_within_the_window() {
        let b = breaker();
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none(), "open fails fast");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_count() {
        let b = breaker();
        fail(&b, 2);
        tokio::time::advance(Duration::from_secs(11)).await;
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let b = breaker();
        fail(&b, 2);
        b.try_acquire().unwrap().success();
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through_and_closes_on_success() {
        let b = breaker();
        fail(&b, 3);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("one probe");
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens() {
        let b = breaker();
        fail(&b, 3);
        tokio::time::advance(Duration::from_secs(5)).await;
        b.try_acquire().expect("probe").failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_its_slot() {
        let b = breaker();
        fail(&b, 3);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(b.try_acquire().expect("probe"));
        assert!(b.try_acquire().is_some(), "another probe may go");
    }

    #[tokio::test(start_paused = true)]
    async fn transitions_are_observed() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let breakers = Breakers::new(
            &[(
                "risk".to_owned(),
                BreakerPolicy {
                    failure_threshold: 1,
                    window: Duration::from_secs(1),
                    open_for: Duration::from_secs(1),
                },
            )],
            Some(Arc::new(move |s: &str, state| {
                log.lock().unwrap().push((s.to_owned(), state))
            })),
        );
        let b = breakers.get("risk").unwrap();
        b.try_acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(1)).await;
        b.try_acquire().unwrap().success();
        let seen = seen.lock().unwrap().clone();
        let states: Vec<BreakerState> = seen.into_iter().map(|(_, s)| s).collect();
        assert_eq!(
            states,
            [
                BreakerState::Open,
                BreakerState::HalfOpen,
                BreakerState::Closed
            ]
        );
    }
}
