//! The `baton` binary as a user meets it: help text, bad options, an unreachable broker.

use baton_testkit::{
    amqp_url, delete_prefix, http_get, queue_exists, scratch_name, ScratchDir, ScratchSqlite,
};
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
    let dir = ScratchDir::new("bin-wf");
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
}

#[test]
fn workflow_check_reports_each_kind_of_condition_and_needs_error() {
    let dir = ScratchDir::new("bin-wf-when");
    let check_with = |name: &str, when_fx: &str, when_edd: &str, edd_needs: &str| {
        let file = dir.join(name);
        std::fs::write(
            &file,
            format!(
                "[[steps]]\nname = \"authorization\"\ntimeout_ms = 5\ncard = \"number\"\ncompensate = true\n\
                 [[steps]]\nname = \"fx\"\ntimeout_ms = 5\nwhen = \"{when_fx}\"\n\
                 [[steps]]\nname = \"edd\"\ntimeout_ms = 5\nwhen = \"{when_edd}\"\nneeds = [{edd_needs}]\n"
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
    let check = |name: &str, when_fx: &str, when_edd: &str| check_with(name, when_fx, when_edd, "");
    let fx = "payment.merchant_currency != payment.amount.currency";
    let (code, stdout, stderr) = check("ok.toml", fx, "payment.amount.minor >= 1000000");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&format!("when {fx}")), "{stdout}");
    assert!(!stdout.contains("needs"), "{stdout}");
    // A step that needs a conditional step runs under the same condition, or not at all.
    let (code, stdout, stderr) = check_with("same.toml", fx, fx, "\"authorization\", \"fx\"");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("\n                 needs authorization, fx\n"),
        "{stdout}"
    );
    let (code, _, stderr) = check_with(
        "needs.toml",
        fx,
        "payment.amount.minor >= 1000000",
        "\"fx\"",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "steps[2] (\"edd\"): needs \"fx\", which has a condition (when = {fx:?}): a payment \
             that skips \"fx\" would reach \"edd\" without its data; give \"edd\" the same \
             condition, or remove it from \"fx\""
        )) && stderr.contains("needs.toml"),
        "{stderr}"
    );
    let (code, _, stderr) = check_with("unknown.toml", fx, "true", "\"authorisation\"");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "steps[2] (\"edd\"): needs \"authorisation\", which is not a step of the workflow; \
             those before this one are authorization, fx"
        ),
        "{stderr}"
    );
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
}

/// Runs `baton` with `args` in `dir`, without the developer's journal variable.
fn baton_in(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = baton()
        .args(args)
        .current_dir(dir)
        .env_remove("BATON_JOURNAL_URL")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Run in the wrong directory, `status` used to create an empty journal there and answer
/// "not in the journal". The operators' journal tools create nothing and name the
/// absolute path they looked at.
#[test]
fn journal_tools_in_the_wrong_directory_create_nothing_and_name_the_file() {
    let dir = ScratchDir::new("bin-cwd");
    let id = uuid::Uuid::new_v4().to_string();
    let expected = format!("no database at {}", dir.join("baton-journal.db").display());
    for args in [
        &["status", id.as_str()][..],
        &["sagas", "stuck"],
        &["sagas", "finish", id.as_str(), "--wait", "1s"],
        &["journal", "prune"],
    ] {
        let (code, stdout, stderr) = baton_in(&dir, args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("not in the journal"), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "{args:?} created a file"
        );
    }
}

/// `baton run` with a journal in a directory that is not there: one error line saying
/// so (it was the same sqlx message three times).
#[test]
fn a_journal_in_a_missing_directory_says_which_directory() {
    let dir = ScratchDir::new("bin-nodir");
    let url = format!("sqlite://{}/state/journal.db", dir.display());
    let (code, _, stderr) = baton_in(&dir, &["run", "--http-addr", "off", "--journal-url", &url]);
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!("directory {}/state does not exist", dir.display())),
        "{stderr}"
    );
    assert_eq!(lines[0].matches("journal.db").count(), 1, "{stderr}");
}

