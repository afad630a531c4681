//! The Matrix push gateway, `/_matrix/push/v1/notify` (ntfy's, with UnifiedPush as
//! the provider protocol): a Matrix homeserver POSTs a Push Gateway API notification
//! (https://spec.matrix.org/latest/push-gateway-api/) whose first device's
//! `pushkey` is a topic URL under `base-url` (e.g. `https://ntfy.example.com/upAbc?up=1`);
//! the JSON body is published to that topic as if POSTed to the pushkey URL, and the
//! homeserver is told which pushkeys to drop (`{"rejected":[...]}`). `GET` is
//! UnifiedPush's gateway discovery (https://unifiedpush.org/developers/gateway/).

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::publish::{BodyBytes, authorize_write, publish_with, read_body, single_topic};
use super::{AppState, json_response};
use crate::error::ApiError;

/// `GET /_matrix/push/v1/notify`.
pub(super) fn discovery(state: &AppState) -> Result<Response, ApiError> {
    if state.herald.config().base_url.is_empty() {
        return Err(ApiError::BASE_URL_MISSING);
    }
    Ok(json_response(
        StatusCode::OK,
        &br#"{"unifiedpush":{"gateway":"matrix"}}"#[..],
    ))
}

/// `POST /_matrix/push/v1/notify`.
pub(super) async fn notify(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let config = state.herald.config();
    let base_url = config.base_url.clone();
    if base_url.is_empty() {
        return Err(ApiError::BASE_URL_MISSING);
    }
    let limit = config.message_size_limit;
    let (parts, body) = req.into_parts();
    let body = read_body(body, limit).await?;
    if !body.complete {
        return Err(ApiError::MATRIX_TOO_LARGE);
    }
    let push_key = push_key(&body.bytes).ok_or(ApiError::MATRIX_JSON_INVALID)?;
    // A pushkey that is not ours: the homeserver should stop using it.
    let Some(target) = push_key.strip_prefix(&format!("{base_url}/")) else {
        tracing::debug!(push_key = %push_key, "matrix pushkey outside base-url, rejected");
        return Ok(rejected(&[push_key.as_str()]));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let topic = single_topic(path.split('#').next().unwrap_or(path))?;
    let req = Request::from_parts(parts, axum::body::Body::empty());
    authorize_write(state, &req, &topic)?;
    let query: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    // As ntfy, the publish is a new request to the pushkey URL: none of the
    // homeserver's headers become publish parameters.
    let body = BodyBytes {
        bytes: body.bytes,
        complete: true,
        rest: None,
    };
    let publisher = req.extensions().get::<super::publish::Publisher>();
    let target = super::publish::Target {
        topic,
        path_sequence_id: None,
    };
    publish_with(state, &HeaderMap::new(), &query, body, target, publisher).await?;
    Ok(rejected(&[]))
}

/// The first device's pushkey (ntfy ignores the other devices).
fn push_key(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Notify {
        notification: Notification,
    }
    #[derive(serde::Deserialize)]
    struct Notification {
        #[serde(default)]
        devices: Vec<Device>,
    }
    #[derive(serde::Deserialize)]
    struct Device {
        #[serde(default)]
        pushkey: String,
    }
    let n: Notify = serde_json::from_slice(body).ok()?;
    let key = n.notification.devices.into_iter().next()?.pushkey;
    (!key.is_empty()).then_some(key)
}

fn rejected(keys: &[&str]) -> Response {
    let body = serde_json::json!({ "rejected": keys });
    json_response(StatusCode::OK, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_keys() {
        let body = br#"{"notification":{"devices":[{"app_id":"x","pushkey":"https://h/t?up=1"},{"pushkey":"b"}]}}"#;
        assert_eq!(push_key(body).as_deref(), Some("https://h/t?up=1"));
        assert_eq!(push_key(br#"{"notification":{"devices":[]}}"#), None);
        assert_eq!(
            push_key(br#"{"notification":{"devices":[{"pushkey":""}]}}"#),
            None
        );
        assert_eq!(push_key(br#"{"notification":null}"#), None);
        assert_eq!(push_key(b"nope"), None);
    }
}
