//! The ntfy-compatible HTTP API.
//!
//! Routing follows ntfy's `handleInternal` (docs/COMPATIBILITY.md §1): one dispatcher
//! matches method and path in ntfy's order, because several routes share a shape
//! (`POST /<topic>/<x>` publishes with sequence ID `x`, while `GET /<topic>/json`
//! subscribes) and unknown paths must answer ntfy's `404 40401`, not a router's
//! default. Handlers live in one file per concern: [`publish`], [`subscribe`]
//! (JSON, SSE and raw streams, polling), [`ws`] (WebSocket) and [`info`]
//! (health, stats, config).
//!
//! Only this module knows ntfy's parameter names and HTTP routes; it turns requests
//! into calls on [`crate::core::Herald`], and subscriptions into calls on the
//! subscription core ([`crate::subscribe`]), whose bytes [`crate::wire`] lays out.

pub(crate) mod account;
pub(crate) mod actions;
pub(crate) mod files;
pub(crate) mod info;
pub(crate) mod matrix;
pub mod params;
pub(crate) mod proxy_auth;
pub(crate) mod publish;
pub(crate) mod subscribe;
pub(crate) mod webhooks;
pub(crate) mod webpush;
pub(crate) mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::core::{Herald, PublishKind};
use crate::error::ApiError;
use crate::limits::{self, Charge, Limits};
use crate::model::topic;
use crate::telemetry::Metrics;
pub use crate::wire::StreamFormat;

/// State shared by all handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    pub herald: Arc<Herald>,
    pub slots: Arc<crate::subscribe::SubscriptionSlots>,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    /// Whether `GET /metrics` is served here (not when `metrics-listen-http` is set).
    pub metrics_on_main: bool,
    /// Outgoing webhooks (`/v1/webhooks`); `None` answers 404 there.
    pub webhooks: Option<Arc<crate::webhook::Webhooks>>,
    /// Access control (disabled unless configured).
    pub auth: Arc<crate::auth::Authorizer>,
    /// File attachments (`attachment-cache-dir`); `None`: uploads get `40014`.
    pub attachments: Option<Arc<crate::attachment::Attachments>>,
    /// iOS upstream pokes (`upstream-base-url`); `None`: off.
    pub(crate) upstream: Option<Arc<crate::upstream::Upstream>>,
    /// Web Push (`/v1/webpush`); `None` (no VAPID keys) answers 404 there.
    pub webpush: Option<Arc<crate::webpush::WebPush>>,
    /// Idempotent publishing (`Idempotency-Key`); every publish goes through it.
    pub idempotency: Arc<crate::idempotency::Idempotency>,
}

impl AppState {
    /// State for `herald` with `metrics`; `metrics_on_main` serves `/metrics` here.
    pub fn with_metrics(herald: Arc<Herald>, metrics: Arc<Metrics>, metrics_on_main: bool) -> Self {
        let limit = herald.config().visitor_subscription_limit;
        let limits = Arc::new(Limits::new(
            herald.config().limits.clone(),
            metrics.limit_refusals.clone(),
        ));
        AppState {
            herald,
            slots: Arc::new(crate::subscribe::SubscriptionSlots::new(limit)),
            limits,
            metrics,
            metrics_on_main,
            webhooks: None,
            auth: Arc::new(crate::auth::Authorizer::disabled()),
            attachments: None,
            upstream: None,
            webpush: None,
            idempotency: Arc::new(crate::idempotency::Idempotency::in_memory()),
        }
    }

    /// What the subscription core needs of this state, lent for one request.
    pub fn streams(&self) -> crate::subscribe::Streams<'_> {
        crate::subscribe::Streams {
            herald: &self.herald,
            auth: &self.auth,
            limits: &self.limits,
            slots: &self.slots,
        }
    }

    /// The same state with access control by `auth`.
    pub fn with_auth(mut self, auth: Arc<crate::auth::Authorizer>) -> Self {
        self.auth = auth;
        self
    }
}

/// The whole HTTP surface as one router.
pub fn router(state: AppState) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// What the dispatcher establishes about a request before routing it (ntfy's
/// order: authenticate, then charge the visitor). Every HTTP path that answers a
/// request itself starts here: the router ([`dispatch`]) and the listener's direct
/// publish path (`crate::listener::publish`).
pub(crate) struct Admitted {
    pub(crate) principal: crate::auth::Principal,
    pub(crate) visitor: limits::Visitor,
    pub(crate) publisher: publish::Publisher,
    pub(crate) client_ip: std::net::IpAddr,
    charge: Charge,
    admission: limits::Admission,
}

