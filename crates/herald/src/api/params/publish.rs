//! The publish parameters of a request (ntfy's `parsePublishParams`), validated into
//! [`PublishParams`] in ntfy's order of checks (https://docs.ntfy.sh/publish/).

use axum::http::header;

use super::aliases::{ParamSource, names};
use crate::api::actions::parse_actions;
use crate::error::ApiError;
use crate::model::{Action, topic};
use crate::time::parse_future_time;

/// Parses a priority: `1`–`5` or `min`, `low`, `default`, `high`, `max`/`urgent` in any
/// case; empty means "not set" (0).
pub fn parse_priority(value: &str) -> Result<u8, ApiError> {
    match value.trim().to_lowercase().as_str() {
        "" => Ok(0),
        "1" | "min" => Ok(1),
        "2" | "low" => Ok(2),
        "3" | "default" => Ok(3),
        "4" | "high" => Ok(4),
        "5" | "max" | "urgent" => Ok(5),
        _ => Err(ApiError::PRIORITY_INVALID),
    }
}

/// A comma-separated list, entries trimmed, empty entries dropped.
pub(super) fn split_list(value: Option<String>) -> Vec<String> {
    value
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

use crate::core::rules::{check_due, is_http_url};

/// Everything a publish request may say besides its topic and body, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishParams {
    /// `message=`/`X-Message`, with literal `\n` turned into newlines. The body, if
    /// non-empty, takes precedence; that decision is the caller's.
    pub message: Option<String>,
    pub title: String,
    /// 1..=5, or 0 when not set.
    pub priority: u8,
    pub tags: Vec<String>,
    /// Delivery time as an absolute unix second, already within the allowed window.
    pub delay: Option<i64>,
    pub actions: Vec<Action>,
    pub click: String,
    pub icon: String,
    /// External attachment URL (`http://` or `https://`).
    pub attach: Option<String>,
    /// Attachment name; its presence also means "the body is an attachment".
    pub filename: Option<String>,
    /// Render as Markdown (`content_type: text/markdown`).
    pub markdown: bool,
    /// Store the message (default true). False for poll requests.
    pub cache: bool,
    /// Forward to Firebase (default true). False for UnifiedPush messages.
    pub firebase: bool,
    /// UnifiedPush message: body kept verbatim or base64-encoded if binary.
    pub unifiedpush: bool,
    /// Set for iOS poll requests (a `poll_request` event, never cached).
    pub poll_id: Option<String>,
    /// From the headers or query only; a sequence ID in the path is the caller's.
    pub sequence_id: Option<String>,
    /// `X-Template` (ntfy's `tpl`): inline templates or a named template file.
    pub(crate) template: Option<crate::template::Mode>,
    /// In inline-template mode, the raw `X-Priority` (a template, parsed after
    /// rendering); `priority` is then 0.
    pub(crate) priority_template: Option<String>,
    /// `X-Email`: also send the message to this address (validated).
    pub email: Option<String>,
}

/// Bounds for scheduled delivery (ntfy's `message-delay-limit` and its minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    /// A delay must be at least this many seconds from now.
    pub delay_min_secs: i64,
    /// A delay may be at most this many seconds from now.
    pub delay_max_secs: i64,
    /// An SMTP relay is configured (`smtp-sender-addr`): `X-Email` is allowed.
    pub email_enabled: bool,
}

impl Default for PublishLimits {
    fn default() -> Self {
        PublishLimits {
            delay_min_secs: 10,
            delay_max_secs: 3 * 24 * 3600,
            email_enabled: false,
        }
    }
}

