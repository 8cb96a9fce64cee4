//! Holds, voids and captures: placed once, declines stored, compensations, money moved
//! once, captures checked against their hold.
use super::*;

/// Repeats, and concurrent duplicates, of an execute place one hold and give one reply.
async fn holds_are_placed_once(ledger: &Ledger) {
    let payment_id = Uuid::new_v4();
    let id = format!("{payment_id}:authorization");
    let first = ledger
        .place_hold(
            &id,
            payment_id,
            "c-42",
            "m-1001",
            money(1999, "EUR"),
            Ok(()),
        )
        .await
        .unwrap()
        .reply;
    let again = ledger
        .place_hold(
            &id,
            payment_id,
            "c-42",
            "m-1001",
            money(1999, "EUR"),
            Ok(()),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(first, again);
    assert_eq!(ledger.holds_for(payment_id).await.unwrap(), 1);
    assert_eq!(
        ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("held")
    );

    let payment_id = Uuid::new_v4();
    let id = format!("{payment_id}:authorization");
    let attempts = (0..8).map(|_| {
        let ledger = ledger.clone();
        let id = id.clone();
        tokio::spawn(async move {
            ledger
                .place_hold(&id, payment_id, "c-42", "m-1001", money(500, "EUR"), Ok(()))
                .await
                .unwrap()
                .reply
        })
    });
    let mut replies = Vec::new();
    for attempt in attempts.collect::<Vec<_>>() {
        replies.push(attempt.await.unwrap());
    }
    let hold_id = hold_of(&replies[0]);
    assert!(replies.iter().all(|r| hold_of(r) == hold_id), "{replies:?}");
    assert_eq!(ledger.holds_for(payment_id).await.unwrap(), 1);
}

/// A decline is stored: the same command later gets the decline, never a hold.
async fn declines_are_stored(ledger: &Ledger) {
    let payment_id = Uuid::new_v4();
    let id = format!("{payment_id}:authorization");
    let decline = Decline {
        reason: "card_declined",
        detail: "no".into(),
    };
    let first = ledger
        .place_hold(
            &id,
            payment_id,
            "c-42",
            "m-1001",
            money(1, "EUR"),
            Err(decline),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(first.reason.as_deref(), Some("card_declined"));
    let again = ledger
        .place_hold(&id, payment_id, "c-42", "m-1001", money(1, "EUR"), Ok(()))
        .await
        .unwrap()
        .reply;
    assert_eq!(again, first);
    assert_eq!(ledger.holds_for(payment_id).await.unwrap(), 0);
}

/// Compensate voids the hold once; capture of a voided hold is declined.
async fn compensation_voids_the_hold(ledger: &Ledger) {
    let payment_id = Uuid::new_v4();
    let hold_id = hold(ledger, payment_id, money(1999, "EUR")).await;
    let execute = format!("{payment_id}:authorization");
    let compensate = format!("{payment_id}:authorization:compensate");
    let void = ledger
        .void_hold(&compensate, &execute, payment_id)
        .await
        .unwrap()
        .reply;
    assert_eq!(void.outcome, ReplyOutcome::Approved);
    assert_eq!(void.data["voided"], true);
    assert_eq!(
        ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("voided")
    );
    let again = ledger
        .void_hold(&compensate, &execute, payment_id)
        .await
        .unwrap()
        .reply;
    assert_eq!(again, void);
    let capture = capture_of(payment_id, &hold_id, money(1999, "EUR"), "EUR");
    let reply = ledger
        .capture(
            &format!("{payment_id}:transaction"),
            &capture,
            crate::transaction::settle(&capture),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(reply.reason.as_deref(), Some("hold_voided"));
    assert_eq!(ledger.transfers_for(payment_id).await.unwrap(), 0);
}

/// A compensation that overtakes its execute makes the late execute a decline.
async fn compensation_before_execute_blocks_it(ledger: &Ledger) {
    let payment_id = Uuid::new_v4();
    let execute = format!("{payment_id}:authorization");
    let compensate = format!("{payment_id}:authorization:compensate");
    let void = ledger
        .void_hold(&compensate, &execute, payment_id)
        .await
        .unwrap()
        .reply;
    assert_eq!(void.outcome, ReplyOutcome::Approved);
    assert_eq!(void.data["voided"], false);
    let late = ledger
        .place_hold(
            &execute,
            payment_id,
            "c-42",
            "m-1001",
            money(1, "EUR"),
            Ok(()),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(late.outcome, ReplyOutcome::Declined);
    assert_eq!(late.reason.as_deref(), Some("voided_before_authorization"));
    assert_eq!(late.command_id, execute);
    assert_eq!(ledger.holds_for(payment_id).await.unwrap(), 0);
}

/// Capture moves the money once, balanced, even with concurrent duplicates; the hold
/// can then no longer be voided.
async fn capture_moves_money_once(ledger: &Ledger) {
    let payment_id = Uuid::new_v4();
    let hold_id = hold(ledger, payment_id, money(1999, "EUR")).await;
    let capture = capture_of(payment_id, &hold_id, money(1999, "EUR"), "USD");
    let id = format!("{payment_id}:transaction");
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let (ledger, capture, id) = (ledger.clone(), capture.clone(), id.clone());
            tokio::spawn(async move {
                ledger
                    .capture(&id, &capture, crate::transaction::settle(&capture))
                    .await
                    .unwrap()
                    .reply
            })
        })
        .collect();
    let mut replies = Vec::new();
    for attempt in attempts {
        replies.push(attempt.await.unwrap());
    }
    let first = &replies[0];
    assert_eq!(first.outcome, ReplyOutcome::Approved, "{first:?}");
    assert!(replies.iter().all(|r| r == first), "{replies:?}");
    assert_eq!(first.data["settlement"]["minor"], 2150);
    assert_eq!(first.data["settlement"]["currency"], "USD");
    assert_eq!(first.data["fx_rate_micro"], 1_075_500);
    assert_eq!(ledger.transfers_for(payment_id).await.unwrap(), 1);
    assert_eq!(
        ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("captured")
    );

    // Another command id cannot capture the same hold again.
    let other = ledger
        .capture(
            &format!("{id}-again"),
            &capture,
            crate::transaction::settle(&capture),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(other.reason.as_deref(), Some("hold_captured"));
    let void = ledger
        .void_hold(
            &format!("{payment_id}:authorization:compensate"),
            &format!("{payment_id}:authorization"),
            payment_id,
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(void.reason.as_deref(), Some("hold_captured"));

    let unknown = capture_of(payment_id, "no-such-hold", money(1, "EUR"), "EUR");
    let reply = ledger
        .capture(
            &format!("{id}-x"),
            &unknown,
            crate::transaction::settle(&unknown),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(reply.reason.as_deref(), Some("hold_not_found"));
    let exotic = capture_of(payment_id, &hold_id, money(1, "EUR"), "XAU");
    let reply = ledger
        .capture(
            &format!("{id}-y"),
            &exotic,
            crate::transaction::settle(&exotic),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(reply.reason.as_deref(), Some("currency_not_supported"));

    let audit = ledger.audit().await.unwrap();
    assert!(audit.balanced, "{audit:?}");
    assert!(audit.duplicate_transfers.is_empty(), "{audit:?}");
    assert!(audit.transfers >= 1);
    let usd = audit.totals.iter().find(|t| t.currency == "USD").unwrap();
    assert!(usd.debit_minor >= 2150 && usd.debit_minor == usd.credit_minor);
}

/// A capture that differs from its hold in customer, merchant, amount or currency is
/// declined `hold_mismatch` (stored, named by field, no value), moves nothing and
/// leaves the hold held; the honest capture then completes.
async fn capture_checks_its_hold(ledger: &Ledger) {
    let payment_id = Uuid::new_v4();
    let hold_id = hold(ledger, payment_id, money(1999, "EUR")).await;
    let honest = capture_of(payment_id, &hold_id, money(1999, "EUR"), "EUR");
    let forgeries = [
        (
            "customer_id",
            Capture {
                customer_id: "c-victim".into(),
                ..honest.clone()
            },
        ),
        (
            "merchant_id",
            Capture {
                merchant_id: "m-thief".into(),
                ..honest.clone()
            },
        ),
        (
            "amount",
            Capture {
                amount: money(5_000_000_000, "EUR"),
                ..honest.clone()
            },
        ),
        (
            "currency",
            Capture {
                amount: money(1999, "GBP"),
                ..honest.clone()
            },
        ),
    ];
    for (field, forged) in &forgeries {
        let id = format!("{payment_id}:transaction:forged-{field}");
        let answer = ledger
            .capture(&id, forged, crate::transaction::settle(forged))
            .await
            .unwrap();
        let reply = &answer.reply;
        assert_eq!(reply.outcome, ReplyOutcome::Declined, "{field}: {reply:?}");
        assert_eq!(reply.reason.as_deref(), Some("hold_mismatch"), "{reply:?}");
        let detail = reply.detail.as_deref().unwrap_or_default();
        assert!(
            detail.contains(&format!("in {field}:")),
            "{field}: {detail}"
        );
        for value in [
            "c-42",
            "c-victim",
            "m-1001",
            "m-thief",
            "1999",
            "5000000000",
        ] {
            assert!(!detail.contains(value), "{field}: {detail}");
        }
        assert!(!answer.replayed);
        let again = ledger
            .capture(&id, &honest, crate::transaction::settle(&honest))
            .await
            .unwrap();
        assert!(again.replayed, "a repeat gets the stored decline");
        assert_eq!(&again.reply, reply);
        assert_eq!(ledger.transfers_for(payment_id).await.unwrap(), 0);
        assert_eq!(
            ledger.hold_status(payment_id).await.unwrap().as_deref(),
            Some("held")
        );
    }
    let everything = Capture {
        customer_id: "c-victim".into(),
        merchant_id: "m-thief".into(),
        amount: money(1, "USD"),
        ..honest.clone()
    };
    let reply = ledger
        .capture(
            &format!("{payment_id}:transaction:forged-all"),
            &everything,
            crate::transaction::settle(&everything),
        )
        .await
        .unwrap()
        .reply;
    assert!(
        reply
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("in amount, currency, customer_id, merchant_id:"),
        "{reply:?}"
    );
    let audit = ledger.audit().await.unwrap();
    assert!(audit.is_sound(), "{audit:?}");

    let reply = ledger
        .capture(
            &format!("{payment_id}:transaction"),
            &honest,
            crate::transaction::settle(&honest),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    assert_eq!(ledger.transfers_for(payment_id).await.unwrap(), 1);
    assert_eq!(
        ledger.hold_status(payment_id).await.unwrap().as_deref(),
        Some("captured")
    );
}

async fn every_scenario(ledger: Ledger) {
    holds_are_placed_once(&ledger).await;
    declines_are_stored(&ledger).await;
    compensation_voids_the_hold(&ledger).await;
    compensation_before_execute_blocks_it(&ledger).await;
    capture_moves_money_once(&ledger).await;
    capture_checks_its_hold(&ledger).await;
    // Holds left open above: the first two scenarios' holds.
    assert_eq!(ledger.audit().await.unwrap().open_holds, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_ledger_is_idempotent_and_balanced() {
    let db = sqlite_ledger().await;
    let mut conn = db.ledger.claims.pool().acquire().await.unwrap();
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode.to_lowercase(), "wal");
    let sync: i64 = sqlx::query("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(sync, 2, "synchronous = FULL");
    let busy: i64 = sqlx::query("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(busy, 10_000);
    drop(conn);
    every_scenario(db.ledger.clone()).await;
    // Opening again (a second process, a restart) keeps the data: tables are created
    // only if missing.
    let again = Ledger::open(&db.file.url()).await.unwrap();
    assert_eq!(again.audit().await.unwrap().transfers, 2);
    again.close().await;
    db.ledger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_ledger_is_idempotent_and_balanced() {
    with_postgres_ledger(every_scenario).await;
}
