//! Micro-benchmarks of herald's hot paths (`cargo bench -p herald --bench hot_paths`).
//!
//! Each group isolates one cost that every publish pays, so that a regression shows up
//! here before it shows up as latency under load:
//!
//! 1. **`fanout`**: topic lookup and fan-out in the [`Hub`], driven on a
//!    current-thread tokio runtime, so the fan-out task runs on the same thread as
//!    soon as the benchmark loop yields.
//!    - `dispatch/N`: one [`Hub::dispatch`] to a topic with N = 1, 100 and 10,000
//!      subscribers, until a counting no-op [`Sink`] has seen all N deliveries. This
//!      is the hub's own cost (topic map lookup, outbox, spawned fan-out task, per
//!      subscriber dynamic call), without any socket write. Throughput is in
//!      deliveries.
//!    - `deliver_batch/N`: the same N counting sinks called directly through
//!      [`Sink::deliver_batch`], the lower bound of the per-subscriber cost; the
//!      difference to `dispatch/N` is what the hub adds.
//!    - `dispatch_queue_sink/N`: `dispatch` to N queue-backed subscribers
//!      ([`Hub::subscribe`], the hub's own `QueueSink`: a mutex, a `Notify` and an
//!      `Arc` clone per delivery), including draining each queue with
//!      `next_batch`, as the connection tasks would.
//!    - `lookup_10k_topics`: dispatch to one of 10,000 topics with one subscriber
//!      each (cycling over all of them), i.e. the topic-map lookup with a large map;
//!      compare with `dispatch/1` (one topic). `lookup_miss_10k_topics`: a topic
//!      nobody subscribes to, the common case of a publish with no listener.
//! 2. **`encode`**: [`SharedEvent::encoded`] for every [`Framing`] on a fresh event of
//!    a realistic published message (title, tags, priority, 100-byte text,
//!    `sequence_id` equal to `id` as the publish path sets it): the once-per-event
//!    cost of a transport (the chunk and frame variants include the base encoding
//!    they wrap). `cached/*` is every later call, shared by all subscribers of that
//!    transport. `fresh/JsonLine_no_sequence_id` is the same message without a
//!    `sequence_id`: `Message::for_json` drops one equal to `id` while serializing
//!    (it used to clone the message for that), so the two should now be close.
//! 3. **`store`**: [`SqliteStore::append`] with group commit, in a file in a temporary
//!    directory, for `sync = normal` and `sync = full`: one append at a time
//!    (`sequential`: one commit per message) against 64 appends from 64 concurrent
//!    tasks (`concurrent_64`: they share commits). Throughput is in messages; the
//!    average commits per batch of 64 (from [`SqliteStore::commits`]) is printed.
//!    Runs on a 2-worker multi-thread runtime, like the server on a small host.
//! 4. **`params`**: [`parse_publish`] of a request with 9 headers (title, priority,
//!    tags, click, icon, actions, delay, markdown, plus an unrelated `User-Agent`),
//!    and of a request with none (the floor: every parameter name looked up and
//!    absent).
//!
//! Measurement times are short (a few seconds per benchmark, fewer samples for the
//! store) so that the whole run completes in a few minutes on 2 cores; use
//! `--measurement-time` to override for a more precise comparison.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald::api::params::{ParamSource, PublishLimits, parse_publish};
use herald::hub::{CloseReason, DeliverOutcome, Hub, Registration, SharedEvent, Sink};
use herald::model::{EventKind, Message};
use herald::store::Store;
use herald::store::sqlite::{SqliteOptions, SqliteStore, SyncMode};
use herald::wire::Framing;

// ---------------------------------------------------------------------------------
// Shared fixtures

