//! The `baton` command line: option parsing and the subcommands for people (`run`, `pay`,
//! `demo`, `workflow check`). Options are also read from environment variables; `--help`
//! documents both and never prints a password.

use crate::client::Client;
use crate::config::Settings;
use crate::runtime;
use crate::workflow::Workflow;
use anyhow::Context;
use baton_amqp::{BrokerError, TlsOptions, DEFAULT_AMQP_URL};
use baton_contract::{parse_prefix, Limits, Names, Status};
use baton_ops::{shutdown_signal, LogFormat};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

/// Baton: a queue-driven payment orchestrator on RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, long_about = None)]
pub struct Cli {
    /// Options every subcommand shares.
    #[command(flatten)]
    pub common: Common,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every subcommand.
#[derive(Debug, Args)]
pub struct Common {
    /// RabbitMQ URL [default: amqp://guest:***@127.0.0.1:5672/%2f]
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_default_value = true,
        hide_env_values = true,
        global = true
    )]
    pub amqp_url: String,

    /// PEM file of the CA that signed the broker's certificate, for amqps:// URLs
    /// [default: the system's CA store]
    #[arg(
        long,
        env = "AMQP_CA_FILE",
        value_name = "PEM",
        global = true,
        hide_env_values = true
    )]
    pub amqp_ca_file: Option<PathBuf>,

    /// Prefix of every exchange and queue name (1-64 of A-Z a-z 0-9 . _ -)
    #[arg(long, env = "BATON_PREFIX", default_value = "baton", value_parser = parse_prefix, global = true, hide_env_values = true)]
    pub prefix: String,

    /// Log format
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true, hide_env_values = true)]
    pub log_format: LogFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the orchestrator: consume payment requests and drive each through the workflow
    Run(RunArgs),
    /// Publish one payment and print its result (exit 0 if completed, 1 otherwise)
    Pay(PayArgs),
    #[cfg(feature = "dev-tools")]
    /// Run the whole pipeline locally (four services + orchestrator) on a fresh prefix and
    /// push a mixed batch of test payments through it
    Demo(DemoArgs),
    #[cfg(feature = "dev-tools")]
    /// Load generator: publish N payments to a running Baton at a fixed number in flight
    /// or a fixed rate, and report throughput, latency and exactly-once delivery
    Load(LoadArgs),
    #[cfg(feature = "dev-tools")]
    /// Benchmark Baton against a bare pipeline with the same message flow, on this broker
    Bench(BenchArgs),
    #[cfg(feature = "dev-tools")]
    /// (bench internals) answer every command at once
    #[command(hide = true)]
    BenchEcho,
    #[cfg(feature = "dev-tools")]
    /// (bench internals) relay requests through four commands without any orchestration
    #[command(hide = true)]
    BenchRelay {
        /// Requests in flight
        #[arg(long, default_value_t = 1024)]
        concurrency: u16,
    },
    /// Check a running deployment's wiring, one line per check with what to do (exit 0
    /// when all pass, 1 otherwise): broker, step queues and their consumers, service
    /// pings, shared ledger, orchestrators' workflow and journal, retry tiers, queue depths
    Doctor(DoctorArgs),
    /// Print the journal's record of one payment (steps, outcomes, attempts, times, result)
    Status(StatusArgs),
    /// Inspect and replay the dead-letter queue (<prefix>.dead)
    #[command(subcommand)]
    Dead(QueueCommand),
    /// Inspect and replay the operators' attention queue (<prefix>.attention)
    #[command(subcommand)]
    Attention(QueueCommand),
    /// Workflow file tools
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Broker users with least-privilege permissions, one per role (setup, teardown,
    /// definitions, hash-password)
    #[command(subcommand)]
    Broker(crate::broker::BrokerCommand),
    /// Running sagas: those nobody drives any more, and settling one by hand
    #[command(subcommand)]
    Sagas(crate::journal_tools::SagasCommand),
    /// Journal maintenance (prune finished sagas)
    #[command(subcommand)]
    Journal(crate::journal_tools::JournalCommand),
}

/// The journal option, shared by `run` and `status`.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// Saga journal: sqlite://<file> (one machine) or postgres://… (shared by replicas)
    #[arg(long, env = "BATON_JOURNAL_URL", default_value = crate::config::DEFAULT_JOURNAL_URL, hide_env_values = true)]
    pub journal_url: String,
}

