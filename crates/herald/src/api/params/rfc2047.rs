//! RFC 2047 encoded-words in header values (`=?UTF-8?B?...?=`), decoded as Go's
//! `mime.WordDecoder` does, because ntfy clients send non-ASCII titles and messages
//! that way (https://docs.ntfy.sh/publish/#message-title).

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};

/// Decodes the RFC 2047 encoded-words in a header value, as Go's `mime.WordDecoder`
/// does: whitespace between adjacent words disappears, malformed words stay as they
/// are, and a word in an unknown charset leaves the whole value undecoded.
pub fn decode_rfc2047(value: &str) -> Cow<'_, str> {
    if !value.contains("=?") {
        return Cow::Borrowed(value);
    }
    match decode_encoded_words(value.as_bytes()) {
        Some(decoded) => Cow::Owned(decoded),
        None => Cow::Borrowed(value),
    }
}

fn decode_encoded_words(input: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    let mut after_word = false;
    while let Some(start) = find(rest, b"=?") {
        let Some(word) = EncodedWord::split(&rest[start..]) else {
            break;
        };
        let Some(payload) = word.payload() else {
            // Not decodable after all: keep its "=?" and look for a word further on.
            out.extend_from_slice(&rest[..start + 2]);
            rest = &rest[start + 2..];
            after_word = false;
            continue;
        };
        let gap = &rest[..start];
        if !after_word || gap.iter().any(|b| !b" \t\r\n".contains(b)) {
            out.extend_from_slice(gap);
        }
        append_in_charset(&mut out, word.charset, &payload)?;
        rest = &rest[start + word.len..];
        after_word = true;
    }
    out.extend_from_slice(rest);
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// `=?charset?encoding?text?=`, split but not decoded.
struct EncodedWord<'a> {
    charset: &'a [u8],
    encoding: u8,
    text: &'a [u8],
    /// Bytes from the opening `=?` through the closing `?=`.
    len: usize,
}

impl<'a> EncodedWord<'a> {
    /// Splits the word at the start of `s` (which begins with `=?`).
    fn split(s: &'a [u8]) -> Option<Self> {
        let body = s.get(2..)?;
        let charset_len = body.iter().position(|b| *b == b'?')?;
        let after_charset = &body[charset_len + 1..];
        // Shortest remainder: encoding, '?', empty text, "?=".
        if after_charset.len() < 4 || after_charset[1] != b'?' {
            return None;
        }
        let text_area = &after_charset[2..];
        let text_len = find(text_area, b"?=")?;
        Some(EncodedWord {
            charset: &body[..charset_len],
            encoding: after_charset[0],
            text: &text_area[..text_len],
            len: 2 + charset_len + 1 + 2 + text_len + 2,
        })
    }

    fn payload(&self) -> Option<Vec<u8>> {
        match self.encoding {
            b'B' | b'b' => {
                // Go's decoder skips line breaks and tolerates non-zero trailing bits.
                const LENIENT: GeneralPurpose = GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
                );
                let text: Vec<u8> = self
                    .text
                    .iter()
                    .copied()
                    .filter(|b| !matches!(b, b'\r' | b'\n'))
                    .collect();
                LENIENT.decode(text).ok()
            }
            b'Q' | b'q' => q_decode(self.text),
            _ => None,
        }
    }
}

