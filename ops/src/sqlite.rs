//! A SQLite connection on a thread of its own, for a store's one writer: the caller hands
//! the thread a closure that runs a whole batch of statements (begin, every write,
//! commit) and gets its result back, so a batch costs one hand-over between threads
//! instead of two per statement (sqlx's SQLite driver sends every statement to its
//! connection's thread and waits for the answer). The closure runs the store's
//! ordinary statements through [`Exec`], which this connection implements too.
//!
//! The connection is opened like every other: the file checks of [`Database`] and the
//! per-connection [`SQLITE_PRAGMAS`] (busy timeout, WAL, `synchronous = FULL`).

use crate::exec::{Cell, Exec, Param, Row};
use crate::sql::{Database, OpenMode, SqlError, CONNECT_TIMEOUT, SQLITE_PRAGMAS};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, Statement};
use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Work = Box<dyn FnOnce(&mut Connection) + Send>;

/// The thread and its connection. Dropping the last handle ends the thread once the work
/// handed to it is done, and closes the connection.
#[derive(Debug)]
pub struct SqliteThread {
    work: mpsc::Sender<Work>,
}

impl Database {
    /// Opens this SQLite database on a thread of its own, named `name`, with the pragmas
    /// applied. The errors are [`Database::connect`]'s.
    pub async fn sqlite_thread(&self, name: &str) -> Result<SqliteThread, SqlError> {
        self.check_file()?;
        let path = self
            .sqlite_file()
            .map_or_else(|| ":memory:".to_owned(), |file| file.display().to_string());
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if self.mode == OpenMode::Create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let (work, queue) = mpsc::channel::<Work>();
        let (opened, open) = oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut connection = match Connection::open_with_flags(&path, flags)
                    .and_then(|connection| apply_pragmas(&connection).map(|()| connection))
                {
                    Ok(connection) => {
                        let _ = opened.send(Ok(()));
                        connection
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                connection.set_prepared_statement_cache_capacity(32);
                while let Ok(work) = queue.recv() {
                    // A panic inside one batch fails that batch (its answer is dropped)
                    // and leaves the thread serving the next, with any transaction the
                    // batch left open rolled back first.
                    if catch_unwind(AssertUnwindSafe(|| work(&mut connection))).is_err()
                        && !connection.is_autocommit()
                    {
                        let _ = connection.execute_batch("ROLLBACK");
                    }
                }
            })
            .map_err(|e| SqlError::Connect {
                location: self.location(),
                cause: format!("cannot start the SQLite thread: {e}"),
            })?;
        match open.await {
            Ok(Ok(())) => Ok(SqliteThread { work }),
            Ok(Err(e)) => Err(self.error(sqlite_error(e))),
            Err(_) => Err(SqlError::Connect {
                location: self.location(),
                cause: "the SQLite thread stopped while opening".into(),
            }),
        }
    }
}

impl SqliteThread {
    /// Runs `work` on the thread's connection and returns what it returned. Fails only if
    /// the thread has stopped, or `work` panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> Result<T, sqlx::Error> {
        let (done, answer) = oneshot::channel();
        self.work
            .send(Box::new(move |connection| {
                let _ = done.send(work(connection));
            }))
            .map_err(|_| sqlx::Error::Protocol("the SQLite thread has stopped".into()))?;
        answer.await.map_err(|_| {
            sqlx::Error::Protocol("the SQLite thread gave no answer: the batch panicked".into())
        })
    }
}

/// [`SQLITE_PRAGMAS`], tried again while another process holds the lock that switching
/// to WAL needs (see `apply_sqlite_pragmas` in `sql.rs`), for up to [`CONNECT_TIMEOUT`].
fn apply_pragmas(connection: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let outcome = SQLITE_PRAGMAS.iter().try_for_each(|pragma| {
            // `journal_mode` answers with a row; the others with none.
            connection
                .query_row(pragma, [], |_| Ok(()))
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(()),
                    e => Err(e),
                })
        });
        match outcome {
            Err(e) if busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A rusqlite error as sqlx says a database's error: its message, and SQLite's extended
/// result code as the code (what sqlx's SQLite driver reports), so that callers that
/// read codes (busy, not a database) read them the same way.
fn sqlite_error(e: rusqlite::Error) -> sqlx::Error {
    let (message, code) = match &e {
        rusqlite::Error::SqliteFailure(failure, message) => (
            message.clone().unwrap_or_else(|| failure.to_string()),
            Some(failure.extended_code.to_string()),
        ),
        other => (other.to_string(), None),
    };
    sqlx::Error::Database(Box::new(SqliteFailure { message, code }))
}

#[derive(Debug)]
struct SqliteFailure {
    message: String,
    code: Option<String>,
}

impl std::fmt::Display for SqliteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqliteFailure {}

impl sqlx::error::DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.as_deref().map(Cow::Borrowed)
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

/// Binds `params` to the statement's `$n` parameters by name: `$n` takes `params[n - 1]`,
/// wherever and however often it appears.
fn bind(statement: &mut Statement<'_>, params: &[Param<'_>]) -> Result<(), sqlx::Error> {
    for index in 1..=statement.parameter_count() {
        let name = statement.parameter_name(index);
        let Some(param) = name
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .and_then(|n| params.get(n))
        else {
            return Err(sqlx::Error::Protocol(format!(
                "statement parameter {index} ({}) has no value among the {} given: \
                 write the parameters $1 to ${}",
                name.unwrap_or("?"),
                params.len(),
                params.len()
            )));
        };
        match *param {
            Param::Text(text) => statement.raw_bind_parameter(index, text),
            Param::Int(value) => statement.raw_bind_parameter(index, value),
        }
        .map_err(sqlite_error)?;
    }
    Ok(())
}

fn cell(value: ValueRef<'_>) -> Result<Cell, sqlx::Error> {
    match value {
        ValueRef::Null => Ok(Cell::Null),
        ValueRef::Integer(value) => Ok(Cell::Int(value)),
        ValueRef::Text(bytes) => String::from_utf8(bytes.to_vec())
            .map(Cell::Text)
            .map_err(|e| sqlx::Error::Decode(Box::new(e))),
        ValueRef::Real(_) | ValueRef::Blob(_) => Err(sqlx::Error::Decode(
            "a column holds a real or a blob, where a text or an integer was expected".into(),
        )),
    }
}

impl Exec for Connection {
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error> {
        let mut statement = self.prepare_cached(sql).map_err(sqlite_error)?;
        bind(&mut statement, params)?;
        let changed = statement.raw_execute().map_err(sqlite_error)?;
        Ok(u64::try_from(changed).unwrap_or(0))
    }

    async fn fetch_optional(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, sqlx::Error> {
        let mut statement = self.prepare_cached(sql).map_err(sqlite_error)?;
        bind(&mut statement, params)?;
        let columns = statement.column_count();
        let mut rows = statement.raw_query();
        let Some(row) = rows.next().map_err(sqlite_error)? else {
            return Ok(None);
        };
        let cells = (0..columns)
            .map(|i| cell(row.get_ref(i).map_err(sqlite_error)?))
            .collect::<Result<_, _>>()?;
        Ok(Some(Row(cells)))
    }
}
