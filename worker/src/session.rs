//! The worker's life on the broker: one [`Session`] per connection, consumed until it
//! fails, then reconnected with capped exponential backoff and jitter (forever: only a
//! shutdown ends it), and the graceful shutdown that finishes the commands in flight.

use crate::delivery;
use crate::handler::Handler;
use crate::shared::{Link, Shared};
use baton_amqp::{self as amqp, BrokerError};
use baton_ops::reconnect_delays;
use futures_lite::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// One broker connection's worth of state; replaced whole on a reconnect.
pub(crate) struct Session {
    /// Kept to close it on shutdown (dropping it would not say goodbye to the broker).
    connection: Connection,
    /// The consuming channel (prefetch = concurrency).
    consume: Channel,
    /// Deliveries of `<prefix>.cmd.<service>`.
    consumer: Consumer,
    /// What delivery tasks publish on.
    link: Arc<Link>,
}

/// Connects, declares the command queue (again, after a reconnect: the topology function
/// is idempotent) and starts consuming.
pub(crate) async fn open<H>(shared: &Shared<H>) -> Result<Session, BrokerError> {
    let connection =
        amqp::connect(&shared.amqp_url, &shared.connection_name, &shared.amqp_tls).await?;
    let result = async {
        let consume = connection.create_channel().await?;
        amqp::declare_command_queue(&consume, &shared.names, &shared.queue_service).await?;
        // Prefetch = concurrency: the broker never hands us more than we work on at once,
        // which also bounds the delivery tasks.
        consume
            .basic_qos(shared.concurrency, BasicQosOptions::default())
            .await?;
        let publish = amqp::confirm_channel(&connection).await?;
        let tag = format!("baton-{}-{}", shared.service, uuid::Uuid::new_v4().simple());
        let consumer = consume
            .basic_consume(
                shared.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let link = Arc::new(Link {
            publish,
            broken: Notify::new(),
        });
        Ok::<_, BrokerError>((consume, consumer, link))
    }
    .await;
    match result {
        Ok((consume, consumer, link)) => Ok(Session {
            connection,
            consume,
            consumer,
            link,
        }),
        Err(e) => {
            // Don't leave a half-set-up connection behind.
            let _ = connection.close(200, "set-up failed".into()).await;
            Err(e)
        }
    }
}

/// The service's life: consume until stopped; when the connection or a channel is lost,
/// reconnect (forever, with backoff) and consume again. Ends only on shutdown.
pub(crate) async fn run<H: Handler>(
    shared: Arc<Shared<H>>,
    mut session: Session,
    mut stopped: watch::Receiver<bool>,
) {
    // One set across sessions: tasks of a dead session still finish (or fail) on their own.
    let mut tasks = JoinSet::new();
    loop {
        let lost = tokio::select! {
            // `Err` means the RunningService was dropped: stop as well.
            _ = stopped.changed() => break,
            lost = consume(&shared, &mut session, &mut tasks) => lost,
        };
        shared.set_not_ready("reconnecting to the broker");
        tracing::warn!(
            service = %shared.service,
            error = %lost,
            "broker connection lost: reconnecting"
        );
        // The connection may be half alive (only a channel died): close it so the broker
        // requeues what it still holds for us. Bounded: a dead socket must not hang here.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            session.connection.close(200, "reconnecting".into()),
        )
        .await;
        match reconnect(&shared, &mut stopped).await {
            Some(next) => {
                session = next;
                shared.metrics.reconnected();
                shared.health.send_modify(|h| h.reconnects += 1);
                shared.set_ready();
                tracing::info!(service = %shared.service, queue = %shared.queue, "reconnected: consuming again");
            }
            None => {
                drain(&mut tasks).await;
                shared.handler.close().await;
                tracing::info!(queue = %shared.queue, "stopped while reconnecting");
                return;
            }
        }
    }
    shared.set_not_ready("shutting down");
    tracing::info!(queue = %shared.queue, in_flight = tasks.len(), "stopping: finishing commands in flight");
    // Deliveries buffered but not started stay unacked and return to the queue when the
    // channel closes below.
    if let Err(e) = session
        .consume
        .basic_cancel(session.consumer.tag(), BasicCancelOptions::default())
        .await
    {
        tracing::warn!(error = %e, "cancelling the consumer failed");
    }
    drain(&mut tasks).await;
    let Session {
        connection,
        consume,
        consumer,
        link,
    } = session;
    drop(consumer);
    let _ = consume.close(200, "shutdown".into()).await;
    let _ = link.publish.close(200, "shutdown".into()).await;
    let _ = connection.close(200, "shutdown".into()).await;
    shared.handler.close().await;
    tracing::info!(queue = %shared.queue, "stopped");
}

/// Spawns a task per delivery until the session fails; returns why it failed.
async fn consume<H: Handler>(
    shared: &Arc<Shared<H>>,
    session: &mut Session,
    tasks: &mut JoinSet<()>,
) -> String {
    loop {
        tokio::select! {
            next = session.consumer.next() => match next {
                Some(Ok(delivery)) => {
                    tasks.spawn(delivery::process(shared.clone(), session.link.clone(), delivery));
                }
                Some(Err(e)) => {
                    return format!("consuming {} failed: {}", shared.queue, BrokerError::from(e));
                }
                // Also what a deleted queue looks like: the reconnect declares it again.
                None => return format!("the broker cancelled the consumer of {}", shared.queue),
            },
            () = session.link.broken.notified() => {
                return format!("the reply channel of {} closed", shared.queue);
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_task_end(done),
        }
    }
}

/// Opens a new session after [`reconnect_delays`], until it works or the service is
/// stopped (then `None`).
async fn reconnect<H>(shared: &Shared<H>, stopped: &mut watch::Receiver<bool>) -> Option<Session> {
    for (attempt, delay) in (1u32..).zip(reconnect_delays()) {
        let opened = async {
            tokio::time::sleep(delay).await;
            open(shared).await
        };
        tokio::select! {
            _ = stopped.changed() => return None,
            opened = opened => match opened {
                Ok(session) => return Some(session),
                Err(e) => tracing::warn!(
                    service = %shared.service,
                    attempt,
                    error = %e,
                    "reconnecting failed: trying again"
                ),
            },
        }
    }
    // The backoff never ends.
    None
}

/// How long a shutdown waits for the commands in flight. A command still unfinished then
/// is abandoned unacked: the broker redelivers it (to another instance) and the store
/// answers the repeat, so a task stuck on a dead channel cannot hold a shutdown forever.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);

async fn drain(tasks: &mut JoinSet<()>) {
    let finished = tokio::time::timeout(SHUTDOWN_DRAIN, async {
        while let Some(done) = tasks.join_next().await {
            log_task_end(done);
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "commands still unfinished at the shutdown deadline: abandoned unacked, the broker redelivers them"
        );
        tasks.shutdown().await;
    }
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        // The delivery stays unacked and is redelivered when the channel closes.
        tracing::error!(error = %e, "a command task panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_drain_waits_for_commands_up_to_its_deadline_only() {
        let mut tasks = JoinSet::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = done_tx.send(());
        });
        tasks.spawn(std::future::pending::<()>());
        let started = tokio::time::Instant::now();
        drain(&mut tasks).await;
        assert_eq!(started.elapsed(), SHUTDOWN_DRAIN, "stopped at the deadline");
        assert!(tasks.is_empty(), "the stuck task was abandoned");
        assert!(done_rx.await.is_ok(), "the finishing one finished first");
    }
}
