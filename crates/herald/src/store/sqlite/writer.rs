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
//!   committed. `BEGIN`, `COMMIT` and the inserts are prepared once ([`Prepared`]). If the commit fails, every operation of the batch gets an error:
//!   never a false success.
//! - Appends that follow one another in a batch are inserted up to 8 rows per
//!   statement ([`insert_run`]): running a statement has a cost of its own (a cursor
//!   on the table and each index, opened, positioned and closed), which one row per
//!   statement paid for every publish.
//! - One operation that fails on its own (say a duplicate message ID) is rolled back
//!   alone and reported alone, while the rest of the batch still commits. Every
//!   operation but the multi-row insert writes with a single statement, and SQLite
//!   undoes a failed statement by itself, keeping the transaction; the multi-row
//!   insert skips a row that breaks a constraint (`OR IGNORE`) and then reports that
//!   row alone. When SQLite must abandon the whole transaction instead (I/O error,
//!   disk full) the writer sees it and fails the whole batch. No savepoint per
//!   operation: they cost a copy of every page an operation touches (the
//!   sub-journal), a tenth of a publish's instructions under callgrind.
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
//! that the writer's commits never do it themselves. Under a steady stream of
//! commits it never catches up by itself (the WAL then grew to the writer's safety
//! net, whose checkpoint held commits for tens of milliseconds), so after a pass
//! over a large WAL the writer copies the rest between two batches
//! ([`CheckpointHandoff`]) and the WAL starts over.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Statement};
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
    // checkpointer thread does them instead (and the writer finishes its passes
    // between batches); this larger threshold is only a safety net should both fall
    // behind.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(backend)?;
    Ok(conn)
}

/// Writer-side checkpoint threshold, in pages (SQLite's default is 1,000).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 20_000;
/// How often the checkpointer copies the WAL into the database while little is
/// written (a pass found fewer than [`BUSY_WAL_FRAMES`] frames).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// ... and while much is: the sooner a pass follows the last, the less the writer
/// has left to finish ([`CheckpointHandoff`]) and the smaller the WAL stays.
const BUSY_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// A WAL of this many frames (4 KiB pages) or more counts as busy.
const BUSY_WAL_FRAMES: i64 = if cfg!(test) { 4 } else { 1_000 };
/// A pass that finds this many frames (40 MiB) or more asks the writer to finish it.
/// The writer's checkpoint holds the publishes that arrive meanwhile for a few
/// milliseconds (its copy and two fsyncs): once per WAL of this size, that is a
/// fraction of a percent of the time even at 10,000 publishes/s to 1,000 topics
/// (a frame a publish). Asked after every busy pass, it doubled their p99
/// (docs/BENCHMARKS.md, round 11).
const FINISH_WAL_FRAMES: i64 = if cfg!(test) { 8 } else { 10_000 };

pub(super) fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    Ok(conn)
}

/// How the checkpointer asks the writer to finish a pass.
///
/// SQLite starts the WAL over (writes from its start again) only when a write
/// transaction begins and every frame in it has been copied into the database. A
/// passive checkpoint copies the frames that were there when it began; under a steady
/// stream of commits new ones always arrive meanwhile, so the checkpointer alone
/// never gets there. The WAL then grew to the writer's safety net
/// ([`WAL_AUTOCHECKPOINT_PAGES`], ~80 MiB), whose checkpoint inside a commit copied
/// up to half a second of frames and waited for their fsyncs, holding that commit's
/// publishes for 10 to 70 ms several times a second (docs/BENCHMARKS.md, rounds 10
/// and 11). Now, after a pass over a WAL of [`FINISH_WAL_FRAMES`] or more, the
/// writer checkpoints itself between two batches: it copies only what was committed
/// during the pass, and its next commit starts the WAL over.
#[derive(Debug, Default)]
pub(super) struct CheckpointHandoff {
    finish: AtomicBool,
}

