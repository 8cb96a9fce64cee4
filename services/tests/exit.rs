//! The built service binaries' exit codes and one-line errors for what `baton` exits 2
//! for (an unreachable broker, a bad broker URL, a refused login), and `--version`.

use std::process::{Command, Output};

const BINARIES: [&str; 4] = [
    env!("CARGO_BIN_EXE_baton-authorization"),
    env!("CARGO_BIN_EXE_baton-risk"),
    env!("CARGO_BIN_EXE_baton-pci"),
    env!("CARGO_BIN_EXE_baton-transaction"),
];

fn run(binary: &str, args: &[&str]) -> Output {
    let ledger = baton_testkit::ScratchSqlite::new("exit");
    let output = Command::new(binary)
        .args(args)
        // Nothing from the developer's shell; no HTTP port to collide on; a ledger of
        // its own (the ledger services open it before connecting).
        .env_clear()
        .env("BATON_HTTP_ADDR", "127.0.0.1:0")
        .env("BATON_LEDGER_URL", ledger.url())
        .env("BATON_CARD_KEY_FILE", "/nonexistent/baton-card.key")
        .output()
        .expect("run a service binary");
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_unreachable_broker_or_a_bad_url_exits_2_with_one_error_line() {
    // Risk needs its key file first (exit 1); the others reach the broker check.
    for binary in [BINARIES[0], BINARIES[2], BINARIES[3]] {
        for url in [
            "amqp://guest:s3cret@127.0.0.1:1/%2f",
            "http://guest:s3cret@nope",
        ] {
            let output = run(binary, &["--amqp-url", url]);
            let err = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{binary} {url}: {err}");
            let errors: Vec<_> = err.lines().filter(|l| l.starts_with("error: ")).collect();
            assert_eq!(errors.len(), 1, "{binary} {url}: {err}");
            assert!(!err.contains("s3cret"), "{binary}: {err}");
        }
    }
    let risk = run(BINARIES[1], &["--amqp-url", "amqp://127.0.0.1:1/%2f"]);
    assert_eq!(risk.status.code(), Some(1), "{}", stderr(&risk));
    assert!(
        stderr(&risk).contains("baton-card.key"),
        "{}",
        stderr(&risk)
    );
}

#[test]
fn a_refused_login_exits_2_with_one_line_and_none_of_lapins() {
    let url = baton_testkit::amqp_url().replacen("guest:guest@", "guest:wrong-password@", 1);
    assert!(
        url.contains("wrong-password"),
        "the test broker URL has guest:guest: {url}"
    );
    // RUST_LOG is unset (`run` clears the environment): the default filter, lapin's
    // targets included. Risk stops at its missing key file before connecting.
    for binary in [BINARIES[0], BINARIES[2], BINARIES[3]] {
        let output = run(binary, &["--amqp-url", &url]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{binary}: {err}");
        let errors: Vec<_> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{binary}: {err}");
        assert!(
            errors[0].contains("the broker refused the login of user guest (ACCESS_REFUSED)"),
            "{binary}: {err}"
        );
        assert!(!err.lines().any(|l| l.contains("lapin")), "{binary}: {err}");
        assert!(!err.lines().any(|l| l.contains("ERROR")), "{binary}: {err}");
        assert!(!err.contains("wrong-password"), "{binary}: {err}");
    }
}

#[test]
fn every_binary_has_a_version() {
    for binary in BINARIES {
        let output = run(binary, &["--version"]);
        assert_eq!(output.status.code(), Some(0), "{binary}");
        let shown = String::from_utf8_lossy(&output.stdout);
        assert!(shown.starts_with("baton-"), "{shown}");
        assert!(
            shown.trim_end().ends_with(env!("CARGO_PKG_VERSION")),
            "{shown}"
        );
    }
}
