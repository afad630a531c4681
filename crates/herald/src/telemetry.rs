//! Metrics (Prometheus text at `/metrics`) and the per-request access log.
//!
//! Why it looks like this:
//! - **One explicit registry** ([`Metrics`], held in `AppState`), no global recorder:
//!   tests and embedders get their own, and nothing registers behind anyone's back.
//! - **Hot paths keep plain atomics.** The hub counts deliveries and subscribers per
//!   transport in arrays of atomics, the core counts publishes, and the store reports
//!   commits through [`crate::store::CommitObserver`]. [`CoreCollector`] reads the
//!   atomics at scrape time, so neither the hub nor the store knows about Prometheus
//!   and the fan-out pays nothing for metrics beyond an array index.
//! - **Bounded label sets.** Requests are labelled by [`Route`] (a fixed list), a
//!   normalised method and the status code, never by path or topic.
//! - **Process metrics** (`process_*`, the names every Prometheus client uses) are
//!   read from `/proc` at scrape time; on systems without `/proc` they are left out.
//! - **The access log** ([`log_request`]) writes one line per request with method,
//!   path *without the query string* (queries may carry `auth=`), status, latency and
//!   topic, under the `herald::access` target so it can be filtered on its own.
//!   Headers and bodies are never logged.
//!
//! The text format is Prometheus 0.0.4 (what `promtool check metrics` parses), not
//! OpenMetrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::Herald;
use crate::hub::Transport;
use crate::logging::access;
use crate::model::topic;
use crate::store::CommitObserver;

/// A subsystem that keeps its own metric handles and adds them to the server's
/// registry ([`Metrics::register_source`]), so that this module does not depend on
/// the subsystems above it (the webhooks).
pub trait MetricSource {
    /// Adds every metric of the source to `registry`.
    fn register(&self, registry: &mut Registry);
}

/// `Content-Type` of the `/metrics` answer (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the HTTP latency histogram.
pub(crate) const HTTP_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds (seconds) of the store commit histogram.
const COMMIT_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Upper bounds of the operations-per-commit histogram (the writer's `max_batch` is 512).
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Linux reports CPU times in `/proc` in USER_HZ, which is 100 on every architecture
/// Linux supports (it is part of the user-space ABI, independent of the kernel's HZ).
const USER_HZ: f64 = 100.0;

/// What a request was, for metric labels and the access log. A fixed list, so the
/// label set stays small whatever clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Publish,
    PublishJson,
    SubscribeJson,
    SubscribeSse,
    SubscribeRaw,
    SubscribeWs,
    Poll,
    Health,
    Metrics,
    Info,
    Other,
}

