//! The command line shared by the four service binaries: parse flags (with environment
//! fallbacks), set up logging, start the service, run until SIGTERM or Ctrl-C. Also the
//! `baton-transaction audit` and `prune` subcommands ([`crate::audit`], [`crate::prune`]).
//!
//! Exit codes of a service: 0 after a graceful shutdown, 2 when RabbitMQ is unreachable
//! at start (one line on stderr, naming the redacted URL and how to start it), 1 for any
//! other start-up failure (ledger, HTTP port taken). A connection lost later is not an
//! exit: the service reconnects. clap itself exits 2 on a usage error. The audit exits 0
//! (sound), 1 (duplicate transfer or imbalance) or 2 (ledger cannot be opened).

use crate::audit;
use crate::faults::Faults;
use crate::kit::{self, ServiceConfig, ServiceKind};
use baton_amqp::{BrokerError, DEFAULT_AMQP_URL};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags every service has.
#[derive(Args)]
struct Common {
    /// RabbitMQ URL [default: amqp://guest:***@127.0.0.1:5672/%2f]
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_default_value = true,
        hide_env_values = true
    )]
    amqp_url: String,

    /// PEM file of the CA that signed the broker's certificate, for amqps:// URLs
    /// [default: the system's CA store]
    #[arg(long, env = "AMQP_CA_FILE", value_name = "PEM", hide_env_values = true)]
    amqp_ca_file: Option<std::path::PathBuf>,

    /// Topology prefix: the service consumes <prefix>.cmd.<service>
    #[arg(long, env = "BATON_PREFIX", default_value = "baton", value_parser = parse_prefix, hide_env_values = true)]
    prefix: String,

    /// Commands handled at once (the consumer's prefetch)
    #[arg(
        long,
        env = "BATON_CONCURRENCY",
        default_value_t = 64,
        value_parser = clap::value_parser!(u16).range(1..), hide_env_values = true)]
    concurrency: u16,

    /// Log format (filter with RUST_LOG, default `info`)
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, hide_env_values = true)]
    log_format: LogFormat,

    /// HTTP port serving /metrics, /healthz and /readyz (host:port; port 0 picks a free
    /// port, and the bound address is logged)
    #[arg(long, env = "BATON_HTTP_ADDR", hide_env_values = true)]
    http_addr: Option<String>,

    /// Consume <prefix>.cmd.<QUEUE> instead of the service's own queue (e.g. a second risk
    /// instance serving as a workflow's fallback `risk-lite`); 1-64 of a-z 0-9 _ -
    #[arg(long, env = "BATON_QUEUE", value_parser = parse_queue, hide_env_values = true)]
    queue: Option<String>,

    /// The orchestrators' broker user(s): a command whose user_id is another user is
    /// dropped (repeat, or comma-separate in the variable)
    #[arg(
        long = "orchestrator-user",
        env = "BATON_ORCHESTRATOR_USERS",
        value_name = "USER",
        value_delimiter = ',',
        hide_env_values = true
    )]
    orchestrator_users: Vec<String>,

    /// Refuse to start without an --orchestrator-user
    #[arg(long, env = "BATON_REQUIRE_VERIFIED_SENDERS", hide_env_values = true)]
    require_verified_senders: bool,
}

/// `--queue`: a service name as a workflow accepts it.
fn parse_queue(text: &str) -> Result<String, String> {
    let config = ServiceConfig {
        queue: Some(text.to_owned()),
        ..ServiceConfig::default()
    };
    config.validate_queue()?;
    Ok(text.to_owned())
}

