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
//! both from the local file; the Redis store ([`super::redis`], cluster mode)
//! answers both from a local replica that a thread keeps current, rather than ask
//! the network per request.

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

/// The one token a selector found: [`AuthStoreError::TokenNotFound`] for none,
/// [`AuthStoreError::TokenAmbiguous`] for several (a listed prefix shared by two).
pub fn exactly_one(mut found: Vec<TokenRecord>) -> Result<TokenRecord, AuthStoreError> {
    match found.len() {
        0 => Err(AuthStoreError::TokenNotFound),
        1 => Ok(found.remove(0)),
        _ => Err(AuthStoreError::TokenAmbiguous(found.remove(0).shown)),
    }
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

    /// What the configuration provisioned (`auth-users`, `auth-access`,
    /// `auth-tokens`) as item keys (`super::provision`), so a later start removes
    /// what was dropped from it, and the CLI and API refuse to change it.
    fn provisioned(&self) -> Result<Vec<String>, AuthStoreError>;
    /// Replaces the provisioned items.
    fn set_provisioned(&self, items: &[String]) -> Result<(), AuthStoreError>;
}

/// The behaviour every [`AuthStore`] shares, run against each implementation by its
/// own tests (`sqlite`, `redis`).
#[cfg(test)]
pub(crate) mod contract {
    use super::*;
    use crate::auth::token;

    /// Opens an empty store; each name gives a store of its own.
    pub type Open<'a> = &'a dyn Fn(&str) -> Box<dyn AuthStore>;

    pub fn user(name: &str, role: Role) -> UserRecord {
        UserRecord {
            name: name.into(),
            hash: "$argon2id$fake".into(),
            role,
        }
    }

    /// A new token of `user` and its record.
    pub fn token_for(user: &str, created: i64) -> (String, TokenRecord) {
        let t = token::generate().unwrap();
        let rec = TokenRecord {
            digest: token::digest(&t),
            user: user.into(),
            shown: token::shown_part(&t).into(),
            label: String::new(),
            expires: 0,
            last_access: 0,
            last_origin: String::new(),
            created,
        };
        (t, rec)
    }

    /// Every contract test, each on a store of its own.
    pub fn run_all(open: Open<'_>) {
        users_grants_tokens_round_trip(&*open("round-trip"));
        oldest_tokens_beyond_the_limit_go(&*open("limit"));
        roles_passwords_and_resets(&*open("roles"));
        token_changes_uses_and_expiry(&*open("tokens"));
        own_changes_move_the_generation(&*open("generation"));
        provisioning_follows_the_configuration(&*open("provisioning"));
    }

    /// `auth::provision::apply` on this store: created, marked, then removed when
    /// dropped from the configuration.
    fn provisioning_follows_the_configuration(store: &dyn AuthStore) {
        use crate::auth::provision::{self, Provisioning};
        let hash = "$2b$04$abcdefghijklmnopqrstuuJ5d8Xf0kP0w3dY3c1bJ0m6W2mEo5n2K";
        let token = "tk_0123456789abcdefghijklmnopqrs";
        let p = Provisioning::parse(
            &format!("phil:{hash}:user"),
            "phil:alerts:rw,everyone:up*:wo",
            &format!("phil:{token}:ci"),
        )
        .unwrap();
        provision::apply(store, &p, 1).unwrap();
        assert!(provision::is_provisioned_user(store, "phil").unwrap());
        let digest = token::digest(token);
        assert!(provision::is_provisioned_token(store, "phil", &digest).unwrap());
        assert_eq!(store.provisioned().unwrap().len(), 4);
        // Applying again changes nothing.
        provision::apply(store, &p, 2).unwrap();
        assert_eq!(store.tokens("phil").unwrap().len(), 1);
        let data = store.load().unwrap();
        assert_eq!(data.grants.len(), 2);
        // Dropped from the configuration: removed.
        provision::apply(store, &Provisioning::default(), 3).unwrap();
        assert!(store.user("phil").unwrap().is_none());
        assert!(store.load().unwrap().grants.is_empty());
        assert!(store.provisioned().unwrap().is_empty());
    }

