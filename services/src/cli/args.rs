//! The flags of each service binary, with environment fallbacks, and what a command line
//! asks for ([`Invocation`]).

use crate::{Faults, ServiceConfig, ServiceKind};
use baton_amqp::DEFAULT_AMQP_URL;
use baton_contract::parse_prefix;
use baton_ops::LogFormat;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::time::Duration;

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
pub(super) enum Invocation {
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

/// The whole command line of `kind`'s binary: its flags, `transaction`'s tools, name,
/// version (`--version`) and about text.
fn command(kind: ServiceKind) -> clap::Command {
    // clap (without its `string` feature) wants a static name.
    let name = match kind {
        ServiceKind::Authorization => "baton-authorization",
        ServiceKind::Risk => "baton-risk",
        ServiceKind::Pci => "baton-pci",
        ServiceKind::Transaction => "baton-transaction",
    };
    let flags = match kind {
        ServiceKind::Authorization => LedgerCli::command(),
        ServiceKind::Transaction => TransactionTool::augment_subcommands(LedgerCli::command()),
        ServiceKind::Risk => RiskCli::command(),
        ServiceKind::Pci => StatelessCli::command(),
    };
    // The about text after the subcommands, which would otherwise replace it.
    for_kind(flags, kind)
        .name(name)
        .version(env!("CARGO_PKG_VERSION"))
        .about(format!(
            "Baton's {} service: answers the commands on <prefix>.cmd.{}",
            kind.name(),
            kind.name()
        ))
}

/// Parses the process's command line for `kind` (clap exits on a usage error, `--help`
/// and `--version`).
pub(super) fn parse(kind: ServiceKind) -> Invocation {
    let matches = command(kind).get_matches();
    let exit = |e: clap::Error| -> ! { e.exit() };
    match kind {
        ServiceKind::Authorization | ServiceKind::Transaction => {
            let cli = LedgerCli::from_arg_matches(&matches).unwrap_or_else(|e| exit(e));
            if matches.subcommand().is_some() {
                let tool = TransactionTool::from_arg_matches(&matches).unwrap_or_else(|e| exit(e));
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
        }
        ServiceKind::Risk => {
            let cli = RiskCli::from_arg_matches(&matches).unwrap_or_else(|e| exit(e));
            let log_format = cli.common.log_format;
            let config = config(kind, cli.common, &cli.faults);
            Invocation::Serve(config, log_format, cli.card_key_file)
        }
        ServiceKind::Pci => {
            let cli = StatelessCli::from_arg_matches(&matches).unwrap_or_else(|e| exit(e));
            let log_format = cli.common.log_format;
            Invocation::Serve(config(kind, cli.common, &cli.faults), log_format, None)
        }
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

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
