//! `baton load`: a load generator that talks to an already running Baton like any client
//! (publish with confirms, results on its own reply queue), at a fixed number of payments
//! in flight or a fixed rate, and checks that every payment got exactly one result.
//!
//! The demo and the benchmark drive their batches through the same engine.

use crate::client::{Client, Received};
use crate::testcards::{mixed_batch, TestCard};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How payments are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Keep this many payments published and not yet answered.
    InFlight(usize),
    /// Publish this many payments per second, whatever the answers.
    Rate(f64),
}

/// What a load run gave.
#[derive(Debug, Default, Serialize)]
pub struct LoadReport {
    /// Requests published and confirmed by the broker.
    pub sent: usize,
    /// Payments that got a result.
    pub results: usize,
    /// Payments without a result when the wait ended.
    pub missing: usize,
    /// Results received for a payment that already had one.
    pub duplicates: usize,
    /// Results whose status or reason differ from the test card's documented outcome.
    pub unexpected: usize,
    /// Payments per second, from first publish to last result.
    pub payments_per_s: f64,
    /// End-to-end latency (publish → result) quantiles, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Count of results by `(status, reason)`.
    #[serde(serialize_with = "outcomes_as_map")]
    pub by_outcome: BTreeMap<(String, String), usize>,
    /// Sorted latencies.
    #[serde(skip)]
    pub latencies: Vec<Duration>,
    /// First publish to last result.
    #[serde(skip)]
    pub elapsed: Duration,
}

fn outcomes_as_map<S: serde::Serializer>(
    outcomes: &BTreeMap<(String, String), usize>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let flat: BTreeMap<String, usize> = outcomes
        .iter()
        .map(|((status, reason), n)| {
            let key = if reason == "-" {
                status.clone()
            } else {
                format!("{status}/{reason}")
            };
            (key, *n)
        })
        .collect();
    serde::Serialize::serialize(&flat, s)
}

impl LoadReport {
    /// The `q` quantile (0–1) of the end-to-end latency.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }

    /// Every payment got exactly one result with its documented outcome.
    pub fn exactly_once(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.unexpected == 0
    }

    fn finish(&mut self) {
        self.latencies.sort();
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        self.p50_ms = ms(self.latency_quantile(0.50));
        self.p90_ms = ms(self.latency_quantile(0.90));
        self.p99_ms = ms(self.latency_quantile(0.99));
        self.max_ms = ms(self.latencies.last().copied().unwrap_or_default());
        self.payments_per_s =
            (self.results as f64 / self.elapsed.as_secs_f64().max(1e-9) * 10.0).round() / 10.0;
    }
}

/// The cards of a run: the documented mix of every test card, or all good ones.
pub fn cards(payments: usize, mixed: bool) -> Vec<TestCard> {
    if mixed {
        mixed_batch(payments)
    } else {
        vec![TestCard::Good; payments]
    }
}

