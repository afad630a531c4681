//! `/v1/webhooks`: register, list, inspect, change, rotate, enable, replay.
//!
//! Called from the API dispatcher (`api::dispatch`) for every path under
//! `/v1/webhooks`. Errors use ntfy's JSON error shape.
//!
//! **Who may do what.** On an ntfy-style server the topic name is the secret: ntfy
//! has no way to list topics or read them by wildcard, and a webhook must not add
//! one. So, in every mode (docs/WEBHOOKS.md, "Who may do what"):
//!
//! - registering an exact topic needs read permission on it (everyone, with access
//!   control off); a pattern (`*`, `alerts-*`) needs a **webhook admin**: an admin
//!   user, or the bearer of `webhook-admin-token`;
//! - replaying needs a webhook admin (it reads messages published before the
//!   webhook existed);
//! - one webhook is managed by the bearer of its **management token** (`whm_...`,
//!   answered once at registration, [`crate::webhook::token`]), by the user who registered
//!   it, or by a webhook admin; to anyone else it does not exist (`404`, as for an
//!   unknown ID: IDs are not confirmed);
//! - the list holds what the caller manages: everything for an admin, nothing for
//!   an anonymous caller without a token. Client IPs own nothing (people behind one
//!   NAT share one), they only count towards `webhook-visitor-limit`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, json_response, query_pairs};
use crate::auth::{Authorizer, Permission, Principal};
use crate::error::ApiError;
use crate::webhook::{ReplayFrom, Webhook, WebhookError, WebhookSpec, rfc3339};

/// Largest request body accepted here.
const BODY_LIMIT: usize = 16 * 1024;

/// Attempts listed when `limit` is not given.
const DEFAULT_ATTEMPTS: usize = 100;

/// herald's own error for the per-visitor webhook limit (ntfy has no webhooks).
const TOO_MANY_WEBHOOKS: ApiError = ApiError {
    code: 42920,
    http: 429,
    error: std::borrow::Cow::Borrowed("limit reached: too many webhooks for this visitor"),
    link: None,
};

/// Whoever calls the webhook API, as far as it cares. See the module docs.
pub(crate) struct Caller {
    /// Whom registrations are counted under (`webhook-visitor-limit`): `user:<name>`,
    /// else the client IP.
    visitor: String,
    /// The principal `api::dispatch` authenticated (anonymous with access control
    /// off, or when the request carries a webhook token instead of a login).
    principal: Principal,
    /// An admin user, or the `webhook-admin-token` bearer.
    admin: bool,
    /// The token the request presents, compared with a webhook's management token.
    token: Option<String>,
    auth: Arc<Authorizer>,
}

impl Caller {
    /// Whether the caller may register for `topic`: a name it may read; a pattern
    /// only as a webhook admin (a pattern spans topics the caller never named, and
    /// deliveries are not re-checked per message).
    fn may_register(&self, topic: &str) -> Result<(), ApiError> {
        if self.admin {
            return Ok(());
        }
        if topic.contains('*') {
            return Err(ApiError::FORBIDDEN
                .with_detail("topic patterns need webhook admin rights (webhook-admin-token)"));
        }
        Ok(self
            .auth
            .authorize(&self.principal, topic, Permission::Read)?)
    }

    /// Whether the caller manages `w` (and so may see that it exists).
    fn manages(&self, w: &Webhook) -> bool {
        if self.admin {
            return true;
        }
        let by_token = match (&self.token, &w.token_digest) {
            (Some(token), Some(digest)) => crate::webhook::token::matches(digest, token),
            _ => false,
        };
        let by_user = self
            .principal
            .user_name()
            .is_some_and(|name| w.owner.strip_prefix("user:") == Some(name));
        by_token || by_user
    }
}

/// Whether a request to `/v1/webhooks` presents `webhook-admin-token`. Such a
/// request is not authenticated as a user login (the token is not one).
pub(crate) fn presents_admin_token(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> bool {
    let Some(admin) = state
        .webhooks
        .as_ref()
        .and_then(|w| w.config.admin_token.as_ref())
    else {
        return false;
    };
    crate::webhook::token::presented(headers, query).is_some_and(|t| admin.matches(&t))
}

/// Who is calling: the principal `api::dispatch` authenticated (wrong credentials
/// never get here: they are answered 401 there), and the token the request bears.
fn caller(state: &AppState, req: &Request, client_ip: IpAddr) -> Caller {
    let principal = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous);
    let token = crate::webhook::token::presented(req.headers(), req.uri().query());
    let admin =
        principal.is_admin() || presents_admin_token(state, req.headers(), req.uri().query());
    let visitor = match principal.user_name() {
        Some(name) => format!("user:{name}"),
        None => client_ip.to_string(),
    };
    Caller {
        visitor,
        principal,
        admin,
        token,
        auth: state.auth.clone(),
    }
}

