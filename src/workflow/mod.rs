//! The workflow: which steps a payment runs through, in which order, and how each one is
//! reached. It is data (a TOML file), not code, so adding a step never means changing the
//! orchestrator. This module only parses and validates it; running it is the saga's job.
//!
//! `parse.rs` reads and validates the file; this file is what the saga reads of it.

mod parse;
#[cfg(test)]
mod tests;

use crate::condition::Condition;
use baton_contract::CardExposure;
pub use parse::BATON_REASONS;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// The workflow that ships with Baton (`workflows/default.toml`), used when no file is
/// given so the binary works from any directory.
pub const DEFAULT_WORKFLOW: &str = include_str!("../../workflows/default.toml");

/// A workflow that could not be used, with a message naming the entry and the problem.
#[derive(Debug, thiserror::Error)]
#[error("workflow {source_name}: {problem}")]
pub struct WorkflowError {
    source_name: String,
    problem: String,
}

/// One step of the workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Name in command ids, results and logs.
    pub name: String,
    /// Service whose queue (`<prefix>.cmd.<service>`) receives the step's commands.
    pub service: String,
    /// How long to wait for the reply to one command.
    pub timeout: Duration,
    /// How much of the card the command carries: the full number (authorization), a
    /// keyed fingerprint (risk) or only the last four digits (the default).
    pub card: CardExposure,
    /// Whether a later decline or failure sends this step a compensate command.
    pub compensate: bool,
    /// Whether the step changes something outside Baton (a hold, a transfer). A timed-out
    /// attempt of such a step is *in doubt*: it may have happened, so it is only ever
    /// retried with the same command id, never replaced by a fallback.
    pub side_effects: bool,
    /// Attempts and backoff for each visit of the step.
    pub retry: RetryPolicy,
    /// Attempts and backoff for the step's compensation.
    pub compensation_retry: RetryPolicy,
    /// What to do when the step's service is unavailable.
    pub fallback: Option<Fallback>,
    /// Reason codes the step's service may decline or fail with (`reasons = [...]`):
    /// they are metric label values as they are; any other becomes `other`.
    pub reasons: Vec<String>,
    /// Run the step only when this holds for the payment (`when = "…"`); otherwise it
    /// is skipped: no command, recorded as `skipped`, never compensated.
    pub when: Option<Condition>,
    /// The parallel group it belongs to (`group = "…"`): adjacent steps of one group
    /// are sent at once and the payment goes on when all have decided.
    pub group: Option<String>,
}

/// How often and how patiently a command is re-sent after a timeout or a transient error.
/// A `declined` reply is final and never retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, first one included (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubles each time, with full jitter.
    pub initial_backoff: Duration,
    /// Cap on one delay.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The delays between attempts: exponential from `initial_backoff`, capped at
    /// `max_backoff`, each with full jitter (a random share of the delay) so that
    /// payments retrying together do not hit a service in lockstep.
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        let initial = u64::try_from(self.initial_backoff.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        tokio_retry::strategy::ExponentialBackoff::from_millis(2)
            .factor(initial.div_ceil(2))
            .max_delay(self.max_backoff)
            .map(tokio_retry::strategy::jitter)
            .take(self.attempts.saturating_sub(1) as usize)
    }
}

/// A step's fallback when its service is unavailable (breaker open or retries spent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Send the command to another service's queue instead.
    Service(String),
    /// Approve without the service when the amount is at most `max_amount_minor`; the
    /// step is marked `degraded` in the result.
    Approve {
        /// Largest amount (minor units) approved this way.
        max_amount_minor: u64,
    },
}

/// A circuit breaker's thresholds, per service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failures (timeouts, errors) within `window` that open the breaker.
    pub failure_threshold: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long the breaker stays open before letting one probe through (half-open).
    pub open_for: Duration,
}

/// Where a payment waits when a service stays unavailable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkingPolicy {
    /// Delay of each tier; the n-th parking of a payment uses tier min(n, last).
    pub tiers: Vec<Duration>,
    /// Parkings after which the payment fails (`service_unavailable`).
    pub max_parks: u32,
}

impl ParkingPolicy {
    /// Each tier's delay in milliseconds (the parking queues are named after them).
    pub fn delays_ms(&self) -> Vec<u64> {
        self.tiers
            .iter()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .collect()
    }

