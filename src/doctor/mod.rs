//! `baton doctor`: checks a running deployment's wiring and prints one line per check,
//! `✓` or `✗`, with what to do. Exit 0 when every check passes, 1 otherwise; `--json`
//! prints the same checks as one JSON document for scripts and readiness probes.
//!
//! What it checks: the broker (login, vhost permissions); each workflow step's queue
//! (exists, how many consumers; none passes for a service named as scaled to zero); each
//! service that has a consumer answers a `ping` within its step's timeout;
//! the services that keep a ledger all report the same ledger id; the orchestrators
//! consuming the request queue run this workflow and record in one journal (they announce
//! both as consumer arguments, read through the management API); the journal given here
//! is writable; the retry tiers and the dead-letter, attention and results queues exist,
//! and how deep the last three are.
//!
//! What it is not: a load test, or a fixer. It sends only pings (no payment, no store
//! touched) and declares nothing (passive declares only), so it is safe against
//! production.

use crate::broker::AdminApi;
use crate::workflow::Workflow;
use baton_amqp::{self as amqp, redact_url, TlsOptions};
use baton_contract::{Names, Ping, Reply, LEDGER_AT, LEDGER_ID};
use futures_lite::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// One check's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`broker`, `queue baton.cmd.pci`, `ledger`, …).
    pub check: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found and, on failure, what to do.
    pub detail: String,
}

impl Check {
    fn pass(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: false,
            detail: detail.into(),
        }
    }

    /// The line the operator sees: `✓ check: detail` or `✗ check: detail`.
    pub fn line(&self) -> String {
        let mark = if self.ok { '✓' } else { '✗' };
        format!("{mark} {}: {}", self.check, self.detail)
    }
}

/// What `baton doctor` needs to know.
#[derive(Clone, Debug)]
pub struct DoctorSettings {
    /// Broker URL (may hold a password: only ever shown redacted).
    pub amqp_url: String,
    /// How `amqps://` checks the broker's certificate.
    pub tls: TlsOptions,
    /// The deployment's names.
    pub names: Names,
    /// The workflow the deployment should run.
    pub workflow: Workflow,
    /// The management API, for permissions and the orchestrators' announcements.
    pub admin_url: String,
    /// A journal to check for writing (and compare with the orchestrators'), if given.
    pub journal_url: Option<String>,
    /// Services that scale to zero: no consumer on their queue is how they wait, not a
    /// missing service (the scale-to-zero step of deploy/kubernetes).
    pub scaled_to_zero: BTreeSet<String>,
}

/// The vhost of an AMQP URL (`/` when the path is empty; `%2f` decoded).
fn vhost_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = &rest[rest.rfind('@').map_or(0, |at| at + 1)..];
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() {
        "/".into()
    } else {
        path.replace("%2f", "/").replace("%2F", "/")
    }
}

fn encode_vhost(vhost: &str) -> String {
    vhost.replace('%', "%25").replace('/', "%2F")
}

