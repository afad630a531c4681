//! The cluster webhook store and feed: every node of a cluster (`redis-url`) shares
//! one webhook queue in Redis (docs/WEBHOOKS.md, "Cluster mode"; docs/SCALING.md,
//! "Key layout").
//!
//! - **Feed, exactly once.** The feed cursor is a position in the cluster's log
//!   stream (`P log`), which has every committed event in one order. Any node may
//!   feed: it reads entries after the cursor ([`LogFeed`]), builds the deliveries,
//!   and one script inserts them and moves the cursor **only if the cursor is still
//!   where the node read from** (compare and set). Two nodes racing for a batch: one
//!   wins, the other drops its work. A node dying mid-batch has changed nothing.
//!   So there are no feed claims to take over, and deliveries are created in log
//!   order (what `ordered` endpoints need). An idle feed waits in a blocking `XREAD`
//!   on the log, so a commit on any node wakes every node's feed.
//! - **Claims with leases.** Each endpoint's pending deliveries are a sorted set by
//!   the time they can next be claimed: due time, or, while claimed, the end of the
//!   lease. A claim (one script) takes members whose time has come and sets their
//!   time to the lease end; a killed node's claims so become claimable again when
//!   their lease ends, by any node. The claim script also counts the endpoint's
//!   live leases, so `webhook-concurrency` holds cluster-wide; `ordered` endpoints
//!   can only claim the head of their queue (by message ID), which one lease holds.
//! - **Endpoint changes** bump `P wh:version`; every node reloads its workers when it
//!   moves (housekeeping, every second).
//!
//! Key layout (`P` is `redis-key-prefix`), all under `P wh:`: `hooks` (hash: ID →
//! endpoint JSON), `failing` (hash: ID → unix seconds of the first failure since the
//! last success), `version` (counter), `cursor` (string: log position), `seq`
//! (counter: delivery keys), `pair` (hash: `<endpoint>\n<message>` → key), `d:<key>`
//! (hash: one delivery), `all:<endpoint>` (set: its delivery keys), `due:<endpoint>`
//! (sorted set: pending key → claimable at, ms), `ord:<endpoint>` (sorted set, score 0:
//! `<message ID>\n<key>` of pending deliveries, for the head), `lease:<endpoint>`
//! (sorted set: claimed key → lease end), `pending` (sorted set: pending key → first
//! due time, for metrics), `settled` (sorted set: settled key → when, for pruning),
//! `at:<endpoint>` (list: attempt JSON, newest first, capped).

use std::time::Duration;

use async_trait::async_trait;
use redis::streams::StreamRangeReply;
use redis::{RedisError, Script};
use serde::{Deserialize, Serialize};

use super::error::WebhookError;
use super::feed::{FeedBatch, FeedSource};
use super::store::{
    Attempt, AttemptRecord, Delivery, MAX_ATTEMPTS_LISTED, NewDelivery, QueueStats, Settlement,
    WebhookStore, WebhookStoreError,
};
use super::{Filter, Webhook};
use crate::cluster::connector::{Conn, RedisConnector};
use crate::cluster::redis::{KeyPrefix, OP_TIMEOUT, script};
use crate::store::redis::{Keys, LOG_MAX_LEN, decode, entry_id, entry_parts, message_id};

/// Longest the feed blocks waiting for new log entries.
const WAIT_MAX: Duration = Duration::from_secs(2);

fn backend(e: impl std::fmt::Display) -> WebhookStoreError {
    WebhookStoreError::Backend(e.to_string())
}

/// [`crate::cluster::redis::timed`], with this store's error.
async fn timed<T>(op: impl Future<Output = Result<T, RedisError>>) -> Result<T, WebhookStoreError> {
    crate::cluster::redis::timed(op).await.map_err(backend)
}

/// Shared Lua: `insert(P, w, m, e, p, t, due, replay)` queues one delivery unless
/// the pair is queued already (replay: makes a settled pair pending again).
/// Returns 1 if it queued something.
const INSERT_LUA: &str = include_str!("redis/insert.lua");

/// ARGV: P, mode (`feed`, `cas` or `replay`), expected cursor, new cursor, then
/// 6 values per delivery. `cas` checks the cursor first (-1: it moved).
const QUEUE_LUA: &str = include_str!("redis/queue.lua");

/// ARGV: P, endpoint, ordered, max, now, lease end, owner, cluster-wide cap (0: none).
/// Returns 7 values per claimed delivery: key, m, e, p, t, due, att.
const CLAIM_LUA: &str = include_str!("redis/claim.lua");