/// Authenticates the request (before routing, as ntfy does: wrong credentials are a
/// 401 anywhere), then charges its visitor (an authenticated user is its own
/// visitor, `user:<name>`). herald's own probes and metrics stay open. The
/// `webhook-admin-token` is no login: on `/v1/webhooks` the webhook API checks it.
/// The request is charged as of `at` (its arrival, as the caller read it).
/// `Err` is the finished answer (CORS included) to a refused request.
pub(crate) async fn admit(
    state: &AppState,
    method: &Method,
    segments: &[&str],
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
    peer: std::net::IpAddr,
    at: tokio::time::Instant,
) -> Result<Admitted, Response> {
    let client_ip = state.limits.client_ip(peer, headers);
    let webhook_admin = matches!(segments, ["v1", "webhooks", ..])
        && webhooks::presents_admin_token(state, headers, query);
    let principal = if account::needs_authentication(segments) && !webhook_admin {
        match account::authenticate(state, headers, query, client_ip)
            .await
            .and_then(|p| Ok(proxy_auth::apply(state, headers, peer, p)?))
        {
            Ok(p) => p,
            Err(e) => return Err(with_cors(error_response(&state.limits, e))),
        }
    } else {
        crate::auth::Principal::anonymous()
    };
    let visitor = state.limits.visitor(client_ip, principal.user_name());
    // Publishes charge an `X-Email` and attachment uploads to this visitor (api::publish).
    let publisher = publish::Publisher {
        visitor: visitor.clone(),
        client_ip,
        user: principal.user_name().map(str::to_string),
    };
    let charge = Charge::of(method, segments);
    // Like ntfy's `limitRequests` middleware: charged before the request is parsed.
    // In cluster mode the charge is one round trip to the shared limits.
    let admission = if state.limits.is_shared() {
        state.limits.admit_any(&visitor, charge).await
    } else {
        state.limits.admit_at(&visitor, charge, at)
    };
    // Refused by a visitor limit: no route runs.
    match admission {
        Ok(admission) => Ok(Admitted {
            principal,
            visitor,
            publisher,
            client_ip,
            charge,
            admission,
        }),
        Err(refusal) => Err(with_cors(refusal_response(
            &state.limits,
            refusal,
            &visitor,
        ))),
    }
}

/// The answer to an admitted request whose route produced `result`: a failed
/// publish's message is given back to the visitor's daily limit (admission counted
/// it), errors get ntfy's shape, and every answer the CORS header.
pub(crate) async fn conclude(
    state: &AppState,
    admitted: Admitted,
    result: Result<Response, ApiError>,
) -> Response {
    let success = result.as_ref().is_ok_and(|r| r.status().is_success());
    settle(state, admitted, success).await;
    with_cors(result.unwrap_or_else(|e| failure_response(state, e)))
}

/// [`conclude`] for a publish the listener answers itself: a successful one stays a
/// [`publish::Published`] for it to write (with the CORS header), anything else
/// becomes the `Response` `conclude` would give.
pub(crate) async fn conclude_publish(
    state: &AppState,
    admitted: Admitted,
    result: Result<publish::Published, ApiError>,
) -> Result<publish::Published, Response> {
    settle(state, admitted, result.is_ok()).await;
    result.map_err(|e| with_cors(failure_response(state, e)))
}

/// Gives a failed publish's message back to the visitor's daily limit, which counted
/// it at admission (this node's registry or, in cluster mode, the shared limits).
async fn settle(state: &AppState, admitted: Admitted, success: bool) {
    if admitted.charge == Charge::Publish {
        state
            .limits
            .settle_message(&admitted.visitor, admitted.admission, success)
            .await;
    }
}

/// A route's error in ntfy's shape, counted when it is a limit's refusal.
fn failure_response(state: &AppState, e: ApiError) -> Response {
    if let Some(limit) = http_limit(&e) {
        state.limits.refused(limit);
    }
    error_response(&state.limits, e)
}