/// Reads and validates the publish parameters (ntfy's `parsePublishParams`), failing
/// with the first error in ntfy's order.
///
/// herald has no phone calls yet, so any `call` parameter is rejected with ntfy's
/// "not enabled" error, as is `email` without an SMTP relay. As in
/// ntfy, a UnifiedPush message is not forwarded to Firebase, and a poll request is
/// neither cached nor treated as UnifiedPush.
pub fn parse_publish(
    src: &ParamSource<'_>,
    limits: &PublishLimits,
    now: i64,
) -> Result<PublishParams, ApiError> {
    // Only the headers a parameter is named after, looked at once each (the
    // request's own, `all`, for the few read by their HTTP meaning).
    let all = src;
    if src.is_bare() {
        // No parameter at all (most publishes): every lookup below would miss, and
        // the filtered map below is not worth building.
        return Ok(no_parameters(all));
    }
    let headers = super::aliases::publish_headers(src.headers);
    let src = &ParamSource {
        headers: &headers,
        query: src.query,
    };
    let mut cache = src.get_bool(names::CACHE, true);
    let mut firebase = src.get_bool(names::FIREBASE, true);
    let title = src.get(names::TITLE).unwrap_or_default();
    let click = src.get(names::CLICK).unwrap_or_default();
    let icon = src.get(names::ICON).unwrap_or_default();
    let filename = src.get(names::FILENAME);
    let attach = src.get(names::ATTACH);
    if attach.as_deref().is_some_and(|url| !is_http_url(url)) {
        return Err(ApiError::ATTACHMENT_URL_INVALID);
    }
    if !icon.is_empty() && !is_http_url(&icon) {
        return Err(ApiError::ICON_URL_INVALID);
    }
    let mut email = src.get(names::EMAIL).filter(|e| !e.is_empty());
    if let Some(address) = &email {
        if !limits.email_enabled {
            return Err(ApiError::EMAIL_DISABLED);
        }
        // `yes` means "my account's address" (ntfy v2.25); herald keeps no
        // addresses for users, so it is refused like an invalid address.
        if !crate::email::is_valid_address(address) {
            return Err(ApiError::EMAIL_ADDRESS_INVALID);
        }
    }
    if src.get(names::CALL).is_some() {
        return Err(ApiError::PHONE_CALLS_DISABLED);
    }
    let template = src
        .get(names::TEMPLATE)
        .and_then(|t| crate::template::Mode::parse(&t));
    let inline = template == Some(crate::template::Mode::Inline);
    // In inline-template mode the message and priority are templates: `\n` is
    // replaced after rendering and the priority parsed then (as ntfy).
    let message = src
        .get(names::MESSAGE)
        .map(|m| if inline { m } else { m.replace("\\n", "\n") });
    let (priority, priority_template) = if inline {
        (0, src.get(names::PRIORITY).filter(|p| !p.is_empty()))
    } else {
        (
            parse_priority(&src.get(names::PRIORITY).unwrap_or_default())?,
            None,
        )
    };
    let tags = split_list(src.get(names::TAGS));
    let delay = match src.get(names::DELAY) {
        None => None,
        Some(value) => {
            if !cache {
                return Err(ApiError::DELAY_NO_CACHE);
            }
            if email.is_some() {
                return Err(ApiError::DELAY_NO_EMAIL);
            }
            let at = parse_future_time(&value, now)?;
            Some(check_due(
                at,
                now,
                limits.delay_min_secs,
                limits.delay_max_secs,
            )?)
        }
    };
    let actions = match src.get(names::ACTIONS) {
        Some(value) => parse_actions(&value)?,
        None => Vec::new(),
    };
    let markdown = src.get_bool(names::MARKDOWN, false)
        || src
            .get(names::CONTENT_TYPE)
            .is_some_and(|ct| is_markdown_content_type(&ct));
    let mut unifiedpush = src.get_bool(names::UNIFIEDPUSH, false) || is_aes128gcm(all);
    if unifiedpush {
        firebase = false;
    }
    let poll_id = src.get(names::POLL_ID);
    if poll_id.is_some() {
        unifiedpush = false;
        cache = false;
        email = None;
    }
    let sequence_id = src.get(names::SEQUENCE_ID);
    if sequence_id
        .as_deref()
        .is_some_and(|sid| !topic::is_valid_name(sid))
    {
        return Err(ApiError::SEQUENCE_ID_INVALID);
    }
    Ok(PublishParams {
        message,
        title,
        priority,
        tags,
        delay,
        actions,
        click,
        icon,
        attach,
        filename,
        markdown,
        cache,
        firebase,
        unifiedpush,
        poll_id,
        sequence_id,
        template,
        priority_template,
        email,
    })
}

