//! What every service's answer is built from: a rule's [`Decline`], the reply to a
//! decision, and the reply to a ping.

use baton_contract::Reply;
use serde_json::{Map, Value};

/// Why a rule declined: a machine-readable reason and a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decline {
    /// Reason code (`card_declined`).
    pub reason: &'static str,
    /// Human-readable detail; never contains a card number.
    pub detail: String,
}

impl Decline {
    /// A decline for `reason`, explained by `detail`.
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// The `declined` reply of `command_id` for `decline`.
pub fn declined(command_id: &str, decline: Decline) -> Reply {
    Reply::declined(command_id, decline.reason, decline.detail)
}

/// `approved` (no data) or the decline.
pub fn decided(command_id: &str, decision: Result<(), Decline>) -> Reply {
    match decision {
        Ok(()) => Reply::approved(command_id, Map::new()),
        Err(d) => declined(command_id, d),
    }
}

/// The answer to a ping: `approved`, with the service's name and version and `extra`
/// (a ledger service adds its ledger's id and location).
pub fn ping(command_id: &str, service: &str, extra: Map<String, Value>) -> Reply {
    let mut data = Map::new();
    data.insert("service".into(), service.into());
    data.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    data.extend(extra);
    Reply::approved(command_id, data)
}