/// Fault injection, to test the orchestrator's failure handling. All off by default.
#[derive(Args)]
#[command(next_help_heading = "Fault injection (testing only)")]
struct FaultArgs {
    /// Share of commands, 0 to 1, answered with a transient `error` reply (reason
    /// `injected_fault`) without any effect
    #[arg(
        long,
        env = "BATON_FAIL_RATE",
        default_value_t = 0.0,
        value_parser = parse_fail_rate,
        allow_negative_numbers = true, hide_env_values = true)]
    fail_rate: f64,

    /// Milliseconds to wait before handling each command
    #[arg(
        long,
        env = "BATON_LATENCY_MS",
        default_value_t = 0,
        hide_env_values = true
    )]
    latency_ms: u64,

    /// Ack every command and never answer: the orchestrator sees only timeouts
    /// (BATON_BLACKHOLE=true or 1)
    #[arg(
        long,
        env = "BATON_BLACKHOLE",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new(), hide_env_values = true)]
    blackhole: bool,

    /// Answer every `compensate` command with a transient `error` (reason
    /// `injected_fault`) while `execute` commands work normally
    /// (BATON_FAIL_COMPENSATIONS=true or 1)
    #[arg(
        long,
        env = "BATON_FAIL_COMPENSATIONS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new(), hide_env_values = true)]
    fail_compensations: bool,
}

impl FaultArgs {
    fn faults(&self) -> Faults {
        Faults {
            fail_rate: self.fail_rate,
            latency: Duration::from_millis(self.latency_ms),
            blackhole: self.blackhole,
            fail_compensations: self.fail_compensations,
        }
    }
}

/// `--fail-rate`: a number from 0 to 1.
fn parse_fail_rate(text: &str) -> Result<f64, String> {
    let problem = || format!("{text:?} is not a number from 0 to 1 (e.g. 0.25)");
    let rate: f64 = text.trim().parse().map_err(|_| problem())?;
    let faults = Faults {
        fail_rate: rate,
        ..Faults::default()
    };
    faults.validate().map_err(|_| problem())?;
    Ok(rate)
}

/// Flags of a stateless service (risk, PCI).
#[derive(Parser)]
struct StatelessCli {
    #[command(flatten)]
    common: Common,

    // Last: its help heading applies to every flag after it.
    #[command(flatten)]
    faults: FaultArgs,
}

/// Flags of the risk service: a stateless service with the card key file.
#[derive(Parser)]
struct RiskCli {
    #[command(flatten)]
    common: Common,

    /// The orchestrator's card key file (lines `<key_id> <hex secret>`): risk recognises
    /// card fingerprints made with any of its keys [default: ./baton-card.key, created
    /// with a new random key if missing]
    #[arg(long, env = "BATON_CARD_KEY_FILE", hide_env_values = true)]
    card_key_file: Option<std::path::PathBuf>,

    // Last: its help heading applies to every flag after it.
    #[command(flatten)]
    faults: FaultArgs,
}

/// Flags of a service with a ledger (authorization, transaction).
#[derive(Parser)]
struct LedgerCli {
    #[command(flatten)]
    common: Common,

    /// Ledger database, shared by authorization and transaction: sqlite://<path> or
    /// postgres://…
    #[arg(
        long,
        env = "BATON_LEDGER_URL",
        default_value = "sqlite://baton-ledger.db",
        hide_env_values = true,
        // Also after a subcommand: `baton-transaction audit --ledger-url …`.
        global = true
    )]
    ledger_url: String,

    // Last: its help heading applies to every flag after it.
    #[command(flatten)]
    faults: FaultArgs,
}

/// Tools of `baton-transaction`; without one, the binary runs the service.
#[derive(Subcommand)]
enum TransactionTool {
    /// Check the ledger: totals per currency, transfers, payments with more than one
    /// transfer, transfers that differ from their hold, open holds and those open too long,
    /// and whether debits equal credits. Exit code 0 when sound, 1 on a duplicate
    /// transfer, unbalanced books, a transfer that differs from its hold (or has none) or
    /// a stale hold, 2 when the ledger cannot be opened
    Audit {
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
        /// An open hold older than this (neither captured nor voided) is listed and fails
        /// the audit: e.g. 30m, 1h, 2d
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        max_hold_age: std::time::Duration,
    },
    /// Delete the ledger's old, finished records: processed-command records, voided
    /// holds, captured holds with their transfer and its ledger lines, older than
    /// --older-than. Never an open hold or its payment's command records, nor anything
    /// the audit reports. Prints what it deleted; exit code 0, or 2 when the ledger
    /// cannot be opened or written
    Prune {
        /// Age past which a finished record goes (from when it was written: a hold from
        /// its placement, a command's record from when it was processed); at least 1d.
        /// A command repeated after its record went is processed as new
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// Count what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
    },
}

