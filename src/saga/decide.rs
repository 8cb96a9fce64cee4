//! The saga's decisions about one step, as plain functions: from the step's policy
//! (retries, fallback, side effects, compensation), where the payment stands (run live or
//! abandoned, its parkings so far) and what the step's trips through the ladder gave,
//! [`decide`] says what to do next — send again (to the service, its fallback, or one
//! last question), park, record an answer, a degraded approval or a failure (handing an
//! in-doubt step to operators first), or stop. [`undo`] says the same of a compensation.
//!
//! No I/O, no clock, no metrics, no logs: `step.rs` and `compensate.rs` carry the
//! decisions out, so every branch is a table test (`decide_tests.rs`).

use crate::records::JournalEntry;
use crate::workflow::{Fallback, Step};
use baton_contract::{Action, Reply, ReplyOutcome, StepOutcome, StepRecord};
use serde_json::{Map, Value};
use std::time::Duration;

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

/// Reason of a saga finished without its request (see [`abandon`](super::abandon)).
pub const ABANDONED: &str = "abandoned";

/// What to do with a step the journal has no decision for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Mode<'a> {
    /// Run it: send its command through its ladder.
    Live,
    /// Nobody can run the payment any more: settle the step without its request (see
    /// [`abandon`](super::abandon)), with this detail.
    Abandon(&'a str),
}

/// What trying a service through its ladder gave.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Ladder {
    /// A final answer (approved or declined).
    Answer { reply: Reply, attempts: u32 },
    /// No final answer: retries spent or breaker open.
    Unavailable {
        attempts: u32,
        /// Some attempt timed out on a side-effecting step: it may have happened.
        in_doubt: bool,
        last_error: String,
    },
    /// The orchestrator is stopping or lost its connection.
    Interrupted,
}

impl Ladder {
    fn attempts(&self) -> u32 {
        match self {
            Ladder::Answer { attempts, .. } | Ladder::Unavailable { attempts, .. } => *attempts,
            Ladder::Interrupted => 0,
        }
    }
}

/// Where a step's command goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// The step's own service, with its retry policy, through its breaker.
    Service,
    /// The step's fallback service, with the step's retry policy, through its breaker.
    Fallback(String),
    /// The step's own service once, through an open breaker too: a step that may have
    /// acted is asked what it did (with the same command id, so it answers from its store).
    Question,
}

/// One trip through the ladder and what it gave.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Tried {
    /// Where the command went.
    pub(super) target: Target,
    /// What came back.
    pub(super) outcome: Ladder,
}

/// What the saga knows of a step it decides, besides the trips so far.
#[derive(Clone, Copy)]
pub(super) struct Standing<'a> {
    /// The step and its policies.
    pub(super) step: &'a Step,
    /// Run it, or settle it without its request.
    pub(super) mode: Mode<'a>,
    /// The payment's amount in minor units (a degraded approval has a limit).
    pub(super) amount_minor: u64,
    /// How often the payment was parked (the journal's record).
    pub(super) parked: u32,
    /// Parkings the workflow allows before the payment fails.
    pub(super) max_parks: u32,
}

/// What to do next with a step.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Decision {
    /// Send the command to this target through the ladder, then decide again.
    Send(Target),
    /// Park the payment: the service is unavailable; the payment resumes here later.
    Park {
        /// Why (the last error).
        reason: String,
    },
    /// Record how the step ended.
    Settle(Settlement),
    /// Leave the request unacked: the orchestrator is stopping.
    Interrupted,
}

/// How a step ended, as the journal records it.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Settlement {
    /// Its service (or the fallback service `via`) approved or declined.
    Answered {
        reply: Reply,
        attempts: u32,
        via: Option<String>,
    },
    /// Approved without its service: the step's declared degraded decision.
    Degraded { attempts: u32, detail: String },
    /// Failed for good, with `reason` (`service_unavailable`, `abandoned`).
    Failed {
        attempts: u32,
        reason: &'static str,
        detail: String,
        /// The step may have acted and cannot be undone: hand it to operators with this
        /// error before recording the failure.
        in_doubt: Option<String>,
    },
}

