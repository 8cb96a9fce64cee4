//! The type checker of conditions: walks the `cel` crate's syntax tree against the one
//! schema conditions see ([`FIELDS`](super::FIELDS)).

use super::*;
use cel::common::ast::{operators, EntryExpr, Expr, IdedExpr, LiteralValue};

/// A static type. `Dyn` is what a step's data is: known only when the payment runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Ty {
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
    pub(super) fn name(self) -> String {
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
pub(super) fn field_of(object: &'static str, field: &str) -> Option<Ty> {
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

pub(super) fn fields_of(object: &str) -> Vec<&'static str> {
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
pub(super) struct Checker<'a> {
    pub(super) earlier: &'a [&'a str],
    pub(super) reads: Vec<String>,
    /// Variables bound by comprehensions (`exists(x, …)`), innermost last.
    pub(super) scope: Vec<String>,
}

/// Functions conditions may call, and what they give.
pub(super) const FUNCTIONS: &[(&str, Ty)] = &[
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
    pub(super) fn check(&mut self, e: &IdedExpr) -> Checked {
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
