//! One step's command through its failure ladder: breaker, timeout, retries, fallback,
//! parking, and the in-doubt give-up.

use super::*;
use crate::records::{JournalEntry, SagaRecord};
use crate::workflow::{Fallback, RetryPolicy, Step};
use baton_contract::{Action, Command, Reply, ReplyOutcome, StepOutcome, StepRecord};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Runs one step's ladder and records the decision.
pub(super) async fn execute<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    source: Source<'_>,
    step: &Step,
    context: &Map<String, Value>,
    saga: &SagaRecord,
) -> StepDecision {
    let started = Instant::now();
    let cmd = command(
        source,
        step,
        Action::Execute,
        context,
        env.card_keys.as_ref(),
    );
    let outcome = ladder(env, step, &step.service, &cmd, &step.retry, true).await;
    let (mut attempts, mut in_doubt, mut last_error) = match outcome {
        Ladder::Answer { reply, attempts } => {
            return record(
                env,
                source.payment_id(),
                answered(env, step, reply, attempts, started, None),
            )
            .await;
        }
        Ladder::Interrupted => return StepDecision::Leave(SagaOutcome::Interrupted),
        Ladder::Unavailable {
            attempts,
            in_doubt,
            last_error,
        } => (attempts, in_doubt, last_error),
    };

    // Fallbacks (never for side-effecting steps: the workflow refuses that).
    match &step.fallback {
        Some(Fallback::Service(alternate)) => {
            env.observer
                .fallback_taken(&step.name, FallbackKind::Service);
            info!(alternate = %alternate, "step unavailable; trying its fallback service");
            match ladder(env, step, alternate, &cmd, &step.retry, true).await {
                Ladder::Answer {
                    reply,
                    attempts: more,
                } => {
                    let entry = answered(
                        env,
                        step,
                        reply,
                        attempts + more,
                        started,
                        Some(alternate.clone()),
                    );
                    return record(env, source.payment_id(), entry).await;
                }
                Ladder::Interrupted => return StepDecision::Leave(SagaOutcome::Interrupted),
                Ladder::Unavailable {
                    attempts: more,
                    in_doubt: doubt,
                    last_error: e,
                } => {
                    attempts += more;
                    in_doubt |= doubt;
                    last_error = e;
                }
            }
        }
        Some(Fallback::Approve { max_amount_minor })
            if source.amount_minor() <= *max_amount_minor =>
        {
            env.observer
                .fallback_taken(&step.name, FallbackKind::Degraded);
            warn!(last_error = %last_error, "step unavailable; approving as a declared degraded decision");
            let mut record_ = StepRecord::new(
                step.name.clone(),
                StepOutcome::Approved,
                attempts,
                millis(started.elapsed()),
            );
            record_.degraded = true;
            record_.reason = Some("service_unavailable".into());
            let detail = Some(format!(
                "{} unavailable ({last_error}); approved as degraded: amount at most {max_amount_minor}",
                step.name
            ));
            return record(
                env,
                source.payment_id(),
                entry(step, Action::Execute, record_, detail, Map::new()),
            )
            .await;
        }
        _ => {}
    }

    // Park, or give up past the limit.
    let parking = env.workflow.parking();
    if saga.parked < parking.max_parks {
        let back_within = parking.tiers.iter().copied().max().unwrap_or_default();
        return match env.log.park(source.payment_id(), back_within).await {
            Ok(count) => {
                env.observer.parked(&step.name);
                let tier = parking.tier_for(count.saturating_sub(1));
                warn!(parked = count, tier, last_error = %last_error, "step unavailable; parking the payment");
                StepDecision::Leave(SagaOutcome::Park {
                    tier,
                    step: step.name.clone(),
                    reason: last_error,
                })
            }
            Err(e) => StepDecision::Leave(journal_failed(env, e)),
        };
    }

    // An earlier visit that ended in parking may have sent the command too (its timeouts
    // are not in this visit's count, and an open breaker may have kept this visit from
    // sending at all): a side-effecting step of a payment parked before stays in doubt.
    let in_doubt = in_doubt || (step.side_effects && saga.parked > 0);
    if in_doubt {
        // It may have happened. Ask once more with the same command id: the service
        // answers from its store if it acted. Only a definite answer is taken.
        if let Ladder::Answer {
            reply,
            attempts: more,
        } = ladder(
            env,
            step,
            &step.service,
            &cmd,
            &RetryPolicy {
                attempts: 1,
                ..step.retry.clone()
            },
            false,
        )
        .await
        {
            return record(
                env,
                source.payment_id(),
                answered(env, step, reply, attempts + more, started, None),
            )
            .await;
        }
        if !step.compensate {
            let item = AttentionItem {
                payment_id: source.payment_id(),
                step: step.name.clone(),
                service: step.service.clone(),
                kind: "in_doubt".into(),
                command_id: cmd.command_id.clone(),
                error: format!("no answer after {attempts} attempts and {} parkings; the effect may have happened: {last_error}", saga.parked),
                at: env.clock.now_rfc3339(),
                command: None,
            };
            if let Some(outcome) = send_attention(env, item).await {
                return StepDecision::Leave(outcome);
            }
        }
    }
    error!(parked = saga.parked, last_error = %last_error, "step unavailable past the parking limit; failing the payment");
    let mut record_ = StepRecord::new(
        step.name.clone(),
        StepOutcome::Failed,
        attempts,
        millis(started.elapsed()),
    );
    record_.reason = Some("service_unavailable".into());
    let detail = Some(format!(
        "{} stayed unavailable after {} parkings: {last_error}",
        step.name, saga.parked
    ));
    record(
        env,
        source.payment_id(),
        entry(step, Action::Execute, record_, detail, Map::new()),
    )
    .await
}

