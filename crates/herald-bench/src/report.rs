//! The results of a run: a JSON document for machines and a summary for people.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::client::Ctx;
use crate::stats::{ProcSample, Stats};

/// `loadgen.cpu_pct` at or above this means the generator, not the server, may
/// have been the bottleneck.
const SATURATED_PCT: f64 = 90.0;
/// Width of the ASCII histogram's bars.
const HIST_WIDTH: u64 = 40;

/// `/proc` samples of one process at the phase boundaries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Samples {
    pub(crate) before: ProcSample,
    /// After all subscribers are open, just before publishing starts.
    pub(crate) connected: ProcSample,
    /// When the last publisher finished.
    pub(crate) published: ProcSample,
    /// After the drain.
    pub(crate) end: ProcSample,
}

impl Samples {
    fn cpu(&self) -> CpuPct {
        CpuPct {
            connect: self.before.cpu_pct_until(&self.connected).map(round2),
            publish: self.connected.cpu_pct_until(&self.published).map(round2),
            drain: self.published.cpu_pct_until(&self.end).map(round2),
        }
    }
}

/// Everything measured in a run.
pub(crate) struct Run<'a> {
    pub(crate) ctx: &'a Ctx,
    /// From the first connect to the last `open` event.
    pub(crate) connect_secs: f64,
    /// From the start of the publishing window to the last acknowledgement.
    pub(crate) publish_secs: f64,
    pub(crate) drain_secs: f64,
    /// Start of the publishing window on the run clock.
    pub(crate) window_start_ns: u64,
    pub(crate) loadgen: Samples,
    pub(crate) server: Option<(u32, Samples)>,
    pub(crate) server_peak_rss_kib: Option<u64>,
}