impl Route {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Publish => "publish",
            Route::PublishJson => "publish_json",
            Route::SubscribeJson => "subscribe_json",
            Route::SubscribeSse => "subscribe_sse",
            Route::SubscribeRaw => "subscribe_raw",
            Route::SubscribeWs => "subscribe_ws",
            Route::Poll => "poll",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Info => "info",
            Route::Other => "other",
        }
    }

    /// The streaming route of `transport`.
    pub fn subscribe(transport: Transport) -> Route {
        match transport {
            Transport::Json => Route::SubscribeJson,
            Transport::Sse => Route::SubscribeSse,
            Transport::Raw => Route::SubscribeRaw,
            Transport::Ws => Route::SubscribeWs,
            Transport::Grpc | Transport::Other => Route::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

/// The server's metrics: the registry and the handles request handling updates.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    store_messages: Gauge,
    scheduled: Gauge,
    /// Refusals by limit (`crate::limits`); one label value per limit.
    pub limit_refusals: Family<crate::limits::LimitLabels, Counter>,
    /// Cluster mode: limit checks the shared limits could not answer (this node's
    /// own limits applied instead).
    pub limits_shared_unavailable: Counter,
    /// Publishes answered by the listener's direct path (`listener::publish`),
    /// without hyper; they are in `http_requests` too.
    pub direct_publishes: Counter,
}

impl Metrics {
    /// Registers every metric family: request metrics updated by the listener,
    /// `herald`'s counters read at scrape time, `store`'s commit histograms, and the
    /// process metrics.
    pub fn new(herald: &Arc<Herald>, store: &StoreMetrics) -> Metrics {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "herald_http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(http_histogram as fn() -> Histogram);
        registry.register(
            "herald_http_request_duration_seconds",
            "Time from request head to response head (streams: until the stream opened), by route",
            http_duration.clone(),
        );
        registry.register(
            "herald_store_commit_duration_seconds",
            "Duration of store transactions, from begin to the end of the commit",
            store.commit_duration.clone(),
        );
        registry.register(
            "herald_store_commit_batch_size",
            "Write operations committed per store transaction (group commit)",
            store.batch_size.clone(),
        );
        let store_messages = Gauge::default();
        registry.register(
            "herald_store_messages",
            "Messages held in the store (published and scheduled), as of the last scrape",
            store_messages.clone(),
        );
        let scheduled = Gauge::default();
        registry.register(
            "herald_scheduled_messages",
            "Scheduled messages not yet delivered, as of the last scrape",
            scheduled.clone(),
        );
        registry.register_collector(Box::new(CoreCollector {
            herald: herald.clone(),
        }));
        registry.register_collector(Box::new(ProcessCollector::new()));
        let limit_refusals = Family::<crate::limits::LimitLabels, Counter>::default();
        registry.register(
            "herald_limit_refusals",
            "Requests and connections refused by a rate limit or a hardening bound, by limit",
            limit_refusals.clone(),
        );
        let limits_shared_unavailable = Counter::default();
        registry.register(
            "herald_limits_shared_unavailable",
            "Cluster mode: limit checks that Redis did not answer in time, so this node's own limits applied",
            limits_shared_unavailable.clone(),
        );
        let direct_publishes = Counter::default();
        registry.register(
            "herald_http_direct_publishes",
            "Publish requests answered by the listener's direct path, without hyper (also counted in herald_http_requests)",
            direct_publishes.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            store_messages,
            scheduled,
            limit_refusals,
            limits_shared_unavailable,
            direct_publishes,
        }
    }

    /// Adds a subsystem's own metrics (the webhooks' `herald_webhook_*`) to this
    /// registry.
    pub fn register_source(&mut self, source: &dyn MetricSource) {
        source.register(&mut self.registry);
    }

    /// Counts one answered request.
    pub fn observe_http(&self, route: Route, method: &Method, status: u16, elapsed: Duration) {
        let route = route.as_str();
        self.http_requests
            .get_or_create(&HttpLabels {
                route,
                method: method_label(method),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// The series [`Metrics::observe_http`] would update for `route`, `method` and
    /// `status`, as handles to keep: a connection that answers many requests of one
    /// kind (the direct publish path) updates them without looking the labels up
    /// again. Creates the series, as the first observation would.
    pub(crate) fn http_series(
        &self,
        route: Route,
        method: &Method,
        status: u16,
    ) -> (Counter, Histogram) {
        let route = route.as_str();
        let counter = self
            .http_requests
            .get_or_create(&HttpLabels {
                route,
                method: method_label(method),
                status,
            })
            .clone();
        let histogram = self
            .http_duration
            .get_or_create(&RouteLabels { route })
            .clone();
        (counter, histogram)
    }

    /// The exposition text. Reads the store's counts first (a failing store leaves
    /// the previous values).
    pub async fn render(&self, herald: &Herald) -> String {
        if let Ok(Ok(stats)) =
            tokio::time::timeout(Duration::from_secs(2), herald.store_stats()).await
        {
            self.store_messages.set(saturating_i64(stats.messages));
            self.scheduled.set(saturating_i64(stats.scheduled));
        }
        let mut out = String::with_capacity(8 * 1024);
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A fixed set of method labels: anything else is `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The store's commit histograms, handed to the store as its [`CommitObserver`].
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    commit_duration: Histogram,
    batch_size: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            commit_duration: Histogram::new(COMMIT_BUCKETS),
            batch_size: Histogram::new(BATCH_BUCKETS),
        }
    }
}

impl CommitObserver for StoreMetrics {
    fn committed(&self, operations: usize, elapsed: Duration) {
        self.commit_duration.observe(elapsed.as_secs_f64());
        self.batch_size.observe(operations as f64);
    }
}

/// `herald`'s own counters (publishes, hub deliveries and subscribers per transport,
/// slow-subscriber drops, topics), read at scrape time.
#[derive(Debug)]
struct CoreCollector {
    herald: Arc<Herald>,
}

impl Collector for CoreCollector {
    // Help texts end with a period here: the registry adds one to registered
    // metrics' help, but not to a collector's.
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let hub = self.herald.hub();
        let counters = &hub.counters;
        // Only transports in use, plus the four real ones always (so dashboards see
        // zeros); `other` (embedders, benchmarks) only when it was used.
        let transports = Transport::ALL.into_iter().filter(|t| {
            *t != Transport::Other
                || counters.delivered_by[*t as usize].load(Relaxed) > 0
                || counters.subscribers_by[*t as usize].load(Relaxed) > 0
        });

        let published = ConstCounter::new(self.herald.published_count());
        published.encode(encoder.encode_descriptor(
            "herald_messages_published",
            "Messages accepted for publishing (scheduled ones counted when accepted).",
            None,
            MetricType::Counter,
        )?)?;

        let mut family = encoder.encode_descriptor(
            "herald_messages_delivered",
            "Events handed to subscribers (written or queued for writing), by transport.",
            None,
            MetricType::Counter,
        )?;
        for t in transports.clone() {
            let labels = [("transport", t.as_str())];
            let value = counters.delivered_by[t as usize].load(Relaxed);
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "herald_subscribers",
            "Open subscriptions, by transport.",
            None,
            MetricType::Gauge,
        )?;
        for t in transports {
            let labels = [("transport", t.as_str())];
            let value = counters.subscribers_by[t as usize].load(Relaxed);
            ConstGauge::new(saturating_i64(value)).encode(family.encode_family(&labels)?)?;
        }

        ConstCounter::new(counters.dropped_slow.load(Relaxed)).encode(
            encoder.encode_descriptor(
                "herald_subscribers_dropped_slow",
                "Subscribers disconnected because they did not keep up (queue full).",
                None,
                MetricType::Counter,
            )?,
        )?;

        ConstGauge::new(saturating_i64(hub.topic_count() as u64)).encode(
            encoder.encode_descriptor(
                "herald_topics",
                "Topics with at least one subscriber.",
                None,
                MetricType::Gauge,
            )?,
        )?;

        ConstGauge::new(i64::from(self.herald.is_draining())).encode(
            encoder.encode_descriptor(
                "herald_draining",
                "1 while the server is shutting down (readiness fails), else 0.",
                None,
                MetricType::Gauge,
            )?,
        )?;

        ConstCounter::new(crate::logging::write_errors()).encode(encoder.encode_descriptor(
            "herald_log_write_errors",
            "Log lines that could not be written to stderr (dropped; the server carries on).",
            None,
            MetricType::Counter,
        )?)?;

        ConstCounter::new(crate::logging::access::dropped()).encode(encoder.encode_descriptor(
            "herald_access_log_dropped",
            "Access-log lines dropped because the log's writer fell behind (its queue was full).",
            None,
            MetricType::Counter,
        )?)?;

        ConstGauge::new(i64::from(self.herald.store_writes_failing())).encode(
            encoder.encode_descriptor(
                "herald_store_writes_failing",
                "1 while the store's last commit failed and none has succeeded since (readiness fails), else 0.",
                None,
                MetricType::Gauge,
            )?,
        )?;

        let version = [("version", env!("CARGO_PKG_VERSION"))];
        let mut info = encoder.encode_descriptor(
            "herald_build_info",
            "Always 1; the label carries herald's version.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(info.encode_family(&version)?)?;
        Ok(())
    }
}

/// The conventional `process_*` metrics, read from `/proc/self` at scrape time.
#[derive(Debug)]
struct ProcessCollector {
    /// Unix time the process started (fixed, so read once).
    start_time: Option<f64>,
}

impl ProcessCollector {
    fn new() -> Self {
        ProcessCollector {
            start_time: process_start_time(),
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(cpu) = cpu_seconds() {
            ConstCounter::new(cpu).encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?)?;
        }
        if let Some(rss) = resident_bytes() {
            ConstGauge::new(saturating_i64(rss)).encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(fds) = open_fds() {
            ConstGauge::new(saturating_i64(fds)).encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(max) = max_fds() {
            ConstGauge::new(saturating_i64(max)).encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit).",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(start) = self.start_time {
            ConstGauge::new(start).encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// Fields of `/proc/self/stat` after the command name (which may contain spaces),
/// so index 0 is field 3 (`state`) of proc(5).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields = stat_fields(&stat)?;
    // utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn open_fds() -> Option<u64> {
    // The directory handle itself is one of the entries; do not count it.
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn process_start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // starttime (field 22): clock ticks after boot.
    let ticks: u64 = stat_fields(&stat)?.get(19)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime as f64 + ticks as f64 / USER_HZ)
}

// ---------------------------------------------------------------------------------
// Access log

/// What the access log and the request metrics need to know about a request,
/// taken from its head before the handler consumes it.
#[derive(Debug)]
pub struct RequestInfo {
    pub route: Route,
    pub method: Method,
    /// The path without the query string.
    pub path: String,
    /// The topic (or topic list) the request is about, when the path names one.
    pub topic: Option<String>,
    pub start: Instant,
}

impl RequestInfo {
    /// Classifies a request by its head.
    pub fn new(method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> Self {
        let (route, topic) = classify(method, path, query, headers);
        RequestInfo {
            route,
            method: method.clone(),
            path: path.to_string(),
            topic: topic.map(str::to_string),
            start: Instant::now(),
        }
    }

    /// Records the answer: metrics and one access-log line.
    pub fn finish(self, metrics: &Metrics, status: u16) {
        let elapsed = self.start.elapsed();
        metrics.observe_http(self.route, &self.method, status, elapsed);
        let RequestInfo {
            route,
            method,
            path,
            topic,
            ..
        } = self;
        let debug = quiet(route, status);
        if !access_enabled(debug) {
            return;
        }
        let record = access::Record::new(
            std::time::SystemTime::now(),
            debug,
            method,
            (path.as_str(), topic.as_deref()),
            status,
            elapsed,
            route.as_str(),
        );
        if let Some(record) = access::submit(record) {
            emit(&record);
        }
    }
}

/// Records a plain publish answered by the listener's direct path
/// (`listener::publish`) as [`RequestInfo::new`] and [`RequestInfo::finish`] record
/// the same request (route `Publish`, the path's one segment its topic): the request
/// metrics through `series` (the handles [`Metrics::http_series`] gives for its route,
/// method and `status`) and the access-log line. Nothing is classified, and the path
/// is copied only when the line is written. Returns the instant the request ended
/// (the end of its recorded duration), for the caller to use instead of a clock read.
pub(crate) fn finish_direct_publish(
    series: &(Counter, Histogram),
    method: &Method,
    path: &str,
    status: u16,
    start: Instant,
) -> Instant {
    let end = Instant::now();
    let elapsed = end.saturating_duration_since(start);
    series.0.inc();
    series.1.observe(elapsed.as_secs_f64());
    if !access_enabled(false) {
        return end;
    }
    let record = access::Record::new(
        std::time::SystemTime::now(),
        false,
        method.clone(),
        (path, path.strip_prefix('/')),
        status,
        elapsed,
        Route::Publish.as_str(),
    );
    if let Some(record) = access::submit(record) {
        emit(&record);
    }
    end
}

/// Health checks and scrapes that succeed are logged at debug level (probes every
/// few seconds would drown the log); everything else at info.
fn quiet(route: Route, status: u16) -> bool {
    matches!(route, Route::Health | Route::Metrics) && status < 400
}

/// Whether the log filter (`log-level`, `RUST_LOG`) lets the line through.
fn access_enabled(debug: bool) -> bool {
    if debug {
        tracing::enabled!(target: "herald::access", tracing::Level::DEBUG)
    } else {
        tracing::enabled!(target: "herald::access", tracing::Level::INFO)
    }
}

/// The line as a `tracing` event, where no access-log writer is installed.
fn emit(r: &access::Record) {
    let latency_ms = (r.latency.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let (method, path, status, topic, route) =
        (r.method.as_str(), r.path(), r.status, r.topic(), r.route);
    if r.debug {
        tracing::debug!(target: "herald::access", method, path, status, latency_ms, route, "request");
    } else {
        tracing::info!(target: "herald::access", method, path, status, latency_ms, topic, route, "request");
    }
}

/// One access-log line, through the access log's writer ([`crate::logging::access`]).
pub fn log_request(
    route: Route,
    method: &str,
    path: &str,
    status: u16,
    elapsed: Duration,
    topic: Option<&str>,
) {
    let debug = quiet(route, status);
    if !access_enabled(debug) {
        return;
    }
    let record = access::Record::new(
        std::time::SystemTime::now(),
        debug,
        Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET),
        (path, topic),
        status,
        elapsed,
        route.as_str(),
    );
    if let Some(record) = access::submit(record) {
        emit(&record);
    }
}

/// The route and topic of a request, following the dispatcher's shapes
/// (`api::dispatch`). Only the shape matters here; the handler validates.
fn classify<'p>(
    method: &Method,
    path: &'p str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> (Route, Option<&'p str>) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = trimmed.split('/').collect();
    let is_topic = |s: &str| topic::is_valid_name(s);
    let is_topics = |s: &str| !s.is_empty() && s.split(',').all(topic::is_valid_name);
    let get = method == Method::GET;
    let put_post = method == Method::PUT || method == Method::POST;
    match segments.as_slice() {
        _ if method == Method::OPTIONS => (Route::Other, None),
        ["v1", "health"] | ["healthz"] | ["readyz"] if get => (Route::Health, None),
        ["metrics"] if get => (Route::Metrics, None),
        ["v1", "stats" | "config" | "account"] if get => (Route::Info, None),
        [""] if put_post => (Route::PublishJson, None),
        [t] | [t, _] if put_post && is_topic(t) => (Route::Publish, Some(*t)),
        [t, _] if method == Method::DELETE && is_topic(t) => (Route::Publish, Some(*t)),
        [t, _, "delete" | "clear" | "read"] if is_topic(t) => (Route::Publish, Some(*t)),
        [t, "publish" | "send" | "trigger"] if get && is_topic(t) => (Route::Publish, Some(*t)),
        [t, kind @ ("json" | "sse" | "raw")] if get && is_topics(t) => {
            if is_poll(query, headers) {
                (Route::Poll, Some(*t))
            } else {
                let route = match *kind {
                    "json" => Route::SubscribeJson,
                    "sse" => Route::SubscribeSse,
                    _ => Route::SubscribeRaw,
                };
                (route, Some(*t))
            }
        }
        [t, "ws"] if get && is_topics(t) => (Route::SubscribeWs, Some(*t)),
        [t, "auth"] if get && is_topics(t) => (Route::Info, Some(*t)),
        _ => (Route::Other, None),
    }
}

/// Whether a subscribe request asks for a poll (`poll=1` / `X-Poll: 1`, ntfy's aliases).
fn is_poll(query: Option<&str>, headers: &HeaderMap) -> bool {
    let truthy = |v: &str| matches!(v.to_ascii_lowercase().as_str(), "1" | "yes" | "true");
    let in_query = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| {
            matches!(k.to_ascii_lowercase().as_str(), "poll" | "po" | "x-poll") && truthy(&v)
        })
    });
    in_query
        || ["x-poll", "poll", "po"].iter().any(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(truthy)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str, query: Option<&str>) -> (Route, Option<String>) {
        let (r, t) = classify(&method, path, query, &HeaderMap::new());
        (r, t.map(str::to_string))
    }

    #[test]
    fn routes_have_bounded_labels() {
        assert_eq!(route(Method::PUT, "/alerts", None).0, Route::Publish);
        assert_eq!(
            route(Method::POST, "/alerts", None).1.as_deref(),
            Some("alerts")
        );
        assert_eq!(route(Method::POST, "/", None).0, Route::PublishJson);
        assert_eq!(
            route(Method::GET, "/a,b/json", None).0,
            Route::SubscribeJson
        );
        assert_eq!(route(Method::GET, "/a/json", Some("poll=1")).0, Route::Poll);
        assert_eq!(route(Method::GET, "/a/sse", None).0, Route::SubscribeSse);
        assert_eq!(route(Method::GET, "/a/ws", None).0, Route::SubscribeWs);
        assert_eq!(route(Method::GET, "/readyz", None).0, Route::Health);
        assert_eq!(route(Method::GET, "/metrics", None).0, Route::Metrics);
        assert_eq!(route(Method::GET, "/x/y/z/w", None), (Route::Other, None));
        assert_eq!(route(Method::GET, "/a/publish", None).0, Route::Publish);
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }

    #[test]
    fn proc_readers_work_on_linux() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        assert!(resident_bytes().unwrap() > 0);
        assert!(open_fds().unwrap() > 0);
        assert!(cpu_seconds().is_some());
        let start = process_start_time().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(start <= now + 1.0 && start > now - 86_400.0 * 365.0);
    }
}
