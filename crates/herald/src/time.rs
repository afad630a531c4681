//! Time values in the notations ntfy clients send: Go durations (`since=10m`), ntfy's
//! delivery times (`X-Delay: 30m`, `At: tomorrow 10am`, `In: 1600000000`) and config
//! durations (`cache-duration: 12h`, `3d`).
//!
//! ntfy gets these from Go's `time.ParseDuration`, its own `<n> <unit>` pattern and the
//! `olebedev/when` natural-language parser. Clients and scripts are written against that
//! behaviour, so the grammar here follows Go's exactly and the natural-language part is
//! a best effort on top of `interim`. Range limits (minimum/maximum delay) are policy and
//! belong to the caller.

use std::time::Duration;

use chrono::{TimeZone, Utc};

use crate::error::ApiError;

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Largest magnitude a Go duration can have: `int64` nanoseconds (2^63 for negatives).
const GO_DURATION_LIMIT: u128 = 1 << 63;

/// Longest input handed to the natural-language parser; real phrases are short.
const MAX_NATURAL_LEN: usize = 100;

/// Resolves a delivery time (`X-Delay`, `X-At`, `X-In`) to an absolute unix second.
///
/// Accepted, in this order (ntfy's `ParseFutureTime`): a unix timestamp that is not in
/// the past; a duration from `now` (Go grammar, or `<n> d|day(s)|h|hour(s)|m|min(s)|
/// minute(s)|s|sec(s)|second(s)`); a natural-language time such as `10am`,
/// `tomorrow, 3pm` or `next monday`, read in UTC. A natural time that already passed
/// today means the same time tomorrow. The result may still be too soon or too far
/// away; checking that is up to the caller.
pub fn parse_future_time(s: &str, now: i64) -> Result<i64, ApiError> {
    let s = s.trim();
    if let Ok(ts) = s.parse::<i64>()
        && ts >= now
    {
        return Ok(ts);
    }
    // A past timestamp is not an error yet: "0" is also a valid Go duration.
    if let Some(nanos) = parse_ntfy_duration_nanos(s) {
        return now
            .checked_add(nanos.div_euclid(NANOS_PER_SEC))
            .ok_or(ApiError::DELAY_CANNOT_PARSE);
    }
    // A number that was neither a future timestamp nor a duration must not reach the
    // natural-language parser, which would read "10" as the year 10.
    if looks_numeric(s) {
        return Err(ApiError::DELAY_CANNOT_PARSE);
    }
    parse_natural_time(s, now).ok_or(ApiError::DELAY_CANNOT_PARSE)
}

/// Parses a duration from the config file or command line: Go durations (`45s`, `12h`,
/// `0`) plus ntfy's day forms (`3d`, `2 days`). Negative values are rejected.
pub fn parse_config_duration(s: &str) -> Option<Duration> {
    let nanos = parse_ntfy_duration_nanos(s.trim())?;
    u64::try_from(nanos).ok().map(Duration::from_nanos)
}

/// Go's `time.ParseDuration`, signed, in nanoseconds. `since=-1h` is legal in ntfy, so
/// the signed form is kept for callers that need it.
pub(crate) fn parse_go_duration_nanos(s: &str) -> Option<i64> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    // Go's one unit-less special case.
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        let (frac_digits, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        // "." alone is not a number, but "5." and ".5" are.
        if int_digits.is_empty() && frac_digits.is_empty() {
            return None;
        }
        let unit_len = after_number
            .bytes()
            .take_while(|b| *b != b'.' && !b.is_ascii_digit())
            .count();
        let (unit, after_unit) = after_number.split_at(unit_len);
        let unit_nanos = go_unit_nanos(unit)?;

        let whole = decimal_value(int_digits)?;
        let mut component = whole.checked_mul(unit_nanos)?;
        component = component.checked_add(fraction_nanos(frac_digits, unit_nanos))?;
        total = total.checked_add(component)?;
        if total > GO_DURATION_LIMIT {
            return None;
        }
        rest = after_unit;
    }
    if negative {
        i64::try_from(-(total as i128)).ok()
    } else {
        i64::try_from(total).ok()
    }
}

/// A duration as ntfy's `util.ParseDuration` reads it: Go's grammar first, then
/// `<n><space?><unit word>` with days allowed. Signed nanoseconds.
fn parse_ntfy_duration_nanos(s: &str) -> Option<i64> {
    parse_go_duration_nanos(s).or_else(|| parse_unit_word_duration(s))
}

