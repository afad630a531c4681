use std::sync::Arc;

use super::*;
use crate::store::contract::{ids, msg, pages_match_query, q, read_pages};
use crate::store::sqlite::{SqliteOptions, SqliteStore};

fn options() -> LogOptions {
    LogOptions::default()
}

fn open_with(dir: &Path, options: LogOptions) -> LogStore {
    LogStore::open(&dir.join("messages.log"), options, None, None).unwrap()
}

/// The segments of the log in `dir` that hold more than their header.
fn segments_with_records(dir: &Path) -> Vec<u64> {
    let has_records = |n: &u64| {
        let len = std::fs::metadata(segment_path(dir, *n)).unwrap().len();
        len > segment::MAGIC.len() as u64
    };
    list_segments(dir)
        .unwrap()
        .into_iter()
        .filter(has_records)
        .collect()
}

/// Everything a reader can see of a store, to compare two stores.
async fn view(store: &dyn Store, topics: &[&str], markers: &[String], at: i64) -> Vec<String> {
    let mut out = Vec::new();
    let mut sinces = vec![Since::All, Since::Latest, Since::None, Since::Time(0)];
    sinces.extend(markers.iter().map(|m| Since::AfterId(m.clone())));
    sinces.push(Since::Time(at));
    for scheduled in [false, true] {
        for since in &sinces {
            for set in [topics, &topics[..1], &topics[1..]] {
                let query = q(set, since.clone(), scheduled);
                let got = store.query(query.clone()).await.unwrap();
                out.push(format!("{query:?} -> {:?}", ids(&got)));
                pages_match_query(store, &query).await;
            }
        }
    }
    let feed = store.after_id("", 10_000).await.unwrap();
    out.push(format!("feed {:?}", ids(&feed)));
    if let Some(m) = markers.first() {
        let feed = store.after_id(m, 5).await.unwrap();
        out.push(format!("feed after {m} {:?}", ids(&feed)));
    }
    out.push(format!("{:?}", store.stats().await.unwrap()));
    out.push(format!("next due {:?}", store.next_due().await.unwrap()));
    out
}

