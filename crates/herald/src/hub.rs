//! The in-process topic hub: who is subscribed to what, and fan-out to them.
//!
//! Design, for many cheap subscribers:
//! - A subscriber is one small struct (a bounded queue of shared events and a
//!   `Notify`), registered in each of its topics. There is no task per subscriber per
//!   topic: the connection's own task drains the queue and writes to its socket.
//! - A published event is wrapped once in an [`Arc<SharedEvent>`]; its wire encodings
//!   (JSON line, SSE frame, raw line, WebSocket text) are computed at most once each
//!   and shared by every subscriber, never once per subscriber.
//! - Each topic has an outbox and one fan-out at a time, which sends the outbox's
//!   events to the subscribers batch after batch, so every subscriber of a topic sees
//!   that topic's events in the same order, and in publish order for publishes that
//!   do not overlap in time. The fan-out is the topic's task, or, when a hand-off
//!   finds none under way and the topic is small, the publisher itself ([`FanOut`]):
//!   it delivers the batch after its publish released the core's ordering turn, so
//!   a topic with a few subscribers costs no task spawn and no wake-up per publish.
//! - A topic with many subscribers on a runtime with several worker threads has each
//!   batch split into shards of its subscribers, sent in parallel; the next batch
//!   starts when every shard is done, which keeps that order (see `Hub::fan_out`).
//! - A subscriber whose queue is full (it does not read fast enough) is closed and
//!   counted; publishers never wait for a subscriber, so memory stays bounded.
//! - Keepalives come from one shared tick that enqueues a marker for every
//!   subscriber, not from a timer per connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::model::Message;
use crate::wire::{self, FRAMINGS, Framing};

/// An event being delivered, with its wire encodings computed lazily and shared:
/// each is built at most once, however many subscribers receive the event.
#[derive(Debug)]
pub struct SharedEvent {
    pub message: Message,
    /// The JSON line, WebSocket text and WebSocket frame, built together on first
    /// use (`wire::MessageEncodings`): one initialisation, not one per framing.
    json: OnceLock<wire::MessageEncodings>,
    /// The other framings, each built on first use.
    encoded: [OnceLock<Bytes>; FRAMINGS],
    /// The `publish` span's context when the event is traced (see [`crate::otel`]).
    #[cfg(feature = "otel")]
    pub trace: Option<crate::otel::TraceContext>,
}

impl AsRef<Message> for SharedEvent {
    fn as_ref(&self) -> &Message {
        &self.message
    }
}

impl SharedEvent {
    /// Wraps `message` for delivery.
    pub fn new(message: Message) -> Arc<Self> {
        Arc::new(SharedEvent {
            message,
            json: OnceLock::new(),
            encoded: Default::default(),
            #[cfg(feature = "otel")]
            trace: None,
        })
    }

    /// Wraps `message` for delivery; its deliveries get `deliver` spans under `trace`.
    #[cfg(feature = "otel")]
    pub fn traced(message: Message, trace: crate::otel::TraceContext) -> Arc<Self> {
        Arc::new(SharedEvent {
            message,
            json: OnceLock::new(),
            encoded: Default::default(),
            trace: Some(trace),
        })
    }

    /// The message back out of `this` (without a copy when no one else holds the
    /// event yet), and what wraps its replacement as `this` was wrapped: for a
    /// store that gives the message its ID as it commits it.
    pub(crate) fn into_parts(this: Arc<Self>) -> (Message, Rewrap) {
        match Arc::try_unwrap(this) {
            Ok(event) => (
                event.message,
                Rewrap {
                    #[cfg(feature = "otel")]
                    trace: event.trace,
                },
            ),
            Err(this) => (
                this.message.clone(),
                Rewrap {
                    #[cfg(feature = "otel")]
                    trace: this.trace.clone(),
                },
            ),
        }
    }

    /// The event in `framing` ([`crate::wire`]), built on first use; a wrapping
    /// framing reuses the cached bytes it wraps.
    pub fn encoded(&self, framing: Framing) -> &Bytes {
        let json = || {
            self.json
                .get_or_init(|| wire::MessageEncodings::new(&self.message))
        };
        match framing {
            Framing::JsonLine => &json().json_line,
            Framing::WsText => &json().ws_text,
            Framing::WsFrame => &json().ws_frame,
            _ => self.encoded[framing as usize].get_or_init(|| {
                let inner = framing.inner().map(|inner| self.encoded(inner));
                wire::encode(&self.message, framing, inner.map_or(&[][..], |b| &b[..]))
            }),
        }
    }

    /// `/json` framing: ntfy's `ForJSON` object and a newline.
    pub fn json_line(&self) -> &Bytes {
        self.encoded(Framing::JsonLine)
    }

    /// `/sse` framing.
    pub fn sse_frame(&self) -> &Bytes {
        self.encoded(Framing::SseFrame)
    }

    /// `/raw` framing: the message text on one line; an empty line for other events.
    pub fn raw_line(&self) -> &Bytes {
        self.encoded(Framing::RawLine)
    }

    /// WebSocket text payload.
    pub fn ws_text(&self) -> &Bytes {
        self.encoded(Framing::WsText)
    }
}

/// How an event taken apart by [`SharedEvent::into_parts`] was wrapped.
pub(crate) struct Rewrap {
    #[cfg(feature = "otel")]
    trace: Option<crate::otel::TraceContext>,
}

impl Rewrap {
    /// `message`, wrapped as the event it came from was.
    pub(crate) fn wrap(self, message: Message) -> Arc<SharedEvent> {
        Arc::new(SharedEvent {
            message,
            json: OnceLock::new(),
            encoded: Default::default(),
            #[cfg(feature = "otel")]
            trace: self.trace,
        })
    }
}

