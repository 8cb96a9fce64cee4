//! Observability end to end: `/metrics` of the orchestrator and the services (checked by
//! `promtool` and against what a batch did), `/readyz` following the broker connection,
//! a real Prometheus scraping the orchestrator, one `traceparent` followed through the
//! logs of five processes, and the saga events of one payment in order.

use crate::app::{spawn_app, spawn_services, Store, TestApp, RESULT_WAIT};
use baton::demo::run_batch;
use baton::saga::SagaEvent;
use baton::testcards::{mixed_batch, TestCard};
use baton_amqp as amqp;
use baton_contract::{PaymentResult, Status};
use baton_services::ServiceKind;
use baton_testkit::{
    amqp_url, free_addr, http_get, http_get_ok, scratch_hex, tail, workspace_binary, Exposition,
    Process, ScratchDir, READY_WAIT,
};
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Tools from Debian's `prometheus` package.

fn prometheus_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} is not installed: install Debian's `prometheus` package \
             (apt-get install -y --no-install-recommends prometheus), which ships \
             /usr/bin/prometheus and /usr/bin/promtool"
        )
    })
}

/// `promtool check metrics` on the exposition text (through stdin); fails the test with
/// promtool's findings.
fn promtool_check_metrics(text: &str, whose: &str) {
    let mut child = Command::new(prometheus_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics refused the /metrics of {whose}:\n{}{}\n--- exposition:\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

// ---------------------------------------------------------------------------------------
// 1. /metrics after a mixed batch.

/// What a batch of test cards must leave in the metrics, from the documented outcomes.
#[derive(Default)]
struct Expected {
    /// `baton_payment_results_total` by (status, reason).
    results: BTreeMap<(String, String), f64>,
    /// `baton_step_duration_seconds_count` by step: one per decided execute.
    step_decisions: BTreeMap<String, f64>,
    /// `baton_step_attempts_total` by (step, outcome): executes and compensations.
    attempts: BTreeMap<(String, String), f64>,
    /// `baton_compensations_total{result="compensated"}` by step.
    compensated: BTreeMap<String, f64>,
    /// `baton_service_commands_total` by (service, action, outcome).
    commands: BTreeMap<(String, String, String), f64>,
}

impl Expected {
    fn of(cards: &[TestCard]) -> Self {
        let mut want = Expected::default();
        for card in cards {
            let e = card.expected();
            *want
                .results
                .entry((e.status.as_str().into(), e.reason.unwrap_or("").into()))
                .or_default() += 1.0;
            // The default workflow: each step's service has the step's name.
            for (step, outcome) in e.steps {
                let (step, outcome) = (step.to_string(), outcome.to_string());
                match outcome.as_str() {
                    "approved" | "declined" => {
                        *want.step_decisions.entry(step.clone()).or_default() += 1.0;
                        *want
                            .attempts
                            .entry((step.clone(), outcome.clone()))
                            .or_default() += 1.0;
                        *want
                            .commands
                            .entry((step, "execute".into(), outcome))
                            .or_default() += 1.0;
                    }
                    "compensated" => {
                        *want.compensated.entry(step.clone()).or_default() += 1.0;
                        *want
                            .attempts
                            .entry((step.clone(), "approved".into()))
                            .or_default() += 1.0;
                        *want
                            .commands
                            .entry((step, "compensate".into(), "approved".into()))
                            .or_default() += 1.0;
                    }
                    other => panic!("unexpected documented outcome {other}"),
                }
            }
        }
        want
    }
}

#[tokio::test]
async fn metrics_after_a_mixed_batch_pass_promtool_and_count_exactly_what_the_batch_did() {
    let mut app = spawn_services(Store::Sqlite, &[]).await;
    let mut service_ports = Vec::new();
    for kind in ServiceKind::ALL {
        service_ports.push((kind, app.start_service_with_http(kind).await));
    }
    let settings = app.orchestrator_settings();
    app.start_orchestrator(settings).await;
    let http = app.orchestrator().http_addr().expect("an HTTP port");

    let cards = mixed_batch(40);
    let report = run_batch(&mut app.client, &cards, RESULT_WAIT, false)
        .await
        .expect("the batch runs");
    assert_eq!(
        (
            report.results,
            report.missing,
            report.duplicates,
            report.unexpected
        ),
        (40, 0, 0, 0),
        "{report:?}"
    );
    let want = Expected::of(&cards);

    // A result is counted once it is published and its request acked, and a payment
    // leaves the in-flight gauge when its task ends: both a moment after the client got
    // the result, with no event to wait on. Poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, metrics) = loop {
        let text = http_get_ok(http, "/metrics").await;
        let metrics = Exposition::parse(&text);
        let settled = metrics.sum("baton_payment_results_total") == 40.0
            && metrics.get("baton_inflight_payments", &[]) == Some(0.0);
        if settled || Instant::now() > deadline {
            break (text, metrics);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    promtool_check_metrics(&text, "the orchestrator");

    assert_eq!(
        metrics.value("baton_payments_received_total", &[]),
        40.0,
        "{text}"
    );
    let good = cards.iter().filter(|c| **c == TestCard::Good).count() as f64;
    assert_eq!(
        metrics.value(
            "baton_payment_results_total",
            &[("status", "completed"), ("reason", "")]
        ),
        good
    );
    // Every (status, reason) exactly as documented, and nothing else (no failed, no
    // rejected).
    let results: BTreeMap<(String, String), f64> = metrics
        .all("baton_payment_results_total")
        .filter(|s| s.value != 0.0)
        .map(|s| {
            (
                (s.labels["status"].clone(), s.labels["reason"].clone()),
                s.value,
            )
        })
        .collect();
    assert_eq!(results, want.results, "{text}");
    assert!(want.results.len() >= 8, "the batch holds every test card");
    assert_eq!(metrics.value("baton_inflight_payments", &[]), 0.0, "{text}");

    // The end-to-end histogram saw every payment.
    assert_eq!(
        metrics.value("baton_payment_duration_seconds_count", &[]),
        40.0
    );
    assert_eq!(
        metrics.value("baton_payment_duration_seconds_bucket", &[("le", "+Inf")]),
        40.0
    );
    assert!(metrics.value("baton_payment_duration_seconds_sum", &[]) > 0.0);
    // Each step's histogram saw each decision of that step.
    for (step, count) in &want.step_decisions {
        assert_eq!(
            metrics.value("baton_step_duration_seconds_count", &[("step", step)]),
            *count,
            "step {step}"
        );
        assert_eq!(
            metrics.value(
                "baton_step_duration_seconds_bucket",
                &[("step", step), ("le", "+Inf")]
            ),
            *count,
            "step {step}"
        );
    }
    // Commands by outcome: exactly the answers the cards give, no error, timeout or
    // breaker_open; no retry, no timeout, no fallback, no parking.
    let attempts: BTreeMap<(String, String), f64> = metrics
        .all("baton_step_attempts_total")
        .filter(|s| s.value != 0.0)
        .map(|s| {
            (
                (s.labels["step"].clone(), s.labels["outcome"].clone()),
                s.value,
            )
        })
        .collect();
    assert_eq!(attempts, want.attempts, "{text}");
    for (step, count) in &want.compensated {
        assert_eq!(
            metrics.value(
                "baton_compensations_total",
                &[("step", step), ("result", "compensated")]
            ),
            *count
        );
    }
    assert_eq!(
        metrics.sum("baton_compensations_total"),
        want.compensated.values().sum::<f64>(),
        "no failed compensation"
    );
    for quiet in [
        "baton_step_retries_total",
        "baton_step_timeouts_total",
        "baton_step_fallbacks_total",
        "baton_parked_total",
        "baton_dead_lettered_total",
        "baton_attention_total",
    ] {
        assert_eq!(metrics.sum(quiet), 0.0, "{quiet} in\n{text}");
    }
    for zero in [
        "baton_broker_reconnects_total",
        "baton_unknown_replies_total",
        "baton_journal_errors_total",
        "baton_events_dropped_total",
    ] {
        assert_eq!(metrics.value(zero, &[]), 0.0, "{zero}");
    }
    for kind in ServiceKind::ALL {
        assert_eq!(
            metrics.value("baton_circuit_breaker_state", &[("service", kind.name())]),
            0.0,
            "breaker of {kind} closed"
        );
    }

    // Each service: its own /metrics, valid, counting its own commands. A service counts
    // a command before publishing the reply, so every count is final by now.
    for (kind, addr) in service_ports {
        let text = http_get_ok(addr, "/metrics").await;
        promtool_check_metrics(&text, &format!("the {kind} service"));
        let metrics = Exposition::parse(&text);
        let service = kind.name();
        let commands: BTreeMap<(String, String, String), f64> = metrics
            .all("baton_service_commands_total")
            .filter(|s| s.value != 0.0)
            .map(|s| {
                (
                    (
                        s.labels["service"].clone(),
                        s.labels["action"].clone(),
                        s.labels["outcome"].clone(),
                    ),
                    s.value,
                )
            })
            .collect();
        let want_commands: BTreeMap<_, _> = want
            .commands
            .iter()
            .filter(|((s, _, _), _)| s == service)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert!(!want_commands.is_empty(), "the batch reaches {service}");
        assert_eq!(commands, want_commands, "{service}:\n{text}");
        // The usual series exist from the start, at 0 when nothing happened.
        assert!(metrics
            .get(
                "baton_service_commands_total",
                &[
                    ("service", service),
                    ("action", "execute"),
                    ("outcome", "error")
                ]
            )
            .is_some_and(|v| v == 0.0));
        let handled: f64 = want_commands.values().sum();
        assert_eq!(
            metrics.value(
                "baton_service_handle_duration_seconds_count",
                &[("service", service)]
            ),
            handled,
            "{service}"
        );
        assert_eq!(
            metrics.value(
                "baton_service_duplicate_commands_total",
                &[("service", service)]
            ),
            0.0
        );
        assert_eq!(metrics.value("baton_broker_reconnects_total", &[]), 0.0);
        assert_eq!(http_get_ok(addr, "/readyz").await, "ready");
        assert_eq!(http_get_ok(addr, "/healthz").await, "ok");
    }
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// 2. /readyz follows the broker connection, cut by a proxy.

/// A TCP proxy to the broker that can be cut: every forwarded connection dropped, and
/// new ones accepted and closed at once, until it is restored.
struct CuttableProxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    /// Connections closed on arrival while cut (reconnect attempts).
    refused: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let (open, open_rx) = watch::channel(true);
        let (refused_tx, refused) = watch::channel(0);
        let task = tokio::spawn(async move {
            // Dropped with the task: aborting the proxy drops every forwarded connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                if !*open_rx.borrow() {
                    refused_tx.send_modify(|n| *n += 1);
                    drop(client);
                    continue;
                }
                let mut open = open_rx.clone();
                let upstream = upstream.clone();
                connections.spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        // Cut: both sockets are closed as this task ends.
                        _ = open.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self {
            addr,
            open,
            refused,
            task,
        }
    }

    /// `url` with its host and port replaced by the proxy's.
    fn url_through(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}{}{path}", self.addr)
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The broker's `host:port` in an AMQP URL.
fn broker_authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}

/// Polls `/readyz` until its status is `want` (there is no event across HTTP).
async fn readyz_until(addr: SocketAddr, want: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = http_get(addr, "/readyz").await.expect("/readyz answers");
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} ({body}) after {limit:?}, wanted {want}"
        );
        assert_eq!(http_get_ok(addr, "/healthz").await, "ok", "alive meanwhile");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn readyz_turns_503_with_a_reason_while_the_broker_is_unreachable_and_back() {
    let mut app = spawn_services(Store::Sqlite, &ServiceKind::ALL).await;
    let proxy = CuttableProxy::start(broker_authority(&amqp_url())).await;
    let mut settings = app.orchestrator_settings();
    settings.amqp_url = proxy.url_through(&settings.amqp_url);
    app.start_orchestrator(settings).await;
    let http = app.orchestrator().http_addr().expect("an HTTP port");

    assert_eq!(http_get_ok(http, "/readyz").await, "ready");
    assert_eq!(http_get_ok(http, "/healthz").await, "ok");
    let (result, body) = app.pay(TestCard::Good).await;
    assert_eq!(result.status, Status::Completed, "{body}");

    proxy.cut();
    let reason = readyz_until(http, 503, Duration::from_secs(30)).await;
    assert!(
        reason.starts_with("not ready: ") && reason.len() > "not ready: ".len(),
        "503 with a reason: {reason}"
    );
    // It keeps trying, and a failed attempt does not make it ready.
    let mut refused = proxy.refused.clone();
    let before = *refused.borrow_and_update();
    tokio::time::timeout(
        Duration::from_secs(30),
        refused.wait_for(|n| *n >= before + 2),
    )
    .await
    .expect("the orchestrator tries to reconnect")
    .expect("the proxy runs");
    let (status, body) = http_get(http, "/readyz").await.unwrap();
    assert_eq!(
        status, 503,
        "still not ready after failed reconnects: {body}"
    );
    assert_eq!(http_get_ok(http, "/healthz").await, "ok");

    // A request published meanwhile waits in the queue.
    let waiting = Uuid::new_v4();
    let request = serde_json::to_vec(&TestCard::Good.request_with_id(waiting)).unwrap();
    app.send(&request, &waiting.to_string()).await;

    proxy.restore();
    assert_eq!(
        readyz_until(http, 200, Duration::from_secs(30)).await,
        "ready"
    );
    assert_eq!(http_get_ok(http, "/healthz").await, "ok");
    let received = app.result_for(&waiting.to_string()).await;
    let result = received.result.expect("a well-formed result");
    assert_eq!(
        (result.payment_id, result.status),
        (waiting, Status::Completed)
    );
    let (result, body) = app.pay(TestCard::Good).await;
    assert_eq!(result.status, Status::Completed, "{body}");

    let metrics = Exposition::parse(&http_get_ok(http, "/metrics").await);
    assert!(metrics.value("baton_broker_reconnects_total", &[]) >= 1.0);
    app.cleanup().await;
    drop(proxy);
}

// ---------------------------------------------------------------------------------------
// 3. A real Prometheus server scrapes the orchestrator.

/// A Prometheus server process, killed (and its directory removed) on drop.
struct PrometheusServer {
    process: Process,
    addr: SocketAddr,
    /// Its configuration and data; removed after the process is gone.
    _dir: ScratchDir,
}

impl PrometheusServer {
    fn start(target: SocketAddr) -> Self {
        let dir = ScratchDir::new("prometheus");
        let config = dir.file(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: baton-orchestrator\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        );
        let addr = free_addr();
        let mut command = Command::new(prometheus_tool("prometheus"));
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let process = Process::spawn("prometheus", command, dir.join("prometheus.err"));
        Self {
            process,
            addr,
            _dir: dir,
        }
    }

    /// GETs an API path until `done` returns a value (the server has no push API).
    async fn poll<T>(
        &mut self,
        path: &str,
        limit: Duration,
        mut done: impl FnMut(&serde_json::Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        loop {
            if let Some(status) = self.process.child.try_wait().unwrap() {
                panic!(
                    "prometheus exited with {status}:\n{}",
                    self.process.log_text()
                );
            }
            if let Ok((200, body)) = http_get(self.addr, path).await {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) {
                    if let Some(value) = done(&json) {
                        return value;
                    }
                }
                last = body;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} on prometheus: not as expected after {limit:?}; last answer: \
                 {last}\nprometheus log:\n{}",
                self.process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Percent-encodes a PromQL query for a URL's query string.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query's only series, if it has exactly one.
fn single_value(json: &serde_json::Value) -> Option<(String, serde_json::Value)> {
    let result = json["data"]["result"].as_array()?;
    match result.as_slice() {
        [series] => Some((
            series["value"][1].as_str()?.to_owned(),
            series["metric"].clone(),
        )),
        _ => None,
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_orchestrator_and_sees_the_payments() {
    let mut app = spawn_app().await;
    let http = app.orchestrator().http_addr().expect("an HTTP port");
    let mut prometheus = PrometheusServer::start(http);

    let cards = mixed_batch(10);
    let report = run_batch(&mut app.client, &cards, RESULT_WAIT, false)
        .await
        .expect("the batch runs");
    assert_eq!((report.results, report.unexpected), (10, 0), "{report:?}");

    let scrape_url = format!("http://{http}/metrics");
    let target = prometheus
        .poll("/api/v1/targets", Duration::from_secs(60), |json| {
            json["data"]["activeTargets"]
                .as_array()?
                .iter()
                .find(|t| t["scrapeUrl"] == scrape_url.as_str() && t["health"] == "up")
                .cloned()
        })
        .await;
    assert_eq!(target["labels"]["job"], "baton-orchestrator", "{target}");
    assert_eq!(target["labels"]["instance"], http.to_string(), "{target}");

    let query = format!(
        "/api/v1/query?query={}",
        url_encode("baton_payments_received_total")
    );
    let (_, series) = prometheus
        .poll(&query, Duration::from_secs(30), |json| {
            single_value(json).filter(|(v, _)| v == "10")
        })
        .await;
    assert_eq!(series["job"], "baton-orchestrator", "{series}");
    let good = cards.iter().filter(|c| **c == TestCard::Good).count();
    let completed = format!(
        "/api/v1/query?query={}",
        url_encode(r#"baton_payment_results_total{status="completed",reason=""}"#)
    );
    prometheus
        .poll(&completed, Duration::from_secs(30), |json| {
            single_value(json).filter(|(v, _)| *v == good.to_string())
        })
        .await;
    drop(prometheus);
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// 4. One traceparent through the logs of five processes.

/// Processes killed on drop (also when the test fails half-way).
#[derive(Default)]
struct Processes(Vec<Process>);

impl Processes {
    fn spawn(&mut self, name: &str, mut command: Command, log: PathBuf) {
        command
            .env("AMQP_URL", amqp_url())
            .env("RUST_LOG", "info")
            .env("BATON_LOG_FORMAT", "text")
            .env_remove("BATON_CRASH_AT")
            .env_remove("BATON_HTTP_ADDR");
        self.0.push(Process::spawn(name, command, log));
    }

    /// Waits until each process has logged its HTTP address and answers `/readyz` with
    /// 200, all within a minute (there is no event across processes: the log and the
    /// port are polled, bounded).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WAIT;
        for process in &mut self.0 {
            let left = deadline.saturating_duration_since(Instant::now());
            process.wait_logged_ready(left).await;
        }
    }
}

#[tokio::test]
async fn one_traceparent_is_in_the_logs_of_the_orchestrator_and_all_four_services() {
    let mut app = spawn_services(Store::Sqlite, &[]).await;
    let dir = ScratchDir::new("trace");
    let prefix = app.names.prefix().to_owned();

    // One card key file for risk and `baton run`, as in production.
    baton_contract::CardKeys::load_or_create(&dir.join("card.key")).unwrap();
    let card_key_file = dir.join("card.key").display().to_string();
    let mut processes = Processes::default();
    for kind in ServiceKind::ALL {
        let binary = format!("baton-{}", kind.name());
        let mut command = Command::new(workspace_binary(env!("CARGO_BIN_EXE_baton"), &binary));
        command.args(["--prefix", &prefix, "--http-addr", "127.0.0.1:0"]);
        if kind.uses_ledger() {
            command.args(["--ledger-url", &app.ledger_url]);
        }
        if kind == ServiceKind::Risk {
            command.args(["--card-key-file", &card_key_file]);
        }
        processes.spawn(&binary, command, dir.join(format!("{binary}.log")));
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command.args(["run", "--prefix", &prefix, "--http-addr", "127.0.0.1:0"]);
    command.args(["--journal-url", &app.journal_url]);
    command.args(["--card-key-file", &card_key_file]);
    processes.spawn("baton run", command, dir.join("baton.log"));
    processes.wait_ready().await;

    // Results of this prefix, with their headers, on a queue of our own.
    let connection = amqp::connect(&amqp_url(), "observability trace test", &Default::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.unwrap();
    let mut results = bound_consumer(&channel, &app, "result.*").await;

    // Hexadecimal, as a traceparent's ids are, and never masked in a log.
    let trace_id = scratch_hex(32);
    let span_id = scratch_hex(16);
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    let payment_id = Uuid::new_v4();
    let correlation = payment_id.to_string();
    let publisher = app.client.publisher();
    let properties = publisher.request_properties(&correlation);
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(traceparent.as_str().into()),
    );
    let body = serde_json::to_vec(&TestCard::Good.request_with_id(payment_id)).unwrap();
    amqp::publish_confirmed(
        publisher.channel(),
        &app.names.payments_exchange(),
        app.names.request_routing_key(),
        &body,
        properties.with_headers(headers),
    )
    .await
    .expect("publish the request");

    let received = app.result_for(&correlation).await;
    let result = received.result.expect("a well-formed result");
    assert_eq!(
        (result.payment_id, result.status),
        (payment_id, Status::Completed)
    );
    // The result carries the request's traceparent.
    let delivery = tokio::time::timeout(RESULT_WAIT, results.next())
        .await
        .expect("the result on the bound queue")
        .expect("consuming")
        .expect("a delivery");
    assert_eq!(
        amqp::header_text(&delivery.properties, "traceparent").as_deref(),
        Some(traceparent.as_str()),
        "the result's traceparent header"
    );

    // Each process logged its part before the result existed (a service before
    // replying, the orchestrator before publishing), so the logs are complete now.
    for process in &processes.0 {
        let (name, text) = (&process.name, process.log_all());
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&trace_id)).collect();
        assert!(
            !lines.is_empty(),
            "trace id {trace_id} not in the log of {name}:\n{}",
            tail(&text)
        );
        assert!(
            lines.iter().any(|l| l.contains(&correlation)),
            "{name}: the trace id comes with the payment id: {lines:?}"
        );
        assert!(
            !text.contains("4242424242424242"),
            "{name} logged a card number"
        );
    }
    drop(processes);
    let _ = connection.close(200, "done".into()).await;
    app.cleanup().await;
}

/// A server-named exclusive queue bound to the payments exchange with `key`, consumed
/// without acks.
pub(crate) async fn bound_consumer(
    channel: &lapin::Channel,
    app: &TestApp,
    key: &str,
) -> lapin::Consumer {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare a queue");
    channel
        .queue_bind(
            queue.name().as_str().into(),
            app.names.payments_exchange().as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind it");
    channel
        .basic_consume(
            queue.name().as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume it")
}

// ---------------------------------------------------------------------------------------
// 5. The saga events of one payment, in order.

#[tokio::test]
async fn the_saga_events_of_a_high_risk_payment_arrive_in_order() {
    let mut app = spawn_app().await;
    let connection = amqp::connect(
        &amqp_url(),
        "observability events test",
        &Default::default(),
    )
    .await
    .expect("connect");
    let channel = connection.create_channel().await.unwrap();
    let mut events = bound_consumer(&channel, &app, "event.#").await;

    let (result, body): (PaymentResult, String) = app.pay(TestCard::HighRisk).await;
    assert_eq!(
        (result.status, result.reason.as_deref()),
        (Status::Declined, Some("high_risk")),
        "{body}"
    );

    let mut seen = Vec::new();
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap_or_else(|_| panic!("no further event after {seen:?}"))
            .expect("consuming")
            .expect("a delivery");
        let key = delivery.routing_key.as_str().to_owned();
        let event: SagaEvent = serde_json::from_slice(&delivery.data).unwrap_or_else(|e| {
            panic!(
                "{key}: not a SagaEvent ({e}): {}",
                String::from_utf8_lossy(&delivery.data)
            )
        });
        assert_eq!(event.payment_id, result.payment_id, "{key}");
        assert_eq!(
            event.routing_key(),
            key,
            "the key names the event's step and outcome"
        );
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            Some(result.payment_id.to_string()),
            "{key}: message_id is the payment id"
        );
        let last = key == "event.payment.declined";
        seen.push((key, event));
        if last {
            break;
        }
    }
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "event.authorization.approved",
            "event.risk.declined",
            "event.authorization.compensated",
            "event.payment.declined",
        ]
    );
    let actions: Vec<&str> = seen.iter().map(|(_, e)| e.action.as_str()).collect();
    assert_eq!(actions, ["execute", "execute", "compensate", "result"]);
    assert_eq!(seen[1].1.reason.as_deref(), Some("high_risk"));
    assert_eq!(seen[3].1.reason.as_deref(), Some("high_risk"));
    // Each step event carries the step's line of the result; the final one none.
    for ((_, event), line) in seen.iter().zip(&result.steps) {
        assert_eq!(event.record.as_ref(), Some(line));
    }
    assert!(seen[3].1.record.is_none());
    let _ = connection.close(200, "done".into()).await;
    app.cleanup().await;
}

/// The README (Topology) promises `event.payment.<status>` for every result, a request
/// rejected as invalid included.
#[tokio::test]
async fn a_rejected_request_publishes_event_payment_rejected() {
    let mut app = spawn_app().await;
    let connection = amqp::connect(
        &amqp_url(),
        "observability events test",
        &Default::default(),
    )
    .await
    .expect("connect");
    let channel = connection.create_channel().await.unwrap();
    let mut events = bound_consumer(&channel, &app, "event.#").await;

    let payment_id = Uuid::new_v4();
    let mut request = TestCard::Good.request_with_id(payment_id);
    request["amount"]["minor"] = serde_json::json!(0);
    app.send(
        &serde_json::to_vec(&request).unwrap(),
        &payment_id.to_string(),
    )
    .await;
    let received = app.result_for(&payment_id.to_string()).await;
    assert_eq!(received.result.expect("a result").status, Status::Rejected);
    let delivery = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event for the rejected payment within 10 s")
        .expect("consuming")
        .expect("a delivery");
    assert_eq!(delivery.routing_key.as_str(), "event.payment.rejected");
    let _ = connection.close(200, "done".into()).await;
    app.cleanup().await;
}