/// How long doctor waits for the broker's AMQP handshake: a readiness check must answer,
/// even when the broker's port is open but the broker does not speak.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Runs every check, in order. A broker that cannot be reached ends the list there.
pub async fn run_checks(settings: &DoctorSettings) -> Vec<Check> {
    let mut checks = Vec::new();
    let shown = redact_url(&settings.amqp_url);
    let user = amqp::url_user(&settings.amqp_url).unwrap_or_else(|_| "?".into());
    let vhost = vhost_of(&settings.amqp_url);
    let connect = amqp::connect(&settings.amqp_url, "baton doctor", &settings.tls);
    let connection = match tokio::time::timeout(CONNECT_WAIT, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            checks.push(Check::fail("broker", e.to_string()));
            return checks;
        }
        Err(_) => {
            checks.push(Check::fail(
                "broker",
                format!(
                    "{shown} did not complete the AMQP handshake within {} s: the port may \
                     accept connections while the broker is starting, overloaded or blocked \
                     (see `rabbitmq-diagnostics status` and `rabbitmq-diagnostics alarms`)",
                    CONNECT_WAIT.as_secs()
                ),
            ));
            return checks;
        }
    };
    checks.push(Check::pass(
        "broker",
        format!("{shown} reachable, logged in as {user} (vhost {vhost})"),
    ));
    let api = AdminApi::from_url(&settings.admin_url);
    let api = match api {
        Ok(api) => Some(api),
        Err(e) => {
            checks.push(Check::fail("management API", e.to_string()));
            None
        }
    };
    if let Some(api) = &api {
        checks.push(permissions(api, &user, &vhost).await);
    }
    let names = &settings.names;
    let workflow = &settings.workflow;

    // A name that is no service of the workflow is a typo: it would excuse nothing.
    for service in &settings.scaled_to_zero {
        if !workflow.services().contains(&service.as_str()) {
            checks.push(Check::fail(
                format!("scaled-to-zero {service}"),
                format!(
                    "not a service of the workflow (its services: {}): fix --scaled-to-zero / \
                     BATON_SCALED_TO_ZERO",
                    workflow.services().join(", ")
                ),
            ));
        }
    }

    // Step queues: passive declares, each on its own channel (a missing queue closes it).
    let mut consumed = Vec::new();
    for service in workflow.services() {
        let queue = names.command_queue(service);
        match inspect(&connection, &queue).await {
            None => checks.push(Check::fail(
                format!("queue {queue}"),
                format!(
                    "does not exist: start `baton run` (it declares every step's queue) and the \
                     {service} service with --prefix {}",
                    names.prefix()
                ),
            )),
            Some((messages, 0)) if settings.scaled_to_zero.contains(service) => {
                checks.push(Check::pass(
                    format!("queue {queue}"),
                    format!(
                        "no consumer now, {messages} command(s) waiting: {service} scales to \
                         zero, a waiting command starts it"
                    ),
                ))
            }
            Some((_, 0)) => checks.push(Check::fail(
                format!("queue {queue}"),
                format!(
                    "no consumer: start the {service} service (baton-{service} --prefix {}, or \
                     --queue {service}); commands wait there until one consumes them",
                    names.prefix()
                ),
            )),
            Some((messages, consumers)) => {
                checks.push(Check::pass(
                    format!("queue {queue}"),
                    format!("{consumers} consumer(s), {messages} command(s) waiting"),
                ));
                consumed.push(service.to_owned());
            }
        }
    }

    // Pings, each within the longest timeout of the steps its service serves.
    let mut ledgers: BTreeMap<String, (String, String)> = BTreeMap::new();
    for service in &consumed {
        let timeout = workflow
            .steps()
            .iter()
            .filter(|s| &s.service == service)
            .map(|s| s.timeout)
            .max()
            .unwrap_or(Duration::from_secs(2));
        match ping(&connection, &names.command_queue(service), timeout).await {
            Ok((reply, took)) => {
                let version = reply
                    .data
                    .get("version")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                let ledger = reply.data.get(LEDGER_ID).and_then(Value::as_str);
                let at = reply
                    .data
                    .get(LEDGER_AT)
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                if let Some(id) = ledger {
                    ledgers.insert(service.clone(), (id.to_owned(), at.to_owned()));
                }
                checks.push(Check::pass(
                    format!("ping {service}"),
                    format!("answered in {} ms (version {version})", took.as_millis()),
                ));
            }
            Err(why) => checks.push(Check::fail(format!("ping {service}"), why)),
        }
    }
    checks.push(ledger_check(&ledgers));

    // The orchestrators, as the management API shows the request queue's consumers.
    let mut journals = BTreeMap::new();
    if let Some(api) = &api {
        let expected = inspect(&connection, &names.requests_queue())
            .await
            .map_or(0, |(_, consumers)| consumers);
        let (check, found) = orchestrators(api, &vhost, names, workflow, expected).await;
        checks.push(check);
        journals = found;
    }
    checks.extend(journal_checks(settings.journal_url.as_deref(), &journals).await);

    // The rest of the topology.
    for delay_ms in workflow.parking().delays_ms() {
        let queue = names.retry_queue(delay_ms);
        checks.push(match inspect(&connection, &queue).await {
            Some((messages, _)) => Check::pass(
                format!("queue {queue}"),
                format!("exists, {messages} parked payment(s)"),
            ),
            None => Check::fail(
                format!("queue {queue}"),
                "retry tier missing: start `baton run` with this workflow (it declares the tiers)",
            ),
        });
    }
    for (queue, what, hint) in [
        (
            names.dead_queue(),
            "dead letter(s)",
            "inspect with `baton dead list`",
        ),
        (
            names.attention_queue(),
            "item(s) for an operator",
            "inspect with `baton attention list`",
        ),
        (names.results_queue(), "result(s) not yet consumed", ""),
    ] {
        checks.push(match inspect(&connection, &queue).await {
            Some((messages, _)) => Check::pass(
                format!("queue {queue}"),
                if messages > 0 && !hint.is_empty() {
                    format!("{messages} {what}: {hint}")
                } else {
                    format!("{messages} {what}")
                },
            ),
            None => Check::fail(
                format!("queue {queue}"),
                "missing: start `baton run` (it declares the topology)",
            ),
        });
    }
    let _ = connection.close(200, "doctor done".into()).await;
    checks
}

