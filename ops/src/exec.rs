//! One set of SQL statements, two ways to run them: [`Exec`] is what a store's statements
//! are written against, so the same text (`$n` placeholders, `TEXT` and `BIGINT` values)
//! runs on sqlx's `Any` connection (PostgreSQL, and SQLite where a pool is enough) and on
//! the SQLite connection of a [`SqliteThread`](crate::sqlite::SqliteThread), which runs a
//! whole batch of statements in one hand-over to its thread.
//!
//! What it is not: a query builder or an ORM. A statement binds text and integers and
//! reads back at most one row, as text, integers or NULL, which is all the journal needs.

use sqlx::{Any, AnyConnection, Row as _};

/// A value bound to `$n`: the statement's `n`-th parameter is `params[n - 1]`.
#[derive(Clone, Copy, Debug)]
pub enum Param<'a> {
    /// `TEXT`.
    Text(&'a str),
    /// `BIGINT` (SQLite `INTEGER`).
    Int(i64),
}

/// A column's value in a row read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A text.
    Text(String),
}

/// A row read back: its columns in the statement's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row(pub Vec<Cell>);

impl Row {
    fn cell(&self, index: usize) -> Result<&Cell, sqlx::Error> {
        self.0
            .get(index)
            .ok_or(sqlx::Error::ColumnIndexOutOfBounds {
                index,
                len: self.0.len(),
            })
    }

    fn mismatch(index: usize, wanted: &str, found: &Cell) -> sqlx::Error {
        let found = match found {
            Cell::Null => "NULL",
            Cell::Int(_) => "an integer",
            Cell::Text(_) => "a text",
        };
        sqlx::Error::ColumnDecode {
            index: index.to_string(),
            source: format!("expected {wanted}, found {found}").into(),
        }
    }

    /// Column `index` as a text, NULL as `None`.
    pub fn opt_text(&self, index: usize) -> Result<Option<String>, sqlx::Error> {
        match self.cell(index)? {
            Cell::Text(text) => Ok(Some(text.clone())),
            Cell::Null => Ok(None),
            other => Err(Self::mismatch(index, "a text", other)),
        }
    }

    /// Column `index` as a text.
    pub fn text(&self, index: usize) -> Result<String, sqlx::Error> {
        match self.cell(index)? {
            Cell::Text(text) => Ok(text.clone()),
            other => Err(Self::mismatch(index, "a text", other)),
        }
    }

    /// Column `index` as an integer.
    pub fn int(&self, index: usize) -> Result<i64, sqlx::Error> {
        match self.cell(index)? {
            Cell::Int(value) => Ok(*value),
            other => Err(Self::mismatch(index, "an integer", other)),
        }
    }
}

/// Runs one statement at a time inside whatever transaction the caller opened. Errors are
/// sqlx's, whichever connection ran the statement, so that callers classify them once.
// The futures are not declared `Send`: callers use a concrete connection, whose futures
// are `Send` where that connection's are (sqlx's), and the SQLite thread's never leave it.
#[allow(async_fn_in_trait)]
pub trait Exec {
    /// Runs a statement that returns no rows; how many rows it changed.
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error>;

    /// Runs a statement and reads its first row, if any (`RETURNING`, `SELECT`).
    async fn fetch_optional(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, sqlx::Error>;
}

fn bound<'q>(
    sql: &'q str,
    params: &[Param<'q>],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    params
        .iter()
        .fold(sqlx::query(sql), |query, param| match *param {
            Param::Text(text) => query.bind(text),
            Param::Int(value) => query.bind(value),
        })
}

impl Exec for AnyConnection {
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error> {
        Ok(bound(sql, params).execute(self).await?.rows_affected())
    }

    async fn fetch_optional(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, sqlx::Error> {
        let Some(row) = bound(sql, params).fetch_optional(self).await? else {
            return Ok(None);
        };
        let cells = (0..row.len())
            .map(|i| {
                // The `Any` driver refuses to decode an integer as a text and the other
                // way round, which tells the two apart; NULL decodes as either.
                if let Ok(value) = row.try_get::<Option<i64>, _>(i) {
                    return Ok(value.map_or(Cell::Null, Cell::Int));
                }
                let text: Option<String> = row.try_get(i)?;
                Ok(text.map_or(Cell::Null, Cell::Text))
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(Some(Row(cells)))
    }
}
