//! Reading a workflow file: TOML with unknown keys refused, every value checked, every
//! error naming the entry and what to write instead.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    steps: Vec<Entry>,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    parking: Option<ParkingEntry>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Defaults {
    retry: Option<RetryEntry>,
    breaker: Option<BreakerEntry>,
    max_in_flight_per_service: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Entry {
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
    needs: Option<Vec<String>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryEntry {
    attempts: Option<u32>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(super) struct BreakerEntry {
    failure_threshold: Option<u32>,
    window_ms: Option<u64>,
    open_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FallbackEntry {
    service: Option<String>,
    approve_below_minor: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ParkingEntry {
    tiers_ms: Vec<u64>,
    max_parks: u32,
}

/// Defaults of the policies, when neither the step nor `[defaults]` sets them.
pub(super) const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    initial_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_millis(2_000),
};
pub(super) const DEFAULT_COMPENSATION_RETRY: RetryPolicy = RetryPolicy {
    attempts: 5,
    initial_backoff: Duration::from_millis(200),
    max_backoff: Duration::from_millis(5_000),
};
pub(super) const DEFAULT_BREAKER: BreakerPolicy = BreakerPolicy {
    failure_threshold: 5,
    window: Duration::from_secs(10),
    open_for: Duration::from_secs(5),
};
pub(super) const DEFAULT_MAX_IN_FLIGHT: usize = 64;

pub(super) fn default_parking() -> ParkingPolicy {
    ParkingPolicy {
        tiers: vec![
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(30),
        ],
        max_parks: 5,
    }
}

pub(super) fn retry_policy(
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

pub(super) fn breaker_policy(
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
pub(super) const MAX_TIMEOUT_MS: u64 = 600_000;

/// A reason code: what a metric label may carry.
pub(super) fn valid_reason(reason: &str) -> bool {
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

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Where a condition's error is, as `: line L, column C: message`, with the expression
/// and a caret under the spot: the file's line and column when the expression is one
/// line written as it is (no escapes), else the line and column within the expression.
pub(super) fn where_in(
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

/// Why the step `name` (at `at`, of `group`, run `when`) cannot list `need` in its
/// `needs`, given the steps before it and the names of those after it: a needed step must
/// come earlier, outside the step's own group (whose commands leave together), and run
/// whenever this one does, or the step's service could get a command without the data.
pub(super) fn refused_need(
    at: &str,
    (name, group, when): (&str, Option<&String>, Option<&Condition>),
    need: &str,
    earlier: &[Step],
    later: &[String],
) -> Option<String> {
    let Some(needed) = earlier.iter().find(|s| s.name == need) else {
        return Some(if need == name {
            format!(
                "{at}: needs {need:?}, itself; needs lists the earlier steps whose data its \
                 service reads: remove {need:?}"
            )
        } else if let Some(j) = later.iter().position(|s| s == need) {
            format!(
                "{at}: needs {need:?}, which comes later (steps[{}]): its data is not there \
                 yet; move {need:?} before {name:?}, or remove it from needs",
                earlier.len() + 1 + j
            )
        } else {
            let known = if earlier.is_empty() {
                "none comes before this one".to_owned()
            } else {
                let names: Vec<&str> = earlier.iter().map(|s| s.name.as_str()).collect();
                format!("those before this one are {}", names.join(", "))
            };
            format!("{at}: needs {need:?}, which is not a step of the workflow; {known}")
        });
    };
    if let Some(group) = group.filter(|g| needed.group.as_ref() == Some(*g)) {
        return Some(format!(
            "{at}: needs {need:?}, which is in its own group {group:?}: the group's commands \
             are sent at once, so {need:?}'s data is not there yet; move {name:?} out of the \
             group, after it"
        ));
    }
    let needed_when = needed.when.as_ref()?;
    if when.map(Condition::source) == Some(needed_when.source()) {
        return None;
    }
    Some(format!(
        "{at}: needs {need:?}, which has a condition (when = {:?}): a payment that skips \
         {need:?} would reach {name:?} without its data; give {name:?} the same condition, \
         or remove it from {need:?}",
        needed_when.source()
    ))
}

impl Workflow {
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
        let mut needs: Vec<Vec<String>> = Vec::with_capacity(file.steps.len());
        let names: Vec<String> = file.steps.iter().map(|e| e.name.clone()).collect();
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
            let needed = entry.needs.unwrap_or_default();
            for (k, need) in needed.iter().enumerate() {
                if needed[..k].contains(need) {
                    return Err(fail(format!(
                        "{at}: needs lists {need:?} twice; list it once"
                    )));
                }
                let this = (entry.name.as_str(), entry.group.as_ref(), when.as_ref());
                if let Some(problem) = refused_need(&at, this, need, &steps, &names[i + 1..]) {
                    return Err(fail(problem));
                }
            }
            needs.push(needed);
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
            needs,
            breakers,
            max_in_flight_per_service,
            parking,
            source_name: source_name.to_owned(),
        })
    }
}
