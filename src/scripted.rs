//! Scripted services and an in-memory journal: what the saga runs against when there is no
//! broker and no database. The saga's unit tests and `baton workflow test` (the
//! [`harness`](crate::harness)) both drive [`saga::run`](crate::saga::run) with them, so
//! the code under test is the orchestrator's own, not a copy.
//!
//! Not for production: nothing here is durable, and a service's answers are whatever its
//! rule says.

use crate::records::{JournalEntry, JournalError, PaymentSummary, SagaRecord};
use crate::saga::{AttentionItem, CallError, Clock, SagaEvent, SagaLog, Transport};
use baton_contract::{Command, PaymentResult, Reply};
use serde_json::Map;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use uuid::Uuid;

/// What a scripted service does with one command.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answers at once.
    Answer(Reply),
    /// Takes the command and never answers.
    Silent,
    /// Answers after a delay (of the saga's clock: paused time passes it at once).
    After(Duration, Reply),
}

/// How a scripted service answers: by command and by how many commands that service has
/// seen (this one included, executes and compensations alike).
pub type Rule = Box<dyn Fn(&Command, usize) -> Behaviour + Send + Sync>;

/// Services that answer by rule, and record what they were sent: the saga's
/// [`Transport`] without a broker. A service without a rule approves everything with no
/// data.
#[derive(Default)]
pub struct ScriptedServices {
    /// The rule of each service, by service (queue) name.
    pub rules: HashMap<String, Rule>,
    /// Every command sent, with the service it went to, in order.
    pub sent: Mutex<Vec<(String, Command)>>,
    /// What was handed to operators.
    pub attention: Mutex<Vec<AttentionItem>>,
    /// The saga events published, in order.
    pub events: Mutex<Vec<SagaEvent>>,
    /// Every call fails as a stopping orchestrator's would (`ShuttingDown`).
    pub stopping: bool,
}

impl ScriptedServices {
    /// Gives `service` its rule (replacing any earlier one).
    pub fn on(
        mut self,
        service: &str,
        rule: impl Fn(&Command, usize) -> Behaviour + Send + Sync + 'static,
    ) -> Self {
        self.rules.insert(service.into(), Box::new(rule));
        self
    }

    /// The commands sent to `service`, in order.
    pub fn sent_to(&self, service: &str) -> Vec<Command> {
        self.sent
            .lock()
            .expect("sent commands")
            .iter()
            .filter(|(s, _)| s == service)
            .map(|(_, c)| c.clone())
            .collect()
    }
}

impl Transport for ScriptedServices {
    async fn call(&self, service: &str, command: Command) -> Result<Reply, CallError> {
        if self.stopping {
            return Err(CallError::ShuttingDown);
        }
        let seen = {
            let mut sent = self.sent.lock().expect("sent commands");
            sent.push((service.to_owned(), command.clone()));
            sent.iter().filter(|(s, _)| s == service).count()
        };
        let behaviour = match self.rules.get(service) {
            Some(rule) => rule(&command, seen),
            None => Behaviour::Answer(Reply::approved(command.command_id.clone(), Map::new())),
        };
        match behaviour {
            Behaviour::Answer(reply) => Ok(reply),
            Behaviour::Silent => std::future::pending().await,
            Behaviour::After(delay, reply) => {
                tokio::time::sleep(delay).await;
                Ok(reply)
            }
        }
    }

    async fn attention(&self, item: AttentionItem) -> Result<(), CallError> {
        self.attention.lock().expect("attention items").push(item);
        Ok(())
    }

    fn event(&self, event: SagaEvent) {
        self.events.lock().expect("events").push(event);
    }
}

/// The journal's contract in memory — a payment's record created once, the first
/// decision recorded for a step's action wins, the first result wins, parkings counted —
/// without its durability.
#[derive(Default)]
pub struct MemoryJournal {
    /// Every saga, by payment id.
    pub sagas: Mutex<HashMap<Uuid, SagaRecord>>,
}

impl MemoryJournal {
    fn with_saga<R>(
        &self,
        id: Uuid,
        f: impl FnOnce(&mut SagaRecord) -> R,
    ) -> Result<R, JournalError> {
        let mut sagas = self.sagas.lock().expect("sagas");
        match sagas.get_mut(&id) {
            Some(saga) => Ok(f(saga)),
            // The saga always begins first; a write without it is the caller's bug.
            None => panic!("payment {id} written to before it was begun"),
        }
    }
}

impl SagaLog for MemoryJournal {
    async fn begin(&self, id: Uuid, summary: &PaymentSummary) -> Result<SagaRecord, JournalError> {
        let mut sagas = self.sagas.lock().expect("sagas");
        Ok(sagas
            .entry(id)
            .or_insert_with(|| SagaRecord {
                payment_id: id,
                summary: summary.clone(),
                started_at: Clock::SYSTEM.now_rfc3339(),
                updated_at: Clock::SYSTEM.now_rfc3339(),
                entries: Vec::new(),
                result: None,
                parked: 0,
            })
            .clone())
    }

    async fn record(&self, id: Uuid, entry: &JournalEntry) -> Result<JournalEntry, JournalError> {
        self.with_saga(id, |saga| {
            if let Some(existing) = saga.entry(&entry.step, entry.action) {
                return existing.clone();
            }
            saga.entries.push(entry.clone());
            entry.clone()
        })
    }

    async fn finish(
        &self,
        id: Uuid,
        result: &PaymentResult,
    ) -> Result<PaymentResult, JournalError> {
        self.with_saga(id, |saga| {
            saga.result.get_or_insert_with(|| result.clone()).clone()
        })
    }

    async fn park(&self, id: Uuid, _back_within: Duration) -> Result<u32, JournalError> {
        self.with_saga(id, |saga| {
            saga.parked += 1;
            saga.parked
        })
    }
}
