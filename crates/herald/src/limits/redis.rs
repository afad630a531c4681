//! The cluster's visitor limits in Redis ([`SharedLimits`]): every node charges the
//! same counters, so N nodes allow what one node would, not N times that.
//!
//! One Lua script ([`CHARGE_LUA`]) checks and takes everything a request needs in one
//! round trip and atomically: the request bucket and the new-topic bucket (GCRA, a
//! "theoretical arrival time" in milliseconds per bucket, as in [`super::bucket`]),
//! the daily message count, and an open-subscription slot. Time is Redis's clock
//! (`TIME`), so nodes with skewed clocks still agree; tests pass their own `now`.
//!
//! Open subscriptions are counted per node (`P conn:<visitor>`: node ID → streams),
//! and each node keeps a heartbeat key (`P node:<id>`, expiring after
//! [`NODE_TTL`]). The script ignores and removes the counts of nodes whose heartbeat
//! is gone, so the streams of a killed node stop counting within [`NODE_TTL`], while
//! its clients reconnect elsewhere.
//!
//! Key layout (`P` is `redis-key-prefix`): `P rl:requests:<visitor>` and
//! `P rl:topics:<visitor>` and `P rl:emails:<visitor>` (string: TAT in ms, expiring
//! when the bucket is full again), `P rl:messages:<visitor>` (string: messages today, expiring at midnight
//! UTC), `P conn:<visitor>` (hash: node ID → open streams), `P node:<id>` (string:
//! heartbeat). A visitor is `ip:<masked address>` or `user:<name>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use redis::Script;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::shared::{SharedCharge, SharedLimits, SharedLimitsError, Verdict};
use super::{Limit, LimitsConfig};
use crate::cluster::connector::{Conn, RedisConnector};
use crate::cluster::redis::{KeyPrefix, script};

/// Longest a limit check waits for Redis: a request is then admitted by this node's
/// own limits rather than held up.
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// After Redis failed to answer, how long charges go straight to the node's own
/// limits (no request waits for a Redis that is known to be away).
const BACKOFF: Duration = Duration::from_secs(1);
/// How long a node's heartbeat key lives: the bound within which the open streams
/// of a dead node stop counting.
pub const NODE_TTL: Duration = Duration::from_secs(15);
/// How often a node renews its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a visitor's open-stream counts live without being touched; each node
/// re-asserts its counts every [`RESYNC`], so long-lived streams keep counting.
const CONN_TTL: Duration = Duration::from_secs(3600);
/// How often a node writes all its open-stream counts again (also repairs counts
/// lost while Redis was away).
const RESYNC: Duration = Duration::from_secs(600);

/// Checks and takes a request's limits, all or none. Returns `{0, 0}` when admitted,
/// else `{limit, retry_ms}` with limit 1 requests, 2 messages, 3 subscriptions,
/// 4 new topics (the order in which they are checked, as on one node).
///
/// KEYS: requests TAT, topics TAT, messages today, open streams (hash).
/// ARGV: now ms ('' = Redis's clock), request replenish ms (0: no request token),
/// request burst, daily message limit (0: not a publish), stream limit (-1: no
/// stream), node ID, heartbeat key prefix, stream-count TTL ms, new topics,
/// topic replenish ms, topic burst, heartbeat TTL ms.
pub const CHARGE_LUA: &str = include_str!("redis/charge.lua");

/// Gives back one message of today's count (a publish that failed).
const REFUND_LUA: &str = include_str!("redis/refund.lua");

/// One token of the e-mail bucket (`visitor-email-limit-*`).
const EMAIL_LUA: &str = include_str!("redis/email.lua");

/// Releases one open stream of this node (ARGV[1]).
const CLOSE_LUA: &str = include_str!("redis/close.lua");

/// The shapes of the shared limits (the same options as on one node).
#[derive(Debug, Clone, Copy)]
struct Shapes {
    request_replenish_ms: u64,
    request_burst: u32,
    daily_messages: u32,
    topic_replenish_ms: u64,
    /// 0: no topic-creation limit.
    topic_burst: u32,
    stream_limit: usize,
    email_replenish_ms: u64,
    email_burst: u32,
}