/// ntfy's `(?i)^(\d+)\s*(d|days?|h|hours?|m|mins?|minutes?|s|secs?|seconds?)$`.
fn parse_unit_word_duration(s: &str) -> Option<i64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number: i64 = s[..digits].parse().ok()?;
    let unit = s[digits..]
        .trim_start_matches(is_go_space)
        .to_ascii_lowercase();
    let secs_per_unit: i64 = match unit.as_str() {
        "d" | "day" | "days" => 86_400,
        "h" | "hour" | "hours" => 3_600,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        _ => return None,
    };
    number
        .checked_mul(secs_per_unit)?
        .checked_mul(NANOS_PER_SEC)
}

fn go_unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        // Go accepts both the micro sign (U+00B5) and the Greek mu (U+03BC).
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Value of a digit string, or `None` once it exceeds what any Go duration can hold.
fn decimal_value(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |acc, b| {
        let next = acc * 10 + u128::from(b - b'0');
        (next <= GO_DURATION_LIMIT).then_some(next)
    })
}

/// Nanoseconds contributed by the fractional digits of one component, truncated.
fn fraction_nanos(digits: &str, unit_nanos: u128) -> u128 {
    // Digits past the 20th cannot change the result at nanosecond resolution (the
    // largest unit is 3.6e12 ns), and ignoring them keeps the arithmetic in range.
    let mut numerator: u128 = 0;
    let mut scale: u128 = 1;
    for b in digits.bytes().take(20) {
        numerator = numerator * 10 + u128::from(b - b'0');
        scale *= 10;
    }
    numerator * unit_nanos / scale
}

/// Whitespace as Go's regexp `\s` sees it.
fn is_go_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r')
}

