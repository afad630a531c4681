//! The embedded, durable message store: one SQLite file in WAL mode.
//!
//! herald runs as a single binary with no external services by default, so the
//! message cache lives in SQLite. The costly part of a durable publish is the commit
//! (and, with `sync = full`, its fsync), so this module is built around **group
//! commit**:
//!
//! - One dedicated writer OS thread owns the only read-write connection. Every write
//!   operation (`append`, `take_due`, `cancel_scheduled`, `prune_expired`, the
//!   readiness ping) is sent to it over a bounded channel together with a oneshot
//!   reply sender.
//! - The writer blocks for the first operation, drains whatever else is already
//!   queued (up to [`SqliteOptions::max_batch`]), runs all of them in ONE
//!   transaction, commits, and only then answers each of them. Concurrent publishes
//!   therefore share one commit, and a caller hears "ok" only once its row is
//!   committed. If the commit fails, every operation of the batch gets an error:
//!   never a false success.
//! - One operation that fails on its own (say a duplicate message ID) is rolled back
//!   alone and reported alone, while the rest of the batch still commits. Every
//!   operation writes with a single statement, and SQLite undoes a failed statement
//!   by itself, keeping the transaction; when it must abandon the whole transaction
//!   instead (I/O error, disk full) the writer sees it and fails the whole batch. No
//!   savepoint per operation: they cost a copy of every page an operation touches
//!   (the sub-journal), a tenth of a publish's instructions under callgrind.
//! - A large expiry prune deletes in chunks, one chunk per batch, so it never holds
//!   the writer (and the publishes queued behind it) for long.
//! - A failed batch does not stop the writer: it rolls back, answers its operations
//!   with [`StoreError::Full`] (disk full) or [`StoreError::Unavailable`], and marks
//!   writes as failing until a later commit succeeds ([`Store::writes_failing`],
//!   readiness). Meanwhile every batch also rewrites a header field, because on a
//!   full disk an empty commit (the readiness ping) would still succeed; so the
//!   probe itself finds out when space is back.
//!
//! Reads (`query`, `next_due`, `stats`) use a small pool of read-only connections on
//! the blocking thread pool. WAL lets them read the last committed state while the
//! writer is busy, so a history replay never waits behind a commit.
//!
//! Rows keep the whole message as JSON next to the few columns the queries filter
//! on, so new message fields need no schema migration; `PRAGMA user_version` tracks
//! the schema for the migrations that will still be needed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Params};
use tokio::sync::{mpsc, oneshot};

use super::{CommitObserver, Cursor, Page, Query, Since, Store, StoreError, StoreStats};
use crate::model::{Message, now_unix};

/// The schema this code reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// How long a connection waits for a lock held by another connection (a checkpoint,
/// another process opening the file) before reporting `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read-only connections kept open. Reads are short; two let a replay and a stats or
/// scheduler lookup proceed side by side without holding many file handles.
const READ_CONNECTIONS: usize = 2;

/// Rows deleted per writer batch by `prune_expired`: large enough to keep up with any
/// realistic publish rate, small enough that publishes queued behind it wait only a
/// few milliseconds. (Tiny in tests so that chunking is exercised.)
const PRUNE_CHUNK: i64 = if cfg!(test) { 7 } else { 5_000 };

/// Queued write operations per unit of `max_batch`. Bounded so a stalled disk pushes
/// back on publishers instead of growing memory without limit.
const QUEUE_BATCHES: usize = 4;

