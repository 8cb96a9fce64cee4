//! The command line shared by the four service binaries: parse flags (with environment
//! fallbacks, `args`), set up logging, start the service, run until SIGTERM or
//! Ctrl-C. Also the `baton-transaction audit` and `prune` subcommands (`audit`,
//! `prune`: their reports), run on the ledger by one runner (`tool`).
//!
//! Exit codes of a service: 0 after a graceful shutdown, 2 when RabbitMQ is unreachable
//! at start, refuses the login or its URL is unusable (one line on stderr, naming the
//! redacted URL, and none of lapin's; the same code `baton` exits with), 1 for any other
//! start-up failure (ledger, HTTP port taken). A connection lost later is not an exit: the service reconnects. clap itself
//! exits 2 on a usage error. The audit exits 0 (sound), 1 (duplicate transfer or
//! imbalance) or 2 (ledger cannot be opened); the prune 0 or 2.

mod args;
mod audit;
mod prune;
mod tool;

pub use baton_contract::parse_prefix;
pub use baton_ops::LogFormat;

use crate::{ServiceError, ServiceKind};
use args::Invocation;
use std::process::ExitCode;

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

/// Prints one `error:` line and picks the exit code ([`ServiceError::exit_code`]).
fn report(error: &ServiceError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(error.exit_code())
}

/// The whole `main` of a service binary.
pub fn main(kind: ServiceKind) -> ExitCode {
    let (mut config, log_format, card_key_file) = match args::parse(kind) {
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
        } => return prune::run(&ledger_url, older_than, dry_run, json),
    };
    baton_ops::logging::init(log_format, "info");
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
        // A failed start is one line of ours (a refused login, an unreachable broker);
        // lapin's own lines about it are dropped until the service consumes (and stay
        // dropped on the way out: lapin's thread may still log the failure after it).
        baton_ops::logging::quiet_lapin(true);
        let service = match crate::start(kind, config).await {
            Ok(service) => service,
            Err(e) => return report(&e),
        };
        baton_ops::logging::quiet_lapin(false);
        match service.run_until(baton_ops::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => report(&ServiceError::from(e)),
        }
    })
}
