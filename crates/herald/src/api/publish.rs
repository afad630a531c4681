//! Publishing: `PUT`/`POST /<topic>[/<sequence_id>]`, `GET /<topic>/publish`, JSON
//! publish to `/`, and the sequence actions (delete, clear).
//!
//! The body rules follow ntfy (docs/COMPATIBILITY.md §2.3): a body shorter than
//! `message-size-limit` that is valid UTF-8 is the message; anything else (or any
//! body with a `Filename`) is an attachment upload, streamed into
//! [`crate::attachment`] (which owns its rules and limits), or ntfy's "attachments
//! not allowed" answer when `attachment-cache-dir` is not set.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;

use super::params::{ParamSource, PublishLimits, parse_json_publish, parse_publish};
use super::{AppState, json_response, parse_topics, query_pairs};
use crate::auth::{Permission, Principal};
use crate::core::publish::{MessageDraft, POLL_REQUEST_MESSAGE, PublishKind, PublishRequest};
use crate::error::ApiError;
use crate::idempotency::{FingerprintBuilder, IdempotencyKey};
use crate::model::{Attachment, now_unix_ms};
use crate::wire::json_line as encode_json_line;

/// Who is publishing, as the dispatcher charged it: the visitor an `X-Email` is
/// charged to, and the address (or user) the mail names as its sender.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    pub visitor: crate::limits::Visitor,
    pub client_ip: std::net::IpAddr,
    pub user: Option<String>,
}

/// `PUT`/`POST /<topic>[/<sid>]` and `GET /<topic>/publish`.
pub async fn publish(
    state: &AppState,
    req: Request,
    topic: &str,
    path_sequence_id: Option<String>,
) -> Result<Response, ApiError> {
    let query = query_pairs(&req);
    let (parts, body) = req.into_parts();
    let anonymous = Principal::anonymous();
    let principal = parts.extensions.get::<Principal>().unwrap_or(&anonymous);
    let request = TopicPublish {
        headers: &parts.headers,
        query: &query,
        topic,
        topic_is_name: false,
        path_sequence_id,
        principal,
        publisher: parts.extensions.get::<Publisher>(),
    };
    publish_to_topic(state, request, |limit| read_body(body, limit))
        .await
        .map(Published::into_response)
}

/// A publish to a topic named by the path, as the dispatcher admitted it.
pub(crate) struct TopicPublish<'a> {
    pub(crate) headers: &'a HeaderMap,
    pub(crate) query: &'a [(String, String)],
    /// The path's topic.
    pub(crate) topic: &'a str,
    /// Whether `topic` was checked as a topic name already (by the listener's direct
    /// path, to route the request): only the reserved names are left to refuse.
    pub(crate) topic_is_name: bool,
    pub(crate) path_sequence_id: Option<String>,
    pub(crate) principal: &'a Principal,
    pub(crate) publisher: Option<&'a Publisher>,
}

/// The publish of `request`, in ntfy's order: the topic, write access, then the body
/// (read by `read` up to the limit it is given) and everything in it. Shared by the
/// router and the listener's direct publish path, which read the body differently.
pub(crate) async fn publish_to_topic<F>(
    state: &AppState,
    request: TopicPublish<'_>,
    read: impl FnOnce(usize) -> F,
) -> Result<Published, ApiError>
where
    F: std::future::Future<Output = Result<BodyBytes, ApiError>>,
{
    let topic = if request.topic_is_name {
        debug_assert!(crate::model::topic::is_valid_name(request.topic));
        allowed_topic(request.topic)?
    } else {
        single_topic(request.topic)?
    };
    state
        .auth
        .authorize(request.principal, &topic, Permission::Write)?;
    let mut limit = state.herald.config().message_size_limit;
    // A templated body is JSON read up to max(limit, 32 KB), as ntfy.
    let src = ParamSource {
        headers: request.headers,
        query: request.query,
    };
    if !src.is_bare()
        && src
            .get(super::params::names::TEMPLATE)
            .and_then(|t| crate::template::Mode::parse(&t))
            .is_some()
    {
        limit = limit.max(crate::template::JSON_BODY_LIMIT);
    }
    let body = read(limit).await?;
    let target = Target {
        topic,
        path_sequence_id: request.path_sequence_id,
    };
    publish_with(
        state,
        request.headers,
        request.query,
        body,
        target,
        request.publisher,
    )
    .await
}

