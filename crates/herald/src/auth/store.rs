//! Where users, tokens and ACL entries live: the [`AuthStore`] trait.
//!
//! The trait speaks users, tokens and grants, not SQL, so a shared backend (Redis,
//! for several nodes) can implement it next to the embedded SQLite one
//! ([`super::sqlite`]). Every method is one atomic change: a method that touches
//! several rows (removing a user with their tokens and grants, replacing the
//! oldest token) does so in one transaction.
//!
//! The server does not query the store per request: it keeps a snapshot
//! ([`AuthData`]) and reloads it when [`AuthStore::generation`] changes, which is
//! how changes made by the CLI (another process) reach a running server.
//!
//! Methods block. The server calls the changing ones from blocking threads
//! (`spawn_blocking`); `generation` (every authenticated request) and `load` (after
//! the generation moved) run on the request path and must be quick: SQLite answers
//! both from the local file; a networked store would keep a local replica and a
//! counter that its change notifications bump, rather than ask the network per
//! request.

use super::acl::Grant;
use super::token::{TokenDigest, TokenSelector};
use super::{Access, Role};

/// The user name ntfy uses for "everyone" (anonymous) in ACL entries.
pub const EVERYONE: &str = "*";

/// A user as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// argon2 PHC string.
    pub hash: String,
    pub role: Role,
}

// The hash stays out of debug output.
impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// An access token as stored (never the token itself).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub digest: TokenDigest,
    pub user: String,
    /// The first characters of the token (`tk_abcdefgh`), for listing and selecting.
    pub shown: String,
    pub label: String,
    /// Unix seconds; 0 = never expires.
    pub expires: i64,
    /// Unix seconds of the last use (0 = never used).
    pub last_access: i64,
    /// IP address of the last use ("" = unknown).
    pub last_origin: String,
    pub created: i64,
}

// The digest stays out of debug output; the shown prefix identifies the token.
impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("user", &self.user)
            .field("shown", &self.shown)
            .field("label", &self.label)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl TokenRecord {
    /// Whether the token has expired at `now` (unix seconds).
    pub fn expired(&self, now: i64) -> bool {
        self.expires > 0 && self.expires <= now
    }
}

/// A grant with the user it belongs to ([`EVERYONE`] for anonymous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserGrant {
    pub user: String,
    pub grant: Grant,
}

/// Everything the server needs to authenticate and authorize, loaded at once.
#[derive(Debug, Clone, Default)]
pub struct AuthData {
    pub users: Vec<UserRecord>,
    pub tokens: Vec<TokenRecord>,
    pub grants: Vec<UserGrant>,
}

/// A change to a token's label or expiry.
#[derive(Debug, Clone, Default)]
pub struct TokenChange {
    pub label: Option<String>,
    pub expires: Option<i64>,
}

/// Store failures. Messages never contain secrets (no tokens, hashes or passwords).
#[derive(Debug, thiserror::Error)]
pub enum AuthStoreError {
    #[error("user {0} does not exist")]
    UserNotFound(String),
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("token not found")]
    TokenNotFound,
    #[error("more than one token starts with {0}; give the whole token")]
    TokenAmbiguous(String),
    #[error("auth database: {0}")]
    Backend(String),
}

/// Durable users, tokens and ACL entries.
pub trait AuthStore: Send + Sync + std::fmt::Debug {
    /// A number that changes whenever anything in the store changed, including
    /// changes by other processes. Cheap: called on every authenticated request.
    fn generation(&self) -> Result<u64, AuthStoreError>;
    /// Everything, for the server's snapshot.
    fn load(&self) -> Result<AuthData, AuthStoreError>;

    fn user(&self, name: &str) -> Result<Option<UserRecord>, AuthStoreError>;
    /// Adds a user; [`AuthStoreError::UserExists`] if the name is taken.
    fn add_user(&self, user: &UserRecord) -> Result<(), AuthStoreError>;
    /// Removes a user with their tokens and grants.
    fn remove_user(&self, name: &str) -> Result<(), AuthStoreError>;
    fn set_password_hash(&self, name: &str, hash: &str) -> Result<(), AuthStoreError>;
    /// Changes a user's role; becoming admin drops their grants (admins need none).
    fn set_role(&self, name: &str, role: Role) -> Result<(), AuthStoreError>;

    /// Sets `user`'s (or [`EVERYONE`]'s) access to `pattern`, replacing an entry
    /// for the same pattern.
    fn set_access(&self, user: &str, pattern: &str, access: Access) -> Result<(), AuthStoreError>;
    /// Removes entries: all of them (`user` `None`), all of one user's, or one.
    fn reset_access(&self, user: Option<&str>, pattern: Option<&str>)
    -> Result<(), AuthStoreError>;

    /// Stores a token; if the user then has more than `max_per_user`, the oldest
    /// go, in the same transaction.
    fn add_token(&self, token: &TokenRecord, max_per_user: usize) -> Result<(), AuthStoreError>;
    /// `user`'s tokens, newest first.
    fn tokens(&self, user: &str) -> Result<Vec<TokenRecord>, AuthStoreError>;
    /// Finds one of `user`'s tokens.
    fn find_token(
        &self,
        user: &str,
        selector: &TokenSelector,
    ) -> Result<TokenRecord, AuthStoreError>;
    /// Changes the label and/or expiry of one of `user`'s tokens; returns it changed.
    fn change_token(
        &self,
        user: &str,
        selector: &TokenSelector,
        change: &TokenChange,
    ) -> Result<TokenRecord, AuthStoreError>;
    fn remove_token(&self, user: &str, selector: &TokenSelector) -> Result<(), AuthStoreError>;
    /// Records a token's use (best effort; callers rate-limit these writes).
    fn touch_token(
        &self,
        digest: &TokenDigest,
        at: i64,
        origin: &str,
    ) -> Result<(), AuthStoreError>;
    /// Deletes tokens that expired before `now`; returns how many.
    fn remove_expired_tokens(&self, now: i64) -> Result<usize, AuthStoreError>;
}