/// Runs `cards` through Baton at `pace`, waiting up to `wait` after the last publish for
/// the remaining results, then `grace` more to catch duplicates. `progress` draws a
/// counter on stderr.
pub async fn run(
    client: &mut Client,
    cards: &[TestCard],
    pace: Pace,
    wait: Duration,
    grace: Duration,
    progress: bool,
) -> anyhow::Result<LoadReport> {
    let publisher = client.publisher();
    let mut queue: Vec<(String, TestCard)> = cards
        .iter()
        .rev()
        .map(|card| (Uuid::new_v4().to_string(), *card))
        .collect();
    let mut expected: HashMap<String, TestCard> = HashMap::with_capacity(cards.len());
    let mut sent_at: HashMap<String, Instant> = HashMap::with_capacity(cards.len());
    let mut answered: HashMap<String, ()> = HashMap::with_capacity(cards.len());
    let mut report = LoadReport::default();
    let mut confirms = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut bar = Progress::new(progress, cards.len());
    let mut ticker = match pace {
        Pace::Rate(rate) => Some(tokio::time::interval(Duration::from_secs_f64(
            1.0 / rate.max(0.001),
        ))),
        Pace::InFlight(_) => None,
    };
    let mut last_publish = Instant::now();

    loop {
        let outstanding = sent_at.len() - answered.len();
        let may_publish = !queue.is_empty()
            && match pace {
                Pace::InFlight(k) => outstanding < k.max(1),
                Pace::Rate(_) => true,
            };
        if may_publish && ticker.is_none() {
            publish_next(
                &mut queue,
                &publisher,
                &mut confirms,
                &mut expected,
                &mut sent_at,
            )?;
            last_publish = Instant::now();
            continue;
        }
        if queue.is_empty() && answered.len() == sent_at.len() {
            break;
        }
        let deadline = if queue.is_empty() {
            last_publish + wait
        } else {
            Instant::now() + wait
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::select! {
            _ = async { ticker.as_mut().expect("rate pacing").tick().await }, if may_publish && ticker.is_some() => {
                publish_next(&mut queue, &publisher, &mut confirms, &mut expected, &mut sent_at)?;
                last_publish = Instant::now();
            }
            Some(done) = confirms.join_next(), if !confirms.is_empty() => {
                done??;
            }
            received = client.next_result(left) => {
                let Some(received) = received else { break };
                record(&mut report, received, &expected, &sent_at, &mut answered);
                bar.tick(answered.len());
            }
        }
    }
    while let Some(done) = confirms.join_next().await {
        done??;
    }
    report.elapsed = started.elapsed();
    // Anything else that comes now is a duplicate.
    let grace_end = Instant::now() + grace;
    while let Some(received) = client
        .next_result(grace_end.saturating_duration_since(Instant::now()))
        .await
    {
        record(&mut report, received, &expected, &sent_at, &mut answered);
    }
    bar.done();
    report.sent = sent_at.len();
    report.missing = sent_at.len() - answered.len();
    report.finish();
    Ok(report)
}

fn publish_next(
    queue: &mut Vec<(String, TestCard)>,
    publisher: &crate::client::Publisher,
    confirms: &mut tokio::task::JoinSet<Result<(), baton_amqp::BrokerError>>,
    expected: &mut HashMap<String, TestCard>,
    sent_at: &mut HashMap<String, Instant>,
) -> anyhow::Result<()> {
    let Some((id, card)) = queue.pop() else {
        return Ok(());
    };
    let body = serde_json::to_vec(&card.request_with_id(id.parse()?))?;
    expected.insert(id.clone(), card);
    sent_at.insert(id.clone(), Instant::now());
    let publisher = publisher.clone();
    confirms.spawn(async move { publisher.publish(&body, &id).await });
    Ok(())
}

fn record(
    report: &mut LoadReport,
    received: Received,
    expected: &HashMap<String, TestCard>,
    sent_at: &HashMap<String, Instant>,
    answered: &mut HashMap<String, ()>,
) {
    let Some(id) = received
        .correlation_id
        .filter(|id| expected.contains_key(id))
    else {
        return;
    };
    if answered.insert(id.clone(), ()).is_some() {
        report.duplicates += 1;
        return;
    }
    report.results += 1;
    if let Some(sent) = sent_at.get(&id) {
        report.latencies.push(received.at.duration_since(*sent));
    }
    let want = expected[&id].expected();
    match received.result {
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
}

/// A one-line progress bar on stderr.
struct Progress {
    on: bool,
    total: usize,
    last: Instant,
}

impl Progress {
    fn new(on: bool, total: usize) -> Self {
        Self {
            on,
            total,
            last: Instant::now(),
        }
    }

    fn tick(&mut self, done: usize) {
        if !self.on || (self.last.elapsed() < Duration::from_millis(100) && done < self.total) {
            return;
        }
        self.last = Instant::now();
        let width = 40;
        let filled = done * width / self.total.max(1);
        eprint!(
            "\r  [{}{}] {done:>7} / {}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.total
        );
        let _ = std::io::stderr().flush();
    }

    fn done(&self) {
        if self.on {
            eprintln!();
        }
    }
}

/// Prints a report as a table.
pub fn print_report(report: &LoadReport) {
    println!("{:<12} {:<26} {:>8}", "status", "reason", "payments");
    println!("{}", "-".repeat(48));
    for ((status, reason), count) in &report.by_outcome {
        println!("{status:<12} {reason:<26} {count:>8}");
    }
    println!("{}", "-".repeat(48));
    println!(
        "sent {}  results {}  missing {}  duplicates {}  unexpected {}",
        report.sent, report.results, report.missing, report.duplicates, report.unexpected
    );
    println!(
        "throughput {:.1} payments/s   end-to-end p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        report.payments_per_s, report.p50_ms, report.p90_ms, report.p99_ms, report.max_ms
    );
}
