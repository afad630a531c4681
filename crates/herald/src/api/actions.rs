//! Action buttons (`X-Actions` / `actions=`) in both of ntfy's notations.
//!
//! Publishers send either a JSON array of action objects or the "simple" header form
//! `view, Open portal, https://home.nest.com/, clear=true; http, ...`. Both end up as
//! validated, normalised [`Action`]s with fresh IDs, and both fail with ntfy's
//! `40018 actions invalid; <detail>` so scripts see the same errors as against ntfy.

use std::collections::BTreeMap;
use std::fmt::Display;

use serde_json::Value;

use crate::error::ApiError;
use crate::model::Action;

/// Most actions one message may carry.
pub const MAX_ACTIONS: usize = 3;
/// Intent sent by a `broadcast` action that does not name one (the Android app's default).
pub const DEFAULT_BROADCAST_INTENT: &str = "io.heckel.ntfy.USER_ACTION";
/// Method of an `http` action that does not name one.
pub const DEFAULT_HTTP_METHOD: &str = "POST";
/// Length of the random ID each action gets.
const ACTION_ID_LEN: usize = 10;
const ACTION_TYPES: &[&str] = &["view", "broadcast", "http", "copy"];

/// Parses, validates and normalises an actions value.
///
/// A value starting with `[` (after trimming) is JSON, anything else the simple
/// format. Every action gets a new random `id`; `action` is lower-cased, `method`
/// upper-cased; `http` actions default to `POST`, `broadcast` actions to
/// [`DEFAULT_BROADCAST_INTENT`].
pub fn parse_actions(value: &str) -> Result<Vec<Action>, ApiError> {
    let value = value.trim();
    let mut actions = if value.starts_with('[') {
        parse_json_actions(value)
    } else {
        SimpleParser::new(value).parse()
    }
    .map_err(invalid)?;

    for action in &mut actions {
        action.id = random_id();
        action.action = action.action.to_lowercase();
        action.method = action.method.to_uppercase();
    }
    if actions.len() > MAX_ACTIONS {
        return Err(invalid(format_args!("only {MAX_ACTIONS} actions allowed")));
    }
    for action in &mut actions {
        validate(action).map_err(invalid)?;
        if action.action == "http" && action.method.is_empty() {
            action.method = DEFAULT_HTTP_METHOD.to_string();
        }
        if action.action == "broadcast" && action.intent.is_empty() {
            action.intent = DEFAULT_BROADCAST_INTENT.to_string();
        }
    }
    Ok(actions)
}

fn invalid(detail: impl Display) -> ApiError {
    ApiError::ACTIONS_INVALID.with_detail(detail)
}

fn random_id() -> String {
    (0..ACTION_ID_LEN)
        .map(|_| fastrand::alphanumeric())
        .collect()
}

fn validate(action: &Action) -> Result<(), String> {
    let kind = action.action.as_str();
    if !ACTION_TYPES.contains(&kind) {
        return Err(format!(
            "parameter 'action' cannot be '{kind}', valid values are 'view', 'broadcast', 'http' and 'copy'"
        ));
    }
    if action.label.is_empty() {
        return Err("parameter 'label' is required".to_string());
    }
    if matches!(kind, "view" | "http") && action.url.is_empty() {
        return Err(format!("parameter 'url' is required for action '{kind}'"));
    }
    if kind == "copy" && action.value.is_empty() {
        return Err("parameter 'value' is required for action 'copy'".to_string());
    }
    if kind == "http" && matches!(action.method.as_str(), "GET" | "HEAD") && !action.body.is_empty()
    {
        return Err(format!(
            "parameter 'body' cannot be set if method is {}",
            action.method
        ));
    }
    Ok(())
}

fn parse_json_actions(value: &str) -> Result<Vec<Action>, String> {
    let parsed: Value = serde_json::from_str(value).map_err(|e| format!("JSON error: {e}"))?;
    let Value::Array(items) = parsed else {
        return Err("JSON error: actions must be a JSON array".to_string());
    };
    items.iter().map(action_from_json).collect()
}

