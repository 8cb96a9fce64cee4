//! Unit tests of the saga with scripted services and an in-memory journal
//! ([`crate::scripted`], which `baton workflow test` uses too): no broker, no database,
//! paused time.

use super::*;
use crate::breaker::BreakerState;
use crate::scripted::{Behaviour, MemoryJournal, ScriptedServices};
use crate::workflow::Workflow;
use baton_contract::{Currency, Limits, Money, Reply};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One thing the saga told its observer.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Attempt(String, AttemptEnd),
    Retry(String),
    Breaker(String, BreakerState),
    Fallback(String, FallbackKind),
    Parked(String),
    Attention(String),
    Answered(String, Duration),
    Compensation(String, bool),
    JournalFailed,
}

/// An observer that remembers what it was told, in order.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn push(&self, seen: Seen) {
        self.0.lock().unwrap().push(seen);
    }

    /// Everything told, breakers' states left out and durations zeroed.
    fn seen(&self) -> Vec<Seen> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                Seen::Breaker(..) => None,
                Seen::Answered(step, _) => Some(answered(step)),
                other => Some(other.clone()),
            })
            .collect()
    }

    /// What was told about `step`, in order, durations zeroed.
    fn seen_of(&self, step: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| match s {
                Seen::Attempt(name, _)
                | Seen::Retry(name)
                | Seen::Fallback(name, _)
                | Seen::Parked(name)
                | Seen::Answered(name, _)
                | Seen::Compensation(name, _) => name == step,
                _ => false,
            })
            .collect()
    }

    fn count(&self, seen: &Seen) -> usize {
        self.0.lock().unwrap().iter().filter(|s| *s == seen).count()
    }

    /// The last state told for `service`'s breaker.
    fn breaker(&self, service: &str) -> Option<BreakerState> {
        self.0.lock().unwrap().iter().rev().find_map(|s| match s {
            Seen::Breaker(name, state) if name == service => Some(*state),
            _ => None,
        })
    }
}

impl SagaObserver for Recorder {
    fn attempt_ended(&self, step: &str, end: AttemptEnd) {
        self.push(Seen::Attempt(step.into(), end));
    }
    fn retrying(&self, step: &str) {
        self.push(Seen::Retry(step.into()));
    }
    fn breaker_changed(&self, service: &str, state: BreakerState) {
        self.push(Seen::Breaker(service.into(), state));
    }
    fn fallback_taken(&self, step: &str, kind: FallbackKind) {
        self.push(Seen::Fallback(step.into(), kind));
    }
    fn parked(&self, step: &str) {
        self.push(Seen::Parked(step.into()));
    }
    fn attention_raised(&self, kind: &str) {
        self.push(Seen::Attention(kind.into()));
    }
    fn step_answered(&self, step: &str, duration: Duration) {
        self.push(Seen::Answered(step.into(), duration));
    }
    fn compensation_ended(&self, step: &str, undone: bool) {
        self.push(Seen::Compensation(step.into(), undone));
    }
    fn journal_failed(&self) {
        self.push(Seen::JournalFailed);
    }
}

type TestEnv = SagaEnv<ScriptedServices, MemoryJournal, Recorder>;

fn seen(step: &str, end: AttemptEnd) -> Seen {
    Seen::Attempt(step.into(), end)
}

fn answered(step: &str) -> Seen {
    Seen::Answered(step.into(), Duration::ZERO)
}

const PAYMENT_ID: &str = "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10";

fn request_of(minor: u64) -> PaymentRequest {
    let body = format!(
        r#"{{"payment_id":"{PAYMENT_ID}","merchant_id":"m-1","customer_id":"c-1",
        "amount":{{"minor":{minor},"currency":"EUR"}},"merchant_currency":"USD",
        "card":{{"number":"4242424242424242","expiry":"12/30"}}}}"#
    );
    PaymentRequest::parse(body.as_bytes(), &Limits::default()).unwrap()
}

fn request() -> PaymentRequest {
    request_of(1999)
}

/// The default four steps with short timeouts and small, fast policies.
fn workflow(extra_risk: &str) -> Workflow {
    Workflow::parse(
        &format!(
            r#"
            [defaults]
            retry = {{ attempts = 3, initial_backoff_ms = 10, max_backoff_ms = 40 }}
            breaker = {{ failure_threshold = 100, window_ms = 1000, open_ms = 1000 }}
            [parking]
            tiers_ms = [100, 1000]
            max_parks = 2
            [[steps]]
            name = "authorization"
            timeout_ms = 100
            card = "number"
            compensate = true
            compensation_retry = {{ attempts = 2, initial_backoff_ms = 10, max_backoff_ms = 10 }}
            [[steps]]
            name = "risk"
            timeout_ms = 100
            card = "fingerprint"
            {extra_risk}
            [[steps]]
            name = "pci"
            timeout_ms = 100
            [[steps]]
            name = "transaction"
            timeout_ms = 100
            side_effects = true
            "#
        ),
        "test",
    )
    .unwrap()
}

fn env(workflow: Workflow, services: ScriptedServices) -> TestEnv {
    let mut env = SagaEnv::new(
        workflow,
        services,
        MemoryJournal::default(),
        Recorder::default(),
    );
    env.card_keys = Some(baton_contract::CardKeys::generate("t1"));
    env
}

fn finished(outcome: SagaOutcome) -> (PaymentResult, Option<String>) {
    match outcome {
        SagaOutcome::Finished {
            result,
            dead_letter,
        } => (result, dead_letter),
        other => panic!("expected a result, got {other:?}"),
    }
}

fn data(json: Value) -> Map<String, Value> {
    json.as_object().unwrap().clone()
}

fn approve_with(json: Value) -> impl Fn(&Command, usize) -> Behaviour + Send + Sync {
    move |c: &Command, _| {
        Behaviour::Answer(Reply::approved(c.command_id.clone(), data(json.clone())))
    }
}

