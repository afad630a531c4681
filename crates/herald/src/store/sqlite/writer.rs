//! The writer thread: the only read-write connection, and group commit.
//!
//! - One dedicated writer OS thread owns the only read-write connection. Every write
//!   operation (`append`, `take_due`, `cancel_scheduled`, `prune_expired`, the
//!   readiness ping) is sent to it over a bounded channel together with a oneshot
//!   reply sender.
//! - The writer blocks for the first operation, drains whatever else is already
//!   queued, and again, before the commit, whatever was queued while it ran them (up
//!   to [`SqliteOptions::max_batch`](super::SqliteOptions::max_batch) in all), runs all of them in ONE
//!   transaction, commits, and only then answers each of them. Concurrent publishes
//!   therefore share one commit, and a caller hears "ok" only once its row is
//!   committed. `BEGIN`, `COMMIT` and the insert are prepared once ([`Prepared`]). If the commit fails, every operation of the batch gets an error:
//!   never a false success.
//! - One operation that fails on its own (say a duplicate message ID) is rolled back
//!   alone and reported alone, while the rest of the batch still commits. Every
//!   operation writes with a single statement, and SQLite undoes a failed statement
//!   by itself, keeping the transaction; when it must abandon the whole transaction
//!   instead (I/O error, disk full) the writer sees it and fails the whole batch. No
//!   savepoint per operation: they cost a copy of every page an operation touches
//!   (the sub-journal), a tenth of a publish's instructions under callgrind.
//! - A large expiry prune deletes in chunks, one chunk per batch, so it never holds
//!   the writer (and the publishes queued behind it) for long. It finds the expired
//!   rows through `expiry_ranges` (schema.rs), which the writer keeps up to date once
//!   per commit ([`ExpiryRanges`]) instead of an index that every insert would pay for.
//! - A failed batch does not stop the writer: it rolls back, answers its operations
//!   with [`StoreError::Full`] (disk full) or [`StoreError::Unavailable`], and marks
//!   writes as failing until a later commit succeeds ([`Store::writes_failing`](crate::store::Store::writes_failing),
//!   readiness). Meanwhile every batch also rewrites a header field, because on a
//!   full disk an empty commit (the readiness ping) would still succeed; so the
//!   probe itself finds out when space is back.
//!
//! The checkpointer thread lives here too: it copies the WAL into the database so
//! that the writer's commits never do it themselves.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, Statement};
use tokio::sync::mpsc;

use super::read::decode_rows;
use super::{BUSY_TIMEOUT, SyncMode, backend, is_disk_full};
use crate::model::Message;
use crate::store::writer_thread::{Reply, WriterHealth};
use crate::store::{CommitObserver, NewRow, StoreError};

/// Rows deleted per writer batch by `prune_expired`: large enough to keep up with any
/// realistic publish rate, small enough that publishes queued behind it wait only a
/// few milliseconds. (Tiny in tests so that chunking is exercised.)
pub(super) const PRUNE_CHUNK: i64 = if cfg!(test) { 7 } else { 5_000 };
/// Expiry ranges a prune chunk looks at, at most (each costs one range delete).
const PRUNE_RANGES: i64 = if cfg!(test) { 3 } else { 512 };
/// A row joins the newest range of its expiry second only if at most this many rows
/// were inserted since that range ends: a prune scans a range whole, rows of other
/// seconds included, so this bounds the rows it reads for nothing.
const RANGE_GAP: i64 = if cfg!(test) { 4 } else { 1_024 };
/// Expiry seconds whose newest range the writer remembers. Publishes use one or two
/// at a time; scheduled messages may spread over many, so past this the map starts
/// over (later rows then open new ranges, which costs only range rows).
const RANGES_REMEMBERED: usize = 1_024;

