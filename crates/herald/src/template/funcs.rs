//! The functions a template may call: Go's `text/template` builtins and the Sprig
//! functions that make sense over JSON data (strings, lists, dicts, math,
//! defaults, encodings). Sprig's time, OS, network, crypto-key and regex functions
//! are not offered (see docs/TEMPLATES.md); using one is a parse error, as any
//! undefined function is in Go.
//!
//! Every function that builds a value of caller-chosen size checks it against the
//! render's budget before building it (`repeat`, `indent`, `until`, `printf` widths).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::rc::Rc;

use base64::Engine;
use sha2::Digest;

use super::TemplateError;
use super::exec::Exec;
use super::value::{Value, go_float};

const NAMES: &[&str] = &[
    // Go builtins (`call` is refused by the parser).
    "and",
    "or",
    "not",
    "len",
    "index",
    "slice",
    "print",
    "printf",
    "println",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "html",
    "js",
    "urlquery",
    // Sprig: defaults and flow.
    "default",
    "empty",
    "coalesce",
    "ternary",
    "fail",
    "required",
    // Sprig: strings.
    "toString",
    "upper",
    "lower",
    "title",
    "untitle",
    "trim",
    "trimAll",
    "trimPrefix",
    "trimSuffix",
    "trunc",
    "substr",
    "repeat",
    "replace",
    "contains",
    "hasPrefix",
    "hasSuffix",
    "quote",
    "squote",
    "cat",
    "indent",
    "nindent",
    "nospace",
    "abbrev",
    "plural",
    "join",
    "split",
    "splitList",
    "sortAlpha",
    "initials",
    "swapcase",
    // Sprig: encodings.
    "toJson",
    "toRawJson",
    "toPrettyJson",
    "mustToJson",
    "fromJson",
    "b64enc",
    "b64dec",
    "sha256sum",
    // Sprig: lists and dicts.
    "list",
    "dict",
    "get",
    "hasKey",
    "keys",
    "values",
    "first",
    "last",
    "rest",
    "initial",
    "reverse",
    "uniq",
    "has",
    "compact",
    "append",
    "push",
    "prepend",
    "concat",
    "until",
    "pluck",
    // Sprig: math and conversions.
    "add",
    "add1",
    "sub",
    "mul",
    "div",
    "mod",
    "max",
    "min",
    "floor",
    "ceil",
    "round",
    "atoi",
    "int",
    "int64",
    "float64",
    "toDecimal",
];

/// Whether `name` is a function templates may call.
pub(super) fn exists(name: &str) -> bool {
    NAMES.contains(&name)
}

fn err(msg: impl Into<String>) -> TemplateError {
    TemplateError::Exec(msg.into())
}

fn arity(name: &str, args: &[Value], n: usize) -> Result<(), TemplateError> {
    if args.len() != n {
        return Err(err(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        )));
    }
    Ok(())
}

/// Sprig's `strval`: strings as they are, anything else as `%v`.
fn s(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Nil => String::new(),
        v => v.to_display(),
    }
}

/// Sprig's `toInt64` (spf13/cast): floats truncate, strings parse (else 0).
fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::Float(f) if f.is_finite() => *f as i64,
        Value::Bool(b) => i64::from(*b),
        Value::Str(s) => s.trim().parse::<i64>().unwrap_or_else(|_| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map_or(0, |f| f as i64)
        }),
        _ => 0,
    }
}

