//! The operators' status page: `GET /` on the orchestrator's HTTP port, and
//! `GET /payments/<id>` when a browser asks for HTML.
//!
//! Server-rendered HTML with no script beyond a `<meta http-equiv="refresh">`: recent
//! payments with their status and steps, each breaker's state, how many payments are
//! parked, the depth of the operators' queues (`dead`, `attention`) and the workflow.
//! Every value from the journal, the broker or the workflow goes through [`escape`], and
//! free text (details, reasons) through the one card masker first, so neither HTML nor a
//! card number gets through.
//!
//! This module only renders: gathering the numbers (journal query, queue depths, breaker
//! gauges) is the orchestrator's, and who may read the page is the ops crate's access
//! rule, the same as for `/payments/<id>`.

use baton_contract::{mask_card_numbers, Action};

use crate::records::SagaRecord;
use crate::workflow::{Fallback, Workflow};

/// How many payments the page lists.
pub const RECENT_PAYMENTS: u32 = 20;

/// Seconds between the page's automatic reloads.
const REFRESH_SECONDS: u32 = 5;

/// What the index page shows, gathered by the orchestrator.
#[derive(Debug)]
pub struct Overview {
    /// This replica's id.
    pub instance: String,
    /// The topology prefix.
    pub prefix: String,
    /// The most recently begun payments, newest first; `Err` says why they are missing.
    pub recent: Result<Vec<SagaRecord>, String>,
    /// Each service's breaker: (service, gauge value 0 closed / 1 half-open / 2 open).
    pub breakers: Vec<(String, i64)>,
    /// Messages waiting in each parking queue: (queue, depth or `None` if unreadable).
    pub parked: Vec<(String, Option<u32>)>,
    /// Depth of `<prefix>.dead`.
    pub dead: Option<u32>,
    /// Depth of `<prefix>.attention`.
    pub attention: Option<u32>,
}

/// `text` with `& < > " '` replaced by entities: safe in element content and in quoted
/// attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Free text (a decline detail, a reason) as it may be shown: card numbers masked, then
/// escaped.
fn text(value: &str) -> String {
    escape(&mask_card_numbers(value))
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}.completed{color:#1a7f37}.declined{color:#9a6700}\
.failed,.rejected,.open{color:#cf222e;font-weight:bold}.running,.half-open{color:#0969da}\
code{font-size:.95em}";

fn page(title: &str, refresh: bool, body: &str) -> String {
    let refresh = if refresh {
        format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">")
    } else {
        String::new()
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <title>{}</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n",
        escape(title)
    )
}

fn breaker_name(value: i64) -> &'static str {
    match value {
        0 => "closed",
        1 => "half-open",
        2 => "open",
        _ => "unknown",
    }
}

fn count(value: Option<u32>) -> String {
    value.map_or_else(|| "unavailable".to_owned(), |n| n.to_string())
}

fn outcome_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// One line per step: `step outcome (reason)`, compensations marked.
fn steps_summary(record: &SagaRecord) -> String {
    let mut parts = Vec::new();
    for entry in &record.entries {
        let mut part = format!(
            "{} {}",
            escape(&entry.step),
            escape(&outcome_name(&entry.record.outcome))
        );
        if entry.action == Action::Compensate {
            part = format!("{part} (compensation)");
        }
        if let Some(reason) = &entry.record.reason {
            part.push_str(&format!(" &mdash; {}", text(reason)));
        }
        parts.push(part);
    }
    if parts.is_empty() {
        "&mdash;".to_owned()
    } else {
        parts.join("<br>")
    }
}

