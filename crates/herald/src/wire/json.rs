//! A [`Message`]'s JSON, written by hand instead of through `serde_json`.
//!
//! Every published event is encoded once for everyone (the stored row, each
//! subscriber's frame, the publisher's answer), and in the publish profile that one
//! encoding was ~2,700 instructions, two thirds of them `serde_json`'s generic map
//! serializer and its byte-at-a-time string escaping. This writer knows the
//! message's fields and their order, and escapes a string by finding the bytes that
//! need it a word at a time and copying the runs between them.
//!
//! Its output must be byte-identical to `serde_json`'s for [`Message`] (derived) and
//! [`Message::for_json`]: clients parse it, the store keeps it, and the direct
//! path's answers are compared with hyper's. The tests hold it to that, over
//! arbitrary messages.

use std::ops::Range;

use crate::model::{Action, Attachment, Message};

/// Which of the two JSON forms of a message to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `serde_json` of [`Message`]: `sequence_id` whenever it is set.
    Full,
    /// ntfy's `ForJSON` ([`Message::for_json`]): `sequence_id` left out when it
    /// equals the ID.
    ForJson,
}

/// Appends `m` as JSON in `form` to `out`. Returns where in `out` the
/// `,"sequence_id":"..."` entry went, if one was written, so that a caller holding
/// the full form can cut the `ForJSON` form out of it without encoding again.
pub(crate) fn write_message(out: &mut Vec<u8>, m: &Message, form: Form) -> Option<Range<usize>> {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, &m.id);
    let mut sequence = None;
    if let Some(seq) = m.sequence_id.as_deref()
        && (form == Form::Full || seq != m.id)
    {
        let start = out.len();
        out.extend_from_slice(b",\"sequence_id\":");
        write_str(out, seq);
        sequence = Some(start..out.len());
    }
    out.extend_from_slice(b",\"time\":");
    write_i64(out, m.time);
    if let Some(expires) = m.expires {
        out.extend_from_slice(b",\"expires\":");
        write_i64(out, expires);
    }
    // Event names need no escaping.
    out.extend_from_slice(b",\"event\":\"");
    out.extend_from_slice(m.event.as_str().as_bytes());
    out.extend_from_slice(b"\",\"topic\":");
    write_str(out, &m.topic);
    optional_str(out, b",\"title\":", &m.title);
    optional_str(out, b",\"message\":", &m.message);
    if m.priority != 0 {
        out.extend_from_slice(b",\"priority\":");
        write_i64(out, i64::from(m.priority));
    }
    optional_array(out, b",\"tags\":[", &m.tags, |out, tag| write_str(out, tag));
    optional_str(out, b",\"click\":", &m.click);
    optional_str(out, b",\"icon\":", &m.icon);
    optional_array(out, b",\"actions\":[", &m.actions, write_action);
    if let Some(attachment) = &m.attachment {
        out.extend_from_slice(b",\"attachment\":");
        write_attachment(out, attachment);
    }
    optional_str(out, b",\"poll_id\":", &m.poll_id);
    optional_str(out, b",\"content_type\":", &m.content_type);
    optional_str(out, b",\"encoding\":", &m.encoding);
    out.push(b'}');
    sequence
}

fn write_action(out: &mut Vec<u8>, a: &Action) {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, &a.id);
    out.extend_from_slice(b",\"action\":");
    write_str(out, &a.action);
    out.extend_from_slice(b",\"label\":");
    write_str(out, &a.label);
    out.extend_from_slice(match a.clear {
        true => b",\"clear\":true",
        false => b",\"clear\":false",
    });
    optional_str(out, b",\"url\":", &a.url);
    optional_str(out, b",\"method\":", &a.method);
    optional_map(out, b",\"headers\":", &a.headers);
    optional_str(out, b",\"body\":", &a.body);
    optional_str(out, b",\"intent\":", &a.intent);
    optional_map(out, b",\"extras\":", &a.extras);
    optional_str(out, b",\"value\":", &a.value);
    out.push(b'}');
}

fn write_attachment(out: &mut Vec<u8>, a: &Attachment) {
    out.extend_from_slice(b"{\"name\":");
    write_str(out, &a.name);
    optional_str(out, b",\"type\":", &a.mime_type);
    if a.size != 0 {
        out.extend_from_slice(b",\"size\":");
        write_i64(out, a.size);
    }
    if a.expires != 0 {
        out.extend_from_slice(b",\"expires\":");
        write_i64(out, a.expires);
    }
    out.extend_from_slice(b",\"url\":");
    write_str(out, &a.url);
    out.push(b'}');
}

