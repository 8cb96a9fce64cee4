//! The status page (`GET /`) and a payment's page, loaded in a real headless Chromium
//! against a running orchestrator: what the browser renders, and a screenshot saved as
//! a test artefact (target/test-artefacts/status-page.png).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baton::testcards::TestCard;
use baton_contract::Status;
use uuid::Uuid;

use crate::app::spawn_app;
use baton_testkit::http_get;

/// Debian's Chromium; `.ci/run` installs it.
fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).is_file() {
            return candidate.into();
        }
    }
    panic!("Chromium is not installed: apt-get install chromium (.ci/run does)");
}

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=…`), in a
/// throw-away profile, and returns its standard output. Bounded by Chromium's own
/// `--timeout` and a kill after a minute.
async fn browse(url: String, args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let profile = baton_testkit::ScratchDir::new("chromium");
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox", // tests run as root in CI; the page is our own
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--timeout=20000",
                "--window-size=1400,1100",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(&args)
            .arg(&url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromium");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            std::io::Read::read_to_string(&mut { stdout }, &mut out).map(|_| out)
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("chromium did not finish loading {url} within a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = reader.join().unwrap().unwrap();
        drop(profile);
        assert!(status.success(), "chromium exited with {status} on {url}");
        out
    })
    .await
    .unwrap()
}

fn artefact_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_renders_payments_breakers_queues_and_the_workflow_in_a_browser() {
    let mut app = spawn_app().await;
    app.start_orchestrator(app.orchestrator_settings()).await;
    let (completed, _) = app.pay(TestCard::Good).await;
    assert_eq!(completed.status, Status::Completed);

    // A customer id with markup: a browser must show it as text, never run it.
    let hostile = Uuid::new_v4();
    let mut request = TestCard::Declined.request_with_id(hostile);
    request["customer_id"] = "<img id=\"injected\" src=\"x\">".into();
    app.send(&serde_json::to_vec(&request).unwrap(), &hostile.to_string())
        .await;
    let declined = app.result_for(&hostile.to_string()).await;
    assert_eq!(declined.result.unwrap().status, Status::Declined);

    let addr: SocketAddr = app.orchestrator().http_addr().expect("an HTTP port");
    let index = format!("http://{addr}/");
    let dom = browse(index.clone(), vec!["--dump-dom".into()]).await;

    // Recent payments: both, newest first, with status and steps, the card as last four.
    let good = completed.payment_id.to_string();
    let at_good = dom
        .find(&good)
        .unwrap_or_else(|| panic!("{good} listed: {dom}"));
    let at_hostile = dom
        .find(&hostile.to_string())
        .expect("the declined one listed");
    assert!(at_hostile < at_good, "newest first");
    assert!(
        dom.contains("<td class=\"completed\">completed</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<td class=\"declined\">declined</td>"),
        "{dom}"
    );
    assert!(dom.contains("card_declined"), "the decline reason: {dom}");
    assert!(
        dom.contains("transaction approved"),
        "the completed payment's steps: {dom}"
    );
    assert!(dom.contains("•••• 4242"), "{dom}");
    assert!(!dom.contains("4242424242424242"), "no card number: {dom}");
    // Breakers, queues, the workflow.
    for service in ["authorization", "risk", "pci", "transaction"] {
        assert!(
            dom.contains(&format!(
                "<tr><td>{service}</td><td class=\"closed\">closed</td></tr>"
            )),
            "breaker of {service}: {dom}"
        );
    }
    let prefix = app.names.prefix();
    assert!(
        dom.contains(&format!("<tr><td>{prefix}.dead</td><td>0</td></tr>")),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("<tr><td>{prefix}.attention</td><td>0</td></tr>")),
        "{dom}"
    );
    assert!(dom.contains("<td id=\"parked\">0</td>"), "{dom}");
    assert!(dom.contains("<table id=\"workflow\">"), "{dom}");
    assert!(
        dom.contains("<td>5000 ms</td>"),
        "authorization's timeout: {dom}"
    );

    let shot = artefact_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(index, vec![format!("--screenshot={}", shot.display())]).await;
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );

    // The payment's own page, as HTML because the browser asks for it; the hostile
    // customer id is text in the page, not an element.
    let page = browse(
        format!("http://{addr}/payments/{hostile}"),
        vec!["--dump-dom".into()],
    )
    .await;
    assert!(page.contains("<table id=\"steps\">"), "{page}");
    assert!(
        page.contains("&lt;img id=\"injected\" src=\"x\"&gt;"),
        "{page}"
    );
    assert!(
        !page.contains("<img id=\"injected\""),
        "HTML injection: {page}"
    );
    browse(
        format!("http://{addr}/payments/{hostile}"),
        vec![format!(
            "--screenshot={}",
            artefact_dir().join("payment-page.png").display()
        )],
    )
    .await;

    // Without `Accept: text/html`, the same path is still the JSON API.
    let (status, body) = http_get(addr, &format!("/payments/{hostile}"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"customer_id\""), "{body}");

    app.cleanup().await;
}
