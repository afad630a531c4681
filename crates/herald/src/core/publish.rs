//! What a publish asks of the core, and the rules that turn it into a stored,
//! delivered event.
//!
//! herald has one HTTP API today and will get more ways in (gRPC, templates). Each
//! of them only turns its wire form into a [`PublishRequest`] and the resulting
//! [`Message`] (or [`PublishError`]) back into its wire form; everything a publish
//! means — expiry from `cache-duration`, `Cache: no`, scheduling, the default
//! sequence ID, a sequence update replacing its pending scheduled message, a delete
//! cancelling it, poll requests never being stored — is decided here, once.

use std::sync::Arc;

use super::Herald;
use crate::broker::BrokerError;
use crate::hub::SharedEvent;
use crate::model::{Action, Attachment, EventKind, Message};
use crate::store::StoreError;

/// Text of a message published without any text (ntfy's `emptyMessageBody`).
const EMPTY_MESSAGE: &str = "triggered";

/// Text of an iOS poll request (ntfy sends the real message via the poll).
pub const POLL_REQUEST_MESSAGE: &str = "New message";

/// One publish, as any transport hands it to [`Herald::publish`].
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// A single, already validated topic name.
    pub topic: String,
    pub kind: PublishKind,
}

/// What a publish does to its topic.
#[derive(Debug, Clone)]
pub enum PublishKind {
    /// A new notification, or (with a sequence ID) the update of one.
    Message(Box<MessageDraft>),
    /// `message_delete`: the sequence's notification is deleted on clients, and its
    /// pending scheduled message, if any, is cancelled.
    Delete { sequence_id: String },
    /// `message_clear`: the sequence's notification is marked read and dismissed.
    Clear { sequence_id: String },
}

/// A message as its publisher described it, before the core gives it an ID, a time,
/// an expiry and a sequence.
#[derive(Debug, Clone)]
pub struct MessageDraft {
    /// The message text; empty means ntfy's default text.
    pub text: String,
    pub title: String,
    /// 1..=5, or 0 when not set.
    pub priority: u8,
    pub tags: Vec<String>,
    pub click: String,
    pub icon: String,
    pub actions: Vec<Action>,
    pub attachment: Option<Attachment>,
    /// Render as Markdown (`content_type: text/markdown`).
    pub markdown: bool,
    /// `""`, or `"base64"` when `text` is the base64 of a binary body.
    pub encoding: String,
    /// An iOS poll request: a `poll_request` event that is never stored.
    pub poll_id: Option<String>,
    /// Deliver at this unix second instead of now (already within the allowed window).
    pub due: Option<i64>,
    /// Keep the message in the history (`Cache: no` turns it off).
    pub cache: bool,
    /// The sequence this message updates; `None` starts a sequence named after the
    /// message's own ID.
    pub sequence_id: Option<String>,
    /// Also send the message by mail (`X-Email`), once it is committed.
    pub email: Option<EmailRequest>,
}

/// A mail to send for a published message (src/email).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailRequest {
    /// The recipient, already validated.
    pub to: String,
    /// Who published (client address or `user:<name>`), named in the mail's footer.
    pub sender: String,
}

/// Where the mail of a committed message goes: the e-mail outbox (src/email), which
/// queues it durably. Failures are its own to log and count: the message itself is
/// published by then.
#[async_trait::async_trait]
pub trait MailOutbox: Send + Sync + 'static {
    async fn queue(&self, message: &Message, email: &EmailRequest);
}

impl Default for MessageDraft {
    fn default() -> Self {
        MessageDraft {
            text: String::new(),
            title: String::new(),
            priority: 0,
            tags: Vec::new(),
            click: String::new(),
            icon: String::new(),
            actions: Vec::new(),
            attachment: None,
            markdown: false,
            encoding: String::new(),
            poll_id: None,
            due: None,
            cache: true,
            sequence_id: None,
            email: None,
        }
    }
}

