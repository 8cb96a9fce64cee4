//! What every kit test needs: a unique prefix and ledger, a client that sends commands
//! and reads replies, and clean-up.

use baton_amqp as amqp;
use baton_contract::{
    Action, CardKeys, CardNumber, CardView, Command, Currency, Money, Names, PaymentView, Reply,
};
use baton_services::{ServiceConfig, ServiceKind};
use baton_testkit::{amqp_url, scratch_name, ScratchSqlite};
use futures_lite::StreamExt;
use lapin::{Channel, Connection, Consumer};
use std::time::Duration;
use uuid::Uuid;

/// How long a test waits for something that should happen.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// The card key of every kit test: risk services get it, and [`command`] fingerprints
/// with it, as an orchestrator sharing risk's key file would.
pub fn card_keys() -> CardKeys {
    static KEYS: std::sync::OnceLock<CardKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| CardKeys::generate("kit")).clone()
}

/// A test's own prefix and SQLite ledger; the ledger files go on drop.
pub struct Scratch {
    pub names: Names,
    pub ledger: ScratchSqlite,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            names: Names::new(scratch_name("test")),
            ledger: ScratchSqlite::new("kit"),
        }
    }

    pub fn ledger_url(&self) -> String {
        self.ledger.url()
    }

    pub fn config(&self) -> ServiceConfig {
        ServiceConfig {
            amqp_url: amqp_url(),
            prefix: self.names.prefix().to_owned(),
            concurrency: 8,
            ledger_url: self.ledger_url(),
            card_keys: Some(card_keys()),
            ..ServiceConfig::default()
        }
    }

    pub fn queue(&self, kind: ServiceKind) -> String {
        self.names.command_queue(kind.name())
    }
}

/// An authorization command for a new payment with a good card.
pub fn command(kind: ServiceKind) -> Command {
    let payment_id = Uuid::new_v4();
    Command {
        command_id: Command::id_for(payment_id, kind.name(), Action::Execute),
        payment_id,
        step: kind.name().into(),
        action: Action::Execute,
        payment: PaymentView {
            merchant_id: "m-1001".into(),
            customer_id: "c-42".into(),
            amount: Money {
                minor: 1999,
                currency: Currency::parse("EUR").unwrap(),
            },
            merchant_currency: Currency::parse("EUR").unwrap(),
            // What the default workflow sends: the number to authorization only, a
            // fingerprint to risk.
            card: CardView {
                number: (kind == ServiceKind::Authorization)
                    .then(|| CardNumber::new("4242424242424242")),
                fingerprint: (kind == ServiceKind::Risk)
                    .then(|| card_keys().fingerprint("4242424242424242")),
                last4: "4242".into(),
                expiry: "12/99".into(),
            },
        },
        context: Default::default(),
    }
}

/// Sends commands and reads the replies, like the orchestrator.
pub struct Client {
    pub connection: Connection,
    pub channel: Channel,
    reply_queue: String,
    replies: Consumer,
}

impl Client {
    pub async fn connect() -> Self {
        let connection = amqp::connect(&amqp_url(), "baton-services-kit-test", &Default::default())
            .await
            .expect("RabbitMQ must run at AMQP_URL");
        let channel = amqp::confirm_channel(&connection).await.unwrap();
        let (reply_queue, replies) = amqp::consume_exclusive(&channel, "").await.unwrap();
        Self {
            connection,
            channel,
            reply_queue,
            replies,
        }
    }

    /// Publishes `command` to `queue` (confirmed), with a `traceparent` if given.
    pub async fn send(&self, queue: &str, command: &Command, traceparent: Option<&str>) {
        let headers: Vec<_> = traceparent
            .map(|t| ("traceparent", t))
            .into_iter()
            .collect();
        let properties = amqp::json_properties(&headers)
            .with_correlation_id(Uuid::new_v4().to_string().as_str().into())
            .with_reply_to(self.reply_queue.as_str().into());
        let body = serde_json::to_vec(command).unwrap();
        amqp::publish_confirmed(&self.channel, "", queue, &body, properties)
            .await
            .expect("publish the command");
    }

    /// The next reply within `within`, or `None`.
    pub async fn reply_within(&mut self, within: Duration) -> Option<Reply> {
        let delivery = tokio::time::timeout(within, self.replies.next())
            .await
            .ok()?
            .expect("the reply consumer ended")
            .expect("a reply delivery");
        Some(serde_json::from_slice(&delivery.data).expect("a Reply"))
    }

    /// Sends `command` and returns its reply (fails after [`DEADLINE`]).
    pub async fn ask(&mut self, queue: &str, command: &Command) -> Reply {
        self.send(queue, command, None).await;
        let reply = self
            .reply_within(DEADLINE)
            .await
            .unwrap_or_else(|| panic!("no reply within {DEADLINE:?}"));
        assert_eq!(reply.command_id, command.command_id, "{reply:?}");
        reply
    }

    /// Deletes the test's queues and closes the connection.
    pub async fn clean_up(self, names: &Names, services: &[&str]) {
        amqp::delete_topology(&self.channel, names, services)
            .await
            .expect("delete the test topology");
        let _ = self.connection.close(200, "done".into()).await;
    }
}