impl CheckpointHandoff {
    /// Whether a pass asked the writer to finish it, clearing the request.
    fn take(&self) -> bool {
        self.finish.swap(false, Ordering::AcqRel)
    }
}

/// Runs passive checkpoints (which never block the writer or readers) until the
/// store closes (the sender of `stop` is dropped), every [`CHECKPOINT_INTERVAL`], or
/// [`BUSY_CHECKPOINT_INTERVAL`] while the WAL is busy, and asks the writer (through
/// `handoff`) to finish a pass once the WAL is large.
/// A failing checkpoint (a full disk) is logged when it starts and stops failing,
/// not at every pass; it is retried every interval and needs no repair.
pub(super) fn checkpointer_loop(
    conn: Connection,
    stop: std::sync::mpsc::Receiver<()>,
    handoff: &CheckpointHandoff,
) {
    let mut failing = false;
    let mut interval = CHECKPOINT_INTERVAL;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        let pass = checkpoint_pass(&conn, handoff);
        interval = match pass {
            Ok(true) => BUSY_CHECKPOINT_INTERVAL,
            _ => CHECKPOINT_INTERVAL,
        };
        match pass {
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "store checkpoints failing; retrying");
            }
            Err(e) => tracing::debug!(error = %e, "store checkpoint failed"),
            Ok(_) if failing => {
                failing = false;
                tracing::info!("store checkpoints succeed again");
            }
            Ok(_) => {}
        }
    }
}

/// One passive checkpoint; whether the WAL is busy. Asks the writer to finish the
/// pass once the WAL has [`FINISH_WAL_FRAMES`]. (The pass cannot tell whether
/// commits added frames while it ran: it counts the frames that were there when it
/// began. When none were added, the writer's checkpoint finds nothing to copy and
/// syncs nothing.)
fn checkpoint_pass(conn: &Connection, handoff: &CheckpointHandoff) -> rusqlite::Result<bool> {
    let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        row.get::<_, i64>(1)
    })?;
    handoff
        .finish
        .store(frames >= FINISH_WAL_FRAMES, Ordering::Release);
    Ok(frames >= BUSY_WAL_FRAMES)
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
    /// `insert_rows[n - 2]` inserts `n` rows in one statement ([`insert_rows`]),
    /// prepared when a run of `n` appends first comes.
    insert_rows: Vec<Option<Statement<'c>>>,
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
            insert_rows: (2..=ROWS_PER_INSERT).map(|_| None).collect(),
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

/// The most rows one statement inserts ([`insert_rows`]); a longer run of appends
/// takes several. Not more: SQLite copies each bound text into memory of its own,
/// from a small per-connection pool (lookaside: 60 slots big enough for a message's
/// JSON, `SQLITE_DEFAULT_LOOKASIDE` in .cargo/config.toml) while it lasts, and from
/// `malloc` after; each prepared insert keeps the texts last bound to it. Under
/// callgrind, with SQLite's default pool of 30 such slots, 32 rows per statement cost
/// ~1,500 more instructions a publish than 16, and 16 ~500 more than 8 (round 8; not
/// measured again with the larger pool).
const ROWS_PER_INSERT: usize = 8;
/// The columns an insert binds per row.
const INSERT_COLUMNS: usize = 8;

impl<'c> Prepared<'c> {
    /// The statement that inserts `n` rows (2 ..= [`ROWS_PER_INSERT`]).
    fn insert_rows(
        &mut self,
        conn: &'c Connection,
        n: usize,
    ) -> rusqlite::Result<&mut Statement<'c>> {
        let Some(slot) = self.insert_rows.get_mut(n.wrapping_sub(2)) else {
            return Err(rusqlite::Error::InvalidQuery);
        };
        if slot.is_none() {
            let row = format!("({})", ["?"; INSERT_COLUMNS].join(", "));
            let sql = format!(
                "INSERT OR IGNORE INTO messages (id, topic, time, expires, published, sequence_id, event, json) VALUES {}",
                vec![row; n].join(", ")
            );
            *slot = Some(conn.prepare(&sql)?);
        }
        // Just filled if it was empty.
        slot.as_mut().ok_or(rusqlite::Error::InvalidQuery)
    }
}

