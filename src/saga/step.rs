//! One step's command through its failure ladder — breaker, timeout, retries — and the
//! carrying out of what [`decide`] makes of it: the fallback service, parking, the last
//! question to a step in doubt, the attention item, the journal entry.

use super::decide::{decide, Decision, Ladder, Settlement, Standing, Target, Tried};
use super::*;
use crate::records::SagaRecord;
use crate::workflow::{RetryPolicy, Step};
use baton_contract::{Action, Command, ReplyOutcome, StepOutcome};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Settles a step the journal has no decision for, as `mode` says: sends its command
/// where [`decide`] says until it decides how the step ends, then records that.
pub(super) async fn settle<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    source: Source<'_>,
    step: &Step,
    context: &Map<String, Value>,
    saga: &SagaRecord,
    mode: Mode<'_>,
) -> StepDecision {
    let started = Instant::now();
    let cmd = command(
        source,
        step,
        Action::Execute,
        context,
        env.card_keys.as_ref(),
    );
    let standing = Standing {
        step,
        mode,
        amount_minor: source.amount_minor(),
        parked: saga.parked,
        max_parks: env.workflow.parking().max_parks,
    };
    let mut tried = Vec::new();
    loop {
        match decide(&standing, &tried) {
            Decision::Send(target) => {
                let outcome = send(env, step, &cmd, &target).await;
                tried.push(Tried { target, outcome });
            }
            Decision::Park { reason } => return park(env, source, step, reason).await,
            Decision::Settle(settlement) => {
                return carry_out(env, source, &standing, &cmd, settlement, started).await
            }
            Decision::Interrupted => return StepDecision::Leave(SagaOutcome::Interrupted),
        }
    }
}

/// Sends `cmd` through the ladder to `target`.
async fn send<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    step: &Step,
    cmd: &Command,
    target: &Target,
) -> Ladder {
    match target {
        Target::Service => ladder(env, step, &step.service, cmd, &step.retry, true).await,
        Target::Fallback(alternate) => {
            env.observer
                .fallback_taken(&step.name, FallbackKind::Service);
            info!(alternate = %alternate, "step unavailable; trying its fallback service");
            ladder(env, step, alternate, cmd, &step.retry, true).await
        }
        Target::Question => {
            let once = RetryPolicy {
                attempts: 1,
                ..step.retry.clone()
            };
            ladder(env, step, &step.service, cmd, &once, false).await
        }
    }
}

/// Counts one more parking and leaves the payment to wait in its tier.
async fn park<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    source: Source<'_>,
    step: &Step,
    reason: String,
) -> StepDecision {
    let parking = env.workflow.parking();
    let back_within = parking.tiers.iter().copied().max().unwrap_or_default();
    match env.log.park(source.payment_id(), back_within).await {
        Ok(count) => {
            env.observer.parked(&step.name);
            let tier = parking.tier_for(count.saturating_sub(1));
            warn!(parked = count, tier, last_error = %reason, "step unavailable; parking the payment");
            StepDecision::Leave(SagaOutcome::Park {
                tier,
                step: step.name.clone(),
                reason,
            })
        }
        Err(e) => StepDecision::Leave(journal_failed(env, e)),
    }
}

/// Records how the step ended; an in-doubt failure reaches operators first.
async fn carry_out<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    source: Source<'_>,
    standing: &Standing<'_>,
    cmd: &Command,
    settlement: Settlement,
    started: Instant,
) -> StepDecision {
    let step = standing.step;
    match &settlement {
        Settlement::Answered { .. } => {
            let duration = started.elapsed();
            env.observer.step_answered(&step.name, duration);
            let entry = settlement.entry(step, duration);
            let line = &entry.record;
            if line.outcome == StepOutcome::Approved {
                info!(
                    attempts = line.attempts,
                    duration_ms = line.duration_ms,
                    "step approved"
                );
            } else {
                info!(reason = ?line.reason, "step declined");
            }
            return record(env, source.payment_id(), entry).await;
        }
        Settlement::Degraded { detail, .. } => {
            env.observer
                .fallback_taken(&step.name, FallbackKind::Degraded);
            warn!(detail = %detail, "step unavailable; approving as a declared degraded decision");
        }
        Settlement::Failed {
            detail, in_doubt, ..
        } => {
            if let Some(error) = in_doubt {
                let item = AttentionItem {
                    payment_id: source.payment_id(),
                    step: step.name.clone(),
                    service: step.service.clone(),
                    kind: "in_doubt".into(),
                    command_id: cmd.command_id.clone(),
                    error: error.clone(),
                    at: env.clock.now_rfc3339(),
                    command: None,
                };
                // Boxed: rare, and held in place it would add to every step's future.
                if let Some(outcome) = Box::pin(send_attention(env, item)).await {
                    return StepDecision::Leave(outcome);
                }
            }
            match standing.mode {
                Mode::Live => {
                    error!(parked = standing.parked, detail = %detail, "step unavailable past the parking limit; failing the payment");
                }
                Mode::Abandon(_) => {
                    warn!(detail = %detail, "payment abandoned; failing its open step")
                }
            }
        }
    }
    let entry = settlement.entry(step, started.elapsed());
    record(env, source.payment_id(), entry).await
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
