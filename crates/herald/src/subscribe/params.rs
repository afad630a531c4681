//! What a subscription asks for besides its topics, as domain types: which cached
//! messages first ([`SinceParam`]), the filters ([`Filters`]) and the rest
//! ([`SubscribeParams`]). Reading them from ntfy's parameter names is the HTTP
//! edge's job (`api::params`); every transport hands the same types to the
//! subscription core.

use crate::model::Message;

/// Which cached messages a subscription wants first (`since=`, docs/COMPATIBILITY.md
/// §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinceParam {
    /// No `since`: all cached messages when polling, none when streaming.
    Unset,
    /// `all`: every cached message.
    All,
    /// `none`: no cached messages.
    None,
    /// `latest`: the most recent published message of each topic.
    Latest,
    /// A message ID: messages after it (all of them if the ID is unknown).
    Id(String),
    /// Messages with `time` at or after this unix second (from a timestamp or a
    /// duration back from now).
    Time(i64),
}

/// Subscription filters (`id`, `message`, `title`, `priority`, `tags` parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Exact message ID.
    pub id: Option<String>,
    /// Exact message text.
    pub message: Option<String>,
    /// Exact title.
    pub title: Option<String>,
    /// Any of these priorities (an unset priority counts as 3).
    pub priorities: Vec<u8>,
    /// All of these tags.
    pub tags: Vec<String>,
}

impl Filters {
    /// Whether `m` passes. Filters only apply to content events (`message`,
    /// `message_delete`, `message_clear`); `open`, `keepalive` and `poll_request`
    /// always pass.
    pub fn pass(&self, m: &Message) -> bool {
        if !m.event.is_content() {
            return true;
        }
        let matches = |filter: &Option<String>, actual: &str| {
            filter.as_deref().is_none_or(|wanted| wanted == actual)
        };
        matches(&self.id, &m.id)
            && matches(&self.message, &m.message)
            && matches(&self.title, &m.title)
            && (self.priorities.is_empty() || self.priorities.contains(&m.effective_priority()))
            && self.tags.iter().all(|tag| m.tags.contains(tag))
    }

    /// Whether no filter is set (every message passes).
    pub fn is_empty(&self) -> bool {
        self == &Filters::default()
    }
}

/// Everything a subscribe request may say besides its topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeParams {
    /// Return cached messages and close, without `open` or keepalive events.
    pub poll: bool,
    pub since: SinceParam,
    /// Include scheduled messages that are not delivered yet.
    pub scheduled: bool,
    pub filters: Filters,
}
