//! The payment's course, as plain data and functions: its steps' decisions taken in file
//! order give what later steps see, what to undo when the payment does not complete, and
//! the result. No I/O, no clock, no metrics: `mod.rs` runs the steps and compensations
//! and hands their journal entries here.

use crate::records::{outcome_name, JournalEntry};
use crate::workflow::Step;
use baton_contract::{Money, PaymentResult, Status, StepOutcome};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Where a payment stands after the decisions taken so far.
pub(super) struct Course<'a> {
    /// Each approved step's data, by step name: what later conditions and commands read.
    pub(super) context: Map<String, Value>,
    /// Steps that would need undoing, in the order they decided.
    done: Vec<&'a Step>,
    status: Status,
    reason: Option<String>,
    detail: Option<String>,
    /// Every entry taken, in order: the result's step lines.
    applied: Vec<JournalEntry>,
}

impl<'a> Course<'a> {
    /// A payment with nothing decided: on course to complete.
    pub(super) fn new() -> Self {
        Self {
            context: Map::new(),
            done: Vec::new(),
            status: Status::Completed,
            reason: None,
            detail: None,
            applied: Vec::new(),
        }
    }

    /// Whether the payment is still on course to complete (no step declined or failed).
    pub(super) fn completing(&self) -> bool {
        self.status == Status::Completed
    }

    /// Takes `step`'s decision.
    pub(super) fn step(&mut self, step: &'a Step, decided: JournalEntry) {
        let outcome = decided.record.outcome;
        match outcome {
            StepOutcome::Approved => {
                self.context
                    .insert(step.name.clone(), Value::Object(decided.data.clone()));
                if step.compensate {
                    self.done.push(step);
                }
            }
            // In a group several may decline at once: the first in file order gives the
            // result.
            StepOutcome::Declined | StepOutcome::Failed if self.completing() => {
                self.status = if outcome == StepOutcome::Declined {
                    Status::Declined
                } else {
                    Status::Failed
                };
                self.reason = Some(
                    decided
                        .record
                        .reason
                        .clone()
                        .unwrap_or_else(|| outcome_name(outcome).into()),
                );
                self.detail = decided
                    .detail
                    .clone()
                    .or_else(|| Some(format!("{} {}", step.name, outcome_name(outcome))));
                // An in-doubt step that failed for good may still have acted: undo it too
                // if it can be undone (its compensation is safe either way).
                if outcome == StepOutcome::Failed && step.compensate {
                    self.done.push(step);
                }
            }
            // Skipped: no command went out, so nothing to undo and no data for later
            // steps (`steps.<name>` is absent from their conditions and commands).
            StepOutcome::Declined
            | StepOutcome::Failed
            | StepOutcome::Skipped
            | StepOutcome::Compensated
            | StepOutcome::CompensationFailed => {}
        }
        self.applied.push(decided);
    }

