//! Publishing as JSON (`PUT`/`POST /` with a JSON body, ntfy's `transformBodyJSON`,
//! https://docs.ntfy.sh/publish/#publish-as-json): the body becomes what a publish with
//! headers would carry, so it is validated by the same [`super::parse_publish`].

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::rfc2047::encode_rfc2047;
use crate::api::actions::action_from_json;
use crate::error::ApiError;
use crate::model::{Action, topic};

/// A JSON publish (`PUT/POST /` with a JSON body), turned into what a normal publish
/// to `/<topic>` with headers would carry (ntfy's `transformBodyJSON`).
#[derive(Debug, Clone)]
pub struct JsonPublish {
    pub topic: String,
    /// `X-*` headers equivalent to the JSON fields. They replace same-named headers of
    /// the original request; values that are not valid header bytes are RFC 2047-encoded,
    /// which [`super::ParamSource::get`] undoes.
    pub headers: HeaderMap,
    /// The request body to publish with. Always `Some`: like ntfy, a missing or empty
    /// `message` becomes `triggered`, so the usual body rules apply to it.
    pub message: Option<String>,
}

/// Fields of ntfy's `publishMessage` that carry over; names match case-insensitively
/// (as Go's JSON decoder does) and unknown fields are ignored.
#[derive(Default)]
struct JsonFields {
    topic: String,
    message: String,
    title: String,
    priority: i64,
    tags: Vec<String>,
    click: String,
    icon: String,
    actions: Vec<Action>,
    attach: String,
    markdown: bool,
    filename: String,
    email: String,
    call: String,
    cache: String,
    firebase: String,
    delay: String,
    sequence_id: String,
    /// herald's idempotent publishing (an extension of ntfy's fields).
    idempotency_key: String,
}

/// Converts a JSON publish body (docs/COMPATIBILITY.md §2.6). Malformed JSON or a
/// field of the wrong type (e.g. `"priority": "high"`, `"cache": false`) is
/// `JSON_INVALID`; a missing or invalid topic is `TOPIC_INVALID`. Field values are not
/// validated here: they go through [`super::parse_publish`] like header values. The
/// body size limit is the caller's.
pub fn parse_json_publish(body: &[u8]) -> Result<JsonPublish, ApiError> {
    // Like Go's json.Decoder, read one value and ignore whatever follows it.
    let value = serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()
        .ok_or(ApiError::JSON_INVALID)?
        .map_err(|_| ApiError::JSON_INVALID)?;
    let object = match value {
        Value::Object(object) => object,
        // Go decodes `null` into an empty struct: no topic.
        Value::Null => serde_json::Map::new(),
        _ => return Err(ApiError::JSON_INVALID),
    };
    let mut f = JsonFields::default();
    for (key, value) in &object {
        match key.to_ascii_lowercase().as_str() {
            "topic" => f.topic = json_string(value)?,
            "message" => f.message = json_string(value)?,
            "title" => f.title = json_string(value)?,
            "priority" => f.priority = json_int(value)?,
            "tags" => f.tags = json_string_list(value)?,
            "click" => f.click = json_string(value)?,
            "icon" => f.icon = json_string(value)?,
            "actions" => f.actions = json_actions(value)?,
            "attach" => f.attach = json_string(value)?,
            "markdown" => f.markdown = json_bool(value)?,
            "filename" => f.filename = json_string(value)?,
            "email" => f.email = json_string(value)?,
            "call" => f.call = json_string(value)?,
            "cache" => f.cache = json_string(value)?,
            "firebase" => f.firebase = json_string(value)?,
            "delay" => f.delay = json_string(value)?,
            "sequence_id" => f.sequence_id = json_string(value)?,
            "idempotency_key" => f.idempotency_key = json_string(value)?,
            _ => {}
        }
    }
    if !topic::is_valid_name(&f.topic) {
        return Err(ApiError::TOPIC_INVALID);
    }

    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: &str| {
        if !value.is_empty() {
            headers.insert(HeaderName::from_static(name), header_value(value));
        }
    };
    set("x-title", &f.title);
    if f.priority != 0 {
        set("x-priority", &f.priority.to_string());
    }
    set("x-tags", &f.tags.join(","));
    set("x-attach", &f.attach);
    set("x-filename", &f.filename);
    set("x-click", &f.click);
    set("x-icon", &f.icon);
    if f.markdown {
        set("x-markdown", "yes");
    }
    if !f.actions.is_empty() {
        let encoded = serde_json::to_string(&f.actions).map_err(|_| ApiError::JSON_INVALID)?;
        set("x-actions", &encoded);
    }
    set("x-email", &f.email);
    set("x-delay", &f.delay);
    set("x-call", &f.call);
    set("x-cache", &f.cache);
    set("x-firebase", &f.firebase);
    set("x-sequence-id", &f.sequence_id);
    set("idempotency-key", &f.idempotency_key);

    let message = if f.message.is_empty() {
        "triggered".to_string()
    } else {
        f.message
    };
    Ok(JsonPublish {
        topic: f.topic,
        headers,
        message: Some(message),
    })
}

