//! The values a template computes with, shaped like what Go's `json.Unmarshal` into
//! `any` gives ntfy's templates: every JSON number is a float64 (so `{{.n}}` of
//! `1000000` prints `1e+06`, as in ntfy), objects are maps printed in key order.
//! Integers only come from literals and functions (`len`, `add`, ...).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::rc::Rc;

#[derive(Debug, Clone, Default)]
pub(super) enum Value {
    /// JSON `null`, a missing map key, or Go's invalid value.
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    List(Rc<Vec<Value>>),
    Map(Rc<BTreeMap<String, Value>>),
}

impl Value {
    pub fn str(s: impl Into<Rc<str>>) -> Value {
        Value::Str(s.into())
    }

    /// From parsed JSON (serde_json bounds its nesting at 128).
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Nil,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Value::str(s.as_str()),
            serde_json::Value::Array(a) => {
                Value::List(Rc::new(a.iter().map(Value::from_json).collect()))
            }
            serde_json::Value::Object(o) => Value::Map(Rc::new(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            )),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Nil => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Str(s) => serde_json::Value::String(s.to_string()),
            Value::List(l) => serde_json::Value::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => {
                serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// Go's template truth: false, 0, nil, and empty strings, lists and maps are false.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
        }
    }

    /// The Go type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float64",
            Value::Str(_) => "string",
            Value::List(_) => "[]interface {}",
            Value::Map(_) => "map[string]interface {}",
        }
    }

    /// How an action prints its value (`fmt.Fprint`, and `<no value>` for nil).
    pub fn print_action(&self, out: &mut String) {
        match self {
            Value::Nil => out.push_str("<no value>"),
            v => v.print(out),
        }
    }

    /// Go's `%v`.
    pub fn print(&self, out: &mut String) {
        match self {
            Value::Nil => out.push_str("<nil>"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) => go_float(*f, out),
            Value::Str(s) => out.push_str(s),
            Value::List(l) => {
                out.push('[');
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    v.print(out);
                }
                out.push(']');
            }
            Value::Map(m) => {
                out.push_str("map[");
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(k);
                    out.push(':');
                    v.print(out);
                }
                out.push(']');
            }
        }
    }

    pub fn to_display(&self) -> String {
        let mut s = String::new();
        self.print(&mut s);
        s
    }

    /// A rough size in bytes, charged against the render's allocation budget.
    pub fn weight(&self) -> usize {
        match self {
            Value::Str(s) => s.len() + 16,
            Value::List(l) => 16 * l.len() + 16,
            Value::Map(m) => 48 * m.len() + 16,
            _ => 16,
        }
    }
}

/// Go's `%v` of a float64 (`strconv.FormatFloat(f, 'g', -1, 64)`): the shortest
/// digits that round-trip, in exponent form when the decimal exponent is below -4
/// or at least 6 (Go's `%g` decides with precision 6 when printing the shortest form).
pub(super) fn go_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.234e6", "-5e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        push_exp(mantissa, exp, out);
    } else {
        let _ = write!(out, "{f}");
    }
}

fn push_exp(mantissa: &str, exp: i32, out: &mut String) {
    out.push_str(mantissa);
    out.push('e');
    out.push(if exp < 0 { '-' } else { '+' });
    let _ = write!(out, "{:02}", exp.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(f: f64) -> String {
        let mut s = String::new();
        go_float(f, &mut s);
        s
    }

    #[test]
    fn floats_print_as_go() {
        assert_eq!(g(5.0), "5");
        assert_eq!(g(0.1), "0.1");
        assert_eq!(g(18.98211314475876), "18.98211314475876");
        assert_eq!(g(123456.0), "123456");
        assert_eq!(g(1e6), "1e+06");
        assert_eq!(g(1234567.0), "1.234567e+06");
        assert_eq!(g(0.0001), "0.0001");
        assert_eq!(g(0.00001), "1e-05");
        assert_eq!(g(-2.5), "-2.5");
        assert_eq!(g(1e21), "1e+21");
    }

    #[test]
    fn maps_and_lists_print_as_go() {
        let v = Value::from_json(&serde_json::json!({"b": [1, "x", null], "a": true}));
        assert_eq!(v.to_display(), "map[a:true b:[1 x <nil>]]");
    }
}
