//! Card data minimisation: only authorization receives the card number; risk gets a
//! keyed fingerprint and still declines the high-risk card by it, through a key rotation.

use crate::app::{spawn_services, Store, TestApp};
use baton::runtime;
use baton::testcards::TestCard;
use baton_contract::{CardKeys, Command, Status, StepOutcome};
use baton_services::ServiceKind;
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use serde_json::Value;
use uuid::Uuid;

const HIGH_RISK: &str = "4100000000000019";

/// The first command waiting in `<prefix>.cmd.<service>`, put back (requeued) so the
/// service gets it once it starts: (AMQP headers as text, body).
async fn peek_command(app: &TestApp, service: &str) -> (String, Vec<u8>) {
    let queue = app.names.command_queue(service);
    assert!(
        app.queue_depth(&queue, 1).await >= 1,
        "no command reached {queue}"
    );
    let channel = app.client.publisher().channel().clone();
    let message = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
        .expect("a command is ready");
    let headers = format!("{:?}", message.delivery.properties.headers());
    let body = message.delivery.data.clone();
    message
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: true })
        .await
        .expect("requeue the command");
    (headers, body)
}

/// Runs of 12–19 ASCII digits in `text`: what a card number looks like.
fn card_like_digit_runs(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|run| (12..=19).contains(&run.len()))
        .map(str::to_owned)
        .collect()
}

/// Publishes the high-risk card and returns its correlation id.
async fn send_high_risk(app: &mut TestApp) -> String {
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&TestCard::HighRisk.request_with_id(payment_id)).unwrap();
    let correlation = payment_id.to_string();
    app.send(&body, &correlation).await;
    correlation
}

