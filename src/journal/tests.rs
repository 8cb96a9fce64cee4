//! The journal's tests, on SQLite and on the PostgreSQL at 127.0.0.1:5432.

use super::*;
use baton_contract::{Action, Limits, PaymentRequest, Status, StepOutcome, StepRecord};
use baton_testkit::{ScratchDatabase, ScratchSqlite};
use serde_json::json;
use serde_json::Map;
use sqlx::Connection as _;
use sqlx::Row;
use std::sync::Arc;
use tokio::sync::Barrier;

const CARD: &str = "4242424242424242";

/// A fresh journal database, removed (SQLite file) or dropped (PostgreSQL database)
/// when the value is dropped, even if the test panicked.
enum TestDb {
    Sqlite(ScratchSqlite),
    Postgres(ScratchDatabase),
}

impl TestDb {
    fn sqlite() -> Self {
        TestDb::Sqlite(ScratchSqlite::new("journal"))
    }

    async fn postgres() -> Self {
        TestDb::Postgres(ScratchDatabase::create("journal_test").await)
    }

    fn url(&self) -> String {
        match self {
            TestDb::Sqlite(file) => file.url(),
            TestDb::Postgres(db) => db.url(),
        }
    }

    async fn open(&self) -> Journal {
        Journal::open(&self.url()).await.expect("open the journal")
    }
}

fn request(payment_id: Uuid) -> PaymentRequest {
    let body = json!({
        "payment_id": payment_id,
        "merchant_id": "m-1001",
        "customer_id": "c-42",
        "amount": {"minor": 1999, "currency": "EUR"},
        "merchant_currency": "USD",
        "card": {"number": CARD, "expiry": "12/30"},
    });
    PaymentRequest::parse(body.to_string().as_bytes(), &Limits::default()).expect("a valid request")
}

fn summary() -> PaymentSummary {
    PaymentSummary::of(&request(Uuid::new_v4()))
}

fn entry(step: &str, action: Action, outcome: StepOutcome, attempts: u32) -> JournalEntry {
    JournalEntry {
        step: step.to_owned(),
        action,
        record: StepRecord::new(step, outcome, attempts, 10 * u64::from(attempts)),
        detail: None,
        data: Map::new(),
        recorded_at: String::new(),
    }
}

fn approved(step: &str, hold_id: &str) -> JournalEntry {
    let mut entry = entry(step, Action::Execute, StepOutcome::Approved, 1);
    entry.data.insert("hold_id".into(), json!(hold_id));
    entry
}

fn declined(step: &str, detail: &str) -> JournalEntry {
    let mut entry = entry(step, Action::Execute, StepOutcome::Declined, 2);
    entry.record.reason = Some("card_declined".into());
    entry.detail = Some(detail.to_owned());
    entry
}

fn result(payment_id: Uuid, status: Status, reason: Option<&str>) -> PaymentResult {
    PaymentResult {
        payment_id,
        status,
        reason: reason.map(str::to_owned),
        detail: reason.map(|r| format!("because {r}")),
        steps: vec![StepRecord::new(
            "authorization",
            StepOutcome::Approved,
            1,
            3,
        )],
        settlement: None,
        finished_at: now(),
    }
}

/// Every text stored for the payment, all tables, all columns.
async fn stored_text(journal: &Journal, payment_id: Uuid) -> String {
    let mut text = String::new();
    let saga = sqlx::query(
        "SELECT payment_id, summary, started_at, updated_at, COALESCE(result, '')
         FROM journal_sagas WHERE payment_id = $1",
    )
    .bind(payment_id.to_string())
    .fetch_all(&journal.pool)
    .await
    .unwrap();
    let entries = sqlx::query(
        "SELECT payment_id, step, action, recorded_at, body
         FROM journal_entries WHERE payment_id = $1",
    )
    .bind(payment_id.to_string())
    .fetch_all(&journal.pool)
    .await
    .unwrap();
    for row in saga.iter().chain(&entries) {
        for i in 0..5 {
            text.push_str(&row.get::<String, _>(i));
            text.push('\n');
        }
    }
    text
}