/// ARGV: P, endpoint, owner, now, keys... Releases the owner's claims on them.
const RELEASE_LUA: &str = include_str!("redis/release.lua");

/// ARGV: P, endpoint, ordered. The time the next delivery can be claimed (the head's
/// for `ordered`), or nothing.
const NEXT_DUE_LUA: &str = include_str!("redis/next_due.lua");

/// ARGV: P, key, endpoint, state (0 pending, 1 delivered, 2 exhausted), next (ms),
/// settled (ms), attempt JSON, now (s), attempts kept, claimant. Returns
/// `{recorded, failing_since or ''}`. A settled delivery stays settled; a claimant
/// whose lease lapsed and was claimed again can only settle it as delivered.
const FINISH_LUA: &str = include_str!("redis/finish.lua");

/// ARGV: P, endpoint ID, JSON, failing since ('' for none), must exist ('1').
/// Returns 1 if written.
const WRITE_LUA: &str = include_str!("redis/write.lua");

/// ARGV: P, endpoint. Deletes it with its deliveries and attempts; 1 if it existed.
const DELETE_LUA: &str = include_str!("redis/delete.lua");

/// ARGV: P, before (ms), batch. Forgets settled deliveries and attempts older than
/// `before`; returns how many.
const PRUNE_LUA: &str = include_str!("redis/prune.lua");

/// A delivery's key as stored: zero-padded, so members with equal due times sort
/// (lexicographically) in queue order, as SQLite's claims do by row ID.
fn delivery_key(key: i64) -> String {
    format!("{key:016}")
}

/// An endpoint as stored (`failing_since` lives in its own hash, updated by scripts).
#[derive(Serialize, Deserialize)]
struct StoredWebhook {
    id: String,
    topic: String,
    url: String,
    secret: String,
    previous_secret: Option<(String, i64)>,
    filter: Filter,
    description: String,
    ordered: bool,
    owner: String,
    /// Hex SHA-256 of the management token; absent in endpoints written before
    /// tokens existed (they stay admin-only, `super::token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_digest: Option<String>,
    created: i64,
    start_after: String,
    disabled: Option<(String, i64)>,
}

impl StoredWebhook {
    fn from(w: &Webhook) -> StoredWebhook {
        StoredWebhook {
            id: w.id.clone(),
            topic: w.topic.clone(),
            url: w.url.clone(),
            secret: w.secret.clone(),
            previous_secret: w.previous_secret.clone(),
            filter: w.filter.clone(),
            description: w.description.clone(),
            ordered: w.ordered,
            owner: w.owner.clone(),
            token_digest: w.token_digest.as_ref().map(crate::auth::token::digest_hex),
            created: w.created,
            start_after: w.start_after.clone(),
            disabled: w.disabled.clone(),
        }
    }

    fn into_webhook(self, failing_since: Option<i64>) -> Result<Webhook, String> {
        let token_digest = match self.token_digest {
            None => None,
            Some(h) => Some(
                crate::auth::token::digest_from_hex(&h)
                    .ok_or("token digest is not 64 hex characters")?,
            ),
        };
        Ok(Webhook {
            id: self.id,
            topic: self.topic,
            url: self.url,
            secret: self.secret,
            previous_secret: self.previous_secret,
            filter: self.filter,
            description: self.description,
            ordered: self.ordered,
            owner: self.owner,
            token_digest,
            created: self.created,
            start_after: self.start_after,
            disabled: self.disabled,
            failing_since,
        })
    }
}

/// The Redis [`WebhookStore`]. See the module docs.
pub struct RedisWebhookStore {
    conn: Conn,
    /// `P wh:`.
    prefix: KeyPrefix,
    /// Attempts in flight per endpoint, cluster-wide (`webhook-concurrency`).
    concurrency: usize,
    queue: Script,
    write: Script,
    claim: Script,
    release: Script,
    next_due: Script,
    finish: Script,
    delete: Script,
    prune: Script,
}