    /// The tier index for the `parked`-th parking (0-based count of earlier parkings).
    pub fn tier_for(&self, parked: u32) -> usize {
        (parked as usize).min(self.tiers.len().saturating_sub(1))
    }
}

/// The ordered steps every payment runs through, and the policies around them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workflow {
    steps: Vec<Step>,
    /// What each step declared it needs (`needs = [...]`), by the step's index: the
    /// earlier steps whose data its service reads. Checked when the file is read (each
    /// runs whenever the step does); the saga does not read it, every command carries the
    /// data of every earlier approved step, so it is not part of the digest.
    needs: Vec<Vec<String>>,
    /// Circuit-breaker thresholds by service (every service the workflow uses has one).
    breakers: Vec<(String, BreakerPolicy)>,
    /// Commands in flight at once toward one service, from this orchestrator.
    max_in_flight_per_service: usize,
    parking: ParkingPolicy,
    /// The file (or `(built-in default)`) it came from, for errors found after parsing.
    source_name: String,
}

impl Workflow {
    /// The workflow shipped with Baton.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_WORKFLOW, "(built-in default)")
            .expect("the built-in workflow is valid; a unit test checks it")
    }

    /// A short fingerprint of what the workflow does (steps and every policy; not `needs`,
    /// which changes nothing a payment does, nor the file's name, comments or layout):
    /// orchestrators announce it on the broker, and `baton doctor` flags replicas of one
    /// request queue whose fingerprints differ. Stable for one Baton version; 16 hex
    /// digits of a SHA-256.
    pub fn digest(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let described = format!(
            "{:?}|{:?}|{}|{:?}",
            self.steps, self.breakers, self.max_in_flight_per_service, self.parking
        );
        Sha256::digest(described.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The file it was read from, or `(built-in default)`.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Reads and validates a workflow file.
    pub fn load(path: &Path) -> Result<Self, WorkflowError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| WorkflowError {
            source_name: name.clone(),
            problem: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, &name)
    }

    /// Checks that the card keys a step needs are there: a step with
    /// `card = "fingerprint"` cannot run without them.
    pub fn check_card_keys(&self, have_keys: bool) -> Result<(), WorkflowError> {
        match self
            .steps
            .iter()
            .position(|s| s.card == CardExposure::Fingerprint)
        {
            Some(i) if !have_keys => Err(WorkflowError {
                source_name: self.source_name.clone(),
                problem: format!(
                    "steps[{i}] ({:?}): card = \"fingerprint\" needs the card key: pass \
                     --card-key-file FILE (BATON_CARD_KEY_FILE), the same file the step's \
                     service uses",
                    self.steps[i].name
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The earlier steps whose data the `i`-th step's service reads, as its `needs`
    /// lists them (a `when` reading `steps.<name>` is checked on its own).
    pub fn needs(&self, i: usize) -> &[String] {
        self.needs.get(i).map_or(&[], Vec::as_slice)
    }

    /// Every service the workflow sends commands to (fallbacks included), without
    /// repeats.
    pub fn services(&self) -> Vec<&str> {
        self.breakers.iter().map(|(s, _)| s.as_str()).collect()
    }

    /// The breaker thresholds of each service.
    pub fn breakers(&self) -> &[(String, BreakerPolicy)] {
        &self.breakers
    }

    /// Commands in flight at once toward one service from one orchestrator.
    pub fn max_in_flight_per_service(&self) -> usize {
        self.max_in_flight_per_service
    }

    /// Where payments wait while a service is unavailable.
    pub fn parking(&self) -> &ParkingPolicy {
        &self.parking
    }

    /// `reason` as a metric label: `""` for none, the code itself when Baton gives it
    /// ([`BATON_REASONS`]) or a step declares it (`reasons = [...]`), else `other` — so
    /// the label set is the workflow's, whatever a service answers.
    pub fn reason_label<'a>(&self, reason: Option<&'a str>) -> &'a str {
        match reason {
            None => "",
            Some(r)
                if BATON_REASONS.contains(&r)
                    || self.steps.iter().any(|s| s.reasons.iter().any(|k| k == r)) =>
            {
                r
            }
            Some(_) => "other",
        }
    }
}