/// Settles a step of an abandoned saga without its request (see [`abandon`]).
pub(super) async fn give_up<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    source: Source<'_>,
    step: &Step,
    context: &Map<String, Value>,
    detail: &str,
) -> StepDecision {
    let started = Instant::now();
    let mut attempts = 0;
    if step.side_effects && !step.compensate {
        // It may have acted, and cannot be undone: ask it, with the same command id.
        let cmd = command(source, step, Action::Execute, context, None);
        let once = RetryPolicy {
            attempts: 1,
            ..step.retry.clone()
        };
        match ladder(env, step, &step.service, &cmd, &once, false).await {
            Ladder::Answer {
                reply,
                attempts: asked,
            } => {
                let entry = answered(env, step, reply, asked, started, None);
                return record(env, source.payment_id(), entry).await;
            }
            Ladder::Interrupted => return StepDecision::Leave(SagaOutcome::Interrupted),
            Ladder::Unavailable {
                attempts: asked,
                last_error,
                ..
            } => {
                attempts = asked;
                let item = AttentionItem {
                    payment_id: source.payment_id(),
                    step: step.name.clone(),
                    service: step.service.clone(),
                    kind: "in_doubt".into(),
                    command_id: cmd.command_id.clone(),
                    error: format!(
                        "the payment was abandoned ({detail}) and {} did not say whether it \
                         acted: {last_error}",
                        step.service
                    ),
                    at: env.clock.now_rfc3339(),
                    command: None,
                };
                if let Some(outcome) = send_attention(env, item).await {
                    return StepDecision::Leave(outcome);
                }
            }
        }
    }
    warn!(detail, "payment abandoned; failing its open step");
    let mut record_ = StepRecord::new(
        step.name.clone(),
        StepOutcome::Failed,
        attempts,
        millis(started.elapsed()),
    );
    record_.reason = Some(ABANDONED.into());
    let detail = Some(format!("{} abandoned: {detail}", step.name));
    record(
        env,
        source.payment_id(),
        entry(step, Action::Execute, record_, detail, Map::new()),
    )
    .await
}

