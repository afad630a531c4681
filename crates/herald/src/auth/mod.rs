//! Access control as ntfy has it: users with roles, access tokens, per-topic ACL
//! entries, `auth-default-access` (docs/COMPATIBILITY.md §4).
//!
//! - [`Authorizer`] is what the transports call: [`Authorizer::authenticate`] turns
//!   a request's credentials into a [`Principal`], [`Authorizer::authorize`] checks
//!   a principal against a topic for reading or writing. With auth off (no
//!   `auth-file`, no `auth-default-access`) both answer at once and everyone may do
//!   everything, as in ntfy.
//! - [`store::AuthStore`] holds users, tokens and grants durably ([`sqlite`] in the
//!   data dir; [`redis`] in cluster mode, shared by every node); the authorizer keeps an in-memory snapshot and reloads it when the
//!   store's generation moves (the CLI writes while the server runs), so a request
//!   costs one cheap generation check and hash-map lookups, no SQL.
//! - [`acl`] is pattern matching and ntfy's precedence; [`credentials`] reads
//!   `Authorization` and `?auth=` as ntfy does; [`password`] (argon2id, run off the
//!   runtime threads) and [`token`] (`tk_...`, stored as SHA-256 digests, compared in
//!   constant time); [`throttle`] limits failed logins per address and per user name;
//!   [`gate`] bounds the argon2 checks running and waiting (fair per address, `429`
//!   when full), and recently verified passwords skip argon2 altogether.
//! - [`cli`]: `herald user`, `herald access`, `herald token`.
//!
//! This file is the [`Authorizer`]; `types.rs` holds the vocabulary ([`Principal`],
//! [`Role`], [`Permission`], [`Access`]) and `snapshot.rs` the in-memory copy of the
//! store.
//!
//! Secrets (passwords, tokens, hashes) never appear in logs, errors or `Debug`
//! output.

pub(crate) mod acl;
pub mod cli;
pub(crate) mod credentials;
mod error;
pub(crate) mod gate;
pub(crate) mod password;
pub mod provision;
mod proxy;
pub(crate) mod redis;
mod snapshot;
pub(crate) mod sqlite;
pub mod store;
pub(crate) mod throttle;
pub mod token;
mod types;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use credentials::{Credentials, Presented};
pub use error::AuthError;
use store::{AuthStore, AuthStoreError};
use token::TokenDigest;

use snapshot::Snapshot;
pub use types::{Access, Permission, Principal, Role, is_valid_user_name};

/// Where auth lives and what anonymous users may do when no entry says otherwise.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub auth_file: PathBuf,
    pub default_access: Access,
}

/// How often a token's last use is written back (at most).
const TOUCH_INTERVAL_SECS: i64 = 300;
/// Most remembered password verifications (one per user).
const MAX_VERIFIED: usize = 10_000;
/// How long a verified password is remembered after its last use. Long enough that
/// a client repeating its credentials (a script publishing, a reconnecting
/// subscriber) never waits for argon2, short enough that a cached result does not
/// outlive the session that made it by much.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Password checks that may wait for a slot, per slot (see [`gate`]): on 2 cores, 8
/// waiting, i.e. well under a second of argon2 work ahead of any admitted login.
const QUEUE_PER_SLOT: usize = 4;

/// Authentication and authorization for every transport.
#[derive(Debug, Default)]
pub struct Authorizer {
    enabled: Option<Enabled>,
}

struct Enabled {
    store: Arc<dyn AuthStore>,
    default_access: Access,
    /// The store generation the snapshot was loaded at, and the snapshot.
    snapshot: Mutex<(Option<u64>, Arc<Snapshot>)>,
    /// Held by the one request reloading the snapshot.
    loading: Mutex<()>,
    /// Per user, a keyed digest of (hash, password) of the last successful password
    /// login and when it was last used: repeated Basic auth (every publish of a
    /// script) skips argon2 for [`VERIFIED_TTL`] after the last use. A new password
    /// hash changes the digest, so a changed password never matches.
    verified: Mutex<HashMap<String, Remembered>>,
    /// Process-random key of those digests.
    verified_key: [u8; 32],
    throttle: throttle::LoginThrottle,
    /// Which password checks run, wait or are refused (`429`): bounded, fair per
    /// address. Each argon2 verification takes ~19 MiB and tens of milliseconds.
    gate: gate::HashGate,
    /// The threads that run argon2, one per gate slot.
    verifier: password::Verifier,
    /// When each token's use was last written back.
    touched: Mutex<HashMap<TokenDigest, i64>>,
}

