//! `baton-transaction audit`, the built binary, on a prepared SQLite ledger.

use crate::helpers::Scratch;
use baton_contract::{Currency, Money};
use baton_services::ledger::Capture;
use baton_services::Ledger;
use serde_json::Value;
use sqlx::Connection as _;
use std::process::{Command, Output};
use uuid::Uuid;

fn audit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baton-transaction"))
        .arg("audit")
        .args(args)
        // The test's own flags, not whatever the developer's shell exports.
        .env_remove("BATON_LEDGER_URL")
        .output()
        .expect("run baton-transaction")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn eur(minor: u64) -> Money {
    Money {
        minor,
        currency: Currency::parse("EUR").unwrap(),
    }
}

/// One payment authorized and captured; one only authorized (an open hold).
async fn prepare(url: &str) -> Uuid {
    let ledger = Ledger::open(url).await.unwrap();
    let paid = Uuid::new_v4();
    let hold = ledger
        .place_hold(
            &format!("{paid}:authorization"),
            paid,
            "c-1",
            eur(1999),
            Ok(()),
        )
        .await
        .unwrap();
    let capture = Capture {
        payment_id: paid,
        hold_id: hold.data["hold_id"].as_str().unwrap().to_owned(),
        customer_id: "c-1".into(),
        merchant_id: "m-1".into(),
        amount: eur(1999),
        settlement_currency: Currency::parse("EUR").unwrap(),
    };
    let reply = ledger
        .capture(&format!("{paid}:transaction"), &capture)
        .await
        .unwrap();
    assert!(reply.reason.is_none(), "{reply:?}");
    let open = Uuid::new_v4();
    ledger
        .place_hold(
            &format!("{open}:authorization"),
            open,
            "c-2",
            eur(500),
            Ok(()),
        )
        .await
        .unwrap();
    ledger.close().await;
    paid
}

#[tokio::test]
async fn audit_passes_a_clean_ledger_and_fails_a_duplicate_transfer() {
    let scratch = Scratch::new();
    let url = scratch.ledger_url();
    let paid = prepare(&url).await;

    let clean = audit(&["--ledger-url", &url, "--json"]);
    assert_eq!(clean.status.code(), Some(0), "{clean:?}");
    let report: Value = serde_json::from_str(&stdout(&clean)).expect("one JSON object");
    assert_eq!(report["transfers"], 1);
    assert_eq!(report["open_holds"], 1);
    assert_eq!(report["balanced"], true);
    assert_eq!(report["duplicate_transfers"], serde_json::json!([]));
    let eur_total = &report["totals"][0];
    assert_eq!(eur_total["currency"], "EUR");
    assert!(eur_total["debit_minor"].as_i64().unwrap() >= 1999);
    assert_eq!(eur_total["debit_minor"], eur_total["credit_minor"]);

    // Pay the same payment twice by hand, with balanced lines: only the duplicate is wrong.
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO transfers VALUES ('dup', $1, 'h', 'c-1', 'm-1', 1999, 'EUR', 1999, 'EUR', 1000000)",
    )
    .bind(paid.to_string())
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO ledger_entries VALUES
            ('dup-d', 'dup', 'customer:c-1', 'EUR', 1999, 0),
            ('dup-c', 'dup', 'merchant:m-1', 'EUR', 0, 1999)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();

    let json = audit(&["--json", "--ledger-url", &url]);
    assert_eq!(json.status.code(), Some(1), "{json:?}");
    let report: Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(
        report["duplicate_transfers"],
        serde_json::json!([{"payment_id": paid.to_string(), "transfers": 2}])
    );
    assert_eq!(report["balanced"], true);
    let text = audit(&["--ledger-url", &url]);
    assert_eq!(text.status.code(), Some(1), "{text:?}");
    let text = stdout(&text);
    assert!(
        text.contains(&format!("payment {paid}: 2 transfers")),
        "{text}"
    );
    assert!(text.contains("audit: PROBLEMS FOUND"), "{text}");
}

#[test]
fn a_ledger_that_cannot_be_opened_exits_2() {
    let missing = std::env::temp_dir()
        .join(format!("no-such-dir-{}", Uuid::new_v4()))
        .join("ledger.db");
    let output = audit(&["--ledger-url", &format!("sqlite://{}", missing.display())]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot open the ledger"), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(!missing.exists());
}
