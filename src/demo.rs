//! `baton demo`: the whole pipeline on one machine, for a first look. It starts the four
//! reference services and an orchestrator inside this process on a fresh prefix, pushes a
//! mixed batch of test payments through RabbitMQ like any client would, and prints what
//! came back. It is a tool for people, not part of the orchestrator.

use crate::cli::DemoArgs;
use crate::client::{Client, Received};
use crate::orchestrator::{self, Settings};
use crate::testcards::{mixed_batch, TestCard};
use anyhow::Context;
use baton_contract::{amqp, Names, Status};
use baton_services::{ServiceConfig, ServiceKind};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What a batch of payments gave.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// Requests published (and confirmed by the broker).
    pub sent: usize,
    /// Results received, one per payment at most.
    pub results: usize,
    /// Payments without a result when the wait ended.
    pub missing: usize,
    /// Results received for a payment that already had one.
    pub duplicates: usize,
    /// Results whose status or reason differ from the test card's documented outcome.
    pub unexpected: usize,
    /// Count of results by `(status, reason)`.
    pub by_outcome: BTreeMap<(String, String), usize>,
    /// End-to-end latencies (publish → result), sorted.
    pub latencies: Vec<Duration>,
    /// Wall time from first publish to last result.
    pub elapsed: Duration,
}

impl BatchReport {
    /// The `q` quantile (0–1) of the end-to-end latency.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }
}

/// Publishes one request per test card in `cards` (with at most `in_flight` unconfirmed
/// publishes at once), waits up to `wait` for every result, and checks each against the
/// card's documented outcome. `progress` prints a live counter on stderr.
pub async fn run_batch(
    client: &mut Client,
    cards: &[TestCard],
    wait: Duration,
    progress: bool,
) -> anyhow::Result<BatchReport> {
    let mut expected: HashMap<String, TestCard> = HashMap::with_capacity(cards.len());
    let mut bodies = Vec::with_capacity(cards.len());
    for card in cards {
        let id = Uuid::new_v4().to_string();
        bodies.push((
            id.clone(),
            serde_json::to_vec(&card.request_with_id(id.parse()?))?,
        ));
        expected.insert(id, *card);
    }

    let started = Instant::now();
    let mut sent_at: HashMap<String, Instant> = HashMap::with_capacity(cards.len());
    let publisher = client.publisher();
    let mut publishes = tokio::task::JoinSet::new();
    for (id, body) in bodies {
        sent_at.insert(id.clone(), Instant::now());
        let publisher = publisher.clone();
        publishes.spawn(async move { publisher.publish(&body, &id).await });
        // Keep a bounded number of publishes awaiting their confirm.
        while publishes.len() >= 128 {
            publishes.join_next().await.expect("not empty")??;
        }
    }
    while let Some(done) = publishes.join_next().await {
        done??;
    }

    let mut report = BatchReport {
        sent: cards.len(),
        ..BatchReport::default()
    };
    let mut seen: HashMap<String, ()> = HashMap::with_capacity(cards.len());
    let deadline = tokio::time::Instant::now() + wait;
    let mut last_print = Instant::now();
    while seen.len() < cards.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(Received {
            result,
            correlation_id,
            at,
            ..
        }) = client.next_result(left).await
        else {
            break;
        };
        let Some(id) = correlation_id.filter(|id| expected.contains_key(id)) else {
            continue;
        };
        if seen.insert(id.clone(), ()).is_some() {
            report.duplicates += 1;
            continue;
        }
        report.results += 1;
        if let Some(sent) = sent_at.get(&id) {
            report.latencies.push(at.duration_since(*sent));
        }
        let card = expected[&id];
        let want = card.expected();
        match result {
            Some(result) => {
                let reason = result.reason.clone().unwrap_or_else(|| "-".into());
                *report
                    .by_outcome
                    .entry((result.status.as_str().to_owned(), reason))
                    .or_default() += 1;
                if result.status != want.status || result.reason.as_deref() != want.reason {
                    report.unexpected += 1;
                }
            }
            None => report.unexpected += 1,
        }
        if progress
            && (last_print.elapsed() > Duration::from_millis(100) || seen.len() == cards.len())
        {
            last_print = Instant::now();
            eprint!("\r  results: {:>6} / {}", seen.len(), cards.len());
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    report.elapsed = started.elapsed();
    report.missing = cards.len() - seen.len();
    report.latencies.sort();
    Ok(report)
}

/// Prints a report as a table.
pub fn print_report(report: &BatchReport) {
    println!("{:<12} {:<26} {:>8}", "status", "reason", "payments");
    println!("{}", "-".repeat(48));
    for ((status, reason), count) in &report.by_outcome {
        println!("{status:<12} {reason:<26} {count:>8}");
    }
    println!("{}", "-".repeat(48));
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "sent {}  results {}  missing {}  duplicates {}  unexpected {}",
        report.sent, report.results, report.missing, report.duplicates, report.unexpected
    );
    println!(
        "throughput {:.0} payments/s   end-to-end p50 {} ms   p99 {} ms   max {} ms",
        report.results as f64 / secs,
        report.latency_quantile(0.50).as_millis(),
        report.latency_quantile(0.99).as_millis(),
        report
            .latencies
            .last()
            .copied()
            .unwrap_or_default()
            .as_millis(),
    );
}

/// `baton demo`.
pub async fn run(amqp_url: &str, args: DemoArgs) -> anyhow::Result<i32> {
    let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let names = Names::new(format!("demo-{id}"));
    let ledger_file = std::env::temp_dir().join(format!("baton-demo-{id}.db"));
    let ledger_url = args
        .ledger_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", ledger_file.display()));
    eprintln!(
        "baton demo: prefix {}, broker {}, {} payments",
        names.prefix(),
        amqp::redact_url(amqp_url),
        args.payments
    );

    let mut services = Vec::new();
    for kind in ServiceKind::ALL {
        let config = ServiceConfig {
            amqp_url: amqp_url.to_owned(),
            prefix: names.prefix().to_owned(),
            concurrency: 64,
            ledger_url: ledger_url.clone(),
            ..ServiceConfig::default()
        };
        services.push(
            baton_services::start(kind, config)
                .await
                .with_context(|| format!("starting the {} service", kind.name()))?,
        );
    }
    let journal_file = std::env::temp_dir().join(format!("baton-demo-{id}-journal.db"));
    let orchestrator = orchestrator::start(Settings::new(
        amqp_url,
        names.prefix(),
        format!("sqlite://{}", journal_file.display()),
    ))
    .await?;
    eprintln!("  four services and one orchestrator running; publishing...");

    let mut client = Client::connect(amqp_url, names.clone()).await?;
    let cards = mixed_batch(args.payments);
    let report = run_batch(&mut client, &cards, Duration::from_secs(120), true).await?;
    print_report(&report);

    client.close().await;
    orchestrator.shutdown().await?;
    for service in services {
        service.shutdown().await?;
    }
    if !args.keep {
        let connection = amqp::connect(amqp_url, "baton demo cleanup").await?;
        let channel = connection.create_channel().await?;
        let service_names: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.name()).collect();
        let parking: Vec<u64> = crate::workflow::Workflow::builtin()
            .parking()
            .tiers
            .iter()
            .map(|d| d.as_millis() as u64)
            .collect();
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
    let all_good = report.missing == 0 && report.duplicates == 0 && report.unexpected == 0;
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
