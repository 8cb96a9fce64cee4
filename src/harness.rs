//! `baton workflow test`: a workflow run against scripted service answers, case by case,
//! each result checked against what the case expects — for a workflow's author what
//! MassTransit's test harness is for a consumer's.
//!
//! A case file (TOML) lists `[[cases]]`: a payment, the answers each step's service gives
//! (approve, decline with a reason, error, no answer, a slow answer), and the expected
//! result (status, reason, the result's step lines with outcomes and attempts,
//! compensations, parkings, attention items). Every case runs through
//! [`saga::run`](crate::saga::run) — the orchestrator's own saga, ladder and
//! compensations — over [`ScriptedServices`] and a [`MemoryJournal`] on a tokio runtime
//! whose clock is paused: timeouts, backoffs and parking delays pass at once, so a case
//! that parks five times over minutes takes milliseconds. A parked payment comes back
//! after its tier's delay, as from the retry queue.
//!
//! Not a broker test: publishing, the retry queues, redelivery and the real journal are
//! the integration tests' business.

use crate::metrics::Metrics;
use crate::saga::{self, SagaEnv, SagaOutcome};
use crate::scripted::{Behaviour, MemoryJournal, ScriptedServices};
use crate::workflow::{Fallback, Workflow};
use baton_contract::{
    Action, CardKeys, Command, Limits, PaymentRequest, PaymentResult, Reply, StepOutcome,
    StepRecord,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// A case file that cannot be used, with a message naming the entry and what to fix.
#[derive(Debug, thiserror::Error)]
#[error("cases {source_name}: {problem}")]
pub struct CaseFileError {
    source_name: String,
    problem: String,
}

/// What one scripted service answer does.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// `"approve"` or `{ approve = { …data… } }`: approved, with that reply data.
    Approve(Map<String, Value>),
    /// `{ decline = "reason" }` (optionally `detail = "…"`): a business decline, final.
    Decline {
        /// The reason code.
        reason: String,
        /// The detail, if given.
        detail: Option<String>,
    },
    /// `"error"` or `{ error = "reason" }`: a transient error, retried.
    Error(String),
    /// `"no_answer"`: the command is taken and never answered (the attempt times out).
    NoAnswer,
    /// `{ slow = "3s", then = … }`: the answer `then` (default approve) after a delay.
    Slow(Duration, Box<Answer>),
}

impl Answer {
    fn behaviour(&self, command: &Command) -> Behaviour {
        let id = command.command_id.clone();
        match self {
            Answer::Approve(data) => Behaviour::Answer(Reply::approved(id, data.clone())),
            Answer::Decline { reason, detail } => Behaviour::Answer(Reply::declined(
                id,
                reason.clone(),
                detail.clone().unwrap_or_else(|| "scripted decline".into()),
            )),
            Answer::Error(reason) => {
                Behaviour::Answer(Reply::error(id, reason.clone(), "scripted error"))
            }
            Answer::NoAnswer => Behaviour::Silent,
            Answer::Slow(delay, then) => match then.behaviour(command) {
                Behaviour::Answer(reply) => Behaviour::After(*delay, reply),
                // `then` is never slow or silent: the parser refuses it.
                other => other,
            },
        }
    }
}

/// One service's answers in the order commands arrive; the last repeats. Executes and
/// compensations have their own sequences.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Script {
    /// Answers to the step's commands (empty: approve).
    pub execute: Vec<Answer>,
    /// Answers to its compensate commands (empty: approve).
    pub compensate: Vec<Answer>,
}

/// One expected result line (`steps = [{ step, outcome, attempts, … }]`); absent fields
/// are not checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedStep {
    /// Step name.
    pub step: String,
    /// Outcome.
    pub outcome: StepOutcome,
    /// Commands sent in the deciding visit.
    pub attempts: Option<u32>,
    /// Reason code.
    pub reason: Option<String>,
    /// Approved as a degraded decision.
    pub degraded: Option<bool>,
    /// The fallback service that answered.
    pub via: Option<String>,
}

/// What a case expects; `None` fields are not checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expect {
    /// `completed`, `declined` or `failed`.
    pub status: String,
    /// The result's reason.
    pub reason: Option<String>,
    /// Text the result's detail must contain.
    pub detail_contains: Option<String>,
    /// Every line of the result's `steps`, in order.
    pub steps: Option<Vec<ExpectedStep>>,
    /// The steps compensated, in order.
    pub compensated: Option<Vec<String>>,
    /// The steps whose compensation failed, in order.
    pub compensation_failed: Option<Vec<String>>,
    /// How many times the payment was parked (`parked = true` is "at least once").
    pub parked: Option<Parked>,
    /// Items handed to operators, as `"<kind>:<step>"` (`"in_doubt:transaction"`).
    pub attention: Option<Vec<String>>,
}

/// An expectation on parkings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Parked {
    /// `true`: at least once; `false`: never.
    Ever(bool),
    /// Exactly this many times.
    Times(u32),
}

