//! One broker connection's life: declare, consume, hand out requests, reconnect.

use super::replies::route_replies;
use super::requests::handle_request;
use super::transport::Session;
use super::{
    OrchestratorError, Shared, CONSUMER_INSTANCE, CONSUMER_JOURNAL, CONSUMER_JOURNAL_AT,
    CONSUMER_WORKFLOW,
};
use baton_amqp as amqp;
use futures_lite::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};
/// A connected session with its consumers.
pub(super) struct Live {
    pub(super) session: Arc<Session>,
    pub(super) consume: Channel,
    pub(super) requests: lapin::Consumer,
    pub(super) replies: lapin::Consumer,
    pub(super) consumer_tag: String,
}

/// Connects and declares everything; the session is installed in the transport.
pub(super) async fn open_session(shared: &Shared) -> Result<Live, OrchestratorError> {
    let settings = &shared.settings;
    let names = &settings.names;
    let connection = amqp::connect(
        &settings.amqp_url,
        &format!(
            "baton orchestrator {} {}",
            names.prefix(),
            settings.instance
        ),
        &amqp::TlsOptions::with_ca_file(settings.amqp_ca_file.clone()),
    )
    .await?;

    // Topology first: requests, results, dead letters, attention, parking, and every
    // service queue the workflow sends to, so a command waits in its queue even before
    // its service starts.
    let setup = connection.create_channel().await?;
    amqp::declare_core(&setup, names).await?;
    amqp::declare_attention(&setup, names).await?;
    for delay_ms in settings.workflow.parking().delays_ms() {
        amqp::declare_parking(&setup, names, delay_ms).await?;
    }
    for service in settings.workflow.services() {
        amqp::declare_command_queue(&setup, names, service).await?;
    }
    let _ = setup.close(200, "declared".into()).await;

    // Replies: an exclusive queue that disappears with this connection, consumed without
    // acks (a reply is only useful to the process that waits for it).
    let reply_queue = &shared.env.transport.reply_queue;
    let reply_channel = connection.create_channel().await?;
    let (_, replies) = amqp::consume_exclusive(&reply_channel, reply_queue).await?;

    let publish = amqp::confirm_channel(&connection).await?;
    let events = connection.create_channel().await?;
    let consume = connection.create_channel().await?;
    consume
        .basic_qos(settings.concurrency, BasicQosOptions::default())
        .await?;
    let consumer_tag = format!("baton-{}", settings.instance);
    let mut announce = FieldTable::default();
    let journal = &shared.env.log;
    for (key, value) in [
        (CONSUMER_WORKFLOW, settings.workflow.digest()),
        (CONSUMER_JOURNAL, journal.id().to_owned()),
        (CONSUMER_JOURNAL_AT, journal.location().to_owned()),
        (CONSUMER_INSTANCE, settings.instance.clone()),
    ] {
        announce.insert(key.into(), AMQPValue::LongString(value.into()));
    }
    let requests = consume
        .basic_consume(
            names.requests_queue().as_str().into(),
            consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            announce,
        )
        .await?;
    let session = Arc::new(Session {
        connection,
        publish,
        events,
    });
    if let Ok(mut current) = shared.env.transport.session.write() {
        *current = Some(session.clone());
    }
    shared.health.set_ready();
    let steps: Vec<String> = settings
        .workflow
        .steps()
        .iter()
        .map(|s| format!("{}->{}", s.name, names.command_queue(&s.service)))
        .collect();
    info!(
        instance = %settings.instance,
        version = env!("CARGO_PKG_VERSION"),
        broker = %amqp::redact_url(&settings.amqp_url),
        prefix = %names.prefix(),
        queue = %names.requests_queue(),
        journal = %journal.location(),
        journal_id = %journal.id(),
        workflow = %settings.workflow.source_name(),
        workflow_digest = %settings.workflow.digest(),
        steps = %steps.join(","),
        concurrency = settings.concurrency,
        "orchestrator consuming payment requests"
    );
    Ok(Live {
        session,
        consume,
        requests,
        replies,
        consumer_tag,
    })
}

/// Runs sessions until asked to stop, reconnecting after every loss.
pub(super) async fn supervise(
    shared: Arc<Shared>,
    first: Live,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), OrchestratorError> {
    let mut live = first;
    loop {
        match serve(&shared, live, &mut stopped).await {
            SessionEnd::Stopped => return Ok(()),
            SessionEnd::Lost(why) => {
                shared
                    .health
                    .set_not_ready("broker connection lost; reconnecting");
                warn!(error = %why, "broker connection lost; reconnecting");
            }
        }
        let mut delays = baton_ops::reconnect_delays();
        live = loop {
            let delay = delays.next().unwrap_or(baton_ops::RECONNECT_MAX_DELAY);
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            match open_session(&shared).await {
                Ok(live) => {
                    shared.metrics.reconnects.inc();
                    info!("reconnected to the broker");
                    break live;
                }
                Err(e) => warn!(error = %e, "reconnect failed; retrying"),
            }
        };
    }
}

pub(super) enum SessionEnd {
    Stopped,
    Lost(String),
}

/// One connection's life: route replies, take requests, one task each.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    live: Live,
    stopped: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let Live {
        session,
        consume,
        mut requests,
        replies,
        consumer_tag,
    } = live;
    let pending = shared.env.transport.pending.clone();
    let metrics = shared.metrics.clone();
    let mut router = tokio::spawn(route_replies(replies, pending, metrics));
    // Failures seen from here on concern this session's channels only.
    let mut broken = shared.env.transport.broken.subscribe();
    broken.mark_unchanged();
    let mut tasks = JoinSet::new();
    let end = loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => break SessionEnd::Stopped,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = &mut router => break SessionEnd::Lost("reply consumer ended".into()),
            _ = broken.changed() => {
                break SessionEnd::Lost("the publish channel was closed by the broker".into())
            }
            delivery = requests.next() => match delivery {
                Some(Ok(delivery)) => {
                    tasks.spawn(handle_request(delivery, shared.clone()));
                }
                Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                None => break SessionEnd::Lost("request consumer cancelled by the broker".into()),
            }
        }
    };

    match end {
        SessionEnd::Stopped => {
            // Stop taking new requests; deliveries prefetched but not started go back to
            // the queue when the channel closes.
            let _ = consume
                .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
                .await;
            shared.health.set_not_ready("shutting down");
            info!(
                in_flight = tasks.len(),
                "shutting down: finishing in-flight payments"
            );
            let deadline = tokio::time::sleep(shared.settings.shutdown_timeout);
            tokio::pin!(deadline);
            while !tasks.is_empty() {
                tokio::select! {
                    _ = tasks.join_next() => {}
                    _ = &mut deadline => {
                        warn!(left = tasks.len(), "shutdown deadline reached; unfinished payments stay unacked for another replica");
                        break;
                    }
                }
            }
        }
        SessionEnd::Lost(_) => {}
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    router.abort();
    if let Ok(mut current) = shared.env.transport.session.write() {
        *current = None;
    }
    if let Ok(mut map) = shared.env.transport.pending.lock() {
        map.clear();
    }
    let _ = session
        .connection
        .close(200, "baton orchestrator stopping".into())
        .await;
    end
}