fn decline(reason: &'static str) -> impl Fn(&Command, usize) -> Behaviour + Send + Sync {
    move |c: &Command, _| Behaviour::Answer(Reply::declined(c.command_id.clone(), reason, "no"))
}

fn outcomes(result: &PaymentResult) -> Vec<(&str, StepOutcome)> {
    result
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.outcome))
        .collect()
}

fn happy_services() -> ScriptedServices {
    ScriptedServices::default()
        .on(
            "authorization",
            approve_with(serde_json::json!({"hold_id": "h-1"})),
        )
        .on(
            "transaction",
            approve_with(serde_json::json!({"settlement": {"minor": 2150, "currency": "USD"}})),
        )
}

#[tokio::test]
async fn every_step_approves_and_the_settlement_is_reported() {
    let env = env(workflow(""), happy_services());
    let (result, dead) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Completed);
    assert_eq!(dead, None);
    assert_eq!(
        result.settlement,
        Some(Money {
            minor: 2150,
            currency: Currency::parse("USD").unwrap()
        })
    );
    assert_eq!(
        outcomes(&result),
        [
            ("authorization", StepOutcome::Approved),
            ("risk", StepOutcome::Approved),
            ("pci", StepOutcome::Approved),
            ("transaction", StepOutcome::Approved),
        ]
    );
    let tx = env.transport.sent_to("transaction");
    assert_eq!(tx[0].command_id, format!("{PAYMENT_ID}:transaction"));
    assert_eq!(
        tx[0].context["authorization"]["hold_id"], "h-1",
        "later steps see earlier output"
    );
    // The decision and result are in the journal.
    let saga = env.log.sagas.lock().unwrap()[&request().payment_id].clone();
    assert_eq!(saga.entries.len(), 4);
    assert_eq!(saga.result.unwrap(), result);
    let each: Vec<Seen> = ["authorization", "risk", "pci", "transaction"]
        .into_iter()
        .flat_map(|step| [seen(step, AttemptEnd::Approved), answered(step)])
        .collect();
    assert_eq!(
        env.observer.seen(),
        each,
        "one attempt and one answer a step"
    );
}

#[tokio::test]
async fn only_steps_trusted_with_the_card_number_receive_it() {
    let env = env(workflow(""), happy_services());
    finished(run(&env, &request()).await);
    let keys = env.card_keys.clone().unwrap();
    for (_, command) in env.transport.sent.lock().unwrap().iter() {
        let json = serde_json::to_string(command).unwrap();
        let card = &command.payment.card;
        assert_eq!(
            json.contains("4242424242424242"),
            command.step == "authorization",
            "only authorization gets the number: {}",
            command.step
        );
        let expected = (command.step == "risk").then(|| keys.fingerprint("4242424242424242"));
        assert_eq!(card.fingerprint, expected, "{}", command.step);
        assert_eq!(card.last4, "4242");
    }
    let journal = format!("{:?}", env.log.sagas.lock().unwrap());
    assert!(
        !journal.contains("4242424242424242"),
        "the journal never holds the card number"
    );
}

#[tokio::test]
async fn a_decline_after_authorization_voids_the_hold() {
    let env = env(
        workflow(""),
        happy_services().on("risk", decline("high_risk")),
    );
    let (result, _) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Declined);
    assert_eq!(result.reason.as_deref(), Some("high_risk"));
    assert_eq!(result.settlement, None);
    assert_eq!(
        outcomes(&result),
        [
            ("authorization", StepOutcome::Approved),
            ("risk", StepOutcome::Declined),
            ("authorization", StepOutcome::Compensated),
        ]
    );
    let keys: Vec<String> = env
        .transport
        .events
        .lock()
        .unwrap()
        .iter()
        .map(SagaEvent::routing_key)
        .collect();
    assert_eq!(
        keys,
        [
            "event.authorization.approved",
            "event.risk.declined",
            "event.authorization.compensated",
            "event.payment.declined",
        ],
        "one event per decision, in order"
    );
    let auth = env.transport.sent_to("authorization");
    assert_eq!(
        auth[1].command_id,
        format!("{PAYMENT_ID}:authorization:compensate")
    );
    assert_eq!(auth[1].action, Action::Compensate);
    assert_eq!(
        env.transport.sent_to("risk").len(),
        1,
        "a decline is never retried"
    );
    assert_eq!(
        env.observer.seen(),
        [
            seen("authorization", AttemptEnd::Approved),
            answered("authorization"),
            seen("risk", AttemptEnd::Declined),
            answered("risk"),
            seen("authorization", AttemptEnd::Approved),
            Seen::Compensation("authorization".into(), true),
        ]
    );
}

