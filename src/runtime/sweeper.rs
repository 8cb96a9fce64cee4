//! The keeper of this process's sagas: renews their leases, counts the running ones, and
//! sweeps sagas whose lease ran out to an end.

use super::publish::{count_result, publish_result};
use super::Shared;
use crate::saga::{self, SagaOutcome};
use lapin::BasicProperties;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{warn, Instrument};
use uuid::Uuid;
/// How often the leases of this process's sagas are renewed and the sweeper looks for
/// sagas whose lease ran out: a fifth of the lease, between 100 ms and 60 s.
pub(super) fn keeper_tick(lease: Duration) -> Duration {
    (lease / 5).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// While requests wait in the queue, the sweeper takes only sagas whose lease ran out this
/// many leases ago (20 minutes with the default lease).
pub(super) const BACKLOG_GRACE_LEASES: u32 = 4;

/// Sagas the sweeper takes over per round.
pub(super) const SWEEP_BATCH: u32 = 32;

/// Renews the leases of the sagas this process runs, keeps `baton_sagas_running` and
/// `baton_saga_oldest_running_seconds`, and sweeps: takes over sagas whose lease ran out
/// and finishes them ([`saga::abandon`]). Every replica sweeps; the journal's claim lets
/// one of them take each saga. Stops with the process.
pub(super) async fn keep_sagas(
    shared: std::sync::Weak<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let Some(tick) = shared.upgrade().map(|s| keeper_tick(s.settings.saga_lease)) else {
        return;
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let journal = shared.env.log.clone();
        if let Err(e) = journal.renew(&shared.env.live.ids()).await {
            shared.metrics.journal_errors.inc();
            warn!(error = %e, "could not renew the leases of running sagas");
        }
        match journal.running().await {
            Ok(running) => {
                let metrics = &shared.metrics;
                metrics
                    .sagas_running
                    .set(i64::try_from(running.count).unwrap_or(i64::MAX));
                let age = running
                    .oldest_started_at
                    .and_then(|t| humantime::parse_rfc3339(&t).ok())
                    .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                    .unwrap_or_default();
                metrics.saga_oldest_running_seconds.set(age.as_secs_f64());
            }
            Err(e) => {
                shared.metrics.journal_errors.inc();
                warn!(error = %e, "could not count running sagas");
            }
        }
        // Finishing a saga sends compensations and publishes a result: not while the
        // broker is away (its lease runs out again and a later round takes it). And not
        // while requests wait in the queue: after an outage longer than a lease, the
        // requests of expired sagas are back in the queue, and resuming them is better
        // than abandoning them; each renews its saga's lease when it begins again.
        let overdue = match shared.env.transport.requests_waiting().await {
            Some(0) => Duration::ZERO,
            // A backlog: take only sagas overdue by far more than any backlog delays a
            // request, so a sweeper still works on a system that never drains.
            Some(_) => shared.settings.saga_lease * BACKLOG_GRACE_LEASES,
            None => continue,
        };
        match journal.stuck_for(SWEEP_BATCH, overdue).await {
            Ok(stuck) => {
                for saga in stuck {
                    match journal.claim(saga.payment_id).await {
                        Ok(true) => {
                            tokio::spawn(sweep_one(shared.clone(), saga));
                        }
                        Ok(false) => {}
                        Err(e) => warn!(error = %e, "could not claim a stuck saga"),
                    }
                }
            }
            Err(e) => {
                shared.metrics.journal_errors.inc();
                warn!(error = %e, "could not look for stuck sagas");
            }
        }
    }
}

/// Finishes one saga the sweeper claimed, and publishes its result.
pub(super) async fn sweep_one(shared: Arc<Shared>, stuck: crate::journal::StuckSaga) {
    let span = tracing::info_span!("sweep", payment_id = %stuck.payment_id);
    async {
        let detail = format!(
            "nobody drove it since its lease ran out at {} (begun {}, parked {} times): \
             its request is gone",
            stuck.lease_until, stuck.started_at, stuck.parked
        );
        match finish_from_journal(&shared, stuck.payment_id, &detail).await {
            Ok(true) => shared
                .metrics
                .sagas_swept
                .with_label_values(&["finished"])
                .inc(),
            Ok(false) => shared
                .metrics
                .sagas_swept
                .with_label_values(&["left"])
                .inc(),
            Err(e) => {
                shared
                    .metrics
                    .sagas_swept
                    .with_label_values(&["left"])
                    .inc();
                warn!(error = %e, "could not finish a stuck saga; a later sweep will");
            }
        }
    }
    .instrument(span)
    .await
}

/// Drives the saga of `payment_id` to an end from the journal ([`saga::abandon`]) and
/// publishes its result to the payments exchange (the client's `reply_to` is not in the
/// journal). `Ok(false)`: it could not be finished now (a service or the journal away);
/// its lease runs out again and a later sweep takes it.
pub(super) async fn finish_from_journal(
    shared: &Shared,
    payment_id: Uuid,
    detail: &str,
) -> Result<bool, String> {
    let record = shared
        .env
        .log
        .load(payment_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("payment {payment_id} is not in the journal"))?;
    let already = record.result.is_some();
    let SagaOutcome::Finished { result, .. } = saga::abandon(&shared.env, &record, detail).await
    else {
        return Ok(false);
    };
    if already {
        // Someone finished it meanwhile and published its result.
        return Ok(true);
    }
    warn!(status = result.status.as_str(), reason = ?result.reason, "abandoned payment finished");
    let no_client = BasicProperties::default();
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let published = match shared.env.transport.channel() {
            Ok(channel) => publish_result(&channel, &result, &no_client, shared)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match published {
            Ok(()) => {
                count_result(&result, shared);
                return Ok(true);
            }
            Err(e) if attempt < 10 => {
                warn!(error = %e, attempt, "could not publish an abandoned payment's result; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(format!(
                    "the result is in the journal but could not be published: {e}"
                ))
            }
        }
    }
}
