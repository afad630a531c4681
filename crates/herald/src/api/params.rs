//! Reading publish and subscribe parameters from a request, by ntfy's rules.
//!
//! ntfy lets every parameter arrive under several names, as a header or in the query
//! string (`X-Title`, `Title`, `t`, `?title=`), with MIME-encoded header values and a few
//! quirks that real clients depend on. This module reproduces those rules so that the
//! HTTP handlers deal only in validated [`PublishParams`] / [`SubscribeParams`]; it knows
//! nothing about bodies, topics in paths, storage or limits beyond the delay window.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde_json::Value;

use crate::api::actions::{action_from_json, parse_actions};
use crate::error::ApiError;
use crate::model::{Action, Message, id as message_id, topic};
use crate::time::{parse_future_time, parse_go_duration_nanos};

/// The accepted names of each parameter, exactly ntfy's (docs/COMPATIBILITY.md §2.2
/// and §3.2).
/// Headers are matched case-insensitively, query parameters only in this lowercase form.
pub mod names {
    pub const MESSAGE: &[&str] = &["x-message", "message", "m"];
    pub const TITLE: &[&str] = &["x-title", "title", "t"];
    pub const PRIORITY: &[&str] = &["x-priority", "priority", "prio", "p"];
    pub const TAGS: &[&str] = &["x-tags", "tags", "tag", "ta"];
    pub const DELAY: &[&str] = &["x-delay", "delay", "x-at", "at", "x-in", "in"];
    pub const ACTIONS: &[&str] = &["x-actions", "actions", "action"];
    pub const CLICK: &[&str] = &["x-click", "click"];
    pub const ATTACH: &[&str] = &["x-attach", "attach", "a"];
    pub const FILENAME: &[&str] = &["x-filename", "filename", "file", "f"];
    pub const ICON: &[&str] = &["x-icon", "icon"];
    pub const EMAIL: &[&str] = &["x-email", "x-e-mail", "email", "e-mail", "mail", "e"];
    pub const CALL: &[&str] = &["x-call", "call"];
    pub const TEMPLATE: &[&str] = &["x-template", "template", "tpl"];
    pub const CACHE: &[&str] = &["x-cache", "cache"];
    pub const FIREBASE: &[&str] = &["x-firebase", "firebase"];
    pub const MARKDOWN: &[&str] = &["x-markdown", "markdown", "md"];
    pub const CONTENT_TYPE: &[&str] = &["content-type", "content_type"];
    pub const UNIFIEDPUSH: &[&str] = &["x-unifiedpush", "unifiedpush", "up"];
    pub const POLL_ID: &[&str] = &["x-poll-id", "poll-id"];
    pub const SEQUENCE_ID: &[&str] = &["x-sequence-id", "sequence-id", "sid"];

    pub const POLL: &[&str] = &["x-poll", "poll", "po"];
    pub const SINCE: &[&str] = &["x-since", "since", "si"];
    pub const SCHEDULED: &[&str] = &["x-scheduled", "scheduled", "sched"];
    pub const ID: &[&str] = &["x-id", "id"];
}

/// Where parameters come from: the request headers and its decoded query pairs.
#[derive(Debug, Clone, Copy)]
pub struct ParamSource<'a> {
    pub headers: &'a HeaderMap,
    pub query: &'a [(String, String)],
}

impl ParamSource<'_> {
    /// The first non-empty value among `names` (ntfy's `readParam`): every name as a
    /// header first, then every name as a query parameter.
    ///
    /// Header values are decoded from RFC 2047 encoded-words (`=?UTF-8?B?...?=`, also
    /// `Q` and the ISO-8859-1 / US-ASCII charsets) and, if not valid UTF-8, decoded
    /// lossily (invalid bytes become U+FFFD) rather than dropped, because ntfy keeps
    /// such text too. Of repeated headers or query keys only the first counts. Values
    /// are trimmed; empty ones count as absent. An RFC 9218 `Priority: u=N[, i]` header,
    /// which proxies such as Cloudflare add on their own, is ignored.
    pub fn get(&self, names: &[&str]) -> Option<String> {
        names
            .iter()
            .find_map(|name| self.header(name))
            .or_else(|| names.iter().find_map(|name| self.query_param(name)))
    }

    /// A boolean parameter (ntfy's `readBoolParam`): `1`, `yes`, `true` (any case) are
    /// true, any other value false, and an absent one `default`.
    pub fn get_bool(&self, names: &[&str], default: bool) -> bool {
        self.get(names).map_or(default, |v| to_bool(&v))
    }

    fn header(&self, name: &str) -> Option<String> {
        // A linear scan of the request's few headers, not `HeaderMap::get(&str)`:
        // `get` parses and hashes the name on every call, and a publish looks up
        // some sixty aliases, nearly all absent (a quarter of a publish's
        // instructions under callgrind before this). Names in the map are
        // lowercase; `iter` yields a repeated header's first value first.
        let (_, raw) = self
            .headers
            .iter()
            .find(|(key, _)| key.as_str().eq_ignore_ascii_case(name))?;
        let text = String::from_utf8_lossy(raw.as_bytes());
        let decoded = decode_rfc2047(&text);
        let value = decoded.trim();
        if value.is_empty() || (name.eq_ignore_ascii_case("priority") && is_rfc9218_priority(value))
        {
            return None;
        }
        Some(value.to_string())
    }

    fn query_param(&self, name: &str) -> Option<String> {
        // Query names match only in their lowercase form, which is how every name
        // in [`names`] is written: compare as is, no lowercased copy per alias.
        debug_assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
        let (_, value) = self.query.iter().find(|(key, _)| key == name)?;
        let value = value.trim();
        (!value.is_empty()).then(|| value.to_string())
    }
}

fn to_bool(value: &str) -> bool {
    matches!(value.to_ascii_lowercase().as_str(), "1" | "yes" | "true")
}

/// Whether a `Priority` header value is RFC 9218's (`u=N` or `u=N, i` / `u=N, N`).
fn is_rfc9218_priority(value: &str) -> bool {
    let Some(rest) = value.strip_prefix("u=") else {
        return false;
    };
    let bytes = rest.as_bytes();
    match bytes {
        [d] => d.is_ascii_digit(),
        [d, b',', tail @ ..] if d.is_ascii_digit() => {
            let tail = match tail.iter().position(|b| !b" \t\n\x0c\r".contains(b)) {
                Some(start) => &tail[start..],
                None => return false,
            };
            matches!(tail, [b'i'] | [b'0'..=b'9'])
        }
        _ => false,
    }
}

/// Decodes the RFC 2047 encoded-words in a header value, as Go's `mime.WordDecoder`
/// does: whitespace between adjacent words disappears, malformed words stay as they
/// are, and a word in an unknown charset leaves the whole value undecoded.
pub fn decode_rfc2047(value: &str) -> Cow<'_, str> {
    if !value.contains("=?") {
        return Cow::Borrowed(value);
    }
    match decode_encoded_words(value.as_bytes()) {
        Some(decoded) => Cow::Owned(decoded),
        None => Cow::Borrowed(value),
    }
}

