//! The core every transport calls: publish, read history, subscribe.
//!
//! It speaks no wire format: a transport turns its request into a call here (a
//! publish into a [`publish::PublishRequest`]) and the result or domain error
//! ([`publish::PublishError`], [`crate::store::StoreError`]) into its own answer.
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

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::config::Config;
use crate::hub::{Closable, Hub, SharedEvent, Subscription, Transport};
use crate::model::{Message, now_unix};
use crate::store::StoreError;
use crate::store::{Cursor, Query, Store};

pub mod publish;
pub mod rules;

pub use publish::{PublishError, PublishKind};

/// About how many bytes of messages one history page holds: what a history reader
/// keeps in memory at a time. Pages are sized by the messages seen so far (small
/// messages: many per page, up to [`HISTORY_PAGE_MAX`]; large ones: few).
pub const HISTORY_PAGE_BYTES: usize = 256 * 1024;

/// Most messages in one history page.
pub const HISTORY_PAGE_MAX: usize = 1024;

/// Messages in a history read's first page: as many of the largest possible
/// messages as fit [`HISTORY_PAGE_BYTES`], at most 64 (later pages adapt).
fn first_page_size(message_size_limit: usize) -> usize {
    (HISTORY_PAGE_BYTES / (message_size_limit + MESSAGE_OVERHEAD)).clamp(1, 64)
}

/// A rough size of a message's encoding besides its variable text fields.
const MESSAGE_OVERHEAD: usize = 256;

/// A rough size of `m` as the client receives it, for sizing history pages.
fn approx_size(m: &Message) -> usize {
    MESSAGE_OVERHEAD
        + m.topic.len()
        + m.title.len()
        + m.message.len()
        + m.click.len()
        + m.icon.len()
        + m.tags.iter().map(|t| t.len() + 3).sum::<usize>()
        + m.actions.len() * MESSAGE_OVERHEAD
        + m.attachment.as_ref().map_or(0, |_| MESSAGE_OVERHEAD * 2)
}

/// How long a history read waits for one of the `history-read-limit` places before
/// it is refused (`429` with [`HISTORY_RETRY_AFTER`]).
pub const HISTORY_READ_WAIT: Duration = Duration::from_secs(3);

/// The `Retry-After` of a history read refused for want of a place.
pub const HISTORY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A future that runs to its end once started, whether or not anyone waits for it:
/// it is polled in place by its caller, and only if the caller drops it unfinished
/// (a client that went away) is it handed to a task of its own to finish. So the
/// common case costs one allocation, not a spawned task and its wake-ups.
struct RunToEnd<F: std::future::Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    inner: Option<std::pin::Pin<Box<F>>>,
}

impl<F: std::future::Future + Send + 'static> RunToEnd<F>
where
    F::Output: Send + 'static,
{
    fn new(future: F) -> Self {
        RunToEnd {
            inner: Some(Box::pin(future)),
        }
    }
}

impl<F: std::future::Future + Send + 'static> std::future::Future for RunToEnd<F>
where
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let Some(inner) = self.inner.as_mut() else {
            // Polled again after it finished: nothing more will come.
            return std::task::Poll::Pending;
        };
        let output = std::task::ready!(inner.as_mut().poll(cx));
        self.inner = None;
        std::task::Poll::Ready(output)
    }
}

impl<F: std::future::Future + Send + 'static> Drop for RunToEnd<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(inner);
        }
    }
}

/// Why a history read failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Every `history-read-limit` place stayed taken for [`HISTORY_READ_WAIT`]; trying
    /// again after `retry_after` may succeed.
    #[error("too many history reads in progress")]
    Busy { retry_after: Duration },
    /// The store failed the read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long readiness waits for the store's write check before calling it failed.
