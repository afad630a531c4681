//! The writer thread: the only one that writes the log, with group commit.
//!
//! - Every write operation (`append`, `take_due`, `cancel_scheduled`,
//!   `prune_expired`, the readiness ping) is sent to this thread over a bounded
//!   channel with a oneshot reply sender, as in the SQLite store
//!   (`store::writer_thread`).
//! - The writer blocks for the first operation, yields once so that publishers about
//!   to send theirs can, drains the queue (up to `max_batch`), and writes each run of
//!   consecutive appends with ONE `pwrite` (and, with `store-sync = full`, one
//!   `fdatasync`). Only then does it enter them into the index and answer: a caller
//!   hears "ok" only once its record is in the file, and readers only see messages
//!   whose records are.
//! - The other operations are rare; each runs on its own, after the appends queued
//!   before it, against an index that holds them.
//! - A failed write does not stop the writer: the segment is cut back to where the
//!   write began (a record of a failed batch must not come back at the next start),
//!   every operation of the write gets [`StoreError::Full`] or
//!   [`StoreError::Unavailable`], and writes count as failing until one succeeds.
//! - An expiry sweep writes one `Expired` mark (its clock), not one per message:
//!   rebuilding the index skips every message that expired before the latest mark
//!   or before the start. Whole segments go once no current record is left in them, oldest first, so that
//!   a `Published` or `Removed` mark never outlives the record it applies to. An old
//!   segment held by a few long-lived messages (scheduled far ahead) is compacted:
//!   those records are written again at the head and the segment removed.
//! - The next segment is created, synced, on a thread of its own once the head is half
//!   full, so that a roll waits for no `fsync`; the start removes it while it holds
//!   no record (`LogStore::open`).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::mpsc;

use super::index::{Entry, Id, Index, Loc, Segment};
use super::segment::{Encoder, MAGIC, Put, RECORD_HEADER, segment_path};
use super::{read_message, write_index};
use crate::model::Message;
use crate::store::sqlite::SyncMode;
use crate::store::writer_thread::{Reply, WriterHealth};
use crate::store::{CommitObserver, NewRow, StoreError};

/// A write operation queued for the writer thread.
pub(super) enum Op {
    Append {
        record: NewRow,
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
    Prune {
        now: i64,
        reply: Reply<u64>,
    },
    Ping {
        reply: Reply<()>,
    },
}

/// An append's answer after its write.
pub(super) type Answer = (Reply<()>, Result<(), StoreError>);

fn send_answer((reply, result): Answer) {
    // Fails only if the caller stopped waiting.
    let _ = reply.send(result);
}

pub(super) fn answer_on_runtime() -> Option<tokio::sync::mpsc::UnboundedSender<Vec<Answer>>> {
    crate::store::writer_thread::answer_task(send_answer)
}

/// The segment being appended to.
pub(super) struct Head {
    pub(super) number: u64,
    pub(super) file: File,
    /// Where the next record goes: everything before it is intact records.
    pub(super) len: u64,
}

/// Opens (creating) segment `number` for appending, with its header written.
pub(super) fn create_segment(
    dir: &std::path::Path,
    number: u64,
    sync: SyncMode,
) -> std::io::Result<Head> {
    let path = segment_path(dir, number);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all_at(MAGIC, 0)?;
    if sync != SyncMode::Off {
        file.sync_all()?;
        // The new name must survive a power loss too.
        File::open(dir)?.sync_all()?;
    }
    Ok(Head {
        number,
        file,
        len: MAGIC.len() as u64,
    })
}

pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) index: Arc<RwLock<Index>>,
    pub(super) head: Head,
    pub(super) sync: SyncMode,
    pub(super) segment_bytes: u64,
    pub(super) commits: Arc<AtomicU64>,
    pub(super) observer: Option<Arc<dyn CommitObserver>>,
    pub(super) health: Arc<WriterHealth>,
    pub(super) answers: Option<tokio::sync::mpsc::UnboundedSender<Vec<Answer>>>,
    pub(super) encoder: Encoder,
    /// The log directory's lock (`LOCK`), released when the thread ends.
    pub(super) _lock: File,
    /// Syncs of full segments still running or not yet joined ([`Writer::roll`]).
    pub(super) full_segment_syncs: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
    /// The segment after the head, being made ready on a thread of its own once the
    /// head is half full ([`Writer::prepare_next_segment`]), so that a roll does not
    /// wait for its creation's syncs. Only a roll changes the head, and it takes this.
    pub(super) next_segment: Option<std::thread::JoinHandle<std::io::Result<Head>>>,
}

