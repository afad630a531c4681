//! The Web Push store in Redis (cluster mode): every node shares the subscriptions,
//! the feed cursor and the send queue, under `<redis-key-prefix>wp:`:
//! `subs` (hash endpoint → JSON), `cursor`, `seq`, `jobs` (hash id → JSON), `due`
//! (sorted set id → due time, or lease end while claimed), `ep:<endpoint>` (the
//! endpoint's job ids). Each change is one Lua script (`redis/*.lua`), so a node
//! dying half-way leaves nothing half-done.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::store::{NewPush, PushJob, PushStore, PushStoreError, PushSubscription, backend};
use crate::cluster::connector::{Conn, RedisConnector};
use crate::cluster::redis::{KeyPrefix, OP_TIMEOUT, script};

const ENQUEUE_LUA: &str = include_str!("redis/enqueue.lua");
const CLAIM_LUA: &str = include_str!("redis/claim.lua");
const FINISH_LUA: &str = include_str!("redis/finish.lua");
const REMOVE_LUA: &str = include_str!("redis/remove.lua");

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    auth: String,
    p256dh: String,
    topics: Vec<String>,
    user: String,
    updated: i64,
}

pub(crate) struct RedisPushStore {
    conn: Conn,
    prefix: KeyPrefix,
    enqueue: Script,
    claim: Script,
    finish: Script,
    remove: Script,
}

async fn timed<T>(
    op: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, PushStoreError> {
    crate::cluster::redis::timed(op).await.map_err(backend)
}

impl RedisPushStore {
    pub(crate) fn open(
        redis: &RedisConnector,
        prefix: &str,
    ) -> Result<RedisPushStore, PushStoreError> {
        Ok(RedisPushStore {
            conn: redis.connect(OP_TIMEOUT),
            prefix: KeyPrefix::new(prefix).nested("wp:"),
            enqueue: script(&[ENQUEUE_LUA]),
            claim: script(&[CLAIM_LUA]),
            finish: script(&[FINISH_LUA]),
            remove: script(&[REMOVE_LUA]),
        })
    }

    fn key(&self, name: &str) -> String {
        self.prefix.key(name)
    }

    async fn remove_if(&self, endpoint: &str, before: Option<i64>) -> Result<bool, PushStoreError> {
        let mut inv = self.remove.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(endpoint)
            .arg(before.map(|b| b.to_string()).unwrap_or_default());
        let mut conn = self.conn.clone();
        let n: i64 = timed(inv.invoke_async(&mut conn)).await?;
        Ok(n > 0)
    }
}

#[async_trait]
impl PushStore for RedisPushStore {
    async fn upsert(&self, sub: PushSubscription) -> Result<(), PushStoreError> {
        let json = serde_json::to_string(&Stored {
            auth: sub.auth,
            p256dh: sub.p256dh,
            topics: sub.topics,
            user: sub.user,
            updated: sub.updated,
        })
        .map_err(backend)?;
        let mut conn = self.conn.clone();
        timed(
            redis::cmd("HSET")
                .arg(self.key("subs"))
                .arg(&sub.endpoint)
                .arg(json)
                .query_async::<i64>(&mut conn),
        )
        .await
        .map(drop)
    }

    async fn remove(&self, endpoint: &str) -> Result<bool, PushStoreError> {
        self.remove_if(endpoint, None).await
    }

    async fn subscriptions(&self) -> Result<Vec<PushSubscription>, PushStoreError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = timed(
            redis::cmd("HGETALL")
                .arg(self.key("subs"))
                .query_async(&mut conn),
        )
        .await?;
        Ok(all
            .into_iter()
            // An entry this code did not write matches nothing rather than failing
            // every other subscription.
            .filter_map(|(endpoint, json)| {
                let s: Stored = serde_json::from_str(&json).ok()?;
                Some(PushSubscription {
                    endpoint,
                    auth: s.auth,
                    p256dh: s.p256dh,
                    topics: s.topics,
                    user: s.user,
                    updated: s.updated,
                })
            })
            .collect())
    }

    async fn expire(&self, before: i64) -> Result<usize, PushStoreError> {
        let mut n = 0;
        for s in self.subscriptions().await? {
            if s.updated < before && self.remove_if(&s.endpoint, Some(before)).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn cursor(&self) -> Result<Option<String>, PushStoreError> {
        let mut conn = self.conn.clone();
        timed(
            redis::cmd("GET")
                .arg(self.key("cursor"))
                .query_async(&mut conn),
        )
        .await
    }

    async fn enqueue_from(
        &self,
        jobs: Vec<NewPush>,
        from: Option<&str>,
        next: &str,
    ) -> Result<bool, PushStoreError> {
        let mut inv = self.enqueue.prepare_invoke();
        inv.arg(&self.prefix).arg(from.unwrap_or("")).arg(next);
        for j in &jobs {
            inv.arg(&j.endpoint).arg(&j.payload).arg(j.due_ms);
        }
        let mut conn = self.conn.clone();
        let n: i64 = timed(inv.invoke_async(&mut conn)).await?;
        Ok(n >= 0)
    }

    async fn claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<PushJob>, PushStoreError> {
        let mut inv = self.claim.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(now_ms)
            .arg(limit)
            .arg(now_ms + lease.as_millis() as i64);
        let mut conn = self.conn.clone();
        let flat: Vec<String> = timed(inv.invoke_async(&mut conn)).await?;
        Ok(flat
            .chunks_exact(6)
            .map(|c| PushJob {
                id: c[0].clone(),
                endpoint: c[1].clone(),
                auth: c[2].clone(),
                p256dh: c[3].clone(),
                payload: c[4].clone(),
                attempt: c[5].parse().unwrap_or(0),
            })
            .collect())
    }

    async fn finish(&self, id: &str, retry_at_ms: Option<i64>) -> Result<(), PushStoreError> {
        let mut inv = self.finish.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(id)
            .arg(retry_at_ms.map(|t| t.to_string()).unwrap_or_default());
        let mut conn = self.conn.clone();
        timed(inv.invoke_async::<i64>(&mut conn)).await.map(drop)
    }

    async fn queue_len(&self) -> Result<u64, PushStoreError> {
        let mut conn = self.conn.clone();
        timed(
            redis::cmd("HLEN")
                .arg(self.key("jobs"))
                .query_async(&mut conn),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the Redis on 127.0.0.1:6379 (.ci/run starts it), under a key prefix
    /// of its own.
    #[tokio::test]
    async fn redis_store_keeps_the_contract() {
        let prefix = format!(
            "herald-test-wp-{}:",
            crate::model::MessageId::generate().into_string()
        );
        let store = RedisPushStore::open(&crate::cluster::connector::local(), &prefix).unwrap();
        super::super::store::contract::queue_round_trip(&store).await;
        let mut conn = store.conn.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}
