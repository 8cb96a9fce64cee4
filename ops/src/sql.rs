//! The one place a Baton binary opens a SQL database (the orchestrator's journal, the
//! services' ledger): the URL's scheme, whether a missing SQLite file may be created, the
//! per-connection SQLite pragmas, and a connect that fails within seconds naming its
//! cause and the database (an SQLite file's absolute path, or the URL without its
//! password).
//!
//! What it is not: a schema or a query layer. The caller gets an sqlx `Any` pool (the same
//! SQL runs on SQLite and PostgreSQL) and creates its own tables.
//!
//! ```no_run
//! # async fn demo() -> Result<(), baton_ops::SqlError> {
//! use baton_ops::sql::{Database, OpenMode};
//! // A read-only tool: never creates the file, says which one it looked for.
//! let database = Database::new("sqlite://baton-journal.db", OpenMode::MustExist)?;
//! let pool = database.pool(sqlx::any::AnyPoolOptions::new().max_connections(4)).await?;
//! database.require_table(&pool, "journal_sagas", "Baton journal").await?;
//! # Ok(()) }
//! ```

use baton_contract::{database_location, redact_url};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection as _, Row as _};
use std::io;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

/// How long opening a connection may take before the open fails (an address that drops
/// packets, a server that accepts and never answers). Refused connections, missing
/// directories and files that are not databases fail at once.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-connection SQLite settings, in this order: the busy timeout first, so that even
/// switching to WAL waits for another process's lock instead of failing; WAL so readers
/// never block the writer; FULL sync so a committed decision survives a power cut.
pub const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA busy_timeout = 10000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
];

/// Whether opening may create a missing SQLite file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file if it is missing (`baton run`, the services).
    Create,
    /// The file must exist: operators' tools (`baton status`, `baton-transaction audit`)
    /// never create a database, so a wrong directory or URL is an error naming the file
    /// they looked for rather than an empty answer.
    MustExist,
}

/// Which database server a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://<path>` or `sqlite:<path>`: one machine.
    Sqlite,
    /// `postgres://…` or `postgresql://…`: shared by many processes.
    Postgres,
}

/// Why a database could not be opened. Every message names the database: an SQLite
/// file's absolute path, or the URL without its password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The URL names no supported backend.
    #[error("{url} is not supported (scheme {scheme}): use sqlite://<path> or postgres://…")]
    UnsupportedUrl {
        /// The URL, password removed.
        url: String,
        /// The URL's scheme, quoted, or `missing`.
        scheme: String,
    },
    /// [`OpenMode::MustExist`] and the SQLite file is not there.
    #[error(
        "no database at {path} (this command never creates one): check the URL, or the \
         working directory a relative path is read from"
    )]
    Missing {
        /// The file's absolute path.
        path: String,
    },
    /// The directory of the SQLite file is not there.
    #[error("{path}: directory {dir} does not exist")]
    NoDirectory {
        /// The file's absolute path.
        path: String,
        /// The missing directory.
        dir: String,
    },
    /// The file exists and is not an SQLite database.
    #[error("{path} is not an SQLite database (the file exists and holds something else)")]
    NotADatabase {
        /// The file's absolute path.
        path: String,
    },
    /// The database holds none of the caller's tables: another application's database,
    /// or an empty one.
    #[error("{location} holds no {what} (no table {table}): is this the right database?")]
    Foreign {
        /// The file's absolute path or the URL without its password.
        location: String,
        /// What was expected there ("Baton journal").
        what: String,
        /// The table looked for.
        table: String,
    },
    /// The server refused or failed the connection, or a query failed.
    #[error("{location}: {cause}")]
    Connect {
        /// The file's absolute path or the URL without its password.
        location: String,
        /// What went wrong, in a few words.
        cause: String,
    },
    /// No answer within [`CONNECT_TIMEOUT`].
    #[error("{location}: no answer within {} s", .after.as_secs())]
    TimedOut {
        /// The URL without its password.
        location: String,
        /// How long it waited.
        after: Duration,
    },
}

impl SqlError {
    /// Whether opening again later may succeed: a server that is down or slow, yes; a
    /// wrong URL, a missing file or directory, a file that is not a database, no.
    pub fn is_transient(&self) -> bool {
        matches!(self, SqlError::Connect { .. } | SqlError::TimedOut { .. })
    }
}

