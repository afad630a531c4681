//! `auth-user-header` at the edge: the one place that decides whether a request's
//! user header may be believed (its TCP peer is a `proxy-trusted-hosts` address and
//! `behind-proxy` is on) before `auth` turns the name into a user. Used by the API
//! dispatcher and the listener's direct subscriptions alike, so no path believes a
//! header the other would ignore.

use std::net::IpAddr;

use axum::http::HeaderMap;

use super::AppState;
use crate::auth::{AuthError, Principal};

/// The request's principal after proxy authentication: credentials in the request
/// (`Authorization`, `?auth=`) win, as in ntfy; an anonymous request from a trusted
/// proxy becomes the user the header names. From anyone else the header is ignored.
pub(crate) fn apply(
    state: &AppState,
    headers: &HeaderMap,
    peer: IpAddr,
    principal: Principal,
) -> Result<Principal, AuthError> {
    let Some(header) = state.herald.config().auth_user_header.as_deref() else {
        return Ok(principal);
    };
    if principal.user_name().is_some() || !state.limits.peer_is_trusted_proxy(peer) {
        return Ok(principal);
    }
    Ok(state
        .auth
        .header_user(headers, header)?
        .unwrap_or(principal))
}