const SCHEMA_V1: &str = "
CREATE TABLE messages (
    pk          INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL UNIQUE,
    topic       TEXT    NOT NULL,
    time        INTEGER NOT NULL,
    expires     INTEGER,
    published   INTEGER NOT NULL,
    sequence_id TEXT,
    event       TEXT    NOT NULL,
    json        TEXT    NOT NULL
);
CREATE INDEX messages_topic_time ON messages (topic, time, id);
CREATE INDEX messages_expires ON messages (expires);
-- Only scheduled messages need these two lookups (due time, cancel by sequence), so
-- the indexes are partial: an ordinary publish does not pay for them.
CREATE INDEX messages_due ON messages (time) WHERE published = 0;
CREATE INDEX messages_sequence ON messages (topic, sequence_id) WHERE published = 0;
";

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
    /// `None` once closed: new write operations get [`StoreError::Closed`], and the
    /// writer exits after draining the queue when the last sender is gone.
    writer: Mutex<Option<mpsc::Sender<Op>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Stops (by dropping the sender) and joins the checkpointer thread.
    checkpointer: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    readers: Arc<ReadPool>,
    /// Successful commits by the writer; fewer than write operations under load.
    commits: Arc<AtomicU64>,
    health: Arc<WriterHealth>,
    path: PathBuf,
}

/// Whether writes work, as the writer thread last saw it: read by the probes and
/// metrics without asking the writer (an atomic load on their side, a store per
/// batch on the writer's).
#[derive(Debug)]
struct WriterHealth {
    /// Set when a batch fails as a whole (disk full, I/O error, lock timeout),
    /// cleared when a later one commits. While set, every batch also rewrites a
    /// header field, so that its commit proves a page can be written again.
    failing: AtomicBool,
    /// Cleared when the writer thread ends, however it ends.
    alive: AtomicBool,
}

/// Clears [`WriterHealth::alive`] when the writer thread ends, panic included.
struct AliveGuard(Arc<WriterHealth>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
    }
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

        // Readers open after the migration so they see the schema (and the WAL files
        // the writer created).
        let mut readers = Vec::with_capacity(READ_CONNECTIONS);
        for _ in 0..READ_CONNECTIONS {
            readers.push(open_reader(path)?);
        }

        let max_batch = options.max_batch.max(1);
        let (tx, rx) = mpsc::channel(max_batch.saturating_mul(QUEUE_BATCHES));
        let commits = Arc::new(AtomicU64::new(0));
        let health = Arc::new(WriterHealth {
            failing: AtomicBool::new(false),
            alive: AtomicBool::new(true),
        });
        let thread = std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn({
                let commits = Arc::clone(&commits);
                let health = Arc::clone(&health);
                move || {
                    let _alive = AliveGuard(Arc::clone(&health));
                    let writer = Writer {
                        conn,
                        commits: &commits,
                        observer: observer.as_deref(),
                        health: &health,
                    };
                    writer.run(rx, max_batch);
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the store writer: {e}")))?;

        let checkpoint_conn = open_checkpointer(path)?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
        let checkpointer = std::thread::Builder::new()
            .name("herald-store-checkpoint".into())
            .spawn(move || checkpointer_loop(checkpoint_conn, stopped))
            .map_err(|e| StoreError::Backend(format!("starting the store checkpointer: {e}")))?;

        tracing::debug!(path = %path.display(), sync = %options.sync, max_batch, "store opened");
        Ok(SqliteStore {
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(Some((stop_checkpoints, checkpointer))),
            readers: Arc::new(ReadPool::new(readers)),
            commits,
            health,
            path: path.to_path_buf(),
        })
    }

    /// How many transactions the writer has committed since open (for metrics, and
    /// to observe group commit: under concurrency this grows slower than writes).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Sends an operation to the writer and waits for its post-commit answer. Once
    /// sent, the operation runs even if the caller stops waiting (a cancelled
    /// `take_due` still marks its messages published).
    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let sender = lock(&self.writer).clone().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        // Not held while waiting, so `close` is never kept waiting by an idle clone.
        drop(sender);
        // A dropped reply sender means the writer stopped (it panicked or exited).
        answer.await.map_err(|_| StoreError::Closed)?
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
        // Serialise here, on the caller's task, to keep the single writer thread lean.
        let json = serde_json::to_string(&message)
            .map_err(|e| StoreError::Backend(format!("encoding message: {e}")))?;
        let row = NewRow {
            published: message.time <= now_unix(),
            event: message.event.as_str(),
            id: message.id.clone(),
            topic: message.topic.clone(),
            time: message.time,
            expires: message.expires,
            sequence_id: message.sequence_id.clone(),
            json,
        };
        self.submit(|reply| Op::Append { row, reply }).await?;
        Ok(message)
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
        let after = match after {
            None => None,
            Some(Cursor::TimeId(time, id)) => Some((*time, id.clone())),
            Some(other) => {
                return Err(StoreError::Backend(format!(
                    "not a cursor of this store: {other:?}"
                )));
            }
        };
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
        self.submit(|reply| Op::TakeDue { now, reply }).await
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
        self.submit(|reply| Op::Cancel {
            topic,
            sequence_id,
            reply,
        })
        .await
    }

    async fn prune_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.submit(|reply| Op::Prune {
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
        self.submit(|reply| Op::Ping { reply }).await
    }

    fn writes_failing(&self) -> bool {
        self.health.failing.load(Ordering::Relaxed)
    }

    fn is_alive(&self) -> bool {
        self.health.alive.load(Ordering::Relaxed)
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
        drop(lock(&self.writer).take());
        let Some(thread) = lock(&self.thread).take() else {
            return;
        };
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => tracing::debug!(path = %self.path.display(), "store closed"),
            Ok(Err(_)) => tracing::error!("store writer thread panicked"),
            Err(e) => tracing::error!(error = %e, "could not wait for the store writer"),
        }
    }
}