/// The log store answers every read as the SQLite store does, through random
/// publishes (several topics, past and scheduled times, sequences), cancels,
/// hand-outs of due messages and expiry sweeps, and across restarts of the log
/// (with segments small enough that they roll, are removed and compacted).
#[tokio::test]
async fn answers_as_the_sqlite_store_does_through_random_operations() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite =
        SqliteStore::open(&dir.path().join("messages.db"), SqliteOptions::default()).unwrap();
    let small = LogOptions {
        segment_bytes: 2_000,
        ..options()
    };
    let mut log = open_with(dir.path(), small);
    let mut rng = fastrand::Rng::with_seed(7);
    let now = now_unix();
    // Every expiry lies ahead of the real clock, so a restart skips none of them
    // and only the sweeps (at a clock of their own) forget messages.
    let expiry_base = now + 100_000;
    let mut sweep_clock = expiry_base;
    let topics = ["a", "b", "c"];
    let mut markers = Vec::new();
    let mut own_sequences = Vec::new();
    let mut own_cancels = 0;
    for step in 0..400 {
        match rng.u32(0..100) {
            0..70 => {
                let topic = topics[rng.usize(0..topics.len())];
                let scheduled = rng.u32(0..5) == 0;
                let time = if scheduled {
                    now + 1_000 + rng.i64(0..50)
                } else {
                    now - rng.i64(0..50)
                };
                let mut m = msg(topic, time);
                m.expires = match rng.u32(0..10) {
                    0 => None,
                    // As in service: a message expires after the last sweep's clock.
                    _ => Some(sweep_clock + rng.i64(0..100)),
                };
                if rng.bool() {
                    m.sequence_id = Some(format!("s{}", rng.u32(0..4)));
                } else if step % 2 == 0 {
                    // As the core gives a publish without one: its own ID, named.
                    // (Chosen by the step, so that the random draws stay as they were.)
                    m.sequence_id = Some(m.id.clone());
                }
                if scheduled {
                    own_sequences.push((topic, m.id.clone()));
                }
                if rng.u32(0..10) == 0 {
                    markers.push(m.id.clone());
                }
                sqlite.append(m.clone()).await.unwrap();
                log.append(m).await.unwrap();
            }
            70..80 => {
                let mut topic = topics[rng.usize(0..topics.len())];
                let mut sequence = format!("s{}", rng.u32(0..4));
                // Every other time, a scheduled message's own ID.
                let own = step % 2 == 1 && !own_sequences.is_empty();
                if own {
                    (topic, sequence) = own_sequences[step % own_sequences.len()].clone();
                }
                let cancelled = sqlite.cancel_scheduled(topic, &sequence).await.unwrap();
                assert_eq!(
                    cancelled,
                    log.cancel_scheduled(topic, &sequence).await.unwrap(),
                    "step {step}: cancel {topic} {sequence}"
                );
                own_cancels += u64::from(own) * cancelled;
            }
            80..88 => {
                let at = now + 1_000 + rng.i64(0..50);
                let a = sqlite.take_due(at).await.unwrap();
                let b = log.take_due(at).await.unwrap();
                assert_eq!(a, b, "step {step}: take_due {at}");
            }
            88..95 => {
                sweep_clock += rng.i64(0..8);
                assert_eq!(
                    sqlite.prune_expired(sweep_clock).await.unwrap(),
                    log.prune_expired(sweep_clock).await.unwrap(),
                    "step {step}: prune at {sweep_clock}"
                );
            }
            _ => {
                // Dropped without close half the time: acknowledged writes are in the
                // file already.
                if rng.bool() {
                    log.close().await;
                }
                drop(log);
                log = open_with(dir.path(), small);
            }
        }
        if step % 80 == 79 {
            assert_eq!(
                view(&sqlite, &topics, &markers, now + 1_020).await,
                view(&log, &topics, &markers, now + 1_020).await,
                "step {step}"
            );
        }
    }
    assert!(own_cancels > 0, "no message was cancelled by its own ID");
    let segments = list_segments(&dir.path().join("messages.log")).unwrap();
    assert!(segments.len() > 1, "segments rolled: {segments:?}");
    assert!(segments[0] > 1, "old segments were removed: {segments:?}");
    log.close().await;
    let log = open_with(dir.path(), small);
    assert_eq!(
        view(&sqlite, &topics, &markers, now + 1_020).await,
        view(&log, &topics, &markers, now + 1_020).await,
        "after the last restart"
    );
}

/// Appends two messages to a new log in `dir`, then cuts the second record short as a
/// crash in the middle of its write would; returns the first.
async fn two_appends_the_second_torn(dir: &Path, now: i64) -> Message {
    let (first, second) = (msg("t", now - 2), msg("t", now - 1));
    let store = open_with(dir, options());
    store.append(first.clone()).await.unwrap();
    store.append(second).await.unwrap();
    store.close().await;
    let path = segment_path(&dir.join("messages.log"), 1);
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    first
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_what_came_before_stays() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix();
    let first = two_appends_the_second_torn(dir.path(), now).await;
    let store = open_with(dir.path(), options());
    let all = store.query(q(&["t"], Since::All, false)).await.unwrap();
    assert_eq!(all, vec![first.clone()]);
    // Appends go on where the intact records end.
    let third = msg("t", now);
    store.append(third.clone()).await.unwrap();
    store.close().await;
    let store = open_with(dir.path(), options());
    let all = store.query(q(&["t"], Since::All, false)).await.unwrap();
    assert_eq!(all, vec![first, third]);
}

#[tokio::test]
async fn a_file_that_is_not_a_segment_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("messages.log");
    std::fs::create_dir(&log).unwrap();
    std::fs::write(segment_path(&log, 1), b"SQLite format 3\0").unwrap();
    let err = LogStore::open(&log, options(), None, None).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(
        std::fs::read(segment_path(&log, 1)).unwrap(),
        b"SQLite format 3\0",
        "left as it was"
    );
}

#[tokio::test]
async fn messages_that_expired_while_stopped_are_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix();
    let mut old = msg("t", now - 100);
    old.expires = Some(now - 50);
    let kept = msg("t", now - 10);
    {
        let store = open_with(dir.path(), options());
        store.append(old).await.unwrap();
        store.append(kept.clone()).await.unwrap();
        store.close().await;
    }
    let store = open_with(dir.path(), options());
    let all = store.query(q(&["t"], Since::All, false)).await.unwrap();
    assert_eq!(all, vec![kept]);
    assert_eq!(store.stats().await.unwrap().messages, 1);
}