impl Run<'_> {
    /// Open loop only: the publishers reached less than 90% of `--rate` (each has
    /// one request in flight, so slow acks hold the schedule back).
    fn behind_schedule(&self, s: &Stats) -> Option<bool> {
        let rate = self
            .ctx
            .opts
            .rate
            .filter(|_| self.ctx.opts.publishers > 0)?;
        let achieved = per_sec(s.published + s.publish_errors, self.publish_secs).unwrap_or(0.0);
        Some(achieved < 0.9 * rate)
    }

    fn deliveries_per_sec(&self, s: &Stats) -> Option<f64> {
        let secs = s.last_delivery_ns.checked_sub(self.window_start_ns)? as f64 / 1e9;
        (secs > 0.0).then(|| s.delivered as f64 / secs)
    }

    /// The JSON report (latencies in microseconds, rates per second, CPU in % of
    /// one core, memory in KiB).
    pub(crate) fn to_json(&self) -> Value {
        let opts = &self.ctx.opts;
        let s = self.ctx.stats.borrow();
        let expected = s.expected();
        let server = self.server.map(|(pid, samples)| {
            let (before, connected) = (samples.before.rss_kib, samples.connected.rss_kib);
            ServerFigures {
                pid,
                rss_kib: RssKib {
                    before,
                    connected,
                    after_publish: samples.published.rss_kib,
                    end: samples.end.rss_kib,
                    peak: self.server_peak_rss_kib,
                },
                rss_bytes_per_subscriber: match (before, connected) {
                    (Some(b), Some(c)) if s.established > 0 => {
                        Some(((c as f64 - b as f64) * 1024.0 / s.established as f64).round())
                    }
                    _ => None,
                },
                cpu_pct: samples.cpu(),
            }
        });
        let loadgen_publish_cpu = self
            .loadgen
            .connected
            .cpu_pct_until(&self.loadgen.published);
        let report = JsonReport {
            tool: "herald bench",
            version: env!("CARGO_PKG_VERSION"),
            nonce: format!("{:016x}", self.ctx.nonce),
            config: ConfigFigures {
                url: &opts.url,
                protocol: opts.protocol().name(),
                nats_ws_url: opts
                    .nats_ws
                    .as_ref()
                    .map(|t| format!("ws://{}{}", t.authority, t.base_path)),
                subscribers: opts.subscribers,
                transports: opts.transports.iter().map(|t| t.name()).collect(),
                topics: opts.topics,
                topic_prefix: &opts.topic_prefix,
                publishers: opts.publishers,
                mode: if opts.publishers == 0 {
                    "idle"
                } else if opts.rate.is_some() {
                    "open-loop"
                } else {
                    "closed-loop"
                },
                rate: opts.rate,
                duration_s: opts.duration.as_secs_f64(),
                size: opts.size,
                src_ips: opts.sources.len(),
                connect_concurrency: opts.connect_concurrency,
            },
            connections: Connections {
                established: s.established,
                failed: s.failed,
                dropped: s.dropped,
                open_s: round3(self.connect_secs),
                opens_per_s: per_sec(s.established, self.connect_secs).map(round2),
            },
            publish: PublishFigures {
                published: s.published,
                errors: s.publish_errors,
                window_s: round3(self.publish_secs),
                per_s: per_sec(s.published, self.publish_secs).map(round2),
                max_send_lag_ms: round3(s.max_send_lag_ns as f64 / 1e6),
                behind_schedule: self.behind_schedule(&s),
                lat_us: Latency::of(&s.publish_lat),
            },
            delivery: DeliveryFigures {
                expected,
                delivered: s.delivered,
                ratio: (expected > 0).then(|| s.delivered as f64 / expected as f64),
                duplicates: s.duplicates,
                out_of_order: s.out_of_order,
                foreign: s.foreign,
                latency_to: if opts.rx_timestamps {
                    "kernel receive timestamp"
                } else {
                    "read"
                },
                rx_unstamped: opts.rx_timestamps.then_some(s.rx_unstamped),
                protocol_errors: s.protocol_errors,
                per_s: self.deliveries_per_sec(&s).map(round2),
                offered_per_s: opts
                    .rate
                    .filter(|_| opts.publishers > 0)
                    .map(|r| round2(r * s.established as f64 / opts.topics as f64)),
                drain_s: round3(self.drain_secs),
                lat_us: Latency::of(&s.delivery_lat),
            },
            server,
            loadgen: LoadgenFigures {
                cpu_pct: self.loadgen.cpu(),
                saturated: loadgen_publish_cpu.map(|c| c >= SATURATED_PCT),
                rss_kib: self.loadgen.end.rss_kib,
            },
            errors: Errors {
                count: s.error_count,
                samples: &s.errors,
            },
        };
        // Plain structs of numbers and strings always serialize.
        serde_json::to_value(report).unwrap_or(Value::Null)
    }

    /// The human-readable summary.
    pub(crate) fn to_text(&self) -> String {
        let opts = &self.ctx.opts;
        let s = self.ctx.stats.borrow();
        let mut out = String::new();
        let transports: Vec<&str> = opts.transports.iter().map(|t| t.name()).collect();
        let load = match opts.rate {
            _ if opts.publishers == 0 => "idle".to_string(),
            Some(r) => format!("{r} msg/s"),
            None => "closed loop".to_string(),
        };
        // Writing to a String cannot fail; the results are ignored below.
        let _ = writeln!(
            out,
            "herald bench {}: {} subscribers ({}) on {} topic(s), {} publisher(s), {load}, {:.1} s, {}-byte bodies",
            opts.url,
            opts.subscribers,
            transports.join(","),
            opts.topics,
            opts.publishers,
            opts.duration.as_secs_f64(),
            opts.size,
        );
        let _ = writeln!(
            out,
            "connections  {} open, {} failed, {} dropped; opened in {:.2} s ({}/s)",
            s.established,
            s.failed,
            s.dropped,
            self.connect_secs,
            per_sec(s.established, self.connect_secs)
                .map_or("-".to_string(), |r| format!("{r:.0}")),
        );
        let _ = writeln!(
            out,
            "publish      {} ok, {} errors in {:.2} s ({}/s), max send lag {:.1} ms",
            s.published,
            s.publish_errors,
            self.publish_secs,
            per_sec(s.published, self.publish_secs).map_or("-".to_string(), |r| format!("{r:.1}")),
            s.max_send_lag_ns as f64 / 1e6,
        );
        let _ = writeln!(out, "  latency    {}", percentile_line(&s.publish_lat));
        if self.behind_schedule(&s) == Some(true) {
            let _ = writeln!(
                out,
                "  note       publishers fell behind --rate (acks too slow for one request in flight each): add --publishers"
            );
        }
        let expected = s.expected();
        let _ = writeln!(
            out,
            "delivery     {}/{} ({}), {} duplicates, {} out of order, {}/s",
            s.delivered,
            expected,
            if expected == 0 {
                "-".to_string()
            } else {
                format!("{:.2}%", s.delivered as f64 * 100.0 / expected as f64)
            },
            s.duplicates,
            s.out_of_order,
            self.deliveries_per_sec(&s)
                .map_or("-".to_string(), |r| format!("{r:.0}")),
        );
        let _ = writeln!(
            out,
            "  latency    {}{}",
            percentile_line(&s.delivery_lat),
            if self.ctx.opts.rx_timestamps {
                format!(
                    " (to the kernel receive timestamp; {} unstamped)",
                    s.rx_unstamped
                )
            } else {
                String::new()
            }
        );
        out.push_str(&ascii_histogram(&s.delivery_lat));
        if let Some((pid, samples)) = self.server {
            let mib = |kib: Option<u64>| {
                kib.map_or("-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
            };
            let _ = writeln!(
                out,
                "server       pid {pid}: RSS {} -> {} MiB with subscribers, peak {} MiB; CPU {}% (connect) {}% (publish)",
                mib(samples.before.rss_kib),
                mib(samples.connected.rss_kib),
                mib(self.server_peak_rss_kib),
                pct(samples.before.cpu_pct_until(&samples.connected)),
                pct(samples.connected.cpu_pct_until(&samples.published)),
            );
        }
        let lg = self
            .loadgen
            .connected
            .cpu_pct_until(&self.loadgen.published);
        let _ = writeln!(
            out,
            "loadgen      CPU {}% (publish){}",
            pct(lg),
            if lg.is_some_and(|c| c >= SATURATED_PCT) {
                ": saturated, figures may be the generator's limit"
            } else {
                ""
            },
        );
        if s.error_count > 0 || s.foreign > 0 || s.protocol_errors > 0 {
            let _ = writeln!(
                out,
                "errors       {} ({} foreign messages, {} protocol errors)",
                s.error_count, s.foreign, s.protocol_errors
            );
            for e in &s.errors {
                let _ = writeln!(out, "  {e}");
            }
        }
        out
    }
}

