//! `baton load` and `baton bench` (the `dev-tools` feature).
#![cfg(feature = "dev-tools")]

use super::*;
use crate::client::Client;
use anyhow::Context;
use baton_amqp::TlsOptions;
use baton_contract::Names;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

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
    /// Processes of each reference service in the Baton runs (consumers of one queue each;
    /// authorization and transaction share the run's ledger)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub service_instances: u8,
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
    /// Tokio scheduler threads of every process the bench starts (baseline and Baton
    /// alike), passed as TOKIO_WORKER_THREADS; 0: tokio's default, one per core. Six
    /// processes share the machine, so one each wakes fewer idle threads
    #[arg(long, default_value_t = 1)]
    pub worker_threads: usize,
    /// Print the rows as JSON too
    #[arg(long)]
    pub json: bool,
}

#[cfg(feature = "dev-tools")]
pub(super) async fn load(common: &Common, names: Names, args: LoadArgs) -> anyhow::Result<i32> {
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

/// `baton bench`: checks the options, runs the levels, prints the table; exit 1 unless
/// every run delivered exactly once.
pub(super) async fn bench(
    common: &Common,
    tls: TlsOptions,
    args: BenchArgs,
) -> anyhow::Result<i32> {
    let workflow = match &args.workflow {
        Some(path) => {
            let absolute = std::fs::canonicalize(path)
                .with_context(|| format!("cannot read the workflow file {}", path.display()))?;
            let workflow = load_workflow(Some(&absolute))?;
            crate::bench::check_bench_workflow(&workflow)?;
            Some((absolute, workflow))
        }
        None => None,
    };
    let options = crate::bench::BenchOptions {
        amqp_url: common.amqp_url.clone(),
        amqp_tls: tls,
        levels: args.levels,
        payments: args.payments,
        baton_only: args.baton_only,
        replicas: args.replicas,
        service_instances: usize::from(args.service_instances),
        journal_url: args.journal_url,
        concurrency: args.concurrency,
        workflow,
        worker_threads: args.worker_threads,
    };
    if options.replicas > 1
        && !options
            .journal_url
            .as_deref()
            .unwrap_or("")
            .starts_with("postgres")
    {
        anyhow::bail!("--replicas above 1 needs a shared journal: --journal-url postgres://…");
    }
    let rows = crate::bench::run(&options).await?;
    crate::bench::print_table(&rows);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(i32::from(!rows.iter().all(|r| r.exactly_once)))
}
