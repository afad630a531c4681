//! The cluster's mail queue in Redis: one queue every node pushes to and every
//! node's sender claims from, so each accepted mail is sent by one node (and again
//! only if that node died mid-send: its lease lapses).
//!
//! Key layout (`P` is `redis-key-prefix`): `P mail:due` (sorted set: mail ID →
//! when it can next be claimed, ms: its due time, or while claimed the lease end),
//! `P mail:m:<id>` (hash: `to`, `body`, `attempts`, `created`, `owner`).

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::queue::{MailQueue, QueueError, QueuedMail, queue_error};
use crate::cluster::connector::{Conn, RedisConnector};
use crate::cluster::redis::{KeyPrefix, OP_TIMEOUT, script};

/// ARGV: P, id, to, body, attempts, created, due. 1 if queued.
const PUSH_LUA: &str = include_str!("redis/push.lua");
/// ARGV: P, now, until, owner, max. 5 values per claimed mail.
const CLAIM_LUA: &str = include_str!("redis/claim.lua");
/// ARGV: P, id, owner, retry at ('' = remove).
const SETTLE_LUA: &str = include_str!("redis/settle.lua");

/// The mail queue in Redis.
pub struct RedisMailQueue {
    conn: Conn,
    prefix: KeyPrefix,
    push: Script,
    claim: Script,
    settle: Script,
}

async fn timed<T>(op: impl Future<Output = Result<T, redis::RedisError>>) -> Result<T, QueueError> {
    crate::cluster::redis::timed(op).await.map_err(queue_error)
}

impl RedisMailQueue {
    /// The queue on cluster mode's Redis, under `prefix`. Connects lazily.
    pub fn new(redis: &RedisConnector, prefix: &str) -> Result<RedisMailQueue, QueueError> {
        Ok(RedisMailQueue {
            conn: redis.connect(OP_TIMEOUT),
            prefix: KeyPrefix::new(prefix),
            push: script(&[PUSH_LUA]),
            claim: script(&[CLAIM_LUA]),
            settle: script(&[SETTLE_LUA]),
        })
    }
}

#[async_trait]
impl MailQueue for RedisMailQueue {
    async fn push(&self, mail: &QueuedMail, due_ms: i64) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let mut call = self.push.prepare_invoke();
        call.arg(&self.prefix)
            .arg(&mail.id)
            .arg(&mail.to)
            .arg(&mail.body)
            .arg(mail.attempts)
            .arg(mail.created_ms)
            .arg(due_ms);
        let ticket = conn.ticket().await;
        timed(call.invoke_async::<i64>(&mut conn)).await?;
        // A queued mail survives losing the primary (`redis-min-replicas-acked`).
        timed(conn.confirm(ticket)).await
    }

    async fn claim(
        &self,
        now_ms: i64,
        lease: Duration,
        owner: &str,
        max: usize,
    ) -> Result<Vec<QueuedMail>, QueueError> {
        let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let mut conn = self.conn.clone();
        let mut call = self.claim.prepare_invoke();
        call.arg(&self.prefix)
            .arg(now_ms)
            .arg(until)
            .arg(owner)
            .arg(max);
        let flat: Vec<Vec<u8>> = timed(call.invoke_async(&mut conn)).await?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok(flat
            .chunks_exact(5)
            .map(|c| QueuedMail {
                id: text(&c[0]),
                to: text(&c[1]),
                body: c[2].clone(),
                attempts: text(&c[3]).parse().unwrap_or(0),
                created_ms: text(&c[4]).parse().unwrap_or(0),
            })
            .collect())
    }

    async fn settle(&self, id: &str, owner: &str, retry_at: Option<i64>) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let mut call = self.settle.prepare_invoke();
        call.arg(&self.prefix)
            .arg(id)
            .arg(owner)
            .arg(retry_at.map(|t| t.to_string()).unwrap_or_default());
        timed(call.invoke_async::<i64>(&mut conn)).await.map(drop)
    }

    async fn next_due(&self) -> Result<Option<i64>, QueueError> {
        let mut conn = self.conn.clone();
        let first: Vec<(String, f64)> = timed(
            redis::cmd("ZRANGE")
                .arg(self.prefix.key("mail:due"))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .query_async(&mut conn),
        )
        .await?;
        Ok(first.first().map(|(_, score)| *score as i64))
    }

    async fn len(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        timed(
            redis::cmd("ZCARD")
                .arg(self.prefix.key("mail:due"))
                .query_async(&mut conn),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the Redis on 127.0.0.1:6379 (started by .ci/run), under a key
    /// prefix of its own.
    #[tokio::test]
    async fn claims_are_exclusive_across_nodes_and_settle() {
        let prefix = format!("herald-test-mail-{:08x}:", fastrand::u32(..));
        let a = RedisMailQueue::new(&crate::cluster::connector::local(), &prefix).unwrap();
        let b = RedisMailQueue::new(&crate::cluster::connector::local(), &prefix).unwrap();
        let mail = QueuedMail {
            id: "m1".into(),
            to: "a@b.c".into(),
            body: vec![0, 1, 2, 255],
            attempts: 0,
            created_ms: 7,
        };
        a.push(&mail, 100).await.unwrap();
        b.push(&mail, 100).await.unwrap();
        assert_eq!(a.len().await.unwrap(), 1);
        let lease = Duration::from_secs(10);
        let got = a.claim(200, lease, "a", 10).await.unwrap();
        assert_eq!(got, vec![mail.clone()]);
        assert!(b.claim(300, lease, "b", 10).await.unwrap().is_empty());
        assert_eq!(b.next_due().await.unwrap(), Some(10_200));
        // The lease lapsed: node b takes it over; a's late retry changes nothing.
        assert_eq!(b.claim(10_200, lease, "b", 10).await.unwrap().len(), 1);
        a.settle("m1", "a", Some(50)).await.unwrap();
        assert!(b.claim(10_300, lease, "b", 10).await.unwrap().is_empty());
        b.settle("m1", "b", Some(20_000)).await.unwrap();
        let got = a.claim(20_000, lease, "a", 10).await.unwrap();
        assert_eq!(got[0].attempts, 1);
        a.settle("m1", "a", None).await.unwrap();
        assert_eq!(a.len().await.unwrap(), 0);
        assert_eq!(a.next_due().await.unwrap(), None);
    }
}