/// An optionally signed run of ASCII digits (of any length).
fn looks_numeric(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Natural-language times through `interim`, in UTC.
///
/// ntfy's parser (`olebedev/when`) finds a time anywhere in a phrase and tolerates
/// filler words; `interim` wants a clean expression. So the phrase is lowercased,
/// `at`/`on`/`in` are dropped and `noon`/`midnight` spelled as clock times, and if that
/// fails the commas are dropped too ("tomorrow, 3pm" only parses without its comma,
/// "June 1, 2024" only with it).
fn parse_natural_time(s: &str, now: i64) -> Option<i64> {
    if s.is_empty() || s.len() > MAX_NATURAL_LEN || !is_safe_for_interim(s) {
        return None;
    }
    let base = Utc.timestamp_opt(now, 0).single()?;
    let with_commas = normalize_phrase(s, true);
    let without_commas = normalize_phrase(s, false);
    let retry = (without_commas != with_commas).then_some(without_commas);
    for phrase in std::iter::once(with_commas).chain(retry) {
        let Ok(first) = interim::parse_date_string(&phrase, base, interim::Dialect::Us) else {
            continue;
        };
        if first.timestamp() > now {
            return Some(first.timestamp());
        }
        // ntfy's rule: a time of day that has passed means that time tomorrow.
        let tomorrow = format!("tomorrow {phrase}");
        return interim::parse_date_string(&tomorrow, base, interim::Dialect::Us)
            .ok()
            .map(|t| t.timestamp())
            .filter(|ts| *ts > now);
    }
    None
}

/// Guards against inputs that make `interim` 0.2 panic: it asserts that the word after
/// an hour ("3PM", "3abcdefghijklmnopq") is lowercase and shorter than 16 bytes. The
/// phrase is lowercased before parsing, so only the length needs checking here.
fn is_safe_for_interim(s: &str) -> bool {
    let mut run = 0usize;
    for c in s.chars() {
        if c.is_ascii_alphabetic() {
            run += 1;
            if run >= 16 {
                return false;
            }
        } else {
            run = 0;
        }
    }
    true
}

fn normalize_phrase(s: &str, keep_commas: bool) -> String {
    let lowered = s.to_ascii_lowercase().replace(',', " , ");
    let words: Vec<&str> = lowered
        .split_whitespace()
        .filter(|w| !matches!(*w, "at" | "on" | "in"))
        .filter(|w| keep_commas || *w != ",")
        .map(|w| match w {
            "noon" => "12:00",
            "midnight" => "0:00",
            other => other,
        })
        .collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's `time.ParseDuration` as a `Duration` (negative values rejected).
    fn parse_go_duration(s: &str) -> Option<Duration> {
        let nanos = parse_go_duration_nanos(s)?;
        u64::try_from(nanos).ok().map(Duration::from_nanos)
    }
    use proptest::prelude::*;

    /// Wednesday 2024-05-15 11:30:00 UTC.
    const NOW: i64 = 1_715_772_600;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("2us"), Some(Duration::from_micros(2)));
        assert_eq!(parse_go_duration("2µs"), Some(Duration::from_micros(2)));
        assert_eq!(parse_go_duration("2μs"), Some(Duration::from_micros(2)));
        assert_eq!(parse_go_duration("7ns"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("+5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_go_duration(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("5.s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1h1h"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_go_duration("0.000000001s"),
            Some(Duration::from_nanos(1))
        );
        assert_eq!(
            parse_go_duration("2562047h47m16.854775807s"),
            Some(Duration::from_nanos(i64::MAX as u64))
        );
    }

    #[test]
    fn go_duration_rejects() {
        for bad in [
            "",
            "1d",
            "10",
            "-5m",
            "h",
            ".s",
            ".",
            "1 h",
            "1h ",
            " 1h",
            "1hh",
            "1e3s",
            "--1s",
            "+",
            "-",
            "2562047h47m16.854775808s",
            "9999999999999999999h",
            "1.2.3s",
        ] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
        // Negative values are valid Go but not durations here.
        assert_eq!(parse_go_duration_nanos("-5m"), Some(-300 * NANOS_PER_SEC));
        assert_eq!(parse_go_duration_nanos("-0"), Some(0));
        assert_eq!(
            parse_go_duration_nanos("-2562047h47m16.854775808s"),
            Some(i64::MIN)
        );
    }

    #[test]
    fn config_durations() {
        assert_eq!(
            parse_config_duration("12h"),
            Some(Duration::from_secs(43_200))
        );
        assert_eq!(parse_config_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(
            parse_config_duration("3d"),
            Some(Duration::from_secs(259_200))
        );
        assert_eq!(
            parse_config_duration("2 days"),
            Some(Duration::from_secs(172_800))
        );
        assert_eq!(parse_config_duration("0"), Some(Duration::ZERO));
        assert_eq!(
            parse_config_duration(" 1h "),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(parse_config_duration("1w"), None);
        assert_eq!(parse_config_duration("-1h"), None);
        assert_eq!(parse_config_duration("soon"), None);
        assert_eq!(parse_config_duration(""), None);
    }

    #[test]
    fn future_time_unix_timestamps() {
        assert_eq!(
            parse_future_time(&(NOW + 100).to_string(), NOW),
            Ok(NOW + 100)
        );
        assert_eq!(parse_future_time(&NOW.to_string(), NOW), Ok(NOW));
        // Past timestamps are unparseable, not "too small" (ntfy behaviour).
        assert_eq!(
            parse_future_time("1600000000", NOW),
            Err(ApiError::DELAY_CANNOT_PARSE)
        );
        assert_eq!(
            parse_future_time("-5", NOW),
            Err(ApiError::DELAY_CANNOT_PARSE)
        );
        // ...except "0", which is also the Go duration zero.
        assert_eq!(parse_future_time("0", NOW), Ok(NOW));
    }

    #[test]
    fn future_time_durations() {
        let cases = [
            ("30m", 1800),
            ("3h", 10_800),
            ("1h30m", 5400),
            ("2 days", 172_800),
            ("2days", 172_800),
            ("1 day", 86_400),
            ("1d", 86_400),
            ("10 min", 600),
            ("10 mins", 600),
            ("10 minutes", 600),
            ("10 MINUTES", 600),
            ("5 hours", 18_000),
            ("5 hour", 18_000),
            ("30 sec", 30),
            ("30 secs", 30),
            ("30 seconds", 30),
            ("30s", 30),
            ("1.5s", 1),
            (" 30m ", 1800),
        ];
        for (input, offset) in cases {
            assert_eq!(parse_future_time(input, NOW), Ok(NOW + offset), "{input:?}");
        }
        // A negative Go duration is parseable; the caller reports it as too small.
        assert_eq!(parse_future_time("-10m", NOW), Ok(NOW - 600));
    }

    #[test]
    fn future_time_natural_language() {
        let day = 86_400;
        let midnight = NOW - 11 * 3600 - 1800;
        let cases = [
            // 10am already passed today, so tomorrow.
            ("10am", midnight + day + 10 * 3600),
            ("3pm", midnight + 15 * 3600),
            ("3PM", midnight + 15 * 3600),
            ("tomorrow, 3pm", midnight + day + 15 * 3600),
            ("tomorrow 10am", midnight + day + 10 * 3600),
            ("Tomorrow at 10am", midnight + day + 10 * 3600),
            ("8:30am", midnight + day + 8 * 3600 + 1800),
            ("17:00", midnight + 17 * 3600),
            ("noon", midnight + 12 * 3600),
            ("midnight", midnight + day),
            ("next monday", midnight + 5 * day),
            ("monday 10am", midnight + 5 * day + 10 * 3600),
            ("friday 8pm", midnight + 2 * day + 20 * 3600),
            ("in 2 hours", NOW + 7200),
            ("1 week", NOW + 7 * day),
            ("June 1, 2024", 1_717_200_000),
            ("2024-06-01 10:00", 1_717_236_000),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_future_time(input, NOW), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn future_time_rejects() {
        for bad in [
            "",
            "   ",
            "soon",
            "3 days ago",
            "last monday",
            "10",
            "99999999999999999999999",
            "tomorrow, banana",
            "3PMABCDEFGHIJKLMNOPQRSTUVWXYZ",
            "3abcdefghijklmnopq",
        ] {
            assert_eq!(
                parse_future_time(bad, NOW),
                Err(ApiError::DELAY_CANNOT_PARSE),
                "{bad:?}"
            );
        }
        // "10" is a (past) timestamp, never the year 10.
        assert!(parse_future_time("10", NOW).is_err());
    }

    proptest! {
        #[test]
        fn go_duration_components_round_trip(
            h in 0u64..10_000, m in 0u64..1000, s in 0u64..1000, ms in 0u64..1000,
            us in 0u64..1000, ns in 0u64..1000,
        ) {
            let text = format!("{h}h{m}m{s}s{ms}ms{us}us{ns}ns");
            let expected = Duration::from_secs(h * 3600 + m * 60 + s)
                + Duration::from_nanos(ms * 1_000_000 + us * 1000 + ns);
            prop_assert_eq!(parse_go_duration(&text), Some(expected));
        }

        #[test]
        fn go_duration_decimal_seconds_round_trip(whole in 0u64..1_000_000, frac in 0u32..1_000_000_000) {
            let text = format!("{whole}.{frac:09}s");
            prop_assert_eq!(
                parse_go_duration(&text),
                Some(Duration::new(whole, frac))
            );
        }

        #[test]
        fn go_duration_accepts_formatted_std_durations(nanos in 0u64..(i64::MAX as u64)) {
            // Rust's `{:?}` of a Duration ("1.5s", "300ms", "7ns") is valid Go syntax,
            // though it rounds to a few digits, hence the tolerance.
            let d = Duration::from_nanos(nanos);
            let parsed = parse_go_duration(&format!("{d:?}").replace('µ', "u"));
            prop_assert!(parsed.is_some());
            let diff = parsed.unwrap_or_default().abs_diff(d);
            prop_assert!(diff <= d / 1000 + Duration::from_nanos(1), "{:?} vs {:?}", parsed, d);
        }

        #[test]
        fn unit_words_round_trip(n in 0i64..100_000, unit in prop::sample::select(vec![
            ("d", 86_400), ("days", 86_400), ("h", 3600), ("hours", 3600), ("m", 60),
            ("minutes", 60), ("s", 1), ("seconds", 1),
        ]), space in prop::bool::ANY) {
            let text = format!("{n}{}{}", if space { " " } else { "" }, unit.0);
            prop_assert_eq!(parse_future_time(&text, NOW), Ok(NOW + n * unit.1));
            prop_assert_eq!(
                parse_config_duration(&text),
                Some(Duration::from_secs((n * unit.1) as u64))
            );
        }

        #[test]
        fn future_timestamps_round_trip(offset in 0i64..1_000_000_000) {
            prop_assert_eq!(parse_future_time(&(NOW + offset).to_string(), NOW), Ok(NOW + offset));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = parse_go_duration(&s);
            let _ = parse_config_duration(&s);
            let _ = parse_future_time(&s, NOW);
        }

        #[test]
        fn natural_parser_never_panics_on_date_words(words in prop::collection::vec(
            prop::sample::select(vec![
                "1", "12", "9999", "-", "+", "/", ":", ".", ",", "AM", "pm", "Tomorrow",
                "next", "last", "ago", "days", "WEEKS", "years", "mon", "Friday", "jan",
                "now", "today", "t", "z", "2024", "h", "d", "at", "noon", "midnight",
                "abcdefghijklmnop",
            ]), 1..7), glue in prop::collection::vec(prop::bool::ANY, 7)) {
            let mut s = String::new();
            for (i, w) in words.iter().enumerate() {
                s.push_str(w);
                if glue[i] { s.push(' '); }
            }
            let _ = parse_future_time(&s, NOW);
        }
    }
}
