//! `baton demo`: the whole pipeline on one machine, for a first look. It starts the four
//! reference services and an orchestrator inside this process on a fresh prefix, pushes a
//! mixed batch of test payments through RabbitMQ like any client would, and prints what
//! came back. It is a tool for people, not part of the orchestrator.

use crate::client::Client;
use crate::config::Settings;
use crate::runtime;
use crate::testcards::{mixed_batch, TestCard};
use anyhow::Context;
use baton_amqp as amqp;
use baton_contract::{Names, Status};
use baton_services::{ServiceConfig, ServiceKind};
use clap::Args;

use std::time::Duration;
use uuid::Uuid;

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

fn refuse_demo_prefix(_: &str) -> Result<String, String> {
    Err(
        "baton demo runs on a fresh prefix of its own (demo-xxxxxxxx) and deletes it at \
         the end (keep it with --keep); it takes no --prefix"
            .into(),
    )
}

/// What a batch gave (the load generator's report).
pub type BatchReport = crate::load::LoadReport;

/// Publishes one request per test card in `cards` all at once, waits up to `wait` for
/// every result, and checks each against the card's documented outcome.
pub async fn run_batch(
    client: &mut Client,
    cards: &[TestCard],
    wait: Duration,
    progress: bool,
) -> anyhow::Result<BatchReport> {
    let all = crate::load::Pace::InFlight(cards.len());
    crate::load::run(client, cards, all, wait, Duration::ZERO, progress).await
}

/// Exit code of a demo stopped by Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed now, not when first polled:
/// a signal that comes while the pipeline is still starting is kept until the demo looks.
fn interrupted() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `baton demo`. Ctrl-C (or SIGTERM) stops it and cleans up all the same: its queues and
/// files are deleted (unless `--keep`), and it exits 130.
pub async fn run(amqp_url: &str, tls: &amqp::TlsOptions, args: DemoArgs) -> anyhow::Result<i32> {
    let mut signal = std::pin::pin!(interrupted());
    let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let names = Names::new(format!("demo-{id}"));
    let ledger_file = std::env::temp_dir().join(format!("baton-demo-{id}.db"));
    let ledger_url = args
        .ledger_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", ledger_file.display()));
    let journal_file = std::env::temp_dir().join(format!("baton-demo-{id}-journal.db"));
    eprintln!(
        "baton demo: prefix {}, broker {}, {} payments",
        names.prefix(),
        amqp::redact_url(amqp_url),
        args.payments
    );

    // Started below one by one; whatever was started is stopped and cleaned up at the
    // end, whether the batch finished, failed or was interrupted.
    let mut services = Vec::new();
    let mut orchestrator = None;
    let started = start(
        amqp_url,
        tls,
        &names,
        &ledger_url,
        &journal_file,
        &mut services,
        &mut orchestrator,
    )
    .await;
    let outcome = match started {
        Err(e) => Err(e),
        Ok(()) => {
            eprintln!("  four services and one orchestrator running; publishing...");
            tokio::select! {
                // A signal that came during start-up is seen before anything is published.
                biased;
                () = &mut signal => Ok(None),
                report = batch(amqp_url, tls, &names, args.payments) => report.map(Some),
            }
        }
    };
    if let Ok(None) = outcome {
        eprintln!("  interrupted: stopping and cleaning up (again to leave everything as it is)");
        let prefix = names.prefix().to_owned();
        tokio::spawn(async move {
            interrupted().await;
            eprintln!("interrupted again: {prefix} and its files are left as they are");
            std::process::exit(EXIT_INTERRUPTED);
        });
    }

    if let Some(orchestrator) = orchestrator {
        orchestrator.shutdown().await?;
    }
    for service in services {
        service.shutdown().await?;
    }
    if !args.keep {
        let connection = amqp::connect(amqp_url, "baton demo cleanup", tls).await?;
        let channel = connection.create_channel().await?;
        let service_names: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.name()).collect();
        let parking: Vec<u64> = crate::workflow::Workflow::builtin().parking().delays_ms();
        amqp::delete_topology_with_parking(&channel, &names, &service_names, &parking).await?;
        let _ = connection.close(200, "done".into()).await;
        let mut files = vec![journal_file.clone()];
        if args.ledger_url.is_none() {
            files.push(ledger_file.clone());
        }
        for file in files {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
    } else {
        eprintln!(
            "  kept prefix {} and ledger {}",
            names.prefix(),
            amqp::redact_url(&ledger_url)
        );
    }
    let Some(report) = outcome? else {
        eprintln!(
            "interrupted: {} {}",
            names.prefix(),
            if args.keep {
                "kept (--keep)"
            } else {
                "and its files deleted"
            }
        );
        return Ok(EXIT_INTERRUPTED);
    };
    let all_good = report.exactly_once();
    let completed = report
        .by_outcome
        .iter()
        .filter(|((status, _), _)| status == Status::Completed.as_str())
        .map(|(_, n)| n)
        .sum::<usize>();
    eprintln!(
        "{}: {completed} completed; every payment got exactly one result{}",
        if all_good { "ok" } else { "PROBLEM" },
        if all_good {
            " with its documented outcome"
        } else {
            "? no, see above"
        }
    );
    Ok(if all_good { 0 } else { 1 })
}