/// What a subscriber's queue holds.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A published event.
    Event(Arc<SharedEvent>),
    /// Time to send a keepalive (HTTP streams) or a ping (WebSocket).
    Keepalive,
}

/// Why a subscription was ended by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue overflowed: it did not read fast enough.
    TooSlow,
    /// The server is shutting down.
    Shutdown,
}

/// What became of an event handed to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverOutcome {
    /// Written or queued for the subscriber.
    Accepted,
    /// Not for this subscriber (its filters rejected it, or it already had it).
    Skipped,
    /// The subscriber's queue was full; it has been closed.
    Overflowed,
    /// The subscriber was already closed.
    Closed,
}

/// The receiving end of a subscriber, as the hub sees it. Implementations must not
/// block or await: they are called with the topic's lock held.
pub trait Sink: Send + Sync + 'static {
    /// Takes `event` for delivery (write it now or queue it), or refuses it.
    fn deliver(&self, event: &Arc<SharedEvent>) -> DeliverOutcome;
    /// Takes several events of one topic, in order. Sinks that write to a socket
    /// override this to send them in one write. Returns the outcome and how many
    /// events were accepted.
    fn deliver_batch(&self, events: &[Arc<SharedEvent>]) -> (DeliverOutcome, usize) {
        let mut accepted = 0;
        let mut outcome = DeliverOutcome::Skipped;
        for event in events {
            match self.deliver(event) {
                DeliverOutcome::Accepted => {
                    accepted += 1;
                    outcome = DeliverOutcome::Accepted;
                }
                DeliverOutcome::Skipped => {}
                other => return (other, accepted),
            }
        }
        (outcome, accepted)
    }
    /// The shared keepalive tick.
    fn keepalive(&self);
    /// Ends the subscription after what is already queued.
    fn close(&self, reason: CloseReason);
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Delivery>,
    closed: Option<CloseReason>,
}

/// A sink that queues events for a task to drain ([`Subscription::next_batch`]).
#[derive(Debug)]
struct QueueSink {
    queue: Mutex<QueueState>,
    ready: Notify,
    capacity: usize,
}

impl QueueSink {
    fn push(&self, item: Delivery) -> DeliverOutcome {
        let mut q = lock(&self.queue);
        if q.closed.is_some() {
            return DeliverOutcome::Closed;
        }
        if matches!(item, Delivery::Keepalive) {
            if q.items.iter().any(|d| matches!(d, Delivery::Keepalive)) {
                return DeliverOutcome::Accepted;
            }
        } else if q.items.len() >= self.capacity {
            q.closed = Some(CloseReason::TooSlow);
            q.items = VecDeque::new();
            drop(q);
            self.ready.notify_one();
            return DeliverOutcome::Overflowed;
        }
        q.items.push_back(item);
        drop(q);
        self.ready.notify_one();
        DeliverOutcome::Accepted
    }
}

impl Sink for QueueSink {
    fn deliver(&self, event: &Arc<SharedEvent>) -> DeliverOutcome {
        self.push(Delivery::Event(event.clone()))
    }

    fn keepalive(&self) {
        let _ = self.push(Delivery::Keepalive);
    }

    fn close(&self, reason: CloseReason) {
        let mut q = lock(&self.queue);
        if q.closed.is_none() {
            q.closed = Some(reason);
        }
        drop(q);
        self.ready.notify_one();
    }
}

/// A registered subscriber: its topics and where its events go.
struct Entry {
    id: u64,
    transport: Transport,
    topics: Box<[Arc<str>]>,
    sink: Arc<dyn Sink>,
}

/// The subscribers of one topic, and its outbox: events waiting for the topic's
/// fan-out task. At most one fan-out task runs per topic, so every subscriber sees
/// the topic's events in outbox order.
#[derive(Default)]
struct Topic {
    subscribers: Mutex<Vec<Arc<Entry>>>,
    outbox: Mutex<Outbox>,
    /// Wakes publishers waiting for room in a full outbox.
    drained: Notify,
}

#[derive(Default)]
struct Outbox {
    events: Vec<Arc<SharedEvent>>,
    /// Whether a fan-out task is working on this topic.
    running: bool,
}

/// Most events waiting in one topic's outbox; publishers wait beyond that.
const OUTBOX_LIMIT: usize = 4096;
/// Subscribers served between yields of a fan-out task, so that a fan-out to many
/// subscribers does not hold a runtime thread for its whole duration.
const FANOUT_YIELD_EVERY: usize = 256;

/// Fewest subscribers per shard of a topic's fan-out ([`shard_count`]): below twice
/// this, a topic is served by its one fan-out task, as on a single core. A shard
/// costs a task spawn and a join (a few microseconds); 1,024 sends on loopback take
/// about 15 ms.
pub(crate) const SHARD_MIN_SUBSCRIBERS: usize = 1024;

/// Into how many shards a fan-out to `subscribers` is split on a runtime with
/// `workers` threads: one per worker, each of at least `min_per_shard` subscribers.
fn shard_count(subscribers: usize, min_per_shard: usize, workers: usize) -> usize {
    (subscribers / min_per_shard.max(1)).clamp(1, workers.max(1))
}

/// Worker threads of the current runtime (1 outside one, and on a current-thread
/// runtime). Under `taskset -c 0` tokio starts one worker, so a one-core server
/// never shards.
fn worker_threads() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers())
}

/// How a subscriber receives its events, for the per-transport counters.
///
/// Recorded once at registration, so the fan-out path only indexes an array: no
/// lookup, no label handling, no lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `/json` stream.
    Json,
    /// `/sse` stream.
    Sse,
    /// `/raw` stream.
    Raw,
    /// WebSocket.
    Ws,
    /// gRPC `Subscribe` stream (`crate::grpc`).
    Grpc,
    /// Registered without a transport (embedders, benchmarks).
    Other,
}

