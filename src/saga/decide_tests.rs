//! Every branch of the step ladder's decisions, as tables: no services, no journal, no
//! clock.

use super::*;
use crate::workflow::Workflow;
use baton_contract::Reply;

/// The step of a one-step workflow: `policy` is its TOML besides name and timeout.
fn step(policy: &str) -> Step {
    let text = format!("[[steps]]\nname = \"transaction\"\ntimeout_ms = 100\n{policy}\n");
    Workflow::parse(&text, "test").unwrap().steps()[0].clone()
}

fn plain() -> Step {
    step("")
}

fn with_fallback_service() -> Step {
    step(r#"fallback = { service = "backup" }"#)
}

fn degradable() -> Step {
    step("fallback = { approve_below_minor = 5000 }")
}

/// Side effects, not compensable (a funds transfer).
fn irreversible() -> Step {
    step("side_effects = true")
}

/// Side effects, compensable (a hold).
fn reversible() -> Step {
    step("side_effects = true\ncompensate = true")
}

fn approved() -> Reply {
    Reply::approved("c", Map::new())
}

fn answer(attempts: u32) -> Ladder {
    Ladder::Answer {
        reply: approved(),
        attempts,
    }
}

fn down(attempts: u32, in_doubt: bool, last_error: &str) -> Ladder {
    Ladder::Unavailable {
        attempts,
        in_doubt,
        last_error: last_error.into(),
    }
}

fn to(target: Target, outcome: Ladder) -> Tried {
    Tried { target, outcome }
}

fn service(outcome: Ladder) -> Tried {
    to(Target::Service, outcome)
}

fn backup(outcome: Ladder) -> Tried {
    to(Target::Fallback("backup".into()), outcome)
}

fn question(outcome: Ladder) -> Tried {
    to(Target::Question, outcome)
}

fn answered(attempts: u32, via: Option<&str>) -> Decision {
    Decision::Settle(Settlement::Answered {
        reply: approved(),
        attempts,
        via: via.map(Into::into),
    })
}

fn park(reason: &str) -> Decision {
    Decision::Park {
        reason: reason.into(),
    }
}

fn unavailable(attempts: u32, parked: u32, last_error: &str, in_doubt: Option<&str>) -> Decision {
    Decision::Settle(Settlement::Failed {
        attempts,
        reason: "service_unavailable",
        detail: format!("transaction stayed unavailable after {parked} parkings: {last_error}"),
        in_doubt: in_doubt.map(Into::into),
    })
}

fn abandoned(attempts: u32, in_doubt: Option<&str>) -> Decision {
    Decision::Settle(Settlement::Failed {
        attempts,
        reason: ABANDONED,
        detail: "transaction abandoned: lease ran out".into(),
        in_doubt: in_doubt.map(Into::into),
    })
}

struct Case {
    name: &'static str,
    step: Step,
    mode: Mode<'static>,
    amount_minor: u64,
    parked: u32,
    max_parks: u32,
    tried: Vec<Tried>,
    then: Decision,
}

/// A live case on a payment of 1999 parked `parked` times out of 2.
fn live(name: &'static str, step: Step, parked: u32, tried: Vec<Tried>, then: Decision) -> Case {
    Case {
        name,
        step,
        mode: Mode::Live,
        amount_minor: 1999,
        parked,
        max_parks: 2,
        tried,
        then,
    }
}

fn abandon(name: &'static str, step: Step, tried: Vec<Tried>, then: Decision) -> Case {
    Case {
        mode: Mode::Abandon("lease ran out"),
        ..live(name, step, 0, tried, then)
    }
}

fn check(cases: Vec<Case>) {
    for case in cases {
        let standing = Standing {
            step: &case.step,
            mode: case.mode,
            amount_minor: case.amount_minor,
            parked: case.parked,
            max_parks: case.max_parks,
        };
        assert_eq!(decide(&standing, &case.tried), case.then, "{}", case.name);
    }
}

#[test]
fn a_live_step_is_sent_and_its_answer_recorded() {
    let declined = Reply::declined("c", "high_risk", "no");
    check(vec![
        live("first", plain(), 0, vec![], Decision::Send(Target::Service)),
        live(
            "approved on the third attempt",
            plain(),
            0,
            vec![service(answer(3))],
            answered(3, None),
        ),
        live(
            "a decline is an answer",
            plain(),
            0,
            vec![service(Ladder::Answer {
                reply: declined.clone(),
                attempts: 1,
            })],
            Decision::Settle(Settlement::Answered {
                reply: declined,
                attempts: 1,
                via: None,
            }),
        ),
        live(
            "stopping",
            plain(),
            0,
            vec![service(Ladder::Interrupted)],
            Decision::Interrupted,
        ),
    ]);
}

#[test]
fn an_unavailable_step_takes_its_fallback_once() {
    check(vec![
        live(
            "to the fallback service",
            with_fallback_service(),
            0,
            vec![service(down(3, false, "timeout"))],
            Decision::Send(Target::Fallback("backup".into())),
        ),
        live(
            "the fallback service answers: every attempt counted, via it",
            with_fallback_service(),
            0,
            vec![service(down(3, false, "timeout")), backup(answer(1))],
            answered(4, Some("backup")),
        ),
        live(
            "the fallback service is down too: park with its error",
            with_fallback_service(),
            0,
            vec![
                service(down(3, false, "timeout")),
                backup(down(2, false, "backup down")),
            ],
            park("backup down"),
        ),
        live(
            "past the parking limit, no second fallback",
            with_fallback_service(),
            2,
            vec![
                service(down(3, false, "timeout")),
                backup(down(2, false, "backup down")),
            ],
            unavailable(5, 2, "backup down", None),
        ),
        live(
            "stopping during the fallback",
            with_fallback_service(),
            0,
            vec![
                service(down(3, false, "timeout")),
                backup(Ladder::Interrupted),
            ],
            Decision::Interrupted,
        ),
        live(
            "a degraded approval under the limit",
            degradable(),
            0,
            vec![service(down(1, false, "timeout"))],
            Decision::Settle(Settlement::Degraded {
                attempts: 1,
                detail: "transaction unavailable (timeout); approved as degraded: amount at \
                         most 5000"
                    .into(),
            }),
        ),
        Case {
            amount_minor: 5000,
            ..live(
                "a degraded approval at the limit",
                degradable(),
                2,
                vec![service(down(1, false, "timeout"))],
                Decision::Settle(Settlement::Degraded {
                    attempts: 1,
                    detail: "transaction unavailable (timeout); approved as degraded: amount \
                             at most 5000"
                        .into(),
                }),
            )
        },
        Case {
            amount_minor: 5001,
            ..live(
                "over the limit it parks",
                degradable(),
                0,
                vec![service(down(1, false, "timeout"))],
                park("timeout"),
            )
        },
    ]);
}

#[test]
fn an_unavailable_step_parks_until_the_limit_then_fails() {
    check(vec![
        live(
            "first parking",
            plain(),
            0,
            vec![service(down(3, false, "timeout"))],
            park("timeout"),
        ),
        live(
            "last parking",
            plain(),
            1,
            vec![service(down(3, false, "timeout"))],
            park("timeout"),
        ),
        live(
            "past the limit",
            plain(),
            2,
            vec![service(down(3, false, "timeout"))],
            unavailable(3, 2, "timeout", None),
        ),
        Case {
            max_parks: 0,
            ..live(
                "no parking allowed",
                plain(),
                0,
                vec![service(down(3, false, "timeout"))],
                unavailable(3, 0, "timeout", None),
            )
        },
    ]);
}

#[test]
fn a_step_in_doubt_is_asked_once_more_then_handed_to_operators() {
    let to_operators = "no answer after 3 attempts and 2 parkings; the effect may have \
                        happened: timeout";
    check(vec![
        live(
            "timed out at the limit: ask",
            irreversible(),
            2,
            vec![service(down(3, true, "timeout"))],
            Decision::Send(Target::Question),
        ),
        live(
            "breaker open now, but an earlier visit sent it: ask",
            irreversible(),
            2,
            vec![service(down(0, false, "breaker open"))],
            Decision::Send(Target::Question),
        ),
        Case {
            max_parks: 0,
            ..live(
                "never parked, no timeout, only errors: nothing to ask",
                irreversible(),
                0,
                vec![service(down(3, false, "db_busy"))],
                unavailable(3, 0, "db_busy", None),
            )
        },
        Case {
            max_parks: 0,
            ..live(
                "never parked, timed out: ask",
                irreversible(),
                0,
                vec![service(down(3, true, "timeout"))],
                Decision::Send(Target::Question),
            )
        },
        live(
            "the question answered: counted with the visit",
            irreversible(),
            2,
            vec![service(down(3, true, "timeout")), question(answer(1))],
            answered(4, None),
        ),
        live(
            "no answer, irreversible: operators",
            irreversible(),
            2,
            vec![
                service(down(3, true, "timeout")),
                question(down(1, true, "late")),
            ],
            unavailable(3, 2, "timeout", Some(to_operators)),
        ),
        live(
            "stopping during the question is no answer",
            irreversible(),
            2,
            vec![
                service(down(3, true, "timeout")),
                question(Ladder::Interrupted),
            ],
            unavailable(3, 2, "timeout", Some(to_operators)),
        ),
        live(
            "no answer, compensable: its compensation is safe either way",
            reversible(),
            2,
            vec![
                service(down(3, true, "timeout")),
                question(down(1, true, "late")),
            ],
            unavailable(3, 2, "timeout", None),
        ),
    ]);
}

#[test]
fn an_abandoned_step_fails_unless_it_can_say_what_it_did() {
    check(vec![
        abandon("no side effects", plain(), vec![], abandoned(0, None)),
        abandon(
            "compensable: its compensation undoes it",
            reversible(),
            vec![],
            abandoned(0, None),
        ),
        abandon(
            "irreversible: ask",
            irreversible(),
            vec![],
            Decision::Send(Target::Question),
        ),
        abandon(
            "it answers",
            irreversible(),
            vec![question(answer(1))],
            answered(1, None),
        ),
        abandon(
            "no answer: operators",
            irreversible(),
            vec![question(down(1, true, "timeout"))],
            abandoned(
                1,
                Some(
                    "the payment was abandoned (lease ran out) and transaction did not say \
                     whether it acted: timeout",
                ),
            ),
        ),
        abandon(
            "stopping",
            irreversible(),
            vec![question(Ladder::Interrupted)],
            Decision::Interrupted,
        ),
    ]);
}

#[test]
fn settlements_become_journal_entries() {
    let step = plain();
    let took = Duration::from_millis(1234);
    let mut data = Map::new();
    data.insert("hold_id".into(), "h-1".into());

    let entry = Settlement::Answered {
        reply: Reply::approved("c", data.clone()),
        attempts: 2,
        via: Some("backup".into()),
    }
    .entry(&step, took);
    let mut line = StepRecord::new("transaction", StepOutcome::Approved, 2, 1234);
    line.via = Some("backup".into());
    assert_eq!(
        (entry.action, &entry.record, &entry.detail, &entry.data),
        (Action::Execute, &line, &None, &data)
    );

    let mut bare = Reply::declined("c", "x", "y");
    (bare.reason, bare.detail) = (None, None);
    let entry = Settlement::Answered {
        reply: bare,
        attempts: 1,
        via: None,
    }
    .entry(&step, took);
    assert_eq!(entry.record.outcome, StepOutcome::Declined);
    assert_eq!(entry.record.reason.as_deref(), Some("declined"));
    assert_eq!(
        entry.detail.as_deref(),
        Some("transaction declined the payment")
    );

    let entry = Settlement::Degraded {
        attempts: 1,
        detail: "d".into(),
    }
    .entry(&step, took);
    let mut line = StepRecord::new("transaction", StepOutcome::Approved, 1, 1234);
    (line.degraded, line.reason) = (true, Some("service_unavailable".into()));
    assert_eq!((&entry.record, entry.detail.as_deref()), (&line, Some("d")));

    let entry = Settlement::Failed {
        attempts: 3,
        reason: ABANDONED,
        detail: "d".into(),
        in_doubt: Some("e".into()),
    }
    .entry(&step, took);
    let mut line = StepRecord::new("transaction", StepOutcome::Failed, 3, 1234);
    line.reason = Some(ABANDONED.into());
    assert_eq!((&entry.record, entry.detail.as_deref()), (&line, Some("d")));
    assert!(entry.data.is_empty());
}

#[test]
fn a_compensation_is_undone_only_by_an_approval() {
    let mut refused = Reply::declined("c", "x", "y");
    refused.reason = None;
    let cases = [
        (answer(1), Some(Undo::Undone { attempts: 1 })),
        (
            Ladder::Answer {
                reply: Reply::declined("c", "already_captured", "no"),
                attempts: 1,
            },
            Some(Undo::Failed {
                attempts: 1,
                reason: "already_captured".into(),
            }),
        ),
        (
            Ladder::Answer {
                reply: refused,
                attempts: 2,
            },
            Some(Undo::Failed {
                attempts: 2,
                reason: "compensation_refused".into(),
            }),
        ),
        (
            down(2, false, "hold store down"),
            Some(Undo::Failed {
                attempts: 2,
                reason: "hold store down".into(),
            }),
        ),
        (Ladder::Interrupted, None),
    ];
    for (outcome, then) in cases {
        assert_eq!(undo(outcome.clone()), then, "{outcome:?}");
    }

    let step = reversible();
    let took = Duration::from_millis(7);
    let entry = Undo::Undone { attempts: 1 }.entry(&step, took);
    assert_eq!(
        (entry.action, &entry.record, &entry.detail),
        (
            Action::Compensate,
            &StepRecord::new("transaction", StepOutcome::Compensated, 1, 7),
            &None
        )
    );
    let entry = Undo::Failed {
        attempts: 2,
        reason: "r".into(),
    }
    .entry(&step, took);
    let mut line = StepRecord::new("transaction", StepOutcome::CompensationFailed, 2, 7);
    line.reason = Some("r".into());
    assert_eq!(
        (&entry.record, entry.detail.as_deref()),
        (&line, Some("compensating transaction failed: r"))
    );
}
