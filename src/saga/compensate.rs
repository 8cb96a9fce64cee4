//! Undoing what approved (compensations, their own retry policy) and handing what cannot
//! be settled to the operators' attention queue.

use super::decide::{undo, Undo};
use super::*;
use crate::workflow::Step;
use baton_contract::{Action, Command, PaymentView};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tracing::{error, info};

/// Sends an attention item; `Some(outcome)` when the saga must stop (it could not).
pub(super) async fn send_attention<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    item: AttentionItem,
) -> Option<SagaOutcome> {
    let kind = item.kind.clone();
    match env.transport.attention(item).await {
        Ok(()) => {
            env.observer.attention_raised(&kind);
            None
        }
        Err(CallError::ShuttingDown) => Some(SagaOutcome::Interrupted),
        Err(e) => {
            // The channel is alive but the item was refused: park the payment (it comes
            // back and tries again) rather than hold its delivery unacked.
            error!(error = %e, "could not reach the attention queue; parking the payment");
            Some(SagaOutcome::Park {
                tier: 0,
                step: "attention".into(),
                reason: e.to_string(),
            })
        }
    }
}

/// Undoes one step, with its own retry policy; a compensation that keeps failing goes to
/// the attention queue and is recorded as `compensation_failed`.
pub(super) async fn compensate<T: Transport, L: SagaLog, O: SagaObserver>(
    env: &SagaEnv<T, L, O>,
    source: Source<'_>,
    step: &Step,
    context: &Map<String, Value>,
) -> StepDecision {
    let started = Instant::now();
    let cmd = command(
        source,
        step,
        Action::Compensate,
        context,
        env.card_keys.as_ref(),
    );
    let Some(ended) = undo(
        ladder(
            env,
            step,
            &step.service,
            &cmd,
            &step.compensation_retry,
            false,
        )
        .await,
    ) else {
        return StepDecision::Leave(SagaOutcome::Interrupted);
    };
    match &ended {
        Undo::Undone { attempts } => {
            env.observer.compensation_ended(&step.name, true);
            info!(attempts, "step compensated");
        }
        Undo::Failed { attempts, reason } => {
            env.observer.compensation_ended(&step.name, false);
            error!(reason = %reason, attempts, "compensation failed; handing it to operators");
            let item = AttentionItem {
                payment_id: source.payment_id(),
                step: step.name.clone(),
                service: step.service.clone(),
                kind: "compensation_failed".into(),
                command_id: cmd.command_id.clone(),
                error: reason.clone(),
                at: env.clock.now_rfc3339(),
                command: Some(Command {
                    payment: PaymentView {
                        card: baton_contract::CardView {
                            number: None,
                            ..cmd.payment.card.clone()
                        },
                        ..cmd.payment.clone()
                    },
                    ..cmd.clone()
                }),
            };
            if let Some(outcome) = send_attention(env, item).await {
                return StepDecision::Leave(outcome);
            }
        }
    }
    let entry = ended.entry(step, started.elapsed());
    record(env, source.payment_id(), entry).await
}
