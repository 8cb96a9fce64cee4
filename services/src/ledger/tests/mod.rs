//! The ledger's tests, by topic, on SQLite and on PostgreSQL (a fresh database each):
//! the operations, the audit, the upgrade of an older ledger, the prune.

mod audit;
mod operations;
mod prune;
mod upgrade;

use super::open::with_create_mode;
use super::store::install_drivers;
use super::*;
use crate::reply::Decline;
use baton_contract::Reply;
use baton_contract::{Currency, Money, ReplyOutcome};
use baton_testkit::{ScratchDatabase, ScratchSqlite};
use sqlx::Connection as _;
use sqlx::Row;
use uuid::Uuid;

/// A ledger on a fresh SQLite file; the file is removed on drop.
pub(crate) struct SqliteLedger {
    pub(crate) ledger: Ledger,
    pub(crate) file: ScratchSqlite,
}

pub(crate) async fn sqlite_ledger() -> SqliteLedger {
    let file = ScratchSqlite::new("ledger");
    let ledger = Ledger::open(&file.url())
        .await
        .expect("open a SQLite ledger");
    SqliteLedger { ledger, file }
}

/// Runs `body` against a ledger in a new, uniquely named PostgreSQL database, then
/// drops the database.
async fn with_postgres_ledger<F, Fut>(body: F)
where
    F: FnOnce(Ledger) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    with_postgres_database(|url| async move {
        let ledger = Ledger::open(&url)
            .await
            .expect("open the PostgreSQL ledger");
        body(ledger.clone()).await;
        ledger.close().await;
    })
    .await;
}

/// Runs `body` with the URL of a new, empty, uniquely named PostgreSQL database, then
/// drops the database (`body` closes what it opened).
async fn with_postgres_database<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let database = ScratchDatabase::create("test").await;
    body(database.url()).await;
    database.drop_now().await;
}

fn money(minor: u64, code: &str) -> Money {
    Money {
        minor,
        currency: Currency::parse(code).unwrap(),
    }
}

fn hold_of(reply: &Reply) -> String {
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    reply.data["hold_id"].as_str().expect("hold_id").to_owned()
}

fn capture_of(payment_id: Uuid, hold_id: &str, amount: Money, to: &str) -> Capture {
    Capture {
        payment_id,
        hold_id: hold_id.to_owned(),
        customer_id: "c-42".into(),
        merchant_id: "m-1001".into(),
        amount,
        settlement_currency: Currency::parse(to).unwrap(),
    }
}

async fn hold(ledger: &Ledger, payment_id: Uuid, amount: Money) -> String {
    let id = format!("{payment_id}:authorization");
    hold_of(
        &ledger
            .place_hold(&id, payment_id, "c-42", "m-1001", amount, Ok(()))
            .await
            .unwrap()
            .reply,
    )
}

/// Runs `statements` on the database at `url` over a connection of its own.
async fn execute(url: &str, statements: &[&str]) {
    install_drivers();
    let url = if url.starts_with("sqlite:") {
        with_create_mode(url)
    } else {
        url.to_owned()
    };
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    for statement in statements {
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    conn.close().await.unwrap();
}
