//! Cluster fan-out: every node reads the one log stream the Redis store writes
//! (`store::redis`) and feeds its own hub from it, in log order.
//!
//! Why a stream read and not pub/sub: the log is ordered by Redis and kept for a while,
//! so a node that loses Redis for a moment resumes reading where it stopped and its
//! subscribers miss nothing; pub/sub would drop whatever was published meanwhile.
//! One blocking `XREAD` loop per node, on its own connection; entries of topics
//! without local subscribers are skipped without decoding. Uncached events (`Cache:
//! no`) are not in the store, so [`RedisBroker::publish`] appends them to the log
//! itself; cached ones are on the log already when the store's commit returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::streams::StreamReadReply;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Broker, BrokerError};
use crate::cluster::connector::{Conn, RedisConnector};
use crate::cluster::redis::{OP_TIMEOUT, RedisFailure, timed};
use crate::hub::{CloseReason, Hub, SharedEvent};
use crate::store::redis::{Delivered, Keys, LogWriter, decode, encode, entry_parts};

/// How long one `XREAD` blocks waiting for new entries.
const READ_BLOCK: Duration = Duration::from_secs(2);
/// Most log entries taken per read.
const READ_COUNT: usize = 1000;
/// Backoff between failed reads: doubles from the first to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The Redis [`Broker`]. See the module docs.
pub struct RedisBroker {
    log: LogWriter,
    keys: Keys,
    reader: Conn,
    /// Whether the last log read succeeded (readiness).
    connected: Arc<AtomicBool>,
    delivered: Arc<Delivered>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// A broker on the Redis at `url` under `prefix`. Nothing is read until
    /// [`Self::start_reader`]. `delivered` is shared with this node's `RedisStore`.
    pub fn new(
        url: &RedisConnector,
        prefix: &str,
        delivered: Arc<Delivered>,
    ) -> Result<Self, BrokerError> {
        let keys = Keys::new(prefix);
        let writer = url.connect(OP_TIMEOUT);
        // The reader blocks in XREAD: its own connection, so it never delays commands.
        let reader = url.connect(READ_BLOCK + OP_TIMEOUT);
        Ok(RedisBroker {
            log: LogWriter::new(writer, keys.clone(), Duration::ZERO),
            keys,
            reader,
            connected: Arc::new(AtomicBool::new(false)),
            delivered,
        })
    }