/// Sequence numbers of a payment's entries, in recording order.
async fn sequence(journal: &Journal, payment_id: Uuid) -> Vec<i64> {
    sqlx::query("SELECT seq FROM journal_entries WHERE payment_id = $1 ORDER BY seq")
        .bind(payment_id.to_string())
        .fetch_all(&journal.pool)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<i64, _>(0))
        .collect()
}

async fn begin_is_idempotent_and_stores_no_card_number(journal: &Journal) {
    let payment_id = Uuid::new_v4();
    let summary = PaymentSummary::of(&request(payment_id));
    assert_eq!(summary.card_last4, "4242");
    assert_eq!(summary.merchant_currency.as_str(), "USD");
    assert!(journal.load(payment_id).await.unwrap().is_none());

    let first = journal.begin(payment_id, &summary).await.unwrap();
    assert_eq!(first.payment_id, payment_id);
    assert_eq!(first.summary, summary);
    assert_eq!(first.status(), "running");
    assert!(first.entries.is_empty() && first.result.is_none() && first.parked == 0);
    assert!(
        humantime::parse_rfc3339(&first.started_at).is_ok(),
        "{first:?}"
    );

    let again = journal.begin(payment_id, &summary).await.unwrap();
    assert_eq!(again, first);
    // A different summary under the same id does not replace the first.
    let mut other = summary.clone();
    other.amount.minor = 1;
    assert_eq!(journal.begin(payment_id, &other).await.unwrap(), first);
    assert_eq!(journal.load(payment_id).await.unwrap(), Some(first));

    // Nothing stored holds more than the last four digits: every 5-digit window of
    // 4242424242424242 is 42424 or 24242.
    let text = stored_text(journal, payment_id).await;
    assert!(text.contains(r#""card_last4":"4242""#), "{text}");
    assert!(!text.contains("42424") && !text.contains("24242"), "{text}");
}

async fn first_decision_is_kept(journal: &Journal) {
    let payment_id = Uuid::new_v4();
    journal.begin(payment_id, &summary()).await.unwrap();

    let first = journal
        .record(payment_id, &approved("authorization", "h-1"))
        .await
        .unwrap();
    assert!(
        humantime::parse_rfc3339(&first.recorded_at).is_ok(),
        "{first:?}"
    );
    let mut expected = approved("authorization", "h-1");
    expected.recorded_at = first.recorded_at.clone();
    assert_eq!(first, expected);

    // A different decision for the same step and action: the first comes back.
    let second = journal
        .record(payment_id, &declined("authorization", "no"))
        .await
        .unwrap();
    assert_eq!(second, first);
    // The compensation of that step is a decision of its own.
    let compensated = journal
        .record(
            payment_id,
            &entry(
                "authorization",
                Action::Compensate,
                StepOutcome::Compensated,
                1,
            ),
        )
        .await
        .unwrap();
    assert_eq!(compensated.record.outcome, StepOutcome::Compensated);

    let record = journal.load(payment_id).await.unwrap().unwrap();
    assert_eq!(record.entries, vec![first.clone(), compensated.clone()]);
    assert_eq!(record.entry("authorization", Action::Execute), Some(&first));
    assert_eq!(
        record.entry("authorization", Action::Compensate),
        Some(&compensated)
    );
    assert_eq!(record.entry("risk", Action::Execute), None);
    assert_eq!(record.entries[0].data["hold_id"], "h-1");
    assert_eq!(sequence(journal, payment_id).await, vec![1, 2]);

    // A caller-supplied time is kept.
    let mut timed = approved("risk", "-");
    timed.recorded_at = "2026-01-02T03:04:05.678Z".into();
    assert_eq!(journal.record(payment_id, &timed).await.unwrap(), timed);
}

async fn finish_load_and_park(journal: &Journal) {
    let payment_id = Uuid::new_v4();
    let summary = summary();
    journal.begin(payment_id, &summary).await.unwrap();
    // Recorded in an order that is neither alphabetical nor by attempts.
    let recorded = [
        entry("transaction", Action::Execute, StepOutcome::Failed, 3),
        entry("authorization", Action::Execute, StepOutcome::Approved, 2),
        entry("risk", Action::Execute, StepOutcome::Declined, 1),
        entry(
            "authorization",
            Action::Compensate,
            StepOutcome::Compensated,
            1,
        ),
    ];
    let mut stored = Vec::new();
    for entry in &recorded {
        // Another payment's entries interleave with this one's.
        let other = Uuid::new_v4();
        journal.begin(other, &summary).await.unwrap();
        journal.record(other, entry).await.unwrap();
        stored.push(journal.record(payment_id, entry).await.unwrap());
    }

    let declined = result(payment_id, Status::Declined, Some("high_risk"));
    assert_eq!(
        journal.finish(payment_id, &declined).await.unwrap(),
        declined
    );
    let completed = result(payment_id, Status::Completed, None);
    assert_eq!(
        journal.finish(payment_id, &completed).await.unwrap(),
        declined
    );

    assert_eq!(journal.park(payment_id, Duration::ZERO).await.unwrap(), 1);
    assert_eq!(journal.park(payment_id, Duration::ZERO).await.unwrap(), 2);
    assert_eq!(journal.park(payment_id, Duration::ZERO).await.unwrap(), 3);

    let record = journal.load(payment_id).await.unwrap().unwrap();
    assert_eq!(record.entries, stored);
    let order: Vec<_> = record
        .entries
        .iter()
        .map(|e| (e.step.as_str(), e.action))
        .collect();
    assert_eq!(
        order,
        [
            ("transaction", Action::Execute),
            ("authorization", Action::Execute),
            ("risk", Action::Execute),
            ("authorization", Action::Compensate),
        ]
    );
    assert_eq!(record.result, Some(declined.clone()));
    assert_eq!(record.status(), "declined");
    assert_eq!(record.parked, 3);
    assert_eq!(record.summary, summary);
    assert!(record.updated_at >= record.started_at, "{record:?}");
    // Begin on a finished payment returns it finished (a redelivery after the end).
    assert_eq!(journal.begin(payment_id, &summary).await.unwrap(), record);

    // Writes for a payment never begun, or a result for another payment, are
    // refused, permanently.
    let stranger = Uuid::new_v4();
    for e in [
        journal
            .record(stranger, &approved("a", "h"))
            .await
            .unwrap_err(),
        journal
            .finish(stranger, &result(stranger, Status::Failed, Some("x")))
            .await
            .unwrap_err(),
        journal.park(stranger, Duration::ZERO).await.unwrap_err(),
        journal
            .finish(payment_id, &result(stranger, Status::Failed, Some("x")))
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(e, JournalError::Corrupt { .. }), "{e:?}");
        assert!(!e.is_transient());
    }
    assert!(journal.load(stranger).await.unwrap().is_none());
    assert_eq!(journal.load(payment_id).await.unwrap().unwrap(), record);
}

async fn corrupt_rows_are_reported(journal: &Journal) {
    let payment_id = Uuid::new_v4();
    journal.begin(payment_id, &summary()).await.unwrap();
    journal
        .record(payment_id, &approved("authorization", "h"))
        .await
        .unwrap();
    sqlx::query("UPDATE journal_entries SET body = '{' WHERE payment_id = $1")
        .bind(payment_id.to_string())
        .execute(&journal.pool)
        .await
        .unwrap();
    let e = journal.load(payment_id).await.unwrap_err();
    assert!(
        matches!(&e, JournalError::Corrupt { payment_id: p, .. } if *p == payment_id),
        "{e:?}"
    );
    assert!(!e.is_transient());
    assert!(e.to_string().contains("authorization"), "{e}");
}

/// Eight replicas (separate pools) race to record different decisions for the same
/// step, then to record eight different steps, then to finish differently.
async fn replicas_race(db: &TestDb) {
    let journal = db.open().await;
    let payment_id = Uuid::new_v4();
    journal.begin(payment_id, &summary()).await.unwrap();
    let mut replicas = Vec::new();
    for _ in 0..8 {
        replicas.push(db.open().await);
    }

    let barrier = Arc::new(Barrier::new(replicas.len()));
    let tasks: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, replica)| {
            let (replica, barrier) = (replica.clone(), barrier.clone());
            let attempts = u32::try_from(i).unwrap() + 1;
            let mut decision = entry(
                "authorization",
                Action::Execute,
                StepOutcome::Approved,
                attempts,
            );
            decision.detail = Some(format!("replica {i}"));
            tokio::spawn(async move {
                barrier.wait().await;
                replica.record(payment_id, &decision).await.unwrap()
            })
        })
        .collect();
    let mut stored = Vec::new();
    for task in tasks {
        stored.push(task.await.unwrap());
    }
    assert!(stored.iter().all(|e| *e == stored[0]), "{stored:#?}");
    let count: i64 =
        sqlx::query("SELECT COUNT(*) FROM journal_entries WHERE payment_id = $1 AND step = $2")
            .bind(payment_id.to_string())
            .bind("authorization")
            .fetch_one(&journal.pool)
            .await
            .unwrap()
            .get(0);
    assert_eq!(count, 1);
    let record = journal.load(payment_id).await.unwrap().unwrap();
    assert_eq!(record.entries, vec![stored[0].clone()]);

    // Different steps at once: all kept, numbered 2..=9 without gaps or repeats,
    // loaded in that order.
    let barrier = Arc::new(Barrier::new(replicas.len()));
    let tasks: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, replica)| {
            let (replica, barrier) = (replica.clone(), barrier.clone());
            let decision = approved(&format!("step-{i}"), &format!("h-{i}"));
            tokio::spawn(async move {
                barrier.wait().await;
                let stored = replica.record(payment_id, &decision).await.unwrap();
                assert_eq!(stored.data, decision.data);
                stored
            })
        })
        .collect();
    let mut stored = Vec::new();
    for task in tasks {
        stored.push(task.await.unwrap());
    }
    assert_eq!(
        sequence(&journal, payment_id).await,
        (1..=9).collect::<Vec<_>>()
    );
    let record = journal.load(payment_id).await.unwrap().unwrap();
    assert_eq!(record.entries.len(), 9);
    for entry in &stored {
        assert!(record.entries.contains(entry), "{entry:?} missing");
    }

    // Different results at once: one wins, everyone gets it.
    let barrier = Arc::new(Barrier::new(replicas.len()));
    let tasks: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, replica)| {
            let (replica, barrier) = (replica.clone(), barrier.clone());
            let mut outcome = result(payment_id, Status::Failed, Some("step_timeout"));
            outcome.detail = Some(format!("replica {i}"));
            tokio::spawn(async move {
                barrier.wait().await;
                replica.finish(payment_id, &outcome).await.unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert!(results.iter().all(|r| *r == results[0]), "{results:#?}");
    let record = journal.load(payment_id).await.unwrap().unwrap();
    assert_eq!(record.result.as_ref(), Some(&results[0]));

    for replica in &replicas {
        replica.close().await;
    }
    journal.close().await;
}

async fn every_scenario(db: &TestDb) {
    let journal = db.open().await;
    begin_is_idempotent_and_stores_no_card_number(&journal).await;
    first_decision_is_kept(&journal).await;
    finish_load_and_park(&journal).await;
    corrupt_rows_are_reported(&journal).await;
    journal.close().await;
    replicas_race(db).await;
}

/// Leases: a begun saga is leased, renewals and a redelivery keep it, a parked one
/// is leased past its delay, one whose lease ran out is stuck until a single claimer
/// takes it; prune deletes finished sagas only.
async fn leases_claims_and_prune(db: &TestDb) {
    // Times are millisecond stamps: a lease of 1 ms has surely run out 20 ms later.
    let lapse = || tokio::time::sleep(Duration::from_millis(20));
    let short = db.open().await.with_lease(Duration::from_millis(1));
    let long = short.clone().with_lease(Duration::from_secs(3600));
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    short.begin(a, &summary()).await.unwrap();
    short
        .record(a, &approved("authorization", "h-a"))
        .await
        .unwrap();
    short.begin(b, &summary()).await.unwrap();
    short
        .finish(b, &result(b, Status::Completed, None))
        .await
        .unwrap();
    long.begin(c, &summary()).await.unwrap();
    lapse().await;
    let stuck: Vec<Uuid> = short
        .stuck(10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.payment_id)
        .collect();
    assert_eq!(stuck, vec![a], "only the running saga whose lease ran out");
    let running = short.running().await.unwrap();
    assert_eq!(running.count, 2, "a and c run; b is finished");
    assert!(running.oldest_started_at.is_some());

    // The owner's renewal keeps it; a finished saga is not renewed.
    assert_eq!(long.renew(&[a, b]).await.unwrap(), 1);
    assert!(short.stuck(10).await.unwrap().is_empty());

    // Ended by hand, it is stuck; of two claimers one takes it, then it is leased.
    assert!(short.expire(a).await.unwrap());
    assert!(
        !short.expire(b).await.unwrap(),
        "a finished saga has no lease"
    );
    let other = long.clone();
    let (first, second) = tokio::join!(long.claim(a), other.claim(a));
    assert!(
        first.unwrap() ^ second.unwrap(),
        "exactly one claimer takes it"
    );
    assert!(!long.claim(a).await.unwrap(), "leased now");
    assert!(!long.claim(b).await.unwrap(), "finished");
    assert!(short.stuck(10).await.unwrap().is_empty());

    // A redelivery (begin again) takes it back from an expired lease.
    short.expire(a).await.unwrap();
    long.begin(a, &summary()).await.unwrap();
    assert!(short.stuck(10).await.unwrap().is_empty());

    // Parked: leased until it should be back, plus a lease.
    short.park(a, Duration::ZERO).await.unwrap();
    lapse().await;
    assert_eq!(short.stuck(10).await.unwrap().len(), 1);
    short.park(a, Duration::from_secs(60)).await.unwrap();
    assert!(short.stuck(10).await.unwrap().is_empty());

    // Prune: finished sagas only, and only those old enough.
    short
        .finish(a, &result(a, Status::Failed, Some("x")))
        .await
        .unwrap();
    assert_eq!(
        short.prune(Duration::from_secs(3600)).await.unwrap(),
        Pruned::default()
    );
    lapse().await;
    let pruned = short.prune(Duration::from_millis(1)).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            sagas: 2,
            entries: 1
        }
    );
    assert!(short.load(a).await.unwrap().is_none());
    assert!(short.load(b).await.unwrap().is_none());
    assert!(
        short.load(c).await.unwrap().is_some(),
        "running: never pruned"
    );
    assert_eq!(short.running().await.unwrap().count, 1);
    short.close().await;
}

