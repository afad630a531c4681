//! The domain model: what a notification is, independent of how it travels.
//!
//! `Message` mirrors ntfy's message JSON field for field (and in the same key order),
//! because every transport serializes it and ntfy clients parse it. Validation of
//! user input into these types lives in `api::params`; this module only defines them.

pub mod id;
pub mod topic;

use serde::{Deserialize, Serialize};

pub use id::MessageId;

/// The kind of an event on a subscription stream (`event` in ntfy's JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// First event of every stream.
    Open,
    /// Periodic liveness event on HTTP streams.
    Keepalive,
    /// A notification.
    Message,
    /// A sequence was deleted (ntfy v2.16+).
    MessageDelete,
    /// A sequence was cleared / marked read (ntfy v2.16+).
    MessageClear,
    /// iOS upstream poll request (accepted on the wire, never produced by herald).
    PollRequest,
}

impl EventKind {
    /// The name used on the wire (`event` field, SSE `event:` line).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Open => "open",
            EventKind::Keepalive => "keepalive",
            EventKind::Message => "message",
            EventKind::MessageDelete => "message_delete",
            EventKind::MessageClear => "message_clear",
            EventKind::PollRequest => "poll_request",
        }
    }

    /// Events that are stored, replayed by `since=` and subject to subscription filters.
    pub fn is_content(self) -> bool {
        matches!(
            self,
            EventKind::Message | EventKind::MessageDelete | EventKind::MessageClear
        )
    }
}

/// An action button (ntfy `Action`), already validated and normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Action {
    pub id: String,
    pub action: String,
    pub label: String,
    pub clear: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub intent: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extras: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// An attachment reference (external URL; herald stores no files yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Attachment {
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub mime_type: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expires: i64,
    pub url: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

/// One event as ntfy clients see it. Field order is ntfy's JSON key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    /// Omitted on JSON/SSE output when equal to `id` (see [`Message::for_json`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_id: Option<String>,
    /// Unix seconds; for a scheduled message, its delivery time.
    pub time: i64,
    /// Unix seconds after which the store forgets the message; absent when not cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    pub event: EventKind,
    /// A single topic, or for `open`/`keepalive` the comma-joined topics of the stream.
    pub topic: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// 1..=5; 0 means "not set" and is omitted.
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub priority: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub click: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub icon: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub poll_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub encoding: String,
}

/// Lets a message stand where a shared one is taken (`store::SharedMessage`).
impl AsRef<Message> for Message {
    fn as_ref(&self) -> &Message {
        self
    }
}

impl Message {
    /// A bare event of `kind` on `topic` with a fresh id and the current time.
    pub fn new(kind: EventKind, topic: impl Into<String>) -> Self {
        Message {
            id: MessageId::generate().into_string(),
            ..Self::without_id(kind, topic, now_unix())
        }
    }

    /// [`Self::new`] with an empty ID and the `time` (unix seconds) given: for a
    /// publish, which the core gives its ID in order (`Herald::publish_event`), so
    /// that no ID is generated to be thrown away, and its time from the clock read
    /// that also decides whether it is scheduled. A `sequence_id` equal to the
    /// (empty) ID follows the ID given.
    pub(crate) fn without_id(kind: EventKind, topic: impl Into<String>, time: i64) -> Self {
        Message {
            id: String::new(),
            sequence_id: None,
            time,
            expires: None,
            event: kind,
            topic: topic.into(),
            title: String::new(),
            message: String::new(),
            priority: 0,
            tags: Vec::new(),
            click: String::new(),
            icon: String::new(),
            actions: Vec::new(),
            attachment: None,
            poll_id: String::new(),
            content_type: String::new(),
            encoding: String::new(),
        }
    }

    /// The form ntfy uses for publish responses, JSON and SSE streams: `sequence_id`
    /// dropped when it equals `id`. (WebSocket frames keep it; see `hub::Framing`.)
    /// Borrows instead of cloning: this runs once per published event.
    pub fn for_json(&self) -> ForJson<'_> {
        ForJson(self)
    }

    /// The sequence this message belongs to: its `sequence_id`, or its own id.
    pub fn sequence(&self) -> &str {
        self.sequence_id.as_deref().unwrap_or(&self.id)
    }

    /// Priority as filters see it: unset counts as 3 ("default").
    pub fn effective_priority(&self) -> u8 {
        if self.priority == 0 { 3 } else { self.priority }
    }
}

