//! `baton run`: the orchestrator, configured from flags and environment.

use super::*;
use crate::config::Settings;
use crate::runtime;
use crate::workflow::Workflow;
use baton_contract::{parse_prefix, Limits, Names};
use baton_ops::shutdown_signal;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Options of `baton run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Payments in flight at once (the request queue prefetch)
    #[arg(long, env = "BATON_CONCURRENCY", default_value_t = crate::config::DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..), hide_env_values = true)]
    pub concurrency: u16,

    /// Workflow file (TOML) [default: the built-in workflows/default.toml]
    #[arg(long, env = "BATON_WORKFLOW", hide_env_values = true)]
    pub workflow: Option<PathBuf>,

    /// Largest accepted amount, in minor units
    #[arg(long, env = "BATON_MAX_AMOUNT_MINOR", default_value_t = Limits::default().max_amount_minor, hide_env_values = true)]
    pub max_amount_minor: u64,

    /// Largest accepted request body, in bytes
    #[arg(long, env = "BATON_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes, hide_env_values = true)]
    pub max_body_bytes: usize,

    /// Seconds a shutdown waits for in-flight payments before leaving them to another replica
    #[arg(
        long,
        env = "BATON_SHUTDOWN_TIMEOUT",
        default_value_t = crate::config::DEFAULT_SHUTDOWN_TIMEOUT.as_secs(),
        hide_env_values = true
    )]
    pub shutdown_timeout: u64,

    /// How long a running saga stays leased to this replica without a renewal (renewed
    /// every fifth of it). A saga whose lease ran out — its owner died and its request is
    /// gone, or it was dead-lettered mid-saga — is finished by any replica's sweeper:
    /// compensated, `failed`, reason `abandoned`. Longer than any parking tier needs not be.
    #[arg(
        long,
        env = "BATON_SAGA_LEASE",
        default_value_t = crate::config::DEFAULT_SAGA_LEASE.into(),
        hide_env_values = true
    )]
    pub saga_lease: humantime::Duration,

    /// This replica's id (in its reply queue's name) [default: random]
    #[arg(long, env = "BATON_INSTANCE", value_parser = parse_prefix, hide_env_values = true)]
    pub instance: Option<String>,

    /// HTTP address for /metrics, /healthz, /readyz and /payments/<id> (port 0: any free
    /// port, logged; "off": no HTTP port) [default: 127.0.0.1:9460, or a free port, logged,
    /// when another process has that one; given, a taken address is an error]
    #[arg(long, env = "BATON_HTTP_ADDR", hide_env_values = true)]
    pub http_addr: Option<String>,

    /// File holding a bearer token that /payments/<id> then requires (at least 16
    /// characters); without it, /payments/<id> is served on a loopback address only
    #[arg(long, env = "BATON_HTTP_TOKEN_FILE", hide_env_values = true)]
    pub http_token_file: Option<PathBuf>,

    /// Publish saga events (event.<step>.<outcome>) on the payments exchange
    #[arg(long, env = "BATON_EVENTS", value_enum, default_value_t = Switch::On, hide_env_values = true)]
    pub events: Switch,

    /// Card key file for `card = "fingerprint"` steps: lines `<key_id> <hex secret>`,
    /// the first fingerprints; give the risk service the same file [default:
    /// ./baton-card.key, created with a new random key if missing]
    #[arg(long, env = "BATON_CARD_KEY_FILE", hide_env_values = true)]
    pub card_key_file: Option<PathBuf>,

    /// The broker user each service replies as, SERVICE=USER (repeat, or comma-separate
    /// in the variable): a reply from any other user is dropped
    #[arg(long = "service-user", env = "BATON_SERVICE_USERS", value_name = "SERVICE=USER", value_delimiter = ',', value_parser = parse_service_user, hide_env_values = true)]
    pub service_users: Vec<(String, String)>,

    /// Refuse to start unless every service of the workflow has a --service-user
    #[arg(long, env = "BATON_REQUIRE_VERIFIED_SENDERS", hide_env_values = true)]
    pub require_verified_senders: bool,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub journal: JournalArgs,
}

/// `--service-user SERVICE=USER`.
pub(super) fn parse_service_user(text: &str) -> Result<(String, String), String> {
    match text.trim().split_once('=') {
        Some((service, user)) if !service.trim().is_empty() && !user.trim().is_empty() => {
            Ok((service.trim().to_owned(), user.trim().to_owned()))
        }
        _ => Err(format!(
            "{text:?} is not SERVICE=USER (e.g. risk=baton-risk)"
        )),
    }
}

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// The card keys of `baton run`: the given file; else, when a step asks for
/// `card = "fingerprint"`, `./baton-card.key` (created with a new key if missing, so a
/// development machine works out of the box); else none.
pub(super) fn card_keys(
    workflow: &Workflow,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<baton_contract::CardKeys>> {
    use baton_contract::card_key::{CardKeys, DEFAULT_CARD_KEY_FILE};
    let needed = workflow.check_card_keys(false).is_err();
    let (path, keys) = match file {
        Some(path) => (path.to_owned(), CardKeys::load(path)?),
        None if needed => {
            let path = PathBuf::from(DEFAULT_CARD_KEY_FILE);
            let (keys, created) = CardKeys::load_or_create(&path)?;
            if created {
                tracing::warn!(
                    file = %path.display(),
                    key_id = keys.key_ids().next().unwrap_or_default(),
                    "created a new card key file: the risk service must use the same file \
                     (on this machine, start it in this directory; elsewhere pass \
                     --card-key-file to both)"
                );
            }
            (path, keys)
        }
        None => return Ok(None),
    };
    if let Some(warning) = CardKeys::permission_warning(&path) {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        file = %path.display(),
        fingerprint_key = keys.key_ids().next().unwrap_or_default(),
        keys = keys.key_ids().count(),
        "card keys loaded"
    );
    Ok(Some(keys))
}

pub(super) async fn run_orchestrator(
    common: &Common,
    names: Names,
    args: RunArgs,
) -> anyhow::Result<i32> {
    let mut settings = Settings::new(
        common.amqp_url.clone(),
        names.prefix(),
        args.journal.journal_url.clone(),
    );
    settings.amqp_ca_file = common.amqp_ca_file.clone();
    settings.http_addr = match args.http_addr.as_deref() {
        Some("off") => None,
        Some(addr) => Some(addr.to_owned()),
        // The default port is the first replica's; a second on this machine takes a free
        // one (logged) rather than refuse to start.
        None => {
            settings.http_fallback_to_free_port = true;
            Some(crate::config::DEFAULT_HTTP_ADDR.to_owned())
        }
    };
    settings.events = args.events == Switch::On;
    settings.concurrency = args.concurrency;
    settings.workflow = load_workflow(args.workflow.as_deref())?;
    settings.card_keys = card_keys(&settings.workflow, args.card_key_file.as_deref())?;
    settings.limits = Limits {
        max_body_bytes: args.max_body_bytes,
        max_amount_minor: args.max_amount_minor,
    };
    settings.shutdown_timeout = Duration::from_secs(args.shutdown_timeout);
    settings.saga_lease = args.saga_lease.into();
    settings.service_users = args.service_users.into_iter().collect();
    settings.require_verified_senders = args.require_verified_senders;
    settings.http_token_file = args.http_token_file;
    if let Some(instance) = args.instance {
        settings.instance = instance;
    }
    // A failed start is one line of ours (a refused login, an unreachable broker);
    // lapin's own lines about it are dropped until the orchestrator runs (and stay
    // dropped on the way out: lapin's thread may still log the failure after it).
    baton_ops::logging::quiet_lapin(true);
    let running = runtime::start(settings).await?;
    baton_ops::logging::quiet_lapin(false);
    let stopper = running.stopper();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stopper.send(true);
    });
    running.wait().await?;
    Ok(0)
}
