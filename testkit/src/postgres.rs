//! A PostgreSQL database of the test's own on the local server (127.0.0.1:5432, user
//! `postgres`, trust authentication, as `.ci/run` sets it up).

use crate::scratch::scratch_id;
use sqlx::Connection as _;

/// The local server's administrative database, where databases are created and dropped.
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The URL of database `name` on the local server.
pub fn postgres_url(name: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// A fresh, empty database, dropped when this value is dropped (on panic too), or
/// earlier with [`ScratchDatabase::drop_now`].
#[derive(Debug)]
pub struct ScratchDatabase {
    name: String,
    dropped: bool,
}

impl ScratchDatabase {
    /// Creates `baton_<what>_<scratch id>`.
    pub async fn create(what: &str) -> Self {
        let name = format!("baton_{what}_{}", scratch_id());
        let mut admin = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL)
            .await
            .expect("PostgreSQL must run at 127.0.0.1:5432 (user postgres, trust auth)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        Self {
            name,
            dropped: false,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL.
    pub fn url(&self) -> String {
        postgres_url(&self.name)
    }

    /// Drops the database now (its users must have closed their connections; a pool's
    /// that are still closing are ended: `WITH (FORCE)`).
    pub async fn drop_now(mut self) {
        self.dropped = true;
        drop_database(&self.name)
            .await
            .expect("drop the test database");
    }
}

async fn drop_database(name: &str) -> Result<(), sqlx::Error> {
    let mut admin = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    admin.close().await
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop cannot await: drop the database from a thread with a runtime of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(drop_database(&name))
        })
        .join();
        if !std::thread::panicking() {
            dropped
                .expect("the drop thread")
                .expect("drop the test database");
        }
    }
}
