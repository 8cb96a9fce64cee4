//! `baton status` (text and `--json`) and `GET /payments/<id>` on the orchestrator's HTTP
//! port show the journal of a payment.

use super::baton;
use crate::app::spawn_app;
use baton::testcards::TestCard;
use baton_contract::Status;
use baton_testkit::http_get;
use serde_json::Value;
use uuid::Uuid;

#[tokio::test]
async fn status_and_the_http_port_show_the_journal_of_a_payment() {
    let mut app = spawn_app().await;
    let (result, _) = app.pay(TestCard::Good).await;
    assert_eq!(result.status, Status::Completed);
    let id = result.payment_id.to_string();
    let journal = ["--journal-url", app.journal_url.as_str()];
    let record = app
        .orchestrator()
        .journal()
        .load(result.payment_id)
        .await
        .unwrap()
        .expect("in the journal");
    let want = serde_json::to_value(&record).unwrap();

    // Text: every step with its action and outcome, and the result.
    let run = baton(&app, &[&["status", id.as_str()][..], &journal].concat()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("payment   {id}")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("status    completed"), "{}", run.stdout);
    assert!(run.stdout.contains("****4242"), "{}", run.stdout);
    assert!(!run.stdout.contains("4242424242424242"), "{}", run.stdout);
    for step in ["authorization", "risk", "pci", "transaction"] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with(step))
            .unwrap_or_else(|| panic!("no {step} line: {}", run.stdout));
        assert!(
            line.contains("execute") && line.contains("approved"),
            "{line}"
        );
    }
    assert!(run.stdout.contains("result    completed"), "{}", run.stdout);
    assert!(run.stdout.contains("settled   2150 USD"), "{}", run.stdout);

    // JSON: the journal's record, exactly.
    let run = baton(
        &app,
        &[&["status", id.as_str(), "--json"][..], &journal].concat(),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let printed: Value = serde_json::from_str(&run.stdout).expect("--json prints JSON");
    assert_eq!(printed, want);
    assert_eq!(printed["result"]["status"], "completed");
    assert_eq!(printed["entries"].as_array().unwrap().len(), 4);

    // An unknown payment: exit 1, said on stderr.
    let unknown = Uuid::new_v4().to_string();
    let run = baton(
        &app,
        &[&["status", unknown.as_str()][..], &journal].concat(),
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("not in the journal"), "{}", run.stderr);

    // The HTTP port serves the same document.
    let addr = app.orchestrator().http_addr().expect("an HTTP port");
    let (status, body) = http_get(addr, &format!("/payments/{id}")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let served: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(served, want);
    let (status, body) = http_get(addr, &format!("/payments/{unknown}"))
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_get(addr, "/payments/not-a-uuid").await.unwrap();
    assert_eq!(status, 400, "{body}");
    app.cleanup().await;
}