    /// What to compensate, newest first: nothing while the payment completes.
    pub(super) fn to_undo(&self) -> Vec<&'a Step> {
        if self.completing() {
            return Vec::new();
        }
        self.done.iter().rev().copied().collect()
    }

    /// Takes a compensation's decision.
    pub(super) fn compensation(&mut self, decided: JournalEntry) {
        self.applied.push(decided);
    }

    /// The payment's result, finished at `finished_at`: a completed payment reports the
    /// last settlement a step gave.
    pub(super) fn result(self, payment_id: Uuid, finished_at: String) -> PaymentResult {
        let settlement = if self.completing() {
            self.applied
                .iter()
                .filter_map(|e| e.data.get("settlement"))
                .filter_map(|s| serde_json::from_value::<Money>(s.clone()).ok())
                .next_back()
        } else {
            None
        };
        PaymentResult {
            payment_id,
            status: self.status,
            reason: self.reason,
            detail: self.detail,
            steps: self.applied.into_iter().map(|e| e.record).collect(),
            settlement,
            finished_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Workflow;
    use baton_contract::{Action, StepRecord};

    fn workflow() -> Workflow {
        let steps = [
            ("authorization", "compensate = true"),
            ("fx", "compensate = true\ngroup = \"checks\""),
            ("risk", "group = \"checks\""),
            (
                "hold",
                "compensate = true\nside_effects = true\ngroup = \"checks\"",
            ),
            ("transaction", ""),
        ];
        let text: String = steps
            .iter()
            .map(|(name, policy)| {
                format!("[[steps]]\nname = \"{name}\"\ntimeout_ms = 100\n{policy}\n")
            })
            .collect();
        Workflow::parse(&text, "test").unwrap()
    }

    fn decided(step: &str, outcome: StepOutcome, data: Value) -> JournalEntry {
        JournalEntry {
            step: step.into(),
            action: Action::Execute,
            record: StepRecord::new(step, outcome, 1, 1),
            detail: None,
            data: data.as_object().unwrap().clone(),
            recorded_at: String::new(),
        }
    }

    fn because(mut entry: JournalEntry, reason: &str, detail: &str) -> JournalEntry {
        entry.record.reason = Some(reason.into());
        entry.detail = Some(detail.into());
        entry
    }

    fn names(steps: Vec<&Step>) -> Vec<&str> {
        steps.into_iter().map(|s| s.name.as_str()).collect()
    }

    fn settled(minor: u64) -> Value {
        serde_json::json!({ "settlement": { "minor": minor, "currency": "USD" } })
    }

    #[test]
    fn approvals_feed_later_steps_and_a_completed_payment_reports_its_last_settlement() {
        let wf = workflow();
        let s = wf.steps();
        let mut course = Course::new();
        course.step(
            &s[0],
            decided("authorization", StepOutcome::Approved, settled(1)),
        );
        course.step(
            &s[1],
            decided("fx", StepOutcome::Skipped, serde_json::json!({})),
        );
        course.step(
            &s[4],
            decided("transaction", StepOutcome::Approved, settled(2)),
        );
        assert!(course.completing());
        assert_eq!(
            course.context.keys().collect::<Vec<_>>(),
            ["authorization", "transaction"],
            "a skipped step gives later steps nothing"
        );
        assert!(course.to_undo().is_empty(), "nothing undone on completion");
        let result = course.result(Uuid::nil(), "t".into());
        assert_eq!(result.status, Status::Completed);
        assert_eq!((result.reason, result.detail), (None, None));
        assert_eq!(result.settlement.map(|m| m.minor), Some(2));
        assert_eq!(result.steps.len(), 3);
        assert_eq!(result.finished_at, "t");
    }

    #[test]
    fn the_first_decline_gives_the_result_and_what_approved_is_undone_newest_first() {
        let wf = workflow();
        let s = wf.steps();
        let mut course = Course::new();
        let none = || serde_json::json!({});
        course.step(
            &s[0],
            decided("authorization", StepOutcome::Approved, settled(1)),
        );
        // One group: risk declines; fx (before it) and hold (after it) approved, and hold's
        // later failure would not change the result.
        course.step(&s[1], decided("fx", StepOutcome::Approved, none()));
        course.step(
            &s[2],
            because(
                decided("risk", StepOutcome::Declined, none()),
                "high_risk",
                "no",
            ),
        );
        course.step(
            &s[3],
            because(
                decided("hold", StepOutcome::Failed, none()),
                "service_unavailable",
                "down",
            ),
        );
        assert!(!course.completing());
        assert_eq!(
            names(course.to_undo()),
            ["fx", "authorization"],
            "a failure after the decline is not undone"
        );
        let undone = JournalEntry {
            action: Action::Compensate,
            ..decided("fx", StepOutcome::Compensated, none())
        };
        course.compensation(undone);
        let result = course.result(Uuid::nil(), "t".into());
        assert_eq!(result.status, Status::Declined);
        assert_eq!(result.reason.as_deref(), Some("high_risk"));
        assert_eq!(result.detail.as_deref(), Some("no"));
        assert_eq!(result.settlement, None, "no settlement unless completed");
        let lines: Vec<(&str, StepOutcome)> = result
            .steps
            .iter()
            .map(|l| (l.step.as_str(), l.outcome))
            .collect();
        assert_eq!(
            lines,
            [
                ("authorization", StepOutcome::Approved),
                ("fx", StepOutcome::Approved),
                ("risk", StepOutcome::Declined),
                ("hold", StepOutcome::Failed),
                ("fx", StepOutcome::Compensated),
            ]
        );
    }

    #[test]
    fn a_failed_compensable_step_is_undone_too_and_a_bare_decline_is_named() {
        let wf = workflow();
        let s = wf.steps();
        let none = || serde_json::json!({});
        let mut failed = Course::new();
        failed.step(&s[3], decided("hold", StepOutcome::Failed, none()));
        assert_eq!(names(failed.to_undo()), ["hold"], "it may have acted");
        let result = failed.result(Uuid::nil(), "t".into());
        assert_eq!(result.status, Status::Failed);
        assert_eq!(result.reason.as_deref(), Some("failed"));
        assert_eq!(result.detail.as_deref(), Some("hold failed"));

        let mut declined = Course::new();
        declined.step(&s[2], decided("risk", StepOutcome::Declined, none()));
        assert!(declined.to_undo().is_empty());
        let result = declined.result(Uuid::nil(), "t".into());
        assert_eq!(result.status, Status::Declined);
        assert_eq!(result.reason.as_deref(), Some("declined"));
        assert_eq!(result.detail.as_deref(), Some("risk declined"));
    }
}