/// One case: a payment, the services' answers, the expectation.
#[derive(Clone, Debug)]
pub struct Case {
    /// Its name, as printed.
    pub name: String,
    /// The payment.
    pub request: PaymentRequest,
    /// Answers by step name (a step's own service) or fallback service name.
    pub scripts: HashMap<String, Script>,
    /// What the result must be.
    pub expect: Expect,
}

/// A parsed case file.
#[derive(Clone, Debug)]
pub struct CaseFile {
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    cases: Vec<CaseEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseEntry {
    name: String,
    #[serde(default)]
    payment: PaymentEntry,
    #[serde(default)]
    answers: BTreeMap<String, toml::Value>,
    #[serde(default)]
    compensations: BTreeMap<String, toml::Value>,
    expect: ExpectEntry,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PaymentEntry {
    amount: Option<u64>,
    currency: Option<String>,
    merchant_currency: Option<String>,
    merchant_id: Option<String>,
    customer_id: Option<String>,
    card: Option<String>,
    expiry: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectEntry {
    status: String,
    reason: Option<String>,
    detail_contains: Option<String>,
    steps: Option<Vec<StepEntry>>,
    compensated: Option<Vec<String>>,
    compensation_failed: Option<Vec<String>>,
    parked: Option<toml::Value>,
    attention: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepEntry {
    step: String,
    outcome: String,
    attempts: Option<u32>,
    reason: Option<String>,
    degraded: Option<bool>,
    via: Option<String>,
}

const ANSWER_FORMS: &str = "\"approve\", \"error\", \"no_answer\", { approve = { …data… } }, \
     { decline = \"reason\" }, { error = \"reason\" } or { slow = \"2s\", then = … }";

fn parse_answer(value: &toml::Value, nested: bool) -> Result<Answer, String> {
    match value {
        toml::Value::String(s) => match s.as_str() {
            "approve" => Ok(Answer::Approve(Map::new())),
            "error" => Ok(Answer::Error("scripted_error".into())),
            "no_answer" if !nested => Ok(Answer::NoAnswer),
            "no_answer" => Err("a slow answer's `then` cannot be \"no_answer\"".into()),
            "decline" => Err("a decline needs its reason: { decline = \"reason\" }".into()),
            other => Err(format!("unknown answer {other:?}; use {ANSWER_FORMS}")),
        },
        toml::Value::Table(t) => {
            let keys: Vec<&str> = t.keys().map(String::as_str).collect();
            let allowed = |takes: &[&str]| match keys.iter().find(|k| !takes.contains(k)) {
                Some(k) => Err(format!(
                    "unknown key {k:?} in a {} answer; it takes {}",
                    takes[0],
                    takes.join(", ")
                )),
                None => Ok(()),
            };
            if let Some(data) = t.get("approve") {
                allowed(&["approve"])?;
                let data = serde_json::to_value(data).map_err(|e| e.to_string())?;
                return match data {
                    Value::Object(map) => Ok(Answer::Approve(map)),
                    _ => Err("approve's data must be a table: { approve = { score = 85 } }".into()),
                };
            }
            if let Some(reason) = t.get("decline") {
                allowed(&["decline", "detail"])?;
                let reason = reason
                    .as_str()
                    .ok_or("decline's reason must be a string: { decline = \"high_risk\" }")?;
                let detail = match t.get("detail") {
                    Some(d) => Some(d.as_str().ok_or("detail must be a string")?.to_owned()),
                    None => None,
                };
                return Ok(Answer::Decline {
                    reason: reason.to_owned(),
                    detail,
                });
            }
            if let Some(reason) = t.get("error") {
                allowed(&["error"])?;
                let reason = reason
                    .as_str()
                    .ok_or("error's reason must be a string: { error = \"db_busy\" }")?;
                return Ok(Answer::Error(reason.to_owned()));
            }
            if let Some(delay) = t.get("slow") {
                allowed(&["slow", "then"])?;
                if nested {
                    return Err("a slow answer's `then` cannot be slow; add the delays".into());
                }
                let text = delay
                    .as_str()
                    .ok_or("slow must be a duration in a string: { slow = \"3s\" }")?;
                let delay = humantime::parse_duration(text).map_err(|e| {
                    format!(
                        "slow = {text:?} is not a duration ({e}); write \"250ms\", \"3s\", \"1m\""
                    )
                })?;
                let then = match t.get("then") {
                    Some(then) => parse_answer(then, true).map_err(|e| format!("then: {e}"))?,
                    None => Answer::Approve(Map::new()),
                };
                return Ok(Answer::Slow(delay, Box::new(then)));
            }
            Err(format!(
                "unknown answer {{ {} … }}; use {ANSWER_FORMS}",
                keys.join(", ")
            ))
        }
        other => Err(format!(
            "an answer is a string or a table, not a {}; use {ANSWER_FORMS}",
            other.type_str()
        )),
    }
}

fn parse_answers(value: &toml::Value) -> Result<Vec<Answer>, String> {
    match value {
        toml::Value::Array(items) if items.is_empty() => {
            Err("give at least one answer (the last one repeats)".into())
        }
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_answer(item, false).map_err(|e| format!("[{i}]: {e}")))
            .collect(),
        single => parse_answer(single, false)
            .map(|a| vec![a])
            .map_err(|e| format!(": {e}")),
    }
}

fn parse_outcome(text: &str) -> Result<StepOutcome, String> {
    serde_json::from_value(Value::String(text.to_owned())).map_err(|_| {
        format!(
            "unknown outcome {text:?}; use approved, declined, failed, skipped, compensated \
             or compensation_failed"
        )
    })
}

impl CaseFile {
    /// Reads and checks a case file against `workflow`.
    pub fn load(path: &Path, workflow: &Workflow) -> Result<Self, CaseFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CaseFileError {
            source_name: name.clone(),
            problem: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, &name, workflow)
    }

    /// Parses case-file text; every step or service it names must be `workflow`'s.
    pub fn parse(
        text: &str,
        source_name: &str,
        workflow: &Workflow,
    ) -> Result<Self, CaseFileError> {
        let fail = |problem: String| CaseFileError {
            source_name: source_name.to_owned(),
            problem,
        };
        let file: FileEntry = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        if file.cases.is_empty() {
            return Err(fail("it has no [[cases]] entry; add at least one".into()));
        }
        let step_names: Vec<&str> = workflow.steps().iter().map(|s| s.name.as_str()).collect();
        let fallbacks: Vec<&str> = workflow
            .steps()
            .iter()
            .filter_map(|s| match &s.fallback {
                Some(Fallback::Service(service)) => Some(service.as_str()),
                _ => None,
            })
            .collect();
        let mut cases: Vec<Case> = Vec::with_capacity(file.cases.len());
        for (i, entry) in file.cases.into_iter().enumerate() {
            let at = format!("cases[{i}] ({:?})", entry.name);
            if entry.name.trim().is_empty() {
                return Err(fail(format!("{at}: name must not be empty")));
            }
            if cases.iter().any(|c| c.name == entry.name) {
                return Err(fail(format!(
                    "{at}: a case named {:?} is already defined; names must be unique",
                    entry.name
                )));
            }
            let request = payment(&entry.payment, i).map_err(|e| fail(format!("{at}: {e}")))?;
            let mut scripts: HashMap<String, Script> = HashMap::new();
            for (key, value) in &entry.answers {
                if !step_names.contains(&key.as_str()) && !fallbacks.contains(&key.as_str()) {
                    return Err(fail(format!(
                        "{at}: answers.{key}: the workflow has no step or fallback service named \
                         {key:?}; its steps are {}",
                        step_names.join(", ")
                    )));
                }
                let answers =
                    parse_answers(value).map_err(|e| fail(format!("{at}: answers.{key}{e}")))?;
                scripts.entry(key.clone()).or_default().execute = answers;
            }
            for (key, value) in &entry.compensations {
                match workflow.steps().iter().find(|s| &s.name == key) {
                    Some(step) if step.compensate => {}
                    Some(_) => {
                        return Err(fail(format!(
                            "{at}: compensations.{key}: step {key:?} has no compensation \
                             (compensate = false), so it never gets a compensate command"
                        )))
                    }
                    None => {
                        return Err(fail(format!(
                            "{at}: compensations.{key}: the workflow has no step named {key:?}; \
                             its steps are {}",
                            step_names.join(", ")
                        )))
                    }
                }
                let answers = parse_answers(value)
                    .map_err(|e| fail(format!("{at}: compensations.{key}{e}")))?;
                scripts.entry(key.clone()).or_default().compensate = answers;
            }
            let expect =
                expect(entry.expect, &step_names).map_err(|e| fail(format!("{at}: {e}")))?;
            cases.push(Case {
                name: entry.name,
                request,
                scripts,
                expect,
            });
        }
        Ok(Self { cases })
    }
}

/// The case's payment as a request, through the orchestrator's own validation.
fn payment(entry: &PaymentEntry, index: usize) -> Result<PaymentRequest, String> {
    let currency = entry.currency.clone().unwrap_or_else(|| "EUR".into());
    let mut body = serde_json::json!({
        // One id per case, the same on every run.
        "payment_id": Uuid::from_u128(0xba70_0000_0000_4000_8000_0000_0000_0000 | index as u128)
            .to_string(),
        "merchant_id": entry.merchant_id.clone().unwrap_or_else(|| "m-1001".into()),
        "customer_id": entry.customer_id.clone().unwrap_or_else(|| "c-42".into()),
        "amount": {"minor": entry.amount.unwrap_or(1999), "currency": currency},
        "card": {
            "number": entry.card.clone().unwrap_or_else(|| "4242424242424242".into()),
            "expiry": entry.expiry.clone().unwrap_or_else(|| "12/30".into()),
        },
    });
    if let Some(merchant_currency) = &entry.merchant_currency {
        body["merchant_currency"] = merchant_currency.clone().into();
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    PaymentRequest::parse(&bytes, &Limits::default()).map_err(|e| {
        let field = e
            .field
            .replace("amount.minor", "amount")
            .replace("card.number", "card");
        format!("payment.{field}: {}", e.problem)
    })
}

fn expect(entry: ExpectEntry, steps: &[&str]) -> Result<Expect, String> {
    if !matches!(entry.status.as_str(), "completed" | "declined" | "failed") {
        return Err(format!(
            "expect.status: {:?} is not a status a payment can end in; use completed, declined or failed",
            entry.status
        ));
    }
    let known = |what: &str, name: &str| {
        if steps.contains(&name) {
            Ok(())
        } else {
            Err(format!(
                "{what}: the workflow has no step named {name:?}; its steps are {}",
                steps.join(", ")
            ))
        }
    };
    let lines = match entry.steps {
        None => None,
        Some(lines) => Some(
            lines
                .into_iter()
                .enumerate()
                .map(|(i, line)| {
                    let at = format!("expect.steps[{i}]");
                    known(&at, &line.step)?;
                    Ok(ExpectedStep {
                        outcome: parse_outcome(&line.outcome).map_err(|e| format!("{at}: {e}"))?,
                        step: line.step,
                        attempts: line.attempts,
                        reason: line.reason,
                        degraded: line.degraded,
                        via: line.via,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?,
        ),
    };
    for (what, list) in [
        ("expect.compensated", &entry.compensated),
        ("expect.compensation_failed", &entry.compensation_failed),
    ] {
        for name in list.iter().flatten() {
            known(what, name)?;
        }
    }
    let parked = match entry.parked {
        None => None,
        Some(toml::Value::Boolean(b)) => Some(Parked::Ever(b)),
        Some(toml::Value::Integer(n)) if n >= 0 => Some(Parked::Times(
            u32::try_from(n).map_err(|_| "expect.parked: too large".to_owned())?,
        )),
        Some(_) => {
            return Err(
                "expect.parked: use true, false or a number of parkings (parked = 2)".into(),
            )
        }
    };
    for item in entry.attention.iter().flatten() {
        match item.split_once(':') {
            Some(("in_doubt" | "compensation_failed", step)) => known("expect.attention", step)?,
            _ => {
                return Err(format!(
                    "expect.attention: {item:?} is not \"<kind>:<step>\"; kinds are in_doubt and \
                     compensation_failed (\"in_doubt:transaction\")"
                ))
            }
        }
    }
    Ok(Expect {
        status: entry.status,
        reason: entry.reason,
        detail_contains: entry.detail_contains,
        steps: lines,
        compensated: entry.compensated,
        compensation_failed: entry.compensation_failed,
        parked,
        attention: entry.attention,
    })
}

/// What a case's run gave.
#[derive(Clone, Debug)]
pub struct Run {
    /// The final result (`None`: the saga stopped without one, see `stopped`).
    pub result: Option<PaymentResult>,
    /// Why the saga stopped without a result (never expected in memory).
    pub stopped: Option<String>,
    /// Parkings.
    pub parked: u32,
    /// Attention items, as `"<kind>:<step>"`.
    pub attention: Vec<String>,
    /// Time that passed on the saga's (paused) clock.
    pub elapsed: Duration,
}

/// A case's verdict.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The case's name.
    pub name: String,
    /// What happened.
    pub run: Run,
    /// One line per expectation that did not hold; empty: passed.
    pub mismatches: Vec<String>,
}

impl Verdict {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Runs one case through the orchestrator's saga with scripted services. Call it on a
/// runtime with paused time (see [`run_file`]), or the ladder's timeouts are real.
pub async fn run_case(workflow: &Workflow, case: &Case) -> Run {
    let services = scripted_services(workflow, &case.scripts);
    let mut env = SagaEnv::new(
        workflow.clone(),
        services,
        MemoryJournal::default(),
        Metrics::new(),
    );
    if workflow.check_card_keys(false).is_err() {
        env.card_keys = Some(CardKeys::generate("harness"));
    }
    let started = tokio::time::Instant::now();
    let parking = workflow.parking().clone();
    let (result, stopped) = loop {
        match saga::run(&env, &case.request).await {
            SagaOutcome::Finished { result, .. } => break (Some(result), None),
            // Back after the tier's delay, as from `<prefix>.retry.<tier>`.
            SagaOutcome::Park { tier, .. } => {
                let delay = parking.tiers.get(tier).copied().unwrap_or_default();
                tokio::time::sleep(delay).await;
            }
            other => break (None, Some(format!("{other:?}"))),
        }
    };
    let parked = env
        .log
        .sagas
        .lock()
        .expect("sagas")
        .get(&case.request.payment_id)
        .map_or(0, |s| s.parked);
    let attention = env
        .transport
        .attention
        .lock()
        .expect("attention items")
        .iter()
        .map(|item| format!("{}:{}", item.kind, item.step))
        .collect();
    Run {
        result,
        stopped,
        parked,
        attention,
        elapsed: started.elapsed(),
    }
}

/// The services of `workflow`, each answering by the case's scripts: a step's own
/// service by the step's script, a fallback service by its own; the n-th command of a
/// kind (execute, compensate) gets the n-th answer, the last one repeating.
fn scripted_services(workflow: &Workflow, scripts: &HashMap<String, Script>) -> ScriptedServices {
    let owner: Arc<HashMap<String, String>> = Arc::new(
        workflow
            .steps()
            .iter()
            .map(|s| (s.name.clone(), s.service.clone()))
            .collect(),
    );
    let scripts = Arc::new(scripts.clone());
    // By (script key, compensation?).
    let counts: Arc<Mutex<HashMap<(String, bool), usize>>> = Arc::default();
    let mut services = ScriptedServices::default();
    for service in workflow.services() {
        let service_name = service.to_owned();
        let (owner, scripts, counts) = (owner.clone(), scripts.clone(), counts.clone());
        services = services.on(service, move |command: &Command, _| {
            let key = if owner.get(&command.step) == Some(&service_name) {
                command.step.clone()
            } else {
                service_name.clone()
            };
            let n = {
                let mut counts = counts.lock().expect("answer counts");
                let n = counts
                    .entry((key.clone(), command.action == Action::Compensate))
                    .or_default();
                *n += 1;
                *n - 1
            };
            let answers = scripts.get(&key).map(|s| {
                if command.action == Action::Compensate {
                    &s.compensate
                } else {
                    &s.execute
                }
            });
            match answers.and_then(|a| a.get(n).or(a.last())) {
                Some(answer) => answer.behaviour(command),
                None => Answer::Approve(Map::new()).behaviour(command),
            }
        });
    }
    services
}

fn describe(line: &StepRecord) -> String {
    let mut text = format!(
        "{} {} ×{}",
        line.step,
        outcome_text(line.outcome),
        line.attempts
    );
    if let Some(reason) = &line.reason {
        text.push_str(&format!(" ({reason})"));
    }
    if line.degraded {
        text.push_str(" degraded");
    }
    if let Some(via) = &line.via {
        text.push_str(&format!(" via {via}"));
    }
    text
}

fn outcome_text(outcome: StepOutcome) -> String {
    serde_json::to_value(outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn shown(value: Option<&str>) -> String {
    value.map_or("none".into(), |v| format!("{v:?}"))
}

/// Compares a run with its case's expectation, field by field.
pub fn check(expect: &Expect, run: &Run) -> Vec<String> {
    let mut out = Vec::new();
    let Some(result) = &run.result else {
        out.push(format!(
            "status: expected {:?}, got no result (the saga stopped: {})",
            expect.status,
            run.stopped.as_deref().unwrap_or("?")
        ));
        return out;
    };
    let mut differ = |field: &str, expected: String, got: String| {
        if expected != got {
            out.push(format!("{field}: expected {expected}, got {got}"));
        }
    };
    differ(
        "status",
        format!("{:?}", expect.status),
        format!("{:?}", result.status.as_str()),
    );
    if let Some(reason) = &expect.reason {
        differ(
            "reason",
            shown(Some(reason)),
            shown(result.reason.as_deref()),
        );
    }
    if let Some(part) = &expect.detail_contains {
        let detail = result.detail.as_deref().unwrap_or("");
        if !detail.contains(part.as_str()) {
            out.push(format!(
                "detail: expected it to contain {part:?}, got {}",
                shown(result.detail.as_deref())
            ));
        }
    }
    if let Some(lines) = &expect.steps {
        for i in 0..lines.len().max(result.steps.len()) {
            let at = format!("steps[{i}]");
            match (lines.get(i), result.steps.get(i)) {
                (Some(want), Some(got)) => {
                    let mut differ = |field: &str, expected: String, actual: String| {
                        if expected != actual {
                            out.push(format!(
                                "{at}.{field}: expected {expected}, got {actual}   (got line: {})",
                                describe(got)
                            ));
                        }
                    };
                    differ(
                        "step",
                        format!("{:?}", want.step),
                        format!("{:?}", got.step),
                    );
                    differ(
                        "outcome",
                        outcome_text(want.outcome),
                        outcome_text(got.outcome),
                    );
                    if let Some(attempts) = want.attempts {
                        differ("attempts", attempts.to_string(), got.attempts.to_string());
                    }
                    if let Some(reason) = &want.reason {
                        differ("reason", shown(Some(reason)), shown(got.reason.as_deref()));
                    }
                    if let Some(degraded) = want.degraded {
                        differ("degraded", degraded.to_string(), got.degraded.to_string());
                    }
                    if let Some(via) = &want.via {
                        differ("via", shown(Some(via)), shown(got.via.as_deref()));
                    }
                }
                (Some(want), None) => out.push(format!(
                    "{at}: expected {} {}, got no such line",
                    want.step,
                    outcome_text(want.outcome)
                )),
                (None, Some(got)) => out.push(format!(
                    "{at}: expected no such line, got {}",
                    describe(got)
                )),
                (None, None) => {}
            }
        }
    }
    let names = |outcome: StepOutcome| -> Vec<String> {
        result
            .steps
            .iter()
            .filter(|s| s.outcome == outcome)
            .map(|s| s.step.clone())
            .collect()
    };
    if let Some(want) = &expect.compensated {
        let got = names(StepOutcome::Compensated);
        if *want != got {
            out.push(format!("compensated: expected {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &expect.compensation_failed {
        let got = names(StepOutcome::CompensationFailed);
        if *want != got {
            out.push(format!(
                "compensation_failed: expected {want:?}, got {got:?}"
            ));
        }
    }
    match expect.parked {
        Some(Parked::Times(n)) if n != run.parked => {
            out.push(format!("parked: expected {n} times, got {}", run.parked))
        }
        Some(Parked::Ever(true)) if run.parked == 0 => {
            out.push("parked: expected at least once, got never".into())
        }
        Some(Parked::Ever(false)) if run.parked > 0 => {
            out.push(format!("parked: expected never, got {} times", run.parked))
        }
        _ => {}
    }
    if let Some(want) = &expect.attention {
        if *want != run.attention {
            out.push(format!(
                "attention: expected {want:?}, got {:?}",
                run.attention
            ));
        }
    }
    out
}

/// Runs every case of `file` and checks it.
pub async fn run_cases(workflow: &Workflow, file: &CaseFile) -> Vec<Verdict> {
    let mut verdicts = Vec::with_capacity(file.cases.len());
    for case in &file.cases {
        let run = run_case(workflow, case).await;
        verdicts.push(Verdict {
            name: case.name.clone(),
            mismatches: check(&case.expect, &run),
            run,
        });
    }
    verdicts
}

/// Runs the cases on a runtime of their own whose clock is paused (tokio's `test-util`
/// clock: it jumps to the next timer whenever every task waits), on a thread of its own so
/// that it can be called from within another runtime. Saga log lines are off unless
/// `RUST_LOG` is set.
pub fn run_file(workflow: &Workflow, file: &CaseFile) -> Vec<Verdict> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .start_paused(true)
                    .build()
                    .expect("a current-thread runtime starts");
                let run = || runtime.block_on(run_cases(workflow, file));
                if std::env::var_os("RUST_LOG").is_some() {
                    run()
                } else {
                    tracing::subscriber::with_default(
                        tracing::subscriber::NoSubscriber::default(),
                        run,
                    )
                }
            })
            .join()
            .expect("the case runner does not panic")
    })
}

/// The report of `baton workflow test`: one line per case (✓ or ✗, with the time that
/// passed on the saga's clock), under a failed case its mismatches and what it got, then
/// a count.
pub fn report(verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    for verdict in verdicts {
        let mark = if verdict.passed() { '✓' } else { '✗' };
        out.push_str(&format!(
            "{mark} {}  ({} simulated)\n",
            verdict.name,
            humantime::format_duration(round_ms(verdict.run.elapsed))
        ));
        if verdict.passed() {
            continue;
        }
        for mismatch in &verdict.mismatches {
            out.push_str(&format!("    {mismatch}\n"));
        }
        if let Some(result) = &verdict.run.result {
            out.push_str(&format!(
                "    got: {} {}, parked {}, attention {:?}, steps: {}\n",
                result.status.as_str(),
                shown(result.reason.as_deref()),
                verdict.run.parked,
                verdict.run.attention,
                result
                    .steps
                    .iter()
                    .map(describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if let Some(detail) = &result.detail {
                out.push_str(&format!("    detail: {detail}\n"));
            }
        }
    }
    let failed = verdicts.iter().filter(|v| !v.passed()).count();
    out.push_str(&format!(
        "{} passed, {failed} failed\n",
        verdicts.len() - failed
    ));
    out
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_CASES: &str = include_str!("../workflows/cases/default.toml");
    const PARALLEL: &str = include_str!("../workflows/parallel-checks.toml");
    const PARALLEL_CASES: &str = include_str!("../workflows/cases/parallel-checks.toml");

    fn cases(text: &str, workflow: &Workflow) -> CaseFile {
        CaseFile::parse(text, "cases.toml", workflow).unwrap()
    }

    fn error_of(text: &str) -> String {
        CaseFile::parse(text, "cases.toml", &Workflow::builtin())
            .unwrap_err()
            .to_string()
    }

    fn failures(verdicts: &[Verdict]) -> Vec<(&str, &[String])> {
        verdicts
            .iter()
            .filter(|v| !v.passed())
            .map(|v| (v.name.as_str(), v.mismatches.as_slice()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_shipped_cases_pass_on_every_run() {
        let default = Workflow::builtin();
        let parallel = Workflow::parse(PARALLEL, "parallel-checks.toml").unwrap();
        let default_cases = cases(DEFAULT_CASES, &default);
        let parallel_cases = cases(PARALLEL_CASES, &parallel);
        // Backoffs are jittered: the same verdicts on every run, or the file is flaky.
        for _ in 0..20 {
            let verdicts = run_cases(&default, &default_cases).await;
            assert_eq!(failures(&verdicts), Vec::<(&str, &[String])>::new());
            let verdicts = run_cases(&parallel, &parallel_cases).await;
            assert_eq!(failures(&verdicts), Vec::<(&str, &[String])>::new());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_mismatch_names_each_field_that_differs() {
        let workflow = Workflow::builtin();
        let file = cases(
            r#"
            [[cases]]
            name = "wrong about risk"
            answers.risk = { decline = "high_risk" }
            [cases.expect]
            status = "completed"
            steps = [
              { step = "authorization", outcome = "approved", attempts = 1 },
              { step = "risk", outcome = "approved", attempts = 1 },
            ]
            compensated = []
            parked = 2
            "#,
            &workflow,
        );
        let verdicts = run_cases(&workflow, &file).await;
        let mismatches = &verdicts[0].mismatches;
        assert!(!verdicts[0].passed());
        assert_eq!(
            mismatches[0],
            r#"status: expected "completed", got "declined""#
        );
        assert!(
            mismatches[1].starts_with("steps[1].outcome: expected approved, got declined"),
            "{mismatches:?}"
        );
        assert_eq!(
            mismatches[2],
            "steps[2]: expected no such line, got authorization compensated ×1"
        );
        assert_eq!(
            mismatches[3],
            r#"compensated: expected [], got ["authorization"]"#
        );
        assert_eq!(mismatches[4], "parked: expected 2 times, got 0");
        assert_eq!(mismatches.len(), 5, "{mismatches:?}");
        let report = report(&verdicts);
        assert!(report.starts_with("✗ wrong about risk"), "{report}");
        assert!(
            report.contains("    got: declined \"high_risk\""),
            "{report}"
        );
        assert!(report.ends_with("0 passed, 1 failed\n"), "{report}");
    }

    #[tokio::test(start_paused = true)]
    async fn answers_come_in_order_the_last_repeats_and_compensations_count_apart() {
        let workflow = Workflow::builtin();
        let file = cases(
            r#"
            [[cases]]
            name = "sequence"
            answers.pci = ["error", "error", "approve"]
            answers.transaction = [{ decline = "hold_mismatch" }]
            compensations.authorization = ["error", "error", "error", "approve"]
            expect = { status = "declined" }
            "#,
            &workflow,
        );
        let run = run_case(&workflow, &file.cases[0]).await;
        let lines: Vec<String> = run.result.unwrap().steps.iter().map(describe).collect();
        assert_eq!(
            lines,
            [
                "authorization approved ×1",
                "risk approved ×1",
                "pci approved ×3",
                "transaction declined ×1 (hold_mismatch)",
                // The authorization's own approval did not use up its compensation script.
                "authorization compensated ×4",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_races_the_timeout_on_the_paused_clock() {
        let workflow = Workflow::builtin();
        let file = cases(
            r#"
            [[cases]]
            name = "just in time"
            answers.risk = { slow = "1999ms" }
            expect = { status = "completed" }
            [[cases]]
            name = "just too late"
            answers.risk = [{ slow = "2001ms", then = { decline = "high_risk" } }, "approve"]
            expect = { status = "completed" }
            "#,
            &workflow,
        );
        let in_time = run_case(&workflow, &file.cases[0]).await;
        assert_eq!(in_time.result.unwrap().steps[1].attempts, 1);
        assert_eq!(in_time.elapsed, Duration::from_millis(1999));
        let late = run_case(&workflow, &file.cases[1]).await;
        let result = late.result.unwrap();
        assert_eq!(
            result.steps[1].attempts, 2,
            "the late decline never arrived"
        );
        assert_eq!(result.status.as_str(), "completed");
        assert!(
            late.elapsed >= Duration::from_millis(2000),
            "{:?}",
            late.elapsed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reply_data_reaches_conditions_and_fallbacks_are_scripted_by_name() {
        let workflow = Workflow::parse(
            r#"
            [[steps]]
            name = "authorization"
            timeout_ms = 100
            card = "number"
            compensate = true
            [[steps]]
            name = "risk"
            timeout_ms = 100
            fallback = { service = "risk-lite" }
            [[steps]]
            name = "three_ds"
            timeout_ms = 100
            when = "steps.risk.score > 70"
            "#,
            "wf.toml",
        )
        .unwrap();
        let file = cases(
            r#"
            [[cases]]
            name = "risky"
            answers.risk = { approve = { score = 85 } }
            [cases.expect]
            status = "completed"
            steps = [
              { step = "authorization", outcome = "approved" },
              { step = "risk", outcome = "approved" },
              { step = "three_ds", outcome = "approved", attempts = 1 },
            ]
            [[cases]]
            name = "safe, from the fallback"
            answers.risk = "error"
            answers.risk-lite = { approve = { score = 10 } }
            [cases.expect]
            status = "completed"
            steps = [
              { step = "authorization", outcome = "approved" },
              { step = "risk", outcome = "approved", attempts = 4, via = "risk-lite" },
              { step = "three_ds", outcome = "skipped", attempts = 0 },
            ]
            "#,
            &workflow,
        );
        let verdicts = run_cases(&workflow, &file).await;
        assert_eq!(failures(&verdicts), Vec::<(&str, &[String])>::new());
    }

    #[test]
    fn bad_case_files_say_what_to_fix() {
        let case = |body: &str| format!("[[cases]]\nname = \"c\"\n{body}\n");
        let typo = error_of(&case(
            "answer.risk = \"approve\"\nexpect = { status = \"completed\" }",
        ));
        assert!(
            typo.starts_with("cases cases.toml: ")
                && typo.contains("unknown field `answer`")
                && typo.contains("`answers`"),
            "{typo}"
        );
        let step = error_of(&case(
            "answers.riks = \"approve\"\nexpect = { status = \"completed\" }",
        ));
        assert!(
            step.contains("cases[0] (\"c\"): answers.riks: the workflow has no step or fallback service named \"riks\"; its steps are authorization, risk, pci, transaction"),
            "{step}"
        );
        let answer = error_of(&case(
            "answers.risk = [\"approve\", \"aprove\"]\nexpect = { status = \"completed\" }",
        ));
        assert!(
            answer.contains("answers.risk[1]: unknown answer \"aprove\"; use \"approve\""),
            "{answer}"
        );
        let slow = error_of(&case(
            "answers.risk = { slow = \"3 parsecs\" }\nexpect = { status = \"completed\" }",
        ));
        assert!(slow.contains("is not a duration"), "{slow}");
        let extra = error_of(&case(
            "answers.risk = { slow = \"3s\", than = \"approve\" }\nexpect = { status = \"completed\" }",
        ));
        assert!(
            extra.contains(
                "answers.risk: unknown key \"than\" in a slow answer; it takes slow, then"
            ),
            "{extra}"
        );
        let empty = error_of(&case(
            "answers.risk = []\nexpect = { status = \"completed\" }",
        ));
        assert!(empty.contains("give at least one answer"), "{empty}");
        let undo = error_of(&case(
            "compensations.risk = \"error\"\nexpect = { status = \"declined\" }",
        ));
        assert!(
            undo.contains("compensations.risk: step \"risk\" has no compensation"),
            "{undo}"
        );
        let status = error_of(&case("expect = { status = \"rejected\" }"));
        assert!(
            status.contains("expect.status: \"rejected\" is not a status"),
            "{status}"
        );
        let outcome = error_of(&case(
            "expect = { status = \"completed\", steps = [{ step = \"risk\", outcome = \"ok\" }] }",
        ));
        assert!(
            outcome.contains("expect.steps[0]: unknown outcome \"ok\""),
            "{outcome}"
        );
        let amount = error_of(&case(
            "payment = { amount = 0 }\nexpect = { status = \"completed\" }",
        ));
        assert!(
            amount.contains("cases[0] (\"c\"): payment.amount: "),
            "{amount}"
        );
        let missing = error_of(&case("answers.risk = \"approve\""));
        assert!(missing.contains("missing field `expect`"), "{missing}");
        let twice = error_of(&format!(
            "{}{}",
            case("expect = { status = \"completed\" }"),
            case("expect = { status = \"completed\" }")
        ));
        assert!(
            twice.contains("cases[1] (\"c\"): a case named \"c\" is already defined"),
            "{twice}"
        );
        let attention = error_of(&case(
            "expect = { status = \"failed\", attention = [\"transaction\"] }",
        ));
        assert!(
            attention.contains("is not \"<kind>:<step>\""),
            "{attention}"
        );
        assert!(error_of("").contains("missing field `cases`"));
    }

    #[test]
    fn the_case_runner_has_its_own_paused_clock() {
        // Called from a test with a real clock (as from `baton workflow test`'s runtime):
        // minutes of timeouts and parkings pass at once.
        let workflow = Workflow::builtin();
        let file = cases(
            r#"
            [[cases]]
            name = "parks five times"
            answers.pci = "no_answer"
            expect = { status = "failed", parked = 5 }
            "#,
            &workflow,
        );
        let started = std::time::Instant::now();
        let verdicts = run_file(&workflow, &file);
        assert!(verdicts[0].passed(), "{:?}", verdicts[0].mismatches);
        assert!(verdicts[0].run.elapsed > Duration::from_secs(60));
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