// Only what is not secret (no hashes, digests or the cache key).
impl std::fmt::Debug for Enabled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enabled")
            .field("store", &self.store)
            .field("default_access", &self.default_access)
            .finish_non_exhaustive()
    }
}

/// A remembered successful password check.
#[derive(Clone, Copy)]
struct Remembered {
    digest: [u8; 32],
    /// Time of the last use (tokio's clock, so tests can move it).
    used: tokio::time::Instant,
}

/// The result of checking credentials without hashing a password.
enum Check {
    Ok(Principal),
    Fail,
    /// A password that must be verified with argon2 against the user's hash, or for
    /// an unknown user (`None`) against the dummy hash.
    NeedsHash(Option<(Role, String)>),
}

impl Authorizer {
    /// Auth off: everyone may do everything.
    pub fn disabled() -> Authorizer {
        Authorizer { enabled: None }
    }

    /// Auth on, with the SQLite store at `settings.auth_file`.
    pub fn open(settings: &AuthSettings) -> Result<Authorizer, AuthStoreError> {
        let store = sqlite::SqliteAuthStore::open(&settings.auth_file)?;
        // Expired tokens are refused anyway; this keeps the file from growing.
        store.remove_expired_tokens(crate::model::now_unix())?;
        Ok(Authorizer::with_store(
            Arc::new(store),
            settings.default_access,
        ))
    }

    /// Auth on, with `store`.
    pub fn with_store(store: Arc<dyn AuthStore>, default_access: Access) -> Authorizer {
        let mut verified_key = [0u8; 32];
        if getrandom::fill(&mut verified_key).is_err() {
            // Without randomness the cache key would be guessable: use a key nobody
            // can match instead of caching (see `password_cache_digest`).
            verified_key = [0; 32];
        }
        let authorizer = Authorizer {
            enabled: Some(Enabled {
                store,
                default_access,
                snapshot: Mutex::new((None, Arc::new(Snapshot::default()))),
                loading: Mutex::new(()),
                verified: Mutex::new(HashMap::new()),
                verified_key,
                throttle: throttle::LoginThrottle::default(),
                gate: gate::HashGate::new(hash_parallelism(), hash_parallelism() * QUEUE_PER_SLOT),
                verifier: password::Verifier::new(hash_parallelism()),
                touched: Mutex::new(HashMap::new()),
            }),
        };
        // Loaded now, so the first requests find users and tokens at once.
        if let Some(en) = &authorizer.enabled {
            Self::snapshot(en);
        }
        authorizer
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.is_some()
    }

    /// The store (auth on only), for the account and admin endpoints.
    pub fn store(&self) -> Option<&Arc<dyn AuthStore>> {
        self.enabled.as_ref().map(|e| &e.store)
    }