fn decode_encoded_words(input: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    let mut after_word = false;
    while let Some(start) = find(rest, b"=?") {
        let Some(word) = EncodedWord::split(&rest[start..]) else {
            break;
        };
        let Some(payload) = word.payload() else {
            // Not decodable after all: keep its "=?" and look for a word further on.
            out.extend_from_slice(&rest[..start + 2]);
            rest = &rest[start + 2..];
            after_word = false;
            continue;
        };
        let gap = &rest[..start];
        if !after_word || gap.iter().any(|b| !b" \t\r\n".contains(b)) {
            out.extend_from_slice(gap);
        }
        append_in_charset(&mut out, word.charset, &payload)?;
        rest = &rest[start + word.len..];
        after_word = true;
    }
    out.extend_from_slice(rest);
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// `=?charset?encoding?text?=`, split but not decoded.
struct EncodedWord<'a> {
    charset: &'a [u8],
    encoding: u8,
    text: &'a [u8],
    /// Bytes from the opening `=?` through the closing `?=`.
    len: usize,
}

impl<'a> EncodedWord<'a> {
    /// Splits the word at the start of `s` (which begins with `=?`).
    fn split(s: &'a [u8]) -> Option<Self> {
        let body = s.get(2..)?;
        let charset_len = body.iter().position(|b| *b == b'?')?;
        let after_charset = &body[charset_len + 1..];
        // Shortest remainder: encoding, '?', empty text, "?=".
        if after_charset.len() < 4 || after_charset[1] != b'?' {
            return None;
        }
        let text_area = &after_charset[2..];
        let text_len = find(text_area, b"?=")?;
        Some(EncodedWord {
            charset: &body[..charset_len],
            encoding: after_charset[0],
            text: &text_area[..text_len],
            len: 2 + charset_len + 1 + 2 + text_len + 2,
        })
    }

    fn payload(&self) -> Option<Vec<u8>> {
        match self.encoding {
            b'B' | b'b' => {
                // Go's decoder skips line breaks and tolerates non-zero trailing bits.
                const LENIENT: GeneralPurpose = GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
                );
                let text: Vec<u8> = self
                    .text
                    .iter()
                    .copied()
                    .filter(|b| !matches!(b, b'\r' | b'\n'))
                    .collect();
                LENIENT.decode(text).ok()
            }
            b'Q' | b'q' => q_decode(self.text),
            _ => None,
        }
    }
}

fn q_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'_' => out.push(b' '),
            b'=' => {
                let high = hex_value(bytes.next()?)?;
                let low = hex_value(bytes.next()?)?;
                out.push(high << 4 | low);
            }
            b' '..=b'~' | b'\n' | b'\r' | b'\t' => out.push(b),
            _ => return None,
        }
    }
    Some(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Appends `payload` converted to UTF-8; `None` for a charset Go does not know either.
fn append_in_charset(out: &mut Vec<u8>, charset: &[u8], payload: &[u8]) -> Option<()> {
    if charset.eq_ignore_ascii_case(b"utf-8") {
        // Left as is; invalid sequences are replaced when the whole value is converted.
        out.extend_from_slice(payload);
    } else if charset.eq_ignore_ascii_case(b"iso-8859-1") {
        let mut buf = [0u8; 4];
        for &b in payload {
            out.extend_from_slice(char::from(b).encode_utf8(&mut buf).as_bytes());
        }
    } else if charset.eq_ignore_ascii_case(b"us-ascii") {
        for &b in payload {
            if b.is_ascii() {
                out.push(b);
            } else {
                out.extend_from_slice("\u{fffd}".as_bytes());
            }
        }
    } else {
        return None;
    }
    Some(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Encodes `value` as a single RFC 2047 `B` word, which [`ParamSource::get`] decodes.
fn encode_rfc2047(value: &str) -> String {
    format!("=?UTF-8?B?{}?=", STANDARD.encode(value))
}

/// Parses a priority: `1`–`5` or `min`, `low`, `default`, `high`, `max`/`urgent` in any
/// case; empty means "not set" (0).
pub fn parse_priority(value: &str) -> Result<u8, ApiError> {
    match value.trim().to_lowercase().as_str() {
        "" => Ok(0),
        "1" | "min" => Ok(1),
        "2" | "low" => Ok(2),
        "3" | "default" => Ok(3),
        "4" | "high" => Ok(4),
        "5" | "max" | "urgent" => Ok(5),
        _ => Err(ApiError::PRIORITY_INVALID),
    }
}

/// A comma-separated list, entries trimmed, empty entries dropped.
fn split_list(value: Option<String>) -> Vec<String> {
    value
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// ntfy's `^https?://` (case-sensitive, as in Go).
fn is_http_url(value: &str) -> bool {
    value.starts_with("http://") || value.starts_with("https://")
}

/// Everything a publish request may say besides its topic and body, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishParams {
    /// `message=`/`X-Message`, with literal `\n` turned into newlines. The body, if
    /// non-empty, takes precedence; that decision is the caller's.
    pub message: Option<String>,
    pub title: String,
    /// 1..=5, or 0 when not set.
    pub priority: u8,
    pub tags: Vec<String>,
    /// Delivery time as an absolute unix second, already within the allowed window.
    pub delay: Option<i64>,
    pub actions: Vec<Action>,
    pub click: String,
    pub icon: String,
    /// External attachment URL (`http://` or `https://`).
    pub attach: Option<String>,
    /// Attachment name; its presence also means "the body is an attachment".
    pub filename: Option<String>,
    /// Render as Markdown (`content_type: text/markdown`).
    pub markdown: bool,
    /// Store the message (default true). False for poll requests.
    pub cache: bool,
    /// Forward to Firebase (default true). False for UnifiedPush messages.
    pub firebase: bool,
    /// UnifiedPush message: body kept verbatim or base64-encoded if binary.
    pub unifiedpush: bool,
    /// Set for iOS poll requests (a `poll_request` event, never cached).
    pub poll_id: Option<String>,
    /// From the headers or query only; a sequence ID in the path is the caller's.
    pub sequence_id: Option<String>,
}

/// Bounds for scheduled delivery (ntfy's `message-delay-limit` and its minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    /// A delay must be at least this many seconds from now.
    pub delay_min_secs: i64,
    /// A delay may be at most this many seconds from now.
    pub delay_max_secs: i64,
}

impl Default for PublishLimits {
    fn default() -> Self {
        PublishLimits {
            delay_min_secs: 10,
            delay_max_secs: 3 * 24 * 3600,
        }
    }
}

/// Reads and validates the publish parameters (ntfy's `parsePublishParams`), failing
/// with the first error in ntfy's order.
///
/// herald has neither SMTP, phone calls nor templates yet, so any `email`, `call` or
/// enabled `template` parameter is rejected with ntfy's "not enabled" error. As in
/// ntfy, a UnifiedPush message is not forwarded to Firebase, and a poll request is
/// neither cached nor treated as UnifiedPush.
pub fn parse_publish(
    src: &ParamSource<'_>,
    limits: &PublishLimits,
    now: i64,
) -> Result<PublishParams, ApiError> {
    let mut cache = src.get_bool(names::CACHE, true);
    let mut firebase = src.get_bool(names::FIREBASE, true);
    let title = src.get(names::TITLE).unwrap_or_default();
    let click = src.get(names::CLICK).unwrap_or_default();
    let icon = src.get(names::ICON).unwrap_or_default();
    let filename = src.get(names::FILENAME);
    let attach = src.get(names::ATTACH);
    if attach.as_deref().is_some_and(|url| !is_http_url(url)) {
        return Err(ApiError::ATTACHMENT_URL_INVALID);
    }
    if !icon.is_empty() && !is_http_url(&icon) {
        return Err(ApiError::ICON_URL_INVALID);
    }
    if src.get(names::EMAIL).is_some() {
        return Err(ApiError::EMAIL_DISABLED);
    }
    if src.get(names::CALL).is_some() {
        return Err(ApiError::PHONE_CALLS_DISABLED);
    }
    if src
        .get(names::TEMPLATE)
        .is_some_and(|t| !matches!(t.to_ascii_lowercase().as_str(), "no" | "false" | "0"))
    {
        return Err(ApiError::TEMPLATE_NOT_ENABLED);
    }
    let message = src.get(names::MESSAGE).map(|m| m.replace("\\n", "\n"));
    let priority = parse_priority(&src.get(names::PRIORITY).unwrap_or_default())?;
    let tags = split_list(src.get(names::TAGS));
    let delay = match src.get(names::DELAY) {
        None => None,
        Some(value) => {
            if !cache {
                return Err(ApiError::DELAY_NO_CACHE);
            }
            let at = parse_future_time(&value, now)?;
            if at < now.saturating_add(limits.delay_min_secs) {
                return Err(ApiError::DELAY_TOO_SMALL);
            }
            if at > now.saturating_add(limits.delay_max_secs) {
                return Err(ApiError::DELAY_TOO_LARGE);
            }
            Some(at)
        }
    };
    let actions = match src.get(names::ACTIONS) {
        Some(value) => parse_actions(&value)?,
        None => Vec::new(),
    };
    let markdown = src.get_bool(names::MARKDOWN, false)
        || src
            .get(names::CONTENT_TYPE)
            .is_some_and(|ct| is_markdown_content_type(&ct));
    let mut unifiedpush = src.get_bool(names::UNIFIEDPUSH, false)
        || src
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"aes128gcm"));
    if unifiedpush {
        firebase = false;
    }
    let poll_id = src.get(names::POLL_ID);
    if poll_id.is_some() {
        unifiedpush = false;
        cache = false;
    }
    let sequence_id = src.get(names::SEQUENCE_ID);
    if sequence_id
        .as_deref()
        .is_some_and(|sid| !topic::is_valid_name(sid))
    {
        return Err(ApiError::SEQUENCE_ID_INVALID);
    }
    Ok(PublishParams {
        message,
        title,
        priority,
        tags,
        delay,
        actions,
        click,
        icon,
        attach,
        filename,
        markdown,
        cache,
        firebase,
        unifiedpush,
        poll_id,
        sequence_id,
    })
}

