//! Message IDs: ntfy's shape (12 characters of `[0-9A-Za-z]`), but time-sortable.
//!
//! The first 8 characters are the creation time in unix milliseconds, the last 4 a
//! per-millisecond counter that starts at a random value, all in base 62 with the
//! ASCII-ordered alphabet `0-9A-Za-z`. So comparing two IDs as strings compares their
//! creation order, within a node strictly (the generator is monotonic) and across nodes
//! to the millisecond. That lets `since=<id>` select "everything after this message"
//! without looking the marker up, even after the marker itself has expired.

use std::sync::Mutex;

/// Base-62 digits in ASCII order, so that string order equals numeric order.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Length of every message ID.
pub const ID_LEN: usize = 12;
const TIME_DIGITS: usize = 8;
/// 62^4: the range of the 4-digit counter.
const COUNTER_SPACE: u64 = 62 * 62 * 62 * 62;

/// A generated message ID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(String);

/// The generator of this process's IDs.
static CLOCK: IdClock = IdClock::new();

/// How far ahead of the wall clock a stored ID may be and still hold new IDs back
/// ([`never_below`]): a clock stepped back by NTP or a restored VM is seconds to
/// hours behind; an ID further ahead is not trusted to pin every new ID to its time.
const MAX_AHEAD_MS: u64 = 24 * 60 * 60 * 1000;

/// Last (millisecond, counter) handed out, so IDs never go backwards: not within the
/// process (the clock may step back), and, once [`never_below`] was told the newest
/// stored ID, not across a restart either.
struct IdClock {
    last: Mutex<(u64, u64)>,
}

impl IdClock {
    const fn new() -> Self {
        IdClock {
            last: Mutex::new((0, 0)),
        }
    }

    /// The (millisecond, counter) of the next ID at wall-clock time `now_ms`.
    fn next(&self, now_ms: u64) -> (u64, u64) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let next = if now_ms > last.0 {
            // Random start in the lower half leaves room to count up within the ms
            // and makes cross-node collisions in the same millisecond unlikely.
            (now_ms, fastrand::u64(0..COUNTER_SPACE / 2))
        } else if last.1 + 1 < COUNTER_SPACE {
            (last.0, last.1 + 1)
        } else {
            (last.0 + 1, 0)
        };
        *last = next;
        next
    }

    /// Makes every later ID greater than the one made of `(ms, counter)`, unless
    /// `ms` is more than [`MAX_AHEAD_MS`] past `now_ms`. Whether it was applied.
    fn never_below(&self, (ms, counter): (u64, u64), now_ms: u64) -> bool {
        if ms > now_ms.saturating_add(MAX_AHEAD_MS) {
            return false;
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = (*last).max((ms, counter));
        true
    }
}

/// The millisecond of the newest ID this process has generated or been held above
/// ([`never_below`]): later than the clock after the clock went back.
pub(crate) fn newest_issued_ms() -> u64 {
    CLOCK.last.lock().unwrap_or_else(|p| p.into_inner()).0
}

/// Makes every ID this process generates from now on greater than `id`: the newest
/// ID a store holds, or a feed's cursor, when the server starts. Without it, a clock
/// that stepped back while the server was down would give new messages smaller IDs
/// than older ones, and a client or webhook feed that asks for "after `id`" would
/// never see them. An ID that does not decode, or lies more than a day ahead of the
/// clock, is ignored (and `false` returned): pinning every new ID to a time that far
/// off would do more harm than the order it keeps.
pub(crate) fn never_below(id: &str) -> bool {
    match parts(id) {
        Some(at) => CLOCK.never_below(at, super::now_unix_ms().max(0) as u64),
        None => false,
    }
}

impl MessageId {
    /// A new ID, greater than every ID this process generated before.
    pub fn generate() -> Self {
        Self::generate_at(super::now_unix_ms().max(0) as u64)
    }

    /// A new ID for wall-clock time `now_ms` (monotonic even if the clock steps back).
    pub fn generate_at(now_ms: u64) -> Self {
        MessageId(ascii_string(&Self::generate_ascii_at(now_ms)))
    }

    /// [`Self::generate_at`] as its 12 ASCII bytes, for a caller that keeps a copy
    /// of the ID beside the message's string (the sequencer) without allocating one.
    pub(crate) fn generate_ascii_at(now_ms: u64) -> [u8; ID_LEN] {
        let (ms, counter) = CLOCK.next(now_ms);
        let mut buf = [0u8; ID_LEN];
        encode(ms, &mut buf[..TIME_DIGITS]);
        encode(counter, &mut buf[TIME_DIGITS..]);
        buf
    }