    /// The current snapshot, reloaded if the store changed. A store that cannot be
    /// read keeps the last snapshot (logged), so a locked file does not lock
    /// everyone out.
    fn snapshot(en: &Enabled) -> Arc<Snapshot> {
        let lock = || en.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let generation = match en.store.generation() {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the auth store for changes");
                return lock().1.clone();
            }
        };
        {
            let current = lock();
            if current.0 == Some(generation) {
                return current.1.clone();
            }
        }
        // One request loads, without holding the snapshot lock; requests that
        // arrive meanwhile use the old snapshot instead of waiting or loading too.
        // Generations only grow, so a slower load never replaces a newer snapshot.
        // Before the first load there is no old snapshot to use: wait for it.
        let never_loaded = lock().0.is_none();
        let _loading = match en.loading.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if never_loaded => {
                en.loading.lock().unwrap_or_else(|p| p.into_inner())
            }
            Err(std::sync::TryLockError::WouldBlock) => return lock().1.clone(),
        };
        {
            let current = lock();
            if current.0 >= Some(generation) {
                return current.1.clone();
            }
        }
        match en.store.load() {
            Ok(data) => {
                let fresh = Arc::new(Snapshot::build(data));
                let mut current = lock();
                if current.0 < Some(generation) {
                    *current = (Some(generation), fresh);
                }
                current.1.clone()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the auth store");
                lock().1.clone()
            }
        }
    }

    /// Turns the request's credentials into a principal: anonymous without
    /// credentials, `401 40101` for wrong ones, `429 42909` after too many failures
    /// from this address or for this user name, `429 42901`
    /// ([`AuthError::PasswordChecksBusy`]) when a password must be hashed and the
    /// gate has no room for this address.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        peer: IpAddr,
    ) -> Result<Principal, AuthError> {
        let Some(en) = &self.enabled else {
            return Ok(Principal::anonymous());
        };
        let creds = match credentials::read(headers, query) {
            Presented::None => return Ok(Principal::anonymous()),
            Presented::Malformed => {
                if !en.throttle.allowed(peer, None, Instant::now()) {
                    return Err(AuthError::TooManyFailures);
                }
                en.throttle.failed(peer, None, Instant::now());
                return Err(AuthError::Unauthorized);
            }
            Presented::Credentials(c) => c,
        };
        if is_webhook_management_token(&creds) {
            return Ok(Principal::anonymous());
        }
        if !en.throttle.allowed(peer, creds.user_name(), Instant::now()) {
            return Err(AuthError::TooManyFailures);
        }
        let outcome = match Self::check_fast(en, &creds) {
            Check::Ok(p) => Some(p),
            Check::Fail => None,
            Check::NeedsHash(known) => {
                let Credentials::Password { user, password } = &creds else {
                    return Err(AuthError::Unauthorized);
                };
                // Not a failure: nothing was checked. The client may try again.
                let _permit = en
                    .gate
                    .admit(throttle::address_prefix(peer))
                    .await
                    .map_err(|gate::Busy| AuthError::PasswordChecksBusy)?;
                let hash = known.as_ref().map(|(_, hash)| hash.clone());
                let ok = en.verifier.verify(password.clone(), hash).await;
                match known {
                    Some((role, hash)) if ok => {
                        Self::remember_password(en, user, &hash, password);
                        Some(Principal::user(user, role, None))
                    }
                    _ => None,
                }
            }
        };
        match outcome {
            Some(p) => {
                self.touch_token(&p, peer);
                Ok(p)
            }
            None => {
                en.throttle.failed(peer, creds.user_name(), Instant::now());
                tracing::debug!(peer = %peer, user = creds.user_name().unwrap_or(""), "authentication failed");
                Err(AuthError::Unauthorized)
            }
        }
    }

    /// [`Authorizer::authenticate`] without waiting: the principal if it is known
    /// at once (anonymous, a valid token, a recently verified password); `None` if
    /// the request needs the full path (a password to hash, wrong credentials,
    /// throttling), which answers it exactly. For the listener's direct path.
    pub fn authenticate_cached(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        peer: IpAddr,
    ) -> Option<Principal> {
        let Some(en) = &self.enabled else {
            return Some(Principal::anonymous());
        };
        let creds = match credentials::read(headers, query) {
            Presented::None => return Some(Principal::anonymous()),
            Presented::Malformed => return None,
            Presented::Credentials(c) => c,
        };
        if is_webhook_management_token(&creds) {
            return Some(Principal::anonymous());
        }
        if !en.throttle.allowed(peer, creds.user_name(), Instant::now()) {
            return None;
        }
        match Self::check_fast(en, &creds) {
            Check::Ok(p) => {
                self.touch_token(&p, peer);
                Some(p)
            }
            _ => None,
        }
    }

    fn check_fast(en: &Enabled, creds: &Credentials) -> Check {
        let snap = Self::snapshot(en);
        match creds {
            Credentials::Token(t) => {
                let digest = token::digest(t);
                let now = crate::model::now_unix();
                let found = snap.tokens.get(&digest).filter(|tok| {
                    token::digests_equal(&tok.digest, &digest)
                        && !(tok.expires > 0 && tok.expires <= now)
                });
                match found.and_then(|tok| snap.users.get(&tok.user).map(|u| (tok, u))) {
                    Some((tok, u)) => Check::Ok(Principal::user(&tok.user, u.role, Some(digest))),
                    None => Check::Fail,
                }
            }
            Credentials::Password { user, password } => match snap.users.get(user) {
                Some(u) => {
                    if let Some(current) = password_cache_digest(en, user, &u.hash, password) {
                        let now = tokio::time::Instant::now();
                        let mut verified = en.verified.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(r) = verified.get_mut(user)
                            && now.saturating_duration_since(r.used) < VERIFIED_TTL
                            && bool::from(r.digest.ct_eq(&current))
                        {
                            r.used = now;
                            return Check::Ok(Principal::user(user, u.role, None));
                        }
                    }
                    Check::NeedsHash(Some((u.role, u.hash.clone())))
                }
                // Verified against a dummy hash anyway, through the same gate: "no
                // such user" must not be faster than "wrong password".
                None => Check::NeedsHash(None),
            },
        }
    }

    fn remember_password(en: &Enabled, user: &str, hash: &str, password: &str) {
        let Some(digest) = password_cache_digest(en, user, hash, password) else {
            return;
        };
        let now = tokio::time::Instant::now();
        let mut verified = en.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_VERIFIED && !verified.contains_key(user) {
            verified.retain(|_, r| now.saturating_duration_since(r.used) < VERIFIED_TTL);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
        }
        verified.insert(user.to_string(), Remembered { digest, used: now });
    }

    /// Writes a token's last use back to the store, at most every few minutes per
    /// token, off the runtime threads.
    fn touch_token(&self, principal: &Principal, peer: IpAddr) {
        let (Some(en), Some(digest)) = (&self.enabled, principal.token()) else {
            return;
        };
        let now = crate::model::now_unix();
        {
            let mut touched = en.touched.lock().unwrap_or_else(|p| p.into_inner());
            let last = match touched.get(digest) {
                Some(t) => *t,
                None => Self::snapshot(en)
                    .tokens
                    .get(digest)
                    .map_or(0, |t| t.last_access),
            };
            if now - last < TOUCH_INTERVAL_SECS {
                touched.insert(*digest, last);
                return;
            }
            if touched.len() >= MAX_VERIFIED {
                touched.clear();
            }
            touched.insert(*digest, now);
        }
        let store = en.store.clone();
        let digest = *digest;
        let origin = peer.to_string();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn_blocking(move || {
                if let Err(e) = store.touch_token(&digest, now, &origin) {
                    tracing::debug!(error = %e, "cannot record token use");
                }
            });
        }
    }

    /// Whether `principal` may `permission` `topic`: `403 40301` if not. Admins may
    /// do everything; otherwise ntfy's ACL precedence decides.
    pub fn authorize(
        &self,
        principal: &Principal,
        topic: &str,
        permission: Permission,
    ) -> Result<(), AuthError> {
        let Some(en) = &self.enabled else {
            return Ok(());
        };
        if self.allowed(en, &Self::snapshot(en), principal, topic, permission) {
            Ok(())
        } else {
            Err(AuthError::Forbidden)
        }
    }

    /// [`Authorizer::authorize`] for every topic of a multi-topic request.
    pub fn authorize_all(
        &self,
        principal: &Principal,
        topics: &[String],
        permission: Permission,
    ) -> Result<(), AuthError> {
        let Some(en) = &self.enabled else {
            return Ok(());
        };
        let snap = Self::snapshot(en);
        if topics
            .iter()
            .all(|t| self.allowed(en, &snap, principal, t, permission))
        {
            Ok(())
        } else {
            Err(AuthError::Forbidden)
        }
    }

    fn allowed(
        &self,
        en: &Enabled,
        snap: &Snapshot,
        principal: &Principal,
        topic: &str,
        permission: Permission,
    ) -> bool {
        if principal.is_admin() {
            return true;
        }
        let own = principal
            .user_name()
            .and_then(|n| snap.users.get(n))
            .map(|u| u.grants.as_slice());
        acl::resolve(own, &snap.everyone, topic, en.default_access).allows(permission)
    }
}