/// ntfy's route table, in its order of evaluation.
async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(&path).split('/').collect();
    let admitted = match admit(
        &state,
        &method,
        &segments,
        req.headers(),
        req.uri().query(),
        peer,
        tokio::time::Instant::now(),
    )
    .await
    {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let (principal, visitor, client_ip) = (
        admitted.principal.clone(),
        admitted.visitor.clone(),
        admitted.client_ip,
    );
    let mut req = req;
    req.extensions_mut().insert(principal.clone());
    req.extensions_mut().insert(admitted.publisher.clone());

    // The web app's pages and files (`web-root`), before the API's routes: a
    // browser's `GET /<topic>` (Accept: text/html) opens the app on that topic.
    if let Some(resp) = crate::web::serve(&state, &method, &segments, req.headers()) {
        return with_cors(resp);
    }
    let result = match (&method, segments.as_slice()) {
        (&Method::OPTIONS, _) => Ok(info::options()),
        (&Method::GET, ["v1", "health"]) => Ok(info::health(&state)),
        (&Method::GET, ["healthz"]) => Ok(info::healthz(&state)),
        (&Method::GET, ["readyz"]) => Ok(info::readyz(&state).await),
        (&Method::GET, ["v1", "stats"]) => info::stats(&state).await,
        (&Method::GET, ["v1", "config"]) => Ok(info::config(&state)),
        (&Method::GET, ["v1", "account"]) => {
            state.limits.refresh_shared_usage(&visitor).await;
            account::get(&state, &principal, &visitor).await
        }
        (_, ["v1", "account", "token"]) => account::token(&state, &principal, req).await,
        (_, ["v1", "users"]) => account::users(&state, &principal, req).await,
        (_, ["v1", "users", "access"]) => account::access(&state, &principal, req).await,
        (&Method::GET, ["metrics"]) if state.metrics_on_main => Ok(info::metrics(&state).await),
        (_, ["v1", "webhooks", rest @ ..]) => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            webhooks::handle(&state, req, &rest, client_ip).await
        }
        (&Method::GET | &Method::HEAD, ["file", file]) => {
            let file = file.to_string();
            files::serve(&state, req, &file).await
        }
        (&Method::GET, ["_matrix", "push", "v1", "notify"]) => matrix::discovery(&state),
        (&Method::POST, ["_matrix", "push", "v1", "notify"]) => matrix::notify(&state, req).await,
        (_, ["v1", "webpush"]) => webpush::handle(&state, &principal, req).await,
        (&Method::PUT | &Method::POST, [""]) => publish::publish_json(&state, req).await,
        (&Method::PUT | &Method::POST, [topic]) if topic::is_valid_name(topic) => {
            let topic = topic.to_string();
            publish::publish(&state, req, &topic, None).await
        }
        (&Method::PUT | &Method::POST, [topic, sid])
            if topic::is_valid_name(topic) && topic::is_valid_name(sid) =>
        {
            let (topic, sid) = (topic.to_string(), sid.to_string());
            publish::publish(&state, req, &topic, Some(sid)).await
        }
        (&Method::DELETE, [topic, sid])
            if topic::is_valid_name(topic) && topic::is_valid_name(sid) =>
        {
            let kind = PublishKind::Delete {
                sequence_id: sid.to_string(),
            };
            publish::sequence_action(&state, &principal, topic, kind).await
        }
        (&Method::GET, [topic, sid, "delete"])
            if topic::is_valid_name(topic) && topic::is_valid_name(sid) =>
        {
            let kind = PublishKind::Delete {
                sequence_id: sid.to_string(),
            };
            publish::sequence_action(&state, &principal, topic, kind).await
        }
        (&Method::GET | &Method::PUT, [topic, sid, "clear" | "read"])
            if topic::is_valid_name(topic) && topic::is_valid_name(sid) =>
        {
            let kind = PublishKind::Clear {
                sequence_id: sid.to_string(),
            };
            publish::sequence_action(&state, &principal, topic, kind).await
        }
        (&Method::GET, [topic, "publish" | "send" | "trigger"]) if topic::is_valid_name(topic) => {
            let topic = topic.to_string();
            publish::publish(&state, req, &topic, None).await
        }
        (&Method::GET, [topics, kind @ ("json" | "sse" | "raw" | "ws" | "auth")])
            if is_topic_list(topics) =>
        {
            let topics = topics.to_string();
            match *kind {
                "json" => {
                    subscribe::subscribe(&state, req, &topics, StreamFormat::Json, &visitor).await
                }
                "sse" => {
                    subscribe::subscribe(&state, req, &topics, StreamFormat::Sse, &visitor).await
                }
                "raw" => {
                    subscribe::subscribe(&state, req, &topics, StreamFormat::Raw, &visitor).await
                }
                "ws" => ws::subscribe(&state, req, &topics, &visitor).await,
                _ => info::topic_auth(&state, &principal, &topics),
            }
        }
        (&Method::GET, [topic]) if topic::is_valid_name(topic) => info::topic_page(req),
        (&Method::GET | &Method::HEAD, [""]) => Ok(info::index()),
        _ => Err(ApiError::NOT_FOUND),
    };
    conclude(&state, admitted, result).await
}

