//! The embedded webhook store: its own SQLite file (`webhook-file`), WAL mode.
//!
//! Webhook traffic is a small fraction of publish traffic and mostly small updates,
//! so one connection behind a mutex (used from the blocking pool) is enough; it is a
//! separate file so the webhook queue never holds up the message store's group
//! commit. herald with SQLite is one node, so the claims of a previous run are dead
//! by definition: opening the store releases them (a Redis store relies on lease
//! expiry instead).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::store::{
    Attempt, AttemptRecord, Delivery, NewDelivery, QueueStats, Settlement, WebhookStore,
    WebhookStoreError,
};
use super::{Filter, Webhook};

const SCHEMA_VERSION: i64 = 2;

const SCHEMA_V1: &str = "
CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,
    topic           TEXT NOT NULL,
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,
    previous_secret TEXT,
    previous_until  INTEGER,
    filter          TEXT NOT NULL,
    description     TEXT NOT NULL,
    ordered         INTEGER NOT NULL,
    owner           TEXT NOT NULL,
    created         INTEGER NOT NULL,
    start_after     TEXT NOT NULL,
    disabled_reason TEXT,
    disabled_at     INTEGER,
    failing_since   INTEGER
);
-- state: 0 pending, 1 delivered, 2 exhausted.
CREATE TABLE deliveries (
    pk           INTEGER PRIMARY KEY,
    webhook_id   TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    event        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    event_time   INTEGER NOT NULL,
    due_ms       INTEGER NOT NULL,
    next_ms      INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    state        INTEGER NOT NULL DEFAULT 0,
    settled_ms   INTEGER,
    lease_owner  TEXT,
    lease_until  INTEGER,
    UNIQUE (webhook_id, message_id)
);
CREATE INDEX deliveries_due ON deliveries (webhook_id, state, next_ms);
CREATE INDEX deliveries_pending ON deliveries (state, due_ms);
CREATE TABLE attempts (
    pk          INTEGER PRIMARY KEY,
    webhook_id  TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    time_ms     INTEGER NOT NULL,
    status      INTEGER,
    latency_ms  INTEGER NOT NULL,
    error       TEXT,
    response    TEXT,
    next_ms     INTEGER
);
CREATE INDEX attempts_webhook ON attempts (webhook_id, pk);
CREATE TABLE cursor (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Version 2: each webhook's management token digest (`super::token`). Webhooks of
/// version 1 have none: only admins (or their `user:` owner) manage them.
const MIGRATE_V2: &str = "ALTER TABLE webhooks ADD COLUMN token_digest BLOB;";

/// The SQLite [`WebhookStore`].
#[derive(Debug)]
pub struct SqliteWebhookStore {
    db: crate::datafiles::ServiceDb,
}

fn backend(e: impl std::fmt::Display) -> WebhookStoreError {
    WebhookStoreError::Backend(e.to_string())
}

impl SqliteWebhookStore {
    /// Opens (creating) the store at `path` and releases every claim of a previous run.
    pub fn open(path: &Path) -> Result<SqliteWebhookStore, WebhookStoreError> {
        let db = crate::datafiles::ServiceDb::open(path).map_err(WebhookStoreError::Backend)?;
        let conn = db.lock();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(backend)?;
        match version {
            0 => {
                conn.execute_batch(&format!(
                    "BEGIN; {SCHEMA_V1} {MIGRATE_V2} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(backend)?;
            }
            1 => {
                conn.execute_batch(&format!(
                    "BEGIN; {MIGRATE_V2} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(backend)?;
            }
            SCHEMA_VERSION => {}
            v => {
                return Err(WebhookStoreError::Backend(format!(
                    "webhook store schema {v} is newer than this herald ({SCHEMA_VERSION})"
                )));
            }
        }
        conn.execute(
            "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL",
            [],
        )
        .map_err(backend)?;
        drop(conn);
        Ok(SqliteWebhookStore { db })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, WebhookStoreError> {
        self.db.with(f).await.map_err(WebhookStoreError::Backend)
    }
}

const WEBHOOK_COLUMNS: &str = "id, topic, url, secret, previous_secret, previous_until, filter, \
     description, ordered, owner, created, start_after, disabled_reason, disabled_at, failing_since, \
     token_digest";

fn webhook_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Webhook, String>> {
    let filter: String = row.get(6)?;
    let filter = match serde_json::from_str::<Filter>(&filter) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let previous: Option<String> = row.get(4)?;
    let previous_until: Option<i64> = row.get(5)?;
    let reason: Option<String> = row.get(12)?;
    let disabled_at: Option<i64> = row.get(13)?;
    let token_digest = match row.get::<_, Option<Vec<u8>>>(15)? {
        None => None,
        Some(bytes) => match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(d) => Some(d),
            Err(_) => return Ok(Err("token digest is not 32 bytes".into())),
        },
    };
    Ok(Ok(Webhook {
        id: row.get(0)?,
        topic: row.get(1)?,
        url: row.get(2)?,
        secret: row.get(3)?,
        previous_secret: previous.zip(previous_until),
        filter,
        description: row.get(7)?,
        ordered: row.get::<_, i64>(8)? != 0,
        owner: row.get(9)?,
        token_digest,
        created: row.get(10)?,
        start_after: row.get(11)?,
        disabled: reason.zip(disabled_at),
        failing_since: row.get(14)?,
    }))
}

fn write_webhook(conn: &Connection, sql: &str, w: &Webhook) -> rusqlite::Result<usize> {
    let filter = serde_json::to_string(&w.filter).unwrap_or_else(|_| "{}".into());
    conn.execute(
        sql,
        params![
            w.id,
            w.topic,
            w.url,
            w.secret,
            w.previous_secret.as_ref().map(|p| &p.0),
            w.previous_secret.as_ref().map(|p| p.1),
            filter,
            w.description,
            w.ordered as i64,
            w.owner,
            w.created,
            w.start_after,
            w.disabled.as_ref().map(|d| &d.0),
            w.disabled.as_ref().map(|d| d.1),
            w.failing_since,
            w.token_digest.as_ref().map(|d| d.as_slice()),
        ],
    )
}

fn decode_webhooks(rows: Vec<Result<Webhook, String>>) -> Result<Vec<Webhook>, WebhookStoreError> {
    rows.into_iter()
        .map(|r| r.map_err(WebhookStoreError::Corrupt))
        .collect()
}

fn insert_deliveries(
    tx: &rusqlite::Transaction<'_>,
    deliveries: &[NewDelivery],
    replay: bool,
) -> rusqlite::Result<usize> {
    let sql = if replay {
        "INSERT INTO deliveries (webhook_id, message_id, event, payload, event_time, due_ms, next_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT (webhook_id, message_id) DO UPDATE SET
             state = 0, attempts = 0, next_ms = excluded.next_ms, due_ms = excluded.due_ms,
             settled_ms = NULL
         WHERE state != 0"
    } else {
        "INSERT OR IGNORE INTO deliveries (webhook_id, message_id, event, payload, event_time, due_ms, next_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)"
    };
    let mut stmt = tx.prepare_cached(sql)?;
    let mut n = 0;
    for d in deliveries {
        n += stmt.execute(params![
            d.webhook_id,
            d.message_id,
            d.event,
            d.payload,
            d.event_time,
            d.due_ms
        ])?;
    }
    Ok(n)
}

#[async_trait]
impl WebhookStore for SqliteWebhookStore {
    async fn insert_webhook(&self, webhook: &Webhook) -> Result<(), WebhookStoreError> {
        let w = webhook.clone();
        self.with(move |c| {
            write_webhook(
                c,
                &format!(
                    "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                ),
                &w,
            )
            .map(drop)
        })
        .await
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, WebhookStoreError> {
        let rows = self
            .with(|c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created, id"
                ))?;
                stmt.query_map([], webhook_from_row)?.collect()
            })
            .await?;
        decode_webhooks(rows)
    }

    async fn webhook(&self, id: &str) -> Result<Option<Webhook>, WebhookStoreError> {
        let id = id.to_string();
        let row = self
            .with(move |c| {
                c.query_row(
                    &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1"),
                    [id],
                    webhook_from_row,
                )
                .optional()
            })
            .await?;
        row.map(|r| r.map_err(WebhookStoreError::Corrupt))
            .transpose()
    }

    async fn update_webhook(&self, webhook: &Webhook) -> Result<bool, WebhookStoreError> {
        let w = webhook.clone();
        self.with(move |c| {
            write_webhook(
                c,
                "UPDATE webhooks SET topic = ?2, url = ?3, secret = ?4, previous_secret = ?5,
                     previous_until = ?6, filter = ?7, description = ?8, ordered = ?9,
                     owner = ?10, created = ?11, start_after = ?12, disabled_reason = ?13,
                     disabled_at = ?14, failing_since = ?15, token_digest = ?16
                 WHERE id = ?1",
                &w,
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, WebhookStoreError> {
        let id = id.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM webhooks WHERE id = ?1", [&id])?;
            tx.execute("DELETE FROM deliveries WHERE webhook_id = ?1", [&id])?;
            tx.execute("DELETE FROM attempts WHERE webhook_id = ?1", [&id])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn count_owned(&self, owner: &str) -> Result<usize, WebhookStoreError> {
        let owner = owner.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM webhooks WHERE owner = ?1",
                [owner],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)
        })
        .await
    }

    async fn cursor(&self) -> Result<Option<String>, WebhookStoreError> {
        self.with(|c| {
            c.query_row("SELECT value FROM cursor WHERE name = 'feed'", [], |r| {
                r.get(0)
            })
            .optional()
        })
        .await
    }

    async fn enqueue(
        &self,
        deliveries: Vec<NewDelivery>,
        cursor: &str,
    ) -> Result<usize, WebhookStoreError> {
        let cursor = cursor.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = insert_deliveries(&tx, &deliveries, false)?;
            tx.execute(
                "INSERT INTO cursor (name, value) VALUES ('feed', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [cursor],
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn requeue(&self, deliveries: Vec<NewDelivery>) -> Result<usize, WebhookStoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = insert_deliveries(&tx, &deliveries, true)?;
            tx.commit()?;
            Ok(n)
        })
        .await
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
        let (webhook_id, owner) = (webhook_id.to_string(), owner.to_string());
        let until = now_ms.saturating_add(lease.as_millis() as i64);
        self.with(move |c| {
            let tx = c.transaction()?;
            let keys: Vec<i64> = if ordered {
                // Only the head of the endpoint's queue, when it is due and free.
                tx.query_row(
                    "SELECT pk, next_ms, lease_until FROM deliveries
                     WHERE webhook_id = ?1 AND state = 0 ORDER BY pk LIMIT 1",
                    [&webhook_id],
                    |r| Ok((r.get(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<i64>>(2)?)),
                )
                .optional()?
                .filter(|(_, next, lease)| *next <= now_ms && lease.is_none_or(|l| l < now_ms))
                .map(|(pk, _, _)| pk)
                .into_iter()
                .collect()
            } else {
                let mut stmt = tx.prepare_cached(
                    "SELECT pk FROM deliveries
                     WHERE webhook_id = ?1 AND state = 0 AND next_ms <= ?2
                       AND (lease_until IS NULL OR lease_until < ?2)
                     ORDER BY next_ms, pk LIMIT ?3",
                )?;
                stmt.query_map(params![webhook_id, now_ms, max as i64], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut out = Vec::with_capacity(keys.len());
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE deliveries SET lease_owner = ?2, lease_until = ?3 WHERE pk = ?1
                     RETURNING pk, webhook_id, message_id, event, payload, event_time, due_ms, attempts",
                )?;
                for key in keys {
                    out.push(stmt.query_row(params![key, owner, until], |r| {
                        Ok(Delivery {
                            key: r.get(0)?,
                            webhook_id: r.get(1)?,
                            message_id: r.get(2)?,
                            event: r.get(3)?,
                            payload: r.get(4)?,
                            event_time: r.get(5)?,
                            due_ms: r.get(6)?,
                            attempts: r.get::<_, i64>(7)? as u32,
                        })
                    })?);
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn next_due(
        &self,
        webhook_id: &str,
        ordered: bool,
        now_ms: i64,
    ) -> Result<Option<i64>, WebhookStoreError> {
        let webhook_id = webhook_id.to_string();
        self.with(move |c| {
            if ordered {
                // The head decides; while it is claimed, the answer is its lease end.
                return c
                    .query_row(
                        "SELECT next_ms, lease_until FROM deliveries
                         WHERE webhook_id = ?1 AND state = 0 ORDER BY pk LIMIT 1",
                        [&webhook_id],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
                    )
                    .optional()
                    .map(|head| {
                        head.map(|(next, lease)| match lease {
                            Some(l) if l >= now_ms => l.max(next),
                            _ => next,
                        })
                    });
            }
            c.query_row(
                "SELECT MIN(next_ms) FROM deliveries
                 WHERE webhook_id = ?1 AND state = 0
                   AND (lease_until IS NULL OR lease_until < ?2)",
                params![webhook_id, now_ms],
                |r| r.get(0),
            )
        })
        .await
    }

    async fn finish_attempt(
        &self,
        record: AttemptRecord,
    ) -> Result<Option<i64>, WebhookStoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let a = &record.attempt;
            let (state, next) = match record.settlement {
                Settlement::Delivered => (1, None),
                Settlement::RetryAt(t) => (0, Some(t)),
                Settlement::Exhausted => (2, None),
            };
            let updated = tx.execute(
                "UPDATE deliveries SET state = ?2, attempts = attempts + 1,
                     next_ms = COALESCE(?3, next_ms), settled_ms = CASE WHEN ?2 = 0 THEN NULL ELSE ?4 END,
                     lease_owner = NULL, lease_until = NULL
                 WHERE pk = ?1",
                params![record.delivery, state, next, a.time_ms + a.latency_ms],
            )?;
            if updated == 0 {
                // The endpoint was deleted meanwhile: nothing to record.
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO attempts (webhook_id, message_id, attempt, time_ms, status, latency_ms,
                     error, response, next_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    record.webhook_id,
                    a.message_id,
                    a.attempt,
                    a.time_ms,
                    a.status,
                    a.latency_ms,
                    a.error,
                    a.response,
                    a.next_attempt_ms
                ],
            )?;
            let now_s = a.time_ms.div_euclid(1000);
            if record.settlement == Settlement::Delivered {
                tx.execute(
                    "UPDATE webhooks SET failing_since = NULL WHERE id = ?1",
                    [&record.webhook_id],
                )?;
            } else {
                tx.execute(
                    "UPDATE webhooks SET failing_since = COALESCE(failing_since, ?2) WHERE id = ?1",
                    params![record.webhook_id, now_s],
                )?;
            }
            let failing_since = tx
                .query_row(
                    "SELECT failing_since FROM webhooks WHERE id = ?1",
                    [&record.webhook_id],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            tx.commit()?;
            Ok(failing_since)
        })
        .await
    }

    async fn attempts(
        &self,
        webhook_id: &str,
        limit: usize,
    ) -> Result<Vec<Attempt>, WebhookStoreError> {
        let webhook_id = webhook_id.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT message_id, attempt, time_ms, status, latency_ms, error, response, next_ms
                 FROM attempts WHERE webhook_id = ?1 ORDER BY pk DESC LIMIT ?2",
            )?;
            stmt.query_map(params![webhook_id, limit as i64], |r| {
                Ok(Attempt {
                    message_id: r.get(0)?,
                    attempt: r.get::<_, i64>(1)? as u32,
                    time_ms: r.get(2)?,
                    status: r.get::<_, Option<i64>>(3)?.map(|s| s as u16),
                    latency_ms: r.get(4)?,
                    error: r.get(5)?,
                    response: r.get(6)?,
                    next_attempt_ms: r.get(7)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn queue_stats(&self) -> Result<QueueStats, WebhookStoreError> {
        self.with(|c| {
            let (pending, oldest): (i64, Option<i64>) = c.query_row(
                "SELECT COUNT(*), MIN(due_ms) FROM deliveries WHERE state = 0",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let disabled: i64 = c.query_row(
                "SELECT COUNT(*) FROM webhooks WHERE disabled_at IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            Ok(QueueStats {
                pending: pending as u64,
                oldest_due_ms: oldest,
                disabled: disabled as u64,
            })
        })
        .await
    }

    async fn prune(&self, before_ms: i64) -> Result<u64, WebhookStoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let d = tx.execute(
                "DELETE FROM deliveries WHERE state != 0 AND settled_ms < ?1",
                [before_ms],
            )?;
            let a = tx.execute("DELETE FROM attempts WHERE time_ms < ?1", [before_ms])?;
            tx.commit()?;
            Ok((d + a) as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::{self, LEASE};
    use super::*;

    #[tokio::test]
    async fn claims_are_exclusive_until_the_lease_ends_and_reopening_releases_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let store = SqliteWebhookStore::open(&path).unwrap();
        contract::claims_are_exclusive_until_the_lease_ends(&store).await;
        drop(store);
        let store = SqliteWebhookStore::open(&path).unwrap();
        assert_eq!(
            store
                .claim("a", false, 5, 10, LEASE, "n4")
                .await
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn settlements_and_ordered_claims() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteWebhookStore::open(&dir.path().join("w.db")).unwrap();
        contract::settlements_and_ordered_claims(&store).await;
    }

    #[tokio::test]
    async fn endpoints_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteWebhookStore::open(&dir.path().join("w.db")).unwrap();
        contract::endpoints_round_trip(&store).await;
    }

    /// A version-1 file (before management tokens) opens; its webhooks have no
    /// token, so only admins manage them.
    #[tokio::test]
    async fn version_1_webhooks_migrate_without_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!("{SCHEMA_V1} PRAGMA user_version = 1;"))
                .unwrap();
            conn.execute(
                "INSERT INTO webhooks (id, topic, url, secret, filter, description, ordered, \
                 owner, created, start_after) \
                 VALUES ('wh_old', 't', 'http://x', 'whsec_x', '{}', '', 0, '1.2.3.4', 1, '')",
                [],
            )
            .unwrap();
        }
        let store = SqliteWebhookStore::open(&path).unwrap();
        let old = store.webhook("wh_old").await.unwrap().unwrap();
        assert_eq!(old.token_digest, None);
        assert_eq!(old.owner, "1.2.3.4");
        assert!(store.delete_webhook("wh_old").await.unwrap());
        contract::endpoints_round_trip(&store).await;
    }
}
