//! The in-memory index over the log: every stored message's filter fields and where
//! its JSON lies, in the orders the reads need.
//!
//! The log itself is only appended to; the index is what makes it a store. It is
//! rebuilt from the segments at start (`LogStore::open`) and changed by the writer
//! thread after each write succeeded, so readers never see a message whose record is
//! not in the file. Per message it holds one entry in each of two ordered maps (ID
//! order for `since=<id>` across topics and the webhook feed, `(time, id)` per topic
//! for history) and its ID in the list of its expiry second (the sweep), plus the
//! pending scheduled messages in `(time, id)` order: about 240 bytes per message in
//! all (measured), whatever the message's size (docs/BENCHMARKS.md, "The log store").

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::ops::Bound;
use std::sync::Arc;

use crate::store::{Query, Since};

/// A message ID as the index keeps it: its bytes, big-endian in a `u128`, padded with
/// zeros. Ordered as the ID strings are (herald's IDs are 12 ASCII characters, and no
/// ID holds a NUL), but compared without following a pointer: the sets hold hundreds
/// of thousands of keys, and a string key cost a cache miss per comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Id(u128);

impl Id {
    /// Sorts before every ID.
    pub(super) const MIN: Id = Id(0);
    /// Longest ID the log stores.
    pub(super) const MAX_LEN: usize = 16;

    /// The key of a stored ID; `None` for one longer than [`Id::MAX_LEN`] or with a NUL.
    pub(super) fn of(id: &str) -> Option<Id> {
        (id.len() <= Self::MAX_LEN && !id.as_bytes().contains(&0)).then(|| Self::bound(id))
    }

    /// A key that compares with stored IDs as `marker` does: exact for an ID, and for
    /// a longer string its first 16 bytes (no stored ID lies between the two).
    pub(super) fn bound(marker: &str) -> Id {
        let mut bytes = [0u8; 16];
        let n = marker.len().min(16);
        bytes[..n].copy_from_slice(&marker.as_bytes()[..n]);
        Id(u128::from_be_bytes(bytes))
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0.to_be_bytes();
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        f.write_str(&String::from_utf8_lossy(&bytes[..len]))
    }
}

/// Where a message's JSON is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loc {
    pub(super) segment: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
    /// The whole record's length, for the segment's live-bytes count.
    pub(super) record_len: u32,
}

/// What the index keeps of a message.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) topic: Arc<str>,
    pub(super) time: i64,
    /// [`NEVER`] for a message without expiry (the entry stays small: the index
    /// holds one per stored message).
    pub(super) expires: i64,
    pub(super) published: bool,
    pub(super) loc: Loc,
}

/// [`Entry::expires`] of a message that does not expire.
pub(super) const NEVER: i64 = i64::MAX;

impl Entry {
    pub(super) fn new(
        topic: Arc<str>,
        time: i64,
        expires: Option<i64>,
        published: bool,
        loc: Loc,
    ) -> Entry {
        Entry {
            topic,
            time,
            expires: expires.unwrap_or(NEVER),
            published,
            loc,
        }
    }
}

/// A segment as the index sees it.
pub(super) struct Segment {
    /// Opened for reading; readers keep their own clone, so a segment removed while
    /// they read stays readable to them.
    pub(super) file: Arc<File>,
    /// Messages whose current record is in this segment.
    pub(super) live: u64,
    pub(super) live_bytes: u64,
    /// The segment's length in the file.
    pub(super) size: u64,
}

/// A message a read selected: enough to order it and to read its JSON.
pub(super) struct Hit {
    pub(super) time: i64,
    pub(super) id: Id,
    pub(super) file: Arc<File>,
    pub(super) loc: Loc,
}

#[derive(Default)]
pub(super) struct Index {
    by_id: BTreeMap<Id, Entry>,
    by_topic: HashMap<Arc<str>, BTreeSet<(i64, Id)>>,
    /// Scheduled messages not yet handed out, by `(time, id)`.
    due: BTreeSet<(i64, Id)>,
    /// The sequence IDs of scheduled messages that have one: cancelling looks them up.
    sequences: HashMap<Id, Box<str>>,
    /// Per expiry second, the messages that expire then, in the order they came. Not
    /// updated when a message goes otherwise (a vector per second costs ~20 bytes a
    /// message, a set entry ~60): the sweep skips IDs no longer stored with that
    /// expiry.
    expiry: BTreeMap<i64, Vec<Id>>,
    pub(super) segments: BTreeMap<u64, Segment>,
}

