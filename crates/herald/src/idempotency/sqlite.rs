//! Idempotency keys of a single node: a SQLite file of their own
//! (`<data-dir>/idempotency.db`), so they survive a restart and never hold up the
//! message store's group commit.
//!
//! One connection behind a mutex, used from the blocking pool: only publishes that
//! carry a key come here, one short transaction each. A node with SQLite is the
//! only node, so the claims of a previous run are dead when it starts: opening the
//! store drops them (the publish they guarded either committed without being
//! recorded, or never happened).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Claim, Fingerprint, KeyStore, KeyStoreError};
use crate::model::now_unix_ms;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency_keys (
    id          TEXT PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    response    BLOB,
    expires_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_ms);
";

/// Expired entries removed per claim: the sweep is spread over claims, so none of
/// them pays for a large backlog.
const SWEEP_BATCH: i64 = 64;

/// Idempotency keys in SQLite, at most `limit` of them.
#[derive(Debug, Clone)]
pub struct SqliteKeys {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    /// Entries in the table (kept here: `COUNT(*)` is a table scan).
    rows: i64,
    limit: i64,
}

impl SqliteKeys {
    /// Opens (creating) the key store at `path`, keeping at most `limit` keys.
    pub fn open(path: &Path, limit: usize) -> Result<Self, KeyStoreError> {
        crate::datafiles::prepare_database(path)
            .map_err(|e| KeyStoreError::Failed(e.to_string()))?;
        let conn = Connection::open(path).map_err(failed)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(failed)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(failed)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(failed)?;
        Self::with_connection(conn, limit)
    }

    /// A store in memory (lost on exit).
    pub fn in_memory(limit: usize) -> Result<Self, KeyStoreError> {
        Self::with_connection(Connection::open_in_memory().map_err(failed)?, limit)
    }

    fn with_connection(conn: Connection, limit: usize) -> Result<Self, KeyStoreError> {
        conn.execute_batch(SCHEMA).map_err(failed)?;
        conn.execute("DELETE FROM idempotency_keys WHERE response IS NULL", [])
            .map_err(failed)?;
        let rows = conn
            .query_row("SELECT COUNT(*) FROM idempotency_keys", [], |r| r.get(0))
            .map_err(failed)?;
        Ok(SqliteKeys {
            inner: Arc::new(Mutex::new(Inner {
                conn,
                rows,
                limit: i64::try_from(limit.max(1)).unwrap_or(i64::MAX),
            })),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Inner) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, KeyStoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
            op(&mut inner)
        })
        .await
        .map_err(|e| KeyStoreError::Failed(e.to_string()))?
        .map_err(failed)
    }
}

fn failed(e: rusqlite::Error) -> KeyStoreError {
    KeyStoreError::Failed(e.to_string())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Inner {
    fn claim(&mut self, id: &str, fingerprint: &[u8], lease_ms: i64) -> rusqlite::Result<Claim> {
        let now = now_unix_ms();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let swept = tx.execute(
            "DELETE FROM idempotency_keys WHERE rowid IN
               (SELECT rowid FROM idempotency_keys WHERE expires_ms <= ?1 LIMIT ?2)",
            params![now, SWEEP_BATCH],
        )?;
        let existing: Option<(Vec<u8>, Option<Vec<u8>>)> = tx
            .query_row(
                "SELECT fingerprint, response FROM idempotency_keys WHERE id = ?1 AND expires_ms > ?2",
                params![id, now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let mut rows = self.rows - swept as i64;
        let claim = match existing {
            Some((stored, _)) if stored != fingerprint => Claim::Mismatch,
            Some((_, Some(response))) => Claim::Done(response),
            Some((_, None)) => Claim::Pending,
            None => {
                // An expired entry of the same ID the sweep has not reached yet.
                rows -= tx.execute("DELETE FROM idempotency_keys WHERE id = ?1", [id])? as i64;
                let over = rows + 1 - self.limit;
                if over > 0 {
                    rows -= tx.execute(
                        "DELETE FROM idempotency_keys WHERE rowid IN
                           (SELECT rowid FROM idempotency_keys ORDER BY response IS NULL, expires_ms LIMIT ?1)",
                        [over],
                    )? as i64;
                }
                tx.execute(
                    "INSERT INTO idempotency_keys (id, fingerprint, response, expires_ms)
                     VALUES (?1, ?2, NULL, ?3)",
                    params![id, fingerprint, now.saturating_add(lease_ms)],
                )?;
                rows += 1;
                Claim::Won
            }
        };
        tx.commit()?;
        self.rows = rows;
        Ok(claim)
    }
}

#[async_trait]
impl KeyStore for SqliteKeys {
    async fn claim(
        &self,
        id: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, KeyStoreError> {
        let (id, fingerprint, lease_ms) = (id.to_string(), fingerprint.0, millis(lease));
        self.run(move |inner| inner.claim(&id, &fingerprint, lease_ms))
            .await
    }

    async fn complete(
        &self,
        id: &str,
        response: &[u8],
        window: Duration,
    ) -> Result<(), KeyStoreError> {
        let (id, response) = (id.to_string(), response.to_vec());
        let expires = now_unix_ms().saturating_add(millis(window));
        self.run(move |inner| {
            inner.conn.execute(
                "UPDATE idempotency_keys SET response = ?2, expires_ms = ?3 WHERE id = ?1",
                params![id, response, expires],
            )
        })
        .await
        .map(drop)
    }

    async fn release(&self, id: &str) -> Result<(), KeyStoreError> {
        let id = id.to_string();
        self.run(move |inner| {
            let n = inner.conn.execute(
                "DELETE FROM idempotency_keys WHERE id = ?1 AND response IS NULL",
                [id],
            )?;
            inner.rows -= n as i64;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint([b; 32])
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn keeps_the_key_store_protocol() {
        let keys = SqliteKeys::in_memory(3).unwrap();
        super::super::tests::check_store(&keys).await;
        let rows = keys.inner.lock().unwrap().rows;
        let counted: i64 = keys
            .inner
            .lock()
            .unwrap()
            .conn
            .query_row("SELECT COUNT(*) FROM idempotency_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!((rows, counted), (3, 3), "the row count is kept right");
    }

    #[tokio::test]
    async fn a_restart_keeps_completed_keys_and_drops_claims() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idempotency.db");
        let keys = SqliteKeys::open(&path, 100).unwrap();
        keys.claim("done", &fp(1), LEASE).await.unwrap();
        keys.complete("done", b"m", Duration::from_secs(60))
            .await
            .unwrap();
        keys.claim("held", &fp(1), LEASE).await.unwrap();
        drop(keys);
        let keys = SqliteKeys::open(&path, 100).unwrap();
        assert_eq!(
            keys.claim("done", &fp(1), LEASE).await.unwrap(),
            Claim::Done(b"m".to_vec())
        );
        assert_eq!(keys.claim("held", &fp(1), LEASE).await.unwrap(), Claim::Won);
    }
}