#[tokio::test]
async fn only_authorization_gets_the_card_number_and_risk_declines_by_fingerprint() {
    // No service runs yet: each command waits in its queue, where we read it as any
    // consumer of that queue could.
    let mut app = spawn_services(Store::Sqlite, &[]).await;
    let settings = app.orchestrator_settings();
    app.start_orchestrator(settings).await;
    let correlation = send_high_risk(&mut app).await;

    let (_, body) = peek_command(&app, "authorization").await;
    let authorization: Command = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        authorization
            .payment
            .card
            .number
            .as_ref()
            .map(|n| n.reveal()),
        Some(HIGH_RISK),
        "authorization charges the card: it gets the number"
    );
    assert_eq!(authorization.payment.card.fingerprint, None);
    app.start_service(ServiceKind::Authorization).await;

    let (headers, body) = peek_command(&app, "risk").await;
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(!text.contains(HIGH_RISK), "{text}");
    assert!(!headers.contains(HIGH_RISK), "{headers}");
    let mut json: Value = serde_json::from_slice(&body).unwrap();
    let card = json["payment"]["card"].as_object().unwrap().clone();
    assert!(card.get("number").is_none(), "{text}");
    assert_eq!(card["last4"], "0019");
    let fingerprint = card["fingerprint"]
        .as_str()
        .expect("a fingerprint")
        .to_owned();
    assert_eq!(fingerprint, app.card_keys.fingerprint(HIGH_RISK));
    assert!(fingerprint.starts_with("test:") && fingerprint.len() == "test:".len() + 64);
    // Nothing else in the command looks like a card number either (the ids and the
    // fingerprint's hex aside, which may hold digit runs by chance).
    for field in ["payment_id", "command_id"] {
        json.as_object_mut().unwrap().remove(field);
    }
    json["payment"]["card"]
        .as_object_mut()
        .unwrap()
        .remove("fingerprint");
    // Authorization's data: random ids (hold, ledger) and the ledger's file name, whose
    // hex may hold a 12-digit run by chance (about 1 in 300 for a UUID's last group).
    let authorization = json["context"]["authorization"].as_object_mut().unwrap();
    for id in ["hold_id", "ledger_id", "ledger"] {
        authorization.remove(id);
    }
    let rest = json.to_string();
    assert_eq!(card_like_digit_runs(&rest), Vec::<String>::new(), "{rest}");

    for kind in [
        ServiceKind::Risk,
        ServiceKind::Pci,
        ServiceKind::Transaction,
    ] {
        app.start_service(kind).await;
    }
    let result = app.result_for(&correlation).await.result.unwrap();
    assert_eq!(result.status, Status::Declined, "{result:?}");
    assert_eq!(result.reason.as_deref(), Some("high_risk"));
    assert!(
        result
            .steps
            .iter()
            .any(|s| s.step == "authorization" && s.outcome == StepOutcome::Compensated),
        "{result:?}"
    );
    // An honest payment next to it still completes.
    let (good, _) = app.pay(TestCard::Good).await;
    assert_eq!(good.status, Status::Completed, "{good:?}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_fingerprint_workflow_without_a_card_key_is_refused_at_start() {
    let app = spawn_services(Store::Sqlite, &[]).await;
    let mut settings = app.orchestrator_settings();
    settings.card_keys = None;
    let error = match runtime::start(settings).await {
        Ok(_) => panic!("started without the card key the risk step needs"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("steps[1] (\"risk\")")
            && error.contains("card = \"fingerprint\"")
            && error.contains("--card-key-file"),
        "{error}"
    );
    // The risk service refuses too: without a key it could not recognise any card.
    let config = baton_services::ServiceConfig {
        card_keys: None,
        ..app.service_config()
    };
    let error = baton_services::start(ServiceKind::Risk, config)
        .await
        .expect_err("risk without a card key is refused")
        .to_string();
    assert!(error.contains("--card-key-file"), "{error}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_rotated_risk_service_declines_by_the_old_key_and_the_new_one() {
    let old_line = CardKeys::new_key_line("k1");
    let rotated_text = format!("{}{old_line}", CardKeys::new_key_line("k2"));
    let old = CardKeys::parse(&old_line, "old").unwrap();
    let rotated = CardKeys::parse(&rotated_text, "rotated").unwrap();

    // Step 1 of a rotation: risk has the new key on top and the old one second; the
    // orchestrator still fingerprints with the old key.
    let mut app = spawn_services(Store::Sqlite, &[]).await;
    for kind in ServiceKind::ALL {
        let config = baton_services::ServiceConfig {
            card_keys: Some(rotated.clone()),
            ..app.service_config_for(kind)
        };
        app.start_service_with(kind, config).await;
    }
    let mut settings = app.orchestrator_settings();
    settings.card_keys = Some(old.clone());
    app.start_orchestrator(settings).await;
    let (declined, _) = app.pay(TestCard::HighRisk).await;
    assert_eq!(
        declined.reason.as_deref(),
        Some("high_risk"),
        "{declined:?}"
    );
    let (good, _) = app.pay(TestCard::Good).await;
    assert_eq!(good.status, Status::Completed, "{good:?}");

    // Step 2: the orchestrator moves to the rotated file (the new key fingerprints).
    app.orchestrator
        .take()
        .unwrap()
        .shutdown()
        .await
        .expect("stop the first orchestrator");
    let mut settings = app.orchestrator_settings();
    settings.card_keys = Some(rotated.clone());
    app.start_orchestrator(settings).await;
    let (declined, _) = app.pay(TestCard::HighRisk).await;
    assert_eq!(
        declined.reason.as_deref(),
        Some("high_risk"),
        "{declined:?}"
    );
    let (good, _) = app.pay(TestCard::Good).await;
    assert_eq!(good.status, Status::Completed, "{good:?}");
    assert!(rotated.fingerprint(HIGH_RISK).starts_with("k2:"));

    // Done in the wrong order (the orchestrator on a key risk lacks), risk fails closed:
    // every card is declined `card_key_unknown`, none approved unchecked.
    app.orchestrator.take().unwrap().shutdown().await.unwrap();
    let mut settings = app.orchestrator_settings();
    settings.card_keys = Some(CardKeys::generate("k3"));
    app.start_orchestrator(settings).await;
    for card in [TestCard::HighRisk, TestCard::Good] {
        let (result, _) = app.pay(card).await;
        assert_eq!(result.status, Status::Declined, "{result:?}");
        assert_eq!(
            result.reason.as_deref(),
            Some("card_key_unknown"),
            "{result:?}"
        );
    }
    app.cleanup().await;
}
