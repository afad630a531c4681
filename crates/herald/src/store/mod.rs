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
//! - Scheduled messages (`time` in the future at publish) are stored as not yet
//!   published; [`Store::take_due`] hands each one out exactly once.
//! - A store whose commit is also the delivery ([`Store::commit_delivers`], Redis: one
//!   shared, ordered log feeds history and every node's hub) assigns the ID of an
//!   immediately published message itself and returns it from [`Store::append`].

pub mod redis;
pub mod sqlite;

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

    /// Whether committing a message also delivers it to every node's subscribers, in
    /// commit order (the Redis store: one shared log is history and fan-out). Then the
    /// core neither orders cached publishes itself nor hands them (or due scheduled
    /// messages) to the broker. `false` (the embedded store): the core does both.
    fn commit_delivers(&self) -> bool {
        false
    }

    /// The messages matching `query`, ordered by `(time, id)`.
    async fn query(&self, query: Query) -> Result<Vec<Message>, StoreError>;

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
    /// (`crate::webhook`). A store that cannot serve it yet reports a backend error.
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
