//! The checks that look at every process of a deployment: consumers of the request queue
//! (orchestrators' workflow and journal announcements) and the journals they record in.

use super::*;
use crate::broker::AdminApi;
use crate::runtime::{CONSUMER_INSTANCE, CONSUMER_JOURNAL, CONSUMER_JOURNAL_AT, CONSUMER_WORKFLOW};
use crate::workflow::Workflow;
use baton_amqp::{self as amqp};
use baton_contract::Names;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long doctor waits for the management API to list as many consumers of the request
/// queue as AMQP counts: the API's consumer details come from statistics it collects every
/// few seconds (`collect_statistics_interval`, 5 s by default), so an orchestrator that
/// has just started is counted by AMQP at once and listed by the API a little later.
pub(super) const CONSUMER_LISTING_WAIT: Duration = Duration::from_secs(15);

/// The queue's management record, once it lists `expected` consumers (or the wait is
/// over: then what it lists).
pub(super) async fn queue_listing(
    api: &AdminApi,
    path: &str,
    expected: u32,
) -> Result<Option<Value>, crate::broker::BrokerSetupError> {
    let deadline = Instant::now() + CONSUMER_LISTING_WAIT;
    loop {
        let info = api.request(hyper::Method::GET, path, None).await?;
        let listed = info
            .as_ref()
            .and_then(|i| i.get("consumer_details"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if listed >= expected as usize || Instant::now() >= deadline {
            return Ok(info);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The orchestrators consuming the request queue (`expected` of them, as AMQP counts):
/// all on this workflow? Returns the check and each orchestrator's announced journal
/// (instance → (id, location)).
pub(super) async fn orchestrators(
    api: &AdminApi,
    vhost: &str,
    names: &Names,
    workflow: &Workflow,
    expected: u32,
) -> (Check, BTreeMap<String, (String, String)>) {
    let queue = names.requests_queue();
    let path = format!("/queues/{}/{queue}", encode_vhost(vhost));
    let mut journals = BTreeMap::new();
    let info = match queue_listing(api, &path, expected).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            return (
                Check::fail(
                    "orchestrators",
                    format!(
                        "{queue} does not exist: start `baton run --prefix {}`",
                        names.prefix()
                    ),
                ),
                journals,
            )
        }
        Err(e) => return (Check::fail("management API", e.to_string()), journals),
    };
    let consumers = info
        .get("consumer_details")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mine = workflow.digest();
    let mut by_digest: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for consumer in &consumers {
        let args = consumer.get("arguments").cloned().unwrap_or(Value::Null);
        let text = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
        let instance = text(CONSUMER_INSTANCE).unwrap_or_else(|| {
            consumer
                .get("consumer_tag")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        });
        let digest = text(CONSUMER_WORKFLOW).unwrap_or_else(|| "none announced".into());
        if let Some(id) = text(CONSUMER_JOURNAL) {
            journals.insert(
                instance.clone(),
                (id, text(CONSUMER_JOURNAL_AT).unwrap_or_else(|| "?".into())),
            );
        }
        by_digest.entry(digest).or_default().push(instance);
    }
    let listed = |m: &BTreeMap<String, Vec<String>>| {
        m.iter()
            .map(|(digest, who)| format!("{} with workflow {digest}", who.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let check = match by_digest.len() {
        0 => Check::fail(
            "orchestrators",
            format!(
                "nobody consumes {queue}: start `baton run --prefix {}`",
                names.prefix()
            ),
        ),
        1 if by_digest.contains_key(&mine) => Check::pass(
            "orchestrators",
            format!(
                "{} consume {queue} with workflow {mine} (this one)",
                consumers.len()
            ),
        ),
        1 => Check::fail(
            "orchestrators",
            format!(
                "{}, but --workflow here ({}) is {mine}: run doctor with the orchestrators' \
                 workflow file, or restart them with this one",
                listed(&by_digest),
                workflow.source_name()
            ),
        ),
        _ => Check::fail(
            "orchestrators",
            format!(
                "{queue} is consumed with different workflows: {}; every orchestrator of a \
                 prefix must run the same --workflow file (this one is {mine}): restart the odd \
                 ones with it",
                listed(&by_digest)
            ),
        ),
    };
    (check, journals)
}

/// The journal: the orchestrators share one, and the one given here is writable.
pub(super) async fn journal_checks(
    journal_url: Option<&str>,
    announced: &BTreeMap<String, (String, String)>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let ids: BTreeSet<&str> = announced.values().map(|(id, _)| id.as_str()).collect();
    if ids.len() > 1 {
        let described: Vec<String> = announced
            .iter()
            .map(|(who, (id, at))| format!("{who} records in journal {id} at {at}"))
            .collect();
        checks.push(Check::fail(
            "journal",
            format!(
                "{}: replicas must share one journal, or a payment redelivered to another \
                 replica starts over — give every orchestrator the same --journal-url \
                 postgres://…",
                described.join(", ")
            ),
        ));
    } else if let Some((id, at)) = announced.values().next() {
        checks.push(Check::pass(
            "journal",
            format!(
                "{} orchestrator(s) record in journal {id} at {at}",
                announced.len()
            ),
        ));
    }
    let Some(url) = journal_url else {
        return checks;
    };
    let at = amqp::database_location(url);
    if url.starts_with("sqlite:") && !std::path::Path::new(&at).exists() {
        checks.push(Check::fail(
            "journal writable",
            format!(
                "no journal at {at} (doctor creates none): give the orchestrators' --journal-url"
            ),
        ));
        return checks;
    }
    match crate::journal::Journal::open_existing(url).await {
        Ok(journal) => {
            let written = journal.check_writable().await;
            let foreign = !ids.is_empty() && !ids.contains(journal.id());
            checks.push(match (written, foreign) {
                (Err(e), _) => Check::fail("journal writable", format!("{at}: {e}")),
                (Ok(()), true) => Check::fail(
                    "journal writable",
                    format!(
                        "{at} (journal {}) is writable, but no running orchestrator records \
                         there: give this doctor the orchestrators' --journal-url",
                        journal.id()
                    ),
                ),
                (Ok(()), false) => Check::pass(
                    "journal writable",
                    format!("{at} (journal {})", journal.id()),
                ),
            });
            journal.close().await;
        }
        Err(e) => checks.push(Check::fail("journal writable", e.to_string())),
    }
    checks
}
