//! Outgoing webhooks: every message of a topic POSTed to registered HTTP endpoints,
//! signed per Standard Webhooks, delivered at least once with Svix-style retries.
//!
//! ntfy declined outgoing webhooks for SSRF reasons (ntfy#1076); most notifications
//! still end up at another service, so herald delivers them, with the guard rails:
//!
//! - **Durable intent without touching the publish path.** A publish commits its
//!   message to the message store as before. The [`dispatcher`] keeps a durable
//!   cursor (the last message ID it handed to the webhook queue) and reads committed
//!   messages after it (`Herald::committed_after` in the core, which never returns a
//!   message while a smaller ID may still be committing). For each batch it inserts
//!   one delivery row per matching endpoint, with the payload, and advances the cursor
//!   in the same transaction of the webhook store. A crash anywhere loses nothing: the
//!   messages are in the message store and the cursor has not moved past them.
//!   Publishes only wake the dispatcher.
//! - **Workers** ([`worker`]): one per enabled endpoint, with retries on Svix's
//!   schedule.
//! - **Claims with leases** ([`store::WebhookStore::claim`]): an attempt runs under a
//!   lease, so the nodes of a cluster ([`redis`]) share the queue and take over a
//!   dead node's work when its leases expire.
//! - **Isolation.** Each enabled endpoint has its own worker task with its own
//!   concurrency limit; a slow or dead endpoint only ever holds its own slots.
//! - **Safety** ([`client`]): destinations are checked on the address actually
//!   connected to, no redirects, capped response bodies.
//!
//! `docs/WEBHOOKS.md` is the user-facing description.

pub mod cli;
pub mod client;
mod clock;
#[cfg(test)]
mod contract;
pub(crate) mod dispatcher;
mod error;
pub(crate) mod feed;
pub(crate) mod metrics;
pub(crate) mod redis;
pub(crate) mod sign;
pub(crate) mod sqlite;
pub(crate) mod store;
pub(crate) mod token;
pub(crate) mod worker;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Message;

pub use dispatcher::Webhooks;
pub use error::WebhookError;

/// The delays before each attempt (the first is normally `0s`: at once), Svix's.
pub const DEFAULT_RETRY_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,10h";

/// Webhook options (`webhook-*` keys in the option table).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// SQLite file of the webhook store.
    pub file: std::path::PathBuf,
    /// Delay before attempt *n* (index 0: the first attempt).
    pub retry_schedule: Vec<Duration>,
    /// A 2xx must arrive within this time.
    pub timeout: Duration,
    /// An endpoint failing for longer than this is disabled.
    pub disable_after: Duration,
    /// Allow loopback, private, link-local and other non-public destinations.
    pub allow_private: bool,
    /// Non-public networks allowed anyway.
    pub allow_cidrs: Vec<ipnet::IpNet>,
    /// Attempts in flight per endpoint at once.
    pub concurrency: usize,
    /// Webhooks one visitor may register (0: no limit).
    pub visitor_limit: usize,
    /// How long a rotated-out secret keeps signing next to the new one.
    pub secret_grace: Duration,
    /// `webhook-admin-token`: its bearer is a webhook admin in every mode.
    pub admin_token: Option<token::AdminToken>,
}

impl WebhookConfig {
    /// The defaults, with the store in `data_dir`.
    pub fn defaults(data_dir: &std::path::Path) -> WebhookConfig {
        WebhookConfig {
            file: data_dir.join("webhooks.db"),
            retry_schedule: parse_schedule(DEFAULT_RETRY_SCHEDULE).unwrap_or_default(),
            timeout: Duration::from_secs(15),
            disable_after: Duration::from_secs(5 * 86400),
            allow_private: false,
            allow_cidrs: Vec::new(),
            concurrency: 4,
            visitor_limit: 20,
            secret_grace: Duration::from_secs(86400),
            admin_token: None,
        }
    }
}

