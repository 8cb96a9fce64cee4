//! Tests of `request`.

use super::*;

const GOOD: &str = r#"{"payment_id": "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10",
    "merchant_id": "m-1001", "customer_id": "c-42",
    "amount": {"minor": 1999, "currency": "EUR"}, "merchant_currency": "USD",
    "card": {"number": "4242424242424242", "expiry": "12/30"}}"#;

fn with(field_path: &[&str], value: Value) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(GOOD).unwrap();
    let mut cursor = &mut v;
    for key in &field_path[..field_path.len() - 1] {
        cursor = cursor.get_mut(*key).unwrap();
    }
    let last = field_path[field_path.len() - 1];
    if value == Value::String("<remove>".into()) {
        cursor.as_object_mut().unwrap().remove(last);
    } else {
        cursor[last] = value;
    }
    serde_json::to_vec(&v).unwrap()
}

fn error(body: &[u8]) -> InvalidRequest {
    PaymentRequest::parse(body, &Limits::default()).unwrap_err()
}

#[test]
fn a_good_request_parses_with_every_field() {
    let r = PaymentRequest::parse(GOOD.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(r.amount.minor, 1999);
    assert_eq!(r.amount.currency.as_str(), "EUR");
    assert_eq!(r.settlement_currency().as_str(), "USD");
    assert_eq!(r.card.number.last4(), "4242");
    assert_eq!(r.card.expiry, "12/30");
}

#[test]
fn the_brand_comes_from_the_leading_digits_only() {
    for (number, brand) in [
        ("4242424242424242", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("6445644564456445", "discover"),
        ("3566002020360505", "jcb"),
        ("30569309025904", "diners"),
        ("6200000000000005", "unionpay"),
        ("6759649826438453", "maestro"),
        ("9999999999999995", "other"),
        ("2720999999999996", "mastercard"),
        ("2721000000000004", "other"),
    ] {
        assert_eq!(CardNumber::new(number).brand(), brand, "{number}");
    }
}

#[test]
fn merchant_currency_defaults_to_the_amount_currency() {
    let body = with(&["merchant_currency"], Value::String("<remove>".into()));
    let r = PaymentRequest::parse(&body, &Limits::default()).unwrap();
    assert_eq!(r.settlement_currency().as_str(), "EUR");
}

#[test]
fn card_numbers_never_print_in_full() {
    let r = PaymentRequest::parse(GOOD.as_bytes(), &Limits::default()).unwrap();
    let debug = format!("{r:?}");
    assert!(!debug.contains("4242424242424242"), "{debug}");
    assert!(debug.contains("****4242"));
}

#[test]
fn every_bad_field_is_named_with_its_problem() {
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"not json".to_vec(), "body", "not valid JSON"),
        (b"[1,2]".to_vec(), "body", "JSON object"),
        (with(&["payment_id"], "abc".into()), "payment_id", "UUID"),
        (
            with(&["payment_id"], Value::String("<remove>".into())),
            "payment_id",
            "required",
        ),
        (with(&["merchant_id"], 5.into()), "merchant_id", "string"),
        (with(&["customer_id"], "".into()), "customer_id", "empty"),
        (
            with(&["amount", "minor"], 0.into()),
            "amount.minor",
            "positive integer",
        ),
        (
            with(&["amount", "minor"], (-5).into()),
            "amount.minor",
            "negative",
        ),
        (
            with(&["amount", "minor"], 19.99.into()),
            "amount.minor",
            "fractional",
        ),
        (
            with(&["amount", "minor"], "1999".into()),
            "amount.minor",
            "string",
        ),
        (
            with(&["amount", "minor"], 10_000_000_001u64.into()),
            "amount.minor",
            "at most",
        ),
        (
            with(&["amount", "currency"], "eur".into()),
            "amount.currency",
            "upper-case",
        ),
        (
            with(&["merchant_currency"], "EURO".into()),
            "merchant_currency",
            "three",
        ),
        (
            with(&["card", "number"], "4242 4242".into()),
            "card.number",
            "digits",
        ),
        (
            with(&["card", "expiry"], "13/30".into()),
            "card.expiry",
            "MM/YY",
        ),
        (with(&["card"], "4242424242424242".into()), "card", "object"),
    ];
    for (body, field, problem) in cases {
        let e = error(&body);
        assert_eq!(e.field, field, "{e}");
        assert!(e.problem.contains(problem), "{e} should mention {problem}");
    }
}

