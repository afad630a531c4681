//! Where webhook state lives: endpoints, the delivery queue, attempts, the feed cursor.
//!
//! Behind a trait because there are two implementations: with several herald
//! nodes (Redis), "webhook deliveries are claimed once per message and endpoint, and
//! a dead node's claims are taken over". So the queue speaks in claims with leases:
//! [`WebhookStore::claim`] hands a due delivery to one claimant until its lease
//! expires; [`WebhookStore::finish_attempt`] settles it. The implementations sit
//! above this module and import it, never the reverse: the embedded one is
//! `sqlite::SqliteWebhookStore`, the cluster one `redis::RedisWebhookStore`.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::Webhook;

/// Most attempts listed by the API (and so the most [`WebhookStore::attempts`] returns).
pub const MAX_ATTEMPTS_LISTED: usize = 1000;

/// Why a webhook store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookStoreError {
    #[error("webhook store backend: {0}")]
    Backend(String),
    #[error("stored webhook is malformed: {0}")]
    Corrupt(String),
}

/// A delivery to enqueue: one message for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub webhook_id: String,
    /// The ntfy message ID; also the `webhook-id` header (the same on every retry).
    pub message_id: String,
    /// `message`, `message_delete` or `message_clear`.
    pub event: String,
    /// The message's ntfy JSON, kept because retries outlast `cache-duration`.
    pub payload: String,
    /// Unix seconds the event happened (the body's `timestamp`).
    pub event_time: i64,
    /// When the first attempt is due (unix ms): now, or a scheduled message's time.
    pub due_ms: i64,
}

/// A claimed delivery, ready for an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The store's handle for this delivery.
    pub key: i64,
    pub webhook_id: String,
    pub message_id: String,
    pub event: String,
    pub payload: String,
    pub event_time: i64,
    pub due_ms: i64,
    /// Attempts already made.
    pub attempts: u32,
}

/// How an attempt ended for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// 2xx: done.
    Delivered,
    /// Failed; try again at this time (unix ms).
    RetryAt(i64),
    /// Failed and no attempts are left.
    Exhausted,
}

/// One attempt, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub message_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Unix milliseconds the attempt started.
    pub time_ms: i64,
    /// HTTP status, if a response arrived.
    pub status: Option<u16>,
    pub latency_ms: i64,
    /// What went wrong (connection refused, timeout, refused destination, non-2xx).
    pub error: Option<String>,
    /// The first bytes of the response body (capped).
    pub response: Option<String>,
    /// When the next attempt is due (unix ms); `None`: delivered or exhausted.
    pub next_attempt_ms: Option<i64>,
}

/// The outcome of an attempt to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery: i64,
    /// Who made the attempt (the `owner` it was claimed for). A store shared by
    /// several nodes lets the record of a claim that lapsed and was claimed again
    /// settle the delivery only as delivered, never undo the new claim.
    pub owner: String,
    pub webhook_id: String,
    pub attempt: Attempt,
    pub settlement: Settlement,
}

/// Queue figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Deliveries not yet delivered or exhausted.
    pub pending: u64,
    /// Due time (unix ms) of the oldest of them.
    pub oldest_due_ms: Option<i64>,
    /// Disabled endpoints.
    pub disabled: u64,
}

/// Durable webhook state. See the module docs.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    async fn insert_webhook(&self, webhook: &Webhook) -> Result<(), WebhookStoreError>;
    async fn webhooks(&self) -> Result<Vec<Webhook>, WebhookStoreError>;
    async fn webhook(&self, id: &str) -> Result<Option<Webhook>, WebhookStoreError>;
    /// Replaces the stored endpoint with this ID; false if there is none.
    async fn update_webhook(&self, webhook: &Webhook) -> Result<bool, WebhookStoreError>;
    /// Deletes the endpoint with its deliveries and attempts; false if there is none.
    async fn delete_webhook(&self, id: &str) -> Result<bool, WebhookStoreError>;
    /// Endpoints registered by `owner`.
    async fn count_owned(&self, owner: &str) -> Result<usize, WebhookStoreError>;

    /// The last message ID handed to the queue.
    async fn cursor(&self) -> Result<Option<String>, WebhookStoreError>;
    /// Inserts `deliveries` (one per message and endpoint: a pair already queued is
    /// left alone) and moves the cursor to `cursor`, atomically.
    async fn enqueue(
        &self,
        deliveries: Vec<NewDelivery>,
        cursor: &str,
    ) -> Result<usize, WebhookStoreError>;
    /// [`Self::enqueue`] only if the cursor is still `from` (`None`: no cursor yet),
    /// for stores that several nodes feed (each message becomes deliveries once);
    /// `None` if the cursor had moved and nothing was done. A store with one feeder
    /// need not check.
    async fn enqueue_from(
        &self,
        deliveries: Vec<NewDelivery>,
        from: Option<&str>,
        cursor: &str,
    ) -> Result<Option<usize>, WebhookStoreError> {
        let _ = from;
        self.enqueue(deliveries, cursor).await.map(Some)
    }
    /// A number that changes with every endpoint change, for stores several nodes
    /// share (each node reloads its workers when it moves); `None`: not shared.
    async fn version(&self) -> Result<Option<u64>, WebhookStoreError> {
        Ok(None)
    }
    /// Queues `deliveries` again (replay): pairs already queued become pending and
    /// due now, with their attempts count reset.
    async fn requeue(&self, deliveries: Vec<NewDelivery>) -> Result<usize, WebhookStoreError>;

    /// Claims up to `max` due deliveries of `webhook_id` for `owner` until
    /// `now_ms + lease`. With `ordered`, only the endpoint's oldest pending delivery
    /// can be claimed, and only when it is due and not claimed already.
    async fn claim(
        &self,
        webhook_id: &str,
        ordered: bool,
        max: usize,
        now_ms: i64,
        lease: Duration,
        owner: &str,
    ) -> Result<Vec<Delivery>, WebhookStoreError>;
    /// Gives up `owner`'s claims on the deliveries `keys` of `webhook_id` (attempts
    /// abandoned at shutdown): claimable again from `now_ms`. A claim that is no
    /// longer `owner`'s is left alone. The embedded store, with one process, needs
    /// nothing (opening it releases every claim).
    async fn release(
        &self,
        webhook_id: &str,
        keys: &[i64],
        owner: &str,
        now_ms: i64,
    ) -> Result<(), WebhookStoreError> {
        let _ = (webhook_id, keys, owner, now_ms);
        Ok(())
    }
    /// When the next claimable delivery of `webhook_id` is due (unix ms).
    async fn next_due(
        &self,
        webhook_id: &str,
        ordered: bool,
        now_ms: i64,
    ) -> Result<Option<i64>, WebhookStoreError>;
    /// Records an attempt, settles its delivery and releases the claim, and keeps the
    /// endpoint's failure streak: cleared on success, started on a failure. Returns
    /// the endpoint's `failing_since` (unix seconds) afterwards.
    async fn finish_attempt(&self, record: AttemptRecord)
    -> Result<Option<i64>, WebhookStoreError>;
    /// The endpoint's latest attempts, newest first.
    async fn attempts(
        &self,
        webhook_id: &str,
        limit: usize,
    ) -> Result<Vec<Attempt>, WebhookStoreError>;
    async fn queue_stats(&self) -> Result<QueueStats, WebhookStoreError>;
    /// Forgets settled deliveries and attempts older than `before_ms`.
    async fn prune(&self, before_ms: i64) -> Result<u64, WebhookStoreError>;
}
