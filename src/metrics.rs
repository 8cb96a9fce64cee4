//! The orchestrator's Prometheus metrics, on a registry the application owns (several
//! orchestrators can run in one test process). Labels are bounded — step, service,
//! status, reason, outcome — never a payment id or card data. The saga reaches them through
//! [`SagaObserver`]; the runtime counts the rest itself.

use crate::breaker::BreakerState;
use crate::saga::{AttemptEnd, FallbackKind, SagaObserver};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every metric the orchestrator exports. The README lists them with their meaning.
#[derive(Clone)]
pub struct Metrics {
    /// The registry they are registered in.
    pub registry: Registry,
    /// `baton_payments_received_total`: requests taken from the queue (valid or not).
    pub received: IntCounter,
    /// `baton_payment_results_total{status,reason}`: results published.
    pub results: IntCounterVec,
    /// `baton_payment_duration_seconds`: from taking a request to publishing its result.
    pub payment_duration: Histogram,
    /// `baton_step_duration_seconds{step}`: from first command to final answer of a step.
    pub step_duration: HistogramVec,
    /// `baton_step_attempts_total{step,outcome}`: commands sent, by how each ended
    /// (approved, declined, error, timeout, breaker_open, broker_error).
    pub step_attempts: IntCounterVec,
    /// `baton_step_retries_total{step}`: attempts after the first.
    pub step_retries: IntCounterVec,
    /// `baton_step_timeouts_total{step}`: attempts that got no reply in time.
    pub step_timeouts: IntCounterVec,
    /// `baton_step_fallbacks_total{step,kind}`: fallbacks taken (service, degraded).
    pub step_fallbacks: IntCounterVec,
    /// `baton_circuit_breaker_state{service}`: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// `baton_inflight_payments`: payments being worked on by this process.
    pub inflight: IntGauge,
    /// `baton_parked_total{step}`: payments parked because a step's service was down.
    pub parked: IntCounterVec,
    /// `baton_dead_lettered_total{reason}`: messages copied to the dead-letter queue.
    pub dead_lettered: IntCounterVec,
    /// `baton_compensations_total{step,result}`: compensations (compensated, failed).
    pub compensations: IntCounterVec,
    /// `baton_attention_total{kind}`: items sent to the operators' attention queue.
    pub attention: IntCounterVec,
    /// `baton_broker_reconnects_total`: connections re-established after a loss.
    pub reconnects: IntCounter,
    /// `baton_unknown_replies_total`: replies whose correlation id matched nothing.
    pub unknown_replies: IntCounter,
    /// `baton_replies_rejected_total{reason}`: replies dropped because they came from
    /// another broker user than the step's service (`wrong_sender`) or answered another
    /// command (`wrong_command_id`).
    pub replies_rejected: IntCounterVec,
    /// `baton_journal_errors_total`: journal reads or writes that failed.
    pub journal_errors: IntCounter,
    /// `baton_events_dropped_total`: saga events not published (publisher behind or
    /// disconnected); payments are never held up for them.
    pub events_dropped: IntCounter,
    /// `baton_sagas_running`: sagas in the journal without a result (all replicas),
    /// as this process's sweeper last counted them.
    pub sagas_running: IntGauge,
    /// `baton_saga_oldest_running_seconds`: age of the oldest of them (0 when none).
    pub saga_oldest_running_seconds: prometheus::Gauge,
    /// `baton_sagas_swept_total{result}`: sagas whose lease ran out that this process
    /// took over and finished (`finished`), or could not finish yet (`left`).
    pub sagas_swept: IntCounterVec,
    /// `baton_client_replies_unroutable_total`: results or rejections whose client
    /// `reply_to` queue no longer existed (the client went away; nothing else changes).
    pub client_replies_unroutable: IntCounter,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Gauge {
    let g = prometheus::Gauge::new(name, help).expect("valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let payment_duration = Histogram::with_opts(
            HistogramOpts::new(
                "baton_payment_duration_seconds",
                "Time from taking a payment request to publishing its result",
            )
            .buckets(baton_ops::histogram_buckets_seconds()),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(payment_duration.clone()))
            .expect("registered once");
        let step_duration = HistogramVec::new(
            HistogramOpts::new(
                "baton_step_duration_seconds",
                "Time from a step's first command to its final answer",
            )
            .buckets(baton_ops::histogram_buckets_seconds()),
            &["step"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(step_duration.clone()))
            .expect("registered once");
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "baton_circuit_breaker_state",
                "Circuit breaker state per service: 0 closed, 1 half-open, 2 open",
            ),
            &["service"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(breaker_state.clone()))
            .expect("registered once");
        let inflight = IntGauge::new(
            "baton_inflight_payments",
            "Payments this orchestrator is working on",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(inflight.clone()))
            .expect("registered once");
        Self {
            received: counter(
                &registry,
                "baton_payments_received_total",
                "Payment requests taken from the request queue",
            ),
            results: counter_vec(
                &registry,
                "baton_payment_results_total",
                "Payment results published, by status and reason",
                &["status", "reason"],
            ),
            payment_duration,
            step_duration,
            step_attempts: counter_vec(
                &registry,
                "baton_step_attempts_total",
                "Commands sent to a step's service, by how the attempt ended",
                &["step", "outcome"],
            ),
            step_retries: counter_vec(
                &registry,
                "baton_step_retries_total",
                "Attempts after the first one of a step",
                &["step"],
            ),
            step_timeouts: counter_vec(
                &registry,
                "baton_step_timeouts_total",
                "Attempts that got no reply within the step's timeout",
                &["step"],
            ),
            step_fallbacks: counter_vec(
                &registry,
                "baton_step_fallbacks_total",
                "Fallbacks taken when a step's service was unavailable",
                &["step", "kind"],
            ),
            breaker_state,
            inflight,
            parked: counter_vec(
                &registry,
                "baton_parked_total",
                "Payments parked in a retry queue because a step's service was unavailable",
                &["step"],
            ),
            dead_lettered: counter_vec(
                &registry,
                "baton_dead_lettered_total",
                "Messages copied to the dead-letter queue, by reason",
                &["reason"],
            ),
            compensations: counter_vec(
                &registry,
                "baton_compensations_total",
                "Compensations run, by step and result (compensated, failed)",
                &["step", "result"],
            ),
            attention: counter_vec(
                &registry,
                "baton_attention_total",
                "Items sent to the operators' attention queue, by kind",
                &["kind"],
            ),
            reconnects: counter(
                &registry,
                "baton_broker_reconnects_total",
                "Broker connections re-established after a loss",
            ),
            unknown_replies: counter(
                &registry,
                "baton_unknown_replies_total",
                "Replies whose correlation id matched no waiting command (late, duplicate or forged)",
            ),
            replies_rejected: {
                let rejected = counter_vec(
                    &registry,
                    "baton_replies_rejected_total",
                    "Replies dropped: sent by another broker user than the step's service, or for another command",
                    &["reason"],
                );
                for reason in ["wrong_sender", "wrong_command_id"] {
                    rejected.with_label_values(&[reason]);
                }
                rejected
            },
            journal_errors: counter(
                &registry,
                "baton_journal_errors_total",
                "Saga journal reads or writes that failed",
            ),
            events_dropped: counter(
                &registry,
                "baton_events_dropped_total",
                "Saga events not published because the publisher fell behind or was disconnected",
            ),
            sagas_running: {
                let g = IntGauge::new(
                    "baton_sagas_running",
                    "Sagas in the journal without a result, all replicas",
                )
                .expect("valid gauge");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            },
            saga_oldest_running_seconds: gauge(
                &registry,
                "baton_saga_oldest_running_seconds",
                "Age of the oldest saga without a result (0 when none)",
            ),
            sagas_swept: {
                let swept = counter_vec(
                    &registry,
                    "baton_sagas_swept_total",
                    "Sagas whose lease ran out that this process took over, by result (finished, left)",
                    &["result"],
                );
                for result in ["finished", "left"] {
                    swept.with_label_values(&[result]);
                }
                swept
            },
            client_replies_unroutable: counter(
                &registry,
                "baton_client_replies_unroutable_total",
                "Results or rejections whose client reply_to queue no longer existed",
            ),
            registry,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What the saga tells, counted.
impl SagaObserver for Metrics {
    fn attempt_ended(&self, step: &str, end: AttemptEnd) {
        self.step_attempts
            .with_label_values(&[step, end.as_str()])
            .inc();
        if end == AttemptEnd::Timeout {
            self.step_timeouts.with_label_values(&[step]).inc();
        }
    }

    fn retrying(&self, step: &str) {
        self.step_retries.with_label_values(&[step]).inc();
    }

    fn breaker_changed(&self, service: &str, state: BreakerState) {
        self.breaker_state
            .with_label_values(&[service])
            .set(state as i64);
    }

    fn fallback_taken(&self, step: &str, kind: FallbackKind) {
        self.step_fallbacks
            .with_label_values(&[step, kind.as_str()])
            .inc();
    }

    fn parked(&self, step: &str) {
        self.parked.with_label_values(&[step]).inc();
    }

    fn attention_raised(&self, kind: &str) {
        self.attention.with_label_values(&[kind]).inc();
    }

    fn step_answered(&self, step: &str, duration: std::time::Duration) {
        self.step_duration
            .with_label_values(&[step])
            .observe(duration.as_secs_f64());
    }

    fn compensation_ended(&self, step: &str, undone: bool) {
        let result = if undone { "compensated" } else { "failed" };
        self.compensations.with_label_values(&[step, result]).inc();
    }

    fn journal_failed(&self) {
        self.journal_errors.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn what_the_saga_tells_is_counted_under_the_documented_names() {
        let m = Metrics::new();
        for end in [
            AttemptEnd::Approved,
            AttemptEnd::Declined,
            AttemptEnd::Error,
            AttemptEnd::Timeout,
            AttemptEnd::BreakerOpen,
            AttemptEnd::BrokerError,
        ] {
            m.attempt_ended("pci", end);
        }
        m.retrying("pci");
        m.breaker_changed("risk", BreakerState::Open);
        m.breaker_changed("pci", BreakerState::HalfOpen);
        m.breaker_changed("auth", BreakerState::Open);
        m.breaker_changed("auth", BreakerState::Closed);
        m.fallback_taken("risk", FallbackKind::Service);
        m.fallback_taken("risk", FallbackKind::Degraded);
        m.parked("pci");
        m.attention_raised("in_doubt");
        m.step_answered("pci", Duration::from_millis(250));
        m.compensation_ended("authorization", true);
        m.compensation_ended("authorization", false);
        m.journal_failed();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&m.registry.gather())
            .unwrap();
        for line in [
            r#"baton_step_attempts_total{outcome="approved",step="pci"} 1"#,
            r#"baton_step_attempts_total{outcome="declined",step="pci"} 1"#,
            r#"baton_step_attempts_total{outcome="error",step="pci"} 1"#,
            r#"baton_step_attempts_total{outcome="timeout",step="pci"} 1"#,
            r#"baton_step_attempts_total{outcome="breaker_open",step="pci"} 1"#,
            r#"baton_step_attempts_total{outcome="broker_error",step="pci"} 1"#,
            r#"baton_step_timeouts_total{step="pci"} 1"#,
            r#"baton_step_retries_total{step="pci"} 1"#,
            r#"baton_circuit_breaker_state{service="risk"} 2"#,
            r#"baton_circuit_breaker_state{service="pci"} 1"#,
            r#"baton_circuit_breaker_state{service="auth"} 0"#,
            r#"baton_step_fallbacks_total{kind="service",step="risk"} 1"#,
            r#"baton_step_fallbacks_total{kind="degraded",step="risk"} 1"#,
            r#"baton_parked_total{step="pci"} 1"#,
            r#"baton_attention_total{kind="in_doubt"} 1"#,
            r#"baton_step_duration_seconds_sum{step="pci"} 0.25"#,
            r#"baton_step_duration_seconds_count{step="pci"} 1"#,
            r#"baton_compensations_total{result="compensated",step="authorization"} 1"#,
            r#"baton_compensations_total{result="failed",step="authorization"} 1"#,
            "baton_journal_errors_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
