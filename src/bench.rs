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

use crate::client::Client;
use crate::load::{self, Pace};
use baton_amqp::{self as amqp, json_properties, publish_confirmed};
use baton_contract::{headers, Names, Reply};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
    /// Journal of the Baton runs [default: a SQLite file per run; required to be
    /// shareable (postgres://) with several replicas].
    pub journal_url: Option<String>,
    /// Concurrency (prefetch) of each orchestrator.
    pub concurrency: u16,
}

fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after the closing parenthesis are fixed.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Peak resident set size in MiB, from `/proc/<pid>/status` (VmHWM).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The RabbitMQ node serving `amqp_url`: the local `beam.smp` process that listens on the
/// URL's port. Several nodes may run on one machine (the chaos and TLS tests start their
/// own), so the first `beam.smp` found is not necessarily the one under load. `None` when
/// the URL's host is not this machine or no `beam.smp` listens on its port.
pub fn broker_pid(amqp_url: &str) -> Option<u32> {
    let uri: lapin::uri::AMQPUri = amqp_url.parse().ok()?;
    let host = uri.authority.host.as_str();
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !local {
        return None;
    }
    let pid = listener_pid(uri.authority.port)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "beam.smp").then_some(pid)
}

/// The socket inodes listening on TCP `port` in a `/proc/net/tcp` or `/proc/net/tcp6`
/// table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listens =
                *fields.get(3)? == LISTEN && u16::from_str_radix(local_port, 16).ok()? == port;
            listens.then(|| fields.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

/// The process holding a socket that listens on TCP `port` on this machine, if it can be
/// seen (`/proc`, Linux).
fn listener_pid(port: u16) -> Option<u32> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| listening_inodes(&table, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
                .then_some(pid)
        })
}

/// Child processes that are killed when dropped.
struct Processes {
    children: Vec<(String, Child)>,
}

impl Processes {
    fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", program.display()))?;
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{name} exited with {status}");
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        anyhow::bail!(
            "{} not found next to {}: build every binary first (cargo build --release --workspace)",
            name,
            exe.display()
        );
    }
    Ok(path)
}

/// The sum of every series of the counter `name` on the `/metrics` of the orchestrator
/// whose HTTP port is `port` (0 when it cannot be read).
fn counter(port: u16, name: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    counter_sum(&text, name)
}

/// The sum of every series of `name` in a Prometheus exposition.
fn counter_sum(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What the orchestrators' counters say about one level: how the payments spread over
/// the replicas, and how many step attempts timed out and payments were parked.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counters {
    received: Vec<u64>,
    timeouts: u64,
    parked: u64,
}