/// `PUT`/`POST /` with a JSON body naming the topic (docs/COMPATIBILITY.md §2.6).
pub async fn publish_json(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let query = query_pairs(&req);
    let limit = state.herald.config().message_size_limit.saturating_mul(2);
    let (parts, body) = req.into_parts();
    let body = read_body(body, limit.saturating_add(1)).await?;
    if !body.complete {
        return Err(ApiError::JSON_TOO_LARGE);
    }
    let json = parse_json_publish(&body.bytes)?;
    // Like ntfy, the JSON fields become headers of the original request (so that
    // e.g. credentials still apply), replacing headers of the same name.
    let mut headers = parts.headers;
    for (name, value) in json.headers.iter() {
        headers.insert(name.clone(), value.clone());
    }
    let topic = single_topic(&json.topic)?;
    let principal = parts
        .extensions
        .get::<Principal>()
        .cloned()
        .unwrap_or_default();
    state
        .auth
        .authorize(&principal, &topic, Permission::Write)?;
    let message = json.message.unwrap_or_default();
    let body = BodyBytes {
        complete: message.len() < state.herald.config().message_size_limit,
        bytes: Bytes::from(message),
        rest: None,
    };
    let publisher = parts.extensions.get::<Publisher>();
    let target = Target {
        topic,
        path_sequence_id: None,
    };
    publish_with(state, &headers, &query, body, target, publisher)
        .await
        .map(Published::into_response)
}

/// Where a publish goes.
pub(super) struct Target {
    pub(super) topic: String,
    pub(super) path_sequence_id: Option<String>,
}

/// The visitor the dispatcher charged this request to (`user:<name>` or
/// `ip:<prefix>`): the scope of its idempotency keys and who its upload is charged to.
pub(super) fn visitor_name(publisher: Option<&Publisher>) -> String {
    publisher
        .map(|p| crate::limits::shared::visitor_name(&p.visitor.key))
        .unwrap_or_default()
}

/// The request's names for an idempotency key (a herald extension): headers, then
/// the query, like ntfy's parameters.
const IDEMPOTENCY_KEY: &[&str] = &["idempotency-key", "x-idempotency-key", "idempotency_key"];

/// Every publish parameter a fingerprint covers: what the request asks for, as sent
/// (a relative `X-Delay` stays the same request when retried later).
const FINGERPRINTED: &[&[&str]] = {
    use super::params::names::*;
    &[
        MESSAGE,
        TITLE,
        PRIORITY,
        TAGS,
        DELAY,
        ACTIONS,
        CLICK,
        ATTACH,
        FILENAME,
        ICON,
        EMAIL,
        CALL,
        TEMPLATE,
        CACHE,
        FIREBASE,
        MARKDOWN,
        CONTENT_TYPE,
        UNIFIEDPUSH,
        POLL_ID,
        SEQUENCE_ID,
    ]
};

/// The request's idempotency key, if it carries one, with the fingerprint of what
/// it publishes: topic, path sequence ID, body and every publish parameter.
/// Keys are per visitor (`publisher`'s, see [`visitor_name`]).
fn idempotency_key(
    src: &ParamSource<'_>,
    target: &Target,
    publisher: Option<&Publisher>,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
    // A request naming no parameter (most) has no key either: one pass over its
    // headers, not one per alias.
    if src.is_bare() {
        return Ok(None);
    }
    let Some(key) = src.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let mut fingerprint = FingerprintBuilder::default();
    fingerprint
        .part("topic", target.topic.as_bytes())
        .part(
            "sid",
            target.path_sequence_id.as_deref().unwrap_or("").as_bytes(),
        )
        .part("body", body);
    for names in FINGERPRINTED {
        let value = src.get(names).unwrap_or_default();
        fingerprint.part(names[0], value.as_bytes());
    }
    IdempotencyKey::new(&visitor_name(publisher), &key, fingerprint.finish())
        .map(Some)
        .map_err(|_| ApiError::IDEMPOTENCY_KEY_INVALID)
}