#[tokio::test]
async fn duplicate_ids_are_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), options());
    let now = now_unix();
    let first = msg("t", now);
    store.append(first.clone()).await.unwrap();
    let other = msg("t", now);
    let (dup, ok) = tokio::join!(store.append(first.clone()), store.append(other.clone()));
    assert!(matches!(dup, Err(StoreError::Backend(_))), "{dup:?}");
    ok.unwrap();
    // Two of one ID in the same write: the first stands.
    let twin = msg("t", now);
    let (a, b) = tokio::join!(store.append(twin.clone()), store.append(twin.clone()));
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    store.close().await;
    let store = open_with(dir.path(), options());
    let all = store.query(q(&["t"], Since::All, false)).await.unwrap();
    assert_eq!(ids(&all), ids([&first, &other, &twin]));
}

#[tokio::test]
async fn concurrent_appends_share_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_with(dir.path(), options()));
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
    assert!(
        store.commits() < 200,
        "200 appends took {} writes",
        store.commits()
    );
    let topics: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
    let all = store
        .query(Query {
            topics,
            since: Since::All,
            include_scheduled: false,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 200);
}

/// On a multi-threaded runtime a write's answers go through a task on the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_come_through_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_with(dir.path(), options()));
    let now = now_unix();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.append(msg("t", now)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.stats().await.unwrap().messages, 50);
}

#[tokio::test]
async fn paging_skips_a_damaged_message_and_refuses_foreign_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), options());
    let now = now_unix();
    let mut bad = msg("t", now - 5);
    bad.id = crate::model::MessageId::generate().into_string();
    // JSON that does not decode as a message, in an intact record.
    store
        .append_encoded(
            Arc::new(bad),
            bytes::Bytes::from_static(b"{not json"),
            false,
        )
        .await
        .unwrap();
    let good = msg("t", now - 1);
    store.append(good.clone()).await.unwrap();
    let query = q(&["t"], Since::All, false);
    assert_eq!(
        store.query(query.clone()).await.unwrap(),
        vec![good.clone()]
    );
    let (paged, _) = read_pages(&store, &query, 1).await;
    assert_eq!(paged, vec![good.clone()]);
    let latest = store.query(q(&["t"], Since::Latest, false)).await.unwrap();
    assert_eq!(latest, vec![good]);
    let foreign = Cursor::Position {
        after: (1, 0),
        upto: None,
    };
    assert!(
        store
            .history_page(&query, Some(&foreign), 10)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_old_segment_held_by_one_scheduled_message_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let small = LogOptions {
        segment_bytes: 1_500,
        ..options()
    };
    let store = open_with(dir.path(), small);
    let now = now_unix();
    let far = msg("t", now + 86_400);
    store.append(far.clone()).await.unwrap();
    for i in 0..40 {
        let mut m = msg("t", now - 100 + i);
        m.expires = Some(now + 100);
        store.append(m).await.unwrap();
    }
    let log = dir.path().join("messages.log");
    assert!(list_segments(&log).unwrap().len() > 3);
    assert_eq!(store.prune_expired(now + 200).await.unwrap(), 40);
    // Only the head is left, holding the scheduled message written again (and
    // perhaps the next segment, made ready ahead of the roll: no record in it).
    let segments = segments_with_records(&log);
    assert_eq!(segments.len(), 1, "{segments:?}");
    let pending = store.query(q(&["t"], Since::All, true)).await.unwrap();
    assert_eq!(pending, vec![far.clone()]);
    store.close().await;
    let store = open_with(dir.path(), small);
    assert_eq!(store.next_due().await.unwrap(), Some(far.time));
    let due = store.take_due(far.time).await.unwrap();
    assert_eq!(due, vec![far]);
}

