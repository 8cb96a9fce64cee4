//! Every write to the journal, as one set of SQL statements that run unchanged on SQLite
//! and PostgreSQL (`$n` placeholders, `TEXT` and `BIGINT` columns), written against
//! [`Exec`]: sqlx's `Any` connection on PostgreSQL, the SQLite writer thread's connection
//! on SQLite. A write is a [`Job`]; [`run_job`] runs it inside the transaction of the
//! writer's batch (see `store.rs`).

use super::{corrupt, not_begun, now, JournalError};
use crate::records::{action_name, action_of, JournalEntry, Pruned};
use baton_contract::{PaymentResult, StepRecord};
use baton_ops::exec::{Exec, Param};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// What an entry's JSON `body` column holds; step, action, order and time have columns.
#[derive(Serialize, Deserialize)]
pub(super) struct EntryBody {
    pub(super) record: StepRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) detail: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub(super) data: Map<String, Value>,
}

/// One write.
pub(super) enum Job {
    Begin {
        id: String,
        summary: String,
        now: String,
        lease_until: String,
    },
    Record {
        payment_id: Uuid,
        entry: JournalEntry,
        body: String,
    },
    Finish {
        payment_id: Uuid,
        text: String,
    },
    Park {
        payment_id: Uuid,
        lease_until: String,
    },
    /// Renew the leases of these running sagas.
    Renew {
        ids: Vec<String>,
        lease_until: String,
    },
    /// Take over a saga whose lease ran out.
    Claim {
        id: String,
        now: String,
        lease_until: String,
    },
    /// Delete finished sagas older than the cutoff.
    Prune {
        before: String,
    },
}

/// What a write gave, once its transaction is committed.
pub(super) enum Written {
    /// `true` if this write created the saga.
    Begun(bool),
    Recorded(JournalEntry),
    Finished(PaymentResult),
    Parked(u32),
    /// Rows changed (renewed, claimed).
    Changed(u64),
    Pruned(Pruned),
}

/// Creates a saga, or does nothing if it exists (then [`BEGIN_RENEW`] renews its lease).
const BEGIN_INSERT: &str = "INSERT INTO journal_sagas
        (payment_id, summary, started_at, updated_at, result, parked, last_seq, lease_until)
     VALUES ($1, $2, $3, $4, NULL, 0, 0, $5)
     ON CONFLICT (payment_id) DO NOTHING";

/// A saga begun again (a redelivery, a parked request back): whoever runs it now holds it.
const BEGIN_RENEW: &str =
    "UPDATE journal_sagas SET lease_until = $1 WHERE payment_id = $2 AND result IS NULL";

/// The first statement of a record on PostgreSQL: takes the saga row's lock until
/// commit, so that writers of one payment run one after the other, and tells whether the
/// saga was begun. (On SQLite the batch holds the database's write lock already, and
/// [`RECORD_INSERT`] tells whether the saga was begun: one statement instead of two.)
const RECORD_LOCK: &str = "UPDATE journal_sagas SET last_seq = last_seq + 1, updated_at = $1
     WHERE payment_id = $2";

/// The entry, numbered one past the payment's highest, and only for a saga that was
/// begun: safe because writers of the payment are serialised (by [`RECORD_LOCK`] on
/// PostgreSQL, the write lock on SQLite), and each statement sees what the previous
/// writer committed (PostgreSQL, READ COMMITTED). The conflict target names the
/// decision's key, so that a clash on the sequence index is an error, never mistaken for
/// a decision.
const RECORD_INSERT: &str =
    "INSERT INTO journal_entries (payment_id, step, action, seq, recorded_at, body)
     SELECT $1, $2, $3,
            COALESCE((SELECT MAX(seq) FROM journal_entries WHERE payment_id = $1), 0) + 1,
            $4, $5
     FROM journal_sagas WHERE payment_id = $1
     ON CONFLICT (payment_id, step, action) DO NOTHING";

/// First writer wins: a concurrent writer waits for the row lock (PostgreSQL) or the write
/// lock (SQLite) and re-checks `result IS NULL` against the committed row.
const FINISH: &str = "UPDATE journal_sagas SET result = $1, updated_at = $2
     WHERE payment_id = $3 AND result IS NULL
     RETURNING result";

