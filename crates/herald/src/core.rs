//! The core every transport calls: publish, read history, subscribe.
//!
//! [`Herald`] ties the store, the broker and the hub together and owns the ordering
//! and durability rules: a message is committed to the store before anyone sees it,
//! and only then fanned out, so an acknowledged publish is always in the history and
//! a subscriber never sees a message that a restart would lose. It also runs the two
//! background jobs: the scheduler (scheduled messages go out when due) and the
//! expiry sweep.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::config::Config;
use crate::error::ApiError;
use crate::hub::{Closable, Hub, SharedEvent, Subscription, Transport};
use crate::model::{Message, now_unix};
use crate::store::{Query, Store};

/// The shared server state behind every transport.
pub struct Herald {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub hub: Arc<Hub>,
    /// Wakes the scheduler when a message is scheduled earlier than it planned for.
    scheduler_wakeup: Notify,
    /// Messages accepted since start, for `/v1/stats`.
    published: AtomicU64,
    /// (time, published count) samples for the `/v1/stats` rate.
    rate_samples: Mutex<Vec<(Instant, u64)>>,
    /// Set when shutdown begins: readiness fails and new subscriptions are refused.
    draining: AtomicBool,
}

impl std::fmt::Debug for Herald {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Herald").finish_non_exhaustive()
    }
}

impl Herald {
    /// Assembles the core from its parts.
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        hub: Arc<Hub>,
    ) -> Arc<Self> {
        Arc::new(Herald {
            config,
            store,
            broker,
            hub,
            scheduler_wakeup: Notify::new(),
            published: AtomicU64::new(0),
            rate_samples: Mutex::new(vec![(Instant::now(), 0)]),
            draining: AtomicBool::new(false),
        })
    }

    /// Publishes an event (`message`, `message_delete` or `message_clear`).
    ///
    /// A cached event is committed first; a scheduled one is only stored and goes out
    /// when due; an uncached one (`Cache: no`) goes straight to the subscribers.
    /// Returns after the event is durable (if cached) and handed to the broker.
    pub async fn publish(&self, message: Message) -> Result<(), ApiError> {
        #[cfg(feature = "otel")]
        if crate::otel::enabled() {
            use tracing::Instrument;
            let span = crate::otel::publish_span(&message);
            let trace = crate::otel::context(&span);
            return self
                .publish_with(message, move |m| SharedEvent::traced(m, trace))
                .instrument(span)
                .await;
        }
        self.publish_with(message, SharedEvent::new).await
    }

    /// [`Self::publish`], wrapping the message for the broker with `wrap`.
    async fn publish_with(
        &self,
        message: Message,
        wrap: impl FnOnce(Message) -> Arc<SharedEvent>,
    ) -> Result<(), ApiError> {
        // Publishes are accepted while draining: hyper only lets requests that
        // were already on a connection through, and the store closes after them.
        let scheduled = message.time > now_unix();
        if message.expires.is_some() || scheduled {
            self.store.append(message.clone()).await?;
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        if scheduled {
            self.scheduler_wakeup.notify_one();
            return Ok(());
        }
        self.broker.publish(wrap(message)).await.map_err(|e| {
            tracing::error!(error = %e, "broker publish failed");
            ApiError::UNAVAILABLE
        })
    }

    /// Removes pending scheduled messages of a sequence (replace or cancel).
    pub async fn cancel_scheduled(&self, topic: &str, sequence_id: &str) -> Result<u64, ApiError> {
        Ok(self.store.cancel_scheduled(topic, sequence_id).await?)
    }

    /// Reads history.
    pub async fn history(&self, query: Query) -> Result<Vec<Message>, ApiError> {
        if query.since == crate::store::Since::None {
            return Ok(Vec::new());
        }
        Ok(self.store.query(query).await?)
    }

    /// Registers a live subscriber on `topics`, counted under `transport`.
    pub fn subscribe(&self, topics: &[String], transport: Transport) -> Subscription {
        let subscription = self.hub.subscribe_as(topics, transport);
        self.close_if_draining(&subscription);
        subscription
    }

    /// Ends a subscription registered while shutdown began. A subscriber that passed
    /// the draining check just before the drain, but registered just after the
    /// hub's `close_all`, would otherwise stay open until the shutdown timeout. The
    /// hub's registry lock orders the two: either `close_all` saw the registration,
    /// or this check sees the flag.
    pub fn close_if_draining(&self, sink: &impl Closable) {
        if self.is_draining() {
            sink.close_for_shutdown();
        }
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the server as draining: readiness fails, new subscriptions are refused.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Messages accepted since start.
    pub fn published_count(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Messages per second over the sampled window (up to ~10 sweep intervals).
    pub fn published_rate(&self) -> f64 {
        let samples = self.rate_samples.lock().unwrap_or_else(|p| p.into_inner());
        let now = (Instant::now(), self.published_count());
        let Some(first) = samples.first() else {
            return 0.0;
        };
        let secs = now.0.duration_since(first.0).as_secs_f64();
        if secs < 1.0 {
            return 0.0;
        }
        (now.1 - first.1) as f64 / secs
    }

    fn sample_rate(&self) {
        let mut samples = self.rate_samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.push((Instant::now(), self.published_count()));
        if samples.len() > 10 {
            samples.remove(0);
        }
    }

    /// Starts the scheduler, the expiry sweep and the keepalive tick on `tracker`;
    /// each stops when `shutdown` is cancelled.
    pub fn spawn_background(self: &Arc<Self>, tracker: &TaskTracker, shutdown: CancellationToken) {
        let this = self.clone();
        let token = shutdown.clone();
        tracker.spawn(async move { this.run_scheduler(token).await });
        let this = self.clone();
        let token = shutdown.clone();
        tracker.spawn(async move { this.run_sweeper(token).await });
        let this = self.clone();
        tracker.spawn(async move { this.run_keepalive(shutdown).await });
    }

    /// Sends scheduled messages when they are due: sleeps until the earliest one
    /// (at most 30 s, to tolerate wall-clock changes), or until a new, earlier one is
    /// scheduled. Delivery is within a fraction of a second of the due time.
    async fn run_scheduler(&self, shutdown: CancellationToken) {
        loop {
            let wait = match self.store.next_due().await {
                Ok(Some(due)) => {
                    let now_ms = crate::model::now_unix_ms();
                    let due_ms = due.saturating_mul(1000);
                    Duration::from_millis(due_ms.saturating_sub(now_ms).clamp(0, 30_000) as u64)
                }
                Ok(None) => Duration::from_secs(30),
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler: cannot read next due time");
                    Duration::from_secs(1)
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.scheduler_wakeup.notified() => continue,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            match self.store.take_due(now_unix()).await {
                Ok(due) => {
                    for message in due {
                        if let Err(e) = self.broker.publish(SharedEvent::new(message)).await {
                            tracing::error!(error = %e, "scheduler: broker publish failed");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler: cannot take due messages");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Deletes expired messages every `manager-interval`.
    async fn run_sweeper(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.manager_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.sample_rate();
            match self.store.prune_expired(now_unix()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "expired messages pruned"),
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
            }
        }
    }

    /// One shared tick for every subscriber's keepalive.
    async fn run_keepalive(&self, shutdown: CancellationToken) {
        let period = self.config.keepalive_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.hub.tick_keepalive(),
            }
        }
    }
}