/// Serializes a [`Message`] as ntfy's `ForJSON` does (see [`Message::for_json`]).
#[derive(Debug, Clone, Copy)]
pub struct ForJson<'a>(&'a Message);

impl Serialize for ForJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let m = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &m.id)?;
        if let Some(seq) = m.sequence_id.as_deref().filter(|s| *s != m.id) {
            map.serialize_entry("sequence_id", seq)?;
        }
        map.serialize_entry("time", &m.time)?;
        if let Some(expires) = m.expires {
            map.serialize_entry("expires", &expires)?;
        }
        map.serialize_entry("event", &m.event)?;
        map.serialize_entry("topic", &m.topic)?;
        let texts = [("title", &m.title), ("message", &m.message)];
        for (key, value) in texts {
            if !value.is_empty() {
                map.serialize_entry(key, value)?;
            }
        }
        if m.priority != 0 {
            map.serialize_entry("priority", &m.priority)?;
        }
        if !m.tags.is_empty() {
            map.serialize_entry("tags", &m.tags)?;
        }
        let links = [("click", &m.click), ("icon", &m.icon)];
        for (key, value) in links {
            if !value.is_empty() {
                map.serialize_entry(key, value)?;
            }
        }
        if !m.actions.is_empty() {
            map.serialize_entry("actions", &m.actions)?;
        }
        if let Some(attachment) = &m.attachment {
            map.serialize_entry("attachment", attachment)?;
        }
        let rest = [
            ("poll_id", &m.poll_id),
            ("content_type", &m.content_type),
            ("encoding", &m.encoding),
        ];
        for (key, value) in rest {
            if !value.is_empty() {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

/// Current wall-clock time in unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Current wall-clock time in unix milliseconds.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_key_order_and_omissions_match_ntfy() {
        let mut m = Message::new(EventKind::Message, "mytopic");
        m.id = "hwQ2YpKdmg00".into();
        m.time = 1635528741;
        m.expires = Some(1635571941);
        m.message = "Backup done".into();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"id":"hwQ2YpKdmg00","time":1635528741,"expires":1635571941,"event":"message","topic":"mytopic","message":"Backup done"}"#
        );
    }

    #[test]
    fn for_json_drops_sequence_id_equal_to_id() {
        let mut m = Message::new(EventKind::Message, "t");
        m.sequence_id = Some(m.id.clone());
        let json = serde_json::to_string(&m.for_json()).unwrap();
        assert!(!json.contains("sequence_id"), "{json}");
        m.sequence_id = Some("other".into());
        let json = serde_json::to_string(&m.for_json()).unwrap();
        assert!(json.contains(r#""sequence_id":"other""#), "{json}");
    }

    #[test]
    fn for_json_matches_the_derived_form_field_for_field() {
        let mut m = Message::new(EventKind::Message, "t");
        m.sequence_id = Some("seq".into());
        m.expires = Some(5);
        m.title = "T".into();
        m.message = "M".into();
        m.priority = 4;
        m.tags = vec!["a".into()];
        m.click = "https://c".into();
        m.icon = "https://i".into();
        m.actions = vec![Action {
            id: "x".into(),
            action: "view".into(),
            label: "L".into(),
            url: "https://u".into(),
            ..Action::default()
        }];
        m.attachment = Some(Attachment {
            name: "f".into(),
            url: "https://a".into(),
            ..Attachment::default()
        });
        m.poll_id = "p".into();
        m.content_type = "text/markdown".into();
        m.encoding = "base64".into();
        assert_eq!(
            serde_json::to_string(&m.for_json()).unwrap(),
            serde_json::to_string(&m).unwrap()
        );
        let bare = Message::new(EventKind::Open, "t");
        assert_eq!(
            serde_json::to_string(&bare.for_json()).unwrap(),
            serde_json::to_string(&bare).unwrap()
        );
    }
}