/// Options of `baton status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The payment id
    pub payment_id: Uuid,
    /// Print JSON (the same document as GET /payments/<id>)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub journal: JournalArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub no_broker: NoBroker,
    /// Shadows the global --prefix (hidden, refused when given).
    #[arg(long, hide = true, value_parser = refuse_status_prefix)]
    pub prefix: Option<String>,
}

/// The broker connection options (global to the other subcommands) shadowed in a
/// subcommand that never talks to RabbitMQ: hidden from its `--help`, and refused when
/// given rather than silently ignored. Their environment variables are not read there.
#[derive(Debug, Args)]
pub struct NoBroker {
    #[arg(long, hide = true, value_parser = refuse_broker_option)]
    amqp_url: Option<String>,
    #[arg(long, hide = true, value_parser = refuse_broker_option)]
    amqp_ca_file: Option<String>,
}

fn refuse_broker_option(_: &str) -> Result<String, String> {
    Err(
        "this subcommand does not talk to RabbitMQ: it takes no --amqp-url or --amqp-ca-file"
            .into(),
    )
}

fn refuse_status_prefix(_: &str) -> Result<String, String> {
    Err(
        "baton status reads the journal, which holds the payments of every prefix: it \
         takes no --prefix"
            .into(),
    )
}

#[cfg(feature = "dev-tools")]
/// Which test cards a load run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CardMix {
    /// The documented mix: four in five good, the rest every other row of the table.
    Mixed,
    /// Only `4242424242424242`: every payment completes.
    Good,
}

#[cfg(feature = "dev-tools")]
/// Options of `baton load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// How many payments
    #[arg(long, default_value_t = 1000)]
    pub payments: usize,
    /// Keep this many payments in flight [default: 64]
    #[arg(long, conflicts_with = "rate")]
    pub in_flight: Option<usize>,
    /// Publish this many payments per second instead
    #[arg(long)]
    pub rate: Option<f64>,
    /// Which test cards
    #[arg(long, value_enum, default_value_t = CardMix::Mixed)]
    pub cards: CardMix,
    /// Seconds to wait for results after the last publish
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
}

#[cfg(feature = "dev-tools")]
/// Options of `baton bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// In-flight levels, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,16,128,512")]
    pub levels: Vec<usize>,
    /// Payments per level (the level of 1 runs a tenth, at least 100)
    #[arg(long, default_value_t = 3000)]
    pub payments: usize,
    /// Measure Baton only, without the baseline
    #[arg(long)]
    pub baton_only: bool,
    /// Orchestrator processes in the Baton runs (more than one needs a shared
    /// --journal-url, i.e. postgres://…)
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Journal of the Baton runs [default: a fresh SQLite file]
    #[arg(long, env = "BATON_JOURNAL_URL", hide_env_values = true)]
    pub journal_url: Option<String>,
    /// Concurrency (prefetch) of each orchestrator
    #[arg(long, default_value_t = 1024)]
    pub concurrency: u16,
    /// The workflow file the orchestrators run (its services must be the four reference
    /// services) [default: the built-in workflow]
    #[arg(long)]
    pub workflow: Option<PathBuf>,
    /// Print the rows as JSON too
    #[arg(long)]
    pub json: bool,
}