impl std::fmt::Debug for RedisWebhookStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisWebhookStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisWebhookStore {
    /// A store on the Redis at `url` under `prefix` (`redis-key-prefix`), allowing
    /// `concurrency` attempts per endpoint across the cluster (0: no cap).
    pub fn open(
        url: &RedisConnector,
        prefix: &str,
        concurrency: usize,
    ) -> Result<RedisWebhookStore, WebhookStoreError> {
        let conn = url.connect(OP_TIMEOUT);
        Ok(RedisWebhookStore {
            conn,
            prefix: KeyPrefix::new(prefix).nested("wh:"),
            concurrency,
            queue: script(&[INSERT_LUA, QUEUE_LUA]),
            write: script(&[WRITE_LUA]),
            claim: script(&[CLAIM_LUA]),
            release: script(&[RELEASE_LUA]),
            next_due: script(&[NEXT_DUE_LUA]),
            finish: script(&[FINISH_LUA]),
            delete: script(&[DELETE_LUA]),
            prune: script(&[PRUNE_LUA]),
        })
    }

    fn key(&self, name: &str) -> String {
        self.prefix.key(name)
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    async fn queue(
        &self,
        mode: &str,
        from: &str,
        cursor: &str,
        deliveries: &[NewDelivery],
    ) -> Result<i64, WebhookStoreError> {
        let mut invocation = self.queue.prepare_invoke();
        invocation.arg(&self.prefix).arg(mode).arg(from).arg(cursor);
        for d in deliveries {
            invocation
                .arg(&d.webhook_id)
                .arg(&d.message_id)
                .arg(&d.event)
                .arg(&d.payload)
                .arg(d.event_time)
                .arg(d.due_ms);
        }
        let mut conn = self.conn();
        let ticket = conn.ticket().await;
        let queued = timed(invocation.invoke_async(&mut conn)).await?;
        // Acknowledged only once replicated (`redis-min-replicas-acked`).
        conn.confirm(ticket).await.map_err(backend)?;
        Ok(queued)
    }

    /// Writes an endpoint and its failure streak and bumps the version, in one
    /// step; `must_exist`: only if the endpoint is there (an update racing a delete
    /// does not bring it back). Whether it was written.
    async fn write(&self, w: &Webhook, must_exist: bool) -> Result<bool, WebhookStoreError> {
        let json = serde_json::to_string(&StoredWebhook::from(w)).map_err(backend)?;
        let mut invocation = self.write.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(&w.id)
            .arg(json)
            .arg(w.failing_since.map(|f| f.to_string()).unwrap_or_default())
            .arg(if must_exist { "1" } else { "0" });
        let mut conn = self.conn();
        let ticket = conn.ticket().await;
        let written: i64 = timed(invocation.invoke_async(&mut conn)).await?;
        conn.confirm(ticket).await.map_err(backend)?;
        Ok(written == 1)
    }
}

fn parse_webhook(json: &str, failing: Option<i64>) -> Result<Webhook, WebhookStoreError> {
    serde_json::from_str::<StoredWebhook>(json)
        .map_err(|e| e.to_string())
        .and_then(|s| s.into_webhook(failing))
        .map_err(WebhookStoreError::Corrupt)
}

#[async_trait]
impl WebhookStore for RedisWebhookStore {
    async fn insert_webhook(&self, webhook: &Webhook) -> Result<(), WebhookStoreError> {
        self.write(webhook, false).await.map(drop)
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, WebhookStoreError> {
        let mut conn = self.conn();
        let (hooks, failing): (Vec<(String, String)>, Vec<(String, i64)>) = timed(
            redis::pipe()
                .hgetall(self.key("hooks"))
                .hgetall(self.key("failing"))
                .query_async(&mut conn),
        )
        .await?;
        let failing: std::collections::HashMap<String, i64> = failing.into_iter().collect();
        let mut out = hooks
            .iter()
            .map(|(id, json)| parse_webhook(json, failing.get(id).copied()))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    async fn webhook(&self, id: &str) -> Result<Option<Webhook>, WebhookStoreError> {
        let mut conn = self.conn();
        let (json, failing): (Option<String>, Option<i64>) = timed(
            redis::pipe()
                .hget(self.key("hooks"), id)
                .hget(self.key("failing"), id)
                .query_async(&mut conn),
        )
        .await?;
        json.map(|j| parse_webhook(&j, failing)).transpose()
    }

    async fn update_webhook(&self, webhook: &Webhook) -> Result<bool, WebhookStoreError> {
        self.write(webhook, true).await
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, WebhookStoreError> {
        let mut invocation = self.delete.prepare_invoke();
        invocation.arg(&self.prefix).arg(id);
        let mut conn = self.conn();
        let n: i64 = timed(invocation.invoke_async(&mut conn)).await?;
        Ok(n > 0)
    }

    async fn count_owned(&self, owner: &str) -> Result<usize, WebhookStoreError> {
        Ok(self
            .webhooks()
            .await?
            .iter()
            .filter(|w| w.owner == owner)
            .count())
    }

    async fn cursor(&self) -> Result<Option<String>, WebhookStoreError> {
        let mut conn = self.conn();
        timed(
            redis::cmd("GET")
                .arg(self.key("cursor"))
                .query_async(&mut conn),
        )
        .await
    }

    async fn enqueue(
        &self,
        deliveries: Vec<NewDelivery>,
        cursor: &str,
    ) -> Result<usize, WebhookStoreError> {
        let n = self.queue("feed", "", cursor, &deliveries).await?;
        Ok(n.max(0) as usize)
    }

    async fn enqueue_from(
        &self,
        deliveries: Vec<NewDelivery>,
        from: Option<&str>,
        cursor: &str,
    ) -> Result<Option<usize>, WebhookStoreError> {
        let n = self
            .queue("cas", from.unwrap_or(""), cursor, &deliveries)
            .await?;
        Ok((n >= 0).then_some(n as usize))
    }

    async fn version(&self) -> Result<Option<u64>, WebhookStoreError> {
        let mut conn = self.conn();
        let v: Option<u64> = timed(
            redis::cmd("GET")
                .arg(self.key("version"))
                .query_async(&mut conn),
        )
        .await?;
        Ok(Some(v.unwrap_or(0)))
    }

    async fn requeue(&self, deliveries: Vec<NewDelivery>) -> Result<usize, WebhookStoreError> {
        let n = self.queue("replay", "", "", &deliveries).await?;
        Ok(n.max(0) as usize)
    }

    async fn claim(
        &self,
        webhook_id: &str,
        ordered: bool,
        max: usize,
        now_ms: i64,
        lease: Duration,
        owner: &str,
    ) -> Result<Vec<Delivery>, WebhookStoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let until = now_ms.saturating_add(lease.as_millis() as i64);
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(webhook_id)
            .arg(if ordered { "1" } else { "0" })
            .arg(max)
            .arg(now_ms)
            .arg(until)
            .arg(owner)
            .arg(self.concurrency);
        let mut conn = self.conn();
        let flat: Vec<String> = timed(invocation.invoke_async(&mut conn)).await?;
        let number = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| WebhookStoreError::Corrupt(format!("delivery field {s:?}")))
        };
        flat.chunks_exact(7)
            .map(|f| {
                Ok(Delivery {
                    key: number(&f[0])?,
                    webhook_id: webhook_id.to_string(),
                    message_id: f[1].clone(),
                    event: f[2].clone(),
                    payload: f[3].clone(),
                    event_time: number(&f[4])?,
                    due_ms: number(&f[5])?,
                    attempts: number(&f[6])?.max(0) as u32,
                })
            })
            .collect()
    }

