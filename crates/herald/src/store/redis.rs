//! The cluster store: history, scheduled messages and the fan-out log in Redis, so any
//! number of herald nodes sharing one Redis behave as one server (docs/SCALING.md).
//!
//! Redis orders everything. Publishing a cached message is one Lua script that appends
//! it to the cluster's **log** stream (`XADD ... *`, which assigns the position) and,
//! under the same position, to its topic's history stream. The message's herald ID is
//! that position written as a 12-character ID ([`message_id`]), so IDs are unique
//! cluster-wide and increase in commit order, and live delivery (every node reads the
//! log in order, `broker::redis`), history (`XRANGE` on the topic streams) and
//! `since=<id>` (a stream position) all agree. Hence [`Store::commit_delivers`]: the
//! core does not sequence or broadcast what this store commits.
//!
//! Scheduled messages wait in a sorted set; one script takes the due ones and appends
//! them to the log and their topics in the same step, so exactly one node delivers
//! each, and a node that dies right after cannot lose them.
//!
//! Key layout (`P` is `redis-key-prefix`, default `herald:`), see [`Keys`]:
//! `P log` (stream: every event, trimmed to about [`LOG_MAX_LEN`] entries),
//! `P t:<topic>` (stream: a topic's cached messages, trimmed by `cache-duration`),
//! `P topics` (set: topics with a history stream), `P sched` (sorted set: scheduled
//! message ID by due time), `P sched:m` (hash: scheduled ID → `topic\n<json>`),
//! `P s:<topic>` (set: a topic's scheduled IDs).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::streams::{StreamId, StreamRangeReply};
use redis::{RedisError, Script};

use super::{Cursor, Page, Query, Since, Store, StoreError, StoreStats};
use crate::cluster;
use crate::cluster::connector::{Conn, RedisConnector};
use crate::cluster::redis::{KeyPrefix, OP_TIMEOUT, RedisFailure, script};
use crate::cluster::replicas::Ticket;
use crate::model::{Message, id, now_unix, now_unix_ms};

/// About how many events the log keeps (`XADD MAXLEN ~`). A node that loses Redis for
/// longer than it takes the cluster to publish this many events cannot replay the gap
/// from the log; it then closes its subscribers, who resume with `since=` from history.
pub const LOG_MAX_LEN: u64 = 100_000;

/// Longest a publish waits for this node's reader to deliver it before it is
/// acknowledged anyway (it is committed; only read-your-writes on this node is late).
const DELIVERY_WAIT: Duration = Duration::from_secs(2);

/// Most scheduled messages one `take_due` moves (the scheduler calls again at once).
const TAKE_DUE_BATCH: u32 = 1000;

/// How far this node's log reader has handed events to the hub: shared by the store
/// (history shows only what live delivery has passed, and a publish is acknowledged
/// once this node has delivered it) and `broker::redis`'s reader (which advances it).
///
/// This is the cluster form of the core's sequencer rule, "history hides what live
/// delivery has not reached": a subscriber registers, then reads history up to the
/// reader's position; everything after that position reaches it live. The reader
/// dispatches a batch and advances the position under the write lock, so a history
/// read never sees a position whose events are still being dispatched.
#[derive(Debug)]
pub struct Delivered {
    lock: tokio::sync::RwLock<()>,
    position: tokio::sync::watch::Sender<Option<(u64, u64)>>,
}

impl Default for Delivered {
    fn default() -> Self {
        Delivered {
            lock: tokio::sync::RwLock::new(()),
            position: tokio::sync::watch::Sender::new(None),
        }
    }
}

impl Delivered {
    /// The reader's position, once no dispatch is under way; `None` before the
    /// reader is started.
    async fn position(&self) -> Option<(u64, u64)> {
        let _no_dispatch = self.lock.read().await;
        *self.position.borrow()
    }

    /// Waits (at most `limit`) until the reader has delivered `position`.
    async fn reached(&self, position: (u64, u64), limit: Duration) {
        let mut rx = self.position.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|p| p.is_none_or(|p| p >= position))).await;
    }

    /// Held by the reader while it dispatches a batch.
    pub(crate) async fn dispatching(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.lock.write().await
    }

    /// Sets the reader's position (call while holding [`Self::dispatching`]).
    pub(crate) fn advance(&self, entry: &str) {
        if let Some(p) = entry_parts(entry) {
            self.position.send_replace(Some(p));
        }
    }
}