impl Transport {
    /// Every transport, in index order.
    pub const ALL: [Transport; TRANSPORTS] = [
        Transport::Json,
        Transport::Sse,
        Transport::Raw,
        Transport::Ws,
        Transport::Grpc,
        Transport::Other,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Json => "json",
            Transport::Sse => "sse",
            Transport::Raw => "raw",
            Transport::Ws => "ws",
            Transport::Grpc => "grpc",
            Transport::Other => "other",
        }
    }
}

/// Number of [`Transport`] variants.
pub const TRANSPORTS: usize = 6;

/// Counters the hub keeps for stats and metrics (plain atomics: the metrics layer
/// reads them at scrape time, the hub knows nothing about Prometheus).
#[derive(Debug, Default)]
pub struct HubCounters {
    /// Events accepted by subscribers (written or queued), all transports.
    pub delivered: AtomicU64,
    /// Events accepted by subscribers, per [`Transport`] (indexed by `as usize`).
    pub delivered_by: [AtomicU64; TRANSPORTS],
    /// Live subscribers per [`Transport`].
    pub subscribers_by: [AtomicU64; TRANSPORTS],
    /// Subscribers closed because their queue overflowed.
    pub dropped_slow: AtomicU64,
}

/// The topic hub. Cheap to share (`Arc<Hub>`).
pub struct Hub {
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    /// Every live subscriber, for keepalive ticks and shutdown.
    all: Mutex<HashMap<u64, Arc<Entry>>>,
    next_id: AtomicU64,
    queue_capacity: usize,
    /// [`SHARD_MIN_SUBSCRIBERS`], lowered by tests.
    shard_min: usize,
    /// Public counters.
    pub counters: HubCounters,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("subscribers", &self.subscriber_count())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub whose subscribers may each have up to `queue_capacity` undelivered events.
    pub fn new(queue_capacity: usize) -> Arc<Self> {
        Arc::new(Hub {
            topics: RwLock::new(HashMap::new()),
            all: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue_capacity: queue_capacity.max(1),
            shard_min: SHARD_MIN_SUBSCRIBERS,
            counters: HubCounters::default(),
        })
    }

    /// A hub that shards fan-outs of `shard_min` or more subscribers per worker
    /// (`fanout-shard-size`); 0: never.
    pub fn with_shard_min(queue_capacity: usize, shard_min: usize) -> Arc<Self> {
        let mut hub = Hub::new(queue_capacity);
        if let Some(h) = Arc::get_mut(&mut hub) {
            h.shard_min = if shard_min == 0 {
                usize::MAX
            } else {
                shard_min
            };
        }
        hub
    }

    /// How many undelivered events a subscriber may hold before it is cut off.
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// Registers `sink` on `topics`. Events dispatched from now on go to it until the
    /// returned registration is dropped.
    pub fn register(self: &Arc<Self>, topics: &[String], sink: Arc<dyn Sink>) -> Registration {
        self.register_as(topics, sink, Transport::Other)
    }