/// What the command line asks for.
enum Invocation {
    /// Run the service; for risk, with the card key file to load once logging is set
    /// up (`None`: the default file).
    Serve(ServiceConfig, LogFormat, Option<std::path::PathBuf>),
    /// `baton-transaction audit`.
    Audit {
        /// The ledger to audit.
        ledger_url: String,
        /// JSON instead of text.
        json: bool,
        /// Open holds older than this are stale.
        max_hold_age: std::time::Duration,
    },
    /// `baton-transaction prune`.
    Prune {
        /// The ledger to prune.
        ledger_url: String,
        /// Finished records older than this go.
        older_than: std::time::Duration,
        /// Count only.
        dry_run: bool,
        /// JSON instead of text.
        json: bool,
    },
}

/// A prefix is part of every queue name: keep it short and free of separators RabbitMQ or
/// shells treat specially.
pub fn parse_prefix(prefix: &str) -> Result<String, String> {
    let valid_chars = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if (1..=64).contains(&prefix.len()) && valid_chars {
        Ok(prefix.to_owned())
    } else {
        Err("must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'".to_owned())
    }
}

fn parse(kind: ServiceKind) -> Invocation {
    // clap (without its `string` feature) wants a static name.
    let name = match kind {
        ServiceKind::Authorization => "baton-authorization",
        ServiceKind::Risk => "baton-risk",
        ServiceKind::Pci => "baton-pci",
        ServiceKind::Transaction => "baton-transaction",
    };
    let about = format!(
        "Baton's {} service: answers the commands on <prefix>.cmd.{}",
        kind.name(),
        kind.name()
    );
    if kind.uses_ledger() {
        let mut command = for_kind(LedgerCli::command(), kind);
        if kind == ServiceKind::Transaction {
            command = TransactionTool::augment_subcommands(command);
        }
        // After the subcommands, which would otherwise replace the about text.
        let matches = command.name(name).about(about).get_matches();
        let cli = LedgerCli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        if matches.subcommand().is_some() {
            let tool = TransactionTool::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
            return match tool {
                TransactionTool::Audit { json, max_hold_age } => Invocation::Audit {
                    ledger_url: cli.ledger_url,
                    json,
                    max_hold_age,
                },
                TransactionTool::Prune {
                    older_than,
                    dry_run,
                    json,
                } => Invocation::Prune {
                    ledger_url: cli.ledger_url,
                    older_than,
                    dry_run,
                    json,
                },
            };
        }
        let log_format = cli.common.log_format;
        let config = ServiceConfig {
            ledger_url: cli.ledger_url,
            ..config(kind, cli.common, &cli.faults)
        };
        Invocation::Serve(config, log_format, None)
    } else if kind == ServiceKind::Risk {
        let matches = for_kind(RiskCli::command(), kind)
            .name(name)
            .about(about)
            .get_matches();
        let cli = RiskCli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let log_format = cli.common.log_format;
        let config = config(kind, cli.common, &cli.faults);
        Invocation::Serve(config, log_format, cli.card_key_file)
    } else {
        let matches = for_kind(StatelessCli::command(), kind)
            .name(name)
            .about(about)
            .get_matches();
        let cli = StatelessCli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let log_format = cli.common.log_format;
        Invocation::Serve(config(kind, cli.common, &cli.faults), log_format, None)
    }
}

/// The parts of a binary's command line that depend on which service it is.
fn for_kind(command: clap::Command, kind: ServiceKind) -> clap::Command {
    // Shown by --help; `config` applies the same default when the flag is absent.
    command.mut_arg("http_addr", |arg| {
        arg.default_value(kind.default_http_addr())
    })
}

fn config(kind: ServiceKind, common: Common, faults: &FaultArgs) -> ServiceConfig {
    let http_addr = common
        .http_addr
        .unwrap_or_else(|| kind.default_http_addr().to_owned());
    ServiceConfig {
        http_addr: Some(http_addr),
        faults: faults.faults(),
        amqp_url: common.amqp_url,
        amqp_ca_file: common.amqp_ca_file,
        prefix: common.prefix,
        concurrency: common.concurrency,
        queue: common.queue,
        orchestrator_users: common.orchestrator_users,
        require_verified_senders: common.require_verified_senders,
        ..ServiceConfig::default()
    }
}

