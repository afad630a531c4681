//! Where Web Push subscriptions and their send queue live: the [`PushStore`] trait,
//! with SQLite (`web-push-file`, one node) and Redis (cluster mode,
//! [`super::redis`]) implementations.
//!
//! The queue has the webhook queue's shape (crate::webhook): the feed turns committed
//! messages into one job per matching subscription and stores them together with
//! its new cursor in one step ([`PushStore::enqueue_from`], refused when another
//! node moved the cursor first, so each message is queued once per subscription);
//! senders claim due jobs under a lease, so a crashed sender's jobs are sent later
//! by someone else, and nothing acknowledged is lost.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension as _, params};

/// A browser's push subscription (ntfy's `POST /v1/webpush` body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushSubscription {
    pub endpoint: String,
    /// base64url, 16 bytes once decoded.
    pub auth: String,
    /// base64url, the 65-byte P-256 point once decoded.
    pub p256dh: String,
    pub topics: Vec<String>,
    /// Who registered it ("" for anonymous).
    pub user: String,
    /// Unix seconds of the last registration (expiry counts from here).
    pub updated: i64,
}

/// A message to queue for one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewPush {
    pub endpoint: String,
    /// The JSON payload (before encryption).
    pub payload: String,
    /// Unix milliseconds from which it may be sent (a scheduled message's time).
    pub due_ms: i64,
}

/// A claimed job, with the keys to encrypt it for its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushJob {
    pub id: String,
    pub endpoint: String,
    pub auth: String,
    pub p256dh: String,
    pub payload: String,
    /// Attempts already made.
    pub attempt: u32,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PushStoreError {
    #[error("web push store: {0}")]
    Backend(String),
}

pub(crate) fn backend(e: impl std::fmt::Display) -> PushStoreError {
    PushStoreError::Backend(e.to_string())
}

/// See the module docs.
#[async_trait]
pub(crate) trait PushStore: Send + Sync + 'static {
    /// Adds or replaces the subscription of `sub.endpoint` (its topics, keys, user).
    async fn upsert(&self, sub: PushSubscription) -> Result<(), PushStoreError>;
    /// Removes a subscription and its queued jobs; false if there was none.
    async fn remove(&self, endpoint: &str) -> Result<bool, PushStoreError>;
    /// Every subscription (the feed matches topics in memory).
    async fn subscriptions(&self) -> Result<Vec<PushSubscription>, PushStoreError>;
    /// Removes subscriptions last registered before `before` (unix seconds).
    async fn expire(&self, before: i64) -> Result<usize, PushStoreError>;
    /// The feed's cursor (`None`: the feed has not run yet).
    async fn cursor(&self) -> Result<Option<String>, PushStoreError>;
    /// Queues `jobs` and moves the cursor from `from` to `next` in one step; false
    /// (and nothing done) if the cursor is no longer `from`.
    async fn enqueue_from(
        &self,
        jobs: Vec<NewPush>,
        from: Option<&str>,
        next: &str,
    ) -> Result<bool, PushStoreError>;
    /// Up to `limit` due jobs, leased for `lease` (others skip them meanwhile).
    async fn claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<PushJob>, PushStoreError>;
    /// Settles a claimed job: sent or given up (`retry_at_ms: None`), or due again.
    async fn finish(&self, id: &str, retry_at_ms: Option<i64>) -> Result<(), PushStoreError>;
    /// Jobs waiting (due or not, leased or not).
    async fn queue_len(&self) -> Result<u64, PushStoreError>;
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subscriptions (
    endpoint TEXT PRIMARY KEY,
    auth TEXT NOT NULL,
    p256dh TEXT NOT NULL,
    topics TEXT NOT NULL,
    user TEXT NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    payload TEXT NOT NULL,
    due INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    lease_until INTEGER
);
CREATE INDEX IF NOT EXISTS queue_due ON queue (due);
CREATE INDEX IF NOT EXISTS queue_endpoint ON queue (endpoint);
CREATE TABLE IF NOT EXISTS feed (id INTEGER PRIMARY KEY CHECK (id = 1), cursor TEXT NOT NULL);
";

/// The single-node store: one SQLite file (`web-push-file`).
pub(crate) struct SqlitePushStore {
    db: crate::datafiles::ServiceDb,
}

