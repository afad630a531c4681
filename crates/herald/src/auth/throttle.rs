//! Throttling of failed logins, per client address and per user name.
//!
//! Each key has a bucket of 30 failures that refills by one a minute (ntfy's
//! per-visitor auth-failure limiter: burst 30, 1/min). An empty bucket refuses
//! further attempts with `429 42909` before any credential is checked. Keying by
//! user name as well stops a password guesser that spreads over many addresses;
//! IPv6 addresses count per /64 (one host usually holds a whole /64). Only failures
//! drain a bucket; a success does not reset it (so a guesser cannot refill by
//! logging in with its own account in between).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts allowed in a burst.
pub const BURST: f64 = 30.0;
/// One more attempt per this interval.
pub const REFILL: Duration = Duration::from_secs(60);
/// Most keys tracked; beyond that, full buckets are dropped first, then all.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, now: Instant) -> f64 {
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        (self.tokens + refilled).min(BURST)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    User(String),
}

/// The failure buckets.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    buckets: Mutex<HashMap<Key, Bucket>>,
}

/// The address a client is counted as: IPv4 as is, IPv6 by its /64 (one host
/// usually holds a whole /64), IPv4-mapped IPv6 as IPv4.
pub fn address_prefix(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
    }
}

fn addr_key(ip: IpAddr) -> Key {
    Key::Addr(address_prefix(ip))
}

impl LoginThrottle {
    /// Whether an attempt from `ip` (for `user`, if named) may be checked now.
    pub fn allowed(&self, ip: IpAddr, user: Option<&str>, now: Instant) -> bool {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let ok = |key: &Key| buckets.get(key).is_none_or(|b| b.level(now) >= 1.0);
        ok(&addr_key(ip)) && user.is_none_or(|u| ok(&Key::User(u.to_string())))
    }

    /// Records a failed attempt.
    pub fn failed(&self, ip: IpAddr, user: Option<&str>, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_KEYS {
            buckets.retain(|_, b| b.level(now) < BURST);
            // Still full (a spray of made-up user names): forget everything rather
            // than grow without bound or rescan on every failure.
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let keys = std::iter::once(addr_key(ip)).chain(user.map(|u| Key::User(u.to_string())));
        for key in keys {
            let bucket = buckets.entry(key).or_insert(Bucket {
                tokens: BURST,
                at: now,
            });
            bucket.tokens = (bucket.level(now) - 1.0).max(0.0);
            bucket.at = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_failures_then_one_a_minute() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..30 {
            assert!(t.allowed(ip, None, now));
            t.failed(ip, None, now);
        }
        assert!(!t.allowed(ip, None, now));
        assert!(
            t.allowed("192.0.2.2".parse().unwrap(), None, now),
            "per address"
        );
        assert!(!t.allowed(ip, None, now + Duration::from_secs(59)));
        assert!(t.allowed(ip, None, now + Duration::from_secs(60)));
    }

    #[test]
    fn per_user_name_across_addresses_and_ipv6_per_64() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..30u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            t.failed(ip, Some("phil"), now);
        }
        assert!(!t.allowed("10.9.9.9".parse().unwrap(), Some("phil"), now));
        assert!(t.allowed("10.9.9.9".parse().unwrap(), Some("ben"), now));
        assert!(t.allowed("10.9.9.9".parse().unwrap(), None, now));

        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for _ in 0..30 {
            t.failed(a, None, now);
        }
        assert!(!t.allowed(b, None, now), "same /64");
        assert!(t.allowed("2001:db8:0:1::1".parse().unwrap(), None, now));
    }
}