    async fn release(
        &self,
        webhook_id: &str,
        keys: &[i64],
        owner: &str,
        now_ms: i64,
    ) -> Result<(), WebhookStoreError> {
        let mut invocation = self.release.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(webhook_id)
            .arg(owner)
            .arg(now_ms);
        for key in keys {
            invocation.arg(delivery_key(*key));
        }
        let mut conn = self.conn();
        timed(invocation.invoke_async::<i64>(&mut conn))
            .await
            .map(drop)
    }

    async fn next_due(
        &self,
        webhook_id: &str,
        ordered: bool,
        _now_ms: i64,
    ) -> Result<Option<i64>, WebhookStoreError> {
        let mut invocation = self.next_due.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(webhook_id)
            .arg(if ordered { "1" } else { "0" });
        let mut conn = self.conn();
        let due: Option<f64> = timed(invocation.invoke_async(&mut conn)).await?;
        Ok(due.map(|d| d as i64))
    }

    async fn finish_attempt(
        &self,
        record: AttemptRecord,
    ) -> Result<Option<i64>, WebhookStoreError> {
        let a = &record.attempt;
        let (state, next) = match record.settlement {
            Settlement::Delivered => (1, 0),
            Settlement::RetryAt(t) => (0, t),
            Settlement::Exhausted => (2, 0),
        };
        let json = serde_json::to_string(a).map_err(backend)?;
        let mut invocation = self.finish.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(delivery_key(record.delivery))
            .arg(&record.webhook_id)
            .arg(state)
            .arg(next)
            .arg(a.time_ms + a.latency_ms)
            .arg(json)
            .arg(a.time_ms.div_euclid(1000))
            .arg(MAX_ATTEMPTS_LISTED)
            .arg(&record.owner);
        let mut conn = self.conn();
        let (_recorded, failing): (i64, String) = timed(invocation.invoke_async(&mut conn)).await?;
        Ok(failing.parse().ok())
    }