/// Inserts a run of appends that came one after another in the batch, up to
/// [`ROWS_PER_INSERT`] rows per statement, and adds each append's outcome to `done`.
///
/// Why one statement for many rows: each execution of a statement opens a cursor on
/// the table and on each of its four indexes, positions, resets and closes them; for
/// one row at a time that was about a tenth of a durable publish's instructions
/// (callgrind, docs/BENCHMARKS.md, "SQLite under 40,000 instructions (round 8)").
///
/// Why `OR IGNORE`: a statement that writes several rows and may stop with an error
/// halfway needs a statement journal, a copy of every page it changes, so that SQLite
/// can undo it alone; that copying cost more than the rows saved. With `OR IGNORE` a
/// constraint never stops it (a row whose ID is stored already is skipped), and an
/// error that does (I/O, a full disk) ends the whole transaction instead. A skipped
/// row is found by the count of rows written, and then each row of the statement is
/// looked up ([`check_rows`]): each still gets its own outcome, as with one insert
/// per row. `Err`: the transaction cannot commit; the appends not yet in `done` come
/// back with it, for the caller to fail with the rest of the batch.
fn insert_run<'c>(
    conn: &'c Connection,
    stmts: &mut Prepared<'c>,
    run: &mut Vec<(NewRow, Reply<()>)>,
    done: &mut Vec<Done>,
) -> Result<(), Vec<Reply<()>>> {
    let mut rows = run.drain(..).peekable();
    while rows.peek().is_some() {
        let chunk: Vec<(NewRow, Reply<()>)> = rows.by_ref().take(ROWS_PER_INSERT).collect();
        let outcome = if chunk.len() > 1 {
            insert_rows(conn, stmts, &chunk)
        } else {
            Written::NotTried
        };
        match outcome {
            Written::All => {
                done.extend(
                    chunk
                        .into_iter()
                        .map(|(_, reply)| Done::Unit(reply, Ok(()))),
                );
            }
            Written::Some(written) => {
                let checked = check_rows(conn, stmts, &chunk, written);
                for ((_, reply), result) in chunk.into_iter().zip(checked) {
                    done.push(Done::Unit(reply, result));
                }
            }
            Written::NotTried => {
                for (row, reply) in chunk {
                    done.push(Done::Unit(reply, insert(conn, stmts, &row)));
                    if conn.is_autocommit() {
                        return Err(rows.map(|(_, reply)| reply).collect());
                    }
                }
            }
            Written::Failed(e) => {
                // Part of the chunk may be written: the batch must not commit.
                let disk_full = is_disk_full(&e);
                let text = format!("inserting messages: {e}");
                done.extend(chunk.into_iter().map(|(_, reply)| {
                    let error = if disk_full {
                        StoreError::Full(text.clone())
                    } else {
                        StoreError::Backend(text.clone())
                    };
                    Done::Unit(reply, Err(error))
                }));
                return Err(rows.map(|(_, reply)| reply).collect());
            }
        }
        if conn.is_autocommit() {
            return Err(rows.map(|(_, reply)| reply).collect());
        }
    }
    Ok(())
}

/// What one multi-row insert did.
enum Written {
    /// Every row, the statement's keys noted in the expiry ranges.
    All,
    /// Only this many: some rows were skipped.
    Some(usize),
    /// Nothing (the statement could not be prepared or bound): insert row by row.
    NotTried,
    /// The statement failed while it ran.
    Failed(rusqlite::Error),
}