/// `text/markdown`, ignoring case and any `; charset=...` parameters.
fn is_markdown_content_type(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/markdown"))
}

/// A JSON publish (`PUT/POST /` with a JSON body), turned into what a normal publish
/// to `/<topic>` with headers would carry (ntfy's `transformBodyJSON`).
#[derive(Debug, Clone)]
pub struct JsonPublish {
    pub topic: String,
    /// `X-*` headers equivalent to the JSON fields. They replace same-named headers of
    /// the original request; values that are not valid header bytes are RFC 2047-encoded,
    /// which [`ParamSource::get`] undoes.
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
}

/// Converts a JSON publish body (docs/COMPATIBILITY.md §2.6). Malformed JSON or a
/// field of the wrong type (e.g. `"priority": "high"`, `"cache": false`) is `JSON_INVALID`; a missing or
/// invalid topic is `TOPIC_INVALID`. Field values are not validated here: they go
/// through [`parse_publish`] like header values. The body size limit is the caller's.
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

/// Which cached messages a subscription wants first (`since=`, docs/COMPATIBILITY.md
/// §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinceParam {
    /// No `since`: all cached messages when polling, none when streaming.
    Unset,
    /// `all`: every cached message.
    All,
    /// `none`: no cached messages.
    None,
    /// `latest`: the most recent published message of each topic.
    Latest,
    /// A message ID: messages after it (all of them if the ID is unknown).
    Id(String),
    /// Messages with `time` at or after this unix second (from a timestamp or a
    /// duration back from now).
    Time(i64),
}

/// Parses a `since` value: keyword, then 12-character message ID, then unix timestamp,
/// then Go duration back from `now` (`10m`, `1h30m`; no `d`). Anything else, including
/// `1d`, is `SINCE_INVALID`.
pub fn parse_since(value: Option<&str>, now: i64) -> Result<SinceParam, ApiError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(SinceParam::Unset);
    };
    match value {
        "all" => return Ok(SinceParam::All),
        "none" => return Ok(SinceParam::None),
        "latest" => return Ok(SinceParam::Latest),
        _ => {}
    }
    if message_id::is_valid(value) {
        return Ok(SinceParam::Id(value.to_string()));
    }
    if let Ok(ts) = value.parse::<i64>() {
        return Ok(SinceParam::Time(ts));
    }
    if let Some(nanos) = parse_go_duration_nanos(value) {
        // Go's `now.Add(-d).Unix()` rounds down; a negative duration points ahead.
        let at = (i128::from(now) * 1_000_000_000 - i128::from(nanos)).div_euclid(1_000_000_000);
        return i64::try_from(at)
            .map(SinceParam::Time)
            .map_err(|_| ApiError::SINCE_INVALID);
    }
    Err(ApiError::SINCE_INVALID)
}

/// Subscription filters (`id`, `message`, `title`, `priority`, `tags` parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Exact message ID.
    pub id: Option<String>,
    /// Exact message text.
    pub message: Option<String>,
    /// Exact title.
    pub title: Option<String>,
    /// Any of these priorities (an unset priority counts as 3).
    pub priorities: Vec<u8>,
    /// All of these tags.
    pub tags: Vec<String>,
}

impl Filters {
    /// Whether `m` passes. Filters only apply to content events (`message`,
    /// `message_delete`, `message_clear`); `open`, `keepalive` and `poll_request`
    /// always pass.
    pub fn pass(&self, m: &Message) -> bool {
        if !m.event.is_content() {
            return true;
        }
        let matches = |filter: &Option<String>, actual: &str| {
            filter.as_deref().is_none_or(|wanted| wanted == actual)
        };
        matches(&self.id, &m.id)
            && matches(&self.message, &m.message)
            && matches(&self.title, &m.title)
            && (self.priorities.is_empty() || self.priorities.contains(&m.effective_priority()))
            && self.tags.iter().all(|tag| m.tags.contains(tag))
    }