/// Visitor limits in Redis, shared by every node on the same key prefix.
pub struct RedisLimits {
    conn: Conn,
    prefix: KeyPrefix,
    node_id: String,
    shapes: Shapes,
    charge: Script,
    refund: Script,
    close: Script,
    email: Script,
    /// This node's open streams by visitor, written again every [`RESYNC`].
    open_streams: Mutex<HashMap<String, u32>>,
    /// When (ms since `epoch`) charges may try Redis again after a failure.
    retry_at_ms: AtomicU64,
    epoch: Instant,
    /// Whether the last attempt failed (so an outage is logged once, not per request).
    degraded: AtomicBool,
    /// `herald_limits_shared_unavailable_total`.
    unavailable: Counter,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("prefix", &self.prefix)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl RedisLimits {
    /// Limits as `config` says (and `stream_limit`, `visitor-subscription-limit`) on
    /// the Redis at `url` under `prefix`; failures to answer are counted in
    /// `unavailable`. Connects lazily.
    pub fn new(
        url: &RedisConnector,
        prefix: &str,
        config: &LimitsConfig,
        stream_limit: usize,
        unavailable: Counter,
    ) -> Result<Self, String> {
        let conn = url.connect(OP_TIMEOUT);
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        Ok(RedisLimits {
            conn,
            prefix: KeyPrefix::new(prefix),
            node_id: format!("{:016x}", fastrand::u64(..)),
            shapes: Shapes {
                request_replenish_ms: millis(config.request_replenish),
                request_burst: config.request_burst.max(1),
                daily_messages: config.effective_message_daily_limit(),
                topic_replenish_ms: millis(config.topic_creation_replenish),
                topic_burst: config.topic_creation_burst,
                stream_limit,
                email_replenish_ms: millis(config.email_replenish),
                email_burst: config.email_burst.max(1),
            },
            charge: script(&[CHARGE_LUA]),
            refund: script(&[REFUND_LUA]),
            close: script(&[CLOSE_LUA]),
            email: script(&[EMAIL_LUA]),
            open_streams: Mutex::new(HashMap::new()),
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            degraded: AtomicBool::new(false),
            unavailable,
        })
    }

    /// Writes the heartbeat now, then keeps it alive on `tracker` until `stop`, when
    /// it is deleted (a cleanly stopped node's streams stop counting at once).
    pub async fn start(self: &Arc<Self>, tracker: &TaskTracker, stop: CancellationToken) {
        let _ = self.heartbeat(false).await;
        let this = self.clone();
        tracker.spawn(async move {
            let mut beats: u64 = 0;
            let resync_every = (RESYNC.as_secs() / HEARTBEAT.as_secs()).max(1);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                }
                beats += 1;
                if let Err(e) = this.heartbeat(beats.is_multiple_of(resync_every)).await {
                    tracing::debug!(error = %e, "limits heartbeat failed");
                }
            }
            let mut conn = this.conn.clone();
            let _ = tokio::time::timeout(
                OP_TIMEOUT,
                redis::cmd("DEL")
                    .arg(this.node_key())
                    .query_async::<()>(&mut conn),
            )
            .await;
        });
    }

    /// Renews the heartbeat; with `resync`, writes this node's open-stream counts too.
    async fn heartbeat(&self, resync: bool) -> Result<(), SharedLimitsError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.node_key())
            .arg(1)
            .arg("PX")
            .arg(NODE_TTL.as_millis() as u64)
            .ignore();
        if resync {
            let open = self
                .open_streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for (visitor, n) in open {
                let key = self.key("conn:", &visitor);
                pipe.cmd("HSET")
                    .arg(&key)
                    .arg(&self.node_id)
                    .arg(n)
                    .ignore();
                pipe.cmd("PEXPIRE")
                    .arg(&key)
                    .arg(CONN_TTL.as_millis() as u64)
                    .ignore();
            }
        }
        let mut conn = self.conn.clone();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    fn key(&self, kind: &str, visitor: &str) -> String {
        self.prefix.key(format_args!("{kind}{visitor}"))
    }

    fn node_key(&self) -> String {
        self.prefix.key(format_args!("node:{}", self.node_id))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `op` with [`OP_TIMEOUT`], unless Redis failed within the last
    /// [`BACKOFF`]; failures are counted and logged once per outage.
    async fn timed<T>(
        &self,
        op: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, SharedLimitsError> {
        if self.now_ms() < self.retry_at_ms.load(Ordering::Relaxed) {
            self.unavailable.inc();
            return Err(SharedLimitsError("backing off after a failure".into()));
        }
        let result = match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(SharedLimitsError(e.to_string())),
            Err(_) => Err(SharedLimitsError("Redis did not answer in time".into())),
        };
        match &result {
            Ok(_) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared rate limits: Redis answers again");
                }
            }
            Err(e) => {
                self.unavailable.inc();
                let backoff = u64::try_from(BACKOFF.as_millis()).unwrap_or(u64::MAX);
                self.retry_at_ms
                    .store(self.now_ms().saturating_add(backoff), Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "shared rate limits unavailable: this node limits on its own until Redis answers");
                }
            }
        }
        result
    }

    /// [`SharedLimits::charge`] at `now_ms` of the caller's clock (`None`: Redis's).
    pub async fn charge_at(
        &self,
        visitor: &str,
        charge: SharedCharge,
        now_ms: Option<u64>,
    ) -> Result<Verdict, SharedLimitsError> {
        let s = self.shapes;
        let topics = if s.topic_burst == 0 {
            0
        } else {
            charge.new_topics
        };
        let mut invocation = self.charge.prepare_invoke();
        invocation
            .key(self.key("rl:requests:", visitor))
            .key(self.key("rl:topics:", visitor))
            .key(self.key("rl:messages:", visitor))
            .key(self.key("conn:", visitor))
            .arg(now_ms.map(|n| n.to_string()).unwrap_or_default())
            .arg(if charge.request {
                s.request_replenish_ms
            } else {
                0
            })
            .arg(s.request_burst)
            .arg(if charge.message { s.daily_messages } else { 0 })
            .arg(if charge.open_stream {
                i64::try_from(s.stream_limit).unwrap_or(i64::MAX)
            } else {
                -1
            })
            .arg(&self.node_id)
            .arg(self.prefix.key("node:"))
            .arg(CONN_TTL.as_millis() as u64)
            .arg(topics)
            .arg(s.topic_replenish_ms)
            .arg(s.topic_burst)
            .arg(NODE_TTL.as_millis() as u64);
        let mut conn = self.conn.clone();
        let (code, retry_ms): (u8, u64) = self.timed(invocation.invoke_async(&mut conn)).await?;
        let limit = match code {
            0 => {
                if charge.open_stream {
                    *self
                        .open_streams
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(visitor.to_string())
                        .or_insert(0) += 1;
                }
                return Ok(Verdict::Admitted);
            }
            1 => Limit::Requests,
            2 => Limit::Messages,
            3 => Limit::Subscriptions,
            _ => Limit::TopicCreation,
        };
        Ok(Verdict::Refused {
            limit,
            retry_after: Duration::from_millis(retry_ms),
        })
    }
}

