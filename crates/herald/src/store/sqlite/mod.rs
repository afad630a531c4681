//! The embedded, durable message store: one SQLite file in WAL mode.
//!
//! herald runs as a single binary with no external services by default, so the
//! message cache lives in SQLite. The costly part of a durable publish is the commit
//! (and, with `sync = full`, its fsync), so the store is built around **group
//! commit** by one writer thread. The parts live in their own files:
//!
//! - this file: [`SqliteStore`], the [`Store`] implementation, which sends writes to
//!   the writer and runs reads on the read pool, and its options;
//! - `writer.rs`: the writer thread (group commit, failure handling, chunked prunes)
//!   and the WAL checkpointer;
//! - `read.rs`: the read-only connection pool and the queries that read history;
//! - `schema.rs`: the table layout and its migrations.

mod read;
mod schema;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;

use super::writer_thread::WriterThread;
use super::{Appending, CommitObserver, Cursor, Page, Query, Since, Store, StoreError, StoreStats};
use crate::model::Message;
use read::{READ_CONNECTIONS, ReadPool, decode_rows, open_reader, run_page, run_query};
use schema::migrate;
use writer::{Op, Writer, answer_on_runtime, checkpointer_loop, open_checkpointer, open_writer};

/// How long a connection waits for a lock held by another connection (a checkpoint,
/// another process opening the file) before reporting `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Queued write operations per unit of `max_batch`. Bounded so a stalled disk pushes
/// back on publishers instead of growing memory without limit.
const QUEUE_BATCHES: usize = 4;

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// No fsync at all: a process crash keeps commits, an OS crash or power loss may
    /// lose recent ones or corrupt the file.
    Off,
    /// fsync at checkpoints only (WAL): commits survive a process crash; the last
    /// commits before a power loss may be lost, but the file stays consistent.
    #[default]
    Normal,
    /// fsync on every commit: commits survive power loss. Group commit amortises it.
    Full,
}

impl SyncMode {
    /// The option value (`off`, `normal`, `full`).
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Off => "off",
            SyncMode::Normal => "normal",
            SyncMode::Full => "full",
        }
    }

    fn pragma_value(self) -> &'static str {
        match self {
            SyncMode::Off => "OFF",
            SyncMode::Normal => "NORMAL",
            SyncMode::Full => "FULL",
        }
    }
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `store-sync` value that is not `off`, `normal` or `full`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sync mode {0:?}: expected off, normal or full")]
pub struct ParseSyncModeError(String);

impl FromStr for SyncMode {
    type Err = ParseSyncModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "off" => Ok(SyncMode::Off),
            "normal" => Ok(SyncMode::Normal),
            "full" => Ok(SyncMode::Full),
            _ => Err(ParseSyncModeError(s.to_string())),
        }
    }
}

/// Tuning for [`SqliteStore::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Durability of each commit.
    pub sync: SyncMode,
    /// Most write operations committed in one transaction (0 is treated as 1).
    pub max_batch: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            sync: SyncMode::Normal,
            max_batch: 512,
        }
    }
}

