//! Where publish and subscribe parameters come from: every name ntfy accepts for each
//! ([`names`]), looked up as headers, then as query parameters ([`ParamSource`]).

use axum::http::HeaderMap;

use super::rfc2047::decode_rfc2047;

/// The accepted names of each parameter, exactly ntfy's (docs/COMPATIBILITY.md §2.2
/// and §3.2).
/// Headers are matched case-insensitively, query parameters only in this lowercase form.
pub mod names {
    pub const MESSAGE: &[&str] = &["x-message", "message", "m"];
    pub const TITLE: &[&str] = &["x-title", "title", "t"];
    pub const PRIORITY: &[&str] = &["x-priority", "priority", "prio", "p"];
    pub const TAGS: &[&str] = &["x-tags", "tags", "tag", "ta"];
    pub const DELAY: &[&str] = &["x-delay", "delay", "x-at", "at", "x-in", "in"];
    pub const ACTIONS: &[&str] = &["x-actions", "actions", "action"];
    pub const CLICK: &[&str] = &["x-click", "click"];
    pub const ATTACH: &[&str] = &["x-attach", "attach", "a"];
    pub const FILENAME: &[&str] = &["x-filename", "filename", "file", "f"];
    pub const ICON: &[&str] = &["x-icon", "icon"];
    pub const EMAIL: &[&str] = &["x-email", "x-e-mail", "email", "e-mail", "mail", "e"];
    pub const CALL: &[&str] = &["x-call", "call"];
    pub const TEMPLATE: &[&str] = &["x-template", "template", "tpl"];
    pub const CACHE: &[&str] = &["x-cache", "cache"];
    pub const FIREBASE: &[&str] = &["x-firebase", "firebase"];
    pub const MARKDOWN: &[&str] = &["x-markdown", "markdown", "md"];
    pub const CONTENT_TYPE: &[&str] = &["content-type", "content_type"];
    pub const UNIFIEDPUSH: &[&str] = &["x-unifiedpush", "unifiedpush", "up"];
    pub const POLL_ID: &[&str] = &["x-poll-id", "poll-id"];
    pub const SEQUENCE_ID: &[&str] = &["x-sequence-id", "sequence-id", "sid"];

    pub const POLL: &[&str] = &["x-poll", "poll", "po"];
    pub const SINCE: &[&str] = &["x-since", "since", "si"];
    pub const SCHEDULED: &[&str] = &["x-scheduled", "scheduled", "sched"];
    pub const ID: &[&str] = &["x-id", "id"];
}

/// Every publish parameter's names ([`names`]): what `is_publish_name` matches.
#[cfg(test)]
const PUBLISH: &[&[&str]] = &[
    names::MESSAGE,
    names::TITLE,
    names::PRIORITY,
    names::TAGS,
    names::DELAY,
    names::ACTIONS,
    names::CLICK,
    names::ATTACH,
    names::FILENAME,
    names::ICON,
    names::EMAIL,
    names::CALL,
    names::TEMPLATE,
    names::CACHE,
    names::FIREBASE,
    names::MARKDOWN,
    names::CONTENT_TYPE,
    names::UNIFIEDPUSH,
    names::POLL_ID,
    names::SEQUENCE_ID,
];

/// Where parameters come from: the request headers and its decoded query pairs.
#[derive(Debug, Clone, Copy)]
pub struct ParamSource<'a> {
    pub headers: &'a HeaderMap,
    pub query: &'a [(String, String)],
}

/// A header's value as a parameter: RFC 2047 decoded, trimmed, `None` when empty (or
/// an RFC 9218 `Priority`).
fn header_value(name: &str, raw: &axum::http::HeaderValue) -> Option<String> {
    let text = String::from_utf8_lossy(raw.as_bytes());
    let decoded = decode_rfc2047(&text);
    let value = decoded.trim();
    if value.is_empty() || (name.eq_ignore_ascii_case("priority") && is_rfc9218_priority(value)) {
        return None;
    }
    Some(value.to_string())
}

