//! `baton bench`: Baton's throughput, latency and cost measured against the broker's own
//! floor, in one run on one broker.
//!
//! The floor is a *bare pipeline* with exactly Baton's message flow and none of its work:
//! a relay (`baton bench-relay`) that takes each request and sends the four commands in
//! order, and echo services (`baton bench-echo`) that answer every command at once — same
//! quorum queues, persistent messages, publisher confirms, `mandatory`, manual acks. Then
//! Baton itself (`baton run` and the four reference services, fault injection off) runs
//! the same load. Both are child processes, so their CPU time and memory are read from
//! `/proc` separately from the load generator's and the broker's.
//!
//! Benchmarks are not tests: nothing here runs under `cargo test` except through the
//! load generator's smoke test.
//!
//! `procfs.rs` reads CPU and memory per process; `processes.rs` starts and watches the
//! processes of a run; `baseline.rs` is the bare pipeline (`bench-echo`, `bench-relay`).

mod baseline;
mod processes;
mod procfs;
#[cfg(test)]
mod tests;

use crate::client::Client;
use crate::load::{self, Pace};
pub use baseline::{echo, relay};
use baton_amqp::{self as amqp};
use baton_contract::Names;
use processes::*;
use procfs::ticks_per_second;
pub use procfs::{broker_pid, cpu_seconds, peak_rss_mib};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The four services of the default workflow, in order.
const SERVICES: [&str; 4] = ["authorization", "risk", "pci", "transaction"];

/// One measurement.
#[derive(Debug, Serialize, Clone)]
pub struct Row {
    /// `baseline` or `baton`.
    pub system: String,
    /// Payments in flight.
    pub in_flight: usize,
    /// Payments in the run.
    pub payments: usize,
    /// Throughput.
    pub payments_per_s: f64,
    /// Median end-to-end latency.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// CPU time of the orchestrator (or relay) per payment, in ms.
    pub orchestrator_cpu_ms: f64,
    /// CPU time of the services (or echo) per payment, in ms.
    pub services_cpu_ms: f64,
    /// CPU time of the broker per payment, in ms (`None` if its process was not found).
    pub broker_cpu_ms: Option<f64>,
    /// Peak resident memory of the orchestrator (or relay) so far, MiB (the largest
    /// replica's).
    pub orchestrator_peak_rss_mib: f64,
    /// Orchestrator processes.
    pub replicas: usize,
    /// Share of the payments each replica took (from its `baton_payments_received_total`).
    pub spread: Vec<u64>,
    /// Step attempts that timed out during the level (Baton only; the relay has none).
    /// Under CPU starvation a service answers late, the orchestrator retries and parks,
    /// and the level's throughput and p99 measure the ladder, not the steady flow.
    pub step_timeouts: u64,
    /// Payments parked in a retry queue during the level (Baton only).
    pub parked: u64,
    /// Every payment had exactly one result.
    pub exactly_once: bool,
}

/// Options of a bench run.
pub struct BenchOptions {
    /// Broker URL.
    pub amqp_url: String,
    /// How `amqps://` checks the broker's certificate (passed on to every process).
    pub amqp_tls: amqp::TlsOptions,
    /// In-flight levels.
    pub levels: Vec<usize>,
    /// Payments per level (a level of 1 runs a tenth, at least 100).
    pub payments: usize,
    /// Skip the baseline.
    pub baton_only: bool,
    /// Orchestrator processes for the Baton runs (they share a PostgreSQL journal when
    /// more than one: `journal_url`).
    pub replicas: usize,
    /// Processes of each reference service for the Baton runs (each consumes its queue).
    pub service_instances: usize,
    /// Journal of the Baton runs [default: a SQLite file per run; required to be
    /// shareable (postgres://) with several replicas].
    pub journal_url: Option<String>,
    /// Concurrency (prefetch) of each orchestrator.
    pub concurrency: u16,
    /// The workflow file the orchestrators run (an absolute path, passed on as
    /// `--workflow`) and the workflow it holds; `None`: the built-in workflow. Its services
    /// must be the four the bench starts.
    pub workflow: Option<(PathBuf, crate::workflow::Workflow)>,
    /// Tokio scheduler threads of every started process (`TOKIO_WORKER_THREADS`); 0:
    /// tokio's default.
    pub worker_threads: usize,
}

/// Refuses a workflow naming a service the bench does not start: its payments would wait
/// on a queue nobody consumes.
pub fn check_bench_workflow(workflow: &crate::workflow::Workflow) -> anyhow::Result<()> {
    for service in workflow.services() {
        if !SERVICES.contains(&service) {
            anyhow::bail!(
                "workflow {}: service {service:?} is not one the bench starts; it runs {} only",
                workflow.source_name(),
                SERVICES.join(", ")
            );
        }
    }
    Ok(())
}