/// `0s,5s,5m,...`: the delay before each attempt.
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, String> {
    let delays = s
        .split(',')
        .map(|d| {
            crate::time::parse_config_duration(d.trim())
                .ok_or_else(|| format!("{:?} is not a duration such as 0s, 5s, 5m or 2h", d.trim()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if delays.is_empty() || delays.len() > 100 {
        return Err("expected 1 to 100 comma-separated durations".into());
    }
    Ok(delays)
}

/// `10.0.0.0/8,fd00::/8`: networks allowed although not public.
pub fn parse_cidrs(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{c:?} is not a CIDR such as 10.0.0.0/8"))
        })
        .collect()
}

/// Which messages of its topics an endpoint wants (ntfy's subscription filters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Any of these priorities (1..=5; unset counts as 3); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priority: Vec<u8>,
    /// All of these tags; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Filter {
    /// Whether `message` passes. Delete and clear events carry no priority or tags
    /// of their own, so they always pass (a receiver must learn about them).
    pub fn matches(&self, message: &Message) -> bool {
        if message.event != crate::model::EventKind::Message {
            return true;
        }
        (self.priority.is_empty() || self.priority.contains(&message.effective_priority()))
            && self
                .tags
                .iter()
                .all(|t| message.tags.iter().any(|m| m.eq_ignore_ascii_case(t)))
    }
}

/// Whether `topic` matches a webhook's topic, which may be a pattern with `*`
/// (any run of characters, as in ntfy's ACL patterns).
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == topic;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !topic.starts_with(first) || topic.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &topic[first.len()..];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Whether `s` is a valid webhook topic: a topic name, or a pattern of topic-name
/// characters and `*`.
pub fn is_valid_topic_pattern(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && (crate::model::topic::is_valid_name(s)
            || (s.contains('*')
                && s.split('*')
                    .all(|p| p.is_empty() || crate::model::topic::is_valid_name(p))))
}

/// A registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `wh_` + random characters.
    pub id: String,
    /// A topic or a pattern (`alerts-*`).
    pub topic: String,
    pub url: String,
    /// Current secret (`whsec_...`).
    pub secret: String,
    /// The rotated-out secret and until when (unix seconds) it still signs.
    pub previous_secret: Option<(String, i64)>,
    pub filter: Filter,
    pub description: String,
    /// Deliver one message at a time, in order.
    pub ordered: bool,
    /// Who registered it: its visitor key (`user:<name>`, else the client IP). It
    /// counts towards `webhook-visitor-limit`; only a `user:` owner also manages it.
    pub owner: String,
    /// SHA-256 digest of its management token (`whm_...`, [`token`]); `None` for a
    /// webhook registered before tokens existed (admins only, or its user).
    pub token_digest: Option<crate::auth::token::TokenDigest>,
    /// Unix seconds.
    pub created: i64,
    /// Messages with IDs above this one are delivered (those published after it
    /// was registered).
    pub start_after: String,
    /// Why and when (unix seconds) it was disabled.
    pub disabled: Option<(String, i64)>,
    /// Unix seconds of the first failure since the last success.
    pub failing_since: Option<i64>,
}

impl Webhook {
    /// Whether `message` goes to this endpoint.
    pub fn wants(&self, message: &Message) -> bool {
        self.disabled.is_none()
            && message.id > self.start_after
            && topic_matches(&self.topic, &message.topic)
            && self.filter.matches(message)
    }
}

/// What `POST /v1/webhooks` asks for.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub topic: Option<String>,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub filter: Option<Filter>,
    pub description: Option<String>,
    pub ordered: Option<bool>,
}

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrom {
    /// After this message ID.
    AfterId(String),
    /// Messages from this unix time (seconds) on.
    Time(i64),
}

/// New random ID with `prefix` (`wh_...`).
pub fn random_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let tail: String = (0..20)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    #[test]
    fn patterns() {
        assert!(topic_matches("alerts", "alerts"));
        assert!(!topic_matches("alerts", "alerts2"));
        assert!(topic_matches("*", "anything"));
        assert!(topic_matches("alerts-*", "alerts-db"));
        assert!(!topic_matches("alerts-*", "alert"));
        assert!(topic_matches("a*c*e", "abcde"));
        assert!(!topic_matches("a*c*e", "abcdf"));
        assert!(!topic_matches("ab*ba", "aba"));
        assert!(is_valid_topic_pattern("alerts-*"));
        assert!(is_valid_topic_pattern("*"));
        assert!(!is_valid_topic_pattern("a/b"));
        assert!(!is_valid_topic_pattern(""));
    }

    #[test]
    fn filters() {
        let mut m = Message::new(EventKind::Message, "t");
        m.priority = 5;
        m.tags = vec!["db".into(), "warning".into()];
        let f = |priority: Vec<u8>, tags: Vec<&str>| Filter {
            priority,
            tags: tags.into_iter().map(String::from).collect(),
        };
        assert!(f(vec![], vec![]).matches(&m));
        assert!(f(vec![4, 5], vec!["DB"]).matches(&m));
        assert!(!f(vec![3], vec![]).matches(&m));
        assert!(!f(vec![], vec!["db", "x"]).matches(&m));
        let delete = Message::new(EventKind::MessageDelete, "t");
        assert!(f(vec![1], vec!["x"]).matches(&delete));
    }

    #[test]
    fn schedules_and_cidrs() {
        assert_eq!(parse_schedule(DEFAULT_RETRY_SCHEDULE).unwrap().len(), 8);
        assert_eq!(
            parse_schedule("0s,1s,2s").unwrap(),
            vec![
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(2)
            ]
        );
        assert!(parse_schedule("0s,soon").is_err());
        assert_eq!(parse_cidrs("10.0.0.0/8, ::1").unwrap().len(), 2);
        assert!(parse_cidrs("").unwrap().is_empty());
        assert!(parse_cidrs("10.0.0.0/99").is_err());
    }
}