/// A database URL, checked: its backend, and the URL sqlx connects to.
#[derive(Clone)]
pub struct Database {
    /// The URL as sqlx takes it (SQLite: with `mode=rwc` or `mode=rw`). Holds the password.
    connect_url: String,
    /// SQLite or PostgreSQL.
    backend: Backend,
    /// Create a missing SQLite file or not.
    pub(crate) mode: OpenMode,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &redact_url(&self.connect_url))
            .field("backend", &self.backend)
            .field("mode", &self.mode)
            .finish()
    }
}

/// Applies [`SQLITE_PRAGMAS`] to a new SQLite connection. Switching a database to WAL
/// takes its exclusive lock; two processes opening one file at once (authorization and
/// transaction on a shared ledger, replicas on a fresh journal) can both hold the shared
/// lock and both ask for it, and SQLite then answers one of them `SQLITE_BUSY` at once,
/// without its busy handler (waiting could only deadlock). The pragmas are idempotent, so
/// that one tries again, after a short pause, for up to [`CONNECT_TIMEOUT`].
async fn apply_sqlite_pragmas(connection: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        let mut outcome = Ok(());
        for pragma in SQLITE_PRAGMAS {
            if let Err(e) = sqlx::query(pragma).execute(&mut *connection).await {
                outcome = Err(e);
                break;
            }
        }
        match outcome {
            Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// SQLite's `SQLITE_BUSY` (5) or `SQLITE_LOCKED` (6), primary codes.
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
        _ => false,
    }
}

/// Registers sqlx's `Any` drivers, once per process.
fn install_drivers() {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
}

impl Database {
    /// Checks `url`'s scheme: `sqlite://<path>` (or `sqlite:<path>`), `postgres://…` or
    /// `postgresql://…`.
    pub fn new(url: &str, mode: OpenMode) -> Result<Self, SqlError> {
        let (connect_url, backend) = if url.starts_with("sqlite:") {
            let wanted = match mode {
                OpenMode::Create => "mode=rwc",
                OpenMode::MustExist => "mode=rw",
            };
            (with_query(url, wanted), Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (url.to_owned(), Backend::Postgres)
        } else {
            return Err(SqlError::UnsupportedUrl {
                url: redact_url(url),
                scheme: scheme_of(url),
            });
        };
        Ok(Self {
            connect_url,
            backend,
            mode,
        })
    }

    /// SQLite or PostgreSQL.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where the database is: an SQLite file's absolute path (resolved against the working
    /// directory now), or the URL without its password.
    pub fn location(&self) -> String {
        database_location(&self.connect_url)
    }

    /// The URL without its password.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.connect_url)
    }

    /// The SQLite file, unless the URL names an in-memory database.
    pub(crate) fn sqlite_file(&self) -> Option<PathBuf> {
        if self.backend != Backend::Sqlite {
            return None;
        }
        let location = self.location();
        // `database_location` leaves in-memory URLs as they are.
        (!location.starts_with("sqlite:")).then(|| PathBuf::from(location))
    }

