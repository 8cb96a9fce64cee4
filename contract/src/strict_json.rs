//! JSON decoding that notices duplicate object keys.
//!
//! serde_json keeps the *last* value of a repeated key, while other parsers (a proxy, a
//! WAF, a client library checking what it sends) may keep the first: a body carrying
//! `"minor": 1999` and then `"minor": 9999999` would be checked as one amount and
//! charged as another. JSON (RFC 8259) only says names "SHOULD be unique"; Baton refuses
//! a request in which they are not, at any depth. serde_json has no switch for it, so
//! this is a small visitor building the same [`Value`] serde_json would, recording the
//! first repeated key's path on the way.
//!
//! What it is not: a validator of anything else. Syntax errors are serde_json's own.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::cell::RefCell;
use std::fmt;

/// A body decoded as JSON, and where a key first appeared twice, if one did.
pub(crate) struct Decoded {
    /// The value, with the last of any repeated key's values (as serde_json keeps).
    pub(crate) value: Value,
    /// Path of the first repeated key (`amount.minor`, `items[2].id`), if any.
    pub(crate) duplicate: Option<String>,
}

/// Decodes `body` as one JSON value (trailing whitespace only), noting duplicate keys.
pub(crate) fn decode(body: &[u8]) -> Result<Decoded, serde_json::Error> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = Seed {
        path: String::new(),
        duplicate: &duplicate,
    }
    .deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(Decoded {
        value,
        duplicate: duplicate.into_inner(),
    })
}

/// Decodes one value at `path`; the first duplicate found anywhere goes to `duplicate`.
struct Seed<'a> {
    path: String,
    duplicate: &'a RefCell<Option<String>>,
}

impl Seed<'_> {
    fn child(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON text cannot spell NaN or infinity; serde_json maps them to null too.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let seed = Seed {
                path: format!("{}[{}]", self.path, items.len()),
                duplicate: self.duplicate,
            };
            match seq.next_element_seed(seed)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = self.child(&key);
            if object.contains_key(&key) {
                let mut first = self.duplicate.borrow_mut();
                if first.is_none() {
                    *first = Some(path.clone());
                }
            }
            let value = map.next_value_seed(Seed {
                path,
                duplicate: self.duplicate,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate_in(text: &str) -> Option<String> {
        decode(text.as_bytes()).unwrap().duplicate
    }

    #[test]
    fn builds_the_value_serde_json_builds() {
        let text = r#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": 18446744073709551615}"#;
        let strict = decode(text.as_bytes()).unwrap();
        let plain: Value = serde_json::from_str(text).unwrap();
        assert_eq!(strict.value, plain);
        assert_eq!(strict.duplicate, None);
    }

    #[test]
    fn finds_the_first_duplicate_at_any_depth_by_its_path() {
        assert_eq!(duplicate_in(r#"{"a": 1, "a": 2}"#).as_deref(), Some("a"));
        assert_eq!(
            duplicate_in(r#"{"amount": {"minor": 1999, "currency": "EUR", "minor": 9999999}}"#)
                .as_deref(),
            Some("amount.minor")
        );
        assert_eq!(
            duplicate_in(r#"{"x": [{"k": 1}, {"k": 1, "k": 2}], "y": 1, "y": 2}"#).as_deref(),
            Some("x[1].k")
        );
        // Keys that differ only once escapes are decoded are the same key.
        assert_eq!(
            duplicate_in(r#"{"minor": 1, "min\u006fr": 2}"#).as_deref(),
            Some("minor")
        );
        // The same name in two different objects is no duplicate.
        assert_eq!(duplicate_in(r#"{"a": {"k": 1}, "b": {"k": 1}}"#), None);
    }

    #[test]
    fn syntax_errors_and_trailing_data_are_errors() {
        assert!(decode(b"{\"a\": 1").is_err());
        assert!(decode(b"{} {}").is_err());
        assert!(decode(b"{}  \n").is_ok());
    }
}
