//! Tests of `doctor`.

use super::*;

#[test]
fn vhosts_come_from_the_url_path() {
    assert_eq!(vhost_of("amqp://u:p@h:5672/%2f"), "/");
    assert_eq!(vhost_of("amqp://u:p@h:5672"), "/");
    assert_eq!(vhost_of("amqp://u:p/x@h:5672/prod?heartbeat=5"), "prod");
    assert_eq!(encode_vhost("/"), "%2F");
}

#[test]
fn ledgers_that_differ_are_named_with_what_to_change() {
    let mut ledgers = BTreeMap::new();
    ledgers.insert(
        "authorization".to_owned(),
        ("a1".to_owned(), "/x/l.db".to_owned()),
    );
    ledgers.insert(
        "transaction".to_owned(),
        ("a1".to_owned(), "/x/l.db".to_owned()),
    );
    let same = ledger_check(&ledgers);
    assert!(same.ok, "{same:?}");
    assert_eq!(
        same.line(),
        "✓ ledger: authorization and transaction share ledger a1 at /x/l.db"
    );
    ledgers.insert(
        "transaction".to_owned(),
        ("b2".to_owned(), "/y/l.db".to_owned()),
    );
    let differ = ledger_check(&ledgers);
    assert!(!differ.ok);
    assert!(
        differ.line().starts_with(
            "✗ ledger: authorization uses ledger a1 at /x/l.db, transaction uses ledger b2 \
             at /y/l.db: they must share one database"
        ),
        "{}",
        differ.line()
    );
    assert!(differ.detail.contains("--ledger-url"));
}

#[test]
fn the_exit_code_is_one_when_any_check_fails() {
    let pass = Check::pass("a", "fine");
    assert_eq!(report(std::slice::from_ref(&pass), true), 0);
    assert_eq!(report(&[pass, Check::fail("b", "broken")], false), 1);
}
