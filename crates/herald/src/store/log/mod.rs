//! The log store: the embedded message store as an append-only log with an index in
//! memory (`store = log`).
//!
//! The SQLite store pays, per durable publish, for B-tree inserts into the table and
//! two indexes and for page-sized WAL frames at every commit: under callgrind about
//! 26,000 of a publish's ~52,000 instructions (docs/BENCHMARKS.md, "What is left of
//! the store's cost (round 5)"); on this store a durable publish is ~29,000 ("The log
//! store (round 6)"). Here a batch of publishes is one `pwrite` of their
//! records, and the orders the reads need are kept in memory, rebuilt from the log
//! at start. The parts:
//!
//! - this file: [`LogStore`], the [`Store`] implementation: writes go to the writer
//!   thread, reads look the index up and read the JSON with `pread` on the blocking
//!   pool; opening (rebuilding the index, cutting a torn tail, importing a SQLite
//!   store);
//! - `segment.rs`: the files and the record format, with a CRC-32 per record;
//! - `index.rs`: the in-memory index;
//! - `writer.rs`: the writer thread (group commit, failures, expiry, compaction).
//!
//! Durability is the SQLite store's, by the same `store-sync` option: a record is in
//! the file (the page cache) before its publish is acknowledged, so it survives a
//! process crash; `normal` syncs a segment when it is full, `full` syncs every write.
//! A crash in the middle of a write leaves a torn record at the tail, which the next
//! start finds by its checksum and cuts off; the publishes of that write were not
//! acknowledged.
//!
//! Memory grows with the number of stored messages (the index), not their size: see
//! `index.rs`.

mod index;
mod segment;
mod writer;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};

use async_trait::async_trait;

use super::sqlite::SyncMode;
use super::writer_thread::WriterThread;
use super::{CommitObserver, Cursor, Page, Query, Since, Store, StoreError, StoreStats};
use crate::model::{Message, now_unix};
use index::{Entry, Hit, Id, Index, Loc, Segment};
use segment::{End, Record, list_segments, scan, segment_path};
use writer::{Head, Op, Writer, create_segment, read_index};

/// Queued write operations per unit of `max_batch` (as the SQLite store).
const QUEUE_BATCHES: usize = 4;
/// When the latest message of a topic does not decode, how many before it are tried.
const LATEST_DEPTH: usize = 4;

/// Tuning for [`LogStore::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Durability of each write.
    pub sync: SyncMode,
    /// Most write operations taken from the queue at once (0 is treated as 1).
    pub max_batch: usize,
    /// A segment is closed, and a new one started, once it would grow past this.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            sync: SyncMode::Normal,
            max_batch: 512,
            segment_bytes: 64 << 20,
        }
    }
}

