//! The account and admin endpoints of access control, as ntfy serves them:
//! `GET /v1/account` for a logged-in user, `/v1/account/token` (create, list,
//! extend, delete the caller's tokens) and the admin-only `/v1/users` and
//! `/v1/users/access`. With access control off they answer `404 40401`, as ntfy does
//! without a user database.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, info, json_response};
use crate::auth::store::{
    AuthStore, AuthStoreError, EVERYONE, TokenChange, TokenRecord, UserRecord,
};
use crate::auth::token::{self, TokenSelector};
use crate::auth::{Access, Principal, Role, acl, is_valid_user_name, password};
use crate::error::ApiError;
use crate::model::now_unix;

/// ntfy's default token lifetime for tokens made or extended over the API.
const TOKEN_EXPIRY_SECS: i64 = 72 * 3600;
/// Largest JSON body of these endpoints (ntfy's `jsonBodyBytesLimit`).
const JSON_LIMIT: usize = 16 * 1024;

/// Whether a path is authenticated before routing: everything but herald's own
/// probes and metrics.
pub fn needs_authentication(segments: &[&str]) -> bool {
    !matches!(segments, ["healthz"] | ["readyz"] | ["metrics"])
}

/// The principal of a request (anonymous when access control is off).
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: IpAddr,
) -> Result<Principal, ApiError> {
    Ok(state.auth.authenticate(headers, query, peer).await?)
}

fn store(state: &AppState) -> Result<&Arc<dyn AuthStore>, ApiError> {
    state.auth.store().ok_or(ApiError::NOT_FOUND)
}

fn store_error(e: AuthStoreError) -> ApiError {
    match e {
        AuthStoreError::UserNotFound(_) => ApiError::USER_NOT_FOUND,
        AuthStoreError::UserExists(_) => ApiError::USER_EXISTS,
        AuthStoreError::TokenNotFound => ApiError::BAD_REQUEST.with_detail("token not found"),
        AuthStoreError::TokenAmbiguous(_) => {
            ApiError::BAD_REQUEST.with_detail("more than one token matches, give the whole token")
        }
        AuthStoreError::Backend(e) => {
            tracing::error!(error = %e, "auth store failure");
            ApiError::INTERNAL
        }
    }
}

/// Runs a store call off the runtime threads (SQLite may wait for the CLI's lock).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AuthStoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::INTERNAL)?
        .map_err(store_error)
}

/// Provisioned users and tokens belong to the configuration: `409 40905`/`40906`.
async fn refuse_provisioned_user(store: &Arc<dyn AuthStore>, name: &str) -> Result<(), ApiError> {
    let (store, name) = (store.clone(), name.to_string());
    if blocking(move || crate::auth::provision::is_provisioned_user(&*store, &name)).await? {
        return Err(ApiError::PROVISIONED_USER);
    }
    Ok(())
}

async fn refuse_provisioned_token(
    store: &Arc<dyn AuthStore>,
    user: &str,
    selector: &crate::auth::token::TokenSelector,
) -> Result<(), ApiError> {
    let (store, user, selector) = (store.clone(), user.to_string(), selector.clone());
    let provisioned = blocking(move || {
        let found = store.find_token(&user, &selector)?;
        crate::auth::provision::is_provisioned_token(&*store, &user, &found.digest)
    })
    .await?;
    if provisioned {
        return Err(ApiError::PROVISIONED_TOKEN);
    }
    Ok(())
}

async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|_| ApiError::INTERNAL)?
        .map_err(|e| match e {
            password::PasswordError::Empty | password::PasswordError::TooLong => {
                ApiError::BAD_REQUEST.with_detail(e)
            }
            _ => {
                tracing::error!(error = %e, "cannot hash a password");
                ApiError::INTERNAL
            }
        })
}

