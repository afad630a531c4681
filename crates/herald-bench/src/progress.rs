//! The progress line on stderr.
//!
//! On a terminal one line is redrawn in place (`\r`, then "erase to end of line");
//! when stderr is a file or a pipe, a plain line is written every few seconds
//! instead, so logs stay readable. Hand-rolled: a progress-bar crate would pull in
//! more than this needs.

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::client::Ctx;
use crate::stats::Stats;

/// Redraw interval on a terminal.
const TTY_INTERVAL: Duration = Duration::from_millis(200);
/// Line interval when stderr is not a terminal.
const LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Width of the bar in characters.
const BAR: usize = 24;

/// What the run is doing now.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase {
    Connect { start: Instant, total: usize },
    Publish { start: Instant, duration: Duration },
    Drain { start: Instant },
}

/// Handle on the redraw task; dropping it without `finish` leaves the line as is.
pub(crate) struct Progress {
    phase: Rc<Cell<Phase>>,
    task: Option<JoinHandle<()>>,
    tty: bool,
}

impl Progress {
    /// Starts redrawing (unless `quiet`).
    pub(crate) fn start(ctx: Rc<Ctx>, phase: Phase) -> Progress {
        let phase = Rc::new(Cell::new(phase));
        let tty = std::io::stderr().is_terminal();
        let task = (!ctx.opts.quiet).then(|| {
            let phase = phase.clone();
            tokio::task::spawn_local(async move {
                let interval = if tty { TTY_INTERVAL } else { LOG_INTERVAL };
                let mut tick = tokio::time::interval(interval);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let text = line(phase.get(), &ctx.stats.borrow(), Instant::now());
                    let mut err = std::io::stderr().lock();
                    // A failed write to stderr is not worth stopping a run for.
                    let _ = if tty {
                        write!(err, "\r{text}\x1b[K")
                    } else {
                        writeln!(err, "{text}")
                    };
                    let _ = err.flush();
                }
            })
        });
        Progress { phase, task, tty }
    }

    pub(crate) fn set(&self, phase: Phase) {
        self.phase.set(phase);
    }

    /// Stops redrawing and clears the line.
    pub(crate) fn finish(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            if self.tty {
                let _ = write!(std::io::stderr(), "\r\x1b[K");
            }
        }
    }
}

/// `[####....]` filled to `fraction` (clamped to 0..=1).
fn bar(fraction: f64) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * BAR as f64).round() as usize).min(BAR);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR - filled))
}

/// The progress text for `phase` at `now`.
fn line(phase: Phase, s: &Stats, now: Instant) -> String {
    match phase {
        Phase::Connect { start, total } => {
            let done = s.established + s.failed;
            format!(
                "connect {} {}/{total} open, {} failed  {:.1}s",
                bar(done as f64 / total.max(1) as f64),
                s.established,
                s.failed,
                now.duration_since(start).as_secs_f64()
            )
        }
        Phase::Publish { start, duration } => {
            let elapsed = now.duration_since(start);
            format!(
                "publish {} {:.1}/{:.1}s  sent {} ({} err)  delivered {}  p99 {}",
                bar(elapsed.as_secs_f64() / duration.as_secs_f64()),
                elapsed.as_secs_f64(),
                duration.as_secs_f64(),
                s.published,
                s.publish_errors,
                ratio(s.delivered, s.expected()),
                crate::report::fmt_us(s.delivery_lat.value_at_quantile(0.99)),
            )
        }
        Phase::Drain { start } => {
            let expected = s.expected();
            format!(
                "drain   {} {}/{expected} delivered ({})  {:.1}s",
                bar(s.delivered as f64 / expected.max(1) as f64),
                s.delivered,
                ratio(s.delivered, expected),
                now.duration_since(start).as_secs_f64()
            )
        }
    }
}

fn ratio(done: u64, total: u64) -> String {
    if total == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", done as f64 * 100.0 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills() {
        assert_eq!(bar(0.0), format!("[{}]", ".".repeat(BAR)));
        assert_eq!(bar(2.0), format!("[{}]", "#".repeat(BAR)));
        assert_eq!(bar(0.5).matches('#').count(), BAR / 2);
    }

    #[test]
    fn lines() {
        let stats = Stats::new(1);
        let mut s = stats.borrow_mut();
        s.established = 3;
        s.established_per_topic[0] = 3;
        let now = Instant::now();
        let text = line(
            Phase::Connect {
                start: now,
                total: 4,
            },
            &s,
            now,
        );
        assert!(
            text.starts_with("connect [") && text.contains("3/4 open"),
            "{text}"
        );
        s.published_per_topic[0] = 2;
        s.delivered = 3;
        let text = line(Phase::Drain { start: now }, &s, now);
        assert!(text.contains("3/6 delivered (50.0%)"), "{text}");
    }
}
