//! The stamp every benchmark message carries, and the per-subscriber bookkeeping
//! that turns received stamps into duplicates and reorderings.
//!
//! A stamp is `~hb<nonce:16 hex>.<publisher>.<seq>.<send ns>~`, followed by `x`
//! padding up to `--size`. It uses only characters that JSON leaves alone, so the
//! subscriber finds it verbatim inside the event (no JSON parse on the hot path:
//! the parse would cost more load-generator CPU than the server spends on the
//! delivery). `send ns` is this process's monotonic clock, so publisher and
//! subscriber timestamps are comparable. The nonce tells our messages from those
//! of another run publishing to the same topics.
//!
//! `seq` counts per (publisher, topic): a publisher waits for the acknowledgement
//! of one publish before it sends the next, so within a topic the server has to
//! deliver one publisher's messages in `seq` order. Across publishers there is no
//! order to check: their requests race.

use std::fmt::Write as _;
use std::ops::Range;

/// Marks the start of a stamp.
const MARKER: &[u8] = b"~hb";

/// What a subscriber reads back from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) nonce: u64,
    pub(crate) publisher: u32,
    pub(crate) seq: u64,
    pub(crate) send_ns: u64,
}

impl Stamp {
    /// The message body: the stamp, padded with `x` to `size` bytes (never cut
    /// short: a body smaller than the stamp is just the stamp).
    pub(crate) fn body(&self, size: usize) -> String {
        let mut body = String::with_capacity(size.max(64));
        // Writing to a String cannot fail.
        let _ = write!(
            body,
            "~hb{:016x}.{}.{}.{}~",
            self.nonce, self.publisher, self.seq, self.send_ns
        );
        while body.len() < size {
            body.push('x');
        }
        body
    }