/// The SQLite-backed [`Store`]. See the module docs for the design.
///
/// Dropping the store without [`Store::close`] lets the writer thread finish the
/// queued operations in the background; `close` waits for it.
pub struct SqliteStore {
    /// Once closed, new write operations get [`StoreError::Closed`], and the writer
    /// exits after draining the queue.
    writer: WriterThread<Op>,
    /// Stops (by dropping the sender) and joins the checkpointer thread.
    checkpointer: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    readers: Arc<ReadPool>,
    /// Successful commits by the writer; fewer than write operations under load.
    commits: Arc<AtomicU64>,
    path: PathBuf,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed, with its parent directories) the store at `path`,
    /// migrates the schema and starts the writer thread.
    ///
    /// `path` must be a file path: the writer and the readers open it separately, so
    /// an in-memory database would not be shared between them.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_observed(path, options, None)
    }

    /// [`SqliteStore::open`], reporting every commit (its duration and number of
    /// operations) to `observer`, from the writer thread.
    pub fn open_observed(
        path: &Path,
        options: SqliteOptions,
        observer: Option<Arc<dyn CommitObserver>>,
    ) -> Result<SqliteStore, StoreError> {
        crate::datafiles::prepare_database(path)
            .map_err(|e| StoreError::Backend(format!("preparing {}: {e}", path.display())))?;
        let conn = open_writer(path, options.sync)?;
        migrate(&conn)?;
        keep_ids_above_stored(&conn)?;

        // Readers open after the migration so they see the schema (and the WAL files
        // the writer created).
        let mut readers = Vec::with_capacity(READ_CONNECTIONS);
        for _ in 0..READ_CONNECTIONS {
            readers.push(open_reader(path)?);
        }

        let max_batch = options.max_batch.max(1);
        let commits = Arc::new(AtomicU64::new(0));
        let answers = answer_on_runtime();
        let handoff = Arc::new(writer::CheckpointHandoff::default());
        let writer = WriterThread::spawn(max_batch.saturating_mul(QUEUE_BATCHES), {
            let commits = Arc::clone(&commits);
            let handoff = Arc::clone(&handoff);
            move |queue, health| {
                let writer = Writer {
                    conn,
                    commits: &commits,
                    observer: observer.as_deref(),
                    health: &health,
                    answers,
                    checkpoints: Some(&handoff),
                };
                writer.run(queue, max_batch);
            }
        })?;

        let checkpoint_conn = open_checkpointer(path)?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
        let checkpointer = std::thread::Builder::new()
            .name("herald-store-checkpoint".into())
            .spawn(move || checkpointer_loop(checkpoint_conn, stopped, &handoff))
            .map_err(|e| StoreError::Backend(format!("starting the store checkpointer: {e}")))?;

        tracing::debug!(path = %path.display(), sync = %options.sync, max_batch, "store opened");
        Ok(SqliteStore {
            writer,
            checkpointer: Mutex::new(Some((stop_checkpoints, checkpointer))),
            readers: Arc::new(ReadPool::new(readers)),
            commits,
            path: path.to_path_buf(),
        })
    }

    /// How many transactions the writer has committed since open (for metrics, and
    /// to observe group commit: under concurrency this grows slower than writes).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `f` on a read-only connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Backend(format!("store read task failed: {e}")))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, message: Message) -> Result<Message, StoreError> {
        // Encoded here, on the caller's task, to keep the single writer thread lean.
        super::append_through_encoded(self, message).await
    }

    fn append_encoded(
        &self,
        message: super::SharedMessage,
        json: bytes::Bytes,
        scheduled: bool,
    ) -> Appending<'_> {
        let row = super::NewRow::new(message, json, scheduled);
        self.writer.append(|reply| Op::Append { row, reply })
    }

    async fn query(&self, query: Query) -> Result<Vec<Message>, StoreError> {
        if query.since == Since::None || query.topics.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |conn| run_query(conn, &query)).await
    }

    async fn history_page(
        &self,
        query: &Query,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        if query.since == Since::None || query.topics.is_empty() {
            return Ok(Page::default());
        }
        let after = Cursor::time_id(after)?;
        if query.since == Since::Latest {
            // At most one message per topic: always a single page.
            if after.is_some() {
                return Ok(Page::default());
            }
            let query = query.clone();
            let messages = self.read(move |conn| run_query(conn, &query)).await?;
            return Ok(Page {
                messages,
                next: None,
            });
        }
        let query = query.clone();
        self.read(move |conn| run_page(conn, &query, after, limit.max(1)))
            .await
    }

    async fn after_id(&self, after: &str, limit: usize) -> Result<Vec<Message>, StoreError> {
        let (after, limit) = (after.to_string(), limit.min(i64::MAX as usize) as i64);
        self.read(move |conn| {
            // The UNIQUE index on `id` serves both the range and the order.
            let mut stmt = conn
                .prepare_cached("SELECT id, json FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2")
                .map_err(backend)?;
            decode_rows(&mut stmt, rusqlite::params![after, limit], None)
        })
        .await
    }

    async fn take_due(&self, now: i64) -> Result<Vec<Message>, StoreError> {
        self.writer.submit(|reply| Op::TakeDue { now, reply }).await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT MIN(time) FROM messages WHERE published = 0",
                [],
                |row| row.get(0),
            )
            .map_err(backend)
        })
        .await
    }

    async fn cancel_scheduled(&self, topic: &str, sequence_id: &str) -> Result<u64, StoreError> {
        let (topic, sequence_id) = (topic.to_string(), sequence_id.to_string());
        self.writer
            .submit(|reply| Op::Cancel {
                topic,
                sequence_id,
                reply,
            })
            .await
    }

    async fn prune_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.writer
            .submit(|reply| Op::Prune {
                now,
                deleted: 0,
                reply,
            })
            .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read(|conn| {
            // One read transaction, so both counts describe the same snapshot.
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let count = |sql: &str| tx.query_row(sql, [], |row| row.get::<_, i64>(0));
            let messages = count("SELECT COUNT(*) FROM messages").map_err(backend)?;
            let scheduled =
                count("SELECT COUNT(*) FROM messages WHERE published = 0").map_err(backend)?;
            Ok(StoreStats {
                messages: messages.max(0) as u64,
                scheduled: scheduled.max(0) as u64,
            })
        })
        .await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        // An empty transaction still takes the write lock, so this proves the writer
        // thread is alive and the database is lockable. While writes are failing the
        // writer also writes a page in it (`Writer::run_batch`): an empty commit
        // succeeds on a full disk.
        self.writer.submit(|reply| Op::Ping { reply }).await
    }

    fn writes_failing(&self) -> bool {
        self.writer.writes_failing()
    }

    fn is_alive(&self) -> bool {
        self.writer.is_alive()
    }

    async fn close(&self) {
        // Readers first: in-flight reads finish, later ones get `Closed`, and the
        // writer's connection ends up the last one open, so SQLite checkpoints and
        // removes the WAL when it closes.
        self.readers.close();
        let checkpointer = lock(&self.checkpointer).take();
        if let Some((stop, thread)) = checkpointer {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if self.writer.close().await {
            tracing::debug!(path = %self.path.display(), "store closed");
        }
    }
}