impl Index {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn scheduled(&self) -> usize {
        self.due.len()
    }

    pub(super) fn contains(&self, id: Id) -> bool {
        self.by_id.contains_key(&id)
    }

    pub(super) fn newest_id(&self) -> Option<String> {
        self.by_id.keys().next_back().map(Id::to_string)
    }

    pub(super) fn next_due(&self) -> Option<i64> {
        self.due.first().map(|(time, _)| *time)
    }

    /// Adds a message (replacing one with the same ID: a record rewritten by
    /// compaction is read again at start).
    pub(super) fn insert(&mut self, id: Id, entry: Entry, sequence_id: Option<Box<str>>) {
        let (time, published, expires, loc) =
            (entry.time, entry.published, entry.expires, entry.loc);
        // `entry.topic` is the index's copy ([`Index::shared_topic`]) once the topic
        // has messages.
        let topic = entry.topic.clone();
        if let Some(old) = self.by_id.insert(id, entry) {
            self.unlink(id, &old);
        }
        if let Some(segment) = self.segments.get_mut(&loc.segment) {
            segment.live += 1;
            segment.live_bytes += u64::from(loc.record_len);
        }
        let key = (time, id);
        if !published {
            self.due.insert(key);
            if let Some(sequence_id) = sequence_id {
                self.sequences.insert(id, sequence_id);
            }
        }
        if expires != NEVER {
            self.expiry.entry(expires).or_default().push(id);
        }
        match self.by_topic.get_mut(&*topic) {
            Some(set) => {
                set.insert(key);
            }
            None => {
                self.by_topic.entry(topic).or_default().insert(key);
            }
        }
    }