impl From<RedisFailure> for StoreError {
    fn from(e: RedisFailure) -> Self {
        match e {
            RedisFailure::Unavailable(e) => StoreError::Unavailable(e),
            RedisFailure::Failed(e) => StoreError::Backend(e),
        }
    }
}

/// Runs one Redis operation with the shared time limit, failing with a store error.
async fn timed<T>(op: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
    cluster::redis::timed(op).await.map_err(StoreError::from)
}

/// Acknowledged only once replicated (`redis-min-replicas-acked`, `cluster::replicas`).
async fn confirm(conn: &Conn, ticket: Ticket) -> Result<(), StoreError> {
    conn.confirm(ticket)
        .await
        .map_err(|e| StoreError::from(RedisFailure::from(e)))
}

/// Every key herald uses, under one prefix (tests and separate clusters use their own).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: KeyPrefix,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: KeyPrefix::new(prefix),
        }
    }

    /// The log stream: every event in cluster order; each node reads it for fan-out.
    pub fn log(&self) -> String {
        self.prefix.key("log")
    }

    /// A topic's history stream.
    pub fn topic(&self, topic: &str) -> String {
        self.prefix.key(format_args!("t:{topic}"))
    }

    /// The set of topics that have a history stream (for the expiry sweep and stats).
    pub fn topics(&self) -> String {
        self.prefix.key("topics")
    }

    /// Scheduled message IDs by due time (unix seconds).
    pub fn sched(&self) -> String {
        self.prefix.key("sched")
    }

    /// Scheduled messages: ID → `topic\n<json>`.
    pub fn sched_messages(&self) -> String {
        self.prefix.key("sched:m")
    }

    /// A topic's scheduled message IDs (for `scheduled=1` and cancelling).
    pub fn sched_topic(&self, topic: &str) -> String {
        self.prefix.key(format_args!("s:{topic}"))
    }

    /// The prefix itself, for scripts that derive per-topic keys.
    fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }
}