    /// The smallest possible ID created at `ms`: every ID generated at or after `ms`
    /// compares greater than or equal to it.
    pub fn floor_at(ms: u64) -> String {
        let mut buf = [b'0'; ID_LEN];
        encode(ms, &mut buf[..TIME_DIGITS]);
        ascii_string(&buf)
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ID as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Whether `s` has the shape of a message ID (ntfy's `ValidMessageID`).
pub fn is_valid(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The creation time encoded in an ID, in unix milliseconds. Any 12-character
/// alphanumeric string decodes; whether the result is plausible is the caller's call.
pub fn timestamp_ms(id: &str) -> Option<u64> {
    if !is_valid(id) {
        return None;
    }
    id.as_bytes()[..TIME_DIGITS]
        .iter()
        .try_fold(0u64, |acc, &b| Some(acc * 62 + digit_value(b)?))
}

/// The ID for creation time `ms` and per-millisecond position `counter`, for IDs
/// assigned elsewhere (a Redis stream entry's `<ms>-<seq>`, see `store::redis`).
/// `None` if either part does not fit (time past the year 8000, or 62^4 entries in one
/// millisecond), so that order is never silently broken.
pub fn from_parts(ms: u64, counter: u64) -> Option<String> {
    if ms >= 62u64.pow(TIME_DIGITS as u32) || counter >= COUNTER_SPACE {
        return None;
    }
    let mut buf = [0u8; ID_LEN];
    encode(ms, &mut buf[..TIME_DIGITS]);
    encode(counter, &mut buf[TIME_DIGITS..]);
    Some(buf.iter().map(|&b| b as char).collect())
}

/// The `(ms, counter)` an ID encodes: the inverse of [`from_parts`].
pub fn parts(id: &str) -> Option<(u64, u64)> {
    let ms = timestamp_ms(id)?;
    let counter = id.as_bytes()[TIME_DIGITS..]
        .iter()
        .try_fold(0u64, |acc, &b| Some(acc * 62 + digit_value(b)?))?;
    Some((ms, counter))
}

fn digit_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u64),
        b'A'..=b'Z' => Some((b - b'A') as u64 + 10),
        b'a'..=b'z' => Some((b - b'a') as u64 + 36),
        _ => None,
    }
}

/// `ascii` (the alphabet's bytes) as a string, copied in one go: collected char by
/// char, as before, it cost about 540 instructions per ID, and every publish takes
/// two IDs.
pub(crate) fn ascii_string(ascii: &[u8]) -> String {
    // The alphabet is ASCII, so this is never empty for an ID.
    std::str::from_utf8(ascii).map_or_else(|_| String::new(), str::to_owned)
}

/// Writes `value` as fixed-width base 62 into `out` (most significant digit first).
fn encode(mut value: u64, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_have_ntfy_shape_and_increase() {
        let mut prev = MessageId::generate();
        for _ in 0..10_000 {
            let next = MessageId::generate();
            assert!(is_valid(next.as_str()), "{next:?}");
            assert!(next > prev, "{next:?} <= {prev:?}");
            prev = next;
        }
    }

    #[test]
    fn a_stored_id_ahead_of_the_clock_holds_new_ids_above_it() {
        let clock = IdClock::new();
        let now = 1_700_000_000_000;
        // The newest stored ID is an hour ahead: the clock stepped back while down.
        let stored = (now + 3_600_000, 1_000);
        assert!(clock.never_below(stored, now));
        let mut prev = stored;
        for _ in 0..1_000 {
            let next = clock.next(now);
            assert!(next > prev, "{next:?} <= {prev:?}");
            prev = next;
        }
        // Once the clock passes the stored time, IDs follow the clock again.
        assert_eq!(clock.next(now + 3_600_001).0, now + 3_600_001);
    }

    #[test]
    fn an_older_stored_id_changes_nothing_and_one_far_ahead_is_ignored() {
        let clock = IdClock::new();
        let now = 1_700_000_000_000;
        let first = clock.next(now);
        assert!(clock.never_below((now - 5_000, 7), now));
        assert!(clock.next(now) > first);
        assert!(!clock.never_below((now + MAX_AHEAD_MS + 1, 0), now));
        assert_eq!(clock.next(now + 1).0, now + 1);
        assert!(!never_below("not an id"));
    }

    #[test]
    fn clock_going_backwards_keeps_ids_increasing() {
        let a = MessageId::generate_at(4_000_000_000_000);
        let b = MessageId::generate_at(3_000_000_000_000);
        assert!(b > a);
    }

    proptest! {
        #[test]
        fn timestamp_round_trips(ms in 0u64..62u64.pow(8)) {
            let floor = MessageId::floor_at(ms);
            prop_assert_eq!(timestamp_ms(&floor), Some(ms));
        }

        #[test]
        fn parts_round_trip_and_keep_order(
            a in (0u64..62u64.pow(8), 0u64..COUNTER_SPACE),
            b in (0u64..62u64.pow(8), 0u64..COUNTER_SPACE),
        ) {
            let ia = from_parts(a.0, a.1).unwrap();
            let ib = from_parts(b.0, b.1).unwrap();
            prop_assert_eq!(parts(&ia), Some(a));
            prop_assert_eq!(ia.cmp(&ib), a.cmp(&b));
        }

        #[test]
        fn string_order_is_time_order(a in 0u64..62u64.pow(8), b in 0u64..62u64.pow(8)) {
            prop_assert_eq!(MessageId::floor_at(a).cmp(&MessageId::floor_at(b)), a.cmp(&b));
        }
    }
}