/// Decodes one JSON action object the way ntfy's Go decoder does: keys match
/// case-insensitively, unknown keys are ignored, `null` leaves a field empty, and a
/// value of the wrong type is an error. Nothing is validated or normalised here.
pub(crate) fn action_from_json(value: &Value) -> Result<Action, String> {
    let Value::Object(fields) = value else {
        return Err("JSON error: each action must be a JSON object".to_string());
    };
    let mut action = Action::default();
    for (key, value) in fields {
        let key = key.to_ascii_lowercase();
        let target = match key.as_str() {
            "id" => &mut action.id,
            "action" => &mut action.action,
            "label" => &mut action.label,
            "url" => &mut action.url,
            "method" => &mut action.method,
            "body" => &mut action.body,
            "intent" => &mut action.intent,
            "value" => &mut action.value,
            "clear" => {
                action.clear = match value {
                    Value::Bool(b) => *b,
                    Value::Null => false,
                    _ => return Err(type_error(&key, "a boolean")),
                };
                continue;
            }
            "headers" => {
                action.headers = json_string_map(&key, value)?;
                continue;
            }
            "extras" => {
                action.extras = json_string_map(&key, value)?;
                continue;
            }
            _ => continue,
        };
        *target = match value {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            _ => return Err(type_error(&key, "a string")),
        };
    }
    Ok(action)
}

fn json_string_map(key: &str, value: &Value) -> Result<BTreeMap<String, String>, String> {
    match value {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(entries) => entries
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Null => Ok((k.clone(), String::new())),
                _ => Err(type_error(key, "an object of strings")),
            })
            .collect(),
        _ => Err(type_error(key, "an object of strings")),
    }
}

fn type_error(key: &str, expected: &str) -> String {
    format!("JSON error: field '{key}' must be {expected}")
}

/// Parser for the simple format: actions separated by `;`, sections by `,`, each
/// section an optional `key=` followed by a bare or quoted value.
///
/// Positional sections (no `key=`) mean `action`, then `label`, then `url` for
/// view/http or `value` for copy. Quoted values (`"..."` or `'...'`) may contain `,`
/// and `;`, and `\"` (or `\'`) for the quote itself. Bare values are trimmed.
struct SimpleParser<'a> {
    input: &'a str,
    pos: usize,
}

struct Section<'a> {
    key: Option<&'a str>,
    value: String,
    /// Whether this section ended its action (at `;` or the end of input).
    last: bool,
}

impl<'a> SimpleParser<'a> {
    fn new(input: &'a str) -> Self {
        SimpleParser { input, pos: 0 }
    }

    fn parse(mut self) -> Result<Vec<Action>, String> {
        let mut actions = Vec::new();
        self.skip_spaces();
        while !self.at_end() {
            actions.push(self.parse_action()?);
        }
        Ok(actions)
    }

    fn parse_action(&mut self) -> Result<Action, String> {
        let mut action = Action::default();
        let mut index = 0;
        loop {
            let section = self.parse_section()?;
            populate(&mut action, index, section.key, section.value)?;
            self.skip_spaces();
            if section.last {
                return Ok(action);
            }
            index += 1;
        }
    }

    fn parse_section(&mut self) -> Result<Section<'a>, String> {
        self.skip_spaces();
        let key = self.parse_key();
        match self.peek() {
            None => Ok(Section {
                key,
                value: String::new(),
                last: true,
            }),
            Some(c @ (',' | ';')) => {
                self.pos += 1;
                Ok(Section {
                    key,
                    value: String::new(),
                    last: c == ';',
                })
            }
            Some(quote @ ('"' | '\'')) => {
                let (value, last) = self.parse_quoted(quote)?;
                Ok(Section { key, value, last })
            }
            Some(_) => {
                let (value, last) = self.parse_bare();
                Ok(Section { key, value, last })
            }
        }
    }

    /// Consumes `key =` (ntfy's `^([-.\w]+)\s*=\s*`) if the input continues with one.
    fn parse_key(&mut self) -> Option<&'a str> {
        let rest = &self.input[self.pos..];
        let key_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            .count();
        if key_len == 0 {
            return None;
        }
        let after_key = rest[key_len..].trim_start_matches(is_regex_space);
        let after_eq = after_key.strip_prefix('=')?;
        let after_eq = after_eq.trim_start_matches(is_regex_space);
        self.pos += rest.len() - after_eq.len();
        Some(&rest[..key_len])
    }

    fn parse_bare(&mut self) -> (String, bool) {
        let rest = &self.input[self.pos..];
        let end = rest.find([',', ';']).unwrap_or(rest.len());
        let value = rest[..end].trim().to_string();
        let last = !rest[end..].starts_with(',');
        // Step over the separator too (there is none at the end of input).
        self.pos += (end + 1).min(rest.len());
        (value, last)
    }

    fn parse_quoted(&mut self, quote: char) -> Result<(String, bool), String> {
        let start = self.pos + quote.len_utf8();
        let body = &self.input[start..];
        let mut prev = None;
        let mut close = None;
        for (i, c) in body.char_indices() {
            if c == quote && prev != Some('\\') {
                close = Some(i);
                break;
            }
            prev = Some(c);
        }
        let Some(close) = close else {
            return Err(format!(
                "unexpected end of input, quote started at position {start}"
            ));
        };
        let escaped = format!("\\{quote}");
        let value = body[..close].replace(&escaped, &quote.to_string());
        self.pos = start + close + quote.len_utf8();
        self.skip_spaces();
        match self.peek() {
            None => Ok((value, true)),
            Some(c @ (',' | ';')) => {
                self.pos += 1;
                Ok((value, c == ';'))
            }
            Some(c) => Err(format!(
                "unexpected character '{c}' at position {}",
                self.pos
            )),
        }
    }

    fn peek(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn skip_spaces(&mut self) {
        let rest = &self.input[self.pos..];
        let trimmed = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        self.pos += rest.len() - trimmed.len();
    }
}