/// A journal that is not a database, or a PostgreSQL port with nothing listening, used
/// to be 30 silent seconds then "pool timed out". Both fail at once with the cause.
#[test]
fn a_journal_that_cannot_be_opened_fails_at_once_with_the_cause() {
    let dir = ScratchDir::new("bin-notdb");
    std::fs::write(dir.join("notes.db"), "not SQLite\n".repeat(100)).unwrap();
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let postgres = format!("postgres://baton:hunter2@127.0.0.1:{port}/journal");
    let id = uuid::Uuid::new_v4().to_string();
    for (url, cause) in [
        (
            "sqlite://notes.db".to_owned(),
            format!(
                "{} is not an SQLite database",
                dir.join("notes.db").display()
            ),
        ),
        (
            postgres.clone(),
            format!("postgres://baton:***@127.0.0.1:{port}/journal: connection refused"),
        ),
    ] {
        for args in [
            &["status", id.as_str(), "--journal-url", &url][..],
            &["run", "--http-addr", "off", "--journal-url", &url],
        ] {
            let started = std::time::Instant::now();
            let (code, _, stderr) = baton_in(&dir, args);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{args:?} took {:?}",
                started.elapsed()
            );
            assert_eq!(code, Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains(&cause), "{args:?}: {stderr}");
            assert!(!stderr.contains("hunter2") && !stderr.contains("timed out"));
        }
    }
}

/// Runs `baton` with `args` on the test broker, off the async runtime's threads.
async fn baton_on_broker(args: Vec<String>) -> (Option<i32>, String, String) {
    let mut command = baton();
    command
        .args(["--amqp-url", &amqp_url()])
        .args(args)
        .env("RUST_LOG", "warn");
    let output = baton_testkit::output(command).await;
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Invalid JSON from `--file` used to be published, dead-lettered at once without an
/// answer (it has no payment id to answer), and waited for 60 s before asking whether an
/// orchestrator runs. `pay` checks the request first: nothing is published.
#[tokio::test]
async fn pay_refuses_an_invalid_request_file_at_once_and_publishes_nothing() {
    let dir = ScratchDir::new("bin-pay");
    let file = dir.join("request.json");
    std::fs::write(
        &file,
        r#"{"payment_id": "8c3f5a0e-1d2b-4c5d-9e6f-7a8b9c0d1e2f", "amount": "#,
    )
    .unwrap();
    let prefix = scratch_name("test");
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = baton_on_broker(vec![
        "pay".into(),
        "--prefix".into(),
        prefix.clone(),
        "--file".into(),
        file.display().to_string(),
    ])
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the request file {} is not a valid payment request, nothing was published",
            file.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("orchestrator"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        !queue_exists(&amqp_url(), &format!("{prefix}.requests")).await,
        "pay declared and published"
    );
}

/// A payment an orchestrator has (waiting for a service that is down, or parked) when
/// `pay` gives up is "still running, see `baton status <id>`"; only a request nobody
/// consumes is a missing orchestrator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_tells_a_running_payment_from_a_missing_orchestrator() {
    use baton::workflow::Workflow;
    use baton_contract::Names;
    let prefix = scratch_name("test");
    let names = Names::new(prefix.clone());
    let journal = ScratchSqlite::new("pay-journal");
    let pay = |id: uuid::Uuid| {
        baton_on_broker(vec![
            "pay".into(),
            "--prefix".into(),
            prefix.clone(),
            "--timeout".into(),
            "2".into(),
            "--payment-id".into(),
            id.to_string(),
        ])
    };

    // No orchestrator on this prefix: the request waits in the request queue.
    let waiting = uuid::Uuid::new_v4();
    let (code, _, stderr) = pay(waiting).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no orchestrator consumes {prefix}.requests, where payment {waiting} waits"
        )),
        "{stderr}"
    );

    // An orchestrator and no services: it takes the payments (the waiting one too), and
    // their commands wait for a service.
    let mut settings = baton::config::Settings::new(amqp_url(), &prefix, journal.url());
    settings.card_keys = Some(baton_contract::CardKeys::generate("pay-test"));
    // Its payments never finish: no point waiting for them at shutdown.
    settings.shutdown_timeout = std::time::Duration::ZERO;
    let orchestrator = baton::runtime::start(settings).await.unwrap();
    let running = uuid::Uuid::new_v4();
    let (code, _, stderr) = pay(running).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("payment {running} is still running"))
            && stderr.contains(&format!("see `baton status {running}`")),
        "{stderr}"
    );
    assert!(!stderr.contains("no orchestrator"), "{stderr}");

    orchestrator.shutdown().await.unwrap();
    let builtin = Workflow::builtin();
    let services = builtin.services();
    delete_prefix(
        &amqp_url(),
        &names,
        &services,
        &builtin.parking().delays_ms(),
    )
    .await
    .unwrap();
}

