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
use crate::error::ApiError;
use crate::model::{Attachment, EventKind, Message, now_unix};
use crate::wire::json_line as encode_json_line;

/// Text of a message published without any text (ntfy's `emptyMessageBody`).
const EMPTY_MESSAGE: &str = "triggered";

/// `PUT`/`POST /<topic>[/<sid>]` and `GET /<topic>/publish`.
pub async fn publish(
    state: &AppState,
    req: Request,
    topic: &str,
    path_sequence_id: Option<String>,
) -> Result<Response, ApiError> {
    let topic = single_topic(state, topic)?;
    authorize_write(state, &req, &topic)?;
    let query = query_pairs(&req);
    let (parts, body) = req.into_parts();
    let body = read_body(body, state.herald.config.message_size_limit).await?;
    publish_with(state, &parts.headers, &query, body, topic, path_sequence_id).await
}

/// `PUT`/`POST /` with a JSON body naming the topic (docs/COMPATIBILITY.md §2.6).
pub async fn publish_json(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let query = query_pairs(&req);
    let limit = state.herald.config.message_size_limit.saturating_mul(2);
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
    let topic = single_topic(state, &json.topic)?;
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
        complete: message.len() < state.herald.config.message_size_limit,
        bytes: Bytes::from(message),
    };
    publish_with(state, &headers, &query, body, topic, None).await
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
    state.auth.authorize(principal, topic, Permission::Write)
}

fn single_topic(state: &AppState, topic: &str) -> Result<String, ApiError> {
    let mut topics = parse_topics(state, topic)?;
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
    topic: String,
    path_sequence_id: Option<String>,
) -> Result<Response, ApiError> {
    let config = &state.herald.config;
    let now = now_unix();
    let src = ParamSource { headers, query };
    let limits = PublishLimits {
        delay_min_secs: 10,
        delay_max_secs: config.message_delay_limit.as_secs() as i64,
    };
    let params = parse_publish(&src, &limits, now)?;
    let limit = config.message_size_limit;

    let mut m = Message::new(EventKind::Message, topic);
    m.time = params.delay.unwrap_or(now);
    m.title = params.title;
    m.priority = params.priority;
    m.tags = params.tags;
    m.click = params.click;
    m.icon = params.icon;
    m.actions = params.actions;
    if params.markdown {
        m.content_type = "text/markdown".into();
    }
    if let Some(url) = &params.attach {
        let name = params
            .filename
            .clone()
            .unwrap_or_else(|| attachment_name_from_url(url));
        m.attachment = Some(Attachment {
            name,
            url: url.to_string(),
            ..Attachment::default()
        });
    }

    // Body → message text (docs/COMPATIBILITY.md §2.3, in ntfy's order).
    if let Some(poll_id) = params.poll_id {
        m.event = EventKind::PollRequest;
        m.poll_id = poll_id;
        m.message = "New message".into();
    } else if params.unifiedpush {
        // ntfy publishes the first `message-size-limit` bytes of an over-long body.
        let bytes = &body.bytes[..body.bytes.len().min(limit)];
        match std::str::from_utf8(bytes) {
            Ok(text) => m.message = text.to_string(),
            Err(_) => {
                m.message = base64::engine::general_purpose::STANDARD.encode(bytes);
                m.encoding = "base64".into();
            }
        }
    } else if params.attach.is_some() {
        let bytes = &body.bytes[..body.bytes.len().min(limit)];
        let text = std::str::from_utf8(bytes).map_err(|_| ApiError::MESSAGE_NOT_UTF8)?;
        m.message = pick_text(text, params.message);
    } else if params.filename.is_some() || !body.complete {
        return Err(ApiError::ATTACHMENTS_NOT_ALLOWED);
    } else {
        let text =
            std::str::from_utf8(&body.bytes).map_err(|_| ApiError::ATTACHMENTS_NOT_ALLOWED)?;
        m.message = pick_text(text, params.message);
    }
    // ntfy (v2.19.1+) strips NUL characters before storing text.
    if m.message.contains('\0') {
        m.message.retain(|c| c != '\0');
    }
    if m.title.contains('\0') {
        m.title.retain(|c| c != '\0');
    }
    if m.message.is_empty() {
        m.message = match &m.attachment {
            Some(a) => format!("You received a file: {}", a.name),
            None => EMPTY_MESSAGE.into(),
        };
    }

    let explicit_sequence = path_sequence_id.or(params.sequence_id);
    m.sequence_id = Some(explicit_sequence.clone().unwrap_or_else(|| m.id.clone()));
    let scheduled = params.delay.is_some();
    let cache_secs = config.cache_duration.as_secs() as i64;
    m.expires = if m.event == EventKind::PollRequest || !params.cache {
        None
    } else if scheduled || cache_secs > 0 {
        Some(m.time + cache_secs)
    } else {
        None
    };

    if let Some(sid) = &explicit_sequence {
        // Publishing to a sequence replaces its pending scheduled message (ntfy v2.16).
        state.herald.cancel_scheduled(&m.topic, sid).await?;
    }
    let m = state.herald.publish(m).await?;
    tracing::debug!(topic = %m.topic, id = %m.id, scheduled, "published");
    Ok(json_response(StatusCode::OK, encode_json_line(&m).to_vec()))
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

/// `DELETE /<topic>/<sid>`, `GET /<topic>/<sid>/delete`, `PUT|GET /<topic>/<sid>/clear|read`.
pub async fn sequence_action(
    state: &AppState,
    principal: &Principal,
    topic: &str,
    sequence_id: &str,
    kind: EventKind,
) -> Result<Response, ApiError> {
    let topic = single_topic(state, topic)?;
    state.auth.authorize(principal, &topic, Permission::Write)?;
    let mut m = Message::new(kind, topic);
    m.sequence_id = Some(sequence_id.to_string());
    let cache_secs = state.herald.config.cache_duration.as_secs() as i64;
    if cache_secs > 0 {
        m.expires = Some(m.time + cache_secs);
    }
    if kind == EventKind::MessageDelete {
        state.herald.cancel_scheduled(&m.topic, sequence_id).await?;
    }
    let m = state.herald.publish(m).await?;
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