/// Reads a JSON body of at most [`JSON_LIMIT`] bytes; an empty body is `T`'s
/// default when `allow_empty`.
pub(crate) async fn read_json<T: for<'de> Deserialize<'de> + Default>(
    req: Request,
    allow_empty: bool,
) -> Result<T, ApiError> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), JSON_LIMIT);
    let bytes = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::JSON_TOO_LARGE);
        }
        Err(e) => return Err(ApiError::body_read_error(&*e, ApiError::BAD_REQUEST)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) && allow_empty {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|_| ApiError::JSON_INVALID)
}

/// A token's requested `expires`: `0` (never) or a unix time, see
/// [`token::expiry_is_valid`].
fn check_expiry(expires: Option<i64>) -> Result<(), ApiError> {
    match expires {
        Some(e) if !token::expiry_is_valid(e) => Err(ApiError::BAD_REQUEST
            .with_detail("expires must be 0 (never) or a unix time no later than the year 9999")),
        _ => Ok(()),
    }
}

fn peer_of(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default()
}

fn token_json(t: &TokenRecord, full: Option<&str>) -> Value {
    let mut v = json!({
        "token": full.map_or_else(|| format!("{}...", t.shown), str::to_string),
    });
    if !t.label.is_empty() {
        v["label"] = json!(t.label);
    }
    v["last_access"] = json!(t.last_access);
    if !t.last_origin.is_empty() {
        v["last_origin"] = json!(t.last_origin);
    }
    if t.expires > 0 {
        v["expires"] = json!(t.expires);
    }
    v
}

fn success() -> Response {
    json_response(StatusCode::OK, br#"{"success":true}"#.to_vec())
}

/// `GET /v1/account`: the anonymous answer, plus user name, role and tokens when
/// logged in.
pub async fn get(
    state: &AppState,
    principal: &Principal,
    visitor: &crate::limits::Visitor,
) -> Result<Response, ApiError> {
    let mut body = info::account_body(state, visitor);
    if let (Some(name), Some(role), Some(store)) =
        (principal.user_name(), principal.role(), state.auth.store())
    {
        body["username"] = json!(name);
        body["role"] = json!(role.as_str());
        let (store, user) = (store.clone(), name.to_string());
        let tokens = blocking(move || store.tokens(&user)).await?;
        if !tokens.is_empty() {
            body["tokens"] = Value::Array(tokens.iter().map(|t| token_json(t, None)).collect());
        }
    }
    Ok(json_response(StatusCode::OK, body.to_string()))
}

#[derive(Debug, Default, Deserialize)]
struct TokenRequest {
    token: Option<String>,
    label: Option<String>,
    expires: Option<i64>,
}

/// `/v1/account/token`: `POST` creates, `PATCH` changes or extends (72 h by
/// default), `DELETE` removes (`X-Token` header; default: the token in use), and
/// `GET` lists the caller's tokens (herald's addition; ntfy lists them in
/// `GET /v1/account`).
pub async fn token(
    state: &AppState,
    principal: &Principal,
    req: Request,
) -> Result<Response, ApiError> {
    let store = store(state)?.clone();
    let user = principal
        .user_name()
        .ok_or(ApiError::UNAUTHORIZED)?
        .to_string();
    let method = req.method().clone();
    match method {
        Method::POST => {
            let origin = peer_of(&req);
            let body: TokenRequest = read_json(req, true).await?;
            check_expiry(body.expires)?;
            let now = now_unix();
            let value = token::generate().map_err(|_| ApiError::INTERNAL)?;
            let record = TokenRecord {
                digest: token::digest(&value),
                user,
                shown: token::shown_part(&value).to_string(),
                label: body.label.unwrap_or_default(),
                expires: body.expires.unwrap_or(now + TOKEN_EXPIRY_SECS),
                last_access: now,
                last_origin: origin,
                created: now,
            };
            let stored = record.clone();
            blocking(move || store.add_token(&stored, token::MAX_PER_USER)).await?;
            Ok(json_response(
                StatusCode::OK,
                token_json(&record, Some(&value)).to_string(),
            ))
        }
        Method::PATCH => {
            let body: TokenRequest = read_json(req, true).await?;
            check_expiry(body.expires)?;
            let selector = selector(body.token.as_deref(), principal)?;
            let change = TokenChange {
                expires: match (body.expires, &body.label) {
                    (Some(e), _) => Some(e),
                    (None, None) => Some(now_unix() + TOKEN_EXPIRY_SECS),
                    (None, Some(_)) => None,
                },
                label: body.label,
            };
            refuse_provisioned_token(&store, &user, &selector).await?;
            let changed = blocking(move || store.change_token(&user, &selector, &change)).await?;
            Ok(json_response(
                StatusCode::OK,
                token_json(&changed, None).to_string(),
            ))
        }
        Method::DELETE => {
            let named = token_param(req.headers(), req.uri().query());
            let selector = selector(named.as_deref(), principal)?;
            refuse_provisioned_token(&store, &user, &selector).await?;
            blocking(move || store.remove_token(&user, &selector)).await?;
            Ok(success())
        }
        Method::GET => {
            let tokens = blocking(move || store.tokens(&user)).await?;
            let list: Vec<Value> = tokens.iter().map(|t| token_json(t, None)).collect();
            Ok(json_response(
                StatusCode::OK,
                Value::Array(list).to_string(),
            ))
        }
        _ => Err(ApiError::NOT_FOUND),
    }
}

/// ntfy's `readParam(r, "X-Token", "Token")`: headers, then lowercase query names.
fn token_param(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    for name in ["x-token", "token"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            if !v.is_empty() {
                return Some(v.to_string());
            }
        }
    }
    let pairs: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    ["x-token", "token"].iter().find_map(|name| {
        pairs
            .iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
    })
}