/// Serves `rest` = the path segments after `/v1/webhooks`.
pub async fn handle(
    state: &AppState,
    req: Request,
    rest: &[&str],
    peer: IpAddr,
) -> Result<Response, ApiError> {
    let Some(webhooks) = state.webhooks.clone() else {
        return Err(ApiError::NOT_FOUND);
    };
    let caller = caller(state, &req, peer);
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::POST, [] | [""]) => {
            let spec: WebhookSpec = read_json(req).await?;
            if let Some(topic) = &spec.topic {
                caller.may_register(topic)?;
            }
            let (w, token) = webhooks
                .create(spec, &caller.visitor)
                .await
                .map_err(api_error)?;
            let mut body = view(&w, true);
            body["token"] = json!(token);
            Ok(respond(StatusCode::CREATED, body))
        }
        (&Method::GET, [] | [""]) => {
            let all = webhooks.list().await.map_err(api_error)?;
            let visible: Vec<Value> = all
                .iter()
                .filter(|w| caller.manages(w))
                .map(|w| view(w, false))
                .collect();
            Ok(respond(StatusCode::OK, Value::Array(visible)))
        }
        (_, [id, tail @ ..]) => {
            let w = webhooks.get(id).await.map_err(api_error)?;
            if !caller.manages(&w) {
                return Err(not_found());
            }
            match (&method, tail) {
                (&Method::GET, []) => Ok(respond(StatusCode::OK, view(&w, false))),
                (&Method::GET, ["secret"]) => Ok(respond(StatusCode::OK, view(&w, true))),
                (&Method::PATCH | &Method::PUT, []) => {
                    let spec: WebhookSpec = read_json(req).await?;
                    if let Some(topic) = &spec.topic {
                        caller.may_register(topic)?;
                    }
                    let w = webhooks.update(id, spec).await.map_err(api_error)?;
                    Ok(respond(StatusCode::OK, view(&w, false)))
                }
                (&Method::DELETE, []) => {
                    webhooks.delete(id).await.map_err(api_error)?;
                    Ok(respond(StatusCode::OK, json!({"success": true})))
                }
                (&Method::POST, ["rotate"]) => {
                    #[derive(Deserialize, Default)]
                    #[serde(deny_unknown_fields)]
                    struct Rotate {
                        secret: Option<String>,
                    }
                    let body: Rotate = read_json_or_empty(req).await?;
                    let w = webhooks.rotate(id, body.secret).await.map_err(api_error)?;
                    Ok(respond(StatusCode::OK, view(&w, true)))
                }
                (&Method::POST, ["enable"]) => {
                    let w = webhooks.enable(id).await.map_err(api_error)?;
                    Ok(respond(StatusCode::OK, view(&w, false)))
                }
                (&Method::GET, ["attempts"]) => {
                    let limit = query_pairs(&req)
                        .into_iter()
                        .find(|(k, _)| k == "limit")
                        .map(|(_, v)| v.parse::<usize>().map_err(|_| bad("invalid limit")))
                        .transpose()?
                        .unwrap_or(DEFAULT_ATTEMPTS);
                    let attempts = webhooks.attempts(id, limit).await.map_err(api_error)?;
                    Ok(respond(StatusCode::OK, json!(attempts)))
                }
                (&Method::POST, ["replay"]) => {
                    // Replay reads messages from before the webhook existed: what a
                    // topic's subscribers could poll, but a token only proves the
                    // registration, not that its holder could read them then.
                    if !caller.admin {
                        return Err(ApiError::FORBIDDEN.with_detail(
                            "replay needs webhook admin rights (webhook-admin-token)",
                        ));
                    }
                    #[derive(Deserialize, Default)]
                    #[serde(deny_unknown_fields)]
                    struct Replay {
                        since: Option<Value>,
                    }
                    let from_query = query_pairs(&req)
                        .into_iter()
                        .find(|(k, _)| k == "since")
                        .map(|(_, v)| Value::String(v));
                    let body: Replay = read_json_or_empty(req).await?;
                    let since = body
                        .since
                        .or(from_query)
                        .ok_or_else(|| bad("\"since\" is required (a message ID, a unix time or a duration such as 1h)"))?;
                    let from = replay_from(&since)?;
                    let queued = webhooks.replay(id, from).await.map_err(api_error)?;
                    Ok(respond(StatusCode::ACCEPTED, json!({"queued": queued})))
                }
                _ => Err(ApiError::NOT_FOUND),
            }
        }
        _ => Err(ApiError::NOT_FOUND),
    }
}

