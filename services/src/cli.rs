//! The command line shared by the four service binaries: parse flags (with environment
//! fallbacks), set up logging, start the service, run until SIGTERM or Ctrl-C.
//!
//! Exit codes: 0 after a graceful shutdown, 2 when RabbitMQ is unreachable (one line on
//! stderr, naming the redacted URL and how to start it), 1 for any other failure. clap
//! itself exits 2 on a usage error.

use crate::kit::{self, ServiceConfig, ServiceKind};
use baton_contract::amqp::{BrokerError, DEFAULT_AMQP_URL};
use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::process::ExitCode;

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

    /// Topology prefix: the service consumes <prefix>.cmd.<service>
    #[arg(long, env = "BATON_PREFIX", default_value = "baton", value_parser = parse_prefix)]
    prefix: String,

    /// Commands handled at once (the consumer's prefetch)
    #[arg(
        long,
        env = "BATON_CONCURRENCY",
        default_value_t = 64,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    concurrency: u16,

    /// Log format (filter with RUST_LOG, default `info`)
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Flags of a stateless service (risk, PCI).
#[derive(Parser)]
struct StatelessCli {
    #[command(flatten)]
    common: Common,
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
        hide_env_values = true
    )]
    ledger_url: String,
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

fn parse(kind: ServiceKind) -> (ServiceConfig, LogFormat) {
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
        let matches = LedgerCli::command().name(name).about(about).get_matches();
        let cli = LedgerCli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let config = config(
            cli.common.amqp_url,
            cli.common.prefix,
            cli.common.concurrency,
        );
        (
            ServiceConfig {
                ledger_url: cli.ledger_url,
                ..config
            },
            cli.common.log_format,
        )
    } else {
        let matches = StatelessCli::command()
            .name(name)
            .about(about)
            .get_matches();
        let cli = StatelessCli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let config = config(
            cli.common.amqp_url,
            cli.common.prefix,
            cli.common.concurrency,
        );
        (config, cli.common.log_format)
    }
}

fn config(amqp_url: String, prefix: String, concurrency: u16) -> ServiceConfig {
    ServiceConfig {
        amqp_url,
        prefix,
        concurrency,
        ..ServiceConfig::default()
    }
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
    let (config, log_format) = parse(kind);
    init_logging(log_format);
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
}