/// A parked saga is leased until it should be back, plus one lease.
const PARK: &str = "UPDATE journal_sagas SET parked = parked + 1, updated_at = $1, lease_until = $2
     WHERE payment_id = $3
     RETURNING parked";

/// Takes over a saga only if its lease has run out; the condition is checked again under
/// the row's lock (PostgreSQL, READ COMMITTED) or the write lock (SQLite), so of two
/// sweepers one claims it.
const CLAIM: &str = "UPDATE journal_sagas SET lease_until = $1
     WHERE payment_id = $2 AND result IS NULL AND lease_until < $3";

/// Ids renewed per statement.
const RENEW_CHUNK: usize = 500;

/// Whether the saga `id` was begun.
async fn begun(db: &mut impl Exec, id: &str) -> Result<bool, sqlx::Error> {
    Ok(db
        .fetch_optional(
            "SELECT 1 FROM journal_sagas WHERE payment_id = $1",
            &[Param::Text(id)],
        )
        .await?
        .is_some())
}

/// Columns read for an entry, in this order.
pub(super) const ENTRY_COLUMNS: &str = "step, action, recorded_at, body";

/// Runs one write inside the caller's transaction. `Err` is a database error and aborts
/// the transaction; `Ok(Err(_))` is this write's own answer (not begun, unreadable), which
/// does not disturb other writes committed with it. `lock_rows`: take the saga row's
/// lock first ([`RECORD_LOCK`]; PostgreSQL, where writers of one payment may run at once).
pub(super) async fn run_job(
    db: &mut impl Exec,
    job: &Job,
    lock_rows: bool,
) -> Result<Result<Written, JournalError>, sqlx::Error> {
    use Param::Text;
    let now = now();
    Ok(match job {
        Job::Begin {
            id,
            summary,
            now: started,
            lease_until,
        } => {
            let inserted = db
                .execute(
                    BEGIN_INSERT,
                    &[
                        Text(id),
                        Text(summary),
                        Text(started),
                        Text(started),
                        Text(lease_until),
                    ],
                )
                .await?;
            if inserted == 0 {
                db.execute(BEGIN_RENEW, &[Text(lease_until), Text(id)])
                    .await?;
            }
            Ok(Written::Begun(inserted == 1))
        }
        Job::Record {
            payment_id,
            entry,
            body,
        } => {
            let id = payment_id.to_string();
            let action = action_name(entry.action);
            if lock_rows {
                let begun = db.execute(RECORD_LOCK, &[Text(&now), Text(&id)]).await?;
                if begun == 0 {
                    return Ok(Err(not_begun(*payment_id)));
                }
            }
            let inserted = db
                .execute(
                    RECORD_INSERT,
                    &[
                        Text(&id),
                        Text(&entry.step),
                        Text(action),
                        Text(&entry.recorded_at),
                        Text(body),
                    ],
                )
                .await?;
            if inserted == 1 {
                return Ok(Ok(Written::Recorded(entry.clone())));
            }
            // A decision was there first: it is the one to continue with.
            match stored_entry(db, *payment_id, &entry.step, action).await? {
                Some(stored) => stored.map(Written::Recorded),
                None if !lock_rows && !begun(db, &id).await? => Err(not_begun(*payment_id)),
                None => Err(corrupt(
                    *payment_id,
                    format!(
                        "step {} ({action}): entry neither inserted nor found",
                        entry.step
                    ),
                )),
            }
        }
        Job::Finish { payment_id, text } => {
            let id = payment_id.to_string();
            let finished = db
                .fetch_optional(FINISH, &[Text(text), Text(&now), Text(&id)])
                .await?;
            // Not written: the saga has a result already (the first one wins), or none.
            let row = match finished {
                Some(row) => row,
                None => {
                    let Some(row) = db
                        .fetch_optional(
                            "SELECT result FROM journal_sagas WHERE payment_id = $1",
                            &[Text(&id)],
                        )
                        .await?
                    else {
                        return Ok(Err(not_begun(*payment_id)));
                    };
                    row
                }
            };
            match row.opt_text(0)? {
                None => Err(corrupt(*payment_id, "result written but not found")),
                Some(stored) => serde_json::from_str::<PaymentResult>(&stored)
                    .map(Written::Finished)
                    .map_err(|e| corrupt(*payment_id, format!("result: {e}"))),
            }
        }
        Job::Park {
            payment_id,
            lease_until,
        } => {
            let id = payment_id.to_string();
            let Some(row) = db
                .fetch_optional(PARK, &[Text(&now), Text(lease_until), Text(&id)])
                .await?
            else {
                return Ok(Err(not_begun(*payment_id)));
            };
            let parked = row.int(0)?;
            u32::try_from(parked)
                .map(Written::Parked)
                .map_err(|_| corrupt(*payment_id, format!("parked count {parked}")))
        }
        Job::Renew { ids, lease_until } => {
            let mut changed = 0;
            for chunk in ids.chunks(RENEW_CHUNK) {
                let text = renew_text(chunk.len());
                let params: Vec<Param<'_>> = std::iter::once(Text(lease_until.as_str()))
                    .chain(chunk.iter().map(|id| Text(id)))
                    .collect();
                changed += db.execute(&text, &params).await?;
            }
            Ok(Written::Changed(changed))
        }
        Job::Claim {
            id,
            now,
            lease_until,
        } => {
            let changed = db
                .execute(CLAIM, &[Text(lease_until), Text(id), Text(now)])
                .await?;
            Ok(Written::Changed(changed))
        }
        Job::Prune { before } => Ok(Written::Pruned(prune(db, before).await?)),
    })
}