// ---------------------------------------------------------------------------------
// Connections and schema

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

fn open_writer(path: &Path, sync: SyncMode) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(backend)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "{} cannot use WAL (journal_mode is {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", sync.pragma_value())
        .map_err(backend)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(backend)?;
    // Checkpoints (copying the WAL into the database, with an fsync) normally run
    // inside a commit every 1,000 pages, stalling every publish of that batch. The
    // checkpointer thread does them instead; this larger threshold is only a safety
    // net should it fall behind.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(backend)?;
    Ok(conn)
}

/// Writer-side checkpoint threshold, in pages (SQLite's default is 1,000).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 20_000;
/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    Ok(conn)
}

/// Runs passive checkpoints (which never block the writer or readers) until the
/// store closes (the sender of `stop` is dropped).
/// A failing checkpoint (a full disk) is logged when it starts and stops failing,
/// not twice a second; it is retried every interval and needs no repair.
fn checkpointer_loop(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    let mut failing = false;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(CHECKPOINT_INTERVAL)
    {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "store checkpoints failing; retrying");
            }
            Err(e) => tracing::debug!(error = %e, "store checkpoint failed"),
            Ok(()) if failing => {
                failing = false;
                tracing::info!("store checkpoints succeed again");
            }
            Ok(()) => {}
        }
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Backend(format!("opening {} to read: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(backend)?;
    Ok(conn)
}

/// Brings the schema to [`SCHEMA_VERSION`]; refuses a file from a newer herald.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "store schema version {version} is newer than this herald supports ({SCHEMA_VERSION})"
        )));
    }
    if version < 1 {
        // The DDL and the version bump commit together, so a crash cannot leave a
        // half-created schema marked as current.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            StoreError::Backend(format!("creating the store schema: {e}"))
        })?;
    }
    // Later versions: `if version < 2 { ... }`, each in its own transaction.
    Ok(())
}

/// A fixed set of read-only connections; a read borrows one for its duration.
struct ReadPool {
    /// `None` once the store is closed.
    idle: Mutex<Option<Vec<Connection>>>,
    returned: Condvar,
}

impl ReadPool {
    fn new(conns: Vec<Connection>) -> Self {
        ReadPool {
            idle: Mutex::new(Some(conns)),
            returned: Condvar::new(),
        }
    }

    /// Runs `f` on an idle connection, waiting for one if all are busy.
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut idle = lock(&self.idle);
        let conn = loop {
            match idle.as_mut() {
                None => return Err(StoreError::Closed),
                Some(conns) => {
                    if let Some(conn) = conns.pop() {
                        break conn;
                    }
                }
            }
            idle = self.returned.wait(idle).unwrap_or_else(|p| p.into_inner());
        };
        drop(idle);
        // The lease gives the connection back even if `f` panics, so the pool never
        // shrinks into a deadlock.
        let lease = Lease {
            pool: self,
            conn: Some(conn),
        };
        f(lease.conn.as_ref().ok_or(StoreError::Closed)?)
    }

    fn close(&self) {
        *lock(&self.idle) = None;
        self.returned.notify_all();
    }
}