fn q_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'_' => out.push(b' '),
            b'=' => {
                let high = hex_value(bytes.next()?)?;
                let low = hex_value(bytes.next()?)?;
                out.push(high << 4 | low);
            }
            b' '..=b'~' | b'\n' | b'\r' | b'\t' => out.push(b),
            _ => return None,
        }
    }
    Some(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Appends `payload` converted to UTF-8; `None` for a charset Go does not know either.
fn append_in_charset(out: &mut Vec<u8>, charset: &[u8], payload: &[u8]) -> Option<()> {
    if charset.eq_ignore_ascii_case(b"utf-8") {
        // Left as is; invalid sequences are replaced when the whole value is converted.
        out.extend_from_slice(payload);
    } else if charset.eq_ignore_ascii_case(b"iso-8859-1") {
        let mut buf = [0u8; 4];
        for &b in payload {
            out.extend_from_slice(char::from(b).encode_utf8(&mut buf).as_bytes());
        }
    } else if charset.eq_ignore_ascii_case(b"us-ascii") {
        for &b in payload {
            if b.is_ascii() {
                out.push(b);
            } else {
                out.extend_from_slice("\u{fffd}".as_bytes());
            }
        }
    } else {
        return None;
    }
    Some(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Encodes `value` as a single RFC 2047 `B` word, which [`super::ParamSource::get`]
/// decodes.
pub(super) fn encode_rfc2047(value: &str) -> String {
    format!("=?UTF-8?B?{}?=", STANDARD.encode(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::params::aliases::names;
    use crate::api::params::test_support::*;
    use proptest::prelude::*;

    #[test]
    fn rfc2047_words_are_decoded() {
        let cases = [
            ("=?UTF-8?B?8J+OiSBIZWxsbw==?=", "🎉 Hello"),
            ("=?utf-8?q?Hello_World?=", "Hello World"),
            ("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=", "Grüße"),
            ("=?UTF-8?Q?a=c3=a4?=", "aä"),
            ("=?ISO-8859-1?Q?caf=E9?=", "café"),
            ("=?iso-8859-1?B?Y2Fm6Q==?=", "café"),
            ("=?US-ASCII?Q?a=FFb?=", "a\u{fffd}b"),
            // Whitespace between adjacent words disappears, other text stays.
            ("=?UTF-8?Q?a?= =?UTF-8?Q?b?=", "ab"),
            ("x =?UTF-8?Q?a?= and =?UTF-8?Q?b?= y", "x a and b y"),
            // Malformed words are left alone, later words still decode.
            ("=?UTF-8?X?abc?= =?UTF-8?Q?b?=", "=?UTF-8?X?abc?= b"),
            ("=?UTF-8?B?not base64?=", "=?UTF-8?B?not base64?="),
            ("=?UTF-8?Q?bad=ZZ?=", "=?UTF-8?Q?bad=ZZ?="),
            ("=?UTF-8?Q?unterminated", "=?UTF-8?Q?unterminated"),
            ("a =? b", "a =? b"),
            // An unknown charset leaves the entire value as it was.
            (
                "=?UTF-8?Q?a?= =?KOI8-R?Q?b?=",
                "=?UTF-8?Q?a?= =?KOI8-R?Q?b?=",
            ),
            // Invalid UTF-8 inside a UTF-8 word is replaced.
            ("=?UTF-8?Q?=FF?=", "\u{fffd}"),
        ];
        for (encoded, expected) in cases {
            assert_eq!(decode_rfc2047(encoded), expected, "{encoded}");
            assert_eq!(
                get(&[("X-Title", encoded)], &[], names::TITLE).as_deref(),
                Some(expected.trim()),
                "{encoded}"
            );
        }
        // Query values are not MIME-decoded (ntfy decodes headers only).
        assert_eq!(
            get(&[], &[("t", "=?UTF-8?Q?a?=")], names::TITLE).as_deref(),
            Some("=?UTF-8?Q?a?=")
        );
    }

    /// A Q-encoding of arbitrary text, independent of the decoder under test.
    fn q_encode(s: &str) -> String {
        let mut out = String::from("=?UTF-8?Q?");
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() {
                out.push(b as char);
            } else if b == b' ' {
                out.push('_');
            } else {
                out.push_str(&format!("={b:02X}"));
            }
        }
        out.push_str("?=");
        out
    }

    proptest! {
        #[test]
        fn rfc2047_b_round_trips(s in "\\PC{1,60}") {
            let encoded = encode_rfc2047(&s);
            prop_assert_eq!(decode_rfc2047(&encoded), s.as_str());
            prop_assert_eq!(
                get(&[("X-Title", &encoded)], &[], names::TITLE),
                Some(s.trim().to_string()).filter(|v| !v.is_empty())
            );
        }

        #[test]
        fn rfc2047_q_round_trips(s in "\\PC{1,60}") {
            let encoded = q_encode(&s);
            prop_assert_eq!(decode_rfc2047(&encoded), s.as_str());
        }

        #[test]
        fn rfc2047_adjacent_words_join(a in "\\PC{1,20}", b in "\\PC{1,20}", gap in "[ \t]{0,3}") {
            let value = format!("{}{gap}{}", encode_rfc2047(&a), q_encode(&b));
            prop_assert_eq!(decode_rfc2047(&value).into_owned(), format!("{a}{b}"));
        }

        #[test]
        fn plain_values_pass_through(s in "[ -~]{0,60}") {
            // Without "=?" nothing is touched; with it, decoding never panics.
            let decoded = decode_rfc2047(&s);
            if !s.contains("=?") {
                prop_assert_eq!(decoded, s.as_str());
            }
        }
    }
}
