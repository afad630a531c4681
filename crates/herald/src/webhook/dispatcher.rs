//! The webhook service: the feed (committed messages → delivery rows), one worker
//! per enabled endpoint (claims, attempts, retries), and the operations the API calls.
//!
//! - **Feed.** One task reads committed messages after the durable cursor
//!   ([`Herald::committed_after`]), turns each into one delivery per matching
//!   endpoint, and stores them together with the new cursor in one transaction. A
//!   publish wakes it ([`WakingBroker`]); a 1 s poll covers scheduled messages and
//!   anything missed. Scheduled messages are queued when stored and due at their
//!   delivery time.
//! - **Workers.** Each enabled endpoint has a task that keeps up to
//!   `webhook-concurrency` attempts in flight (one with `ordered`), claiming due
//!   deliveries under a lease. An endpoint that is slow or down fills only its own
//!   slots, so it never delays other endpoints, the feed, or publishing.
//! - **Retries.** After attempt *n* fails, attempt *n+1* is due after
//!   `webhook-retry-schedule[n]` ±20 % ([`RetryPolicy`]); `Retry-After` on 429/503
//!   moves it within [delay, 2 × delay]. `410 Gone` disables the endpoint, and so
//!   does failing without a success for longer than `webhook-disable-after`.
//!
//! Times in the queue are unix milliseconds from [`Clock`]: the wall clock at start
//! plus tokio's monotonic time since, so a wall-clock step does not bunch retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{self, DeliveryClient, FailureKind};
use super::metrics::{Outcome, WebhookMetrics};
use super::sign::{Secret, signature_header};
use super::store::{
    Attempt, AttemptRecord, Delivery, NewDelivery, Settlement, WebhookStore, WebhookStoreError,
};
use super::{Filter, Webhook, WebhookConfig, is_valid_topic_pattern, random_id, topic_matches};
use crate::broker::{Broker, BrokerError};
use crate::core::Herald;
use crate::hub::SharedEvent;
use crate::model::{Message, MessageId};

/// Messages read from the feed per batch.
const FEED_BATCH: usize = 512;
/// The feed also looks for work this often without a wake-up (scheduled messages).
const FEED_POLL: Duration = Duration::from_secs(1);
/// A claim outlives the longest attempt by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Settled deliveries and attempts are kept this long (the attempts API).
const RETENTION: Duration = Duration::from_secs(7 * 86400);
/// Queue metrics and pruning run this often.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Most attempts listed by the API.
pub const MAX_ATTEMPTS_LISTED: usize = 1000;
/// Most messages one replay queues.
const MAX_REPLAY: usize = 100_000;

/// Why a webhook operation failed (the API maps these to ntfy-shaped errors).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("no such webhook")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("limit reached: too many webhooks for this visitor")]
    LimitReached,
    #[error(transparent)]
    Store(#[from] WebhookStoreError),
    #[error("message store: {0}")]
    Messages(#[from] crate::store::StoreError),
}

/// A monotonic clock in unix milliseconds (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_ms: i64,
    start: tokio::time::Instant,
}

impl Clock {
    /// Anchored at the current wall clock.
    pub fn start() -> Clock {
        Clock {
            wall_ms: crate::model::now_unix_ms(),
            start: tokio::time::Instant::now(),
        }
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.wall_ms + self.start.elapsed().as_millis() as i64
    }
}

/// When to try again, per `webhook-retry-schedule` and Svix's rules.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The delay before each attempt; its length is the number of attempts.
    pub schedule: Vec<Duration>,
}

impl RetryPolicy {
    /// The delay before the next attempt after `attempts_made` attempts, or `None`
    /// when none is left. `jitter` in [-1, 1] scales ±20 %; `retry_after` (only
    /// passed for 429 and 503) is honoured within [delay, 2 × delay].
    pub fn next_delay(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        let base = *self.schedule.get(attempts_made as usize)?;
        let delay = base.mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0));
        Some(match retry_after {
            Some(asked) => asked.clamp(delay, delay * 2),
            None => delay,
        })
    }
}

/// A broker that wakes the webhook feed after handing each event on, so webhooks
/// see new messages at once instead of at the next poll.
pub struct WakingBroker {
    inner: Arc<dyn Broker>,
    wake: Arc<Notify>,
}