impl Counters {
    fn read(ports: &[u16]) -> Self {
        Self {
            received: ports
                .iter()
                .map(|p| counter(*p, "baton_payments_received_total"))
                .collect(),
            timeouts: ports
                .iter()
                .map(|p| counter(*p, "baton_step_timeouts_total"))
                .sum(),
            parked: ports
                .iter()
                .map(|p| counter(*p, "baton_parked_total"))
                .sum(),
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
            for service in SERVICES {
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
                    &dir.join(format!("{service}.log")),
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
                let args = common(&[
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
                let log = dir.join(format!("orchestrator-{replica}.log"));
                orchestrators.push(processes.spawn("orchestrator", &baton, &args, &log)?);
            }
            (orchestrators, pids)
        };

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
        drop(processes);
        let connection =
            amqp::connect(&options.amqp_url, "baton bench cleanup", &options.amqp_tls).await?;
        let channel = connection.create_channel().await?;
        let parking: Vec<u64> = crate::workflow::Workflow::builtin().parking().delays_ms();
        amqp::delete_topology_with_parking(&channel, &names, &SERVICES, &parking).await?;
        let _ = connection.close(200, "done".into()).await;
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

/// `baton bench-echo`: answers every command on the four command queues at once.
pub async fn echo(amqp_url: &str, tls: &amqp::TlsOptions, names: &Names) -> anyhow::Result<()> {
    let connection = amqp::connect(
        amqp_url,
        &format!("baton bench echo {}", names.prefix()),
        tls,
    )
    .await?;
    let publish = amqp::confirm_channel(&connection).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for service in SERVICES {
        let channel = connection.create_channel().await?;
        amqp::declare_command_queue(&channel, names, service).await?;
        channel.basic_qos(512, BasicQosOptions::default()).await?;
        let mut consumer = channel
            .basic_consume(
                names.command_queue(service).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let publish = publish.clone();
        tasks.spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let publish = publish.clone();
                tokio::spawn(async move {
                    let command_id = amqp::header_text(&delivery.properties, headers::COMMAND_ID)
                        .unwrap_or_default();
                    let reply = Reply::approved(command_id, serde_json::Map::new());
                    let body = serde_json::to_vec(&reply).unwrap_or_default();
                    let mut properties = json_properties(&[]);
                    if let Some(c) = delivery.properties.correlation_id() {
                        properties = properties.with_correlation_id(c.clone());
                    }
                    if let Some(reply_to) = delivery.properties.reply_to() {
                        let _ =
                            publish_confirmed(&publish, "", reply_to.as_str(), &body, properties)
                                .await;
                    }
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                });
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// `baton bench-relay`: Baton's message flow without Baton's work — four commands in
/// order, each awaited, then the result, then the ack.
pub async fn relay(
    amqp_url: &str,
    tls: &amqp::TlsOptions,
    names: &Names,
    concurrency: u16,
) -> anyhow::Result<()> {
    let connection = amqp::connect(
        amqp_url,
        &format!("baton bench relay {}", names.prefix()),
        tls,
    )
    .await?;
    let setup = connection.create_channel().await?;
    amqp::declare_core(&setup, names).await?;
    for service in SERVICES {
        amqp::declare_command_queue(&setup, names, service).await?;
    }
    let reply_queue = names.reply_queue(&format!(
        "relay-{}",
        &Uuid::new_v4().simple().to_string()[..8]
    ));
    let replies_channel = connection.create_channel().await?;
    let (_, mut replies) = amqp::consume_exclusive(&replies_channel, &reply_queue).await?;
    let waiting: Waiting = Arc::default();
    let router = waiting.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = replies.next().await {
            let id = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default();
            if let Some(tx) = router.lock().ok().and_then(|mut m| m.remove(&id)) {
                let _ = tx.send(());
            }
        }
    });
    let publish = amqp::confirm_channel(&connection).await?;
    let consume = connection.create_channel().await?;
    consume
        .basic_qos(concurrency, BasicQosOptions::default())
        .await?;
    let mut requests = consume
        .basic_consume(
            names.requests_queue().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let names = Arc::new(names.clone());
    let reply_queue = Arc::new(reply_queue);
    while let Some(Ok(delivery)) = requests.next().await {
        let (publish, waiting, names, reply_queue) = (
            publish.clone(),
            waiting.clone(),
            names.clone(),
            reply_queue.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            for service in SERVICES {
                let correlation = Uuid::new_v4().to_string();
                let (tx, rx) = oneshot::channel();
                if let Ok(mut m) = waiting.lock() {
                    m.insert(correlation.clone(), tx);
                }
                let properties = json_properties(&[(headers::COMMAND_ID, service)])
                    .with_correlation_id(correlation.as_str().into())
                    .with_reply_to(reply_queue.as_str().into());
                // The request body stands in for a command: about the same size.
                if publish_confirmed(
                    &publish,
                    "",
                    &names.command_queue(service),
                    &delivery.data,
                    properties,
                )
                .await
                .is_err()
                {
                    return;
                }
                if rx.await.is_err() {
                    return;
                }
            }
            let payment_id = baton_contract::PaymentRequest::sniff_payment_id(&delivery.data)
                .unwrap_or_default();
            let result = crate::saga::rejected(
                payment_id,
                format!("bench relay {} ms", started.elapsed().as_millis()),
            );
            let result = baton_contract::PaymentResult {
                status: baton_contract::Status::Completed,
                reason: None,
                detail: None,
                ..result
            };
            let body = serde_json::to_vec(&result).unwrap_or_default();
            let mut properties = json_properties(&[]);
            if let Some(c) = delivery.properties.correlation_id() {
                properties = properties.with_correlation_id(c.clone());
            }
            let exchange = names.payments_exchange();
            let to_exchange = publish_confirmed(
                &publish,
                &exchange,
                "result.completed",
                &body,
                properties.clone(),
            );
            let to_client = async {
                match delivery.properties.reply_to() {
                    Some(r) => {
                        publish_confirmed(&publish, "", r.as_str(), &body, properties.clone()).await
                    }
                    None => Ok(()),
                }
            };
            let (a, b) = tokio::join!(to_exchange, to_client);
            if a.is_ok() && b.is_ok() {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_by_its_port_only_when_it_listens() {
        // Two rows of /proc/net/tcp: 127.0.0.1:5672 listening (0A), and a connection
        // from port 5672's neighbour 5691 (01, established), as the kernel prints them.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 41234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:163B 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 51234 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(listening_inodes(table, 5672), vec![41234]);
        assert_eq!(listening_inodes(table, 5691), Vec::<u64>::new());
        assert_eq!(listening_inodes("", 5672), Vec::<u64>::new());
    }

    #[test]
    fn the_process_listening_on_a_port_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
        drop(listener);
        assert_eq!(listener_pid(port), None, "nobody listens there any more");
        // This test process is not a RabbitMQ node, so it is no broker either.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            broker_pid(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
            None
        );
        assert_eq!(
            broker_pid("amqp://guest:guest@broker.example:5672/%2f"),
            None
        );
    }

    #[test]
    fn counters_sum_every_series_of_one_name_only() {
        let exposition = "\
# HELP baton_parked_total Payments parked
# TYPE baton_parked_total counter
baton_parked_total{step=\"authorization\"} 3
baton_parked_total{step=\"risk\"} 4
baton_parked_totally_other 100
baton_step_timeouts_total{step=\"risk\"} 7
baton_payments_received_total 12
";
        assert_eq!(counter_sum(exposition, "baton_parked_total"), 7);
        assert_eq!(counter_sum(exposition, "baton_step_timeouts_total"), 7);
        assert_eq!(counter_sum(exposition, "baton_payments_received_total"), 12);
        assert_eq!(counter_sum(exposition, "baton_dead_lettered_total"), 0);
    }
}