fn float(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Str(s) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

fn list_of(v: &Value) -> Vec<Value> {
    match v {
        Value::List(l) => l.as_ref().clone(),
        Value::Nil => Vec::new(),
        other => vec![other.clone()],
    }
}

fn list(v: Vec<Value>) -> Value {
    Value::List(Rc::new(v))
}

/// Sprig's `empty`.
fn is_empty(v: &Value) -> bool {
    !v.truthy()
}

/// Deepest nesting of lists and maps a template may build (JSON bodies are at most
/// 128 deep): printing, `toJson` and dropping a value recurse through it.
const MAX_VALUE_DEPTH: usize = 160;

/// Whether `v` nests deeper than `limit` (looks no deeper than that).
fn too_deep(v: &Value, limit: usize) -> bool {
    match v {
        Value::List(l) => limit == 0 || l.iter().any(|e| too_deep(e, limit - 1)),
        Value::Map(m) => limit == 0 || m.values().any(|e| too_deep(e, limit - 1)),
        _ => false,
    }
}

pub(super) fn call(name: &str, mut a: Vec<Value>, ex: &mut Exec) -> Result<Value, TemplateError> {
    let n = a.len();
    // Functions that put their arguments inside a new list or map.
    if matches!(name, "list" | "dict" | "append" | "push" | "prepend")
        && a.iter().any(|v| too_deep(v, MAX_VALUE_DEPTH - 1))
    {
        return Err(err("values nested too deeply"));
    }
    let arg = |i: usize| a.get(i).cloned().unwrap_or_default();
    Ok(match name {
        "not" => {
            arity(name, &a, 1)?;
            Value::Bool(!a[0].truthy())
        }
        "len" => {
            arity(name, &a, 1)?;
            Value::Int(match &a[0] {
                Value::Str(s) => s.len(),
                Value::List(l) => l.len(),
                Value::Map(m) => m.len(),
                v => return Err(err(format!("len of type {}", v.type_name()))),
            } as i64)
        }
        "index" => {
            if n == 0 {
                return Err(err("wrong number of args for index"));
            }
            let mut v = a[0].clone();
            for i in &a[1..] {
                v = match (&v, i) {
                    (Value::List(l), Value::Int(i)) => l
                        .get(usize::try_from(*i).map_err(|_| err("index out of range"))?)
                        .cloned()
                        .ok_or_else(|| err(format!("index out of range: {i}")))?,
                    (Value::Str(s), Value::Int(i)) => Value::Int(i64::from(
                        *s.as_bytes()
                            .get(usize::try_from(*i).map_err(|_| err("index out of range"))?)
                            .ok_or_else(|| err(format!("index out of range: {i}")))?,
                    )),
                    (Value::Map(m), Value::Str(k)) => {
                        m.get(k.as_ref()).cloned().unwrap_or_default()
                    }
                    (Value::Nil, _) => return Err(err("index of untyped nil")),
                    (v, i) => {
                        return Err(err(format!(
                            "cannot index {} with {}",
                            v.type_name(),
                            i.type_name()
                        )));
                    }
                };
            }
            v
        }
        "slice" => {
            if n == 0 || n > 3 {
                return Err(err("wrong number of args for slice"));
            }
            let bound = |i: usize, len: usize| -> Result<usize, TemplateError> {
                match a.get(i) {
                    None => Ok(if i == 1 { 0 } else { len }),
                    Some(Value::Int(x)) => usize::try_from(*x)
                        .ok()
                        .filter(|x| *x <= len)
                        .ok_or_else(|| err("slice index out of range")),
                    Some(v) => Err(err(format!("cannot index slice with {}", v.type_name()))),
                }
            };
            match &a[0] {
                Value::Str(st) => {
                    let (from, to) = (bound(1, st.len())?, bound(2, st.len())?);
                    let part = st
                        .get(from..to.max(from))
                        .ok_or_else(|| err("slice index out of range"))?;
                    Value::str(part)
                }
                Value::List(l) => {
                    let (from, to) = (bound(1, l.len())?, bound(2, l.len())?);
                    if from > to {
                        return Err(err("slice index out of range"));
                    }
                    list(l[from..to].to_vec())
                }
                v => return Err(err(format!("can't slice item of type {}", v.type_name()))),
            }
        }
        "print" => {
            let mut out = String::new();
            for (i, v) in a.iter().enumerate() {
                // fmt.Sprint: a space between operands when neither is a string.
                if i > 0 && !matches!(v, Value::Str(_)) && !matches!(a[i - 1], Value::Str(_)) {
                    out.push(' ');
                }
                v.print(&mut out);
            }
            Value::str(out)
        }
        "println" => {
            let mut out = String::new();
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                v.print(&mut out);
            }
            out.push('\n');
            Value::str(out)
        }
        "printf" => {
            if n == 0 {
                return Err(err("wrong number of args for printf"));
            }
            let format = s(&a[0]);
            Value::str(printf(&format, &a[1..], ex)?)
        }
        "eq" => {
            if n < 2 {
                return Err(err("missing argument for comparison"));
            }
            let mut any = false;
            for b in &a[1..] {
                if compare_eq(&a[0], b)? {
                    any = true;
                    break;
                }
            }
            Value::Bool(any)
        }
        "ne" => {
            arity(name, &a, 2)?;
            Value::Bool(!compare_eq(&a[0], &a[1])?)
        }
        "lt" | "le" | "gt" | "ge" => {
            arity(name, &a, 2)?;
            let ord = compare_ord(&a[0], &a[1])?;
            Value::Bool(match name {
                "lt" => ord.is_lt(),
                "le" => ord.is_le(),
                "gt" => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
        "html" => Value::str(html_escape(&sprint(&a))),
        "js" => Value::str(js_escape(&sprint(&a))),
        "urlquery" => {
            Value::str(form_urlencoded::byte_serialize(sprint(&a).as_bytes()).collect::<String>())
        }

        "default" => {
            if n == 0 || n > 2 {
                return Err(err("wrong number of args for default"));
            }
            let given = arg(1);
            if is_empty(&given) {
                a[0].clone()
            } else {
                given
            }
        }
        "empty" => {
            arity(name, &a, 1)?;
            Value::Bool(is_empty(&a[0]))
        }
        "coalesce" => a.iter().find(|v| !is_empty(v)).cloned().unwrap_or_default(),
        "ternary" => {
            arity(name, &a, 3)?;
            if a[2].truthy() {
                a[0].clone()
            } else {
                a[1].clone()
            }
        }
        "fail" => {
            arity(name, &a, 1)?;
            return Err(err(s(&a[0])));
        }
        "required" => {
            arity(name, &a, 2)?;
            if matches!(a[1], Value::Nil) || matches!(&a[1], Value::Str(x) if x.is_empty()) {
                return Err(err(s(&a[0])));
            }
            a[1].clone()
        }

        "toString" => {
            arity(name, &a, 1)?;
            Value::str(s(&a[0]))
        }
        "upper" => one_str(name, &a, |x| x.to_uppercase())?,
        "lower" => one_str(name, &a, |x| x.to_lowercase())?,
        "title" => one_str(name, &a, title)?,
        "untitle" => one_str(name, &a, |x| {
            map_words(x, |w, out| {
                let mut c = w.chars();
                if let Some(f) = c.next() {
                    out.extend(f.to_lowercase());
                    out.push_str(c.as_str());
                }
            })
        })?,
        "swapcase" => one_str(name, &a, |x| {
            x.chars()
                .flat_map(|c| {
                    if c.is_uppercase() {
                        c.to_lowercase().collect::<Vec<_>>()
                    } else {
                        c.to_uppercase().collect::<Vec<_>>()
                    }
                })
                .collect()
        })?,
        "trim" => one_str(name, &a, |x| x.trim().to_string())?,
        "nospace" => one_str(name, &a, |x| {
            x.chars().filter(|c| !c.is_whitespace()).collect()
        })?,
        "initials" => one_str(name, &a, |x| {
            x.split_whitespace()
                .filter_map(|w| w.chars().next())
                .collect()
        })?,
        "trimAll" => {
            arity(name, &a, 2)?;
            let cut = s(&a[0]);
            Value::str(s(&a[1]).trim_matches(|c| cut.contains(c)))
        }
        "trimPrefix" => {
            arity(name, &a, 2)?;
            let (p, v) = (s(&a[0]), s(&a[1]));
            Value::str(v.strip_prefix(p.as_str()).unwrap_or(&v))
        }
        "trimSuffix" => {
            arity(name, &a, 2)?;
            let (p, v) = (s(&a[0]), s(&a[1]));
            Value::str(v.strip_suffix(p.as_str()).unwrap_or(&v))
        }
        "trunc" => {
            arity(name, &a, 2)?;
            let (c, v) = (int(&a[0]), s(&a[1]));
            let len = v.chars().count() as i64;
            Value::str(if c < 0 && len + c > 0 {
                v.chars().skip((len + c) as usize).collect::<String>()
            } else if c >= 0 && len > c {
                v.chars().take(c as usize).collect::<String>()
            } else {
                v
            })
        }
        "substr" => {
            arity(name, &a, 3)?;
            let (start, end, v) = (int(&a[0]), int(&a[1]), s(&a[2]));
            let chars: Vec<char> = v.chars().collect();
            let len = chars.len() as i64;
            let (start, end) = if start < 0 {
                (0, end)
            } else if end < 0 || end > len {
                (start, len)
            } else {
                (start, end)
            };
            if start > end || start > len {
                Value::str("")
            } else {
                Value::str(
                    chars[start as usize..end as usize]
                        .iter()
                        .collect::<String>(),
                )
            }
        }
        "repeat" => {
            arity(name, &a, 2)?;
            let (count, v) = (int(&a[0]).max(0) as usize, s(&a[1]));
            ex.charge(count.saturating_mul(v.len()))?;
            Value::str(v.repeat(count))
        }
        "replace" => {
            arity(name, &a, 3)?;
            let (old, new, v) = (s(&a[0]), s(&a[1]), s(&a[2]));
            let count = if old.is_empty() {
                v.chars().count() + 1
            } else {
                v.matches(old.as_str()).count()
            };
            ex.charge(v.len() + count.saturating_mul(new.len()))?;
            Value::str(v.replace(old.as_str(), &new))
        }
        "contains" => {
            arity(name, &a, 2)?;
            Value::Bool(s(&a[1]).contains(s(&a[0]).as_str()))
        }
        "hasPrefix" => {
            arity(name, &a, 2)?;
            Value::Bool(s(&a[1]).starts_with(s(&a[0]).as_str()))
        }
        "hasSuffix" => {
            arity(name, &a, 2)?;
            Value::Bool(s(&a[1]).ends_with(s(&a[0]).as_str()))
        }
        "quote" => Value::str(
            a.iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| go_quote(&s(v)))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "squote" => Value::str(
            a.iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| format!("'{}'", s(v)))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "cat" => Value::str(
            a.iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(s)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "indent" | "nindent" => {
            arity(name, &a, 2)?;
            let (width, v) = (int(&a[0]).max(0) as usize, s(&a[1]));
            let lines = v.lines().count().max(1);
            ex.charge(v.len() + width.saturating_mul(lines))?;
            let pad = " ".repeat(width);
            let body = format!("{pad}{}", v.replace('\n', &format!("\n{pad}")));
            Value::str(if name == "nindent" {
                format!("\n{body}")
            } else {
                body
            })
        }
        "abbrev" => {
            arity(name, &a, 2)?;
            let (width, v) = (int(&a[0]), s(&a[1]));
            let len = v.chars().count() as i64;
            if width < 4 || len <= width {
                Value::str(v)
            } else {
                let mut out: String = v.chars().take((width - 3) as usize).collect();
                out.push_str("...");
                Value::str(out)
            }
        }
        "plural" => {
            arity(name, &a, 3)?;
            if int(&a[2]) == 1 {
                Value::str(s(&a[0]))
            } else {
                Value::str(s(&a[1]))
            }
        }
        "join" => {
            arity(name, &a, 2)?;
            let sep = s(&a[0]);
            let parts: Vec<String> = list_of(&a[1]).iter().map(s).collect();
            Value::str(parts.join(&sep))
        }
        "split" | "splitList" => {
            arity(name, &a, 2)?;
            let (sep, v) = (s(&a[0]), s(&a[1]));
            let parts: Vec<Value> = if sep.is_empty() {
                v.chars().map(|c| Value::str(c.to_string())).collect()
            } else {
                v.split(sep.as_str()).map(Value::str).collect()
            };
            ex.charge(parts.len() * 32)?;
            if name == "splitList" {
                list(parts)
            } else {
                Value::Map(Rc::new(
                    parts
                        .into_iter()
                        .enumerate()
                        .map(|(i, p)| (format!("_{i}"), p))
                        .collect(),
                ))
            }
        }
        "sortAlpha" => {
            arity(name, &a, 1)?;
            let mut v: Vec<String> = list_of(&a[0]).iter().map(s).collect();
            v.sort();
            list(v.into_iter().map(Value::str).collect())
        }

        "toJson" | "mustToJson" | "toRawJson" | "toPrettyJson" => {
            arity(name, &a, 1)?;
            let j = a[0].to_json();
            let text = if name == "toPrettyJson" {
                serde_json::to_string_pretty(&j).unwrap_or_default()
            } else {
                serde_json::to_string(&j).unwrap_or_default()
            };
            // Go's json.Marshal escapes HTML characters; toRawJson does not.
            Value::str(if name == "toRawJson" {
                text
            } else {
                text.replace('<', "\\u003c")
                    .replace('>', "\\u003e")
                    .replace('&', "\\u0026")
            })
        }
        "fromJson" => {
            arity(name, &a, 1)?;
            let text = s(&a[0]);
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(j) => Value::from_json(&j),
                Err(_) => Value::Map(Rc::new(BTreeMap::new())),
            }
        }
        "b64enc" => one_str(name, &a, |x| {
            base64::engine::general_purpose::STANDARD.encode(x.as_bytes())
        })?,
        "b64dec" => one_str(
            name,
            &a,
            |x| match base64::engine::general_purpose::STANDARD.decode(x.as_bytes()) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => e.to_string(),
            },
        )?,
        "sha256sum" => one_str(name, &a, |x| {
            let d = sha2::Sha256::digest(x.as_bytes());
            d.iter().fold(String::with_capacity(64), |mut o, b| {
                let _ = write!(o, "{b:02x}");
                o
            })
        })?,

        "list" => list(std::mem::take(&mut a)),
        "dict" => {
            let mut m = BTreeMap::new();
            let mut it = a.chunks(2);
            for pair in &mut it {
                m.insert(s(&pair[0]), pair.get(1).cloned().unwrap_or_default());
            }
            Value::Map(Rc::new(m))
        }
        "get" => {
            arity(name, &a, 2)?;
            match &a[0] {
                Value::Map(m) => m.get(&s(&a[1])).cloned().unwrap_or_else(|| Value::str("")),
                _ => Value::str(""),
            }
        }
        "hasKey" => {
            arity(name, &a, 2)?;
            Value::Bool(matches!(&a[0], Value::Map(m) if m.contains_key(&s(&a[1]))))
        }
        "keys" => {
            let mut keys: Vec<Value> = Vec::new();
            for m in &a {
                if let Value::Map(m) = m {
                    keys.extend(m.keys().map(|k| Value::str(k.as_str())));
                }
            }
            list(keys)
        }
        "values" => {
            arity(name, &a, 1)?;
            match &a[0] {
                Value::Map(m) => list(m.values().cloned().collect()),
                _ => list(Vec::new()),
            }
        }
        "pluck" => {
            if n == 0 {
                return Err(err("wrong number of args for pluck"));
            }
            let key = s(&a[0]);
            list(
                a[1..]
                    .iter()
                    .filter_map(|m| match m {
                        Value::Map(m) => m.get(&key).cloned(),
                        _ => None,
                    })
                    .collect(),
            )
        }
        "first" | "last" | "rest" | "initial" | "reverse" | "uniq" | "compact" => {
            arity(name, &a, 1)?;
            let l = match &a[0] {
                Value::List(l) => l.clone(),
                Value::Nil => return Ok(Value::Nil),
                v => return Err(err(format!("cannot find {name} on type {}", v.type_name()))),
            };
            match name {
                "first" => l.first().cloned().unwrap_or_default(),
                "last" => l.last().cloned().unwrap_or_default(),
                "rest" => list(l.iter().skip(1).cloned().collect()),
                "initial" => list(l[..l.len().saturating_sub(1)].to_vec()),
                "reverse" => list(l.iter().rev().cloned().collect()),
                "compact" => list(l.iter().filter(|v| !is_empty(v)).cloned().collect()),
                _ => {
                    let mut out: Vec<Value> = Vec::new();
                    for v in l.iter() {
                        ex.charge(out.len() / 8)?;
                        if !out.iter().any(|o| compare_eq(o, v).unwrap_or(false)) {
                            out.push(v.clone());
                        }
                    }
                    list(out)
                }
            }
        }
        "has" => {
            arity(name, &a, 2)?;
            Value::Bool(
                list_of(&a[1])
                    .iter()
                    .any(|v| compare_eq(v, &a[0]).unwrap_or(false)),
            )
        }
        "append" | "push" => {
            arity(name, &a, 2)?;
            let mut l = list_of(&a[0]);
            l.push(a[1].clone());
            list(l)
        }
        "prepend" => {
            arity(name, &a, 2)?;
            let mut l = vec![a[1].clone()];
            l.extend(list_of(&a[0]));
            list(l)
        }
        "concat" => {
            let mut l = Vec::new();
            for v in &a {
                ex.charge(16 * l.len())?;
                l.extend(list_of(v));
            }
            list(l)
        }
        "until" => {
            arity(name, &a, 1)?;
            let count = int(&a[0]);
            let len = count.unsigned_abs() as usize;
            ex.charge(len.saturating_mul(16))?;
            let step = if count < 0 { -1 } else { 1 };
            list((0..len as i64).map(|i| Value::Int(i * step)).collect())
        }

        "add" => Value::Int(a.iter().fold(0i64, |acc, v| acc.wrapping_add(int(v)))),
        "add1" => {
            arity(name, &a, 1)?;
            Value::Int(int(&a[0]).wrapping_add(1))
        }
        "sub" => {
            arity(name, &a, 2)?;
            Value::Int(int(&a[0]).wrapping_sub(int(&a[1])))
        }
        "mul" => Value::Int(a.iter().fold(1i64, |acc, v| acc.wrapping_mul(int(v)))),
        "div" | "mod" => {
            arity(name, &a, 2)?;
            let (x, y) = (int(&a[0]), int(&a[1]));
            if y == 0 {
                return Err(err("runtime error: integer divide by zero"));
            }
            Value::Int(if name == "div" {
                x.wrapping_div(y)
            } else {
                x.wrapping_rem(y)
            })
        }
        "max" | "min" => {
            if n == 0 {
                return Err(err(format!("wrong number of args for {name}")));
            }
            let vals = a.iter().map(int);
            Value::Int(if name == "max" {
                vals.max().unwrap_or(0)
            } else {
                vals.min().unwrap_or(0)
            })
        }
        "floor" => Value::Float(float(&arg(0)).floor()),
        "ceil" => Value::Float(float(&arg(0)).ceil()),
        "round" => {
            if n == 0 || n > 3 {
                return Err(err("wrong number of args for round"));
            }
            let places = int(&arg(1)).clamp(0, 15) as i32;
            let p = 10f64.powi(places);
            Value::Float((float(&a[0]) * p).round() / p)
        }
        "atoi" => Value::Int(s(&arg(0)).trim().parse::<i64>().unwrap_or(0)),
        "int" | "int64" => Value::Int(int(&arg(0))),
        "float64" => Value::Float(float(&arg(0))),
        "toDecimal" => Value::Int(i64::from_str_radix(&s(&arg(0)), 8).unwrap_or(0)),
        other => return Err(err(format!("function {other:?} not defined"))),
    })
}

fn one_str(
    name: &str,
    a: &[Value],
    f: impl FnOnce(&str) -> String,
) -> Result<Value, TemplateError> {
    arity(name, a, 1)?;
    Ok(Value::str(f(&s(&a[0]))))
}

fn sprint(a: &[Value]) -> String {
    let mut out = String::new();
    for (i, v) in a.iter().enumerate() {
        if i > 0 && !matches!(v, Value::Str(_)) && !matches!(a[i - 1], Value::Str(_)) {
            out.push(' ');
        }
        v.print(&mut out);
    }
    out
}

/// Applies `f` to each run of letters/digits, keeping the separators (Go's
/// `strings.Title` word rule).
fn map_words(x: &str, mut f: impl FnMut(&str, &mut String)) -> String {
    let mut out = String::with_capacity(x.len());
    let mut word_start: Option<usize> = None;
    for (i, c) in x.char_indices() {
        let in_word = c.is_alphanumeric() || c == '_' || c == '\'';
        match (in_word, word_start) {
            (true, None) => word_start = Some(i),
            (false, Some(st)) => {
                f(&x[st..i], &mut out);
                word_start = None;
                out.push(c);
            }
            (false, None) => out.push(c),
            (true, Some(_)) => {}
        }
    }
    if let Some(st) = word_start {
        f(&x[st..], &mut out);
    }
    out
}

fn title(x: &str) -> String {
    map_words(x, |w, out| {
        let mut c = w.chars();
        if let Some(f) = c.next() {
            out.extend(f.to_uppercase());
            out.push_str(c.as_str());
        }
    })
}

/// Go's basic kinds for comparison.
#[derive(PartialEq)]
enum Kind {
    Bool,
    Int,
    Float,
    Str,
    Other,
    Invalid,
}

fn kind(v: &Value) -> Kind {
    match v {
        Value::Nil => Kind::Invalid,
        Value::Bool(_) => Kind::Bool,
        Value::Int(_) => Kind::Int,
        Value::Float(_) => Kind::Float,
        Value::Str(_) => Kind::Str,
        _ => Kind::Other,
    }
}

/// Go's `eq` for two arguments: values of different basic kinds are an error unless
/// one of them is nil (then they are unequal); lists and maps cannot be compared.
fn compare_eq(a: &Value, b: &Value) -> Result<bool, TemplateError> {
    let (ka, kb) = (kind(a), kind(b));
    if ka == Kind::Invalid || kb == Kind::Invalid {
        return Ok(ka == kb);
    }
    if ka != kb {
        return Err(err("incompatible types for comparison"));
    }
    Ok(match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Float(x), Value::Float(y)) => x == y,
        (Value::Str(x), Value::Str(y)) => x == y,
        _ => return Err(err("invalid type for comparison")),
    })
}

