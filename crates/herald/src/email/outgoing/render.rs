//! The mail a notification becomes: plain text as ntfy writes it (ntfy's
//! `formatMail`), with the headers mail clients and relays expect.
//!
//! Subject: the title (else the message), on one line, prefixed with the emojis of
//! known tags. Body: the message, then `Tags:`/`Priority:` lines, the click and
//! attachment links, and a footer naming the sender's address, the time and the
//! topic URL. Headers: `From: "<short topic URL>" <smtp-sender-from>`, `To`,
//! `Date`, `Message-ID`, `Subject` (RFC 2047 when not ASCII),
//! `Auto-Submitted: auto-generated` (RFC 3834: no auto-replies to it),
//! `Content-Type: text/plain; charset=utf-8`. No `List-Unsubscribe`: the recipient
//! did not subscribe to a list.

use std::time::{Duration, UNIX_EPOCH};

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message as Mail};

use crate::model::Message;

/// Tags shown as emojis in the subject (a few of ntfy's most used; the rest are
/// listed under `Tags:`).
const EMOJIS: &[(&str, &str)] = &[
    ("+1", "👍"),
    ("-1", "👎"),
    ("warning", "⚠️"),
    ("rotating_light", "🚨"),
    ("skull", "💀"),
    ("tada", "🎉"),
    ("white_check_mark", "✅"),
    ("heavy_check_mark", "✔️"),
    ("x", "❌"),
    ("no_entry", "⛔"),
    ("loudspeaker", "📢"),
    ("partying_face", "🥳"),
    ("fire", "🔥"),
    ("bell", "🔔"),
    ("computer", "💻"),
    ("floppy_disk", "💾"),
    ("cd", "💿"),
    ("construction", "🚧"),
    ("rocket", "🚀"),
    ("zap", "⚡"),
];

/// What a mail is built from besides the message.
pub(crate) struct Envelope<'a> {
    /// `base-url`, without a trailing slash.
    pub base_url: &'a str,
    /// `smtp-sender-from`.
    pub from: &'a str,
    pub to: &'a str,
    /// Who published (an IP address, or `user:<name>`), for the footer.
    pub sender: &'a str,
    /// The queue's ID of this mail, the left part of its `Message-ID`.
    pub id: &'a str,
}

/// Why a mail could not be built (an address lettre refuses; checked before).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the mail: {0}")]
pub struct RenderError(String);

/// The whole RFC 5322 message for `m`.
pub(crate) fn render(m: &Message, env: &Envelope<'_>) -> Result<Vec<u8>, RenderError> {
    let bad = |e: &dyn std::fmt::Display| RenderError(e.to_string());
    let topic_url = format!("{}/{}", env.base_url, m.topic);
    let short_topic_url = topic_url
        .split_once("://")
        .map_or(topic_url.as_str(), |(_, rest)| rest);
    let from: lettre::Address = env.from.parse().map_err(|e| bad(&e))?;
    let to: lettre::Address = env.to.parse().map_err(|e| bad(&e))?;
    let (subject, body) = content(m, env.sender, &topic_url);
    let domain = from.domain().to_string();
    let time = UNIX_EPOCH + Duration::from_secs(u64::try_from(m.time).unwrap_or(0));
    Mail::builder()
        .from(Mailbox::new(Some(short_topic_url.to_string()), from))
        .to(Mailbox::new(None, to))
        .date(time)
        .message_id(Some(format!("<{}@{}>", env.id, domain)))
        .subject(subject)
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".into(),
        ))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map(|mail| mail.formatted())
        .map_err(|e| bad(&e))
}