struct Lease<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // After close the connection is simply dropped (closed).
        if let Some(conns) = lock(&self.pool.idle).as_mut() {
            conns.push(conn);
            self.pool.returned.notify_one();
        }
    }
}

// ---------------------------------------------------------------------------------
// Reads

fn run_query(conn: &Connection, query: &Query) -> Result<Vec<Message>, StoreError> {
    let mut topics = query.topics.clone();
    topics.sort_unstable();
    topics.dedup();

    let placeholders = vec!["?"; topics.len()].join(", ");
    let mut sql = format!("SELECT id, json FROM messages WHERE topic IN ({placeholders})");
    let published_only = !query.include_scheduled;
    let mut since_param = None;
    match &query.since {
        Since::None => return Ok(Vec::new()),
        Since::Latest => return query_latest(conn, &topics),
        Since::All => {
            if published_only {
                sql.push_str(" AND published = 1");
            }
        }
        Since::AfterId(marker) => {
            // With `scheduled=1`, pending messages count as "after" any marker: they
            // are not delivered yet (ntfy: `id > marker OR published = 0`).
            sql.push_str(if published_only {
                " AND published = 1 AND id > ?"
            } else {
                " AND (id > ? OR published = 0)"
            });
            since_param = Some(Value::Text(marker.clone()));
        }
        Since::Time(t) => {
            sql.push_str(" AND time >= ?");
            if published_only {
                sql.push_str(" AND published = 1");
            }
            since_param = Some(Value::Integer(*t));
        }
    }
    // SQLite merges the topics itself, so no re-sort is needed.
    sql.push_str(" ORDER BY time, id");
    let params = topics.into_iter().map(Value::Text).chain(since_param);
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    decode_rows(&mut stmt, rusqlite::params_from_iter(params), None)
}

/// One page of [`run_query`]'s answer (not for `Since::Latest`): up to `limit` rows
/// after `after`. Each topic is read on its own, one range of the `(topic, time, id)`
/// index of at most `limit` rows, and the topics merged here: a page costs at most
/// `limit` rows per topic however long the history is (one query over several topics
/// would sort everything after the cursor on every page).
fn run_page(
    conn: &Connection,
    query: &Query,
    after: Option<(i64, String)>,
    limit: usize,
) -> Result<Page, StoreError> {
    let mut topics = query.topics.clone();
    topics.sort_unstable();
    topics.dedup();
    let published_only = !query.include_scheduled;
    let mut sql = String::from("SELECT id, json, time FROM messages WHERE topic = ?");
    let mut since_param = None;
    match &query.since {
        Since::None | Since::Latest => return Ok(Page::default()),
        Since::All => {}
        Since::AfterId(marker) => {
            sql.push_str(if published_only {
                " AND id > ?"
            } else {
                " AND (id > ? OR published = 0)"
            });
            since_param = Some(Value::Text(marker.clone()));
        }
        Since::Time(t) => {
            sql.push_str(" AND time >= ?");
            since_param = Some(Value::Integer(*t));
        }
    }
    if published_only {
        sql.push_str(" AND published = 1");
    }
    if after.is_some() {
        sql.push_str(" AND (time, id) > (?, ?)");
    }
    sql.push_str(" ORDER BY time, id LIMIT ?");
    let limit_param = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    // Every row read, decodable or not, so the cursor moves past a malformed one.
    let mut rows: Vec<(i64, String, Option<Message>)> = Vec::new();
    let mut more = false;
    for topic in topics {
        let mut params = vec![Value::Text(topic)];
        params.extend(since_param.clone());
        if let Some((time, id)) = &after {
            params.push(Value::Integer(*time));
            params.push(Value::Text(id.clone()));
        }
        params.push(Value::Integer(limit_param));
        let before = rows.len();
        let mut found = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(backend)?;
        while let Some(row) = found.next().map_err(backend)? {
            let id: String = row.get(0).map_err(backend)?;
            let time: i64 = row.get(2).map_err(backend)?;
            let decoded = row
                .get_ref(1)
                .map_err(|e| e.to_string())
                .and_then(|v| v.as_str().map_err(|e| e.to_string()))
                .and_then(|json| serde_json::from_str::<Message>(json).map_err(|e| e.to_string()));
            let message = match decoded {
                Ok(message) => Some(message),
                Err(error) => {
                    tracing::warn!(id, %error, "skipping a malformed stored message");
                    None
                }
            };
            rows.push((time, id, message));
        }
        // A topic that filled the page may have more after it.
        more |= rows.len() - before >= limit;
    }
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    if rows.len() > limit {
        rows.truncate(limit);
        more = true;
    }
    let next = match rows.last() {
        Some((time, id, _)) if more => Some(Cursor::TimeId(*time, id.clone())),
        _ => None,
    };
    Ok(Page {
        messages: rows.into_iter().filter_map(|(_, _, m)| m).collect(),
        next,
    })
}

