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
//! the integration tests' business.//!
//! `cases.rs` reads a case file; `check.rs` compares a run with what its case expects.

mod cases;
mod check;
#[cfg(test)]
mod tests;

use crate::saga::{self, SagaEnv, SagaOutcome};
use crate::scripted::{Behaviour, MemoryJournal, ScriptedServices};
use crate::workflow::Workflow;
use baton_contract::{
    Action, CardKeys, Command, PaymentRequest, PaymentResult, Reply, StepOutcome,
};
pub use check::check;
use check::{describe, shown};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    let mut env = SagaEnv::new(workflow.clone(), services, MemoryJournal::default(), ());
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
