//! The webhook service: the feed (committed messages → delivery rows), the
//! operations the API calls, and housekeeping; the endpoint workers are in
//! [`super::worker`].
//!
//! **Feed.** One task reads committed messages after the durable cursor
//! ([`Herald::committed_after`]), turns each into one delivery per matching endpoint,
//! and stores them together with the new cursor in one transaction. A publish wakes
//! it ([`WakingBroker`]); a 1 s poll covers scheduled messages and anything missed.
//! Scheduled messages are queued when stored and due at their delivery time.
//!
//! This is the one owner of [`Webhooks`]: the workers ([`super::worker::Workers`])
//! get what they need at construction and never see the service.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{self, DeliveryClient};
use super::clock::Clock;
use super::error::WebhookError;
use super::feed::{CommittedFeed, FeedSource};
use super::metrics::WebhookMetrics;
use super::sign::Secret;
use super::store::{Attempt, MAX_ATTEMPTS_LISTED, NewDelivery, WebhookStore, WebhookStoreError};
use super::worker::Workers;
use super::{
    ReplayFrom, Webhook, WebhookConfig, WebhookSpec, is_valid_topic_pattern, random_id,
    topic_matches,
};
use crate::broker::{Broker, BrokerError};
use crate::core::Herald;
use crate::hub::SharedEvent;
use crate::model::{Message, MessageId};

/// Messages read from the feed per batch.
const FEED_BATCH: usize = 512;
/// The feed also looks for work this often without a wake-up (scheduled messages).
const FEED_POLL: Duration = Duration::from_secs(1);
/// Settled deliveries and attempts are kept this long (the attempts API).
const RETENTION: Duration = Duration::from_secs(7 * 86400);
/// Queue metrics and pruning run this often.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Most messages one replay queues.
const MAX_REPLAY: usize = 100_000;

/// A feed's wake-up as the publish path sees it: the `Notify` the feed waits on, and
/// whether the feed wants waking at all. While it has nothing to deliver to (no
/// enabled webhook endpoint, no Web Push subscription) a publish costs one load
/// instead of a wake-up of the feed's task (with a timer re-armed and the
/// sequencer's lock taken each time: about 1,000 instructions per publish in the
/// profile); the feed's own poll keeps its cursor current meanwhile.
#[derive(Debug)]
pub struct FeedWake {
    notify: Notify,
    wanted: std::sync::atomic::AtomicBool,
}