/// The most recent published message of each topic, ordered by `(time, id)`.
fn query_latest(conn: &Connection, topics: &[String]) -> Result<Vec<Message>, StoreError> {
    // Per topic, so each lookup is one backwards step on (topic, time, id).
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, json FROM messages WHERE topic = ?1 AND published = 1
             ORDER BY time DESC, id DESC",
        )
        .map_err(backend)?;
    let mut out = Vec::with_capacity(topics.len());
    for topic in topics {
        // Stops at the first decodable row: a corrupt latest row yields the one before.
        out.extend(decode_rows(&mut stmt, [topic], Some(1))?);
    }
    out.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
    Ok(out)
}

/// Decodes `(id, json)` rows into messages, skipping (with a warning) rows whose JSON
/// does not decode, so one bad row cannot hide a topic's whole history.
fn decode_rows(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl Params,
    limit: Option<usize>,
) -> Result<Vec<Message>, StoreError> {
    let mut rows = stmt.query(params).map_err(backend)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        let id = row
            .get_ref(0)
            .ok()
            .and_then(|v| v.as_str().ok())
            .unwrap_or("?");
        let decoded = row
            .get_ref(1)
            .map_err(|e| e.to_string())
            .and_then(|v| v.as_str().map_err(|e| e.to_string()))
            .and_then(|json| serde_json::from_str::<Message>(json).map_err(|e| e.to_string()));
        match decoded {
            Ok(message) => out.push(message),
            Err(error) => tracing::warn!(id, %error, "skipping a malformed stored message"),
        }
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// The writer

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The columns of a message about to be inserted, prepared off the writer thread.
struct NewRow {
    id: String,
    topic: String,
    time: i64,
    expires: Option<i64>,
    published: bool,
    sequence_id: Option<String>,
    event: &'static str,
    json: String,
}

/// A write operation queued for the writer thread.
enum Op {
    Append {
        row: NewRow,
        reply: Reply<()>,
    },
    Cancel {
        topic: String,
        sequence_id: String,
        reply: Reply<u64>,
    },
    TakeDue {
        now: i64,
        reply: Reply<Vec<Message>>,
    },
    /// `deleted` counts rows removed by earlier, already committed chunks.
    Prune {
        now: i64,
        deleted: u64,
        reply: Reply<u64>,
    },
    Ping {
        reply: Reply<()>,
    },
}

impl Op {
    /// Answers the operation with a failure of its whole batch.
    fn fail(self, failure: &BatchFailure) {
        self.unapplied().fail(failure);
    }

    /// The operation as if it had run without effect, to be answered with the
    /// failure of its batch.
    fn unapplied(self) -> Done {
        match self {
            Op::Append { reply, .. } | Op::Ping { reply } => Done::Unit(reply, Ok(())),
            Op::Cancel { reply, .. } | Op::Prune { reply, .. } => Done::Count(reply, Ok(0)),
            Op::TakeDue { reply, .. } => Done::Messages(reply, Ok(Vec::new())),
        }
    }

    /// Runs the operation's statements inside the open transaction. The answer is
    /// held back until the commit.
    fn apply(self, conn: &Connection) -> Done {
        match self {
            Op::Append { row, reply } => Done::Unit(reply, insert(conn, &row)),
            Op::Cancel {
                topic,
                sequence_id,
                reply,
            } => Done::Count(reply, cancel(conn, &topic, &sequence_id)),
            Op::TakeDue { now, reply } => Done::Messages(reply, take_due(conn, now)),
            Op::Prune {
                now,
                deleted,
                reply,
            } => match prune_chunk(conn, now) {
                Ok(n) if n >= PRUNE_CHUNK as u64 => Done::MorePrune {
                    now,
                    deleted: deleted + n,
                    reply,
                },
                result => Done::Count(reply, result.map(|n| deleted + n)),
            },
            Op::Ping { reply } => Done::Unit(reply, Ok(())),
        }
    }
}

/// An operation whose statements ran, waiting for the batch's commit.
enum Done {
    Unit(Reply<()>, Result<(), StoreError>),
    Count(Reply<u64>, Result<u64, StoreError>),
    Messages(Reply<Vec<Message>>, Result<Vec<Message>, StoreError>),
    /// A prune that deleted a full chunk: continues in the next batch once this one
    /// has committed.
    MorePrune {
        now: i64,
        deleted: u64,
        reply: Reply<u64>,
    },
}

impl Done {
    /// After a successful commit: answers the caller, or returns the continuation.
    fn finish(self) -> Option<Op> {
        match self {
            Done::Unit(reply, r) => drop(reply.send(r)),
            Done::Count(reply, r) => drop(reply.send(r)),
            Done::Messages(reply, r) => drop(reply.send(r)),
            Done::MorePrune {
                now,
                deleted,
                reply,
            } => {
                return Some(Op::Prune {
                    now,
                    deleted,
                    reply,
                });
            }
        }
        None
    }

    /// After a failed commit (or when the batch could not run): the operation's
    /// effects are gone, so it failed. A send fails only if the caller stopped
    /// waiting; nothing to do then.
    fn fail(self, failure: &BatchFailure) {
        match self {
            Done::Unit(reply, _) => drop(reply.send(Err(failure.error()))),
            Done::Count(reply, _) | Done::MorePrune { reply, .. } => {
                drop(reply.send(Err(failure.error())))
            }
            Done::Messages(reply, _) => drop(reply.send(Err(failure.error()))),
        }
    }

    /// Whether the operation failed because the disk is full.
    fn failed_disk_full(&self) -> bool {
        let error = match self {
            Done::Unit(_, r) => r.as_ref().err(),
            Done::Count(_, r) => r.as_ref().err(),
            Done::Messages(_, r) => r.as_ref().err(),
            Done::MorePrune { .. } => None,
        };
        matches!(error, Some(StoreError::Full(_)))
    }
}

/// Why a whole batch failed: nothing of it was committed.
#[derive(Debug, Clone)]
struct BatchFailure {
    /// SQLite found no space to write (`507` to publishers); otherwise the storage
    /// failed in another way (`503`). Either way the caller may retry later.
    disk_full: bool,
    text: String,
}

impl BatchFailure {
    fn new(disk_full: bool, text: String) -> Self {
        BatchFailure { disk_full, text }
    }

    fn from_sqlite(context: &str, e: &rusqlite::Error) -> Self {
        BatchFailure::new(is_disk_full(e), format!("{context}: {e}"))
    }

    /// The error every operation of the batch gets.
    fn error(&self) -> StoreError {
        if self.disk_full {
            StoreError::Full(self.text.clone())
        } else {
            StoreError::Unavailable(self.text.clone())
        }
    }
}

fn insert(conn: &Connection, row: &NewRow) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO messages (id, topic, time, expires, published, sequence_id, event, json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(backend)?;
    stmt.execute(rusqlite::params![
        row.id,
        row.topic,
        row.time,
        row.expires,
        row.published,
        row.sequence_id,
        row.event,
        row.json,
    ])
    .map_err(backend)?;
    Ok(())
}

fn cancel(conn: &Connection, topic: &str, sequence_id: &str) -> Result<u64, StoreError> {
    // A message without `sequence_id` is its own sequence (its id).
    let n = conn
        .prepare_cached(
            "DELETE FROM messages WHERE topic = ?1 AND published = 0
             AND (sequence_id = ?2 OR (sequence_id IS NULL AND id = ?2))",
        )
        .and_then(|mut stmt| stmt.execute([topic, sequence_id]))
        .map_err(backend)?;
    Ok(n as u64)
}

fn take_due(conn: &Connection, now: i64) -> Result<Vec<Message>, StoreError> {
    let mut select = conn
        .prepare_cached(
            "SELECT id, json FROM messages WHERE published = 0 AND time <= ?1 ORDER BY time, id",
        )
        .map_err(backend)?;
    let due = decode_rows(&mut select, [now], None)?;
    // Same predicate inside the same write transaction, and this thread is the only
    // writer, so exactly the selected rows are marked (undecodable ones too, so they
    // are not retried forever).
    conn.prepare_cached("UPDATE messages SET published = 1 WHERE published = 0 AND time <= ?1")
        .and_then(|mut stmt| stmt.execute([now]))
        .map_err(backend)?;
    Ok(due)
}

fn prune_chunk(conn: &Connection, now: i64) -> Result<u64, StoreError> {
    let n = conn
        .prepare_cached(
            "DELETE FROM messages WHERE pk IN
             (SELECT pk FROM messages WHERE expires < ?1 LIMIT ?2)",
        )
        .and_then(|mut stmt| stmt.execute([now, PRUNE_CHUNK]))
        .map_err(backend)?;
    Ok(n as u64)
}

/// The writer thread's state: the only read-write connection and what it reports.
struct Writer<'a> {
    conn: Connection,
    commits: &'a AtomicU64,
    observer: Option<&'a dyn CommitObserver>,
    health: &'a WriterHealth,
}