    async fn attempts(
        &self,
        webhook_id: &str,
        limit: usize,
    ) -> Result<Vec<Attempt>, WebhookStoreError> {
        let mut conn = self.conn();
        let raw: Vec<String> = timed(
            redis::cmd("LRANGE")
                .arg(self.key(&format!("at:{webhook_id}")))
                .arg(0)
                .arg(limit.max(1) as i64 - 1)
                .query_async(&mut conn),
        )
        .await?;
        raw.iter()
            .map(|j| serde_json::from_str(j).map_err(|e| WebhookStoreError::Corrupt(e.to_string())))
            .collect()
    }

    async fn queue_stats(&self) -> Result<QueueStats, WebhookStoreError> {
        let mut conn = self.conn();
        let (pending, oldest): (u64, Vec<(String, f64)>) = timed(
            redis::pipe()
                .zcard(self.key("pending"))
                .zrange_withscores(self.key("pending"), 0, 0)
                .query_async(&mut conn),
        )
        .await?;
        let disabled = self
            .webhooks()
            .await?
            .iter()
            .filter(|w| w.disabled.is_some())
            .count() as u64;
        Ok(QueueStats {
            pending,
            oldest_due_ms: oldest.first().map(|(_, due)| *due as i64),
            disabled,
        })
    }

    async fn prune(&self, before_ms: i64) -> Result<u64, WebhookStoreError> {
        let mut total = 0;
        loop {
            let mut invocation = self.prune.prepare_invoke();
            invocation.arg(&self.prefix).arg(before_ms).arg(1000);
            let mut conn = self.conn();
            let n: u64 = timed(invocation.invoke_async(&mut conn)).await?;
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
    }
}

/// The cluster feed: the shared log stream (`P log`), which has every committed event
/// in cluster order; the cursor is a log position. See the module docs.
pub struct LogFeed {
    conn: Conn,
    /// For the blocking `XREAD` of [`FeedSource::wait_after`]: its own connection,
    /// so it never holds up the feed's other commands.
    waiter: Conn,
    log: String,
}

impl LogFeed {
    /// The feed of the cluster on the Redis at `url` under `prefix`.
    pub fn open(url: &RedisConnector, prefix: &str) -> Result<LogFeed, WebhookStoreError> {
        Ok(LogFeed {
            conn: url.connect(OP_TIMEOUT),
            waiter: url.connect(OP_TIMEOUT + WAIT_MAX),
            log: Keys::new(prefix).log(),
        })
    }
}

#[async_trait]
impl FeedSource for LogFeed {
    async fn start(&self) -> Result<String, WebhookError> {
        let mut conn = self.conn.clone();
        let newest: StreamRangeReply = timed(
            redis::cmd("XREVRANGE")
                .arg(&self.log)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn),
        )
        .await?;
        Ok(newest
            .ids
            .first()
            .map_or_else(|| "0-0".to_string(), |e| e.id.clone()))
    }

    /// The ID of the log's newest entry: the log orders the cluster's commits, so
    /// this needs no agreement between the nodes' clocks.
    async fn newest_id(&self) -> Result<String, WebhookError> {
        let newest = self.start().await?;
        Ok(match message_id(&newest) {
            Some(id) if newest != "0-0" => id,
            _ => crate::model::MessageId::generate().into_string(),
        })
    }

    /// Blocks (`XREAD BLOCK`) until the log has an entry after `cursor`: any node's
    /// commit wakes every node's feed at once (the Redis store's publishes do not
    /// pass the broker, so nothing else would wake it before its next poll).
    async fn wait_after(&self, cursor: &str, max: Duration) {
        let mut conn = self.waiter.clone();
        let block = max.min(WAIT_MAX).as_millis() as u64;
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.max(1))
            .arg("STREAMS")
            .arg(&self.log)
            .arg(cursor);
        let read = cmd.query_async::<redis::Value>(&mut conn);
        match tokio::time::timeout(max + OP_TIMEOUT, read).await {
            Ok(Ok(_)) | Err(_) => {}
            // Not a reason to poll faster: the feed's own reads report the error.
            Ok(Err(_)) => tokio::time::sleep(max).await,
        }
    }

