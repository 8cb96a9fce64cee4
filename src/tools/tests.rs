//! The operators' tools' reading of messages, without a broker.

use super::replay::*;
use super::*;
use baton_contract::Names;
use lapin::message::Delivery;
use lapin::types::LongString;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

fn delivery(body: &[u8], headers: &[(&str, AMQPValue)]) -> Delivery {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert((*k).into(), v.clone());
    }
    let mut d = Delivery::mock(1, "".into(), "q".into(), false, body.to_vec());
    d.properties = BasicProperties::default()
        .with_message_id("6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10".into())
        .with_headers(table);
    d
}

fn names() -> Names {
    Names::new("acme")
}

fn death(queue: &str, reason: &str, count: i64) -> AMQPValue {
    let mut t = FieldTable::default();
    t.insert("queue".into(), AMQPValue::LongString(queue.into()));
    t.insert("reason".into(), AMQPValue::LongString(reason.into()));
    t.insert("count".into(), AMQPValue::LongLongInt(count));
    t.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
    t.insert("exchange".into(), AMQPValue::LongString("".into()));
    AMQPValue::FieldTable(t)
}

fn chain(entries: Vec<AMQPValue>) -> AMQPValue {
    AMQPValue::FieldArray(entries.into())
}

/// A parked request that then passed the request queue's delivery limit: RabbitMQ's
/// first death is the retry tier's `expired`, the last the request queue's limit.
fn parked_then_limited() -> Delivery {
    delivery(
        b"{}",
        &[
            (
                "x-death",
                chain(vec![
                    death("acme.requests", "delivery_limit", 1),
                    death("acme.retry.1000ms", "expired", 3),
                ]),
            ),
            (
                "x-first-death-queue",
                AMQPValue::LongString("acme.retry.1000ms".into()),
            ),
            (
                "x-first-death-reason",
                AMQPValue::LongString("expired".into()),
            ),
        ],
    )
}

#[test]
fn the_last_death_is_the_reason_and_the_whole_chain_is_kept() {
    let m = parked_then_limited();
    let why = why(&m.properties, &names());
    assert_eq!(why.reason, "delivery_limit");
    assert_eq!(why.from, "acme.requests");
    assert_eq!(why.chain.len(), 2);
    assert_eq!(why.chain[1].count, 3);
    let shown = describe(&m, &why, "");
    assert!(
        shown.contains("death 1     acme.retry.1000ms expired ×3"),
        "{shown}"
    );
    assert!(
        shown.contains("death 2     acme.requests delivery_limit ×1"),
        "{shown}"
    );
}

#[test]
fn a_request_is_replayable_when_it_died_in_the_request_queue_or_a_retry_tier() {
    let names = names();
    assert_eq!(
        request_or_why_not(&parked_then_limited().properties, &names),
        Ok(())
    );
    let from_tier = delivery(
        b"{}",
        &[(
            "x-death",
            chain(vec![death("acme.retry.5000ms", "maxlen", 1)]),
        )],
    );
    assert_eq!(request_or_why_not(&from_tier.properties, &names), Ok(()));
    let command = delivery(
        b"{}",
        &[(
            "x-death",
            chain(vec![death("acme.cmd.risk", "delivery_limit", 1)]),
        )],
    );
    assert_eq!(
        request_or_why_not(&command.properties, &names),
        Err("dead-lettered by RabbitMQ: delivery_limit in acme.cmd.risk".into())
    );
    // Another deployment's tier is not ours.
    let other = delivery(
        b"{}",
        &[(
            "x-death",
            chain(vec![death("acme2.retry.1000ms", "expired", 1)]),
        )],
    );
    assert!(request_or_why_not(&other.properties, &names).is_err());
    let refused = delivery(
        b"{}",
        &[(
            headers::REASON,
            AMQPValue::LongString("invalid_request".into()),
        )],
    );
    assert_eq!(request_or_why_not(&refused.properties, &names), Ok(()));
    let malformed = delivery(
        b"{}",
        &[(
            headers::REASON,
            AMQPValue::LongString("malformed_command".into()),
        )],
    );
    assert!(request_or_why_not(&malformed.properties, &names).is_err());
    assert!(request_or_why_not(&delivery(b"{}", &[]).properties, &names).is_err());
}

#[test]
fn a_key_ignores_the_delivery_count_and_hides_the_card_number() {
    let body = br#"{"card": {"number": "4242424242424242"}}"#;
    let first = Letter::new(delivery(body, &[]));
    let looked_at = Letter::new(delivery(
        body,
        &[(DELIVERY_COUNT, AMQPValue::LongLongInt(7))],
    ));
    assert_eq!(first.key, looked_at.key);
    assert_eq!(first.key.len(), 12);
    // The key is a hash of the masked text: another card with the same last four
    // gives the same key (told apart by `exact`), so the key cannot confirm a guess.
    let other_card = Letter::new(delivery(
        br#"{"card": {"number": "4000000000004242"}}"#,
        &[],
    ));
    assert_eq!(first.key, other_card.key);
    assert_ne!(first.exact, other_card.exact);
    let other_body = Letter::new(delivery(
        br#"{"card": {"number": "4242424242424243"}}"#,
        &[],
    ));
    assert_ne!(first.key, other_body.key);
    assert_eq!(
        parse_target(&first.key.to_uppercase()).unwrap(),
        Target::Key(first.key.clone())
    );
}

#[test]
fn a_key_is_never_taken_for_a_card_number() {
    // These 48 bits in hex are 12 decimal digits, which the masker hides as a card.
    let digest = [0x12, 0x34, 0x56, 0x78, 0x90, 0x12, 0xff];
    let key = key_of_digest(&digest);
    assert_eq!(key, "bcdefghijabc");
    assert_eq!(mask_card_numbers(&key), key);
    assert_eq!(parse_target(&key).unwrap(), Target::Key(key.clone()));
    assert!(is_key(&key));
}

#[test]
fn show_masks_card_numbers_in_every_shape() {
    let body = br#"{"payment_id": "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10",
        "card": {"number": 5555555555554444, "expiry": "12/30"},
        "note": "5105 1051 0510 5100", "alt": "4012-8888-8888-1881",
        "4242424242424242": "as a key", "amount": {"minor": 1999}}"#;
    let m = delivery(
        body,
        &[
            (
                "x-card",
                AMQPValue::LongString(LongString::from("pan 4000056655665556")),
            ),
            ("x-number", AMQPValue::LongLongInt(5200828282828210)),
            ("x-378282246310005", AMQPValue::Boolean(true)),
        ],
    );
    let shown = mask_card_numbers(&describe(&m, &why(&m.properties, &names()), "")).into_owned();
    for full in [
        "5555555555554444",
        "5105 1051 0510 5100",
        "4012-8888-8888-1881",
        "4242424242424242",
        "4000056655665556",
        "5200828282828210",
        "378282246310005",
    ] {
        assert!(!shown.contains(full), "{full} in {shown}");
    }
    for kept in [
        "****4444",
        "****5100",
        "****1881",
        "****4242",
        "****5556",
        "****8210",
        "****0005",
        "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10",
        "1999",
    ] {
        assert!(shown.contains(kept), "{kept} missing from {shown}");
    }
}

#[test]
fn show_masks_a_body_that_is_not_json() {
    let m = delivery(b"garbage 4242424242424242 {", &[]);
    let shown = mask_card_numbers(&describe(&m, &why(&m.properties, &names()), "")).into_owned();
    assert!(!shown.contains("4242424242424242") && shown.contains("garbage ****4242 {"));
}