pub(crate) fn with_cors(mut resp: Response) -> Response {
    resp.headers_mut()
        .entry(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .or_insert(HeaderValue::from_static("*"));
    resp
}

/// The answer to a visitor-limit refusal, counted by limit, in ntfy's code with
/// `Retry-After` (whole seconds, at least 1).
pub fn refusal_response(
    limits: &Limits,
    refusal: limits::Refusal,
    visitor: &limits::Visitor,
) -> Response {
    limits.refused(refusal.limit);
    let retry = limits.retry_after_refusal(&refusal, visitor);
    with_retry_after(ApiError::from(refusal).into_response(), retry)
}

/// The answer for an error that is no visitor-limit refusal: a `429` (too many auth
/// failures, the global topic limit) still gets `Retry-After` (one request replenish
/// interval; one second when the password-check gate was full).
fn error_response(limits: &Limits, error: ApiError) -> Response {
    if error == ApiError::PASSWORD_CHECKS_BUSY {
        // The password-check gate was full: counted as a refusal; a slot frees up
        // within a fraction of a second.
        limits.refused(limits::Limit::PasswordChecks);
        return with_retry_after(error.into_response(), std::time::Duration::from_secs(1));
    }
    let retry = (error.http == 429).then(|| limits.replenish_interval());
    let resp = error.into_response();
    match retry {
        Some(retry) => with_retry_after(resp, retry),
        None => resp,
    }
}

fn with_retry_after(mut resp: Response, retry: std::time::Duration) -> Response {
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(limits::retry_secs(retry)),
    );
    resp
}

/// The HTTP layer's own bounds behind an error answer (a request body too large,
/// the server's topic count reached), counted with the visitor limits' refusals in
/// `herald_limit_refusals_total`.
fn http_limit(error: &ApiError) -> Option<limits::Limit> {
    if error.code == ApiError::JSON_TOO_LARGE.code {
        Some(limits::Limit::BodySize)
    } else if error.code == ApiError::TOO_MANY_TOPICS.code {
        Some(limits::Limit::GlobalTopics)
    } else if error.code == ApiError::TOO_MANY_EMAILS.code {
        Some(limits::Limit::Emails)
    } else {
        None
    }
}

/// `t1,t2,...` where each element is a valid topic name.
fn is_topic_list(s: &str) -> bool {
    !s.is_empty() && s.split(',').all(topic::is_valid_name)
}

/// Splits and checks a topic list against the disallowed names (ntfy `topicsFromIDs`).
pub fn parse_topics(list: &str) -> Result<Vec<String>, ApiError> {
    Ok(crate::subscribe::parse_topic_list(list)?)
}

/// A JSON response with ntfy's content type, newline-terminated.
pub fn json_response(status: StatusCode, body: impl Into<Vec<u8>>) -> Response {
    let mut body = body.into();
    if body.last() != Some(&b'\n') {
        body.push(b'\n');
    }
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// [`json_response`] for a body already held as [`Bytes`](axum::body::Bytes) (an
/// event's encoded JSON line, shared with its subscribers): not copied when it
/// already ends with its newline.
pub(crate) fn json_response_shared(status: StatusCode, body: &axum::body::Bytes) -> Response {
    if body.last() != Some(&b'\n') {
        return json_response(status, body.to_vec());
    }
    let mut resp = Response::new(Body::from(body.clone()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The query string as ordered `(name, value)` pairs (names kept as sent).
pub fn query_pairs(req: &Request) -> Vec<(String, String)> {
    parse_query(req.uri().query())
}

/// A query string's decoded name/value pairs, in order.
pub(crate) fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_lists() {
        assert!(is_topic_list("a,b"));
        assert!(!is_topic_list("a,,b"));
        assert!(!is_topic_list(""));
    }
}
