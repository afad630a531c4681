//! The two credentials of the webhook API that are not user logins.
//!
//! - **Management tokens** (`whm_` + 29 random characters, about 150 bits): each
//!   webhook gets one at registration, answered once. On an open server (no access
//!   control) the topic name is the only secret, as in ntfy, so whoever registers a
//!   webhook must not be able to see or change anyone else's, and nobody may list
//!   them; the token is what ties a webhook to its creator. Only its SHA-256 digest is
//!   stored (a fast hash suffices for a high-entropy secret, as for access tokens,
//!   `crate::auth::token`), compared in constant time.
//! - **The webhook admin token** (`webhook-admin-token`): whoever presents it may
//!   register patterns, replay, and see and manage every webhook, in every mode. It
//!   never appears in `Debug` output or logs.
//!
//! Both arrive as `Authorization: Bearer ...` (or any form `crate::auth::credentials`
//! reads as a token). A `whm_` token is not a user credential: the authorizer treats
//! it as anonymous everywhere (`Authorizer::authenticate` in `auth`), so it grants
//! nothing outside `/v1/webhooks`.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::auth::credentials::{self, Credentials, Presented};
use crate::auth::token::{self as auth_token, TokenDigest};

/// The prefix of management tokens (defined with the other token formats, so that
/// the authorizer recognises it without importing this module).
pub const PREFIX: &str = auth_token::WEBHOOK_MANAGEMENT_PREFIX;
/// Random characters after the prefix (as many as an access token has).
const RANDOM_CHARS: usize = 29;

/// A new management token and the digest to store.
pub fn generate() -> Result<(String, TokenDigest), getrandom::Error> {
    let token = auth_token::generate_with_prefix(PREFIX, RANDOM_CHARS)?;
    let digest = auth_token::digest(&token);
    Ok((token, digest))
}

/// Whether `token` has a management token's prefix (not necessarily a valid one).
pub fn is_management_token(token: &str) -> bool {
    auth_token::is_webhook_management(token)
}

/// Whether the presented `token` is the one whose digest is `stored`.
pub fn matches(stored: &TokenDigest, token: &str) -> bool {
    auth_token::digests_equal(stored, &auth_token::digest(token))
}

/// The token a request presents, if any (`Bearer`, `Basic` with an empty user, or
/// the `auth` query parameter).
pub fn presented(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    match credentials::read(headers, query) {
        Presented::Credentials(Credentials::Token(t)) if !t.is_empty() => Some(t),
        _ => None,
    }
}

/// `webhook-admin-token`: kept as its digest, so comparing takes the same time
/// whatever the presented value's length, and never printed.
#[derive(Clone)]
pub struct AdminToken {
    digest: TokenDigest,
}

impl AdminToken {
    /// The configured value (non-empty: validated by the config).
    pub fn new(value: &str) -> AdminToken {
        AdminToken {
            digest: auth_token::digest(value),
        }
    }

    /// Whether `presented` is the admin token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        self.digest.ct_eq(&auth_token::digest(presented)).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_tokens() {
        let (t, d) = generate().unwrap();
        assert_eq!(t.len(), PREFIX.len() + RANDOM_CHARS);
        assert!(is_management_token(&t));
        assert!(matches(&d, &t));
        assert!(!matches(&d, "whm_other"));
        assert_ne!(generate().unwrap().0, t);
    }

    #[test]
    fn admin_token_matches_and_is_not_printed() {
        let a = AdminToken::new("s3cret-admin");
        assert!(a.matches("s3cret-admin"));
        assert!(!a.matches("s3cret-admin "));
        assert!(!a.matches(""));
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn presented_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h, None), None);
        h.insert("authorization", "Bearer whm_abc".parse().unwrap());
        assert_eq!(presented(&h, None).as_deref(), Some("whm_abc"));
        h.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(presented(&h, None), None);
    }
}