/// The log-backed [`Store`]. See the module docs for the design.
pub struct LogStore {
    writer: WriterThread<Op>,
    index: Arc<RwLock<Index>>,
    commits: Arc<AtomicU64>,
    dir: PathBuf,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (creating if needed) the log in directory `dir`, rebuilds its index and
    /// starts the writer thread. When the log is new and `import` names a SQLite
    /// store (`messages.db`) that exists, its messages are moved into the log first,
    /// and the file renamed to `<name>.imported`.
    pub fn open(
        dir: &Path,
        options: LogOptions,
        import: Option<&Path>,
        observer: Option<Arc<dyn CommitObserver>>,
    ) -> Result<LogStore, StoreError> {
        let backend = |what: &str, e: std::io::Error| {
            StoreError::Backend(format!("{what} {}: {e}", dir.display()))
        };
        let mut numbers = list_segments(dir).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(Vec::new()),
            _ => Err(backend("listing", e)),
        })?;
        if numbers.is_empty()
            && let Some(db) = import.filter(|db| db.exists())
        {
            // Held while importing, so that a second herald switching the same data
            // directory at the same moment waits, then finds this one's log (or the
            // database renamed) instead of importing into the same staging directory.
            let _importing = lock_file(db, db)?;
            numbers = list_segments(dir).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(Vec::new()),
                _ => Err(backend("listing", e)),
            })?;
            if numbers.is_empty() && db.exists() {
                import_sqlite(db, dir, options)?;
                numbers = list_segments(dir).map_err(|e| backend("listing", e))?;
            }
        }
        crate::datafiles::private_dir(dir).map_err(|e| backend("creating", e))?;
        let lock_file = lock_dir(dir)?;
        drop_empty_newest_segments(dir, &mut numbers)?;

        // Messages that expired before this start, or before the latest sweep's mark
        // (the clock may have gone back since), are skipped.
        let mut expired_before = now_unix();
        let mut index = Index::default();
        for (i, &number) in numbers.iter().enumerate() {
            let last = i + 1 == numbers.len();
            load_segment(dir, number, last, &mut expired_before, &mut index)?;
        }
        let head = match numbers.last() {
            Some(&number) => {
                let path = segment_path(dir, number);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| backend("opening a segment in", e))?;
                let len = file
                    .metadata()
                    .map_err(|e| backend("reading a segment in", e))?
                    .len();
                Head { number, file, len }
            }
            None => {
                let head =
                    create_segment(dir, 1, options.sync).map_err(|e| backend("creating", e))?;
                let file = head.file.try_clone().map_err(|e| backend("opening", e))?;
                index
                    .segments
                    .insert(head.number, new_segment(file, head.len));
                head
            }
        };
        if let Some(id) = index.newest_id()
            && !crate::model::id::never_below(&id)
        {
            tracing::warn!(
                id,
                "the newest stored message ID is more than a day ahead of the clock (or \
                 malformed); new IDs follow the clock and may sort before it"
            );
        }
        tracing::debug!(
            dir = %dir.display(),
            messages = index.len(),
            segments = index.segments.len(),
            "log store opened"
        );

        let index = Arc::new(RwLock::new(index));
        let max_batch = options.max_batch.max(1);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = WriterThread::spawn(max_batch.saturating_mul(QUEUE_BATCHES), {
            let (dir, index, commits) =
                (dir.to_path_buf(), Arc::clone(&index), Arc::clone(&commits));
            let (sync, answers) = (options.sync, writer::answer_on_runtime());
            let segment_bytes = options.segment_bytes.max(segment::MAGIC.len() as u64 + 1);
            move |queue, health| {
                let writer = Writer {
                    dir,
                    index,
                    head,
                    sync,
                    segment_bytes,
                    commits,
                    observer,
                    health,
                    answers,
                    encoder: segment::Encoder::default(),
                    _lock: lock_file,
                    full_segment_syncs: Vec::new(),
                    next_segment: None,
                };
                writer.run(queue, max_batch);
            }
        })?;
        Ok(LogStore {
            writer,
            index,
            commits,
            dir: dir.to_path_buf(),
        })
    }

    /// How many writes the writer has made since open (fewer than operations under
    /// load: group commit).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Looks `select` up in the index, then reads what it found, on the blocking pool
    /// (the index's lock is not held while reading the files).
    async fn read<T: Send + 'static>(
        &self,
        select: impl FnOnce(&Index) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        if !self.writer.is_open() {
            return Err(StoreError::Closed);
        }
        let index = Arc::clone(&self.index);
        tokio::task::spawn_blocking(move || select(&read_index(&index)))
            .await
            .map_err(|e| StoreError::Backend(format!("store read task failed: {e}")))
    }

    async fn read_hits(&self, hits: Vec<Hit>) -> Result<Vec<Message>, StoreError> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        tokio::task::spawn_blocking(move || read_messages(&hits))
            .await
            .map_err(|e| StoreError::Backend(format!("store read task failed: {e}")))?
    }

    async fn latest(&self, topics: Vec<String>) -> Result<Vec<Message>, StoreError> {
        let candidates = self
            .read(move |index| index.latest(&topics, LATEST_DEPTH))
            .await?;
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(candidates.len());
            for topic in candidates {
                // A latest record that does not decode yields the one before.
                for hit in topic {
                    if let Some(message) = read_message(&hit)? {
                        out.push(message);
                        break;
                    }
                }
            }
            out.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store read task failed: {e}")))?
    }
}

#[async_trait]
impl Store for LogStore {
    async fn append(&self, message: Message) -> Result<Message, StoreError> {
        // Encoded here, on the caller's task, to keep the single writer thread lean.
        super::append_through_encoded(self, message).await
    }