    /// Finds and parses the first stamp in `event` (a JSON line, an SSE `data:`
    /// payload or a WebSocket text frame). `None` when there is none or it is
    /// malformed: keepalives, `open` events and foreign messages end up here.
    pub(crate) fn find(event: &[u8]) -> Option<Stamp> {
        let start = find(event, MARKER)? + MARKER.len();
        let rest = event.get(start..)?;
        let end = rest.iter().position(|&b| b == b'~')?;
        let mut fields = std::str::from_utf8(&rest[..end]).ok()?.split('.');
        let nonce = fields.next()?;
        if nonce.len() != 16 {
            return None;
        }
        let stamp = Stamp {
            nonce: u64::from_str_radix(nonce, 16).ok()?,
            publisher: fields.next()?.parse().ok()?,
            seq: fields.next()?.parse().ok()?,
            send_ns: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(stamp)
    }
}

/// Position of `needle` in `haystack`. Events are a few hundred bytes, so a
/// first-byte scan is as fast as anything smarter here.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, tail) = needle.split_first()?;
    let mut from = 0;
    while let Some(pos) = haystack.get(from..)?.iter().position(|&b| b == first) {
        let at = from + pos;
        if haystack.get(at + 1..at + needle.len()) == Some(tail) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// How a received `seq` relates to what the subscriber saw before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Newer than everything seen (possibly skipping some, which may come later).
    InOrder,
    /// Older than something already seen, and not seen before: a reordering.
    Late,
    /// Seen before.
    Duplicate,
}

/// Most gaps remembered per (subscriber, publisher). Gaps come from messages
/// still in flight or lost; past this many the oldest is forgotten, and a message
/// that fills a forgotten gap counts as a duplicate (bounded memory for a
/// subscriber that lost thousands of messages).
const MAX_GAPS: usize = 256;

/// The `seq`s one subscriber has seen from one publisher: everything below `next`
/// except the `gaps`. Constant memory while messages arrive in order.
#[derive(Debug, Default, Clone)]
pub(crate) struct SeqTracker {
    next: u64,
    gaps: Vec<Range<u64>>,
}

impl SeqTracker {
    /// Records `seq` and says how it arrived.
    pub(crate) fn observe(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            if seq > self.next {
                if self.gaps.len() == MAX_GAPS {
                    self.gaps.remove(0);
                }
                self.gaps.push(self.next..seq);
            }
            self.next = seq + 1;
            return Arrival::InOrder;
        }
        let Some(i) = self.gaps.iter().position(|g| g.contains(&seq)) else {
            return Arrival::Duplicate;
        };
        let gap = self.gaps[i].clone();
        match (gap.start == seq, gap.end == seq + 1) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].start = seq + 1,
            (false, true) => self.gaps[i].end = seq,
            (false, false) => {
                self.gaps[i].end = seq;
                self.gaps.insert(i + 1, seq + 1..gap.end);
            }
        }
        Arrival::Late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            nonce: 0x0123_4567_89ab_cdef,
            publisher: 3,
            seq: 42,
            send_ns: 987_654_321,
        }
    }

    #[test]
    fn body_round_trips_through_json_event() {
        let body = stamp().body(100);
        assert_eq!(body.len(), 100);
        assert!(body.starts_with("~hb0123456789abcdef.3.42.987654321~xx"));
        let event =
            serde_json::json!({"id": "abc", "event": "message", "topic": "t", "message": body});
        let text = serde_json::to_string(&event).expect("serialize");
        assert_eq!(Stamp::find(text.as_bytes()), Some(stamp()));
    }

    #[test]
    fn body_smaller_than_stamp_is_the_stamp() {
        let body = stamp().body(4);
        assert_eq!(body, "~hb0123456789abcdef.3.42.987654321~");
        assert_eq!(Stamp::find(body.as_bytes()), Some(stamp()));
    }

    #[test]
    fn malformed_stamps_are_rejected() {
        for bad in [
            "",
            "no stamp here",
            "~hb",
            "~hb0123456789abcdef.3.42.1",    // unterminated
            "~hb0123456789abcde.3.42.1~",    // short nonce
            "~hb0123456789abcdeg.3.42.1~",   // not hex
            "~hb0123456789abcdef.3.42~",     // missing field
            "~hb0123456789abcdef.3.42.1.5~", // extra field
            "~hb0123456789abcdef.-3.42.1~",  // negative
            "~hb0123456789abcdef.3.42.99999999999999999999~", // overflow
        ] {
            assert_eq!(Stamp::find(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn finds_stamp_after_false_starts() {
        let text = r#"{"topic":"~h~","message":"~~hb0000000000000001.0.7.9~x"}"#;
        let s = Stamp::find(text.as_bytes()).expect("stamp");
        assert_eq!((s.nonce, s.publisher, s.seq, s.send_ns), (1, 0, 7, 9));
    }

    #[test]
    fn find_bytes() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"abc", b""), None);
    }

    #[test]
    fn tracker_in_order_late_duplicate() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0), Arrival::InOrder);
        assert_eq!(t.observe(1), Arrival::InOrder);
        assert_eq!(t.observe(1), Arrival::Duplicate);
        assert_eq!(t.observe(5), Arrival::InOrder); // 2..5 missing
        assert_eq!(t.observe(3), Arrival::Late);
        assert_eq!(t.observe(3), Arrival::Duplicate);
        assert_eq!(t.observe(2), Arrival::Late);
        assert_eq!(t.observe(4), Arrival::Late);
        assert!(t.gaps.is_empty());
        assert_eq!(t.observe(4), Arrival::Duplicate);
        assert_eq!(t.observe(6), Arrival::InOrder);
    }

    #[test]
    fn tracker_forgets_oldest_gaps() {
        let mut t = SeqTracker::default();
        for i in 0..=MAX_GAPS as u64 {
            t.observe(i * 2 + 1); // leaves gap {2i}
        }
        assert_eq!(t.gaps.len(), MAX_GAPS);
        assert_eq!(t.observe(0), Arrival::Duplicate); // forgotten
        assert_eq!(t.observe(2), Arrival::Late);
    }
}
