//! `POST`/`DELETE /v1/webpush`: a browser registers its push subscription for
//! topics it may read (ntfy's `server_webpush.go` semantics and codes: `40038`
//! malformed, `40039` not a known push service, `40040` over 50 topics, `403` for a
//! topic the caller cannot read). The work is `webpush::WebPush`'s.

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::{AppState, json_response};
use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::webpush::service::PushError;
use crate::webpush::store::PushSubscription;

#[derive(Debug, Default, Deserialize)]
struct Body {
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    p256dh: String,
    #[serde(default)]
    topics: Vec<String>,
}

fn api_error(e: PushError) -> ApiError {
    match e {
        PushError::Malformed => ApiError::WEB_PUSH_INVALID,
        PushError::EndpointUnknown => ApiError::WEB_PUSH_ENDPOINT_UNKNOWN,
        PushError::TooManyTopics => ApiError::WEB_PUSH_TOO_MANY_TOPICS,
        PushError::Store(e) => {
            tracing::warn!(error = %e, "web push store failed");
            ApiError::INTERNAL
        }
    }
}

pub(crate) async fn handle(
    state: &AppState,
    principal: &Principal,
    req: Request,
) -> Result<Response, ApiError> {
    let Some(push) = &state.webpush else {
        return Err(ApiError::NOT_FOUND);
    };
    let method = req.method().clone();
    if !matches!(method, Method::POST | Method::PUT | Method::DELETE) {
        return Err(ApiError::NOT_FOUND);
    }
    let body: Body = super::account::read_json(req, false).await.map_err(|e| {
        if e.http == 400 {
            ApiError::WEB_PUSH_INVALID
        } else {
            e
        }
    })?;
    if method == Method::DELETE {
        push.unregister(&body.endpoint).await.map_err(api_error)?;
    } else {
        let mut sub = PushSubscription {
            endpoint: body.endpoint,
            auth: body.auth,
            p256dh: body.p256dh,
            topics: body.topics,
            user: principal.user_name().unwrap_or_default().to_string(),
            updated: 0,
        };
        push.validate(&sub).map_err(api_error)?;
        if !sub.topics.is_empty() {
            sub.topics = super::parse_topics(&sub.topics.join(","))?;
        }
        state
            .auth
            .authorize_all(principal, &sub.topics, Permission::Read)?;
        push.register(sub).await.map_err(api_error)?;
    }
    Ok(json_response(
        StatusCode::OK,
        br#"{"success":true}"#.to_vec(),
    ))
}