    fn append_encoded(
        &self,
        message: super::SharedMessage,
        json: bytes::Bytes,
        scheduled: bool,
    ) -> super::Appending<'_> {
        let record = super::NewRow::new(message, json, scheduled);
        self.writer.append(|reply| Op::Append { record, reply })
    }

    async fn query(&self, query: Query) -> Result<Vec<Message>, StoreError> {
        if query.since == Since::None || query.topics.is_empty() {
            return Ok(Vec::new());
        }
        if query.since == Since::Latest {
            return self.latest(query.topics).await;
        }
        let (hits, _) = self
            .read(move |index| index.select(&query, None, None))
            .await?;
        self.read_hits(hits).await
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
            let messages = self.latest(query.topics.clone()).await?;
            return Ok(Page {
                messages,
                next: None,
            });
        }
        let query = query.clone();
        let limit = limit.max(1);
        let (hits, more) = self
            .read(move |index| index.select(&query, after.as_ref(), Some(limit)))
            .await?;
        // Past every hit, readable or not, so a damaged record is not read again.
        let next = match hits.last() {
            Some(last) if more => Some(Cursor::TimeId(last.time, last.id.to_string())),
            _ => None,
        };
        Ok(Page {
            messages: self.read_hits(hits).await?,
            next,
        })
    }

    async fn after_id(&self, after: &str, limit: usize) -> Result<Vec<Message>, StoreError> {
        let after = after.to_string();
        let hits = self
            .read(move |index| index.after_id(&after, limit))
            .await?;
        self.read_hits(hits).await
    }

    async fn take_due(&self, now: i64) -> Result<Vec<Message>, StoreError> {
        self.writer.submit(|reply| Op::TakeDue { now, reply }).await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(read_index(&self.index).next_due())
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
        self.writer.submit(|reply| Op::Prune { now, reply }).await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let index = read_index(&self.index);
        Ok(StoreStats {
            messages: index.len() as u64,
            scheduled: index.scheduled() as u64,
        })
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        // Proves the writer is alive; while writes are failing it writes a record.
        self.writer.submit(|reply| Op::Ping { reply }).await
    }

    fn writes_failing(&self) -> bool {
        self.writer.writes_failing()
    }

    fn is_alive(&self) -> bool {
        self.writer.is_alive()
    }

    async fn close(&self) {
        if self.writer.close().await {
            tracing::debug!(dir = %self.dir.display(), "store closed");
        }
    }
}

// ---------------------------------------------------------------------------------
// Opening

/// How long opening waits for the log's lock (a store of this process still
/// closing, or another process).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes the lock that keeps a second writer (another herald on the same data
/// directory) off the log; held by the writer thread until it ends.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join("LOCK");
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
    lock_file(&path, dir)
}

/// Takes an exclusive lock (`flock`) on the existing file `path`, waiting up to
/// [`LOCK_WAIT`] for another holder; `in_use` names what the refusal is about.
fn lock_file(path: &Path, in_use: &Path) -> Result<std::fs::File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Unavailable(format!(
                    "{} is in use by another herald",
                    in_use.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Backend(format!(
                    "locking {}: {e}",
                    path.display()
                )));
            }
        }
    }
}

fn new_segment(file: std::fs::File, size: u64) -> Segment {
    Segment {
        file: Arc::new(file),
        live: 0,
        live_bytes: 0,
        size,
    }
}

/// Removes the newest segments that hold no record: the one the writer creates
/// ahead of its roll (`Writer::prepare_next_segment`) is left in place when herald
/// stops, and its creation may have been cut short by a crash (a file shorter than
/// its header, or a header never written). So the log's tail, torn or not, stays in
/// the newest segment that has records, which the rebuild treats as the tail. The
/// only segment of a log is kept if its header is whole.
fn drop_empty_newest_segments(dir: &Path, numbers: &mut Vec<u64>) -> Result<(), StoreError> {
    while let Some(&number) = numbers.last() {
        let path = segment_path(dir, number);
        let holds_records = std::fs::metadata(&path)
            .map(|m| m.len() > segment::MAGIC.len() as u64)
            .map_err(|e| StoreError::Backend(format!("reading {}: {e}", path.display())))?;
        if holds_records {
            return Ok(());
        }
        let whole = std::fs::read(&path).is_ok_and(|header| header == segment::MAGIC);
        if whole && numbers.len() == 1 {
            return Ok(());
        }
        if !whole {
            tracing::warn!(path = %path.display(), "removing a log segment whose creation a crash cut short");
        }
        std::fs::remove_file(&path)
            .map_err(|e| StoreError::Backend(format!("removing {}: {e}", path.display())))?;
        numbers.pop();
    }
    Ok(())
}