impl SqlitePushStore {
    pub(crate) fn open(path: &Path) -> Result<SqlitePushStore, PushStoreError> {
        let db = crate::datafiles::ServiceDb::open(path).map_err(PushStoreError::Backend)?;
        {
            let conn = db.lock();
            conn.execute_batch(SCHEMA)
                // Leases of a previous run are void: this process is the only sender.
                .and_then(|()| conn.execute("UPDATE queue SET lease_until = NULL", []))
                .map_err(backend)?;
        }
        Ok(SqlitePushStore { db })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, PushStoreError> {
        self.db.with(f).await.map_err(PushStoreError::Backend)
    }
}

#[async_trait]
impl PushStore for SqlitePushStore {
    async fn upsert(&self, sub: PushSubscription) -> Result<(), PushStoreError> {
        let topics = serde_json::to_string(&sub.topics).map_err(backend)?;
        self.with(move |c| {
            c.execute(
                "INSERT INTO subscriptions (endpoint, auth, p256dh, topics, user, updated) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (endpoint) DO UPDATE SET \
                 auth = ?2, p256dh = ?3, topics = ?4, user = ?5, updated = ?6",
                params![
                    sub.endpoint,
                    sub.auth,
                    sub.p256dh,
                    topics,
                    sub.user,
                    sub.updated
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn remove(&self, endpoint: &str) -> Result<bool, PushStoreError> {
        let endpoint = endpoint.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM queue WHERE endpoint = ?1", [&endpoint])?;
            let n = tx.execute("DELETE FROM subscriptions WHERE endpoint = ?1", [&endpoint])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn subscriptions(&self) -> Result<Vec<PushSubscription>, PushStoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT endpoint, auth, p256dh, topics, user, updated FROM subscriptions",
            )?;
            let rows = stmt.query_map([], |r| {
                let topics: String = r.get(3)?;
                Ok(PushSubscription {
                    endpoint: r.get(0)?,
                    auth: r.get(1)?,
                    p256dh: r.get(2)?,
                    // A row this code wrote is always a JSON list; anything else
                    // matches no topic rather than failing every other row.
                    topics: serde_json::from_str(&topics).unwrap_or_default(),
                    user: r.get(4)?,
                    updated: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn expire(&self, before: i64) -> Result<usize, PushStoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM queue WHERE endpoint IN (SELECT endpoint FROM subscriptions WHERE updated < ?1)",
                [before],
            )?;
            let n = tx.execute("DELETE FROM subscriptions WHERE updated < ?1", [before])?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn cursor(&self) -> Result<Option<String>, PushStoreError> {
        self.with(|c| {
            c.query_row("SELECT cursor FROM feed WHERE id = 1", [], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn enqueue_from(
        &self,
        jobs: Vec<NewPush>,
        from: Option<&str>,
        next: &str,
    ) -> Result<bool, PushStoreError> {
        let (from, next) = (from.map(str::to_string), next.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            let current: Option<String> = tx
                .query_row("SELECT cursor FROM feed WHERE id = 1", [], |r| r.get(0))
                .optional()?;
            if current != from {
                return Ok(false);
            }
            {
                let mut insert =
                    tx.prepare("INSERT INTO queue (endpoint, payload, due) VALUES (?1, ?2, ?3)")?;
                for j in &jobs {
                    insert.execute(params![j.endpoint, j.payload, j.due_ms])?;
                }
            }
            tx.execute(
                "INSERT INTO feed (id, cursor) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET cursor = ?1",
                [&next],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<PushJob>, PushStoreError> {
        let until = now_ms + lease.as_millis() as i64;
        self.with(move |c| {
            let tx = c.transaction()?;
            let jobs = {
                let mut stmt = tx.prepare(
                    "SELECT q.id, q.endpoint, s.auth, s.p256dh, q.payload, q.attempt \
                     FROM queue q JOIN subscriptions s ON s.endpoint = q.endpoint \
                     WHERE q.due <= ?1 AND (q.lease_until IS NULL OR q.lease_until < ?1) \
                     ORDER BY q.id LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![now_ms, limit as i64], |r| {
                    Ok(PushJob {
                        id: r.get::<_, i64>(0)?.to_string(),
                        endpoint: r.get(1)?,
                        auth: r.get(2)?,
                        p256dh: r.get(3)?,
                        payload: r.get(4)?,
                        attempt: r.get(5)?,
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            for j in &jobs {
                tx.execute(
                    "UPDATE queue SET lease_until = ?1 WHERE id = ?2",
                    params![until, j.id],
                )?;
            }
            tx.commit()?;
            Ok(jobs)
        })
        .await
    }

    async fn finish(&self, id: &str, retry_at_ms: Option<i64>) -> Result<(), PushStoreError> {
        let id: i64 = id.parse().map_err(backend)?;
        self.with(move |c| {
            match retry_at_ms {
                None => c.execute("DELETE FROM queue WHERE id = ?1", [id])?,
                Some(at) => c.execute(
                    "UPDATE queue SET due = ?1, attempt = attempt + 1, lease_until = NULL WHERE id = ?2",
                    params![at, id],
                )?,
            };
            Ok(())
        })
        .await
    }

    async fn queue_len(&self) -> Result<u64, PushStoreError> {
        self.with(|c| c.query_row("SELECT COUNT(*) FROM queue", [], |r| r.get::<_, i64>(0)))
            .await
            .map(|n| n.max(0) as u64)
    }
}

/// Behaviour every [`PushStore`] must have; run against each implementation.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;

    pub(crate) fn sub(endpoint: &str, topics: &[&str], updated: i64) -> PushSubscription {
        PushSubscription {
            endpoint: endpoint.into(),
            auth: "a".into(),
            p256dh: "p".into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            user: String::new(),
            updated,
        }
    }

    pub(crate) async fn queue_round_trip(store: &dyn PushStore) {
        store
            .upsert(sub("https://p/1", &["a", "b"], 100))
            .await
            .unwrap();
        store.upsert(sub("https://p/2", &["b"], 100)).await.unwrap();
        store.upsert(sub("https://p/1", &["a"], 200)).await.unwrap();
        let mut subs = store.subscriptions().await.unwrap();
        subs.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].topics, vec!["a".to_string()]);
        assert_eq!(subs[0].updated, 200);

        assert_eq!(store.cursor().await.unwrap(), None);
        let job = |e: &str, due| NewPush {
            endpoint: e.into(),
            payload: format!("{{\"to\":\"{e}\"}}"),
            due_ms: due,
        };
        assert!(
            store
                .enqueue_from(
                    vec![job("https://p/1", 0), job("https://p/2", 5_000)],
                    None,
                    "c1"
                )
                .await
                .unwrap()
        );
        // Another feeder that read from the old cursor queues nothing.
        assert!(
            !store
                .enqueue_from(vec![job("https://p/1", 0)], None, "c1")
                .await
                .unwrap()
        );
        assert_eq!(store.cursor().await.unwrap().as_deref(), Some("c1"));
        assert_eq!(store.queue_len().await.unwrap(), 2);

        let lease = Duration::from_secs(60);
        let due = store.claim(1_000, 10, lease).await.unwrap();
        assert_eq!(due.len(), 1, "only the due job");
        assert_eq!(due[0].endpoint, "https://p/1");
        assert_eq!(due[0].auth, "a");
        assert!(
            store.claim(1_000, 10, lease).await.unwrap().is_empty(),
            "leased"
        );
        store.finish(&due[0].id, Some(2_000)).await.unwrap();
        let again = store.claim(2_000, 10, lease).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempt, 1);
        store.finish(&again[0].id, None).await.unwrap();
        // A lapsed lease makes a job claimable again (a crashed sender).
        let late = store.claim(6_000, 10, lease).await.unwrap();
        assert_eq!(late.len(), 1);
        assert_eq!(
            store.claim(6_000 + 61_000, 10, lease).await.unwrap().len(),
            1
        );

        // Removing a subscription drops its jobs; expiry removes old ones.
        assert!(store.remove("https://p/2").await.unwrap());
        assert!(!store.remove("https://p/2").await.unwrap());
        assert_eq!(store.queue_len().await.unwrap(), 0);
        assert_eq!(store.expire(150).await.unwrap(), 0);
        assert_eq!(store.expire(250).await.unwrap(), 1);
        assert!(store.subscriptions().await.unwrap().is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlitePushStore::open(&dir.path().join("webpush.db")).unwrap();
        contract::queue_round_trip(&store).await;
    }

    #[tokio::test]
    async fn jobs_survive_a_restart_and_their_leases_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webpush.db");
        let claimable = |store: SqlitePushStore| async move {
            store
                .claim(0, 1, Duration::from_secs(60))
                .await
                .unwrap()
                .len()
        };
        {
            let store = SqlitePushStore::open(&path).unwrap();
            store
                .upsert(contract::sub("https://p/1", &["a"], 1))
                .await
                .unwrap();
            let job = NewPush {
                endpoint: "https://p/1".into(),
                payload: "{}".into(),
                due_ms: 0,
            };
            store.enqueue_from(vec![job], None, "c").await.unwrap();
            assert_eq!(claimable(store).await, 1);
        }
        assert_eq!(claimable(SqlitePushStore::open(&path).unwrap()).await, 1);
    }
}
