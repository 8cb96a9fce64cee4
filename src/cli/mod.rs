//! The `baton` command line: option parsing and the subcommands for people (`run`, `pay`,
//! `demo`, `workflow check`). Options are also read from environment variables; `--help`
//! documents both and never prints a password. Each subcommand's module owns its options
//! (`run`, `pay`, `status`, `doctor`, `workflow`, `dev`); the operators' tools own theirs.

use crate::runtime;
use crate::workflow::Workflow;
use baton_amqp::{BrokerError, TlsOptions, DEFAULT_AMQP_URL};
use baton_contract::{parse_prefix, Names};
use baton_ops::LogFormat;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

mod dev;
mod doctor;
mod pay;
mod run;
mod status;
mod workflow;

#[cfg(feature = "dev-tools")]
pub use crate::demo::DemoArgs;
pub use crate::journal_tools::JournalArgs;
pub use crate::tools::QueueCommand;
pub use baton_ops::EXIT_BROKER_UNREACHABLE;
#[cfg(feature = "dev-tools")]
pub use dev::{BenchArgs, CardMix, LoadArgs};
pub use doctor::DoctorArgs;
pub use pay::PayArgs;
pub use run::{RunArgs, Switch};
pub use status::StatusArgs;
pub use workflow::WorkflowCommand;

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

pub(super) fn refuse_broker_option(_: &str) -> Result<String, String> {
    Err(
        "this subcommand does not talk to RabbitMQ: it takes no --amqp-url or --amqp-ca-file"
            .into(),
    )
}

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
        Command::Run(args) => run::run_orchestrator(&cli.common, names, args).await,
        Command::Pay(args) => pay::pay(&cli.common, names, args).await,
        #[cfg(feature = "dev-tools")]
        Command::Demo(args) => crate::demo::run(&cli.common.amqp_url, &tls, args).await,
        Command::Status(args) => status::status(args).await,
        Command::Doctor(args) => {
            let settings = crate::doctor::DoctorSettings {
                amqp_url: cli.common.amqp_url.clone(),
                tls,
                names,
                workflow: load_workflow(args.workflow.as_deref())?,
                admin_url: args.admin.admin_url,
                journal_url: args.journal_url,
                scaled_to_zero: args.scaled_to_zero.into_iter().collect(),
            };
            let checks = crate::doctor::run_checks(&settings).await;
            Ok(crate::doctor::report(&checks, args.json))
        }
        #[cfg(feature = "dev-tools")]
        Command::Load(args) => dev::load(&cli.common, names, args).await,
        #[cfg(feature = "dev-tools")]
        Command::Bench(args) => dev::bench(&cli.common, tls, args).await,
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
            for (i, step) in workflow.steps().iter().enumerate() {
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
                if !workflow.needs(i).is_empty() {
                    println!("{:<16} needs {}", "", workflow.needs(i).join(", "));
                }
            }
            println!("ok: {} steps", workflow.steps().len());
            Ok(0)
        }
        Command::Workflow(WorkflowCommand::Test { file, cases }) => {
            Ok(workflow::workflow_test(file.as_deref(), &cases))
        }
    }
}

pub(super) fn load_workflow(file: Option<&std::path::Path>) -> anyhow::Result<Workflow> {
    Ok(match file {
        // Absolute, so start-up lines and errors name the file whatever the directory.
        Some(path) => Workflow::load(&std::fs::canonicalize(path).unwrap_or(path.to_owned()))?,
        None => Workflow::builtin(),
    })
}