/// What [`parse_publish`] finds in a request that names no parameter, neither as a
/// header nor in its query: the defaults, and UnifiedPush when the body is
/// `Content-Encoding: aes128gcm`.
fn no_parameters(all: &ParamSource<'_>) -> PublishParams {
    let unifiedpush = is_aes128gcm(all);
    PublishParams {
        message: None,
        title: String::new(),
        priority: 0,
        tags: Vec::new(),
        delay: None,
        actions: Vec::new(),
        click: String::new(),
        icon: String::new(),
        attach: None,
        filename: None,
        markdown: false,
        cache: true,
        firebase: !unifiedpush,
        unifiedpush,
        poll_id: None,
        sequence_id: None,
        template: None,
        priority_template: None,
        email: None,
    }
}

/// A body encrypted for UnifiedPush (RFC 8291), whatever the parameters say.
fn is_aes128gcm(all: &ParamSource<'_>) -> bool {
    all.headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"aes128gcm"))
}

/// `text/markdown`, ignoring case and any `; charset=...` parameters.
fn is_markdown_content_type(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/markdown"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::params::test_support::*;

    /// The answer without any parameter is the one every lookup missing gives.
    #[test]
    fn no_parameters_are_the_lookups_defaults() {
        for headers in [
            &[][..],
            &[("Host", "x"), ("Content-Length", "3")][..],
            &[("Content-Encoding", " AES128GCM ")][..],
            &[("Content-Encoding", "gzip")][..],
        ] {
            let all = header_map(headers);
            let none = Vec::new();
            let src = ParamSource {
                headers: &all,
                query: &none,
            };
            // The full lookup, forced by an ignored query parameter.
            let forced = query(&[("ignored", "1")]);
            let full = parse_publish(
                &ParamSource {
                    headers: &all,
                    query: &forced,
                },
                &PublishLimits::default(),
                NOW,
            );
            assert_eq!(
                parse_publish(&src, &PublishLimits::default(), NOW),
                full,
                "{headers:?}"
            );
            assert_eq!(Ok(no_parameters(&src)), full, "{headers:?}");
        }
    }

    #[test]
    fn publish_defaults() {
        let p = publish_ok(&[], &[]);
        assert_eq!(
            p,
            PublishParams {
                message: None,
                title: String::new(),
                priority: 0,
                tags: vec![],
                delay: None,
                actions: vec![],
                click: String::new(),
                icon: String::new(),
                attach: None,
                filename: None,
                markdown: false,
                cache: true,
                firebase: true,
                unifiedpush: false,
                poll_id: None,
                sequence_id: None,
                template: None,
                priority_template: None,
                email: None,
            }
        );
    }

    #[test]
    fn every_string_alias_works_as_header_and_query() {
        type Field = fn(&PublishParams) -> Option<String>;
        let fields: [(&[&str], &str, Field); 8] = [
            (names::MESSAGE, "hello", |p| p.message.clone()),
            (names::TITLE, "a title", |p| Some(p.title.clone())),
            (names::CLICK, "myapp://x", |p| Some(p.click.clone())),
            (names::ATTACH, "https://e.example/f.jpg", |p| {
                p.attach.clone()
            }),
            (names::FILENAME, "f.txt", |p| p.filename.clone()),
            (names::ICON, "https://e.example/i.png", |p| {
                Some(p.icon.clone())
            }),
            (names::POLL_ID, "abc", |p| p.poll_id.clone()),
            (names::SEQUENCE_ID, "my-seq_1", |p| p.sequence_id.clone()),
        ];
        for (aliases, value, field) in fields {
            for alias in aliases {
                let via_header = publish_ok(&[(&canonical(alias), value)], &[]);
                assert_eq!(field(&via_header).as_deref(), Some(value), "header {alias}");
                let via_query = publish_ok(&[], &[(alias, value)]);
                assert_eq!(field(&via_query).as_deref(), Some(value), "query {alias}");
            }
        }
    }

    #[test]
    fn every_other_alias_works() {
        for alias in names::PRIORITY {
            assert_eq!(
                publish_ok(&[(&canonical(alias), "max")], &[]).priority,
                5,
                "{alias}"
            );
            assert_eq!(publish_ok(&[], &[(alias, "2")]).priority, 2, "{alias}");
        }
        for alias in names::TAGS {
            assert_eq!(
                publish_ok(&[], &[(alias, "a,b")]).tags,
                ["a", "b"],
                "{alias}"
            );
            assert_eq!(
                publish_ok(&[(&canonical(alias), "a")], &[]).tags,
                ["a"],
                "{alias}"
            );
        }
        for alias in names::DELAY {
            assert_eq!(
                publish_ok(&[], &[(alias, "30m")]).delay,
                Some(NOW + 1800),
                "{alias}"
            );
            assert_eq!(
                publish_ok(&[(&canonical(alias), "1h")], &[]).delay,
                Some(NOW + 3600),
                "{alias}"
            );
        }
        for alias in names::ACTIONS {
            let p = publish_ok(&[], &[(alias, "view, Open, https://x")]);
            assert_eq!(p.actions.len(), 1, "{alias}");
            let p = publish_ok(&[(&canonical(alias), "view, Open, https://x")], &[]);
            assert_eq!(p.actions.len(), 1, "{alias}");
        }
        for alias in names::CACHE {
            assert!(!publish_ok(&[], &[(alias, "no")]).cache, "{alias}");
            assert!(
                !publish_ok(&[(&canonical(alias), "no")], &[]).cache,
                "{alias}"
            );
        }
        for alias in names::FIREBASE {
            assert!(!publish_ok(&[], &[(alias, "no")]).firebase, "{alias}");
            assert!(
                !publish_ok(&[(&canonical(alias), "0")], &[]).firebase,
                "{alias}"
            );
        }
        for alias in names::MARKDOWN {
            assert!(publish_ok(&[], &[(alias, "yes")]).markdown, "{alias}");
            assert!(
                publish_ok(&[(&canonical(alias), "1")], &[]).markdown,
                "{alias}"
            );
        }
        for alias in names::UNIFIEDPUSH {
            assert!(publish_ok(&[], &[(alias, "1")]).unifiedpush, "{alias}");
            assert!(
                publish_ok(&[(&canonical(alias), "true")], &[]).unifiedpush,
                "{alias}"
            );
        }
        for alias in names::EMAIL {
            assert_eq!(
                publish(&[], &[(alias, "a@b.c")]),
                Err(ApiError::EMAIL_DISABLED)
            );
            assert_eq!(
                publish(&[(&canonical(alias), "yes")], &[]),
                Err(ApiError::EMAIL_DISABLED)
            );
        }
        for alias in names::CALL {
            assert_eq!(
                publish(&[], &[(alias, "yes")]),
                Err(ApiError::PHONE_CALLS_DISABLED)
            );
            assert_eq!(
                publish(&[(&canonical(alias), "+1234")], &[]),
                Err(ApiError::PHONE_CALLS_DISABLED)
            );
        }
    }

    #[test]
    fn template_modes() {
        use crate::template::Mode;
        for alias in names::TEMPLATE {
            let p = publish_ok(&[], &[(alias, "yes"), ("p", "{{.p}}"), ("m", "a\\nb")]);
            assert_eq!(p.template, Some(Mode::Inline));
            assert_eq!(p.priority, 0);
            assert_eq!(p.priority_template.as_deref(), Some("{{.p}}"));
            assert_eq!(p.message.as_deref(), Some("a\\nb"));
            let p = publish_ok(&[(&canonical(alias), "github")], &[]);
            assert_eq!(p.template, Some(Mode::Named("github".into())));
        }
        for off in ["no", "false", "0", "NO"] {
            assert_eq!(
                publish_ok(&[("X-Template", off)], &[]).template,
                None,
                "{off}"
            );
        }
    }

    #[test]
    fn priorities() {
        for (input, expected) in [
            ("1", 1),
            ("min", 1),
            ("2", 2),
            ("low", 2),
            ("3", 3),
            ("default", 3),
            ("4", 4),
            ("high", 4),
            ("HIGH", 4),
            ("5", 5),
            ("max", 5),
            ("urgent", 5),
            ("Urgent", 5),
        ] {
            assert_eq!(
                publish_ok(&[("X-Priority", input)], &[]).priority,
                expected,
                "{input}"
            );
        }
        for bad in ["0", "6", "-1", "highest", "4.0", "u=4"] {
            assert_eq!(
                publish(&[], &[("p", bad)]),
                Err(ApiError::PRIORITY_INVALID),
                "{bad}"
            );
        }
    }

    #[test]
    fn tags_and_message() {
        let p = publish_ok(&[("Tags", " warning, ,skull ,,")], &[]);
        assert_eq!(p.tags, ["warning", "skull"]);
        let p = publish_ok(&[], &[("m", r"line one\nline two")]);
        assert_eq!(p.message.as_deref(), Some("line one\nline two"));
    }

    #[test]
    fn url_validation() {
        assert_eq!(
            publish(&[("Attach", "ftp://x/y")], &[]),
            Err(ApiError::ATTACHMENT_URL_INVALID)
        );
        assert_eq!(
            publish(&[("Attach", "HTTPS://x/y")], &[]),
            Err(ApiError::ATTACHMENT_URL_INVALID)
        );
        assert_eq!(
            publish(&[("Icon", "x.png")], &[]),
            Err(ApiError::ICON_URL_INVALID)
        );
        assert!(
            publish(
                &[("Attach", "http://x/y"), ("Icon", "https://x/i.png")],
                &[]
            )
            .is_ok()
        );
    }

    #[test]
    fn delay_rules() {
        assert_eq!(publish_ok(&[("Delay", "30m")], &[]).delay, Some(NOW + 1800));
        assert_eq!(publish_ok(&[("In", "10s")], &[]).delay, Some(NOW + 10));
        assert_eq!(
            publish_ok(&[("At", "3pm")], &[]).delay,
            Some(NOW + 3 * 3600 + 1800)
        );
        assert_eq!(
            publish_ok(&[("X-At", &(NOW + 60).to_string())], &[]).delay,
            Some(NOW + 60)
        );
        assert_eq!(
            publish_ok(&[("X-Delay", "3 days")], &[]).delay,
            Some(NOW + 3 * 86_400)
        );
        assert_eq!(
            publish(&[("Delay", "9s")], &[]),
            Err(ApiError::DELAY_TOO_SMALL)
        );
        assert_eq!(
            publish(&[("Delay", "0")], &[]),
            Err(ApiError::DELAY_TOO_SMALL)
        );
        assert_eq!(
            publish(&[("Delay", "-1h")], &[]),
            Err(ApiError::DELAY_TOO_SMALL)
        );
        assert_eq!(
            publish(&[("Delay", "3 days"), ("X-In", "1s")], &[]).map(|p| p.delay),
            Ok(Some(NOW + 3 * 86_400))
        );
        assert_eq!(
            publish(&[("Delay", "73h")], &[]),
            Err(ApiError::DELAY_TOO_LARGE)
        );
        assert_eq!(
            publish(&[("Delay", "later")], &[]),
            Err(ApiError::DELAY_CANNOT_PARSE)
        );
        assert_eq!(
            publish(&[("Delay", "1600000000")], &[]),
            Err(ApiError::DELAY_CANNOT_PARSE)
        );
        assert_eq!(
            publish(&[("Delay", "30m"), ("Cache", "no")], &[]),
            Err(ApiError::DELAY_NO_CACHE)
        );
        // Custom limits.
        let headers = header_map(&[("Delay", "2h")]);
        let src = ParamSource {
            headers: &headers,
            query: &[],
        };
        let limits = PublishLimits {
            delay_min_secs: 0,
            delay_max_secs: 3600,
            ..PublishLimits::default()
        };
        assert_eq!(
            parse_publish(&src, &limits, NOW),
            Err(ApiError::DELAY_TOO_LARGE)
        );
    }

    #[test]
    fn email_with_a_relay() {
        let limits = PublishLimits {
            email_enabled: true,
            ..PublishLimits::default()
        };
        let parse = |headers: &[(&str, &str)]| {
            let headers = header_map(headers);
            let src = ParamSource {
                headers: &headers,
                query: &[],
            };
            parse_publish(&src, &limits, NOW)
        };
        for alias in names::EMAIL {
            let p = parse(&[(&canonical(alias), "phil@example.com")]).unwrap();
            assert_eq!(p.email.as_deref(), Some("phil@example.com"), "{alias}");
        }
        assert_eq!(parse(&[]).unwrap().email, None);
        assert_eq!(parse(&[("Email", "")]).unwrap().email, None);
        for bad in ["phil", "yes", "a b@c.d", "a@b,c@d"] {
            assert_eq!(
                parse(&[("Email", bad)]),
                Err(ApiError::EMAIL_ADDRESS_INVALID),
                "{bad}"
            );
        }
        assert_eq!(
            parse(&[("Email", "phil@example.com"), ("Delay", "1h")]),
            Err(ApiError::DELAY_NO_EMAIL)
        );
        // A poll request never goes out by mail.
        let p = parse(&[("Email", "phil@example.com"), ("Poll-ID", "x")]).unwrap();
        assert_eq!(p.email, None);
    }

    #[test]
    fn validation_order_matches_ntfy() {
        // Attachment URL before icon, icon before e-mail, e-mail before priority, ...
        assert_eq!(
            publish(&[("Attach", "x"), ("Icon", "y")], &[]),
            Err(ApiError::ATTACHMENT_URL_INVALID)
        );
        assert_eq!(
            publish(&[("Icon", "y"), ("Email", "a@b.c")], &[]),
            Err(ApiError::ICON_URL_INVALID)
        );
        assert_eq!(
            publish(&[("Email", "a@b.c"), ("Call", "yes")], &[]),
            Err(ApiError::EMAIL_DISABLED)
        );
        assert_eq!(
            publish(&[("Priority", "9"), ("Delay", "x")], &[]),
            Err(ApiError::PRIORITY_INVALID)
        );
        assert_eq!(
            publish(&[("Delay", "x"), ("Actions", "bad")], &[]),
            Err(ApiError::DELAY_CANNOT_PARSE)
        );
        assert_eq!(
            publish(&[("Actions", "bad"), ("SID", "a/b")], &[]).map_err(|e| e.code),
            Err(40018)
        );
        assert_eq!(
            publish(&[("SID", "a/b")], &[]),
            Err(ApiError::SEQUENCE_ID_INVALID)
        );
        assert_eq!(
            publish(&[("SID", &"x".repeat(65))], &[]),
            Err(ApiError::SEQUENCE_ID_INVALID)
        );
    }

    #[test]
    fn actions_errors_carry_detail() {
        let err = publish(&[("Actions", "view, Open")], &[]).unwrap_err();
        assert_eq!(err.code, 40018);
        assert!(err.error.contains("parameter 'url' is required"), "{err}");
    }

    #[test]
    fn markdown_sources() {
        assert!(publish_ok(&[("Content-Type", "text/markdown")], &[]).markdown);
        assert!(publish_ok(&[("Content-Type", "Text/Markdown; charset=utf-8")], &[]).markdown);
        assert!(publish_ok(&[], &[("content-type", "text/markdown")]).markdown);
        assert!(publish_ok(&[], &[("content_type", "text/markdown")]).markdown);
        assert!(!publish_ok(&[("Content-Type", "text/plain")], &[]).markdown);
        assert!(!publish_ok(&[("Markdown", "no")], &[]).markdown);
    }

    #[test]
    fn unifiedpush_and_poll_side_effects() {
        let p = publish_ok(&[("Content-Encoding", "aes128gcm")], &[]);
        assert!(p.unifiedpush);
        assert!(!p.firebase);
        let p = publish_ok(&[], &[("up", "1")]);
        assert!(p.unifiedpush && !p.firebase && p.cache);
        let p = publish_ok(&[("X-Poll-ID", "abc"), ("UP", "1")], &[]);
        assert_eq!(p.poll_id.as_deref(), Some("abc"));
        assert!(!p.unifiedpush && !p.cache);
        assert!(!publish_ok(&[("Content-Encoding", "gzip")], &[]).unifiedpush);
    }
}
