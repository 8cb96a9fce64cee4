//! A real Prometheus server (Debian's `prometheus` package) scrapes the orchestrator and
//! sees the payments of a batch.

use super::prometheus_tool;
use crate::app::{spawn_app, RESULT_WAIT};
use baton::demo::run_batch;
use baton::testcards::{mixed_batch, TestCard};
use baton_testkit::{free_addr, http_get, Process, ScratchDir};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

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
