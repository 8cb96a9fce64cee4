//! Broker roles on the real broker: the users `baton broker setup` creates may do what
//! their process needs (a whole payment runs with every process on its own user) and
//! nothing else (the broker refuses the rest with ACCESS_REFUSED).

use crate::app;
use baton::broker::{self, AdminApi, Credentials, Method, PasswordSource, Passwords, Role};
use baton::client::Client;
use baton::testcards::TestCard;
use baton_amqp::{self as amqp, json_properties, publish_confirmed, TlsOptions};
use baton_contract::{Names, Status};
use baton_services::ServiceKind;
use baton_testkit::{amqp_url, delete_prefix, AMQP_ADDRESS};
use lapin::options::{BasicConsumeOptions, BasicGetOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use std::process::Command;

fn scratch_prefix() -> String {
    baton_testkit::scratch_name("roles")
}

/// The users of a scratch prefix, deleted (with the prefix's queues) when dropped, even
/// when the test panics.
struct Users {
    prefix: String,
    credentials: Credentials,
    /// Delete the topology declared as guest, too.
    topology: bool,
}

impl Users {
    async fn create(prefix: &str) -> Self {
        let credentials = broker::setup(&app::admin_api(), prefix, "/", &Passwords::default())
            .await
            .expect("broker setup (is rabbitmq_management enabled? .ci/run enables it)");
        Self {
            prefix: prefix.to_owned(),
            credentials,
            topology: false,
        }
    }

    fn url(&self, role: Role) -> String {
        self.credentials
            .amqp_url(role, AMQP_ADDRESS)
            .expect("setup generated the password")
    }

    async fn connect(&self, role: Role) -> Connection {
        amqp::connect(&self.url(role), "roles test", &TlsOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{} cannot log in: {e}", role.user(&self.prefix)))
    }

    /// Declares the whole topology as guest (as an orchestrator would), deleted on drop.
    async fn declare_topology(&mut self) -> Names {
        let names = Names::new(self.prefix.clone());
        let guest = amqp::connect(&amqp_url(), "roles test setup", &TlsOptions::default())
            .await
            .expect("guest connects");
        let channel = guest.create_channel().await.unwrap();
        amqp::declare_core(&channel, &names).await.unwrap();
        amqp::declare_attention(&channel, &names).await.unwrap();
        amqp::declare_parking(&channel, &names, 1000).await.unwrap();
        for kind in ServiceKind::ALL {
            amqp::declare_command_queue(&channel, &names, kind.name())
                .await
                .unwrap();
        }
        self.topology = true;
        let _ = guest.close(200, "declared".into()).await;
        names
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let topology = self.topology;
        // Drop cannot await: clean up on a runtime of its own, on another thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let _ = broker::teardown(&app::admin_api(), &prefix).await;
                // The administrator a definitions import adds.
                let admin_path = format!("/users/{}", broker::admin_user(&prefix));
                let _ = app::admin_api()
                    .request(Method::DELETE, &admin_path, None)
                    .await;
                if topology {
                    let services: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.name()).collect();
                    let names = Names::new(prefix.clone());
                    let _ = delete_prefix(&amqp_url(), &names, &services, &[1000]).await;
                }
            });
        })
        .join();
    }
}

/// Whether consuming `queue` as this connection's user is refused with ACCESS_REFUSED.
/// Tries both ways a user reads a queue: basic.consume and basic.get.
async fn read_refused(connection: &Connection, queue: &str) -> bool {
    let channel = connection.create_channel().await.unwrap();
    let consume = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    let consume_refused = match &consume {
        Err(e) => broker::lapin_access_refused(e),
        Ok(_) => false,
    };
    let channel = connection.create_channel().await.unwrap();
    let get = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await;
    let get_refused = match &get {
        Err(e) => broker::lapin_access_refused(e),
        Ok(_) => false,
    };
    assert_eq!(
        consume_refused, get_refused,
        "consume and get disagree on {queue}"
    );
    consume_refused
}

/// Publishes on a fresh confirm channel; `Ok(true)` when refused with ACCESS_REFUSED.
async fn publish_refused(connection: &Connection, exchange: &str, routing_key: &str) -> bool {
    let channel = amqp::confirm_channel(connection).await.unwrap();
    let outcome =
        publish_confirmed(&channel, exchange, routing_key, b"{}", json_properties(&[])).await;
    match outcome {
        Err(e) => {
            assert!(
                broker::is_access_refused(&e),
                "{exchange}/{routing_key} failed, but not for lack of permission: {e}"
            );
            true
        }
        Ok(()) => false,
    }
}