pub const READINESS_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a node can take traffic, check by check ([`Herald::readiness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// The store accepts writes.
    pub store: bool,
    /// The broker can deliver.
    pub broker: bool,
    /// Shutdown has not begun.
    pub accepting: bool,
}

impl Readiness {
    /// Every check passed.
    pub fn is_ready(&self) -> bool {
        self.store && self.broker && self.accepting
    }
}

/// The shared server state behind every transport.
pub struct Herald {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    hub: Arc<Hub>,
    /// Wakes the scheduler when a message is scheduled earlier than it planned for.
    scheduler_wakeup: Notify,
    /// Messages accepted since start, for `/v1/stats`.
    published: AtomicU64,
    /// (time, published count) samples for the `/v1/stats` rate.
    rate_samples: Mutex<Vec<(Instant, u64)>>,
    /// Set when shutdown begins: readiness fails and new subscriptions are refused.
    draining: AtomicBool,
    /// Orders cached, immediately published messages: ID, history, hand-off.
    sequencer: Sequencer,
    /// Places for history reads in progress (`history-read-limit`).
    history_reads: Arc<Semaphore>,
    /// Told of each scheduled message this node's scheduler delivers (the iOS
    /// upstream pokes them, `crate::upstream`).
    scheduled_hook: std::sync::OnceLock<ScheduledHook>,
    /// Where the mails of `X-Email` publishes go (src/email); unset: no relay.
    outbox: std::sync::OnceLock<Arc<dyn publish::MailOutbox>>,
}

/// See [`Herald::on_scheduled_delivery`].
type ScheduledHook = Box<dyn Fn(&Message) + Send + Sync>;

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
            store,
            broker,
            hub,
            scheduler_wakeup: Notify::new(),
            published: AtomicU64::new(0),
            rate_samples: Mutex::new(vec![(Instant::now(), 0)]),
            draining: AtomicBool::new(false),
            sequencer: Sequencer::default(),
            history_reads: Arc::new(Semaphore::new(config.history_read_limit)),
            scheduled_hook: std::sync::OnceLock::new(),
            outbox: std::sync::OnceLock::new(),
            config,
        })
    }

    /// Calls `hook` for every scheduled message this node delivers when it falls
    /// due (in cluster mode each is taken by one node). Set once; it must not block.
    pub(crate) fn on_scheduled_delivery(&self, hook: impl Fn(&Message) + Send + Sync + 'static) {
        let _ = self.scheduled_hook.set(Box::new(hook));
    }

    fn scheduled_delivered(&self, due: &[Message]) {
        if let Some(hook) = self.scheduled_hook.get() {
            due.iter().for_each(hook);
        }
    }

    /// The server's configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// This node's subscriber registry.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Whether the store is alive (`/healthz`): not whether it can write right now.
    pub fn store_alive(&self) -> bool {
        self.store.is_alive()
    }

    /// Whether the store's last commit failed and none has succeeded since.
    pub fn store_writes_failing(&self) -> bool {
        self.store.writes_failing()
    }

    /// The store's counts (for `/metrics`).
    pub async fn store_stats(&self) -> Result<crate::store::StoreStats, StoreError> {
        self.store.stats().await
    }

    /// Whether this node can take traffic: the store accepts writes (checked within
    /// [`READINESS_STORE_TIMEOUT`]), the broker is connected and shutdown has not begun.
    pub async fn readiness(&self) -> Readiness {
        let store =
            tokio::time::timeout(READINESS_STORE_TIMEOUT, self.store.check_writable()).await;
        Readiness {
            store: matches!(store, Ok(Ok(()))),
            broker: self.broker.is_connected(),
            accepting: !self.is_draining(),
        }
    }

    /// Publishes an event (`message`, `message_delete` or `message_clear`) and returns
    /// it as stored (a cached event gets its final, ordered ID here), wrapped for
    /// delivery: its encodings (`SharedEvent::encoded`) are the subscribers', so the
    /// answer to the publisher reuses them.
    ///
    /// A cached event is committed first; a scheduled one (its `time` after `now_ms`,
    /// the wall clock in unix milliseconds the caller read once for the event's time
    /// too) is only stored and goes out when due; an uncached one (`Cache: no`) goes
    /// straight to the subscribers. Returns after the event is durable (if cached) and
    /// handed to the broker. The event's ID is of `now_ms` too (or later: IDs never go
    /// back).
    async fn publish_event(
        self: &Arc<Self>,
        mut message: Message,
        now_ms: i64,
    ) -> Result<Arc<SharedEvent>, PublishError> {
        let scheduled = message.time > now_ms.div_euclid(1000);
        // Scheduled messages take a ticket too (they skip the hand-off wait): their IDs
        // then follow commit order like every stored message, which the webhook feed
        // (`committed_after`) relies on. A store whose commit is the delivery (Redis)
        // orders publishes cluster-wide itself; this node's sequencer must then stay
        // out of the way.
        let ticket = (message.expires.is_some() && !self.store.commit_delivers())
            .then(|| Ticket::take(self.clone(), &mut message, now_ms));
        if message.id.is_empty() {
            // Not sequenced here (a drafted publish comes without an ID; the
            // sequencer gives the sequenced ones theirs).
            give_id(
                &mut message,
                crate::model::MessageId::generate_at(now_ms.max(0) as u64).into_string(),
            );
        }
        // Wrapped for delivery now, so that the futures below move a pointer, not
        // the message (each move of it was a ~300-byte copy).
        #[cfg(feature = "otel")]
        let (event, span) = if crate::otel::enabled() {
            let span = crate::otel::publish_span(&message);
            let trace = crate::otel::context(&span);
            (SharedEvent::traced(message, trace), Some(span))
        } else {
            (SharedEvent::new(message), None)
        };
        #[cfg(not(feature = "otel"))]
        let event = SharedEvent::new(message);
        let this = self.clone();
        // Run to its end even if the caller stops waiting, so that a client going
        // away mid-request cannot stop a publish between its commit and its hand-off
        // to the broker (which would also hold up the later messages waiting for
        // their turn behind it). Polled in place: no task per publish.
        #[cfg(feature = "otel")]
        if let Some(span) = span {
            use tracing::Instrument;
            let publish = async move { this.publish_with(event, scheduled, ticket).await };
            return RunToEnd::new(publish.instrument(span)).await;
        }
        RunToEnd::new(async move { this.publish_with(event, scheduled, ticket).await }).await
    }

    /// [`Self::publish_event`] of the wrapped `event`.
    async fn publish_with(
        &self,
        event: Arc<SharedEvent>,
        scheduled: bool,
        ticket: Option<Ticket>,
    ) -> Result<Arc<SharedEvent>, PublishError> {
        // Publishes are accepted while draining: hyper only lets requests that
        // were already on a connection through, and the store closes after them.
        let stored = event.message.expires.is_some() || scheduled;
        if stored && self.store.commit_delivers() {
            // The store gives the message its ID; the commit already put it, in
            // order, on the log every node reads (scheduled ones once due).
            let (message, rewrap) = SharedEvent::into_parts(event);
            let message = self.store.append(message).await?;
            self.published.fetch_add(1, Ordering::Relaxed);
            if scheduled {
                self.scheduler_wakeup.notify_one();
            }
            return Ok(rewrap.wrap(message));
        }
        // The message is final: encoded once, for the stored row, the subscribers
        // and the answer alike (`wire::MessageEncodings`).
        if stored {
            let json = event.encoded(crate::wire::Framing::WsText).clone();
            self.store
                .append_encoded(event.clone(), json, scheduled)
                .await?;
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        if scheduled {
            self.scheduler_wakeup.notify_one();
            return Ok(event);
        }
        if let Some(ticket) = &ticket {
            self.sequencer.wait_turn(ticket.number).await;
        }
        let handed = match self.broker.try_publish(&event) {
            Some(fan_out) => Ok(fan_out),
            None => self.broker.publish(event.clone()).await,
        };
        // The next publish's turn comes now: this one's fan-out (if it fell to
        // it) runs after, so that a publisher delivering to a topic's subscribers
        // never holds up the publishes to other topics behind it. The outbox took
        // the event in its turn, which is what keeps the order.
        drop(ticket);
        let fan_out = handed.map_err(|e| {
            tracing::error!(error = %e, "broker publish failed");
            PublishError::Broker(e)
        })?;
        if let Some(fan_out) = fan_out {
            fan_out.run();
        }
        Ok(event)
    }

    /// Reads the whole history `query` selects at once. For tests and small reads:
    /// answers to clients read it a page at a time ([`Self::history_pages`]).
    pub async fn history(&self, query: Query) -> Result<Vec<Message>, HistoryError> {
        let mut pages = self.history_pages(query).await?;
        let mut messages = Vec::new();
        while let Some(page) = pages.next_page().await? {
            messages.extend(page);
        }
        Ok(messages)
    }

    /// Starts a history read, to be taken a page at a time ([`HistoryPages`]), so
    /// that its memory is one page however long the history and however slowly the
    /// client reads. It holds one of the `history-read-limit` places until it ends or
    /// is dropped; when none is free within [`HISTORY_READ_WAIT`] the read is refused
    /// with `429 42901`.
    ///
    /// Messages committed but not yet handed to the broker in their turn are left
    /// out (see [`Sequencer`]), so history and live delivery never disagree about
    /// what came before what. The bound is taken once, before the first page: every
    /// message below it is committed by then, so later pages see all of them, and
    /// everything above it reaches a registered subscriber live.
    pub async fn history_pages(&self, query: Query) -> Result<HistoryPages, HistoryError> {
        if query.since == crate::store::Since::None || query.topics.is_empty() {
            return Ok(HistoryPages::empty(self.store.clone(), query));
        }
        let page_size = first_page_size(self.config.message_size_limit);
        let permit = tokio::time::timeout(
            HISTORY_READ_WAIT,
            self.history_reads.clone().acquire_owned(),
        )
        .await
        .map_err(|_| HistoryError::Busy {
            retry_after: HISTORY_RETRY_AFTER,
        })?
        .map_err(|_| HistoryError::Store(StoreError::Closed))?;
        // A store whose commit is the delivery (Redis) bounds its reads itself.
        let bound = (!self.store.commit_delivers()).then(|| self.sequencer.visible_bound());
        Ok(HistoryPages {
            store: self.store.clone(),
            query,
            cursor: None,
            finished: false,
            bound,
            page_size,
            permit: Some(permit),
        })
    }

    /// Stored messages of every topic (scheduled ones included) with an ID greater
    /// than `after`, in ID order, at most `limit`, and never past a message whose commit
    /// may still be under way: every message with a smaller ID than the last one
    /// returned is already committed, so a reader that remembers the last ID it got
    /// (the webhook dispatcher's cursor) never skips one. The bound is taken before
    /// the read: a ticket done before it is committed before the read starts.
    pub async fn committed_after(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Message>, crate::store::StoreError> {
        let bound = self.sequencer.visible_bound();
        let mut messages = self.store.after_id(after, limit).await?;
        messages.retain(|m| m.id < bound);
        Ok(messages)
    }

    /// An ID below which every message is committed (see [`Self::committed_after`]);
    /// the start of the webhook feed when it has no cursor yet. A publish under way
    /// at this moment may fall on either side of it.
    pub fn feed_start(&self) -> String {
        self.sequencer.visible_bound()
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
                Ok(due) if self.store.commit_delivers() => {
                    // Taken and put on the shared log in one step (store::redis).
                    self.scheduled_delivered(&due);
                    if !due.is_empty() {
                        tracing::debug!(count = due.len(), "scheduled messages delivered");
                    }
                }
                Ok(due) => {
                    self.scheduled_delivered(&due);
                    for message in due {
                        match self.broker.publish(SharedEvent::new(message)).await {
                            Ok(fan_out) => fan_out.into_iter().for_each(crate::hub::FanOut::run),
                            Err(e) => {
                                tracing::error!(error = %e, "scheduler: broker publish failed")
                            }
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

/// One order for the cached messages published on this node.
///
/// Each such publish takes a ticket, and with it a fresh ID, under one lock, so
/// tickets and IDs increase together. Commits can complete in any order (concurrent
/// publishes share group commits and resume in any order), so a publish hands its
/// message to the broker only when every earlier ticket is done. Live subscribers
/// therefore receive a topic's messages in ID order, which is the order of `since=`
/// and `poll=1`; and history hides committed messages whose turn has not come yet. So
/// a client that resumes with `since=<last id it saw>`, live or polled, misses nothing.
///
/// Tickets in flight are a queue in ticket order (a ring: taking one pushes at the
/// back, finishing the front pops every done ticket in a row), and a publish waiting
/// for its turn parks its waker in its own slot: only the front ticket can be
/// waiting for nothing, so a finish wakes at most that one waiter, never every
/// waiter (the profile showed the sorted map, set and `notify_waiters` of the
/// previous form at 1,716 instructions per publish).
#[derive(Default)]
struct Sequencer {
    state: Mutex<SequencerState>,
}

#[derive(Default)]
struct SequencerState {
    /// The ticket of `in_flight[0]`: every ticket below it is done.
    front: u64,
    /// Tickets from `front` on, taken and not yet popped (a done one stays until
    /// every earlier one is done too), in ticket order, so their IDs ascend.
    in_flight: std::collections::VecDeque<Slot>,
}

/// One ticket in flight.
struct Slot {
    /// The message's ID (for [`Sequencer::visible_bound`]), kept without a
    /// string of its own: it is read only when a history read starts.
    id: [u8; crate::model::id::ID_LEN],
    done: bool,
    /// The publish waiting for this ticket's turn, if it is waiting.
    waiter: Option<std::task::Waker>,
}

impl Sequencer {
    fn lock(&self) -> std::sync::MutexGuard<'_, SequencerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next ticket and gives `message` the next ID, of wall-clock time
    /// `now_ms` (a `sequence_id` that was the message's own ID follows it).
    fn take(&self, message: &mut Message, now_ms: i64) -> u64 {
        let mut st = self.lock();
        let id = crate::model::MessageId::generate_ascii_at(now_ms.max(0) as u64);
        give_id(message, crate::model::id::ascii_string(&id));
        let ticket = st.front + st.in_flight.len() as u64;
        st.in_flight.push_back(Slot {
            id,
            done: false,
            waiter: None,
        });
        ticket
    }

    /// Waits until every ticket before `ticket` is done.
    async fn wait_turn(&self, ticket: u64) {
        std::future::poll_fn(|cx| {
            let mut st = self.lock();
            if st.front >= ticket {
                return std::task::Poll::Ready(());
            }
            let index = (ticket - st.front) as usize;
            if let Some(slot) = st.in_flight.get_mut(index) {
                match &slot.waiter {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => slot.waiter = Some(cx.waker().clone()),
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Marks `ticket` done (handed off, or failed) and lets the next turn go.
    fn finish(&self, ticket: u64) {
        let mut st = self.lock();
        let Some(index) = ticket.checked_sub(st.front) else {
            return;
        };
        if let Some(slot) = st.in_flight.get_mut(index as usize) {
            slot.done = true;
        }
        let mut popped = false;
        while st.in_flight.front().is_some_and(|s| s.done) {
            st.in_flight.pop_front();
            st.front += 1;
            popped = true;
        }
        // Only the new front's turn came (every later ticket still has an undone
        // one before it), and only if the front moved.
        let waiter = match popped {
            true => st.in_flight.front_mut().and_then(|s| s.waiter.take()),
            false => None,
        };
        drop(st);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    /// An ID such that every message with a smaller one has its commit behind it:
    /// the smallest in flight, or (none in flight) a fresh ID taken under the same
    /// lock as tickets, so every later ticket's ID is greater.
    fn visible_bound(&self) -> String {
        let st = self.lock();
        match st.in_flight.front() {
            Some(slot) => crate::model::id::ascii_string(&slot.id),
            None => crate::model::MessageId::generate().into_string(),
        }
    }
}

/// Gives `message` the ID `id`; a `sequence_id` that was the message's own ID (a
/// drafted message's is its empty one) follows it.
fn give_id(message: &mut Message, id: String) {
    if message.sequence_id.as_deref() == Some(message.id.as_str()) {
        message.sequence_id = Some(id.clone());
    }
    message.id = id;
}

/// A history read in progress, taken a page at a time ([`Herald::history_pages`]).
/// The next page is read only when the caller asks for it, so a client that reads
/// slowly holds one page, not its whole answer.
pub struct HistoryPages {
    store: Arc<dyn Store>,
    query: Query,
    /// Where the next page starts (`None` before the first).
    cursor: Option<Cursor>,
    finished: bool,
    /// Messages with this ID or a greater one are not shown (the sequencer's bound).
    bound: Option<String>,
    /// Messages to ask for in the next page.
    page_size: usize,
    /// The read's `history-read-limit` place, given back when the last page is read.
    permit: Option<OwnedSemaphorePermit>,
}

impl HistoryPages {
    fn empty(store: Arc<dyn Store>, query: Query) -> Self {
        HistoryPages {
            store,
            query,
            cursor: None,
            finished: true,
            bound: None,
            page_size: 1,
            permit: None,
        }
    }

    /// Whether every page has been read.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next non-empty page (about [`HISTORY_PAGE_BYTES`] of messages), in
    /// `(time, id)` order, or `None` when the history is complete.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Message>>, HistoryError> {
        while !self.finished {
            let page = self
                .store
                .history_page(&self.query, self.cursor.as_ref(), self.page_size)
                .await?;
            if !page.messages.is_empty() {
                let bytes: usize = page.messages.iter().map(approx_size).sum();
                let average = bytes / page.messages.len();
                self.page_size = (HISTORY_PAGE_BYTES / average.max(1)).clamp(1, HISTORY_PAGE_MAX);
            }
            self.cursor = page.next;
            if self.cursor.is_none() {
                self.finished = true;
                self.permit = None;
            }
            let mut messages = page.messages;
            if let Some(bound) = &self.bound {
                messages.retain(|m| m.id < *bound);
            }
            if !messages.is_empty() {
                return Ok(Some(messages));
            }
        }
        Ok(None)
    }
}

/// A taken ticket; done when dropped, whether the publish succeeded or not.
struct Ticket {
    herald: Arc<Herald>,
    number: u64,
}

impl Ticket {
    fn take(herald: Arc<Herald>, message: &mut Message, now_ms: i64) -> Ticket {
        let number = herald.sequencer.take(message, now_ms);
        Ticket { herald, number }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.herald.sequencer.finish(self.number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::LocalBroker;
    use crate::hub::Delivery;
    use crate::model::EventKind;
    use crate::model::now_unix_ms;
    use crate::store::Since;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};

    #[tokio::test]
    async fn a_publish_its_caller_drops_still_runs_to_its_end() {
        let gate = Arc::new(Notify::new());
        let (done, finished) = tokio::sync::oneshot::channel();
        let waiting = gate.clone();
        let mut publish = RunToEnd::new(async move {
            waiting.notified().await;
            let _ = done.send(());
        });
        // Started, then dropped by its caller (a client that went away).
        let polled = tokio::time::timeout(Duration::from_millis(20), &mut publish).await;
        assert!(polled.is_err(), "still waiting at the gate");
        drop(publish);
        gate.notify_one();
        let finished = tokio::time::timeout(Duration::from_secs(5), finished).await;
        assert!(
            matches!(finished, Ok(Ok(()))),
            "the rest ran on a task of its own"
        );
        // Awaited to its end, it is simply the future's output.
        assert_eq!(RunToEnd::new(async { 7 }).await, 7);
    }

    use std::future::Future as _;

    /// A waker that counts its wake-ups.
    struct Counted(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn message_with_id() -> Message {
        Message::new(EventKind::Message, "t")
    }

    #[test]
    fn turns_follow_tickets_and_a_finish_wakes_only_the_next_turn() {
        let sequencer = Sequencer::default();
        let mut messages: Vec<Message> = (0..4).map(|_| message_with_id()).collect();
        let tickets: Vec<u64> = messages
            .iter_mut()
            .map(|m| sequencer.take(m, now_unix_ms()))
            .collect();
        assert_eq!(tickets, [0, 1, 2, 3]);
        assert!(messages.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(sequencer.visible_bound(), messages[0].id);

        let counters: Vec<Arc<Counted>> = (0..4)
            .map(|_| Arc::new(Counted(Default::default())))
            .collect();
        let mut waits: Vec<_> = tickets
            .iter()
            .map(|&t| Box::pin(sequencer.wait_turn(t)))
            .collect();
        let mut poll = |i: usize| {
            let waker = std::task::Waker::from(counters[i].clone());
            let mut cx = std::task::Context::from_waker(&waker);
            waits[i].as_mut().poll(&mut cx).is_ready()
        };
        let woken = |i: usize| counters[i].0.load(Ordering::SeqCst);
        assert!(poll(0), "the first ticket's turn is now");
        assert!(!poll(1) && !poll(2) && !poll(3));
        // Out of order: 2 finishes first; nobody's turn came.
        sequencer.finish(2);
        assert_eq!((woken(1), woken(2), woken(3)), (0, 0, 0));
        assert_eq!(sequencer.visible_bound(), messages[0].id);
        // 0 finishes: only 1 is woken (2 is done, 3 still waits for 1).
        sequencer.finish(0);
        assert_eq!((woken(1), woken(3)), (1, 0));
        assert_eq!(sequencer.visible_bound(), messages[1].id);
        assert!(poll(1));
        assert!(!poll(3));
        // 1 finishes: 2 was done already, so it is 3's turn.
        sequencer.finish(1);
        assert_eq!(woken(3), 1);
        assert_eq!(sequencer.visible_bound(), messages[3].id);
        assert!(poll(3));
        sequencer.finish(3);
        // Nothing in flight: a fresh bound above every ID taken so far.
        assert!(sequencer.visible_bound() > messages[3].id);
        assert_eq!(sequencer.take(&mut message_with_id(), now_unix_ms()), 4);
    }

    pub(super) fn herald(dir: &tempfile::TempDir) -> Arc<Herald> {
        let config = Arc::new(Config::with_data_dir(dir.path()));
        let store = SqliteStore::open(&dir.path().join("m.db"), SqliteOptions::default()).unwrap();
        let hub = Hub::new(100_000);
        let broker = Arc::new(LocalBroker::new(hub.clone()));
        Herald::new(config, Arc::new(store), broker, hub)
    }

    fn cached(topic: &str, text: String) -> Message {
        let mut m = Message::new(EventKind::Message, topic);
        m.message = text;
        m.sequence_id = Some(m.id.clone());
        m.expires = Some(m.time + 3600);
        m
    }

    /// The caller's one clock read gives the event its time, and its ID is of that
    /// time or later (never earlier: IDs do not go back).
    #[tokio::test]
    async fn a_publish_is_timed_by_its_callers_clock_read() {
        let dir = tempfile::tempdir().unwrap();
        let herald = herald(&dir);
        let at = now_unix_ms() - 5_000;
        for cache in [true, false] {
            let draft = crate::core::publish::MessageDraft {
                cache,
                ..Default::default()
            };
            let request = crate::core::publish::PublishRequest {
                topic: "t".into(),
                kind: crate::core::publish::PublishKind::Message(Box::new(draft)),
            };
            let event = herald.publish_shared_at(request, at).await.unwrap();
            assert_eq!(event.message.time, at.div_euclid(1000), "cache={cache}");
            let id_ms = crate::model::id::timestamp_ms(&event.message.id).unwrap();
            assert!(id_ms >= at as u64, "cache={cache}");
        }
    }

    /// Concurrent publishers share group commits and resume in any order; live
    /// delivery must still follow ID order (the order of `since=`), or a client that
    /// resumes from the last ID it saw could miss a message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_order_is_id_order_under_concurrent_publishers() {
        let dir = tempfile::tempdir().unwrap();
        let herald = herald(&dir);
        let sub = herald.subscribe(&["t".into()], Transport::Json);
        let mut tasks = Vec::new();
        for p in 0..16 {
            let herald = herald.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..25 {
                    let m = herald
                        .publish_event(cached("t", format!("{p}-{i}")), now_unix_ms())
                        .await
                        .unwrap();
                    let m = &m.message;
                    assert_eq!(m.sequence_id.as_deref(), Some(m.id.as_str()));
                    acked.push(m.id.clone());
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        let mut live = Vec::new();
        let mut batch = Vec::new();
        while live.len() < 400 {
            batch.clear();
            sub.next_batch(&mut batch).await.unwrap();
            for d in batch.drain(..) {
                if let Delivery::Event(e) = d {
                    live.push(e.message.id.clone());
                }
            }
        }
        let mut sorted = live.clone();
        sorted.sort();
        assert_eq!(live, sorted, "live delivery out of ID order");
        acked.sort();
        assert_eq!(live, acked, "every acknowledged message delivered once");
        let history = herald
            .history(Query {
                topics: vec!["t".into()],
                since: Since::All,
                include_scheduled: false,
            })
            .await
            .unwrap();
        let ids: Vec<String> = history.into_iter().map(|m| m.id).collect();
        assert_eq!(ids, live);
        herald.store.close().await;
    }

    /// A store whose appends of messages ending in "slow" take a while, so commits
    /// finish out of ID order.
    struct SlowAppends(SqliteStore);

    #[async_trait::async_trait]
    impl Store for SlowAppends {
        async fn append(&self, message: Message) -> Result<Message, crate::store::StoreError> {
            if message.message.ends_with("slow") {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            self.0.append(message).await
        }
        async fn query(&self, q: Query) -> Result<Vec<Message>, crate::store::StoreError> {
            self.0.query(q).await
        }
        async fn history_page(
            &self,
            q: &Query,
            after: Option<&Cursor>,
            limit: usize,
        ) -> Result<crate::store::Page, crate::store::StoreError> {
            self.0.history_page(q, after, limit).await
        }
        async fn after_id(
            &self,
            after: &str,
            limit: usize,
        ) -> Result<Vec<Message>, crate::store::StoreError> {
            self.0.after_id(after, limit).await
        }
        async fn take_due(&self, now: i64) -> Result<Vec<Message>, crate::store::StoreError> {
            self.0.take_due(now).await
        }
        async fn next_due(&self) -> Result<Option<i64>, crate::store::StoreError> {
            self.0.next_due().await
        }
        async fn cancel_scheduled(
            &self,
            topic: &str,
            sequence_id: &str,
        ) -> Result<u64, crate::store::StoreError> {
            self.0.cancel_scheduled(topic, sequence_id).await
        }
        async fn prune_expired(&self, now: i64) -> Result<u64, crate::store::StoreError> {
            self.0.prune_expired(now).await
        }
        async fn stats(&self) -> Result<crate::store::StoreStats, crate::store::StoreError> {
            self.0.stats().await
        }
        async fn check_writable(&self) -> Result<(), crate::store::StoreError> {
            self.0.check_writable().await
        }
        async fn close(&self) {
            self.0.close().await
        }
    }

    /// The webhook feed's contract: a reader that resumes after the last ID it got
    /// sees every stored message exactly once, in ID order, although commits finish
    /// out of ID order (slow appends), scheduled messages included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_after_never_skips_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(Config::with_data_dir(dir.path()));
        let store = SqliteStore::open(&dir.path().join("m.db"), SqliteOptions::default()).unwrap();
        let hub = Hub::new(100_000);
        let broker = Arc::new(LocalBroker::new(hub.clone()));
        let herald = Herald::new(config, Arc::new(SlowAppends(store)), broker, hub);
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (herald, done) = (herald.clone(), done.clone());
            let mut cursor = herald.feed_start();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    let batch = herald.committed_after(&cursor, 7).await.unwrap();
                    if let Some(last) = batch.last() {
                        cursor = last.id.clone();
                    }
                    let empty = batch.is_empty();
                    seen.extend(batch.into_iter().map(|m| m.id));
                    if finished && empty {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let mut tasks = Vec::new();
        for p in 0..8 {
            let herald = herald.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..12 {
                    let slow = if (p + i) % 4 == 0 { " slow" } else { "" };
                    let mut m =
                        cached(if p % 2 == 0 { "a" } else { "b" }, format!("{p}-{i}{slow}"));
                    if i % 3 == 0 {
                        m.time += 3600; // scheduled
                    }
                    acked.push(
                        herald
                            .publish_event(m, now_unix_ms())
                            .await
                            .unwrap()
                            .message
                            .id
                            .clone(),
                    );
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        done.store(true, Ordering::SeqCst);
        let seen = reader.await.unwrap();
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "feed out of ID order");
        acked.sort();
        assert_eq!(seen, acked, "every stored message exactly once");
        herald.store.close().await;
    }
}