/// A stream entry ID `<ms>-<seq>` as its numeric parts (for ordering and IDs).
pub(crate) fn entry_parts(entry: &str) -> Option<(u64, u64)> {
    let (ms, seq) = entry.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The herald ID of the message at stream position `entry` (`<ms>-<seq>`).
pub fn message_id(entry: &str) -> Option<String> {
    let (ms, seq) = entry_parts(entry)?;
    id::from_parts(ms, seq)
}

/// The stream position a herald ID stands for: its time and counter as `<ms>-<seq>`.
/// IDs this store assigned map back to their own entry; others (scheduled messages,
/// IDs from another store) map to the position of their creation time.
pub fn entry_id(message_id: &str) -> Option<String> {
    let (ms, seq) = id::parts(message_id)?;
    Some(format!("{ms}-{seq}"))
}

/// A message as stored in a stream: an immediately published message leaves its ID
/// empty (its position is its ID) and its `sequence_id` out when it is its own ID.
pub(crate) fn encode_positioned(message: &Message) -> Result<String, StoreError> {
    let mut stored = message.clone();
    if stored.sequence_id.as_deref() == Some(stored.id.as_str()) {
        stored.sequence_id = None;
    }
    stored.id.clear();
    encode(&stored)
}

/// A message as stored with its own ID (scheduled, or not cached).
pub(crate) fn encode(message: &Message) -> Result<String, StoreError> {
    serde_json::to_string(message).map_err(|e| StoreError::Backend(format!("encoding: {e}")))
}

/// Decodes a stream entry's message: an empty ID becomes the entry's position, and a
/// missing `sequence_id` the ID (see [`encode_positioned`]).
pub(crate) fn decode(entry: &str, json: &str) -> Result<Message, StoreError> {
    let mut message: Message =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{entry}: {e}")))?;
    if message.id.is_empty() {
        message.id = message_id(entry)
            .ok_or_else(|| StoreError::Corrupt(format!("stream position {entry:?}")))?;
    }
    if message.sequence_id.is_none() {
        message.sequence_id = Some(message.id.clone());
    }
    Ok(message)
}

/// Appends one event to the log and, if `cached`, to its topic's history, under one
/// position; returns the position. The topic append can only fail if its stream is
/// ahead of the log (the log was deleted and the clock went back): the log entry is
/// then removed again in the same script, so nothing half-done is ever seen.
const PUBLISH_LUA: &str = include_str!("redis/publish.lua");

/// Moves scheduled messages due at or before ARGV[1] to the log and their topics.
/// Returns `[position, json, ...]`.
const TAKE_DUE_LUA: &str = include_str!("redis/take_due.lua");

/// Removes a topic's scheduled messages whose `sequence_id` is ARGV[1].
const CANCEL_LUA: &str = include_str!("redis/cancel.lua");

/// Trims a topic's history to positions at or after ARGV[1]; forgets an emptied topic.
const PRUNE_LUA: &str = include_str!("redis/prune.lua");

/// The shared log's publish step, also used by `broker::redis` for uncached events.
pub(crate) struct LogWriter {
    conn: Conn,
    keys: Keys,
    script: Script,
    cache_ms: u64,
}

impl LogWriter {
    pub(crate) fn new(conn: Conn, keys: Keys, cache_duration: Duration) -> Self {
        LogWriter {
            conn,
            keys,
            script: script(&[PUBLISH_LUA]),
            cache_ms: cache_duration.as_millis() as u64,
        }
    }

    /// Appends `json` for `topic` to the log (and its history if `cached`).
    /// Returns the position.
    pub(crate) async fn append(
        &self,
        topic: &str,
        json: &str,
        cached: bool,
    ) -> Result<String, StoreError> {
        let min_id = (now_unix_ms().max(0) as u64).saturating_sub(self.cache_ms);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(self.keys.log())
            .key(self.keys.topic(topic))
            .key(self.keys.topics())
            .arg(topic)
            .arg(json)
            .arg(if cached { "1" } else { "0" })
            .arg(LOG_MAX_LEN)
            .arg(min_id);
        let mut conn = self.conn.clone();
        let ticket = conn.ticket().await;
        let position = timed(invocation.invoke_async(&mut conn)).await?;
        confirm(&conn, ticket).await?;
        Ok(position)
    }
}

/// The Redis-backed [`Store`]. See the module docs.
pub struct RedisStore {
    conn: Conn,
    delivered: Arc<Delivered>,
    keys: Keys,
    log: LogWriter,
    cache_ms: u64,
    take_due: Script,
    cancel: Script,
    prune: Script,
    closed: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis at `url`, under `prefix`, keeping history for
    /// `cache_duration`. Connects lazily: an unreachable Redis makes operations fail
    /// (503, `/readyz` down) until it is back, never start-up. `delivered` is shared
    /// with this node's `broker::redis::RedisBroker`.
    pub fn open(
        url: &RedisConnector,
        prefix: &str,
        cache_duration: Duration,
        delivered: Arc<Delivered>,
    ) -> Result<Self, StoreError> {
        let conn = url.connect(OP_TIMEOUT);
        let keys = Keys::new(prefix);
        Ok(RedisStore {
            log: LogWriter::new(conn.clone(), keys.clone(), cache_duration),
            conn,
            delivered,
            keys,
            cache_ms: cache_duration.as_millis() as u64,
            take_due: script(&[TAKE_DUE_LUA]),
            cancel: script(&[CANCEL_LUA]),
            prune: script(&[PRUNE_LUA]),
            closed: AtomicBool::new(false),
        })
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Relaxed) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    fn min_id(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.cache_ms)
    }

    /// Every topic that has a history stream.
    async fn topic_names(&self, conn: &mut Conn) -> Result<Vec<String>, StoreError> {
        timed(
            redis::cmd("SMEMBERS")
                .arg(self.keys.topics())
                .query_async(conn),
        )
        .await
    }

    async fn schedule(&self, message: &Message) -> Result<(), StoreError> {
        let value = format!("{}\n{}", message.topic, encode(message)?);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(self.keys.sched(), &message.id, message.time)
            .ignore()
            .hset(self.keys.sched_messages(), &message.id, value)
            .ignore()
            .sadd(self.keys.sched_topic(&message.topic), &message.id)
            .ignore();
        let mut conn = self.conn();
        let ticket = conn.ticket().await;
        timed(pipe.query_async::<()>(&mut conn)).await?;
        confirm(&conn, ticket).await
    }

    /// Pending scheduled messages of `topics`, ordered by `(time, id)`.
    async fn pending(&self, topics: &[&String]) -> Result<Vec<Message>, StoreError> {
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        for topic in topics {
            pipe.smembers(self.keys.sched_topic(topic));
        }
        let ids: Vec<Vec<String>> = timed(pipe.query_async(&mut conn)).await?;
        let ids: Vec<String> = ids.into_iter().flatten().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let raws: Vec<Option<String>> = timed(
            redis::cmd("HMGET")
                .arg(self.keys.sched_messages())
                .arg(&ids)
                .query_async(&mut conn),
        )
        .await?;
        let mut out = Vec::new();
        for raw in raws.into_iter().flatten() {
            let Some((_, json)) = raw.split_once('\n') else {
                continue;
            };
            match decode("scheduled", json) {
                Ok(m) => out.push(m),
                Err(e) => tracing::warn!(error = %e, "skipping undecodable scheduled message"),
            }
        }
        out.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        Ok(out)
    }
}

