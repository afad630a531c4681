//! The queue's clock. Times in the webhook queue (due times, leases, attempts) are
//! unix milliseconds from [`Clock`]: the wall clock at start plus tokio's monotonic
//! time since, so a wall-clock step does not bunch retries.

/// A monotonic clock in unix milliseconds (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_ms: i64,
    start: tokio::time::Instant,
}

impl Clock {
    /// Anchored at the current wall clock.
    pub fn start() -> Clock {
        Clock {
            wall_ms: crate::model::now_unix_ms(),
            start: tokio::time::Instant::now(),
        }
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.wall_ms + self.start.elapsed().as_millis() as i64
    }
}