impl Writer<'_> {
    /// Batches queued operations into transactions until every sender is gone and
    /// the queue is empty.
    fn run(&self, mut queue: mpsc::Receiver<Op>, max_batch: usize) {
        let mut carry: Vec<Op> = Vec::new();
        loop {
            let mut batch = std::mem::take(&mut carry);
            if batch.is_empty() {
                match queue.blocking_recv() {
                    Some(op) => batch.push(op),
                    None => break,
                }
                // The first operation wakes this thread at once, usually before the
                // publishers that are about to send theirs have run (on one core,
                // always). Giving up the CPU once lets them queue theirs, so they share
                // this commit instead of each paying for its own: group commit that
                // adapts to load, costing a yield (not a timed wait) when there is none.
                std::thread::yield_now();
            }
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            // A panic in one batch (a bug, not I/O: I/O errors are results) must not
            // end the thread, or every later write would fail until a restart. The
            // batch's callers see their replies dropped (`Closed`, `503`).
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_batch(batch)));
            carry = ran.unwrap_or_else(|_| {
                rollback(&self.conn);
                self.failed(&BatchFailure::new(false, "store batch panicked".into()), 0);
                Vec::new()
            });
        }
        tracing::debug!("store writer stopped");
    }

    /// Runs `batch` in one transaction and answers every operation after the commit.
    /// Returns the operations that continue in the next batch (chunked prunes).
    fn run_batch(&self, batch: Vec<Op>) -> Vec<Op> {
        let conn = &self.conn;
        let size = batch.len();
        let started = Instant::now();
        if let Err(e) = exec_cached(conn, "BEGIN IMMEDIATE") {
            let failure = BatchFailure::from_sqlite("starting a transaction", &e);
            self.failed(&failure, size);
            batch.into_iter().for_each(|op| op.fail(&failure));
            return Vec::new();
        }
        if self.health.failing.load(Ordering::Relaxed)
            && let Err(e) = exec_cached(conn, PROBE_WRITE)
        {
            let failure = BatchFailure::from_sqlite("writing to the store", &e);
            rollback(conn);
            self.failed(&failure, size);
            batch.into_iter().for_each(|op| op.fail(&failure));
            return Vec::new();
        }

        let mut done = Vec::with_capacity(size);
        let mut ops = batch.into_iter();
        while let Some(op) = ops.next() {
            match apply_in_batch(conn, op) {
                Ok(d) => done.push(d),
                Err(d) => {
                    // The transaction itself is broken: nothing of this batch may commit.
                    let failure = BatchFailure::new(
                        d.failed_disk_full(),
                        "the transaction was rolled back by SQLite".into(),
                    );
                    rollback(conn);
                    self.failed(&failure, size);
                    d.fail(&failure);
                    done.into_iter().for_each(|d| d.fail(&failure));
                    ops.for_each(|op| op.fail(&failure));
                    return Vec::new();
                }
            }
        }

        match exec_cached(conn, "COMMIT") {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                if let Some(observer) = self.observer {
                    observer.committed(size, started.elapsed());
                }
                if self.health.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("store writes succeed again");
                }
                tracing::trace!(size, "store batch committed");
                done.into_iter().filter_map(Done::finish).collect()
            }
            Err(e) => {
                let failure = BatchFailure::from_sqlite("commit failed", &e);
                rollback(conn);
                self.failed(&failure, size);
                done.into_iter().for_each(|d| d.fail(&failure));
                Vec::new()
            }
        }
    }

    /// Marks writes as failing. Logged when they start failing: under load every
    /// batch fails, and a line per batch would flood the log (or fill the same disk).
    fn failed(&self, failure: &BatchFailure, size: usize) {
        let error = &failure.text;
        if self.health.failing.swap(true, Ordering::Relaxed) {
            tracing::debug!(%error, size, "store batch failed");
        } else if failure.disk_full {
            tracing::error!(%error, size, "store disk full: publishes are refused (507) until space is freed");
        } else {
            tracing::error!(%error, size, "store writes failing: publishes are refused (503) until a commit succeeds");
        }
    }
}

