//! Where the webhook feed reads committed messages from.
//!
//! On one node that is the message store in commit order
//! ([`Herald::committed_after`], [`CommittedFeed`]); in cluster mode it is the shared
//! log stream every node appends to (the Redis store's `LogFeed`), so the cursor is a
//! position all nodes agree on. The dispatcher does the rest the same way in both.

use std::sync::Arc;

use async_trait::async_trait;

use super::error::WebhookError;
use crate::core::Herald;
use crate::model::Message;

/// A batch of committed messages and the cursor just past them.
#[derive(Debug, Default)]
pub struct FeedBatch {
    /// Messages to queue (only those the message store keeps: cached ones).
    pub messages: Vec<Message>,
    /// The cursor after this batch; `None` when there was nothing new.
    pub next: Option<String>,
}

/// A source of committed messages in a fixed order. See the module docs.
#[async_trait]
pub trait FeedSource: Send + Sync + 'static {
    /// The cursor of a feed that has none yet: webhooks see what comes after it.
    async fn start(&self) -> Result<String, WebhookError>;
    /// A cursor from which [`Self::after`] reads messages with IDs above `message_id`
    /// (and possibly a few below, which the caller skips); for replays.
    fn cursor_for(&self, message_id: &str) -> String {
        message_id.to_string()
    }
    /// An ID that every message committed from now on exceeds (a new endpoint's
    /// `start_after`).
    async fn newest_id(&self) -> Result<String, WebhookError> {
        Ok(crate::model::MessageId::generate().into_string())
    }
    /// Resolves when something may have been committed after `cursor` (at most
    /// `max` later); never, for a source whose commits wake the feed themselves.
    async fn wait_after(&self, cursor: &str, max: std::time::Duration) {
        let _ = (cursor, max);
        std::future::pending::<()>().await
    }
    /// A cursor the feed may jump to while no endpoint is registered, without reading
    /// what lies before it (every endpoint registered later starts above it); `None`
    /// where skipping is not the node's own decision (the cluster's shared cursor).
    fn skippable_bound(&self) -> Option<String> {
        None
    }
    /// Up to `limit` committed messages after `cursor`.
    async fn after(&self, cursor: &str, limit: usize) -> Result<FeedBatch, WebhookError>;
}

/// The single-node feed: this node's message store, in commit order.
pub struct CommittedFeed(pub Arc<Herald>);

#[async_trait]
impl FeedSource for CommittedFeed {
    async fn start(&self) -> Result<String, WebhookError> {
        Ok(self.0.feed_start())
    }

    fn skippable_bound(&self) -> Option<String> {
        Some(self.0.feed_start())
    }

    async fn after(&self, cursor: &str, limit: usize) -> Result<FeedBatch, WebhookError> {
        let messages = self.0.committed_after(cursor, limit).await?;
        let next = messages.last().map(|m| m.id.clone());
        Ok(FeedBatch { messages, next })
    }
}