    /// [`Self::register`], counting the subscriber and its deliveries under `transport`.
    pub fn register_as(
        self: &Arc<Self>,
        topics: &[String],
        sink: Arc<dyn Sink>,
        transport: Transport,
    ) -> Registration {
        let topics: Box<[Arc<str>]> = topics.iter().map(|t| Arc::from(t.as_str())).collect();
        let entry = Arc::new(Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            transport,
            topics,
            sink,
        });
        self.counters.subscribers_by[transport as usize].fetch_add(1, Ordering::Relaxed);
        lock(&self.all).insert(entry.id, entry.clone());
        for name in entry.topics.iter() {
            let topic = self.topic_or_create(name);
            lock(&topic.subscribers).push(entry.clone());
        }
        Registration {
            hub: self.clone(),
            entry,
        }
    }

    /// Registers a queue-backed subscriber on `topics`, drained by a task through
    /// [`Subscription::next_batch`].
    pub fn subscribe(self: &Arc<Self>, topics: &[String]) -> Subscription {
        self.subscribe_as(topics, Transport::Other)
    }

    /// [`Self::subscribe`], counted under `transport`.
    pub fn subscribe_as(self: &Arc<Self>, topics: &[String], transport: Transport) -> Subscription {
        let sink = Arc::new(QueueSink {
            queue: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            capacity: self.queue_capacity,
        });
        let registration = self.register_as(topics, sink.clone(), transport);
        Subscription {
            _registration: registration,
            sink,
        }
    }

    fn topic_or_create(&self, name: &Arc<str>) -> Arc<Topic> {
        if let Some(t) = read(&self.topics).get(name) {
            return t.clone();
        }
        write(&self.topics).entry(name.clone()).or_default().clone()
    }

    fn unregister(&self, entry: &Entry) {
        lock(&self.all).remove(&entry.id);
        self.counters.subscribers_by[entry.transport as usize].fetch_sub(1, Ordering::Relaxed);
        for name in entry.topics.iter() {
            let Some(topic) = read(&self.topics).get(name).cloned() else {
                continue;
            };
            let now_empty = {
                let mut subs = lock(&topic.subscribers);
                subs.retain(|s| s.id != entry.id);
                subs.is_empty()
            };
            if now_empty {
                let mut topics = write(&self.topics);
                // Re-check under the map lock: someone may have subscribed meanwhile.
                if topics
                    .get(name)
                    .is_some_and(|t| lock(&t.subscribers).is_empty())
                {
                    topics.remove(name);
                }
            }
        }
    }

    /// Hands `event` to every subscriber of its topic, through the topic's outbox,
    /// delivering it at once ([`FanOut::run`]) when it falls to this caller.
    ///
    /// Returns once the event is queued for fan-out (in order), and for a small
    /// topic whose fan-out was idle, once it is delivered. Waits only if the outbox
    /// is full (backpressure), never for a subscriber.
    pub async fn dispatch(self: &Arc<Self>, event: &Arc<SharedEvent>) {
        if let Some(fan_out) = self.hand_off(event).await {
            fan_out.run();
        }
    }

    /// Appends `event` to its topic's outbox, in order. When no fan-out is under
    /// way for the topic, the caller gets it ([`FanOut`]): it is to run it once it
    /// no longer holds anything up (the core runs it after its publish releases
    /// the sequencer's turn), and dropping it runs it too. Otherwise the fan-out
    /// already under way takes the event with its next batch.
    ///
    /// Events that pile up while a fan-out is under way go out together, one write
    /// per subscriber for the whole batch, which is what keeps a busy topic's cost
    /// per delivery low. Waits only if the outbox is full (backpressure), never for
    /// a subscriber.
    pub async fn hand_off(self: &Arc<Self>, event: &Arc<SharedEvent>) -> Option<FanOut> {
        let topic = read(&self.topics)
            .get(event.message.topic.as_str())
            .cloned()?;
        loop {
            if let HandOff::Queued(fan_out) = self.push(&topic, event) {
                return fan_out;
            }
            let notified = topic.drained.notified();
            let mut notified = std::pin::pin!(notified);
            {
                let outbox = lock(&topic.outbox);
                if outbox.events.len() < OUTBOX_LIMIT {
                    continue;
                }
                // Register for the wake-up before releasing the lock.
                notified.as_mut().enable();
            }
            notified.await;
        }
    }

    /// [`Self::hand_off`] without waiting: [`HandOff::Full`] when it would wait.
    pub fn try_hand_off(self: &Arc<Self>, event: &Arc<SharedEvent>) -> HandOff {
        let topic = read(&self.topics)
            .get(event.message.topic.as_str())
            .cloned();
        match topic {
            Some(topic) => self.push(&topic, event),
            None => HandOff::Queued(None),
        }
    }

    /// Appends `event` to `topic`'s outbox unless it is full; the topic's fan-out
    /// if none was under way.
    fn push(self: &Arc<Self>, topic: &Arc<Topic>, event: &Arc<SharedEvent>) -> HandOff {
        let mut outbox = lock(&topic.outbox);
        if outbox.events.len() >= OUTBOX_LIMIT {
            return HandOff::Full;
        }
        outbox.events.push(event.clone());
        if outbox.running {
            return HandOff::Queued(None);
        }
        outbox.running = true;
        drop(outbox);
        HandOff::Queued(Some(FanOut {
            hub: self.clone(),
            topic: Some(topic.clone()),
        }))
    }

    /// Takes the topic's whole outbox as the next batch, or (empty) marks its
    /// fan-out finished. Wakes publishers waiting for room: there can be some only
    /// when the outbox was full.
    fn next_batch(topic: &Topic) -> Option<Vec<Arc<SharedEvent>>> {
        let batch = {
            let mut outbox = lock(&topic.outbox);
            if outbox.events.is_empty() {
                outbox.running = false;
                return None;
            }
            std::mem::take(&mut outbox.events)
        };
        if batch.len() >= OUTBOX_LIMIT {
            topic.drained.notify_waiters();
        }
        Some(batch)
    }

    /// Adds a batch's accepted deliveries to the counters.
    fn count_delivered(&self, accepted_by: [u64; TRANSPORTS]) {
        let mut accepted_total = 0;
        for (counter, n) in self.counters.delivered_by.iter().zip(accepted_by) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
                accepted_total += n;
            }
        }
        if accepted_total > 0 {
            self.counters
                .delivered
                .fetch_add(accepted_total, Ordering::Relaxed);
        }
    }

    /// The fan-out task of one topic: sends outbox batches until the outbox is empty.
    ///
    /// A batch goes to a snapshot of the topic's subscribers. A large topic on a
    /// runtime with several worker threads is split into shards (contiguous ranges
    /// of the snapshot, one task each, run in parallel by the workers); the task
    /// waits for every shard before it takes the next batch. So each subscriber is
    /// in exactly one shard of a batch and gets the batches in outbox order, whether
    /// or not the topic is sharded, and whether it is in the same shard from one
    /// batch to the next (subscribers come and go) does not matter.
    async fn fan_out(self: Arc<Self>, topic: Arc<Topic>) {
        while let Some(batch) = Self::next_batch(&topic) {
            let batch: Arc<[Arc<SharedEvent>]> = batch.into();
            let subscribers: Arc<[Arc<Entry>]> = lock(&topic.subscribers).as_slice().into();
            let shards = shard_count(subscribers.len(), self.shard_min, worker_threads());
            let accepted_by = if shards <= 1 {
                self.deliver_range(&batch, &subscribers).await
            } else {
                let per_shard = subscribers.len().div_ceil(shards);
                let mut tasks = Vec::with_capacity(shards);
                // Every shard gets a task of its own (none runs in this one): the
                // runtime keeps the most recently spawned task in a slot other
                // workers cannot steal from, so a shard run here would share its
                // thread with that one instead of running beside it.
                for start in (0..subscribers.len()).step_by(per_shard) {
                    let hub = self.clone();
                    let batch = batch.clone();
                    let subscribers = subscribers.clone();
                    let end = (start + per_shard).min(subscribers.len());
                    tasks.push(tokio::spawn(async move {
                        hub.deliver_range(&batch, &subscribers[start..end]).await
                    }));
                }
                let mut sum = [0u64; TRANSPORTS];
                for task in tasks {
                    // A shard only ends early if a sink panicked (a bug); the
                    // others' deliveries still count.
                    if let Ok(counts) = task.await {
                        for (total, n) in sum.iter_mut().zip(counts) {
                            *total += n;
                        }
                    }
                }
                sum
            };
            self.count_delivered(accepted_by);
        }
    }

    /// Hands `batch` to each of `subscribers`, in order, yielding every
    /// [`FANOUT_YIELD_EVERY`] subscribers; returns the events accepted per
    /// [`Transport`].
    async fn deliver_range(
        &self,
        batch: &[Arc<SharedEvent>],
        subscribers: &[Arc<Entry>],
    ) -> [u64; TRANSPORTS] {
        let mut accepted_by = [0u64; TRANSPORTS];
        let mut chunks = subscribers.chunks(FANOUT_YIELD_EVERY).peekable();
        while let Some(chunk) = chunks.next() {
            self.deliver_now(batch, chunk, &mut accepted_by);
            if chunks.peek().is_some() {
                tokio::task::yield_now().await;
            }
        }
        accepted_by
    }

    /// Hands `batch` to each of `subscribers`, in order, without yielding; adds the
    /// events accepted to `accepted_by`, per [`Transport`] (summed locally: the
    /// per-transport split costs the fan-out one array index per subscriber).
    fn deliver_now(
        &self,
        batch: &[Arc<SharedEvent>],
        subscribers: &[Arc<Entry>],
        accepted_by: &mut [u64; TRANSPORTS],
    ) {
        // One relaxed load per batch when the feature is in but tracing is off.
        #[cfg(feature = "otel")]
        let traced = crate::otel::enabled() && batch.iter().any(|e| e.trace.is_some());
        for entry in subscribers {
            #[cfg(feature = "otel")]
            let spans =
                traced.then(|| crate::otel::deliver_spans(batch, entry.transport, entry.id));
            let (outcome, accepted) = entry.sink.deliver_batch(batch);
            #[cfg(feature = "otel")]
            if let Some(spans) = spans {
                crate::otel::finish_deliver(spans, outcome, accepted);
            }
            accepted_by[entry.transport as usize] += accepted as u64;
            if outcome == DeliverOutcome::Overflowed {
                self.counters.dropped_slow.fetch_add(1, Ordering::Relaxed);
                tracing::info!(subscriber = entry.id, "subscriber too slow, disconnecting");
            }
        }
    }

    /// The shared keepalive tick: every subscriber sends its keepalive or ping.
    pub fn tick_keepalive(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.all).values().cloned().collect();
        for entry in entries {
            entry.sink.keepalive();
        }
    }

    /// Ends every subscription (shutdown): their streams finish after what is queued.
    pub fn close_all(&self, reason: CloseReason) {
        let entries: Vec<Arc<Entry>> = lock(&self.all).values().cloned().collect();
        for entry in entries {
            entry.sink.close(reason);
        }
    }

    /// Number of live subscriptions.
    pub fn subscriber_count(&self) -> usize {
        lock(&self.all).len()
    }

    /// Whether `name` currently has subscribers.
    pub fn has_topic(&self, name: &str) -> bool {
        read(&self.topics).contains_key(name)
    }

    /// Number of topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        read(&self.topics).len()
    }
}