/// The publish body, read up to the message size limit.
pub(crate) struct BodyBytes {
    pub(crate) bytes: Bytes,
    /// False when the body reached the limit (ntfy then treats it as an attachment).
    pub(crate) complete: bool,
    /// The unread rest of an incomplete body: streamed into an attachment, and
    /// whatever is left drained before answering.
    pub(crate) rest: Option<axum::body::BodyDataStream>,
}

pub(super) async fn read_body(body: Body, limit: usize) -> Result<BodyBytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::body_read_error(&e, ApiError::BAD_REQUEST))?;
        if let Some(data) = frame.data_ref() {
            buf.extend_from_slice(data);
            if buf.len() >= limit {
                // Like ntfy's peek: a body that fills the limit is "too large for a
                // message" (an attachment, or refused).
                return Ok(BodyBytes {
                    bytes: Bytes::from(buf),
                    complete: false,
                    rest: Some(body.into_data_stream()),
                });
            }
        }
    }
    Ok(BodyBytes {
        bytes: Bytes::from(buf),
        complete: true,
        rest: None,
    })
}

/// Most bytes of an over-long body read and thrown away before answering.
const DRAIN_LIMIT: usize = 256 * 1024;

async fn drain(body: &mut axum::body::BodyDataStream, limit: usize) {
    use futures_util::StreamExt;
    let mut drained = 0;
    while drained < limit {
        match body.next().await {
            Some(Ok(data)) => drained += data.len(),
            _ => return,
        }
    }
}

/// Whether the request's principal (set by the dispatcher) may publish to `topic`.
/// A request without one is anonymous.
pub(super) fn authorize_write(
    state: &AppState,
    req: &Request,
    topic: &str,
) -> Result<(), ApiError> {
    let anonymous = Principal::anonymous();
    let principal = req.extensions().get::<Principal>().unwrap_or(&anonymous);
    Ok(state.auth.authorize(principal, topic, Permission::Write)?)
}

/// A valid topic name, unless it is reserved.
fn allowed_topic(topic: &str) -> Result<String, ApiError> {
    if crate::model::topic::DEFAULT_DISALLOWED_TOPICS.contains(&topic) {
        Err(crate::subscribe::TopicListError::Disallowed.into())
    } else {
        Ok(topic.to_string())
    }
}

pub(super) fn single_topic(topic: &str) -> Result<String, ApiError> {
    use crate::subscribe::TopicListError;
    // One name (every publish path but a list's): the list's checks, without the list.
    if !topic.contains(',') {
        return if !crate::model::topic::is_valid_name(topic) {
            Err(TopicListError::Invalid.into())
        } else {
            allowed_topic(topic)
        };
    }
    let mut topics = parse_topics(topic)?;
    match (topics.pop(), topics.is_empty()) {
        (Some(t), true) => Ok(t),
        _ => Err(ApiError::TOPIC_INVALID),
    }
}

pub(super) async fn publish_with(
    state: &AppState,
    headers: &HeaderMap,
    query: &[(String, String)],
    mut body: BodyBytes,
    target: Target,
    publisher: Option<&Publisher>,
) -> Result<Published, ApiError> {
    let result = publish_body(state, headers, query, &mut body, target, publisher).await;
    if let Some(mut rest) = body.rest.take() {
        // What an answer leaves unread of an over-long body (not an attachment, or
        // a refused one) is read and discarded, up to a bound as Go's server does,
        // so the client, still sending, gets to read the answer instead of a reset
        // connection.
        drain(&mut rest, DRAIN_LIMIT).await;
    }
    result
}