/// Why a publish was not acknowledged. Nothing a refused publish carried reached a
/// subscriber or the history that anyone can rely on.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The store refused or failed the write (full disk, unavailable, closed, broken).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event is stored (if cached) but could not be handed to the broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The publish task ended without an answer (it panicked).
    #[error("publish task ended without an answer")]
    Aborted,
    /// A mail was asked for, but no relay is configured (`smtp-sender-addr`).
    #[error("e-mail notifications are not enabled")]
    EmailDisabled,
    /// A mail was asked for a scheduled message (ntfy cannot store the address).
    #[error("delayed e-mail notifications are not supported")]
    DelayedEmail,
}

impl Herald {
    /// Publishes `request` and returns the event as stored and delivered: a message,
    /// or a sequence's `message_delete` / `message_clear`.
    ///
    /// A publish that names a sequence replaces that sequence's pending scheduled
    /// message (ntfy v2.16), and a delete cancels it, in this same call: the
    /// scheduled message is removed before the new event is stored, so it can never
    /// go out after its replacement.
    pub async fn publish(
        self: &Arc<Self>,
        request: PublishRequest,
    ) -> Result<Message, PublishError> {
        Ok(self.publish_shared(request).await?.message.clone())
    }

    /// [`Self::publish`], returning the event as the subscribers got it: its
    /// encodings (`SharedEvent::encoded`, `json_line` for an answer) are built once
    /// for everyone.
    pub async fn publish_shared(
        self: &Arc<Self>,
        request: PublishRequest,
    ) -> Result<Arc<SharedEvent>, PublishError> {
        self.publish_shared_at(request, crate::model::now_unix_ms())
            .await
    }

    /// [`Self::publish_shared`] of a request received at `now_ms` (the wall clock in
    /// unix milliseconds, as the caller read it once): the event's time, whether it
    /// is scheduled, and its ID's time.
    pub async fn publish_shared_at(
        self: &Arc<Self>,
        request: PublishRequest,
        now_ms: i64,
    ) -> Result<Arc<SharedEvent>, PublishError> {
        let cache_secs = i64::try_from(self.config.cache_duration.as_secs()).unwrap_or(i64::MAX);
        let now = now_ms.div_euclid(1000);
        let mut email = None;
        let (message, replaces_scheduled) = match request.kind {
            PublishKind::Message(mut draft) => {
                let replaces = draft.sequence_id.is_some();
                // A poll request never goes out by mail (as ntfy).
                email = draft.email.take().filter(|_| draft.poll_id.is_none());
                if email.is_some() {
                    if self.outbox.get().is_none() {
                        return Err(PublishError::EmailDisabled);
                    }
                    if draft.due.is_some() {
                        return Err(PublishError::DelayedEmail);
                    }
                }
                (draft.into_message(request.topic, cache_secs, now), replaces)
            }
            PublishKind::Delete { sequence_id } => (
                sequence_event(
                    EventKind::MessageDelete,
                    request.topic,
                    sequence_id,
                    cache_secs,
                    now,
                ),
                true,
            ),
            PublishKind::Clear { sequence_id } => (
                sequence_event(
                    EventKind::MessageClear,
                    request.topic,
                    sequence_id,
                    cache_secs,
                    now,
                ),
                false,
            ),
        };
        if replaces_scheduled && let Some(sequence_id) = &message.sequence_id {
            self.store
                .cancel_scheduled(&message.topic, sequence_id)
                .await?;
        }
        let event = self.publish_event(message, now_ms).await?;
        if let (Some(email), Some(outbox)) = (email, self.outbox.get().cloned()) {
            // Spawned, like the commit: once committed, the mail is queued even if
            // the client goes away meanwhile; the publish is answered after that.
            let m = event.clone();
            let _ = tokio::spawn(async move { outbox.queue(&m.message, &email).await }).await;
        }
        Ok(event)
    }

    /// Sends the mails of publishes that ask for one (`X-Email`) to `outbox`; set
    /// once at start when a relay is configured.
    pub fn set_outbox(&self, outbox: Arc<dyn MailOutbox>) {
        let _ = self.outbox.set(outbox);
    }

    /// Whether publishes may ask for a mail.
    pub fn emails_enabled(&self) -> bool {
        self.outbox.get().is_some()
    }
}