/// What to do next with `standing`'s step, after the trips `tried` (oldest first).
pub(super) fn decide(standing: &Standing<'_>, tried: &[Tried]) -> Decision {
    let step = standing.step;
    let Some(last) = tried.last() else {
        return match standing.mode {
            Mode::Live => Decision::Send(Target::Service),
            // It may have acted, and cannot be undone: ask it.
            Mode::Abandon(_) if step.side_effects && !step.compensate => {
                Decision::Send(Target::Question)
            }
            Mode::Abandon(detail) => Decision::Settle(abandoned(step, detail, 0, None)),
        };
    };
    match (&last.outcome, standing.mode) {
        (Ladder::Answer { reply, .. }, _) => Decision::Settle(Settlement::Answered {
            reply: reply.clone(),
            attempts: tried.iter().map(|t| t.outcome.attempts()).sum(),
            via: match &last.target {
                Target::Fallback(service) => Some(service.clone()),
                Target::Service | Target::Question => None,
            },
        }),
        // Only a definite answer to the last question is taken.
        (Ladder::Interrupted, Mode::Live) if last.target == Target::Question => {
            unavailable(standing, tried)
        }
        (Ladder::Interrupted, _) => Decision::Interrupted,
        (Ladder::Unavailable { .. }, Mode::Live) => unavailable(standing, tried),
        // Abandoned, only the question is sent.
        (
            Ladder::Unavailable {
                attempts,
                last_error,
                ..
            },
            Mode::Abandon(detail),
        ) => {
            let error = format!(
                "the payment was abandoned ({detail}) and {} did not say whether it acted: \
                 {last_error}",
                step.service
            );
            Decision::Settle(abandoned(step, detail, *attempts, Some(error)))
        }
    }
}

/// A live step got no answer from the trips so far: its fallback, parking, the last
/// question, or failure.
fn unavailable(standing: &Standing<'_>, tried: &[Tried]) -> Decision {
    let step = standing.step;
    let parked = standing.parked;
    // This visit's ladders; the last question, if asked, is not one of them.
    let visit = || tried.iter().filter(|t| t.target != Target::Question);
    let attempts: u32 = visit().map(|t| t.outcome.attempts()).sum();
    let mut in_doubt = false;
    let mut last_error = String::new();
    for trip in visit() {
        if let Ladder::Unavailable {
            in_doubt: doubt,
            last_error: error,
            ..
        } = &trip.outcome
        {
            in_doubt |= doubt;
            last_error.clone_from(error);
        }
    }
    let asked = tried.iter().any(|t| t.target == Target::Question);
    if !asked {
        // Fallbacks (never for side-effecting steps: the workflow refuses that).
        let first = tried.len() == 1;
        match &step.fallback {
            Some(Fallback::Service(alternate)) if first => {
                return Decision::Send(Target::Fallback(alternate.clone()));
            }
            Some(Fallback::Approve { max_amount_minor })
                if first && standing.amount_minor <= *max_amount_minor =>
            {
                return Decision::Settle(Settlement::Degraded {
                    attempts,
                    detail: format!(
                        "{} unavailable ({last_error}); approved as degraded: amount at most \
                         {max_amount_minor}",
                        step.name
                    ),
                });
            }
            _ => {}
        }
        if parked < standing.max_parks {
            return Decision::Park { reason: last_error };
        }
        // An earlier visit that ended in parking may have sent the command too (its
        // timeouts are not in this visit's count, and an open breaker may have kept this
        // visit from sending at all): a side-effecting step of a payment parked before
        // stays in doubt.
        if in_doubt || (step.side_effects && parked > 0) {
            // It may have happened: ask once more; only a definite answer is taken.
            return Decision::Send(Target::Question);
        }
    }
    // Asked and still no answer: a step that cannot be undone goes to operators.
    let in_doubt = (asked && !step.compensate).then(|| {
        format!(
            "no answer after {attempts} attempts and {parked} parkings; the effect may have \
             happened: {last_error}"
        )
    });
    Decision::Settle(Settlement::Failed {
        attempts,
        reason: "service_unavailable",
        detail: format!(
            "{} stayed unavailable after {parked} parkings: {last_error}",
            step.name
        ),
        in_doubt,
    })
}

