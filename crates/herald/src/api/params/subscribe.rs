//! The subscribe parameters (ntfy's `parseSubscribeParams`): `since=`, `poll`,
//! `scheduled` and the filters (https://docs.ntfy.sh/subscribe/api/).

use super::aliases::{ParamSource, names};
use super::publish::{parse_priority, split_list};
use crate::error::ApiError;
use crate::model::id as message_id;
use crate::subscribe::{Filters, SinceParam, SubscribeParams};
use crate::time::parse_go_duration_nanos;

/// Parses a `since` value: keyword, then 12-character message ID, then unix timestamp,
/// then Go duration back from `now` (`10m`, `1h30m`; no `d`). Anything else, including
/// `1d`, is `SINCE_INVALID`.
pub fn parse_since(value: Option<&str>, now: i64) -> Result<SinceParam, ApiError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(SinceParam::Unset);
    };
    match value {
        "all" => return Ok(SinceParam::All),
        "none" => return Ok(SinceParam::None),
        "latest" => return Ok(SinceParam::Latest),
        _ => {}
    }
    if message_id::is_valid(value) {
        return Ok(SinceParam::Id(value.to_string()));
    }
    if let Ok(ts) = value.parse::<i64>() {
        return Ok(SinceParam::Time(ts));
    }
    if let Some(nanos) = parse_go_duration_nanos(value) {
        // Go's `now.Add(-d).Unix()` rounds down; a negative duration points ahead.
        let at = (i128::from(now) * 1_000_000_000 - i128::from(nanos)).div_euclid(1_000_000_000);
        return i64::try_from(at)
            .map(SinceParam::Time)
            .map_err(|_| ApiError::SINCE_INVALID);
    }
    Err(ApiError::SINCE_INVALID)
}