#[async_trait]
impl SharedLimits for RedisLimits {
    async fn charge(
        &self,
        visitor: &str,
        charge: SharedCharge,
    ) -> Result<Verdict, SharedLimitsError> {
        self.charge_at(visitor, charge, None).await
    }

    async fn charge_email(&self, visitor: &str) -> Result<Verdict, SharedLimitsError> {
        let mut invocation = self.email.prepare_invoke();
        invocation
            .key(self.key("rl:emails:", visitor))
            .arg(self.shapes.email_replenish_ms)
            .arg(self.shapes.email_burst);
        let mut conn = self.conn.clone();
        let (code, retry_ms): (u8, u64) = self.timed(invocation.invoke_async(&mut conn)).await?;
        Ok(match code {
            0 => Verdict::Admitted,
            _ => Verdict::Refused {
                limit: Limit::Emails,
                retry_after: Duration::from_millis(retry_ms),
            },
        })
    }

    async fn refund_message(&self, visitor: &str) -> Result<(), SharedLimitsError> {
        let mut invocation = self.refund.prepare_invoke();
        invocation.key(self.key("rl:messages:", visitor));
        let mut conn = self.conn.clone();
        self.timed(invocation.invoke_async::<i64>(&mut conn))
            .await
            .map(drop)
    }

    async fn messages_today(&self, visitor: &str) -> Result<u32, SharedLimitsError> {
        let mut conn = self.conn.clone();
        let n: Option<u32> = self
            .timed(
                redis::cmd("GET")
                    .arg(self.key("rl:messages:", visitor))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(n.unwrap_or(0))
    }

    fn close_stream(&self, visitor: &str) {
        {
            let mut open = self
                .open_streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = open.get_mut(visitor) {
                *n -= 1;
                if *n == 0 {
                    open.remove(visitor);
                }
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (script, key, node) = (
            self.close.clone(),
            self.key("conn:", visitor),
            self.node_id.clone(),
        );
        let mut conn = self.conn.clone();
        // Not `timed`: a release is not a request, and a lost one is repaired by the
        // next resync (or the node's heartbeat expiring).
        runtime.spawn(async move {
            let mut invocation = script.prepare_invoke();
            invocation.key(key).arg(node);
            let _ =
                tokio::time::timeout(OP_TIMEOUT, invocation.invoke_async::<i64>(&mut conn)).await;
        });
    }
}

#[cfg(test)]
mod tests;
