//! Workflow files: parsed, validated, and refused with a message that says what to fix.

use super::parse::{DEFAULT_BREAKER, DEFAULT_COMPENSATION_RETRY, DEFAULT_RETRY};
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
    let needs: Vec<&[String]> = (0..4).map(|i| wf.needs(i)).collect();
    assert_eq!(
        needs,
        [&[][..], &[], &[], &["authorization".to_owned()]],
        "transaction captures authorization's hold"
    );
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
    let text = format!("{DEFAULT_WORKFLOW}\n[[steps]]\nname = \"sanctions\"\ntimeout_ms = 500\n");
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
        side_effect_fallback.contains("steps[0]") && side_effect_fallback.contains("side effects"),
        "{side_effect_fallback}"
    );
    let both = error_of(
        "[[steps]]\nname = \"risk\"\ntimeout_ms = 5\nfallback = { service = \"r2\", approve_below_minor = 5 }\n",
    );
    assert!(both.contains("exactly one"), "{both}");
    let zero = error_of("[[steps]]\nname = \"risk\"\ntimeout_ms = 5\nretry = { attempts = 0 }\n");
    assert!(zero.contains("retry.attempts"), "{zero}");
    let typo = error_of("[[steps]]\nname = \"risk\"\ntimeout_ms = 5\nretry = { atempts = 2 }\n");
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
    let last4_only = Workflow::parse("[[steps]]\nname = \"pci\"\ntimeout_ms = 5\n", "t").unwrap();
    assert!(last4_only.check_card_keys(false).is_ok());
}

/// Three steps `a`, `b`, `c`, each with its extra lines.
fn abc(extra: [&str; 3]) -> String {
    format!(
        "[[steps]]\nname = \"a\"\ntimeout_ms = 5\n{}\n\
         [[steps]]\nname = \"b\"\ntimeout_ms = 5\n{}\n\
         [[steps]]\nname = \"c\"\ntimeout_ms = 5\n{}\n",
        extra[0], extra[1], extra[2]
    )
}

#[test]
fn a_step_needs_only_earlier_steps() {
    let wf = Workflow::parse(&abc(["", "needs = [\"a\"]", "needs = [\"a\", \"b\"]"]), "t").unwrap();
    assert_eq!(wf.needs(0), [] as [String; 0]);
    assert_eq!(wf.needs(1), ["a"]);
    assert_eq!(wf.needs(2), ["a", "b"]);
    assert_eq!(wf.needs(3), [] as [String; 0], "no such step: nothing");

    let unknown = error_of(&abc(["", "", "needs = [\"a\", \"x\"]"]));
    assert!(
        unknown.contains(
            "steps[2] (\"c\"): needs \"x\", which is not a step of the workflow; those \
             before this one are a, b"
        ),
        "{unknown}"
    );
    let first = error_of(&abc(["needs = [\"x\"]", "", ""]));
    assert!(
        first.contains("steps[0] (\"a\"): needs \"x\", which is not a step of the workflow; none comes before this one"),
        "{first}"
    );
    let itself = error_of(&abc(["", "needs = [\"b\"]", ""]));
    assert!(
        itself.contains("steps[1] (\"b\"): needs \"b\", itself;")
            && itself.contains("remove \"b\""),
        "{itself}"
    );
    let later = error_of(&abc(["needs = [\"c\"]", "", ""]));
    assert!(
        later.contains(
            "steps[0] (\"a\"): needs \"c\", which comes later (steps[2]): its data is not there \
             yet; move \"c\" before \"a\", or remove it from needs"
        ),
        "{later}"
    );
    let twice = error_of(&abc(["", "", "needs = [\"a\", \"a\"]"]));
    assert!(
        twice.contains("steps[2] (\"c\"): needs lists \"a\" twice"),
        "{twice}"
    );
}