/// Inserts `chunk`'s rows with one statement. Rows inserted without a key take the
/// keys after the table's largest, in order, so when all were written their keys are
/// the `n` up to `last_insert_rowid`.
fn insert_rows<'c>(
    conn: &'c Connection,
    stmts: &mut Prepared<'c>,
    chunk: &[(NewRow, Reply<()>)],
) -> Written {
    let bound = stmts.insert_rows(conn, chunk.len()).and_then(|statement| {
        for (i, (row, _)) in chunk.iter().enumerate() {
            bind_row(statement, i * INSERT_COLUMNS, row)?;
        }
        Ok(statement)
    });
    let written = match bound {
        Ok(statement) => statement.raw_execute(),
        Err(_) => return Written::NotTried,
    };
    match written {
        Ok(n) if n == chunk.len() => {
            let first = conn.last_insert_rowid() - (n as i64 - 1);
            for (i, (row, _)) in chunk.iter().enumerate() {
                if let Some(expires) = row.expires() {
                    stmts.ranges.note(expires, first + i as i64);
                }
            }
            Written::All
        }
        Ok(n) => Written::Some(n),
        Err(e) => Written::Failed(e),
    }
}

/// The outcome of each row of a multi-row insert that wrote only `written` of them:
/// a row is stored if its ID's row has one of the statement's keys (the `written`
/// up to `last_insert_rowid`) and holds its JSON; otherwise its ID was stored
/// already, which fails it as a single insert's unique constraint would.
fn check_rows(
    conn: &Connection,
    stmts: &mut Prepared<'_>,
    chunk: &[(NewRow, Reply<()>)],
    written: usize,
) -> Vec<Result<(), StoreError>> {
    let last = conn.last_insert_rowid();
    let keys = last - written as i64 + 1..=last;
    chunk
        .iter()
        .map(|(row, _)| {
            let stored: Option<(i64, bool)> = conn
                .prepare_cached("SELECT pk, json = ?2 FROM messages WHERE id = ?1")
                .and_then(|mut lookup| {
                    lookup
                        .query_row(rusqlite::params![row.id(), json_text(row)], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .optional()
                })
                .map_err(backend)?;
            match stored {
                Some((pk, true)) if keys.contains(&pk) => {
                    if let Some(expires) = row.expires() {
                        stmts.ranges.note(expires, pk);
                    }
                    Ok(())
                }
                _ => Err(StoreError::Backend(format!(
                    "message {} is not stored: its ID is stored already",
                    row.id()
                ))),
            }
        })
        .collect()
}

/// Binds `row`'s columns, in the inserts' column order, to the parameters after
/// `at` (`at + 1` to `at + INSERT_COLUMNS`).
fn bind_row(statement: &mut Statement<'_>, at: usize, row: &NewRow) -> rusqlite::Result<()> {
    statement.raw_bind_parameter(at + 1, row.id())?;
    statement.raw_bind_parameter(at + 2, row.topic())?;
    statement.raw_bind_parameter(at + 3, row.time())?;
    statement.raw_bind_parameter(at + 4, row.expires())?;
    statement.raw_bind_parameter(at + 5, row.published)?;
    statement.raw_bind_parameter(at + 6, row.stored_sequence_id())?;
    statement.raw_bind_parameter(at + 7, row.event())?;
    statement.raw_bind_parameter(at + 8, json_text(row))
}

/// The row's JSON as SQL text, bound as it is: it is the JSON the core encoded from
/// a `Message`'s strings, so UTF-8 (`NewRow::json`); checking that again cost 250–560
/// instructions a publish (callgrind), and SQLite does not check text either.
fn json_text(row: &NewRow) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(&row.json))
}

