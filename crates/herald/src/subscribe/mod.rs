//! The subscription core every stream path shares: `api::subscribe` (JSON, SSE and
//! raw streams and polls over hyper), `api::ws` (WebSocket over axum) and
//! `listener::direct` (the same streams written straight from the fan-out), and the
//! transports still to come.
//!
//! A transport turns its wire form into a [`SubscribeRequest`] ([`Streams::validate`]:
//! topics, access, the global topic limit, parameters, in ntfy's order), takes a
//! slot ([`Streams::admit`], `visitor-subscription-limit` and the topic tokens),
//! registers in the hub, then replays the backlog ([`Streams::backlog`]) before the
//! live events; it encodes what it sends with [`crate::wire`]. The keepalive policy
//! (how long a silent peer is kept, [`PONG_GRACE`]) is also decided here, once.
//!
//! Errors are ntfy's (`ApiError`) for now, as the rest of the core's.

mod backlog;
mod params;
mod slots;

use std::sync::Arc;
use std::time::Duration;

pub use backlog::{Backlog, resolve_since};
pub use params::{Filters, SinceParam, SubscribeParams};
pub use slots::{SlotGuard, SubscriptionSlots};

use crate::auth::{Authorizer, Permission, Principal};
use crate::core::Herald;
use crate::error::ApiError;
use crate::limits::{Limits, Refusal, Visitor};
use crate::model::{now_unix, topic};
use crate::store::Query;

/// How long a WebSocket peer may stay silent beyond one keepalive interval before
/// it is closed (ntfy: pong wait = keepalive + 15 s).
pub const PONG_GRACE: Duration = Duration::from_secs(15);

/// Whether a WebSocket peer silent for `silent` is gone, with pings every
/// `keepalive`.
pub fn peer_is_gone(silent: Duration, keepalive: Duration) -> bool {
    silent > keepalive + PONG_GRACE
}

/// Why a topic list (`a,b`) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicListError {
    /// A name outside ntfy's topic grammar.
    #[error("invalid topic name")]
    Invalid,
    /// One of ntfy's reserved names.
    #[error("reserved topic name")]
    Disallowed,
}

impl From<TopicListError> for ApiError {
    fn from(e: TopicListError) -> Self {
        match e {
            TopicListError::Invalid => ApiError::TOPIC_INVALID,
            TopicListError::Disallowed => ApiError::TOPIC_DISALLOWED,
        }
    }
}

/// The topics of a comma-separated list, each checked, duplicates dropped.
pub fn parse_topic_list(list: &str) -> Result<Vec<String>, TopicListError> {
    let mut topics = Vec::new();
    for name in list.split(',') {
        if !topic::is_valid_name(name) {
            return Err(TopicListError::Invalid);
        }
        if topic::DEFAULT_DISALLOWED_TOPICS.contains(&name) {
            return Err(TopicListError::Disallowed);
        }
        if !topics.iter().any(|t| t == name) {
            topics.push(name.to_string());
        }
    }
    Ok(topics)
}

/// A validated subscription, whatever transport it came from.
pub struct SubscribeRequest {
    pub topics: Vec<String>,
    /// The topic path segment as given (`a,b`): the `topic` of `open` and `keepalive`.
    pub topic_label: String,
    pub params: SubscribeParams,
}

/// What the subscription core needs of the server's state, borrowed: the transports
/// hold it in their own state (`api::AppState`) and lend it per request.
#[derive(Clone, Copy)]
pub struct Streams<'a> {
    pub herald: &'a Herald,
    pub auth: &'a Authorizer,
    pub limits: &'a Limits,
    pub slots: &'a Arc<SubscriptionSlots>,
}