impl WakingBroker {
    /// Wraps `inner`; `wake` is [`Webhooks::feed_waker`].
    pub fn new(inner: Arc<dyn Broker>, wake: Arc<Notify>) -> WakingBroker {
        WakingBroker { inner, wake }
    }
}

#[async_trait]
impl Broker for WakingBroker {
    async fn publish(&self, event: Arc<SharedEvent>) -> Result<(), BrokerError> {
        let result = self.inner.publish(event).await;
        self.wake.notify_one();
        result
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
}

/// What `POST /v1/webhooks` asks for.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub topic: Option<String>,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub filter: Option<Filter>,
    pub description: Option<String>,
    pub ordered: Option<bool>,
}

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrom {
    /// After this message ID.
    AfterId(String),
    /// Messages from this unix time (seconds) on.
    Time(i64),
}

struct Worker {
    webhook: watch::Sender<Webhook>,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

/// The webhook service. See the module docs.
pub struct Webhooks {
    pub config: WebhookConfig,
    store: Arc<dyn WebhookStore>,
    herald: Arc<Herald>,
    client: DeliveryClient,
    metrics: WebhookMetrics,
    retry: RetryPolicy,
    clock: Clock,
    /// This process's name on claims.
    node: String,
    feed_wake: Arc<Notify>,
    workers: Mutex<HashMap<String, Worker>>,
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
        feed_wake: Arc<Notify>,
    ) -> Result<Arc<Webhooks>, client::ClientError> {
        let client = DeliveryClient::new(
            config.timeout,
            client::AddressPolicy {
                allow_private: config.allow_private,
                allow: config.allow_cidrs.clone(),
            },
        )?;
        Ok(Arc::new(Webhooks {
            retry: RetryPolicy {
                schedule: config.retry_schedule.clone(),
            },
            config,
            store,
            herald,
            client,
            metrics,
            clock: Clock::start(),
            node: random_id("node_"),
            feed_wake,
            workers: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
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

    /// Registers an endpoint for `owner`.
    pub async fn create(
        self: &Arc<Self>,
        spec: WebhookSpec,
        owner: &str,
    ) -> Result<Webhook, WebhookError> {
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
        let limit = self.config.visitor_limit;
        if limit > 0 && self.store.count_owned(owner).await? >= limit {
            return Err(WebhookError::LimitReached);
        }
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
            created: crate::model::now_unix(),
            // Every message published after this call returns has a greater ID.
            start_after: MessageId::generate().into_string(),
            disabled: None,
            failing_since: None,
        };
        self.validate(&webhook)?;
        self.store.insert_webhook(&webhook).await?;
        self.reconcile().await;
        Ok(webhook)
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
        let (mut after, min_time) = match from {
            ReplayFrom::AfterId(id) => (id, None),
            // IDs carry their publish time, but a scheduled message's `time` is later
            // than its ID's: start one `message-delay-limit` earlier and check `time`.
            ReplayFrom::Time(t) => {
                let earliest =
                    t.saturating_sub(self.herald.config.message_delay_limit.as_secs() as i64);
                let floor = MessageId::floor_at((earliest.max(0) as u64).saturating_mul(1000));
                (floor, Some(t))
            }
        };
        let now_ms = self.clock.now_ms();
        let mut queued = 0;
        let mut seen = 0;
        loop {
            let batch = self.herald.committed_after(&after, FEED_BATCH).await?;
            let Some(last) = batch.last() else { break };
            after = last.id.clone();
            seen += batch.len();
            let deliveries: Vec<NewDelivery> = batch
                .iter()
                .filter(|m| min_time.is_none_or(|t| m.time >= t))
                .filter(|m| topic_matches(&w.topic, &m.topic) && w.filter.matches(m))
                .map(|m| new_delivery(&w.id, m, now_ms + self.first_delay_ms()))
                .collect();
            queued += self.store.requeue(deliveries).await?;
            if seen >= MAX_REPLAY {
                break;
            }
        }
        self.wake_worker(&w.id);
        Ok(queued)
    }

    /// The schedule's delay before the first attempt (normally 0).
    fn first_delay_ms(&self) -> i64 {
        self.retry
            .schedule
            .first()
            .map_or(0, |d| d.as_millis() as i64)
    }

    /// The notifier [`WakingBroker`] pokes.
    pub fn feed_waker(&self) -> Arc<Notify> {
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
            match self.feed_once(&cursor).await {
                Ok(Some(next)) => cursor = next,
                Ok(None) => {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = self.feed_wake.notified() => {}
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
        if let Some(c) = self.store.cursor().await? {
            return Ok(c);
        }
        // First start: webhooks see what is published from now on.
        let start = self.herald.feed_start();
        self.store.enqueue(Vec::new(), &start).await?;
        Ok(start)
    }

    /// Moves one batch from the message store into the queue; the new cursor, or
    /// `None` when there was nothing new.
    async fn feed_once(&self, cursor: &str) -> Result<Option<String>, WebhookError> {
        let batch = self.herald.committed_after(cursor, FEED_BATCH).await?;
        let Some(last) = batch.last() else {
            return Ok(None);
        };
        let webhooks = self.store.webhooks().await?;
        let now_ms = self.clock.now_ms();
        let mut woken = Vec::new();
        let mut deliveries = Vec::new();
        for m in &batch {
            for w in webhooks.iter().filter(|w| w.wants(m)) {
                deliveries.push(new_delivery(&w.id, m, now_ms + self.first_delay_ms()));
                if !woken.contains(&w.id) {
                    woken.push(w.id.clone());
                }
            }
        }
        self.store.enqueue(deliveries, &last.id).await?;
        for id in woken {
            self.wake_worker(&id);
        }
        Ok(Some(last.id.clone()))
    }

    fn wake_worker(&self, id: &str) {
        if let Some(w) = self.lock_workers().get(id) {
            w.wake.notify_one();
        }
    }

    fn lock_workers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Worker>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    // -----------------------------------------------------------------------------
    // Workers

    /// Makes the running workers match the stored endpoints: one per enabled
    /// endpoint, with its current settings.
    async fn reconcile(self: &Arc<Self>) {
        let webhooks = match self.store.webhooks().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: cannot read endpoints");
                return;
            }
        };
        let mut workers = self.lock_workers();
        workers.retain(|id, worker| {
            match webhooks
                .iter()
                .find(|w| &w.id == id && w.disabled.is_none())
            {
                Some(w) => {
                    worker.webhook.send_if_modified(|current| {
                        let changed = current != w;
                        *current = w.clone();
                        changed
                    });
                    worker.wake.notify_one();
                    true
                }
                None => {
                    worker.stop.cancel();
                    false
                }
            }
        });
        if self.shutdown.is_cancelled() {
            return;
        }
        for w in webhooks.into_iter().filter(|w| w.disabled.is_none()) {
            if workers.contains_key(&w.id) {
                continue;
            }
            let (tx, rx) = watch::channel(w.clone());
            let wake = Arc::new(Notify::new());
            let stop = self.shutdown.child_token();
            workers.insert(
                w.id.clone(),
                Worker {
                    webhook: tx,
                    wake: wake.clone(),
                    stop: stop.clone(),
                },
            );
            let this = self.clone();
            self.tracker
                .spawn(async move { this.run_worker(rx, wake, stop).await });
        }
    }

    async fn run_worker(
        self: Arc<Self>,
        webhook: watch::Receiver<Webhook>,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) {
        let lease = self.config.timeout + LEASE_MARGIN;
        let mut in_flight = JoinSet::new();
        loop {
            let current = webhook.borrow().clone();
            let slots = if current.ordered {
                1
            } else {
                self.config.concurrency.max(1)
            };
            let mut wait = FEED_POLL;
            if in_flight.len() < slots {
                let now = self.clock.now_ms();
                match self
                    .store
                    .claim(
                        &current.id,
                        current.ordered,
                        slots - in_flight.len(),
                        now,
                        lease,
                        &self.node,
                    )
                    .await
                {
                    Ok(claimed) => {
                        for delivery in claimed {
                            let this = self.clone();
                            let w = current.clone();
                            in_flight.spawn(async move { this.attempt(w, delivery).await });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "webhooks: claim failed"),
                }
                if in_flight.len() < slots {
                    let now = self.clock.now_ms();
                    if let Ok(Some(due)) =
                        self.store.next_due(&current.id, current.ordered, now).await
                    {
                        let ms = (due - now).clamp(10, FEED_POLL.as_millis() as i64);
                        wait = Duration::from_millis(ms as u64);
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    in_flight.abort_all();
                    return;
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One attempt of `delivery` to `webhook`, recorded and settled.
    async fn attempt(self: Arc<Self>, webhook: Webhook, delivery: Delivery) {
        let started_ms = self.clock.now_ms();
        let now_s = started_ms.div_euclid(1000);
        let body = webhook_body(&delivery);
        let mut secrets = Vec::new();
        if let Ok(s) = Secret::parse(&webhook.secret) {
            secrets.push(s);
        }
        if let Some((old, until)) = &webhook.previous_secret
            && *until > now_s
            && let Ok(s) = Secret::parse(old)
        {
            secrets.push(s);
        }
        let refs: Vec<&Secret> = secrets.iter().collect();
        let signature = signature_header(&refs, &delivery.message_id, now_s, body.as_bytes());
        let (response, elapsed) = self
            .client
            .send(client::Request {
                url: &webhook.url,
                id: &delivery.message_id,
                timestamp: now_s,
                signature: &signature,
                body,
            })
            .await;
        let latency_ms = elapsed.as_millis() as i64;
        let attempts_made = delivery.attempts + 1;
        let (outcome, status, error, response_body, retry_after) = match response {
            client::Response::Status {
                status,
                retry_after,
                body,
            } => {
                let ok = (200..300).contains(&status);
                let outcome = if ok {
                    Outcome::Success
                } else {
                    Outcome::HttpError
                };
                let error = (!ok).then(|| format!("HTTP {status}"));
                let retry_after = retry_after.filter(|_| status == 429 || status == 503);
                (outcome, Some(status), error, Some(body), retry_after)
            }
            client::Response::Failed { kind, error } => {
                let outcome = match kind {
                    FailureKind::Timeout => Outcome::Timeout,
                    FailureKind::Connect => Outcome::ConnectError,
                    FailureKind::Refused => Outcome::Refused,
                    FailureKind::Other => Outcome::Error,
                };
                (outcome, None, Some(error), None, None)
            }
        };
        let finished_ms = started_ms + latency_ms;
        let settlement = if outcome == Outcome::Success {
            Settlement::Delivered
        } else {
            let jitter = fastrand::f64() * 2.0 - 1.0;
            match self.retry.next_delay(attempts_made, retry_after, jitter) {
                Some(d) => Settlement::RetryAt(finished_ms + d.as_millis() as i64),
                None => Settlement::Exhausted,
            }
        };
        self.metrics.attempt(outcome);
        if outcome != Outcome::Success {
            tracing::debug!(
                webhook = %webhook.id,
                message = %delivery.message_id,
                attempt = attempts_made,
                status,
                error = error.as_deref().unwrap_or_default(),
                "webhook attempt failed"
            );
        }
        if settlement == Settlement::Delivered {
            self.metrics
                .delivered_after((finished_ms - delivery.due_ms) as f64 / 1000.0);
        }
        let record = AttemptRecord {
            delivery: delivery.key,
            webhook_id: webhook.id.clone(),
            attempt: Attempt {
                message_id: delivery.message_id.clone(),
                attempt: attempts_made,
                time_ms: started_ms,
                status,
                latency_ms,
                error,
                response: response_body.filter(|b| !b.is_empty()),
                next_attempt_ms: match settlement {
                    Settlement::RetryAt(t) => Some(t),
                    _ => None,
                },
            },
            settlement,
        };
        let failing_since = match self.store.finish_attempt(record).await {
            Ok(f) => f,
            Err(e) => {
                // The claim lapses and the delivery is retried: at least once.
                tracing::warn!(error = %e, "webhooks: cannot record an attempt");
                return;
            }
        };
        let reason = if status == Some(410) {
            Some("the endpoint answered 410 Gone".to_string())
        } else {
            failing_since
                .filter(|since| now_s - since > self.config.disable_after.as_secs() as i64)
                .map(|since| {
                    format!(
                        "failing without a success since {} (longer than webhook-disable-after)",
                        rfc3339(since)
                    )
                })
        };
        if let Some(reason) = reason {
            self.disable(&webhook.id, reason).await;
        }
    }

    async fn disable(&self, id: &str, reason: String) {
        match self.store.webhook(id).await {
            Ok(Some(mut w)) if w.disabled.is_none() => {
                tracing::warn!(webhook = %id, %reason, "webhook endpoint disabled");
                w.disabled = Some((reason, crate::model::now_unix()));
                if let Err(e) = self.store.update_webhook(&w).await {
                    tracing::warn!(error = %e, "webhooks: cannot disable an endpoint");
                    return;
                }
                self.metrics.endpoint_disabled();
                // Stops the endpoint's worker (the caller is one of its attempts,
                // which ends here anyway).
                if let Some(worker) = self.lock_workers().remove(id) {
                    worker.stop.cancel();
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "webhooks: cannot disable an endpoint"),
        }
    }

    // -----------------------------------------------------------------------------
    // Housekeeping

    async fn run_housekeeping(self: Arc<Self>) {
        let mut last_prune = tokio::time::Instant::now();
        loop {
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

/// The Standard Webhooks body: `{"type", "timestamp", "data"}` with the message's
/// ntfy JSON as `data`, byte for byte what was stored.
pub fn webhook_body(d: &Delivery) -> String {
    let kind = serde_json::to_string(&d.event).unwrap_or_else(|_| "\"message\"".into());
    format!(
        "{{\"type\":{kind},\"timestamp\":\"{}\",\"data\":{}}}",
        rfc3339(d.event_time),
        d.payload
    )
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(s: &str) -> RetryPolicy {
        RetryPolicy {
            schedule: super::super::parse_schedule(s).unwrap(),
        }
    }

    #[test]
    fn svix_schedule_with_jitter_and_retry_after() {
        let p = policy(super::super::DEFAULT_RETRY_SCHEDULE);
        // After the first attempt: 5 s ±20 %.
        assert_eq!(p.next_delay(1, None, 0.0), Some(Duration::from_secs(5)));
        assert_eq!(p.next_delay(1, None, 1.0), Some(Duration::from_secs(6)));
        assert_eq!(p.next_delay(1, None, -1.0), Some(Duration::from_secs(4)));
        assert_eq!(p.next_delay(7, None, 0.0), Some(Duration::from_secs(36000)));
        // Eight attempts in all.
        assert_eq!(p.next_delay(8, None, 0.0), None);
        // Retry-After within [delay, 2 × delay].
        let d = |s| Some(Duration::from_secs(s));
        assert_eq!(p.next_delay(1, d(7), 0.0), d(7));
        assert_eq!(p.next_delay(1, d(1), 0.0), d(5));
        assert_eq!(p.next_delay(1, d(3600), 0.0), d(10));
    }

    /// Drives a delivery against an endpoint that fails four times, on paused time:
    /// the attempts happen at the schedule's offsets (within the jitter), and the
    /// fifth succeeds.
    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_schedule_on_paused_time() {
        let p = policy("0s,5s,5m,30m,2h,5h,10h,10h");
        let start = tokio::time::Instant::now();
        let mut attempts_at = Vec::new();
        let mut made = 0u32;
        let mut delay = p.next_delay(0, None, 0.0).unwrap();
        loop {
            tokio::time::sleep(delay).await;
            attempts_at.push(start.elapsed());
            made += 1;
            let failed = made <= 4;
            if !failed {
                break;
            }
            delay = p
                .next_delay(made, None, fastrand::f64() * 2.0 - 1.0)
                .unwrap();
        }
        assert_eq!(attempts_at.len(), 5);
        let expected = [0u64, 5, 305, 2105, 9305];
        for (at, want) in attempts_at.iter().zip(expected) {
            let want = want as f64;
            let got = at.as_secs_f64();
            // Cumulative jitter is at most 20 % of the elapsed sum.
            assert!(
                (got - want).abs() <= want * 0.2 + 0.001,
                "attempt at {got}s, expected about {want}s"
            );
        }
    }

    #[test]
    fn bodies_are_standard_webhooks_envelopes() {
        let d = Delivery {
            key: 1,
            webhook_id: "wh".into(),
            message_id: "m".into(),
            event: "message_delete".into(),
            payload: r#"{"id":"m"}"#.into(),
            event_time: 0,
            due_ms: 0,
            attempts: 0,
        };
        let v: serde_json::Value = serde_json::from_str(&webhook_body(&d)).unwrap();
        assert_eq!(v["type"], "message_delete");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00Z");
        assert_eq!(v["data"]["id"], "m");
    }
}