#[test]
fn a_step_cannot_need_a_step_of_its_own_group() {
    let g = "group = \"checks\"";
    let e = error_of(&abc([g, "group = \"checks\"\nneeds = [\"a\"]", ""]));
    assert!(
        e.contains(
            "steps[1] (\"b\"): needs \"a\", which is in its own group \"checks\": the group's \
             commands are sent at once, so \"a\"'s data is not there yet; move \"b\" out of \
             the group, after it"
        ),
        "{e}"
    );
    // After the group, its members' data is there.
    let after = Workflow::parse(&abc([g, g, "needs = [\"a\", \"b\"]"]), "t").unwrap();
    assert_eq!(after.needs(2), ["a", "b"]);
    // A group after the needed step: its members' commands carry that step's data.
    let before = Workflow::parse(
        &abc([
            "",
            "group = \"checks\"\nneeds = [\"a\"]",
            "group = \"checks\"\nneeds = [\"a\"]",
        ]),
        "t",
    )
    .unwrap();
    assert_eq!(before.needs(2), ["a"]);
}

#[test]
fn a_step_cannot_need_a_step_that_may_be_skipped_unless_it_has_the_same_condition() {
    let big = "when = \"payment.amount.minor >= 1000000\"";
    let e = error_of(&abc([big, "", "needs = [\"a\"]"]));
    assert!(
        e.contains(
            "steps[2] (\"c\"): needs \"a\", which has a condition (when = \"payment.amount.minor \
             >= 1000000\"): a payment that skips \"a\" would reach \"c\" without its data; give \
             \"c\" the same condition, or remove it from \"a\""
        ),
        "{e}"
    );
    let other = error_of(&abc([
        big,
        "",
        "needs = [\"a\"]\nwhen = \"payment.amount.minor >= 5000000\"",
    ]));
    assert!(
        other.contains("steps[2] (\"c\"): needs \"a\", which has a condition"),
        "a different condition does not run with it: {other}"
    );
    let spaced = error_of(&abc([
        big,
        "",
        "needs = [\"a\"]\nwhen = \"payment.amount.minor >=  1000000\"",
    ]));
    assert!(
        spaced.contains("steps[2] (\"c\"): needs \"a\", which has a condition"),
        "the same text, not the same meaning: {spaced}"
    );
    // Both run or both are skipped.
    let same = Workflow::parse(&abc([big, "", &format!("needs = [\"a\"]\n{big}")]), "t").unwrap();
    assert_eq!(same.needs(2), ["a"]);
    assert_eq!(
        same.steps()[2].when.as_ref().map(|c| c.source()),
        same.steps()[0].when.as_ref().map(|c| c.source())
    );
    // A condition on the needing step alone is fine: the needed one always ran.
    let own = Workflow::parse(&abc(["", "", &format!("needs = [\"a\"]\n{big}")]), "t").unwrap();
    assert_eq!(own.needs(2), ["a"]);
}

/// The issue's case: a condition on authorization would let a payment reach transaction
/// without a hold. The shipped workflow says transaction needs it, so it is refused.
#[test]
fn a_condition_on_authorization_is_refused_in_the_shipped_workflow() {
    let when = "when = \"payment.amount.minor >= 100\"\n";
    let conditional = DEFAULT_WORKFLOW.replacen(
        "name = \"authorization\"\n",
        &format!("name = \"authorization\"\n{when}"),
        1,
    );
    let e = error_of(&conditional);
    assert!(
        e.contains(
            "steps[3] (\"transaction\"): needs \"authorization\", which has a condition (when = \
             \"payment.amount.minor >= 100\"): a payment that skips \"authorization\" would reach \
             \"transaction\" without its data; give \"transaction\" the same condition, or \
             remove it from \"authorization\""
        ),
        "{e}"
    );
    let both = conditional.replacen(
        "name = \"transaction\"\n",
        &format!("name = \"transaction\"\n{when}"),
        1,
    );
    Workflow::parse(&both, "t").unwrap();
}

/// `needs` changes nothing a payment does, so replicas whose files differ only in it
/// announce the same digest (and doctor does not flag them).
#[test]
fn needs_is_not_part_of_the_digest() {
    let line = "needs = [\"authorization\"]";
    assert!(DEFAULT_WORKFLOW.contains(line));
    let without = Workflow::parse(&DEFAULT_WORKFLOW.replacen(line, "", 1), "t").unwrap();
    assert_eq!(without.needs(3), [] as [String; 0]);
    assert_eq!(without.digest(), Workflow::builtin().digest());
    assert_ne!(without, Workflow::builtin(), "the workflows do differ");
}