    fn users_grants_tokens_round_trip(store: &dyn AuthStore) {
        store.add_user(&user("phil", Role::User)).unwrap();
        assert!(matches!(
            store.add_user(&user("phil", Role::User)),
            Err(AuthStoreError::UserExists(_))
        ));
        store
            .set_access("phil", "alerts*", Access::READ_ONLY)
            .unwrap();
        store
            .set_access("phil", "alerts*", Access::READ_WRITE)
            .unwrap();
        store
            .set_access(EVERYONE, "public", Access::READ_ONLY)
            .unwrap();
        assert!(matches!(
            store.set_access("nobody", "x", Access::READ_ONLY),
            Err(AuthStoreError::UserNotFound(_))
        ));
        let (t, rec) = token_for("phil", 1);
        store.add_token(&rec, 60).unwrap();
        assert!(matches!(
            store.add_token(&token_for("nobody", 1).1, 60),
            Err(AuthStoreError::UserNotFound(_))
        ));
        let data = store.load().unwrap();
        assert_eq!(data.users.len(), 1);
        assert_eq!(data.users[0].hash, "$argon2id$fake");
        assert_eq!(data.grants.len(), 2);
        assert!(
            data.grants
                .iter()
                .any(|g| g.user == "phil" && g.grant.access == Access::READ_WRITE)
        );
        assert_eq!(data.tokens, vec![rec.clone()]);
        assert_eq!(store.user("phil").unwrap().unwrap().role, Role::User);
        assert!(store.user("nobody").unwrap().is_none());

        let sel = TokenSelector::parse(&token::display(&t)).unwrap();
        let changed = store
            .change_token(
                "phil",
                &sel,
                &TokenChange {
                    label: Some("laptop".into()),
                    expires: None,
                },
            )
            .unwrap();
        assert_eq!(changed.label, "laptop");
        assert_eq!(changed.expires, 0);
        assert!(matches!(
            store.find_token("other", &sel),
            Err(AuthStoreError::TokenNotFound)
        ));
        let full = TokenSelector::parse(&t).unwrap();
        assert_eq!(store.find_token("phil", &full).unwrap().label, "laptop");

        // Removing the user removes their tokens and grants in one go.
        store.remove_user("phil").unwrap();
        assert!(matches!(
            store.remove_user("phil"),
            Err(AuthStoreError::UserNotFound(_))
        ));
        let data = store.load().unwrap();
        assert!(data.users.is_empty() && data.tokens.is_empty());
        assert_eq!(data.grants.len(), 1, "everyone's entry stays");
        // A new user of the same name starts afresh.
        store.add_user(&user("phil", Role::User)).unwrap();
        assert!(store.tokens("phil").unwrap().is_empty());
    }

    fn oldest_tokens_beyond_the_limit_go(store: &dyn AuthStore) {
        store.add_user(&user("phil", Role::User)).unwrap();
        let mut all = Vec::new();
        for i in 0..4 {
            let (_, rec) = token_for("phil", 100 + i);
            store.add_token(&rec, 3).unwrap();
            all.push(rec);
        }
        let left = store.tokens("phil").unwrap();
        assert_eq!(left.len(), 3);
        assert!(!left.iter().any(|t| t.digest == all[0].digest));
        assert_eq!(left[0].digest, all[3].digest, "newest first");
        // Made in the same second: the newest is kept, the oldest goes.
        let mut same = Vec::new();
        for _ in 0..4 {
            let (_, rec) = token_for("phil", 500);
            store.add_token(&rec, 3).unwrap();
            same.push(rec);
        }
        let left: Vec<_> = store
            .tokens("phil")
            .unwrap()
            .into_iter()
            .map(|t| t.digest)
            .collect();
        assert_eq!(
            left,
            vec![same[3].digest, same[2].digest, same[1].digest],
            "newest first, the oldest gone"
        );
        assert_eq!(store.load().unwrap().tokens.len(), 3);
    }