async fn publish_body(
    state: &AppState,
    headers: &HeaderMap,
    query: &[(String, String)],
    body: &mut BodyBytes,
    target: Target,
    publisher: Option<&Publisher>,
) -> Result<Published, ApiError> {
    let config = state.herald.config();
    // One clock read: what the parameters are relative to (`X-Delay: 30m`), and the
    // message's time and ID.
    let now_ms = now_unix_ms();
    let now = now_ms.div_euclid(1000);
    let src = ParamSource { headers, query };
    let key = idempotency_key(&src, &target, publisher, &body.bytes)?;
    let Target {
        topic,
        path_sequence_id,
    } = target;
    let limits = PublishLimits {
        delay_min_secs: crate::core::rules::DELAY_MIN_SECS,
        delay_max_secs: config.message_delay_limit.as_secs() as i64,
        email_enabled: state.herald.emails_enabled(),
    };
    let mut params = parse_publish(&src, &limits, now)?;
    // ntfy's `visitor-email-limit-*`, charged once the request is known to be valid.
    let email = match (params.email.clone(), publisher) {
        (Some(to), Some(p)) => {
            state.limits.admit_email(&p.visitor).await?;
            let sender = match &p.user {
                Some(name) => format!("user:{name}"),
                None => p.client_ip.to_string(),
            };
            Some(crate::core::publish::EmailRequest { to, sender })
        }
        (Some(to), None) => Some(crate::core::publish::EmailRequest {
            to,
            sender: "unknown".into(),
        }),
        (None, _) => None,
    };
    let limit = config.message_size_limit;

    let attachment = params.attach.as_ref().map(|url| Attachment {
        name: params
            .filename
            .clone()
            .unwrap_or_else(|| attachment_name_from_url(url)),
        url: url.to_string(),
        ..Attachment::default()
    });
    let mut draft = MessageDraft {
        title: params.title,
        priority: params.priority,
        tags: params.tags,
        click: params.click,
        icon: params.icon,
        actions: params.actions,
        attachment,
        markdown: params.markdown,
        due: params.delay,
        cache: params.cache,
        sequence_id: path_sequence_id.or(params.sequence_id),
        email,
        ..MessageDraft::default()
    };

    // Body → message text (docs/COMPATIBILITY.md §2.3, in ntfy's order).
    let mut upload = None;
    if let Some(poll_id) = params.poll_id {
        draft.poll_id = Some(poll_id);
        draft.text = POLL_REQUEST_MESSAGE.into();
    } else if params.unifiedpush {
        // ntfy publishes the first `message-size-limit` bytes of an over-long body.
        let bytes = &body.bytes[..body.bytes.len().min(limit)];
        match std::str::from_utf8(bytes) {
            Ok(text) => draft.text = text.to_string(),
            Err(_) => {
                draft.text = base64::engine::general_purpose::STANDARD.encode(bytes);
                draft.encoding = "base64".into();
            }
        }
    } else if params.attach.is_some() {
        let bytes = &body.bytes[..body.bytes.len().min(limit)];
        let text = std::str::from_utf8(bytes).map_err(|_| ApiError::MESSAGE_NOT_UTF8)?;
        draft.text = pick_text(text, params.message);
    } else if params.filename.is_none()
        && let Some(mode) = params.template.take()
    {
        if !body.complete {
            return Err(ApiError::JSON_TOO_LARGE);
        }
        let fields = crate::template::Fields {
            title: Some(std::mem::take(&mut draft.title)),
            message: params.message.take(),
            priority: params.priority_template.take(),
        };
        let given = fields.clone();
        let out = render_templates(state, mode, fields, std::mem::take(&mut body.bytes)).await?;
        draft.title = out.title.or(given.title).unwrap_or_default();
        draft.text = out.message.or(given.message).unwrap_or_default();
        if let Some(p) = out.priority {
            draft.priority = super::params::parse_priority(&p)?;
        }
    } else if let Some(text) = (params.filename.is_none() && body.complete)
        .then(|| std::str::from_utf8(&body.bytes).ok())
        .flatten()
    {
        // A whole UTF-8 body without a file name is the message (checked once).
        draft.text = pick_text(text, params.message);
    } else {
        let Some(attachments) = &state.attachments else {
            return Err(ApiError::ATTACHMENTS_NOT_ALLOWED);
        };
        let (delivery, message_expires) =
            crate::attachment::delivery_and_expiry(&draft, config.cache_duration, now);
        let request = crate::attachment::UploadRequest {
            // Who the upload is charged to (set by the dispatcher).
            visitor: publisher
                .map(|p| crate::limits::shared::visitor_name(&p.visitor.key))
                .unwrap_or_default(),
            name: params.filename,
            content_length: headers
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            delivery,
            message_expires,
        };
        let head = std::mem::take(&mut body.bytes);
        let pending = attachments
            .upload(request, head, body.rest.as_mut())
            .await?;
        draft.attachment = Some(pending.attachment().clone());
        draft.text = params.message.unwrap_or_default();
        upload = Some(pending);
    }

    let scheduled = draft.due.is_some();
    let request = PublishRequest {
        topic,
        kind: PublishKind::Message(Box::new(draft)),
    };
    // A failed publish drops `upload`, which deletes its file; so does a replay (the
    // original message has its own).
    let published = state
        .idempotency
        .publish(&state.herald, request, key, now_ms)
        .await?;
    let m = &published.event.message;
    if let Some(upload) = upload
        && !published.replayed
    {
        upload.keep();
    }
    // iOS upstream: this node accepted it, so this node pokes (a scheduled message
    // is poked when it falls due, by the node that delivers it).
    if let Some(upstream) = &state.upstream
        && !params.unifiedpush
        && !scheduled
        && !published.replayed
    {
        upstream.poke(m);
    }
    tracing::debug!(topic = %m.topic, id = %m.id, scheduled, replayed = published.replayed, "published");
    Ok(Published {
        // The subscribers' JSON line: the message is encoded once (`Herald::publish_shared`).
        line: published.event.json_line().clone(),
        replayed: published.replayed,
    })
}

