//! The two counters a visitor's limits are made of: a token bucket (requests, new
//! topics) and a per-day counter (messages), both driven by tokio's clock so tests
//! can pause and advance time.
//!
//! The bucket is GCRA ("generic cell rate algorithm"), the same algorithm
//! `governor` uses: one timestamp per bucket instead of a token count and a refill
//! time, exact without floating point, and "full" is one comparison (which the
//! registry uses to forget visitors that have nothing left to remember).

use std::time::Duration;

use tokio::time::Instant;

/// A bucket's shape: `burst` tokens, one more every `replenish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub replenish: Duration,
}

impl Rate {
    /// The time a full bucket holds: `burst × replenish`.
    fn capacity(self) -> Duration {
        self.replenish.saturating_mul(self.burst)
    }
}

/// A token bucket as the time at which it would be full again ("theoretical
/// arrival time"): it holds `(capacity − (tat − now)) / replenish` tokens.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tat: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(now: Instant) -> Self {
        Bucket { tat: now }
    }

    /// Takes `n` tokens if the bucket holds them all; otherwise takes none and
    /// returns how long until it will.
    pub fn take(&mut self, rate: Rate, n: u32, now: Instant) -> Result<(), Duration> {
        let start = self.tat.max(now);
        // Only absurd settings overflow the clock; such a take is never possible.
        let Some(new_tat) = start.checked_add(rate.replenish.saturating_mul(n)) else {
            return Err(Duration::MAX);
        };
        let ahead = new_tat.saturating_duration_since(now);
        let capacity = rate.capacity();
        if ahead > capacity {
            return Err(ahead - capacity);
        }
        self.tat = new_tat;
        Ok(())
    }

    /// Whether taking `n` tokens now would succeed (nothing is taken).
    pub fn check(&self, rate: Rate, n: u32, now: Instant) -> Result<(), Duration> {
        let mut copy = *self;
        copy.take(rate, n, now)
    }

    /// Whether the bucket is full again (forgetting it loses nothing).
    pub fn is_full(&self, now: Instant) -> bool {
        self.tat <= now
    }
}

/// Length of the daily window; it restarts at midnight UTC, as ntfy's does.
pub const DAY_SECS: u64 = 86_400;

/// Wall-clock days derived from tokio's monotonic clock: the UTC time at start-up
/// plus the elapsed monotonic time. Paused-time tests move the day forward with
/// `tokio::time::advance`; a wall-clock step after start-up does not move it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    started: Instant,
    started_unix: u64,
}

impl Clock {
    /// A clock whose `started` instant is `unix` seconds since the epoch.
    pub fn new(started: Instant, unix: u64) -> Self {
        Clock {
            started,
            started_unix: unix,
        }
    }

    /// Seconds since the epoch at `now`.
    pub fn unix(&self, now: Instant) -> u64 {
        self.started_unix + now.saturating_duration_since(self.started).as_secs()
    }

    /// The UTC day number at `now`.
    pub fn day(&self, now: Instant) -> u32 {
        u32::try_from(self.unix(now) / DAY_SECS).unwrap_or(u32::MAX)
    }

    /// Time from `now` to the next midnight UTC (at least one second).
    pub fn until_midnight(&self, now: Instant) -> Duration {
        Duration::from_secs((DAY_SECS - self.unix(now) % DAY_SECS).max(1))
    }
}

/// Messages published by a visitor on one UTC day.
#[derive(Debug, Clone, Copy, Default)]
pub struct DailyCount {
    day: u32,
    count: u32,
}

impl DailyCount {
    /// The count on `day` (zero if the stored count is from an earlier day).
    pub fn get(&self, day: u32) -> u32 {
        if self.day == day { self.count } else { 0 }
    }

    /// The count on `day` is `count` (as another source, the cluster's, says).
    pub fn set(&mut self, day: u32, count: u32) {
        *self = DailyCount { day, count };
    }

    /// Adds one on `day`, starting over if the day changed.
    pub fn increment(&mut self, day: u32) {
        if self.day != day {
            *self = DailyCount { day, count: 0 };
        }
        self.count = self.count.saturating_add(1);
    }

    /// Takes back one added on `day` (nothing once another day's count started).
    pub fn decrement(&mut self, day: u32) {
        if self.day == day {
            self.count = self.count.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        burst: 3,
        replenish: Duration::from_secs(5),
    };

    #[tokio::test(start_paused = true)]
    async fn burst_then_one_per_replenish() {
        let mut b = Bucket::full(Instant::now());
        for _ in 0..3 {
            assert_eq!(b.take(RATE, 1, Instant::now()), Ok(()));
        }
        assert_eq!(b.take(RATE, 1, Instant::now()), Err(Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.take(RATE, 1, Instant::now()), Err(Duration::from_secs(3)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(b.take(RATE, 1, Instant::now()), Ok(()));
        assert!(b.take(RATE, 1, Instant::now()).is_err());
        assert!(!b.is_full(Instant::now()));
        // Idle long enough, the bucket is full again, and never holds more than the burst.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(b.is_full(Instant::now()));
        for _ in 0..3 {
            assert!(b.take(RATE, 1, Instant::now()).is_ok());
        }
        assert!(b.take(RATE, 1, Instant::now()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn taking_several_is_all_or_nothing() {
        let mut b = Bucket::full(Instant::now());
        assert!(b.take(RATE, 2, Instant::now()).is_ok());
        assert_eq!(
            b.check(RATE, 2, Instant::now()),
            Err(Duration::from_secs(5))
        );
        assert!(b.take(RATE, 2, Instant::now()).is_err());
        // The refused take took nothing: one token is still there.
        assert!(b.take(RATE, 1, Instant::now()).is_ok());
        assert!(b.take(RATE, 4, Instant::now()).is_err());
        let absurd = Rate {
            burst: 1,
            replenish: Duration::MAX,
        };
        assert!(
            Bucket::full(Instant::now())
                .take(absurd, 2, Instant::now())
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn days_roll_over_at_midnight_utc() {
        // 10 seconds before midnight.
        let start = 20_000 * DAY_SECS - 10;
        let clock = Clock::new(Instant::now(), start);
        let today = clock.day(Instant::now());
        assert_eq!(
            clock.until_midnight(Instant::now()),
            Duration::from_secs(10)
        );
        let mut count = DailyCount::default();
        count.increment(today);
        count.increment(today);
        assert_eq!(count.get(today), 2);
        tokio::time::advance(Duration::from_secs(10)).await;
        let tomorrow = clock.day(Instant::now());
        assert_eq!(tomorrow, today + 1);
        assert_eq!(count.get(tomorrow), 0);
        count.increment(tomorrow);
        assert_eq!(count.get(tomorrow), 1);
        assert_eq!(
            clock.until_midnight(Instant::now()),
            Duration::from_secs(DAY_SECS)
        );
    }
}