    /// What can be said about an SQLite file before connecting: missing (when it must
    /// exist) or in a directory that is not there.
    pub(crate) fn check_file(&self) -> Result<(), SqlError> {
        let Some(file) = self.sqlite_file() else {
            return Ok(());
        };
        let path = file.display().to_string();
        if self.mode == OpenMode::MustExist && !file.exists() {
            return Err(SqlError::Missing { path });
        }
        if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(SqlError::NoDirectory {
                    path,
                    dir: dir.display().to_string(),
                });
            }
        }
        Ok(())
    }

    /// One connection, SQLite pragmas applied: what a pool's connections are, for a
    /// caller that needs a connection of its own (the journal's single writer).
    pub async fn connect(&self) -> Result<AnyConnection, SqlError> {
        install_drivers();
        self.check_file()?;
        let connecting = AnyConnection::connect(&self.connect_url);
        let mut connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(connected) => connected.map_err(|e| self.error(e))?,
            Err(_) => {
                return Err(SqlError::TimedOut {
                    location: self.location(),
                    after: CONNECT_TIMEOUT,
                })
            }
        };
        if self.backend == Backend::Sqlite {
            if let Err(e) = apply_sqlite_pragmas(&mut connection).await {
                let _ = connection.close().await;
                return Err(self.error(e));
            }
        }
        Ok(connection)
    }

    /// A pool built from `options` (sizes, lifetimes), every SQLite connection with the
    /// pragmas. One connection is opened first, outside the pool, so that a database that
    /// cannot be opened fails now with its cause, not after the pool's acquire timeout
    /// with "pool timed out".
    pub async fn pool(&self, options: AnyPoolOptions) -> Result<AnyPool, SqlError> {
        let probe = self.connect().await?;
        let _ = probe.close().await;
        let options = options.after_connect(|conn, _meta| {
            Box::pin(async move {
                if conn.backend_name() == "SQLite" {
                    apply_sqlite_pragmas(conn).await?;
                }
                Ok(())
            })
        });
        options
            .connect(&self.connect_url)
            .await
            .map_err(|e| self.error(e))
    }

    /// A store's pool, ready: the pool from `options`; in [`OpenMode::MustExist`] the
    /// check that `table` exists (else [`SqlError::Foreign`] naming `what`, e.g. "Baton
    /// journal"); then `prepare` (create the missing tables, upgrade old ones, read the
    /// store's identity) and its result. The pool is closed again if either fails.
    pub async fn open_store<T>(
        &self,
        options: AnyPoolOptions,
        table: &str,
        what: &str,
        prepare: impl AsyncFnOnce(&AnyPool) -> Result<T, sqlx::Error>,
    ) -> Result<(AnyPool, T), SqlError> {
        let pool = self.pool(options).await?;
        let ready = async {
            if self.mode == OpenMode::MustExist {
                self.require_table(&pool, table, what).await?;
            }
            prepare(&pool).await.map_err(|e| self.error(e))
        };
        match ready.await {
            Ok(value) => Ok((pool, value)),
            Err(e) => {
                pool.close().await;
                Err(e)
            }
        }
    }

    /// Fails with [`SqlError::Foreign`] unless `table` exists: for a tool that reads an
    /// existing database and must not take an empty one for an empty journal or ledger.
    pub async fn require_table(
        &self,
        pool: &AnyPool,
        table: &str,
        what: &str,
    ) -> Result<(), SqlError> {
        let query = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = $1"
            }
        };
        let count: i64 = sqlx::query(query)
            .bind(table)
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| self.error(e))?;
        if count == 0 {
            return Err(SqlError::Foreign {
                location: self.location(),
                what: what.to_owned(),
                table: table.to_owned(),
            });
        }
        Ok(())
    }

    /// An sqlx error met while opening this database, in the words an operator needs.
    pub fn error(&self, e: sqlx::Error) -> SqlError {
        let location = self.location();
        if let sqlx::Error::Database(db) = &e {
            // SQLITE_NOTADB: the file's header is not SQLite's.
            if self.backend == Backend::Sqlite && db.code().as_deref() == Some("26") {
                return SqlError::NotADatabase { path: location };
            }
        }
        SqlError::Connect {
            location,
            cause: describe(&e),
        }
    }
}

/// A short wording of an sqlx error: the database's own message, or what the network
/// said, without sqlx's repeated prefixes.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Io(io) => match io.kind() {
            io::ErrorKind::ConnectionRefused => {
                "connection refused: nothing listens at that address and port (is the \
                 database server running?)"
                    .to_owned()
            }
            io::ErrorKind::TimedOut => "the connection timed out".to_owned(),
            _ => io.to_string(),
        },
        sqlx::Error::PoolTimedOut => format!(
            "no connection within the pool's timeout (the database is overloaded or \
             unreachable; opening gives up after {} s)",
            CONNECT_TIMEOUT.as_secs()
        ),
        other => other.to_string(),
    }
}

/// `url` with `setting` (`mode=rwc`) added to its query, unless it already sets that key.
fn with_query(url: &str, setting: &str) -> String {
    let key = setting.split('=').next().unwrap_or(setting);
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    if query
        .split('&')
        .any(|pair| pair.split('=').next() == Some(key))
    {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&{setting}")
    } else {
        format!("{url}?{setting}")
    }
}