/// Of `headers`, those a publish parameter is named after ([`names`]), in their
/// order: what [`ParamSource::get`] looks at for a publish. A request's other headers
/// (`Host`, `Content-Length`, `User-Agent`, ...) are then passed over once instead of
/// once per parameter; a plain publish usually has no parameter header at all, and
/// an empty map costs no allocation.
pub(crate) fn publish_headers(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| is_publish_name(name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Whether `name` (lowercase, as a `HeaderName` is) is one of the publish parameters'
/// names: one `match` (by length, then bytes) instead of a comparison per alias. A
/// unit test keeps it equal to the lists in [`names`].
fn is_publish_name(name: &str) -> bool {
    matches!(
        name,
        "x-message"
            | "message"
            | "m"
            | "x-title"
            | "title"
            | "t"
            | "x-priority"
            | "priority"
            | "prio"
            | "p"
            | "x-tags"
            | "tags"
            | "tag"
            | "ta"
            | "x-delay"
            | "delay"
            | "x-at"
            | "at"
            | "x-in"
            | "in"
            | "x-actions"
            | "actions"
            | "action"
            | "x-click"
            | "click"
            | "x-attach"
            | "attach"
            | "a"
            | "x-filename"
            | "filename"
            | "file"
            | "f"
            | "x-icon"
            | "icon"
            | "x-email"
            | "x-e-mail"
            | "email"
            | "e-mail"
            | "mail"
            | "e"
            | "x-call"
            | "call"
            | "x-template"
            | "template"
            | "tpl"
            | "x-cache"
            | "cache"
            | "x-firebase"
            | "firebase"
            | "x-markdown"
            | "markdown"
            | "md"
            | "content-type"
            | "content_type"
            | "x-unifiedpush"
            | "unifiedpush"
            | "up"
            | "x-poll-id"
            | "poll-id"
            | "x-sequence-id"
            | "sequence-id"
            | "sid"
    )
}

/// Whether `name` (lowercase) is one of the idempotency key's header names
/// (`api::publish`'s `IDEMPOTENCY_KEY`, kept equal by a unit test there).
pub(crate) fn is_idempotency_name(name: &str) -> bool {
    matches!(
        name,
        "idempotency-key" | "x-idempotency-key" | "idempotency_key"
    )
}

impl ParamSource<'_> {
    /// Whether the request names no parameter at all: no query, and no header named
    /// after a publish parameter or an idempotency key. Every [`ParamSource::get`] of
    /// those names then misses, so a publish skips them with one pass over the
    /// request's few headers (a plain publish has `Host`, `User-Agent`,
    /// `Content-Length`) instead of one per parameter.
    pub(crate) fn is_bare(&self) -> bool {
        self.query.is_empty()
            && !self
                .headers
                .keys()
                .any(|name| is_publish_name(name.as_str()) || is_idempotency_name(name.as_str()))
    }

    /// The first non-empty value among `names` (ntfy's `readParam`): every name as a
    /// header first, then every name as a query parameter.
    ///
    /// Header values are decoded from RFC 2047 encoded-words (`=?UTF-8?B?...?=`, also
    /// `Q` and the ISO-8859-1 / US-ASCII charsets) and, if not valid UTF-8, decoded
    /// lossily (invalid bytes become U+FFFD) rather than dropped, because ntfy keeps
    /// such text too. Of repeated headers or query keys only the first counts. Values
    /// are trimmed; empty ones count as absent. An RFC 9218 `Priority: u=N[, i]` header,
    /// which proxies such as Cloudflare add on their own, is ignored.
    pub fn get(&self, names: &[&str]) -> Option<String> {
        self.header(names)
            .or_else(|| names.iter().find_map(|name| self.query_param(name)))
    }

    /// A boolean parameter (ntfy's `readBoolParam`): `1`, `yes`, `true` (any case) are
    /// true, any other value false, and an absent one `default`.
    pub fn get_bool(&self, names: &[&str], default: bool) -> bool {
        self.get(names).map_or(default, |v| to_bool(&v))
    }

    /// The value of the first of `names` that is a header with a non-empty value.
    fn header(&self, names: &[&str]) -> Option<String> {
        // One pass over the request's few headers per parameter, not one per alias,
        // and no `HeaderMap::get(&str)`, which parses and hashes the name on every
        // call: a publish looks up some sixty aliases, nearly all absent (a quarter
        // of a publish's instructions under callgrind with `get`, 9 % with a scan per
        // alias; docs/BENCHMARKS.md). Names in the map are lowercase; `iter` yields
        // a repeated header's values together, its first value first.
        let mut best: Option<(usize, String)> = None;
        let mut seen = 0u64;
        for (key, raw) in self.headers.iter() {
            let key = key.as_str();
            let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(key)) else {
                continue;
            };
            // Of a repeated header only the first value counts.
            let bit = 1u64 << (i % 64);
            if seen & bit != 0 {
                continue;
            }
            seen |= bit;
            if best.as_ref().is_some_and(|(b, _)| *b < i) {
                continue;
            }
            if let Some(value) = header_value(names[i], raw) {
                best = Some((i, value));
                if i == 0 {
                    break;
                }
            }
        }
        best.map(|(_, value)| value)
    }

    fn query_param(&self, name: &str) -> Option<String> {
        // Query names match only in their lowercase form, which is how every name
        // in [`names`] is written: compare as is, no lowercased copy per alias.
        debug_assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
        let (_, value) = self.query.iter().find(|(key, _)| key == name)?;
        let value = value.trim();
        (!value.is_empty()).then(|| value.to_string())
    }
}

