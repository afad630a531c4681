//! The Web Push service: registrations from the API, the feed that queues a job per
//! message and matching subscription after the message is committed, the senders,
//! and housekeeping (expiry of unrenewed subscriptions, queue metrics).
//!
//! The feed reads the same committed stream as the webhook feed
//! (`webhook::feed::FeedSource`: this node's store, or the cluster log), from its own
//! durable cursor; a publish wakes it (the server wraps the broker in another
//! `WakingBroker`), a 1 s poll covers scheduled messages.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::WebPushConfig;
use super::ece;
use super::store::{NewPush, PushJob, PushStore, PushStoreError, PushSubscription};
use crate::model::{EventKind, Message};
use crate::webhook::dispatcher::FeedWake;
use crate::webhook::feed::FeedSource;

/// ntfy's limit of topics per subscription.
pub(crate) const MAX_TOPICS: usize = 50;
const FEED_BATCH: usize = 256;
const FEED_POLL: Duration = Duration::from_secs(1);
/// Sends in flight at once (per node).
const SEND_BATCH: usize = 64;
const LEASE: Duration = Duration::from_secs(60);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before a job is given up (429, 5xx, network errors are retried).
const MAX_ATTEMPTS: u32 = 5;
const HOUSEKEEPING: Duration = Duration::from_secs(60);

/// The push services browsers use (ntfy allows the same ones): a subscription's
/// endpoint must be an `https://` URL on one of these hosts or their subdomains.
const PUSH_SERVICES: &[&str] = &[
    "fcm.googleapis.com",
    "android.googleapis.com",
    "push.services.mozilla.com",
    "notify.windows.com",
    "push.apple.com",
];

/// Why a registration was refused (mapped to ntfy's codes in `api::webpush`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    #[error("web push payload malformed")]
    Malformed,
    #[error("web push endpoint unknown")]
    EndpointUnknown,
    #[error("too many web push topics")]
    TooManyTopics,
    #[error(transparent)]
    Store(#[from] PushStoreError),
}

/// Counters on `/metrics`.
#[derive(Debug, Clone, Default)]
pub(crate) struct PushMetrics {
    /// Sends by outcome: `ok`, `expired` (404/410: subscription removed), `retry`,
    /// `failed` (given up).
    sends: Family<[(&'static str, &'static str); 1], Counter>,
    queued: Counter,
    queue: Gauge,
    subscriptions: Gauge,
}

impl crate::telemetry::MetricSource for PushMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_webpush_sends",
            "Web Push requests to push services, by outcome",
            self.sends.clone(),
        );
        registry.register(
            "herald_webpush_queued",
            "Web Push jobs queued (one per message and matching subscription)",
            self.queued.clone(),
        );
        registry.register(
            "herald_webpush_queue_length",
            "Web Push jobs waiting to be sent",
            self.queue.clone(),
        );
        registry.register(
            "herald_webpush_subscriptions",
            "Registered Web Push subscriptions",
            self.subscriptions.clone(),
        );
    }
}

impl PushMetrics {
    fn sent(&self, outcome: &'static str) {
        self.sends.get_or_create(&[("outcome", outcome)]).inc();
    }
}

/// See the module docs.
pub struct WebPush {
    config: WebPushConfig,
    base_url: String,
    store: Arc<dyn PushStore>,
    source: Arc<dyn FeedSource>,
    /// Poked by publishes while wanted: while there are subscriptions.
    wake: Arc<FeedWake>,
    send_wake: Notify,
    client: reqwest::Client,
    pub(crate) metrics: PushMetrics,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Signed VAPID headers by audience, with when they were signed.
    jwts: std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
}

impl std::fmt::Debug for WebPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPush").finish_non_exhaustive()
    }
}