#[tokio::test]
async fn a_sqlite_store_is_imported_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("messages.db");
    let now = now_unix();
    let published = msg("t", now - 10);
    let mut scheduled = msg("t", now + 600);
    scheduled.sequence_id = Some("s".into());
    // Its sequence is its own ID, which SQLite's column leaves out.
    let mut own = msg("t", now + 600);
    own.sequence_id = Some(own.id.clone());
    {
        let sqlite = SqliteStore::open(&db, SqliteOptions::default()).unwrap();
        sqlite.append(published.clone()).await.unwrap();
        sqlite.append(scheduled.clone()).await.unwrap();
        sqlite.append(own.clone()).await.unwrap();
        sqlite.close().await;
    }
    let log_dir = dir.path().join("messages.log");
    let store = LogStore::open(&log_dir, options(), Some(&db), None).unwrap();
    let all = store.query(q(&["t"], Since::All, true)).await.unwrap();
    assert_eq!(all, vec![published.clone(), scheduled.clone(), own.clone()]);
    assert_eq!(store.cancel_scheduled("t", "s").await.unwrap(), 1);
    assert_eq!(store.cancel_scheduled("t", &own.id).await.unwrap(), 1);
    store.close().await;
    assert!(!db.exists());
    assert!(dir.path().join("messages.db.imported").exists());
    // The next start reads the log, and imports nothing again.
    let store = LogStore::open(&log_dir, options(), Some(&db), None).unwrap();
    let all = store.query(q(&["t"], Since::All, true)).await.unwrap();
    assert_eq!(all, vec![published]);
}

/// Two heralds switching the same data directory at the same moment: one imports,
/// the other waits and then finds that log; no message is imported twice.
#[test]
fn two_starts_at_once_import_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("messages.db");
    let now = now_unix();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stored: Vec<Message> = runtime.block_on(async {
        let sqlite = SqliteStore::open(&db, SqliteOptions::default()).unwrap();
        let mut stored = Vec::new();
        for n in 0..2_000 {
            stored.push(sqlite.append(msg("t", now - 100 + n % 50)).await.unwrap());
        }
        sqlite.close().await;
        stored
    });
    let log_dir = dir.path().join("messages.log");
    let start = Arc::new(std::sync::Barrier::new(2));
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let (start, log_dir, db) = (Arc::clone(&start), log_dir.clone(), db.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                start.wait();
                runtime.block_on(async {
                    let store = LogStore::open(&log_dir, options(), Some(&db), None)?;
                    let all = store.query(q(&["t"], Since::All, true)).await;
                    store.close().await;
                    all
                })
            })
        })
        .collect();
    let mut want: Vec<String> = stored.iter().map(|m| m.id.clone()).collect();
    want.sort();
    for start in starts {
        let mut got: Vec<String> = match start.join().unwrap() {
            Ok(all) => all.into_iter().map(|m| m.id).collect(),
            // Only if the other start held the log for longer than the lock wait.
            Err(StoreError::Unavailable(e)) => {
                assert!(e.contains("in use"), "{e}");
                continue;
            }
            Err(e) => panic!("a start failed: {e}"),
        };
        got.sort();
        assert_eq!(got, want, "every message once");
    }
    assert!(!db.exists());
    assert!(dir.path().join("messages.db.imported").exists());
    assert!(!dir.path().join("messages.log.importing").exists());
}

#[tokio::test]
async fn close_finishes_and_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), options());
    let m = msg("t", now_unix());
    store.append(m.clone()).await.unwrap();
    store.close().await;
    assert!(matches!(
        store.append(msg("t", now_unix())).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.query(q(&["t"], Since::All, false)).await,
        Err(StoreError::Closed)
    ));
    assert!(!store.is_alive());
    let store = open_with(dir.path(), options());
    assert_eq!(
        store.query(q(&["t"], Since::All, false)).await.unwrap(),
        vec![m]
    );
}

#[tokio::test]
async fn every_sync_mode_keeps_what_it_acknowledged() {
    for sync in [SyncMode::Off, SyncMode::Normal, SyncMode::Full] {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            sync,
            segment_bytes: 600,
            ..options()
        };
        let store = open_with(dir.path(), options);
        let mut sent = Vec::new();
        for i in 0..10 {
            let m = msg("t", now_unix() - 20 + i);
            store.append(m.clone()).await.unwrap();
            sent.push(m);
        }
        drop(store);
        let store = open_with(dir.path(), options);
        let all = store.query(q(&["t"], Since::All, false)).await.unwrap();
        assert_eq!(all, sent, "{sync}");
    }
}

