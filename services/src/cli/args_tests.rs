//! The service binaries' flags: parsing, defaults, help text, versions, suggestions.

use super::*;

#[test]
fn help_never_shows_the_password() {
    let mut command = LedgerCli::command().name("baton-authorization");
    let help = command.render_long_help().to_string();
    assert!(!help.contains("guest:guest"), "{help}");
    assert!(help.contains("guest:***"), "{help}");
    assert!(help.contains("--ledger-url"));
    let help = StatelessCli::command().render_long_help().to_string();
    assert!(!help.contains("--ledger-url"), "{help}");
    assert!(
        !help.contains("--card-key-file"),
        "only risk takes the card key"
    );
}

#[test]
fn only_risk_takes_the_card_key_file() {
    let cli =
        RiskCli::try_parse_from(["baton-risk", "--card-key-file", "/etc/baton/card.key"]).unwrap();
    assert_eq!(
        cli.card_key_file.as_deref(),
        Some(std::path::Path::new("/etc/baton/card.key"))
    );
    let help = RiskCli::command().render_long_help().to_string();
    assert!(
        help.contains("--card-key-file") && help.contains("BATON_CARD_KEY_FILE"),
        "{help}"
    );
    assert!(StatelessCli::try_parse_from(["baton-pci", "--card-key-file", "x"]).is_err());
    assert!(LedgerCli::try_parse_from(["baton-authorization", "--card-key-file", "x"]).is_err());
}

#[test]
fn flags_parse_with_defaults() {
    let cli = StatelessCli::try_parse_from(["baton-risk", "--prefix", "p1"]).unwrap();
    assert_eq!(cli.common.prefix, "p1");
    assert_eq!(cli.common.concurrency, 64);
    assert!(StatelessCli::try_parse_from(["baton-risk", "--prefix", "a b"]).is_err());
    assert!(StatelessCli::try_parse_from(["baton-risk", "--concurrency", "0"]).is_err());
    assert!(StatelessCli::try_parse_from(["baton-risk", "--ledger-url", "x"]).is_err());
}

#[test]
fn each_binary_has_its_own_http_port() {
    let cli = StatelessCli::try_parse_from(["baton-pci"]).unwrap();
    let config = config(ServiceKind::Pci, cli.common, &cli.faults);
    assert_eq!(config.http_addr.as_deref(), Some("127.0.0.1:9463"));
    let cli = StatelessCli::try_parse_from(["baton-risk", "--http-addr", "0.0.0.0:0"]).unwrap();
    let config = super::config(ServiceKind::Risk, cli.common, &cli.faults);
    assert_eq!(config.http_addr.as_deref(), Some("0.0.0.0:0"));
    let help = for_kind(LedgerCli::command(), ServiceKind::Transaction)
        .render_long_help()
        .to_string();
    assert!(help.contains("[default: 127.0.0.1:9464]"), "{help}");
    // The fault heading comes last and holds only the fault flags.
    let faults = help.split("Fault injection").nth(1).unwrap();
    assert!(!faults.contains("--ledger-url"), "{help}");
}

#[test]
fn only_the_transaction_binary_has_the_audit() {
    let transaction = || TransactionTool::augment_subcommands(LedgerCli::command());
    let matches = transaction()
        .try_get_matches_from(["baton-transaction", "audit", "--json", "--ledger-url", "x"])
        .unwrap();
    assert_eq!(
        LedgerCli::from_arg_matches(&matches).unwrap().ledger_url,
        "x"
    );
    assert!(matches!(
        TransactionTool::from_arg_matches(&matches).unwrap(),
        TransactionTool::Audit { json: true, max_hold_age }
            if max_hold_age == crate::ledger::DEFAULT_MAX_HOLD_AGE
    ));
    let matches = transaction()
        .try_get_matches_from(["baton-transaction", "audit", "--max-hold-age", "15m"])
        .unwrap();
    assert!(matches!(
        TransactionTool::from_arg_matches(&matches).unwrap(),
        TransactionTool::Audit { json: false, max_hold_age }
            if max_hold_age == std::time::Duration::from_secs(900)
    ));
    assert!(transaction()
        .try_get_matches_from(["baton-transaction", "audit", "--max-hold-age", "soon"])
        .is_err());
    let matches = transaction()
        .try_get_matches_from(["baton-transaction", "--prefix", "p2"])
        .unwrap();
    assert!(
        matches.subcommand().is_none(),
        "no subcommand: run the service"
    );
    assert!(LedgerCli::try_parse_from(["baton-authorization", "audit"]).is_err());
}

