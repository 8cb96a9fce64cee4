//! The payment request a client publishes, and its validation.
//!
//! Requests are validated field by field from the raw JSON rather than through serde's
//! derived decoder, so that a bad request gets an error naming the field and the problem
//! (`amount.minor: must be a positive integer`) instead of a parser position.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use uuid::Uuid;

/// An ISO 4217-shaped currency code: exactly three ASCII upper-case letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Parses a code; `None` unless it is three ASCII upper-case letters.
    pub fn parse(code: &str) -> Option<Self> {
        let bytes = code.as_bytes();
        if bytes.len() == 3 && bytes.iter().all(u8::is_ascii_uppercase) {
            Some(Self([bytes[0], bytes[1], bytes[2]]))
        } else {
            None
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Currency::parse(&code).ok_or_else(|| {
            serde::de::Error::custom(format!("currency {code:?} is not three upper-case letters"))
        })
    }
}

/// An amount of money in the currency's minor unit (cents for EUR): never a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Integer amount in the minor unit.
    pub minor: u64,
    /// Currency of the amount.
    pub currency: Currency,
}

/// A primary account number. Its `Debug` and `Display` show the last four digits only,
/// so it cannot reach a log by accident; only serialisation writes it in full.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CardNumber(String);

impl CardNumber {
    /// Wraps a number that has already been checked to be 12–19 digits.
    pub fn new(digits: impl Into<String>) -> Self {
        Self(digits.into())
    }

    /// The full number: for the services that must see it, never for logs.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// The last four digits.
    pub fn last4(&self) -> &str {
        &self.0[self.0.len().saturating_sub(4)..]
    }

    /// `****4242`.
    pub fn masked(&self) -> String {
        format!("****{}", self.last4())
    }
}

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Display for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// The card a payment is made with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    /// 12 to 19 digits.
    pub number: CardNumber,
    /// `MM/YY`.
    pub expiry: String,
}

/// A payment request, as a client publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequest {
    /// Client-chosen id; the idempotency key of the whole payment.
    pub payment_id: Uuid,
    /// Who is paid.
    pub merchant_id: String,
    /// Who pays.
    pub customer_id: String,
    /// What the customer pays.
    pub amount: Money,
    /// Currency the merchant settles in; the amount's currency when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_currency: Option<Currency>,
    /// The card.
    pub card: Card,
}

impl PaymentRequest {
    /// The currency the merchant is paid in.
    pub fn settlement_currency(&self) -> Currency {
        self.merchant_currency.unwrap_or(self.amount.currency)
    }
}

/// Bounds a request must stay within.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted body, in bytes.
    pub max_body_bytes: usize,
    /// Largest accepted `amount.minor`.
    pub max_amount_minor: u64,
}

impl Default for Limits {
    /// 64 KiB bodies; amounts up to 10,000,000,000 minor units (100 million in a
    /// two-decimal currency).
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_amount_minor: 10_000_000_000,
        }
    }
}

/// Why a request was refused, naming the field and the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidRequest {
    /// The payment id, when the request carried a readable one, so a `rejected` result
    /// can still be addressed to it.
    pub payment_id: Option<Uuid>,
    /// The field at fault (`amount.minor`), or `body` for the message as a whole.
    pub field: String,
    /// What is wrong with it, in words a client developer can act on.
    pub problem: String,
}

/// Longest field name a rejection carries, in characters.
const MAX_FIELD_CHARS: usize = 64;
/// Longest problem a rejection carries, in characters: it becomes a result's `detail`,
/// an `x-baton-detail` header and a log field.
const MAX_PROBLEM_CHARS: usize = 200;

impl InvalidRequest {
    /// A rejection of `field`. Both texts are masked ([`crate::mask_card_numbers`]) and
    /// capped in length, so a client value quoted in a problem can neither leak a card
    /// number nor grow a header without bound; better still, describe the value
    /// without quoting it.
    pub fn new(payment_id: Option<Uuid>, field: &str, problem: &str) -> Self {
        Self {
            payment_id,
            field: crate::mask::bounded(field, MAX_FIELD_CHARS),
            problem: crate::mask::bounded(problem, MAX_PROBLEM_CHARS),
        }
    }
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Masked again: the fields are public and may have been set directly.
        write!(
            f,
            "{}: {}",
            crate::mask::bounded(&self.field, MAX_FIELD_CHARS),
            crate::mask::bounded(&self.problem, MAX_PROBLEM_CHARS)
        )
    }
}

impl std::error::Error for InvalidRequest {}

fn invalid(payment_id: Option<Uuid>, field: &str, problem: impl Into<String>) -> InvalidRequest {
    InvalidRequest::new(payment_id, field, &problem.into())
}

/// Describes a JSON value's type for error messages, without echoing its content (which
/// could be a card number in the wrong place).
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(n) if n.is_i64() && n.as_i64().unwrap_or(0) < 0 => "a negative number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct Fields<'a> {
    object: &'a Map<String, Value>,
    prefix: &'a str,
    payment_id: Option<Uuid>,
}