pub(super) fn open_writer(path: &Path, sync: SyncMode) -> Result<Connection, StoreError> {
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

pub(super) fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
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
pub(super) fn checkpointer_loop(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
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

/// A write operation queued for the writer thread.
pub(super) enum Op {
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
    fn apply(self, conn: &Connection, stmts: &mut Prepared<'_>) -> Done {
        match self {
            Op::Append { row, reply } => Done::Unit(reply, insert(conn, stmts, &row)),
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
            } => {
                stmts.ranges.forget_before(now);
                match prune_chunk(conn, now) {
                    Ok(PruneChunk { deleted: n, more }) if more => Done::MorePrune {
                        now,
                        deleted: deleted + n,
                        reply,
                    },
                    result => Done::Count(reply, result.map(|chunk| deleted + chunk.deleted)),
                }
            }
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

/// A committed operation's answer, on its way to the caller.
pub(super) enum Answer {
    Unit(Reply<()>, Result<(), StoreError>),
    Count(Reply<u64>, Result<u64, StoreError>),
    Messages(Reply<Vec<Message>>, Result<Vec<Message>, StoreError>),
}

impl Answer {
    /// A send fails only if the caller stopped waiting; nothing to do then.
    pub(super) fn send(self) {
        match self {
            Answer::Unit(reply, r) => drop(reply.send(r)),
            Answer::Count(reply, r) => drop(reply.send(r)),
            Answer::Messages(reply, r) => drop(reply.send(r)),
        }
    }
}

/// Where the writer hands a committed batch's answers: a task on the runtime that
/// sends them ([`answer_on_runtime`]).
///
/// Sent from this thread, each answer wakes its publisher's task from outside the
/// runtime: when the runtime's worker is idle, each such wake-up writes to its
/// eventfd and, on a shared core, switches to it at once, so a batch of 50 cost 50
/// switches between the writer and the worker (`perf`: a tenth of the server's CPU
/// in `Waker::wake` under a durable load). Handed over as one message, a batch costs
/// one wake-up, and the task's answers wake the publishers from within the runtime.
pub(super) type AnswerSender = tokio::sync::mpsc::UnboundedSender<Vec<Answer>>;

/// Starts the task that sends the writer's answers, on the current runtime if it
/// is multi-threaded (its workers always run it). On a single-threaded runtime, or
/// outside one, there is no guarantee the runtime is being driven when the writer
/// commits, so the writer answers by itself (`None`).
pub(super) fn answer_on_runtime() -> Option<AnswerSender> {
    crate::store::writer_thread::answer_task(Answer::send)
}

impl Done {
    /// After a successful commit: adds the caller's answer to `answers`, or returns
    /// the continuation.
    fn finish(self, answers: &mut Vec<Answer>) -> Option<Op> {
        match self {
            Done::Unit(reply, r) => answers.push(Answer::Unit(reply, r)),
            Done::Count(reply, r) => answers.push(Answer::Count(reply, r)),
            Done::Messages(reply, r) => answers.push(Answer::Messages(reply, r)),
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

/// The statements every batch runs, prepared once and kept by the writer: through
/// rusqlite's statement cache each use hashed the SQL text twice (lookup and return)
/// and cleared the bindings, about 2,000 instructions per publish under callgrind.
/// With them, the writer's memory of the expiry ranges, which is only valid together
/// with its statements' connection.
pub(super) struct Prepared<'c> {
    begin: Statement<'c>,
    commit: Statement<'c>,
    insert: Statement<'c>,
    upsert_range: Statement<'c>,
    ranges: ExpiryRanges,
}

impl<'c> Prepared<'c> {
    fn new(conn: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Prepared {
            begin: conn.prepare("BEGIN IMMEDIATE")?,
            commit: conn.prepare("COMMIT")?,
            insert: conn.prepare(
                "INSERT INTO messages (id, topic, time, expires, published, sequence_id, event, json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?,
            // A range only grows: a key that comes round again (the table emptied,
            // SQLite reuses row keys) must not shrink a range that still has rows.
            upsert_range: conn.prepare(
                "INSERT INTO expiry_ranges (expires, lo, hi) VALUES (?1, ?2, ?3)
                 ON CONFLICT (expires, lo) DO UPDATE SET hi = MAX(hi, excluded.hi)",
            )?,
            ranges: ExpiryRanges::default(),
        })
    }
}

/// The writer's side of `expiry_ranges` (schema.rs). Rows are inserted in publish
/// order and expire `cache-duration` after it, so the rows of one expiry second are
/// consecutive keys: the writer extends that second's newest range in memory as it
/// inserts, and writes each changed range once, just before the commit.
///
/// Every stored row with an expiry is inside a range row of its second, committed
/// with it; a range may also span rows of other seconds (a scheduled message
/// inserted in between), which a prune reads and leaves. After a failed batch the
/// memory may hold a range that was never written: a later write of it covers more
/// rows than it needs to, never fewer.
#[derive(Debug, Default)]
pub(super) struct ExpiryRanges {
    /// (expiry second, first key, last key) of each second's newest range, the
    /// most recently used last: publishes hit the last entry or the one before.
    newest: Vec<(i64, i64, i64)>,
    /// Indexes into `newest` of the ranges the batch under way changed.
    changed: Vec<usize>,
}

impl ExpiryRanges {
    /// Records that the row with key `pk` expires at `expires`.
    fn note(&mut self, expires: i64, pk: i64) {
        let at = match self.newest.iter().rposition(|r| r.0 == expires) {
            Some(at) => {
                let (_, lo, hi) = &mut self.newest[at];
                if pk >= *lo && pk <= *hi {
                    return;
                }
                if pk > *hi && pk - *hi <= RANGE_GAP {
                    *hi = pk;
                } else {
                    (*lo, *hi) = (pk, pk);
                }
                at
            }
            None => {
                if self.newest.len() >= RANGES_REMEMBERED {
                    // Forgetting is safe only for ranges already written.
                    self.flush_pending_first();
                }
                self.newest.push((expires, pk, pk));
                self.newest.len() - 1
            }
        };
        if !self.changed.contains(&at) {
            self.changed.push(at);
        }
    }

    /// Keeps only the ranges the batch under way changed (they are still to be
    /// written): called when the memory is full.
    fn flush_pending_first(&mut self) {
        let kept: Vec<(i64, i64, i64)> = self.changed.iter().map(|&i| self.newest[i]).collect();
        self.changed = (0..kept.len()).collect();
        self.newest = kept;
    }

    /// Writes the ranges the batch changed (inside its transaction).
    fn flush(&mut self, upsert: &mut Statement<'_>) -> rusqlite::Result<()> {
        for at in self.changed.drain(..) {
            if let Some(&(expires, lo, hi)) = self.newest.get(at) {
                upsert.execute(rusqlite::params![expires, lo, hi])?;
            }
        }
        Ok(())
    }

    /// Seconds before `now` get no new rows (a message expires after it is
    /// published): the prune deletes their ranges, so their memory goes too.
    /// Called between batches only (`changed` is empty then).
    fn forget_before(&mut self, now: i64) {
        if self.changed.is_empty() {
            self.newest.retain(|r| r.0 >= now);
        }
    }
}

fn insert(conn: &Connection, stmts: &mut Prepared<'_>, row: &NewRow) -> Result<(), StoreError> {
    // Stored as text, as ever. The bytes are bound as they are: they are the JSON the
    // core encoded from a `Message`'s strings, so UTF-8 (`NewRow::json`), and checking
    // that again cost 250–560 instructions a publish (callgrind); SQLite does not check
    // text either.
    let json = ToSqlOutput::Borrowed(ValueRef::Text(&row.json));
    stmts
        .insert
        .execute(rusqlite::params![
            row.id(),
            row.topic(),
            row.time(),
            row.expires(),
            row.published,
            row.sequence_id(),
            row.event(),
            json,
        ])
        .map_err(backend)?;
    if let Some(expires) = row.expires() {
        stmts.ranges.note(expires, conn.last_insert_rowid());
    }
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

/// What one prune chunk did.
struct PruneChunk {
    deleted: u64,
    /// Whether expired rows (or ranges to look at) may be left for another chunk.
    more: bool,
}

/// Deletes up to [`PRUNE_CHUNK`] expired rows, going through the ranges of the
/// seconds before `now`, oldest first. A range whose rows are all gone goes too.
fn prune_chunk(conn: &Connection, now: i64) -> Result<PruneChunk, StoreError> {
    let ranges: Vec<(i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT expires, lo, hi FROM expiry_ranges WHERE expires < ?1
             ORDER BY expires, lo LIMIT ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_map([now, PRUNE_RANGES], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect()
        })
        .map_err(backend)?;
    let mut left = PRUNE_CHUNK;
    for &(expires, lo, hi) in &ranges {
        // `expires < now` keeps the rows of later seconds that share the range.
        let n = conn
            .prepare_cached(
                "DELETE FROM messages WHERE pk IN (SELECT pk FROM messages
                 WHERE pk BETWEEN ?1 AND ?2 AND expires < ?3 LIMIT ?4)",
            )
            .and_then(|mut stmt| stmt.execute([lo, hi, now, left]))
            .map_err(backend)?;
        left -= n as i64;
        if left <= 0 {
            // The range may hold more: it stays for the next chunk.
            break;
        }
        conn.prepare_cached("DELETE FROM expiry_ranges WHERE expires = ?1 AND lo = ?2")
            .and_then(|mut stmt| stmt.execute([expires, lo]))
            .map_err(backend)?;
    }
    Ok(PruneChunk {
        deleted: (PRUNE_CHUNK - left.max(0)) as u64,
        more: left <= 0 || ranges.len() as i64 >= PRUNE_RANGES,
    })
}

/// The writer thread's state: the only read-write connection and what it reports.
pub(super) struct Writer<'a> {
    pub(super) conn: Connection,
    pub(super) commits: &'a AtomicU64,
    pub(super) observer: Option<&'a dyn CommitObserver>,
    pub(super) health: &'a WriterHealth,
    /// `None`: the writer answers by itself.
    pub(super) answers: Option<AnswerSender>,
}

impl Writer<'_> {
    /// Batches queued operations into transactions until every sender is gone and
    /// the queue is empty.
    pub(super) fn run(&self, mut queue: mpsc::Receiver<Op>, max_batch: usize) {
        let mut carry: Vec<Op> = Vec::new();
        // Prepared when a batch first needs them, again after a batch panicked (a
        // statement may have been left mid-step).
        let mut prepared: Option<Prepared<'_>> = None;
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
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let stmts = match prepared.as_mut() {
                    Some(stmts) => stmts,
                    None => match Prepared::new(&self.conn) {
                        Ok(stmts) => prepared.insert(stmts),
                        Err(e) => {
                            let failure = BatchFailure::from_sqlite("preparing statements", &e);
                            self.failed(&failure, batch.len());
                            batch.into_iter().for_each(|op| op.fail(&failure));
                            return Vec::new();
                        }
                    },
                };
                self.run_batch(stmts, batch, &mut queue, max_batch)
            }));
            carry = ran.unwrap_or_else(|_| {
                prepared = None;
                rollback(&self.conn);
                self.failed(&BatchFailure::new(false, "store batch panicked".into()), 0);
                Vec::new()
            });
        }
        tracing::debug!("store writer stopped");
    }

    /// Runs `batch`, and whatever is queued meanwhile (up to `max_batch` operations),
    /// in one transaction and answers every operation after the commit. Returns the
    /// operations that continue in the next batch (chunked prunes).
    fn run_batch(
        &self,
        stmts: &mut Prepared<'_>,
        batch: Vec<Op>,
        queue: &mut mpsc::Receiver<Op>,
        max_batch: usize,
    ) -> Vec<Op> {
        let conn = &self.conn;
        let size = batch.len();
        let started = Instant::now();
        // Left over only by a batch that failed: its rows are gone.
        stmts.ranges.changed.clear();
        if let Err(e) = stmts.begin.execute([]) {
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
        loop {
            let op = match ops.next() {
                Some(op) => op,
                // Operations sent while this batch ran join it before the commit:
                // publishers that share the writer's core (one core, or callgrind's one
                // thread at a time) queue theirs while it works, and would otherwise
                // each wait for, and pay for, a commit of their own. When none came,
                // this costs one empty poll of the queue, and no wait.
                None if done.len() < max_batch => match queue.try_recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
                None => break,
            };
            match apply_in_batch(conn, stmts, op) {
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

        let size = done.len();
        if let Err(e) = stmts.ranges.flush(&mut stmts.upsert_range) {
            let failure = BatchFailure::from_sqlite("recording expiry ranges", &e);
            rollback(conn);
            self.failed(&failure, size);
            done.into_iter().for_each(|d| d.fail(&failure));
            return Vec::new();
        }
        match stmts.commit.execute([]) {
            Ok(_) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                if let Some(observer) = self.observer {
                    observer.committed(size, started.elapsed());
                }
                if self.health.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("store writes succeed again");
                }
                tracing::trace!(size, "store batch committed");
                let mut answers = Vec::with_capacity(size);
                let carry = done
                    .into_iter()
                    .filter_map(|d| d.finish(&mut answers))
                    .collect();
                self.answer(answers);
                carry
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

    /// Sends a committed batch's answers, through the runtime when there is more
    /// than one ([`AnswerSender`]; for one, that would only add a hop).
    fn answer(&self, answers: Vec<Answer>) {
        match &self.answers {
            Some(runtime) if answers.len() > 1 => {
                // The task is gone only when the runtime is shutting down.
                if let Err(tokio::sync::mpsc::error::SendError(answers)) = runtime.send(answers) {
                    answers.into_iter().for_each(Answer::send);
                }
            }
            _ => answers.into_iter().for_each(Answer::send),
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
pub(super) const PROBE_WRITE: &str = "PRAGMA user_version = 2";

/// Applies one operation within the batch's transaction. An operation that fails
/// alone was undone by SQLite alone (`Ok` carrying its error: each operation writes
/// with one statement, and a failed statement is rolled back by itself); `Err` means
/// SQLite abandoned the enclosing transaction.
fn apply_in_batch(conn: &Connection, stmts: &mut Prepared<'_>, op: Op) -> Result<Done, Done> {
    let done = op.apply(conn, stmts);
    // Some errors (I/O, disk full) make SQLite roll back the whole transaction; later
    // statements would then run in autocommit mode, outside the batch.
    if conn.is_autocommit() {
        return Err(done);
    }
    Ok(done)
}

/// Runs a parameterless statement through the statement cache (the rare probe write;
/// `BEGIN` and `COMMIT` are [`Prepared`]).
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
    use std::sync::Arc;
    use tokio::sync::oneshot;

    fn row(id: &str) -> NewRow {
        let mut message = Message::new(crate::model::EventKind::Message, "t");
        message.id = id.into();
        message.time = 1;
        message.expires = None;
        NewRow::new(Arc::new(message), bytes::Bytes::from_static(b"{}"))
    }

    #[test]
    fn operations_queued_during_a_batch_join_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&dir.path().join("m.db"), SyncMode::Normal).unwrap();
        super::super::schema::migrate(&conn).unwrap();
        let commits = AtomicU64::new(0);
        let health = WriterHealth::new();
        let writer = Writer {
            conn,
            commits: &commits,
            observer: None,
            health: &health,
            answers: None,
        };
        let mut stmts = Prepared::new(&writer.conn).unwrap();
        let (tx, mut queue) = mpsc::channel(8);
        let mut answers = Vec::new();
        let mut op = |id: &str| {
            let (reply, answer) = oneshot::channel();
            answers.push(answer);
            Op::Append {
                row: row(id),
                reply,
            }
        };
        let first = op("a");
        // Sent after the batch was drained, before its commit.
        for id in ["b", "c", "d"] {
            tx.try_send(op(id)).map_err(|_| ()).unwrap();
        }
        let carry = writer.run_batch(&mut stmts, vec![first], &mut queue, 3);
        assert!(carry.is_empty());
        assert_eq!(commits.load(Ordering::Relaxed), 1, "one commit");
        let count: i64 = writer
            .conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 3, "the first, and two sent meanwhile (max_batch 3)");
        let mut answers = answers.into_iter();
        for answer in answers.by_ref().take(3) {
            assert!(matches!(answer.blocking_recv(), Ok(Ok(()))));
        }
        // `max_batch` still bounds the batch: the fourth waits in the queue.
        assert!(queue.try_recv().is_ok());
    }
}
