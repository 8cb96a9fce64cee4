//! Exchange, queue, routing-key and header names, all derived from one prefix so several
//! deployments (and parallel test runs) can share a broker without seeing each other.

/// Version of the JSON messages in this crate; sent in the `baton-schema` header.
pub const SCHEMA_VERSION: u32 = 1;

/// Every schema version the orchestrator reads. A request whose `baton-schema` header
/// names another is rejected; a request without the header is read as version 1 (what
/// every request was before the header was checked).
pub const KNOWN_SCHEMA_VERSIONS: &[u32] = &[1];

/// Content type of every message Baton publishes.
pub const CONTENT_TYPE: &str = "application/json";

/// AMQP header names Baton reads or writes.
pub mod headers {
    /// Why a message was dead-lettered (on messages in `<prefix>.dead`).
    pub const REASON: &str = "x-baton-reason";
    /// Human-readable detail that goes with [`REASON`].
    pub const DETAIL: &str = "x-baton-detail";
    /// Schema version of the JSON body.
    pub const SCHEMA: &str = "baton-schema";
    /// The command id a command or reply belongs to.
    pub const COMMAND_ID: &str = "baton-command-id";
    /// How many times a request has been parked (on requests coming back from a retry
    /// queue).
    pub const PARKED: &str = "x-baton-parked";
    /// The step a parked request waits for.
    pub const PARKED_AT: &str = "x-baton-parked-at";
    /// On a dead letter whose body was too large to keep: how many bytes of it are kept
    /// (masked text, not the body as sent).
    pub const TRUNCATED: &str = "x-baton-truncated";
    /// On a dead letter whose body was too large to keep: the body's size as sent, bytes.
    pub const ORIGINAL_SIZE: &str = "x-baton-original-size";
}

/// The names of every exchange and queue of one Baton deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (`baton` by default).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Topic exchange for requests (`request`), results (`result.<status>`) and saga
    /// events (`event.<step>.<outcome>`).
    pub fn payments_exchange(&self) -> String {
        format!("{}.payments", self.prefix)
    }

    /// Quorum queue of incoming payment requests.
    pub fn requests_queue(&self) -> String {
        format!("{}.requests", self.prefix)
    }

    /// Quorum queue that receives every result (`result.*`).
    pub fn results_queue(&self) -> String {
        format!("{}.results", self.prefix)
    }

    /// Quorum queue of poison and rejected messages, with the reason in a header.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Quorum queue of commands (and compensations) for one business service.
    pub fn command_queue(&self, service: &str) -> String {
        format!("{}.cmd.{}", self.prefix, service)
    }

    /// Exclusive queue of replies to one orchestrator instance.
    pub fn reply_queue(&self, instance: &str) -> String {
        format!("{}.replies.{}", self.prefix, instance)
    }

    /// Quorum queue where a payment waits `delay_ms` while a service is unavailable,
    /// then dead-letters back to the request queue.
    pub fn retry_queue(&self, delay_ms: u64) -> String {
        format!("{}.retry.{}ms", self.prefix, delay_ms)
    }

    /// Quorum queue of items operators must act on (compensations that kept failing,
    /// steps whose effect could not be learned).
    pub fn attention_queue(&self) -> String {
        format!("{}.attention", self.prefix)
    }

    /// Routing key of requests on the payments exchange.
    pub fn request_routing_key(&self) -> &'static str {
        "request"
    }

    /// Routing key of a result with the given status (`completed`, `declined`, …).
    pub fn result_routing_key(&self, status: &str) -> String {
        format!("result.{status}")
    }
}

impl Default for Names {
    fn default() -> Self {
        Self::new("baton")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design_table() {
        let names = Names::new("acme");
        assert_eq!(names.payments_exchange(), "acme.payments");
        assert_eq!(names.requests_queue(), "acme.requests");
        assert_eq!(names.results_queue(), "acme.results");
        assert_eq!(names.dead_queue(), "acme.dead");
        assert_eq!(names.command_queue("risk"), "acme.cmd.risk");
        assert_eq!(names.reply_queue("x1"), "acme.replies.x1");
        assert_eq!(names.result_routing_key("declined"), "result.declined");
        assert_eq!(names.retry_queue(5000), "acme.retry.5000ms");
        assert_eq!(names.attention_queue(), "acme.attention");
    }
}

/// Checks a prefix (or an instance id): it is part of every queue name, so 1 to 64
/// characters that RabbitMQ and shells take literally — `A-Z a-z 0-9 . _ -`. The one
/// check of every binary's `--prefix`.
pub fn parse_prefix(text: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(text.to_owned())
    } else {
        Err("use 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'".into())
    }
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex trace id>-<16 hex parent
/// id>-<2 hex flags>`), if it is well formed as the Trace Context spec says: lower-case
/// hex only, version `ff` invalid, an all-zero trace id invalid, exactly four fields in
/// version 00 (a later version may append more). The one parser of every binary, so a
/// trace id is logged by all of them or by none.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let mut parts = traceparent.trim().split('-');
    let (version, id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let fields_ok = version != "00" || parts.next().is_none();
    let valid = hex(version, 2)
        && version != "ff"
        && hex(id, 32)
        && id.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2)
        && fields_ok;
    valid.then_some(id)
}

#[cfg(test)]
mod prefix_and_trace_tests {
    use super::*;

    #[test]
    fn prefixes_are_short_and_literal() {
        for ok in ["baton", "a", "t-1.x_y", &"p".repeat(64)] {
            assert_eq!(parse_prefix(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "a b", "a/b", "a*", "é", &"p".repeat(65)] {
            let e = parse_prefix(bad).unwrap_err();
            assert!(e.contains("1-64 characters"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn trace_ids_come_from_well_formed_traceparents_only() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), Some(id));
        // A later version may append fields; version 00 may not.
        assert_eq!(
            trace_id(&format!("01-{id}-00f067aa0ba902b7-01-x")),
            Some(id)
        );
        for bad in [
            format!("00-{id}-00f067aa0ba902b7-01-x"),
            format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("ff-{id}-00f067aa0ba902b7-01"),
            format!("00-{id}-00f067aa0ba902b-01"),
            format!("00-{id}-00f067aa0ba902b7"),
            "00-xyz-00f067aa0ba902b7-01".to_owned(),
            "garbage".to_owned(),
        ] {
            assert_eq!(trace_id(&bad), None, "{bad}");
        }
    }
}
