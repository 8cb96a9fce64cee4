//! Conditions: compiled, checked and evaluated as a workflow file's `when` is.

use super::*;
use baton_contract::{Limits, PaymentRequest};
use serde_json::json;

fn summary(minor: u64, currency: &str, merchant_currency: &str) -> PaymentSummary {
    let body = json!({
        "payment_id": "6f1c3a52-3b1e-4f4e-9d7a-0c2b8e1f5a10",
        "merchant_id": "m-1", "customer_id": "c-1",
        "amount": {"minor": minor, "currency": currency},
        "merchant_currency": merchant_currency,
        "card": {"number": "4242424242424242", "expiry": "12/30"}
    });
    let request = PaymentRequest::parse(body.to_string().as_bytes(), &Limits::default()).unwrap();
    PaymentSummary::of(&request)
}

fn eval(source: &str, payment: &PaymentSummary, steps: Json) -> Result<bool, String> {
    Condition::compile(source, &["authorization", "risk"])
        .unwrap_or_else(|e| panic!("{source}: {e:?}"))
        .evaluate(payment, steps.as_object().unwrap())
}

fn refused(source: &str) -> ConditionError {
    match Condition::compile(source, &["authorization", "risk"]) {
        Ok(_) => panic!("{source} was accepted"),
        Err(e) => e,
    }
}

#[test]
fn the_issues_examples_decide_as_written() {
    let fx = "payment.merchant_currency != payment.amount.currency";
    assert_eq!(eval(fx, &summary(100, "EUR", "USD"), json!({})), Ok(true));
    assert_eq!(eval(fx, &summary(100, "EUR", "EUR"), json!({})), Ok(false));

    let edd = "payment.amount.minor >= 1000000";
    assert_eq!(
        eval(edd, &summary(1_000_000, "EUR", "EUR"), json!({})),
        Ok(true)
    );
    assert_eq!(
        eval(edd, &summary(999_999, "EUR", "EUR"), json!({})),
        Ok(false)
    );

    let tds = "steps.risk.score > 70";
    let p = summary(100, "EUR", "EUR");
    assert_eq!(eval(tds, &p, json!({"risk": {"score": 71}})), Ok(true));
    assert_eq!(eval(tds, &p, json!({"risk": {"score": 70}})), Ok(false));
    assert_eq!(eval(tds, &p, json!({"risk": {"score": 70.5}})), Ok(true));
    // Risk approved without a score: an error, not a guess.
    let missing = eval(tds, &p, json!({"risk": {}})).unwrap_err();
    assert!(missing.contains("score"), "{missing}");
    let guarded = "has(steps.risk.score) && steps.risk.score > 70";
    assert_eq!(eval(guarded, &p, json!({"risk": {}})), Ok(false));
}

#[test]
fn every_field_of_the_payment_is_readable() {
    let p = summary(2500, "GBP", "EUR");
    for (source, expected) in [
        ("payment.card.brand == 'visa'", true),
        ("payment.card.last4 == '4242'", true),
        ("payment.merchant_id.startsWith('m-')", true),
        ("payment.customer_id in ['c-1', 'c-2']", true),
        (
            "payment.amount.currency == 'GBP' && payment.merchant_currency == 'EUR'",
            true,
        ),
        ("size(payment.card.last4) == 4", true),
        ("double(payment.amount.minor) / 100.0 > 25.5", false),
        ("steps.authorization.hold_id.endsWith('-7')", true),
        ("['DE', 'FR'].exists(c, c == payment.customer_id)", false),
    ] {
        assert_eq!(
            eval(source, &p, json!({"authorization": {"hold_id": "h-7"}})),
            Ok(expected),
            "{source}"
        );
    }
}

#[test]
fn syntax_errors_give_line_and_column() {
    let e = refused("payment.amount.minor >= ");
    assert!(e.message.starts_with("syntax error"), "{e:?}");
    assert_eq!((e.line, e.column), (1, 25), "{e:?}");
    let e = refused("payment.amount.minor > 1 &&\n  payment.card.brand == 'visa' ||| true");
    assert_eq!(e.line, 2, "{e:?}");
    assert!(!e.message.contains("Syntax error"), "said once: {e:?}");
    let e = refused("(payment.amount.minor > 5");
    assert_eq!((e.line, e.column), (1, 26), "{e:?}");
}

#[test]
fn unknown_names_fields_and_steps_are_named() {
    let e = refused("payment.amout.minor > 5");
    assert!(
        e.message.contains("`payment` has no `amout`") && e.message.contains("amount"),
        "{e:?}"
    );
    assert_eq!(e.column, 8, "{e:?}");
    let e = refused("payment.card.number == '4242424242424242'");
    assert!(e.message.contains("has no `number`"), "{e:?}");
    let e = refused("paymnt.amount.minor > 5");
    assert!(e.message.contains("unknown name: `paymnt`"), "{e:?}");
    let e = refused("steps.pci.ok");
    assert!(
        e.message.contains("unknown step: `steps.pci`")
            && e.message.contains("authorization, risk"),
        "{e:?}"
    );
    let e = refused("payment.amount.minor.matches('1')");
    assert!(e.message.contains("unknown function"), "{e:?}");
}

#[test]
fn type_errors_are_found_before_any_payment() {
    for (source, needle) in [
        (
            "payment.amount.minor > '100'",
            "cannot order an int and a string",
        ),
        ("payment.amount.currency == 978", "never equal"),
        ("payment.amount.minor", "the condition is an int"),
        (
            "payment.amount.minor + 1.5 > 2.0",
            "does not mix number types",
        ),
        ("payment.card.brand && true", "joins conditions"),
        ("payment.card.last4.size > 3", "has no fields"),
        (
            "payment.amount > 5",
            "cannot order the object `payment.amount`",
        ),
    ] {
        let e = refused(source);
        assert!(e.message.contains(needle), "{source}: {e:?}");
        assert!(e.message.starts_with("type error"), "{source}: {e:?}");
    }
}

#[test]
fn reads_are_the_steps_named() {
    let c = Condition::compile(
        "steps.risk.score > 70 || steps['authorization'].amount > 5 || steps.risk.x",
        &["authorization", "risk"],
    )
    .unwrap();
    assert_eq!(c.reads(), ["risk", "authorization"]);
}

#[test]
fn a_journal_record_without_a_brand_reads_unknown() {
    let mut p = summary(1, "EUR", "EUR");
    p.card_brand.clear();
    assert_eq!(
        eval("payment.card.brand == 'unknown'", &p, json!({})),
        Ok(true)
    );
}
