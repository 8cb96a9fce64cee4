//! Opening: a ledger of an older version is upgraded; unsupported URLs are refused.
use super::*;

/// The holds table of the first release: no merchant, no creation time.
const OLD_SCHEMA: &[&str] = &[
    "CREATE TABLE holds (
        hold_id TEXT PRIMARY KEY,
        payment_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        status TEXT NOT NULL
    )",
    "CREATE TABLE transfers (
        transfer_id TEXT PRIMARY KEY,
        payment_id TEXT NOT NULL,
        hold_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        merchant_id TEXT NOT NULL,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        settlement_minor BIGINT NOT NULL,
        settlement_currency TEXT NOT NULL,
        fx_rate_micro BIGINT NOT NULL
    )",
    "CREATE TABLE processed_commands (
        command_id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        reply TEXT
    )",
    "INSERT INTO processed_commands VALUES ('00000000-0000-0000-0000-00000000000b:x',
        'transaction', NULL)",
    "INSERT INTO holds VALUES
        ('h-old-open', '00000000-0000-0000-0000-00000000000a', 'c-42', 1999, 'EUR', 'held'),
        ('h-old-paid', '00000000-0000-0000-0000-00000000000b', 'c-42', 1999, 'EUR', 'captured')",
    "INSERT INTO transfers VALUES ('t-old', '00000000-0000-0000-0000-00000000000b',
        'h-old-paid', 'c-42', 'm-1001', 1999, 'EUR', 1999, 'EUR', 1000000)",
];

/// A ledger made by the first release is upgraded on open — by two processes at once
/// — and keeps working: old transfers still audit clean, an old open hold (which
/// cannot prove its merchant) is not captured, new holds record everything.
async fn an_old_ledger_is_upgraded_on_open(url: String) {
    execute(&url, OLD_SCHEMA).await;
    let (first, second) = tokio::join!(Ledger::open(&url), Ledger::open(&url));
    let (ledger, second) = (first.unwrap(), second.unwrap());
    second.close().await;
    let audit = ledger.audit().await.unwrap();
    assert!(audit.is_sound(), "{audit:?}");
    assert_eq!((audit.transfers, audit.open_holds), (1, 1), "{audit:?}");
    let undated: i64 = sqlx::query("SELECT COUNT(*) FROM holds WHERE created_at IS NULL")
        .fetch_one(ledger.claims.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(undated, 0, "old holds are dated at the upgrade");
    let undated: i64 =
        sqlx::query("SELECT COUNT(*) FROM processed_commands WHERE created_at IS NULL")
            .fetch_one(ledger.claims.pool())
            .await
            .unwrap()
            .get(0);
    assert_eq!(
        undated, 0,
        "old processed commands are dated at the upgrade"
    );

    let old_open = Uuid::parse_str("00000000-0000-0000-0000-00000000000a").unwrap();
    let capture = capture_of(old_open, "h-old-open", money(1999, "EUR"), "EUR");
    let reply = ledger
        .capture(
            &format!("{old_open}:transaction"),
            &capture,
            crate::transaction::settle(&capture),
        )
        .await
        .unwrap()
        .reply;
    assert_eq!(reply.reason.as_deref(), Some("hold_mismatch"), "{reply:?}");
    assert!(reply.detail.unwrap().contains("in merchant_id:"));
    assert_eq!(ledger.transfers_for(old_open).await.unwrap(), 0);

    let payment_id = Uuid::new_v4();
    let hold_id = hold(&ledger, payment_id, money(1999, "EUR")).await;
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
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    assert!(ledger.audit().await.unwrap().is_sound());
    ledger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_old_ledger_is_upgraded_on_open() {
    let file = baton_testkit::ScratchSqlite::new("ledger");
    an_old_ledger_is_upgraded_on_open(file.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_old_ledger_is_upgraded_on_open() {
    with_postgres_database(an_old_ledger_is_upgraded_on_open).await;
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let e = Ledger::open("mysql://u:pw@h/db").await.unwrap_err();
    assert!(matches!(e, LedgerError::UnsupportedUrl { .. }));
    assert!(!e.to_string().contains("pw"), "{e}");
}
