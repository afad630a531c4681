//! Proxy authentication (`auth-user-header`, ntfy's): an authenticating reverse proxy
//! (Authelia, oauth2-proxy, Authentik) checks the user and names them in a header.
//! Whether the header may be believed is the caller's decision (the TCP peer must
//! be a trusted proxy, `api::proxy_auth`); here the name becomes a [`Principal`]:
//! an existing user of the store, with their role and ACL entries.

use axum::http::HeaderMap;

use super::{AuthError, Authorizer, Principal, is_valid_user_name};

impl Authorizer {
    /// The user `header` names: `Ok(None)` without the header (the request stays
    /// anonymous, so `*` ACL entries keep working, as in ntfy); `Unauthorized` for a
    /// malformed or unknown name.
    pub fn header_user(
        &self,
        headers: &HeaderMap,
        header: &str,
    ) -> Result<Option<Principal>, AuthError> {
        let Some(en) = &self.enabled else {
            return Ok(None);
        };
        let Some(value) = headers.get(header) else {
            return Ok(None);
        };
        let name = value.to_str().map_err(|_| AuthError::Unauthorized)?.trim();
        if name.is_empty() {
            return Ok(None);
        }
        if !is_valid_user_name(name) {
            return Err(AuthError::Unauthorized);
        }
        let snap = Self::snapshot(en);
        match snap.users.get(name) {
            Some(u) => Ok(Some(Principal::user(name, u.role, None))),
            None => Err(AuthError::Unauthorized),
        }
    }
}