impl MessageDraft {
    /// The message this draft publishes on `topic` at `now` (unix seconds), with
    /// `cache-duration` of `cache_secs`.
    fn into_message(self, topic: String, cache_secs: i64, now: i64) -> Message {
        // No ID yet: `publish_event` gives it one, in order.
        let mut m = Message::without_id(EventKind::Message, topic, now);
        if let Some(due) = self.due {
            m.time = due;
        }
        m.title = self.title;
        m.message = self.text;
        m.priority = self.priority;
        m.tags = self.tags;
        m.click = self.click;
        m.icon = self.icon;
        m.actions = self.actions;
        m.attachment = self.attachment;
        m.encoding = self.encoding;
        if self.markdown {
            m.content_type = "text/markdown".into();
        }
        if let Some(poll_id) = self.poll_id {
            m.event = EventKind::PollRequest;
            m.poll_id = poll_id;
        }
        // ntfy (v2.19.1+) strips NUL characters before storing text.
        if m.message.contains('\0') {
            m.message.retain(|c| c != '\0');
        }
        if m.title.contains('\0') {
            m.title.retain(|c| c != '\0');
        }
        if m.message.is_empty() {
            m.message = match &m.attachment {
                Some(a) => format!("You received a file: {}", a.name),
                None => EMPTY_MESSAGE.into(),
            };
        }
        m.sequence_id = Some(self.sequence_id.unwrap_or_else(|| m.id.clone()));
        // A scheduled message is always stored (it waits in the store until due), for
        // `cache-duration` after its due time; poll requests and `Cache: no` never are.
        m.expires = if m.event == EventKind::PollRequest || !self.cache {
            None
        } else if self.due.is_some() || cache_secs > 0 {
            Some(m.time.saturating_add(cache_secs))
        } else {
            None
        };
        m
    }
}

