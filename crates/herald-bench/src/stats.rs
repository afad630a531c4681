//! What a run counts, and CPU/memory samples from `/proc`.
//!
//! All tasks run on one thread, so the counters live in one `RefCell` shared by
//! `Rc`: no atomics, no locks. Borrows are never held across an `.await`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Error samples kept for the report (the count is kept for all).
const MAX_ERROR_SAMPLES: usize = 10;
/// Largest latency a histogram tracks, in microseconds (an hour); larger values
/// are clamped to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// This process's monotonic clock as nanoseconds since the run started: the unit
/// of message stamps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
    /// `CLOCK_REALTIME` at `epoch`, in ns since the Unix epoch: converts kernel
    /// receive timestamps (`rxstamp.rs`) to this clock.
    realtime_epoch_ns: u64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        // Read back to back: the pair is off by the time between the two calls
        // (tens of ns); NTP slewing moves real time by at most 0.05 % over a run.
        let epoch = Instant::now();
        let realtime_epoch_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Clock {
            epoch,
            realtime_epoch_ns,
        }
    }

    /// A `CLOCK_REALTIME` instant (ns since the Unix epoch) on this clock.
    pub(crate) fn realtime_to_ns(&self, realtime_ns: u64) -> u64 {
        realtime_ns.saturating_sub(self.realtime_epoch_ns)
    }

    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }
}

/// A latency histogram in microseconds with 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail at run time.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// The run's counters.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) established: u64,
    /// Established subscribers per topic: the fan-out of each publish.
    pub(crate) established_per_topic: Vec<u64>,
    /// Subscribers that never got their `open` event.
    pub(crate) failed: u64,
    /// Subscribers whose stream ended or broke after it was established.
    pub(crate) dropped: u64,
    /// When the last subscriber was established (ns on the run clock).
    pub(crate) last_established_ns: u64,

    pub(crate) published: u64,
    pub(crate) published_per_topic: Vec<u64>,
    pub(crate) publish_errors: u64,
    /// Largest delay between a message's scheduled and actual send (open loop).
    pub(crate) max_send_lag_ns: u64,
    pub(crate) publish_lat: Histogram<u64>,

    pub(crate) delivered: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    /// Stamped messages from another run (other nonce) on our topics.
    pub(crate) foreign: u64,
    /// Events that broke the protocol (first event not `open`, bad stamp fields).
    pub(crate) protocol_errors: u64,
    /// With `--rx-timestamps`: deliveries whose read carried no kernel timestamp
    /// (their latency is taken at the read instead).
    pub(crate) rx_unstamped: u64,
    pub(crate) first_delivery_ns: Option<u64>,
    pub(crate) last_delivery_ns: u64,
    pub(crate) delivery_lat: Histogram<u64>,

    pub(crate) error_count: u64,
    pub(crate) errors: Vec<String>,
}

pub(crate) type Shared = Rc<RefCell<Stats>>;

impl Stats {
    pub(crate) fn new(topics: usize) -> Shared {
        Rc::new(RefCell::new(Stats {
            established: 0,
            established_per_topic: vec![0; topics],
            failed: 0,
            dropped: 0,
            last_established_ns: 0,
            published: 0,
            published_per_topic: vec![0; topics],
            publish_errors: 0,
            max_send_lag_ns: 0,
            publish_lat: new_histogram(),
            delivered: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
            rx_unstamped: 0,
            protocol_errors: 0,
            first_delivery_ns: None,
            last_delivery_ns: 0,
            delivery_lat: new_histogram(),
            error_count: 0,
            errors: Vec::new(),
        }))
    }

    /// Counts an error and keeps the first few descriptions.
    pub(crate) fn error(&mut self, what: String) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERROR_SAMPLES {
            self.errors.push(what);
        }
    }

    /// Deliveries the publishes so far should cause: each publish reaches every
    /// subscriber established on its topic.
    pub(crate) fn expected(&self) -> u64 {
        self.published_per_topic
            .iter()
            .zip(&self.established_per_topic)
            .map(|(p, s)| p * s)
            .sum()
    }
}

/// A point-in-time reading of a process from `/proc`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcSample {
    pub(crate) at: Instant,
    pub(crate) rss_kib: Option<u64>,
    /// User + system CPU time in clock ticks.
    pub(crate) cpu_ticks: Option<u64>,
}

/// Clock ticks per second of `/proc/*/stat` times. Linux exports these in
/// USER_HZ, which is 100 on every mainstream architecture (asking sysconf would
/// need libc and unsafe code for a constant).
const TICKS_PER_SEC: f64 = 100.0;

impl ProcSample {
    /// Samples `/proc/<pid>` (`"self"` for this process).
    pub(crate) fn take(pid: &str) -> ProcSample {
        ProcSample {
            at: Instant::now(),
            rss_kib: read_rss_kib(pid),
            cpu_ticks: read_cpu_ticks(pid),
        }
    }

    /// CPU use between `self` and a later sample, in % of one core.
    pub(crate) fn cpu_pct_until(&self, later: &ProcSample) -> Option<f64> {
        let ticks = later.cpu_ticks?.checked_sub(self.cpu_ticks?)?;
        let wall = later.at.duration_since(self.at).as_secs_f64();
        (wall > 0.0).then(|| ticks as f64 / TICKS_PER_SEC / wall * 100.0)
    }
}

fn read_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss_kib(&status)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn read_cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`; they cover all
/// threads). The command name in field 2 may hold spaces, so count from its `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsers() {
        assert_eq!(
            parse_rss_kib("Name:\tx\nVmRSS:\t   12345 kB\nVmSwap: 0 kB\n"),
            Some(12345)
        );
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let s = ProcSample::take("self");
        assert!(s.rss_kib.is_some_and(|kib| kib > 0));
        assert!(s.cpu_ticks.is_some());
    }

    #[test]
    fn expected_is_fanout_per_topic() {
        let stats = Stats::new(2);
        let mut s = stats.borrow_mut();
        s.established_per_topic = vec![3, 0];
        s.published_per_topic = vec![5, 7];
        assert_eq!(s.expected(), 15);
    }
}