/// The write a batch makes while writes are failing, to prove that pages can be
/// written again: rewriting the schema version (unchanged) dirties the database
/// header page, which the commit must then write out (to the WAL).
const PROBE_WRITE: &str = "PRAGMA user_version = 1";

/// Applies one operation within the batch's transaction. An operation that fails
/// alone was undone by SQLite alone (`Ok` carrying its error: each operation writes
/// with one statement, and a failed statement is rolled back by itself); `Err` means
/// SQLite abandoned the enclosing transaction.
fn apply_in_batch(conn: &Connection, op: Op) -> Result<Done, Done> {
    let done = op.apply(conn);
    // Some errors (I/O, disk full) make SQLite roll back the whole transaction; later
    // statements would then run in autocommit mode, outside the batch.
    if conn.is_autocommit() {
        return Err(done);
    }
    Ok(done)
}

/// Runs a parameterless statement through the statement cache: `BEGIN` and `COMMIT`
/// run thousands of times a second, and parsing them each time shows.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "store rollback failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, MessageId};

    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("messages.db"), SqliteOptions::default()).unwrap()
    }

    fn msg(topic: &str, time: i64) -> Message {
        let mut m = Message::new(EventKind::Message, topic);
        m.time = time;
        m.expires = Some(time + 3600);
        m.message = format!("at {time}");
        m
    }

    fn q(topics: &[&str], since: Since, include_scheduled: bool) -> Query {
        Query {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            since,
            include_scheduled,
        }
    }

    fn ids<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Vec<&'a str> {
        messages.into_iter().map(|m| m.id.as_str()).collect()
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
        let mut seq = msg("t", now + 100);
        seq.sequence_id = Some("s1".into());
        let mut other_topic = msg("u", now + 100);
        other_topic.sequence_id = Some("s1".into());
        let mut delivered = msg("t", now - 1);
        delivered.sequence_id = Some("s1".into());
        for m in [&own, &seq, &other_topic, &delivered] {
            store.append(m.clone()).await.unwrap();
        }

        assert_eq!(store.cancel_scheduled("t", "s1").await.unwrap(), 1);
        assert_eq!(store.cancel_scheduled("t", &own.id).await.unwrap(), 1);
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