fn abandoned(step: &Step, detail: &str, attempts: u32, in_doubt: Option<String>) -> Settlement {
    Settlement::Failed {
        attempts,
        reason: ABANDONED,
        detail: format!("{} abandoned: {detail}", step.name),
        in_doubt,
    }
}

impl Settlement {
    /// The journal entry for `step` settled this way, `duration` after its first command.
    pub(super) fn entry(self, step: &Step, duration: Duration) -> JournalEntry {
        let millis = millis(duration);
        match self {
            Settlement::Answered {
                reply,
                attempts,
                via,
            } => {
                let approved = reply.outcome == ReplyOutcome::Approved;
                let outcome = if approved {
                    StepOutcome::Approved
                } else {
                    StepOutcome::Declined
                };
                let mut record = StepRecord::new(step.name.clone(), outcome, attempts, millis);
                record.via = via;
                let detail = (!approved).then(|| {
                    reply
                        .detail
                        .unwrap_or_else(|| format!("{} declined the payment", step.name))
                });
                if !approved {
                    record.reason = Some(reply.reason.unwrap_or_else(|| "declined".into()));
                }
                entry(step, Action::Execute, record, detail, reply.data)
            }
            Settlement::Degraded { attempts, detail } => {
                let mut record =
                    StepRecord::new(step.name.clone(), StepOutcome::Approved, attempts, millis);
                record.degraded = true;
                record.reason = Some("service_unavailable".into());
                entry(step, Action::Execute, record, Some(detail), Map::new())
            }
            Settlement::Failed {
                attempts,
                reason,
                detail,
                ..
            } => {
                let mut record =
                    StepRecord::new(step.name.clone(), StepOutcome::Failed, attempts, millis);
                record.reason = Some(reason.into());
                entry(step, Action::Execute, record, Some(detail), Map::new())
            }
        }
    }
}

/// A duration in whole milliseconds, as results and logs give them.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A journal entry for `step`, stamped by the journal when it is written.
pub(super) fn entry(
    step: &Step,
    action: Action,
    record: StepRecord,
    detail: Option<String>,
    data: Map<String, Value>,
) -> JournalEntry {
    JournalEntry {
        step: step.name.clone(),
        action,
        record,
        detail,
        data,
        recorded_at: String::new(),
    }
}

/// How a compensation ended.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Undo {
    /// The service undid the step.
    Undone { attempts: u32 },
    /// The service refused, or could not be reached: operators must settle it.
    Failed { attempts: u32, reason: String },
}

/// How a compensation ended, from what its ladder gave; `None`: it was interrupted (the
/// orchestrator is stopping), leave the request unacked.
pub(super) fn undo(outcome: Ladder) -> Option<Undo> {
    Some(match outcome {
        Ladder::Answer { reply, attempts } if reply.outcome == ReplyOutcome::Approved => {
            Undo::Undone { attempts }
        }
        Ladder::Answer { reply, attempts } => Undo::Failed {
            attempts,
            reason: reply
                .reason
                .unwrap_or_else(|| "compensation_refused".into()),
        },
        Ladder::Unavailable {
            attempts,
            last_error,
            ..
        } => Undo::Failed {
            attempts,
            reason: last_error,
        },
        Ladder::Interrupted => return None,
    })
}

impl Undo {
    /// The journal entry for `step`'s compensation ended this way, `duration` after its
    /// first command.
    pub(super) fn entry(self, step: &Step, duration: Duration) -> JournalEntry {
        let millis = millis(duration);
        let (record, detail) = match self {
            Undo::Undone { attempts } => (
                StepRecord::new(
                    step.name.clone(),
                    StepOutcome::Compensated,
                    attempts,
                    millis,
                ),
                None,
            ),
            Undo::Failed { attempts, reason } => {
                let detail = format!("compensating {} failed: {reason}", step.name);
                let mut record = StepRecord::new(
                    step.name.clone(),
                    StepOutcome::CompensationFailed,
                    attempts,
                    millis,
                );
                record.reason = Some(reason);
                (record, Some(detail))
            }
        };
        entry(step, Action::Compensate, record, detail, Map::new())
    }
}