/// A topic's fan-out that fell to the caller of [`Hub::hand_off`]: its outbox had no
/// fan-out under way, so this one is the topic's only one until it finishes.
///
/// Run ([`Self::run`]) for a topic of at most [`INLINE_MAX_SUBSCRIBERS`], it
/// delivers the outbox's batch in the caller's task, with no task spawned, no
/// wake-up and no other thread involved (the profile's 1,240 instructions per
/// publish for the spawn alone, and the task's scheduling on top); a larger topic,
/// or events that arrived meanwhile, go to the topic's fan-out task as before. Order
/// is the same either way: whoever holds the topic's fan-out takes the outbox in
/// order, and there is one holder at a time. Dropped unrun, it runs.
#[must_use = "a topic's fan-out stops until it is run or dropped"]
pub struct FanOut {
    hub: Arc<Hub>,
    /// `None` once run.
    topic: Option<Arc<Topic>>,
}

/// What [`Hub::try_hand_off`] did with an event.
#[derive(Debug)]
pub enum HandOff {
    /// In its topic's outbox (or dropped: the topic has no subscribers), with the
    /// topic's fan-out if it fell to the caller.
    Queued(Option<FanOut>),
    /// The topic's outbox is full: [`Hub::hand_off`] waits for room.
    Full,
}

/// Largest outbox buffer (in events) a topic keeps between its batches: a burst's
/// larger one is freed.
const REUSED_OUTBOX_MAX: usize = 16;

/// Most subscribers of a topic whose fan-out a publisher delivers itself (see
/// [`FanOut`]): each costs the publisher's answer a non-blocking `send`.
pub(crate) const INLINE_MAX_SUBSCRIBERS: usize = 16;

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut").finish_non_exhaustive()
    }
}

impl FanOut {
    /// Delivers the topic's next batch here if the topic is small, then hands
    /// whatever arrived meanwhile (or a large topic's whole fan-out) to the topic's
    /// fan-out task.
    pub fn run(mut self) {
        self.run_once();
    }