    fn roles_passwords_and_resets(store: &dyn AuthStore) {
        store.add_user(&user("phil", Role::User)).unwrap();
        store.add_user(&user("ben", Role::User)).unwrap();
        store.set_access("phil", "a", Access::READ_ONLY).unwrap();
        store.set_access("phil", "b", Access::WRITE_ONLY).unwrap();
        store.set_access("ben", "a", Access::DENY_ALL).unwrap();
        store.set_access("ben", "b", Access::READ_ONLY).unwrap();
        store.set_access(EVERYONE, "a", Access::READ_ONLY).unwrap();
        let grants = |s: &dyn AuthStore| {
            let mut g: Vec<_> = s
                .load()
                .unwrap()
                .grants
                .into_iter()
                .map(|g| (g.user, g.grant.pattern, g.grant.access))
                .collect();
            g.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            g
        };
        assert_eq!(grants(store).len(), 5);

        store.set_password_hash("phil", "$argon2id$new").unwrap();
        assert_eq!(store.user("phil").unwrap().unwrap().hash, "$argon2id$new");
        assert!(matches!(
            store.set_password_hash("nobody", "x"),
            Err(AuthStoreError::UserNotFound(_))
        ));
        assert!(matches!(
            store.set_role("nobody", Role::Admin),
            Err(AuthStoreError::UserNotFound(_))
        ));

        // Becoming admin drops the user's grants (admins need none).
        store.set_role("phil", Role::Admin).unwrap();
        assert_eq!(store.user("phil").unwrap().unwrap().role, Role::Admin);
        assert!(!grants(store).iter().any(|g| g.0 == "phil"));
        store.set_role("phil", Role::User).unwrap();
        assert_eq!(store.user("phil").unwrap().unwrap().role, Role::User);

        store.reset_access(Some("ben"), Some("a")).unwrap();
        assert_eq!(
            grants(store),
            vec![
                ("*".into(), "a".into(), Access::READ_ONLY),
                ("ben".into(), "b".into(), Access::READ_ONLY),
            ]
        );
        store.reset_access(Some("ben"), None).unwrap();
        assert_eq!(grants(store).len(), 1);
        store.reset_access(None, None).unwrap();
        assert!(grants(store).is_empty());
    }

    fn token_changes_uses_and_expiry(store: &dyn AuthStore) {
        let now = crate::model::now_unix();
        store.add_user(&user("phil", Role::User)).unwrap();
        let (never_t, never) = token_for("phil", now - 3);
        let (_, mut past) = token_for("phil", now - 2);
        past.expires = now - 10;
        let (future_t, mut future) = token_for("phil", now - 1);
        future.expires = now + 3600;
        for t in [&never, &past, &future] {
            store.add_token(t, 60).unwrap();
        }

        store.touch_token(&never.digest, now, "192.0.2.1").unwrap();
        let found = store
            .find_token("phil", &TokenSelector::parse(&never_t).unwrap())
            .unwrap();
        assert_eq!(
            (found.last_access, found.last_origin.as_str()),
            (now, "192.0.2.1")
        );
        // Touching a token that does not exist is no error and creates nothing.
        store
            .touch_token(&token_for("phil", 0).1.digest, now, "x")
            .unwrap();

        // An expiry set to never, then to the future.
        let sel = TokenSelector::parse(&token::display(&future_t)).unwrap();
        let changed = store
            .change_token(
                "phil",
                &sel,
                &TokenChange {
                    label: None,
                    expires: Some(0),
                },
            )
            .unwrap();
        assert_eq!(changed.expires, 0);
        let changed = store
            .change_token(
                "phil",
                &sel,
                &TokenChange {
                    label: None,
                    expires: Some(now + 7200),
                },
            )
            .unwrap();
        assert_eq!(changed.expires, now + 7200);

        assert_eq!(store.remove_expired_tokens(now).unwrap(), 1);
        let left: Vec<_> = store
            .tokens("phil")
            .unwrap()
            .into_iter()
            .map(|t| t.digest)
            .collect();
        assert_eq!(left, vec![future.digest, never.digest]);

        store.remove_token("phil", &sel).unwrap();
        assert!(matches!(
            store.remove_token("phil", &sel),
            Err(AuthStoreError::TokenNotFound)
        ));
        assert_eq!(store.load().unwrap().tokens.len(), 1);
    }

    fn own_changes_move_the_generation(store: &dyn AuthStore) {
        let g0 = store.generation().unwrap();
        assert_eq!(store.generation().unwrap(), g0, "stable without changes");
        store.add_user(&user("ben", Role::Admin)).unwrap();
        let g1 = store.generation().unwrap();
        assert_ne!(g1, g0);
        assert_eq!(store.load().unwrap().users.len(), 1);
        store.set_role("ben", Role::User).unwrap();
        assert_ne!(store.generation().unwrap(), g1);
        assert_eq!(store.load().unwrap().users[0].role, Role::User);
    }
}