/// A journal created before leases: opening it adds the column and gives its running
/// sagas a lease from now, so the sweeper does not take them at once.
async fn an_old_journal_gains_leases(db: &TestDb) {
    let mut conn = Database::new(&db.url(), OpenMode::Create)
        .unwrap()
        .connect()
        .await
        .unwrap();
    for statement in [
        "CREATE TABLE journal_sagas (payment_id TEXT PRIMARY KEY, summary TEXT NOT NULL,
            started_at TEXT NOT NULL, updated_at TEXT NOT NULL, result TEXT,
            parked BIGINT NOT NULL, last_seq BIGINT NOT NULL)",
        "CREATE TABLE journal_entries (payment_id TEXT NOT NULL, step TEXT NOT NULL,
            action TEXT NOT NULL, seq BIGINT NOT NULL, recorded_at TEXT NOT NULL,
            body TEXT NOT NULL, PRIMARY KEY (payment_id, step, action))",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    let old = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO journal_sagas VALUES ($1, $2, '2026-01-01T00:00:00.000Z',
            '2026-01-01T00:00:00.000Z', NULL, 0, 0)",
    )
    .bind(old.to_string())
    .bind(serde_json::to_string(&summary()).unwrap())
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let journal = db.open().await;
    assert!(
        journal.stuck(10).await.unwrap().is_empty(),
        "leased from the upgrade"
    );
    assert_eq!(journal.running().await.unwrap().count, 1);
    assert!(journal.expire(old).await.unwrap(), "the column is there");
    assert_eq!(journal.stuck(10).await.unwrap()[0].payment_id, old);
    // It gained an identity, which every later opener sees, and stays writable.
    assert!(Uuid::parse_str(journal.id()).is_ok(), "{}", journal.id());
    journal.check_writable().await.unwrap();
    let again = db.open().await;
    assert_eq!(again.id(), journal.id());
    again.close().await;
    journal.close().await;
}

