//! Reading a case file: TOML with unknown keys refused, every answer, outcome and status
//! checked, each error naming the case, the key and the forms allowed.

use super::*;
use crate::workflow::{Fallback, Workflow};
use baton_contract::{Limits, PaymentRequest, StepOutcome};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use uuid::Uuid;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileEntry {
    cases: Vec<CaseEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CaseEntry {
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
pub(super) struct PaymentEntry {
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
pub(super) struct ExpectEntry {
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
pub(super) struct StepEntry {
    step: String,
    outcome: String,
    attempts: Option<u32>,
    reason: Option<String>,
    degraded: Option<bool>,
    via: Option<String>,
}

pub(super) const ANSWER_FORMS: &str =
    "\"approve\", \"error\", \"no_answer\", { approve = { …data… } }, \
     { decline = \"reason\" }, { error = \"reason\" } or { slow = \"2s\", then = … }";

pub(super) fn parse_answer(value: &toml::Value, nested: bool) -> Result<Answer, String> {
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

pub(super) fn parse_answers(value: &toml::Value) -> Result<Vec<Answer>, String> {
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

pub(super) fn parse_outcome(text: &str) -> Result<StepOutcome, String> {
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
pub(super) fn payment(entry: &PaymentEntry, index: usize) -> Result<PaymentRequest, String> {
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

pub(super) fn expect(entry: ExpectEntry, steps: &[&str]) -> Result<Expect, String> {
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