#[test]
fn errors_after_the_id_carry_the_id_and_never_the_card() {
    let e = error(&with(&["card", "expiry"], "xx".into()));
    assert_eq!(
        e.payment_id.unwrap().to_string(),
        "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10"
    );
    let e = error(&with(&["merchant_id"], 4242424242424242u64.into()));
    assert!(!e.to_string().contains("4242424242424242"));
}

#[test]
fn card_numbers_in_ids_are_refused_without_echoing_them() {
    for (field, value) in [
        ("merchant_id", "4242424242424242"),
        ("merchant_id", "m-5105 1051 0510 5100"),
        ("customer_id", "c-4012-8888-8888-1881"),
        ("customer_id", "5555.5555.5555.4444"),
    ] {
        let e = error(&with(&[field], value.into()));
        assert_eq!(e.field, field, "{e}");
        assert!(e.problem.contains("card number"), "{e}");
        assert_eq!(
            e.payment_id.unwrap().to_string(),
            "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10",
            "the rejection can still be addressed"
        );
        let digits: String = value.chars().filter(char::is_ascii_digit).collect();
        let shown: String = e.to_string().chars().filter(char::is_ascii_digit).collect();
        assert!(!shown.contains(&digits[digits.len() - 8..]), "{e}");
    }
}

#[test]
fn ids_with_other_digits_are_accepted() {
    for (field, value) in [
        ("merchant_id", "m-1001"),
        ("merchant_id", "m-4242424242424241"),
        ("customer_id", "c-6f1c3a52-3b1e-4f4e-9d7a-123456789012"),
        ("customer_id", "c-2026-12-03-0042"),
    ] {
        let r = PaymentRequest::parse(&with(&[field], value.into()), &Limits::default());
        assert!(r.is_ok(), "{field} {value}: {r:?}");
    }
}

#[test]
fn rejections_are_masked_and_capped() {
    let e = InvalidRequest::new(
        None,
        "content_type",
        &format!("got 4242424242424242{}", "x".repeat(500)),
    );
    assert!(e.problem.starts_with("got ****4242x"), "{e}");
    assert!(e.problem.chars().count() <= MAX_PROBLEM_CHARS + 1, "{e}");
    let direct = InvalidRequest {
        payment_id: None,
        field: "4012888888881881".into(),
        problem: "5555555555554444".into(),
    };
    assert_eq!(direct.to_string(), "****1881: ****4444");
}

#[test]
fn oversized_bodies_are_refused_before_parsing() {
    let limits = Limits {
        max_body_bytes: 10,
        ..Limits::default()
    };
    let e = PaymentRequest::parse(GOOD.as_bytes(), &limits).unwrap_err();
    assert_eq!(e.field, "body");
    assert!(e.problem.contains("over the limit"));
}

const ID: &str = "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10";

