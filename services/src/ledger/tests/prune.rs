//! The prune deletes old, finished records only.
use super::*;
use serde_json::json;

/// Moves every record of `payment_id` `days` into the past.
async fn age(ledger: &Ledger, payment_id: Uuid, days: i64) {
    let shift = days * 24 * 3600 * 1000;
    sqlx::query("UPDATE holds SET created_at = created_at - $1 WHERE payment_id = $2")
        .bind(shift)
        .bind(payment_id.to_string())
        .execute(ledger.claims.pool())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE processed_commands SET created_at = created_at - $1
         WHERE substr(command_id, 1, 36) = $2",
    )
    .bind(shift)
    .bind(payment_id.to_string())
    .execute(ledger.claims.pool())
    .await
    .unwrap();
}

async fn processed_for(ledger: &Ledger, payment_id: Uuid) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM processed_commands WHERE substr(command_id, 1, 36) = $1")
        .bind(payment_id.to_string())
        .fetch_one(ledger.claims.pool())
        .await
        .unwrap()
        .get(0)
}

/// `prune` deletes old finished records only — never an open hold or its payment's
/// records, nor anything the audit reports — and the audit says the same after.
async fn prune_deletes_old_finished_records_only(ledger: Ledger) {
    let month = 31;
    let capture = |payment_id: Uuid, hold_id: &str| {
        capture_of(payment_id, hold_id, money(1999, "EUR"), "USD")
    };
    // Old and captured: pruned with its transfer and lines.
    let paid = Uuid::new_v4();
    let hold_id = hold(&ledger, paid, money(1999, "EUR")).await;
    let reply = ledger
        .capture(
            &format!("{paid}:transaction"),
            &capture(paid, &hold_id),
            crate::transaction::settle(&capture(paid, &hold_id)),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    // Old and voided: pruned.
    let voided = Uuid::new_v4();
    hold(&ledger, voided, money(1999, "EUR")).await;
    ledger
        .void_hold(
            &format!("{voided}:authorization:compensate"),
            &format!("{voided}:authorization"),
            voided,
        )
        .await
        .unwrap();
    // Old and still held: kept, with its records.
    let open = Uuid::new_v4();
    hold(&ledger, open, money(1999, "EUR")).await;
    // Old, compensated before it was authorized: only records, pruned.
    let pre_empted = Uuid::new_v4();
    ledger
        .void_hold(
            &format!("{pre_empted}:authorization:compensate"),
            &format!("{pre_empted}:authorization"),
            pre_empted,
        )
        .await
        .unwrap();
    // Old, but its transfer differs from its hold: an audit finding, kept.
    let tampered = Uuid::new_v4();
    let tampered_hold = hold(&ledger, tampered, money(1999, "EUR")).await;
    ledger
        .capture(
            &format!("{tampered}:transaction"),
            &capture(tampered, &tampered_hold),
            crate::transaction::settle(&capture(tampered, &tampered_hold)),
        )
        .await
        .unwrap();
    sqlx::query("UPDATE transfers SET amount_minor = 1 WHERE payment_id = $1")
        .bind(tampered.to_string())
        .execute(ledger.claims.pool())
        .await
        .unwrap();
    // Captured yesterday: younger than the cutoff, kept.
    let recent = Uuid::new_v4();
    let recent_hold = hold(&ledger, recent, money(1999, "EUR")).await;
    ledger
        .capture(
            &format!("{recent}:transaction"),
            &capture(recent, &recent_hold),
            crate::transaction::settle(&capture(recent, &recent_hold)),
        )
        .await
        .unwrap();
    for payment in [paid, voided, open, pre_empted, tampered] {
        age(&ledger, payment, month).await;
    }
    age(&ledger, recent, 1).await;

    let entries_of_paid: i64 = sqlx::query(
        "SELECT COUNT(*) FROM ledger_entries e JOIN transfers t ON t.transfer_id = e.transfer_id
         WHERE t.payment_id = $1",
    )
    .bind(paid.to_string())
    .fetch_one(ledger.claims.pool())
    .await
    .unwrap()
    .get(0);
    assert_eq!(
        entries_of_paid, 4,
        "a cross-currency transfer has four lines"
    );
    let expected = Pruned {
        // paid ×2, voided ×2, pre_empted ×2, tampered ×2 (its records, not its rows).
        processed_commands: 8,
        voided_holds: 1,
        captured_holds: 1,
        transfers: 1,
        ledger_entries: 4,
    };
    let before = ledger.audit().await.unwrap();
    let dry = ledger.prune(DEFAULT_PRUNE_AGE, true).await.unwrap();
    assert_eq!(dry, expected, "the dry run counts");
    assert_eq!(ledger.audit().await.unwrap(), before, "and deletes nothing");

    let pruned = ledger.prune(DEFAULT_PRUNE_AGE, false).await.unwrap();
    assert_eq!(pruned, expected);
    let after = ledger.audit().await.unwrap();
    assert_eq!(after.transfers, before.transfers - 1);
    assert_eq!(
        after.open_holds, before.open_holds,
        "no open hold is pruned"
    );
    assert_eq!(
        after.hold_mismatches, before.hold_mismatches,
        "findings stay"
    );
    assert_eq!(after.stale_holds, before.stale_holds);
    assert_eq!(after.duplicate_transfers, before.duplicate_transfers);
    assert!(after.balanced && before.balanced);
    assert_eq!(after.hold_mismatches.len(), 1, "{after:?}");
    assert_eq!(after.hold_mismatches[0].payment_id, tampered.to_string());

    assert_eq!(ledger.holds_for(paid).await.unwrap(), 0);
    assert_eq!(ledger.transfers_for(paid).await.unwrap(), 0);
    assert_eq!(ledger.holds_for(voided).await.unwrap(), 0);
    assert_eq!(processed_for(&ledger, pre_empted).await, 0);
    assert_eq!(
        ledger.hold_status(open).await.unwrap().as_deref(),
        Some("held")
    );
    assert_eq!(
        processed_for(&ledger, open).await,
        1,
        "the open hold's record stays"
    );
    assert_eq!(ledger.holds_for(tampered).await.unwrap(), 1);
    assert_eq!(ledger.transfers_for(tampered).await.unwrap(), 1);
    assert_eq!(ledger.transfers_for(recent).await.unwrap(), 1);
    assert_eq!(processed_for(&ledger, recent).await, 2);

    // The open hold can still be voided: its authorization's record was kept.
    let reply = ledger
        .void_hold(
            &format!("{open}:authorization:compensate"),
            &format!("{open}:authorization"),
            open,
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(reply.data["voided"], json!(true), "{reply:?}");
    // A capture repeated after its records went moves nothing.
    let reply = ledger
        .capture(
            &format!("{paid}:transaction"),
            &capture(paid, &hold_id),
            crate::transaction::settle(&capture(paid, &hold_id)),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(reply.reason.as_deref(), Some("hold_not_found"), "{reply:?}");
    assert_eq!(ledger.transfers_for(paid).await.unwrap(), 0);

    // Ages count from when a record was written: the hold voided just now was
    // placed a month ago, so the next prune takes it and its authorization's record,
    // but not the compensation's record of today. Nothing else is left to take.
    let again = ledger.prune(DEFAULT_PRUNE_AGE, false).await.unwrap();
    let just_voided = Pruned {
        processed_commands: 1,
        voided_holds: 1,
        ..Pruned::default()
    };
    assert_eq!(again, just_voided);
    assert_eq!(processed_for(&ledger, open).await, 1);
    let nothing = ledger.prune(DEFAULT_PRUNE_AGE, false).await.unwrap();
    assert_eq!(nothing, Pruned::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_prune_deletes_old_finished_records_only() {
    let db = sqlite_ledger().await;
    prune_deletes_old_finished_records_only(db.ledger.clone()).await;
    db.ledger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_prune_deletes_old_finished_records_only() {
    with_postgres_ledger(prune_deletes_old_finished_records_only).await;
}
