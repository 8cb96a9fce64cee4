//! The workflow: which steps a payment runs through, in which order, and how each one is
//! reached. It is data (a TOML file), not code, so adding a step never means changing the
//! orchestrator. This module only parses and validates it; running it is the saga's job.

use crate::condition::Condition;
use baton_contract::CardExposure;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// The workflow that ships with Baton (`workflows/default.toml`), used when no file is
/// given so the binary works from any directory.
pub const DEFAULT_WORKFLOW: &str = include_str!("../workflows/default.toml");

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
    /// Circuit-breaker thresholds by service (every service the workflow uses has one).
    breakers: Vec<(String, BreakerPolicy)>,
    /// Commands in flight at once toward one service, from this orchestrator.
    max_in_flight_per_service: usize,
    parking: ParkingPolicy,
    /// The file (or `(built-in default)`) it came from, for errors found after parsing.
    source_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    steps: Vec<Entry>,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    parking: Option<ParkingEntry>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Defaults {
    retry: Option<RetryEntry>,
    breaker: Option<BreakerEntry>,
    max_in_flight_per_service: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    service: Option<String>,
    timeout_ms: u64,
    card: Option<String>,
    /// Replaced by `card`; still parsed so that a file using it gets a message naming
    /// the replacement instead of "unknown field".
    card_number: Option<toml::Value>,
    #[serde(default)]
    compensate: bool,
    side_effects: Option<bool>,
    retry: Option<RetryEntry>,
    compensation_retry: Option<RetryEntry>,
    breaker: Option<BreakerEntry>,
    fallback: Option<FallbackEntry>,
    reasons: Option<Vec<String>>,
    when: Option<toml::Spanned<String>>,
    group: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RetryEntry {
    attempts: Option<u32>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct BreakerEntry {
    failure_threshold: Option<u32>,
    window_ms: Option<u64>,
    open_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FallbackEntry {
    service: Option<String>,
    approve_below_minor: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParkingEntry {
    tiers_ms: Vec<u64>,
    max_parks: u32,
}

/// Defaults of the policies, when neither the step nor `[defaults]` sets them.
const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    initial_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_millis(2_000),
};
const DEFAULT_COMPENSATION_RETRY: RetryPolicy = RetryPolicy {
    attempts: 5,
    initial_backoff: Duration::from_millis(200),
    max_backoff: Duration::from_millis(5_000),
};
const DEFAULT_BREAKER: BreakerPolicy = BreakerPolicy {
    failure_threshold: 5,
    window: Duration::from_secs(10),
    open_for: Duration::from_secs(5),
};
const DEFAULT_MAX_IN_FLIGHT: usize = 64;

fn default_parking() -> ParkingPolicy {
    ParkingPolicy {
        tiers: vec![
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(30),
        ],
        max_parks: 5,
    }
}

fn retry_policy(
    base: &RetryPolicy,
    entry: Option<RetryEntry>,
    at: &str,
    key: &str,
) -> Result<RetryPolicy, String> {
    let Some(e) = entry else {
        return Ok(base.clone());
    };
    let policy = RetryPolicy {
        attempts: e.attempts.unwrap_or(base.attempts),
        initial_backoff: e
            .initial_backoff_ms
            .map(Duration::from_millis)
            .unwrap_or(base.initial_backoff),
        max_backoff: e
            .max_backoff_ms
            .map(Duration::from_millis)
            .unwrap_or(base.max_backoff),
    };
    if !(1..=100).contains(&policy.attempts) {
        return Err(format!("{at}: {key}.attempts must be between 1 and 100"));
    }
    if policy.max_backoff < policy.initial_backoff {
        return Err(format!(
            "{at}: {key}.max_backoff_ms must not be below initial_backoff_ms"
        ));
    }
    Ok(policy)
}

fn breaker_policy(
    base: &BreakerPolicy,
    entry: Option<BreakerEntry>,
    at: &str,
) -> Result<BreakerPolicy, String> {
    let Some(e) = entry else {
        return Ok(base.clone());
    };
    let policy = BreakerPolicy {
        failure_threshold: e.failure_threshold.unwrap_or(base.failure_threshold),
        window: e
            .window_ms
            .map(Duration::from_millis)
            .unwrap_or(base.window),
        open_for: e
            .open_ms
            .map(Duration::from_millis)
            .unwrap_or(base.open_for),
    };
    if policy.failure_threshold == 0 || policy.window.is_zero() || policy.open_for.is_zero() {
        return Err(format!(
            "{at}: breaker.failure_threshold, window_ms and open_ms must be positive"
        ));
    }
    Ok(policy)
}

/// Longest accepted timeout: a reply later than this is an outage, not latency.
const MAX_TIMEOUT_MS: u64 = 600_000;

/// A reason code: what a metric label may carry.
fn valid_reason(reason: &str) -> bool {
    !reason.is_empty()
        && reason.len() <= 48
        && reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Reasons Baton itself gives a result, whatever the workflow.
pub const BATON_REASONS: &[&str] = &[
    "service_unavailable",
    "abandoned",
    "invalid_request",
    "payment_id_reused",
    "journal_corrupt",
    "declined",
    "failed",
];

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Where a condition's error is, as `: line L, column C: message`, with the expression
/// and a caret under the spot: the file's line and column when the expression is one
/// line written as it is (no escapes), else the line and column within the expression.
fn where_in(
    text: &str,
    spanned: &toml::Spanned<String>,
    e: &crate::condition::ConditionError,
) -> String {
    let expr = spanned.get_ref();
    let span = spanned.span();
    let raw = text.get(span.clone()).unwrap_or("");
    let verbatim =
        !expr.contains('\n') && raw.len() == expr.len() + 2 && raw[1..].starts_with(expr.as_str());
    let (line, column, of) = if verbatim {
        let before = &text[..span.start];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        (line, column + e.column as usize, "")
    } else {
        (e.line as usize, e.column as usize, " of the expression")
    };
    let shown = expr
        .lines()
        .nth(e.line.saturating_sub(1) as usize)
        .unwrap_or("");
    format!(
        ": line {line}, column {column}{of}: {}\n    {shown}\n    {:>width$}",
        e.message,
        "^",
        width = e.column as usize
    )
}

impl Workflow {
    /// The workflow shipped with Baton.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_WORKFLOW, "(built-in default)")
            .expect("the built-in workflow is valid; a unit test checks it")
    }

    /// A short fingerprint of what the workflow does (steps and every policy; not the
    /// file's name, comments or layout): orchestrators announce it on the broker, and
    /// `baton doctor` flags replicas of one request queue whose fingerprints differ.
    /// Stable for one Baton version; 16 hex digits of a SHA-256.
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

    /// Parses and validates workflow text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, WorkflowError> {
        let fail = |problem: String| WorkflowError {
            source_name: source_name.to_owned(),
            problem,
        };
        let file: File = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        if file.steps.is_empty() {
            return Err(fail("it has no [[steps]] entry; add at least one".into()));
        }
        let default_retry =
            retry_policy(&DEFAULT_RETRY, file.defaults.retry, "[defaults]", "retry")
                .map_err(fail)?;
        let default_breaker =
            breaker_policy(&DEFAULT_BREAKER, file.defaults.breaker, "[defaults]").map_err(fail)?;
        let max_in_flight_per_service = file
            .defaults
            .max_in_flight_per_service
            .unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight_per_service == 0 {
            return Err(fail(
                "[defaults]: max_in_flight_per_service must be at least 1".into(),
            ));
        }
        let parking = match file.parking {
            None => default_parking(),
            Some(p) => {
                if p.tiers_ms.is_empty() || p.tiers_ms.contains(&0) {
                    return Err(fail(
                        "[parking]: tiers_ms must list at least one positive delay".into(),
                    ));
                }
                ParkingPolicy {
                    tiers: p.tiers_ms.into_iter().map(Duration::from_millis).collect(),
                    max_parks: p.max_parks,
                }
            }
        };
        let mut breakers: Vec<(String, BreakerPolicy)> = Vec::new();
        let mut steps: Vec<Step> = Vec::with_capacity(file.steps.len());
        for (i, entry) in file.steps.into_iter().enumerate() {
            let at = format!("steps[{i}] ({:?})", entry.name);
            if !valid_name(&entry.name) {
                return Err(fail(format!(
                    "{at}: name must be 1-64 characters of a-z, 0-9, '_' or '-'"
                )));
            }
            if steps.iter().any(|s| s.name == entry.name) {
                return Err(fail(format!(
                    "{at}: a step named {:?} is already defined; names must be unique",
                    entry.name
                )));
            }
            let service = entry.service.unwrap_or_else(|| entry.name.clone());
            if !valid_name(&service) {
                return Err(fail(format!(
                    "{at}: service must be 1-64 characters of a-z, 0-9, '_' or '-'"
                )));
            }
            if entry.timeout_ms == 0 || entry.timeout_ms > MAX_TIMEOUT_MS {
                return Err(fail(format!(
                    "{at}: timeout_ms must be between 1 and {MAX_TIMEOUT_MS}, got {}",
                    entry.timeout_ms
                )));
            }
            if entry.card_number.is_some() {
                return Err(fail(format!(
                    "{at}: card_number was replaced by card = \"number\" | \"fingerprint\" | \"last4\" \
                     (card_number = true is card = \"number\"; only a step that charges the card, \
                     such as authorization, should get it)"
                )));
            }
            let card = match entry.card.as_deref() {
                None => CardExposure::default(),
                Some(text) => CardExposure::parse(text).ok_or_else(|| {
                    fail(format!(
                        "{at}: card must be \"number\", \"fingerprint\" or \"last4\", got {text:?}"
                    ))
                })?,
            };
            let side_effects = entry.side_effects.unwrap_or(entry.compensate);
            let retry = retry_policy(&default_retry, entry.retry, &at, "retry").map_err(fail)?;
            let compensation_retry = retry_policy(
                &DEFAULT_COMPENSATION_RETRY,
                entry.compensation_retry,
                &at,
                "compensation_retry",
            )
            .map_err(fail)?;
            let fallback = match entry.fallback {
                None => None,
                Some(_) if side_effects => {
                    return Err(fail(format!(
                        "{at}: a step with side effects cannot have a fallback: a timed-out \
                         attempt may have happened, and a second service could act again"
                    )))
                }
                Some(FallbackEntry {
                    service: Some(alternate),
                    approve_below_minor: None,
                }) => {
                    if !valid_name(&alternate) || alternate == service {
                        return Err(fail(format!(
                            "{at}: fallback.service must be another service name of a-z, 0-9, '_' or '-'"
                        )));
                    }
                    Some(Fallback::Service(alternate))
                }
                Some(FallbackEntry {
                    service: None,
                    approve_below_minor: Some(limit),
                }) => Some(Fallback::Approve {
                    max_amount_minor: limit,
                }),
                Some(_) => {
                    return Err(fail(format!(
                        "{at}: fallback takes exactly one of `service` or `approve_below_minor`"
                    )))
                }
            };
            // A side-effecting step that cannot be undone must come last: a step after it
            // could decline once the money has moved, and nothing could take it back.
            if let Some(final_step) = steps.iter().find(|s| s.side_effects && !s.compensate) {
                return Err(fail(format!(
                    "{at}: comes after {:?}, which has side effects and no compensation; a \
                     decline here could not be undone. Put this step before {:?}",
                    final_step.name, final_step.name
                )));
            }
            let reasons = entry.reasons.unwrap_or_default();
            if let Some(bad) = reasons.iter().find(|r| !valid_reason(r)) {
                return Err(fail(format!(
                    "{at}: reasons: {bad:?} is not a reason code (1-48 characters of a-z, 0-9 or '_')"
                )));
            }
            let breaker = breaker_policy(&default_breaker, entry.breaker, &at).map_err(fail)?;
            let mut with_breaker = vec![service.clone()];
            if let Some(Fallback::Service(alternate)) = &fallback {
                with_breaker.push(alternate.clone());
            }
            for name in with_breaker {
                match breakers.iter().find(|(s, _)| *s == name) {
                    Some((_, existing)) if *existing != breaker && entry.breaker.is_some() => {
                        return Err(fail(format!(
                            "{at}: service {name:?} already has different breaker settings; \
                             a breaker is per service"
                        )))
                    }
                    Some(_) => {}
                    None => breakers.push((name, breaker.clone())),
                }
            }
            if let Some(group) = &entry.group {
                if !valid_name(group) {
                    return Err(fail(format!(
                        "{at}: group must be 1-64 characters of a-z, 0-9, '_' or '-'"
                    )));
                }
                let previous = steps.last().and_then(|s| s.group.as_ref());
                if previous != Some(group) && steps.iter().any(|s| s.group.as_ref() == Some(group))
                {
                    return Err(fail(format!(
                        "{at}: the steps of group {group:?} must be next to each other"
                    )));
                }
                if side_effects && !entry.compensate {
                    return Err(fail(format!(
                        "{at}: a step with side effects and no compensation cannot be in a \
                         group: a member's decline could not undo it"
                    )));
                }
            }
            let when = match &entry.when {
                None => None,
                Some(spanned) => {
                    // Steps of the same group decide at once: none reads another's data.
                    let earlier: Vec<&str> = steps
                        .iter()
                        .filter(|s| entry.group.is_none() || s.group != entry.group)
                        .map(|s| s.name.as_str())
                        .collect();
                    let condition = Condition::compile(spanned.get_ref(), &earlier)
                        .map_err(|e| fail(format!("{at}: when{}", where_in(text, spanned, &e))))?;
                    if let Some(read) = condition
                        .reads()
                        .iter()
                        .find(|r| steps.iter().any(|s| &s.name == *r && s.when.is_some()))
                    {
                        return Err(fail(format!(
                            "{at}: when reads steps.{read}, but {read:?} has a condition \
                             of its own and may be skipped; a condition may only read steps \
                             that always run (drop the condition on {read:?} or read the \
                             payment instead)"
                        )));
                    }
                    Some(condition)
                }
            };
            steps.push(Step {
                name: entry.name,
                service,
                timeout: Duration::from_millis(entry.timeout_ms),
                card,
                compensate: entry.compensate,
                side_effects,
                retry,
                compensation_retry,
                fallback,
                reasons,
                when,
                group: entry.group,
            });
        }
        for (i, step) in steps.iter().enumerate() {
            let Some(group) = &step.group else { continue };
            if steps
                .iter()
                .filter(|s| s.group.as_ref() == Some(group))
                .count()
                < 2
            {
                return Err(fail(format!(
                    "steps[{i}] ({:?}): group {group:?} has no other step; a group decides \
                     two or more steps at once",
                    step.name
                )));
            }
        }
        Ok(Self {
            steps,
            breakers,
            max_in_flight_per_service,
            parking,
            source_name: source_name.to_owned(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_the_workflows_known_set_plus_other() {
        let workflow = Workflow::builtin();
        assert_eq!(workflow.reason_label(None), "");
        assert_eq!(
            workflow.reason_label(Some("card_declined")),
            "card_declined"
        );
        assert_eq!(workflow.reason_label(Some("high_risk")), "high_risk");
        assert_eq!(workflow.reason_label(Some("abandoned")), "abandoned");
        // Well-formed but not declared: a service cannot grow the label set.
        assert_eq!(workflow.reason_label(Some("made_up_code_17")), "other");
        assert_eq!(
            workflow.reason_label(Some("Card declined: 4242424242424242")),
            "other"
        );
        let declared = Workflow::parse(
            "[[steps]]\nname = \"kyc\"\ntimeout_ms = 100\nreasons = [\"sanctioned\"]\n",
            "t",
        )
        .unwrap();
        assert_eq!(declared.reason_label(Some("sanctioned")), "sanctioned");
        assert_eq!(declared.reason_label(Some("card_declined")), "other");
        let bad = Workflow::parse(
            "[[steps]]\nname = \"kyc\"\ntimeout_ms = 100\nreasons = [\"Bad Code\"]\n",
            "t",
        )
        .unwrap_err();
        assert!(
            bad.to_string()
                .contains("reasons: \"Bad Code\" is not a reason code"),
            "{bad}"
        );
    }

    #[test]
    fn the_builtin_workflow_is_valid_and_in_order() {
        let wf = Workflow::builtin();
        let names: Vec<_> = wf.steps().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["authorization", "risk", "pci", "transaction"]);
        assert!(wf.steps()[0].compensate);
        let cards: Vec<_> = wf.steps().iter().map(|s| s.card).collect();
        assert_eq!(
            cards,
            [
                CardExposure::Number,
                CardExposure::Fingerprint,
                CardExposure::Last4,
                CardExposure::Last4
            ],
            "only authorization gets the number; risk a fingerprint"
        );
        assert_eq!(wf.steps()[3].service, "transaction");
    }

    #[test]
    fn a_new_step_is_one_entry() {
        // Before the transaction, which moves the money and cannot be undone.
        let sanctions = "[[steps]]\nname = \"sanctions\"\nservice = \"sanctions-v2\"\ntimeout_ms = 500\n\n[[steps]]\nname = \"transaction\"";
        let text = DEFAULT_WORKFLOW.replacen("[[steps]]\nname = \"transaction\"", sanctions, 1);
        let wf = Workflow::parse(&text, "t").unwrap();
        let names: Vec<_> = wf.steps().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["authorization", "risk", "pci", "sanctions", "transaction"]
        );
        let added = &wf.steps()[3];
        assert_eq!(added.service, "sanctions-v2");
        assert_eq!(added.timeout, Duration::from_millis(500));
        assert_eq!(wf.services().len(), 5);
        assert_eq!(added.retry, DEFAULT_RETRY);
        assert!(!added.side_effects);
    }

    #[test]
    fn nothing_may_follow_a_step_that_cannot_be_undone() {
        let text =
            format!("{DEFAULT_WORKFLOW}\n[[steps]]\nname = \"sanctions\"\ntimeout_ms = 500\n");
        let e = Workflow::parse(&text, "wf.toml").unwrap_err().to_string();
        assert!(
            e.contains("steps[4]") && e.contains("\"transaction\"") && e.contains("before"),
            "{e}"
        );
    }

    fn error_of(text: &str) -> String {
        Workflow::parse(text, "wf.toml").unwrap_err().to_string()
    }

    #[test]
    fn mistakes_are_named() {
        let typo = error_of("[[steps]]\nname = \"risk\"\ntimout_ms = 5\n");
        assert!(
            typo.contains("wf.toml") && typo.contains("timout_ms"),
            "{typo}"
        );

        let dup = error_of(
            "[[steps]]\nname = \"risk\"\ntimeout_ms = 5\n[[steps]]\nname = \"risk\"\ntimeout_ms = 5\n",
        );
        assert!(dup.contains("steps[1]") && dup.contains("unique"), "{dup}");

        let zero = error_of("[[steps]]\nname = \"risk\"\ntimeout_ms = 0\n");
        assert!(
            zero.contains("steps[0]") && zero.contains("timeout_ms"),
            "{zero}"
        );

        let bad = error_of("[[steps]]\nname = \"Risk Check\"\ntimeout_ms = 5\n");
        assert!(bad.contains("name must be"), "{bad}");

        let empty = error_of("steps = []\n");
        assert!(empty.contains("no [[steps]]"), "{empty}");
    }

    const CONDITIONAL: &str = r#"
[[steps]]
name = "authorization"
timeout_ms = 100
card = "number"
compensate = true

[[steps]]
name = "fx"
service = "pci"
timeout_ms = 100
when = "payment.merchant_currency != payment.amount.currency"

[[steps]]
name = "risk"
timeout_ms = 100

[[steps]]
name = "edd"
service = "pci"
timeout_ms = 100
when = "payment.amount.minor >= 1000000"

[[steps]]
name = "three_ds"
service = "pci"
timeout_ms = 100
when = "steps.risk.score > 70"
"#;

    #[test]
    fn conditions_are_compiled_with_the_steps() {
        let wf = Workflow::parse(CONDITIONAL, "wf.toml").unwrap();
        let whens: Vec<Option<&str>> = wf
            .steps()
            .iter()
            .map(|s| s.when.as_ref().map(|c| c.source()))
            .collect();
        assert_eq!(
            whens,
            [
                None,
                Some("payment.merchant_currency != payment.amount.currency"),
                None,
                Some("payment.amount.minor >= 1000000"),
                Some("steps.risk.score > 70"),
            ]
        );
        assert_eq!(wf.steps()[4].when.as_ref().unwrap().reads(), ["risk"]);
        assert!(Workflow::builtin().steps().iter().all(|s| s.when.is_none()));
    }

    #[test]
    fn condition_errors_name_the_entry_line_and_column() {
        let syntax = error_of(&CONDITIONAL.replace(">= 1000000", ">== 1000000"));
        assert!(
            syntax.contains("wf.toml")
                && syntax.contains("steps[3] (\"edd\"): when: line 22, column 32: syntax error"),
            "{syntax}"
        );
        assert!(
            syntax.contains("\n    payment.amount.minor >== 1000000\n                           ^"),
            "{syntax}"
        );
        let field = error_of(&CONDITIONAL.replace("payment.amount.minor", "payment.amount.minr"));
        assert!(
            field.contains("steps[3] (\"edd\"): when: line 22, column 23: unknown field")
                && field.contains("`payment.amount` has no `minr`; it has minor, currency"),
            "{field}"
        );
        let types = error_of(&CONDITIONAL.replace(">= 1000000", ">= '1000000'"));
        assert!(
            types.contains("steps[3] (\"edd\"): when: line") && types.contains("type error"),
            "{types}"
        );
        let later = error_of(&CONDITIONAL.replace("steps.risk.score", "steps.three_ds.score"));
        assert!(
            later.contains("steps[4] (\"three_ds\")")
                && later.contains("unknown step: `steps.three_ds`")
                && later.contains("authorization, fx, risk, edd"),
            "{later}"
        );
        // Escaped or multi-line: the position within the expression.
        let multi = error_of(&CONDITIONAL.replace(
            "when = \"payment.amount.minor >= 1000000\"",
            "when = \"\"\"\npayment.amount.minor >= 1000000 &&\n  payment.card.bran == 'visa'\"\"\"",
        ));
        assert!(
            multi.contains("when: line 2, column 15 of the expression: unknown field")
                && multi.contains("`payment.card` has no `bran`"),
            "{multi}"
        );
    }

    #[test]
    fn a_condition_on_a_step_another_reads_is_refused() {
        let e = error_of(&CONDITIONAL.replace(
            "when = \"steps.risk.score > 70\"",
            "when = \"has(steps.fx.rate)\"",
        ));
        assert!(
            e.contains("steps[4] (\"three_ds\"): when reads steps.fx, but \"fx\" has a condition"),
            "{e}"
        );
    }

    #[test]
    fn groups_are_adjacent_undoable_and_of_two_or_more() {
        let steps = |extra: [&str; 3]| {
            format!(
                "[[steps]]\nname = \"a\"\ntimeout_ms = 5\n{}\n\
                 [[steps]]\nname = \"b\"\ntimeout_ms = 5\n{}\n\
                 [[steps]]\nname = \"c\"\ntimeout_ms = 5\n{}\n",
                extra[0], extra[1], extra[2]
            )
        };
        let g = "group = \"checks\"";
        let wf = Workflow::parse(&steps([g, g, ""]), "t").unwrap();
        let groups: Vec<Option<&str>> = wf.steps().iter().map(|s| s.group.as_deref()).collect();
        assert_eq!(groups, [Some("checks"), Some("checks"), None]);
        let apart = error_of(&steps([g, "", g]));
        assert!(
            apart.contains("steps[2] (\"c\")") && apart.contains("next to each other"),
            "{apart}"
        );
        let alone = error_of(&steps(["", g, ""]));
        assert!(
            alone.contains("steps[1] (\"b\")") && alone.contains("no other step"),
            "{alone}"
        );
        let irreversible = error_of(&steps([g, "group = \"checks\"\nside_effects = true", ""]));
        assert!(
            irreversible.contains("cannot be in a group"),
            "{irreversible}"
        );
        let reads = error_of(&steps([g, "group = \"checks\"\nwhen = \"steps.a.ok\"", ""]));
        assert!(
            reads.contains("steps[1] (\"b\"): when") && reads.contains("unknown step: `steps.a`"),
            "{reads}"
        );
    }

    #[test]
    fn policies_have_defaults_and_can_be_set_per_step() {
        let wf = Workflow::parse(
            r#"
            [defaults]
            retry = { attempts = 4, initial_backoff_ms = 10, max_backoff_ms = 40 }
            max_in_flight_per_service = 8
            [parking]
            tiers_ms = [100, 1000]
            max_parks = 2
            [[steps]]
            name = "authorization"
            timeout_ms = 100
            compensate = true
            [[steps]]
            name = "risk"
            timeout_ms = 100
            retry = { attempts = 1 }
            breaker = { failure_threshold = 2, window_ms = 1000, open_ms = 500 }
            fallback = { approve_below_minor = 5000 }
            [[steps]]
            name = "pci"
            timeout_ms = 100
            fallback = { service = "pci-backup" }
            "#,
            "t",
        )
        .unwrap();
        let [auth, risk, pci] = wf.steps() else {
            panic!("three steps")
        };
        assert!(auth.side_effects, "compensable steps have side effects");
        assert_eq!(auth.retry.attempts, 4);
        assert_eq!(auth.compensation_retry, DEFAULT_COMPENSATION_RETRY);
        assert_eq!(risk.retry.attempts, 1);
        assert_eq!(
            risk.fallback,
            Some(Fallback::Approve {
                max_amount_minor: 5000
            })
        );
        assert_eq!(pci.fallback, Some(Fallback::Service("pci-backup".into())));
        assert_eq!(
            wf.services(),
            ["authorization", "risk", "pci", "pci-backup"]
        );
        let risk_breaker = &wf.breakers()[1].1;
        assert_eq!(risk_breaker.failure_threshold, 2);
        assert_eq!(wf.breakers()[0].1, DEFAULT_BREAKER);
        assert_eq!(wf.max_in_flight_per_service(), 8);
        assert_eq!(wf.parking().max_parks, 2);
        assert_eq!(wf.parking().tier_for(0), 0);
        assert_eq!(wf.parking().tier_for(7), 1);
    }

    #[test]
    fn retry_delays_grow_are_capped_and_jittered() {
        let policy = RetryPolicy {
            attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        };
        let delays: Vec<Duration> = policy.delays().collect();
        assert_eq!(delays.len(), 5, "attempts - 1 delays");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_millis(300)),
            "{delays:?}"
        );
        let one = RetryPolicy {
            attempts: 1,
            ..policy
        };
        assert_eq!(one.delays().count(), 0);
    }

    #[test]
    fn unsafe_or_contradictory_policies_are_refused() {
        let side_effect_fallback = error_of(
            "[[steps]]\nname = \"transaction\"\ntimeout_ms = 5\nside_effects = true\nfallback = { service = \"tx2\" }\n",
        );
        assert!(
            side_effect_fallback.contains("steps[0]")
                && side_effect_fallback.contains("side effects"),
            "{side_effect_fallback}"
        );
        let both = error_of(
            "[[steps]]\nname = \"risk\"\ntimeout_ms = 5\nfallback = { service = \"r2\", approve_below_minor = 5 }\n",
        );
        assert!(both.contains("exactly one"), "{both}");
        let zero =
            error_of("[[steps]]\nname = \"risk\"\ntimeout_ms = 5\nretry = { attempts = 0 }\n");
        assert!(zero.contains("retry.attempts"), "{zero}");
        let typo =
            error_of("[[steps]]\nname = \"risk\"\ntimeout_ms = 5\nretry = { atempts = 2 }\n");
        assert!(typo.contains("atempts"), "{typo}");
        let parking = error_of(
            "[parking]\ntiers_ms = []\nmax_parks = 1\n[[steps]]\nname = \"risk\"\ntimeout_ms = 5\n",
        );
        assert!(parking.contains("tiers_ms"), "{parking}");
    }

    #[test]
    fn the_old_card_number_key_names_its_replacement() {
        let old = error_of(
            "[[steps]]\nname = \"authorization\"\ntimeout_ms = 5\ncard = \"number\"\n\
             [[steps]]\nname = \"risk\"\ntimeout_ms = 5\ncard_number = true\n",
        );
        assert!(
            old.contains("wf.toml")
                && old.contains(
                    "steps[1] (\"risk\"): card_number was replaced by card = \"number\" | \"fingerprint\" | \"last4\""
                ),
            "{old}"
        );
        let off = error_of("[[steps]]\nname = \"pci\"\ntimeout_ms = 5\ncard_number = false\n");
        assert!(
            off.contains("steps[0] (\"pci\"): card_number was replaced"),
            "{off}"
        );
        let typo = error_of("[[steps]]\nname = \"risk\"\ntimeout_ms = 5\ncard = \"hash\"\n");
        assert!(
            typo.contains("steps[0] (\"risk\"): card must be") && typo.contains("\"hash\""),
            "{typo}"
        );
        let wf = Workflow::parse("[[steps]]\nname = \"pci\"\ntimeout_ms = 5\n", "t").unwrap();
        assert_eq!(wf.steps()[0].card, CardExposure::Last4, "the default");
    }

    #[test]
    fn a_fingerprint_step_without_the_card_key_is_refused() {
        let wf = Workflow::builtin();
        let e = wf.check_card_keys(false).unwrap_err().to_string();
        assert!(
            e.contains("(built-in default)")
                && e.contains("steps[1] (\"risk\")")
                && e.contains("--card-key-file"),
            "{e}"
        );
        assert!(wf.check_card_keys(true).is_ok());
        let last4_only =
            Workflow::parse("[[steps]]\nname = \"pci\"\ntimeout_ms = 5\n", "t").unwrap();
        assert!(last4_only.check_card_keys(false).is_ok());
    }
}
