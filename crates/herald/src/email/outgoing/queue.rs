//! Where accepted mail waits until the relay took it: the durable queue.
//!
//! Behind a trait because there are two: the node's own SQLite file
//! ([`super::sqlite`]) and, in cluster mode, Redis ([`super::redis`]), where every
//! node's sender takes from one queue. As in the webhook queue
//! (`webhook::store::WebhookStore::claim`), a sender *claims* a due mail under a
//! lease before sending it and settles it afterwards; a sender that dies mid-send
//! leaves a claim that lapses, and the mail is sent again by whoever claims it
//! next. So a mail is sent at least once, and by one node at a time.

use std::time::Duration;

use async_trait::async_trait;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[error("mail queue: {0}")]
pub struct QueueError(pub String);

pub(crate) fn queue_error(e: impl std::fmt::Display) -> QueueError {
    QueueError(e.to_string())
}

/// One mail, ready to send: the envelope recipient and the whole RFC 5322 message
/// (rendered once, so every attempt sends the same bytes and `Message-ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMail {
    /// Random, unique; also the left part of the `Message-ID`.
    pub id: String,
    pub to: String,
    pub body: Vec<u8>,
    /// Attempts already made.
    pub attempts: u32,
    /// When it was queued (unix ms).
    pub created_ms: i64,
}

/// The durable mail queue. See the module docs.
#[async_trait]
pub trait MailQueue: Send + Sync + 'static {
    /// Stores `mail`, due at `due_ms` (unix ms). Returns once it is durable.
    async fn push(&self, mail: &QueuedMail, due_ms: i64) -> Result<(), QueueError>;
    /// Claims up to `max` mails due at `now_ms` for `owner` until `now_ms + lease`.
    async fn claim(
        &self,
        now_ms: i64,
        lease: Duration,
        owner: &str,
        max: usize,
    ) -> Result<Vec<QueuedMail>, QueueError>;
    /// Settles a claimed mail: `None` removes it (sent, or given up), `Some(due)`
    /// makes it due again then with one more attempt counted, if `owner` still
    /// holds the claim.
    async fn settle(&self, id: &str, owner: &str, retry_at: Option<i64>) -> Result<(), QueueError>;
    /// When the next mail can be claimed (unix ms; a claimed one when its lease
    /// ends), if any.
    async fn next_due(&self) -> Result<Option<i64>, QueueError>;
    /// Mails in the queue (claimed or not).
    async fn len(&self) -> Result<u64, QueueError>;
}
