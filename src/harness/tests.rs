//! The harness's own tests: the shipped cases, a case that must fail, bad case files.

use super::*;

const DEFAULT_CASES: &str = include_str!("../../workflows/cases/default.toml");
const PARALLEL: &str = include_str!("../../workflows/parallel-checks.toml");
const PARALLEL_CASES: &str = include_str!("../../workflows/cases/parallel-checks.toml");

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
        extra.contains("answers.risk: unknown key \"than\" in a slow answer; it takes slow, then"),
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