/// A realistic published notification on `topic`, as the publish path builds it.
fn realistic_message(topic: &str) -> Message {
    let mut m = Message::new(EventKind::Message, topic);
    m.sequence_id = Some(m.id.clone());
    m.expires = Some(m.time + 12 * 3600);
    m.title = "Backup of nas-01 finished".into();
    m.priority = 4;
    m.tags = vec!["warning".into(), "floppy_disk".into(), "nas-01".into()];
    // Exactly 100 bytes, with one newline (flattened by the raw framing).
    let text = "Nightly backup completed in 14m2s.\n\
                412 files changed, 3.2 GiB transferred, 0 errors; next run 02:00.";
    assert_eq!(text.len(), 100);
    m.message = text.into();
    m
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------
// 1. Topic lookup and fan-out

/// A subscriber that accepts every event and only counts it.
struct CountingSink {
    delivered: Arc<AtomicU64>,
}

impl Sink for CountingSink {
    fn deliver(&self, _event: &Arc<SharedEvent>) -> DeliverOutcome {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        DeliverOutcome::Accepted
    }

    fn keepalive(&self) {}

    fn close(&self, _reason: CloseReason) {}
}

/// A hub with `topics` topics (`t0`, `t1`, ...) of `per_topic` counting subscribers
/// each; every sink counts into the same counter.
struct FanOutFixture {
    hub: Arc<Hub>,
    delivered: Arc<AtomicU64>,
    sinks: Vec<Arc<dyn Sink>>,
    _registrations: Vec<Registration>,
}

impl FanOutFixture {
    fn new(topics: usize, per_topic: usize) -> Self {
        let hub = Hub::new(1024);
        let delivered = Arc::new(AtomicU64::new(0));
        let mut sinks = Vec::with_capacity(topics * per_topic);
        let mut registrations = Vec::with_capacity(topics * per_topic);
        for t in 0..topics {
            let name = [format!("t{t}")];
            for _ in 0..per_topic {
                let sink: Arc<dyn Sink> = Arc::new(CountingSink {
                    delivered: delivered.clone(),
                });
                registrations.push(hub.register(&name, sink.clone()));
                sinks.push(sink);
            }
        }
        FanOutFixture {
            hub,
            delivered,
            sinks,
            _registrations: registrations,
        }
    }
}

/// Yields to the runtime (so the topic's fan-out task runs) until `counter` reaches
/// `target`.
async fn wait_until(counter: &AtomicU64, target: u64) {
    while counter.load(Ordering::Acquire) < target {
        tokio::task::yield_now().await;
    }
}

fn bench_fanout(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let mut group = c.benchmark_group("fanout");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    for n in [1usize, 100, 10_000] {
        let fx = FanOutFixture::new(1, n);
        let event = SharedEvent::new(realistic_message("t0"));
        group.throughput(Throughput::Elements(n as u64));

        group.bench_with_input(BenchmarkId::new("dispatch", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let target = fx.delivered.load(Ordering::Relaxed) + n as u64;
                        fx.hub.dispatch(&event).await;
                        wait_until(&fx.delivered, target).await;
                    }
                    start.elapsed()
                })
            });
        });

        group.bench_with_input(BenchmarkId::new("deliver_batch", n), &n, |b, _| {
            let batch = std::slice::from_ref(&event);
            b.iter(|| {
                for sink in &fx.sinks {
                    black_box(sink.deliver_batch(black_box(batch)));
                }
            });
        });
    }

    // The hub's own queue-backed subscribers, drained as a connection task would.
    for n in [100usize, 10_000] {
        let hub = Hub::new(1024);
        let topic = ["t0".to_string()];
        let subs: Vec<_> = (0..n).map(|_| hub.subscribe(&topic)).collect();
        let event = SharedEvent::new(realistic_message("t0"));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("dispatch_queue_sink", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut out = Vec::with_capacity(4);
                    let start = Instant::now();
                    for _ in 0..iters {
                        let target = hub.counters.delivered.load(Ordering::Relaxed) + n as u64;
                        hub.dispatch(&event).await;
                        wait_until(&hub.counters.delivered, target).await;
                        for sub in &subs {
                            out.clear();
                            sub.next_batch(&mut out).await.expect("subscription open");
                        }
                    }
                    start.elapsed()
                })
            });
        });
    }

    // Topic lookup in a map of 10,000 topics.
    let topics = 10_000usize;
    let fx = FanOutFixture::new(topics, 1);
    let events: Vec<_> = (0..topics)
        .map(|t| SharedEvent::new(realistic_message(&format!("t{t}"))))
        .collect();
    group.throughput(Throughput::Elements(1));
    group.bench_function("lookup_10k_topics", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let event = &events[i as usize % topics];
                    let target = fx.delivered.load(Ordering::Relaxed) + 1;
                    fx.hub.dispatch(event).await;
                    wait_until(&fx.delivered, target).await;
                }
                start.elapsed()
            })
        });
    });
    let miss = SharedEvent::new(realistic_message("nobody-listens"));
    group.bench_function("lookup_miss_10k_topics", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    fx.hub.dispatch(black_box(&miss)).await;
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

// ---------------------------------------------------------------------------------
// 2. Encoding per transport

const FRAMINGS: [Framing; 8] = [
    Framing::JsonLine,
    Framing::SseFrame,
    Framing::RawLine,
    Framing::WsText,
    Framing::JsonChunk,
    Framing::SseChunk,
    Framing::RawChunk,
    Framing::WsFrame,
];

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let message = realistic_message("backups");

    for framing in FRAMINGS {
        let name = format!("{framing:?}");
        group.bench_function(BenchmarkId::new("fresh", &name), |b| {
            b.iter_batched_ref(
                || SharedEvent::new(message.clone()),
                |event| event.encoded(black_box(framing)).len(),
                BatchSize::SmallInput,
            );
        });
    }
    let mut plain = message.clone();
    plain.sequence_id = None;
    group.bench_function(BenchmarkId::new("fresh", "JsonLine_no_sequence_id"), |b| {
        b.iter_batched_ref(
            || SharedEvent::new(plain.clone()),
            |event| event.encoded(black_box(Framing::JsonLine)).len(),
            BatchSize::SmallInput,
        );
    });

    let event = SharedEvent::new(message);
    for framing in FRAMINGS {
        event.encoded(framing);
    }
    for framing in [Framing::JsonLine, Framing::WsFrame] {
        group.bench_function(BenchmarkId::new("cached", format!("{framing:?}")), |b| {
            b.iter(|| black_box(&event).encoded(black_box(framing)).len());
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------
// 3. Store group commit

const CONCURRENT_APPENDS: usize = 64;

fn open_store(dir: &Path, sync: SyncMode) -> Arc<SqliteStore> {
    let options = SqliteOptions {
        sync,
        ..SqliteOptions::default()
    };
    Arc::new(SqliteStore::open(&dir.join("cache.db"), options).expect("open store"))
}

fn bench_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("store");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    for sync in [SyncMode::Normal, SyncMode::Full] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_store(dir.path(), sync);

        group.throughput(Throughput::Elements(1));
        let (mut appends, commits_before) = (0u64, store.commits());
        group.bench_function(BenchmarkId::new("sequential", sync), |b| {
            b.iter_custom(|iters| {
                let messages: Vec<_> = (0..iters).map(|_| realistic_message("backups")).collect();
                appends += iters;
                rt.block_on(async {
                    let start = Instant::now();
                    for m in messages {
                        store.append(m).await.expect("append");
                    }
                    start.elapsed()
                })
            });
        });
        println!(
            "store/sequential/{sync}: {:.2} commits per append ({appends} appends)",
            (store.commits() - commits_before) as f64 / appends.max(1) as f64
        );

        group.throughput(Throughput::Elements(CONCURRENT_APPENDS as u64));
        let (mut batches, commits_before) = (0u64, store.commits());
        group.bench_function(
            BenchmarkId::new(format!("concurrent_{CONCURRENT_APPENDS}"), sync),
            |b| {
                b.iter_custom(|iters| {
                    let rounds: Vec<Vec<_>> = (0..iters)
                        .map(|_| {
                            (0..CONCURRENT_APPENDS)
                                .map(|_| realistic_message("backups"))
                                .collect()
                        })
                        .collect();
                    batches += iters;
                    rt.block_on(async {
                        let start = Instant::now();
                        for round in rounds {
                            let mut tasks = tokio::task::JoinSet::new();
                            for m in round {
                                let store = store.clone();
                                tasks.spawn(async move { store.append(m).await });
                            }
                            while let Some(done) = tasks.join_next().await {
                                done.expect("append task").expect("append");
                            }
                        }
                        start.elapsed()
                    })
                });
            },
        );
        println!(
            "store/concurrent_{CONCURRENT_APPENDS}/{sync}: {:.2} commits per batch of \
             {CONCURRENT_APPENDS} appends ({batches} batches)",
            (store.commits() - commits_before) as f64 / batches.max(1) as f64
        );

        rt.block_on(store.close());
    }
    group.finish();
}

// ---------------------------------------------------------------------------------
// 4. Publish parameter parsing

fn bench_params(c: &mut Criterion) {
    let mut group = c.benchmark_group("params");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let now = 1_700_000_000;
    let limits = PublishLimits::default();
    let query: Vec<(String, String)> = Vec::new();

    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-title", "Backup of nas-01 finished"),
        ("x-priority", "high"),
        ("x-tags", "warning,floppy_disk,nas-01"),
        ("x-click", "https://nas-01.example.com/backups"),
        ("x-icon", "https://nas-01.example.com/icon.png"),
        (
            "x-actions",
            "view, Open report, https://nas-01.example.com/report; \
             http, Retry, https://nas-01.example.com/retry, method=POST, clear=true",
        ),
        ("x-delay", "30m"),
        ("x-markdown", "yes"),
        ("user-agent", "curl/8.5.0"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let src = ParamSource {
        headers: &headers,
        query: &query,
    };
    parse_publish(&src, &limits, now).expect("valid publish parameters");
    group.bench_function("parse_publish/9_headers", |b| {
        b.iter(|| parse_publish(black_box(&src), &limits, now).map(|p| p.tags.len()));
    });

    let empty = HeaderMap::new();
    let src = ParamSource {
        headers: &empty,
        query: &query,
    };
    group.bench_function("parse_publish/no_headers", |b| {
        b.iter(|| parse_publish(black_box(&src), &limits, now).map(|p| p.tags.len()));
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_fanout,
    bench_encode,
    bench_store,
    bench_params
);
criterion_main!(benches);