fn compare_ord(a: &Value, b: &Value) -> Result<std::cmp::Ordering, TemplateError> {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
        (Value::Float(x), Value::Float(y)) => Ok(x.partial_cmp(y).unwrap_or(Ordering::Equal)),
        (Value::Str(x), Value::Str(y)) => Ok(x.cmp(y)),
        (Value::Nil, _) | (_, Value::Nil) => Err(err("invalid type for comparison")),
        (x, y) if kind(x) != kind(y) => Err(err("incompatible types for comparison")),
        _ => Err(err("invalid type for comparison")),
    }
}

fn html_escape(x: &str) -> String {
    let mut out = String::with_capacity(x.len());
    for c in x.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn js_escape(x: &str) -> String {
    let mut out = String::with_capacity(x.len());
    for c in x.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Go's `%q` of a string.
fn go_quote(x: &str) -> String {
    let mut out = String::with_capacity(x.len() + 2);
    out.push('"');
    for c in x.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Widths and precisions from 1000 up are refused, as ntfy's guarded `printf`.
const MAX_WIDTH: usize = 999;

/// Go's `fmt.Sprintf` for the verbs templates use: `%v %s %d %f %F %e %g %q %t %x
/// %X %c %%`, flags `-`, `+`, `0`, space, width and precision. Mismatched verbs
/// print Go's `%!d(string=x)` markers.
fn printf(format: &str, args: &[Value], ex: &mut Exec) -> Result<String, TemplateError> {
    let mut out = String::new();
    let mut next = 0;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut minus, mut plus, mut zero, mut space) = (false, false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => minus = true,
                '+' => plus = true,
                '0' => zero = true,
                ' ' => space = true,
                '#' => {}
                _ => break,
            }
            chars.next();
        }
        let number = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
            let mut n: Option<usize> = None;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize));
                chars.next();
            }
            n
        };
        if chars.peek() == Some(&'*') {
            return Err(err("printf width or precision too large"));
        }
        let width = number(&mut chars);
        let mut prec = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            if chars.peek() == Some(&'*') {
                return Err(err("printf width or precision too large"));
            }
            prec = Some(number(&mut chars).unwrap_or(0));
        }
        if width.unwrap_or(0) > MAX_WIDTH || prec.unwrap_or(0) > MAX_WIDTH {
            return Err(err("printf width or precision too large"));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(v) = args.get(next) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next += 1;
        let bad = |v: &Value| format!("%!{verb}({}={})", v.type_name(), v.to_display());
        let sign = |neg: bool| {
            if neg {
                "-"
            } else if plus {
                "+"
            } else if space {
                " "
            } else {
                ""
            }
        };
        let (body, numeric) = match (verb, v) {
            ('v', Value::Float(f)) if prec.is_some() => {
                (format!("{f:.*}", prec.unwrap_or(0)), true)
            }
            ('v', v) => (v.to_display(), matches!(v, Value::Int(_) | Value::Float(_))),
            ('s', Value::Str(x)) => (
                match prec {
                    Some(p) => x.chars().take(p).collect(),
                    None => x.to_string(),
                },
                false,
            ),
            ('s', v @ (Value::List(_) | Value::Map(_) | Value::Bool(_))) => (v.to_display(), false),
            ('d', Value::Int(i)) => (format!("{}{}", sign(*i < 0), i.unsigned_abs()), true),
            ('f' | 'F', Value::Float(f)) => (
                format!("{}{:.*}", sign(*f < 0.0), prec.unwrap_or(6), f.abs()),
                true,
            ),
            ('e', Value::Float(f)) => {
                let raw = format!("{:.*e}", prec.unwrap_or(6), f.abs());
                let (m, e) = raw.split_once('e').unwrap_or((&raw, "0"));
                let e: i32 = e.parse().unwrap_or(0);
                let mut o = format!("{}{m}e", sign(*f < 0.0));
                o.push(if e < 0 { '-' } else { '+' });
                let _ = write!(o, "{:02}", e.unsigned_abs());
                (o, true)
            }
            ('g', Value::Float(f)) => {
                let mut o = String::from(sign(*f < 0.0));
                go_float(f.abs(), &mut o);
                (o, true)
            }
            ('q', Value::Str(x)) => (go_quote(x), false),
            ('t', Value::Bool(b)) => (b.to_string(), false),
            ('x', Value::Int(i)) => (format!("{}{:x}", sign(*i < 0), i.unsigned_abs()), true),
            ('X', Value::Int(i)) => (format!("{}{:X}", sign(*i < 0), i.unsigned_abs()), true),
            ('x', Value::Str(x)) => (x.bytes().map(|b| format!("{b:02x}")).collect(), false),
            ('X', Value::Str(x)) => (x.bytes().map(|b| format!("{b:02X}")).collect(), false),
            ('c', Value::Int(i)) => (
                char::from_u32(u32::try_from(*i).unwrap_or(0xFFFD))
                    .unwrap_or('\u{FFFD}')
                    .to_string(),
                false,
            ),
            (_, v) => (bad(v), false),
        };
        let w = width.unwrap_or(0);
        let len = body.chars().count();
        ex.charge(w.max(len))?;
        if len >= w {
            out.push_str(&body);
        } else if minus {
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', w - len));
        } else if zero && numeric {
            let (sgn, digits) = match body.chars().next() {
                Some(c @ ('-' | '+' | ' ')) => (Some(c), &body[1..]),
                _ => (None, body.as_str()),
            };
            if let Some(c) = sgn {
                out.push(c);
            }
            out.extend(std::iter::repeat_n('0', w - len));
            out.push_str(digits);
        } else {
            out.extend(std::iter::repeat_n(' ', w - len));
            out.push_str(&body);
        }
    }
    if next < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, v) in args[next..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}={}", v.type_name(), v.to_display());
        }
        out.push(')');
    }
    Ok(out)
}