impl RedisStore {
    /// A page of the pending scheduled messages of a history read, from index `from`
    /// of their `(time, id)` order. The set is read again for each page (scheduled
    /// messages are few: what was scheduled and not yet due), so a page holds only
    /// `limit` of them; one that became due meanwhile may be skipped or repeated, as it
    /// may be between a `query` and the next.
    async fn pending_page(
        &self,
        query: &Query,
        topics: &[&String],
        from: usize,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let limit = limit.max(1);
        let pending: Vec<Message> = self
            .pending(topics)
            .await?
            .into_iter()
            .filter(|m| match query.since {
                Since::Time(t) => m.time >= t,
                _ => true,
            })
            .collect();
        let end = from.saturating_add(limit);
        let next = (pending.len() > end).then_some(Cursor::Scheduled(end));
        Ok(Page {
            messages: pending.into_iter().skip(from).take(limit).collect(),
            next,
        })
    }
}

/// Decodes stream entries, skipping (with a warning) any that do not decode.
fn decode_entries(entries: Vec<StreamId>, out: &mut Vec<((u64, u64), Message)>) {
    for entry in entries {
        let Some(position) = entry_parts(&entry.id) else {
            continue;
        };
        let json: Option<String> = entry.get("m");
        match json.as_deref().map(|j| decode(&entry.id, j)) {
            Some(Ok(m)) => out.push((position, m)),
            Some(Err(e)) => tracing::warn!(error = %e, "skipping undecodable stored message"),
            None => tracing::warn!(entry = %entry.id, "stream entry without a message"),
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn append(&self, mut message: Message) -> Result<Message, StoreError> {
        self.check_open()?;
        if message.time > now_unix() {
            self.schedule(&message).await?;
            return Ok(message);
        }
        let json = encode_positioned(&message)?;
        let entry = self.log.append(&message.topic, &json, true).await?;
        let (Some(id), Some(position)) = (message_id(&entry), entry_parts(&entry)) else {
            return Err(StoreError::Backend(format!(
                "unexpected stream position {entry:?}"
            )));
        };
        // Acknowledged once this node delivers it too: a poll here right after the
        // acknowledgement sees it, as on a single node.
        self.delivered.reached(position, DELIVERY_WAIT).await;
        if message.sequence_id.as_deref() == Some(message.id.as_str()) {
            message.sequence_id = Some(id.clone());
        }
        message.id = id;
        Ok(message)
    }

    fn commit_delivers(&self) -> bool {
        true
    }

    async fn query(&self, query: Query) -> Result<Vec<Message>, StoreError> {
        if query.since == Since::None || query.topics.is_empty() {
            return Ok(Vec::new());
        }
        let topics: Vec<&String> = query
            .topics
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Read before the history: what is past it reaches a subscriber live.
        let delivered = self.delivered.position().await;
        let mut pipe = redis::pipe();
        for topic in &topics {
            let key = self.keys.topic(topic);
            match &query.since {
                Since::None => unreachable!("handled above"),
                Since::All => pipe.xrange_all(key),
                Since::Latest => pipe.xrevrange_count(key, "+", "-", 1),
                Since::AfterId(marker) => match entry_id(marker) {
                    Some(start) => pipe.xrange(key, format!("({start}"), "+"),
                    None => pipe.xrange_all(key),
                },
                Since::Time(t) => pipe.xrange(key, t.max(&0).saturating_mul(1000), "+"),
            };
        }
        let mut conn = self.conn();
        let replies: Vec<StreamRangeReply> = timed(pipe.query_async(&mut conn)).await?;
        let mut found = Vec::new();
        for reply in replies {
            decode_entries(reply.ids, &mut found);
        }
        if let Some(delivered) = delivered {
            found.retain(|(position, _)| *position <= delivered);
        }
        // Several topics merge by position, which is commit order cluster-wide.
        found.sort_by_key(|(position, _)| *position);
        let now = now_unix();
        let mut messages: Vec<Message> = found
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| m.expires.is_none_or(|e| e >= now))
            .filter(|m| match query.since {
                Since::Time(t) => m.time >= t,
                _ => true,
            })
            .collect();
        if query.include_scheduled && query.since != Since::Latest {
            let pending = self.pending(&topics).await?;
            messages.extend(pending.into_iter().filter(|m| match query.since {
                Since::Time(t) => m.time >= t,
                _ => true,
            }));
        }
        Ok(messages)
    }

    async fn history_page(
        &self,
        query: &Query,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        if query.since == Since::None || query.topics.is_empty() {
            return Ok(Page::default());
        }
        let topics: Vec<&String> = query
            .topics
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let (after, upto) = match after {
            // Fixed for the whole read, as for one `query`: what is past it reaches a
            // subscriber live.
            None => (None, self.delivered.position().await),
            Some(Cursor::Position { after, upto }) => (Some(*after), *upto),
            Some(Cursor::Scheduled(from)) => {
                return self.pending_page(query, &topics, *from, limit).await;
            }
            Some(other) => {
                return Err(StoreError::Backend(format!(
                    "not a cursor of this store: {other:?}"
                )));
            }
        };
        if query.since == Since::Latest {
            // At most one message per topic: always a single page.
            if after.is_some() {
                return Ok(Page::default());
            }
            let messages = self.query(query.clone()).await?;
            return Ok(Page {
                messages,
                next: None,
            });
        }
        let limit = limit.max(1);
        let start = match (after, &query.since) {
            (Some((ms, seq)), _) => format!("({ms}-{seq}"),
            (None, Since::AfterId(marker)) => match entry_id(marker) {
                Some(start) => format!("({start}"),
                None => "-".to_string(),
            },
            (None, Since::Time(t)) => t.max(&0).saturating_mul(1000).to_string(),
            (None, _) => "-".to_string(),
        };
        let end = upto.map_or_else(|| "+".to_string(), |(ms, seq)| format!("{ms}-{seq}"));
        let mut pipe = redis::pipe();
        for topic in &topics {
            pipe.xrange_count(self.keys.topic(topic), &start, &end, limit);
        }
        let mut conn = self.conn();
        let replies: Vec<StreamRangeReply> = timed(pipe.query_async(&mut conn)).await?;
        // Every entry read, decodable or not, so the cursor moves past a bad one.
        let mut found: Vec<((u64, u64), Option<Message>)> = Vec::new();
        let mut more = false;
        for reply in replies {
            more |= reply.ids.len() >= limit;
            for entry in reply.ids {
                let Some(position) = entry_parts(&entry.id) else {
                    continue;
                };
                let json: Option<String> = entry.get("m");
                let message = match json.as_deref().map(|j| decode(&entry.id, j)) {
                    Some(Ok(m)) => Some(m),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "skipping undecodable stored message");
                        None
                    }
                    None => {
                        tracing::warn!(entry = %entry.id, "stream entry without a message");
                        None
                    }
                };
                found.push((position, message));
            }
        }
        // Several topics merge by position, which is commit order cluster-wide.
        found.sort_by_key(|(position, _)| *position);
        if found.len() > limit {
            found.truncate(limit);
            more = true;
        }
        let last = found.last().map(|(position, _)| *position);
        let now = now_unix();
        let messages: Vec<Message> = found
            .into_iter()
            .filter_map(|(_, m)| m)
            .filter(|m| m.expires.is_none_or(|e| e >= now))
            .filter(|m| match query.since {
                Since::Time(t) => m.time >= t,
                _ => true,
            })
            .collect();
        if let (true, Some(after)) = (more, last) {
            return Ok(Page {
                messages,
                next: Some(Cursor::Position { after, upto }),
            });
        }
        // The streams are done; the pending scheduled messages come last, as in
        // `query`.
        Ok(Page {
            messages,
            next: query.include_scheduled.then_some(Cursor::Scheduled(0)),
        })
    }

    async fn take_due(&self, now: i64) -> Result<Vec<Message>, StoreError> {
        self.check_open()?;
        let min_id = self.min_id(now_unix_ms().max(0) as u64);
        let mut invocation = self.take_due.prepare_invoke();
        invocation
            .key(self.keys.sched())
            .key(self.keys.sched_messages())
            .key(self.keys.log())
            .key(self.keys.topics())
            .arg(now)
            .arg(LOG_MAX_LEN)
            .arg(min_id)
            .arg(self.keys.prefix())
            .arg(TAKE_DUE_BATCH);
        let mut conn = self.conn();
        let flat: Vec<String> = timed(invocation.invoke_async(&mut conn)).await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            match decode(&pair[0], &pair[1]) {
                Ok(m) => out.push(m),
                Err(e) => tracing::warn!(error = %e, "delivered an undecodable scheduled message"),
            }
        }
        Ok(out)
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let mut conn = self.conn();
        let first: Vec<(String, f64)> = timed(
            redis::cmd("ZRANGE")
                .arg(self.keys.sched())
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .query_async(&mut conn),
        )
        .await?;
        Ok(first.first().map(|(_, due)| *due as i64))
    }

    async fn cancel_scheduled(&self, topic: &str, sequence_id: &str) -> Result<u64, StoreError> {
        self.check_open()?;
        let mut invocation = self.cancel.prepare_invoke();
        invocation
            .key(self.keys.sched())
            .key(self.keys.sched_messages())
            .key(self.keys.sched_topic(topic))
            .arg(sequence_id);
        let mut conn = self.conn();
        timed(invocation.invoke_async(&mut conn)).await
    }

    async fn prune_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.check_open()?;
        let min_id = self.min_id(now.max(0) as u64 * 1000);
        let mut conn = self.conn();
        let topics = self.topic_names(&mut conn).await?;
        let mut pruned = 0;
        for topic in topics {
            let mut invocation = self.prune.prepare_invoke();
            invocation
                .key(self.keys.topic(&topic))
                .key(self.keys.topics())
                .arg(min_id)
                .arg(&topic);
            let n: u64 = timed(invocation.invoke_async(&mut conn)).await?;
            pruned += n;
        }
        Ok(pruned)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut conn = self.conn();
        let topics = self.topic_names(&mut conn).await?;
        let mut pipe = redis::pipe();
        pipe.zcard(self.keys.sched());
        for topic in &topics {
            pipe.xlen(self.keys.topic(topic));
        }
        let counts: Vec<u64> = timed(pipe.query_async(&mut conn)).await?;
        let scheduled = counts.first().copied().unwrap_or(0);
        let published: u64 = counts.iter().skip(1).sum();
        Ok(StoreStats {
            messages: published + scheduled,
            scheduled,
        })
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.check_open()?;
        let mut conn = self.conn();
        timed(redis::cmd("PING").query_async::<String>(&mut conn)).await?;
        Ok(())
    }

    async fn close(&self) {
        // Every acknowledged write is already in Redis; nothing is pending here.
        self.closed.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, MessageId};

    /// A store on the machine's Redis under a fresh prefix (the tests below need the
    /// real Redis at 127.0.0.1:6379, as the integration tests do).
    fn store(test: &str) -> (RedisStore, String) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("herald-test:unit:{test}:{}:{nanos}:", std::process::id());
        let store = RedisStore::open(
            &crate::cluster::connector::local(),
            &prefix,
            Duration::from_secs(3600),
            Arc::new(Delivered::default()),
        )
        .unwrap();
        (store, prefix)
    }

    async fn clean(store: &RedisStore, prefix: &str) {
        let script =
            "for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do redis.call('DEL', k) end";
        let mut conn = store.conn();
        let _: Result<(), _> = redis::cmd("EVAL")
            .arg(script)
            .arg(0)
            .arg(prefix)
            .query_async(&mut conn)
            .await;
    }

    fn message(topic: &str, time: i64, text: &str) -> Message {
        let mut m = Message::new(EventKind::Message, topic);
        m.sequence_id = Some(m.id.clone());
        m.time = time;
        m.expires = Some(time + 3600);
        m.message = text.into();
        m
    }

    fn all(topic: &str) -> Query {
        Query {
            topics: vec![topic.into()],
            since: Since::All,
            include_scheduled: false,
        }
    }

    /// Several nodes race for the due messages: each is handed out exactly once, and
    /// is in the history afterwards with the ID it was scheduled under.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn due_messages_are_taken_once_by_racing_nodes() {
        let (a, prefix) = store("due");
        let b = RedisStore::open(
            &crate::cluster::connector::local(),
            &prefix,
            Duration::from_secs(3600),
            Arc::new(Delivered::default()),
        )
        .unwrap();
        // Far enough ahead that none falls due while 50 are appended on a loaded
        // machine (the count of scheduled ones below is taken against the clock);
        // `take_due(later)` takes them all regardless.
        let later = now_unix() + 30;
        let mut scheduled = Vec::new();
        for i in 0..50 {
            scheduled.push(
                a.append(message("d", later, &format!("s{i}")))
                    .await
                    .unwrap()
                    .id,
            );
        }
        assert_eq!(a.next_due().await.unwrap(), Some(later));
        assert_eq!(a.stats().await.unwrap().scheduled, 50);
        let (x, y) = tokio::join!(a.take_due(later), b.take_due(later));
        let mut taken: Vec<String> = x
            .unwrap()
            .into_iter()
            .chain(y.unwrap())
            .map(|m| m.id)
            .collect();
        taken.sort();
        scheduled.sort();
        assert_eq!(taken, scheduled);
        assert!(a.take_due(later).await.unwrap().is_empty());
        let mut history: Vec<String> = a
            .query(all("d"))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        history.sort();
        assert_eq!(history, scheduled);
        clean(&a, &prefix).await;
    }

    #[tokio::test]
    async fn pages_read_what_one_query_reads() {
        let (s, prefix) = store("pages");
        let now = now_unix();
        let mut ids = Vec::new();
        for i in 0..30i64 {
            let topic = ["a", "b", "c"][(i % 3) as usize];
            let m = s.append(message(topic, now - 50 + i, "m")).await.unwrap();
            ids.push(m.id);
        }
        s.append(message("b", now + 600, "scheduled"))
            .await
            .unwrap();
        let abc = ["a", "b", "c"];
        for scheduled in [false, true] {
            for since in [
                Since::All,
                Since::Latest,
                Since::AfterId(ids[11].clone()),
                Since::Time(now - 40),
                Since::None,
            ] {
                for topics in [&abc[..], &["a"][..], &["c", "a", "c"][..], &["zzz"][..]] {
                    let query = Query {
                        topics: topics.iter().map(|t| t.to_string()).collect(),
                        since: since.clone(),
                        include_scheduled: scheduled,
                    };
                    crate::store::contract::pages_match_query(&s, &query).await;
                }
            }
        }
        // The read stops at the position this node had delivered when it began, on
        // every page, even after the reader moves on.
        let all = Query {
            topics: abc.iter().map(|t| t.to_string()).collect(),
            since: Since::All,
            include_scheduled: false,
        };
        let upto = entry_id(&ids[19]).unwrap();
        {
            let _dispatch = s.delivered.dispatching().await;
            s.delivered.advance(&upto);
        }
        let first = s.history_page(&all, None, 4).await.unwrap();
        {
            let _dispatch = s.delivered.dispatching().await;
            s.delivered.advance(&entry_id(&ids[29]).unwrap());
        }
        let mut seen: Vec<String> = first.messages.into_iter().map(|m| m.id).collect();
        let mut cursor = first.next;
        while let Some(after) = cursor {
            let page = s.history_page(&all, Some(&after), 4).await.unwrap();
            seen.extend(page.messages.into_iter().map(|m| m.id));
            cursor = page.next;
        }
        assert_eq!(seen, ids[..20].to_vec());
        let foreign = Cursor::TimeId(1, "x".into());
        assert!(s.history_page(&all, Some(&foreign), 4).await.is_err());
        clean(&s, &prefix).await;
    }

    #[tokio::test]
    async fn cancel_prune_and_stats() {
        let (s, prefix) = store("prune");
        let now = now_unix();
        let kept = s.append(message("p", now, "kept")).await.unwrap();
        assert_ne!(kept.id, "", "the position is the ID");
        assert_eq!(kept.sequence_id.as_deref(), Some(kept.id.as_str()));
        let mut seq = message("p", now + 600, "cancel me");
        seq.sequence_id = Some("seq".into());
        s.append(seq).await.unwrap();
        assert_eq!(
            s.stats().await.unwrap(),
            StoreStats {
                messages: 2,
                scheduled: 1
            }
        );
        assert_eq!(s.cancel_scheduled("p", "other").await.unwrap(), 0);
        assert_eq!(s.cancel_scheduled("p", "seq").await.unwrap(), 1);
        assert_eq!(s.next_due().await.unwrap(), None);
        // Nothing is older than the cache duration yet; an hour later everything is.
        assert_eq!(s.prune_expired(now).await.unwrap(), 0);
        assert_eq!(s.query(all("p")).await.unwrap().len(), 1);
        assert_eq!(s.prune_expired(now + 3601).await.unwrap(), 1);
        assert!(s.query(all("p")).await.unwrap().is_empty());
        assert_eq!(s.stats().await.unwrap(), StoreStats::default());
        s.check_writable().await.unwrap();
        s.close().await;
        assert!(matches!(
            s.append(message("p", now, "late")).await,
            Err(StoreError::Closed)
        ));
        clean(&s, &prefix).await;
    }

    #[test]
    fn stream_positions_map_to_ordered_ids_and_back() {
        let a = message_id("1700000000000-0").unwrap();
        let b = message_id("1700000000000-1").unwrap();
        let c = message_id("1700000000001-0").unwrap();
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(id::is_valid(&a));
        assert_eq!(entry_id(&b).as_deref(), Some("1700000000000-1"));
        assert_eq!(id::timestamp_ms(&c), Some(1_700_000_000_001));
        assert_eq!(message_id("nonsense"), None);
        assert_eq!(message_id("1-999999999"), None, "counter past 62^4");
    }

    #[test]
    fn node_ids_map_to_their_creation_time() {
        let node = MessageId::generate().into_string();
        let ms = id::timestamp_ms(&node).unwrap();
        let entry = entry_id(&node).unwrap();
        assert!(entry.starts_with(&format!("{ms}-")), "{entry}");
        assert_eq!(message_id(&entry), Some(node));
    }

    #[test]
    fn keys_share_the_prefix() {
        let k = Keys::new("x:");
        assert_eq!(k.log(), "x:log");
        assert_eq!(k.topic("alerts"), "x:t:alerts");
        assert_eq!(k.topics(), "x:topics");
        assert_eq!(k.sched(), "x:sched");
        assert_eq!(k.sched_messages(), "x:sched:m");
        assert_eq!(k.sched_topic("alerts"), "x:s:alerts");
    }

    #[test]
    fn positioned_messages_take_their_position_as_id() {
        let mut m = Message::new(EventKind::Message, "t");
        m.sequence_id = Some(m.id.clone());
        m.message = "hi".into();
        let json = encode_positioned(&m).unwrap();
        let back = decode("1700000000000-5", &json).unwrap();
        let id = message_id("1700000000000-5").unwrap();
        assert_eq!(back.id, id);
        assert_eq!(back.sequence_id.as_deref(), Some(id.as_str()));
        assert_eq!(back.message, "hi");

        // An explicit sequence and an explicit ID (scheduled) are kept.
        m.sequence_id = Some("disk".into());
        let back = decode("1-0", &encode(&m).unwrap()).unwrap();
        assert_eq!(back.id, m.id);
        assert_eq!(back.sequence_id.as_deref(), Some("disk"));
    }
}