/// How many password checks may run at once: the number of cores (at least 2).
/// A webhook management token (`whm_...`, [`token::is_webhook_management`]) is not a user
/// credential: the request is anonymous for access control (so the token grants
/// nothing here, and is no failed login), and only the webhook API looks at it.
fn is_webhook_management_token(creds: &Credentials) -> bool {
    matches!(creds, Credentials::Token(t) if token::is_webhook_management(t))
}

fn hash_parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// SHA-256 over the process key, user, hash and password; `None` when no random
/// key could be made (then nothing is cached).
fn password_cache_digest(en: &Enabled, user: &str, hash: &str, password: &str) -> Option<[u8; 32]> {
    if en.verified_key == [0; 32] {
        return None;
    }
    let mut h = Sha256::new();
    h.update(en.verified_key);
    for part in [user, hash, password] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    Some(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::store::EVERYONE;
    use super::*;
    use axum::http::{HeaderValue, header};
    use base64::Engine;

    fn basic(user: &str, pw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        h
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        h
    }

    fn setup(default_access: Access) -> (tempfile::TempDir, Authorizer, String) {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authorizer::open(&AuthSettings {
            auth_file: dir.path().join("auth.db"),
            default_access,
        })
        .unwrap();
        let store = auth.store().unwrap().clone();
        store
            .add_user(&store::UserRecord {
                name: "phil".into(),
                hash: password::hash("secret").unwrap(),
                role: Role::User,
            })
            .unwrap();
        store
            .add_user(&store::UserRecord {
                name: "ben".into(),
                hash: password::hash("boss").unwrap(),
                role: Role::Admin,
            })
            .unwrap();
        store
            .set_access("phil", "alerts*", Access::READ_WRITE)
            .unwrap();
        store
            .set_access(EVERYONE, "public", Access::READ_ONLY)
            .unwrap();
        let t = token::generate().unwrap();
        store
            .add_token(
                &store::TokenRecord {
                    digest: token::digest(&t),
                    user: "phil".into(),
                    shown: token::shown_part(&t).into(),
                    label: String::new(),
                    expires: 0,
                    last_access: 0,
                    last_origin: String::new(),
                    created: 1,
                },
                token::MAX_PER_USER,
            )
            .unwrap();
        (dir, auth, t)
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[tokio::test]
    async fn disabled_allows_everything_and_ignores_credentials() {
        let auth = Authorizer::disabled();
        let p = auth.authenticate(&basic("x", "y"), None, IP).await.unwrap();
        assert_eq!(p.user_name(), None);
        assert!(auth.authorize(&p, "any", Permission::Write).is_ok());
    }

    #[tokio::test]
    async fn passwords_tokens_and_the_acl() {
        let (_dir, auth, tok) = setup(Access::DENY_ALL);
        let anon = auth
            .authenticate(&HeaderMap::new(), None, IP)
            .await
            .unwrap();
        assert_eq!(
            auth.authorize(&anon, "alerts", Permission::Read),
            Err(AuthError::Forbidden)
        );
        assert!(auth.authorize(&anon, "public", Permission::Read).is_ok());
        assert!(auth.authorize(&anon, "public", Permission::Write).is_err());

        let phil = auth
            .authenticate(&basic("phil", "secret"), None, IP)
            .await
            .unwrap();
        assert_eq!(phil.user_name(), Some("phil"));
        assert!(!phil.is_admin());
        assert!(auth.authorize(&phil, "alerts-1", Permission::Write).is_ok());
        assert!(auth.authorize(&phil, "other", Permission::Read).is_err());
        assert!(
            auth.authorize(&phil, "public", Permission::Read).is_ok(),
            "everyone's entry"
        );
        // Now remembered: the direct path can use it.
        assert!(
            auth.authenticate_cached(&basic("phil", "secret"), None, IP)
                .is_some()
        );
        assert!(
            auth.authenticate_cached(&basic("phil", "wrong"), None, IP)
                .is_none()
        );

        let by_token = auth.authenticate(&bearer(&tok), None, IP).await.unwrap();
        assert_eq!(by_token.user_name(), Some("phil"));
        assert!(by_token.token().is_some());
        assert!(auth.authenticate_cached(&bearer(&tok), None, IP).is_some());
        let token_as_password = auth.authenticate(&basic("", &tok), None, IP).await.unwrap();
        assert_eq!(token_as_password.user_name(), Some("phil"));

        let ben = auth
            .authenticate(&basic("ben", "boss"), None, IP)
            .await
            .unwrap();
        assert!(ben.is_admin());
        assert!(auth.authorize(&ben, "anything", Permission::Write).is_ok());

        assert_eq!(
            auth.authenticate(&basic("phil", "nope"), None, IP)
                .await
                .unwrap_err(),
            AuthError::Unauthorized
        );
        assert_eq!(
            auth.authenticate(&basic("nobody", "nope"), None, IP)
                .await
                .unwrap_err(),
            AuthError::Unauthorized
        );
        assert_eq!(
            auth.authenticate(&bearer("tk_wrongwrongwrongwrongwrongwrong1"), None, IP)
                .await
                .unwrap_err(),
            AuthError::Unauthorized
        );
    }

    #[tokio::test]
    async fn changes_in_the_store_apply_at_once() {
        let (dir, auth, tok) = setup(Access::DENY_ALL);
        let phil = auth.authenticate(&bearer(&tok), None, IP).await.unwrap();
        assert!(auth.authorize(&phil, "news", Permission::Read).is_err());
        // Another process (the CLI) changes the file.
        let cli = sqlite::SqliteAuthStore::open(&dir.path().join("auth.db")).unwrap();
        cli.set_access("phil", "news", Access::READ_ONLY).unwrap();
        assert!(auth.authorize(&phil, "news", Permission::Read).is_ok());
        cli.remove_user("phil").unwrap();
        assert_eq!(
            auth.authenticate(&bearer(&tok), None, IP)
                .await
                .unwrap_err(),
            AuthError::Unauthorized
        );
    }

    #[tokio::test]
    async fn a_changed_password_is_not_remembered() {
        let (_dir, auth, _) = setup(Access::DENY_ALL);
        auth.authenticate(&basic("phil", "secret"), None, IP)
            .await
            .unwrap();
        let store = auth.store().unwrap();
        store
            .set_password_hash("phil", &password::hash("new").unwrap())
            .unwrap();
        assert!(
            auth.authenticate_cached(&basic("phil", "secret"), None, IP)
                .is_none()
        );
        assert!(
            auth.authenticate(&basic("phil", "secret"), None, IP)
                .await
                .is_err()
        );
        assert!(
            auth.authenticate(&basic("phil", "new"), None, IP)
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_verified_password_is_remembered_while_used_then_forgotten() {
        let (_dir, auth, _) = setup(Access::DENY_ALL);
        let phil = basic("phil", "secret");
        auth.authenticate(&phil, None, IP).await.unwrap();
        for _ in 0..3 {
            tokio::time::advance(VERIFIED_TTL - Duration::from_secs(1)).await;
            assert!(
                auth.authenticate_cached(&phil, None, IP).is_some(),
                "each use keeps it"
            );
        }
        tokio::time::advance(VERIFIED_TTL).await;
        assert!(
            auth.authenticate_cached(&phil, None, IP).is_none(),
            "expired"
        );
        // The full path hashes again, and remembers again.
        auth.authenticate(&phil, None, IP).await.unwrap();
        assert!(auth.authenticate_cached(&phil, None, IP).is_some());
    }

    #[tokio::test]
    async fn a_flood_of_unknown_users_is_refused_fast_and_tokens_pass() {
        let (_dir, auth, tok) = setup(Access::DENY_ALL);
        let auth = Arc::new(auth);
        let mut flood = Vec::new();
        for i in 0..60u8 {
            let auth = auth.clone();
            flood.push(tokio::spawn(async move {
                let ip = IpAddr::from([10, 0, 1, i]);
                auth.authenticate(&basic(&format!("nobody{i}"), "x"), None, ip)
                    .await
                    .unwrap_err()
            }));
        }
        tokio::task::yield_now().await;
        // Tokens never wait for the gate.
        let by_token = auth.authenticate(&bearer(&tok), None, IP).await.unwrap();
        assert_eq!(by_token.user_name(), Some("phil"));
        let mut busy = 0;
        for f in flood {
            match f.await.unwrap() {
                AuthError::PasswordChecksBusy => busy += 1,
                e => assert_eq!(e, AuthError::Unauthorized),
            }
        }
        let admitted = 60 - busy;
        let bound = hash_parallelism() * (1 + QUEUE_PER_SLOT);
        assert!(
            busy > 0 && admitted <= bound,
            "{admitted} checked, bound {bound}"
        );
        // Refusals are not failures: 29 more failures throttle only the addresses
        // whose check ran (and failed).
        let en = auth.enabled.as_ref().unwrap();
        let throttled = (0..60u8)
            .filter(|i| {
                let ip = IpAddr::from([10, 0, 1, *i]);
                for _ in 0..29 {
                    en.throttle.failed(ip, None, Instant::now());
                }
                !en.throttle.allowed(ip, None, Instant::now())
            })
            .count();
        assert_eq!(throttled, admitted);
    }

    #[tokio::test]
    async fn failures_are_throttled() {
        let (_dir, auth, tok) = setup(Access::DENY_ALL);
        let bad = bearer("tk_wrongwrongwrongwrongwrongwrong1");
        for _ in 0..30 {
            assert_eq!(
                auth.authenticate(&bad, None, IP).await.unwrap_err(),
                AuthError::Unauthorized
            );
        }
        assert_eq!(
            auth.authenticate(&bad, None, IP).await.unwrap_err(),
            AuthError::TooManyFailures
        );
        // Even the right token waits, as in ntfy (the limiter is checked first).
        assert_eq!(
            auth.authenticate(&bearer(&tok), None, IP)
                .await
                .unwrap_err(),
            AuthError::TooManyFailures
        );
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(auth.authenticate(&bearer(&tok), None, other).await.is_ok());
    }

    #[tokio::test]
    async fn debug_output_holds_no_secrets() {
        let (_dir, auth, tok) = setup(Access::DENY_ALL);
        let p = auth.authenticate(&bearer(&tok), None, IP).await.unwrap();
        auth.authenticate(&basic("phil", "secret"), None, IP)
            .await
            .unwrap();
        let store = auth.store().unwrap();
        let data = store.load().unwrap();
        let creds = credentials::read(&basic("phil", "secret"), None);
        let text = format!("{auth:?} {p:?} {data:?} {creds:?}");
        for secret in ["secret", "$argon2", tok.as_str(), &tok[3..]] {
            assert!(!text.contains(secret), "{secret:?} in {text}");
        }
        assert!(text.contains("phil"));
    }

    #[test]
    fn access_names_are_ntfys() {
        for (s, a) in [
            ("read-write", Access::READ_WRITE),
            ("rw", Access::READ_WRITE),
            ("read-only", Access::READ_ONLY),
            ("read", Access::READ_ONLY),
            ("ro", Access::READ_ONLY),
            ("write-only", Access::WRITE_ONLY),
            ("write", Access::WRITE_ONLY),
            ("wo", Access::WRITE_ONLY),
            ("deny-all", Access::DENY_ALL),
            ("deny", Access::DENY_ALL),
            ("none", Access::DENY_ALL),
        ] {
            assert_eq!(Access::parse(s), Some(a), "{s}");
            assert_eq!(Access::parse(a.as_str()), Some(a));
        }
        assert_eq!(Access::parse("all"), None);
    }
}