    fn run_once(&mut self) {
        let Some(topic) = self.topic.take() else {
            return;
        };
        let hub = &self.hub;
        if lock(&topic.subscribers).len() <= INLINE_MAX_SUBSCRIBERS {
            let Some(mut batch) = Hub::next_batch(&topic) else {
                return;
            };
            hub.deliver_locked(&topic, &batch);
            batch.clear();
            // Done, unless events arrived while it was delivering: those go to a
            // task, so a publisher delivers at most one batch before it answers.
            let mut outbox = lock(&topic.outbox);
            if outbox.events.is_empty() {
                outbox.running = false;
                // The outbox keeps the batch's (small) buffer for its next events,
                // rather than allocating one per publish.
                if outbox.events.capacity() == 0 && batch.capacity() <= REUSED_OUTBOX_MAX {
                    outbox.events = batch;
                }
                return;
            }
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(hub.clone().fan_out(topic));
            }
            Err(_) => {
                // No runtime to spawn on (not the server's case): deliver the
                // rest here.
                while let Some(batch) = Hub::next_batch(&topic) {
                    hub.deliver_locked(&topic, &batch);
                }
            }
        }
    }
}

impl Hub {
    /// Delivers `batch` to the topic's subscribers as they are now, and counts it.
    fn deliver_locked(&self, topic: &Topic, batch: &[Arc<SharedEvent>]) {
        let mut accepted_by = [0u64; TRANSPORTS];
        {
            // Sinks neither block nor await (`Sink`): holding the list while they
            // take the batch only holds up this topic's (un)registrations.
            let subscribers = lock(&topic.subscribers);
            self.deliver_now(batch, &subscribers, &mut accepted_by);
        }
        self.count_delivered(accepted_by);
    }
}

impl Drop for FanOut {
    fn drop(&mut self) {
        self.run_once();
    }
}

/// A subscription the server can end on shutdown (see `Herald::close_if_draining`).
pub trait Closable {
    /// Ends the subscription with [`CloseReason::Shutdown`] after what is queued.
    fn close_for_shutdown(&self);
}

impl Closable for Subscription {
    fn close_for_shutdown(&self) {
        self.sink.close(CloseReason::Shutdown);
    }
}

impl<S: Sink> Closable for Arc<S> {
    fn close_for_shutdown(&self) {
        self.close(CloseReason::Shutdown);
    }
}

/// A registered sink. Dropping it unregisters the subscriber from every topic.
pub struct Registration {
    hub: Arc<Hub>,
    entry: Arc<Entry>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.entry.id)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.entry);
    }
}

/// A live queue-backed subscription. Dropping it unregisters the subscriber.
#[derive(Debug)]
pub struct Subscription {
    _registration: Registration,
    sink: Arc<QueueSink>,
}