// ---------------------------------------------------------------------------------
// Connections and schema

/// New IDs must sort after every stored one even if the clock went back while the
/// server was down (`model::id::never_below`): `since=<id>` and the webhook feed
/// select "after this ID". One step down the `id` index.
fn keep_ids_above_stored(conn: &Connection) -> Result<(), StoreError> {
    let newest: Option<String> = conn
        .query_row("SELECT max(id) FROM messages", [], |row| row.get(0))
        .map_err(backend)?;
    if let Some(id) = newest
        && !crate::model::id::never_below(&id)
    {
        tracing::warn!(
            id,
            "the newest stored message ID is more than a day ahead of the clock (or \
             malformed); new IDs follow the clock and may sort before it"
        );
    }
    Ok(())
}

fn backend(e: rusqlite::Error) -> StoreError {
    if is_disk_full(&e) {
        StoreError::Full(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

/// `SQLITE_FULL`: a write found no space (`ENOSPC`), or the file hit its size limit.
fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Locks `m`, recovering from poisoning: the guarded values (a sender, a handle, a
/// list of idle connections) stay valid even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::schema::SCHEMA_VERSION;
    use super::writer::{PROBE_WRITE, PRUNE_CHUNK};
    use super::*;
    use crate::model::MessageId;
    use crate::model::now_unix;
    use crate::store::contract::{ids, msg, q};

    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("messages.db"), SqliteOptions::default()).unwrap()
    }

    #[tokio::test]
    async fn every_since_variant_across_topics_in_time_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let now = now_unix();
        let a1 = msg("a", now - 100);
        let b1 = msg("b", now - 100); // same time as a1, later id
        let a2 = msg("a", now - 50);
        let b2 = msg("b", now - 10);
        let c1 = msg("c", now - 60); // not requested
        let a0 = msg("a", now - 200); // appended last, but oldest
        for m in [&a1, &b1, &a2, &b2, &c1, &a0] {
            store.append(m.clone()).await.unwrap();
        }
        let ab = ["a", "b"];

        let all = store.query(q(&ab, Since::All, false)).await.unwrap();
        assert_eq!(ids(&all), ids([&a0, &a1, &b1, &a2, &b2]));
        assert_eq!(all[0], a0, "messages round-trip unchanged");

        let none = store.query(q(&ab, Since::None, false)).await.unwrap();
        assert!(none.is_empty());

        let latest = store.query(q(&ab, Since::Latest, false)).await.unwrap();
        assert_eq!(ids(&latest), ids([&a2, &b2]));

        // a0 was created after b1, so it is "after" the marker though older in time.
        let after = store
            .query(q(&ab, Since::AfterId(b1.id.clone()), false))
            .await
            .unwrap();
        assert_eq!(ids(&after), ids([&a0, &a2, &b2]));

        let since_time = store
            .query(q(&ab, Since::Time(now - 50), false))
            .await
            .unwrap();
        assert_eq!(ids(&since_time), ids([&a2, &b2]));

        let one = store.query(q(&["c"], Since::All, false)).await.unwrap();
        assert_eq!(ids(&one), ids([&c1]));
        let dup = store
            .query(q(&["b", "b"], Since::Latest, false))
            .await
            .unwrap();
        assert_eq!(ids(&dup), ids([&b2]));
        let unknown = store.query(q(&["zzz"], Since::All, false)).await.unwrap();
        assert!(unknown.is_empty());
    }

    /// `since=<id>` pages: read by ID when fewer than `BY_ID_BELOW` messages follow
    /// the marker, by the topic's range otherwise; the same messages either way,
    /// including one whose time lies before the marker's.
    #[tokio::test]
    async fn since_an_id_pages_by_id_or_by_topic() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let now = now_unix();
        let mut all = Vec::new();
        for n in 0..12 {
            let topic = if n % 4 == 3 { "other" } else { "t" };
            // The last one's time lies before everything else's: IDs follow the
            // appends, times need not.
            let time = if n == 10 { now - 500 } else { now - 100 + n };
            let m = msg(topic, time);
            store.append(m.clone()).await.unwrap();
            all.push(m);
        }
        let conn = read::open_reader(&dir.path().join("messages.db")).unwrap();
        for (marker_at, few) in [(8, true), (1, false)] {
            let marker = &all[marker_at].id;
            assert_eq!(
                read::few_after(&conn, marker).unwrap(),
                few,
                "after {marker_at}"
            );
            let mut want: Vec<&Message> = all[marker_at + 1..]
                .iter()
                .filter(|m| m.topic == "t")
                .collect();
            want.sort_by_key(|m| (m.time, m.id.clone()));
            let query = q(&["t"], Since::AfterId(marker.clone()), false);
            for limit in [1, 2, 100] {
                let (got, _) = crate::store::contract::read_pages(&store, &query, limit).await;
                assert_eq!(
                    ids(&got),
                    ids(want.iter().copied()),
                    "after {marker_at}, {limit}"
                );
            }
        }
    }

    #[tokio::test]
    async fn scheduled_messages_are_hidden_unless_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let now = now_unix();
        let past = msg("t", now - 10);
        let future = msg("t", now + 3600);
        let marker = msg("t", now - 5); // created after `future`
        for m in [&past, &future, &marker] {
            store.append(m.clone()).await.unwrap();
        }

        let visible = store.query(q(&["t"], Since::All, false)).await.unwrap();
        assert_eq!(ids(&visible), ids([&past, &marker]));
        let with = store.query(q(&["t"], Since::All, true)).await.unwrap();
        assert_eq!(ids(&with), ids([&past, &marker, &future]));

        let latest = store.query(q(&["t"], Since::Latest, true)).await.unwrap();
        assert_eq!(ids(&latest), ids([&marker]), "latest is published only");

        let after = Since::AfterId(marker.id.clone());
        assert!(
            store
                .query(q(&["t"], after.clone(), false))
                .await
                .unwrap()
                .is_empty()
        );
        let pending = store.query(q(&["t"], after, true)).await.unwrap();
        assert_eq!(ids(&pending), ids([&future]));

        let t = store
            .query(q(&["t"], Since::Time(now), true))
            .await
            .unwrap();
        assert_eq!(ids(&t), ids([&future]));
        assert!(
            store
                .query(q(&["t"], Since::Time(now), false))
                .await
                .unwrap()
                .is_empty()
        );

        assert_eq!(store.next_due().await.unwrap(), Some(future.time));
        assert_eq!(
            store.stats().await.unwrap(),
            StoreStats {
                messages: 3,
                scheduled: 1
            }
        );
    }

    #[tokio::test]
    async fn take_due_hands_out_each_message_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        let now = now_unix();
        let first = msg("t", now + 100);
        let second = msg("u", now + 50);
        let later = msg("t", now + 10_000);
        for m in [&first, &second, &later] {
            store.append(m.clone()).await.unwrap();
        }
        assert_eq!(store.next_due().await.unwrap(), Some(now + 50));
        assert!(store.take_due(now).await.unwrap().is_empty());

        // Two schedulers racing still get each message exactly once between them.
        let (x, y) = tokio::join!(store.take_due(now + 500), store.take_due(now + 500));
        let mut got = x.unwrap();
        got.extend(y.unwrap());
        assert_eq!(ids(&got), ids([&second, &first]));
        assert!(store.take_due(now + 500).await.unwrap().is_empty());

        assert_eq!(store.next_due().await.unwrap(), Some(later.time));
        let visible = store
            .query(q(&["t", "u"], Since::All, false))
            .await
            .unwrap();
        assert_eq!(ids(&visible), ids([&second, &first]));
        assert_eq!(store.stats().await.unwrap().scheduled, 1);
    }

    #[tokio::test]
    async fn cancel_scheduled_deletes_only_pending_messages_of_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let now = now_unix();
        let own = msg("t", now + 100); // sequence = its id
        // As the core gives a publish without a sequence: its own ID, named.
        let mut own_named = msg("t", now + 100);
        own_named.sequence_id = Some(own_named.id.clone());
        let mut seq = msg("t", now + 100);
        seq.sequence_id = Some("s1".into());
        let mut other_topic = msg("u", now + 100);
        other_topic.sequence_id = Some("s1".into());
        let mut delivered = msg("t", now - 1);
        delivered.sequence_id = Some("s1".into());
        for m in [&own, &own_named, &seq, &other_topic, &delivered] {
            store.append(m.clone()).await.unwrap();
        }
        // The column keeps only a sequence that is not the message's own ID; the
        // message keeps its own.
        let columns: Vec<Option<String>> =
            rusqlite::Connection::open(dir.path().join("messages.db"))
                .unwrap()
                .prepare("SELECT sequence_id FROM messages ORDER BY pk")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let s1 = Some("s1".to_string());
        assert_eq!(columns, [None, None, s1.clone(), s1.clone(), s1]);
        let pending = store.query(q(&["t"], Since::All, true)).await.unwrap();
        let named = pending.iter().find(|m| m.id == own_named.id).unwrap();
        assert_eq!(named.sequence_id.as_ref(), Some(&own_named.id));

        assert_eq!(store.cancel_scheduled("t", "s1").await.unwrap(), 1);
        assert_eq!(store.cancel_scheduled("t", &own.id).await.unwrap(), 1);
        assert_eq!(store.cancel_scheduled("t", &own_named.id).await.unwrap(), 1);
        assert_eq!(store.cancel_scheduled("t", "s1").await.unwrap(), 0);
        assert_eq!(store.cancel_scheduled("t", "nope").await.unwrap(), 0);

        let left = store.query(q(&["t", "u"], Since::All, true)).await.unwrap();
        assert_eq!(ids(&left), ids([&delivered, &other_topic]));
    }

    #[tokio::test]
    async fn prune_deletes_expired_messages_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let now = now_unix();
        let mut keep = Vec::new();
        for i in 0..(PRUNE_CHUNK * 3 + 2) {
            let mut m = msg("t", now - 1000 + i);
            m.expires = Some(now - 1);
            store.append(m).await.unwrap();
        }
        for i in 0..3 {
            let m = msg("t", now - 10 + i); // expires in the future
            keep.push(m.clone());
            store.append(m).await.unwrap();
        }
        let mut no_expiry = msg("t", now);
        no_expiry.expires = None;
        keep.push(no_expiry.clone());
        store.append(no_expiry).await.unwrap();

        let before = store.commits();
        let pruned = store.prune_expired(now).await.unwrap();
        assert_eq!(pruned, (PRUNE_CHUNK * 3 + 2) as u64);
        assert!(store.commits() - before >= 4, "one chunk per commit");
        assert_eq!(store.prune_expired(now).await.unwrap(), 0);

        let left = store.query(q(&["t"], Since::All, false)).await.unwrap();
        assert_eq!(ids(&left), ids(&keep));
    }

    /// Rows whose expiry is not covered by an `expiry_ranges` row of their second: a
    /// prune would never find them.
    fn uncovered_rows(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM messages m WHERE m.expires IS NOT NULL AND NOT EXISTS
                 (SELECT 1 FROM expiry_ranges r
                  WHERE r.expires = m.expires AND m.pk BETWEEN r.lo AND r.hi)",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Random publishes (expiring in a few interleaved seconds, some far from their
    /// second's other rows, some never), scheduled messages and cancels, and prunes at
    /// a clock that moves on: after each prune exactly the rows that expired are gone.
    #[tokio::test]
    async fn prune_deletes_exactly_the_expired_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let mut rng = fastrand::Rng::with_seed(19);
        let base = now_unix();
        let mut clock = base;
        let mut model: Vec<Message> = Vec::new();
        for round in 0..40 {
            for _ in 0..rng.usize(1..30) {
                let mut m = msg("t", clock);
                m.expires = match rng.u8(0..10) {
                    0 => None,
                    // a scheduled message, due later, expiring long after
                    1 => {
                        m.time = clock + rng.i64(5..50);
                        Some(m.time + 20)
                    }
                    _ => Some(clock + rng.i64(1..6)),
                };
                store.append(m.clone()).await.unwrap();
                model.push(m);
            }
            if round % 7 == 3 {
                let scheduled = model.iter().find(|m| m.time > clock).cloned();
                if let Some(m) = scheduled {
                    assert_eq!(store.cancel_scheduled("t", &m.id).await.unwrap(), 1);
                    model.retain(|k| k.id != m.id);
                }
            }
            clock += rng.i64(0..4);
            let expired = model
                .iter()
                .filter(|m| m.expires.is_some_and(|e| e < clock))
                .count();
            assert_eq!(store.prune_expired(clock).await.unwrap(), expired as u64);
            model.retain(|m| m.expires.is_none_or(|e| e >= clock));
            let mut left = store.query(q(&["t"], Since::All, true)).await.unwrap();
            let mut want = model.clone();
            left.sort_by(|a, b| a.id.cmp(&b.id));
            want.sort_by(|a, b| a.id.cmp(&b.id));
            assert_eq!(
                ids(&left),
                ids(&want),
                "round {round}, clock {}",
                clock - base
            );
            assert_eq!(uncovered_rows(&path), 0);
        }
        let ranges: i64 = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM expiry_ranges WHERE expires < ?1",
                [clock],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(ranges, 0, "the ranges of pruned seconds are gone");
    }

    /// A version-1 file (an `expires` index, no ranges) upgrades in place: its rows
    /// get ranges, the index goes, and the prune finds the expired rows.
    #[tokio::test]
    async fn version_1_files_upgrade_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        let now = now_unix();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "{} PRAGMA user_version = 1;",
                super::schema::SCHEMA_V1
            ))
            .unwrap();
            for (i, expires) in [
                Some(now - 5),
                None,
                Some(now + 60),
                Some(now - 5),
                Some(now - 2),
            ]
            .into_iter()
            .enumerate()
            {
                conn.execute(
                    "INSERT INTO messages (id, topic, time, expires, published, event, json)
                     VALUES (?1, 't', ?2, ?3, 1, 'message', ?4)",
                    rusqlite::params![
                        MessageId::generate().into_string(),
                        now - 10,
                        expires,
                        format!("{{\"id\":\"x{i}\"}}")
                    ],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        assert_eq!(uncovered_rows(&path), 0);
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let index: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'messages_expires'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(index, 0, "the expires index is dropped");
        assert_eq!(store.prune_expired(now).await.unwrap(), 3);
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 2, "the row without expiry and the one expiring later");
        store.close().await;
    }

    #[tokio::test]
    async fn reopening_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_unix();
        let published = msg("t", now - 1);
        let scheduled = msg("t", now + 600);
        {
            let store = open(&dir);
            store.append(published.clone()).await.unwrap();
            store.append(scheduled.clone()).await.unwrap();
            // Dropped without close: acknowledged writes must already be on disk.
        }
        let store = open(&dir);
        let all = store.query(q(&["t"], Since::All, true)).await.unwrap();
        assert_eq!(all, vec![published.clone(), scheduled.clone()]);
        assert_eq!(store.next_due().await.unwrap(), Some(scheduled.time));
        store.close().await;

        let store = open(&dir);
        assert_eq!(
            store.stats().await.unwrap(),
            StoreStats {
                messages: 2,
                scheduled: 1
            }
        );
        store.close().await;
    }

    /// On a multi-threaded runtime a batch's answers go through a task on the
    /// runtime (`writer::answer_on_runtime`); every publisher still hears back once
    /// its row is committed, and a failing one hears its own error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_come_through_the_runtime() {
        assert!(writer::answer_on_runtime().is_some());
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        let now = now_unix();
        let duplicate = msg("t", now);
        store.append(duplicate.clone()).await.unwrap();
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let store = Arc::clone(&store);
                let m = if i == 150 {
                    duplicate.clone()
                } else {
                    msg("t", now)
                };
                tokio::spawn(async move { store.append(m).await })
            })
            .collect();
        let mut failed = 0;
        for task in tasks {
            let answered = tokio::time::timeout(Duration::from_secs(20), task).await;
            if answered
                .expect("every publisher is answered")
                .unwrap()
                .is_err()
            {
                failed += 1;
            }
        }
        assert_eq!(failed, 1, "only the duplicate ID fails");
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.messages, 300);
        store.close().await;
    }

    #[tokio::test]
    async fn a_single_threaded_runtime_gets_its_answers_from_the_writer() {
        assert!(writer::answer_on_runtime().is_none());
    }

    #[tokio::test]
    async fn concurrent_appends_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        let before = store.commits();
        let now = now_unix();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.append(msg(&format!("t{}", i % 7), now)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let commits = store.commits() - before;
        assert!(commits < 200, "200 appends took {commits} commits");

        let topics: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
        let query = Query {
            topics,
            since: Since::All,
            include_scheduled: false,
        };
        let all = store.query(query).await.unwrap();
        assert_eq!(all.len(), 200);
        let mut unique = ids(&all);
        unique.dedup();
        assert_eq!(
            unique.len(),
            200,
            "ordered by id within one second, no duplicates"
        );
    }

    #[tokio::test]
    async fn a_failing_op_does_not_fail_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let now = now_unix();
        let first = msg("t", now);
        store.append(first.clone()).await.unwrap();
        let other = msg("t", now);
        // Likely in the same batch; correct either way.
        let (dup, ok) = tokio::join!(store.append(first.clone()), store.append(other.clone()));
        assert!(matches!(dup, Err(StoreError::Backend(_))), "{dup:?}");
        ok.unwrap();
        let all = store.query(q(&["t"], Since::All, false)).await.unwrap();
        assert_eq!(ids(&all), ids([&first, &other]));
    }

    #[tokio::test]
    async fn a_batch_that_cannot_commit_fails_every_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        // Another process holding the write lock past the busy timeout.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let now = now_unix();
        let (a, b, ping) = tokio::join!(
            store.append(msg("t", now)),
            store.append(msg("t", now)),
            store.check_writable()
        );
        for result in [a.map(|_| ()), b.map(|_| ()), ping] {
            assert!(
                matches!(result, Err(StoreError::Unavailable(_))),
                "{result:?}"
            );
        }
        assert!(store.writes_failing());
        other.execute_batch("ROLLBACK").unwrap();
        store.check_writable().await.unwrap();
        assert!(
            !store.writes_failing(),
            "a probe that commits clears the state"
        );
        let kept = msg("t", now);
        store.append(kept.clone()).await.unwrap();
        let all = store.query(q(&["t"], Since::All, false)).await.unwrap();
        assert_eq!(all, vec![kept], "nothing of the failed batch was stored");
    }

    #[tokio::test]
    async fn pages_read_what_one_query_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let now = now_unix();
        let mut stored = Vec::new();
        // Several topics, several messages per second (ties broken by ID), and a
        // scheduled message.
        for i in 0..40i64 {
            let topic = ["a", "b", "c"][(i % 3) as usize];
            let m = msg(topic, now - 100 + i / 4);
            stored.push(m.clone());
            store.append(m).await.unwrap();
        }
        store.append(msg("b", now + 600)).await.unwrap();
        // A row that does not decode, in the middle: skipped, and paging goes on.
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO messages (id, topic, time, expires, published, event, json)
                 VALUES (?1, 'a', ?2, NULL, 1, 'message', '{not json')",
                rusqlite::params![MessageId::generate().into_string(), now - 95],
            )
            .unwrap();
        let marker = stored[13].id.clone();
        let abc = ["a", "b", "c"];
        for scheduled in [false, true] {
            for since in [
                Since::All,
                Since::Latest,
                Since::AfterId(marker.clone()),
                Since::Time(now - 93),
                Since::None,
            ] {
                for topics in [&abc[..], &["a"][..], &["c", "a", "c"][..], &["zzz"][..]] {
                    let query = q(topics, since.clone(), scheduled);
                    crate::store::contract::pages_match_query(&store, &query).await;
                }
            }
        }
        let (all, pages) =
            crate::store::contract::read_pages(&store, &q(&abc, Since::All, false), 10).await;
        assert_eq!(all.len(), 40);
        assert_eq!(pages, 5, "41 rows (one malformed) by 10");
        // A cursor from another store is refused, not misread.
        let foreign = Cursor::Position {
            after: (1, 0),
            upto: None,
        };
        assert!(
            store
                .history_page(&q(&abc, Since::All, false), Some(&foreign), 10)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn corrupt_rows_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let now = now_unix();
        let good = msg("t", now - 5);
        store.append(good.clone()).await.unwrap();
        let bad_id = MessageId::generate().into_string();
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO messages (id, topic, time, expires, published, event, json)
                 VALUES (?1, 't', ?2, NULL, 1, 'message', '{not json')",
                rusqlite::params![bad_id, now - 1],
            )
            .unwrap();
        let all = store.query(q(&["t"], Since::All, false)).await.unwrap();
        assert_eq!(all, vec![good.clone()]);
        let latest = store.query(q(&["t"], Since::Latest, false)).await.unwrap();
        assert_eq!(
            latest,
            vec![good],
            "falls back to the last decodable message"
        );
    }

    #[tokio::test]
    async fn close_finishes_and_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.check_writable().await.unwrap();
        store.append(msg("t", now_unix())).await.unwrap();
        assert!(store.is_alive());
        store.close().await;
        assert!(!store.is_alive(), "no writer after close");
        store.close().await; // idempotent
        assert!(matches!(
            store.append(msg("t", now_unix())).await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(
            store.check_writable().await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(
            store.take_due(now_unix()).await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(
            store.query(q(&["t"], Since::All, false)).await,
            Err(StoreError::Closed)
        ));
    }

    #[tokio::test]
    async fn open_creates_directories_and_rejects_newer_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c/messages.db");
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        store.close().await;
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = SqliteStore::open(&path, SqliteOptions::default()).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[tokio::test]
    async fn every_sync_mode_opens() {
        for sync in [SyncMode::Off, SyncMode::Normal, SyncMode::Full] {
            let dir = tempfile::tempdir().unwrap();
            let options = SqliteOptions { sync, max_batch: 0 };
            let store = SqliteStore::open(&dir.path().join("m.db"), options).unwrap();
            store.append(msg("t", now_unix())).await.unwrap();
            store.close().await;
        }
    }

    #[test]
    fn the_probe_write_keeps_the_schema_version() {
        assert_eq!(
            PROBE_WRITE,
            format!("PRAGMA user_version = {SCHEMA_VERSION}")
        );
    }

    #[test]
    fn sync_mode_parses() {
        assert_eq!("off".parse::<SyncMode>().unwrap(), SyncMode::Off);
        assert_eq!("normal".parse::<SyncMode>().unwrap(), SyncMode::Normal);
        assert_eq!("FULL".parse::<SyncMode>().unwrap(), SyncMode::Full);
        assert!("extra".parse::<SyncMode>().is_err());
        assert_eq!(SyncMode::default().to_string(), "normal");
        assert_eq!(SqliteOptions::default().max_batch, 512);
    }
}
