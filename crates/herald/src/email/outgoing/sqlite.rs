//! The mail queue of a single node: one table in its own SQLite file (`mail.db` in
//! `data-dir`), written in WAL mode, each push committed before the publish is
//! answered.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::queue::{MailQueue, QueueError, QueuedMail, queue_error};

/// The queue in one SQLite file, over two connections: pushes commit with
/// `synchronous=FULL` (an accepted mail survives power loss); the sender's claims and
/// settlements with `NORMAL` (no fsync per mail: after a power loss a mail may be
/// sent again, never lost), so the sender does not hold up publishes.
pub struct SqliteMailQueue {
    push: Arc<Mutex<Connection>>,
    work: Arc<Mutex<Connection>>,
}

fn connect(path: &Path, sync: &str) -> Result<Connection, QueueError> {
    let conn = Connection::open(path).map_err(queue_error)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(queue_error)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(queue_error)?;
    conn.pragma_update(None, "synchronous", sync)
        .map_err(queue_error)?;
    Ok(conn)
}

impl SqliteMailQueue {
    /// Opens (or creates) the queue at `path`. Claims of an earlier run of this
    /// process are released: only this process uses the file.
    pub fn open(path: &Path) -> Result<SqliteMailQueue, QueueError> {
        crate::datafiles::prepare_database(path).map_err(queue_error)?;
        let conn = connect(path, "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS mail (
                id TEXT PRIMARY KEY,
                recipient TEXT NOT NULL,
                body BLOB NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                due_ms INTEGER NOT NULL,
                owner TEXT,
                created_ms INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS mail_due ON mail (due_ms);
            UPDATE mail SET owner = NULL, due_ms = 0 WHERE owner IS NOT NULL;",
        )
        .map_err(queue_error)?;
        Ok(SqliteMailQueue {
            push: Arc::new(Mutex::new(conn)),
            work: Arc::new(Mutex::new(connect(path, "NORMAL")?)),
        })
    }

    async fn with_conn<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, QueueError> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(queue_error)?
        .map_err(queue_error)
    }
}

#[async_trait]
impl MailQueue for SqliteMailQueue {
    async fn push(&self, mail: &QueuedMail, due_ms: i64) -> Result<(), QueueError> {
        let mail = mail.clone();
        Self::with_conn(&self.push, move |c| {
            c.execute(
                "INSERT OR IGNORE INTO mail (id, recipient, body, attempts, due_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    mail.id,
                    mail.to,
                    mail.body,
                    mail.attempts,
                    due_ms,
                    mail.created_ms
                ],
            )
            .map(drop)
        })
        .await
    }

    async fn claim(
        &self,
        now_ms: i64,
        lease: Duration,
        owner: &str,
        max: usize,
    ) -> Result<Vec<QueuedMail>, QueueError> {
        let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let owner = owner.to_string();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        Self::with_conn(&self.work, move |c| {
            let tx = c.transaction()?;
            let mails = {
                let mut select = tx.prepare(
                    "SELECT id, recipient, body, attempts, created_ms FROM mail
                     WHERE due_ms <= ?1 ORDER BY due_ms, created_ms LIMIT ?2",
                )?;
                select
                    .query_map(params![now_ms, max], |r| {
                        Ok(QueuedMail {
                            id: r.get(0)?,
                            to: r.get(1)?,
                            body: r.get(2)?,
                            attempts: r.get(3)?,
                            created_ms: r.get(4)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            for m in &mails {
                tx.execute(
                    "UPDATE mail SET due_ms = ?1, owner = ?2 WHERE id = ?3",
                    params![until, owner, m.id],
                )?;
            }
            tx.commit()?;
            Ok(mails)
        })
        .await
    }

    async fn settle(&self, id: &str, owner: &str, retry_at: Option<i64>) -> Result<(), QueueError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        Self::with_conn(&self.work, move |c| {
            match retry_at {
                None => c.execute("DELETE FROM mail WHERE id = ?1", params![id])?,
                Some(due) => c.execute(
                    "UPDATE mail SET due_ms = ?1, owner = NULL, attempts = attempts + 1
                     WHERE id = ?2 AND owner = ?3",
                    params![due, id, owner],
                )?,
            };
            Ok(())
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<i64>, QueueError> {
        Self::with_conn(&self.work, |c| {
            c.query_row("SELECT MIN(due_ms) FROM mail", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()
            .map(Option::flatten)
        })
        .await
    }

    async fn len(&self) -> Result<u64, QueueError> {
        Self::with_conn(&self.work, |c| {
            c.query_row("SELECT COUNT(*) FROM mail", [], |r| r.get::<_, i64>(0))
        })
        .await
        .map(|n| u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(id: &str) -> QueuedMail {
        QueuedMail {
            id: id.into(),
            to: "a@b.c".into(),
            body: b"Subject: x\r\n\r\nhi\r\n".to_vec(),
            attempts: 0,
            created_ms: 1,
        }
    }

    #[tokio::test]
    async fn claims_lease_settle_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.db");
        let q = SqliteMailQueue::open(&path).unwrap();
        q.push(&mail("m1"), 100).await.unwrap();
        q.push(&mail("m2"), 500).await.unwrap();
        // Pushing the same mail twice keeps one.
        q.push(&mail("m1"), 100).await.unwrap();
        assert_eq!(q.len().await.unwrap(), 2);
        let lease = Duration::from_secs(60);
        let got = q.claim(200, lease, "a", 10).await.unwrap();
        assert_eq!(
            got.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["m1"]
        );
        // Claimed: nobody else gets it until the lease ends.
        assert!(q.claim(300, lease, "b", 10).await.unwrap().is_empty());
        assert_eq!(q.next_due().await.unwrap(), Some(500));
        // A retry by someone who no longer holds the claim changes nothing.
        q.settle("m1", "b", Some(1000)).await.unwrap();
        q.settle("m1", "a", Some(1000)).await.unwrap();
        let got = q.claim(1000, lease, "a", 10).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got.iter().find(|m| m.id == "m1").unwrap().attempts, 1);
        drop(q);
        // A restart releases this process's claims (due at once); nothing is lost.
        let q = SqliteMailQueue::open(&path).unwrap();
        assert_eq!(q.len().await.unwrap(), 2);
        assert_eq!(q.claim(2000, lease, "c", 10).await.unwrap().len(), 2);
        q.settle("m1", "a", None).await.unwrap();
        assert_eq!(q.len().await.unwrap(), 1);
    }
}