fn insert(conn: &Connection, stmts: &mut Prepared<'_>, row: &NewRow) -> Result<(), StoreError> {
    bind_row(&mut stmts.insert, 0, row)
        .and_then(|()| stmts.insert.raw_execute())
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
    /// `None`: no checkpointer asks the writer to finish its passes.
    pub(super) checkpoints: Option<&'a CheckpointHandoff>,
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
            self.finish_checkpoint();
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

    /// Copies into the database what the checkpointer's last pass could not, when it
    /// asked ([`CheckpointHandoff`]), so that the next commit starts the WAL over.
    /// Between two batches: the publishes that arrive meanwhile wait for it, as they
    /// wait for a commit, and it copies only what was committed during one pass.
    fn finish_checkpoint(&self) {
        if !self.checkpoints.is_some_and(CheckpointHandoff::take) {
            return;
        }
        // Passive: if the checkpointer has started its next pass, this one returns at
        // once without copying anything, and that pass asks again.
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::debug!(error = %e, "the writer's checkpoint failed");
        }
    }

    /// Runs `batch`, and whatever is queued meanwhile (up to `max_batch` operations),
    /// in one transaction and answers every operation after the commit. Returns the
    /// operations that continue in the next batch (chunked prunes).
    fn run_batch<'c>(
        &'c self,
        stmts: &mut Prepared<'c>,
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
        // Appends that came one after another, inserted together (`insert_run`) when
        // another kind of operation comes, or the batch ends.
        let mut run: Vec<(NewRow, Reply<()>)> = Vec::new();
        let mut ops = batch.into_iter();
        loop {
            let op = match ops.next() {
                Some(op) => op,
                // Operations sent while this batch ran join it before the commit:
                // publishers that share the writer's core (one core, or callgrind's one
                // thread at a time) queue theirs while it works, and would otherwise
                // each wait for, and pay for, a commit of their own. When none came,
                // this costs one empty poll of the queue, and no wait.
                None if done.len() + run.len() < max_batch => match queue.try_recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
                None => break,
            };
            let op = match op {
                Op::Append { row, reply } => {
                    run.push((row, reply));
                    continue;
                }
                other => other,
            };
            let applied = insert_run(conn, stmts, &mut run, &mut done)
                .map_err(|replies| (None, replies))
                .and_then(|()| apply_in_batch(conn, stmts, op).map_err(|d| (Some(d), Vec::new())));
            match applied {
                Ok(d) => done.push(d),
                Err((d, replies)) => {
                    self.abandoned(d, done, replies, ops.collect(), size);
                    return Vec::new();
                }
            }
        }
        if let Err(replies) = insert_run(conn, stmts, &mut run, &mut done) {
            self.abandoned(None, done, replies, Vec::new(), size);
            return Vec::new();
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

    /// Fails a batch whose transaction SQLite abandoned (an I/O error, a full disk)
    /// while it ran: nothing of it may commit. `failed_op` is the operation that
    /// found it out, `done` those that ran before, `appends` and `ops` those that had
    /// not run yet.
    fn abandoned(
        &self,
        failed_op: Option<Done>,
        done: Vec<Done>,
        appends: Vec<Reply<()>>,
        ops: Vec<Op>,
        size: usize,
    ) {
        let disk_full = failed_op.iter().chain(&done).any(Done::failed_disk_full);
        let failure = BatchFailure::new(
            disk_full,
            "the transaction was rolled back by SQLite".into(),
        );
        rollback(&self.conn);
        self.failed(&failure, size);
        failed_op
            .into_iter()
            .chain(done)
            .for_each(|d| d.fail(&failure));
        appends
            .into_iter()
            .for_each(|reply| drop(reply.send(Err(failure.error()))));
        ops.into_iter().for_each(|op| op.fail(&failure));
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
        NewRow::new(Arc::new(message), bytes::Bytes::from_static(b"{}"), false)
    }

    /// A row of topic `t` with `id`, expiring at `expires`, whose JSON is `json`.
    fn row_with(id: &str, expires: i64, json: &'static str) -> NewRow {
        let mut message = Message::new(crate::model::EventKind::Message, "t");
        message.id = id.into();
        message.time = 1;
        message.expires = Some(expires);
        NewRow::new(
            Arc::new(message),
            bytes::Bytes::from_static(json.as_bytes()),
            false,
        )
    }

    /// Runs `f` with a writer on a new store.
    fn with_writer(f: impl FnOnce(&Writer<'_>)) {
        let dir = tempfile::tempdir().unwrap();
        with_writer_on(&dir.path().join("m.db"), None, f);
    }

    /// Runs `f` with a writer on a new store at `path`, finishing the checkpoint
    /// passes `checkpoints` asks it to.
    fn with_writer_on(
        path: &Path,
        checkpoints: Option<&CheckpointHandoff>,
        f: impl FnOnce(&Writer<'_>),
    ) {
        let conn = open_writer(path, SyncMode::Normal).unwrap();
        super::super::schema::migrate(&conn).unwrap();
        let commits = AtomicU64::new(0);
        let health = WriterHealth::new();
        f(&Writer {
            conn,
            commits: &commits,
            observer: None,
            health: &health,
            answers: None,
            checkpoints,
        });
    }

    /// Runs `ops` as one batch; the answers of its appends, in order.
    fn run_appends<'c>(
        writer: &'c Writer<'_>,
        stmts: &mut Prepared<'c>,
        rows: Vec<Option<NewRow>>,
    ) -> Vec<Result<(), StoreError>> {
        let (_tx, mut queue) = mpsc::channel(1);
        let mut answers = Vec::new();
        let ops = rows
            .into_iter()
            .map(|row| match row {
                Some(row) => {
                    let (reply, answer) = oneshot::channel();
                    answers.push(answer);
                    Op::Append { row, reply }
                }
                // Another kind of operation between the appends.
                None => Op::Ping {
                    reply: oneshot::channel().0,
                },
            })
            .collect();
        assert!(writer.run_batch(stmts, ops, &mut queue, 1_000).is_empty());
        answers
            .into_iter()
            .map(|answer| answer.blocking_recv().unwrap())
            .collect()
    }

    fn stored(conn: &Connection, sql: &str) -> Vec<(i64, String)> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A checkpoint pass over a large WAL that could not copy all of it (here a reader's
    /// snapshot holds it back, as the commits made during a pass do) asks the writer
    /// to finish it. The writer's checkpoint between two batches copies the rest, so
    /// the commit after it starts the WAL over instead of making it longer.
    #[test]
    fn the_writer_finishes_a_pass_that_fell_behind_and_the_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let handoff = CheckpointHandoff::default();
        with_writer_on(&path, Some(&handoff), |writer| {
            let checkpointer = open_checkpointer(&path).unwrap();
            let reader = Connection::open(&path).unwrap();
            let mut stmts = Prepared::new(&writer.conn).unwrap();
            let mut batch = |prefix: &str| {
                let rows = (0..10).map(|i| Some(row(&format!("{prefix}{i:02}"))));
                let answers = run_appends(writer, &mut stmts, rows.collect());
                assert!(answers.iter().all(Result::is_ok), "{answers:?}");
            };

            batch("a");
            reader.execute_batch("BEGIN").unwrap();
            let seen: i64 = reader
                .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
                .unwrap();
            assert_eq!(seen, 10);
            batch("b");
            assert!(checkpoint_pass(&checkpointer, &handoff).unwrap(), "busy");
            assert!(
                handoff.finish.load(Ordering::Acquire),
                "the writer is asked"
            );
            reader.execute_batch("COMMIT").unwrap();
            // Frames in the WAL, from its size: a checkpoint here would finish the pass.
            let page_size: u32 = checkpointer
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap();
            let wal_bytes = std::fs::metadata(dir.path().join("m.db-wal"))
                .unwrap()
                .len();
            let behind = ((wal_bytes - 32) / (u64::from(page_size) + 24)) as i64;

            writer.finish_checkpoint();
            assert!(
                !handoff.finish.load(Ordering::Acquire),
                "done, not asked again"
            );
            batch("c");
            let after: i64 = checkpointer
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
                .unwrap();
            assert!(
                after < behind,
                "the WAL started over: {after} frames after the next commit, {behind} before"
            );
        });
    }

    /// 40 appends in one batch, a ping after the 20th: statements of 8, 8, 4, 8, 8 and 4
    /// rows. Each row gets the key after the one before, and the expiry ranges cover
    /// exactly the keys of their rows (the first 16 expire at second 100, the rest at
    /// 200): a key computed one off would leave a row outside its range, never pruned.
    #[test]
    fn runs_of_appends_share_statements_and_key_their_rows_in_order() {
        with_writer(|writer| {
            let mut stmts = Prepared::new(&writer.conn).unwrap();
            let ids: Vec<String> = (0..40).map(|i| format!("m{i:03}")).collect();
            let mut rows: Vec<Option<NewRow>> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| Some(row_with(id, if i < 16 { 100 } else { 200 }, "{}")))
                .collect();
            rows.insert(20, None);
            let answers = run_appends(writer, &mut stmts, rows);
            assert_eq!(answers.len(), 40);
            assert!(answers.iter().all(Result::is_ok), "{answers:?}");
            assert_eq!(writer.commits.load(Ordering::Relaxed), 1, "one commit");
            let keyed = stored(&writer.conn, "SELECT pk, id FROM messages ORDER BY pk");
            let expected: Vec<(i64, String)> = (1..).zip(ids.iter().cloned()).collect();
            assert_eq!(keyed, expected);
            let ranges = stored(
                &writer.conn,
                "SELECT expires, lo || '..' || hi FROM expiry_ranges ORDER BY expires",
            );
            assert_eq!(ranges, [(100, "1..16".into()), (200, "17..40".into())]);
        });
    }

    /// A multi-row insert skips a row whose ID is stored already (before the batch,
    /// even with the same JSON, or earlier in the same statement with other JSON) and
    /// fails that row alone, as a single-row insert would: the others are
    /// stored and acknowledged, with their keys in the expiry ranges.
    #[test]
    fn a_row_whose_id_is_stored_already_fails_alone_in_a_run() {
        with_writer(|writer| {
            let mut stmts = Prepared::new(&writer.conn).unwrap();
            let first = run_appends(writer, &mut stmts, vec![Some(row_with("dup", 100, "{}"))]);
            assert!(first[0].is_ok());
            let answers = run_appends(
                writer,
                &mut stmts,
                vec![
                    Some(row_with("a", 100, "{\"n\":1}")),
                    Some(row_with("dup", 100, "{\"n\":2}")),
                    Some(row_with("b", 100, "{\"n\":3}")),
                    Some(row_with("a", 100, "{\"n\":4}")),
                    Some(row_with("c", 100, "{\"n\":5}")),
                    // The same as the stored row, but not stored by this statement.
                    Some(row_with("dup", 100, "{}")),
                ],
            );
            let ok: Vec<bool> = answers.iter().map(Result::is_ok).collect();
            assert_eq!(ok, [true, false, true, false, true, false], "{answers:?}");
            let rows = stored(
                &writer.conn,
                "SELECT pk, id || ' ' || json FROM messages ORDER BY pk",
            );
            let expected: Vec<(i64, String)> = vec![
                (1, "dup {}".into()),
                (2, "a {\"n\":1}".into()),
                (3, "b {\"n\":3}".into()),
                (4, "c {\"n\":5}".into()),
            ];
            assert_eq!(rows, expected);
            let ranges = stored(
                &writer.conn,
                "SELECT expires, lo || '..' || hi FROM expiry_ranges",
            );
            assert_eq!(ranges, [(100, "1..4".into())]);
        });
    }

    #[test]
    fn operations_queued_during_a_batch_join_its_commit() {
        with_writer(|writer| {
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
            assert_eq!(writer.commits.load(Ordering::Relaxed), 1, "one commit");
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
        });
    }
}
