//! Idempotency keys of a cluster (`redis-url`): the claim is one Lua script, so of
//! concurrent requests with one key on any number of nodes exactly one publishes;
//! the others see the claim (and wait for its result) or the result.
//!
//! Key layout (`P` is `redis-key-prefix`): `P idem:<sha256 of scope and key>` (hash:
//! `fp` the request's fingerprint, `resp` the response once published; expiring
//! after the claim's lease, then after `idempotency-window`), `P idem:index` (sorted
//! set of those keys by expiry, which bounds them to `idempotency-key-limit`). Time
//! is Redis's clock, so nodes with skewed clocks agree on expiry.

use std::time::Duration;

use async_trait::async_trait;
use redis::{RedisError, Script};
use sha2::{Digest, Sha256};

use super::{Claim, Fingerprint, KeyStore, KeyStoreError};
use crate::cluster::connector::{Conn, RedisConnector};
use crate::cluster::redis::{KeyPrefix, OP_TIMEOUT, RedisFailure, script};

const CLAIM_LUA: &str = include_str!("redis/claim.lua");
const COMPLETE_LUA: &str = include_str!("redis/complete.lua");
const RELEASE_LUA: &str = include_str!("redis/release.lua");

/// Idempotency keys in Redis, shared by every node. See the module docs.
pub struct RedisKeys {
    conn: Conn,
    prefix: KeyPrefix,
    limit: usize,
    claim: Script,
    complete: Script,
    release: Script,
}

impl std::fmt::Debug for RedisKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKeys")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisKeys {
    /// Keys under `prefix` on the Redis at `url`, at most `limit` of them.
    pub fn open(redis: &RedisConnector, prefix: &str, limit: usize) -> Result<Self, KeyStoreError> {
        let conn = redis.connect(OP_TIMEOUT);
        Ok(RedisKeys {
            conn,
            prefix: KeyPrefix::new(prefix).nested("idem:"),
            limit: limit.max(1),
            claim: script(&[CLAIM_LUA]),
            complete: script(&[COMPLETE_LUA]),
            release: script(&[RELEASE_LUA]),
        })
    }

    /// The hash of `id` (hashed: scopes and keys may hold any printable text).
    fn entry(&self, id: &str) -> String {
        let digest = Sha256::digest(id.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.prefix.key(hex)
    }

    fn index(&self) -> String {
        self.prefix.key("index")
    }
}

async fn timed<T>(op: impl Future<Output = Result<T, RedisError>>) -> Result<T, KeyStoreError> {
    crate::cluster::redis::timed(op).await.map_err(|e| match e {
        RedisFailure::Unavailable(e) => KeyStoreError::Unavailable(e),
        RedisFailure::Failed(e) => KeyStoreError::Failed(e),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl KeyStore for RedisKeys {
    async fn claim(
        &self,
        id: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, KeyStoreError> {
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(self.entry(id))
            .key(self.index())
            .arg(&fingerprint.0[..])
            .arg(millis(lease))
            .arg(self.limit);
        let mut conn = self.conn.clone();
        let reply: (u8, Vec<u8>) = timed(invocation.invoke_async(&mut conn)).await?;
        Ok(match reply {
            (0, _) => Claim::Won,
            (1, response) => Claim::Done(response),
            (2, _) => Claim::Pending,
            (3, _) => Claim::Mismatch,
            (code, _) => {
                return Err(KeyStoreError::Failed(format!(
                    "unexpected claim reply {code}"
                )));
            }
        })
    }

    async fn complete(
        &self,
        id: &str,
        response: &[u8],
        window: Duration,
    ) -> Result<(), KeyStoreError> {
        let mut invocation = self.complete.prepare_invoke();
        invocation
            .key(self.entry(id))
            .key(self.index())
            .arg(response)
            .arg(millis(window));
        let mut conn = self.conn.clone();
        let recorded: u8 = timed(invocation.invoke_async(&mut conn)).await?;
        if recorded == 0 {
            return Err(KeyStoreError::Failed(
                "the claim expired before its publish finished".into(),
            ));
        }
        Ok(())
    }

    async fn release(&self, id: &str) -> Result<(), KeyStoreError> {
        let mut invocation = self.release.prepare_invoke();
        invocation.key(self.entry(id)).key(self.index());
        let mut conn = self.conn.clone();
        timed(invocation.invoke_async::<u8>(&mut conn))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key store protocol on the real Redis (127.0.0.1:6379) under a prefix of
    /// its own, whose keys are deleted afterwards.
    #[tokio::test]
    async fn keeps_the_key_store_protocol() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let prefix = format!("herald-test:idem:{}:{nanos}:", std::process::id());
        let keys = RedisKeys::open(&crate::cluster::connector::local(), &prefix, 3).unwrap();
        super::super::tests::check_store(&keys).await;
        let mut conn = keys.conn.clone();
        let held: usize = redis::cmd("ZCARD")
            .arg(keys.index())
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            held, 2,
            "d and e: the bound took c (a is claimed, not completed)"
        );
        let _: () = redis::cmd("EVAL")
            .arg("for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do redis.call('DEL', k) end")
            .arg(0)
            .arg(&prefix)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
