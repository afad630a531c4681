//! The message cache: durable history behind `since=`, `poll=1` and scheduled delivery.
//!
//! [`Store`] is the seam between herald's core and where messages live. The embedded
//! implementation ([`sqlite::SqliteStore`]) is the default; [`redis::RedisStore`] holds
//! the history of a multi-node cluster (docs/SCALING.md), so the trait speaks only in
//! messages and topics, never in SQL, rows, streams or transactions.
//!
//! Contract every implementation keeps:
//! - [`Store::append`] returns only after the message is committed (an acknowledged
//!   publish is never lost); concurrent appends may be committed together.
//! - Queries return messages ordered by `(time, id)`; IDs are time-sortable
//!   (see `model::id`), so `id > marker` means "published after the marker".
//! - History is also served in pages ([`Store::history_page`]): the pages of a read,
//!   in turn, are what one [`Store::query`] returns, and a page costs the store at
//!   most its `limit` rows per topic, so a client's history answer never has to be
//!   held whole (issue #11: unread `poll=1` answers held in memory).
//! - Scheduled messages (`time` in the future at publish) are stored as not yet
//!   published; [`Store::take_due`] hands each one out exactly once.
//! - A store whose commit is also the delivery ([`Store::commit_delivers`], Redis: one
//!   shared, ordered log feeds history and every node's hub) assigns the ID of an
//!   immediately published message itself and returns it from [`Store::append`].

pub mod log;
pub(crate) mod redis;
pub mod sqlite;
pub(crate) mod writer_thread;

pub use writer_thread::Appending;

use async_trait::async_trait;

use crate::model::Message;

/// Which part of the history a subscriber asked for (`since=`), already resolved
/// by the API layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Nothing from the history.
    None,
    /// Every cached message.
    All,
    /// The single most recent published message of each topic.
    Latest,
    /// Messages whose ID is greater than this one (published after it).
    AfterId(String),
    /// Messages with `time >= ` this unix timestamp.
    Time(i64),
}

/// A history query.
#[derive(Debug, Clone)]
pub struct Query {
    /// The topics to read; results from several topics are merged by `(time, id)`.
    pub topics: Vec<String>,
    pub since: Since,
    /// Also return scheduled messages that are not yet delivered (`scheduled=1`).
    pub include_scheduled: bool,
}

/// Where a paged history read continues ([`Store::history_page`]). Only the store
/// that returned it understands it; the caller hands it back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// After this `(time, id)` (the embedded store's order).
    TimeId(i64, String),
    /// Redis: after stream position `after`, never past `upto`, the position this
    /// node had delivered when the read began (`None`: the reader had not started).
    Position {
        after: (u64, u64),
        upto: Option<(u64, u64)>,
    },
    /// Redis: the streams are done; the pending scheduled messages (`scheduled=1`)
    /// follow from this index of their `(time, id)` order.
    Scheduled(usize),
}

impl Cursor {
    /// The `(time, id)` of `after` for a store whose cursor is [`Cursor::TimeId`] (the
    /// embedded stores); another kind of cursor came from another store: an error.
    pub(crate) fn time_id(after: Option<&Cursor>) -> Result<Option<(i64, String)>, StoreError> {
        match after {
            None => Ok(None),
            Some(Cursor::TimeId(time, id)) => Ok(Some((*time, id.clone()))),
            Some(other) => Err(StoreError::Backend(format!(
                "not a cursor of this store: {other:?}"
            ))),
        }
    }
}

/// A message as the core holds it once it is final: shared with whoever else
/// holds it (its delivery wrapper, `hub::SharedEvent`), so that handing it to a
/// store's writer thread copies no string and allocates nothing. (Each string
/// copied there was also freed there, by another thread than the one that
/// allocated it: the allocator's per-thread caches then miss on both sides.)
pub type SharedMessage = std::sync::Arc<dyn AsRef<Message> + Send + Sync>;

/// A message about to be stored by an embedded store, and its JSON.
pub(crate) struct NewRow {
    message: SharedMessage,
    /// `false`: scheduled (the caller found its `time` still ahead).
    pub(crate) published: bool,
    /// The message as `serde_json` writes it (UTF-8).
    pub(crate) json: bytes::Bytes,
}

impl NewRow {
    pub(crate) fn new(message: SharedMessage, json: bytes::Bytes, scheduled: bool) -> NewRow {
        NewRow {
            message,
            published: !scheduled,
            json,
        }
    }

    fn message(&self) -> &Message {
        (*self.message).as_ref()
    }

    pub(crate) fn id(&self) -> &str {
        &self.message().id
    }

    pub(crate) fn topic(&self) -> &str {
        &self.message().topic
    }

    pub(crate) fn time(&self) -> i64 {
        self.message().time
    }

    pub(crate) fn expires(&self) -> Option<i64> {
        self.message().expires
    }