#[test]
fn a_repeated_key_is_refused_by_name_at_every_level() {
    // The issue's case: a proxy checking the first amount would see 1999.
    let body = GOOD.replace(
        r#""currency": "EUR"}"#,
        r#""currency": "EUR", "minor": 9999999}"#,
    );
    let e = error(body.as_bytes());
    assert_eq!(e.field, "amount.minor", "{e}");
    assert!(e.problem.contains("more than once"), "{e}");
    assert_eq!(e.payment_id.unwrap().to_string(), ID, "still addressable");

    for (body, field) in [
        (
            GOOD.replace(r#""m-1001","#, r#""m-1001", "merchant_id": "m-2","#),
            "merchant_id",
        ),
        (
            GOOD.replace(r#""12/30"}"#, r#""12/30", "number": "4242424242424242"}"#),
            "card.number",
        ),
        (
            GOOD.replace("}}", r#"}, "extra": {"k": 1, "k": 1}}"#),
            "extra.k",
        ),
        (
            GOOD.replace("}}", r#"}, "list": [{"k": 1, "k": 2}]}"#),
            "list[0].k",
        ),
    ] {
        let e = error(body.as_bytes());
        assert_eq!(e.field, field, "{e}");
        assert!(e.problem.contains("more than once"), "{e}");
    }
}

#[test]
fn a_repeated_payment_id_leaves_the_request_unaddressed() {
    let body = GOOD.replace(
        r#""merchant_id""#,
        r#""payment_id": "00000000-0000-4000-8000-000000000000", "merchant_id""#,
    );
    let e = error(body.as_bytes());
    assert_eq!(e.field, "payment_id", "{e}");
    assert_eq!(e.payment_id, None, "which of the two ids would it be?");
    assert_eq!(PaymentRequest::sniff_payment_id(body.as_bytes()), None);
}

#[test]
fn only_the_canonical_uuid_form_is_a_payment_id() {
    assert_eq!(parse_payment_id(ID).unwrap().to_string(), ID);
    for other in [
        "6F1C3A52-3B1E-4F4E-9D7A-0C2B8E1F5A10",
        "6f1c3a52-3b1e-4f4e-9d7a-0C2b8e1f5a10",
        "{6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10}",
        "urn:uuid:6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10",
        "6f1c3a523b1e4f4e9d7a0c2b8e1f5a10",
        "6f1c3a52-3b1e-4f4e-9d7a0-c2b8e1f5a10",
        "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a1g",
        " 6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a1",
    ] {
        assert_eq!(parse_payment_id(other), None, "{other}");
        let e = error(&with(&["payment_id"], other.into()));
        assert_eq!(e.field, "payment_id", "{other}");
        assert!(e.problem.contains("canonical form"), "{e}");
        assert_eq!(
            e.payment_id, None,
            "{other}: never answered under a rewritten id"
        );
        assert_eq!(
            PaymentRequest::sniff_payment_id(&with(&["amount"], "x".into())),
            Some(Uuid::try_parse(ID).unwrap())
        );
        assert_eq!(
            PaymentRequest::sniff_payment_id(&with(&["payment_id"], other.into())),
            None,
            "{other}"
        );
    }
}

#[test]
fn expiry_is_two_digits_a_slash_two_digits() {
    assert_eq!(parse_expiry("12/30"), Some((12, 2030)));
    assert_eq!(parse_expiry("01/00"), Some((1, 2000)));
    for bad in [
        "+1/+9", "+1/30", "12/+9", "-1/30", " 1/30", "1 /30", "00/30", "13/30", "1/30", "12/3",
        "12/300", "12-30", "12/30 ", "１2/30", "", "/", "ab/cd",
    ] {
        assert_eq!(parse_expiry(bad), None, "{bad:?}");
        let e = error(&with(&["card", "expiry"], bad.into()));
        assert_eq!(e.field, "card.expiry", "{bad:?}");
    }
}

#[test]
fn the_shipped_broker_limit_leaves_room_for_a_readable_rejection() {
    let conf = include_str!("../../../deploy/rabbitmq/rabbitmq.conf");
    let limit: usize = conf
        .lines()
        .find_map(|line| line.trim().strip_prefix("max_message_size"))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .expect("deploy/rabbitmq/rabbitmq.conf sets max_message_size")
        .trim()
        .parse()
        .expect("max_message_size is a number of bytes");
    let requests = Limits::default().max_body_bytes;
    assert!(
        limit >= 4 * requests,
        "{limit}: a request over the orchestrator's {requests}-byte limit must still \
         reach it, to be rejected with a result"
    );
    assert!(
        limit <= 16 * 1024 * 1024,
        "{limit}: far above any Baton message"
    );
}

#[test]
fn sniffing_finds_the_id_of_an_invalid_request() {
    let body = with(&["amount"], "lots".into());
    assert!(PaymentRequest::sniff_payment_id(&body).is_some());
    assert!(PaymentRequest::sniff_payment_id(b"\xff\x00").is_none());
}
