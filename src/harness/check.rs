//! A run against what its case expects: one line per field that differs.

use super::*;
use baton_contract::{StepOutcome, StepRecord};

pub(super) fn describe(line: &StepRecord) -> String {
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

pub(super) fn outcome_text(outcome: StepOutcome) -> String {
    serde_json::to_value(outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(super) fn shown(value: Option<&str>) -> String {
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