/// The user's permissions on the vhost, from the management API.
async fn permissions(api: &AdminApi, user: &str, vhost: &str) -> Check {
    let path = format!(
        "/permissions/{}/{}",
        encode_vhost(vhost),
        user.replace('%', "%25").replace('/', "%2F")
    );
    match api.request(hyper::Method::GET, &path, None).await {
        Ok(Some(p)) => {
            let field = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let (configure, write, read) = (field("configure"), field("write"), field("read"));
            if configure.is_empty() && write.is_empty() && read.is_empty() {
                Check::fail(
                    "permissions",
                    format!("user {user} may do nothing on vhost {vhost}: `baton broker setup`"),
                )
            } else {
                Check::pass(
                    "permissions",
                    format!(
                        "user {user} on vhost {vhost}: configure {configure:?}, write {write:?}, \
                         read {read:?}"
                    ),
                )
            }
        }
        Ok(None) => Check::fail(
            "permissions",
            format!(
                "user {user} has no permissions on vhost {vhost}: grant them (`baton broker \
                 setup` creates users with the permissions each process needs)"
            ),
        ),
        Err(e) => Check::fail("management API", e.to_string()),
    }
}

/// `(messages, consumers)` of a queue, or `None` when it does not exist.
async fn inspect(connection: &Connection, queue: &str) -> Option<(u32, u32)> {
    amqp::queue_counts(connection, queue, CONNECT_WAIT).await
}

/// Pings `queue` and waits up to `timeout` for the reply.
async fn ping(
    connection: &Connection,
    queue: &str,
    timeout: Duration,
) -> Result<(Reply, Duration), String> {
    let failed = |e: &dyn std::fmt::Display| format!("cannot send a ping: {e}");
    let channel = connection.create_channel().await.map_err(|e| failed(&e))?;
    let (reply_queue, mut replies) = amqp::consume_exclusive(&channel, "")
        .await
        .map_err(|e| failed(&e))?;
    let ping = Ping::new();
    let body = serde_json::to_vec(&ping).map_err(|e| failed(&e))?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(reply_queue.as_str().into())
        .with_correlation_id(ping.command_id.as_str().into());
    let started = Instant::now();
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await
        .map_err(|e| failed(&e))?;
    let answer = tokio::time::timeout(timeout, async {
        while let Some(Ok(delivery)) = replies.next().await {
            if let Ok(reply) = serde_json::from_slice::<Reply>(&delivery.data) {
                if reply.command_id == ping.command_id {
                    return Some(reply);
                }
            }
        }
        None
    })
    .await;
    let _ = channel.close(200, "pinged".into()).await;
    match answer {
        Ok(Some(reply)) => Ok((reply, started.elapsed())),
        _ => Err(format!(
            "no answer to a ping within {} ms (the step's timeout): the service is stuck, \
             overloaded, or older than the ping action (see its log and /readyz)",
            timeout.as_millis()
        )),
    }
}

/// Every service that keeps a ledger must report the same one.
fn ledger_check(ledgers: &BTreeMap<String, (String, String)>) -> Check {
    let ids: BTreeSet<&str> = ledgers.values().map(|(id, _)| id.as_str()).collect();
    let described: Vec<String> = ledgers
        .iter()
        .map(|(service, (id, at))| format!("{service} uses ledger {id} at {at}"))
        .collect();
    match ids.len() {
        0 => Check::pass("ledger", "no service reported a ledger"),
        1 => Check::pass(
            "ledger",
            format!(
                "{} share ledger {}",
                ledgers.keys().cloned().collect::<Vec<_>>().join(" and "),
                described[0].rsplit_once("ledger ").map_or("", |(_, r)| r)
            ),
        ),
        _ => Check::fail(
            "ledger",
            format!(
                "{}: they must share one database — give every service the same --ledger-url \
                 (BATON_LEDGER_URL), an absolute sqlite path on a shared volume or one \
                 postgres://… URL, and restart them",
                described.join(", ")
            ),
        ),
    }
}

/// Prints the checks (lines, or JSON) and returns the exit code: 0 all passed, 1 not.
pub fn report(checks: &[Check], json: bool) -> i32 {
    let ok = checks.iter().all(|c| c.ok);
    if json {
        let doc = serde_json::json!({ "ok": ok, "checks": checks });
        println!("{doc}");
    } else {
        for check in checks {
            println!("{}", check.line());
        }
        let failed = checks.iter().filter(|c| !c.ok).count();
        if ok {
            println!("all {} checks passed", checks.len());
        } else {
            println!("{failed} of {} checks failed", checks.len());
        }
    }
    i32::from(!ok)
}

mod fleet;
#[cfg(test)]
mod tests;

use fleet::*;