/// `baton dead …` / `baton attention …`. Each works on one snapshot of the whole queue,
/// under a lock (a second operator's command waits): nothing moves by looking.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List every message (key, reason, where from, payment id, detail) without removing
    /// or reordering any
    List {
        /// Print at most this many
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print the messages named: headers, x-death chain and body
    Show {
        /// A message key from `list` (12 hex digits), or a payment id (all its messages)
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Send the messages named (or all with --all) back: a dead request to the request
    /// queue, an attention item's compensation to its service; removed once that worked
    Replay {
        /// A message key from `list`, or a payment id with one message here
        targets: Vec<String>,
        /// Replay every message
        #[arg(long, conflicts_with = "targets")]
        all: bool,
    },
    /// Remove the messages named for good, printing each first (an in-doubt item
    /// settled by hand, a dead command that must not run)
    Drop {
        /// A message key from `list`, or a payment id with one message here
        #[arg(required = true)]
        targets: Vec<String>,
    },
}

/// Options of `baton doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The workflow file the orchestrators run [default: the built-in workflow]
    #[arg(long, env = "BATON_WORKFLOW", hide_env_values = true)]
    pub workflow: Option<PathBuf>,
    /// Also check this journal is writable and is the orchestrators' (an SQLite file is
    /// never created) [default: not checked]
    #[arg(long, env = "BATON_JOURNAL_URL", hide_env_values = true)]
    pub journal_url: Option<String>,
    /// Print the checks as one JSON document
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: crate::broker::AdminArgs,
}

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
    #[arg(long, env = "BATON_SAGA_LEASE", default_value = "5m", value_parser = humantime::parse_duration, hide_env_values = true)]
    pub saga_lease: Duration,

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
fn parse_service_user(text: &str) -> Result<(String, String), String> {
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

/// Options of `baton pay`.
#[derive(Debug, Args)]
pub struct PayArgs {
    /// A JSON request file; when given, the flags below are ignored
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Card number
    #[arg(long, default_value = "4242424242424242")]
    pub card: String,
    /// Card expiry, MM/YY
    #[arg(long, default_value = "12/30")]
    pub expiry: String,
    /// Amount in minor units (cents)
    #[arg(long, default_value_t = 1999)]
    pub amount: u64,
    /// Currency of the amount
    #[arg(long, default_value = "EUR")]
    pub currency: String,
    /// Currency the merchant settles in [default: the amount's currency]
    #[arg(long)]
    pub merchant_currency: Option<String>,
    /// Merchant id
    #[arg(long, default_value = "m-1001")]
    pub merchant: String,
    /// Customer id
    #[arg(long, default_value = "c-42")]
    pub customer: String,
    /// Payment id [default: a new UUID]
    #[arg(long)]
    pub payment_id: Option<Uuid>,
    /// Seconds to wait for the result
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

#[cfg(feature = "dev-tools")]
/// Options of `baton demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many payments to send (a mix of every test card)
    #[arg(long, default_value_t = 1000)]
    pub payments: usize,
    /// Ledger database for the services [default: a temporary SQLite file]
    #[arg(long, env = "BATON_LEDGER_URL", hide_env_values = true)]
    pub ledger_url: Option<String>,
    /// Keep the demo's queues and ledger instead of deleting them at the end
    #[arg(long)]
    pub keep: bool,
    /// Shadows the global --prefix (hidden, refused when given): the demo runs on a fresh
    /// prefix of its own, which it deletes at the end.
    #[arg(long, hide = true, value_parser = refuse_demo_prefix)]
    pub prefix: Option<String>,
}

#[cfg(feature = "dev-tools")]
fn refuse_demo_prefix(_: &str) -> Result<String, String> {
    Err(
        "baton demo runs on a fresh prefix of its own (demo-xxxxxxxx) and deletes it at \
         the end (keep it with --keep); it takes no --prefix"
            .into(),
    )
}

/// `baton workflow …`.
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Validate a workflow file and print its steps
    Check {
        /// The file [default: the built-in workflow]
        file: Option<PathBuf>,
        #[command(flatten)]
        #[allow(missing_docs)]
        no_broker: NoBroker,
    },
    /// Run a workflow against scripted service answers, in memory on a paused clock (no
    /// broker), and check each case's result; exit 0 all pass, 1 one failed, 2 a bad file
    Test {
        /// The workflow file [default: the built-in workflow]
        file: Option<PathBuf>,
        /// The case file (TOML): `[[cases]]` with a payment, answers and `expect`
        #[arg(long)]
        cases: PathBuf,
    },
}

/// Exit code for "the broker is unreachable".
pub const EXIT_BROKER_UNREACHABLE: i32 = 2;