fn to_bool(value: &str) -> bool {
    matches!(value.to_ascii_lowercase().as_str(), "1" | "yes" | "true")
}

/// Whether a `Priority` header value is RFC 9218's (`u=N` or `u=N, i` / `u=N, N`).
fn is_rfc9218_priority(value: &str) -> bool {
    let Some(rest) = value.strip_prefix("u=") else {
        return false;
    };
    let bytes = rest.as_bytes();
    match bytes {
        [d] => d.is_ascii_digit(),
        [d, b',', tail @ ..] if d.is_ascii_digit() => {
            let tail = match tail.iter().position(|b| !b" \t\n\x0c\r".contains(b)) {
                Some(start) => &tail[start..],
                None => return false,
            };
            matches!(tail, [b'i'] | [b'0'..=b'9'])
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_names_are_exactly_the_publish_parameters() {
        for aliases in PUBLISH {
            for alias in *aliases {
                assert!(is_publish_name(alias), "{alias}");
            }
        }
        let all: Vec<&str> = PUBLISH.iter().flat_map(|a| a.iter().copied()).collect();
        for other in [
            "host",
            "content-length",
            "user-agent",
            "accept",
            "x-poll",
            "since",
        ] {
            assert!(!all.contains(&other) && !is_publish_name(other), "{other}");
        }
    }
    use crate::api::params::test_support::*;
    use crate::error::ApiError;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    #[test]
    fn header_beats_query_and_order_is_headers_then_query() {
        assert_eq!(
            get(
                &[("Title", "from header")],
                &[("x-title", "from query")],
                names::TITLE
            )
            .as_deref(),
            Some("from header")
        );
        // A later header alias still beats an earlier query alias.
        assert_eq!(
            get(&[("t", "h")], &[("x-title", "q")], names::TITLE).as_deref(),
            Some("h")
        );
        // Among headers, list order wins.
        assert_eq!(
            get(&[("t", "short"), ("X-Title", "long")], &[], names::TITLE).as_deref(),
            Some("long")
        );
        assert_eq!(
            get(&[], &[("t", "short"), ("title", "long")], names::TITLE).as_deref(),
            Some("long")
        );
    }

    #[test]
    fn query_names_are_lowercase_only() {
        assert_eq!(get(&[], &[("Title", "x")], names::TITLE), None);
        assert_eq!(get(&[], &[("TITLE", "x")], names::TITLE), None);
        assert_eq!(
            get(&[], &[("title", "x")], names::TITLE).as_deref(),
            Some("x")
        );
        // Headers are case-insensitive.
        assert_eq!(
            get(&[("tItLe", "x")], &[], names::TITLE).as_deref(),
            Some("x")
        );
    }

    #[test]
    fn values_are_trimmed_and_empty_means_absent() {
        assert_eq!(
            get(&[("Title", "  hi  ")], &[], names::TITLE).as_deref(),
            Some("hi")
        );
        assert_eq!(
            get(&[], &[("t", "  hi ")], names::TITLE).as_deref(),
            Some("hi")
        );
        assert_eq!(
            get(&[("Title", "   ")], &[("t", "q")], names::TITLE).as_deref(),
            Some("q")
        );
        assert_eq!(
            get(&[], &[("title", ""), ("t", "q")], names::TITLE).as_deref(),
            Some("q")
        );
        // Only the first occurrence of a query key counts (Go's Query().Get).
        assert_eq!(
            get(&[], &[("title", ""), ("title", "later")], names::TITLE),
            None
        );
        assert_eq!(get(&[], &[], names::TITLE), None);
    }

    #[test]
    fn first_of_repeated_headers_counts() {
        assert_eq!(
            get(&[("Title", "one"), ("Title", "two")], &[], names::TITLE).as_deref(),
            Some("one")
        );
    }

    #[test]
    fn non_utf8_header_values_are_decoded_lossily() {
        let mut headers = HeaderMap::new();
        headers.insert("x-title", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let src = ParamSource {
            headers: &headers,
            query: &[],
        };
        assert_eq!(src.get(names::TITLE).as_deref(), Some("caf\u{fffd}"));
        assert_eq!(
            get(&[("X-Title", "Grüße 🎉")], &[], names::TITLE).as_deref(),
            Some("Grüße 🎉")
        );
    }

    #[test]
    fn rfc9218_priority_header_is_ignored() {
        for ignored in ["u=4", "u=3, i", "u=1,i", "u=0,  5", " u=2 "] {
            assert_eq!(
                get(
                    &[("Priority", ignored), ("X-Priority", "5")],
                    &[],
                    names::PRIORITY
                )
                .as_deref(),
                Some("5"),
                "{ignored}"
            );
            assert_eq!(
                get(&[("Priority", ignored)], &[("p", "2")], names::PRIORITY).as_deref(),
                Some("2")
            );
            assert_eq!(publish_ok(&[("Priority", ignored)], &[]).priority, 0);
        }
        // Other values of the same header are real priorities.
        assert_eq!(publish_ok(&[("Priority", "high")], &[]).priority, 4);
        assert_eq!(
            publish(&[("Priority", "u=4, i, x")], &[]),
            Err(ApiError::PRIORITY_INVALID)
        );
        assert_eq!(
            publish(&[("Priority", "u=10")], &[]),
            Err(ApiError::PRIORITY_INVALID)
        );
        // Only the `Priority` header is special.
        assert_eq!(
            publish(&[("X-Priority", "u=4")], &[]),
            Err(ApiError::PRIORITY_INVALID)
        );
    }

    #[test]
    fn bool_rules() {
        let b = |headers: &[(&str, &str)], q: &[(&str, &str)], default| {
            let headers = header_map(headers);
            let q = query(q);
            ParamSource {
                headers: &headers,
                query: &q,
            }
            .get_bool(names::CACHE, default)
        };
        for truthy in ["1", "yes", "YES", "true", "True", " yes "] {
            assert!(b(&[("Cache", truthy)], &[], false), "{truthy}");
            assert!(b(&[], &[("cache", truthy)], false), "{truthy}");
        }
        for falsy in ["0", "no", "false", "foo", "on", "y"] {
            assert!(!b(&[("X-Cache", falsy)], &[], true), "{falsy}");
        }
        assert!(b(&[], &[], true));
        assert!(!b(&[], &[], false));
        assert!(b(&[("Cache", "")], &[], true));
    }

    proptest! {
        #[test]
        fn header_always_beats_query(
            alias_h in prop::sample::select(names::TITLE.to_vec()),
            alias_q in prop::sample::select(names::TITLE.to_vec()),
            h in "[!-~]([ -~]{0,30}[!-~])?",
            q in "[!-~]{1,30}",
        ) {
            prop_assert_eq!(get(&[(&canonical(alias_h), &h)], &[(alias_q, &q)], names::TITLE), Some(h));
        }

        #[test]
        fn query_only_matches_lowercase(alias in prop::sample::select(names::TITLE.to_vec()), v in "[a-z]{1,10}") {
            prop_assert_eq!(get(&[], &[(alias, &v)], names::TITLE), Some(v.clone()));
            let upper = alias.to_ascii_uppercase();
            prop_assert_eq!(get(&[], &[(&upper, &v)], names::TITLE), None);
        }

        #[test]
        fn rfc9218_values_never_set_priority(n in 0u8..10, suffix in prop::option::of(prop::sample::select(vec!["i", "0", "7"])), spaces in "[ \t]{0,3}") {
            let value = match suffix {
                Some(s) => format!("u={n},{spaces}{s}"),
                None => format!("u={n}"),
            };
            prop_assert_eq!(publish_ok(&[("Priority", &value)], &[]).priority, 0);
        }

        #[test]
        fn bool_values(v in "[A-Za-z0-9]{1,6}", default in prop::bool::ANY) {
            let headers = header_map(&[("X-Poll", &v)]);
            let src = ParamSource { headers: &headers, query: &[] };
            let expected = ["1", "yes", "true"].contains(&v.to_ascii_lowercase().as_str());
            prop_assert_eq!(src.get_bool(names::POLL, default), expected);
        }
    }
}
