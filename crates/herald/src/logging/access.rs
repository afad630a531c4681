//! The access log's own writer: requests hand a small record to a queue, and one
//! thread formats the queued records and writes them to stderr in batches.
//!
//! Why not a `tracing` event per request, as before: with the default log level the
//! event cost ~20 % of the publish throughput on one core (docs/BENCHMARKS.md,
//! "Publish path"), spent formatting the line through `tracing-subscriber`'s field
//! visitors and in one `write(2)` to stderr per request, on the request's task. Now
//! the request only takes a lock, pushes a record and (at most once per batch) wakes
//! the writer; the writer collects records for [`BATCH_WINDOW`], formats them with
//! plain string writes and hands the whole batch to stderr in one write.
//!
//! The queue is bounded ([`CAPACITY`] records): a request never waits for the log.
//! When stderr is so slow that the queue fills, records are dropped and counted
//! ([`dropped`], `herald_access_log_dropped_total`), as a failed write is counted
//! by [`super::write_errors`].
//!
//! Whether a line is written is still decided by the log filter (`log-level`,
//! `RUST_LOG`) on the `herald::access` target, through `tracing::enabled!`. The lines
//! have the shape `tracing-subscriber` gives the same event (its JSON object, or its
//! text line without colours), so log shippers see no difference; they follow the
//! server's other log lines by up to [`BATCH_WINDOW`]. Without [`install`] (tests of
//! the library, embedders) the access log stays a plain `tracing` event.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Records waiting for the writer, at most; more are dropped and counted.
pub(crate) const CAPACITY: usize = 16 * 1024;
/// How long the writer lets records collect after the first of a batch arrives.
pub(crate) const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// Records dropped because the queue was full, since start.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static SINK: OnceLock<Sink> = OnceLock::new();

/// How many access-log lines were dropped because the writer fell behind.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The log's format (`log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// One request, as the access log writes it.
#[derive(Debug)]
pub(crate) struct Record {
    pub time: SystemTime,
    /// Debug level (successful probes and scrapes) rather than info.
    pub debug: bool,
    pub method: axum::http::Method,
    /// The path and the topic, in one string (see [`Record::new`]).
    text: PathAndTopic,
    pub status: u16,
    pub latency: Duration,
    pub route: &'static str,
}

/// A record's path and topic in one allocation: the topic is usually a segment of
/// the path, and then only where it is; otherwise its text follows the path's.
#[derive(Debug)]
struct PathAndTopic {
    text: String,
    path_len: usize,
    topic: Option<std::ops::Range<usize>>,
}

impl Record {
    /// A record of a request to `path` about `topic`: one allocation, the path's.
    pub(crate) fn new(
        time: SystemTime,
        debug: bool,
        method: axum::http::Method,
        (path, topic): (&str, Option<&str>),
        status: u16,
        latency: Duration,
        route: &'static str,
    ) -> Record {
        let mut text = String::from(path);
        // Usually the path is `/<topic>` or starts so: checked before a substring
        // search, whose set-up alone cost ~650 instructions a record.
        let topic = topic.map(|topic| match topic_in(path, topic) {
            Some(at) => at..at + topic.len(),
            None => {
                text.push_str(topic);
                path.len()..text.len()
            }
        });
        Record {
            time,
            debug,
            method,
            text: PathAndTopic {
                text,
                path_len: path.len(),
                topic,
            },
            status,
            latency,
            route,
        }
    }

    /// The request's path, without the query string.
    pub(crate) fn path(&self) -> &str {
        &self.text.text[..self.text.path_len]
    }

    /// The topic (or topic list) the request is about, when the path names one.
    pub(crate) fn topic(&self) -> Option<&str> {
        let range = self.text.topic.clone()?;
        self.text.text.get(range)
    }
}

struct Sink {
    format: Format,
    queue: Mutex<Queue>,
    /// Wakes the writer (a record after it parked, or a flush).
    wake: Condvar,
    /// Wakes [`flush`]ers once a batch is written.
    written: Condvar,
}