#[tokio::test]
async fn setup_is_idempotent_keeps_passwords_and_resets_permissions() {
    let prefix = scratch_prefix();
    let users = Users::create(&prefix).await;
    let api = app::admin_api();
    assert!(users
        .credentials
        .users
        .iter()
        .all(|u| u.source == PasswordSource::Generated && u.password.is_some()));
    let client = users.credentials.password(Role::Client).unwrap().to_owned();

    // Someone widens a user's permissions by hand; setup puts them back.
    let client_user = Role::Client.user(&prefix);
    api.request(
        Method::PUT,
        &format!("/permissions/%2f/{client_user}"),
        Some(serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"})),
    )
    .await
    .unwrap();
    let again = broker::setup(
        &api,
        &prefix,
        "/",
        &Passwords::default().with(Role::Risk, "new-risk-pw"),
    )
    .await
    .expect("setup runs again");
    let permissions = api
        .request(
            Method::GET,
            &format!("/permissions/%2f/{client_user}"),
            None,
        )
        .await
        .unwrap()
        .expect("the client user has permissions");
    let grant = broker::grant(Role::Client, &prefix);
    assert_eq!(permissions["configure"], grant.configure.as_str());
    assert_eq!(permissions["write"], grant.write.as_str());
    assert_eq!(permissions["read"], grant.read.as_str());
    let topic = api
        .request(
            Method::GET,
            &format!("/users/{client_user}/topic-permissions"),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topic.as_array().map(Vec::len), Some(1), "{topic}");
    assert_eq!(topic[0]["write"], "^request$");

    // Passwords: kept unless a new one is given.
    for u in &again.users {
        let expected = if u.role == Role::Risk {
            PasswordSource::Given
        } else {
            PasswordSource::Kept
        };
        assert_eq!(u.source, expected, "{}", u.user);
    }
    let url = |user: &str, password: &str| format!("amqp://{user}:{password}@{AMQP_ADDRESS}/%2f");
    let kept = amqp::connect(
        &url(&client_user, &client),
        "roles test",
        &TlsOptions::default(),
    )
    .await;
    assert!(kept.is_ok(), "the client kept its password");
    let risk_user = Role::Risk.user(&prefix);
    assert!(amqp::connect(
        &url(&risk_user, "new-risk-pw"),
        "roles test",
        &TlsOptions::default()
    )
    .await
    .is_ok());
    let old = users.credentials.password(Role::Risk).unwrap();
    assert!(
        amqp::connect(&url(&risk_user, old), "roles test", &TlsOptions::default())
            .await
            .is_err(),
        "the old risk password no longer works"
    );

    assert_eq!(broker::teardown(&api, &prefix).await.unwrap(), 8);
    assert_eq!(
        broker::teardown(&api, &prefix).await.unwrap(),
        0,
        "teardown is idempotent"
    );
}

#[tokio::test]
async fn a_client_role_user_cannot_read_commands_requests_dead_or_retry_nor_publish_results() {
    let mut users = Users::create(&scratch_prefix()).await;
    let names = users.declare_topology().await;
    let client = users.connect(Role::Client).await;
    for queue in [
        names.command_queue("authorization"),
        names.command_queue("risk"),
        names.command_queue("pci"),
        names.command_queue("transaction"),
        names.requests_queue(),
        names.dead_queue(),
        names.retry_queue(1000),
        names.attention_queue(),
    ] {
        assert!(
            read_refused(&client, &queue).await,
            "the client read {queue}"
        );
    }
    let exchange = names.payments_exchange();
    for key in ["result.completed", "event.risk.approved", "requests"] {
        assert!(
            publish_refused(&client, &exchange, key).await,
            "the client published {key}"
        );
    }
    assert!(
        publish_refused(&client, "", &names.requests_queue()).await,
        "the client published to a queue by name (default exchange)"
    );
    assert!(publish_refused(&client, "", &names.command_queue("risk")).await);

    // What a client does still works: its own reply queue, requests, results.
    assert!(!read_refused(&client, &names.results_queue()).await);
    assert!(
        !publish_refused(&client, &exchange, "request").await,
        "an honest request is refused"
    );
    let honest = Client::connect(
        &users.url(Role::Client),
        &TlsOptions::default(),
        names.clone(),
    )
    .await
    .expect("baton's client connects as the client user");
    honest.close().await;
    let _ = client.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_service_role_user_cannot_consume_another_services_queue_nor_publish_to_payments() {
    let mut users = Users::create(&scratch_prefix()).await;
    let names = users.declare_topology().await;
    let risk = users.connect(Role::Risk).await;
    for queue in [
        names.command_queue("authorization"),
        names.command_queue("pci"),
        names.command_queue("transaction"),
        names.requests_queue(),
        names.results_queue(),
        names.dead_queue(),
        names.attention_queue(),
        names.retry_queue(1000),
    ] {
        assert!(read_refused(&risk, &queue).await, "risk read {queue}");
    }
    assert!(
        !read_refused(&risk, &names.command_queue("risk")).await,
        "risk cannot read its own queue"
    );
    let exchange = names.payments_exchange();
    for key in ["request", "result.completed", "event.risk.approved"] {
        assert!(
            publish_refused(&risk, &exchange, key).await,
            "risk published {key}"
        );
    }
    // A service may not declare or delete another's queue either.
    let channel = risk.create_channel().await.unwrap();
    let declared = amqp::declare_command_queue(&channel, &names, "authorization").await;
    assert!(
        declared.as_ref().is_err_and(broker::is_access_refused),
        "{declared:?}"
    );
    let _ = risk.close(200, "done".into()).await;

    // The operator reads dead letters and attention items, nothing else; the monitor
    // reads no message at all but sees queue depths in the management API.
    let operator = users.connect(Role::Operator).await;
    assert!(!read_refused(&operator, &names.dead_queue()).await);
    assert!(!read_refused(&operator, &names.attention_queue()).await);
    for queue in [
        names.requests_queue(),
        names.command_queue("authorization"),
        names.results_queue(),
    ] {
        assert!(
            read_refused(&operator, &queue).await,
            "the operator read {queue}"
        );
    }
    assert!(publish_refused(&operator, &exchange, "result.completed").await);
    let _ = operator.close(200, "done".into()).await;
    let monitor = users.connect(Role::Monitor).await;
    assert!(read_refused(&monitor, &names.requests_queue()).await);
    assert!(read_refused(&monitor, &names.dead_queue()).await);
    let _ = monitor.close(200, "done".into()).await;
    let monitor_api = AdminApi::from_url(&format!(
        "http://{}:{}@127.0.0.1:15672",
        Role::Monitor.user(&users.prefix),
        users.credentials.password(Role::Monitor).unwrap()
    ))
    .unwrap();
    let queue = monitor_api
        .request(
            Method::GET,
            &format!("/queues/%2f/{}", names.requests_queue()),
            None,
        )
        .await
        .expect("the monitor reads queue depths")
        .expect("the queue exists");
    assert_eq!(queue["name"], names.requests_queue().as_str(), "{queue}");
    let get = monitor_api
        .request(
            Method::POST,
            &format!("/queues/%2f/{}/get", names.dead_queue()),
            Some(
                serde_json::json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
            ),
        )
        .await;
    assert!(
        get.is_err(),
        "the monitor read a message through the API: {get:?}"
    );
}

/// On an empty prefix the orchestrator user declares everything itself (declaring a
/// queue that dead-letters needs read on it, binding needs topic read), and the operator
/// user gets the server-named reply queue `attention replay` waits on.
#[tokio::test]
async fn the_orchestrator_user_declares_the_topology_of_a_fresh_prefix() {
    let mut users = Users::create(&scratch_prefix()).await;
    // Deleted on drop (as guest), whoever declared it.
    users.topology = true;
    let names = Names::new(users.prefix.clone());
    let orchestrator = users.connect(Role::Orchestrator).await;
    let channel = orchestrator.create_channel().await.unwrap();
    amqp::declare_core(&channel, &names)
        .await
        .expect("core topology");
    amqp::declare_attention(&channel, &names)
        .await
        .expect("attention");
    amqp::declare_parking(&channel, &names, 1000)
        .await
        .expect("parking");
    for kind in ServiceKind::ALL {
        amqp::declare_command_queue(&channel, &names, kind.name())
            .await
            .expect("command queue");
    }
    let (_, _replies) = amqp::consume_exclusive(&channel, &names.reply_queue("i-1"))
        .await
        .expect("its reply queue");
    let operator = users.connect(Role::Operator).await;
    let listen = operator.create_channel().await.unwrap();
    let (queue, _consumer) = amqp::consume_exclusive(&listen, "")
        .await
        .expect("a server-named reply queue");
    assert!(queue.starts_with("amq.gen-"), "{queue}");
    let _ = operator.close(200, "done".into()).await;
    let _ = orchestrator.close(200, "done".into()).await;
}

fn baton() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

#[tokio::test]
async fn the_setup_command_writes_passwords_to_a_0600_file_and_never_prints_them() {
    use std::os::unix::fs::PermissionsExt;
    let prefix = scratch_prefix();
    let file = std::env::temp_dir().join(format!("{prefix}-credentials.env"));
    let output = baton()
        .args(["broker", "setup", "--prefix", &prefix, "--credentials-file"])
        .arg(&file)
        .env("BATON_PASSWORD_RISK", "given-risk-secret-5150")
        .output()
        .unwrap();
    // The users exist from here on: delete them whatever happens next.
    let users = Users {
        prefix: prefix.clone(),
        credentials: Credentials {
            prefix: prefix.clone(),
            vhost: "/".into(),
            users: Vec::new(),
        },
        topology: false,
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&file.display().to_string()),
        "prints the file's path: {stdout}"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "credentials file mode {mode:o}");
    let text = std::fs::read_to_string(&file).unwrap();
    let passwords: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("BATON_PASSWORD_"))
        .filter_map(|l| l.split_once('=').map(|(_, p)| p))
        .collect();
    assert_eq!(passwords.len(), 8, "{}", passwords.len());
    for password in &passwords {
        assert!(
            !stdout.contains(password) && !stderr.contains(password),
            "a password was printed"
        );
    }
    assert!(text.contains("BATON_PASSWORD_RISK=given-risk-secret-5150\n"));
    // The file's URLs work as they are.
    let client_url = text
        .lines()
        .find_map(|l| l.strip_prefix("AMQP_URL_CLIENT="))
        .expect("AMQP_URL_CLIENT in the file");
    let connection = amqp::connect(client_url, "roles test", &TlsOptions::default())
        .await
        .expect("the file's client URL logs in");
    let _ = connection.close(200, "done".into()).await;

    // Again: nothing changes, the file keeps the passwords.
    let output = baton()
        .args(["broker", "setup", "--prefix", &prefix, "--credentials-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        text,
        "a re-run keeps the file"
    );

    let output = baton()
        .args(["broker", "teardown", "--prefix", &prefix])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("deleted 8 users"));
    assert!(
        amqp::connect(client_url, "roles test", &TlsOptions::default())
            .await
            .is_err(),
        "teardown deleted the users"
    );
    let _ = std::fs::remove_file(&file);
    drop(users);
}