/// The journal entry for a final answer.
pub(super) fn answered<T, L, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    step: &Step,
    reply: Reply,
    attempts: u32,
    started: Instant,
    via: Option<String>,
) -> JournalEntry {
    let duration = started.elapsed();
    env.observer.step_answered(&step.name, duration);
    let approved = reply.outcome == ReplyOutcome::Approved;
    let mut record_ = StepRecord::new(
        step.name.clone(),
        if approved {
            StepOutcome::Approved
        } else {
            StepOutcome::Declined
        },
        attempts,
        millis(duration),
    );
    record_.via = via;
    if approved {
        info!(attempts, duration_ms = record_.duration_ms, "step approved");
    } else {
        record_.reason = Some(reply.reason.clone().unwrap_or_else(|| "declined".into()));
        info!(reason = ?record_.reason, "step declined");
    }
    let detail = (!approved).then(|| {
        reply
            .detail
            .clone()
            .unwrap_or_else(|| format!("{} declined the payment", step.name))
    });
    entry(step, Action::Execute, record_, detail, reply.data)
}

/// Sends `cmd` to `service` with timeouts, retries and the breaker.
pub(super) async fn ladder<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    step: &Step,
    service: &str,
    cmd: &Command,
    retry: &RetryPolicy,
    respect_breaker: bool,
) -> Ladder {
    let mut delays = retry.delays();
    let mut attempts = 0;
    let mut in_doubt = false;
    let breaker = env.breakers.get(service);
    let gate = env.gates.get(service);
    loop {
        let permit = match breaker {
            Some(b) => match b.try_acquire() {
                Some(p) => Some(p),
                None if respect_breaker => {
                    env.observer
                        .attempt_ended(&step.name, AttemptEnd::BreakerOpen);
                    return Ladder::Unavailable {
                        attempts,
                        in_doubt,
                        last_error: format!("circuit breaker of {service} is open"),
                    };
                }
                // Compensations go through an open breaker: they must be tried.
                None => None,
            },
            None => None,
        };
        let _slot = match gate {
            Some(g) => Some(g.acquire().await.expect("gates are never closed")),
            None => None,
        };
        attempts += 1;
        if attempts > 1 {
            env.observer.retrying(&step.name);
        }
        let sent =
            tokio::time::timeout(step.timeout, env.transport.call(service, cmd.clone())).await;
        drop(_slot);
        let last_error = match sent {
            Ok(Ok(reply)) if reply.outcome != ReplyOutcome::Error => {
                let end = if reply.outcome == ReplyOutcome::Approved {
                    AttemptEnd::Approved
                } else {
                    AttemptEnd::Declined
                };
                env.observer.attempt_ended(&step.name, end);
                if let Some(p) = permit {
                    p.success();
                }
                return Ladder::Answer { reply, attempts };
            }
            Ok(Ok(reply)) => {
                env.observer.attempt_ended(&step.name, AttemptEnd::Error);
                if let Some(p) = permit {
                    p.failure();
                }
                let reason = reply.reason.unwrap_or_else(|| "error".into());
                warn!(attempt = attempts, reason = %reason, "service reported an error");
                format!(
                    "{service} reported {reason}{}",
                    reply.detail.map(|d| format!(" ({d})")).unwrap_or_default()
                )
            }
            Ok(Err(CallError::ShuttingDown)) => return Ladder::Interrupted,
            Ok(Err(e)) => {
                env.observer
                    .attempt_ended(&step.name, AttemptEnd::BrokerError);
                warn!(attempt = attempts, error = %e, "command not sent");
                e.to_string()
            }
            Err(_) => {
                env.observer.attempt_ended(&step.name, AttemptEnd::Timeout);
                if let Some(p) = permit {
                    p.failure();
                }
                in_doubt |= step.side_effects && cmd.action == Action::Execute;
                warn!(
                    attempt = attempts,
                    timeout_ms = millis(step.timeout),
                    "no reply in time"
                );
                format!(
                    "{service} did not answer within {} ms",
                    millis(step.timeout)
                )
            }
        };
        match delays.next() {
            Some(delay) => tokio::time::sleep(delay).await,
            None => {
                return Ladder::Unavailable {
                    attempts,
                    in_doubt,
                    last_error,
                }
            }
        }
    }
}
