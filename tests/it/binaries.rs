//! The `baton` binary as a user meets it: help text, bad options, an unreachable broker.

use std::process::Command;

fn baton() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

#[test]
fn help_documents_the_options_and_never_shows_a_password() {
    let output = baton()
        .args(["run", "--help"])
        .env("AMQP_URL", "amqp://admin:hunter2@broker:5672/%2f")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--amqp-url",
        "--prefix",
        "--concurrency",
        "--workflow",
        "AMQP_URL",
        "BATON_PREFIX",
    ] {
        assert!(help.contains(option), "--help should document {option}");
    }
    assert!(!help.contains("hunter2"), "{help}");
    assert!(!help.contains("guest:guest"), "{help}");
}

#[test]
fn an_unreachable_broker_is_one_line_naming_the_url_without_password_and_exit_2() {
    // Port 1 on loopback: nothing listens there.
    let output = baton()
        .args(["run", "--amqp-url", "amqp://guest:hunter2@127.0.0.1:1/%2f"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("amqp://guest:***@127.0.0.1:1/%2f"),
        "{stderr}"
    );
    assert!(lines[0].contains("rabbitmq-server"), "{stderr}");
    assert!(!stderr.contains("hunter2"));
    assert!(!stderr.contains("panicked"));
}

#[test]
fn a_bad_prefix_is_refused_with_what_to_fix() {
    let output = baton()
        .args(["run", "--prefix", "my prefix"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "clap's usage error code");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("--prefix") && stderr.contains("A-Z"),
        "{stderr}"
    );
}

#[test]
fn a_broken_workflow_file_is_refused_naming_the_entry() {
    let dir = std::env::temp_dir().join(format!("baton-wf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.toml");
    std::fs::write(&file, "[[steps]]\nname = \"risk\"\ntimeout_ms = 0\n").unwrap();
    let output = baton()
        .args(["workflow", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("steps[0]") && stderr.contains("timeout_ms"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn workflow_check_reports_each_kind_of_condition_error_with_its_position() {
    let dir = std::env::temp_dir().join(format!("baton-wf-when-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, when_fx: &str, when_edd: &str| {
        let file = dir.join(name);
        std::fs::write(
            &file,
            format!(
                "[[steps]]\nname = \"authorization\"\ntimeout_ms = 5\ncard = \"number\"\ncompensate = true\n\
                 [[steps]]\nname = \"fx\"\ntimeout_ms = 5\nwhen = \"{when_fx}\"\n\
                 [[steps]]\nname = \"edd\"\ntimeout_ms = 5\nwhen = \"{when_edd}\"\n"
            ),
        )
        .unwrap();
        let output = baton()
            .args(["workflow", "check"])
            .arg(&file)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let fx = "payment.merchant_currency != payment.amount.currency";
    let (code, stdout, stderr) = check("ok.toml", fx, "payment.amount.minor >= 1000000");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&format!("when {fx}")), "{stdout}");
    for (name, when_fx, when_edd, expected) in [
        (
            "syntax.toml",
            fx,
            "payment.amount.minor >== 1",
            "steps[2] (\"edd\"): when: line 13, column 32: syntax error",
        ),
        (
            "field.toml",
            "payment.merchant_curency != 'EUR'",
            "true",
            "steps[1] (\"fx\"): when: line 9, column 16: unknown field: `payment` has no `merchant_curency`",
        ),
        (
            "type.toml",
            fx,
            "payment.amount.minor >= 'lots'",
            "steps[2] (\"edd\"): when: line 13, column 30: type error: `>=` cannot order an int and a string",
        ),
        (
            "depends.toml",
            fx,
            "has(steps.fx.rate)",
            "steps[2] (\"edd\"): when reads steps.fx, but \"fx\" has a condition of its own",
        ),
    ] {
        let (code, _, stderr) = check(name, when_fx, when_edd);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name} names the file: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
