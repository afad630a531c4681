//! Publishing: `PUT`/`POST /<topic>[/<sequence_id>]`, `GET /<topic>/publish`, JSON
//! publish to `/`, and the sequence actions (delete, clear).
//!
//! The body rules follow ntfy (docs/COMPATIBILITY.md §2.3): a body shorter than
//! `message-size-limit` that is valid UTF-8 is the message; anything else would be an
//! attachment upload, which herald does not store yet, so it gets ntfy's own
//! "attachments not allowed" answer.

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
use crate::model::{Attachment, now_unix};
use crate::wire::json_line as encode_json_line;

/// `PUT`/`POST /<topic>[/<sid>]` and `GET /<topic>/publish`.
pub async fn publish(
    state: &AppState,
    req: Request,
    topic: &str,
    path_sequence_id: Option<String>,
) -> Result<Response, ApiError> {
    let topic = single_topic(topic)?;
    authorize_write(state, &req, &topic)?;
    let query = query_pairs(&req);
    let (parts, body) = req.into_parts();
    let body = read_body(body, state.herald.config().message_size_limit).await?;
    let scope = idempotency_scope(&parts.extensions);
    let target = Target {
        topic,
        path_sequence_id,
        scope,
    };
    publish_with(state, &parts.headers, &query, body, target).await
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
    };
    let target = Target {
        topic,
        path_sequence_id: None,
        scope: idempotency_scope(&parts.extensions),
    };
    publish_with(state, &headers, &query, body, target).await
}

/// Where a publish goes, and whose idempotency keys it uses.
struct Target {
    topic: String,
    path_sequence_id: Option<String>,
    /// The visitor (`user:<name>` or `ip:<prefix>`): keys are per visitor.
    scope: String,
}

/// The visitor the dispatcher charged this request to, as an idempotency scope.
fn idempotency_scope(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<crate::limits::Visitor>()
        .map(|v| crate::limits::shared::visitor_name(&v.key))
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
fn idempotency_key(
    src: &ParamSource<'_>,
    target: &Target,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
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
    IdempotencyKey::new(&target.scope, &key, fingerprint.finish())
        .map(Some)
        .map_err(|_| ApiError::IDEMPOTENCY_KEY_INVALID)
}

/// The publish body, read up to the message size limit.
struct BodyBytes {
    bytes: Bytes,
    /// False when the body reached the limit (ntfy then treats it as an attachment).
    complete: bool,
}

async fn read_body(body: Body, limit: usize) -> Result<BodyBytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::body_read_error(&e, ApiError::BAD_REQUEST))?;
        if let Some(data) = frame.data_ref() {
            buf.extend_from_slice(data);
            if buf.len() >= limit {
                // Like ntfy's peek: a body that fills the limit is "too large for a
                // message". The rest is read and discarded (up to a bound, as Go's
                // server does) so the client, still sending, gets to read the error
                // instead of a reset connection.
                drain(&mut body, DRAIN_LIMIT).await;
                return Ok(BodyBytes {
                    bytes: Bytes::from(buf),
                    complete: false,
                });
            }
        }
    }
    Ok(BodyBytes {
        bytes: Bytes::from(buf),
        complete: true,
    })
}

/// Most bytes of an over-long body read and thrown away before answering.
const DRAIN_LIMIT: usize = 256 * 1024;

async fn drain(body: &mut Body, limit: usize) {
    use http_body_util::BodyExt;
    let mut drained = 0;
    while drained < limit {
        match body.frame().await {
            Some(Ok(frame)) => drained += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// Whether the request's principal (set by the dispatcher) may publish to `topic`.
/// A request without one is anonymous.
fn authorize_write(state: &AppState, req: &Request, topic: &str) -> Result<(), ApiError> {
    let anonymous = Principal::anonymous();
    let principal = req.extensions().get::<Principal>().unwrap_or(&anonymous);
    Ok(state.auth.authorize(principal, topic, Permission::Write)?)
}

fn single_topic(topic: &str) -> Result<String, ApiError> {
    let mut topics = parse_topics(topic)?;
    match (topics.pop(), topics.is_empty()) {
        (Some(t), true) => Ok(t),
        _ => Err(ApiError::TOPIC_INVALID),
    }
}

async fn publish_with(
    state: &AppState,
    headers: &HeaderMap,
    query: &[(String, String)],
    body: BodyBytes,
    target: Target,
) -> Result<Response, ApiError> {
    let config = state.herald.config();
    let now = now_unix();
    let src = ParamSource { headers, query };
    let key = idempotency_key(&src, &target, &body.bytes)?;
    let Target {
        topic,
        path_sequence_id,
        ..
    } = target;
    let limits = PublishLimits {
        delay_min_secs: 10,
        delay_max_secs: config.message_delay_limit.as_secs() as i64,
    };
    let params = parse_publish(&src, &limits, now)?;
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
        ..MessageDraft::default()
    };

    // Body → message text (docs/COMPATIBILITY.md §2.3, in ntfy's order).
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
    } else if params.filename.is_some() || !body.complete {
        return Err(ApiError::ATTACHMENTS_NOT_ALLOWED);
    } else {
        let text =
            std::str::from_utf8(&body.bytes).map_err(|_| ApiError::ATTACHMENTS_NOT_ALLOWED)?;
        draft.text = pick_text(text, params.message);
    }

    let scheduled = draft.due.is_some();
    let request = PublishRequest {
        topic,
        kind: PublishKind::Message(Box::new(draft)),
    };
    let published = state
        .idempotency
        .publish(&state.herald, request, key)
        .await?;
    let m = published.message;
    tracing::debug!(topic = %m.topic, id = %m.id, scheduled, replayed = published.replayed, "published");
    let mut resp = json_response(StatusCode::OK, encode_json_line(&m).to_vec());
    if published.replayed {
        // Stripe's header: this answer is the original one, nothing was published.
        resp.headers_mut().insert(
            axum::http::HeaderName::from_static("idempotent-replayed"),
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
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
fn attachment_name_from_url(url: &str) -> String {
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
    fn body_wins_over_param_unless_empty() {
        assert_eq!(pick_text("  hi \n", Some("p".into())), "hi");
        assert_eq!(pick_text("", Some("p".into())), "p");
    }
}
