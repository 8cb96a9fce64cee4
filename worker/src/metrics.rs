//! The Prometheus metrics of one running service, in a registry it owns (not the
//! process-wide default: tests run several services in one process, and each must count
//! only its own commands). Served on the service's HTTP port at `/metrics`.
//!
//! Labels are bounded: service, action, outcome. Never a payment id, never card data.

use baton_contract::{Action, ReplyOutcome};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use std::time::Duration;

/// How a command ended, as the `outcome` label of `baton_service_commands_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered with this outcome (replays from the store included).
    Replied(ReplyOutcome),
    /// Acked without an answer by the black-hole fault.
    Blackholed,
    /// Not a command: dead-lettered.
    Malformed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Replied(ReplyOutcome::Approved) => "approved",
            Outcome::Replied(ReplyOutcome::Declined) => "declined",
            Outcome::Replied(ReplyOutcome::Error) => "error",
            Outcome::Blackholed => "blackholed",
            Outcome::Malformed => "malformed",
        }
    }
}

fn action_label(action: Option<Action>) -> &'static str {
    match action {
        Some(Action::Execute) => "execute",
        Some(Action::Compensate) => "compensate",
        Some(Action::Ping) => "ping",
        // A malformed command has no readable action.
        None => "unknown",
    }
}

/// The `reason` of a command whose `user_id` is not a configured orchestrator user.
pub(crate) const WRONG_SENDER: &str = "wrong_sender";

/// The service's metrics.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    /// Owns every metric below; handed to the HTTP port.
    pub(crate) registry: Registry,
    /// `baton_service_commands_total{service,action,outcome}`.
    commands: IntCounterVec,
    /// `baton_service_duplicate_commands_total{service}`: answered from the store.
    duplicates: IntCounter,
    /// `baton_service_handle_duration_seconds{service}`: taking a command to having its
    /// reply (injected latency included, publishing not).
    handle_duration: Histogram,
    /// `baton_broker_reconnects_total`.
    reconnects: IntCounter,
    /// `baton_service_commands_rejected_total{service,reason}`: commands dropped unread
    /// because they did not come from a configured orchestrator user.
    rejected: IntCounterVec,
}

impl Metrics {
    /// Registers the metrics of `service` in a new registry.
    pub(crate) fn new(service: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let commands = IntCounterVec::new(
            Opts::new(
                "baton_service_commands_total",
                "Commands handled, by action and outcome (approved, declined, error, \
                 blackholed, malformed)",
            )
            .const_label("service", service),
            &["action", "outcome"],
        )?;
        let duplicates = IntCounter::with_opts(
            Opts::new(
                "baton_service_duplicate_commands_total",
                "Repeated commands answered from the store without acting again",
            )
            .const_label("service", service),
        )?;
        let handle_duration = Histogram::with_opts(
            HistogramOpts::new(
                "baton_service_handle_duration_seconds",
                "Time from taking a command to having its reply",
            )
            .const_label("service", service)
            .buckets(baton_ops::histogram_buckets_seconds()),
        )?;
        let reconnects = IntCounter::new(
            "baton_broker_reconnects_total",
            "Times the broker connection (or a channel) was lost and opened again",
        )?;
        registry.register(Box::new(commands.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(handle_duration.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "baton_service_commands_rejected_total",
                "Commands dropped without acting: not sent by a configured orchestrator user",
            )
            .const_label("service", service),
            &["reason"],
        )?;
        registry.register(Box::new(rejected.clone()))?;
        rejected.with_label_values(&[WRONG_SENDER]);
        // Every usual series exists from the start at 0, so rates and alerts work before
        // the first command.
        for action in [Action::Execute, Action::Compensate] {
            for outcome in [
                ReplyOutcome::Approved,
                ReplyOutcome::Declined,
                ReplyOutcome::Error,
            ] {
                commands.with_label_values(&[
                    action_label(Some(action)),
                    Outcome::Replied(outcome).label(),
                ]);
            }
        }
        Ok(Self {
            registry,
            commands,
            duplicates,
            handle_duration,
            reconnects,
            rejected,
        })
    }

    /// Counts one command.
    pub(crate) fn command(&self, action: Option<Action>, outcome: Outcome) {
        self.commands
            .with_label_values(&[action_label(action), outcome.label()])
            .inc();
    }

    /// Counts a repeated command answered from the store.
    pub(crate) fn duplicate(&self) {
        self.duplicates.inc();
    }

    /// Records how long a command took to answer.
    pub(crate) fn handled_in(&self, elapsed: Duration) {
        self.handle_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a command dropped for `reason` (e.g. [`WRONG_SENDER`]).
    pub(crate) fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// Counts a reconnect.
    pub(crate) fn reconnected(&self) {
        self.reconnects.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder as _;

    fn exposition(metrics: &Metrics) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&metrics.registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_metric_is_exposed_with_bounded_labels() {
        let metrics = Metrics::new("authorization").unwrap();
        metrics.command(
            Some(Action::Execute),
            Outcome::Replied(ReplyOutcome::Approved),
        );
        metrics.command(None, Outcome::Malformed);
        metrics.duplicate();
        metrics.handled_in(Duration::from_millis(3));
        metrics.reconnected();
        metrics.rejected(WRONG_SENDER);
        let text = exposition(&metrics);
        for line in [
            r#"baton_service_commands_total{action="execute",outcome="approved",service="authorization"} 1"#,
            r#"baton_service_commands_total{action="compensate",outcome="error",service="authorization"} 0"#,
            r#"baton_service_commands_total{action="unknown",outcome="malformed",service="authorization"} 1"#,
            r#"baton_service_duplicate_commands_total{service="authorization"} 1"#,
            r#"baton_service_handle_duration_seconds_bucket{service="authorization",le="0.005"} 1"#,
            r#"baton_service_handle_duration_seconds_count{service="authorization"} 1"#,
            "baton_broker_reconnects_total 1",
            r#"baton_service_commands_rejected_total{reason="wrong_sender",service="authorization"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        // Two services in one process do not share counters.
        let other = Metrics::new("risk").unwrap();
        assert!(exposition(&other).contains("baton_broker_reconnects_total 0"));
    }
}