/// Risk's card keys: the given file, else `./baton-card.key` (created with a new key if
/// missing, so a development machine works out of the box: `baton run` started in the
/// same directory uses the same file). Warns when the file was created or others can
/// read it.
fn risk_card_keys(
    file: Option<std::path::PathBuf>,
) -> Result<baton_contract::CardKeys, baton_contract::CardKeyError> {
    use baton_contract::card_key::{CardKeys, DEFAULT_CARD_KEY_FILE};
    let (path, keys) = match file {
        Some(path) => {
            let keys = CardKeys::load(&path)?;
            (path, keys)
        }
        None => {
            let path = std::path::PathBuf::from(DEFAULT_CARD_KEY_FILE);
            let (keys, created) = CardKeys::load_or_create(&path)?;
            if created {
                tracing::warn!(
                    file = %path.display(),
                    key_id = keys.key_ids().next().unwrap_or_default(),
                    "created a new card key file: the orchestrator must use the same file \
                     (on this machine, start `baton run` in this directory; elsewhere pass \
                     --card-key-file to both)"
                );
            }
            (path, keys)
        }
    };
    if let Some(warning) = CardKeys::permission_warning(&path) {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        file = %path.display(),
        keys = %keys.key_ids().collect::<Vec<_>>().join(","),
        "card keys loaded: fingerprints made with any of them are recognised"
    );
    Ok(keys)
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    // lapin's body-printing targets stay capped whatever RUST_LOG says, unless it names
    // them (baton_contract::mask::log_filter); an unparsable RUST_LOG falls back to info.
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let filter = EnvFilter::try_new(baton_contract::mask::log_filter(
        rust_log.as_deref(),
        "info",
    ))
    .unwrap_or_else(|_| EnvFilter::new(baton_contract::mask::log_filter(None, "info")));
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            // Colour codes only on a terminal, never in a log file or a collector.
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .init(),
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("shutdown signal received");
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutdown signal received");
}

/// Prints one `error:` line and picks the exit code.
fn report(error: &anyhow::Error) -> ExitCode {
    let broker = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<BrokerError>());
    if let Some(connect @ BrokerError::Connect { .. }) = broker {
        eprintln!("error: {connect}");
        return ExitCode::from(2);
    }
    eprintln!("error: {error:#}");
    ExitCode::from(1)
}

/// The whole `main` of a service binary.
pub fn main(kind: ServiceKind) -> ExitCode {
    let (mut config, log_format, card_key_file) = match parse(kind) {
        Invocation::Serve(config, log_format, card_key_file) => (config, log_format, card_key_file),
        // No logging set up: the report is the output.
        Invocation::Audit {
            ledger_url,
            json,
            max_hold_age,
        } => return audit::run(&ledger_url, json, max_hold_age),
        Invocation::Prune {
            ledger_url,
            older_than,
            dry_run,
            json,
        } => return crate::prune::run(&ledger_url, older_than, dry_run, json),
    };
    init_logging(log_format);
    if kind == ServiceKind::Risk {
        match risk_card_keys(card_key_file) {
            Ok(keys) => config.card_keys = Some(keys),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let service = match kit::start(kind, config).await {
            Ok(service) => service,
            Err(e) => return report(&e),
        };
        match service.run_until(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => report(&e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_validated() {
        for good in ["baton", "test-1234", "a", "acme.prod_eu", &"x".repeat(64)] {
            assert!(parse_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "a/b", "é", "a*", &"x".repeat(65)] {
            let e = parse_prefix(bad).unwrap_err();
            assert!(e.contains("1 to 64"), "{bad}: {e}");
        }
    }

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
        let cli = RiskCli::try_parse_from(["baton-risk", "--card-key-file", "/etc/baton/card.key"])
            .unwrap();
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
        assert!(
            LedgerCli::try_parse_from(["baton-authorization", "--card-key-file", "x"]).is_err()
        );
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
}
