//! What the two ledger services (authorization, transaction) share around their
//! [`Ledger`]: refusing a command whose earlier step wrote to another ledger, the ping
//! naming the ledger, turning a ledger error into a transient reply, the mismatch metric.

use crate::ledger::{Answer, Ledger, LedgerError};
use baton_contract::{Action, Command, Reply, LEDGER_AT, LEDGER_ID, LEDGER_MISMATCH};
use prometheus::{IntCounter, Opts};
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// A ledger service's ledger, and what it counts about it.
#[derive(Clone, Debug)]
pub(crate) struct Ledgered {
    /// The store.
    pub(crate) ledger: Ledger,
    /// The service's name, in replies and the metric's label.
    service: &'static str,
    /// `baton_service_ledger_mismatches_total{service}`, once registered at start.
    mismatches: OnceLock<IntCounter>,
}

impl Ledgered {
    pub(crate) fn new(ledger: Ledger, service: &'static str) -> Self {
        Self {
            ledger,
            service,
            mismatches: OnceLock::new(),
        }
    }

    /// The `error` reply to an `execute` whose context shows an earlier step wrote to
    /// another ledger than this one: a wiring fault the orchestrator retries, parks and
    /// finally fails `service_unavailable` (voiding the hold), never a decline. Counted
    /// and logged. `None` when every earlier step that names a ledger names this one (or
    /// none does: an older authorization).
    pub(crate) fn mismatch(&self, command: &Command) -> Option<Reply> {
        if command.action != Action::Execute {
            return None;
        }
        let ledger = &self.ledger;
        let (step, data) = command.context.iter().find_map(|(step, data)| {
            let id = data.get(LEDGER_ID)?.as_str()?;
            (id != ledger.id()).then_some((step, data))
        })?;
        let theirs = data.get(LEDGER_ID).and_then(Value::as_str).unwrap_or("?");
        let at = data
            .get(LEDGER_AT)
            .and_then(Value::as_str)
            .unwrap_or("an unnamed database");
        let detail = format!(
            "step {step} wrote to ledger {theirs} at {at}, but this {} service uses ledger \
             {} at {}: give both services the same --ledger-url (BATON_LEDGER_URL, one \
             shared database) and restart them; nothing was moved",
            self.service,
            ledger.id(),
            ledger.location()
        );
        if let Some(counter) = self.mismatches.get() {
            counter.inc();
        }
        tracing::error!(
            detail = %detail,
            "ledger mismatch: this service and an earlier step use different ledger \
             databases; answered error (the payment fails service_unavailable, never \
             declined)"
        );
        Some(Reply::error(&command.command_id, LEDGER_MISMATCH, detail))
    }

    /// The answer from the ledger, or a transient `error` reply when the ledger failed
    /// (nothing was stored, so the orchestrator's retry may act).
    pub(crate) fn or_unavailable(command: &Command, stored: Result<Answer, LedgerError>) -> Answer {
        stored.unwrap_or_else(|e| {
            tracing::warn!(error = %e, command_id = %command.command_id, "ledger unavailable");
            Answer::fresh(Reply::error(
                &command.command_id,
                "ledger_unavailable",
                e.to_string(),
            ))
        })
    }

    /// The ping: service, version, and the ledger's id and location, read when it was
    /// opened (the database is not touched).
    pub(crate) fn ping(&self, command_id: &str) -> Reply {
        let mut extra = Map::new();
        extra.insert(LEDGER_ID.into(), self.ledger.id().into());
        extra.insert(LEDGER_AT.into(), self.ledger.location().into());
        crate::reply::ping(command_id, self.service, extra)
    }

    /// Registers `baton_service_ledger_mismatches_total{service}` (0 from the start).
    pub(crate) fn register_metrics(
        &self,
        registry: &prometheus::Registry,
    ) -> Result<(), prometheus::Error> {
        let counter = IntCounter::with_opts(
            Opts::new(
                "baton_service_ledger_mismatches_total",
                "Commands answered error/ledger_mismatch: an earlier step wrote to another \
                 ledger database than this service's (fix --ledger-url)",
            )
            .const_label("service", self.service),
        )?;
        registry.register(Box::new(counter.clone()))?;
        // A second registration would have failed above: the first counter stays.
        let _ = self.mismatches.set(counter);
        Ok(())
    }
}