    /// The log position of the message's creation time: cached messages are at
    /// their own position; scheduled ones went on the log later, when due.
    fn cursor_for(&self, message_id: &str) -> String {
        entry_id(message_id).unwrap_or_else(|| "0-0".into())
    }

    async fn after(&self, cursor: &str, limit: usize) -> Result<FeedBatch, WebhookError> {
        let mut conn = self.conn.clone();
        let (oldest, batch): (StreamRangeReply, StreamRangeReply) = timed(
            redis::pipe()
                .xrange_count(&self.log, "-", "+", 1)
                .xrange_count(&self.log, format!("({cursor}"), "+", limit)
                .query_async(&mut conn),
        )
        .await?;
        // The log is trimmed to about LOG_MAX_LEN entries whether or not the feed
        // read them: if the cursor's own entry is gone, so may be some after it.
        if let (Some(first), Some(at)) = (oldest.ids.first(), entry_parts(cursor))
            && at != (0, 0)
            && entry_parts(&first.id).is_some_and(|first| first > at)
        {
            tracing::warn!(
                cursor,
                oldest = %first.id,
                "webhooks: the cluster log was trimmed past the webhook feed \
                 (more than {LOG_MAX_LEN} events behind); events in between are not delivered"
            );
        }
        let next = batch.ids.last().map(|e| e.id.clone());
        let mut messages = Vec::with_capacity(batch.ids.len());
        for entry in batch.ids {
            let json: Option<String> = entry.get("m");
            match json.as_deref().map(|j| decode(&entry.id, j)) {
                // Uncached events (`Cache: no`) are not in the message store, so a
                // single node's feed never sees them either.
                Some(Ok(m)) if m.expires.is_some() => messages.push(m),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "webhooks: skipping an undecodable event")
                }
                None => tracing::warn!(entry = %entry.id, "webhooks: log entry without a message"),
            }
        }
        Ok(FeedBatch { messages, next })
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::{self, LEASE, delivery, record, webhook};
    use super::*;

    /// A prefix of its own per test (they share the machine's Redis), deleted by
    /// [`clean`].
    fn prefix(test: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("herald-test:unit:wh:{test}:{}:{nanos}:", std::process::id())
    }

    async fn clean(store: &RedisWebhookStore, prefix: &str) {
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

    /// A store with endpoint `w` and deliveries of `m1` and `m2` queued.
    async fn two_queued(test: &str) -> (RedisWebhookStore, String) {
        let p = prefix(test);
        let store = RedisWebhookStore::open(&crate::cluster::connector::local(), &p, 0).unwrap();
        store.insert_webhook(&webhook("w")).await.unwrap();
        store
            .enqueue(vec![delivery("w", "m1", 0), delivery("w", "m2", 0)], "1-0")
            .await
            .unwrap();
        (store, p)
    }

    #[tokio::test]
    async fn redis_store_keeps_the_claims_contract() {
        let p = prefix("claims");
        let store = RedisWebhookStore::open(&crate::cluster::connector::local(), &p, 0).unwrap();
        contract::claims_are_exclusive_until_the_lease_ends(&store).await;
        clean(&store, &p).await;
    }

    #[tokio::test]
    async fn redis_store_keeps_the_settlement_contract() {
        let p = prefix("settle");
        let store = RedisWebhookStore::open(&crate::cluster::connector::local(), &p, 0).unwrap();
        contract::settlements_and_ordered_claims(&store).await;
        assert_eq!(store.version().await.unwrap(), Some(2), "insert, delete");
        clean(&store, &p).await;
    }

    /// An endpoint stored before management tokens (no `token_digest` key) reads
    /// back without one: admins only.
    #[test]
    fn endpoints_stored_before_tokens_have_none() {
        let old = r#"{"id":"wh_old","topic":"t","url":"http://x","secret":"whsec_x",
            "previous_secret":null,"filter":{},"description":"","ordered":false,
            "owner":"1.2.3.4","created":1,"start_after":"","disabled":null}"#;
        let w = parse_webhook(old, None).unwrap();
        assert_eq!(w.token_digest, None);
        let mut with = webhook("n");
        with.token_digest = Some([7; 32]);
        let json = serde_json::to_string(&StoredWebhook::from(&with)).unwrap();
        assert_eq!(parse_webhook(&json, None).unwrap(), with);
    }

    #[tokio::test]
    async fn redis_store_keeps_the_endpoint_contract() {
        let p = prefix("endpoints");
        let store = RedisWebhookStore::open(&crate::cluster::connector::local(), &p, 0).unwrap();
        contract::endpoints_round_trip(&store).await;
        clean(&store, &p).await;
    }

    /// Two nodes feed the same batch: only one of them queues it.
    #[tokio::test]
    async fn only_one_feeder_moves_the_cursor() {
        let p = prefix("cas");
        let a = RedisWebhookStore::open(&crate::cluster::connector::local(), &p, 0).unwrap();
        let b = RedisWebhookStore::open(&crate::cluster::connector::local(), &p, 0).unwrap();
        a.insert_webhook(&webhook("w")).await.unwrap();
        assert_eq!(a.enqueue_from(vec![], None, "1-0").await.unwrap(), Some(0));
        assert_eq!(b.enqueue_from(vec![], None, "2-0").await.unwrap(), None);
        let batch = || vec![delivery("w", "m1", 0), delivery("w", "m2", 0)];
        let (x, y) = tokio::join!(
            a.enqueue_from(batch(), Some("1-0"), "5-0"),
            b.enqueue_from(batch(), Some("1-0"), "5-0"),
        );
        let mut results = [x.unwrap(), y.unwrap()];
        results.sort();
        assert_eq!(results, [None, Some(2)]);
        assert_eq!(b.cursor().await.unwrap().as_deref(), Some("5-0"));
        assert_eq!(a.queue_stats().await.unwrap().pending, 2);
        // Deliveries for an endpoint deleted meanwhile are not queued.
        assert_eq!(
            a.enqueue_from(vec![delivery("gone", "m3", 0)], Some("5-0"), "6-0")
                .await
                .unwrap(),
            Some(0)
        );
        clean(&a, &p).await;
    }

    /// `webhook-concurrency` counts the claims of every node; a dead node's count
    /// ends with its leases.
    #[tokio::test]
    async fn concurrency_is_capped_cluster_wide() {
        let p = prefix("cap");
        let a = RedisWebhookStore::open(&crate::cluster::connector::local(), &p, 2).unwrap();
        let b = RedisWebhookStore::open(&crate::cluster::connector::local(), &p, 2).unwrap();
        a.insert_webhook(&webhook("w")).await.unwrap();
        let batch: Vec<_> = (0..5).map(|i| delivery("w", &format!("m{i}"), 0)).collect();
        a.enqueue(batch, "1-0").await.unwrap();
        assert_eq!(
            a.claim("w", false, 1, 10, LEASE, "a").await.unwrap().len(),
            1
        );
        let on_b = b.claim("w", false, 5, 10, LEASE, "b").await.unwrap();
        assert_eq!(on_b.len(), 1);
        assert!(
            b.claim("w", false, 5, 10, LEASE, "b")
                .await
                .unwrap()
                .is_empty()
        );
        // b finishes one: one slot frees up.
        b.finish_attempt(record(&on_b[0], "b", 20, Settlement::Delivered))
            .await
            .unwrap();
        assert_eq!(
            b.claim("w", false, 5, 30, LEASE, "b").await.unwrap().len(),
            1
        );
        // All leases lapse (both nodes died): two more, not four.
        let later = 31 + LEASE.as_millis() as i64;
        assert_eq!(
            b.claim("w", false, 5, later, LEASE, "b")
                .await
                .unwrap()
                .len(),
            2
        );
        clean(&a, &p).await;
    }

    /// A node whose lease lapsed (stalled, or presumed dead) finishes late: its
    /// failure does not reopen the delivery under the new claimant, its success
    /// settles it.
    #[tokio::test]
    async fn a_lapsed_claim_does_not_undo_the_next_claim() {
        let p = prefix("lapsed");
        let store = RedisWebhookStore::open(&crate::cluster::connector::local(), &p, 0).unwrap();
        store.insert_webhook(&webhook("w")).await.unwrap();
        store
            .enqueue(vec![delivery("w", "m1", 0)], "1-0")
            .await
            .unwrap();
        let old = store.claim("w", true, 1, 10, LEASE, "old").await.unwrap();
        let later = 11 + LEASE.as_millis() as i64;
        let new = store
            .claim("w", true, 1, later, LEASE, "new")
            .await
            .unwrap();
        assert_eq!(new.len(), 1);
        store
            .finish_attempt(record(&old[0], "old", later, Settlement::RetryAt(later)))
            .await
            .unwrap();
        assert!(
            store
                .claim("w", true, 1, later + 1, LEASE, "third")
                .await
                .unwrap()
                .is_empty(),
            "the new claim still holds"
        );
        store
            .finish_attempt(record(&old[0], "old", later + 2, Settlement::Delivered))
            .await
            .unwrap();
        assert_eq!(store.queue_stats().await.unwrap().pending, 0);
        // The new claimant's failure comes last: the delivery stays delivered.
        store
            .finish_attempt(record(&new[0], "new", later + 3, Settlement::RetryAt(0)))
            .await
            .unwrap();
        assert_eq!(store.queue_stats().await.unwrap().pending, 0);
        assert_eq!(store.attempts("w", 10).await.unwrap().len(), 3);
        clean(&store, &p).await;
    }

    /// Claims given up at shutdown are claimable at once; only the owner's are.
    #[tokio::test]
    async fn released_claims_are_claimable_at_once() {
        let (store, p) = two_queued("release").await;
        let held = store.claim("w", false, 5, 10, LEASE, "a").await.unwrap();
        let keys: Vec<i64> = held.iter().map(|d| d.key).collect();
        store.release("w", &keys, "not a", 20).await.unwrap();
        assert!(
            store
                .claim("w", false, 5, 20, LEASE, "b")
                .await
                .unwrap()
                .is_empty()
        );
        store.release("w", &keys, "a", 20).await.unwrap();
        let taken = store.claim("w", false, 5, 20, LEASE, "b").await.unwrap();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].attempts, 0);
        clean(&store, &p).await;
    }

    /// The feed reads the log after its cursor: cached events (with the position as
    /// their ID), not uncached ones, and the cursor moves past both.
    #[tokio::test]
    async fn the_log_feed_reads_cached_events_after_the_cursor() {
        use crate::model::{EventKind, Message};
        use crate::store::redis::{encode, encode_positioned, message_id};
        let p = prefix("feed");
        let store = RedisWebhookStore::open(&crate::cluster::connector::local(), &p, 0).unwrap();
        let feed = LogFeed::open(&crate::cluster::connector::local(), &p).unwrap();
        assert_eq!(feed.start().await.unwrap(), "0-0");
        let mut conn = store.conn();
        let mut append = async |json: String| -> String {
            redis::cmd("XADD")
                .arg(format!("{p}log"))
                .arg("*")
                .arg("t")
                .arg("t")
                .arg("m")
                .arg(json)
                .query_async(&mut conn)
                .await
                .unwrap()
        };
        let mut cached = Message::new(EventKind::Message, "t");
        cached.expires = Some(cached.time + 60);
        let first = append(encode_positioned(&cached).unwrap()).await;
        let uncached = Message::new(EventKind::Message, "t");
        let second = append(encode(&uncached).unwrap()).await;
        assert_eq!(feed.start().await.unwrap(), second);
        let batch = feed.after("0-0", 10).await.unwrap();
        assert_eq!(batch.next.as_deref(), Some(second.as_str()));
        assert_eq!(batch.messages.len(), 1);
        assert_eq!(Some(batch.messages[0].id.clone()), message_id(&first));
        assert!(feed.after(&second, 10).await.unwrap().next.is_none());
        // Replays start at the position of an ID: the message itself is after it.
        let id = message_id(&first).unwrap();
        let from = feed.cursor_for(&id);
        assert!(entry_parts(&from) <= entry_parts(&first), "{from} {first}");
        clean(&store, &p).await;
    }

    #[tokio::test]
    async fn settled_deliveries_and_old_attempts_are_pruned() {
        let (store, p) = two_queued("prune").await;
        let claimed = store.claim("w", false, 5, 10, LEASE, "n").await.unwrap();
        store
            .finish_attempt(record(&claimed[0], "n", 1_000, Settlement::Delivered))
            .await
            .unwrap();
        store
            .finish_attempt(record(&claimed[1], "n", 5_000, Settlement::Exhausted))
            .await
            .unwrap();
        assert_eq!(
            store.prune(2_000).await.unwrap(),
            2,
            "one delivery, one attempt"
        );
        assert_eq!(store.attempts("w", 10).await.unwrap().len(), 1);
        // A pruned pair is forgotten: the same message could be queued again.
        assert_eq!(
            store
                .enqueue(vec![delivery("w", &claimed[0].message_id, 0)], "2-0")
                .await
                .unwrap(),
            1
        );
        clean(&store, &p).await;
    }
}