    /// The index's copy of `topic`'s name, so that its messages share one.
    pub(super) fn shared_topic(&self, topic: &str) -> Arc<str> {
        match self.by_topic.get_key_value(topic) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(topic),
        }
    }

    /// Forgets a message; returns its entry.
    pub(super) fn remove(&mut self, id: Id) -> Option<Entry> {
        let entry = self.by_id.remove(&id)?;
        self.unlink(id, &entry);
        Some(entry)
    }

    /// Takes a message, no longer in `by_id`, out of the other sets and its
    /// segment's counts.
    fn unlink(&mut self, id: Id, entry: &Entry) {
        if let Some(segment) = self.segments.get_mut(&entry.loc.segment) {
            segment.live -= 1;
            segment.live_bytes -= u64::from(entry.loc.record_len);
        }
        let key = (entry.time, id);
        if let Some(set) = self.by_topic.get_mut(&*entry.topic) {
            set.remove(&key);
            if set.is_empty() {
                self.by_topic.remove(&*entry.topic);
            }
        }
        if !entry.published {
            self.due.remove(&key);
            self.sequences.remove(&id);
        }
    }

    /// Marks a scheduled message as handed out (published). `false`: not stored or
    /// already published.
    pub(super) fn publish(&mut self, id: Id) -> bool {
        let Some(entry) = self.by_id.get_mut(&id) else {
            return false;
        };
        if entry.published {
            return false;
        }
        entry.published = true;
        let key = (entry.time, id);
        self.due.remove(&key);
        self.sequences.remove(&id);
        true
    }

    /// Moves a message's current record (compaction rewrote it elsewhere).
    pub(super) fn relocate(&mut self, id: Id, loc: Loc) {
        let Some(entry) = self.by_id.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut entry.loc, loc);
        if let Some(segment) = self.segments.get_mut(&old.segment) {
            segment.live -= 1;
            segment.live_bytes -= u64::from(old.record_len);
        }
        if let Some(segment) = self.segments.get_mut(&loc.segment) {
            segment.live += 1;
            segment.live_bytes += u64::from(loc.record_len);
        }
    }

    /// The scheduled messages due at or before `now`, in `(time, id)` order.
    pub(super) fn due_until(&self, now: i64) -> Vec<Id> {
        self.due
            .range(..(now.saturating_add(1), Id::MIN))
            .map(|&(_, id)| id)
            .collect()
    }

    /// The scheduled messages of `topic` in sequence `sequence_id` (a message without
    /// one is its own sequence: its ID).
    pub(super) fn scheduled_in_sequence(&self, topic: &str, sequence_id: &str) -> Vec<Id> {
        self.due
            .iter()
            .filter(|(_, id)| {
                self.by_id.get(id).is_some_and(|e| {
                    &*e.topic == topic
                        && match self.sequences.get(id).map(|s| &**s) {
                            Some(sequence) => sequence == sequence_id,
                            None => Id::of(sequence_id) == Some(*id),
                        }
                })
            })
            .map(|&(_, id)| id)
            .collect()
    }

    /// The messages whose `expires` is before `now`.
    pub(super) fn expired(&self, now: i64) -> Vec<Id> {
        let mut ids: Vec<Id> = self
            .expiry
            .range(..now)
            .flat_map(|(&expires, ids)| {
                ids.iter()
                    .copied()
                    .filter(move |id| self.by_id.get(id).is_some_and(|e| e.expires == expires))
            })
            .collect();
        // A record read twice at start (compaction wrote it again) is listed twice.
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Forgets the messages whose `expires` is before `now`, and those seconds' lists.
    pub(super) fn forget_expired(&mut self, now: i64) {
        for id in self.expired(now) {
            self.remove(id);
        }
        self.drop_expiry_lists(now);
    }

    /// Drops the lists of the seconds before `now` (once their messages are gone).
    pub(super) fn drop_expiry_lists(&mut self, now: i64) {
        self.expiry = self.expiry.split_off(&now);
    }

    /// The messages whose current record is in `segment`.
    pub(super) fn live_in(&self, segment: u64) -> Vec<(Id, Hit, bool)> {
        self.by_id
            .iter()
            .filter(|(_, e)| e.loc.segment == segment)
            .filter_map(|(&id, e)| Some((id, self.hit(id, e)?, e.published)))
            .collect()
    }

    fn hit(&self, id: Id, entry: &Entry) -> Option<Hit> {
        let segment = self.segments.get(&entry.loc.segment)?;
        Some(Hit {
            time: entry.time,
            id,
            file: segment.file.clone(),
            loc: entry.loc,
        })
    }

    pub(super) fn get(&self, id: Id) -> Option<Hit> {
        self.hit(id, self.by_id.get(&id)?)
    }

    /// Up to `limit` messages with an ID greater than `after`, in ID order.
    pub(super) fn after_id(&self, after: &str, limit: usize) -> Vec<Hit> {
        self.by_id
            .range((Bound::Excluded(Id::bound(after)), Bound::Unbounded))
            .filter_map(|(&id, entry)| self.hit(id, entry))
            .take(limit)
            .collect()
    }

    /// The messages of `query` (not `Since::Latest`) after `(time, id)`, at most
    /// `limit` per topic (`None`: all), merged in `(time, id)` order. `true` with
    /// them if a topic may have more than it gave.
    pub(super) fn select(
        &self,
        query: &Query,
        after: Option<&(i64, String)>,
        limit: Option<usize>,
    ) -> (Vec<Hit>, bool) {
        let published_only = !query.include_scheduled;
        let marker = match &query.since {
            Since::AfterId(marker) => Id::bound(marker),
            _ => Id::MIN,
        };
        let matches = |id: Id, entry: &Entry| -> bool {
            match &query.since {
                Since::None | Since::Latest => false,
                Since::All | Since::Time(_) => entry.published || !published_only,
                // With `scheduled=1`, pending messages count as "after" any marker:
                // they are not delivered yet (as ntfy).
                Since::AfterId(_) => {
                    if published_only {
                        entry.published && id > marker
                    } else {
                        id > marker || !entry.published
                    }
                }
            }
        };
        let start = match (&query.since, after) {
            (_, Some((time, id))) => Bound::Excluded((*time, Id::bound(id))),
            (Since::Time(t), None) => Bound::Included((*t, Id::MIN)),
            _ => Bound::Unbounded,
        };
        let since_time = match query.since {
            Since::Time(t) => Some(t),
            _ => None,
        };
        let mut topics: Vec<&str> = query.topics.iter().map(String::as_str).collect();
        topics.sort_unstable();
        topics.dedup();
        // Published messages after a marker: the IDs after it, when there are fewer
        // of them than the topics hold.
        let after_marker = matches!(query.since, Since::AfterId(_)) && published_only;
        if after_marker && let Some(found) = self.select_by_id(&topics, marker, start, limit) {
            return found;
        }
        let mut hits = Vec::new();
        let mut more = false;
        for topic in topics {
            let Some(set) = self.by_topic.get(topic) else {
                continue;
            };
            let mut found = 0;
            for &(time, id) in set.range((start, Bound::Unbounded)) {
                if since_time.is_some_and(|t| time < t) || (after_marker && id <= marker) {
                    continue;
                }
                let Some(entry) = self.by_id.get(&id) else {
                    continue;
                };
                if !matches(id, entry) {
                    continue;
                }
                if limit.is_some_and(|l| found >= l) {
                    more = true;
                    break;
                }
                if let Some(hit) = self.hit(id, entry) {
                    hits.push(hit);
                    found += 1;
                }
            }
        }
        hits.sort_by_key(|hit| (hit.time, hit.id));
        if let Some(limit) = limit
            && hits.len() > limit
        {
            hits.truncate(limit);
            more = true;
        }
        (hits, more)
    }

    /// [`Self::select`] of the published messages of `topics` with an ID above
    /// `marker`, read in ID order: a client resuming with `since=<id>` of a recent
    /// message costs the messages after it, not a scan of its whole topic (in
    /// `(time, id)` order, the messages after a marker are not a range: a message's
    /// `time` need not follow its ID). `None`, having looked at no more IDs than
    /// the topics hold, when scanning the topics costs less; so a read costs at
    /// most twice the cheaper of the two, under the index's read lock that the
    /// writer waits for.
    fn select_by_id(
        &self,
        topics: &[&str],
        marker: Id,
        start: Bound<(i64, Id)>,
        limit: Option<usize>,
    ) -> Option<(Vec<Hit>, bool)> {
        let held: usize = topics
            .iter()
            .filter_map(|topic| self.by_topic.get(*topic))
            .map(BTreeSet::len)
            .sum();
        let mut hits = Vec::new();
        let after_id = self
            .by_id
            .range((Bound::Excluded(marker), Bound::Unbounded));
        for (looked_at, (&id, entry)) in after_id.enumerate() {
            if looked_at >= held {
                return None;
            }
            let key = (entry.time, id);
            let after_start = match start {
                Bound::Excluded(start) => key > start,
                Bound::Included(start) => key >= start,
                Bound::Unbounded => true,
            };
            if entry.published
                && after_start
                && topics.binary_search(&&*entry.topic).is_ok()
                && let Some(hit) = self.hit(id, entry)
            {
                hits.push(hit);
            }
        }
        hits.sort_by_key(|hit| (hit.time, hit.id));
        let mut more = false;
        if let Some(limit) = limit
            && hits.len() > limit
        {
            hits.truncate(limit);
            more = true;
        }
        Some((hits, more))
    }

    /// Per topic of `topics`, its published messages newest first, at most `depth`:
    /// the latest one, and the ones before it in case it does not decode.
    pub(super) fn latest(&self, topics: &[String], depth: usize) -> Vec<Vec<Hit>> {
        let mut topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        topics.sort_unstable();
        topics.dedup();
        topics
            .into_iter()
            .filter_map(|topic| self.by_topic.get(topic))
            .map(|set| {
                set.iter()
                    .rev()
                    .filter_map(|&(_, id)| {
                        let entry = self.by_id.get(&id)?;
                        entry.published.then(|| self.hit(id, entry)).flatten()
                    })
                    .take(depth)
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index of `messages` (topic, time, ID string; all published but those
    /// whose time is negative), every record in segment 1.
    fn index_of(messages: &[(&str, i64, String)]) -> Index {
        let mut index = Index::default();
        let file = Arc::new(tempfile::tempfile().unwrap());
        index.segments.insert(
            1,
            Segment {
                file,
                live: 0,
                live_bytes: 0,
                size: 0,
            },
        );
        for (n, (topic, time, id)) in messages.iter().enumerate() {
            let loc = Loc {
                segment: 1,
                offset: n as u64,
                len: 1,
                record_len: 1,
            };
            let topic = index.shared_topic(topic);
            let entry = Entry::new(topic, time.abs(), None, *time >= 0, loc);
            index.insert(Id::of(id).unwrap(), entry, None);
        }
        index
    }

    /// `since=<marker>` read from a busy topic: by ID when few messages follow the
    /// marker, by scanning the topics when many do, the same messages either way
    /// (against a plain filter of every message), a page at a time too.
    #[test]
    fn since_an_id_reads_the_ids_after_it_or_the_topics() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut ids: Vec<String> = (0..1_200)
            .map(|_| crate::model::MessageId::generate().into_string())
            .collect();
        ids.sort();
        ids.dedup();
        // Times that do not follow the IDs everywhere (a message's time is set
        // before its ID), a few scheduled ones (negative: not published).
        let messages: Vec<(&str, i64, String)> = ids
            .into_iter()
            .enumerate()
            .map(|(n, id)| {
                let topic = if n % 50 == 7 { "other" } else { "big" };
                let time = 1_000 + n as i64 / 3 - rng.i64(0..3);
                let time = if n % 97 == 5 { -(time + 500) } else { time };
                (topic, time, id)
            })
            .collect();
        let index = index_of(&messages);
        let expect = |topics: &[&str], marker: &str| -> Vec<(i64, String)> {
            let mut found: Vec<(i64, String)> = messages
                .iter()
                .filter(|(t, time, id)| topics.contains(t) && *time >= 0 && id.as_str() > marker)
                .map(|(_, time, id)| (*time, id.clone()))
                .collect();
            found.sort();
            found
        };
        let read = |topics: &[&str], marker: &str, limit: Option<usize>| {
            let query = crate::store::contract::q(topics, Since::AfterId(marker.into()), false);
            let mut all = Vec::new();
            let mut after: Option<(i64, String)> = None;
            loop {
                let (hits, more) = index.select(&query, after.as_ref(), limit);
                all.extend(hits.iter().map(|h| (h.time, h.id.to_string())));
                match (more, all.last()) {
                    (true, Some(last)) => after = Some(last.clone()),
                    _ => return all,
                }
            }
        };
        let n = messages.len();
        for (topics, marker_at, by_id) in [
            (&["big"][..], n - 6, true),
            (&["big", "other"][..], n - 40, true),
            (&["big"][..], 3, false),
            // A small topic: its own messages are fewer than all the IDs after the marker.
            (&["other"][..], n / 2, false),
        ] {
            let marker = messages[marker_at].2.as_str();
            let mut sorted: Vec<&str> = topics.to_vec();
            sorted.sort_unstable();
            let fast = index.select_by_id(&sorted, Id::bound(marker), Bound::Unbounded, None);
            assert_eq!(
                fast.is_some(),
                by_id,
                "{topics:?} after message {marker_at}"
            );
            let want = expect(topics, marker);
            assert!(!want.is_empty());
            for limit in [None, Some(1), Some(3), Some(1_000)] {
                assert_eq!(
                    read(topics, marker, limit),
                    want,
                    "{topics:?} {marker_at} {limit:?}"
                );
            }
        }
    }

    #[test]
    fn keys_order_as_the_id_strings_do() {
        let mut ids: Vec<String> = (0..200)
            .map(|_| crate::model::MessageId::generate().into_string())
            .collect();
        ids.extend(["", "0", "00", "0A", "a", "z", "zzzzzzzzzzzzzzzz"].map(String::from));
        for a in &ids {
            let ka = Id::of(a).unwrap();
            assert_eq!(ka.to_string(), *a, "round trip");
            for b in &ids {
                assert_eq!(ka.cmp(&Id::of(b).unwrap()), a.cmp(b), "{a} vs {b}");
            }
        }
        assert_eq!(Id::of(&"x".repeat(17)), None);
        assert_eq!(Id::of("a\0b"), None);
        assert!(Id::MIN < Id::of("0").unwrap());
    }

    #[test]
    fn a_longer_marker_bounds_as_the_string_would() {
        let marker = "ABCDEFGHIJKLMNOPQ"; // 17 bytes
        let bound = Id::bound(marker);
        for id in [
            "ABCDEFGHIJKLMNOP",
            "ABCDEFGHIJKLMNOO",
            "ABCDEFGHIJKLMNPA",
            "B",
        ] {
            let key = Id::of(id).unwrap();
            assert_eq!(key > bound, id > marker, "{id}");
        }
    }
}
