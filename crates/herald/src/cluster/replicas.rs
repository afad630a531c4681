//! "Acknowledged means replicated" (`redis-min-replicas-acked`): Redis replicates
//! asynchronously, so a write the primary answered can vanish when it dies before a
//! replica had it. A write that must survive that is confirmed with `WAIT n timeout`
//! before herald acknowledges it; when the replicas do not confirm in time the
//! caller answers 503 (not acknowledged), never "acknowledged, then lost".
//!
//! `WAIT` covers every write the same connection made before it, so one `WAIT` per
//! connection and round is enough for every write in flight on it: a write's
//! confirmation joins the next round that starts after the write was answered, and
//! at most one round runs at a time. Under load this is one `WAIT` per batch of
//! publishes, not one per publish (docs/BENCHMARKS.md has the cost).

use std::sync::{Arc, Mutex};

use redis::{ErrorKind, RedisError, RedisResult};
use tokio::sync::watch;

/// Where a write stood when it was sent: the connection generation (primary) and
/// epoch (reconnects). A `WAIT` on another connection would not cover the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) generation: Option<u64>,
    pub(crate) epoch: Option<u64>,
}

/// What one round's `WAIT` found: replicas that confirmed, and the generation and
/// epoch of the connection it ran on.
pub(crate) type Round = (i64, u64, u64);

/// The last finished round: its number and outcome.
type Done = (u64, Option<Arc<Result<Round, String>>>);

/// The rounds of `WAIT` on one connection.
pub(crate) struct Confirmations {
    /// Rounds started so far, and whether one is running.
    state: Mutex<(u64, bool)>,
    done: watch::Sender<Done>,
}

impl Default for Confirmations {
    fn default() -> Self {
        Confirmations {
            state: Mutex::new((0, false)),
            done: watch::channel((0, None)).0,
        }
    }
}

fn unavailable(detail: String) -> RedisError {
    // `Io`: the callers answer "unavailable" (503), so a client may retry.
    RedisError::from((ErrorKind::Io, "write not confirmed by replicas", detail))
}

/// Whether `acked` replicas are enough.
pub(crate) fn enough(acked: i64, min: u32) -> RedisResult<()> {
    if acked >= i64::from(min) {
        Ok(())
    } else {
        Err(unavailable(format!(
            "{acked} of {min} replicas confirmed in time"
        )))
    }
}

impl Confirmations {
    /// Waits for a round of `run` (a `WAIT`) that started after this call, and
    /// checks that it covered the write `ticket` describes with `min` replicas.
    pub(crate) async fn confirm<F, Fut>(
        self: &Arc<Self>,
        ticket: Ticket,
        min: u32,
        run: F,
    ) -> RedisResult<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = RedisResult<Round>> + Send + 'static,
    {
        let target = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.0 + 1
        };
        let mut rx = self.done.subscribe();
        let mut run = Some(run);
        loop {
            if let Some(outcome) = finished(&rx.borrow_and_update(), target) {
                return judge(&outcome, ticket, min);
            }
            // A caller leads at most once: its round is one it waits for.
            let lead = if run.is_none() {
                None
            } else {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if state.1 {
                    None
                } else {
                    state.1 = true;
                    state.0 += 1;
                    Some(state.0)
                }
            };
            if let Some(round) = lead
                && let Some(run) = run.take()
            {
                // Spawned: a caller that goes away must not leave the round unfinished.
                let this = self.clone();
                tokio::spawn(async move {
                    let outcome = run().await.map_err(|e| e.to_string());
                    this.finish(round, outcome);
                });
            }
            if rx.changed().await.is_err() {
                return Err(unavailable("connection closed".into()));
            }
        }
    }

    /// Ends round `round`: lets the next start, and tells the waiters.
    fn finish(&self, round: u64, outcome: Result<Round, String>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1 = false;
        self.done.send_replace((round, Some(Arc::new(outcome))));
    }
}

fn finished(done: &Done, target: u64) -> Option<Arc<Result<Round, String>>> {
    match done {
        (round, Some(outcome)) if *round >= target => Some(outcome.clone()),
        _ => None,
    }
}

fn judge(outcome: &Result<Round, String>, ticket: Ticket, min: u32) -> RedisResult<()> {
    let (acked, generation, epoch) = outcome.as_ref().map_err(|e| unavailable(e.clone()))?;
    if ticket.generation != Some(*generation) || ticket.epoch != Some(*epoch) {
        return Err(unavailable(
            "the connection to the primary changed before the write was confirmed".into(),
        ));
    }
    enough(*acked, min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const TICKET: Ticket = Ticket {
        generation: Some(1),
        epoch: Some(7),
    };

    /// A round that takes a while and answers `acked` on connection (1, 7).
    fn round(
        runs: &Arc<AtomicUsize>,
        acked: i64,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = RedisResult<Round>> + Send>>
    + Send
    + 'static {
        let runs = runs.clone();
        move || {
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok((acked, 1, 7))
            })
        }
    }

    #[tokio::test]
    async fn one_wait_covers_every_write_in_flight() {
        let c = Arc::new(Confirmations::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let first = tokio::spawn({
            let (c, r) = (c.clone(), round(&runs, 1));
            async move { c.confirm(TICKET, 1, r).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // 20 writes answered while the first round runs: all share the next round.
        let waiting: Vec<_> = (0..20)
            .map(|_| {
                let (c, r) = (c.clone(), round(&runs, 1));
                tokio::spawn(async move { c.confirm(TICKET, 1, r).await })
            })
            .collect();
        assert!(first.await.unwrap().is_ok());
        for w in waiting {
            assert!(w.await.unwrap().is_ok());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn too_few_replicas_or_another_connection_is_not_confirmed() {
        let c = Arc::new(Confirmations::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let err = c.confirm(TICKET, 2, round(&runs, 1)).await.unwrap_err();
        assert!(err.is_io_error(), "{err}");
        assert!(err.to_string().contains("1 of 2"), "{err}");
        // The write went out on an earlier connection: the WAIT does not cover it.
        let moved = Ticket {
            generation: Some(1),
            epoch: Some(6),
        };
        let err = c.confirm(moved, 1, round(&runs, 1)).await.unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");
        assert!(c.confirm(TICKET, 1, round(&runs, 1)).await.is_ok());
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_does_not_stall_the_rounds() {
        let c = Arc::new(Confirmations::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let leader = tokio::spawn({
            let (c, r) = (c.clone(), round(&runs, 1));
            async move { c.confirm(TICKET, 1, r).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        let later = tokio::time::timeout(
            Duration::from_secs(5),
            c.confirm(TICKET, 1, round(&runs, 1)),
        )
        .await;
        assert!(matches!(later, Ok(Ok(()))));
    }
}