/// Full segments whose syncs may run at once ([`Writer::sync_full_segment`]).
const SEGMENT_SYNCS_RUNNING: usize = 2;

/// Logs a full segment's sync that failed.
fn log_segment_sync(joined: std::thread::Result<std::io::Result<()>>) {
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "syncing a full log segment failed"),
        Err(_) => tracing::warn!("syncing a full log segment panicked"),
    }
}

/// Why a write failed: nothing of it counts.
struct WriteFailure {
    disk_full: bool,
    text: String,
}

impl WriteFailure {
    fn from_io(context: &str, e: &std::io::Error) -> Self {
        WriteFailure {
            disk_full: matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            text: format!("{context}: {e}"),
        }
    }

    fn error(&self) -> StoreError {
        if self.disk_full {
            StoreError::Full(self.text.clone())
        } else {
            StoreError::Unavailable(self.text.clone())
        }
    }
}

impl Writer {
    /// Runs operations until every sender is gone and the queue is empty.
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Op>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        while let Some(op) = queue.blocking_recv() {
            batch.push(op);
            // As the SQLite writer: the first operation wakes this thread before the
            // publishers about to send theirs have run; one yield lets them, so they
            // share this write.
            std::thread::yield_now();
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            // A panic (a bug: I/O errors are results) must not end the thread; the
            // batch's callers see their replies dropped (`Closed`).
            let ops = std::mem::take(&mut batch);
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_batch(ops)));
            if ran.is_err() {
                self.failed(
                    WriteFailure {
                        disk_full: false,
                        text: "store batch panicked".into(),
                    },
                    0,
                );
            }
        }
        self.join_full_segment_syncs(true);
        // Left in place: the next start removes a newest segment that holds no record.
        if let Some(next) = self.next_segment.take() {
            let _ = next.join();
        }
        if self.sync != SyncMode::Off
            && let Err(e) = self.head.file.sync_data()
        {
            tracing::warn!(error = %e, "syncing the log at close");
        }
        tracing::debug!("log store writer stopped");
    }

    /// Runs the batch in order: each run of appends as one write, the rest one by one.
    fn run_batch(&mut self, ops: Vec<Op>) {
        let mut appends = Vec::new();
        for op in ops {
            match op {
                Op::Append { record, reply } => appends.push((record, reply)),
                other => {
                    if !appends.is_empty() {
                        self.append(std::mem::take(&mut appends));
                    }
                    self.run_other(other);
                }
            }
        }
        if !appends.is_empty() {
            self.append(appends);
        }
    }

    fn run_other(&mut self, op: Op) {
        match op {
            Op::Append { .. } => {}
            Op::TakeDue { now, reply } => {
                let _ = reply.send(self.take_due(now));
            }
            Op::Cancel {
                topic,
                sequence_id,
                reply,
            } => {
                let _ = reply.send(self.cancel(&topic, &sequence_id));
            }
            Op::Prune { now, reply } => {
                let _ = reply.send(self.prune(now));
            }
            Op::Ping { reply } => {
                let result = if self.health.failing.load(Ordering::Relaxed) {
                    self.probe()
                } else {
                    Ok(())
                };
                let _ = reply.send(result);
            }
        }
    }

    /// While writes are failing: whether the disk takes a page at the head again. A
    /// short write could still land in the file's last, already allocated page on a
    /// full disk, so the probe writes a page-sized record, then cuts it off again.
    fn probe(&mut self) -> Result<(), StoreError> {
        self.encoder.buf.clear();
        self.encoder.noop(PROBE_BYTES);
        let base = self
            .write_encoded("writing the readiness probe", 1)
            .map_err(|f| f.error())?;
        self.head
            .file
            .set_len(base)
            .map_err(|e| StoreError::Unavailable(format!("cutting the readiness probe: {e}")))?;
        self.head.len = base;
        if let Some(segment) = write_index(&self.index).segments.get_mut(&self.head.number) {
            segment.size = base;
        }
        Ok(())
    }

    /// Writes the appends' records with one write, then indexes and answers them.
    fn append(&mut self, appends: Vec<(NewRow, Reply<()>)>) {
        self.encoder.buf.clear();
        // (key, record, reply, offset of its JSON in the buffer, length of its record)
        let mut written = Vec::with_capacity(appends.len());
        let mut answers: Vec<Answer> = Vec::with_capacity(appends.len());
        {
            let index = read_index(&self.index);
            // A second message with an ID of this write is refused too. IDs come from
            // a monotonic generator, so this is for bugs: the check sorts the keys and
            // keeps a set only if it found a repeat.
            let mut in_write = repeats_in(&appends).then(std::collections::HashSet::new);
            for (record, reply) in appends {
                let Some(id) = Id::of(record.id()) else {
                    let error = format!(
                        "message ID {:?} is longer than the log store keeps ({} bytes)",
                        record.id(),
                        Id::MAX_LEN
                    );
                    answers.push((reply, Err(StoreError::Backend(error))));
                    continue;
                };
                let repeat = in_write.as_mut().is_some_and(|seen| !seen.insert(id));
                if repeat || index.contains(id) {
                    let error = format!("a message with ID {} is already stored", record.id());
                    answers.push((reply, Err(StoreError::Backend(error))));
                    continue;
                }
                let start = self.encoder.buf.len();
                match self.encoder.put(&Put {
                    published: record.published,
                    time: record.time(),
                    expires: record.expires(),
                    id: record.id(),
                    topic: record.topic(),
                    sequence_id: record.stored_sequence_id(),
                    json: &record.json,
                }) {
                    Ok(json_at) => {
                        let record_len = self.encoder.buf.len() - start;
                        written.push((id, record, reply, json_at, record_len));
                    }
                    Err(e) => answers.push((reply, Err(StoreError::Backend(e.to_string())))),
                }
            }
        }
        if !written.is_empty() {
            match self.write_encoded("appending to the log", written.len()) {
                Ok(base) => {
                    let segment = self.head.number;
                    let mut index = write_index(&self.index);
                    for (id, record, reply, json_at, record_len) in written {
                        let loc = Loc {
                            segment,
                            offset: base + json_at as u64,
                            len: record.json.len() as u32,
                            record_len: record_len as u32,
                        };
                        let topic = index.shared_topic(record.topic());
                        // Kept only while the message is scheduled.
                        let sequence_id = match record.published {
                            true => None,
                            false => record.stored_sequence_id().map(Box::from),
                        };
                        let entry = Entry::new(
                            topic,
                            record.time(),
                            record.expires(),
                            record.published,
                            loc,
                        );
                        index.insert(id, entry, sequence_id);
                        answers.push((reply, Ok(())));
                    }
                }
                Err(failure) => {
                    for (_, _, reply, _, _) in written {
                        answers.push((reply, Err(failure.error())));
                    }
                }
            }
        }
        self.answer(answers);
    }

    /// Writes the encoder's buffer at the head (starting a new segment first if it
    /// would not fit), synced per the sync mode; returns where it starts. On failure
    /// the head is cut back, so no part of it is read at the next start.
    fn write_encoded(&mut self, context: &str, operations: usize) -> Result<u64, WriteFailure> {
        let started = Instant::now();
        let len = self.encoder.buf.len() as u64;
        if self.head.len + len > self.segment_bytes && self.head.len > MAGIC.len() as u64 {
            self.roll().map_err(|e| {
                self.failed(
                    WriteFailure::from_io("starting a log segment", &e),
                    operations,
                )
            })?;
        }
        let base = self.head.len;
        let written = self
            .head
            .file
            .write_all_at(&self.encoder.buf, base)
            .and_then(|()| {
                if self.sync == SyncMode::Full {
                    self.head.file.sync_data()
                } else {
                    Ok(())
                }
            });
        if let Err(e) = written {
            // Best effort: if even this fails, the next write overwrites the bytes,
            // and a start before that finds a damaged tail and cuts it.
            let _ = self.head.file.set_len(base);
            return Err(self.failed(WriteFailure::from_io(context, &e), operations));
        }
        self.head.len = base + len;
        if self.head.len > self.segment_bytes / 2 {
            self.prepare_next_segment();
        }
        if let Some(segment) = write_index(&self.index).segments.get_mut(&self.head.number) {
            segment.size = self.head.len;
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        if let Some(observer) = &self.observer {
            observer.committed(operations, started.elapsed());
        }
        if self.health.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("store writes succeed again");
        }
        Ok(base)
    }

    /// Starts the next segment. The one before is synced (unless `store-sync =
    /// off`): with `normal`, records reach the disk at the latest when their segment
    /// is full, as SQLite's WAL reaches it at checkpoints. That sync writes the whole
    /// segment out (64 MiB by default: 25-50 ms here under a steady load, during
    /// which every publish waited, docs/BENCHMARKS.md, round 11), so with `normal` it
    /// runs on a thread of its own while the writer goes on at the new head; with
    /// `full` every write was synced already and it runs here. The new head is
    /// usually made already ([`Writer::prepare_next_segment`]).
    fn roll(&mut self) -> std::io::Result<()> {
        match self.sync {
            SyncMode::Full => self.head.file.sync_data()?,
            SyncMode::Normal => self.sync_full_segment(self.head.file.try_clone()?),
            SyncMode::Off => {}
        }
        let head = self.take_next_segment()?;
        let reader = Arc::new(head.file.try_clone()?);
        write_index(&self.index).segments.insert(
            head.number,
            Segment {
                file: reader,
                live: 0,
                live_bytes: 0,
                size: head.len,
            },
        );
        self.head = head;
        Ok(())
    }

    /// Starts creating the segment after the head on a thread of its own, unless that
    /// has started already. Creating one syncs its header and its directory entry
    /// (unless `store-sync = off`), so that a power loss cannot leave a head segment
    /// without its header; on the writer, those syncs waited behind the writeback of
    /// the segment just filled and held every publish of that commit: 3-5 commits over
    /// 10 ms in 10 s of saturation, none since (docs/BENCHMARKS.md, round 12).
    fn prepare_next_segment(&mut self) {
        if self.next_segment.is_some() {
            return;
        }
        let (dir, number, sync) = (self.dir.clone(), self.head.number + 1, self.sync);
        match std::thread::Builder::new()
            .name("herald-log-next".into())
            .spawn(move || create_segment(&dir, number, sync))
        {
            Ok(creating) => self.next_segment = Some(creating),
            // The roll creates it then.
            Err(e) => tracing::debug!(error = %e, "no thread to create the next log segment"),
        }
    }

    /// The segment after the head, ready for appending: the one created ahead if
    /// that worked, otherwise created here.
    fn take_next_segment(&mut self) -> std::io::Result<Head> {
        let number = self.head.number + 1;
        if let Some(next) = self.next_segment.take() {
            match next.join() {
                Ok(Ok(head)) => return Ok(head),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "creating the next log segment ahead failed: trying again");
                }
                Err(_) => {
                    tracing::warn!("creating the next log segment ahead panicked: trying again")
                }
            }
            // Whatever it left holds no record.
            let _ = std::fs::remove_file(segment_path(&self.dir, number));
        }
        create_segment(&self.dir, number, self.sync)
    }

    /// Syncs `file`, a full segment, on a thread of its own (here if none can start).
    /// At most [`SEGMENT_SYNCS_RUNNING`] run at once: a disk that cannot keep up holds
    /// the writer back here, as it did before the syncs had threads of their own,
    /// rather than piling up threads.
    fn sync_full_segment(&mut self, file: File) {
        self.join_full_segment_syncs(false);
        while self.full_segment_syncs.len() >= SEGMENT_SYNCS_RUNNING {
            let oldest = self.full_segment_syncs.remove(0);
            log_segment_sync(oldest.join());
        }
        let file = Arc::new(file);
        let syncing = Arc::clone(&file);
        match std::thread::Builder::new()
            .name("herald-log-sync".into())
            .spawn(move || syncing.sync_data())
        {
            Ok(handle) => self.full_segment_syncs.push(handle),
            Err(e) => {
                tracing::debug!(error = %e, "no thread for a segment's sync: syncing it here");
                if let Err(e) = file.sync_data() {
                    tracing::warn!(error = %e, "syncing a full log segment failed");
                }
            }
        }
    }

    /// Joins the full segments' syncs that ended (all of them, waiting, if `all`),
    /// logging any that failed. A failed sync loses nothing that was acknowledged
    /// (with `normal` a publish is acknowledged once its record is in the file), but
    /// the records may not survive a power loss: that is worth a warning.
    fn join_full_segment_syncs(&mut self, all: bool) {
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.full_segment_syncs)
            .into_iter()
            .partition(|sync| all || sync.is_finished());
        self.full_segment_syncs = running;
        for sync in done {
            log_segment_sync(sync.join());
        }
    }

    /// Marks the due scheduled messages published, with one write, and returns them.
    fn take_due(&mut self, now: i64) -> Result<Vec<Message>, StoreError> {
        let due = read_index(&self.index).due_until(now);
        if due.is_empty() {
            return Ok(Vec::new());
        }
        self.write_marks(&due, false)?;
        // Looked up under one hold of the lock, read from the files after it.
        let hits: Vec<_> = {
            let index = read_index(&self.index);
            due.iter().filter_map(|&id| index.get(id)).collect()
        };
        let mut messages = Vec::with_capacity(hits.len());
        for hit in &hits {
            // Undecodable ones are marked too, so they are not retried forever.
            if let Some(message) = read_message(hit)? {
                messages.push(message);
            }
        }
        let mut index = write_index(&self.index);
        for &id in &due {
            index.publish(id);
        }
        Ok(messages)
    }

    /// Removes the scheduled messages of `topic` in `sequence_id`, with one write.
    fn cancel(&mut self, topic: &str, sequence_id: &str) -> Result<u64, StoreError> {
        let cancelled = read_index(&self.index).scheduled_in_sequence(topic, sequence_id);
        if cancelled.is_empty() {
            return Ok(0);
        }
        self.write_marks(&cancelled, true)?;
        let mut index = write_index(&self.index);
        Ok(cancelled
            .iter()
            .filter(|&&id| index.remove(id).is_some())
            .count() as u64)
    }

    fn write_marks(&mut self, ids: &[Id], removed: bool) -> Result<(), StoreError> {
        self.encoder.buf.clear();
        for id in ids {
            self.encoder
                .mark(&id.to_string(), removed)
                .map_err(|e| StoreError::Backend(e.to_string()))?;
        }
        self.write_encoded("writing to the log", ids.len())
            .map(drop)
            .map_err(|f| f.error())
    }

    /// Forgets the messages expired before `now`, once an `Expired` mark saying so
    /// is written (so that they stay gone after a restart even if the clock went
    /// back), then removes the segments left without a current record (see the
    /// module docs).
    fn prune(&mut self, now: i64) -> Result<u64, StoreError> {
        let expired = read_index(&self.index).expired(now);
        if !expired.is_empty() {
            self.encoder.buf.clear();
            self.encoder.expired(now);
            self.write_encoded("writing to the log", 1)
                .map_err(|f| f.error())?;
        }
        // In chunks, so readers are never held for long by a large sweep.
        for chunk in expired.chunks(PRUNE_CHUNK) {
            let mut index = write_index(&self.index);
            for &id in chunk {
                index.remove(id);
            }
        }
        write_index(&self.index).drop_expiry_lists(now);
        self.drop_segments()?;
        Ok(expired.len() as u64)
    }

    fn drop_segments(&mut self) -> Result<(), StoreError> {
        loop {
            let oldest = read_index(&self.index)
                .segments
                .first_key_value()
                .map(|(&number, s)| (number, s.live, s.live_bytes, s.size));
            let Some((number, live, live_bytes, size)) = oldest else {
                return Ok(());
            };
            if number == self.head.number {
                return Ok(());
            }
            if live == 0 {
                let path = segment_path(&self.dir, number);
                // Kept if it cannot be removed: a later segment's marks may apply to
                // its records, so no later one may go before it.
                std::fs::remove_file(&path).map_err(|e| {
                    StoreError::Backend(format!("removing {}: {e}", path.display()))
                })?;
                write_index(&self.index).segments.remove(&number);
                tracing::debug!(segment = number, "log segment removed");
                continue;
            }
            if live_bytes.saturating_mul(COMPACT_WHEN_LIVE_BELOW) > size {
                return Ok(());
            }
            self.compact(number)?;
        }
    }

    /// Writes the current records of `segment` again at the head, so that it can go.
    fn compact(&mut self, segment: u64) -> Result<(), StoreError> {
        let live = read_index(&self.index).live_in(segment);
        self.encoder.buf.clear();
        let mut moved = Vec::with_capacity(live.len());
        for (id, hit, published) in live {
            let record = read_record(&hit)?;
            let Some(super::segment::Record::Put(put)) = super::segment::decode(&record) else {
                return Err(StoreError::Corrupt(format!(
                    "the record of message {id} in segment {segment} is not a message"
                )));
            };
            let start = self.encoder.buf.len();
            let json_at = self
                .encoder
                .put(&Put { published, ..put })
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            moved.push((id, json_at, put.json.len(), self.encoder.buf.len() - start));
        }
        let count = moved.len();
        let base = self
            .write_encoded("compacting the log", count)
            .map_err(|f| f.error())?;
        let head = self.head.number;
        let mut index = write_index(&self.index);
        for (id, json_at, len, record_len) in moved {
            index.relocate(
                id,
                Loc {
                    segment: head,
                    offset: base + json_at as u64,
                    len: len as u32,
                    record_len: record_len as u32,
                },
            );
        }
        tracing::debug!(segment, moved = count, "log segment compacted");
        Ok(())
    }

    /// Sends answers, through the runtime when there is more than one
    /// (`crate::store::writer_thread::answer_task`).
    fn answer(&self, answers: Vec<Answer>) {
        match &self.answers {
            Some(runtime) if answers.len() > 1 => {
                if let Err(tokio::sync::mpsc::error::SendError(answers)) = runtime.send(answers) {
                    answers.into_iter().for_each(send_answer);
                }
            }
            _ => answers.into_iter().for_each(send_answer),
        }
    }

    /// Marks writes as failing; logged when they start failing, not per write.
    fn failed(&self, failure: WriteFailure, size: usize) -> WriteFailure {
        let error = &failure.text;
        if self.health.failing.swap(true, Ordering::Relaxed) {
            tracing::debug!(%error, size, "store write failed");
        } else if failure.disk_full {
            tracing::error!(%error, size, "store disk full: publishes are refused (507) until space is freed");
        } else {
            tracing::error!(%error, size, "store writes failing: publishes are refused (503) until a write succeeds");
        }
        failure
    }
}

