//! `/v1/webhooks`: register, list, inspect, change, rotate, enable, replay.
//!
//! Called from the API dispatcher (`crate::api::dispatch`) for every path under
//! `/v1/webhooks`. Errors use ntfy's JSON error shape.
//!
//! **Who may do what** goes through [`WebhookCaller`], the seam to authentication:
//! without auth ([`Anonymous`]) everyone may register for any topic and sees every
//! webhook. With auth ([`Authorized`]), registering needs read permission on the
//! topic (patterns: admins only), and only admins see webhooks they did not create.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Webhook;
use super::dispatcher::{ReplayFrom, WebhookError, WebhookSpec, rfc3339};
use crate::api::{AppState, json_response, query_pairs};
use crate::auth::{Authorizer, Permission, Principal};
use crate::error::ApiError;

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

/// What the webhook API needs to know about whoever calls it.
pub trait WebhookCaller: Send + Sync {
    /// The key webhooks are counted and owned under (`webhook-visitor-limit`).
    fn visitor_key(&self) -> String;
    /// Whether the caller may receive messages of `topic` (a name or a `*` pattern).
    fn may_read(&self, topic: &str) -> bool;
    /// Whether the caller sees and manages every webhook, not only its own.
    fn is_admin(&self) -> bool;
}

/// The caller when auth is off: may do everything; keyed by client IP.
#[derive(Debug, Clone, Copy)]
pub struct Anonymous(pub IpAddr);

impl WebhookCaller for Anonymous {
    fn visitor_key(&self) -> String {
        self.0.to_string()
    }

    fn may_read(&self, _topic: &str) -> bool {
        true
    }

    fn is_admin(&self) -> bool {
        true
    }
}

/// The caller when access control is on: the request's principal (authenticated by
/// `api::dispatch`), keyed as its visitor is (`user:<name>`, else the client IP).
pub struct Authorized {
    principal: Principal,
    auth: Arc<Authorizer>,
    ip: IpAddr,
}

impl WebhookCaller for Authorized {
    fn visitor_key(&self) -> String {
        match self.principal.user_name() {
            Some(name) => format!("user:{name}"),
            None => self.ip.to_string(),
        }
    }

    /// Read permission on the topic. A `*` pattern spans topics whose entries may
    /// differ (`alerts*` read-write but `alerts-payroll` denied), and deliveries are
    /// not re-checked per message, so only admins may register patterns.
    fn may_read(&self, topic: &str) -> bool {
        if topic.contains('*') {
            return self.principal.is_admin();
        }
        self.auth
            .authorize(&self.principal, topic, Permission::Read)
            .is_ok()
    }

    fn is_admin(&self) -> bool {
        self.principal.is_admin()
    }
}

/// Who is calling: everyone may do everything while access control is off;
/// otherwise the principal `api::dispatch` authenticated (wrong credentials never
/// get here: they are answered 401 there).
pub fn caller(
    state: &AppState,
    req: &Request,
    client_ip: IpAddr,
) -> Result<Box<dyn WebhookCaller>, ApiError> {
    if !state.auth.is_enabled() {
        return Ok(Box::new(Anonymous(client_ip)));
    }
    let principal = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous);
    Ok(Box::new(Authorized {
        principal,
        auth: state.auth.clone(),
        ip: client_ip,
    }))
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
    let caller = caller(state, &req, peer)?;
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::POST, [] | [""]) => {
            let spec: WebhookSpec = read_json(req).await?;
            if let Some(topic) = &spec.topic
                && !caller.may_read(topic)
            {
                return Err(ApiError::FORBIDDEN);
            }
            let w = webhooks
                .create(spec, &caller.visitor_key())
                .await
                .map_err(api_error)?;
            Ok(respond(StatusCode::CREATED, view(&w, true)))
        }
        (&Method::GET, [] | [""]) => {
            let all = webhooks.list().await.map_err(api_error)?;
            let visible: Vec<Value> = all
                .iter()
                .filter(|w| sees(caller.as_ref(), w))
                .map(|w| view(w, false))
                .collect();
            Ok(respond(StatusCode::OK, Value::Array(visible)))
        }
        (_, [id, tail @ ..]) => {
            let w = webhooks.get(id).await.map_err(api_error)?;
            if !sees(caller.as_ref(), &w) {
                return Err(not_found());
            }
            match (&method, tail) {
                (&Method::GET, []) => Ok(respond(StatusCode::OK, view(&w, false))),
                (&Method::GET, ["secret"]) => Ok(respond(StatusCode::OK, view(&w, true))),
                (&Method::PATCH | &Method::PUT, []) => {
                    let spec: WebhookSpec = read_json(req).await?;
                    if let Some(topic) = &spec.topic
                        && !caller.may_read(topic)
                    {
                        return Err(ApiError::FORBIDDEN);
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

fn sees(caller: &dyn WebhookCaller, w: &Webhook) -> bool {
    caller.is_admin() || w.owner == caller.visitor_key()
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
        .map_err(|_| ApiError::JSON_TOO_LARGE)?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::JSON_INVALID.with_detail(e))
}

async fn read_json_or_empty<T: serde::de::DeserializeOwned + Default>(
    req: Request,
) -> Result<T, ApiError> {
    let bytes = to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|_| ApiError::JSON_TOO_LARGE)?;
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
