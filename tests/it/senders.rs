//! Verified senders, on the real broker with every process on its own broker user: a
//! reply counts only when RabbitMQ says it comes from the step's service user and it
//! names the command waited for; a command counts only when it comes from the
//! orchestrator's user. Each attack is tried against a live payment, and the payment
//! still gets its documented result.

use crate::app::{role_of, spawn_verified_app, spawn_verified_services, TestApp};
use baton::broker::Role;
use baton::testcards::TestCard;
use baton::workflow::Workflow;
use baton_amqp as amqp;
use baton_contract::Status;
use baton_services::ServiceKind;
use baton_testkit::metric_value;
use baton_testkit::{eventually, AMQP_ADDRESS};
use lapin::options::{BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use std::time::Duration;
use uuid::Uuid;

/// Every service but risk: the risk command waits in its queue for the attacker.
const ALL_BUT_RISK: [ServiceKind; 3] = [
    ServiceKind::Authorization,
    ServiceKind::Pci,
    ServiceKind::Transaction,
];

/// Every service but risk, and an orchestrator that waits 60 s for a risk reply: the
/// attacker's reply must meet the wait it targets, however slow the machine.
async fn app_waiting_for_risk() -> TestApp {
    let mut app = spawn_verified_services(&ALL_BUT_RISK).await;
    let text = include_str!("../../workflows/default.toml");
    let (before, after) = text.split_once("name = \"risk\"").expect("the risk step");
    let after = after.replacen("timeout_ms = 2000", "timeout_ms = 60000", 1);
    let workflow = Workflow::parse(&format!("{before}name = \"risk\"{after}"), "slow-risk.toml")
        .expect("a valid workflow");
    assert_eq!(workflow.steps()[1].timeout, Duration::from_secs(60));
    let mut settings = app.orchestrator_settings();
    settings.workflow = workflow;
    app.start_orchestrator(settings).await;
    app
}

/// A connection and confirm channel as `role`'s user.
async fn connect_as(app: &TestApp, role: Role) -> (Connection, Channel) {
    let url = app.url_of(role);
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect as {}: {e}", role.name()));
    let channel = amqp::confirm_channel(&connection).await.expect("channel");
    (connection, channel)
}

/// Publishes the high-risk card and takes its risk command from `<prefix>.cmd.risk`
/// without acking it (the attacker's view of it): (reply_to, correlation id, command id,
/// the delivery to hand back).
async fn risk_command_of_a_high_risk_payment(
    app: &mut TestApp,
) -> (String, String, String, lapin::message::Delivery, String) {
    let payment_id = Uuid::new_v4();
    let body = serde_json::to_vec(&TestCard::HighRisk.request_with_id(payment_id)).unwrap();
    let correlation = payment_id.to_string();
    app.send(&body, &correlation).await;
    let queue = app.names.command_queue("risk");
    app.queue_depth(&queue, 1).await;
    let channel = app.client.publisher().channel().clone();
    let message = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
        .expect("the risk command waits in its queue");
    let delivery = message.delivery;
    let reply_to = delivery.properties.reply_to().as_ref().unwrap().to_string();
    let command_correlation = delivery
        .properties
        .correlation_id()
        .as_ref()
        .unwrap()
        .to_string();
    let command: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    let command_id = command["command_id"].as_str().unwrap().to_owned();
    (
        reply_to,
        command_correlation,
        command_id,
        delivery,
        correlation,
    )
}

/// An approving reply to `command_id`, published as `role` with its own `user_id`.
async fn forge_approval(
    app: &TestApp,
    role: Role,
    reply_to: &str,
    correlation: &str,
    command_id: &str,
) {
    let (connection, channel) = connect_as(app, role).await;
    let body =
        serde_json::json!({"command_id": command_id, "outcome": "approved", "data": {"score": 1}});
    let properties = amqp::with_sender(
        amqp::json_properties(&[]).with_correlation_id(correlation.into()),
        &role.user(app.names.prefix()),
    );
    amqp::publish_confirmed(
        &channel,
        "",
        reply_to,
        &serde_json::to_vec(&body).unwrap(),
        properties,
    )
    .await
    .expect("the broker takes a reply whose user_id is the publisher's own");
    let _ = connection.close(200, "done".into()).await;
}

/// Hands the risk command back, starts the real risk service, and returns the payment's
/// result: the real risk service's answer decides it.
async fn finish_with_the_real_risk_service(
    app: &mut TestApp,
    delivery: lapin::message::Delivery,
    correlation: &str,
) -> baton_contract::PaymentResult {
    delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
        .expect("requeue the risk command");
    app.start_service(ServiceKind::Risk).await;
    app.result_for(correlation)
        .await
        .result
        .expect("a well-formed result")
}

fn rejected_replies(app: &TestApp, reason: &str) -> f64 {
    metric_value(
        &app.orchestrator().metrics().registry,
        "baton_replies_rejected_total",
        &[("reason", reason)],
    )
}

#[tokio::test]
async fn an_approval_forged_by_another_services_user_does_not_decide_the_step() {
    let mut app = app_waiting_for_risk().await;
    let (reply_to, correlation, command_id, delivery, payment) =
        risk_command_of_a_high_risk_payment(&mut app).await;

    // The PCI service's user answers for risk, with everything else right.
    forge_approval(&app, Role::Pci, &reply_to, &correlation, &command_id).await;
    assert!(
        eventually(Duration::from_secs(10), || rejected_replies(
            &app,
            "wrong_sender"
        ) == 1.0)
        .await,
        "the forged reply is refused and counted"
    );

    let result = finish_with_the_real_risk_service(&mut app, delivery, &payment).await;
    assert_eq!(result.status, Status::Declined, "{result:?}");
    assert_eq!(result.reason.as_deref(), Some("high_risk"));
    assert_eq!(rejected_replies(&app, "wrong_command_id"), 0.0);
    // An honest payment around it completes.
    let (good, _) = app.pay(TestCard::Good).await;
    assert_eq!(good.status, Status::Completed, "{good:?}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_reply_from_the_right_user_for_another_command_is_refused() {
    let mut app = app_waiting_for_risk().await;
    let (reply_to, correlation, _command_id, delivery, payment) =
        risk_command_of_a_high_risk_payment(&mut app).await;

    // The risk user, but naming a command nobody waits for (the original exploit).
    forge_approval(&app, Role::Risk, &reply_to, &correlation, "bogus").await;
    assert!(
        eventually(Duration::from_secs(10), || rejected_replies(
            &app,
            "wrong_command_id"
        ) == 1.0)
        .await,
        "the reply for another command is refused and counted"
    );

    let result = finish_with_the_real_risk_service(&mut app, delivery, &payment).await;
    assert_eq!(result.status, Status::Declined, "{result:?}");
    assert_eq!(result.reason.as_deref(), Some("high_risk"));
    app.cleanup().await;
}

#[tokio::test]
async fn the_broker_refuses_a_reply_claiming_another_users_id() {
    let mut app = app_waiting_for_risk().await;
    let (reply_to, correlation, command_id, delivery, payment) =
        risk_command_of_a_high_risk_payment(&mut app).await;

    // The PCI user claims to be the risk user.
    let (connection, channel) = connect_as(&app, Role::Pci).await;
    let body = serde_json::json!({"command_id": command_id, "outcome": "approved"});
    let properties = amqp::with_sender(
        amqp::json_properties(&[]).with_correlation_id(correlation.as_str().into()),
        &Role::Risk.user(app.names.prefix()),
    );
    let refused = amqp::publish_confirmed(
        &channel,
        "",
        &reply_to,
        &serde_json::to_vec(&body).unwrap(),
        properties,
    )
    .await
    .expect_err("RabbitMQ refuses a user_id that is not the connection's user");
    assert!(
        refused.to_string().contains("PRECONDITION_FAILED")
            || refused.to_string().contains("user_id"),
        "{refused}"
    );
    let _ = connection.close(200, "done".into()).await;

    let result = finish_with_the_real_risk_service(&mut app, delivery, &payment).await;
    assert_eq!(result.status, Status::Declined, "{result:?}");
    assert_eq!(result.reason.as_deref(), Some("high_risk"));
    assert_eq!(
        rejected_replies(&app, "wrong_sender"),
        0.0,
        "it never arrived"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn commands_from_anyone_but_the_orchestrator_are_dropped_unread() {
    let mut app = spawn_verified_app(&ServiceKind::ALL).await;
    let queue = app.names.command_queue("authorization");
    let payment_id = Uuid::new_v4();
    let command = serde_json::json!({
        "command_id": format!("{payment_id}:authorization"),
        "payment_id": payment_id,
        "step": "authorization",
        "action": "execute",
        "payment": {
            "merchant_id": "m-1", "customer_id": "victim",
            "amount": {"minor": 500_000_000, "currency": "EUR"},
            "card": {"number": "4242424242424242", "last4": "4242", "expiry": "12/30"}
        },
        "context": {}
    });
    let body = serde_json::to_vec(&command).unwrap();

    // The client role may not publish to a queue by name at all.
    let (client, channel) = connect_as(&app, Role::Client).await;
    let refused = amqp::publish_confirmed(
        &channel,
        "",
        &queue,
        &body,
        amqp::with_sender(
            amqp::json_properties(&[]),
            &Role::Client.user(app.names.prefix()),
        ),
    )
    .await
    .expect_err("the client role cannot write to the default exchange");
    assert!(refused.to_string().contains("ACCESS_REFUSED"), "{refused}");
    let _ = client.close(200, "done".into()).await;

    // A service role can (it answers replies that way), with its own user_id: the
    // authorization service drops it unread.
    let (risk, channel) = connect_as(&app, Role::Risk).await;
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            amqp::with_sender(
                amqp::json_properties(&[]),
                &Role::Risk.user(app.names.prefix()),
            ),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
    let authorization = app.service("authorization").registry().clone();
    let rejected = || {
        metric_value(
            &authorization,
            "baton_service_commands_rejected_total",
            &[("reason", "wrong_sender")],
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || rejected() == 1.0).await,
        "the forged command is counted as rejected"
    );
    // Dropped before anything was done: no hold, no reply.
    assert_eq!(app.ledger.holds_for(payment_id).await.expect("ledger"), 0);
    let _ = risk.close(200, "done".into()).await;

    // An honest payment goes through the same services.
    let (good, _) = app.pay(TestCard::Good).await;
    assert_eq!(good.status, Status::Completed, "{good:?}");
    assert_eq!(rejected(), 1.0);
    app.cleanup().await;
}

#[tokio::test]
async fn require_verified_senders_refuses_to_start_without_users() {
    let app = spawn_verified_app(&[]).await;
    let mut settings = app.orchestrator_settings();
    settings.service_users.remove("risk");
    let e = baton::runtime::start(settings)
        .await
        .err()
        .expect("refused without a user for risk");
    assert!(e.to_string().contains("risk"), "{e}");
    assert!(e.to_string().contains("--service-user"), "{e}");

    let mut config = app.service_config_for(ServiceKind::Pci);
    config.orchestrator_users.clear();
    let e = baton_services::start(ServiceKind::Pci, config)
        .await
        .expect_err("refused without an orchestrator user");
    assert!(format!("{e:#}").contains("--orchestrator-user"), "{e:#}");
    // Each process connects as its own role's user.
    assert_eq!(
        amqp::url_user(&app.url_of(role_of(ServiceKind::Pci))).unwrap(),
        Role::Pci.user(app.names.prefix())
    );
    assert!(app.url_of(Role::Pci).contains(AMQP_ADDRESS));
    app.cleanup().await;
}
