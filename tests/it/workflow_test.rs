//! `baton workflow test` as a user runs it: the shipped cases pass, a wrong expectation
//! fails with a diff naming the field, a bad case file is refused saying what to fix. No
//! broker: the harness runs the saga in memory. And `workflow check` shows a group and
//! what a step needs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn workflow_test(workflow: &Path, cases: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["workflow", "test"])
        .arg(workflow)
        .arg("--cases")
        .arg(cases)
        .env_remove("RUST_LOG")
        .output()
        .expect("baton runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A case file in the temporary directory, removed when dropped.
struct CaseFile {
    path: PathBuf,
}

impl CaseFile {
    fn new(body: &str) -> Self {
        let path = baton_testkit::scratch_path("cases", ".toml");
        std::fs::write(&path, body).unwrap();
        Self { path }
    }
}

impl Drop for CaseFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn the_shipped_cases_pass() {
    for (workflow, cases) in [
        ("workflows/default.toml", "workflows/cases/default.toml"),
        (
            "workflows/parallel-checks.toml",
            "workflows/cases/parallel-checks.toml",
        ),
    ] {
        let output = workflow_test(&repo(workflow), &repo(cases));
        let stdout = text(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{cases}:\n{stdout}{}",
            text(&output.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(lines.len() > 2, "{stdout}");
        for line in &lines[..lines.len() - 1] {
            assert!(line.starts_with("✓ "), "{line}");
        }
        assert!(
            lines.last().unwrap().ends_with(" passed, 0 failed"),
            "{stdout}"
        );
        assert!(
            output.stderr.is_empty(),
            "no log lines: {}",
            text(&output.stderr)
        );
    }
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_naming_the_field() {
    let file = CaseFile::new(
        r#"
[[cases]]
name = "approves"
expect = { status = "completed" }

[[cases]]
name = "pci retries"
answers.pci = ["error", "approve"]
[cases.expect]
status = "completed"
steps = [
  { step = "authorization", outcome = "approved", attempts = 1 },
  { step = "risk", outcome = "approved", attempts = 1 },
  { step = "pci", outcome = "approved", attempts = 1 },
  { step = "transaction", outcome = "approved", attempts = 1 },
]
"#,
    );
    let cases = &file.path;
    let output = workflow_test(&repo("workflows/default.toml"), cases);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("✓ approves"), "{stdout}");
    assert!(lines[1].starts_with("✗ pci retries"), "{stdout}");
    assert!(
        lines[2].starts_with("    steps[2].attempts: expected 1, got 2"),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with("    got: completed none, parked 0"),
        "{stdout}"
    );
    assert_eq!(*lines.last().unwrap(), "1 passed, 1 failed");
}

#[test]
fn a_bad_case_file_is_refused_saying_what_to_fix() {
    let file = CaseFile::new(
        "[[cases]]\nname = \"typo\"\nanswers.risk = \"approve\"\nexpect = { status = \"completed\", parkd = 1 }\n",
    );
    let cases = &file.path;
    let output = workflow_test(&repo("workflows/default.toml"), cases);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "no case ran: {}",
        text(&output.stdout)
    );
    assert!(
        stderr.starts_with(&format!("error: cases {}: ", cases.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown field `parkd`") && stderr.contains("`parked`"),
        "{stderr}"
    );

    let missing = workflow_test(&repo("workflows/default.toml"), &repo("no-such-cases.toml"));
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read the file"));

    let bad_workflow = workflow_test(cases, &repo("workflows/cases/default.toml"));
    assert_eq!(bad_workflow.status.code(), Some(2));
    assert!(text(&bad_workflow.stderr).contains(&format!("error: workflow {}", cases.display())));
}

#[test]
fn workflow_check_shows_the_parallel_group() {
    let output = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["workflow", "check"])
        .arg(repo("workflows/parallel-checks.toml"))
        .output()
        .expect("baton runs");
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[1].starts_with("risk ") && lines[3].starts_with("pci "),
        "{stdout}"
    );
    assert_eq!(lines[2].trim(), "group checks", "{stdout}");
    assert_eq!(lines[4].trim(), "group checks", "{stdout}");
    assert!(lines[5].starts_with("transaction "), "{stdout}");
    assert_eq!(lines[6].trim(), "needs authorization", "{stdout}");
}