/// Reads segment `number` into `index`. A damaged tail is cut off: at the log's
/// tail it is a write a crash cut short (whose publishes were never acknowledged);
/// in an older segment it is damage, and what follows it in that segment is lost,
/// which is logged as an error. A file that is not a segment stops the start.
fn load_segment(
    dir: &Path,
    number: u64,
    last: bool,
    expired_before: &mut i64,
    index: &mut Index,
) -> Result<(), StoreError> {
    let path = segment_path(dir, number);
    let file = std::fs::File::open(&path)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
    index.segments.insert(number, new_segment(file, 0));
    let end = scan(&path, |at, len, body| {
        apply(index, number, expired_before, at, len, body)
    })
    .map_err(|e| StoreError::Backend(format!("reading {}: {e}", path.display())))?;
    let size = match end {
        End::Clean => std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        End::Damaged { at: 0, why } => {
            return Err(StoreError::Corrupt(format!("{}: {why}", path.display())));
        }
        End::Damaged { at, why } => {
            if last {
                tracing::warn!(path = %path.display(), at, why, "cutting a torn write off the log's tail");
            } else {
                tracing::error!(path = %path.display(), at, why, "log segment damaged: the records after this offset are lost");
            }
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(at))
                .map_err(|e| StoreError::Backend(format!("cutting {}: {e}", path.display())))?;
            at
        }
    };
    if let Some(segment) = index.segments.get_mut(&number) {
        segment.size = size;
    }
    Ok(())
}

/// Applies one record read at start.
fn apply(
    index: &mut Index,
    segment: u64,
    expired_before: &mut i64,
    at: u64,
    len: u32,
    body: &[u8],
) {
    match segment::decode(body) {
        Some(Record::Put(put)) => {
            if put.expires.is_some_and(|e| e < *expired_before) {
                return;
            }
            let json_len = put.json.len() as u32;
            let loc = Loc {
                segment,
                offset: at + u64::from(len) - u64::from(json_len),
                len: json_len,
                record_len: len,
            };
            let Some(id) = Id::of(put.id) else {
                tracing::warn!(
                    segment,
                    at,
                    id = put.id,
                    "skipping a log record with an ID too long"
                );
                return;
            };
            let topic = index.shared_topic(put.topic);
            let entry = Entry::new(topic, put.time, put.expires, put.published, loc);
            index.insert(id, entry, put.sequence_id.map(Box::from));
        }
        Some(Record::Published(id)) => {
            if let Some(id) = Id::of(id) {
                index.publish(id);
            }
        }
        Some(Record::Removed(id)) => {
            if let Some(id) = Id::of(id) {
                index.remove(id);
            }
        }
        Some(Record::Expired(now)) => {
            if now > *expired_before {
                *expired_before = now;
                index.forget_expired(now);
            }
        }
        Some(Record::Noop) => {}
        None => tracing::warn!(segment, at, "skipping a log record of an unknown kind"),
    }
}