/// The readiness probe's record: a page.
const PROBE_BYTES: usize = 4096;
/// Expired messages forgotten per hold of the index's lock.
const PRUNE_CHUNK: usize = 10_000;
/// An old segment is compacted once less than a quarter of it is current records.
const COMPACT_WHEN_LIVE_BELOW: u64 = 4;

/// Whether two appends share an ID.
fn repeats_in(appends: &[(NewRow, Reply<()>)]) -> bool {
    if appends.len() < 2 {
        return false;
    }
    let mut ids: Vec<Option<Id>> = appends.iter().map(|(r, _)| Id::of(r.id())).collect();
    ids.sort_unstable();
    ids.windows(2).any(|w| w[0].is_some() && w[0] == w[1])
}

/// The whole record (body) of the message at `hit`.
fn read_record(hit: &super::index::Hit) -> Result<Vec<u8>, StoreError> {
    let loc = hit.loc;
    let body_len = loc.record_len as usize - RECORD_HEADER;
    let start = loc.offset + u64::from(loc.len) - body_len as u64;
    let mut body = vec![0; body_len];
    hit.file
        .read_exact_at(&mut body, start)
        .map_err(|e| StoreError::Backend(format!("reading the log: {e}")))?;
    Ok(body)
}

pub(super) fn read_index(index: &RwLock<Index>) -> std::sync::RwLockReadGuard<'_, Index> {
    index.read().unwrap_or_else(|p| p.into_inner())
}
