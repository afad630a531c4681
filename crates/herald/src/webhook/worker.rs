//! Endpoint workers: claims, attempts, retries, disabling.
//!
//! Each enabled endpoint has one worker task that keeps up to `webhook-concurrency`
//! attempts in flight (one with `ordered`), claiming due deliveries under a lease
//! ([`super::store::WebhookStore::claim`]). An endpoint that is slow or down fills
//! only its own slots, so it never delays other endpoints, the feed, or publishing.
//!
//! After attempt *n* fails, attempt *n+1* is due after `webhook-retry-schedule[n]`
//! ±20 % ([`RetryPolicy`]); `Retry-After` on 429/503 moves it within
//! [delay, 2 × delay]. `410 Gone` disables the endpoint, and so does failing without
//! a success for longer than `webhook-disable-after`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use tokio_util::task::TaskTracker;

use super::client::{self, DeliveryClient, FailureKind};
use super::clock::Clock;
use super::metrics::{Outcome, WebhookMetrics};
use super::sign::{Secret, signature_header};
use super::store::{Attempt, AttemptRecord, Delivery, Settlement, WebhookStore};
use super::{Webhook, WebhookConfig, random_id, rfc3339};

/// A claim outlives the longest attempt by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// An idle worker looks for due deliveries at least this often (as often as the
/// feed polls).
const IDLE_POLL: Duration = Duration::from_secs(1);

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

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running endpoint worker, as [`Workers`] tracks it.
struct Worker {
    webhook: watch::Sender<Webhook>,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

/// This node's endpoint workers and what they share. The service (the
/// dispatcher's `Webhooks`, their one owner) tells it which endpoints exist ([`Self::sync`])
/// and which have new deliveries ([`Self::wake`]); the workers disable endpoints
/// themselves.
pub(crate) struct Workers {
    store: Arc<dyn WebhookStore>,
    client: DeliveryClient,
    metrics: WebhookMetrics,
    retry: RetryPolicy,
    clock: Clock,
    /// This process's name on claims.
    node: String,
    /// `webhook-timeout`.
    timeout: Duration,
    /// `webhook-concurrency`.
    concurrency: usize,
    /// `webhook-disable-after`.
    disable_after: Duration,
    running: Mutex<HashMap<String, Worker>>,
    /// The service's tasks and shutdown, which the workers are part of.
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Workers {
    /// No worker runs until the first [`Self::sync`].
    pub(crate) fn new(
        config: &WebhookConfig,
        store: Arc<dyn WebhookStore>,
        client: DeliveryClient,
        metrics: WebhookMetrics,
        clock: Clock,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Workers {
        Workers {
            store,
            client,
            metrics,
            retry: RetryPolicy {
                schedule: config.retry_schedule.clone(),
            },
            clock,
            node: random_id("node_"),
            timeout: config.timeout,
            concurrency: config.concurrency,
            disable_after: config.disable_after,
            running: Mutex::new(HashMap::new()),
            tracker,
            shutdown,
        }
    }

    /// Tells the endpoint's worker (if it runs) that it may have new deliveries.
    pub(crate) fn wake(&self, id: &str) {
        if let Some(w) = self.running().get(id) {
            w.wake.notify_one();
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Worker>> {
        lock(&self.running)
    }

    /// Makes the running workers match `webhooks` (every stored endpoint): one per
    /// enabled endpoint, with its current settings.
    pub(crate) fn sync(self: &Arc<Self>, webhooks: Vec<Webhook>) {
        let mut workers = self.running();
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
        let lease = self.timeout + LEASE_MARGIN;
        let mut in_flight = JoinSet::new();
        // Claims whose attempt has not settled yet, released if the worker stops.
        let held: Arc<std::sync::Mutex<Vec<i64>>> = Arc::default();
        loop {
            let current = webhook.borrow().clone();
            let slots = if current.ordered {
                1
            } else {
                self.concurrency.max(1)
            };
            let mut wait = IDLE_POLL;
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
                            let key = delivery.key;
                            lock(&held).push(key);
                            let held = held.clone();
                            in_flight.spawn(async move {
                                this.attempt(w, delivery).await;
                                lock(&held).retain(|k| *k != key);
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "webhooks: claim failed"),
                }
                if in_flight.len() < slots {
                    let now = self.clock.now_ms();
                    if let Ok(Some(due)) =
                        self.store.next_due(&current.id, current.ordered, now).await
                    {
                        let ms = (due - now).clamp(10, IDLE_POLL.as_millis() as i64);
                        wait = Duration::from_millis(ms as u64);
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    in_flight.abort_all();
                    // Abandoned attempts: claimable again at once (another node,
                    // cluster) rather than when their lease ends.
                    let keys = std::mem::take(&mut *lock(&held));
                    if !keys.is_empty() {
                        let id = webhook.borrow().id.clone();
                        let now = self.clock.now_ms();
                        if let Err(e) = self.store.release(&id, &keys, &self.node, now).await {
                            tracing::debug!(error = %e, "webhooks: cannot release claims");
                        }
                    }
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
            owner: self.node.clone(),
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
                .filter(|since| now_s - since > self.disable_after.as_secs() as i64)
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
                if let Some(worker) = self.running().remove(id) {
                    worker.stop.cancel();
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "webhooks: cannot disable an endpoint"),
        }
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