#[tokio::test]
async fn a_decline_at_the_first_step_compensates_nothing() {
    let env = env(
        workflow(""),
        ScriptedServices::default().on("authorization", decline("card_declined")),
    );
    let (result, _) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Declined);
    assert_eq!(result.steps.len(), 1);
    assert_eq!(env.transport.sent.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_with_the_same_command_id() {
    let services = happy_services().on("pci", |c, seen| {
        if seen < 3 {
            Behaviour::Answer(Reply::error(c.command_id.clone(), "db_busy", "try again"))
        } else {
            Behaviour::Answer(Reply::approved(c.command_id.clone(), Map::new()))
        }
    });
    let env = env(workflow(""), services);
    let (result, _) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Completed);
    assert_eq!(result.steps[2].attempts, 3);
    let ids: Vec<String> = env
        .transport
        .sent_to("pci")
        .into_iter()
        .map(|c| c.command_id)
        .collect();
    assert_eq!(ids, vec![format!("{PAYMENT_ID}:pci"); 3]);
    assert_eq!(env.observer.count(&Seen::Retry("pci".into())), 2);
    assert_eq!(env.observer.count(&seen("pci", AttemptEnd::Error)), 2);
    assert_eq!(env.observer.count(&seen("pci", AttemptEnd::Approved)), 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_service_parks_the_payment_and_it_resumes_where_it_stopped() {
    let services = happy_services().on("pci", |c, seen| {
        if seen <= 3 {
            Behaviour::Silent
        } else {
            Behaviour::Answer(Reply::approved(c.command_id.clone(), Map::new()))
        }
    });
    let env = env(workflow(""), services);
    match run(&env, &request()).await {
        SagaOutcome::Park { tier, step, reason } => {
            assert_eq!((tier, step.as_str()), (0, "pci"));
            assert!(reason.contains("did not answer within 100 ms"), "{reason}");
        }
        other => panic!("expected parking, got {other:?}"),
    }
    assert_eq!(
        env.transport.sent_to("pci").len(),
        3,
        "three attempts before parking"
    );
    assert_eq!(env.observer.count(&seen("pci", AttemptEnd::Timeout)), 3);
    assert_eq!(env.observer.count(&Seen::Parked("pci".into())), 1);

    // It comes back: authorization and risk are not sent again.
    let (result, _) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Completed);
    assert_eq!(env.transport.sent_to("authorization").len(), 1);
    assert_eq!(env.transport.sent_to("risk").len(), 1);
    assert_eq!(
        env.log.sagas.lock().unwrap()[&request().payment_id].parked,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn past_the_parking_limit_the_payment_fails_and_is_compensated() {
    let env = env(
        workflow(""),
        happy_services().on("pci", |_, _| Behaviour::Silent),
    );
    for expected_tier in [0, 1] {
        match run(&env, &request()).await {
            SagaOutcome::Park { tier, .. } => assert_eq!(tier, expected_tier),
            other => panic!("expected parking, got {other:?}"),
        }
    }
    let (result, dead) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Failed);
    assert_eq!(result.reason.as_deref(), Some("service_unavailable"));
    assert!(
        result.detail.as_deref().unwrap().contains("pci"),
        "{:?}",
        result.detail
    );
    assert_eq!(dead.as_deref(), Some("service_unavailable"));
    assert_eq!(
        outcomes(&result),
        [
            ("authorization", StepOutcome::Approved),
            ("risk", StepOutcome::Approved),
            ("pci", StepOutcome::Failed),
            ("authorization", StepOutcome::Compensated),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_fast_without_sending() {
    let wf = workflow("breaker = { failure_threshold = 2, window_ms = 10000, open_ms = 60000 }\nretry = { attempts = 1 }");
    let env = env(wf, happy_services().on("risk", |_, _| Behaviour::Silent));
    // Two timeouts open risk's breaker...
    for _ in 0..2 {
        assert!(matches!(
            run(&env, &request_of(100)).await,
            SagaOutcome::Park { .. }
        ));
    }
    assert_eq!(
        env.breakers.get("risk").unwrap().state(),
        crate::breaker::BreakerState::Open
    );
    assert_eq!(env.observer.breaker("risk"), Some(BreakerState::Open));
    // ...so the next payment parks without a command reaching risk.
    let before = env.transport.sent_to("risk").len();
    let mut other = request();
    other.payment_id = Uuid::new_v4();
    match run(&env, &other).await {
        SagaOutcome::Park { reason, .. } => assert!(reason.contains("breaker"), "{reason}"),
        o => panic!("expected parking, got {o:?}"),
    }
    assert_eq!(env.transport.sent_to("risk").len(), before);
}

#[tokio::test(start_paused = true)]
async fn a_fallback_service_answers_when_the_step_service_is_down() {
    let wf = workflow("fallback = { service = \"risk-lite\" }\nretry = { attempts = 2 }");
    let services = happy_services().on("risk", |_, _| Behaviour::Silent);
    let env = env(wf, services);
    let (result, _) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Completed);
    let risk = &result.steps[1];
    assert_eq!(risk.via.as_deref(), Some("risk-lite"));
    assert_eq!(risk.attempts, 3, "two to risk, one to risk-lite");
    assert!(!risk.degraded);
    assert_eq!(env.transport.sent_to("risk-lite").len(), 1);
    assert_eq!(
        env.observer.seen_of("risk"),
        [
            seen("risk", AttemptEnd::Timeout),
            Seen::Retry("risk".into()),
            seen("risk", AttemptEnd::Timeout),
            Seen::Fallback("risk".into(), FallbackKind::Service),
            seen("risk", AttemptEnd::Approved),
            answered("risk"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_degraded_decision_applies_only_under_its_limit() {
    let wf = workflow("fallback = { approve_below_minor = 5000 }\nretry = { attempts = 1 }");
    let env = env(wf, happy_services().on("risk", |_, _| Behaviour::Silent));
    let (result, _) = finished(run(&env, &request_of(1999)).await);
    assert_eq!(result.status, Status::Completed);
    assert!(result.steps[1].degraded);
    assert_eq!(result.steps[1].outcome, StepOutcome::Approved);

    let degraded = Seen::Fallback("risk".into(), FallbackKind::Degraded);
    assert_eq!(env.observer.count(&degraded), 1);
    assert_eq!(
        env.observer.count(&answered("risk")),
        0,
        "no answer: a degraded decision is not timed as one"
    );

    let mut big = request_of(9999);
    big.payment_id = Uuid::new_v4();
    assert!(
        matches!(run(&env, &big).await, SagaOutcome::Park { .. }),
        "over the limit it parks"
    );
    assert_eq!(env.observer.count(&degraded), 1);
    assert_eq!(env.observer.count(&Seen::Parked("risk".into())), 1);
}

#[tokio::test]
async fn a_recorded_decision_is_never_taken_differently() {
    let env = env(workflow(""), happy_services());
    let req = request();
    // Another replica recorded that risk declined; risk would now approve.
    env.log
        .begin(req.payment_id, &PaymentSummary::of(&req))
        .await
        .unwrap();
    let mut declined = StepRecord::new("risk", StepOutcome::Declined, 1, 5);
    declined.reason = Some("high_risk".into());
    for e in [
        JournalEntry {
            step: "authorization".into(),
            action: Action::Execute,
            record: StepRecord::new("authorization", StepOutcome::Approved, 1, 5),
            detail: None,
            data: data(serde_json::json!({"hold_id": "h-9"})),
            recorded_at: Clock::SYSTEM.now_rfc3339(),
        },
        JournalEntry {
            step: "risk".into(),
            action: Action::Execute,
            record: declined,
            detail: Some("recorded earlier".into()),
            data: Map::new(),
            recorded_at: Clock::SYSTEM.now_rfc3339(),
        },
    ] {
        env.log.record(req.payment_id, &e).await.unwrap();
    }
    let (result, _) = finished(run(&env, &req).await);
    assert_eq!(result.status, Status::Declined);
    assert_eq!(result.detail.as_deref(), Some("recorded earlier"));
    assert!(
        env.transport.sent_to("risk").is_empty(),
        "risk is not asked again"
    );
    let auth = env.transport.sent_to("authorization");
    assert_eq!(auth.len(), 1, "only the compensation is sent");
    assert_eq!(auth[0].action, Action::Compensate);
    assert_eq!(auth[0].context["authorization"]["hold_id"], "h-9");
}

#[tokio::test]
async fn a_decided_payment_is_answered_from_the_journal() {
    let env = env(workflow(""), happy_services());
    let (first, _) = finished(run(&env, &request()).await);
    let sent = env.transport.sent.lock().unwrap().len();
    let (again, _) = finished(run(&env, &request()).await);
    assert_eq!(again, first, "the same result, finished_at included");
    assert_eq!(
        env.transport.sent.lock().unwrap().len(),
        sent,
        "nothing sent again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_compensation_that_keeps_failing_goes_to_the_attention_queue() {
    let services = ScriptedServices::default()
        .on("risk", decline("high_risk"))
        .on("authorization", |c, _| match c.action {
            Action::Execute | Action::Ping => {
                Behaviour::Answer(Reply::approved(c.command_id.clone(), Map::new()))
            }
            Action::Compensate => {
                Behaviour::Answer(Reply::error(c.command_id.clone(), "hold_store_down", "x"))
            }
        });
    let env = env(workflow(""), services);
    let (result, _) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Declined);
    let last = result.steps.last().unwrap();
    assert_eq!(
        (last.outcome, last.attempts),
        (StepOutcome::CompensationFailed, 2)
    );
    let attention = env.transport.attention.lock().unwrap().clone();
    assert_eq!(attention.len(), 1);
    assert_eq!(attention[0].kind, "compensation_failed");
    let replayable = attention[0]
        .command
        .as_ref()
        .expect("a compensation can be re-sent");
    assert_eq!(replayable.action, Action::Compensate);
    assert!(
        !serde_json::to_string(&attention[0])
            .unwrap()
            .contains("4242424242424242"),
        "no card number in the attention queue"
    );
    assert_eq!(
        attention[0].command_id,
        format!("{PAYMENT_ID}:authorization:compensate")
    );
    assert!(attention[0].error.contains("hold_store_down"));
    let told = env.observer.seen();
    assert_eq!(
        told[told.len() - 2..],
        [
            Seen::Compensation("authorization".into(), false),
            Seen::Attention("compensation_failed".into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn results_events_and_attention_items_take_their_time_from_the_env_clock() {
    let services = happy_services()
        .on("risk", decline("high_risk"))
        .on("authorization", |c, _| match c.action {
            Action::Compensate => {
                Behaviour::Answer(Reply::error(c.command_id.clone(), "hold_store_down", "x"))
            }
            _ => Behaviour::Answer(Reply::approved(c.command_id.clone(), Map::new())),
        });
    let mut env = env(workflow(""), services);
    env.clock = Clock(|| std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
    let stamp = "2023-11-14T22:13:20.123Z";
    let (result, _) = finished(run(&env, &request()).await);
    assert_eq!(result.finished_at, stamp);
    let events = env.transport.events.lock().unwrap().clone();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events.iter().all(|e| e.at == stamp), "{events:?}");
    let attention = env.transport.attention.lock().unwrap().clone();
    assert_eq!(attention.len(), 1);
    assert_eq!(attention[0].at, stamp);
    assert_eq!(
        rejected(request().payment_id, "bad".into(), env.clock).finished_at,
        stamp
    );
}

#[tokio::test(start_paused = true)]
async fn an_in_doubt_step_is_asked_again_and_handed_to_operators_if_it_never_answers() {
    let env = env(
        workflow(""),
        happy_services().on("transaction", |_, _| Behaviour::Silent),
    );
    for _ in 0..2 {
        assert!(matches!(
            run(&env, &request()).await,
            SagaOutcome::Park { .. }
        ));
    }
    let (result, _) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Failed);
    let ids: Vec<String> = env
        .transport
        .sent_to("transaction")
        .into_iter()
        .map(|c| c.command_id)
        .collect();
    assert_eq!(
        ids.len(),
        3 * 3 + 1,
        "three visits of three attempts, then one last question"
    );
    assert!(
        ids.iter()
            .all(|id| *id == format!("{PAYMENT_ID}:transaction")),
        "never a new command id"
    );
    let attention = env.transport.attention.lock().unwrap().clone();
    assert_eq!(attention.len(), 1);
    assert_eq!(attention[0].kind, "in_doubt");
    assert_eq!(
        result.steps.last().unwrap().outcome,
        StepOutcome::Compensated,
        "the hold is voided"
    );
    assert_eq!(env.observer.count(&Seen::Attention("in_doubt".into())), 1);
    assert_eq!(env.observer.count(&Seen::Parked("transaction".into())), 2);
    assert_eq!(
        env.observer
            .count(&seen("transaction", AttemptEnd::Timeout)),
        10
    );
}

#[tokio::test(start_paused = true)]
async fn an_in_doubt_step_that_answers_late_is_taken_as_answered() {
    // The transaction acted (its store has the reply) but answers only on the last ask.
    let services = happy_services().on("transaction", |c, seen| {
        if seen <= 9 {
            Behaviour::Silent
        } else {
            Behaviour::Answer(Reply::approved(
                c.command_id.clone(),
                data(serde_json::json!({"settlement": {"minor": 2150, "currency": "USD"}})),
            ))
        }
    });
    let env = env(workflow(""), services);
    for _ in 0..2 {
        assert!(matches!(
            run(&env, &request()).await,
            SagaOutcome::Park { .. }
        ));
    }
    let (result, _) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Completed, "{result:?}");
    assert_eq!(
        result.steps[3].attempts, 4,
        "three attempts and the last question of the deciding visit"
    );
    assert!(env.transport.attention.lock().unwrap().is_empty());
}

#[tokio::test]
async fn shutdown_interrupts_without_a_result() {
    let services = ScriptedServices {
        stopping: true,
        ..ScriptedServices::default()
    };
    let env = env(workflow(""), services);
    assert!(matches!(
        run(&env, &request()).await,
        SagaOutcome::Interrupted
    ));
    assert!(env.log.sagas.lock().unwrap()[&request().payment_id]
        .result
        .is_none());
}

#[tokio::test]
async fn a_payment_id_reused_with_other_content_is_refused_before_any_step() {
    let env = env(workflow(""), happy_services());
    finished(run(&env, &request_of(1999)).await);
    let sent = env.transport.sent.lock().unwrap().len();
    match run(&env, &request_of(500_000)).await {
        SagaOutcome::Reused(detail) => assert!(detail.contains("already used"), "{detail}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        env.transport.sent.lock().unwrap().len(),
        sent,
        "no command for it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_side_effecting_step_parked_behind_an_open_breaker_is_still_in_doubt() {
    // The transaction's breaker opens during the first visit; later visits fail fast
    // without sending, but the first visit's commands may have been acted on.
    let mut wf_text = String::from(
        r#"
        [defaults]
        retry = { attempts = 3, initial_backoff_ms = 10, max_backoff_ms = 40 }
        [parking]
        tiers_ms = [100]
        max_parks = 2
        [[steps]]
        name = "authorization"
        timeout_ms = 100
        card = "number"
        compensate = true
        [[steps]]
        name = "transaction"
        timeout_ms = 100
        side_effects = true
        breaker = { failure_threshold = 3, window_ms = 60000, open_ms = 600000 }
        "#,
    );
    wf_text.push('\n');
    let wf = Workflow::parse(&wf_text, "test").unwrap();
    let env = env(
        wf,
        happy_services().on("transaction", |_, _| Behaviour::Silent),
    );
    for _ in 0..2 {
        assert!(matches!(
            run(&env, &request()).await,
            SagaOutcome::Park { .. }
        ));
    }
    assert_eq!(
        env.transport.sent_to("transaction").len(),
        3,
        "only the first visit sent"
    );
    let (result, _) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Failed);
    let attention = env.transport.attention.lock().unwrap().clone();
    assert_eq!(attention.len(), 1, "{attention:?}");
    assert_eq!(attention[0].kind, "in_doubt");
    assert_eq!(
        env.transport.sent_to("transaction").len(),
        4,
        "one last question, through the open breaker"
    );
}

/// A saga as an owner that died left it: begun, with `approved` steps recorded.
async fn left_behind(env: &TestEnv, approved: &[&str]) -> SagaRecord {
    let request = request();
    env.log
        .begin(request.payment_id, &PaymentSummary::of(&request))
        .await
        .unwrap();
    for step in approved {
        let data = if *step == "authorization" {
            data(serde_json::json!({"hold_id": "h-1"}))
        } else {
            Map::new()
        };
        let record = StepRecord::new(step.to_string(), StepOutcome::Approved, 1, 1);
        let entry = JournalEntry {
            step: step.to_string(),
            action: Action::Execute,
            record,
            detail: None,
            data,
            recorded_at: String::new(),
        };
        env.log.record(request.payment_id, &entry).await.unwrap();
    }
    env.log.sagas.lock().unwrap()[&request.payment_id].clone()
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_saga_fails_its_open_step_and_compensates_without_the_card() {
    let env = env(workflow(""), happy_services());
    let saga = left_behind(&env, &["authorization", "risk"]).await;
    let (result, dead) = finished(abandon(&env, &saga, "its request is gone").await);
    assert_eq!(result.status, Status::Failed);
    assert_eq!(result.reason.as_deref(), Some(ABANDONED));
    assert_eq!(dead, None);
    assert_eq!(
        outcomes(&result),
        [
            ("authorization", StepOutcome::Approved),
            ("risk", StepOutcome::Approved),
            ("pci", StepOutcome::Failed),
            ("authorization", StepOutcome::Compensated),
        ]
    );
    assert!(
        env.transport.sent_to("pci").is_empty(),
        "the open step is not sent: nothing can run it"
    );
    assert!(env.transport.sent_to("transaction").is_empty());
    let void = env.transport.sent_to("authorization");
    assert_eq!(void.len(), 1);
    assert_eq!(void[0].action, Action::Compensate);
    assert_eq!(void[0].context["authorization"]["hold_id"], "h-1");
    assert_eq!(
        void[0].payment.card.number, None,
        "the journal has no number"
    );
    assert_eq!(void[0].payment.card.last4, "4242");
    assert_eq!(void[0].payment.amount.minor, 1999);
    // Recorded: a second sweep (or the request coming back) finds the result.
    let again = env.log.sagas.lock().unwrap()[&saga.payment_id].clone();
    assert_eq!(again.result.as_ref(), Some(&result));
    let (replayed, _) = finished(run(&env, &request()).await);
    assert_eq!(replayed, result);
    assert_eq!(env.transport.sent_to("authorization").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_saga_asks_its_irreversible_step_what_it_did() {
    // The transfer happened (or happens now, once): the payment completes.
    let env = env(workflow(""), happy_services());
    let saga = left_behind(&env, &["authorization", "risk", "pci"]).await;
    let (result, _) = finished(abandon(&env, &saga, "gone").await);
    assert_eq!(result.status, Status::Completed);
    let asked = env.transport.sent_to("transaction");
    assert_eq!(asked.len(), 1, "asked once");
    assert_eq!(asked[0].command_id, format!("{PAYMENT_ID}:transaction"));
    assert!(env.transport.sent_to("authorization").is_empty(), "no void");

    // It does not answer: operators are told it is in doubt, the hold is voided.
    let services = happy_services().on("transaction", |_, _| Behaviour::Silent);
    let env = env_with(services);
    let saga = left_behind(&env, &["authorization", "risk", "pci"]).await;
    let (result, _) = finished(abandon(&env, &saga, "gone").await);
    assert_eq!(result.status, Status::Failed);
    assert_eq!(result.reason.as_deref(), Some(ABANDONED));
    assert_eq!(env.transport.sent_to("transaction").len(), 1);
    let attention = env.transport.attention.lock().unwrap().clone();
    assert_eq!(attention.len(), 1);
    assert_eq!(attention[0].kind, "in_doubt");
    assert_eq!(attention[0].step, "transaction");
    assert_eq!(
        env.transport.sent_to("authorization")[0].action,
        Action::Compensate
    );
}

fn env_with(services: ScriptedServices) -> TestEnv {
    env(workflow(""), services)
}

// Conditions (`when`).

/// Steps with the issue's example conditions: conversion when the currencies differ,
/// 3-D Secure when risk scores above 70, due diligence from 10 000.00.
fn conditional_workflow() -> Workflow {
    Workflow::parse(
        r#"
        [defaults]
        retry = { attempts = 1, initial_backoff_ms = 10, max_backoff_ms = 10 }
        [[steps]]
        name = "authorization"
        timeout_ms = 100
        card = "number"
        compensate = true
        [[steps]]
        name = "fx"
        timeout_ms = 100
        compensate = true
        when = "payment.merchant_currency != payment.amount.currency"
        [[steps]]
        name = "risk"
        timeout_ms = 100
        [[steps]]
        name = "three_ds"
        timeout_ms = 100
        when = "steps.risk.score > 70"
        [[steps]]
        name = "edd"
        timeout_ms = 100
        when = "payment.amount.minor >= 1000000"
        [[steps]]
        name = "transaction"
        timeout_ms = 100
        side_effects = true
        "#,
        "test",
    )
    .unwrap()
}

fn request_in(minor: u64, currency: &str, merchant_currency: &str) -> PaymentRequest {
    let body = serde_json::json!({
        "payment_id": PAYMENT_ID, "merchant_id": "m-1", "customer_id": "c-1",
        "amount": {"minor": minor, "currency": currency},
        "merchant_currency": merchant_currency,
        "card": {"number": "4242424242424242", "expiry": "12/30"}
    });
    PaymentRequest::parse(body.to_string().as_bytes(), &Limits::default()).unwrap()
}

fn scored(score: i64) -> ScriptedServices {
    happy_services().on("risk", approve_with(serde_json::json!({ "score": score })))
}

fn event_keys(env: &TestEnv) -> Vec<String> {
    env.transport
        .events
        .lock()
        .unwrap()
        .iter()
        .map(SagaEvent::routing_key)
        .collect()
}

#[tokio::test]
async fn a_false_condition_skips_its_step_without_a_command() {
    let env = env(conditional_workflow(), scored(10));
    let req = request_in(1999, "EUR", "EUR");
    let (result, _) = finished(run(&env, &req).await);
    assert_eq!(result.status, Status::Completed);
    assert_eq!(
        outcomes(&result),
        [
            ("authorization", StepOutcome::Approved),
            ("fx", StepOutcome::Skipped),
            ("risk", StepOutcome::Approved),
            ("three_ds", StepOutcome::Skipped),
            ("edd", StepOutcome::Skipped),
            ("transaction", StepOutcome::Approved),
        ]
    );
    for skipped in ["fx", "three_ds", "edd"] {
        assert!(env.transport.sent_to(skipped).is_empty(), "{skipped}");
        let line = result.steps.iter().find(|s| s.step == skipped).unwrap();
        assert_eq!((line.attempts, line.duration_ms), (0, 0));
    }
    let json = serde_json::to_value(&result).unwrap();
    assert_eq!(json["steps"][1]["outcome"], "skipped");
    assert_eq!(
        event_keys(&env),
        [
            "event.authorization.approved",
            "event.fx.skipped",
            "event.risk.approved",
            "event.three_ds.skipped",
            "event.edd.skipped",
            "event.transaction.approved",
            "event.payment.completed",
        ]
    );
    let saga = env.log.sagas.lock().unwrap()[&req.payment_id].clone();
    let fx = saga
        .entry("fx", Action::Execute)
        .expect("the skip is journalled");
    assert_eq!(fx.record.outcome, StepOutcome::Skipped);
    // A skipped step gives later steps no data.
    let tx = env.transport.sent_to("transaction");
    assert!(tx[0].context.get("fx").is_none(), "{:?}", tx[0].context);
}

#[tokio::test]
async fn true_conditions_run_their_steps_with_the_data_they_read() {
    let env = env(conditional_workflow(), scored(80));
    let (result, _) = finished(run(&env, &request_in(1_000_000, "EUR", "USD")).await);
    assert_eq!(result.status, Status::Completed);
    assert!(
        result
            .steps
            .iter()
            .all(|s| s.outcome == StepOutcome::Approved),
        "{:?}",
        outcomes(&result)
    );
    assert_eq!(result.steps.len(), 6);
    let three_ds = env.transport.sent_to("three_ds");
    assert_eq!(three_ds.len(), 1);
    assert_eq!(three_ds[0].context["risk"]["score"], 80);
    // The boundaries: 70 is not above 70; 999 999 is below 1 000 000.
    let env = env_with_workflow(conditional_workflow(), scored(70));
    let (result, _) = finished(run(&env, &request_in(999_999, "EUR", "USD")).await);
    assert_eq!(
        outcomes(&result)[1..5],
        [
            ("fx", StepOutcome::Approved),
            ("risk", StepOutcome::Approved),
            ("three_ds", StepOutcome::Skipped),
            ("edd", StepOutcome::Skipped),
        ]
    );
}

fn env_with_workflow(workflow: Workflow, services: ScriptedServices) -> TestEnv {
    env(workflow, services)
}

#[tokio::test]
async fn a_skipped_step_is_never_compensated() {
    // fx is compensable, but was skipped: the decline voids the hold only.
    let services = scored(10).on("transaction", decline("amount_too_large"));
    let env = env(conditional_workflow(), services);
    let (result, _) = finished(run(&env, &request_in(1999, "EUR", "EUR")).await);
    assert_eq!(result.status, Status::Declined);
    assert_eq!(
        outcomes(&result),
        [
            ("authorization", StepOutcome::Approved),
            ("fx", StepOutcome::Skipped),
            ("risk", StepOutcome::Approved),
            ("three_ds", StepOutcome::Skipped),
            ("edd", StepOutcome::Skipped),
            ("transaction", StepOutcome::Declined),
            ("authorization", StepOutcome::Compensated),
        ]
    );
    assert!(
        env.transport.sent_to("fx").is_empty(),
        "no compensate for fx"
    );
    // The same payment with fx run: fx is compensated too, newest first.
    let services = scored(10).on("transaction", decline("amount_too_large"));
    let env = env_with_workflow(conditional_workflow(), services);
    let (result, _) = finished(run(&env, &request_in(1999, "EUR", "USD")).await);
    assert_eq!(
        outcomes(&result)[5..],
        [
            ("transaction", StepOutcome::Declined),
            ("fx", StepOutcome::Compensated),
            ("authorization", StepOutcome::Compensated),
        ]
    );
}

#[tokio::test]
async fn a_journalled_condition_is_never_evaluated_again() {
    // The currencies differ (fx would run) and risk scores 10 (3-D Secure would be
    // skipped); the journal says otherwise for both, and the journal wins.
    let env = env(conditional_workflow(), scored(10));
    let req = request_in(1999, "EUR", "USD");
    env.log
        .begin(req.payment_id, &PaymentSummary::of(&req))
        .await
        .unwrap();
    let recorded = |step: &str, outcome, data: Value| JournalEntry {
        step: step.into(),
        action: Action::Execute,
        record: StepRecord::new(step, outcome, u32::from(outcome != StepOutcome::Skipped), 1),
        detail: None,
        data: data.as_object().unwrap().clone(),
        recorded_at: Clock::SYSTEM.now_rfc3339(),
    };
    for e in [
        recorded(
            "authorization",
            StepOutcome::Approved,
            serde_json::json!({"hold_id": "h-1"}),
        ),
        recorded("fx", StepOutcome::Skipped, serde_json::json!({})),
        recorded(
            "risk",
            StepOutcome::Approved,
            serde_json::json!({"score": 10}),
        ),
        recorded("three_ds", StepOutcome::Approved, serde_json::json!({})),
    ] {
        env.log.record(req.payment_id, &e).await.unwrap();
    }
    let (result, _) = finished(run(&env, &req).await);
    assert_eq!(result.status, Status::Completed);
    assert_eq!(
        outcomes(&result)[1..4],
        [
            ("fx", StepOutcome::Skipped),
            ("risk", StepOutcome::Approved),
            ("three_ds", StepOutcome::Approved),
        ]
    );
    for step in ["authorization", "fx", "risk", "three_ds"] {
        assert!(
            env.transport.sent_to(step).is_empty(),
            "{step} not sent again"
        );
    }
    assert_eq!(env.transport.sent_to("transaction").len(), 1);
}

#[tokio::test]
async fn a_condition_that_cannot_be_evaluated_runs_its_step() {
    // Risk approved without a score: 3-D Secure is not skipped by accident.
    let env = env(conditional_workflow(), happy_services());
    let (result, _) = finished(run(&env, &request_in(1999, "EUR", "EUR")).await);
    assert_eq!(result.status, Status::Completed);
    assert_eq!(outcomes(&result)[3], ("three_ds", StepOutcome::Approved));
    assert_eq!(env.transport.sent_to("three_ds").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_saga_decides_conditions_as_the_live_run_would() {
    for (merchant_currency, fx) in [("EUR", StepOutcome::Skipped), ("USD", StepOutcome::Failed)] {
        let env = env(conditional_workflow(), scored(10));
        let req = request_in(1999, "EUR", merchant_currency);
        env.log
            .begin(req.payment_id, &PaymentSummary::of(&req))
            .await
            .unwrap();
        let auth = JournalEntry {
            step: "authorization".into(),
            action: Action::Execute,
            record: StepRecord::new("authorization", StepOutcome::Approved, 1, 1),
            detail: None,
            data: data(serde_json::json!({"hold_id": "h-1"})),
            recorded_at: Clock::SYSTEM.now_rfc3339(),
        };
        env.log.record(req.payment_id, &auth).await.unwrap();
        let saga = env.log.sagas.lock().unwrap()[&req.payment_id].clone();
        let (result, _) = finished(abandon(&env, &saga, "gone").await);
        assert_eq!(result.status, Status::Failed, "{merchant_currency}");
        assert_eq!(result.reason.as_deref(), Some(ABANDONED));
        let expected: Vec<(&str, StepOutcome)> = match fx {
            // Skipped as live would have; the next open step is the one abandoned.
            StepOutcome::Skipped => vec![
                ("authorization", StepOutcome::Approved),
                ("fx", StepOutcome::Skipped),
                ("risk", StepOutcome::Failed),
                ("authorization", StepOutcome::Compensated),
            ],
            _ => vec![
                ("authorization", StepOutcome::Approved),
                ("fx", StepOutcome::Failed),
                ("fx", StepOutcome::Compensated),
                ("authorization", StepOutcome::Compensated),
            ],
        };
        assert_eq!(outcomes(&result), expected, "{merchant_currency}");
    }
}

#[tokio::test]
async fn a_payment_journalled_before_brands_were_kept_is_not_taken_for_a_reused_id() {
    let env = env(conditional_workflow(), scored(10));
    let req = request_in(1999, "EUR", "EUR");
    let mut old = PaymentSummary::of(&req);
    old.card_brand.clear();
    env.log.begin(req.payment_id, &old).await.unwrap();
    let (result, _) = finished(run(&env, &req).await);
    assert_eq!(result.status, Status::Completed);
    // Another card under the same id is still refused.
    let mut other = request_in(1999, "EUR", "EUR");
    other.card.number = baton_contract::CardNumber::new("5555555555554444");
    let env = env_with_workflow(conditional_workflow(), scored(10));
    env.log.begin(req.payment_id, &old).await.unwrap();
    assert!(matches!(run(&env, &other).await, SagaOutcome::Reused(_)));
}

// Parallel groups.

fn grouped_workflow() -> Workflow {
    Workflow::parse(
        r#"
        [defaults]
        retry = { attempts = 1, initial_backoff_ms = 10, max_backoff_ms = 10 }
        [[steps]]
        name = "authorization"
        timeout_ms = 1000
        card = "number"
        compensate = true
        [[steps]]
        name = "risk"
        timeout_ms = 1000
        card = "fingerprint"
        group = "checks"
        [[steps]]
        name = "pci"
        timeout_ms = 1000
        compensate = true
        group = "checks"
        [[steps]]
        name = "transaction"
        timeout_ms = 1000
        side_effects = true
        "#,
        "test",
    )
    .unwrap()
}

fn slow(
    ms: u64,
    reply: impl Fn(&Command) -> Reply + Send + Sync + 'static,
) -> impl Fn(&Command, usize) -> Behaviour + Send + Sync {
    move |c: &Command, _| Behaviour::After(Duration::from_millis(ms), reply(c))
}

#[tokio::test(start_paused = true)]
async fn a_group_sends_its_commands_at_once_and_goes_on_when_all_approve() {
    let services = happy_services()
        .on(
            "risk",
            slow(300, |c| Reply::approved(c.command_id.clone(), Map::new())),
        )
        .on(
            "pci",
            slow(300, |c| Reply::approved(c.command_id.clone(), Map::new())),
        );
    let env = env(grouped_workflow(), services);
    let started = Instant::now();
    let (result, _) = finished(run(&env, &request()).await);
    let elapsed = started.elapsed();
    assert_eq!(result.status, Status::Completed);
    assert_eq!(
        outcomes(&result),
        [
            ("authorization", StepOutcome::Approved),
            ("risk", StepOutcome::Approved),
            ("pci", StepOutcome::Approved),
            ("transaction", StepOutcome::Approved),
        ]
    );
    // Both took 300 ms; one after the other would be 600.
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(400),
        "{elapsed:?}"
    );
    let order: Vec<String> = env
        .transport
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|(s, _)| s.clone())
        .collect();
    assert_eq!(order, ["authorization", "risk", "pci", "transaction"]);
    let pci = env.transport.sent_to("pci");
    assert!(
        pci[0].context.get("risk").is_none(),
        "members do not see each other"
    );
    assert_eq!(pci[0].context["authorization"]["hold_id"], "h-1");
}

#[tokio::test(start_paused = true)]
async fn a_decline_in_a_group_compensates_what_approved() {
    let services = happy_services()
        .on(
            "risk",
            slow(200, |c| {
                Reply::declined(c.command_id.clone(), "high_risk", "no")
            }),
        )
        .on(
            "pci",
            slow(100, |c| Reply::approved(c.command_id.clone(), Map::new())),
        );
    let env = env(grouped_workflow(), services);
    let (result, _) = finished(run(&env, &request()).await);
    assert_eq!(result.status, Status::Declined);
    assert_eq!(result.reason.as_deref(), Some("high_risk"));
    assert_eq!(
        outcomes(&result),
        [
            ("authorization", StepOutcome::Approved),
            ("risk", StepOutcome::Declined),
            ("pci", StepOutcome::Approved),
            ("pci", StepOutcome::Compensated),
            ("authorization", StepOutcome::Compensated),
        ]
    );
    assert!(env.transport.sent_to("transaction").is_empty());
    let pci = env.transport.sent_to("pci");
    assert_eq!(pci[1].action, Action::Compensate);
}

#[tokio::test(start_paused = true)]
async fn a_parked_group_member_resumes_without_resending_the_others() {
    let services = happy_services().on("pci", |_, _| Behaviour::Silent);
    let env = env(grouped_workflow(), services);
    let outcome = run(&env, &request()).await;
    assert!(
        matches!(outcome, SagaOutcome::Park { ref step, .. } if step == "pci"),
        "{outcome:?}"
    );
    let saga = env.log.sagas.lock().unwrap()[&request().payment_id].clone();
    assert_eq!(
        saga.entry("risk", Action::Execute)
            .map(|e| e.record.outcome),
        Some(StepOutcome::Approved),
        "risk decided while pci waited"
    );
    assert_eq!(env.transport.sent_to("risk").len(), 1);
}