/// A second `baton run` on one machine used to fail on the fixed HTTP port. Without
/// `--http-addr` it takes a free port and says so; an address given and taken is still
/// an error naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_baton_run_takes_a_free_http_port_unless_one_is_given() {
    use std::io::BufRead as _;
    // The default port, taken: by this test, or already by another process.
    let default = baton::config::DEFAULT_HTTP_ADDR;
    let _held = std::net::TcpListener::bind(default).ok();
    let prefix = scratch_name("test");
    let dir = ScratchDir::new("bin-port");
    let journal = format!("sqlite://{}/journal.db", dir.display());
    baton_contract::CardKeys::load_or_create(&dir.join("card.key")).unwrap();

    // Given and taken: an error that says how to choose another.
    let (code, _, stderr) = baton_on_broker(vec![
        "run".into(),
        "--prefix".into(),
        prefix.clone(),
        "--journal-url".into(),
        journal.clone(),
        "--card-key-file".into(),
        dir.join("card.key").display().to_string(),
        "--http-addr".into(),
        default.into(),
    ])
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(
        error.contains(&format!("cannot listen on {default}: address in use"))
            && error.contains("--http-addr / BATON_HTTP_ADDR"),
        "{stderr}"
    );
    assert!(
        !error.contains("os error"),
        "the cause once, in words: {error}"
    );

    // Not given: a free port on the same host, logged, and served.
    let mut child = KillOnDrop(
        baton()
            .args(["--amqp-url", &amqp_url(), "--prefix", &prefix])
            .args(["run", "--journal-url", &journal, "--card-key-file"])
            .arg(dir.join("card.key"))
            .env_remove("BATON_HTTP_ADDR")
            .env("RUST_LOG", "info")
            .env("BATON_LOG_FORMAT", "text")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // Logged once the fallback port listens.
            let done = line.contains("HTTP port taken");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let lines = tokio::time::timeout(std::time::Duration::from_secs(30), lines)
        .await
        .expect("baton run logs that it took another HTTP port")
        .unwrap();
    let text = lines.join("\n");
    let served: Option<std::net::SocketAddr> = lines
        .iter()
        .find(|l| l.contains("HTTP port listening"))
        .and_then(|l| {
            l.rsplit_once("addr=")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
    let health = match served {
        Some(addr) => http_get(addr, "/healthz").await.ok(),
        None => None,
    };
    drop(child);
    assert_eq!(health.map(|(status, _)| status), Some(200), "{text}");
    let warning = lines
        .iter()
        .find(|l| l.contains("HTTP port taken"))
        .unwrap_or_else(|| panic!("no warning: {text}"));
    assert!(warning.contains(&format!("taken={default}")), "{warning}");
    assert!(warning.contains("--http-addr"), "{warning}");
    let listening = lines
        .iter()
        .find(|l| l.contains("HTTP port listening"))
        .unwrap_or_else(|| panic!("no HTTP port: {text}"));
    assert!(
        listening.contains("addr=127.0.0.1:") && !listening.contains(default),
        "{text}"
    );

    let builtin = baton::workflow::Workflow::builtin();
    delete_prefix(
        &amqp_url(),
        &baton_contract::Names::new(prefix.clone()),
        &builtin.services(),
        &builtin.parking().delays_ms(),
    )
    .await
    .unwrap();
}

/// A child process killed (and reaped) when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `baton … | head` used to panic ("failed printing to stdout: Broken pipe") once the
/// reader was gone. It stops quietly with the shell's SIGPIPE status. The output is
/// larger than a pipe's buffer and never read, so the write that fails is certain to
/// come after the reader is gone.
#[test]
fn a_reader_going_away_ends_the_output_quietly() {
    let dir = ScratchDir::new("bin-pipe");
    let file = dir.join("long.toml");
    let steps: String = (0..2000)
        .map(|i| format!("[[steps]]\nname = \"step-{i}\"\ntimeout_ms = 5\n"))
        .collect();
    std::fs::write(&file, steps).unwrap();
    let mut child = baton()
        .args(["workflow", "check"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(output.status.code(), Some(141));
}

/// `status` and `workflow check` do not talk to RabbitMQ: their `--help` does not list
/// the broker options, given they are refused (not silently ignored), and the broker
/// variables are not read there. `baton demo` refuses `--prefix`, which it used to
/// ignore (it runs on a fresh prefix of its own). Other subcommands keep them.
#[test]
fn subcommands_list_and_take_only_the_broker_options_they_use() {
    let help = |args: &[&str]| {
        let output = baton().args(args).arg("--help").output().unwrap();
        assert!(output.status.success(), "{args:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    for args in [&["status"][..], &["workflow", "check"]] {
        let text = help(args);
        for option in ["--amqp-url", "--amqp-ca-file", "AMQP_URL"] {
            assert!(!text.contains(option), "{args:?} lists {option}:\n{text}");
        }
    }
    assert!(!help(&["status"]).contains("--prefix"));
    // workflow check names the queues with the prefix: it keeps it.
    assert!(help(&["workflow", "check"]).contains("--prefix"));
    for args in [&["run"][..], &["pay"], &["dead", "list"], &["doctor"]] {
        let text = help(args);
        assert!(
            text.contains("--amqp-url") && text.contains("--prefix"),
            "{args:?}:\n{text}"
        );
    }

    let id = uuid::Uuid::new_v4().to_string();
    for (args, refused) in [
        (vec!["status", id.as_str(), "--prefix", "x"], "--prefix"),
        (
            vec!["status", id.as_str(), "--amqp-url", "amqp://h"],
            "--amqp-url",
        ),
        (
            vec!["workflow", "check", "--amqp-url", "amqp://h"],
            "--amqp-url",
        ),
        (vec!["demo", "--prefix", "x"], "--prefix"),
    ] {
        let output = baton().args(&args).output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("'{refused} <")) && stderr.contains("takes no"),
            "{args:?}: {stderr}"
        );
    }

    // The variables are everyone's (a shell exports them): not read where unused.
    let output = baton()
        .args(["workflow", "check"])
        .env("AMQP_URL", "amqp://elsewhere")
        .env("BATON_PREFIX", "env-prefix")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8(output.stdout)
        .unwrap()
        .contains("env-prefix.cmd.authorization"));
}

/// A misspelt subcommand or flag gets clap's "did you mean".
#[test]
fn a_misspelt_subcommand_or_flag_suggests_the_right_one() {
    for (args, tip) in [
        (&["stauts"][..], "'status'"),
        (&["pay", "--fiel", "x.json"], "'--file'"),
        (&["workflow", "chek"], "'check'"),
        (&["run", "--concurency", "8"], "'--concurrency'"),
    ] {
        let output = baton().args(args).output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        let line = stderr.lines().find(|l| l.contains("tip:")).unwrap_or("");
        assert!(line.contains(tip), "{args:?}: {stderr}");
    }
}

/// A wrong broker password used to be followed by "is it running? Start it with
/// rabbitmq-server -detached" and three lapin ERROR lines. It is one line saying the
/// login was refused, and nothing from lapin.
#[test]
fn a_refused_login_is_one_line_saying_so() {
    let dir = ScratchDir::new("bin-login");
    let url = amqp_url().replacen("guest:guest@", "guest:wrong-password@", 1);
    assert!(
        url.contains("wrong-password"),
        "the test broker URL has guest:guest: {url}"
    );
    let journal = format!("sqlite://{}/journal.db", dir.display());
    let key = dir.join("card.key").display().to_string();
    for args in [
        &[
            "run",
            "--http-addr",
            "off",
            "--journal-url",
            &journal,
            "--card-key-file",
            &key,
        ][..],
        &["pay", "--timeout", "5"],
        &["dead", "list"],
    ] {
        baton_contract::CardKeys::load_or_create(&dir.join("card.key")).unwrap();
        let output = baton()
            .args(args)
            .args(["--amqp-url", &url])
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("ERROR") || l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(
            errors[0].contains("the broker refused the login of user guest"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("lapin"), "{args:?}: {stderr}");
        assert!(!stderr.contains("rabbitmq-server"), "{args:?}: {stderr}");
        assert!(!stderr.contains("wrong-password"), "{args:?}: {stderr}");
    }
}

/// Ctrl-C during `baton demo` used to leave its queues and files behind. It stops the
/// pipeline, deletes its prefix's queues and its files, and exits 130.
#[test]
fn an_interrupted_demo_cleans_up_its_queues_and_files() {
    use std::io::BufRead as _;
    let tmp = ScratchDir::new("bin-demo");
    let mut child = KillOnDrop(
        baton()
            .args(["--amqp-url", &amqp_url()])
            .args(["demo", "--payments", "50"])
            // Its journal and ledger files go to the temporary directory: this one.
            .env("TMPDIR", tmp.path())
            .env_remove("BATON_LEDGER_URL")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = std::io::BufReader::new(child.0.stderr.take().unwrap()).lines();
    // The first line names the prefix; the signal handlers are installed before it.
    let first = stderr.next().expect("a first line").unwrap();
    let prefix = first
        .strip_prefix("baton demo: prefix ")
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    let killed = Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = stderr.map_while(Result::ok).collect();
    let status = child.0.wait().unwrap();
    let text = rest.join("\n");
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(
        text.contains(&format!("interrupted: {prefix} and its files deleted")),
        "{text}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for queue in [
        "requests",
        "results",
        "dead",
        "cmd.authorization",
        "cmd.risk",
    ] {
        let queue = format!("{prefix}.{queue}");
        assert!(
            !runtime.block_on(queue_exists(&amqp_url(), &queue)),
            "{queue} is left"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "files left: {left:?}");
}