/// The subject and the text of the mail for `m`, as ntfy lays them out.
fn content(m: &Message, sender: &str, topic_url: &str) -> (String, String) {
    let mut subject = if m.title.is_empty() {
        m.message.clone()
    } else {
        m.title.clone()
    };
    subject = subject.replace('\r', "").replace('\n', " ");
    let (emojis, tags): (Vec<&String>, Vec<&String>) = m
        .tags
        .iter()
        .partition(|t| EMOJIS.iter().any(|(name, _)| name == t));
    if !emojis.is_empty() {
        let icons: Vec<&str> = emojis
            .iter()
            .filter_map(|t| EMOJIS.iter().find(|(n, _)| n == t).map(|(_, e)| *e))
            .collect();
        subject = format!("{} {subject}", icons.join(" "));
    }
    let mut trailer = Vec::new();
    if !tags.is_empty() {
        let tags: Vec<&str> = tags.iter().map(|t| t.as_str()).collect();
        trailer.push(format!("Tags: {}", tags.join(", ")));
    }
    if m.priority != 0 && m.priority != 3 {
        let name = match m.priority {
            1 => "min",
            2 => "low",
            4 => "high",
            _ => "max",
        };
        trailer.push(format!("Priority: {name}"));
    }
    if !m.click.is_empty() {
        trailer.push(format!("Click: {}", m.click));
    }
    if let Some(a) = &m.attachment {
        trailer.push(format!("Attachment: {} ({})", a.name, a.url));
    }
    let mut body = m.message.clone();
    if !trailer.is_empty() {
        body.push_str("\n\n");
        body.push_str(&trailer.join("\n"));
    }
    let time = chrono::DateTime::from_timestamp(m.time, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S UTC");
    body.push_str(&format!(
        "\n\n--\nThis message was sent by {sender} at {time} via {topic_url}\n"
    ));
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attachment, EventKind};

    fn env<'a>() -> Envelope<'a> {
        Envelope {
            base_url: "https://ntfy.example.com",
            from: "ntfy@example.com",
            to: "phil@example.com",
            sender: "1.2.3.4",
            id: "abc123",
        }
    }

    #[test]
    fn layout_as_ntfy() {
        let mut m = Message::new(EventKind::Message, "alerts");
        m.time = 1_700_000_000;
        m.title = "Disk\nfull".into();
        m.message = "/ is at 99%".into();
        m.tags = vec!["warning".into(), "db".into(), "prod".into()];
        m.priority = 5;
        m.click = "https://grafana.example.com".into();
        m.attachment = Some(Attachment {
            name: "graph.png".into(),
            url: "https://x.example/graph.png".into(),
            ..Attachment::default()
        });
        let (subject, body) = content(&m, "1.2.3.4", "https://ntfy.example.com/alerts");
        assert_eq!(subject, "⚠️ Disk full");
        assert_eq!(
            body,
            "/ is at 99%\n\nTags: db, prod\nPriority: max\nClick: https://grafana.example.com\n\
             Attachment: graph.png (https://x.example/graph.png)\n\n--\n\
             This message was sent by 1.2.3.4 at Tue, 14 Nov 2023 22:13:20 UTC via \
             https://ntfy.example.com/alerts\n"
        );
        let raw = String::from_utf8(render(&m, &env()).unwrap()).unwrap();
        let head = raw.split("\r\n\r\n").next().unwrap();
        // The display name is the short topic URL (RFC 2047-encoded: it has a `/`).
        let name = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "ntfy.example.com/alerts",
        );
        let from = format!("From: =?utf-8?b?{name}?= <ntfy@example.com>");
        assert!(head.contains(&from), "{head}");
        assert!(head.contains("To: phil@example.com"), "{head}");
        assert!(head.contains("Message-ID: <abc123@example.com>"), "{head}");
        assert!(head.contains("Auto-Submitted: auto-generated"), "{head}");
        assert!(head.contains("Date: Tue, 14 Nov 2023 22:13:20"), "{head}");
        assert!(head.contains("Subject: =?utf-8?"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; charset=utf-8"),
            "{head}"
        );
        assert!(!head.to_ascii_lowercase().contains("list-unsubscribe"));
    }

    #[test]
    fn untitled_message_is_the_subject() {
        let mut m = Message::new(EventKind::Message, "t");
        m.message = "backup done".into();
        let (subject, body) = content(&m, "user:phil", "http://h/t");
        assert_eq!(subject, "backup done");
        assert!(body.starts_with("backup done\n\n--\nThis message was sent by user:phil"));
    }
}
