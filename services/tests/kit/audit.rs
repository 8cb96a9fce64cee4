//! `baton-transaction audit`, the built binary, on a prepared SQLite ledger.

use crate::helpers::Scratch;
use baton_contract::{Currency, Money};
use baton_services::ledger::Capture;
use baton_services::Ledger;
use serde_json::Value;
use sqlx::Connection as _;
use std::process::{Command, Output};
use uuid::Uuid;

/// Runs `baton-transaction audit` with `args`.
pub fn audit(args: &[&str]) -> Output {
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
            "m-1",
            eur(1999),
            Ok(()),
        )
        .await
        .unwrap()
        .reply;
    let capture = Capture {
        payment_id: paid,
        hold_id: hold.data["hold_id"].as_str().unwrap().to_owned(),
        customer_id: "c-1".into(),
        merchant_id: "m-1".into(),
        amount: eur(1999),
        settlement_currency: Currency::parse("EUR").unwrap(),
    };
    let reply = ledger
        .capture(
            &format!("{paid}:transaction"),
            &capture,
            baton_services::transaction::settle(&capture),
        )
        .await
        .unwrap()
        .reply;
    assert!(reply.reason.is_none(), "{reply:?}");
    let open = Uuid::new_v4();
    ledger
        .place_hold(
            &format!("{open}:authorization"),
            open,
            "c-2",
            "m-1",
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

#[tokio::test]
async fn audit_fails_a_transfer_unlike_its_hold_and_a_stale_hold() {
    let scratch = Scratch::new();
    let url = scratch.ledger_url();
    let paid = prepare(&url).await;
    let clean = audit(&["--ledger-url", &url]);
    assert_eq!(clean.status.code(), Some(0), "{clean:?}");
    let text = stdout(&clean);
    assert!(
        text.contains("open holds: 1\n"),
        "a young open hold is listed: {text}"
    );
    assert!(text.contains("holds open longer than 1h: none\n"), "{text}");

    // The forged capture of issue 9, as an old version stored it: the hold's payment,
    // another customer and merchant, a huge amount (with balanced lines, so only the
    // hold check can see it).
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(
        "UPDATE transfers SET customer_id = 'c-victim', merchant_id = 'm-thief',
            amount_minor = 5000000000, settlement_minor = 5000000000
         WHERE payment_id = $1",
    )
    .bind(paid.to_string())
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query("UPDATE ledger_entries SET debit_minor = 5000000000 WHERE debit_minor = 1999")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE ledger_entries SET credit_minor = 5000000000 WHERE credit_minor = 1999")
        .execute(&mut db)
        .await
        .unwrap();
    // The open hold, placed 3 hours ago and never captured nor voided.
    sqlx::query("UPDATE holds SET created_at = created_at - 10800000 WHERE status = 'held'")
        .execute(&mut db)
        .await
        .unwrap();
    let (transfer_id, hold_id): (String, String) =
        sqlx::query_as("SELECT transfer_id, hold_id FROM transfers WHERE payment_id = $1")
            .bind(paid.to_string())
            .fetch_one(&mut db)
            .await
            .unwrap();
    let (stale_hold, stale_payment): (String, String) =
        sqlx::query_as("SELECT hold_id, payment_id FROM holds WHERE status = 'held'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    db.close().await.unwrap();

    let json = audit(&["--json", "--ledger-url", &url]);
    assert_eq!(json.status.code(), Some(1), "{json:?}");
    let report: Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(report["balanced"], true, "{report}");
    assert_eq!(report["duplicate_transfers"], serde_json::json!([]));
    assert_eq!(
        report["hold_mismatches"],
        serde_json::json!([{"transfer_id": transfer_id, "payment_id": paid.to_string(),
            "hold_id": hold_id, "fields": ["amount", "customer_id", "merchant_id"]}])
    );
    assert_eq!(report["max_hold_age_seconds"], 3600);
    assert_eq!(report["open_holds"], 1);
    let stale = &report["stale_holds"];
    assert_eq!(stale[0]["hold_id"], stale_hold.as_str(), "{report}");
    assert_eq!(stale[0]["payment_id"], stale_payment.as_str());
    assert!(
        stale[0]["age_seconds"].as_u64().unwrap() >= 10800,
        "{report}"
    );
    assert_eq!(report["sound"], false);

    let text = audit(&["--ledger-url", &url]);
    assert_eq!(text.status.code(), Some(1), "{text:?}");
    let text = stdout(&text);
    assert!(
        text.contains(&format!(
            "transfer {transfer_id} of payment {paid} (hold {hold_id}): amount, customer_id, merchant_id"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "hold {stale_hold} of payment {stale_payment}: open 3h"
        )),
        "{text}"
    );
    assert!(text.ends_with("audit: PROBLEMS FOUND\n"), "{text}");
    // Field names, never the customers' or merchants' values.
    assert!(
        !text.contains("c-victim") && !text.contains("m-thief"),
        "{text}"
    );

    // A longer limit spares the hold, not the forged transfer.
    let lenient = audit(&["--json", "--max-hold-age", "4h", "--ledger-url", &url]);
    assert_eq!(lenient.status.code(), Some(1), "{lenient:?}");
    let report: Value = serde_json::from_str(&stdout(&lenient)).unwrap();
    assert_eq!(report["stale_holds"], serde_json::json!([]));
    assert_eq!(report["max_hold_age_seconds"], 14400);
    assert_eq!(
        report["hold_mismatches"][0]["transfer_id"],
        transfer_id.as_str()
    );
}

#[tokio::test]
async fn a_stale_hold_alone_fails_the_audit() {
    let scratch = Scratch::new();
    let url = scratch.ledger_url();
    prepare(&url).await;
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE holds SET created_at = created_at - 7200000 WHERE status = 'held'")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let output = audit(&["--ledger-url", &url]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = stdout(&output);
    assert!(
        text.contains("transfers differing from their hold: none\n"),
        "{text}"
    );
    assert!(text.contains("holds open longer than 1h:\n"), "{text}");
    assert!(text.ends_with("audit: PROBLEMS FOUND\n"), "{text}");
    let spared = audit(&["--ledger-url", &url, "--max-hold-age", "3h"]);
    assert_eq!(spared.status.code(), Some(0), "{spared:?}");
}

#[test]
fn a_ledger_that_cannot_be_opened_exits_2() {
    let missing = baton_testkit::scratch_path("no-such-dir", "").join("ledger.db");
    let output = audit(&["--ledger-url", &format!("sqlite://{}", missing.display())]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot open the ledger"), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(!missing.exists());
}

/// Run in the wrong directory (or with a mistyped path), the audit used to create an
/// empty ledger there and report "audit: OK". It creates nothing and names the absolute
/// path it looked at.
#[test]
fn audit_of_a_missing_ledger_creates_none_and_names_the_file() {
    let dir = baton_testkit::ScratchDir::new("audit-cwd");
    let output = Command::new(env!("CARGO_BIN_EXE_baton-transaction"))
        .args(["audit", "--ledger-url", "sqlite://ledger.db"])
        .env_remove("BATON_LEDGER_URL")
        .current_dir(&dir)
        .output()
        .expect("run baton-transaction");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let expected = dir.join("ledger.db");
    assert!(
        stderr.contains(&format!("no database at {}", expected.display())),
        "{stderr}"
    );
    assert!(!stdout(&output).contains("audit: OK"), "{output:?}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the audit created a file"
    );
}

/// Another application's SQLite file (or an empty one) is not an empty ledger.
#[tokio::test]
async fn audit_of_a_database_without_ledger_tables_fails() {
    let file = baton_testkit::ScratchSqlite::new("audit-foreign");
    let (path, url) = (file.path(), file.url());
    let mut db = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE notes (body TEXT)")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let output = audit(&["--ledger-url", &url]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("holds no Baton ledger") && stderr.contains(&path.display().to_string()),
        "{stderr}"
    );
}
