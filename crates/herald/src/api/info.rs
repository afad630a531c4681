//! Small informational endpoints: `/v1/health`, `/healthz`, `/readyz`, `/metrics`,
//! `/v1/stats`, `/v1/config`, `/<topics>/auth`, UnifiedPush discovery, CORS preflight.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, json_response, parse_topics, query_pairs};
use crate::error::ApiError;
use crate::model::topic::DEFAULT_DISALLOWED_TOPICS;

/// `GET /v1/health`: ntfy's static answer (readiness with real checks is `/readyz`).
pub fn health(_state: &AppState) -> Response {
    json_response(StatusCode::OK, br#"{"healthy":true}"#.to_vec())
}

/// `GET /healthz`: liveness. Answering at all shows the process and runtime work;
/// it fails (`503`) only when the server cannot serve again without a restart (the
/// store's writer is gone). Passing trouble (a full disk, Redis down, draining) is
/// readiness's business, so a restart loop never makes it worse.
pub fn healthz(state: &AppState) -> Response {
    if state.herald.store_alive() {
        json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"status":"unavailable","checks":{"store":"fail"}}"#.to_vec(),
        )
    }
}

/// `GET /readyz`: readiness. The store must accept writes, the broker must be
/// connected, and the server must not be draining; each check is named in the body.
pub async fn readyz(state: &AppState) -> Response {
    let readiness = state.herald.readiness().await;
    let ready = readiness.is_ready();
    let word = |ok: bool| if ok { "ok" } else { "fail" };
    let body = json!({
        "status": if ready { "ok" } else { "unavailable" },
        "checks": {
            "store": word(readiness.store),
            "broker": word(readiness.broker),
            "accepting": word(readiness.accepting),
        }
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body.to_string())
}

/// `GET /metrics`: Prometheus text (format 0.0.4). See [`crate::telemetry`].
pub async fn metrics(state: &AppState) -> Response {
    let body = state.metrics.render(&state.herald).await;
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::telemetry::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// The JSON of `GET /v1/account` for an anonymous visitor, as ntfy answers it:
/// username `*`, the visitor's limits and usage; the logged-in variant extends it.
pub fn account_body(state: &AppState, visitor: &crate::limits::Visitor) -> serde_json::Value {
    let config = state.herald.config();
    let daily_messages = config.limits.effective_message_daily_limit();
    let used = state.limits.messages_today(visitor);
    let mut body = json!({
        "username": "*",
        "role": "anonymous",
        "limits": {
            "basis": "ip",
            "messages": daily_messages,
            "messages_expiry_duration": config.cache_duration.as_secs(),
            // The e-mail bucket's burst (ntfy reports its e-mail limit here).
            "emails": if state.herald.emails_enabled() { config.limits.email_burst } else { 0 },
            "calls": 0,
            "reservations": 0,
            "attachment_total_size": 0,
            "attachment_file_size": 0,
            "attachment_expiry_duration": 0,
            "attachment_bandwidth": 0,
        },
        "stats": {
            "messages": used,
            "messages_remaining": daily_messages.saturating_sub(used),
            "emails": 0,
            "emails_remaining": 0,
            "calls": 0,
            "calls_remaining": 0,
            "reservations": 0,
            "reservations_remaining": 0,
            "attachment_total_size": 0,
            "attachment_total_size_remaining": 0,
        },
    });
    if let Some(attachments) = &state.attachments {
        let c = attachments.config();
        let name = crate::limits::shared::visitor_name(&visitor.key);
        let (stored, remaining) = attachments.visitor_usage(&name);
        body["limits"]["attachment_total_size"] = c.visitor_total_size_limit.into();
        body["limits"]["attachment_file_size"] = c.file_size_limit.into();
        body["limits"]["attachment_expiry_duration"] = c.expiry.as_secs().into();
        body["limits"]["attachment_bandwidth"] = c.visitor_daily_bandwidth_limit.into();
        body["stats"]["attachment_total_size"] = stored.into();
        body["stats"]["attachment_total_size_remaining"] = remaining.into();
    }
    body
}

/// `GET /v1/stats`: messages published and the recent rate.
pub async fn stats(state: &AppState) -> Result<Response, ApiError> {
    let body = json!({
        "messages": state.herald.published_count(),
        "messages_rate": state.herald.published_rate(),
    });
    Ok(json_response(StatusCode::OK, body.to_string()))
}

/// `GET /v1/config`: what the web app and clients read about this server.
pub fn config(state: &AppState) -> Response {
    let mut resp = json_response(StatusCode::OK, config_body(state).to_string());
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The body of `/v1/config` (and of the web app's `/config.js`).
pub fn config_body(state: &AppState) -> serde_json::Value {
    let config = state.herald.config();
    let push_key = config
        .web
        .push
        .as_ref()
        .map(|p| p.keys.public_base64())
        .unwrap_or_default();
    let mut body = json!({
        "base_url": config.base_url,
        "app_root": config.web.app_root(),
        "enable_login": state.auth.is_enabled(),
        "require_login": false,
        "enable_signup": false,
        "enable_payments": false,
        "enable_calls": false,
        "enable_emails": state.herald.emails_enabled(),
        "enable_reset_password": false,
        "enable_reservations": false,
        "enable_web_push": !push_key.is_empty(),
        "billing_contact": "",
        "web_push_public_key": push_key,
        "disallowed_topics": DEFAULT_DISALLOWED_TOPICS,
        "config_hash": env!("CARGO_PKG_VERSION"),
    });
    let logout = &config.auth_logout_url;
    if !logout.is_empty() {
        body["auth_logout_url"] = logout.clone().into();
    }
    body
}

/// `GET /<topics>/auth`: whether the caller may read every topic.
pub fn topic_auth(
    state: &AppState,
    principal: &crate::auth::Principal,
    topics: &str,
) -> Result<Response, ApiError> {
    let topics = parse_topics(topics)?;
    state
        .auth
        .authorize_all(principal, &topics, crate::auth::Permission::Read)?;
    Ok(json_response(
        StatusCode::OK,
        br#"{"success":true}"#.to_vec(),
    ))
}

/// `GET /<topic>`: UnifiedPush discovery with `?up=1`; herald serves no web app.
pub fn topic_page(req: Request) -> Result<Response, ApiError> {
    let up = query_pairs(&req)
        .iter()
        .any(|(k, v)| k == "up" && matches!(v.as_str(), "1" | "yes" | "true"));
    if up {
        parse_topics(req.uri().path().trim_start_matches('/'))?;
        return Ok(json_response(
            StatusCode::OK,
            br#"{"unifiedpush":{"version":1}}"#.to_vec(),
        ));
    }
    Err(ApiError::NOT_FOUND)
}

/// `GET /`: a short pointer; herald has no web app.
pub fn index() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        concat!(
            "herald ",
            env!("CARGO_PKG_VERSION"),
            ": an ntfy-compatible notification server.\n",
            "Publish: curl -d \"Hi\" <this-url>/<topic>\n",
            "Subscribe: curl -s <this-url>/<topic>/json\n"
        ),
    )
        .into_response()
}

/// CORS preflight for any path.
pub fn options() -> Response {
    (
        StatusCode::OK,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "GET, PUT, POST, PATCH, DELETE",
            ),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "*"),
        ],
    )
        .into_response()
}