    pub(crate) fn sequence_id(&self) -> Option<&str> {
        self.message().sequence_id.as_deref()
    }

    /// The sequence ID kept beside the row (SQLite's `sequence_id` column, a log
    /// record's field): none when the sequence is the message's own ID, as it is for
    /// most. Their readers take none so (a cancel matches the ID), and a publish then
    /// stores one copy of its ID fewer. The message's JSON keeps it either way.
    pub(crate) fn stored_sequence_id(&self) -> Option<&str> {
        self.sequence_id().filter(|&sequence| sequence != self.id())
    }

    pub(crate) fn event(&self) -> &'static str {
        self.message().event.as_str()
    }
}

/// [`Store::append`] of an embedded store: encodes the message and hands it to
/// [`Store::append_encoded`].
pub(crate) async fn append_through_encoded(
    store: &dyn Store,
    message: Message,
) -> Result<Message, StoreError> {
    let json = encode(&message)?;
    let scheduled = message.time > crate::model::now_unix();
    let message = std::sync::Arc::new(message);
    store
        .append_encoded(message.clone(), json, scheduled)
        .await?;
    // The writer lets go of its clone before it answers.
    Ok(std::sync::Arc::try_unwrap(message).unwrap_or_else(|shared| (*shared).clone()))
}

/// `message` as `serde_json` writes it: what the embedded stores keep.
pub(crate) fn encode(message: &Message) -> Result<bytes::Bytes, StoreError> {
    serde_json::to_vec(message)
        .map(bytes::Bytes::from)
        .map_err(|e| StoreError::Backend(format!("encoding message: {e}")))
}

/// One page of a history read: up to the asked number of messages, in the query's
/// order, and where the next page starts (`None`: the history is complete).
#[derive(Debug, Default)]
pub struct Page {
    pub messages: Vec<Message>,
    pub next: Option<Cursor>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption, lost connection).
    #[error("store backend: {0}")]
    Backend(String),
    /// A stored row could not be decoded.
    #[error("stored message is malformed: {0}")]
    Corrupt(String),
    /// The store is shutting down or its writer has stopped.
    #[error("store is closed")]
    Closed,
    /// The backend cannot write right now (Redis unreachable; SQLite could not
    /// commit: an I/O error, a lock held elsewhere); nothing was committed that the
    /// caller can rely on, and the caller may retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The disk holding the store is full; nothing was committed. Writes succeed
    /// again by themselves once space is freed.
    #[error("store disk full: {0}")]
    Full(String),
}

/// Counters for `/v1/stats` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages currently held (published and scheduled).
    pub messages: u64,
    /// Scheduled messages not yet delivered.
    pub scheduled: u64,
}

/// Told about every commit a store makes, for metrics. Implementations must be
/// cheap (an atomic add, a histogram update): stores call them on their write path.
/// The store knows nothing about who listens or how it is exported.
pub trait CommitObserver: Send + Sync + 'static {
    /// A transaction with `operations` write operations committed after `elapsed`
    /// (from the start of the transaction to the end of the commit).
    fn committed(&self, operations: usize, elapsed: std::time::Duration);
}