/// Maps an error to the process exit code: 2 when RabbitMQ could not be reached.
pub fn exit_code_for(error: &anyhow::Error) -> i32 {
    let unreachable = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<BrokerError>(),
            Some(BrokerError::Connect { .. } | BrokerError::BadUrl { .. })
        ) || matches!(
            cause.downcast_ref::<runtime::OrchestratorError>(),
            Some(runtime::OrchestratorError::Broker(
                BrokerError::Connect { .. } | BrokerError::BadUrl { .. }
            ))
        )
    });
    if unreachable {
        EXIT_BROKER_UNREACHABLE
    } else {
        1
    }
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let names = Names::new(cli.common.prefix.clone());
    let tls = TlsOptions::with_ca_file(cli.common.amqp_ca_file.clone());
    match cli.command {
        Command::Run(args) => run_orchestrator(&cli.common, names, args).await,
        Command::Pay(args) => pay(&cli.common, names, args).await,
        #[cfg(feature = "dev-tools")]
        Command::Demo(args) => crate::demo::run(&cli.common.amqp_url, &tls, args).await,
        Command::Status(args) => status(args).await,
        Command::Doctor(args) => {
            let settings = crate::doctor::DoctorSettings {
                amqp_url: cli.common.amqp_url.clone(),
                tls,
                names,
                workflow: load_workflow(args.workflow.as_deref())?,
                admin_url: args.admin.admin_url,
                journal_url: args.journal_url,
            };
            let checks = crate::doctor::run_checks(&settings).await;
            Ok(crate::doctor::report(&checks, args.json))
        }
        #[cfg(feature = "dev-tools")]
        Command::Load(args) => load(&cli.common, names, args).await,
        #[cfg(feature = "dev-tools")]
        Command::Bench(args) => {
            let workflow = match &args.workflow {
                Some(path) => {
                    let absolute = std::fs::canonicalize(path).with_context(|| {
                        format!("cannot read the workflow file {}", path.display())
                    })?;
                    let workflow = load_workflow(Some(&absolute))?;
                    crate::bench::check_bench_workflow(&workflow)?;
                    Some((absolute, workflow))
                }
                None => None,
            };
            let options = crate::bench::BenchOptions {
                amqp_url: cli.common.amqp_url.clone(),
                amqp_tls: tls,
                levels: args.levels,
                payments: args.payments,
                baton_only: args.baton_only,
                replicas: args.replicas,
                journal_url: args.journal_url,
                concurrency: args.concurrency,
                workflow,
            };
            if options.replicas > 1
                && !options
                    .journal_url
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("postgres")
            {
                anyhow::bail!(
                    "--replicas above 1 needs a shared journal: --journal-url postgres://…"
                );
            }
            let rows = crate::bench::run(&options).await?;
            crate::bench::print_table(&rows);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            }
            Ok(i32::from(!rows.iter().all(|r| r.exactly_once)))
        }
        #[cfg(feature = "dev-tools")]
        Command::BenchEcho => {
            crate::bench::echo(&cli.common.amqp_url, &tls, &names).await?;
            Ok(0)
        }
        #[cfg(feature = "dev-tools")]
        Command::BenchRelay { concurrency } => {
            crate::bench::relay(&cli.common.amqp_url, &tls, &names, concurrency).await?;
            Ok(0)
        }
        Command::Dead(command) => {
            crate::tools::run(
                &cli.common.amqp_url,
                &tls,
                &names,
                &names.dead_queue(),
                command,
            )
            .await
        }
        Command::Attention(command) => {
            let queue = names.attention_queue();
            crate::tools::run(&cli.common.amqp_url, &tls, &names, &queue, command).await
        }
        Command::Broker(command) => crate::broker::run(&cli.common.prefix, command).await,
        Command::Sagas(command) => crate::journal_tools::sagas(command).await,
        Command::Journal(command) => crate::journal_tools::journal(command).await,
        Command::Workflow(WorkflowCommand::Check { file, .. }) => {
            let workflow = load_workflow(file.as_deref())?;
            for step in workflow.steps() {
                println!(
                    "{:<16} queue {:<28} timeout {:>6} ms  card={:<11}  compensate={}",
                    step.name,
                    names.command_queue(&step.service),
                    step.timeout.as_millis(),
                    step.card.as_str(),
                    step.compensate
                );
                if let Some(when) = &step.when {
                    println!("{:<16} when {}", "", when.source());
                }
                if let Some(group) = &step.group {
                    println!("{:<16} group {group}", "");
                }
            }
            println!("ok: {} steps", workflow.steps().len());
            Ok(0)
        }
        Command::Workflow(WorkflowCommand::Test { file, cases }) => {
            Ok(workflow_test(file.as_deref(), &cases))
        }
    }
}

