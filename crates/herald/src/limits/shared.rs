//! Visitor limits shared by the nodes of a cluster: the interface the API and the
//! listener use when `redis-url` is set ([`super::redis::RedisLimits`] implements it).
//!
//! The in-process registry ([`super::Limits`]) stays the default and is not called
//! through this trait, so a single node pays nothing for it. In cluster mode every
//! charge is one call here (one Redis round trip): the request token, the daily
//! message count (taken up front and given back if the publish fails), new-topic
//! tokens and an open-stream slot, all or none. When the shared store cannot answer,
//! the caller falls back to this node's own limits (see docs/SCALING.md, "Rate limits").

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Limit, VisitorKey};

/// What one request asks of a visitor's shared limits, taken all or none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedCharge {
    /// One request token.
    pub request: bool,
    /// One message of the daily limit (a publish).
    pub message: bool,
    /// Topic-creation tokens.
    pub new_topics: u32,
    /// One open-subscription slot (released by [`SharedLimits::close_stream`]).
    pub open_stream: bool,
}

/// The answer to a [`SharedCharge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything was taken.
    Admitted,
    /// Nothing was taken: `limit` is exhausted; trying again after `retry_after` may
    /// succeed (as the shared store's clock sees it).
    Refused { limit: Limit, retry_after: Duration },
}

/// The shared store did not answer (in time); the caller uses this node's limits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared limits unavailable: {0}")]
pub struct SharedLimitsError(pub String);

/// Counters that every node of a cluster sees.
#[async_trait]
pub trait SharedLimits: Send + Sync + std::fmt::Debug {
    /// Takes `charge` from `visitor`'s limits, all or none.
    async fn charge(
        &self,
        visitor: &str,
        charge: SharedCharge,
    ) -> Result<Verdict, SharedLimitsError>;

    /// One token of `visitor`'s e-mail bucket (`visitor-email-limit-*`).
    async fn charge_email(&self, visitor: &str) -> Result<Verdict, SharedLimitsError>;

    /// Gives back the message a refused or failed publish was charged.
    async fn refund_message(&self, visitor: &str) -> Result<(), SharedLimitsError>;

    /// Messages `visitor` was charged today.
    async fn messages_today(&self, visitor: &str) -> Result<u32, SharedLimitsError>;

    /// Releases a slot taken by an admitted `open_stream` (in the background: called
    /// when a stream ends, which cannot wait).
    fn close_stream(&self, visitor: &str);
}

/// A visitor's name in the shared store: `ip:<masked address>` or `user:<name>`.
pub fn visitor_name(key: &VisitorKey) -> String {
    match key {
        VisitorKey::V4(a) => format!("ip:{}", std::net::Ipv4Addr::from(*a)),
        VisitorKey::V6(a) => format!("ip:{}", std::net::Ipv6Addr::from(*a)),
        VisitorKey::User(name) => format!("user:{name}"),
    }
}

/// An open-subscription slot held in the shared store; released when dropped.
#[derive(Debug)]
pub struct SharedSlot {
    limits: Arc<dyn SharedLimits>,
    visitor: String,
}

impl SharedSlot {
    /// The slot `limits` admitted for `visitor`.
    pub fn new(limits: Arc<dyn SharedLimits>, visitor: String) -> Self {
        SharedSlot { limits, visitor }
    }
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        self.limits.close_stream(&self.visitor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visitor_names() {
        assert_eq!(visitor_name(&VisitorKey::V4(0x0102_0300)), "ip:1.2.3.0");
        assert_eq!(
            visitor_name(&VisitorKey::V6(0x2001_0db8_0001_0002u128 << 64)),
            "ip:2001:db8:1:2::"
        );
        assert_eq!(
            visitor_name(&VisitorKey::User(Arc::from("phil"))),
            "user:phil"
        );
    }
}