/// Runs the whole benchmark and returns its rows.
pub async fn run(options: &BenchOptions) -> anyhow::Result<Vec<Row>> {
    let ticks = ticks_per_second();
    let broker = broker_pid(&options.amqp_url);
    if broker.is_none() {
        eprintln!(
            "note: no local beam.smp process listens on the AMQP URL's port; broker CPU is not measured"
        );
    }
    let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let dir = std::env::temp_dir().join(format!("baton-bench-{id}"));
    std::fs::create_dir_all(&dir)?;
    // One card key file for risk and every orchestrator, as in production.
    let card_key_file = dir.join("card.key").display().to_string();
    baton_contract::CardKeys::load_or_create(std::path::Path::new(&card_key_file))?;
    let baton = std::env::current_exe()?;
    let mut rows = Vec::new();
    let systems: &[&str] = if options.baton_only {
        &["baton"]
    } else {
        &["baseline", "baton"]
    };
    for system in systems {
        let names = Names::new(format!("bench-{id}-{system}"));
        let prefix = names.prefix().to_owned();
        let url = options.amqp_url.clone();
        let mut processes = Processes {
            children: Vec::new(),
            worker_threads: options.worker_threads,
        };
        let common = |extra: &[&str]| -> Vec<String> {
            let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            args.extend([
                "--prefix".into(),
                prefix.clone(),
                "--amqp-url".into(),
                url.clone(),
            ]);
            if let Some(ca_file) = &options.amqp_tls.ca_file {
                args.extend(["--amqp-ca-file".into(), ca_file.display().to_string()]);
            }
            args
        };
        let mut http_ports = Vec::new();
        let (orchestrators, services): (Vec<u32>, Vec<u32>) = if *system == "baseline" {
            let echo = processes.spawn(
                "echo",
                &baton,
                &common(&["bench-echo"]),
                &dir.join("echo.log"),
            )?;
            let relay = processes.spawn(
                "relay",
                &baton,
                &common(&["bench-relay"]),
                &dir.join("relay.log"),
            )?;
            (vec![relay], vec![echo])
        } else {
            let ledger = format!("sqlite://{}", dir.join("ledger.db").display());
            let mut pids = Vec::new();
            let instances = (0..options.service_instances.max(1))
                .flat_map(|instance| SERVICES.iter().map(move |service| (*service, instance)));
            for (service, instance) in instances {
                let mut args = common(&["--http-addr", "127.0.0.1:0", "--concurrency", "256"]);
                if service == "authorization" || service == "transaction" {
                    args.extend(["--ledger-url".into(), ledger.clone()]);
                }
                if service == "risk" {
                    args.extend(["--card-key-file".into(), card_key_file.clone()]);
                }
                let binary = sibling(&format!("baton-{service}"))?;
                pids.push(processes.spawn(
                    service,
                    &binary,
                    &args,
                    &dir.join(format!("{service}-{instance}.log")),
                )?);
            }
            let journal = options
                .journal_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", dir.join("journal.db").display()));
            let mut orchestrators = Vec::new();
            for replica in 0..options.replicas.max(1) {
                let port = free_port()?;
                http_ports.push(port);
                let http = format!("127.0.0.1:{port}");
                let concurrency = options.concurrency.to_string();
                let mut args = common(&[
                    "run",
                    "--journal-url",
                    &journal,
                    "--http-addr",
                    &http,
                    "--concurrency",
                    &concurrency,
                    "--card-key-file",
                    &card_key_file,
                ]);
                if let Some((path, _)) = &options.workflow {
                    args.extend(["--workflow".into(), path.display().to_string()]);
                }
                let log = dir.join(format!("orchestrator-{replica}.log"));
                orchestrators.push(processes.spawn("orchestrator", &baton, &args, &log)?);
            }
            (orchestrators, pids)
        };

        // Measured in a block of its own, so that a level that fails still has its
        // processes stopped and its queues deleted below.
        let measured: anyhow::Result<()> = async {
            wait_ready(&http_ports, &mut processes, &dir).await?;
            let mut client =
                Client::connect(&options.amqp_url, &options.amqp_tls, names.clone()).await?;
            // Warm up, which is also the readiness check: a payment through the whole flow.
            let warm = load::run(
                &mut client,
                &load::cards(20, false),
                Pace::InFlight(20),
                Duration::from_secs(60),
                Duration::ZERO,
                false,
            )
            .await?;
            processes.check_alive()?;
            if !warm.exactly_once() {
                anyhow::bail!(
                    "{system}: the warm-up payments did not all complete; see the logs in {}",
                    dir.display()
                );
            }
            for &level in &options.levels {
                let payments = if level == 1 {
                    (options.payments / 10).max(100)
                } else {
                    options.payments.max(level * 4)
                };
                let cpu = |pid: u32| cpu_seconds(pid, ticks).unwrap_or(0.0);
                let sum = |pids: &[u32]| pids.iter().map(|p| cpu(*p)).sum::<f64>();
                let counted_before = Counters::read(&http_ports);
                let before = (sum(&orchestrators), sum(&services), broker.map(cpu));
                let report = load::run(
                    &mut client,
                    &load::cards(payments, false),
                    Pace::InFlight(level),
                    Duration::from_secs(120),
                    Duration::from_millis(200),
                    false,
                )
                .await?;
                let after = (sum(&orchestrators), sum(&services), broker.map(cpu));
                let counted = Counters::read(&http_ports);
                let spread: Vec<u64> = counted
                    .received
                    .iter()
                    .zip(&counted_before.received)
                    .map(|(after, before)| after.saturating_sub(*before))
                    .collect();
                processes.check_alive()?;
                let per =
                    |a: f64, b: f64| ((a - b) * 1000.0 / payments as f64 * 1000.0).round() / 1000.0;
                let row = Row {
                    system: system.to_string(),
                    in_flight: level,
                    payments,
                    payments_per_s: report.payments_per_s,
                    p50_ms: report.p50_ms,
                    p99_ms: report.p99_ms,
                    orchestrator_cpu_ms: per(after.0, before.0),
                    services_cpu_ms: per(after.1, before.1),
                    broker_cpu_ms: match (after.2, before.2) {
                        (Some(a), Some(b)) => Some(per(a, b)),
                        _ => None,
                    },
                    orchestrator_peak_rss_mib: (orchestrators
                        .iter()
                        .filter_map(|p| peak_rss_mib(*p))
                        .fold(0.0, f64::max)
                        * 10.0)
                        .round()
                        / 10.0,
                    replicas: orchestrators.len(),
                    spread,
                    step_timeouts: counted.timeouts.saturating_sub(counted_before.timeouts),
                    parked: counted.parked.saturating_sub(counted_before.parked),
                    exactly_once: report.exactly_once(),
                };
                eprintln!(
                    "  {:<8} in flight {:>4}: {:>7.1} payments/s  p50 {:>7.1} ms  p99 {:>7.1} ms",
                    row.system, row.in_flight, row.payments_per_s, row.p50_ms, row.p99_ms
                );
                rows.push(row);
            }
            client.close().await;
            Ok(())
        }
        .await;
        drop(processes);
        let connection =
            amqp::connect(&options.amqp_url, "baton bench cleanup", &options.amqp_tls).await?;
        let channel = connection.create_channel().await?;
        let parking: Vec<u64> = match &options.workflow {
            Some((_, workflow)) => workflow.parking().delays_ms(),
            None => crate::workflow::Workflow::builtin().parking().delays_ms(),
        };
        amqp::delete_topology_with_parking(&channel, &names, &SERVICES, &parking).await?;
        let _ = connection.close(200, "done".into()).await;
        measured?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// Prints the rows as a table with Baton / baseline ratios.
pub fn print_table(rows: &[Row]) {
    println!(
        "| system | replicas | in flight | payments/s | p50 ms | p99 ms | orchestrator CPU ms/payment | services CPU ms/payment | broker CPU ms/payment | orchestrator peak RSS MiB | step timeouts / parked | exactly once |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} | {} | {:.1} | {} / {} | {} |",
            row.system,
            if row.spread.len() > 1 {
                format!(
                    "{} ({})",
                    row.replicas,
                    row.spread
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join("/")
                )
            } else {
                row.replicas.to_string()
            },
            row.in_flight,
            row.payments_per_s,
            row.p50_ms,
            row.p99_ms,
            row.orchestrator_cpu_ms,
            row.services_cpu_ms,
            row.broker_cpu_ms
                .map(|c| format!("{c:.3}"))
                .unwrap_or_else(|| "n/a".into()),
            row.orchestrator_peak_rss_mib,
            row.step_timeouts,
            row.parked,
            if row.exactly_once { "yes" } else { "NO" }
        );
    }
    let disturbed: Vec<String> = rows
        .iter()
        .filter(|r| r.step_timeouts > 0 || r.parked > 0)
        .map(|r| format!("{} at {} in flight", r.system, r.in_flight))
        .collect();
    if !disturbed.is_empty() {
        println!();
        println!(
            "note: steps timed out or payments were parked in: {}. Those levels measure \
             the retry ladder (services starved of CPU answer after their step timeout), \
             not the steady flow; repeat them before comparing.",
            disturbed.join(", ")
        );
    }
    let baselines: HashMap<usize, &Row> = rows
        .iter()
        .filter(|r| r.system == "baseline")
        .map(|r| (r.in_flight, r))
        .collect();
    if baselines.is_empty() {
        return;
    }
    println!();
    println!(
        "| in flight | throughput Baton / baseline | p50 Baton / baseline | p99 Baton / baseline |"
    );
    println!("|---|---|---|---|");
    for row in rows.iter().filter(|r| r.system == "baton") {
        if let Some(base) = baselines.get(&row.in_flight) {
            println!(
                "| {} | {:.2} | {:.2} | {:.2} |",
                row.in_flight,
                row.payments_per_s / base.payments_per_s.max(1e-9),
                row.p50_ms / base.p50_ms.max(1e-9),
                row.p99_ms / base.p99_ms.max(1e-9)
            );
        }
    }
}

/// Commands waiting for a reply in the relay, by correlation id.
type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;