/// `key` (with its leading comma and trailing colon) and `value`, unless empty.
/// `key` (which opens the array) and `items`, each written by `write`; nothing when
/// there are none (the fields serde skips when empty).
fn optional_array<T>(out: &mut Vec<u8>, key: &[u8], items: &[T], write: impl Fn(&mut Vec<u8>, &T)) {
    if items.is_empty() {
        return;
    }
    out.extend_from_slice(key);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

fn optional_str(out: &mut Vec<u8>, key: &[u8], value: &str) {
    if !value.is_empty() {
        out.extend_from_slice(key);
        write_str(out, value);
    }
}

fn optional_map(out: &mut Vec<u8>, key: &[u8], map: &std::collections::BTreeMap<String, String>) {
    if map.is_empty() {
        return;
    }
    out.extend_from_slice(key);
    out.push(b'{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_str(out, v);
    }
    out.push(b'}');
}

/// `value` in decimal, two digits per division (times are ten digits: a digit at
/// a time was ~190 instructions per number, and every message has two).
fn write_i64(out: &mut Vec<u8>, value: i64) {
    const PAIRS: &[u8; 200] = b"\
        0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    while rest >= 100 {
        let pair = (rest % 100) as usize * 2;
        rest /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if rest >= 10 {
        let pair = rest as usize * 2;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + rest as u8;
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// Eight copies of a byte, for the word-at-a-time tests below.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// Whether any byte of `word` needs escaping: a control character (below 0x20),
/// `"` or `\`. Exact (no false positives): `(x - splat(1)) & !x & splat(0x80)` is
/// non-zero exactly when some byte of `x` is zero, and "less than 0x20" is the same
/// test with 0x20 subtracted (bytes of 0x80 and up have their top bit cleared by
/// `!word`, so they never count).
fn needs_escape(word: u64) -> bool {
    let high = splat(0x80);
    let control = word.wrapping_sub(splat(0x20)) & !word;
    let q = word ^ splat(b'"');
    let quote = q.wrapping_sub(splat(1)) & !q;
    let b = word ^ splat(b'\\');
    let backslash = b.wrapping_sub(splat(1)) & !b;
    (control | quote | backslash) & high != 0
}

/// How JSON (as `serde_json` writes it) escapes `byte`, or `None` if it stays.
fn escape(byte: u8) -> Option<&'static [u8]> {
    const CONTROL: [&[u8]; 32] = [
        b"\\u0000", b"\\u0001", b"\\u0002", b"\\u0003", b"\\u0004", b"\\u0005", b"\\u0006",
        b"\\u0007", b"\\b", b"\\t", b"\\n", b"\\u000b", b"\\f", b"\\r", b"\\u000e", b"\\u000f",
        b"\\u0010", b"\\u0011", b"\\u0012", b"\\u0013", b"\\u0014", b"\\u0015", b"\\u0016",
        b"\\u0017", b"\\u0018", b"\\u0019", b"\\u001a", b"\\u001b", b"\\u001c", b"\\u001d",
        b"\\u001e", b"\\u001f",
    ];
    match byte {
        b'"' => Some(b"\\\""),
        b'\\' => Some(b"\\\\"),
        0..0x20 => Some(CONTROL[byte as usize]),
        _ => None,
    }
}

/// `s` as a JSON string, quotes included.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    if clean(bytes) {
        // Most strings (IDs, topics, most text) have nothing to escape: one copy.
        out.extend_from_slice(bytes);
    } else {
        write_escaped(out, bytes);
    }
    out.push(b'"');
}

/// Whether no byte of `bytes` needs escaping, tested a word at a time (the last
/// word overlapping the one before it, rather than a byte at a time).
fn clean(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return bytes.iter().all(|&b| escape(b).is_none());
    }
    let word = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_ne_bytes(word)
    };
    let last = bytes.len() - 8;
    let mut at = 0;
    while at < last {
        if needs_escape(word(at)) {
            return false;
        }
        at += 8;
    }
    !needs_escape(word(last))
}