/// Starts the four services and the orchestrator on `names`, each pushed into `services`
/// / `orchestrator` as soon as it runs, so the caller stops whatever started even if a
/// later one fails.
async fn start(
    amqp_url: &str,
    tls: &amqp::TlsOptions,
    names: &Names,
    ledger_url: &str,
    journal_file: &std::path::Path,
    services: &mut Vec<baton_services::RunningService>,
    orchestrator: &mut Option<runtime::Running>,
) -> anyhow::Result<()> {
    // A throw-away card key, shared by this process's orchestrator and risk service
    // and gone with it: demo fingerprints match nothing outside the demo.
    let card_keys = baton_contract::CardKeys::generate(names.prefix());
    for kind in ServiceKind::ALL {
        let config = ServiceConfig {
            card_keys: Some(card_keys.clone()),
            amqp_url: amqp_url.to_owned(),
            amqp_ca_file: tls.ca_file.clone(),
            prefix: names.prefix().to_owned(),
            concurrency: 64,
            ledger_url: ledger_url.to_owned(),
            ..ServiceConfig::default()
        };
        services.push(
            baton_services::start(kind, config)
                .await
                // The broker's own error when it is one, so the exit code is 2 as for
                // the orchestrator (`cli::exit_code_for`).
                .map_err(|e| match e.into_broker() {
                    Ok(broker) => anyhow::Error::from(broker),
                    Err(other) => anyhow::Error::from(other),
                })
                .with_context(|| format!("starting the {} service", kind.name()))?,
        );
    }
    let mut settings = Settings::new(
        amqp_url,
        names.prefix(),
        format!("sqlite://{}", journal_file.display()),
    );
    settings.amqp_ca_file = tls.ca_file.clone();
    settings.card_keys = Some(card_keys);
    // Interrupted, the demo deletes everything: no point waiting for payments in flight.
    settings.shutdown_timeout = Duration::from_secs(1);
    *orchestrator = Some(runtime::start(settings).await?);
    Ok(())
}

/// Publishes the mixed batch and waits for its results.
async fn batch(
    amqp_url: &str,
    tls: &amqp::TlsOptions,
    names: &Names,
    payments: usize,
) -> anyhow::Result<BatchReport> {
    let mut client = Client::connect(amqp_url, tls, names.clone()).await?;
    let cards = mixed_batch(payments);
    let report = run_batch(&mut client, &cards, Duration::from_secs(120), true).await;
    client.close().await;
    let report = report?;
    crate::load::print_report(&report);
    Ok(report)
}
