//! The audit finds duplicate transfers, imbalances, transfers unlike their hold and
//! stale holds.
use super::*;
use std::time::Duration;

/// The audit fails on transfers that differ from their hold (tampered by hand, as an
/// old bug or a forger with database access would) and on holds open too long.
async fn audit_finds_transfers_unlike_their_hold_and_stale_holds(ledger: Ledger) {
    let pool = ledger.claims.pool();
    let paid = Uuid::new_v4();
    let hold_id = hold(&ledger, paid, money(1999, "EUR")).await;
    let capture = capture_of(paid, &hold_id, money(1999, "EUR"), "EUR");
    let reply = ledger
        .capture(
            &format!("{paid}:transaction"),
            &capture,
            crate::transaction::settle(&capture),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    let in_flight = Uuid::new_v4();
    hold(&ledger, in_flight, money(500, "EUR")).await;
    let audit = ledger.audit().await.unwrap();
    assert!(audit.is_sound(), "{audit:?}");
    assert_eq!(
        audit.open_holds, 1,
        "a young open hold is listed, not stale"
    );

    // What the forged capture of issue 9 did: another customer, a huge amount.
    sqlx::query(
        "UPDATE transfers SET customer_id = 'c-victim', amount_minor = 5000000000
         WHERE payment_id = $1",
    )
    .bind(paid.to_string())
    .execute(pool)
    .await
    .unwrap();
    // A transfer on a hold that does not exist, and one on a voided hold.
    sqlx::query(
        "INSERT INTO transfers VALUES ('t-nohold', $1, 'no-such-hold', 'c-1', 'm-1', 1, \
         'EUR', 1, 'EUR', 1000000)",
    )
    .bind(Uuid::nil().to_string())
    .execute(pool)
    .await
    .unwrap();
    let voided = Uuid::new_v4();
    let voided_hold = hold(&ledger, voided, money(700, "EUR")).await;
    ledger
        .void_hold(
            &format!("{voided}:authorization:compensate"),
            &format!("{voided}:authorization"),
            voided,
        )
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO transfers VALUES ('t-voided', $1, $2, 'c-42', 'm-1001', 700, 'EUR', \
         700, 'EUR', 1000000)",
    )
    .bind(voided.to_string())
    .bind(&voided_hold)
    .execute(pool)
    .await
    .unwrap();
    // An abandoned hold, placed two hours ago.
    let abandoned = Uuid::new_v4();
    let abandoned_hold = hold(&ledger, abandoned, money(900, "EUR")).await;
    sqlx::query("UPDATE holds SET created_at = created_at - 7200000 WHERE hold_id = $1")
        .bind(&abandoned_hold)
        .execute(pool)
        .await
        .unwrap();

    let audit = ledger.audit().await.unwrap();
    assert!(audit.balanced, "the lines are untouched: {audit:?}");
    assert!(!audit.is_sound(), "{audit:?}");
    let mut mismatches: Vec<_> = audit
        .hold_mismatches
        .iter()
        .map(|m| (m.transfer_id.as_str(), m.hold_id.as_str(), m.fields.clone()))
        .collect();
    mismatches.sort();
    let fields = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let forged_transfer = reply.data["transfer_id"].as_str().unwrap();
    let mut expected = vec![
        (
            forged_transfer,
            hold_id.as_str(),
            fields(&["amount", "customer_id"]),
        ),
        ("t-nohold", "no-such-hold", fields(&["hold_missing"])),
        ("t-voided", voided_hold.as_str(), fields(&["status"])),
    ];
    expected.sort();
    assert_eq!(mismatches, expected);
    assert_eq!(audit.max_hold_age, DEFAULT_MAX_HOLD_AGE);
    assert_eq!(audit.open_holds, 2);
    assert_eq!(audit.stale_holds.len(), 1, "{audit:?}");
    let stale = &audit.stale_holds[0];
    assert_eq!(stale.hold_id, abandoned_hold);
    assert_eq!(stale.payment_id, abandoned.to_string());
    assert!(
        (Duration::from_secs(7200)..Duration::from_secs(7300)).contains(&stale.age),
        "{stale:?}"
    );
    let lenient = ledger
        .audit_with(Duration::from_secs(3 * 3600))
        .await
        .unwrap();
    assert!(lenient.stale_holds.is_empty(), "{lenient:?}");
    assert_eq!(lenient.hold_mismatches, audit.hold_mismatches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_audit_finds_transfers_unlike_their_hold_and_stale_holds() {
    let db = sqlite_ledger().await;
    audit_finds_transfers_unlike_their_hold_and_stale_holds(db.ledger.clone()).await;
    db.ledger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_audit_finds_transfers_unlike_their_hold_and_stale_holds() {
    with_postgres_ledger(audit_finds_transfers_unlike_their_hold_and_stale_holds).await;
}

#[tokio::test]
async fn audit_detects_unbalanced_books_and_duplicates() {
    // The audit must be able to fail: write a bad state by hand.
    let db = sqlite_ledger().await;
    let pool = db.ledger.claims.pool();
    for (transfer, payment) in [("t1", "p1"), ("t2", "p1")] {
        sqlx::query(
            "INSERT INTO transfers VALUES ($1, $2, 'h', 'c', 'm', 1, 'EUR', 1, 'EUR', 1000000)",
        )
        .bind(transfer)
        .bind(payment)
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO ledger_entries VALUES ('e1', 't1', 'customer:c', 'EUR', 5, 0)")
        .execute(pool)
        .await
        .unwrap();
    let audit = db.ledger.audit().await.unwrap();
    assert_eq!(audit.transfers, 2);
    assert_eq!(audit.duplicate_transfers, vec![("p1".to_owned(), 2)]);
    assert!(!audit.balanced);
    db.ledger.close().await;
}
