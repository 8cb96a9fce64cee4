//! The journal as the saga sees it: [`SagaLog`], implemented by [`Journal`].

use super::{Journal, JournalEntry, JournalError, PaymentSummary, SagaRecord};
use crate::saga::SagaLog;
use baton_contract::PaymentResult;
use std::time::Duration;
use uuid::Uuid;

impl SagaLog for Journal {
    async fn begin(&self, id: Uuid, summary: &PaymentSummary) -> Result<SagaRecord, JournalError> {
        Journal::begin(self, id, summary).await
    }
    async fn record(&self, id: Uuid, entry: &JournalEntry) -> Result<JournalEntry, JournalError> {
        Journal::record(self, id, entry).await
    }
    async fn finish(
        &self,
        id: Uuid,
        result: &PaymentResult,
    ) -> Result<PaymentResult, JournalError> {
        Journal::finish(self, id, result).await
    }
    async fn park(&self, id: Uuid, back_within: Duration) -> Result<u32, JournalError> {
        Journal::park(self, id, back_within).await
    }
}