#[derive(Default)]
struct Queue {
    records: Vec<Record>,
    /// The writer waits for a record: the next push wakes it.
    parked: bool,
    /// Flushes asked for, and the last one the writer has completed.
    flush_asked: u64,
    flush_done: u64,
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves plain data behind: carry on.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts the writer thread: from now on [`submit`] queues records. Once per process
/// (later calls keep the first format).
pub fn install(format: Format) -> std::io::Result<()> {
    if SINK
        .set(Sink {
            format,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
        })
        .is_err()
    {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("herald-access-log".into())
        .spawn(|| {
            if let Some(sink) = SINK.get() {
                run(sink, &mut |bytes, lines| {
                    super::write_lines_or_count(&mut std::io::stderr().lock(), bytes, lines)
                });
            }
        })
        .map(|_| ())
}

/// Queues `record` for the writer; gives it back when no writer is installed.
pub(crate) fn submit(record: Record) -> Option<Record> {
    let Some(sink) = SINK.get() else {
        return Some(record);
    };
    push(sink, record);
    None
}

fn push(sink: &Sink, record: Record) {
    let mut queue = sink.lock();
    if queue.records.len() >= CAPACITY {
        drop(queue);
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    queue.records.push(record);
    let wake = std::mem::take(&mut queue.parked);
    drop(queue);
    if wake {
        sink.wake.notify_one();
    }
}

/// Waits (at most `timeout`) until every record queued before the call is written:
/// at shutdown, so that the log's last line comes after every request's.
pub fn flush(timeout: Duration) {
    if let Some(sink) = SINK.get() {
        flush_sink(sink, timeout);
    }
}

fn flush_sink(sink: &Sink, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut queue = sink.lock();
    queue.flush_asked += 1;
    let ticket = queue.flush_asked;
    queue.parked = false;
    sink.wake.notify_one();
    while queue.flush_done < ticket {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        queue = match sink.written.wait_timeout(queue, left) {
            Ok((q, _)) => q,
            Err(e) => e.into_inner().0,
        };
    }
}

/// The writer's loop: wait for a record, let a batch collect, write it in one go.
/// `write` gets a batch's bytes and how many lines they hold.
fn run(sink: &Sink, write: &mut dyn FnMut(&[u8], u64)) {
    let mut batch: Vec<Record> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut stamps = Stamps::default();
    loop {
        let mut queue = sink.lock();
        while queue.records.is_empty() && queue.flush_done == queue.flush_asked {
            queue.parked = true;
            queue = sink.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
        if queue.flush_done == queue.flush_asked {
            // Records keep arriving without waking anyone (`parked` is false).
            drop(queue);
            std::thread::sleep(BATCH_WINDOW);
            queue = sink.lock();
        }
        std::mem::swap(&mut batch, &mut queue.records);
        let flushing = queue.flush_asked;
        drop(queue);

        out.clear();
        let lines = batch.len() as u64;
        for record in batch.drain(..) {
            format_line(&mut out, sink.format, &record, &mut stamps);
        }
        if !out.is_empty() {
            write(&out, lines);
        }
        let mut queue = sink.lock();
        queue.flush_done = flushing;
        drop(queue);
        sink.written.notify_all();
    }
}

/// The timestamp's text up to the second, kept while the second lasts: a batch's
/// lines share it, and `chrono`'s formatting is the dearest part of a line.
#[derive(Default)]
pub(crate) struct Stamps {
    second: Option<u64>,
    text: String,
}

impl Stamps {
    /// `2026-12-04T08:45:24.123456Z` for `time`, into `out`.
    fn write(&mut self, out: &mut Vec<u8>, time: SystemTime) {
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        if self.second != Some(since.as_secs()) {
            self.second = Some(since.as_secs());
            let at = chrono::DateTime::<chrono::Utc>::from(time);
            self.text = at.format("%Y-%m-%dT%H:%M:%S").to_string();
        }
        out.extend_from_slice(self.text.as_bytes());
        out.push(b'.');
        push_padded(out, u128::from(since.subsec_micros()), 6);
        out.push(b'Z');
    }
}

/// Appends one line in `tracing-subscriber`'s shape for the same event.
pub(crate) fn format_line(out: &mut Vec<u8>, format: Format, r: &Record, stamps: &mut Stamps) {
    match format {
        Format::Json => {
            out.extend_from_slice(b"{\"timestamp\":\"");
            stamps.write(out, r.time);
            out.extend_from_slice(if r.debug {
                b"\",\"level\":\"DEBUG\",\"fields\":{\"message\":\"request\",\"method\":"
            } else {
                b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"method\":"
            });
            json_string(out, r.method.as_str());
            out.extend_from_slice(b",\"path\":");
            json_string(out, r.path());
            out.extend_from_slice(b",\"status\":");
            push_decimal(out, u128::from(r.status));
            out.extend_from_slice(b",\"latency_ms\":");
            push_millis(out, r.latency);
            if let Some(topic) = r.topic() {
                out.extend_from_slice(b",\"topic\":");
                json_string(out, topic);
            }
            out.extend_from_slice(b",\"route\":");
            json_string(out, r.route);
            out.extend_from_slice(b"},\"target\":\"herald::access\"}\n");
        }
        Format::Text => {
            stamps.write(out, r.time);
            out.extend_from_slice(if r.debug {
                b" DEBUG herald::access: request method="
            } else {
                b"  INFO herald::access: request method="
            });
            quoted(out, r.method.as_str());
            out.extend_from_slice(b" path=");
            quoted(out, r.path());
            out.extend_from_slice(b" status=");
            push_decimal(out, u128::from(r.status));
            out.extend_from_slice(b" latency_ms=");
            push_millis(out, r.latency);
            if let Some(topic) = r.topic() {
                out.extend_from_slice(b" topic=");
                quoted(out, topic);
            }
            out.extend_from_slice(b" route=");
            quoted(out, r.route);
            out.push(b'\n');
        }
    }
}

/// Where `topic` is in `path`: right after the leading `/` in the usual case.
fn topic_in(path: &str, topic: &str) -> Option<usize> {
    if path.get(1..1 + topic.len()) == Some(topic) {
        return Some(1);
    }
    path.find(topic)
}

/// `n` in decimal (what `write!(out, "{n}")` writes, without the formatting machinery,
/// which was half of a line's cost).
fn push_decimal(out: &mut Vec<u8>, mut n: u128) {
    let mut digits = [0u8; 39];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `latency` in milliseconds with three decimals, as `{ms}.{frac:03}` writes it.
fn push_millis(out: &mut Vec<u8>, latency: Duration) {
    let micros = latency.as_micros();
    push_decimal(out, micros / 1000);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
}

/// `n` in decimal, zero-padded to `width` digits (`write!(out, "{n:0width$}")`).
fn push_padded(out: &mut Vec<u8>, n: u128, width: usize) {
    let start = out.len();
    push_decimal(out, n);
    let len = out.len() - start;
    if len < width {
        out.splice(start..start, std::iter::repeat_n(b'0', width - len));
    }
}

/// Whether `s` is written as it is between quotes, both as a JSON string and as
/// Rust's `{:?}`: printable ASCII without `"` or `\`.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

/// `s` as `tracing-subscriber`'s text format writes a string field (Rust's `{:?}`).
fn quoted(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Serialising a `str` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_are_written_as_format_and_serde_json_write_them() {
        let mut rng = fastrand::Rng::with_seed(5);
        for n in [
            0u128,
            1,
            9,
            10,
            99,
            100,
            999,
            1000,
            123_456,
            u128::from(u64::MAX),
        ]
        .into_iter()
        .chain((0..500).map(|_| u128::from(rng.u64(..) >> rng.u32(0..64))))
        {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("{n}").into_bytes());
            for width in [3, 6] {
                let mut out = Vec::new();
                push_padded(&mut out, n, width);
                assert_eq!(out, format!("{n:0width$}").into_bytes());
            }
        }
        for s in [
            "", "/t", "/a b~", "/é", "\"q\"", "a\\b", "\u{1}", "\u{7f}", "tab\t",
        ] {
            let mut out = Vec::new();
            json_string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
            let mut out = Vec::new();
            quoted(&mut out, s);
            assert_eq!(out, format!("{s:?}").into_bytes(), "{s:?}");
        }
        assert_eq!(topic_in("/mytopic", "mytopic"), Some(1));
        assert_eq!(topic_in("/mytopic/json", "mytopic"), Some(1));
        assert_eq!(topic_in("/v1/x/mytopic", "mytopic"), Some(6));
        assert_eq!(topic_in("/other", "mytopic"), None);
    }

    fn record(path: &str, topic: Option<&str>) -> Record {
        Record::new(
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_840_000_123_456),
            false,
            axum::http::Method::PUT,
            (path, topic),
            200,
            Duration::from_micros(1_234),
            "publish",
        )
    }

    #[test]
    fn a_records_topic_is_in_its_path_or_after_it() {
        let r = record("/a,b/json", Some("a,b"));
        assert_eq!((r.path(), r.topic()), ("/a,b/json", Some("a,b")));
        assert_eq!(r.text.text, "/a,b/json");
        let r = record("/x/json", Some("other"));
        assert_eq!((r.path(), r.topic()), ("/x/json", Some("other")));
        let r = record("/v1/health", None);
        assert_eq!((r.path(), r.topic()), ("/v1/health", None));
    }

    #[test]
    fn json_lines_have_tracing_subscribers_shape() {
        let mut out = Vec::new();
        format_line(
            &mut out,
            Format::Json,
            &record("/a\"b", Some("a")),
            &mut Stamps::default(),
        );
        let line = std::str::from_utf8(&out).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["timestamp"], "2025-12-04T09:20:00.123456Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "herald::access");
        let f = &v["fields"];
        assert_eq!(f["message"], "request");
        assert_eq!(f["method"], "PUT");
        assert_eq!(f["path"], "/a\"b");
        assert_eq!(f["status"], 200);
        assert_eq!(f["latency_ms"].as_f64(), Some(1.234));
        assert_eq!(f["topic"], "a");
        assert_eq!(f["route"], "publish");
    }

    #[test]
    fn text_lines_quote_strings_and_leave_out_a_missing_topic() {
        let mut out = Vec::new();
        let mut stamps = Stamps::default();
        format_line(&mut out, Format::Text, &record("/v1/x", None), &mut stamps);
        format_line(&mut out, Format::Text, &record("/é\"", None), &mut stamps);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "2025-12-04T09:20:00.123456Z  INFO herald::access: request method=\"PUT\" \
             path=\"/v1/x\" status=200 latency_ms=1.234 route=\"publish\"\n\
             2025-12-04T09:20:00.123456Z  INFO herald::access: request method=\"PUT\" \
             path=\"/é\\\"\" status=200 latency_ms=1.234 route=\"publish\"\n"
        );
    }

    /// A sink of its own (not the process's), driven by a writer thread in the test.
    fn sink() -> &'static Sink {
        Box::leak(Box::new(Sink {
            format: Format::Json,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
        }))
    }

    #[test]
    fn records_are_written_in_batches_and_a_full_queue_drops_and_counts() {
        let sink = sink();
        // No writer yet: the queue fills up, and what does not fit is counted.
        let before = dropped();
        for _ in 0..CAPACITY + 3 {
            push(sink, record("/t", Some("t")));
        }
        assert_eq!(dropped() - before, 3);
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        std::thread::spawn(move || {
            run(sink, &mut |bytes, lines| {
                let newlines = bytes.iter().filter(|b| **b == b'\n').count();
                assert_eq!(newlines as u64, lines, "the line count given to the writer");
                let _ = tx.send(newlines);
            })
        });
        // Everything queued goes out in one write.
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(CAPACITY));
        push(sink, record("/t", None));
        push(sink, record("/t", None));
        let mut lines = 0;
        while lines < 2 {
            lines += rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(lines, 2);
        // A flush returns once what was queued before it is written.
        push(sink, record("/t", None));
        flush_sink(sink, Duration::from_secs(10));
        assert_eq!(rx.try_recv(), Ok(1));
    }
}