/// A publish's successful answer: `200` with the message's JSON line. Kept apart
/// from a `Response` so that the listener's direct path writes it without building
/// one (a header map, a boxed body, then taking both apart again: ~1,000
/// instructions a publish under callgrind); the API's routes convert it.
pub(crate) struct Published {
    /// The message as a JSON line, `\n` included.
    pub(crate) line: Bytes,
    /// Answered from the idempotency record: nothing was published this time.
    pub(crate) replayed: bool,
}

impl Published {
    /// Stripe's header on an answer that is the original one (`replayed`).
    pub(crate) const REPLAYED: (&'static str, &'static str) = ("idempotent-replayed", "true");

    pub(crate) fn into_response(self) -> Response {
        let mut resp = super::json_response_shared(StatusCode::OK, &self.line);
        if self.replayed {
            resp.headers_mut().insert(
                axum::http::HeaderName::from_static(Self::REPLAYED.0),
                axum::http::HeaderValue::from_static(Self::REPLAYED.1),
            );
        }
        resp
    }
}

/// The template step (`X-Template`): the JSON body through the templates, off the
/// runtime's threads (a render is CPU work bounded by `template::TIME_LIMIT`).
async fn render_templates(
    state: &AppState,
    mode: crate::template::Mode,
    fields: crate::template::Fields,
    body: Bytes,
) -> Result<crate::template::Fields, ApiError> {
    let config = state.herald.config();
    let templates = crate::template::Templates::new(config.template_dir.clone());
    let limit = config.message_size_limit;
    tokio::task::spawn_blocking(move || templates.apply(&mode, fields, &body, limit))
        .await
        .map_err(|_| ApiError::INTERNAL)?
        .map_err(ApiError::from)
}

/// The body's text wins over `message=` unless the body is empty (publish via GET).
fn pick_text(body: &str, param: Option<String>) -> String {
    if body.is_empty() {
        param.unwrap_or_default()
    } else {
        body.trim().to_string()
    }
}