/// `GET /`: the overview.
pub fn index(overview: &Overview, workflow: &Workflow) -> String {
    let mut body = format!(
        "<h1>Baton</h1>\n<p>Replica <code>{}</code>, prefix <code>{}</code>. \
         Reloads every {REFRESH_SECONDS} s.</p>\n",
        escape(&overview.instance),
        escape(&overview.prefix)
    );

    body.push_str(
        "<h2>Queues</h2>\n<table id=\"queues\"><tr><th>queue</th><th>messages</th></tr>\n",
    );
    let dead = format!("{}.dead", overview.prefix);
    let attention = format!("{}.attention", overview.prefix);
    for (queue, depth) in [(&dead, overview.dead), (&attention, overview.attention)] {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>\n",
            escape(queue),
            count(depth)
        ));
    }
    let parked: Option<u32> = overview
        .parked
        .iter()
        .map(|(_, depth)| *depth)
        .sum::<Option<u32>>();
    body.push_str(&format!(
        "<tr><td>parked (all {} parking queues)</td><td id=\"parked\">{}</td></tr>\n",
        overview.parked.len(),
        count(parked)
    ));
    body.push_str("</table>\n");

    body.push_str(
        "<h2>Circuit breakers</h2>\n<table id=\"breakers\"><tr><th>service</th><th>state</th></tr>\n",
    );
    for (service, state) in &overview.breakers {
        let name = breaker_name(*state);
        body.push_str(&format!(
            "<tr><td>{}</td><td class=\"{name}\">{name}</td></tr>\n",
            escape(service)
        ));
    }
    body.push_str("</table>\n");

    body.push_str(&format!(
        "<h2>Recent payments</h2>\n<p>The {RECENT_PAYMENTS} most recently begun.</p>\n"
    ));
    match &overview.recent {
        Err(e) => body.push_str(&format!(
            "<p class=\"failed\">The journal cannot be read: {}</p>\n",
            text(e)
        )),
        Ok(records) if records.is_empty() => body.push_str("<p>No payments yet.</p>\n"),
        Ok(records) => {
            body.push_str(
                "<table id=\"payments\"><tr><th>payment</th><th>status</th><th>reason</th>\
                 <th>amount</th><th>card</th><th>steps</th><th>parked</th><th>started</th></tr>\n",
            );
            for record in records {
                let status = record.status();
                let reason = record
                    .result
                    .as_ref()
                    .and_then(|r| r.reason.as_deref())
                    .map(text)
                    .unwrap_or_default();
                let id = record.payment_id.to_string();
                body.push_str(&format!(
                    "<tr><td><a href=\"/payments/{id}\"><code>{id}</code></a></td>\
                     <td class=\"{status}\">{status}</td><td>{reason}</td>\
                     <td>{} {}</td><td>&bull;&bull;&bull;&bull; {}</td><td>{}</td>\
                     <td>{}</td><td>{}</td></tr>\n",
                    record.summary.amount.minor,
                    escape(record.summary.amount.currency.as_str()),
                    text(&record.summary.card_last4),
                    steps_summary(record),
                    record.parked,
                    escape(&record.started_at),
                ));
            }
            body.push_str("</table>\n");
        }
    }

    body.push_str(&workflow_table(workflow));
    page("Baton status", true, &body)
}

fn workflow_table(workflow: &Workflow) -> String {
    let mut out = String::from(
        "<h2>Workflow</h2>\n<table id=\"workflow\"><tr><th>step</th><th>service</th>\
         <th>timeout</th><th>attempts</th><th>compensate</th><th>fallback</th></tr>\n",
    );
    for step in workflow.steps() {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&step.name),
            escape(&step.service),
            step.timeout.as_millis(),
            step.retry.attempts,
            if step.compensate { "yes" } else { "no" },
            match &step.fallback {
                None => "&mdash;".to_owned(),
                Some(Fallback::Service(service)) => format!("service {}", escape(service)),
                Some(Fallback::Approve { max_amount_minor }) =>
                    format!("approve up to {max_amount_minor} (degraded)"),
            },
        ));
    }
    let parking = workflow.parking();
    out.push_str(&format!(
        "</table>\n<p>Parking: tiers {} ms, at most {} parkings.</p>\n",
        escape(
            &parking
                .delays_ms()
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        parking.max_parks
    ));
    out
}