/// `value` as a header value: verbatim when it is valid header bytes (UTF-8 included),
/// else as an RFC 2047 word, so control characters such as newlines survive.
fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| {
        // Base64 text is plain ASCII, which is always a valid header value.
        HeaderValue::from_str(&encode_rfc2047(value)).unwrap_or(HeaderValue::from_static(""))
    })
}

fn json_string(value: &Value) -> Result<String, ApiError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        _ => Err(ApiError::JSON_INVALID),
    }
}

fn json_int(value: &Value) -> Result<i64, ApiError> {
    match value {
        Value::Null => Ok(0),
        // Go's int field rejects fractions and exponents, which serde keeps as floats.
        Value::Number(n) => n.as_i64().ok_or(ApiError::JSON_INVALID),
        _ => Err(ApiError::JSON_INVALID),
    }
}

fn json_bool(value: &Value) -> Result<bool, ApiError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Null => Ok(false),
        _ => Err(ApiError::JSON_INVALID),
    }
}

fn json_string_list(value: &Value) -> Result<Vec<String>, ApiError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(json_string).collect(),
        _ => Err(ApiError::JSON_INVALID),
    }
}

fn json_actions(value: &Value) -> Result<Vec<Action>, ApiError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|item| action_from_json(item).map_err(|_| ApiError::JSON_INVALID))
            .collect(),
        _ => Err(ApiError::JSON_INVALID),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::params::ParamSource;
    use crate::api::params::publish::parse_publish;
    use crate::api::params::publish::{PublishLimits, PublishParams};
    use crate::api::params::test_support::*;
    use proptest::prelude::*;

    fn json_publish_to_params(body: &str) -> Result<(JsonPublish, PublishParams), ApiError> {
        let json = parse_json_publish(body.as_bytes())?;
        let src = ParamSource {
            headers: &json.headers,
            query: &[],
        };
        let params = parse_publish(&src, &PublishLimits::default(), NOW)?;
        Ok((json, params))
    }

    #[test]
    fn json_publish_full() {
        let (json, p) = json_publish_to_params(
            r#"{
                "topic": "mytopic",
                "message": "Disk space is low at 5.1 GB",
                "title": "Low disk space alert",
                "tags": ["warning", "cd"],
                "priority": 4,
                "attach": "https://filesrv.lan/space.jpg",
                "filename": "diskspace.jpg",
                "click": "https://homecamera.lan/xasds1h2xsSsa/",
                "icon": "https://x.example/i.png",
                "markdown": true,
                "actions": [{"action": "view", "label": "Admin panel", "url": "https://filesrv.lan/admin"}],
                "delay": "30m",
                "cache": "yes",
                "firebase": "no",
                "sequence_id": "disk-alert",
                "unknown": {"ignored": true}
            }"#,
        )
        .unwrap();
        assert_eq!(json.topic, "mytopic");
        assert_eq!(json.message.as_deref(), Some("Disk space is low at 5.1 GB"));
        assert_eq!(p.title, "Low disk space alert");
        assert_eq!(p.tags, ["warning", "cd"]);
        assert_eq!(p.priority, 4);
        assert_eq!(p.attach.as_deref(), Some("https://filesrv.lan/space.jpg"));
        assert_eq!(p.filename.as_deref(), Some("diskspace.jpg"));
        assert_eq!(p.click, "https://homecamera.lan/xasds1h2xsSsa/");
        assert_eq!(p.icon, "https://x.example/i.png");
        assert!(p.markdown);
        assert_eq!(p.actions.len(), 1);
        assert_eq!(p.actions[0].label, "Admin panel");
        assert_eq!(p.delay, Some(NOW + 1800));
        assert!(p.cache);
        assert!(!p.firebase);
        assert_eq!(p.sequence_id.as_deref(), Some("disk-alert"));
    }

    #[test]
    fn json_publish_minimal_and_defaults() {
        let (json, p) = json_publish_to_params(r#"{"topic":"t"}"#).unwrap();
        assert_eq!(json.message.as_deref(), Some("triggered"));
        assert!(json.headers.is_empty());
        assert_eq!(p, publish_ok(&[], &[]));
        // Keys match case-insensitively, like Go's decoder; trailing data is ignored.
        let (json, p) = json_publish_to_params(r#"{"Topic":"t","TITLE":"x"} trailing"#).unwrap();
        assert_eq!(json.topic, "t");
        assert_eq!(p.title, "x");
        // Nulls are empty values.
        let (_, p) = json_publish_to_params(
            r#"{"topic":"t","title":null,"priority":null,"tags":null,"actions":null,"markdown":null}"#,
        )
        .unwrap();
        assert_eq!(p, publish_ok(&[], &[]));
    }

    #[test]
    fn json_publish_errors() {
        let code = |body: &str| {
            parse_json_publish(body.as_bytes())
                .map(|_| ())
                .map_err(|e| e.code)
        };
        assert_eq!(code(""), Err(40024));
        assert_eq!(code("{"), Err(40024));
        assert_eq!(code("[]"), Err(40024));
        assert_eq!(code("\"t\""), Err(40024));
        assert_eq!(code(r#"{"topic":"t","priority":"high"}"#), Err(40024));
        assert_eq!(code(r#"{"topic":"t","priority":4.5}"#), Err(40024));
        assert_eq!(code(r#"{"topic":"t","cache":false}"#), Err(40024));
        assert_eq!(code(r#"{"topic":"t","tags":"a,b"}"#), Err(40024));
        assert_eq!(code(r#"{"topic":"t","markdown":"yes"}"#), Err(40024));
        assert_eq!(
            code(r#"{"topic":"t","actions":[{"clear":"yes"}]}"#),
            Err(40024)
        );
        assert_eq!(code(r#"{"topic":"t","actions":{}}"#), Err(40024));
        assert_eq!(code(r#"{"topic":5}"#), Err(40024));
        assert_eq!(code(r#"{"message":"no topic"}"#), Err(40009));
        assert_eq!(code(r#"{"topic":"a/b"}"#), Err(40009));
        assert_eq!(code(r#"{"topic":""}"#), Err(40009));
        assert_eq!(code("null"), Err(40009));
        // Invalid values surface later, through the normal publish rules.
        assert_eq!(
            json_publish_to_params(r#"{"topic":"t","priority":7}"#).map(|_| ()),
            Err(ApiError::PRIORITY_INVALID)
        );
        assert_eq!(
            json_publish_to_params(r#"{"topic":"t","email":"a@b.c"}"#).map(|_| ()),
            Err(ApiError::EMAIL_DISABLED)
        );
        assert_eq!(
            json_publish_to_params(r#"{"topic":"t","call":"yes"}"#).map(|_| ()),
            Err(ApiError::PHONE_CALLS_DISABLED)
        );
        assert_eq!(
            json_publish_to_params(r#"{"topic":"t","actions":[{"action":"view","label":"x"}]}"#)
                .map_err(|e| e.code)
                .map(|_| ()),
            Err(40018)
        );
    }

    #[test]
    fn json_publish_carries_awkward_values() {
        let (_, p) = json_publish_to_params(
            r#"{"topic":"t","title":"two\nlines — ünïcödé 🎉","tags":["ä","b\u0007"]}"#,
        )
        .unwrap();
        assert_eq!(p.title, "two\nlines — ünïcödé 🎉");
        assert_eq!(p.tags, ["ä", "b\u{7}"]);
    }

    proptest! {
        #[test]
        fn json_title_round_trips(title in "\\PC{0,40}") {
            let body = serde_json::json!({"topic": "t", "title": title}).to_string();
            let (_, p) = json_publish_to_params(&body).unwrap();
            prop_assert_eq!(p.title, title.trim());
        }

        #[test]
        fn json_publish_never_panics(body in "\\PC{0,80}") {
            let _ = parse_json_publish(body.as_bytes());
        }
    }
}