impl Subscription {
    /// Waits until something is queued, then moves everything queued into `out`
    /// (so the caller can write it in one batch). Returns the close reason once the
    /// subscription was ended and its queue is empty.
    pub async fn next_batch(&self, out: &mut Vec<Delivery>) -> Result<(), CloseReason> {
        loop {
            {
                let mut q = lock(&self.sink.queue);
                if !q.items.is_empty() {
                    out.extend(q.items.drain(..));
                    if q.items.capacity() > 64 {
                        q.items.shrink_to(16);
                    }
                    return Ok(());
                }
                if let Some(reason) = q.closed {
                    return Err(reason);
                }
            }
            // notify_one stores a permit if nobody waits, so a push between the check
            // above and this await is not missed.
            self.sink.ready.notified().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn event(topic: &str, text: &str) -> Arc<SharedEvent> {
        let mut m = Message::new(EventKind::Message, topic);
        m.message = text.into();
        SharedEvent::new(m)
    }

    fn texts(batch: &[Delivery]) -> Vec<String> {
        batch
            .iter()
            .filter_map(|d| match d {
                Delivery::Event(e) => Some(e.message.message.clone()),
                Delivery::Keepalive => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn fan_out_in_order_to_every_subscriber_of_the_topic() {
        let hub = Hub::new(100);
        let a = hub.subscribe(&["t".into()]);
        let b = hub.subscribe(&["t".into(), "u".into()]);
        let c = hub.subscribe(&["u".into()]);
        for i in 0..5 {
            hub.dispatch(&event("t", &i.to_string())).await;
        }
        for sub in [&a, &b] {
            let mut out = Vec::new();
            sub.next_batch(&mut out).await.unwrap();
            assert_eq!(texts(&out), ["0", "1", "2", "3", "4"]);
        }
        hub.dispatch(&event("u", "x")).await;
        let mut out = Vec::new();
        c.next_batch(&mut out).await.unwrap();
        assert_eq!(texts(&out), ["x"]);
    }

    #[tokio::test]
    async fn slow_subscriber_is_cut_off_and_others_continue() {
        let hub = Hub::new(3);
        let slow = hub.subscribe(&["t".into()]);
        let fast = hub.subscribe(&["t".into()]);
        let mut out = Vec::new();
        for i in 0..10 {
            hub.dispatch(&event("t", &i.to_string())).await;
            out.clear();
            fast.next_batch(&mut out).await.unwrap();
        }
        assert_eq!(slow.next_batch(&mut out).await, Err(CloseReason::TooSlow));
        assert_eq!(hub.counters.dropped_slow.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn counters_split_by_transport() {
        let hub = Hub::new(10);
        let ws = hub.subscribe_as(&["t".into()], Transport::Ws);
        let json = hub.subscribe_as(&["t".into()], Transport::Json);
        let count = |t: Transport| hub.counters.subscribers_by[t as usize].load(Ordering::Relaxed);
        assert_eq!((count(Transport::Ws), count(Transport::Json)), (1, 1));
        hub.dispatch(&event("t", "x")).await;
        let mut out = Vec::new();
        ws.next_batch(&mut out).await.unwrap();
        let delivered =
            |t: Transport| hub.counters.delivered_by[t as usize].load(Ordering::Relaxed);
        assert_eq!(
            (delivered(Transport::Ws), delivered(Transport::Json)),
            (1, 1)
        );
        assert_eq!(hub.counters.delivered.load(Ordering::Relaxed), 2);
        drop((ws, json));
        assert_eq!((count(Transport::Ws), count(Transport::Json)), (0, 0));
    }

    #[tokio::test]
    async fn dropping_a_subscription_unregisters_it() {
        let hub = Hub::new(10);
        let s = hub.subscribe(&["t".into()]);
        assert_eq!(hub.topic_count(), 1);
        drop(s);
        assert_eq!(hub.topic_count(), 0);
        assert_eq!(hub.subscriber_count(), 0);
        hub.dispatch(&event("t", "x")).await;
    }

    #[tokio::test]
    async fn keepalives_do_not_pile_up_and_close_ends_the_stream() {
        let hub = Hub::new(10);
        let s = hub.subscribe(&["t".into()]);
        hub.tick_keepalive();
        hub.tick_keepalive();
        let mut out = Vec::new();
        s.next_batch(&mut out).await.unwrap();
        assert_eq!(out.len(), 1);
        hub.close_all(CloseReason::Shutdown);
        assert_eq!(s.next_batch(&mut out).await, Err(CloseReason::Shutdown));
    }

    #[test]
    fn shards_only_large_topics_and_never_on_one_worker() {
        assert_eq!(shard_count(100_000, 1024, 1), 1);
        assert_eq!(shard_count(2047, 1024, 2), 1);
        assert_eq!(shard_count(2048, 1024, 2), 2);
        assert_eq!(shard_count(10_000, 1024, 2), 2);
        assert_eq!(shard_count(10_000, 1024, 4), 4);
        assert_eq!(shard_count(3000, 1024, 8), 2);
        assert_eq!(shard_count(0, 1024, 2), 1);
    }

    /// Drains `sub` until `n` events arrived; their texts.
    async fn collect(sub: &Subscription, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        let mut out = Vec::new();
        while got.len() < n {
            out.clear();
            let next =
                tokio::time::timeout(std::time::Duration::from_secs(10), sub.next_batch(&mut out));
            match next.await {
                Ok(Ok(())) => got.extend(texts(&out)),
                other => panic!("after {} of {n} events: {other:?}", got.len()),
            }
        }
        got
    }

    /// The counters are added after the last shard of a batch: wait for them.
    async fn wait_delivered(hub: &Hub, want: u64) {
        for _ in 0..500 {
            if hub.counters.delivered.load(Ordering::Relaxed) == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(hub.counters.delivered.load(Ordering::Relaxed), want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sharded_fan_out_keeps_publish_order_per_subscriber() {
        let hub = Hub::with_shard_min(10_000, 4);
        let subs: Vec<Subscription> = (0..64).map(|_| hub.subscribe(&["t".into()])).collect();
        assert_eq!(shard_count(64, hub.shard_min, worker_threads()), 2);
        let want: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
        // Publishes from another task while the subscribers drain concurrently.
        let publisher = {
            let hub = hub.clone();
            let want = want.clone();
            tokio::spawn(async move {
                for text in &want {
                    hub.dispatch(&event("t", text)).await;
                }
            })
        };
        for sub in &subs {
            assert_eq!(collect(sub, want.len()).await, want);
        }
        publisher.await.unwrap();
        wait_delivered(&hub, 64 * want.len() as u64).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscribers_joining_and_leaving_across_the_threshold() {
        let hub = Hub::with_shard_min(10_000, 8);
        let first: Vec<Subscription> = (0..4).map(|_| hub.subscribe(&["t".into()])).collect();
        hub.dispatch(&event("t", "a")).await; // 4 subscribers: one task
        // Fan-out is asynchronous: only subscribers registered before it see "a".
        for sub in &first {
            assert_eq!(collect(sub, 1).await, ["a"]);
        }
        let mut more: Vec<Subscription> = (0..60).map(|_| hub.subscribe(&["t".into()])).collect();
        hub.dispatch(&event("t", "b")).await; // 64: two shards
        hub.dispatch(&event("t", "c")).await;
        let leaving = more.split_off(4); // back to 8 subscribers: one task
        for sub in &leaving {
            assert_eq!(collect(sub, 2).await, ["b", "c"]);
        }
        drop(leaving);
        hub.dispatch(&event("t", "d")).await;
        for sub in &first {
            assert_eq!(collect(sub, 3).await, ["b", "c", "d"]);
        }
        for sub in &more {
            assert_eq!(collect(sub, 3).await, ["b", "c", "d"]);
        }
        assert_eq!(hub.subscriber_count(), 8);
        wait_delivered(&hub, 4 + 64 * 2 + 8).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_subscribers_of_a_sharded_topic_are_cut_off() {
        let hub = Hub::with_shard_min(3, 4);
        // Slow subscribers at both ends of the list, so both shards have some.
        let slow_a: Vec<Subscription> = (0..4).map(|_| hub.subscribe(&["t".into()])).collect();
        let fast: Vec<Subscription> = (0..24).map(|_| hub.subscribe(&["t".into()])).collect();
        let slow_b: Vec<Subscription> = (0..4).map(|_| hub.subscribe(&["t".into()])).collect();
        for i in 0..10 {
            hub.dispatch(&event("t", &i.to_string())).await;
            for sub in &fast {
                assert_eq!(collect(sub, 1).await, [i.to_string()]);
            }
        }
        let mut out = Vec::new();
        for sub in slow_a.iter().chain(&slow_b) {
            assert_eq!(sub.next_batch(&mut out).await, Err(CloseReason::TooSlow));
        }
        assert_eq!(hub.counters.dropped_slow.load(Ordering::Relaxed), 8);
    }

    /// Events queued in `sub`'s sink right now, without waiting.
    fn queued(sub: &Subscription) -> Vec<String> {
        let q = lock(&sub.sink.queue);
        let items: Vec<Delivery> = q.items.iter().cloned().collect();
        texts(&items)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_small_topic_is_delivered_by_the_publisher_after_its_hand_off() {
        let hub = Hub::new(100);
        let subs: Vec<Subscription> = (0..INLINE_MAX_SUBSCRIBERS)
            .map(|_| hub.subscribe(&["t".into()]))
            .collect();
        let fan_out = hub.hand_off(&event("t", "a")).await;
        let fan_out = fan_out.expect("an idle topic's fan-out falls to the caller");
        // Held: later events queue behind it, none is delivered yet.
        assert!(hub.hand_off(&event("t", "b")).await.is_none());
        assert!(queued(&subs[0]).is_empty());
        fan_out.run();
        // Delivered in this task, in order, with nothing spawned or awaited.
        for sub in &subs {
            assert_eq!(queued(sub), ["a", "b"]);
        }
        assert_eq!(
            hub.counters.delivered.load(Ordering::Relaxed),
            2 * INLINE_MAX_SUBSCRIBERS as u64
        );
        // The topic's fan-out is free again: the next hand-off gets it.
        let next = hub.hand_off(&event("t", "c")).await;
        assert!(next.is_some());
        drop(next); // dropped unrun, it runs
        assert_eq!(collect(&subs[0], 3).await, ["a", "b", "c"]);
        // The outbox kept the delivered batch's buffer, emptied, for the next one.
        let topic = read(&hub.topics).get("t").cloned().unwrap();
        let outbox = lock(&topic.outbox);
        assert!(outbox.events.is_empty());
        assert!(outbox.events.capacity() > 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_larger_topic_is_left_to_its_fan_out_task() {
        let hub = Hub::new(100);
        let subs: Vec<Subscription> = (0..=INLINE_MAX_SUBSCRIBERS)
            .map(|_| hub.subscribe(&["t".into()]))
            .collect();
        let fan_out = hub.hand_off(&event("t", "a")).await;
        fan_out.expect("the caller holds the fan-out").run();
        assert!(queued(&subs[0]).is_empty(), "not delivered in place");
        for sub in &subs {
            assert_eq!(collect(sub, 1).await, ["a"]);
        }
    }

    /// Publishers on several threads, each running the fan-outs that fall to it
    /// after its hand-off, as the core does: every subscriber still gets every
    /// event once, in hand-off order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inline_fan_outs_keep_hand_off_order() {
        let hub = Hub::new(100_000);
        let subs: Vec<Subscription> = (0..4).map(|_| hub.subscribe(&["t".into()])).collect();
        // The hand-offs are ordered by a lock, as the sequencer orders them; the
        // fan-outs run after it is released.
        let order = Arc::new(tokio::sync::Mutex::new(0u32));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (hub, order) = (hub.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..500 {
                    let fan_out = {
                        let mut next = order.lock().await;
                        let fan_out = hub.hand_off(&event("t", &next.to_string())).await;
                        *next += 1;
                        fan_out
                    };
                    if let Some(fan_out) = fan_out {
                        fan_out.run();
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let want: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
        for sub in &subs {
            assert_eq!(collect(sub, want.len()).await, want);
        }
    }

    #[test]
    fn wrapping_framings_are_cached_and_wrap_the_cached_inner_bytes() {
        let e = event("t", "hi");
        for framing in [
            Framing::JsonChunk,
            Framing::SseChunk,
            Framing::RawChunk,
            Framing::WsFrame,
        ] {
            let first = e.encoded(framing).as_ptr();
            assert_eq!(e.encoded(framing).as_ptr(), first, "{framing:?} rebuilt");
        }
        assert_eq!(
            e.encoded(Framing::JsonChunk),
            &wire::http_chunk(e.json_line())
        );
        assert_eq!(
            e.encoded(Framing::SseChunk),
            &wire::http_chunk(e.sse_frame())
        );
        assert_eq!(
            e.encoded(Framing::RawChunk),
            &wire::http_chunk(e.raw_line())
        );
        assert_eq!(
            e.encoded(Framing::WsFrame),
            &wire::ws::frame(wire::ws::OP_TEXT, e.ws_text())
        );
        let json = e.json_line().strip_suffix(b"\n").unwrap_or_default();
        assert_eq!(&e.sse_frame()[6..6 + json.len()], json);
    }

    #[test]
    fn encodings_match_ntfy_framing() {
        let mut m = Message::new(EventKind::Message, "t");
        m.id = "abcdefghijkl".into();
        m.time = 1;
        m.sequence_id = Some(m.id.clone());
        m.message = "a\nb".into();
        let e = SharedEvent::new(m);
        assert_eq!(
            &e.json_line()[..],
            b"{\"id\":\"abcdefghijkl\",\"time\":1,\"event\":\"message\",\"topic\":\"t\",\"message\":\"a\\nb\"}\n"
        );
        assert!(e.sse_frame().starts_with(b"data: {"));
        assert!(e.sse_frame().ends_with(b"}\n\n"));
        assert_eq!(&e.raw_line()[..], b"a b\n");
        assert!(
            std::str::from_utf8(e.ws_text())
                .unwrap()
                .contains("\"sequence_id\"")
        );
        let open = SharedEvent::new(Message::new(EventKind::Open, "t"));
        assert!(open.sse_frame().starts_with(b"event: open\ndata: {"));
        assert_eq!(&open.raw_line()[..], b"\n");
    }
}