impl<'a> Streams<'a> {
    /// Validates a subscription in ntfy's order: not draining, topics, read access
    /// to every topic, the global topic limit, then the parameters (`params`, read
    /// by the transport from its wire form, only once the rest passed).
    pub fn validate(
        &self,
        principal: &Principal,
        topics: &str,
        params: impl FnOnce() -> Result<SubscribeParams, ApiError>,
    ) -> Result<SubscribeRequest, ApiError> {
        if self.herald.is_draining() {
            return Err(ApiError::UNAVAILABLE);
        }
        let topic_list = parse_topic_list(topics)?;
        // Every topic of a multi-topic subscription must be readable.
        self.auth
            .authorize_all(principal, &topic_list, Permission::Read)?;
        let hub = self.herald.hub();
        let new_topics = self.new_topic_count(&topic_list);
        if new_topics > 0
            && hub.topic_count() + new_topics > self.herald.config().global_topic_limit
        {
            return Err(ApiError::TOO_MANY_TOPICS);
        }
        Ok(SubscribeRequest {
            topics: topic_list,
            topic_label: topics.to_string(),
            params: params()?,
        })
    }

    /// Read access to every topic of `topics`, checked before anything else when
    /// access control is on (ntfy does so for WebSocket before the upgrade).
    pub fn authorize_read(&self, principal: &Principal, topics: &str) -> Result<(), ApiError> {
        if !self.auth.is_enabled() {
            return Ok(());
        }
        let list = parse_topic_list(topics)?;
        self.auth
            .authorize_all(principal, &list, Permission::Read)?;
        Ok(())
    }

    /// How many of `topics` have no subscribers yet (subscribing creates them).
    pub fn new_topic_count(&self, topics: &[String]) -> usize {
        let hub = self.herald.hub();
        topics.iter().filter(|t| !hub.has_topic(t)).count()
    }

    /// A stream's slot and its new topics' tokens, on the cluster's shared limits
    /// (one round trip) or this node's; refused with the limit's `Retry-After`.
    pub async fn admit(&self, visitor: &Visitor, topics: &[String]) -> Result<SlotGuard, Refusal> {
        let new_topics = self.new_topic_count(topics);
        if self.limits.is_shared()
            && let Some(admitted) = self
                .limits
                .open_stream_shared(visitor, false, new_topics)
                .await
        {
            return admitted.map(|slot| self.slots.shared_guard(slot));
        }
        let slot = self.slots.acquire(visitor)?;
        self.limits.admit_new_topics(visitor, new_topics)?;
        Ok(slot)
    }

    /// The direct path's admission on this node's limits: a slot, the request and
    /// the new topics' tokens, or `None` with nothing charged (the API then charges
    /// and answers the refusal, once).
    pub fn admit_uncharged(&self, visitor: &Visitor, new_topics: usize) -> Option<SlotGuard> {
        let slot = self.slots.acquire(visitor).ok()?;
        self.limits.admit_subscription(visitor, new_topics).ok()?;
        Some(slot)
    }

    /// Starts reading the backlog `req` asked for, a page at a time.
    pub async fn backlog(&self, req: &SubscribeRequest, poll: bool) -> Result<Backlog, ApiError> {
        let cache_secs = self.herald.config().cache_duration.as_secs() as i64;
        let since = resolve_since(&req.params.since, poll, now_unix(), cache_secs);
        let pages = self
            .herald
            .history_pages(Query {
                topics: req.topics.clone(),
                since,
                include_scheduled: req.params.scheduled,
            })
            .await?;
        Ok(Backlog::new(pages, req.params.filters.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_lists() {
        assert_eq!(parse_topic_list("a,b,a"), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(parse_topic_list("a,"), Err(TopicListError::Invalid));
        assert_eq!(parse_topic_list("docs"), Err(TopicListError::Disallowed));
    }

    #[test]
    fn pong_grace() {
        let keepalive = Duration::from_secs(45);
        assert!(!peer_is_gone(Duration::from_secs(60), keepalive));
        assert!(peer_is_gone(Duration::from_secs(61), keepalive));
    }
}
