//! Why access control refused a request, in its own terms: each edge answers it in
//! its wire form (HTTP: ntfy's `401 40101`, `403 40301`, `429 42909`, mapped in
//! `crate::error`).

/// A refusal by [`super::Authorizer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Credentials were presented and are wrong, malformed or expired.
    #[error("unauthorized")]
    Unauthorized,
    /// The principal may not do this to the topic.
    #[error("forbidden")]
    Forbidden,
    /// Too many failed attempts from this address or for this user name. The
    /// throttle does not say when the next attempt is allowed: the HTTP edge answers
    /// `Retry-After` with one request replenish interval, as for other `429`s.
    #[error("too many authentication failures")]
    TooManyFailures,
    /// A password had to be checked and the password-check gate had no room
    /// (`auth::gate`): nothing was checked and nothing failed; a retry within about a
    /// second may succeed.
    #[error("password checks busy")]
    PasswordChecksBusy,
}