fn per_sec(count: u64, secs: f64) -> Option<f64> {
    (secs > 0.0 && count > 0).then(|| count as f64 / secs)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.0}"))
}

fn percentile_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".to_string();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        fmt_us(h.value_at_quantile(0.50)),
        fmt_us(h.value_at_quantile(0.90)),
        fmt_us(h.value_at_quantile(0.99)),
        fmt_us(h.value_at_quantile(0.999)),
        fmt_us(h.max()),
    )
}

/// A latency in microseconds, in a readable unit.
pub(crate) fn fmt_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}us"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// Counts per power-of-two latency bucket, from the first to the last non-empty
/// one, as `<= bound |#### | count` rows.
fn ascii_histogram(h: &Histogram<u64>) -> String {
    let rows: Vec<(u64, u64)> = h
        .iter_log(1, 2.0)
        .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
        .collect();
    let Some(first) = rows.iter().position(|&(_, n)| n > 0) else {
        return String::new();
    };
    let last = rows.iter().rposition(|&(_, n)| n > 0).unwrap_or(first);
    let rows = &rows[first..=last];
    let peak = rows.iter().map(|&(_, n)| n).max().unwrap_or(1).max(1);
    let mut out = String::new();
    for &(bound, n) in rows {
        // Round up so that any non-empty bucket shows at least one mark.
        let width = (n * HIST_WIDTH).div_ceil(peak);
        let _ = writeln!(
            out,
            "  <= {:>9} |{:<w$}| {n}",
            fmt_us(bound),
            "#".repeat(width as usize),
            w = HIST_WIDTH as usize
        );
    }
    out
}

// The JSON report's schema: structs rather than `json!` so that keys keep this
// order (summary first, details after) and the fields are documented in one place.

#[derive(Serialize)]
struct JsonReport<'a> {
    tool: &'static str,
    version: &'static str,
    /// The run's nonce, as in the message stamps.
    nonce: String,
    config: ConfigFigures<'a>,
    connections: Connections,
    publish: PublishFigures,
    delivery: DeliveryFigures,
    /// Only with `--server-pid`.
    server: Option<ServerFigures>,
    loadgen: LoadgenFigures,
    errors: Errors<'a>,
}

#[derive(Serialize)]
struct ConfigFigures<'a> {
    url: &'a str,
    /// `ntfy` (an `http://` URL) or `nats`.
    protocol: &'static str,
    /// NATS only: the WebSocket listener `ws` subscribers used.
    nats_ws_url: Option<String>,
    subscribers: usize,
    transports: Vec<&'static str>,
    topics: usize,
    topic_prefix: &'a str,
    publishers: usize,
    mode: &'static str,
    /// Messages per second (open loop); null in closed loop.
    rate: Option<f64>,
    duration_s: f64,
    size: usize,
    /// Source addresses used; 0 = the kernel's choice.
    src_ips: usize,
    connect_concurrency: usize,
}

#[derive(Serialize)]
struct Connections {
    established: u64,
    /// Never got their `open` event.
    failed: u64,
    /// Ended or broke after being established.
    dropped: u64,
    /// First connect to last `open` event.
    open_s: f64,
    opens_per_s: Option<f64>,
}