#[test]
fn an_unreachable_or_refusing_admin_api_says_what_to_fix_without_the_password() {
    let output = baton()
        .args(["broker", "setup", "--prefix", "roles-never"])
        .env("BATON_ADMIN_URL", "http://guest:hunter2@127.0.0.1:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rabbitmq-plugins enable rabbitmq_management"),
        "{stderr}"
    );
    assert!(stderr.contains("http://guest:***@127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("hunter2"));

    let output = baton()
        .args(["broker", "setup", "--prefix", "roles-never"])
        .args(["--admin-url", "http://guest:wrong-hunter2@127.0.0.1:15672"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("wrong administrator"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-hunter2"));
    assert!(!std::path::Path::new("roles-never-credentials.env").exists());

    let help = baton()
        .args(["broker", "setup", "--help"])
        .env("BATON_ADMIN_URL", "http://admin:hunter2@broker:15672")
        .env("BATON_PASSWORD_RISK", "risk-hunter2")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("BATON_ADMIN_URL") && help.contains("--credentials-file"),
        "{help}"
    );
    assert!(
        !help.contains("hunter2") && !help.contains("guest:guest"),
        "{help}"
    );
}

#[test]
fn hash_password_prints_rabbitmqs_hash_of_the_password_on_stdin() {
    use std::io::Write;
    let mut child = baton()
        .args(["broker", "hash-password"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pw\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap();
    assert!(
        broker::verify_password_hash(hash.trim(), "s3cret pw"),
        "{hash}"
    );
    assert!(!hash.contains("s3cret"));
}

/// The definitions file format, on the real broker: what `definitions` writes imports,
/// and its users log in with their passwords and get their roles' permissions.
#[tokio::test]
async fn generated_definitions_import_and_their_users_have_their_roles() {
    let prefix = scratch_prefix();
    let mut hashes = std::collections::BTreeMap::new();
    for role in Role::ALL {
        hashes.insert(
            role.user(&prefix),
            broker::hash_password(&format!("{}-pw", role.name())),
        );
    }
    hashes.insert(
        broker::admin_user(&prefix),
        broker::hash_password("admin-pw"),
    );
    let api = app::admin_api();
    let mut users = Users {
        prefix: prefix.clone(),
        credentials: Credentials {
            prefix: prefix.clone(),
            vhost: "/".into(),
            users: Vec::new(),
        },
        topology: false,
    };
    let imported = api
        .request(
            Method::POST,
            "/definitions",
            Some(broker::definitions(&prefix, "/", &hashes)),
        )
        .await;
    let admin_path = format!("/users/{}", broker::admin_user(&prefix));
    let checks = async {
        imported.expect("the broker imports the definitions");
        let names = users.declare_topology().await;
        let url = format!(
            "amqp://{}:client-pw@{AMQP_ADDRESS}/%2f",
            Role::Client.user(&prefix)
        );
        let client = amqp::connect(&url, "roles test", &TlsOptions::default())
            .await
            .expect("the client logs in with its password");
        assert!(read_refused(&client, &names.requests_queue()).await);
        assert!(!publish_refused(&client, &names.payments_exchange(), "request").await);
        let _ = client.close(200, "done".into()).await;
    };
    checks.await;
    let _ = api.request(Method::DELETE, &admin_path, None).await;
    assert!(api
        .request(Method::GET, &admin_path, None)
        .await
        .unwrap()
        .is_none());
}

/// Every process on its own role user, senders verified, the client too: payments get
/// their documented results, so no role's permissions are too narrow.
#[tokio::test]
async fn payments_complete_with_every_process_on_its_own_user() {
    // The kit's verified app: `broker::setup`'s users for the test prefix, one per
    // service and the orchestrator, every sender checked.
    let mut app = app::spawn_verified_services(&ServiceKind::ALL).await;
    let prefix = app.names.prefix().to_owned();
    let mut settings = app.orchestrator_settings();
    assert_eq!(settings.amqp_url, app.url_of(Role::Orchestrator));
    settings.events = true;
    app.start_orchestrator(settings).await;
    // The client as the client user (the kit's guest client is kept for the clean-up,
    // which deletes queues).
    let role_client = Client::connect(
        &app.url_of(Role::Client),
        &TlsOptions::default(),
        app.names.clone(),
    )
    .await
    .expect("the client user connects");
    let guest_client = std::mem::replace(&mut app.client, role_client);

    for card in [
        TestCard::Good,
        TestCard::HighRisk,
        TestCard::NoncompliantMerchant,
    ] {
        let (result, text) = app.pay(card).await;
        let expected = card.expected();
        assert_eq!(result.status, expected.status, "{card:?}: {text}");
        assert_eq!(
            result.reason.as_deref(),
            expected.reason,
            "{card:?}: {text}"
        );
    }

    // `baton pay` as the client user, and the operators' tools as the operator user.
    // The in-process orchestrator and services run on this runtime: wait for the
    // binaries off it.
    let mut pay = baton();
    pay.args(["pay", "--prefix", &prefix, "--timeout", "60"])
        .env("AMQP_URL", app.url_of(Role::Client))
        .env("RUST_LOG", "warn");
    let pay = tokio::task::spawn_blocking(move || pay.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pay.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&pay.stdout),
        String::from_utf8_lossy(&pay.stderr)
    );
    assert!(String::from_utf8_lossy(&pay.stdout).contains(Status::Completed.as_str()));
    for queue in ["dead", "attention"] {
        let mut list = baton();
        list.args([queue, "list", "--prefix", &prefix])
            .env("AMQP_URL", app.url_of(Role::Operator))
            .env("RUST_LOG", "warn");
        let list = tokio::task::spawn_blocking(move || list.output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            list.status.success(),
            "{}",
            String::from_utf8_lossy(&list.stderr)
        );
    }

    let role_client = std::mem::replace(&mut app.client, guest_client);
    role_client.close().await;
    app.cleanup().await;
}