impl WebPush {
    pub(crate) fn new(
        config: WebPushConfig,
        base_url: String,
        store: Arc<dyn PushStore>,
        source: Arc<dyn FeedSource>,
        wake: Arc<FeedWake>,
    ) -> anyhow::Result<Arc<WebPush>> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::webhook::client::tls_config()?)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(SEND_TIMEOUT)
            .build()?;
        Ok(Arc::new(WebPush {
            config,
            base_url,
            store,
            source,
            wake,
            send_wake: Notify::new(),
            client,
            metrics: PushMetrics::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            jwts: Default::default(),
        }))
    }

    pub(crate) fn start(self: &Arc<Self>) {
        self.tasks.spawn(self.clone().run_feed());
        self.tasks.spawn(self.clone().run_sender());
        self.tasks.spawn(self.clone().run_housekeeping());
    }

    pub(crate) async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Whether `endpoint` is a push service this server sends to.
    pub(crate) fn endpoint_allowed(&self, endpoint: &str) -> bool {
        if self
            .config
            .allowed_endpoints
            .iter()
            .any(|prefix| endpoint.starts_with(prefix.as_str()))
        {
            return true;
        }
        let Ok(url) = url::Url::parse(endpoint) else {
            return false;
        };
        let host = url.host_str().unwrap_or("");
        url.scheme() == "https"
            && PUSH_SERVICES
                .iter()
                .any(|s| host == *s || host.ends_with(&format!(".{s}")))
    }

    /// ntfy's checks of a registration, in its order: keys present and well-formed
    /// (`Malformed`), a known push service, at most 50 topics.
    pub(crate) fn validate(&self, sub: &PushSubscription) -> Result<(), PushError> {
        let decodes_to = |s: &str, len: usize| matches!(URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')), Ok(b) if b.len() == len);
        if sub.endpoint.is_empty() || !decodes_to(&sub.auth, 16) || !decodes_to(&sub.p256dh, 65) {
            return Err(PushError::Malformed);
        }
        if !self.endpoint_allowed(&sub.endpoint) {
            return Err(PushError::EndpointUnknown);
        }
        if sub.topics.len() > MAX_TOPICS {
            return Err(PushError::TooManyTopics);
        }
        Ok(())
    }

    /// `POST /v1/webpush`: adds or replaces a subscription (the caller's read
    /// access to each topic is checked by the API); no topics removes it.
    pub(crate) async fn register(&self, mut sub: PushSubscription) -> Result<(), PushError> {
        self.validate(&sub)?;
        sub.topics.sort();
        sub.topics.dedup();
        sub.updated = crate::model::now_unix();
        if sub.topics.is_empty() {
            self.store.remove(&sub.endpoint).await?;
        } else {
            self.store.upsert(sub).await?;
            // Publishes wake the feed again (it turns them off when it finds no
            // subscription; another node's registration is seen at its next poll).
            self.wake.set_wanted(true);
        }
        Ok(())
    }

    /// `DELETE /v1/webpush`.
    pub(crate) async fn unregister(&self, endpoint: &str) -> Result<(), PushError> {
        if endpoint.is_empty() {
            return Err(PushError::Malformed);
        }
        self.store.remove(endpoint).await?;
        Ok(())
    }

    // ------------------------------------------------------------------------
    // Feed

    async fn run_feed(self: Arc<Self>) {
        let mut cursor: Option<String> = None;
        loop {
            let step = match &cursor {
                None => self.initial_cursor().await.map(Some),
                Some(c) => self.feed_once(c).await,
            };
            let idle = match step {
                Ok(Some(next)) => {
                    let moved = cursor.as_ref() != Some(&next);
                    cursor = Some(next);
                    !moved
                }
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "web push: feed failed; retrying");
                    true
                }
            };
            if idle {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(FEED_POLL) => {}
                }
            } else if self.shutdown.is_cancelled() {
                return;
            }
        }
    }

    async fn initial_cursor(&self) -> anyhow::Result<String> {
        if let Some(c) = self.store.cursor().await? {
            return Ok(c);
        }
        // First run: pushes begin with what is committed from now on.
        let start = self
            .source
            .start()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.store.enqueue_from(Vec::new(), None, &start).await?;
        Ok(self.store.cursor().await?.unwrap_or(start))
    }

    /// Queues the next batch; the cursor to go on from (`None`: nothing new).
    async fn feed_once(&self, cursor: &str) -> anyhow::Result<Option<String>> {
        let batch = self
            .source
            .after(cursor, FEED_BATCH)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let Some(next) = batch.next else {
            return Ok(None);
        };
        let subs = self.store.subscriptions().await?;
        self.wake.set_wanted(!subs.is_empty());
        let mut jobs = Vec::new();
        for m in batch
            .messages
            .iter()
            .filter(|m| m.event == EventKind::Message)
        {
            let wanted: Vec<&PushSubscription> = subs
                .iter()
                .filter(|s| s.topics.contains(&m.topic))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let payload = self.payload(m);
            for s in wanted {
                jobs.push(NewPush {
                    endpoint: s.endpoint.clone(),
                    payload: payload.clone(),
                    due_ms: m.time.saturating_mul(1000),
                });
            }
        }
        let count = jobs.len() as u64;
        if self.store.enqueue_from(jobs, Some(cursor), &next).await? {
            self.metrics.queued.inc_by(count);
            if count > 0 {
                self.send_wake.notify_one();
            }
            Ok(Some(next))
        } else {
            // Another node queued this batch: go on from where it left the cursor.
            Ok(self.store.cursor().await?)
        }
    }

    /// ntfy's push payload: the message under `message`, with the topic's URL as
    /// `subscription_id`; a message too large for one record is shortened.
    fn payload(&self, m: &Message) -> String {
        let mut m = m.clone();
        loop {
            let body = serde_json::json!({
                "event": "message",
                "subscription_id": format!("{}/{}", self.base_url, m.topic),
                "message": m.for_json(),
            })
            .to_string();
            if body.len() <= ece::MAX_PLAINTEXT || m.message.is_empty() {
                return body;
            }
            let excess = body.len() - ece::MAX_PLAINTEXT;
            let mut keep = m.message.len().saturating_sub(excess + 8);
            while !m.message.is_char_boundary(keep) {
                keep -= 1;
            }
            m.message.truncate(keep);
            m.message.push('…');
        }
    }

    // ------------------------------------------------------------------------
    // Sender

    async fn run_sender(self: Arc<Self>) {
        loop {
            let now = crate::model::now_unix_ms();
            let jobs = match self.store.claim(now, SEND_BATCH, LEASE).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "web push: cannot claim jobs");
                    Vec::new()
                }
            };
            if jobs.is_empty() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = self.send_wake.notified() => {}
                    _ = tokio::time::sleep(FEED_POLL) => {}
                }
                continue;
            }
            let sends = jobs.into_iter().map(|job| {
                let this = self.clone();
                async move { this.send(job).await }
            });
            futures_util::future::join_all(sends).await;
            if self.shutdown.is_cancelled() {
                return;
            }
        }
    }

    async fn send(&self, job: PushJob) {
        let outcome = self.attempt(&job).await;
        let settle = match outcome {
            Outcome::Sent => {
                self.metrics.sent("ok");
                self.store.finish(&job.id, None).await
            }
            Outcome::Gone => {
                // RFC 8030 §7.3: the subscription is gone for good.
                self.metrics.sent("expired");
                tracing::info!(endpoint = %job.endpoint, "web push: subscription expired; removed");
                self.store.remove(&job.endpoint).await.map(|_| ())
            }
            Outcome::Retry(why) if job.attempt + 1 < MAX_ATTEMPTS => {
                self.metrics.sent("retry");
                tracing::debug!(endpoint = %job.endpoint, reason = %why, "web push: will retry");
                let backoff = 2_000i64 << job.attempt.min(10);
                let at = crate::model::now_unix_ms() + backoff;
                self.store.finish(&job.id, Some(at)).await
            }
            Outcome::Retry(why) | Outcome::Failed(why) => {
                self.metrics.sent("failed");
                tracing::warn!(endpoint = %job.endpoint, reason = %why, "web push: giving up on a message");
                self.store.finish(&job.id, None).await
            }
        };
        if let Err(e) = settle {
            tracing::warn!(error = %e, "web push: cannot settle a job; it is retried after its lease");
        }
    }

    /// The VAPID `Authorization` for a push service's origin: a JWT valid for 12 h,
    /// signed once and reused for an hour (one ECDSA signature per push service and
    /// hour, not per message).
    fn authorization(&self, audience: &str) -> Result<String, super::keys::KeyError> {
        let now = crate::model::now_unix();
        let mut cache = self.jwts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((header, signed_at)) = cache.get(audience)
            && now - *signed_at < 3600
        {
            return Ok(header.clone());
        }
        let subject = if self.config.email.is_empty() {
            self.base_url.clone()
        } else {
            format!("mailto:{}", self.config.email)
        };
        let header = self.config.keys.authorization(audience, &subject, now)?;
        // Push services are few; the map is bounded by the allow-list in practice,
        // and cleared rather than grown past a sane size.
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(audience.to_string(), (header.clone(), now));
        Ok(header)
    }

    async fn attempt(&self, job: &PushJob) -> Outcome {
        let (Ok(auth), Ok(p256dh)) = (
            URL_SAFE_NO_PAD.decode(job.auth.trim_end_matches('=')),
            URL_SAFE_NO_PAD.decode(job.p256dh.trim_end_matches('=')),
        ) else {
            return Outcome::Failed("subscription keys are not base64url".into());
        };
        let body = match ece::encrypt(&p256dh, &auth, job.payload.as_bytes()) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let Ok(url) = url::Url::parse(&job.endpoint) else {
            return Outcome::Failed("endpoint is not a URL".into());
        };
        let audience = url.origin().ascii_serialization();
        let authorization = match self.authorization(&audience) {
            Ok(a) => a,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let urgency = urgency(&job.payload);
        let resp = self
            .client
            .post(url)
            .header("TTL", "86400")
            .header("Urgency", urgency)
            .header("Content-Encoding", "aes128gcm")
            .header("Content-Type", "application/octet-stream")
            .header("Authorization", authorization)
            .body(body)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => Outcome::Sent,
            Ok(r) if matches!(r.status().as_u16(), 404 | 410) => Outcome::Gone,
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                Outcome::Retry(format!("HTTP {}", r.status().as_u16()))
            }
            Ok(r) => Outcome::Failed(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }

    // ------------------------------------------------------------------------
    // Housekeeping

    async fn run_housekeeping(self: Arc<Self>) {
        loop {
            let before = crate::model::now_unix() - self.config.expiry.as_secs() as i64;
            match self.store.expire(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "web push: expired unrenewed subscriptions"),
                Err(e) => tracing::warn!(error = %e, "web push: expiry failed"),
            }
            if let Ok(n) = self.store.queue_len().await {
                self.metrics.queue.set(n as i64);
            }
            if let Ok(s) = self.store.subscriptions().await {
                self.metrics.subscriptions.set(s.len() as i64);
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(HOUSEKEEPING) => {}
            }
        }
    }
}

enum Outcome {
    Sent,
    Gone,
    Retry(String),
    Failed(String),
}

/// RFC 8030 §5.3 `Urgency` from the message's priority.
fn urgency(payload: &str) -> &'static str {
    let priority = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["message"]["priority"].as_u64())
        .unwrap_or(3);
    match priority {
        1 => "very-low",
        2 => "low",
        4 | 5 => "high",
        _ => "normal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urgency_follows_priority() {
        assert_eq!(urgency(r#"{"message":{"priority":5}}"#), "high");
        assert_eq!(urgency(r#"{"message":{"priority":1}}"#), "very-low");
        assert_eq!(urgency(r#"{"message":{}}"#), "normal");
    }
}