#[test]
fn fault_flags_parse_and_the_fail_rate_is_validated() {
    let cli = StatelessCli::try_parse_from([
        "baton-risk",
        "--fail-rate",
        "0.25",
        "--latency-ms",
        "150",
        "--blackhole",
    ])
    .unwrap();
    let faults = cli.faults.faults();
    assert_eq!(faults.fail_rate, 0.25);
    assert_eq!(faults.latency, Duration::from_millis(150));
    assert!(faults.blackhole);
    for bad in ["1.5", "-0.1", "half", "NaN"] {
        let e = StatelessCli::try_parse_from(["baton-risk", "--fail-rate", bad])
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(e.to_string().contains("not a number from 0 to 1"), "{e}");
    }
    let help = StatelessCli::command().render_long_help().to_string();
    assert!(help.contains("Fault injection") && help.contains("BATON_FAIL_RATE"));
}

#[test]
fn the_queue_and_fail_compensations_flags_parse() {
    let cli = StatelessCli::try_parse_from([
        "baton-risk",
        "--queue",
        "risk-lite",
        "--fail-compensations",
    ])
    .unwrap();
    assert!(cli.faults.faults().fail_compensations);
    let config = config(ServiceKind::Risk, cli.common, &cli.faults);
    assert_eq!(config.queue.as_deref(), Some("risk-lite"));
    assert_eq!(config.queue_service(ServiceKind::Risk), "risk-lite");
    assert!(config.faults.fail_compensations);

    let cli = LedgerCli::try_parse_from(["baton-authorization"]).unwrap();
    assert_eq!(cli.common.queue, None);
    assert!(!cli.faults.faults().fail_compensations);
    for bad in ["", "Risk", "a b", "a.b"] {
        assert!(
            StatelessCli::try_parse_from(["baton-risk", "--queue", bad]).is_err(),
            "{bad:?}"
        );
    }
    let help = StatelessCli::command().render_long_help().to_string();
    assert!(help.contains("BATON_QUEUE") && help.contains("BATON_FAIL_COMPENSATIONS"));
}

#[test]
fn the_blackhole_takes_true_or_1_from_the_environment() {
    // The only test that reads BATON_BLACKHOLE, so setting it races with nothing.
    for (value, on) in [("true", true), ("1", true), ("false", false), ("0", false)] {
        std::env::set_var("BATON_BLACKHOLE", value);
        let cli = StatelessCli::try_parse_from(["baton-risk"]).unwrap();
        assert_eq!(cli.faults.blackhole, on, "BATON_BLACKHOLE={value}");
    }
    std::env::remove_var("BATON_BLACKHOLE");
}

#[test]
fn every_binary_tells_its_version() {
    for kind in ServiceKind::ALL {
        let e = command(kind)
            .try_get_matches_from(["x", "--version"])
            .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion, "{kind}");
        let shown = e.to_string();
        assert!(
            shown.contains(&format!("baton-{kind} {}", env!("CARGO_PKG_VERSION"))),
            "{shown}"
        );
    }
}

#[test]
fn a_misspelt_flag_gets_a_suggestion() {
    let e = command(ServiceKind::Authorization)
        .try_get_matches_from(["baton-authorization", "--ledger-ur", "x"])
        .unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
    let shown = e.to_string();
    assert!(
        shown.contains("similar argument exists: '--ledger-url'"),
        "{shown}"
    );
    let e = command(ServiceKind::Transaction)
        .try_get_matches_from(["baton-transaction", "audti"])
        .unwrap_err();
    assert!(
        e.to_string().contains("similar subcommand exists: 'audit'"),
        "{e}"
    );
}
