//! Step conditions: a workflow step's `when`, an expression in the Common Expression
//! Language (CEL, the language of Kubernetes admission policies and Google's APIs) over
//! the payment and the data of earlier approved steps.
//!
//! This module compiles a condition once, when the workflow is loaded — syntax, the
//! names it reads, the types it combines, the steps it depends on — and evaluates it
//! for a payment. CEL has no loops beyond bounded comprehensions over given lists, no
//! assignment and no I/O: a condition cannot change anything or run away. What a
//! skipped step means (journal, result, compensation) is the saga's business, not this
//! module's.
//!
//! The parser and the interpreter are the `cel` crate's. CEL's type checker is not part
//! of that crate, so the checker here walks the crate's syntax tree against the one
//! schema conditions see ([`FIELDS`]): a typo in a field, a string compared with a
//! number, or a condition that is not a boolean is refused at load time with its
//! position, not discovered on the first payment.
//!
//! `check.rs` is the type checker; this file compiles and evaluates.

mod check;
#[cfg(test)]
mod tests;

use crate::records::PaymentSummary;
use cel::objects::Key;
use check::{Checker, Ty};
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// The fields of `payment` a condition may read, with their types: the payment as its
/// commands carry it, without card data (no number, fingerprint or expiry).
pub const FIELDS: &[(&str, &str)] = &[
    ("payment.amount.minor", "int"),
    ("payment.amount.currency", "string"),
    ("payment.merchant_currency", "string"),
    ("payment.merchant_id", "string"),
    ("payment.customer_id", "string"),
    ("payment.card.last4", "string"),
    ("payment.card.brand", "string"),
];

/// A compiled condition.
#[derive(Clone)]
pub struct Condition {
    /// The expression as written, for messages and `workflow check`.
    source: String,
    program: Arc<cel::Program>,
    /// The steps whose data it reads (`steps.<name>`), in the order first read.
    reads: Vec<String>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

/// Two conditions are the same when they are written the same.
impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Condition {}

/// Why a condition was refused, and where in it (1-based, in characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionError {
    /// Line within the expression.
    pub line: u32,
    /// Column within that line.
    pub column: u32,
    /// `syntax error: …`, `unknown field: …`, `type error: …`, `unknown step: …`.
    pub message: String,
}

/// One environment for every condition: the standard functions (the crate's default
/// features off: no regular expressions, timestamps or encoders).
fn env() -> &'static Arc<cel::Env> {
    static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(cel::Env::stdlib()))
}

impl Condition {
    /// Compiles `source`; `earlier` are the steps whose data it may read (`steps.<name>`).
    pub fn compile(source: &str, earlier: &[&str]) -> Result<Self, ConditionError> {
        if source.trim().is_empty() {
            return Err(ConditionError {
                line: 1,
                column: 1,
                message: "the condition is empty; remove `when` to always run the step".into(),
            });
        }
        let program = env().compile(source).map_err(|errors| {
            let first = errors.errors.first();
            let (line, column) = first
                .map(|e| {
                    (
                        u32::try_from(e.pos.0).unwrap_or(1).max(1),
                        u32::try_from(e.pos.1).unwrap_or(1).max(1),
                    )
                })
                .unwrap_or((1, 1));
            ConditionError {
                line,
                column,
                message: format!(
                    "syntax error: {}",
                    first
                        .map(|e| e.msg.trim_start_matches("Syntax error: "))
                        .unwrap_or("invalid expression")
                ),
            }
        })?;
        let mut checker = Checker {
            earlier,
            reads: Vec::new(),
            scope: Vec::new(),
        };
        let at = |id: u64, message: String| {
            let offset = program
                .source_info()
                .offset_for(id)
                .map(|(start, _)| start as usize)
                .unwrap_or(0);
            let (line, column) = line_column(source, offset);
            ConditionError {
                line,
                column,
                message,
            }
        };
        let root = program.expression();
        match checker.check(root) {
            Err((id, message)) => return Err(at(id, message)),
            Ok(Ty::Bool | Ty::Dyn) => {}
            Ok(other) => {
                return Err(at(
                    root.id,
                    format!(
                        "type error: the condition is {}, not true or false",
                        other.name()
                    ),
                ))
            }
        }
        Ok(Self {
            source: source.to_owned(),
            program: Arc::new(program),
            reads: checker.reads,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The steps whose data it reads.
    pub fn reads(&self) -> &[String] {
        &self.reads
    }

    /// Evaluates the condition for a payment, with `steps` the data of the earlier steps
    /// that approved, by step name. An error (a step's data without the field read, a
    /// value of another type than the expression expects) is returned, not guessed.
    pub fn evaluate(
        &self,
        payment: &PaymentSummary,
        steps: &Map<String, Json>,
    ) -> Result<bool, String> {
        let mut context = cel::Context::with_env(Arc::clone(env()));
        context.add_variable_from_value("payment", payment_value(payment));
        context.add_variable_from_value(
            "steps",
            cel::Value::Map(
                steps
                    .iter()
                    .map(|(k, v)| (Key::from(k.as_str()), json_value(v)))
                    .collect::<HashMap<Key, cel::Value>>()
                    .into(),
            ),
        );
        match self.program.execute(&context) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "the condition gave {:?}, not true or false",
                other.type_of()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

fn string(s: &str) -> cel::Value {
    cel::Value::String(Arc::new(s.to_owned()))
}

fn object(fields: Vec<(&str, cel::Value)>) -> cel::Value {
    cel::Value::Map(
        fields
            .into_iter()
            .map(|(k, v)| (Key::from(k), v))
            .collect::<HashMap<Key, cel::Value>>()
            .into(),
    )
}

/// `payment` as conditions see it ([`FIELDS`]).
fn payment_value(p: &PaymentSummary) -> cel::Value {
    let minor = i64::try_from(p.amount.minor)
        .map(cel::Value::Int)
        .unwrap_or(cel::Value::UInt(p.amount.minor));
    let brand = if p.card_brand.is_empty() {
        "unknown"
    } else {
        &p.card_brand
    };
    object(vec![
        (
            "amount",
            object(vec![
                ("minor", minor),
                ("currency", string(p.amount.currency.as_str())),
            ]),
        ),
        ("merchant_currency", string(p.merchant_currency.as_str())),
        ("merchant_id", string(&p.merchant_id)),
        ("customer_id", string(&p.customer_id)),
        (
            "card",
            object(vec![
                ("last4", string(&p.card_last4)),
                ("brand", string(brand)),
            ]),
        ),
    ])
}

/// A step's JSON data as CEL values: whole numbers are `int` (as a literal `70` is),
/// others `double`.
fn json_value(v: &Json) -> cel::Value {
    match v {
        Json::Null => cel::Value::Null,
        Json::Bool(b) => cel::Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => string(s),
        Json::Array(items) => cel::Value::List(Arc::new(items.iter().map(json_value).collect())),
        Json::Object(map) => cel::Value::Map(
            map.iter()
                .map(|(k, v)| (Key::from(k.as_str()), json_value(v)))
                .collect::<HashMap<Key, cel::Value>>()
                .into(),
        ),
    }
}
