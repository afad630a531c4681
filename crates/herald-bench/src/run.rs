//! One benchmark run: open the subscribers, publish for the window, drain, report.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, LocalSet, spawn_local};

use crate::client::{Ctx, Publisher, Window, subscriber};
use crate::options::Options;
use crate::progress::{Phase, Progress};
use crate::report::{Run, Samples};
use crate::stats::{Clock, ProcSample, Stats};

/// The drain ends after this long without a new delivery...
const DRAIN_IDLE: Duration = Duration::from_secs(3);
/// ...or after this long in any case (a server still trickling deliveries out
/// after this is saturated; the report shows how far it got).
const DRAIN_MAX: Duration = Duration::from_secs(30);
/// How often the orchestrator checks its conditions.
const POLL: Duration = Duration::from_millis(20);
/// How often the server's RSS is sampled for the peak.
const RSS_INTERVAL: Duration = Duration::from_millis(250);

/// Runs the benchmark and writes the reports. One thread: every client task is
/// `!Send` and shares its counters without locks, and the whole generator can be
/// pinned to one CPU with `taskset`.
pub(crate) fn run(opts: Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let local = LocalSet::new();
    let (json, text) = local.block_on(&runtime, scenario(opts.clone()))?;
    if !opts.quiet {
        eprint!("{text}");
    }
    let mut doc = serde_json::to_string_pretty(&json).context("cannot encode the report")?;
    doc.push('\n');
    match &opts.json {
        Some(path) => std::fs::write(path, doc)
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(doc.as_bytes())
                .and_then(|()| out.flush())
                .context("cannot write the report to stdout")?;
        }
    }
    // Streams still open are simply dropped with the runtime: the run is over.
    drop(local);
    runtime.shutdown_background();
    Ok(())
}

async fn scenario(opts: Options) -> anyhow::Result<(serde_json::Value, String)> {
    let server_pid = opts.server_pid.map(|pid| pid.to_string());
    let server_sample = || server_pid.as_deref().map(ProcSample::take);
    let ctx = Rc::new(Ctx {
        clock: Clock::new(),
        nonce: fastrand::u64(..),
        stats: Stats::new(opts.topics),
        opts,
    });
    let opts = &ctx.opts;
    let peak_rss = Rc::new(Cell::new(None::<u64>));
    let rss_task = server_pid
        .clone()
        .map(|pid| spawn_local(track_peak_rss(pid, peak_rss.clone())));

    // Phase 1: open every subscriber, at most `connect_concurrency` at a time.
    let lg_before = ProcSample::take("self");
    let srv_before = server_sample();
    let connect_start = Instant::now();
    let connect_start_ns = ctx.clock.now_ns();
    let progress = Progress::start(
        ctx.clone(),
        Phase::Connect {
            start: connect_start,
            total: opts.subscribers,
        },
    );
    let permits = Arc::new(Semaphore::new(opts.connect_concurrency));
    for index in 0..opts.subscribers {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .context("connection limiter closed")?;
        spawn_local(subscriber(ctx.clone(), index, permit));
    }
    while {
        let s = ctx.stats.borrow();
        (s.established + s.failed) < opts.subscribers as u64
    } {
        tokio::time::sleep(POLL).await;
    }
    let connect_secs = {
        let s = ctx.stats.borrow();
        if s.established > 0 {
            s.last_established_ns.saturating_sub(connect_start_ns) as f64 / 1e9
        } else {
            connect_start.elapsed().as_secs_f64()
        }
    };

    // Phase 2: publish for the window.
    let mut publishers = Vec::with_capacity(opts.publishers);
    for id in 0..opts.publishers {
        publishers.push(Publisher::connect(ctx.clone(), id).await);
    }
    let lg_connected = ProcSample::take("self");
    let srv_connected = server_sample();
    let window = Window {
        start_ns: ctx.clock.now_ns(),
        duration: opts.duration,
    };
    let window_start = Instant::now();
    progress.set(Phase::Publish {
        start: window_start,
        duration: opts.duration,
    });
    let handles: Vec<JoinHandle<()>> = publishers
        .into_iter()
        .map(|p| spawn_local(p.run(window)))
        .collect();
    for handle in handles {
        handle.await.context("a publisher task failed")?;
    }
    if opts.publishers == 0 {
        // An idle run: the window is a hold with every subscriber open.
        tokio::time::sleep(opts.duration).await;
    }
    let publish_secs = window_start.elapsed().as_secs_f64();
    let lg_published = ProcSample::take("self");
    let srv_published = server_sample();

    // Phase 3: wait for the deliveries to stop.
    let drain_start = Instant::now();
    progress.set(Phase::Drain { start: drain_start });
    let mut last_count = u64::MAX;
    let mut last_change = drain_start;
    loop {
        let (delivered, expected) = {
            let s = ctx.stats.borrow();
            (s.delivered + s.duplicates, s.expected())
        };
        let now = Instant::now();
        if delivered != last_count {
            last_count = delivered;
            last_change = now;
        }
        if delivered >= expected
            || now.duration_since(last_change) >= DRAIN_IDLE
            || now.duration_since(drain_start) >= DRAIN_MAX
        {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let lg_end = ProcSample::take("self");
    let srv_end = server_sample();
    progress.finish();
    if let Some(task) = rss_task {
        task.abort();
    }

    let server = match (
        opts.server_pid,
        srv_before,
        srv_connected,
        srv_published,
        srv_end,
    ) {
        (Some(pid), Some(before), Some(connected), Some(published), Some(end)) => Some((
            pid,
            Samples {
                before,
                connected,
                published,
                end,
            },
        )),
        _ => None,
    };
    let peak = [server.and_then(|(_, s)| s.end.rss_kib), peak_rss.get()]
        .into_iter()
        .flatten()
        .max();
    let run = Run {
        ctx: &ctx,
        connect_secs,
        publish_secs,
        drain_secs,
        window_start_ns: window.start_ns,
        loadgen: Samples {
            before: lg_before,
            connected: lg_connected,
            published: lg_published,
            end: lg_end,
        },
        server,
        server_peak_rss_kib: peak,
    };
    Ok((run.to_json(), run.to_text()))
}

/// Samples the server's RSS until aborted, keeping the largest value.
async fn track_peak_rss(pid: String, peak: Rc<Cell<Option<u64>>>) {
    let mut tick = tokio::time::interval(RSS_INTERVAL);
    loop {
        tick.tick().await;
        if let Some(kib) = ProcSample::take(&pid).rss_kib {
            peak.set(Some(peak.get().map_or(kib, |p| p.max(kib))));
        }
    }
}