/// A roll makes the segment created ahead the head: it is there, header only, once
/// the head is more than half full; the roll's records go into it; and a restart
/// removes the one made ahead of the next roll, which holds no record.
#[tokio::test]
async fn a_roll_takes_the_segment_created_ahead_and_a_restart_removes_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("messages.log");
    let small = LogOptions {
        segment_bytes: 2_000,
        ..options()
    };
    let store = open_with(dir.path(), small);
    let now = now_unix();
    let mut sent = Vec::new();
    let len = |n: u64| std::fs::metadata(segment_path(&log, n)).map_or(0, |m| m.len());
    for head in [1, 2] {
        while len(head) <= 1_000 {
            let m = msg("t", now - 100 + sent.len() as i64);
            store.append(m.clone()).await.unwrap();
            sent.push(m);
        }
        let waiting = std::time::Instant::now();
        while len(head + 1) < segment::MAGIC.len() as u64 {
            assert!(
                waiting.elapsed().as_secs() < 10,
                "segment {} never made",
                head + 1
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            segments_with_records(&log).last(),
            Some(&head),
            "made ahead, unused"
        );
        if head == 1 {
            while len(2) <= segment::MAGIC.len() as u64 {
                let m = msg("t", now - 100 + sent.len() as i64);
                store.append(m.clone()).await.unwrap();
                sent.push(m);
            }
            assert_eq!(
                segments_with_records(&log),
                [1, 2],
                "the roll wrote into segment 2"
            );
        }
    }
    store.close().await;
    let store = open_with(dir.path(), small);
    assert_eq!(
        list_segments(&log).unwrap(),
        [1, 2],
        "segment 3 held no record"
    );
    let all = store.query(q(&["t"], Since::All, false)).await.unwrap();
    assert_eq!(all, sent);
    // Appends go on in segment 2, the log's tail.
    let last = msg("t", now);
    store.append(last.clone()).await.unwrap();
    sent.push(last);
    store.close().await;
    let store = open_with(dir.path(), small);
    assert_eq!(
        store.query(q(&["t"], Since::All, false)).await.unwrap(),
        sent
    );
}

/// The newest segment holding no record is removed at start, whether it is whole
/// (created ahead of a roll, then herald stopped) or its creation was cut short (a
/// file shorter than its header, or a header of zeros); a torn write in the
/// segment before it is then cut off as the log's tail. The only segment of a log is
/// kept if its header is whole, and replaced if it is not.
#[tokio::test]
async fn a_newest_segment_without_records_is_removed_at_start() {
    let now = now_unix();
    for left in [
        &segment::MAGIC[..],
        &segment::MAGIC[..3],
        &[0u8; 8][..],
        &[][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("messages.log");
        let first = two_appends_the_second_torn(dir.path(), now).await;
        std::fs::write(segment_path(&log, 2), left).unwrap();
        let store = open_with(dir.path(), options());
        assert_eq!(list_segments(&log).unwrap(), [1], "{left:?}");
        let all = store.query(q(&["t"], Since::All, false)).await.unwrap();
        assert_eq!(all, vec![first.clone()], "{left:?}");
        let third = msg("t", now);
        store.append(third.clone()).await.unwrap();
        store.close().await;
        let store = open_with(dir.path(), options());
        let all = store.query(q(&["t"], Since::All, false)).await.unwrap();
        assert_eq!(all, vec![first, third], "{left:?}");
        store.close().await;
    }
    for (left, kept) in [(&segment::MAGIC[..], true), (&segment::MAGIC[..5], false)] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("messages.log");
        std::fs::create_dir(&log).unwrap();
        std::fs::write(segment_path(&log, 7), left).unwrap();
        let store = open_with(dir.path(), options());
        let expected = if kept { 7 } else { 1 };
        assert_eq!(list_segments(&log).unwrap(), [expected], "{left:?}");
        let m = msg("t", now);
        store.append(m.clone()).await.unwrap();
        store.close().await;
        let store = open_with(dir.path(), options());
        assert_eq!(
            store.query(q(&["t"], Since::All, false)).await.unwrap(),
            vec![m]
        );
        store.close().await;
    }
}
