//! What the journal answers: a payment's record, the running and the stuck sagas.

use super::statements::{entry_of, ENTRY_COLUMNS};
use super::{corrupt, stamp, Journal, JournalError};
use crate::records::{PaymentSummary, RunningSagas, SagaRecord, StuckSaga};
use baton_contract::PaymentResult;
use sqlx::Row;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

impl Journal {
    /// Running sagas whose lease ran out, oldest lease first, at most `limit`.
    pub async fn stuck(&self, limit: u32) -> Result<Vec<StuckSaga>, JournalError> {
        self.stuck_for(limit, Duration::ZERO).await
    }

    /// Running sagas whose lease ran out at least `overdue` ago, oldest lease first, at
    /// most `limit`.
    pub async fn stuck_for(
        &self,
        limit: u32,
        overdue: Duration,
    ) -> Result<Vec<StuckSaga>, JournalError> {
        let before = stamp(SystemTime::now() - overdue);
        let rows = sqlx::query(
            "SELECT payment_id, started_at, lease_until, parked FROM journal_sagas
             WHERE result IS NULL AND lease_until < $1
             ORDER BY lease_until LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0)?;
                let payment_id = Uuid::parse_str(&id)
                    .map_err(|e| JournalError::Database(sqlx::Error::Decode(Box::new(e))))?;
                let parked: i64 = row.try_get(3)?;
                Ok(StuckSaga {
                    payment_id,
                    started_at: row.try_get(1)?,
                    lease_until: row.try_get(2)?,
                    parked: u32::try_from(parked).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    /// How many sagas are running and when the oldest began.
    pub async fn running(&self) -> Result<RunningSagas, JournalError> {
        let row =
            sqlx::query("SELECT COUNT(*), MIN(started_at) FROM journal_sagas WHERE result IS NULL")
                .fetch_one(&self.pool)
                .await?;
        let count: i64 = row.try_get(0)?;
        Ok(RunningSagas {
            count: u64::try_from(count).unwrap_or(0),
            oldest_started_at: row.try_get(1)?,
        })
    }

    /// The record of `payment_id`, or `None` if it was never begun.
    pub async fn load(&self, payment_id: Uuid) -> Result<Option<SagaRecord>, JournalError> {
        let id = payment_id.to_string();
        // The saga row is read before the entries: entries are only ever added, so the
        // entries read are at least those that existed when the row was read.
        let Some(row) = sqlx::query(
            "SELECT summary, started_at, updated_at, result, parked
             FROM journal_sagas WHERE payment_id = $1",
        )
        .bind(&id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let summary: String = row.try_get(0)?;
        let summary: PaymentSummary = serde_json::from_str(&summary)
            .map_err(|e| corrupt(payment_id, format!("summary: {e}")))?;
        let result: Option<String> = row.try_get(3)?;
        let result = result
            .map(|text| serde_json::from_str::<PaymentResult>(&text))
            .transpose()
            .map_err(|e| corrupt(payment_id, format!("result: {e}")))?;
        let parked: i64 = row.try_get(4)?;
        let parked = u32::try_from(parked)
            .map_err(|_| corrupt(payment_id, format!("parked count {parked}")))?;

        let rows = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM journal_entries WHERE payment_id = $1 ORDER BY seq"
        ))
        .bind(&id)
        .fetch_all(&self.pool)
        .await?;
        let entries = rows
            .iter()
            .map(|row| {
                entry_of(
                    payment_id,
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;

        // Earlier builds' SQLite writer recorded entries without touching the saga row:
        // the last change is the later of the row's time and the newest entry's.
        let mut updated_at: String = row.try_get(2)?;
        if let Some(newest) = entries.iter().map(|e| &e.recorded_at).max() {
            if *newest > updated_at {
                updated_at = newest.clone();
            }
        }
        Ok(Some(SagaRecord {
            payment_id,
            summary,
            started_at: row.try_get(1)?,
            updated_at,
            entries,
            result,
            parked,
        }))
    }

    /// The records of the `limit` most recently begun payments, newest first (the status
    /// page's list). Read-only.
    pub async fn recent(&self, limit: u32) -> Result<Vec<SagaRecord>, JournalError> {
        let rows = sqlx::query(
            "SELECT payment_id FROM journal_sagas ORDER BY started_at DESC, payment_id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0)?;
            let payment_id = Uuid::parse_str(&id)
                .map_err(|e| JournalError::Database(sqlx::Error::Decode(Box::new(e))))?;
            // Pruned between the two reads: simply not listed.
            if let Some(record) = self.load(payment_id).await? {
                records.push(record);
            }
        }
        Ok(records)
    }
}