/// Whitespace as Go's regexp `\s` sees it.
fn is_regex_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r')
}

/// Applies one section to the action being built.
fn populate(
    action: &mut Action,
    index: usize,
    key: Option<&str>,
    value: String,
) -> Result<(), String> {
    let kind = action.action.to_ascii_lowercase();
    let key = match key {
        Some(key) => key,
        None if index == 0 => "action",
        None if index == 1 => "label",
        None if index == 2 && matches!(kind.as_str(), "view" | "http") => "url",
        None if index == 2 && kind == "copy" => "value",
        None => return Err(format!("term '{value}' unknown")),
    };
    if let Some(name) = key.strip_prefix("headers.") {
        action.headers.insert(name.to_string(), value);
        return Ok(());
    }
    if let Some(name) = key.strip_prefix("extras.") {
        action.extras.insert(name.to_string(), value);
        return Ok(());
    }
    match key.to_ascii_lowercase().as_str() {
        "action" => action.action = value,
        "label" => action.label = value,
        "url" => action.url = value,
        "method" => action.method = value,
        "body" => action.body = value,
        "intent" => action.intent = value,
        "value" => action.value = value,
        "clear" => {
            action.clear = match value.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                _ => {
                    return Err(format!(
                        "parameter 'clear' cannot be '{value}', only boolean values are allowed (true/yes/1/false/no/0)"
                    ));
                }
            }
        }
        _ => return Err(format!("key '{key}' unknown")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(value: &str) -> Vec<Action> {
        match parse_actions(value) {
            Ok(actions) => actions,
            Err(e) => panic!("{value:?}: {e}"),
        }
    }

    fn err(value: &str) -> String {
        match parse_actions(value) {
            Ok(actions) => panic!("{value:?} parsed: {actions:?}"),
            Err(e) => {
                assert_eq!(e.code, 40018, "{e}");
                e.error.into_owned()
            }
        }
    }

    /// The action without its random ID, for comparisons.
    fn strip(mut actions: Vec<Action>) -> Vec<Action> {
        for a in &mut actions {
            assert_eq!(a.id.len(), ACTION_ID_LEN);
            assert!(a.id.chars().all(|c| c.is_ascii_alphanumeric()), "{}", a.id);
            a.id.clear();
        }
        actions
    }

    fn action(kind: &str, label: &str) -> Action {
        Action {
            action: kind.into(),
            label: label.into(),
            ..Action::default()
        }
    }

    #[test]
    fn docs_example_view_and_http() {
        let got = strip(ok(
            r#"view, Open portal, https://home.nest.com/, clear=true; http, Turn down, https://api.nest.com/, body='{"temperature": 65}'"#,
        ));
        let view = Action {
            url: "https://home.nest.com/".into(),
            clear: true,
            ..action("view", "Open portal")
        };
        let http = Action {
            url: "https://api.nest.com/".into(),
            method: "POST".into(),
            body: r#"{"temperature": 65}"#.into(),
            ..action("http", "Turn down")
        };
        assert_eq!(got, vec![view, http]);
    }

    #[test]
    fn docs_example_broadcast_with_extras() {
        let got = strip(ok(
            "broadcast, Take picture, extras.cmd=pic, extras.camera=front",
        ));
        let mut expected = action("broadcast", "Take picture");
        expected.intent = DEFAULT_BROADCAST_INTENT.into();
        expected.extras.insert("cmd".into(), "pic".into());
        expected.extras.insert("camera".into(), "front".into());
        assert_eq!(got, vec![expected]);
    }

    #[test]
    fn docs_example_http_with_headers() {
        let got = strip(ok(
            "http, Open door, https://api.nest.com/open/yAxkasd, method=PUT, headers.Authorization=Bearer zAzsx1sk.., body={\"action\": \"unlock\"}",
        ));
        assert_eq!(got.len(), 1);
        let a = &got[0];
        assert_eq!(a.method, "PUT");
        assert_eq!(
            a.headers.get("Authorization").map(String::as_str),
            Some("Bearer zAzsx1sk..")
        );
        // A bare value ends at the next comma: ntfy's docs quote bodies for this reason.
        assert!(
            err("http, a, https://x, body={\"a\": 1, \"b\": 2}").contains("unexpected character")
        );
    }

    #[test]
    fn keyed_and_positional_sections() {
        let got = strip(ok(
            "action=view, label=Open, url=https://a.example/; label = Copy it , action = copy, value = secret",
        ));
        assert_eq!(got[0].url, "https://a.example/");
        assert_eq!(got[1].action, "copy");
        assert_eq!(got[1].value, "secret");
        assert_eq!(got[1].label, "Copy it");

        let copy = strip(ok("copy, Copy code, 123456"));
        assert_eq!(copy[0].value, "123456");
        assert!(copy[0].url.is_empty());
    }

    #[test]
    fn quoting_rules() {
        let got = strip(ok(
            r#"view, "Look ma, commas; and \"quotes\" too", url="https://x.example/?a=1,2"  ; broadcast, 'It\'s me'"#,
        ));
        assert_eq!(got[0].label, r#"Look ma, commas; and "quotes" too"#);
        assert_eq!(got[0].url, "https://x.example/?a=1,2");
        assert_eq!(got[1].label, "It's me");
        // Quoted values keep their inner spaces; bare values are trimmed.
        let got = strip(ok("view, '  padded  ', https://x"));
        assert_eq!(got[0].label, "  padded  ");
        assert!(err(r#"view, "unterminated, https://x"#).contains("unexpected end of input"));
        assert!(err(r#"view, "Label" junk, https://x"#).contains("unexpected character 'j'"));
    }

    #[test]
    fn normalisation() {
        let got = strip(ok("VIEW, Open, https://x; HTTP, Go, https://y, method=get"));
        assert_eq!(got[0].action, "view");
        assert_eq!(got[1].action, "http");
        assert_eq!(got[1].method, "GET");
        // Trailing separators and whitespace are fine.
        assert_eq!(ok("  view, Open, https://x ;  ").len(), 1);
        // IDs differ.
        let two = ok("view, a, https://x; view, b, https://y");
        assert_ne!(two[0].id, two[1].id);
    }

    #[test]
    fn clear_values() {
        for (v, expected) in [
            ("true", true),
            ("YES", true),
            ("1", true),
            ("false", false),
            ("no", false),
            ("0", false),
        ] {
            let got = ok(&format!("view, a, https://x, clear={v}"));
            assert_eq!(got[0].clear, expected, "{v}");
        }
        assert!(
            err("view, a, https://x, clear=maybe").contains("parameter 'clear' cannot be 'maybe'")
        );
    }

    #[test]
    fn validation_errors() {
        assert!(
            err("view, a, https://x; view, b, https://x; view, c, https://x; view, d, https://x")
                .ends_with("only 3 actions allowed")
        );
        assert!(err("dance, Go").contains("parameter 'action' cannot be 'dance'"));
        assert!(err("view, , https://x").contains("parameter 'label' is required"));
        assert!(err("view, Open").contains("parameter 'url' is required for action 'view'"));
        assert!(err("http, Open").contains("parameter 'url' is required for action 'http'"));
        assert!(err("copy, Copy").contains("parameter 'value' is required for action 'copy'"));
        assert!(
            err("http, a, https://x, method=GET, body=x")
                .contains("parameter 'body' cannot be set if method is GET")
        );
        assert!(
            err("http, a, https://x, method=head, body=x")
                .contains("parameter 'body' cannot be set if method is HEAD")
        );
        assert!(err("broadcast, a, positional").contains("term 'positional' unknown"));
        assert!(err("view, a, https://x, color=red").contains("key 'color' unknown"));
        assert!(err("view, a, https://x,").contains("term '' unknown"));
        assert!(err(";").contains("parameter 'action' cannot be ''"));
        let e = parse_actions("dance, Go").unwrap_err();
        assert!(e.error.starts_with("invalid request: actions invalid; "));
    }

    #[test]
    fn json_format() {
        let got = strip(ok(
            r#" [{"action":"view","label":"Open","url":"https://x","clear":true},
                {"Action":"HTTP","LABEL":"Post","url":"https://y","headers":{"X-A":"1"},"body":"b","unknown":5},
                {"action":"broadcast","label":"B","extras":{"k":"v"},"intent":"my.intent"}]"#,
        ));
        assert!(got[0].clear);
        assert_eq!(got[1].action, "http");
        assert_eq!(got[1].label, "Post");
        assert_eq!(got[1].method, "POST");
        assert_eq!(got[1].headers.get("X-A").map(String::as_str), Some("1"));
        assert_eq!(got[2].intent, "my.intent");
        assert_eq!(got[2].extras.get("k").map(String::as_str), Some("v"));

        // A client-supplied ID is replaced.
        let got = ok(r#"[{"id":"mine","action":"copy","label":"C","value":"v"}]"#);
        assert_ne!(got[0].id, "mine");

        assert!(err("[").contains("JSON error"));
        assert!(
            err(r#"[{"action":"view","label":"a","url":"https://x","clear":"yes"}]"#)
                .contains("field 'clear' must be a boolean")
        );
        assert!(
            err(r#"[{"action":"view","label":1,"url":"https://x"}]"#)
                .contains("field 'label' must be a string")
        );
        assert!(
            err(r#"[{"action":"http","label":"a","url":"https://x","headers":{"a":1}}]"#)
                .contains("field 'headers'")
        );
        assert!(err(r#"["view"]"#).contains("must be a JSON object"));
        assert!(err(r#"[{"action":"view","label":"a"}]"#).contains("'url' is required"));
        assert!(err(r#"[{},{},{},{}]"#).contains("only 3 actions allowed"));
        assert_eq!(ok("[]").len(), 0);
    }

    #[test]
    fn serialises_like_ntfy() {
        let got = ok("view, Open, https://x");
        let json = serde_json::to_value(&got[0]).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        for key in ["id", "action", "label", "clear", "url"] {
            assert!(keys.contains(&key.to_string()), "{keys:?}");
        }
        assert!(!keys.contains(&"method".to_string()));
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = parse_actions(&s);
        }

        #[test]
        fn never_panics_on_action_syntax(s in "[a-z=,;'\"\\\\ .\\[\\]{}:]{0,60}") {
            let _ = parse_actions(&s);
        }

        #[test]
        fn quoted_labels_round_trip(label in "[^\\\\\"]{1,30}") {
            let value = format!(r#"view, "{label}", https://x.example/"#);
            let got = parse_actions(&value).unwrap();
            prop_assert_eq!(&got[0].label, &label);
        }

        #[test]
        fn bare_labels_round_trip(label in "[^,;\"'\\s=][^,;=]{0,20}[^,;\\s=]") {
            let value = format!("view, {label}, https://x.example/");
            let got = parse_actions(&value).unwrap();
            prop_assert_eq!(&got[0].label, label.trim());
        }

        #[test]
        fn json_round_trips_through_serialisation(label in "\\PC{1,20}", url in "https://[a-z]{1,10}\\.example/[a-z0-9]{0,8}") {
            let original = Action { action: "view".into(), label, url, clear: true, ..Action::default() };
            let json = serde_json::to_string(&vec![&original]).unwrap();
            let mut got = parse_actions(&json).unwrap();
            got[0].id.clear();
            prop_assert_eq!(&got[0], &original);
        }
    }
}