fn not_found() -> ApiError {
    ApiError::NOT_FOUND.with_detail("no such webhook")
}

fn bad(detail: &str) -> ApiError {
    ApiError::BAD_REQUEST.with_detail(detail)
}

fn api_error(e: WebhookError) -> ApiError {
    match e {
        WebhookError::NotFound => not_found(),
        WebhookError::Invalid(detail) => bad(&detail),
        WebhookError::LimitReached => TOO_MANY_WEBHOOKS,
        WebhookError::Store(e) => {
            tracing::error!(error = %e, "webhook store failed");
            ApiError::INTERNAL
        }
        WebhookError::Messages(e) => {
            tracing::error!(error = %e, "message store failed (webhook replay)");
            ApiError::UNAVAILABLE
        }
    }
}

/// `since` of a replay: a message ID, a unix time, or a duration back from now.
fn replay_from(since: &Value) -> Result<ReplayFrom, ApiError> {
    let text = match since {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return Err(bad("invalid \"since\"")),
    };
    if let Ok(unix) = text.parse::<i64>() {
        return Ok(ReplayFrom::Time(unix));
    }
    if let Some(d) = crate::time::parse_config_duration(&text) {
        return Ok(ReplayFrom::Time(
            crate::model::now_unix() - d.as_secs() as i64,
        ));
    }
    if text.len() == crate::model::id::ID_LEN && text.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Ok(ReplayFrom::AfterId(text));
    }
    Err(bad(
        "invalid \"since\": expected a message ID, a unix time or a duration such as 1h",
    ))
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, ApiError> {
    let bytes = to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|e| ApiError::body_read_error(&e, ApiError::JSON_TOO_LARGE))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::JSON_INVALID.with_detail(e))
}

async fn read_json_or_empty<T: serde::de::DeserializeOwned + Default>(
    req: Request,
) -> Result<T, ApiError> {
    let bytes = to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|e| ApiError::body_read_error(&e, ApiError::JSON_TOO_LARGE))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::JSON_INVALID.with_detail(e))
}

fn respond(status: StatusCode, body: Value) -> Response {
    json_response(status, body.to_string())
}

/// The API's JSON for an endpoint; the secret only where asked for.
pub fn view(w: &Webhook, with_secret: bool) -> Value {
    let mut v = json!({
        "id": w.id,
        "topic": w.topic,
        "url": w.url,
        "filter": w.filter,
        "description": w.description,
        "ordered": w.ordered,
        "created": w.created,
        "status": if w.disabled.is_some() { "disabled" } else { "enabled" },
    });
    if let Some((reason, at)) = &w.disabled {
        v["disabled_reason"] = json!(reason);
        v["disabled_at"] = json!(rfc3339(*at));
    }
    if let Some(since) = w.failing_since {
        v["failing_since"] = json!(rfc3339(since));
    }
    if with_secret {
        v["secret"] = json!(w.secret);
        if let Some((_, until)) = &w.previous_secret
            && *until > crate::model::now_unix()
        {
            v["previous_secret_expires"] = json!(rfc3339(*until));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_since_forms() {
        assert_eq!(
            replay_from(&json!(1700000000)).unwrap(),
            ReplayFrom::Time(1700000000)
        );
        assert!(matches!(
            replay_from(&json!("1h")).unwrap(),
            ReplayFrom::Time(_)
        ));
        assert_eq!(
            replay_from(&json!("0123456789Ab")).unwrap(),
            ReplayFrom::AfterId("0123456789Ab".into())
        );
        assert!(replay_from(&json!("??")).is_err());
        assert!(replay_from(&json!([1])).is_err());
    }
}