    /// Whether no filter is set (every message passes).
    pub fn is_empty(&self) -> bool {
        self == &Filters::default()
    }
}

/// Everything a subscribe request may say besides its topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeParams {
    /// Return cached messages and close, without `open` or keepalive events.
    pub poll: bool,
    pub since: SinceParam,
    /// Include scheduled messages that are not delivered yet.
    pub scheduled: bool,
    pub filters: Filters,
}

/// Reads the subscribe parameters (ntfy's `parseSubscribeParams`).
pub fn parse_subscribe(src: &ParamSource<'_>, now: i64) -> Result<SubscribeParams, ApiError> {
    let poll = src.get_bool(names::POLL, false);
    let scheduled = src.get_bool(names::SCHEDULED, false);
    let since = parse_since(src.get(names::SINCE).as_deref(), now)?;
    let priorities = split_list(src.get(names::PRIORITY))
        .iter()
        .map(|p| parse_priority(p))
        .collect::<Result<Vec<_>, _>>()?;
    let filters = Filters {
        id: src.get(names::ID),
        message: src.get(names::MESSAGE),
        title: src.get(names::TITLE),
        priorities,
        tags: split_list(src.get(names::TAGS)),
    };
    Ok(SubscribeParams {
        poll,
        since,
        scheduled,
        filters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;
    use proptest::prelude::*;

    /// Wednesday 2024-05-15 11:30:00 UTC.
    const NOW: i64 = 1_715_772_600;

    fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        map
    }

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn get(headers: &[(&str, &str)], q: &[(&str, &str)], names: &[&str]) -> Option<String> {
        let headers = header_map(headers);
        let q = query(q);
        ParamSource {
            headers: &headers,
            query: &q,
        }
        .get(names)
    }

    fn publish(headers: &[(&str, &str)], q: &[(&str, &str)]) -> Result<PublishParams, ApiError> {
        let headers = header_map(headers);
        let q = query(q);
        let src = ParamSource {
            headers: &headers,
            query: &q,
        };
        parse_publish(&src, &PublishLimits::default(), NOW)
    }

    fn publish_ok(headers: &[(&str, &str)], q: &[(&str, &str)]) -> PublishParams {
        match publish(headers, q) {
            Ok(p) => p,
            Err(e) => panic!("{headers:?} {q:?}: {e}"),
        }
    }

    fn subscribe(
        headers: &[(&str, &str)],
        q: &[(&str, &str)],
    ) -> Result<SubscribeParams, ApiError> {
        let headers = header_map(headers);
        let q = query(q);
        let src = ParamSource {
            headers: &headers,
            query: &q,
        };
        parse_subscribe(&src, NOW)
    }

    /// Turns `x-e-mail` into `X-E-Mail`, the way clients usually spell headers.
    fn canonical(name: &str) -> String {
        name.split('-')
            .map(|part| {
                let mut chars = part.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-")
    }

    // ---- ParamSource ----

    #[test]
    fn header_beats_query_and_order_is_headers_then_query() {
        assert_eq!(
            get(
                &[("Title", "from header")],
                &[("x-title", "from query")],
                names::TITLE
            )
            .as_deref(),
            Some("from header")
        );
        // A later header alias still beats an earlier query alias.
        assert_eq!(
            get(&[("t", "h")], &[("x-title", "q")], names::TITLE).as_deref(),
            Some("h")
        );
        // Among headers, list order wins.
        assert_eq!(
            get(&[("t", "short"), ("X-Title", "long")], &[], names::TITLE).as_deref(),
            Some("long")
        );
        assert_eq!(
            get(&[], &[("t", "short"), ("title", "long")], names::TITLE).as_deref(),
            Some("long")
        );
    }

    #[test]
    fn query_names_are_lowercase_only() {
        assert_eq!(get(&[], &[("Title", "x")], names::TITLE), None);
        assert_eq!(get(&[], &[("TITLE", "x")], names::TITLE), None);
        assert_eq!(
            get(&[], &[("title", "x")], names::TITLE).as_deref(),
            Some("x")
        );
        // Headers are case-insensitive.
        assert_eq!(
            get(&[("tItLe", "x")], &[], names::TITLE).as_deref(),
            Some("x")
        );
    }

    #[test]
    fn values_are_trimmed_and_empty_means_absent() {
        assert_eq!(
            get(&[("Title", "  hi  ")], &[], names::TITLE).as_deref(),
            Some("hi")
        );
        assert_eq!(
            get(&[], &[("t", "  hi ")], names::TITLE).as_deref(),
            Some("hi")
        );
        assert_eq!(
            get(&[("Title", "   ")], &[("t", "q")], names::TITLE).as_deref(),
            Some("q")
        );
        assert_eq!(
            get(&[], &[("title", ""), ("t", "q")], names::TITLE).as_deref(),
            Some("q")
        );
        // Only the first occurrence of a query key counts (Go's Query().Get).
        assert_eq!(
            get(&[], &[("title", ""), ("title", "later")], names::TITLE),
            None
        );
        assert_eq!(get(&[], &[], names::TITLE), None);
    }

    #[test]
    fn first_of_repeated_headers_counts() {
        assert_eq!(
            get(&[("Title", "one"), ("Title", "two")], &[], names::TITLE).as_deref(),
            Some("one")
        );
    }

    #[test]
    fn non_utf8_header_values_are_decoded_lossily() {
        let mut headers = HeaderMap::new();
        headers.insert("x-title", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let src = ParamSource {
            headers: &headers,
            query: &[],
        };
        assert_eq!(src.get(names::TITLE).as_deref(), Some("caf\u{fffd}"));
        assert_eq!(
            get(&[("X-Title", "Grüße 🎉")], &[], names::TITLE).as_deref(),
            Some("Grüße 🎉")
        );
    }

    #[test]
    fn rfc2047_words_are_decoded() {
        let cases = [
            ("=?UTF-8?B?8J+OiSBIZWxsbw==?=", "🎉 Hello"),
            ("=?utf-8?q?Hello_World?=", "Hello World"),
            ("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=", "Grüße"),
            ("=?UTF-8?Q?a=c3=a4?=", "aä"),
            ("=?ISO-8859-1?Q?caf=E9?=", "café"),
            ("=?iso-8859-1?B?Y2Fm6Q==?=", "café"),
            ("=?US-ASCII?Q?a=FFb?=", "a\u{fffd}b"),
            // Whitespace between adjacent words disappears, other text stays.
            ("=?UTF-8?Q?a?= =?UTF-8?Q?b?=", "ab"),
            ("x =?UTF-8?Q?a?= and =?UTF-8?Q?b?= y", "x a and b y"),
            // Malformed words are left alone, later words still decode.
            ("=?UTF-8?X?abc?= =?UTF-8?Q?b?=", "=?UTF-8?X?abc?= b"),
            ("=?UTF-8?B?not base64?=", "=?UTF-8?B?not base64?="),
            ("=?UTF-8?Q?bad=ZZ?=", "=?UTF-8?Q?bad=ZZ?="),
            ("=?UTF-8?Q?unterminated", "=?UTF-8?Q?unterminated"),
            ("a =? b", "a =? b"),
            // An unknown charset leaves the entire value as it was.
            (
                "=?UTF-8?Q?a?= =?KOI8-R?Q?b?=",
                "=?UTF-8?Q?a?= =?KOI8-R?Q?b?=",
            ),
            // Invalid UTF-8 inside a UTF-8 word is replaced.
            ("=?UTF-8?Q?=FF?=", "\u{fffd}"),
        ];
        for (encoded, expected) in cases {
            assert_eq!(decode_rfc2047(encoded), expected, "{encoded}");
            assert_eq!(
                get(&[("X-Title", encoded)], &[], names::TITLE).as_deref(),
                Some(expected.trim()),
                "{encoded}"
            );
        }
        // Query values are not MIME-decoded (ntfy decodes headers only).
        assert_eq!(
            get(&[], &[("t", "=?UTF-8?Q?a?=")], names::TITLE).as_deref(),
            Some("=?UTF-8?Q?a?=")
        );
    }

    #[test]
    fn rfc9218_priority_header_is_ignored() {
        for ignored in ["u=4", "u=3, i", "u=1,i", "u=0,  5", " u=2 "] {
            assert_eq!(
                get(
                    &[("Priority", ignored), ("X-Priority", "5")],
                    &[],
                    names::PRIORITY
                )
                .as_deref(),
                Some("5"),
                "{ignored}"
            );
            assert_eq!(
                get(&[("Priority", ignored)], &[("p", "2")], names::PRIORITY).as_deref(),
                Some("2")
            );
            assert_eq!(publish_ok(&[("Priority", ignored)], &[]).priority, 0);
        }
        // Other values of the same header are real priorities.
        assert_eq!(publish_ok(&[("Priority", "high")], &[]).priority, 4);
        assert_eq!(
            publish(&[("Priority", "u=4, i, x")], &[]),
            Err(ApiError::PRIORITY_INVALID)
        );
        assert_eq!(
            publish(&[("Priority", "u=10")], &[]),
            Err(ApiError::PRIORITY_INVALID)
        );
        // Only the `Priority` header is special.
        assert_eq!(
            publish(&[("X-Priority", "u=4")], &[]),
            Err(ApiError::PRIORITY_INVALID)
        );
    }

    #[test]
    fn bool_rules() {
        let b = |headers: &[(&str, &str)], q: &[(&str, &str)], default| {
            let headers = header_map(headers);
            let q = query(q);
            ParamSource {
                headers: &headers,
                query: &q,
            }
            .get_bool(names::CACHE, default)
        };
        for truthy in ["1", "yes", "YES", "true", "True", " yes "] {
            assert!(b(&[("Cache", truthy)], &[], false), "{truthy}");
            assert!(b(&[], &[("cache", truthy)], false), "{truthy}");
        }
        for falsy in ["0", "no", "false", "foo", "on", "y"] {
            assert!(!b(&[("X-Cache", falsy)], &[], true), "{falsy}");
        }
        assert!(b(&[], &[], true));
        assert!(!b(&[], &[], false));
        assert!(b(&[("Cache", "")], &[], true));
    }

    // ---- publish ----

    #[test]
    fn publish_defaults() {
        let p = publish_ok(&[], &[]);
        assert_eq!(
            p,
            PublishParams {
                message: None,
                title: String::new(),
                priority: 0,
                tags: vec![],
                delay: None,
                actions: vec![],
                click: String::new(),
                icon: String::new(),
                attach: None,
                filename: None,
                markdown: false,
                cache: true,
                firebase: true,
                unifiedpush: false,
                poll_id: None,
                sequence_id: None,
            }
        );
    }

    #[test]
    fn every_string_alias_works_as_header_and_query() {
        type Field = fn(&PublishParams) -> Option<String>;
        let fields: [(&[&str], &str, Field); 8] = [
            (names::MESSAGE, "hello", |p| p.message.clone()),
            (names::TITLE, "a title", |p| Some(p.title.clone())),
            (names::CLICK, "myapp://x", |p| Some(p.click.clone())),
            (names::ATTACH, "https://e.example/f.jpg", |p| {
                p.attach.clone()
            }),
            (names::FILENAME, "f.txt", |p| p.filename.clone()),
            (names::ICON, "https://e.example/i.png", |p| {
                Some(p.icon.clone())
            }),
            (names::POLL_ID, "abc", |p| p.poll_id.clone()),
            (names::SEQUENCE_ID, "my-seq_1", |p| p.sequence_id.clone()),
        ];
        for (aliases, value, field) in fields {
            for alias in aliases {
                let via_header = publish_ok(&[(&canonical(alias), value)], &[]);
                assert_eq!(field(&via_header).as_deref(), Some(value), "header {alias}");
                let via_query = publish_ok(&[], &[(alias, value)]);
                assert_eq!(field(&via_query).as_deref(), Some(value), "query {alias}");
            }
        }
    }

    #[test]
    fn every_other_alias_works() {
        for alias in names::PRIORITY {
            assert_eq!(
                publish_ok(&[(&canonical(alias), "max")], &[]).priority,
                5,
                "{alias}"
            );
            assert_eq!(publish_ok(&[], &[(alias, "2")]).priority, 2, "{alias}");
        }
        for alias in names::TAGS {
            assert_eq!(
                publish_ok(&[], &[(alias, "a,b")]).tags,
                ["a", "b"],
                "{alias}"
            );
            assert_eq!(
                publish_ok(&[(&canonical(alias), "a")], &[]).tags,
                ["a"],
                "{alias}"
            );
        }
        for alias in names::DELAY {
            assert_eq!(
                publish_ok(&[], &[(alias, "30m")]).delay,
                Some(NOW + 1800),
                "{alias}"
            );
            assert_eq!(
                publish_ok(&[(&canonical(alias), "1h")], &[]).delay,
                Some(NOW + 3600),
                "{alias}"
            );
        }
        for alias in names::ACTIONS {
            let p = publish_ok(&[], &[(alias, "view, Open, https://x")]);
            assert_eq!(p.actions.len(), 1, "{alias}");
            let p = publish_ok(&[(&canonical(alias), "view, Open, https://x")], &[]);
            assert_eq!(p.actions.len(), 1, "{alias}");
        }
        for alias in names::CACHE {
            assert!(!publish_ok(&[], &[(alias, "no")]).cache, "{alias}");
            assert!(
                !publish_ok(&[(&canonical(alias), "no")], &[]).cache,
                "{alias}"
            );
        }
        for alias in names::FIREBASE {
            assert!(!publish_ok(&[], &[(alias, "no")]).firebase, "{alias}");
            assert!(
                !publish_ok(&[(&canonical(alias), "0")], &[]).firebase,
                "{alias}"
            );
        }
        for alias in names::MARKDOWN {
            assert!(publish_ok(&[], &[(alias, "yes")]).markdown, "{alias}");
            assert!(
                publish_ok(&[(&canonical(alias), "1")], &[]).markdown,
                "{alias}"
            );
        }
        for alias in names::UNIFIEDPUSH {
            assert!(publish_ok(&[], &[(alias, "1")]).unifiedpush, "{alias}");
            assert!(
                publish_ok(&[(&canonical(alias), "true")], &[]).unifiedpush,
                "{alias}"
            );
        }
        for alias in names::EMAIL {
            assert_eq!(
                publish(&[], &[(alias, "a@b.c")]),
                Err(ApiError::EMAIL_DISABLED)
            );
            assert_eq!(
                publish(&[(&canonical(alias), "yes")], &[]),
                Err(ApiError::EMAIL_DISABLED)
            );
        }
        for alias in names::CALL {
            assert_eq!(
                publish(&[], &[(alias, "yes")]),
                Err(ApiError::PHONE_CALLS_DISABLED)
            );
            assert_eq!(
                publish(&[(&canonical(alias), "+1234")], &[]),
                Err(ApiError::PHONE_CALLS_DISABLED)
            );
        }
        for alias in names::TEMPLATE {
            assert_eq!(
                publish(&[], &[(alias, "yes")]),
                Err(ApiError::TEMPLATE_NOT_ENABLED)
            );
            assert_eq!(
                publish(&[(&canonical(alias), "github")], &[]),
                Err(ApiError::TEMPLATE_NOT_ENABLED)
            );
        }
    }

    #[test]
    fn template_off_values_are_accepted() {
        for off in ["no", "false", "0", "NO"] {
            assert!(publish(&[("X-Template", off)], &[]).is_ok(), "{off}");
        }
    }

    #[test]
    fn priorities() {
        for (input, expected) in [
            ("1", 1),
            ("min", 1),
            ("2", 2),
            ("low", 2),
            ("3", 3),
            ("default", 3),
            ("4", 4),
            ("high", 4),
            ("HIGH", 4),
            ("5", 5),
            ("max", 5),
            ("urgent", 5),
            ("Urgent", 5),
        ] {
            assert_eq!(
                publish_ok(&[("X-Priority", input)], &[]).priority,
                expected,
                "{input}"
            );
        }
        for bad in ["0", "6", "-1", "highest", "4.0", "u=4"] {
            assert_eq!(
                publish(&[], &[("p", bad)]),
                Err(ApiError::PRIORITY_INVALID),
                "{bad}"
            );
        }
    }

    #[test]
    fn tags_and_message() {
        let p = publish_ok(&[("Tags", " warning, ,skull ,,")], &[]);
        assert_eq!(p.tags, ["warning", "skull"]);
        let p = publish_ok(&[], &[("m", r"line one\nline two")]);
        assert_eq!(p.message.as_deref(), Some("line one\nline two"));
    }

    #[test]
    fn url_validation() {
        assert_eq!(
            publish(&[("Attach", "ftp://x/y")], &[]),
            Err(ApiError::ATTACHMENT_URL_INVALID)
        );
        assert_eq!(
            publish(&[("Attach", "HTTPS://x/y")], &[]),
            Err(ApiError::ATTACHMENT_URL_INVALID)
        );
        assert_eq!(
            publish(&[("Icon", "x.png")], &[]),
            Err(ApiError::ICON_URL_INVALID)
        );
        assert!(
            publish(
                &[("Attach", "http://x/y"), ("Icon", "https://x/i.png")],
                &[]
            )
            .is_ok()
        );
    }

    #[test]
    fn delay_rules() {
        assert_eq!(publish_ok(&[("Delay", "30m")], &[]).delay, Some(NOW + 1800));
        assert_eq!(publish_ok(&[("In", "10s")], &[]).delay, Some(NOW + 10));
        assert_eq!(
            publish_ok(&[("At", "3pm")], &[]).delay,
            Some(NOW + 3 * 3600 + 1800)
        );
        assert_eq!(
            publish_ok(&[("X-At", &(NOW + 60).to_string())], &[]).delay,
            Some(NOW + 60)
        );
        assert_eq!(
            publish_ok(&[("X-Delay", "3 days")], &[]).delay,
            Some(NOW + 3 * 86_400)
        );
        assert_eq!(
            publish(&[("Delay", "9s")], &[]),
            Err(ApiError::DELAY_TOO_SMALL)
        );
        assert_eq!(
            publish(&[("Delay", "0")], &[]),
            Err(ApiError::DELAY_TOO_SMALL)
        );
        assert_eq!(
            publish(&[("Delay", "-1h")], &[]),
            Err(ApiError::DELAY_TOO_SMALL)
        );
        assert_eq!(
            publish(&[("Delay", "3 days"), ("X-In", "1s")], &[]).map(|p| p.delay),
            Ok(Some(NOW + 3 * 86_400))
        );
        assert_eq!(
            publish(&[("Delay", "73h")], &[]),
            Err(ApiError::DELAY_TOO_LARGE)
        );
        assert_eq!(
            publish(&[("Delay", "later")], &[]),
            Err(ApiError::DELAY_CANNOT_PARSE)
        );
        assert_eq!(
            publish(&[("Delay", "1600000000")], &[]),
            Err(ApiError::DELAY_CANNOT_PARSE)
        );
        assert_eq!(
            publish(&[("Delay", "30m"), ("Cache", "no")], &[]),
            Err(ApiError::DELAY_NO_CACHE)
        );
        // Custom limits.
        let headers = header_map(&[("Delay", "2h")]);
        let src = ParamSource {
            headers: &headers,
            query: &[],
        };
        let limits = PublishLimits {
            delay_min_secs: 0,
            delay_max_secs: 3600,
        };
        assert_eq!(
            parse_publish(&src, &limits, NOW),
            Err(ApiError::DELAY_TOO_LARGE)
        );
    }

    #[test]
    fn validation_order_matches_ntfy() {
        // Attachment URL before icon, icon before e-mail, e-mail before priority, ...
        assert_eq!(
            publish(&[("Attach", "x"), ("Icon", "y")], &[]),
            Err(ApiError::ATTACHMENT_URL_INVALID)
        );
        assert_eq!(
            publish(&[("Icon", "y"), ("Email", "a@b.c")], &[]),
            Err(ApiError::ICON_URL_INVALID)
        );
        assert_eq!(
            publish(&[("Email", "a@b.c"), ("Call", "yes")], &[]),
            Err(ApiError::EMAIL_DISABLED)
        );
        assert_eq!(
            publish(&[("Priority", "9"), ("Delay", "x")], &[]),
            Err(ApiError::PRIORITY_INVALID)
        );
        assert_eq!(
            publish(&[("Delay", "x"), ("Actions", "bad")], &[]),
            Err(ApiError::DELAY_CANNOT_PARSE)
        );
        assert_eq!(
            publish(&[("Actions", "bad"), ("SID", "a/b")], &[]).map_err(|e| e.code),
            Err(40018)
        );
        assert_eq!(
            publish(&[("SID", "a/b")], &[]),
            Err(ApiError::SEQUENCE_ID_INVALID)
        );
        assert_eq!(
            publish(&[("SID", &"x".repeat(65))], &[]),
            Err(ApiError::SEQUENCE_ID_INVALID)
        );
    }

    #[test]
    fn actions_errors_carry_detail() {
        let err = publish(&[("Actions", "view, Open")], &[]).unwrap_err();
        assert_eq!(err.code, 40018);
        assert!(err.error.contains("parameter 'url' is required"), "{err}");
    }

    #[test]
    fn markdown_sources() {
        assert!(publish_ok(&[("Content-Type", "text/markdown")], &[]).markdown);
        assert!(publish_ok(&[("Content-Type", "Text/Markdown; charset=utf-8")], &[]).markdown);
        assert!(publish_ok(&[], &[("content-type", "text/markdown")]).markdown);
        assert!(publish_ok(&[], &[("content_type", "text/markdown")]).markdown);
        assert!(!publish_ok(&[("Content-Type", "text/plain")], &[]).markdown);
        assert!(!publish_ok(&[("Markdown", "no")], &[]).markdown);
    }

    #[test]
    fn unifiedpush_and_poll_side_effects() {
        let p = publish_ok(&[("Content-Encoding", "aes128gcm")], &[]);
        assert!(p.unifiedpush);
        assert!(!p.firebase);
        let p = publish_ok(&[], &[("up", "1")]);
        assert!(p.unifiedpush && !p.firebase && p.cache);
        let p = publish_ok(&[("X-Poll-ID", "abc"), ("UP", "1")], &[]);
        assert_eq!(p.poll_id.as_deref(), Some("abc"));
        assert!(!p.unifiedpush && !p.cache);
        assert!(!publish_ok(&[("Content-Encoding", "gzip")], &[]).unifiedpush);
    }

    // ---- JSON publish ----

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

    // ---- subscribe ----

    #[test]
    fn since_parsing_order() {
        let since = |v: &str| parse_since(Some(v), NOW);
        assert_eq!(since(""), Ok(SinceParam::Unset));
        assert_eq!(parse_since(None, NOW), Ok(SinceParam::Unset));
        assert_eq!(since("all"), Ok(SinceParam::All));
        assert_eq!(since("none"), Ok(SinceParam::None));
        assert_eq!(since("latest"), Ok(SinceParam::Latest));
        assert_eq!(
            since("hwQ2YpKdmg00"),
            Ok(SinceParam::Id("hwQ2YpKdmg00".into()))
        );
        // Twelve digits are a message ID, not a timestamp.
        assert_eq!(
            since("163552874100"),
            Ok(SinceParam::Id("163552874100".into()))
        );
        assert_eq!(since("1635528741"), Ok(SinceParam::Time(1_635_528_741)));
        assert_eq!(since("0"), Ok(SinceParam::Time(0)));
        assert_eq!(since("10m"), Ok(SinceParam::Time(NOW - 600)));
        assert_eq!(since("1h30m"), Ok(SinceParam::Time(NOW - 5400)));
        assert_eq!(since("1.5s"), Ok(SinceParam::Time(NOW - 2)));
        assert_eq!(since("-1h"), Ok(SinceParam::Time(NOW + 3600)));
        for bad in [
            "1d",
            "ALL",
            "yesterday",
            "hwQ2YpKdmg0",
            "hwQ2YpKdmg00x",
            "10 m",
            "hwQ2YpKdmg-0",
        ] {
            assert_eq!(since(bad), Err(ApiError::SINCE_INVALID), "{bad}");
        }
    }

    #[test]
    fn subscribe_aliases() {
        for alias in names::POLL {
            assert!(subscribe(&[], &[(alias, "1")]).unwrap().poll, "{alias}");
            assert!(
                subscribe(&[(&canonical(alias), "yes")], &[]).unwrap().poll,
                "{alias}"
            );
        }
        for alias in names::SCHEDULED {
            assert!(
                subscribe(&[], &[(alias, "true")]).unwrap().scheduled,
                "{alias}"
            );
            assert!(
                subscribe(&[(&canonical(alias), "1")], &[])
                    .unwrap()
                    .scheduled,
                "{alias}"
            );
        }
        for alias in names::SINCE {
            assert_eq!(
                subscribe(&[], &[(alias, "all")]).unwrap().since,
                SinceParam::All
            );
            assert_eq!(
                subscribe(&[(&canonical(alias), "none")], &[])
                    .unwrap()
                    .since,
                SinceParam::None
            );
        }
        type Getter = fn(&Filters) -> String;
        let filter_cases: [(&[&str], &str, Getter); 5] = [
            (names::ID, "hwQ2YpKdmg00", |f| {
                f.id.clone().unwrap_or_default()
            }),
            (names::MESSAGE, "hi there", |f| {
                f.message.clone().unwrap_or_default()
            }),
            (names::TITLE, "t1", |f| f.title.clone().unwrap_or_default()),
            (names::PRIORITY, "high,5", |f| format!("{:?}", f.priorities)),
            (names::TAGS, "a, b", |f| f.tags.join("|")),
        ];
        let expected_for = |v: &str| match v {
            "high,5" => "[4, 5]".to_string(),
            "a, b" => "a|b".to_string(),
            other => other.to_string(),
        };
        for (aliases, value, field) in filter_cases {
            for alias in aliases {
                let via_query = subscribe(&[], &[(alias, value)]).unwrap();
                assert_eq!(
                    field(&via_query.filters),
                    expected_for(value),
                    "query {alias}"
                );
                let via_header = subscribe(&[(&canonical(alias), value)], &[]).unwrap();
                assert_eq!(
                    field(&via_header.filters),
                    expected_for(value),
                    "header {alias}"
                );
            }
        }
    }

    #[test]
    fn subscribe_defaults_and_errors() {
        let s = subscribe(&[], &[]).unwrap();
        assert_eq!(
            s,
            SubscribeParams {
                poll: false,
                since: SinceParam::Unset,
                scheduled: false,
                filters: Filters::default(),
            }
        );
        assert!(s.filters.is_empty());
        assert_eq!(
            subscribe(&[], &[("p", "1,7")]),
            Err(ApiError::PRIORITY_INVALID)
        );
        assert_eq!(
            subscribe(&[], &[("since", "1d")]),
            Err(ApiError::SINCE_INVALID)
        );
        // `since` is checked before the filters.
        assert_eq!(
            subscribe(&[], &[("since", "1d"), ("p", "9")]),
            Err(ApiError::SINCE_INVALID)
        );
        assert!(
            subscribe(&[("Priority", "u=3, i")], &[])
                .unwrap()
                .filters
                .priorities
                .is_empty()
        );
    }

    fn message(priority: u8, tags: &[&str]) -> Message {
        let mut m = Message::new(EventKind::Message, "t");
        m.id = "hwQ2YpKdmg00".into();
        m.message = "hello".into();
        m.title = "title".into();
        m.priority = priority;
        m.tags = tags.iter().map(|t| t.to_string()).collect();
        m
    }

    #[test]
    fn filters_pass() {
        let all = Filters::default();
        assert!(all.pass(&message(0, &[])));

        let prio = Filters {
            priorities: vec![3, 5],
            ..Filters::default()
        };
        assert!(prio.pass(&message(0, &[])), "unset counts as 3");
        assert!(prio.pass(&message(3, &[])));
        assert!(prio.pass(&message(5, &[])));
        assert!(!prio.pass(&message(4, &[])));

        let tags = Filters {
            tags: vec!["a".into(), "b".into()],
            ..Filters::default()
        };
        assert!(tags.pass(&message(0, &["b", "c", "a"])));
        assert!(!tags.pass(&message(0, &["a"])));
        assert!(!tags.pass(&message(0, &["A", "B"])));

        let exact = Filters {
            id: Some("hwQ2YpKdmg00".into()),
            message: Some("hello".into()),
            title: Some("title".into()),
            ..Filters::default()
        };
        assert!(exact.pass(&message(0, &[])));
        let mut other = message(0, &[]);
        other.title = "Title".into();
        assert!(!exact.pass(&other));
        let mut other = message(0, &[]);
        other.message = "hello ".into();
        assert!(!exact.pass(&other));
        let mut other = message(0, &[]);
        other.id = "xxxxxxxxxxxx".into();
        assert!(!exact.pass(&other));

        // Non-content events always pass; delete/clear events are filtered.
        for kind in [
            EventKind::Open,
            EventKind::Keepalive,
            EventKind::PollRequest,
        ] {
            assert!(prio.pass(&Message::new(kind, "t")), "{kind:?}");
            assert!(exact.pass(&Message::new(kind, "t")), "{kind:?}");
        }
        for kind in [EventKind::MessageDelete, EventKind::MessageClear] {
            let mut m = Message::new(kind, "t");
            m.priority = 4;
            assert!(!prio.pass(&m), "{kind:?}");
            m.priority = 0;
            assert!(prio.pass(&m), "{kind:?}");
        }
    }

    // ---- properties ----

    /// A Q-encoding of arbitrary text, independent of the decoder under test.
    fn q_encode(s: &str) -> String {
        let mut out = String::from("=?UTF-8?Q?");
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() {
                out.push(b as char);
            } else if b == b' ' {
                out.push('_');
            } else {
                out.push_str(&format!("={b:02X}"));
            }
        }
        out.push_str("?=");
        out
    }

    proptest! {
        #[test]
        fn header_always_beats_query(
            alias_h in prop::sample::select(names::TITLE.to_vec()),
            alias_q in prop::sample::select(names::TITLE.to_vec()),
            h in "[!-~]([ -~]{0,30}[!-~])?",
            q in "[!-~]{1,30}",
        ) {
            prop_assert_eq!(get(&[(&canonical(alias_h), &h)], &[(alias_q, &q)], names::TITLE), Some(h));
        }

        #[test]
        fn query_only_matches_lowercase(alias in prop::sample::select(names::TITLE.to_vec()), v in "[a-z]{1,10}") {
            prop_assert_eq!(get(&[], &[(alias, &v)], names::TITLE), Some(v.clone()));
            let upper = alias.to_ascii_uppercase();
            prop_assert_eq!(get(&[], &[(&upper, &v)], names::TITLE), None);
        }

        #[test]
        fn rfc2047_b_round_trips(s in "\\PC{1,60}") {
            let encoded = encode_rfc2047(&s);
            prop_assert_eq!(decode_rfc2047(&encoded), s.as_str());
            prop_assert_eq!(
                get(&[("X-Title", &encoded)], &[], names::TITLE),
                Some(s.trim().to_string()).filter(|v| !v.is_empty())
            );
        }

        #[test]
        fn rfc2047_q_round_trips(s in "\\PC{1,60}") {
            let encoded = q_encode(&s);
            prop_assert_eq!(decode_rfc2047(&encoded), s.as_str());
        }

        #[test]
        fn rfc2047_adjacent_words_join(a in "\\PC{1,20}", b in "\\PC{1,20}", gap in "[ \t]{0,3}") {
            let value = format!("{}{gap}{}", encode_rfc2047(&a), q_encode(&b));
            prop_assert_eq!(decode_rfc2047(&value).into_owned(), format!("{a}{b}"));
        }

        #[test]
        fn plain_values_pass_through(s in "[ -~]{0,60}") {
            // Without "=?" nothing is touched; with it, decoding never panics.
            let decoded = decode_rfc2047(&s);
            if !s.contains("=?") {
                prop_assert_eq!(decoded, s.as_str());
            }
        }

        #[test]
        fn rfc9218_values_never_set_priority(n in 0u8..10, suffix in prop::option::of(prop::sample::select(vec!["i", "0", "7"])), spaces in "[ \t]{0,3}") {
            let value = match suffix {
                Some(s) => format!("u={n},{spaces}{s}"),
                None => format!("u={n}"),
            };
            prop_assert_eq!(publish_ok(&[("Priority", &value)], &[]).priority, 0);
        }

        #[test]
        fn bool_values(v in "[A-Za-z0-9]{1,6}", default in prop::bool::ANY) {
            let headers = header_map(&[("X-Poll", &v)]);
            let src = ParamSource { headers: &headers, query: &[] };
            let expected = ["1", "yes", "true"].contains(&v.to_ascii_lowercase().as_str());
            prop_assert_eq!(src.get_bool(names::POLL, default), expected);
        }

        #[test]
        fn since_timestamps_and_durations(ts in 0i64..100_000_000_000, h in 0i64..1000, m in 0i64..60) {
            prop_assert_eq!(parse_since(Some(&ts.to_string()), NOW), Ok(SinceParam::Time(ts)));
            prop_assert_eq!(
                parse_since(Some(&format!("{h}h{m}m")), NOW),
                Ok(SinceParam::Time(NOW - h * 3600 - m * 60))
            );
        }

        #[test]
        fn since_message_ids(id in "[A-Za-z0-9]{12}") {
            let parsed = parse_since(Some(&id), NOW);
            if ["all", "none", "latest"].contains(&id.as_str()) {
                prop_assert!(parsed.is_ok());
            } else {
                prop_assert_eq!(parsed, Ok(SinceParam::Id(id)));
            }
        }

        #[test]
        fn since_never_panics(s in "\\PC{0,30}") {
            let _ = parse_since(Some(&s), NOW);
        }

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