/// ntfy names an external attachment after the last segment of its URL path.
pub(crate) fn attachment_name_from_url(url: &str) -> String {
    let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let path = after_scheme
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .split_once('/')
        .map(|(_, p)| p)
        .unwrap_or("");
    match path.rsplit('/').find(|s| !s.is_empty()) {
        Some(name) => name.to_string(),
        None => "attachment".to_string(),
    }
}

/// `DELETE /<topic>/<sid>`, `GET /<topic>/<sid>/delete`, `PUT|GET /<topic>/<sid>/clear|read`:
/// `kind` is the [`PublishKind::Delete`] or [`PublishKind::Clear`] of the path's sequence.
pub async fn sequence_action(
    state: &AppState,
    principal: &Principal,
    topic: &str,
    kind: PublishKind,
) -> Result<Response, ApiError> {
    let topic = single_topic(topic)?;
    state.auth.authorize(principal, &topic, Permission::Write)?;
    let m = state.herald.publish(PublishRequest { topic, kind }).await?;
    Ok(json_response(StatusCode::OK, encode_json_line(&m).to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names() {
        assert_eq!(
            attachment_name_from_url("https://x.org/a/b/file.jpg?x=1"),
            "file.jpg"
        );
        assert_eq!(attachment_name_from_url("https://x.org/"), "attachment");
        assert_eq!(attachment_name_from_url("https://x.org"), "attachment");
    }

    #[test]
    fn a_single_topic_is_checked_as_a_list_of_one() {
        for name in ["alerts", "a,a", "a,b", "docs", "", "a b", "x,docs", ","] {
            let as_list =
                parse_topics(name).and_then(|mut topics| match (topics.pop(), topics.is_empty()) {
                    (Some(t), true) => Ok(t),
                    _ => Err(ApiError::TOPIC_INVALID),
                });
            assert_eq!(single_topic(name), as_list, "{name:?}");
            // A name the listener checked already: the same answer.
            if crate::model::topic::is_valid_name(name) {
                assert_eq!(allowed_topic(name), as_list, "{name:?}");
            }
        }
    }

    #[test]
    fn idempotency_names_are_the_keys_names() {
        for name in IDEMPOTENCY_KEY {
            assert!(super::super::params::is_idempotency_name(name), "{name}");
        }
        assert!(!super::super::params::is_idempotency_name("idempotency"));
    }

    /// A bare request (the lookups' fast path) is exactly one where the template,
    /// the idempotency key and every fingerprinted parameter are absent.
    #[test]
    fn a_bare_request_has_no_parameter() {
        use axum::http::{HeaderName, HeaderValue};
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Pairs<'_>, Pairs<'_>)] = &[
            (&[], &[]),
            (
                &[("host", "x"), ("user-agent", "y"), ("content-length", "3")],
                &[],
            ),
            (&[("host", "x"), ("x-title", "t")], &[]),
            (&[("Idempotency-Key", "k")], &[]),
            (&[("X-Idempotency-Key", "k")], &[]),
            (&[("content-type", "text/plain")], &[]),
            (&[("tpl", "yes")], &[]),
            (&[], &[("idempotency_key", "k")]),
            (&[], &[("unrelated", "1")]),
        ];
        for (headers, query) in cases {
            let mut map = HeaderMap::new();
            for (name, value) in *headers {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            let query: Vec<(String, String)> = query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let src = ParamSource {
                headers: &map,
                query: &query,
            };
            let any = src.get(IDEMPOTENCY_KEY).is_some()
                || FINGERPRINTED.iter().any(|names| src.get(names).is_some());
            if src.is_bare() {
                assert!(!any, "{headers:?} {query:?}");
            } else if query.is_empty() {
                assert!(any, "{headers:?}");
            }
        }
    }

    #[test]
    fn body_wins_over_param_unless_empty() {
        assert_eq!(pick_text("  hi \n", Some("p".into())), "hi");
        assert_eq!(pick_text("", Some("p".into())), "p");
    }
}