/// The statement renewing `n` sagas' leases: `$1` the new lease, `$2…` the ids.
fn renew_text(n: usize) -> String {
    let ids = (2..2 + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE journal_sagas SET lease_until = $1
         WHERE result IS NULL AND payment_id IN ({ids})"
    )
}

/// Deletes finished sagas (and their entries) last changed before `before`; never a
/// running one.
async fn prune(db: &mut impl Exec, before: &str) -> Result<Pruned, sqlx::Error> {
    let entries = db
        .execute(
            "DELETE FROM journal_entries WHERE payment_id IN
            (SELECT payment_id FROM journal_sagas WHERE result IS NOT NULL AND updated_at < $1)",
            &[Param::Text(before)],
        )
        .await?;
    let sagas = db
        .execute(
            "DELETE FROM journal_sagas WHERE result IS NOT NULL AND updated_at < $1",
            &[Param::Text(before)],
        )
        .await?;
    Ok(Pruned { sagas, entries })
}

/// The stored entry of `(payment_id, step, action)`, if any (`Some(Err)`: unreadable).
async fn stored_entry(
    db: &mut impl Exec,
    payment_id: Uuid,
    step: &str,
    action: &str,
) -> Result<Option<Result<JournalEntry, JournalError>>, sqlx::Error> {
    let id = payment_id.to_string();
    let row = db
        .fetch_optional(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM journal_entries
                 WHERE payment_id = $1 AND step = $2 AND action = $3"
            ),
            &[Param::Text(&id), Param::Text(step), Param::Text(action)],
        )
        .await?;
    row.map(|row| {
        Ok(entry_of(
            payment_id,
            row.text(0)?,
            row.text(1)?,
            row.text(2)?,
            row.text(3)?,
        ))
    })
    .transpose()
}

/// An entry from the columns of [`ENTRY_COLUMNS`].
pub(super) fn entry_of(
    payment_id: Uuid,
    step: String,
    action: String,
    recorded_at: String,
    body: String,
) -> Result<JournalEntry, JournalError> {
    let action = action_of(&action).ok_or_else(|| {
        corrupt(
            payment_id,
            format!("step {step}: unknown action {action:?}"),
        )
    })?;
    let body: EntryBody = serde_json::from_str(&body).map_err(|e| {
        corrupt(
            payment_id,
            format!("step {step} ({}): {e}", action_name(action)),
        )
    })?;
    Ok(JournalEntry {
        step,
        action,
        record: body.record,
        detail: body.detail,
        data: body.data,
        recorded_at,
    })
}