/// `GET /payments/<id>` for a browser: the journal's record.
pub fn payment(record: &SagaRecord) -> String {
    let id = record.payment_id.to_string();
    let status = record.status();
    let mut body = format!(
        "<p><a href=\"/\">&larr; status</a></p>\n<h1>Payment <code>{id}</code></h1>\n\
         <table id=\"summary\">\
         <tr><th>status</th><td class=\"{status}\">{status}</td></tr>\n\
         <tr><th>merchant</th><td>{}</td></tr>\n<tr><th>customer</th><td>{}</td></tr>\n\
         <tr><th>amount</th><td>{} {}</td></tr>\n<tr><th>card</th><td>&bull;&bull;&bull;&bull; {}</td></tr>\n\
         <tr><th>started</th><td>{}</td></tr>\n<tr><th>updated</th><td>{}</td></tr>\n\
         <tr><th>parked</th><td>{}</td></tr>\n",
        text(&record.summary.merchant_id),
        text(&record.summary.customer_id),
        record.summary.amount.minor,
        escape(record.summary.amount.currency.as_str()),
        text(&record.summary.card_last4),
        escape(&record.started_at),
        escape(&record.updated_at),
        record.parked,
    );
    if let Some(result) = &record.result {
        body.push_str(&format!(
            "<tr><th>reason</th><td>{}</td></tr>\n<tr><th>detail</th><td>{}</td></tr>\n\
             <tr><th>finished</th><td>{}</td></tr>\n",
            result.reason.as_deref().map(text).unwrap_or_default(),
            result.detail.as_deref().map(text).unwrap_or_default(),
            escape(&result.finished_at),
        ));
    }
    body.push_str(
        "</table>\n<h2>Steps</h2>\n<table id=\"steps\"><tr><th>step</th><th>action</th>\
         <th>outcome</th><th>attempts</th><th>ms</th><th>reason</th><th>detail</th>\
         <th>recorded</th></tr>\n",
    );
    for entry in &record.entries {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>\n",
            escape(&entry.step),
            escape(&outcome_name(&entry.action)),
            escape(&outcome_name(&entry.record.outcome)),
            entry.record.attempts,
            entry.record.duration_ms,
            entry.record.reason.as_deref().map(text).unwrap_or_default(),
            entry.detail.as_deref().map(text).unwrap_or_default(),
            escape(&entry.recorded_at),
        ));
    }
    body.push_str("</table>\n");
    page(&format!("Payment {id}"), false, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_attribute_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }

    #[test]
    fn free_text_is_masked_before_it_is_escaped() {
        let shown = text("card 4111 1111 1111 1111 <b>");
        assert!(!shown.contains("4111 1111 1111 1111"), "{shown}");
        assert!(shown.contains("1111"), "{shown}");
        assert!(shown.contains("&lt;b&gt;"), "{shown}");
    }

    #[test]
    fn the_index_escapes_the_prefix_and_shows_unreadable_depths() {
        let overview = Overview {
            instance: "<i>".into(),
            prefix: "p\"x".into(),
            recent: Err("down <now>".into()),
            breakers: vec![("risk".into(), 2)],
            parked: vec![
                ("p.retry.1000ms".into(), Some(2)),
                ("p.retry.5000ms".into(), None),
            ],
            dead: Some(3),
            attention: None,
        };
        let html = index(&overview, &Workflow::builtin());
        assert!(
            html.contains("&lt;i&gt;") && !html.contains("<i>"),
            "{html}"
        );
        assert!(html.contains("p&quot;x.dead"), "{html}");
        assert!(
            html.contains("<td id=\"parked\">unavailable</td>"),
            "{html}"
        );
        assert!(html.contains("down &lt;now&gt;"), "{html}");
        assert!(html.contains("<td class=\"open\">open</td>"), "{html}");
    }
}