    /// Starts the loop that reads the log into `hub` until `shutdown`. Call before the
    /// node serves anything: the reader starts at the log's end as of now, and that
    /// position is also where this node's history stops and live delivery begins, so
    /// a subscriber that connects right after start-up misses nothing published after
    /// it registered. If Redis cannot be reached now, "now" is this node's clock
    /// (a skew between it and Redis's clock can then cost or repeat that many
    /// milliseconds of messages for subscribers of the first moments).
    pub async fn start_reader(
        &self,
        hub: Arc<Hub>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let mut reader = LogReader {
            conn: self.reader.clone(),
            log: self.keys.log(),
            hub,
            connected: self.connected.clone(),
            delivered: self.delivered.clone(),
        };
        let start = match reader.edge_of_log("XREVRANGE", "+", "-").await {
            Ok(newest) => newest.unwrap_or_else(|| "0-0".into()),
            Err(e) => {
                tracing::warn!(error = %e, "redis: unreachable at start-up; will keep trying");
                format!("{}-0", crate::model::now_unix_ms().max(0))
            }
        };
        reader.delivered.advance(&start);
        tracker.spawn(reader.run(start, shutdown));
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        event: Arc<SharedEvent>,
    ) -> Result<Option<crate::hub::FanOut>, BrokerError> {
        let message = &event.message;
        let unavailable = |e: crate::store::StoreError| BrokerError::Unavailable(e.to_string());
        let json = encode(message).map_err(unavailable)?;
        self.log
            .append(&message.topic, &json, false)
            .await
            .map_err(unavailable)?;
        // This node's reader hands it to the hub, like every node's.
        Ok(None)
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// One node's reader of the log.
struct LogReader {
    conn: Conn,
    log: String,
    hub: Arc<Hub>,
    connected: Arc<AtomicBool>,
    delivered: Arc<Delivered>,
}

impl LogReader {
    /// Reads from after position `last` until `shutdown`.
    async fn run(mut self, mut last: String, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let mut recovering = false;
        loop {
            let step = async {
                let from = last.clone();
                if recovering {
                    self.check_gap(&from).await?;
                }
                let reply = self.read(&from).await?;
                Ok::<_, crate::store::StoreError>((from, reply))
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = step => r,
            };
            match result {
                Ok((from, reply)) => {
                    if !self.connected.swap(true, Ordering::Relaxed) {
                        tracing::info!("redis: reading the cluster log");
                    }
                    recovering = false;
                    backoff = BACKOFF_MIN;
                    last = self.deliver(reply, from).await;
                }
                Err(e) => {
                    if self.connected.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "redis: cannot read the cluster log; retrying");
                    }
                    recovering = true;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// The position of the log's first entry in the direction of `range` (`XRANGE`:
    /// the oldest, `XREVRANGE`: the newest), if it has any.
    async fn edge_of_log(
        &mut self,
        range: &str,
        from: &str,
        to: &str,
    ) -> Result<Option<String>, crate::store::StoreError> {
        let first: Vec<(String, redis::Value)> = timed(
            redis::cmd(range)
                .arg(&self.log)
                .arg(from)
                .arg(to)
                .arg("COUNT")
                .arg(1)
                .query_async(&mut self.conn),
        )
        .await?;
        Ok(first.into_iter().next().map(|(id, _)| id))
    }

    /// After an outage: if the log was trimmed past where this node stopped, events
    /// were lost to this node's subscribers, so they are closed and resume from
    /// history with `since=` (which has every cached message).
    async fn check_gap(&mut self, from: &str) -> Result<(), crate::store::StoreError> {
        let oldest = self.edge_of_log("XRANGE", "-", "+").await?;
        let gap = oldest.is_some_and(|oldest| entry_parts(&oldest) > entry_parts(from));
        if gap {
            tracing::warn!(
                "redis: the cluster log moved past this node during the outage; \
                 closing local subscribers so they resume from history"
            );
            self.hub.close_all(CloseReason::TooSlow);
        }
        Ok(())
    }

    async fn read(&mut self, from: &str) -> Result<StreamReadReply, crate::store::StoreError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.log)
            .arg(from);
        let read = cmd.query_async::<Option<StreamReadReply>>(&mut self.conn);
        // The block itself is not a failure: allow for it on top of the usual limit.
        match tokio::time::timeout(READ_BLOCK + OP_TIMEOUT, read).await {
            Ok(Ok(reply)) => Ok(reply.unwrap_or_default()),
            Ok(Err(e)) => Err(RedisFailure::from(e).into()),
            Err(_) => Err(crate::store::StoreError::Unavailable(
                "log read timed out".into(),
            )),
        }
    }

    /// Hands the entries to the hub in log order and advances [`Delivered`]; returns
    /// the new last position.
    async fn deliver(&self, reply: StreamReadReply, mut last: String) -> String {
        let _dispatching = self.delivered.dispatching().await;
        for key in reply.keys {
            for entry in key.ids {
                let topic: Option<String> = entry.get("t");
                if topic.as_deref().is_some_and(|t| self.hub.has_topic(t)) {
                    let json: Option<String> = entry.get("m");
                    match json.as_deref().map(|j| decode(&entry.id, j)) {
                        Some(Ok(message)) => {
                            self.hub.dispatch(&SharedEvent::new(message)).await;
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "skipping undecodable event"),
                        None => tracing::warn!(entry = %entry.id, "log entry without a message"),
                    }
                }
                last = entry.id;
            }
        }
        self.delivered.advance(&last);
        last
    }
}