/// The scheme of a URL, quoted, for error messages.
fn scheme_of(url: &str) -> String {
    match url.split_once(':') {
        Some((scheme, _)) if !scheme.is_empty() && !scheme.contains('/') => {
            format!("{scheme:?}")
        }
        _ => "missing".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A directory of the test's own, removed when dropped.
    fn scratch(name: &str) -> baton_testkit::ScratchDir {
        baton_testkit::ScratchDir::new(&format!("ops-sql-{name}"))
    }

    #[test]
    fn schemes_and_modes() {
        let created = Database::new("sqlite://a.db", OpenMode::Create).unwrap();
        assert_eq!(created.connect_url, "sqlite://a.db?mode=rwc");
        assert_eq!(created.backend(), Backend::Sqlite);
        let existing = Database::new("sqlite://a.db?cache=shared", OpenMode::MustExist).unwrap();
        assert_eq!(existing.connect_url, "sqlite://a.db?cache=shared&mode=rw");
        let given = Database::new("sqlite://a.db?mode=ro", OpenMode::Create).unwrap();
        assert_eq!(given.connect_url, "sqlite://a.db?mode=ro");
        let pg = Database::new("postgresql://u:pw@h/db", OpenMode::Create).unwrap();
        assert_eq!(pg.backend(), Backend::Postgres);
        assert!(!format!("{pg:?}").contains("pw"));

        let e = Database::new("mysql://u:pw@h/db", OpenMode::Create).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("\"mysql\"") && !message.contains("pw"),
            "{message}"
        );
        assert!(!e.is_transient());
        let e = Database::new("/var/lib/baton/journal.db", OpenMode::Create).unwrap_err();
        assert!(e.to_string().contains("scheme missing"), "{e}");
    }

    #[tokio::test]
    async fn must_exist_creates_nothing_and_names_the_absolute_path() {
        let dir = scratch("missing");
        let file = dir.join("absent.db");
        let database =
            Database::new(&format!("sqlite://{}", file.display()), OpenMode::MustExist).unwrap();
        let e = database
            .pool(AnyPoolOptions::new().max_connections(1))
            .await
            .unwrap_err();
        assert!(matches!(e, SqlError::Missing { .. }), "{e:?}");
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        assert!(
            !file.exists(),
            "a must-exist open created {}",
            file.display()
        );
    }

    #[tokio::test]
    async fn a_missing_directory_is_named() {
        let dir = scratch("nodir");
        let file = dir.join("no-such-dir").join("j.db");
        let database =
            Database::new(&format!("sqlite://{}", file.display()), OpenMode::Create).unwrap();
        let e = database.connect().await.unwrap_err();
        assert!(matches!(e, SqlError::NoDirectory { .. }), "{e:?}");
        let message = e.to_string();
        assert!(
            message.contains(&dir.join("no-such-dir").display().to_string())
                && message.contains("does not exist"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_fails_at_once() {
        let dir = scratch("notdb");
        let file = dir.join("notes.db");
        std::fs::write(
            &file,
            "these are not the pages of an SQLite database\n".repeat(200),
        )
        .unwrap();
        for mode in [OpenMode::Create, OpenMode::MustExist] {
            let database = Database::new(&format!("sqlite://{}", file.display()), mode).unwrap();
            let started = Instant::now();
            let e = database
                .pool(AnyPoolOptions::new().max_connections(2))
                .await
                .unwrap_err();
            assert!(
                started.elapsed() < CONNECT_TIMEOUT,
                "{:?}",
                started.elapsed()
            );
            assert!(matches!(e, SqlError::NotADatabase { .. }), "{e:?}");
            assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        }
    }

    #[tokio::test]
    async fn pragmas_apply_busy_timeout_wal_and_full_sync() {
        let dir = scratch("pragmas");
        let file = dir.join("p.db");
        let database =
            Database::new(&format!("sqlite://{}", file.display()), OpenMode::Create).unwrap();
        let pool = database
            .pool(AnyPoolOptions::new().max_connections(1))
            .await
            .unwrap();
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        let sync: i64 = sqlx::query("PRAGMA synchronous")
            .fetch_one(&pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        let busy: i64 = sqlx::query("PRAGMA busy_timeout")
            .fetch_one(&pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!((mode.as_str(), sync, busy), ("wal", 2, 10_000));
        let e = database
            .require_table(&pool, "journal_sagas", "Baton journal")
            .await
            .unwrap_err();
        assert!(matches!(e, SqlError::Foreign { .. }), "{e:?}");
        pool.close().await;
    }

    #[tokio::test]
    async fn a_refused_postgres_port_fails_at_once_without_the_password() {
        // A port nobody listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://baton:s3cret@127.0.0.1:{port}/journal");
        let database = Database::new(&url, OpenMode::Create).unwrap();
        let started = Instant::now();
        let e = database
            .pool(AnyPoolOptions::new().max_connections(2))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < CONNECT_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        let message = e.to_string();
        assert!(message.contains("connection refused"), "{message}");
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        assert!(!message.contains("s3cret") && !format!("{e:?}").contains("s3cret"));
        assert!(e.is_transient());
    }
}