#[derive(Serialize)]
struct PublishFigures {
    /// Acknowledged with a 2xx status.
    published: u64,
    /// Non-2xx answers, I/O errors and timeouts.
    errors: u64,
    window_s: f64,
    per_s: Option<f64>,
    /// How far behind its schedule the open-loop publisher fell at worst.
    max_send_lag_ms: f64,
    /// Open loop: under 90% of `--rate` was reached (null in closed loop).
    behind_schedule: Option<bool>,
    /// Request written to response read.
    lat_us: Latency,
}

#[derive(Serialize)]
struct DeliveryFigures {
    /// Each publish times the subscribers established on its topic.
    expected: u64,
    /// Distinct messages received (late ones included, duplicates not).
    delivered: u64,
    ratio: Option<f64>,
    duplicates: u64,
    /// One publisher's messages arriving out of order within a topic.
    out_of_order: u64,
    /// Messages of another run (other nonce) on the same topics.
    foreign: u64,
    /// What `lat_us` ends at: "read" (this process read the event) or "kernel
    /// receive timestamp" (`--rx-timestamps`: the event's bytes reached the socket).
    latency_to: &'static str,
    /// With `--rx-timestamps`: deliveries without a kernel stamp (timed at the read).
    #[serde(skip_serializing_if = "Option::is_none")]
    rx_unstamped: Option<u64>,
    protocol_errors: u64,
    /// Deliveries / (last delivery - start of publishing).
    per_s: Option<f64>,
    /// rate x subscribers per topic (open loop).
    offered_per_s: Option<f64>,
    drain_s: f64,
    /// Send (just before the POST is written) to receipt by the subscriber: its
    /// read, or with `--rx-timestamps` the kernel's receive timestamp.
    lat_us: Latency,
}

#[derive(Serialize)]
struct ServerFigures {
    pid: u32,
    rss_kib: RssKib,
    /// (RSS with subscribers - RSS before) / subscribers.
    rss_bytes_per_subscriber: Option<f64>,
    cpu_pct: CpuPct,
}

#[derive(Serialize)]
struct RssKib {
    before: Option<u64>,
    connected: Option<u64>,
    after_publish: Option<u64>,
    end: Option<u64>,
    /// Largest of the samples taken every 250 ms.
    peak: Option<u64>,
}

/// Per phase, in % of one core.
#[derive(Serialize)]
struct CpuPct {
    connect: Option<f64>,
    publish: Option<f64>,
    drain: Option<f64>,
}

#[derive(Serialize)]
struct LoadgenFigures {
    cpu_pct: CpuPct,
    /// The generator used >= 90% of a core while publishing: the figures may be
    /// its limit rather than the server's.
    saturated: Option<bool>,
    rss_kib: Option<u64>,
}

#[derive(Serialize)]
struct Errors<'a> {
    count: u64,
    /// The first few, verbatim.
    samples: &'a [String],
}

/// Percentiles of a histogram in microseconds (all null when it is empty).
#[derive(Serialize)]
struct Latency {
    count: u64,
    min: Option<u64>,
    p50: Option<u64>,
    p90: Option<u64>,
    p99: Option<u64>,
    p99_9: Option<u64>,
    max: Option<u64>,
    mean: Option<f64>,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
        Latency {
            count: h.len(),
            min: (!h.is_empty()).then(|| h.min()),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p99_9: q(0.999),
            max: (!h.is_empty()).then(|| h.max()),
            mean: (!h.is_empty()).then(|| (h.mean() * 10.0).round() / 10.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn units() {
        assert_eq!(fmt_us(999), "999us");
        assert_eq!(fmt_us(1_500), "1.50ms");
        assert_eq!(fmt_us(2_000_000), "2.00s");
    }

    #[test]
    fn histogram_rows_span_the_samples() {
        let mut h = new_histogram();
        for v in [300, 310, 320, 5_000] {
            h.saturating_record(v);
        }
        let text = ascii_histogram(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("511us") && lines[0].ends_with("| 3"),
            "{text}"
        );
        assert!(lines.last().is_some_and(|l| l.ends_with("| 1")), "{text}");
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(ascii_histogram(&new_histogram()), "");
        let p = serde_json::to_value(Latency::of(&h)).expect("serialize");
        assert_eq!(p["count"], 4);
        assert_eq!(p["max"], 5_003);
        let empty = serde_json::to_value(Latency::of(&new_histogram())).expect("serialize");
        assert_eq!(
            (empty["count"].as_u64(), empty["p99"].is_null()),
            (Some(0), true)
        );
    }
}