/// The card keys of `baton run`: the given file; else, when a step asks for
/// `card = "fingerprint"`, `./baton-card.key` (created with a new key if missing, so a
/// development machine works out of the box); else none.
fn card_keys(
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

/// `baton workflow test`: 0 every case passed, 1 one failed, 2 a file could not be used.
fn workflow_test(file: Option<&std::path::Path>, cases: &std::path::Path) -> i32 {
    use crate::harness;
    let loaded = load_workflow(file).and_then(|workflow| {
        let cases = harness::CaseFile::load(cases, &workflow)?;
        Ok((workflow, cases))
    });
    let (workflow, cases) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let verdicts = harness::run_file(&workflow, &cases);
    print!("{}", harness::report(&verdicts));
    i32::from(!verdicts.iter().all(harness::Verdict::passed))
}

fn load_workflow(file: Option<&std::path::Path>) -> anyhow::Result<Workflow> {
    Ok(match file {
        // Absolute, so start-up lines and errors name the file whatever the directory.
        Some(path) => Workflow::load(&std::fs::canonicalize(path).unwrap_or(path.to_owned()))?,
        None => Workflow::builtin(),
    })
}

async fn run_orchestrator(common: &Common, names: Names, args: RunArgs) -> anyhow::Result<i32> {
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
    settings.saga_lease = args.saga_lease;
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

#[cfg(feature = "dev-tools")]
async fn load(common: &Common, names: Names, args: LoadArgs) -> anyhow::Result<i32> {
    let pace = match (args.rate, args.in_flight) {
        (Some(rate), _) if rate > 0.0 => crate::load::Pace::Rate(rate),
        (Some(_), _) => anyhow::bail!("--rate must be a positive number of payments per second"),
        (None, Some(0)) => anyhow::bail!("--in-flight must be at least 1"),
        (None, k) => crate::load::Pace::InFlight(k.unwrap_or(64)),
    };
    let mut client = Client::connect(
        &common.amqp_url,
        &TlsOptions::with_ca_file(common.amqp_ca_file.clone()),
        names,
    )
    .await?;
    let cards = crate::load::cards(args.payments, args.cards == CardMix::Mixed);
    let report = crate::load::run(
        &mut client,
        &cards,
        pace,
        Duration::from_secs(args.wait),
        Duration::from_millis(500),
        !args.json,
    )
    .await?;
    client.close().await;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        crate::load::print_report(&report);
    }
    if !report.exactly_once() {
        eprintln!(
            "not exactly once: {} missing, {} duplicates, {} unexpected outcomes",
            report.missing, report.duplicates, report.unexpected
        );
        return Ok(1);
    }
    Ok(0)
}

async fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let journal = crate::journal::Journal::open_existing(&args.journal.journal_url).await?;
    let record = journal.load(args.payment_id).await?;
    journal.close().await;
    let Some(record) = record else {
        eprintln!(
            "payment {} is not in the journal at {}",
            args.payment_id,
            journal.location()
        );
        return Ok(1);
    };
    // Everything printed is masked: the journal never stores a card number, but a record
    // written before ids were checked for them could hold one in a merchant or customer
    // id, a reason or a detail.
    use baton_contract::mask_card_numbers as masked;
    if args.json {
        println!("{}", masked(&serde_json::to_string_pretty(&record)?));
        return Ok(0);
    }
    println!("payment   {}", record.payment_id);
    println!("status    {}", record.status());
    println!(
        "amount    {} {} (merchant {} settles in {}), card ****{}",
        record.summary.amount.minor,
        record.summary.amount.currency,
        masked(&record.summary.merchant_id),
        record.summary.merchant_currency,
        record.summary.card_last4
    );
    println!(
        "started   {}   updated {}   parked {} times",
        record.started_at, record.updated_at, record.parked
    );
    println!();
    println!(
        "{:<16} {:<11} {:<20} {:>8} {:>9}  recorded at / reason",
        "step", "action", "outcome", "attempts", "ms"
    );
    for entry in &record.entries {
        let outcome = serde_json::to_value(entry.record.outcome)?;
        let mut note = entry.recorded_at.clone();
        if let Some(reason) = &entry.record.reason {
            note.push_str(&format!("  {reason}"));
        }
        if entry.record.degraded {
            note.push_str("  (degraded)");
        }
        if let Some(via) = &entry.record.via {
            note.push_str(&format!("  via {via}"));
        }
        println!(
            "{:<16} {:<11} {:<20} {:>8} {:>9}  {}",
            entry.step,
            serde_json::to_value(entry.action)?.as_str().unwrap_or("?"),
            outcome.as_str().unwrap_or("?"),
            entry.record.attempts,
            entry.record.duration_ms,
            masked(&note)
        );
    }
    if let Some(result) = &record.result {
        println!();
        println!(
            "result    {} {} {}",
            result.status.as_str(),
            masked(result.reason.as_deref().unwrap_or("")),
            result.finished_at
        );
        if let Some(detail) = &result.detail {
            println!("detail    {}", masked(detail));
        }
        if let Some(settlement) = &result.settlement {
            println!("settled   {} {}", settlement.minor, settlement.currency);
        }
    }
    Ok(0)
}

