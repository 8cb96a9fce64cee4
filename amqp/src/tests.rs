//! Tests of the plumbing that need no broker (the integration suites use a real one).

use crate::connect::read_ca_file;
use crate::*;
use baton_contract::headers;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::path::Path;

#[test]
fn the_sender_is_the_urls_user() {
    assert_eq!(
        url_user("amqp://baton-risk:pw@h:5672/%2f").unwrap(),
        "baton-risk"
    );
    assert_eq!(url_user("amqps://a%40b:pw@h/").unwrap(), "a@b");
    assert_eq!(url_user("amqp://127.0.0.1:5672/%2f").unwrap(), "guest");
    let props = with_sender(BasicProperties::default(), "baton-orchestrator");
    assert_eq!(sender(&props), Some("baton-orchestrator"));
    assert_eq!(sender(&BasicProperties::default()), None);
}

/// `read_ca_file` on a file holding `contents`: the error's problem text.
fn ca_file_problem(contents: &str) -> String {
    let path = std::env::temp_dir().join(format!("baton-ca-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&path, contents).unwrap();
    let read = read_ca_file(&path);
    let _ = std::fs::remove_file(&path);
    match read {
        Err(BrokerError::CaFile { problem, .. }) => problem,
        other => panic!("a CaFile error expected, got {other:?}"),
    }
}

#[test]
fn a_ca_file_that_cannot_be_used_is_a_clear_error() {
    let missing = Path::new("/nonexistent/baton-ca.pem");
    let error = read_ca_file(missing).unwrap_err().to_string();
    assert!(
        error.contains("/nonexistent/baton-ca.pem")
            && error.contains("--amqp-ca-file")
            && error.contains("cannot read it"),
        "{error}"
    );
    assert!(
        ca_file_problem("listeners.ssl.default = 5671\n").contains("holds no certificate"),
        "not PEM at all"
    );
    let key_only =
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
    assert!(
        ca_file_problem(key_only).contains("holds no certificate"),
        "a key is not a CA"
    );
    let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    assert!(ca_file_problem(bad_base64).contains("not valid PEM"));
    let not_x509 = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    assert!(ca_file_problem(not_x509).contains("cannot be parsed as X.509"));
    assert!(!BrokerError::CaFile {
        path: String::new(),
        problem: String::new()
    }
    .is_transient());
}

fn with_schema(value: AMQPValue) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(headers::SCHEMA.into(), value);
    BasicProperties::default().with_headers(table)
}

#[test]
fn known_schema_versions_pass_in_any_integer_width_or_as_text() {
    assert!(
        check_schema(&BasicProperties::default()).is_ok(),
        "absent is 1"
    );
    assert!(
        check_schema(&json_properties(&[])).is_ok(),
        "what Baton sends"
    );
    for ok in [
        AMQPValue::ShortShortUInt(1),
        AMQPValue::ShortInt(1),
        AMQPValue::LongInt(1),
        AMQPValue::LongUInt(1),
        AMQPValue::LongLongInt(1),
        AMQPValue::LongString("1".into()),
        AMQPValue::ShortString("1".into()),
    ] {
        assert!(check_schema(&with_schema(ok.clone())).is_ok(), "{ok:?}");
    }
}

#[test]
fn unknown_schema_versions_are_refused_naming_the_known_ones() {
    for (bad, got) in [
        (AMQPValue::LongLongInt(99), "is version 99"),
        (AMQPValue::LongString("99".into()), "is version 99"),
        (AMQPValue::LongLongInt(0), "is version 0"),
        (AMQPValue::LongLongInt(-1), "is version -1"),
        (
            AMQPValue::LongString("1.0".into()),
            "is not a version number",
        ),
        (
            AMQPValue::LongString(" 1".into()),
            "is not a version number",
        ),
        (AMQPValue::LongString("".into()), "is not a version number"),
        (AMQPValue::Boolean(true), "is not a version number"),
        (AMQPValue::Double(1.0), "is not a version number"),
        (
            AMQPValue::LongLongInt(4242424242424242),
            "is version ****4242",
        ),
    ] {
        let e = check_schema(&with_schema(bad.clone())).unwrap_err();
        assert_eq!(e.field, "baton-schema", "{bad:?}");
        assert!(e.problem.starts_with(got), "{bad:?}: {e}");
        assert!(e.problem.contains("reads schema version(s) 1"), "{e}");
        assert_eq!(e.payment_id, None);
    }
}