/// `bytes` escaped: the runs between the bytes that need it copied whole.
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(escaped) = escape(b) {
            out.extend_from_slice(&bytes[run..i]);
            out.extend_from_slice(escaped);
            run = i + 1;
        }
    }
    out.extend_from_slice(&bytes[run..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;
    use proptest::prelude::*;

    fn encoded(m: &Message, form: Form) -> String {
        let mut out = Vec::new();
        write_message(&mut out, m, form);
        String::from_utf8(out).unwrap()
    }

    fn serde(m: &Message, form: Form) -> String {
        match form {
            Form::Full => serde_json::to_string(m).unwrap(),
            Form::ForJson => serde_json::to_string(&m.for_json()).unwrap(),
        }
    }

    #[test]
    fn every_escape_is_serde_jsons() {
        for b in 0u8..=0x7f {
            let s = format!("a{}b", b as char);
            let mut out = Vec::new();
            write_str(&mut out, &s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&s).unwrap(),
                "{b:#x}"
            );
        }
        let mut out = Vec::new();
        write_str(
            &mut out,
            "0123456789\"abcdef\\ghij\u{1}klmnopé\u{7f}\u{2028}",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string("0123456789\"abcdef\\ghij\u{1}klmnopé\u{7f}\u{2028}").unwrap()
        );
    }

    #[test]
    fn a_byte_to_escape_is_found_at_every_position_of_every_length() {
        for len in 1..=24 {
            for position in 0..len {
                for special in ['"', '\\', '\n', '\u{1f}'] {
                    let mut s = "é".repeat(len / 2) + &"a".repeat(len % 2);
                    if position % 2 == 0 || position == len - 1 {
                        s = "a".repeat(len);
                    }
                    let mut chars: Vec<char> = s.chars().collect();
                    let at = position.min(chars.len() - 1);
                    chars[at] = special;
                    let s: String = chars.into_iter().collect();
                    let mut out = Vec::new();
                    write_str(&mut out, &s);
                    assert_eq!(
                        String::from_utf8(out).unwrap(),
                        serde_json::to_string(&s).unwrap(),
                        "{s:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_word_test_finds_each_byte_that_needs_escaping_in_every_position() {
        for position in 0..8 {
            for b in 0u8..=0xff {
                let mut word = [b'a'; 8];
                word[position] = b;
                let expected = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(
                    needs_escape(u64::from_ne_bytes(word)),
                    expected,
                    "{b:#x} at {position}"
                );
            }
        }
    }

    #[test]
    fn integers_as_serde_json_writes_them() {
        let mut values = vec![i64::MAX, i64::MIN, i64::MIN + 1];
        for digits in 0..19 {
            let p = 10i64.pow(digits);
            values.extend([p - 1, p, p + 1, -p, 1 - p, 5 * p + 7]);
        }
        for v in values {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }

    #[test]
    fn the_sequence_range_is_the_entry_cut_for_json() {
        let mut m = Message::new(EventKind::Message, "t");
        m.sequence_id = Some(m.id.clone());
        m.message = "hi".into();
        let mut full = Vec::new();
        let range = write_message(&mut full, &m, Form::Full).unwrap();
        let mut cut = full[..range.start].to_vec();
        cut.extend_from_slice(&full[range.end..]);
        assert_eq!(String::from_utf8(cut).unwrap(), serde(&m, Form::ForJson));
        assert_eq!(write_message(&mut Vec::new(), &m, Form::ForJson), None);
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9 ]{0,20}",
            any::<String>(),
            "[\"\\\\\u{0}-\u{1f}\u{7f}a-zé€😀]{0,40}",
        ]
    }

    fn map() -> impl Strategy<Value = std::collections::BTreeMap<String, String>> {
        proptest::collection::btree_map(text(), text(), 0..3)
    }

    fn action() -> impl Strategy<Value = Action> {
        (
            (text(), text(), text(), any::<bool>(), text(), text()),
            (map(), text(), text(), map(), text()),
        )
            .prop_map(
                |(
                    (id, action, label, clear, url, method),
                    (headers, body, intent, extras, value),
                )| {
                    Action {
                        id,
                        action,
                        label,
                        clear,
                        url,
                        method,
                        headers,
                        body,
                        intent,
                        extras,
                        value,
                    }
                },
            )
    }

    fn attachment() -> impl Strategy<Value = Attachment> {
        (
            text(),
            text(),
            prop_oneof![Just(0i64), any::<i64>()],
            prop_oneof![Just(0i64), any::<i64>()],
            text(),
        )
            .prop_map(|(name, mime_type, size, expires, url)| Attachment {
                name,
                mime_type,
                size,
                expires,
                url,
            })
    }

    fn kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            Just(EventKind::Open),
            Just(EventKind::Keepalive),
            Just(EventKind::Message),
            Just(EventKind::MessageDelete),
            Just(EventKind::MessageClear),
            Just(EventKind::PollRequest),
        ]
    }

    prop_compose! {
        fn message()(
            (id, own_sequence, sequence_id, time, expires, event, topic) in (
                text(), any::<bool>(), proptest::option::of(text()), any::<i64>(),
                proptest::option::of(any::<i64>()), kind(), text(),
            ),
            (title, body, priority, tags, click, icon) in (
                text(), text(), any::<u8>(), proptest::collection::vec(text(), 0..3),
                text(), text(),
            ),
            (actions, attachment, poll_id, content_type, encoding) in (
                proptest::collection::vec(action(), 0..3), proptest::option::of(attachment()),
                text(), text(), text(),
            ),
        ) -> Message {
            let sequence_id = if own_sequence { Some(id.clone()) } else { sequence_id };
            Message {
                id, sequence_id, time, expires, event, topic, title, message: body,
                priority, tags, click, icon, actions, attachment, poll_id, content_type,
                encoding,
            }
        }
    }

    proptest! {
        #[test]
        fn both_forms_are_byte_identical_to_serde_json(m in message()) {
            for form in [Form::Full, Form::ForJson] {
                prop_assert_eq!(encoded(&m, form), serde(&m, form));
            }
        }
    }
}