impl<'a> Fields<'a> {
    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    fn required(&self, name: &str) -> Result<&'a Value, InvalidRequest> {
        match self.object.get(name) {
            None | Some(Value::Null) => {
                Err(invalid(self.payment_id, &self.path(name), "is required"))
            }
            Some(v) => Ok(v),
        }
    }

    fn string(&self, name: &str) -> Result<&'a str, InvalidRequest> {
        let value = self.required(name)?;
        value.as_str().ok_or_else(|| {
            invalid(
                self.payment_id,
                &self.path(name),
                format!("must be a string, got {}", kind_of(value)),
            )
        })
    }

    fn object(&self, name: &'a str) -> Result<Fields<'a>, InvalidRequest> {
        let value = self.required(name)?;
        match value {
            Value::Object(object) => Ok(Fields {
                object,
                prefix: name,
                payment_id: self.payment_id,
            }),
            other => Err(invalid(
                self.payment_id,
                &self.path(name),
                format!("must be an object, got {}", kind_of(other)),
            )),
        }
    }

    fn identifier(&self, name: &str) -> Result<String, InvalidRequest> {
        let text = self.string(name)?;
        if text.trim().is_empty() {
            return Err(invalid(
                self.payment_id,
                &self.path(name),
                "must not be empty",
            ));
        }
        if text.len() > 128 {
            return Err(invalid(
                self.payment_id,
                &self.path(name),
                "must be at most 128 bytes",
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(invalid(
                self.payment_id,
                &self.path(name),
                "must not contain control characters",
            ));
        }
        if crate::mask::contains_card_number(text) {
            // Described, never quoted: the value would be a card number in a result, a
            // header and a log.
            return Err(invalid(
                self.payment_id,
                &self.path(name),
                "must not contain a card number (12 to 19 digits passing the Luhn check, \
                 with or without spaces, dashes or dots between them); card data goes in \
                 card.number only",
            ));
        }
        Ok(text.to_owned())
    }

    fn currency(&self, name: &str) -> Result<Currency, InvalidRequest> {
        let text = self.string(name)?;
        Currency::parse(text).ok_or_else(|| {
            invalid(
                self.payment_id,
                &self.path(name),
                "must be three upper-case letters (ISO 4217, e.g. \"EUR\")",
            )
        })
    }
}

impl PaymentRequest {
    /// Decodes and validates a request body: every field present, of the right type and
    /// within `limits`. Unknown fields are ignored, so clients may add their own.
    pub fn parse(body: &[u8], limits: &Limits) -> Result<Self, InvalidRequest> {
        if body.len() > limits.max_body_bytes {
            return Err(invalid(
                None,
                "body",
                format!(
                    "is {} bytes, over the limit of {} bytes",
                    body.len(),
                    limits.max_body_bytes
                ),
            ));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            invalid(
                None,
                "body",
                format!("is not valid JSON ({})", e.classify_message()),
            )
        })?;
        let Value::Object(object) = &value else {
            return Err(invalid(
                None,
                "body",
                format!("must be a JSON object, got {}", kind_of(&value)),
            ));
        };
        let top = Fields {
            object,
            prefix: "",
            payment_id: None,
        };

        let id_text = top.string("payment_id")?;
        let payment_id =
            Uuid::try_parse(id_text).map_err(|_| invalid(None, "payment_id", "must be a UUID"))?;
        let top = Fields {
            payment_id: Some(payment_id),
            ..top
        };

        let merchant_id = top.identifier("merchant_id")?;
        let customer_id = top.identifier("customer_id")?;

        let amount = top.object("amount")?;
        let minor_value = amount.required("minor")?;
        let minor = match minor_value.as_u64() {
            Some(m) if m > 0 => m,
            _ => {
                return Err(invalid(
                    Some(payment_id),
                    "amount.minor",
                    format!(
                        "must be a positive integer in the currency's minor unit, got {}",
                        match minor_value {
                            Value::Number(n) if n.as_u64() == Some(0) => "0",
                            other => kind_of(other),
                        }
                    ),
                ))
            }
        };
        if minor > limits.max_amount_minor {
            return Err(invalid(
                Some(payment_id),
                "amount.minor",
                format!("must be at most {}", limits.max_amount_minor),
            ));
        }
        let currency = amount.currency("currency")?;

        let merchant_currency = match object.get("merchant_currency") {
            None | Some(Value::Null) => None,
            Some(_) => Some(top.currency("merchant_currency")?),
        };

        let card = top.object("card")?;
        let number = card.string("number")?;
        if !(12..=19).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                Some(payment_id),
                "card.number",
                "must be 12 to 19 digits, without spaces",
            ));
        }
        let expiry = card.string("expiry")?;
        if parse_expiry(expiry).is_none() {
            return Err(invalid(
                Some(payment_id),
                "card.expiry",
                "must be MM/YY with a month from 01 to 12",
            ));
        }

        Ok(PaymentRequest {
            payment_id,
            merchant_id,
            customer_id,
            amount: Money { minor, currency },
            merchant_currency,
            card: Card {
                number: CardNumber::new(number),
                expiry: expiry.to_owned(),
            },
        })
    }

    /// Best effort: the payment id of a body that may be invalid, so a rejection can be
    /// addressed to it.
    pub fn sniff_payment_id(body: &[u8]) -> Option<Uuid> {
        let value: Value = serde_json::from_slice(body).ok()?;
        Uuid::try_parse(value.get("payment_id")?.as_str()?).ok()
    }
}

/// `MM/YY` → (month 1–12, full year).
pub fn parse_expiry(expiry: &str) -> Option<(u32, u32)> {
    let (mm, yy) = expiry.split_once('/')?;
    if mm.len() != 2 || yy.len() != 2 {
        return None;
    }
    let month: u32 = mm.parse().ok()?;
    let year: u32 = yy.parse().ok()?;
    (1..=12).contains(&month).then_some((month, 2000 + year))
}

trait ClassifyMessage {
    fn classify_message(&self) -> &'static str;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Eof => "it ends too early",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Io => "read error",
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn sniffing_finds_the_id_of_an_invalid_request() {
        let body = with(&["amount"], "lots".into());
        assert!(PaymentRequest::sniff_payment_id(&body).is_some());
        assert!(PaymentRequest::sniff_payment_id(b"\xff\x00").is_none());
    }
}