/// Reads the subscribe parameters (ntfy's `parseSubscribeParams`).
pub fn parse_subscribe(src: &ParamSource<'_>, now: i64) -> Result<SubscribeParams, ApiError> {
    let poll = src.get_bool(names::POLL, false);
    let scheduled = src.get_bool(names::SCHEDULED, false);
    let since = parse_since(src.get(names::SINCE).as_deref(), now)?;
    let priorities = split_list(src.get(names::PRIORITY))
        .iter()
        .map(|p| parse_priority(p))
        .collect::<Result<Vec<_>, _>>()?;
    let filters = Filters {
        id: src.get(names::ID),
        message: src.get(names::MESSAGE),
        title: src.get(names::TITLE),
        priorities,
        tags: split_list(src.get(names::TAGS)),
    };
    Ok(SubscribeParams {
        poll,
        since,
        scheduled,
        filters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::params::test_support::*;
    use crate::model::{EventKind, Message};
    use proptest::prelude::*;

    #[test]
    fn since_parsing_order() {
        let since = |v: &str| parse_since(Some(v), NOW);
        assert_eq!(since(""), Ok(SinceParam::Unset));
        assert_eq!(parse_since(None, NOW), Ok(SinceParam::Unset));
        assert_eq!(since("all"), Ok(SinceParam::All));
        assert_eq!(since("none"), Ok(SinceParam::None));
        assert_eq!(since("latest"), Ok(SinceParam::Latest));
        assert_eq!(
            since("hwQ2YpKdmg00"),
            Ok(SinceParam::Id("hwQ2YpKdmg00".into()))
        );
        // Twelve digits are a message ID, not a timestamp.
        assert_eq!(
            since("163552874100"),
            Ok(SinceParam::Id("163552874100".into()))
        );
        assert_eq!(since("1635528741"), Ok(SinceParam::Time(1_635_528_741)));
        assert_eq!(since("0"), Ok(SinceParam::Time(0)));
        assert_eq!(since("10m"), Ok(SinceParam::Time(NOW - 600)));
        assert_eq!(since("1h30m"), Ok(SinceParam::Time(NOW - 5400)));
        assert_eq!(since("1.5s"), Ok(SinceParam::Time(NOW - 2)));
        assert_eq!(since("-1h"), Ok(SinceParam::Time(NOW + 3600)));
        for bad in [
            "1d",
            "ALL",
            "yesterday",
            "hwQ2YpKdmg0",
            "hwQ2YpKdmg00x",
            "10 m",
            "hwQ2YpKdmg-0",
        ] {
            assert_eq!(since(bad), Err(ApiError::SINCE_INVALID), "{bad}");
        }
    }

    #[test]
    fn subscribe_aliases() {
        for alias in names::POLL {
            assert!(subscribe(&[], &[(alias, "1")]).unwrap().poll, "{alias}");
            assert!(
                subscribe(&[(&canonical(alias), "yes")], &[]).unwrap().poll,
                "{alias}"
            );
        }
        for alias in names::SCHEDULED {
            assert!(
                subscribe(&[], &[(alias, "true")]).unwrap().scheduled,
                "{alias}"
            );
            assert!(
                subscribe(&[(&canonical(alias), "1")], &[])
                    .unwrap()
                    .scheduled,
                "{alias}"
            );
        }
        for alias in names::SINCE {
            assert_eq!(
                subscribe(&[], &[(alias, "all")]).unwrap().since,
                SinceParam::All
            );
            assert_eq!(
                subscribe(&[(&canonical(alias), "none")], &[])
                    .unwrap()
                    .since,
                SinceParam::None
            );
        }
        type Getter = fn(&Filters) -> String;
        let filter_cases: [(&[&str], &str, Getter); 5] = [
            (names::ID, "hwQ2YpKdmg00", |f| {
                f.id.clone().unwrap_or_default()
            }),
            (names::MESSAGE, "hi there", |f| {
                f.message.clone().unwrap_or_default()
            }),
            (names::TITLE, "t1", |f| f.title.clone().unwrap_or_default()),
            (names::PRIORITY, "high,5", |f| format!("{:?}", f.priorities)),
            (names::TAGS, "a, b", |f| f.tags.join("|")),
        ];
        let expected_for = |v: &str| match v {
            "high,5" => "[4, 5]".to_string(),
            "a, b" => "a|b".to_string(),
            other => other.to_string(),
        };
        for (aliases, value, field) in filter_cases {
            for alias in aliases {
                let via_query = subscribe(&[], &[(alias, value)]).unwrap();
                assert_eq!(
                    field(&via_query.filters),
                    expected_for(value),
                    "query {alias}"
                );
                let via_header = subscribe(&[(&canonical(alias), value)], &[]).unwrap();
                assert_eq!(
                    field(&via_header.filters),
                    expected_for(value),
                    "header {alias}"
                );
            }
        }
    }

    #[test]
    fn subscribe_defaults_and_errors() {
        let s = subscribe(&[], &[]).unwrap();
        assert_eq!(
            s,
            SubscribeParams {
                poll: false,
                since: SinceParam::Unset,
                scheduled: false,
                filters: Filters::default(),
            }
        );
        assert!(s.filters.is_empty());
        assert_eq!(
            subscribe(&[], &[("p", "1,7")]),
            Err(ApiError::PRIORITY_INVALID)
        );
        assert_eq!(
            subscribe(&[], &[("since", "1d")]),
            Err(ApiError::SINCE_INVALID)
        );
        // `since` is checked before the filters.
        assert_eq!(
            subscribe(&[], &[("since", "1d"), ("p", "9")]),
            Err(ApiError::SINCE_INVALID)
        );
        assert!(
            subscribe(&[("Priority", "u=3, i")], &[])
                .unwrap()
                .filters
                .priorities
                .is_empty()
        );
    }

    fn message(priority: u8, tags: &[&str]) -> Message {
        let mut m = Message::new(EventKind::Message, "t");
        m.id = "hwQ2YpKdmg00".into();
        m.message = "hello".into();
        m.title = "title".into();
        m.priority = priority;
        m.tags = tags.iter().map(|t| t.to_string()).collect();
        m
    }

    #[test]
    fn filters_pass() {
        let all = Filters::default();
        assert!(all.pass(&message(0, &[])));

        let prio = Filters {
            priorities: vec![3, 5],
            ..Filters::default()
        };
        assert!(prio.pass(&message(0, &[])), "unset counts as 3");
        assert!(prio.pass(&message(3, &[])));
        assert!(prio.pass(&message(5, &[])));
        assert!(!prio.pass(&message(4, &[])));

        let tags = Filters {
            tags: vec!["a".into(), "b".into()],
            ..Filters::default()
        };
        assert!(tags.pass(&message(0, &["b", "c", "a"])));
        assert!(!tags.pass(&message(0, &["a"])));
        assert!(!tags.pass(&message(0, &["A", "B"])));

        let exact = Filters {
            id: Some("hwQ2YpKdmg00".into()),
            message: Some("hello".into()),
            title: Some("title".into()),
            ..Filters::default()
        };
        assert!(exact.pass(&message(0, &[])));
        let mut other = message(0, &[]);
        other.title = "Title".into();
        assert!(!exact.pass(&other));
        let mut other = message(0, &[]);
        other.message = "hello ".into();
        assert!(!exact.pass(&other));
        let mut other = message(0, &[]);
        other.id = "xxxxxxxxxxxx".into();
        assert!(!exact.pass(&other));

        // Non-content events always pass; delete/clear events are filtered.
        for kind in [
            EventKind::Open,
            EventKind::Keepalive,
            EventKind::PollRequest,
        ] {
            assert!(prio.pass(&Message::new(kind, "t")), "{kind:?}");
            assert!(exact.pass(&Message::new(kind, "t")), "{kind:?}");
        }
        for kind in [EventKind::MessageDelete, EventKind::MessageClear] {
            let mut m = Message::new(kind, "t");
            m.priority = 4;
            assert!(!prio.pass(&m), "{kind:?}");
            m.priority = 0;
            assert!(prio.pass(&m), "{kind:?}");
        }
    }

    proptest! {
        #[test]
        fn since_timestamps_and_durations(ts in 0i64..100_000_000_000, h in 0i64..1000, m in 0i64..60) {
            prop_assert_eq!(parse_since(Some(&ts.to_string()), NOW), Ok(SinceParam::Time(ts)));
            prop_assert_eq!(
                parse_since(Some(&format!("{h}h{m}m")), NOW),
                Ok(SinceParam::Time(NOW - h * 3600 - m * 60))
            );
        }

        #[test]
        fn since_message_ids(id in "[A-Za-z0-9]{12}") {
            let parsed = parse_since(Some(&id), NOW);
            if ["all", "none", "latest"].contains(&id.as_str()) {
                prop_assert!(parsed.is_ok());
            } else {
                prop_assert_eq!(parsed, Ok(SinceParam::Id(id)));
            }
        }

        #[test]
        fn since_never_panics(s in "\\PC{0,30}") {
            let _ = parse_since(Some(&s), NOW);
        }
    }
}
