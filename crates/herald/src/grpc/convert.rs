//! `herald.v1` messages to and from the core's domain types, with the HTTP API's
//! validation rules in ntfy's order of checks (`api::params`, `core::rules`), so a
//! publish is refused over gRPC exactly when, and with the code, it would be over HTTP.

use crate::api::params::parse_since;
use crate::core::publish::{EmailRequest, MessageDraft, POLL_REQUEST_MESSAGE};
use crate::core::rules::{DELAY_MIN_SECS, check_due, is_http_url};
use crate::error::ApiError;
use crate::model::{Action, Attachment, EventKind, Message, topic};
use crate::subscribe::{Filters, SubscribeParams};
use crate::time::parse_future_time;

use super::proto;

/// What the server's options allow a publish.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DraftLimits {
    /// `message-size-limit`: a message this long or longer is refused.
    pub size_limit: usize,
    /// `message-delay-limit`, in seconds.
    pub delay_max_secs: i64,
    /// Whether an SMTP relay is set (`email` is refused without one).
    pub email_enabled: bool,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The draft `req` describes (its topic is the caller's), checked as HTTP checks a
/// publish's parameters (ntfy's `parsePublishParams`), then its text.
pub(crate) fn draft(
    req: proto::PublishRequest,
    limits: DraftLimits,
    now: i64,
) -> Result<MessageDraft, ApiError> {
    let attach = non_empty(req.attach);
    if attach.as_deref().is_some_and(|url| !is_http_url(url)) {
        return Err(ApiError::ATTACHMENT_URL_INVALID);
    }
    if !req.icon.is_empty() && !is_http_url(&req.icon) {
        return Err(ApiError::ICON_URL_INVALID);
    }
    let priority = u8::try_from(req.priority)
        .ok()
        .filter(|p| *p <= 5)
        .ok_or(ApiError::PRIORITY_INVALID)?;
    let tags = req
        .tags
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    // HTTP's checks of `X-Email`, in its order (api::params).
    let email = non_empty(req.email);
    if let Some(address) = &email {
        if !limits.email_enabled {
            return Err(ApiError::EMAIL_DISABLED);
        }
        if !crate::email::is_valid_address(address) {
            return Err(ApiError::EMAIL_ADDRESS_INVALID);
        }
    }
    let due = match (req.delay.trim(), req.at) {
        ("", 0) => None,
        (delay, at) => {
            if req.no_cache {
                return Err(ApiError::DELAY_NO_CACHE);
            }
            if email.is_some() {
                return Err(ApiError::DELAY_NO_EMAIL);
            }
            let at = match (delay, at) {
                (delay, 0) => parse_future_time(delay, now)?,
                ("", at) => at,
                _ => {
                    return Err(
                        ApiError::DELAY_CANNOT_PARSE.with_detail("give delay or at, not both")
                    );
                }
            };
            Some(check_due(at, now, DELAY_MIN_SECS, limits.delay_max_secs)?)
        }
    };
    let actions = if req.actions.is_empty() {
        Vec::new()
    } else {
        crate::api::actions::parse_actions(&actions_json(&req.actions))?
    };
    let poll_id = non_empty(req.poll_id);
    let sequence_id = non_empty(req.sequence_id);
    if sequence_id
        .as_deref()
        .is_some_and(|sid| !topic::is_valid_name(sid))
    {
        return Err(ApiError::SEQUENCE_ID_INVALID);
    }
    if req.message.len() >= limits.size_limit {
        return Err(
            ApiError::ENTITY_TOO_LARGE.with_detail("message larger than message-size-limit")
        );
    }
    let filename = non_empty(req.filename);
    let attachment = match (attach, filename) {
        (Some(url), name) => Some(Attachment {
            name: name.unwrap_or_else(|| crate::api::publish::attachment_name_from_url(&url)),
            url,
            ..Attachment::default()
        }),
        // A name without a URL would be an upload, which herald does not store.
        (None, Some(_)) => return Err(ApiError::ATTACHMENTS_NOT_ALLOWED),
        (None, None) => None,
    };
    // A poll request is never mailed (as HTTP).
    let email = email.filter(|_| poll_id.is_none()).map(|to| EmailRequest {
        to,
        sender: String::new(),
    });
    let text = if poll_id.is_some() {
        POLL_REQUEST_MESSAGE.to_string()
    } else {
        req.message.trim().to_string()
    };
    Ok(MessageDraft {
        text,
        title: req.title,
        priority,
        tags,
        click: req.click,
        icon: req.icon,
        actions,
        attachment,
        markdown: req.markdown,
        encoding: String::new(),
        cache: !req.no_cache && poll_id.is_none(),
        poll_id,
        due,
        sequence_id,
        // The sender is the caller's, filled in by the service once charged.
        email,
    })
}

/// `actions` in ntfy's JSON form, for the one action parser (`api::actions`): its
/// rules (kinds, required fields, at most three) then apply over gRPC as over HTTP.
fn actions_json(actions: &[proto::Action]) -> String {
    let list: Vec<serde_json::Value> = actions
        .iter()
        .map(|a| {
            let mut o = serde_json::Map::new();
            o.insert("action".into(), a.action.clone().into());
            o.insert("label".into(), a.label.clone().into());
            o.insert("clear".into(), a.clear.into());
            for (key, value) in [
                ("url", &a.url),
                ("method", &a.method),
                ("body", &a.body),
                ("intent", &a.intent),
                ("value", &a.value),
            ] {
                if !value.is_empty() {
                    o.insert(key.into(), value.clone().into());
                }
            }
            for (key, map) in [("headers", &a.headers), ("extras", &a.extras)] {
                if !map.is_empty() {
                    let map: serde_json::Map<String, serde_json::Value> = map
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone().into()))
                        .collect();
                    o.insert(key.into(), map.into());
                }
            }
            serde_json::Value::Object(o)
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// The subscription parameters of `req` (`poll`: a `Poll` call), checked as HTTP's
/// `since=` and filter parameters are.
pub(crate) fn subscribe_params(
    req: &proto::SubscribeRequest,
    poll: bool,
    now: i64,
) -> Result<SubscribeParams, ApiError> {
    let since = parse_since(Some(req.since.trim()), now)?;
    let priorities = req
        .priorities
        .iter()
        .map(|p| match u8::try_from(*p) {
            Ok(p @ 1..=5) => Ok(p),
            _ => Err(ApiError::PRIORITY_INVALID),
        })
        .collect::<Result<Vec<u8>, _>>()?;
    Ok(SubscribeParams {
        poll,
        since,
        scheduled: req.scheduled,
        filters: Filters {
            id: non_empty(req.id.clone()),
            message: non_empty(req.message.clone()),
            title: non_empty(req.title.clone()),
            priorities,
            tags: req
                .tags
                .iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
        },
    })
}

fn event_kind(kind: EventKind) -> proto::EventKind {
    match kind {
        EventKind::Open => proto::EventKind::Open,
        EventKind::Keepalive => proto::EventKind::Keepalive,
        EventKind::Message => proto::EventKind::Message,
        EventKind::MessageDelete => proto::EventKind::MessageDelete,
        EventKind::MessageClear => proto::EventKind::MessageClear,
        EventKind::PollRequest => proto::EventKind::PollRequest,
    }
}

fn action(a: &Action) -> proto::Action {
    proto::Action {
        action: a.action.clone(),
        label: a.label.clone(),
        clear: a.clear,
        url: a.url.clone(),
        method: a.method.clone(),
        headers: a
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        body: a.body.clone(),
        intent: a.intent.clone(),
        extras: a
            .extras
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        value: a.value.clone(),
        id: a.id.clone(),
    }
}

/// An event as `herald.v1.Message`: ntfy's JSON, field for field.
pub(crate) fn message(m: &Message) -> proto::Message {
    proto::Message {
        id: m.id.clone(),
        time: m.time,
        expires: m.expires.unwrap_or(0),
        event: event_kind(m.event) as i32,
        topic: m.topic.clone(),
        message: m.message.clone(),
        title: m.title.clone(),
        priority: i32::from(m.priority),
        tags: m.tags.clone(),
        click: m.click.clone(),
        icon: m.icon.clone(),
        actions: m.actions.iter().map(action).collect(),
        attachment: m.attachment.as_ref().map(|a| proto::Attachment {
            name: a.name.clone(),
            url: a.url.clone(),
            r#type: a.mime_type.clone(),
            size: a.size,
            expires: a.expires,
        }),
        content_type: m.content_type.clone(),
        encoding: m.encoding.clone(),
        poll_id: m.poll_id.clone(),
        sequence_id: m.sequence_id.clone().unwrap_or_else(|| m.id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const LIMITS: DraftLimits = DraftLimits {
        size_limit: 4096,
        delay_max_secs: 3 * 86_400,
        email_enabled: false,
    };

    fn req() -> proto::PublishRequest {
        proto::PublishRequest {
            topic: "t".into(),
            message: " hi \n".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_message() {
        let d = draft(req(), LIMITS, NOW).unwrap();
        assert_eq!(d.text, "hi");
        assert!(d.cache);
        assert_eq!(d.due, None);
    }

    #[test]
    fn http_rules_and_codes() {
        let cases: Vec<(proto::PublishRequest, ApiError)> = vec![
            (
                proto::PublishRequest {
                    priority: 6,
                    ..req()
                },
                ApiError::PRIORITY_INVALID,
            ),
            (
                proto::PublishRequest {
                    priority: -1,
                    ..req()
                },
                ApiError::PRIORITY_INVALID,
            ),
            (
                proto::PublishRequest {
                    attach: "ftp://x".into(),
                    ..req()
                },
                ApiError::ATTACHMENT_URL_INVALID,
            ),
            (
                proto::PublishRequest {
                    icon: "x".into(),
                    ..req()
                },
                ApiError::ICON_URL_INVALID,
            ),
            (
                proto::PublishRequest {
                    delay: "1s".into(),
                    ..req()
                },
                ApiError::DELAY_TOO_SMALL,
            ),
            (
                proto::PublishRequest {
                    delay: "30d".into(),
                    ..req()
                },
                ApiError::DELAY_TOO_LARGE,
            ),
            (
                proto::PublishRequest {
                    delay: "nope".into(),
                    ..req()
                },
                ApiError::DELAY_CANNOT_PARSE,
            ),
            (
                proto::PublishRequest {
                    delay: "1h".into(),
                    no_cache: true,
                    ..req()
                },
                ApiError::DELAY_NO_CACHE,
            ),
            (
                proto::PublishRequest {
                    sequence_id: "a/b".into(),
                    ..req()
                },
                ApiError::SEQUENCE_ID_INVALID,
            ),
            (
                proto::PublishRequest {
                    message: "x".repeat(4096),
                    ..req()
                },
                ApiError::ENTITY_TOO_LARGE,
            ),
            (
                proto::PublishRequest {
                    filename: "f.txt".into(),
                    ..req()
                },
                ApiError::ATTACHMENTS_NOT_ALLOWED,
            ),
            (
                proto::PublishRequest {
                    actions: vec![proto::Action {
                        action: "dance".into(),
                        label: "x".into(),
                        ..Default::default()
                    }],
                    ..req()
                },
                ApiError::ACTIONS_INVALID,
            ),
        ];
        for (r, want) in cases {
            let got = draft(r.clone(), LIMITS, NOW).unwrap_err();
            assert_eq!(got.code, want.code, "{r:?}");
        }
    }

    #[test]
    fn delays_and_attachments() {
        let d = draft(
            proto::PublishRequest {
                delay: "1h".into(),
                ..req()
            },
            LIMITS,
            NOW,
        )
        .unwrap();
        assert_eq!(d.due, Some(NOW + 3600));
        let d = draft(
            proto::PublishRequest {
                at: NOW + 60,
                ..req()
            },
            LIMITS,
            NOW,
        )
        .unwrap();
        assert_eq!(d.due, Some(NOW + 60));
        let d = draft(
            proto::PublishRequest {
                attach: "https://x.org/a/f.jpg".into(),
                ..req()
            },
            LIMITS,
            NOW,
        )
        .unwrap();
        assert_eq!(d.attachment.map(|a| a.name).as_deref(), Some("f.jpg"));
        let a = proto::Action {
            action: "view".into(),
            label: "Open".into(),
            url: "https://x.org".into(),
            ..Default::default()
        };
        let d = draft(
            proto::PublishRequest {
                actions: vec![a],
                ..req()
            },
            LIMITS,
            NOW,
        )
        .unwrap();
        assert_eq!(d.actions.len(), 1);
        assert_eq!(d.actions[0].url, "https://x.org");
        assert!(!d.actions[0].id.is_empty());
    }

    #[test]
    fn subscribe_filters() {
        let r = proto::SubscribeRequest {
            topics: vec!["a".into()],
            since: "all".into(),
            priorities: vec![4, 5],
            tags: vec!["x".into()],
            ..Default::default()
        };
        let p = subscribe_params(&r, false, NOW).unwrap();
        assert_eq!(p.since, crate::subscribe::SinceParam::All);
        assert_eq!(p.filters.priorities, vec![4, 5]);
        let bad = proto::SubscribeRequest {
            priorities: vec![9],
            ..r.clone()
        };
        assert_eq!(
            subscribe_params(&bad, false, NOW).unwrap_err().code,
            ApiError::PRIORITY_INVALID.code
        );
        let bad = proto::SubscribeRequest {
            since: "not-a-time".into(),
            ..r
        };
        assert_eq!(
            subscribe_params(&bad, false, NOW).unwrap_err().code,
            ApiError::SINCE_INVALID.code
        );
    }
}