async fn pay(common: &Common, names: Names, args: PayArgs) -> anyhow::Result<i32> {
    let body = match &args.file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read the request file {}", path.display()))?,
        None => {
            let mut request = serde_json::json!({
                "payment_id": args.payment_id.unwrap_or_else(Uuid::new_v4).to_string(),
                "merchant_id": args.merchant,
                "customer_id": args.customer,
                "amount": {"minor": args.amount, "currency": args.currency},
                "card": {"number": args.card, "expiry": args.expiry},
            });
            if let Some(currency) = args.merchant_currency {
                request["merchant_currency"] = currency.into();
            }
            serde_json::to_vec(&request)?
        }
    };
    // Checked here, before anything is published: an orchestrator dead-letters a request
    // it cannot read without answering anyone (it has no payment id to answer), and this
    // command would wait out its timeout. The limits are the orchestrator's to enforce
    // (an amount over its limit is answered `rejected`).
    let unbounded = Limits {
        max_body_bytes: usize::MAX,
        max_amount_minor: u64::MAX,
    };
    let request = baton_contract::PaymentRequest::parse(&body, &unbounded).map_err(|invalid| {
        let what = match &args.file {
            Some(path) => format!("the request file {}", path.display()),
            None => "the request".to_owned(),
        };
        anyhow::anyhow!("{what} is not a valid payment request, nothing was published: {invalid}")
    })?;
    let payment_id = request.payment_id;
    let requests_queue = names.requests_queue();
    let mut client = Client::connect(
        &common.amqp_url,
        &TlsOptions::with_ca_file(common.amqp_ca_file.clone()),
        names,
    )
    .await?;
    let correlation = Uuid::new_v4().to_string();
    client.publisher().publish(&body, &correlation).await?;
    let timeout = Duration::from_secs(args.timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(received) = client.next_result(left).await else {
            let consumers = request_consumers(&client, &requests_queue).await;
            client.close().await;
            match consumers {
                // An orchestrator took the request: the payment is parked for a retry or
                // waiting for a service, and its result comes when it is decided.
                Some(n) if n > 0 => anyhow::bail!(
                    "no result within {} s: payment {payment_id} is still running (an \
                     orchestrator has it, parked for a retry or waiting for a service); its \
                     result will be published when decided: see `baton status {payment_id}`",
                    args.timeout
                ),
                _ => anyhow::bail!(
                    "no result within {} s: no orchestrator consumes {requests_queue}, where \
                     payment {payment_id} waits: start `baton run --prefix {}`",
                    args.timeout,
                    common.prefix
                ),
            }
        };
        if received.correlation_id.as_deref() != Some(correlation.as_str()) {
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(&received.body)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        client.close().await;
        let completed = received.result.map(|r| r.status) == Some(Status::Completed);
        return Ok(if completed { 0 } else { 1 });
    }
}

/// How many consumers the request queue has (orchestrators), if the broker says.
async fn request_consumers(client: &Client, queue: &str) -> Option<u32> {
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let publisher = client.publisher();
    let declared = publisher
        .channel()
        .queue_declare(queue.into(), options, lapin::types::FieldTable::default())
        .await
        .ok()?;
    Some(declared.consumer_count())
}
