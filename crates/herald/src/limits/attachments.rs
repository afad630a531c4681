//! Attachment accounting per visitor and for the server: bytes stored
//! (`visitor-attachment-total-size-limit`, `attachment-total-size-limit`) and bytes
//! transferred per UTC day (`visitor-attachment-daily-bandwidth-limit`, uploads and
//! downloads, a download charged to the uploader as ntfy does).
//!
//! Uploads are charged as their bytes arrive ([`AttachmentUsage::charge_upload`]),
//! so concurrent uploads of one visitor cannot together pass a limit, and a refused
//! or aborted upload gives its stored bytes back ([`AttachmentUsage::release`]).
//! The totals are rebuilt at start from the store's metadata
//! ([`AttachmentUsage::restore`]), so they survive a restart. Visitors are named as
//! in the shared limits (`ip:1.2.3.4`, `user:phil`).

use std::collections::HashMap;
use std::sync::Mutex;

/// The limits (bytes) the accounting enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachmentLimits {
    pub total: u64,
    pub visitor_total: u64,
    pub visitor_daily_bandwidth: u64,
}

/// Which limit a charge would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("attachment-total-size-limit reached")]
    Total,
    #[error("visitor-attachment-total-size-limit reached")]
    VisitorTotal,
    #[error("visitor-attachment-daily-bandwidth-limit reached")]
    Bandwidth,
}

/// One visitor's usage.
#[derive(Debug, Clone, Copy, Default)]
struct VisitorUsage {
    stored: u64,
    /// UTC day (unix seconds / 86400) `transferred` counts.
    day: i64,
    transferred: u64,
}

impl VisitorUsage {
    fn transferred_on(&mut self, day: i64) -> &mut u64 {
        if self.day != day {
            self.day = day;
            self.transferred = 0;
        }
        &mut self.transferred
    }
}

#[derive(Debug, Default)]
struct State {
    total: u64,
    visitors: HashMap<String, VisitorUsage>,
}

/// This node's attachment accounting.
#[derive(Debug)]
pub struct AttachmentUsage {
    limits: AttachmentLimits,
    state: Mutex<State>,
}

fn today(now: i64) -> i64 {
    now.div_euclid(86_400)
}

impl AttachmentUsage {
    pub fn new(limits: AttachmentLimits) -> Self {
        AttachmentUsage {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most bytes `visitor` may upload now: the least of what its stored total,
    /// the server's total and its daily bandwidth leave.
    pub fn upload_room(&self, visitor: &str, now: i64) -> u64 {
        let s = self.lock();
        let server_left = self.limits.total.saturating_sub(s.total);
        let mut v = s.visitors.get(visitor).copied().unwrap_or_default();
        let transferred = *v.transferred_on(today(now));
        server_left
            .min(self.limits.visitor_total.saturating_sub(v.stored))
            .min(
                self.limits
                    .visitor_daily_bandwidth
                    .saturating_sub(transferred),
            )
    }

    /// Charges `n` more uploaded bytes to `visitor` (stored and transferred), or
    /// refuses without charging anything.
    pub fn charge_upload(&self, visitor: &str, n: u64, now: i64) -> Result<(), Exceeded> {
        let mut guard = self.lock();
        let s = &mut *guard;
        if s.total.saturating_add(n) > self.limits.total {
            return Err(Exceeded::Total);
        }
        let v = s.visitors.entry(visitor.to_string()).or_default();
        if v.stored.saturating_add(n) > self.limits.visitor_total {
            return Err(Exceeded::VisitorTotal);
        }
        let transferred = v.transferred_on(today(now));
        if transferred.saturating_add(n) > self.limits.visitor_daily_bandwidth {
            return Err(Exceeded::Bandwidth);
        }
        *transferred += n;
        v.stored += n;
        s.total += n;
        Ok(())
    }

    /// Charges a download of `n` bytes to the uploader `visitor`'s daily bandwidth.
    pub fn charge_download(&self, visitor: &str, n: u64, now: i64) -> Result<(), Exceeded> {
        let mut s = self.lock();
        let v = s.visitors.entry(visitor.to_string()).or_default();
        let transferred = v.transferred_on(today(now));
        if transferred.saturating_add(n) > self.limits.visitor_daily_bandwidth {
            return Err(Exceeded::Bandwidth);
        }
        *transferred += n;
        Ok(())
    }

    /// `n` stored bytes of `visitor` are gone (deleted, expired, or an upload that
    /// did not complete). Transferred bytes stay counted.
    pub fn release(&self, visitor: &str, n: u64) {
        let mut guard = self.lock();
        let s = &mut *guard;
        s.total = s.total.saturating_sub(n);
        if let Some(v) = s.visitors.get_mut(visitor) {
            v.stored = v.stored.saturating_sub(n);
        }
    }

    /// Counts a stored file found at start (or written by another node).
    pub fn restore(&self, visitor: &str, n: u64) {
        let mut guard = self.lock();
        let s = &mut *guard;
        s.total = s.total.saturating_add(n);
        let v = s.visitors.entry(visitor.to_string()).or_default();
        v.stored = v.stored.saturating_add(n);
    }

    /// Bytes `visitor` has stored.
    pub fn visitor_stored(&self, visitor: &str) -> u64 {
        self.lock().visitors.get(visitor).map_or(0, |v| v.stored)
    }

    /// Bytes stored on the server.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    /// Forgets visitors with nothing stored and no transfer today (bounds the map by
    /// the active visitors).
    pub fn forget_idle(&self, now: i64) {
        let day = today(now);
        self.lock()
            .visitors
            .retain(|_, v| v.stored > 0 || (v.day == day && v.transferred > 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> AttachmentUsage {
        AttachmentUsage::new(AttachmentLimits {
            total: 1000,
            visitor_total: 300,
            visitor_daily_bandwidth: 500,
        })
    }

    #[test]
    fn stored_totals_and_bandwidth_are_enforced() {
        let u = usage();
        assert_eq!(u.upload_room("a", 0), 300);
        u.charge_upload("a", 300, 0).unwrap();
        assert_eq!(u.charge_upload("a", 1, 0), Err(Exceeded::VisitorTotal));
        u.release("a", 300);
        assert_eq!(u.visitor_stored("a"), 0);
        // 300 of 500 transferred today: 200 left even though nothing is stored.
        assert_eq!(u.upload_room("a", 0), 200);
        assert_eq!(u.charge_download("a", 201, 0), Err(Exceeded::Bandwidth));
        u.charge_download("a", 200, 0).unwrap();
        assert_eq!(u.charge_upload("a", 1, 0), Err(Exceeded::Bandwidth));
        // The next UTC day starts afresh.
        assert_eq!(u.upload_room("a", 86_400), 300);
    }

    #[test]
    fn server_total_is_shared_by_visitors() {
        let u = usage();
        for v in ["a", "b", "c"] {
            u.charge_upload(v, 300, 0).unwrap();
        }
        assert_eq!(u.charge_upload("d", 101, 0), Err(Exceeded::Total));
        assert_eq!(u.upload_room("d", 0), 100);
        u.restore("d", 50);
        assert_eq!(u.total(), 950);
        u.release("a", 300);
        u.forget_idle(86_400 * 2);
        assert_eq!(u.visitor_stored("a"), 0);
        assert_eq!(u.visitor_stored("b"), 300);
    }
}
