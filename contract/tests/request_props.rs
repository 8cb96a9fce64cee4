//! Property tests of request parsing: whatever a client (or an attacker) publishes,
//! `PaymentRequest::parse` and `sniff_payment_id` return — they never panic — and a
//! refusal names a field without echoing the card number.
//!
//! Case counts stay modest (≤ 2,000 per property) so the suite stays fast.

use baton_contract::{Limits, PaymentRequest};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const CARD: &str = "4242424242424242";

fn valid() -> Value {
    json!({
        "payment_id": "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10",
        "merchant_id": "m-1001",
        "customer_id": "c-42",
        "amount": {"minor": 1999, "currency": "EUR"},
        "merchant_currency": "USD",
        "card": {"number": CARD, "expiry": "12/30"}
    })
}

/// Every field of a request, as a path.
const PATHS: [&[&str]; 10] = [
    &["payment_id"],
    &["merchant_id"],
    &["customer_id"],
    &["amount"],
    &["amount", "minor"],
    &["amount", "currency"],
    &["merchant_currency"],
    &["card"],
    &["card", "number"],
    &["card", "expiry"],
];

/// Field names a request uses, so generated objects often look like requests.
const KEYS: [&str; 10] = [
    "payment_id",
    "merchant_id",
    "customer_id",
    "amount",
    "minor",
    "currency",
    "merchant_currency",
    "card",
    "number",
    "expiry",
];

/// Any JSON value: scalars at the edges of their types (huge, negative, fractional
/// numbers; strings with digits, controls, non-ASCII), nested arrays and objects whose
/// keys are often the request's own.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(CARD)),
        Just(json!("6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10")),
        ".{0,40}".prop_map(Value::String),
        "[0-9 /A-Za-z\u{0}-\u{1f}é€]{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
                        ".{0,12}"
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Limits as configured, including tiny ones.
fn any_limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (0usize..512, 0u64..10_000).prop_map(|(max_body_bytes, max_amount_minor)| Limits {
            max_body_bytes,
            max_amount_minor,
        }),
    ]
}

/// Parses `body`; on a refusal, checks it is addressed and does not echo the card.
fn parse_checked(body: &[u8], limits: &Limits) -> Result<PaymentRequest, String> {
    let sniffed = PaymentRequest::sniff_payment_id(body);
    match PaymentRequest::parse(body, limits) {
        Ok(request) => {
            // A parsed request's id is the one a sniff finds too.
            assert_eq!(sniffed, Some(request.payment_id));
            assert!(request.amount.minor >= 1 && request.amount.minor <= limits.max_amount_minor);
            assert!(body.len() <= limits.max_body_bytes);
            Ok(request)
        }
        Err(invalid) => {
            let text = invalid.to_string();
            assert!(!invalid.field.is_empty(), "{text}");
            assert!(!invalid.problem.is_empty(), "{text}");
            assert!(
                !text.contains(CARD),
                "a validation error echoed the card number: {text}"
            );
            if let Some(id) = invalid.payment_id {
                assert_eq!(sniffed, Some(id), "{text}");
            }
            Err(text)
        }
    }
}

fn set(value: &mut Value, path: &[&str], new: Option<Value>) {
    let (last, parents) = path.split_last().unwrap();
    let mut cursor = value;
    for key in parents {
        cursor = cursor.get_mut(*key).unwrap();
    }
    let object = cursor.as_object_mut().unwrap();
    match new {
        Some(new) => object.insert((*last).to_owned(), new),
        None => object.remove(*last),
    };
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..600),
        limits in any_limits(),
    ) {
        let _ = parse_checked(&body, &limits);
    }

    #[test]
    fn arbitrary_json_values_never_panic(value in any_json(), limits in any_limits()) {
        let body = serde_json::to_vec(&value).unwrap();
        let _ = parse_checked(&body, &limits);
    }

    #[test]
    fn a_valid_request_with_one_field_removed_or_replaced_never_panics(
        path in prop::sample::select(PATHS.to_vec()),
        replacement in prop::option::of(any_json()),
        extra in prop::option::of(any_json()),
    ) {
        let mut request = valid();
        let removed = replacement.is_none();
        set(&mut request, path, replacement);
        // Unknown fields are ignored, whatever they hold.
        if let Some(extra) = extra {
            request["client_note"] = extra;
        }
        let body = serde_json::to_vec(&request).unwrap();
        let parsed = parse_checked(&body, &Limits::default());
        // A required field removed is always refused, and named. (merchant_currency is
        // optional.)
        if removed && path != ["merchant_currency"] {
            let text = parsed.expect_err("a request without a required field is refused");
            prop_assert!(text.starts_with(&path.join(".")), "{}", text);
        }
    }

    #[test]
    fn an_amount_is_accepted_exactly_from_1_to_the_limit(minor in any::<u64>(), max in 0u64..1_000_000) {
        let mut request = valid();
        request["amount"]["minor"] = minor.into();
        let limits = Limits { max_amount_minor: max, ..Limits::default() };
        let parsed = parse_checked(&serde_json::to_vec(&request).unwrap(), &limits);
        prop_assert_eq!(parsed.is_ok(), minor >= 1 && minor <= max);
    }

    #[test]
    fn a_card_number_in_an_id_is_refused_with_the_field_named_and_never_echoed(
        field in prop::sample::select(vec!["merchant_id", "customer_id"]),
        card in prop::sample::select(vec![
            "4242424242424242", "5555555555554444", "378282246310005", "4000056655665556",
            "6011111111111117", "3056930009020004", "4000000000000000006", "500000000009",
        ]),
        separator in prop::sample::select(vec!["", " ", "-", "."]),
        group in 2usize..=6,
        before in "[a-z]{0,6}[-_:/]?",
        after in "([-_:/][a-z0-9]{0,6})?",
    ) {
        let written = card
            .as_bytes()
            .chunks(group)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(separator);
        let mut request = valid();
        request[field] = json!(format!("{before}{written}{after}"));
        let invalid = PaymentRequest::parse(&serde_json::to_vec(&request).unwrap(), &Limits::default())
            .expect_err("a card number in an id is refused");
        prop_assert_eq!(invalid.field.as_str(), field);
        prop_assert!(invalid.problem.contains("card number"), "{}", invalid);
        prop_assert!(invalid.payment_id.is_some(), "the rejection is addressed to the payment");
        let shown = invalid.to_string();
        prop_assert!(!shown.contains(&written) && !shown.contains(card), "{}", shown);
    }

    #[test]
    fn sniffing_arbitrary_bytes_never_panics(body in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = PaymentRequest::sniff_payment_id(&body);
    }

    #[test]
    fn sniffing_arbitrary_json_never_panics(value in any_json()) {
        let body = serde_json::to_vec(&value).unwrap();
        if let Some(id) = PaymentRequest::sniff_payment_id(&body) {
            // Only ever the request's own payment_id field.
            let field = value["payment_id"].as_str().expect("sniffed from payment_id");
            prop_assert_eq!(uuid::Uuid::try_parse(field).ok(), Some(id));
        }
    }
}