#[tokio::test]
async fn sqlite_journal_leases_its_running_sagas() {
    leases_claims_and_prune(&TestDb::sqlite()).await;
    an_old_journal_gains_leases(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn postgres_journal_leases_its_running_sagas() {
    leases_claims_and_prune(&TestDb::postgres().await).await;
    an_old_journal_gains_leases(&TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_journal_keeps_the_first_decision() {
    let db = TestDb::sqlite();
    let TestDb::Sqlite(file) = &db else {
        unreachable!()
    };
    assert!(!file.path().exists());
    let journal = db.open().await;
    assert!(file.path().exists(), "the file is created");
    let mut conn = journal.pool.acquire().await.unwrap();
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
    drop(conn);

    every_scenario(&db).await;

    // Reopening (a restart) keeps the data.
    let payment_id = Uuid::new_v4();
    journal.begin(payment_id, &summary()).await.unwrap();
    journal
        .record(payment_id, &approved("authorization", "h"))
        .await
        .unwrap();
    journal.close().await;
    let again = db.open().await;
    let record = again.load(payment_id).await.unwrap().unwrap();
    assert_eq!(record.entries.len(), 1);
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_journal_keeps_the_first_decision() {
    let db = TestDb::postgres().await;
    every_scenario(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_open_a_fresh_postgres_journal_at_once() {
    let db = TestDb::postgres().await;
    let barrier = Arc::new(Barrier::new(6));
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let (url, barrier) = (db.url(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                Journal::open(&url).await
            })
        })
        .collect();
    let mut journals = Vec::new();
    for open in opens {
        journals.push(
            open.await
                .unwrap()
                .expect("every replica opens the journal"),
        );
    }
    let payment_id = Uuid::new_v4();
    journals[0].begin(payment_id, &summary()).await.unwrap();
    assert!(journals[5].load(payment_id).await.unwrap().is_some());
    for journal in journals {
        journal.close().await;
    }
}

#[tokio::test]
async fn two_sqlite_openers_at_once_both_succeed() {
    let db = TestDb::sqlite();
    let url = db.url();
    let (a, b) = tokio::join!(Journal::open(&url), Journal::open(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    let payment_id = Uuid::new_v4();
    a.begin(payment_id, &summary()).await.unwrap();
    assert!(b.load(payment_id).await.unwrap().is_some());
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn unsupported_urls_are_refused_by_scheme() {
    let e = Journal::open("mysql://u:pw@h/db").await.unwrap_err();
    assert!(matches!(e, JournalError::UnsupportedUrl { .. }), "{e:?}");
    let message = e.to_string();
    assert!(message.contains("\"mysql\""), "{message}");
    assert!(
        !message.contains("pw") && !format!("{e:?}").contains("pw"),
        "{message}"
    );
    assert!(!e.is_transient());
    let e = Journal::open("/var/lib/baton/journal.db")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("scheme missing"), "{e}");
}

#[tokio::test]
async fn passwords_never_show() {
    // Trust authentication ignores the password, so the open succeeds.
    let db = TestDb::postgres().await;
    let TestDb::Postgres(database) = &db else {
        unreachable!()
    };
    let url = format!(
        "postgres://postgres:s3cret@127.0.0.1:5432/{}",
        database.name()
    );
    let journal = Journal::open(&url).await.unwrap();
    let debug = format!("{journal:?}");
    assert!(
        !debug.contains("s3cret") && debug.contains("postgres:***@"),
        "{debug}"
    );
    journal.close().await;

    // A database that does not exist: the open fails without the password.
    let e = Journal::open(&format!("{url}_missing")).await.unwrap_err();
    assert!(matches!(e, JournalError::Open { .. }), "{e:?}");
    assert!(e.is_transient());
    assert!(!e.to_string().contains("s3cret") && !format!("{e:?}").contains("s3cret"));
}