/// Moves the messages of the SQLite store at `db` into a new log at `dir`: written
/// into `<dir>.importing` and renamed when complete (a crash midway leaves no log,
/// and the next start imports again), then the SQLite file is renamed
/// `<name>.imported`, so it is not imported twice.
fn import_sqlite(db: &Path, dir: &Path, options: LogOptions) -> Result<(), StoreError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Backend(format!(
            "importing {} into the log: {what}: {e}",
            db.display()
        ))
    };
    let mut staging = dir.as_os_str().to_owned();
    staging.push(".importing");
    let staging = PathBuf::from(staging);
    match std::fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(failed("clearing an unfinished import", &e));
        }
        _ => {}
    }
    crate::datafiles::private_dir(&staging).map_err(|e| failed("creating", &e))?;
    let conn = rusqlite::Connection::open(db).map_err(|e| failed("opening", &e))?;
    let mut stmt = conn
        .prepare(
            "SELECT id, topic, time, expires, published, sequence_id, json FROM messages ORDER BY id",
        )
        .map_err(|e| failed("reading", &e))?;
    let mut rows = stmt.query([]).map_err(|e| failed("reading", &e))?;
    let mut head = create_segment(&staging, 1, options.sync).map_err(|e| failed("creating", &e))?;
    let mut encoder = segment::Encoder::default();
    let mut imported = 0u64;
    loop {
        let row = rows.next().map_err(|e| failed("reading", &e))?;
        if let Some(row) = row {
            let get = |e: rusqlite::Error| failed("reading a row", &e);
            let id: String = row.get(0).map_err(get)?;
            let topic: String = row.get(1).map_err(get)?;
            let sequence_id: Option<String> = row.get(5).map_err(get)?;
            let json: String = row.get(6).map_err(get)?;
            let put = segment::Put {
                id: &id,
                topic: &topic,
                time: row.get(2).map_err(get)?,
                expires: row.get(3).map_err(get)?,
                published: row.get(4).map_err(get)?,
                sequence_id: sequence_id.as_deref(),
                json: json.as_bytes(),
            };
            match encoder.put(&put) {
                Ok(_) => imported += 1,
                Err(e) => tracing::warn!(id, error = %e, "not imported into the log"),
            }
        }
        let full = encoder.buf.len() as u64 >= options.segment_bytes / 4;
        if row.is_none() || full {
            if head.len + encoder.buf.len() as u64 > options.segment_bytes
                && head.len > segment::MAGIC.len() as u64
            {
                head.file.sync_data().map_err(|e| failed("writing", &e))?;
                head = create_segment(&staging, head.number + 1, options.sync)
                    .map_err(|e| failed("creating", &e))?;
            }
            use std::os::unix::fs::FileExt;
            head.file
                .write_all_at(&encoder.buf, head.len)
                .map_err(|e| failed("writing", &e))?;
            head.len += encoder.buf.len() as u64;
            encoder.buf.clear();
        }
        if row.is_none() {
            break;
        }
    }
    head.file.sync_data().map_err(|e| failed("writing", &e))?;
    drop(rows);
    drop(stmt);
    drop(conn);
    std::fs::rename(&staging, dir).map_err(|e| failed("renaming the new log", &e))?;
    let mut done = db.as_os_str().to_owned();
    done.push(".imported");
    std::fs::rename(db, &done).map_err(|e| failed("renaming the imported file", &e))?;
    for side in ["-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(side);
        let _ = std::fs::remove_file(path);
    }
    tracing::info!(
        from = %db.display(),
        to = %dir.display(),
        messages = imported,
        "imported the SQLite message store into the log; the old file is kept as {}",
        PathBuf::from(done).display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Reading

/// The message at `hit`; `None` (logged) if its JSON does not decode.
fn read_message(hit: &Hit) -> Result<Option<Message>, StoreError> {
    use std::os::unix::fs::FileExt;
    let mut json = vec![0; hit.loc.len as usize];
    hit.file
        .read_exact_at(&mut json, hit.loc.offset)
        .map_err(|e| StoreError::Backend(format!("reading the log: {e}")))?;
    match serde_json::from_slice::<Message>(&json) {
        Ok(message) => Ok(Some(message)),
        Err(error) => {
            tracing::warn!(id = %hit.id, %error, "skipping a malformed stored message");
            Ok(None)
        }
    }
}

fn read_messages(hits: &[Hit]) -> Result<Vec<Message>, StoreError> {
    let mut out = Vec::with_capacity(hits.len());
    for hit in hits {
        out.extend(read_message(hit)?);
    }
    Ok(out)
}

fn write_index(index: &RwLock<Index>) -> RwLockWriteGuard<'_, Index> {
    index.write().unwrap_or_else(|p| p.into_inner())
}

/// Locks `m`, recovering from poisoning (the guarded values stay valid).
#[cfg(test)]
mod tests;