impl FeedWake {
    /// A wake-up that is wanted until the feed says otherwise.
    pub fn new() -> Arc<FeedWake> {
        Arc::new(FeedWake {
            notify: Notify::new(),
            wanted: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Wakes the feed, if it wants it.
    pub fn wake(&self) {
        if self.wanted.load(std::sync::atomic::Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }

    /// Whether publishes wake the feed.
    pub fn is_wanted(&self) -> bool {
        self.wanted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Turns publishes' wake-ups on or off.
    pub fn set_wanted(&self, wanted: bool) {
        self.wanted
            .store(wanted, std::sync::atomic::Ordering::Release);
    }

    /// Waits for a wake-up (one that came while nobody waited counts).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

/// A broker that wakes a feed (webhooks, Web Push) after handing each event on, so
/// the feed sees new messages at once instead of at its next poll.
pub struct WakingBroker {
    inner: Arc<dyn Broker>,
    wake: Arc<FeedWake>,
}

impl WakingBroker {
    /// Wraps `inner`; `wake` is the feed's ([`Webhooks::feed_waker`]).
    pub fn new(inner: Arc<dyn Broker>, wake: Arc<FeedWake>) -> WakingBroker {
        WakingBroker { inner, wake }
    }
}

#[async_trait]
impl Broker for WakingBroker {
    async fn publish(
        &self,
        event: Arc<SharedEvent>,
    ) -> Result<Option<crate::hub::FanOut>, BrokerError> {
        let result = self.inner.publish(event).await;
        self.wake.wake();
        result
    }

    fn try_publish(&self, event: &Arc<SharedEvent>) -> Option<Option<crate::hub::FanOut>> {
        let handed = self.inner.try_publish(event)?;
        self.wake.wake();
        Some(handed)
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
}

/// The webhook service. See the module docs.
pub struct Webhooks {
    pub config: WebhookConfig,
    store: Arc<dyn WebhookStore>,
    herald: Arc<Herald>,
    /// For checking URLs on registration; the workers deliver with a clone.
    client: DeliveryClient,
    metrics: WebhookMetrics,
    clock: Clock,
    /// The feed's wake-up; wanted while any endpoint is enabled (kept by
    /// `reconcile`). Without one the feed only follows the visible bound in memory:
    /// no store reads or writes, and no wake-up, per publish.
    feed_wake: Arc<FeedWake>,
    /// Where committed messages come from (this node's store, or the cluster log).
    source: Arc<dyn FeedSource>,
    workers: Arc<Workers>,
    /// Serialises reconciliations, so an older snapshot of the endpoints never
    /// overwrites a newer one.
    reconciling: tokio::sync::Mutex<()>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Builds the service; nothing runs until [`Self::start`].
    pub fn new(
        config: WebhookConfig,
        store: Arc<dyn WebhookStore>,
        herald: Arc<Herald>,
        metrics: WebhookMetrics,
        feed_wake: Arc<FeedWake>,
    ) -> Result<Arc<Webhooks>, client::ClientError> {
        let source = Arc::new(CommittedFeed(herald.clone()));
        Webhooks::with_feed(config, store, herald, metrics, feed_wake, source)
    }

    /// Like [`Self::new`], reading committed messages from `source` (cluster mode:
    /// the shared log of the Redis store).
    pub fn with_feed(
        config: WebhookConfig,
        store: Arc<dyn WebhookStore>,
        herald: Arc<Herald>,
        metrics: WebhookMetrics,
        feed_wake: Arc<FeedWake>,
        source: Arc<dyn FeedSource>,
    ) -> Result<Arc<Webhooks>, client::ClientError> {
        let client = DeliveryClient::new(
            config.timeout,
            client::AddressPolicy {
                allow_private: config.allow_private,
                allow: config.allow_cidrs.clone(),
            },
        )?;
        let clock = Clock::start();
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let workers = Arc::new(Workers::new(
            &config,
            store.clone(),
            client.clone(),
            metrics.clone(),
            clock,
            tracker.clone(),
            shutdown.clone(),
        ));
        Ok(Arc::new(Webhooks {
            config,
            store,
            herald,
            client,
            metrics,
            clock,
            feed_wake,
            source,
            workers,
            reconciling: tokio::sync::Mutex::new(()),
            tracker,
            shutdown,
        }))
    }

    /// Starts the feed, housekeeping and one worker per enabled endpoint.
    pub async fn start(self: &Arc<Self>) {
        let this = self.clone();
        self.tracker.spawn(async move { this.run_feed().await });
        let this = self.clone();
        self.tracker
            .spawn(async move { this.run_housekeeping().await });
        self.reconcile().await;
    }

    /// Stops every task; attempts in flight are abandoned (their claims lapse, and
    /// they are retried with the same `webhook-id`).
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    // -----------------------------------------------------------------------------
    // Operations (the API)

    /// Registers an endpoint for `owner`; also answers its management token (shown
    /// only now: the store keeps its digest).
    pub async fn create(
        self: &Arc<Self>,
        spec: WebhookSpec,
        owner: &str,
    ) -> Result<(Webhook, String), WebhookError> {
        let topic = spec
            .topic
            .ok_or_else(|| WebhookError::Invalid("\"topic\" is required".into()))?;
        let url = spec
            .url
            .ok_or_else(|| WebhookError::Invalid("\"url\" is required".into()))?;
        let secret = match spec.secret {
            Some(s) => Secret::parse(&s).map_err(|e| WebhookError::Invalid(e.to_string()))?,
            None => Secret::generate(),
        };
        let (token, token_digest) = super::token::generate()
            .map_err(|e| WebhookStoreError::Backend(format!("no randomness for a token: {e}")))?;
        let limit = self.config.visitor_limit;
        if limit > 0 && self.store.count_owned(owner).await? >= limit {
            return Err(WebhookError::LimitReached);
        }
        // Under the reconcile lock, so a reconcile that read the endpoints before this
        // insert cannot lower the flag after it was raised here (see `run_feed`).
        let turn = self.reconciling.lock().await;
        self.feed_wake.set_wanted(true);
        let webhook = Webhook {
            id: random_id("wh_"),
            topic,
            url,
            secret: secret.as_str().to_string(),
            previous_secret: None,
            filter: spec.filter.unwrap_or_default(),
            description: spec.description.unwrap_or_default(),
            ordered: spec.ordered.unwrap_or(false),
            owner: owner.to_string(),
            token_digest: Some(token_digest),
            created: crate::model::now_unix(),
            // Every message published after this call returns has a greater ID.
            start_after: self.source.newest_id().await?,
            disabled: None,
            failing_since: None,
        };
        self.validate(&webhook)?;
        self.store.insert_webhook(&webhook).await?;
        drop(turn);
        self.reconcile().await;
        Ok((webhook, token))
    }

    fn validate(&self, w: &Webhook) -> Result<(), WebhookError> {
        if !is_valid_topic_pattern(&w.topic) {
            return Err(WebhookError::Invalid(
                "\"topic\" must be a topic name or a pattern with *".into(),
            ));
        }
        self.client
            .check_url(&w.url)
            .map_err(|e| WebhookError::Invalid(format!("\"url\": {e}")))?;
        if w.url.len() > 2048 || w.description.len() > 1024 {
            return Err(WebhookError::Invalid(
                "\"url\" or \"description\" too long".into(),
            ));
        }
        if w.filter.priority.iter().any(|p| !(1..=5).contains(p)) || w.filter.tags.len() > 32 {
            return Err(WebhookError::Invalid(
                "\"filter\": priorities are 1 to 5, at most 32 tags".into(),
            ));
        }
        Ok(())
    }

    /// Every endpoint.
    pub async fn list(&self) -> Result<Vec<Webhook>, WebhookError> {
        Ok(self.store.webhooks().await?)
    }

    /// One endpoint.
    pub async fn get(&self, id: &str) -> Result<Webhook, WebhookError> {
        self.store.webhook(id).await?.ok_or(WebhookError::NotFound)
    }

    /// Changes the fields `spec` sets (not the secret: see [`Self::rotate`]).
    pub async fn update(
        self: &Arc<Self>,
        id: &str,
        spec: WebhookSpec,
    ) -> Result<Webhook, WebhookError> {
        let mut w = self.get(id).await?;
        if spec.secret.is_some() {
            return Err(WebhookError::Invalid(
                "the secret changes only by rotation (POST /v1/webhooks/<id>/rotate)".into(),
            ));
        }
        if let Some(topic) = spec.topic {
            w.topic = topic;
        }
        if let Some(url) = spec.url {
            w.url = url;
        }
        if let Some(filter) = spec.filter {
            w.filter = filter;
        }
        if let Some(description) = spec.description {
            w.description = description;
        }
        if let Some(ordered) = spec.ordered {
            w.ordered = ordered;
        }
        self.validate(&w)?;
        self.save(&w).await?;
        Ok(w)
    }

    async fn save(self: &Arc<Self>, w: &Webhook) -> Result<(), WebhookError> {
        if !self.store.update_webhook(w).await? {
            return Err(WebhookError::NotFound);
        }
        self.reconcile().await;
        Ok(())
    }

    /// Removes an endpoint with its queue and attempts.
    pub async fn delete(self: &Arc<Self>, id: &str) -> Result<(), WebhookError> {
        if !self.store.delete_webhook(id).await? {
            return Err(WebhookError::NotFound);
        }
        self.reconcile().await;
        Ok(())
    }

    /// Replaces the secret (with `secret`, or a new random one); the old one keeps
    /// signing next to it for `webhook-secret-grace`.
    pub async fn rotate(
        self: &Arc<Self>,
        id: &str,
        secret: Option<String>,
    ) -> Result<Webhook, WebhookError> {
        let secret = match secret {
            Some(s) => Secret::parse(&s).map_err(|e| WebhookError::Invalid(e.to_string()))?,
            None => Secret::generate(),
        };
        let mut w = self.get(id).await?;
        let until = crate::model::now_unix() + self.config.secret_grace.as_secs() as i64;
        let old = std::mem::replace(&mut w.secret, secret.as_str().to_string());
        w.previous_secret = Some((old, until));
        self.save(&w).await?;
        Ok(w)
    }

    /// Enables a disabled endpoint; its pending deliveries resume.
    pub async fn enable(self: &Arc<Self>, id: &str) -> Result<Webhook, WebhookError> {
        let mut w = self.get(id).await?;
        w.disabled = None;
        w.failing_since = None;
        self.save(&w).await?;
        Ok(w)
    }

    /// The endpoint's latest attempts, newest first.
    pub async fn attempts(&self, id: &str, limit: usize) -> Result<Vec<Attempt>, WebhookError> {
        self.get(id).await?;
        Ok(self
            .store
            .attempts(id, limit.clamp(1, MAX_ATTEMPTS_LISTED))
            .await?)
    }

    /// Queues the endpoint's messages since `from` again (those still in the message
    /// store); returns how many.
    pub async fn replay(&self, id: &str, from: ReplayFrom) -> Result<usize, WebhookError> {
        let w = self.get(id).await?;
        let (after, min_time) = match from {
            ReplayFrom::AfterId(id) => (id, None),
            // IDs carry their publish time, but a scheduled message's `time` is later
            // than its ID's: start one `message-delay-limit` earlier and check `time`.
            ReplayFrom::Time(t) => {
                let earliest =
                    t.saturating_sub(self.herald.config().message_delay_limit.as_secs() as i64);
                let floor = MessageId::floor_at((earliest.max(0) as u64).saturating_mul(1000));
                (floor, Some(t))
            }
        };
        let now_ms = self.clock.now_ms();
        let mut queued = 0;
        let mut seen = 0;
        let mut cursor = self.source.cursor_for(&after);
        loop {
            let batch = self.source.after(&cursor, FEED_BATCH).await?;
            let Some(next) = batch.next else { break };
            cursor = next;
            seen += batch.messages.len().max(1);
            let deliveries: Vec<NewDelivery> = batch
                .messages
                .iter()
                .filter(|m| m.id > after)
                .filter(|m| min_time.is_none_or(|t| m.time >= t))
                .filter(|m| topic_matches(&w.topic, &m.topic) && w.filter.matches(m))
                .map(|m| new_delivery(&w.id, m, now_ms + self.first_delay_ms()))
                .collect();
            queued += self.store.requeue(deliveries).await?;
            if seen >= MAX_REPLAY {
                break;
            }
        }
        self.workers.wake(&w.id);
        Ok(queued)
    }

    /// The schedule's delay before the first attempt (normally 0).
    fn first_delay_ms(&self) -> i64 {
        self.config
            .retry_schedule
            .first()
            .map_or(0, |d| d.as_millis() as i64)
    }

    /// The wake-up [`WakingBroker`] pokes.
    pub fn feed_waker(&self) -> Arc<FeedWake> {
        self.feed_wake.clone()
    }

    // -----------------------------------------------------------------------------
    // The feed

    async fn run_feed(self: Arc<Self>) {
        let mut cursor = loop {
            match self.initial_cursor().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot read the feed cursor");
                    if self.pause(Duration::from_secs(1)).await {
                        return;
                    }
                }
            }
        };
        loop {
            // The bound first, then the flag: `create` raises the flag before it
            // takes the new endpoint's `start_after`, so when the flag is still down
            // every endpoint registered later wants only messages above this bound,
            // and skipping to it loses nothing. The cursor is written again with the
            // first deliveries.
            let bound = self.source.skippable_bound();
            if let Some(bound) = bound
                && !self.feed_wake.is_wanted()
            {
                cursor = bound;
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = self.feed_wake.notified() => {}
                    _ = tokio::time::sleep(FEED_POLL) => {}
                }
                continue;
            }
            match self.feed_once(&cursor).await {
                Ok(Some(next)) => cursor = next,
                Ok(None) => {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = self.feed_wake.notified() => {}
                        _ = self.source.wait_after(&cursor, FEED_POLL) => {}
                        _ = tokio::time::sleep(FEED_POLL) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: feed failed; retrying");
                    if self.pause(Duration::from_secs(1)).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps; true if shutdown came first.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }

    async fn initial_cursor(&self) -> Result<String, WebhookError> {
        loop {
            if let Some(c) = self.store.cursor().await? {
                // The cursor may be newer than every stored message (they expired):
                // new IDs must still sort after it, or the feed would skip them.
                crate::model::id::never_below(&c);
                return Ok(c);
            }
            // First start: webhooks see what is published from now on. Another node
            // may set it first (cluster); then its cursor counts.
            let start = self.source.start().await?;
            if self
                .store
                .enqueue_from(Vec::new(), None, &start)
                .await?
                .is_some()
            {
                return Ok(start);
            }
        }
    }

    /// Moves one batch from the message store into the queue; the new cursor, or
    /// `None` when there was nothing new. When another node moved the cursor first
    /// (cluster), this batch is dropped and the feed goes on from that node's cursor.
    async fn feed_once(&self, cursor: &str) -> Result<Option<String>, WebhookError> {
        let batch = self.source.after(cursor, FEED_BATCH).await?;
        let Some(next) = batch.next else {
            return Ok(None);
        };
        let webhooks = self.store.webhooks().await?;
        let now_ms = self.clock.now_ms();
        let mut woken = Vec::new();
        let mut deliveries = Vec::new();
        for m in &batch.messages {
            for w in webhooks.iter().filter(|w| w.wants(m)) {
                deliveries.push(new_delivery(&w.id, m, now_ms + self.first_delay_ms()));
                if !woken.contains(&w.id) {
                    woken.push(w.id.clone());
                }
            }
        }
        if self
            .store
            .enqueue_from(deliveries, Some(cursor), &next)
            .await?
            .is_none()
        {
            return Ok(self.store.cursor().await?);
        }
        for id in woken {
            self.workers.wake(&id);
        }
        Ok(Some(next))
    }

    // -----------------------------------------------------------------------------
    // Workers

    /// Makes the running workers match the stored endpoints: one per enabled
    /// endpoint, with its current settings.
    async fn reconcile(self: &Arc<Self>) {
        let _turn = self.reconciling.lock().await;
        let webhooks = match self.store.webhooks().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: cannot read endpoints");
                return;
            }
        };
        let any_enabled = webhooks.iter().any(|w| w.disabled.is_none());
        self.feed_wake.set_wanted(any_enabled);
        self.workers.sync(webhooks);
    }

    // -----------------------------------------------------------------------------
    // Housekeeping

    async fn run_housekeeping(self: Arc<Self>) {
        let mut last_prune = tokio::time::Instant::now();
        let mut version = None;
        loop {
            // Endpoint changes made on another node (cluster) reach this node's
            // workers within one housekeeping period.
            match self.store.version().await {
                Ok(Some(v)) if version != Some(v) => {
                    if version.is_some() {
                        self.reconcile().await;
                    }
                    version = Some(v);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "webhooks: endpoint version failed"),
            }
            match self.store.queue_stats().await {
                Ok(s) => {
                    let age = s
                        .oldest_due_ms
                        .map(|due| (self.clock.now_ms() - due) as f64 / 1000.0)
                        .unwrap_or(0.0);
                    self.metrics.set_queue(s.pending, age, s.disabled);
                }
                Err(e) => tracing::debug!(error = %e, "webhooks: queue stats failed"),
            }
            if last_prune.elapsed() > Duration::from_secs(600) {
                last_prune = tokio::time::Instant::now();
                let before = self.clock.now_ms() - RETENTION.as_millis() as i64;
                if let Err(e) = self.store.prune(before).await {
                    tracing::warn!(error = %e, "webhooks: prune failed");
                }
            }
            if self.pause(HOUSEKEEPING).await {
                return;
            }
        }
    }
}

/// The delivery of `m` to `webhook_id`, first due at `first_ms` or, for a scheduled
/// message, when it is due.
fn new_delivery(webhook_id: &str, m: &Message, first_ms: i64) -> NewDelivery {
    NewDelivery {
        webhook_id: webhook_id.to_string(),
        message_id: m.id.clone(),
        event: m.event.as_str().to_string(),
        payload: serde_json::to_string(&m.for_json()).unwrap_or_else(|_| "{}".into()),
        event_time: m.time,
        due_ms: first_ms.max(m.time.saturating_mul(1000)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_feed_that_wants_no_wake_up_is_not_woken() {
        let wake = FeedWake::new();
        assert!(wake.is_wanted(), "wanted until the feed knows better");
        wake.set_wanted(false);
        wake.wake();
        let woken = tokio::time::timeout(Duration::from_millis(20), wake.notified()).await;
        assert!(woken.is_err(), "no wake-up stored while unwanted");
        wake.set_wanted(true);
        wake.wake();
        let woken = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
        assert!(woken.is_ok(), "a wake-up while wanted is kept for the feed");
    }
}
