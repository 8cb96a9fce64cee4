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

use crate::journal::PaymentSummary;
use cel::common::ast::{operators, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::objects::Key;
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

/// A static type. `Dyn` is what a step's data is: known only when the payment runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    Str,
    Bytes,
    Null,
    List,
    Map,
    Dyn,
    /// An object of the schema: `payment`, `payment.amount`, `payment.card`.
    Object(&'static str),
    /// `steps`.
    Steps,
}

impl Ty {
    fn name(self) -> String {
        match self {
            Ty::Bool => "a bool".into(),
            Ty::Int => "an int".into(),
            Ty::Uint => "a uint".into(),
            Ty::Double => "a double".into(),
            Ty::Str => "a string".into(),
            Ty::Bytes => "bytes".into(),
            Ty::Null => "null".into(),
            Ty::List => "a list".into(),
            Ty::Map => "a map".into(),
            Ty::Dyn => "a step's data".into(),
            Ty::Object(path) => format!("the object `{path}`"),
            Ty::Steps => "the object `steps`".into(),
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }

    fn of_schema(name: &str) -> Ty {
        match name {
            "int" => Ty::Int,
            _ => Ty::Str,
        }
    }
}

/// The objects of the schema, by path: a field is either one of [`FIELDS`] or an object.
fn field_of(object: &'static str, field: &str) -> Option<Ty> {
    let path = format!("{object}.{field}");
    if let Some((_, ty)) = FIELDS.iter().find(|(p, _)| *p == path) {
        return Some(Ty::of_schema(ty));
    }
    FIELDS
        .iter()
        .find_map(|(p, _)| {
            let rest = p.strip_prefix(path.as_str())?;
            rest.starts_with('.').then(|| &p[..path.len()])
        })
        .map(Ty::Object)
}

fn fields_of(object: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (p, _) in FIELDS {
        if let Some(rest) = p.strip_prefix(object).and_then(|r| r.strip_prefix('.')) {
            let name = rest.split('.').next().unwrap_or(rest);
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

type Checked = Result<Ty, (u64, String)>;

/// Walks the syntax tree, giving each node its static type.
struct Checker<'a> {
    earlier: &'a [&'a str],
    reads: Vec<String>,
    /// Variables bound by comprehensions (`exists(x, …)`), innermost last.
    scope: Vec<String>,
}

/// Functions conditions may call, and what they give.
const FUNCTIONS: &[(&str, Ty)] = &[
    ("size", Ty::Int),
    ("int", Ty::Int),
    ("uint", Ty::Uint),
    ("double", Ty::Double),
    ("string", Ty::Str),
    ("dyn", Ty::Dyn),
    ("startsWith", Ty::Bool),
    ("endsWith", Ty::Bool),
    ("contains", Ty::Bool),
];

impl Checker<'_> {
    fn check(&mut self, e: &IdedExpr) -> Checked {
        let fail = |message: String| Err((e.id, message));
        match &e.expr {
            Expr::Literal(literal) => Ok(match literal {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::UInt(_) => Ty::Uint,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::String(_) => Ty::Str,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Null => Ty::Null,
            }),
            Expr::Ident(name) if self.scope.contains(name) => Ok(Ty::Dyn),
            Expr::Ident(name) if name == "payment" => Ok(Ty::Object("payment")),
            Expr::Ident(name) if name == "steps" => Ok(Ty::Steps),
            Expr::Ident(name) => fail(format!(
                "unknown name: `{name}`; a condition reads `payment` and `steps`"
            )),
            Expr::Select(select) => {
                let operand = self.check(&select.operand)?;
                let ty = self.member(e.id, operand, &select.field)?;
                Ok(if select.test { Ty::Bool } else { ty })
            }
            Expr::Call(call) => {
                let mut args = Vec::with_capacity(call.args.len() + 1);
                if let Some(target) = &call.target {
                    args.push(self.check(target)?);
                }
                for arg in &call.args {
                    args.push(self.check(arg)?);
                }
                // `steps["risk"]`, `payment["amount"]`: a field by its name.
                if call.func_name == operators::INDEX {
                    if let (
                        Some(container),
                        Some(IdedExpr {
                            expr: Expr::Literal(LiteralValue::String(key)),
                            ..
                        }),
                    ) = (args.first(), call.args.get(1))
                    {
                        if matches!(container, Ty::Object(_) | Ty::Steps) {
                            return self.member(e.id, *container, key.inner());
                        }
                    }
                }
                self.call(&call.func_name, &args).or_else(fail)
            }
            Expr::Comprehension(c) => {
                let range = self.check(&c.iter_range)?;
                if !matches!(range, Ty::List | Ty::Map | Ty::Dyn) {
                    return Err((
                        c.iter_range.id,
                        format!("type error: cannot iterate over {}", range.name()),
                    ));
                }
                self.check(&c.accu_init)?;
                let bound = 1 + usize::from(c.iter_var2.is_some()) + 1;
                self.scope.push(c.iter_var.clone());
                if let Some(second) = &c.iter_var2 {
                    self.scope.push(second.clone());
                }
                self.scope.push(c.accu_var.clone());
                let checked = (|| {
                    self.check(&c.loop_cond)?;
                    self.check(&c.loop_step)?;
                    self.check(&c.result)
                })();
                self.scope.truncate(self.scope.len() - bound);
                checked
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.check(element)?;
                }
                Ok(Ty::List)
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(m) = &entry.expr {
                        self.check(&m.key)?;
                        self.check(&m.value)?;
                    }
                }
                Ok(Ty::Map)
            }
            Expr::Struct(_) => fail("type error: a condition cannot build messages".into()),
            Expr::Unspecified => fail("syntax error: incomplete expression".into()),
        }
    }

    /// `operand.field`.
    fn member(&mut self, id: u64, operand: Ty, field: &str) -> Checked {
        match operand {
            Ty::Object(path) => field_of(path, field).ok_or_else(|| {
                (
                    id,
                    format!(
                        "unknown field: `{path}` has no `{field}`; it has {}",
                        fields_of(path).join(", ")
                    ),
                )
            }),
            Ty::Steps => {
                if !self.earlier.contains(&field) {
                    let known = if self.earlier.is_empty() {
                        "none comes before this one".to_owned()
                    } else {
                        format!("those before this one are {}", self.earlier.join(", "))
                    };
                    return Err((
                        id,
                        format!(
                            "unknown step: `steps.{field}`: a condition reads the data of \
                             steps that ran before it, and {known}"
                        ),
                    ));
                }
                if !self.reads.iter().any(|r| r == field) {
                    self.reads.push(field.to_owned());
                }
                Ok(Ty::Dyn)
            }
            Ty::Dyn | Ty::Map => Ok(Ty::Dyn),
            other => Err((
                id,
                format!(
                    "type error: `.{field}` on {}, which has no fields",
                    other.name()
                ),
            )),
        }
    }

    /// An operator or function applied to arguments of these types.
    fn call(&self, name: &str, args: &[Ty]) -> Result<Ty, String> {
        use operators as op;
        let dyn_or = |t: Ty, ok: &dyn Fn(Ty) -> bool| t == Ty::Dyn || ok(t);
        let symbol = name.trim_matches('_').trim_start_matches('@');
        let mismatch = |what: &str| {
            let types: Vec<String> = args.iter().map(|t| t.name()).collect();
            Err(format!(
                "type error: `{symbol}` {what} {}",
                types.join(" and ")
            ))
        };
        match (name, args) {
            (op::LOGICAL_AND | op::LOGICAL_OR, [a, b]) => {
                if dyn_or(*a, &|t| t == Ty::Bool) && dyn_or(*b, &|t| t == Ty::Bool) {
                    Ok(Ty::Bool)
                } else {
                    mismatch("joins conditions (true or false), not")
                }
            }
            (op::LOGICAL_NOT, [a]) | (op::NOT_STRICTLY_FALSE, [a]) => {
                if dyn_or(*a, &|t| t == Ty::Bool) {
                    Ok(Ty::Bool)
                } else {
                    mismatch("negates a condition, not")
                }
            }
            (op::NEGATE, [a]) => match a {
                Ty::Int | Ty::Double | Ty::Dyn => Ok(*a),
                _ => mismatch("negates a signed number, not"),
            },
            (op::EQUALS | op::NOT_EQUALS, [a, b]) => {
                let comparable = a == b
                    || matches!(a, Ty::Dyn | Ty::Null)
                    || matches!(b, Ty::Dyn | Ty::Null)
                    || (a.numeric() && b.numeric());
                if comparable {
                    Ok(Ty::Bool)
                } else {
                    mismatch("compares values that are never equal:")
                }
            }
            (op::LESS | op::LESS_EQUALS | op::GREATER | op::GREATER_EQUALS, [a, b]) => {
                let ordered = |t: Ty| t.numeric() || matches!(t, Ty::Str | Ty::Bool | Ty::Bytes);
                let ok = (a.numeric() && b.numeric())
                    || (a == b && ordered(*a))
                    || (*a == Ty::Dyn && (ordered(*b) || *b == Ty::Dyn))
                    || (*b == Ty::Dyn && ordered(*a));
                if ok {
                    Ok(Ty::Bool)
                } else {
                    mismatch("cannot order")
                }
            }
            (op::ADD | op::SUBSTRACT | op::MULTIPLY | op::DIVIDE | op::MODULO, [a, b]) => {
                let arithmetic = |t: Ty| {
                    t.numeric() || (name == op::ADD && matches!(t, Ty::Str | Ty::List | Ty::Bytes))
                };
                match (a, b) {
                    (Ty::Dyn, t) | (t, Ty::Dyn) if *t == Ty::Dyn || arithmetic(*t) => Ok(*t),
                    (Ty::Double, Ty::Double) if name == op::MODULO => {
                        mismatch("has no overload for")
                    }
                    (x, y) if x == y && arithmetic(*x) => Ok(*x),
                    (x, y) if x.numeric() && y.numeric() => mismatch(
                        "does not mix number types (convert with int(), uint() or double()):",
                    ),
                    _ => mismatch("has no overload for"),
                }
            }
            (op::CONDITIONAL, [c, a, b]) => {
                if !dyn_or(*c, &|t| t == Ty::Bool) {
                    return Err(format!(
                        "type error: `? :` needs a condition (true or false), not {}",
                        c.name()
                    ));
                }
                Ok(if a == b { *a } else { Ty::Dyn })
            }
            (op::IN, [_, container]) => match container {
                Ty::List | Ty::Map | Ty::Dyn => Ok(Ty::Bool),
                _ => Err(format!(
                    "type error: `in` looks in a list or a map, not {}",
                    container.name()
                )),
            },
            (op::INDEX, [container, _]) => match container {
                Ty::List | Ty::Map | Ty::Dyn => Ok(Ty::Dyn),
                _ => Err(format!("type error: cannot index {}", container.name())),
            },
            ("size", [a]) => match a {
                Ty::Str | Ty::Bytes | Ty::List | Ty::Map | Ty::Dyn => Ok(Ty::Int),
                _ => mismatch("measures a string, list or map, not"),
            },
            ("startsWith" | "endsWith" | "contains", [a, b]) => {
                if dyn_or(*a, &|t| t == Ty::Str) && dyn_or(*b, &|t| t == Ty::Str) {
                    Ok(Ty::Bool)
                } else {
                    mismatch("works on strings, not")
                }
            }
            (f, [a]) if matches!(f, "int" | "uint" | "double" | "string" | "dyn") => {
                if matches!(a, Ty::Object(_) | Ty::Steps) && f != "dyn" {
                    return mismatch("converts a value, not");
                }
                Ok(FUNCTIONS
                    .iter()
                    .find(|(n, _)| *n == f)
                    .map(|(_, t)| *t)
                    .unwrap_or(Ty::Dyn))
            }
            _ if FUNCTIONS.iter().any(|(n, _)| *n == name) => Err(format!(
                "type error: `{name}` called with {} argument(s) it does not take",
                args.len()
            )),
            _ => {
                let known: Vec<&str> = FUNCTIONS.iter().map(|(n, _)| *n).collect();
                Err(format!(
                    "unknown function: `{symbol}`; conditions may use the operators, \
                     has(), all(), exists(), exists_one(), map(), filter() and {}",
                    known.join(", ")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        let request =
            PaymentRequest::parse(body.to_string().as_bytes(), &Limits::default()).unwrap();
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
}