/// A sequence's `message_delete` or `message_clear` event, kept in the history like
/// a message (so that clients catching up see it) unless caching is off.
fn sequence_event(
    kind: EventKind,
    topic: String,
    sequence_id: String,
    cache_secs: i64,
    now: i64,
) -> Message {
    let mut m = Message::without_id(kind, topic, now);
    m.sequence_id = Some(sequence_id);
    if cache_secs > 0 {
        m.expires = Some(m.time.saturating_add(cache_secs));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> MessageDraft {
        MessageDraft::default()
    }

    #[test]
    fn expiry_follows_cache_duration_and_cache_flag() {
        let m = draft().into_message("t".into(), 3600, crate::model::now_unix());
        assert_eq!(m.expires, Some(m.time + 3600));
        let m = MessageDraft {
            cache: false,
            ..draft()
        }
        .into_message("t".into(), 3600, crate::model::now_unix());
        assert_eq!(m.expires, None);
        // cache-duration 0: not stored, unless scheduled (it must wait somewhere).
        assert_eq!(
            draft()
                .into_message("t".into(), 0, crate::model::now_unix())
                .expires,
            None
        );
        let m = MessageDraft {
            due: Some(4_000_000_000),
            ..draft()
        }
        .into_message("t".into(), 0, crate::model::now_unix());
        assert_eq!((m.time, m.expires), (4_000_000_000, Some(4_000_000_000)));
    }

    #[test]
    fn poll_requests_are_never_stored() {
        let m = MessageDraft {
            poll_id: Some("p1".into()),
            text: POLL_REQUEST_MESSAGE.into(),
            ..draft()
        }
        .into_message("t".into(), 3600, crate::model::now_unix());
        assert_eq!(m.event, EventKind::PollRequest);
        assert_eq!(m.poll_id, "p1");
        assert_eq!(m.expires, None);
    }

    #[test]
    fn sequence_defaults_to_own_id_and_text_to_ntfy_defaults() {
        let m = draft().into_message("t".into(), 0, crate::model::now_unix());
        assert_eq!(m.sequence_id.as_deref(), Some(m.id.as_str()));
        assert_eq!(m.message, EMPTY_MESSAGE);
        let m = MessageDraft {
            text: "a\0b".into(),
            title: "\0t".into(),
            sequence_id: Some("s".into()),
            attachment: Some(Attachment {
                name: "f.jpg".into(),
                ..Attachment::default()
            }),
            ..draft()
        }
        .into_message("t".into(), 0, crate::model::now_unix());
        assert_eq!((m.message.as_str(), m.title.as_str()), ("ab", "t"));
        assert_eq!(m.sequence_id.as_deref(), Some("s"));
        let m = MessageDraft {
            attachment: Some(Attachment {
                name: "f.jpg".into(),
                ..Attachment::default()
            }),
            ..draft()
        }
        .into_message("t".into(), 0, crate::model::now_unix());
        assert_eq!(m.message, "You received a file: f.jpg");
    }

    /// A draft has no ID; the publish gives it one, sequenced or not, and a
    /// sequence named after the message follows it.
    #[tokio::test]
    async fn a_published_message_gets_one_id_and_its_sequence_follows_it() {
        assert_eq!(
            draft()
                .into_message("t".into(), 3600, crate::model::now_unix())
                .id,
            ""
        );
        let dir = tempfile::tempdir().unwrap();
        let herald = crate::core::tests::herald(&dir);
        for cache in [true, false] {
            let publish = request(PublishKind::Message(Box::new(MessageDraft {
                cache,
                ..draft()
            })));
            let m = herald.publish(publish).await.unwrap();
            assert!(crate::model::id::is_valid(&m.id), "{cache}: {:?}", m.id);
            assert_eq!(m.sequence_id.as_deref(), Some(m.id.as_str()), "{cache}");
        }
        let named = herald.publish(in_sequence("s", None)).await.unwrap();
        assert!(crate::model::id::is_valid(&named.id));
        assert_eq!(named.sequence_id.as_deref(), Some("s"));
        let delete = PublishKind::Delete {
            sequence_id: "s".into(),
        };
        let deleted = herald.publish(request(delete)).await.unwrap();
        assert!(crate::model::id::is_valid(&deleted.id));
        assert!(deleted.id > named.id, "IDs keep publish order");
        herald.store.close().await;
    }

    fn request(kind: PublishKind) -> PublishRequest {
        PublishRequest {
            topic: "t".into(),
            kind,
        }
    }

    fn in_sequence(sequence_id: &str, due: Option<i64>) -> PublishRequest {
        request(PublishKind::Message(Box::new(MessageDraft {
            text: "x".into(),
            due,
            sequence_id: Some(sequence_id.into()),
            ..draft()
        })))
    }

    /// The one core call replaces or cancels a sequence's pending scheduled message;
    /// no transport has to remember to do it first.
    #[tokio::test]
    async fn sequence_update_replaces_and_delete_cancels_the_scheduled_message() {
        let dir = tempfile::tempdir().unwrap();
        let herald = crate::core::tests::herald(&dir);
        let scheduled = || async { herald.store_stats().await.unwrap().scheduled };
        let later = crate::model::now_unix() + 3600;
        herald.publish(in_sequence("a", Some(later))).await.unwrap();
        herald.publish(in_sequence("b", Some(later))).await.unwrap();
        assert_eq!(scheduled().await, 2);

        let update = herald.publish(in_sequence("a", None)).await.unwrap();
        assert_eq!(update.sequence_id.as_deref(), Some("a"));
        assert_eq!(
            scheduled().await,
            1,
            "an update replaces the scheduled message"
        );

        let clear = PublishKind::Clear {
            sequence_id: "b".into(),
        };
        let cleared = herald.publish(request(clear)).await.unwrap();
        assert_eq!(cleared.event, EventKind::MessageClear);
        assert_eq!(scheduled().await, 1, "a clear leaves it scheduled");

        let delete = PublishKind::Delete {
            sequence_id: "b".into(),
        };
        let deleted = herald.publish(request(delete)).await.unwrap();
        assert_eq!(deleted.event, EventKind::MessageDelete);
        assert_eq!(deleted.sequence_id.as_deref(), Some("b"));
        assert_eq!(scheduled().await, 0, "a delete cancels it");
        herald.store.close().await;
    }
}
