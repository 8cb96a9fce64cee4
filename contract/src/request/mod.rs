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

    /// The card brand, from the issuer identification number (the leading digits, which
    /// PCI DSS allows to be known with the last four): `visa`, `mastercard`, `amex`,
    /// `discover`, `jcb`, `diners`, `unionpay`, `maestro`, else `other`. No digit of the
    /// number is in it, so workflow conditions, logs and the journal may carry it.
    pub fn brand(&self) -> &'static str {
        let digits = self.0.as_bytes();
        let prefix = |n: usize| -> u32 {
            digits
                .iter()
                .take(n)
                .fold(0, |acc, d| acc * 10 + u32::from(d.wrapping_sub(b'0')))
        };
        match (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6)) {
            (4, ..) => "visa",
            (_, 34 | 37, ..) => "amex",
            (_, 51..=55, ..) | (_, _, _, 2221..=2720, _) => "mastercard",
            (_, 65, ..) | (_, _, 644..=649, ..) | (_, _, _, 6011, _) => "discover",
            (_, _, _, 3528..=3589, _) => "jcb",
            (_, 36 | 38 | 39, ..) | (_, _, 300..=305, ..) => "diners",
            (_, 62, ..) => "unionpay",
            (_, 50 | 56..=58, ..) | (_, _, _, 6304 | 6759, _) | (.., 676770 | 676774) => "maestro",
            _ => "other",
        }
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
        let decoded = crate::strict_json::decode(body).map_err(|e| {
            invalid(
                None,
                "body",
                format!("is not valid JSON ({})", e.classify_message()),
            )
        })?;
        let value = decoded.value;
        if let Some(path) = decoded.duplicate {
            // Addressable unless the id itself is the repeated key.
            let payment_id = (path != "payment_id")
                .then(|| value.get("payment_id")?.as_str().and_then(parse_payment_id))
                .flatten();
            return Err(invalid(
                payment_id,
                &path,
                "is given more than once: each key may appear only once (a reader keeping \
                 the first value would see another request than one keeping the last)",
            ));
        }
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
        let payment_id = parse_payment_id(id_text).ok_or_else(|| {
            invalid(
                None,
                "payment_id",
                "must be a UUID in canonical form: 36 characters, lower-case hexadecimal \
                 digits in groups of 8-4-4-4-12 joined by hyphens (no braces, no urn: prefix)",
            )
        })?;
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
                "must be MM/YY: two digits, a slash, two digits, with a month from 01 to 12",
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
    /// A body whose `payment_id` is given twice, or not in canonical form, has none.
    pub fn sniff_payment_id(body: &[u8]) -> Option<Uuid> {
        let decoded = crate::strict_json::decode(body).ok()?;
        if decoded.duplicate.as_deref() == Some("payment_id") {
            return None;
        }
        parse_payment_id(decoded.value.get("payment_id")?.as_str()?)
    }
}

/// A payment id as the contract accepts it: a UUID in canonical form only (lower-case,
/// hyphenated, 36 characters), so the id a client sent is the id every result, journal
/// row and command carries, byte for byte. `Uuid::try_parse` alone would also take
/// upper-case, braced, `urn:uuid:` and unhyphenated forms and print them back otherwise.
pub fn parse_payment_id(text: &str) -> Option<Uuid> {
    let canonical = text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        });
    canonical.then(|| Uuid::try_parse(text).ok()).flatten()
}

/// A card expiry `MM/YY` → (month 1–12, full year 2000–2099): exactly five ASCII
/// characters, two digits, a slash, two digits, the month from 01 to 12. The one expiry
/// parser: request validation and the authorization service both use it, so a request
/// that passes validation is never an "unreadable expiry" later. (Rust's integer
/// parsing alone would take `+1/+9`.)
pub fn parse_expiry(expiry: &str) -> Option<(u32, u32)> {
    let &[m1, m2, b'/', y1, y2] = expiry.as_bytes() else {
        return None;
    };
    if ![m1, m2, y1, y2].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let month = u32::from((m1 - b'0') * 10 + (m2 - b'0'));
    let year = 2000 + u32::from((y1 - b'0') * 10 + (y2 - b'0'));
    (1..=12).contains(&month).then_some((month, year))
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
mod tests;