/// Durable message history. See the module docs for the contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Commits `message` (a `message`, `message_delete` or `message_clear` event whose
    /// `expires` is set). A message whose `time` is later than now is stored as
    /// scheduled. Returns after the commit is durable per the configured sync mode,
    /// with the message as stored: a store that [`Self::commit_delivers`] gives an
    /// immediately published message its ID (and a `sequence_id` that was the
    /// message's own ID follows it); others return it unchanged.
    async fn append(&self, message: Message) -> Result<Message, StoreError>;

    /// [`Self::append`] for a store that does not [`Self::commit_delivers`], with the
    /// message's JSON already encoded as `serde_json` writes a [`Message`]: a store
    /// that keeps that form uses these bytes instead of encoding the message again
    /// (the core encodes each published message once, `wire::full_json`).
    /// `scheduled` is the caller's word on whether the message waits for its `time`
    /// (the core decided it once, by the clock, and delivers accordingly), so the
    /// store neither reads the clock again nor can it disagree.
    fn append_encoded(
        &self,
        message: SharedMessage,
        json: bytes::Bytes,
        scheduled: bool,
    ) -> Appending<'_> {
        let _ = (json, scheduled);
        Appending::Boxed(Box::pin(async move {
            self.append((*message).as_ref().clone()).await.map(drop)
        }))
    }

    /// Whether committing a message also delivers it to every node's subscribers, in
    /// commit order (the Redis store: one shared log is history and fan-out). Then the
    /// core neither orders cached publishes itself nor hands them (or due scheduled
    /// messages) to the broker. `false` (the embedded store): the core does both.
    fn commit_delivers(&self) -> bool {
        false
    }

    /// The messages matching `query`, ordered by `(time, id)`.
    async fn query(&self, query: Query) -> Result<Vec<Message>, StoreError>;

    /// The messages matching `query`, a page at a time, in the order of
    /// [`Self::query`]: at most `limit` messages after `after` (`None`: the first
    /// page). Reading every page until `next` is `None` yields what one `query` would
    /// have, so memory per reader is one page whatever the history's size. A page
    /// may hold fewer than `limit` messages (rows that no longer match or do not
    /// decode are skipped) without being the last. `Since::Latest` (one message per
    /// topic) is always a single page.
    async fn history_page(
        &self,
        query: &Query,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page, StoreError>;

    /// Scheduled messages due at or before `now` (unix seconds), marked published in
    /// the same commit, so each is returned once; ordered by `(time, id)`.
    async fn take_due(&self, now: i64) -> Result<Vec<Message>, StoreError>;

    /// The delivery time of the earliest scheduled message not yet delivered.
    async fn next_due(&self) -> Result<Option<i64>, StoreError>;

    /// Deletes scheduled, not yet delivered messages of `topic` with `sequence_id`
    /// (replacing or cancelling a scheduled notification). Returns how many.
    async fn cancel_scheduled(&self, topic: &str, sequence_id: &str) -> Result<u64, StoreError>;

    /// Deletes messages whose `expires` is before `now`. Returns how many.
    async fn prune_expired(&self, now: i64) -> Result<u64, StoreError>;

    /// Every stored message, published or scheduled, of any topic, whose ID is greater
    /// than `after`, in ID order, at most `limit`: the feed the webhook dispatcher reads
    /// (through `Herald::committed_after`). A store that cannot serve it yet reports a backend error.
    async fn after_id(&self, after: &str, limit: usize) -> Result<Vec<Message>, StoreError> {
        let _ = (after, limit);
        Err(StoreError::Backend(
            "this store does not serve the webhook feed".into(),
        ))
    }

    /// Current counts.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Checks that the store can commit now (readiness probe). Fails while
    /// [`Self::writes_failing`]; a store whose writes are failing tries a real write
    /// here, so readiness comes back without waiting for traffic.
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Whether the last commit failed and none has succeeded since (a full disk, an
    /// I/O error). Cheap (an atomic load): read by metrics.
    fn writes_failing(&self) -> bool {
        false
    }

    /// Whether the store can still serve at all (liveness, `/healthz`): `false` once
    /// its writer is gone for good, which only a restart repairs. Cheap, no I/O. A
    /// backend that is down but may come back (Redis) is still alive.
    fn is_alive(&self) -> bool {
        true
    }

    /// Commits whatever is pending and stops accepting writes.
    async fn close(&self);
}

/// Helpers for the stores' contract tests.
#[cfg(test)]
pub(crate) mod contract {
    use super::{Message, Query, Since, Store};
    use crate::model::EventKind;

    /// A message on `topic` at `time`, expiring an hour later.
    pub(crate) fn msg(topic: &str, time: i64) -> Message {
        let mut m = Message::new(EventKind::Message, topic);
        m.time = time;
        m.expires = Some(time + 3600);
        m.message = format!("at {time}");
        m
    }

    pub(crate) fn q(topics: &[&str], since: Since, include_scheduled: bool) -> Query {
        Query {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            since,
            include_scheduled,
        }
    }

    pub(crate) fn ids<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Vec<&'a str> {
        messages.into_iter().map(|m| m.id.as_str()).collect()
    }

    /// Reads `query` a page of `limit` at a time to the end, checking each page's
    /// size; returns every message and the number of pages.
    pub(crate) async fn read_pages(
        store: &dyn Store,
        query: &Query,
        limit: usize,
    ) -> (Vec<Message>, usize) {
        let mut all = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = store
                .history_page(query, cursor.as_ref(), limit)
                .await
                .unwrap();
            pages += 1;
            assert!(
                page.messages.len() <= limit || query.since == super::Since::Latest,
                "a page holds at most `limit`"
            );
            all.extend(page.messages);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return (all, pages),
            }
            assert!(pages < 10_000, "paging does not end");
        }
    }

    /// Every way of paging through `query` returns what one `query` does.
    pub(crate) async fn pages_match_query(store: &dyn Store, query: &Query) {
        let whole = store.query(query.clone()).await.unwrap();
        for limit in [1, 2, 3, 7, 1000] {
            let (paged, pages) = read_pages(store, query, limit).await;
            let ids = |v: &[Message]| v.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
            assert_eq!(
                ids(&paged),
                ids(&whole),
                "{query:?} paged by {limit} differs from one query"
            );
            if limit == 1 && whole.len() > 3 && query.since != super::Since::Latest {
                assert!(pages >= whole.len(), "one message per page");
            }
        }
    }
}
