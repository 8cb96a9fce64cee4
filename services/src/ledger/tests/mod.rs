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
use sqlx::Connection as _;
use sqlx::Row;
use uuid::Uuid;

/// A ledger on a fresh SQLite file; the file is removed on drop.
pub(crate) struct SqliteLedger {
    pub(crate) ledger: Ledger,
    path: std::path::PathBuf,
}

impl Drop for SqliteLedger {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

pub(crate) async fn sqlite_ledger() -> SqliteLedger {
    let path = std::env::temp_dir().join(format!("baton-ledger-{}.db", Uuid::new_v4()));
    let ledger = Ledger::open(&format!("sqlite://{}", path.display()))
        .await
        .expect("open a SQLite ledger");
    SqliteLedger { ledger, path }
}

const POSTGRES_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

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
    install_drivers();
    let database = format!("baton_test_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::AnyConnection::connect(POSTGRES_ADMIN)
        .await
        .expect("PostgreSQL must run at 127.0.0.1:5432 (user postgres, trust auth)");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    body(format!("postgres://postgres@127.0.0.1:5432/{database}")).await;
    // FORCE: a pool connection may still be closing on the server side.
    sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop the test database");
    admin.close().await.ok();
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