/// The token a request names, or the one it authenticated with.
fn selector(named: Option<&str>, principal: &Principal) -> Result<TokenSelector, ApiError> {
    match named.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => TokenSelector::parse(s)
            .ok_or_else(|| ApiError::BAD_REQUEST.with_detail("token not found")),
        None => principal
            .token()
            .map(|d| TokenSelector::Full(*d))
            .ok_or(ApiError::NO_TOKEN_PROVIDED),
    }
}

/// The store, for admins only (`401` for everyone else, `404` with auth off).
fn admin_store(state: &AppState, principal: &Principal) -> Result<Arc<dyn AuthStore>, ApiError> {
    let store = store(state)?.clone();
    if principal.is_admin() {
        Ok(store)
    } else {
        Err(ApiError::UNAUTHORIZED)
    }
}

#[derive(Debug, Default, Deserialize)]
struct UserRequest {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// `/v1/users` (admins only): `GET` lists users and their grants, `POST` adds a
/// user, `PUT` adds or changes one's password, `DELETE` removes a (non-admin) user.
pub async fn users(
    state: &AppState,
    principal: &Principal,
    req: Request,
) -> Result<Response, ApiError> {
    let store = admin_store(state, principal)?;
    let method = req.method().clone();
    match method {
        Method::GET => {
            let data = blocking(move || store.load()).await?;
            let grants_of = |name: &str| -> Vec<Value> {
                data.grants
                    .iter()
                    .filter(|g| g.user == name)
                    .map(|g| json!({"topic": g.grant.pattern, "permission": g.grant.access.as_str()}))
                    .collect()
            };
            let mut list: Vec<Value> = data
                .users
                .iter()
                .map(|u| {
                    let mut v = json!({"username": u.name, "role": u.role.as_str()});
                    let grants = grants_of(&u.name);
                    if !grants.is_empty() {
                        v["grants"] = Value::Array(grants);
                    }
                    v
                })
                .collect();
            let mut everyone = json!({"username": EVERYONE, "role": "anonymous"});
            let grants = grants_of(EVERYONE);
            if !grants.is_empty() {
                everyone["grants"] = Value::Array(grants);
            }
            list.push(everyone);
            Ok(json_response(
                StatusCode::OK,
                Value::Array(list).to_string(),
            ))
        }
        Method::POST | Method::PUT => {
            let body: UserRequest = read_json(req, false).await?;
            if !is_valid_user_name(&body.username) || body.password.is_empty() {
                return Err(
                    ApiError::BAD_REQUEST.with_detail("username invalid, or password missing")
                );
            }
            let (lookup, name) = (store.clone(), body.username.clone());
            let existing = blocking(move || lookup.user(&name)).await?;
            match existing {
                Some(_) if method == Method::POST => Err(ApiError::USER_EXISTS),
                Some(u) if u.role == Role::Admin => Err(ApiError::FORBIDDEN),
                Some(_) => {
                    refuse_provisioned_user(&store, &body.username).await?;
                    let hash = hash_password(body.password).await?;
                    blocking(move || store.set_password_hash(&body.username, &hash)).await?;
                    Ok(success())
                }
                None => {
                    let hash = hash_password(body.password).await?;
                    let user = UserRecord {
                        name: body.username,
                        hash,
                        role: Role::User,
                    };
                    blocking(move || store.add_user(&user)).await?;
                    Ok(success())
                }
            }
        }
        Method::DELETE => {
            let body: UserRequest = read_json(req, false).await?;
            let (lookup, name) = (store.clone(), body.username.clone());
            match blocking(move || lookup.user(&name)).await? {
                None => Err(ApiError::USER_NOT_FOUND),
                Some(u) if u.role == Role::Admin => {
                    Err(ApiError::UNAUTHORIZED
                        .with_detail("can only remove regular users from API"))
                }
                Some(_) => {
                    refuse_provisioned_user(&store, &body.username).await?;
                    blocking(move || store.remove_user(&body.username)).await?;
                    Ok(success())
                }
            }
        }
        _ => Err(ApiError::NOT_FOUND),
    }
}

#[derive(Debug, Default, Deserialize)]
struct AccessRequest {
    #[serde(default)]
    username: String,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    permission: String,
}

/// `/v1/users/access` (admins only): `PUT`/`POST` sets a user's (or everyone's,
/// `*`) access to a topic pattern, `DELETE` removes it (or all of the user's
/// entries when no topic is given).
pub async fn access(
    state: &AppState,
    principal: &Principal,
    req: Request,
) -> Result<Response, ApiError> {
    let store = admin_store(state, principal)?;
    let method = req.method().clone();
    if !matches!(method, Method::PUT | Method::POST | Method::DELETE) {
        return Err(ApiError::NOT_FOUND);
    }
    let body: AccessRequest = read_json(req, false).await?;
    let user = if body.username == "everyone" {
        EVERYONE.to_string()
    } else {
        body.username
    };
    if user != EVERYONE {
        let (lookup, name) = (store.clone(), user.clone());
        match blocking(move || lookup.user(&name)).await? {
            None => return Err(ApiError::USER_NOT_FOUND),
            Some(u) if u.role == Role::Admin && method != Method::DELETE => {
                return Err(
                    ApiError::BAD_REQUEST.with_detail("admins have full access to every topic")
                );
            }
            Some(_) => {}
        }
    }
    if method == Method::DELETE {
        let topic = (!body.topic.is_empty()).then_some(body.topic);
        blocking(move || store.reset_access(Some(&user), topic.as_deref())).await?;
        return Ok(success());
    }
    let access = Access::parse(&body.permission).ok_or(ApiError::PERMISSION_INVALID)?;
    if !acl::is_valid_pattern(&body.topic) {
        return Err(ApiError::TOPIC_INVALID);
    }
    blocking(move || store.set_access(&user, &body.topic, access)).await?;
    Ok(success())
}
