//! Tests of the roles, passwords and definitions that need no broker.

use super::*;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::collections::BTreeMap;

#[test]
fn password_hashes_are_rabbitmqs_sha256() {
    // RabbitMQ's own hash of "guest" from a 3.10 broker (GET /api/users/guest).
    let guest = "DuZZm6lObZeeK1aPcCVnxbHfhQLzdzTLdLIEvli0tNXNPlBm";
    assert!(verify_password_hash(guest, "guest"));
    assert!(!verify_password_hash(guest, "guest2"));
    let salt = [1, 2, 3, 4];
    assert_eq!(
        hash_password_with_salt("x", salt),
        hash_password_with_salt("x", salt)
    );
    assert!(verify_password_hash(&hash_password("s3cret é"), "s3cret é"));
    assert_ne!(
        hash_password("a"),
        hash_password("a"),
        "a fresh salt each time"
    );
}

#[test]
fn prefixes_are_escaped_in_regexes() {
    let g = grant(Role::Risk, "acme.eu");
    assert_eq!(g.read, r"^acme\.eu\.cmd\.risk(-[a-z0-9_-]+)?$");
    assert_eq!(g.configure, r"^acme\.eu\.(dead|cmd\.risk(-[a-z0-9_-]+)?)$");
    assert_eq!(grant(Role::Client, "a-b").write, r"^a-b\.payments$");
}

#[test]
fn admin_urls_parse_without_showing_passwords() {
    let api = AdminApi::from_url("http://adm:p%40ss@broker:15673/%2f").unwrap();
    assert_eq!(api.address(), "broker:15673");
    assert_eq!(api.vhost(), Some("/"));
    assert_eq!(
        api.authorization,
        format!("Basic {}", BASE64.encode("adm:p@ss"))
    );
    assert!(!format!("{api:?}").contains("p%40ss"));
    let api = AdminApi::from_url("http://adm:p@s/s@broker/vh").unwrap();
    assert_eq!(
        (api.address().as_str(), api.vhost()),
        ("broker:15672", Some("vh"))
    );
    assert_eq!(
        api.authorization,
        format!("Basic {}", BASE64.encode("adm:p@s/s"))
    );
    let api = AdminApi::from_url(DEFAULT_ADMIN_URL).unwrap();
    assert_eq!((api.host(), api.vhost()), ("127.0.0.1", None));
    for bad in [
        "amqp://u:p@h",
        "http://host:15672",
        "http://u@h",
        "http://u:p@h:x",
    ] {
        let e = AdminApi::from_url(bad).unwrap_err();
        assert!(matches!(e, BrokerSetupError::BadAdminUrl { .. }), "{bad}");
    }
}

#[test]
fn credentials_files_carry_urls_with_encoded_passwords() {
    let c = Credentials {
        prefix: "p".into(),
        vhost: "/".into(),
        users: vec![UserCredential {
            role: Role::Risk,
            user: "p-risk".into(),
            password: Some(Password::new("a/b@c")),
            source: PasswordSource::Given,
        }],
    };
    let env = c.env_file("h:5672", "h:15672");
    assert!(env.contains("BATON_PASSWORD_RISK=a/b@c\n"), "{env}");
    assert!(
        env.contains("AMQP_URL_RISK=amqp://p-risk:a%2fb%40c@h:5672/%2f\n"),
        "{env}"
    );
    assert!(!format!("{c:?}").contains("a/b@c"));
}

/// deploy/rabbitmq/definitions.json is what `baton broker definitions --prefix baton`
/// writes (same users, tags, permissions and topic permissions), and its hashes are
/// of the dev passwords docker-compose.yml uses.
#[test]
fn the_shipped_definitions_match_the_roles() {
    let shipped: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/rabbitmq/definitions.json"))
            .expect("definitions.json is JSON");
    let mut hashes = BTreeMap::new();
    for user in shipped["users"].as_array().expect("users") {
        hashes.insert(
            user["name"].as_str().unwrap().to_owned(),
            user["password_hash"].as_str().unwrap().to_owned(),
        );
    }
    assert_eq!(shipped, definitions("baton", "/", &hashes));
    let compose = include_str!("../../docker-compose.yml");
    for (user, hash) in &hashes {
        let password = compose
            .split(&format!("{user}:"))
            .nth(1)
            .and_then(|rest| rest.split('@').next())
            .unwrap_or_else(|| panic!("docker-compose.yml has no URL or password for {user}"));
        assert!(
            verify_password_hash(hash, password),
            "definitions.json's hash of {user} is not of compose's password"
        );
    }
}

#[test]
fn each_reference_service_has_the_role_of_its_name_and_nothing_else_has_one() {
    for (service, role) in [
        ("authorization", Role::Authorization),
        ("risk", Role::Risk),
        ("pci", Role::Pci),
        ("transaction", Role::Transaction),
    ] {
        assert_eq!(Role::of_service(service), Some(role));
    }
    for other in [
        "orchestrator",
        "client",
        "operator",
        "monitor",
        "sanctions",
        "",
    ] {
        assert_eq!(Role::of_service(other), None, "{other}");
    }
}
