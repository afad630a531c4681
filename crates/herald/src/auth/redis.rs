//! [`AuthStore`] in Redis, for cluster mode (`redis-url`): every node, and the
//! `herald user|access|token` commands run from any machine, share one set of
//! users, tokens and ACL entries.
//!
//! Key layout (`P` is `redis-key-prefix`; docs/SCALING.md):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P auth:users` | set | every user name |
//! | `P auth:user:<name>` | hash | `hash` (argon2 PHC), `role`, `created` |
//! | `P auth:user:<name>:tokens` | sorted set | the user's token digests (hex), by creation |
//! | `P auth:token:<sha256 hex>` | hash | the token's fields; expires (`EXPIREAT`) with the token |
//! | `P auth:acl` | hash | `<user>:<pattern>` → `read-write`, ... (`*` is everyone) |
//! | `P auth:version` | counter | bumped by every change, in the same script |
//!
//! Every change is one Lua script (atomic in Redis) that also bumps
//! `P auth:version`. Recording a token's use (`touch_token`) is bookkeeping, not a
//! change: it does not bump the version, so it does not make every node reload.
//!
//! The server asks [`AuthStore::generation`] on every authenticated request, on the
//! runtime threads, so it must not wait for the network. A store opened with
//! [`RedisAuthStore::open_following`] keeps a replica of everything: a thread polls
//! `P auth:version` every [`POLL_INTERVAL`] and reloads (one read-only script, a
//! consistent view) when it moved, and this store's own changes refresh it before
//! they return. `generation` and `load` answer from the replica, so a change made
//! elsewhere (another node, the CLI) applies on every node within
//! [`POLL_INTERVAL`] plus one reload. If Redis cannot be reached the replica stays
//! as it was (logged once), so an outage does not lock everyone out. A store opened
//! with [`RedisAuthStore::open`] (the CLI) reads Redis directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::{Connection, Script};

use super::acl::Grant;
use super::store::{
    AuthData, AuthStore, AuthStoreError, TokenChange, TokenRecord, UserGrant, UserRecord,
    exactly_one,
};
use super::token::{TokenDigest, TokenSelector};
use super::{Access, Role};
use crate::cluster::connector::RedisConnector;
use crate::cluster::redis::{KeyPrefix, script};

/// How often a following store checks `P auth:version`: the staleness bound of a
/// node's view of changes made elsewhere (plus one reload).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Longest wait for Redis on one command, so a hung server cannot hold a thread.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn backend(e: impl std::fmt::Display) -> AuthStoreError {
    AuthStoreError::Backend(e.to_string())
}

/// Key names under the prefix (the scripts derive the same names from the prefix
/// in their prelude).
#[derive(Debug, Clone)]
struct Keys {
    prefix: KeyPrefix,
}

impl Keys {
    fn user(&self, name: &str) -> String {
        self.prefix.key(format_args!("auth:user:{name}"))
    }
    fn user_tokens(&self, name: &str) -> String {
        self.prefix.key(format_args!("auth:user:{name}:tokens"))
    }
    fn token(&self, hex: &str) -> String {
        self.prefix.key(format_args!("auth:token:{hex}"))
    }
    fn version(&self) -> String {
        self.prefix.key("auth:version")
    }
    fn provisioned(&self) -> String {
        self.prefix.key("auth:provisioned")
    }
}

/// The shared Lua helpers: key names from the prefix in `ARGV[1]`.
const LUA_PRELUDE: &str = include_str!("redis/prelude.lua");

/// ARGV: p, name, hash, role, created. 0 if the name is taken.
const ADD_USER: &str = include_str!("redis/add_user.lua");

/// ARGV: p, name. Removes the user, their tokens and their ACL entries.
const REMOVE_USER: &str = include_str!("redis/remove_user.lua");

/// ARGV: p, name, field, value[, drop_acl]. 0 if no such user.
const SET_USER_FIELD: &str = include_str!("redis/set_user_field.lua");

/// ARGV: p, user, pattern, access. 0 if no such user (`*` always exists).
const SET_ACCESS: &str = include_str!("redis/set_access.lua");

/// ARGV: p, user ('' = everyone's entries of every user), pattern ('' = all of the user's).
const RESET_ACCESS: &str = include_str!("redis/reset_access.lua");

/// ARGV: p, user, digest hex, shown, label, expires, last_access, last_origin,
/// created, max per user. 0 if no such user. The score orders by creation, then by
/// the version at insertion (tokens made in the same second keep their order), so
/// the trim never drops the newest.
const ADD_TOKEN: &str = include_str!("redis/add_token.lua");

/// ARGV: p, user, digest hex, label ('' with flag '0' = keep), label flag, expires
/// ('' = keep). 0 if the token is not the user's.
const CHANGE_TOKEN: &str = include_str!("redis/change_token.lua");

/// ARGV: p, user, digest hex. 0 if the token is not the user's.
const REMOVE_TOKEN: &str = include_str!("redis/remove_token.lua");

/// ARGV: p, digest hex, at, origin. Not a change: no version bump.
const TOUCH_TOKEN: &str = include_str!("redis/touch_token.lua");

/// ARGV: p, now. Drops expired tokens (and the index entries of tokens Redis
/// already expired); returns how many.
const REMOVE_EXPIRED: &str = include_str!("redis/remove_expired.lua");

/// ARGV: p. Everything, as one consistent view: {version, users (name, hash, role
/// triples), tokens (digest, user, shown, label, expires, last_access, last_origin,
/// created), acl (field, value pairs)}.
const LOAD: &str = include_str!("redis/load.lua");

/// The compiled scripts (each with the prelude).
struct Scripts {
    add_user: Script,
    remove_user: Script,
    set_user_field: Script,
    set_access: Script,
    reset_access: Script,
    add_token: Script,
    change_token: Script,
    remove_token: Script,
    touch_token: Script,
    remove_expired: Script,
    load: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let s = |body: &str| script(&[LUA_PRELUDE, body]);
        Scripts {
            add_user: s(ADD_USER),
            remove_user: s(REMOVE_USER),
            set_user_field: s(SET_USER_FIELD),
            set_access: s(SET_ACCESS),
            reset_access: s(RESET_ACCESS),
            add_token: s(ADD_TOKEN),
            change_token: s(CHANGE_TOKEN),
            remove_token: s(REMOVE_TOKEN),
            touch_token: s(TOUCH_TOKEN),
            remove_expired: s(REMOVE_EXPIRED),
            load: s(LOAD),
        }
    }
}

/// What a following store answers `generation` and `load` from.
#[derive(Default)]
struct Replica {
    /// `P auth:version` when loaded; `None` before the first load.
    version: Option<String>,
    /// Moves by one whenever the loaded version differs from the previous one, in
    /// either direction (a flushed and restarted counter included): what
    /// [`AuthStore::generation`] answers, which must only grow.
    generation: u64,
    data: Arc<AuthData>,
}

struct Inner {
    client: RedisConnector,
    keys: Keys,
    scripts: Scripts,
    /// The connection for commands; `None` after an error, reopened on next use.
    conn: Mutex<Option<Connection>>,
    /// `Some` for a following store (the server's).
    replica: Option<Mutex<Replica>>,
    /// Held through a whole refresh, so a slower refresh never replaces a newer one.
    refreshing: Mutex<()>,
}

/// The Redis auth store (see the module docs).
#[derive(Clone)]
pub struct RedisAuthStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisAuthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuthStore")
            .field("prefix", &self.inner.keys.prefix)
            .field("following", &self.inner.replica.is_some())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hex(digest: &TokenDigest) -> String {
    super::token::digest_hex(digest)
}

fn unhex(s: &str) -> Option<TokenDigest> {
    super::token::digest_from_hex(s)
}

fn role_from(s: &str) -> Role {
    // Anything unknown is the least privileged role.
    if s == "admin" {
        Role::Admin
    } else {
        Role::User
    }
}

fn int(s: &str) -> i64 {
    s.parse().unwrap_or(0)
}

/// A token from its digest, user and the six fields in [`LOAD`]'s order.
fn token_from(digest: &str, user: &str, f: &[String]) -> Option<TokenRecord> {
    let [shown, label, expires, last_access, last_origin, created] = f else {
        return None;
    };
    Some(TokenRecord {
        digest: unhex(digest)?,
        user: user.to_string(),
        shown: shown.clone(),
        label: label.clone(),
        expires: int(expires),
        last_access: int(last_access),
        last_origin: last_origin.clone(),
        created: int(created),
    })
}

/// A token from its `HGETALL`.
fn token_from_hash(digest: &str, h: &HashMap<String, String>) -> Option<TokenRecord> {
    let field = |k: &str| h.get(k).cloned().unwrap_or_default();
    let fields = [
        "shown",
        "label",
        "expires",
        "last_access",
        "last_origin",
        "created",
    ]
    .map(field);
    token_from(digest, h.get("user")?, &fields)
}

type Loaded = (String, Vec<String>, Vec<String>, Vec<String>);

fn parse_loaded((version, users, tokens, acl): Loaded) -> (String, AuthData) {
    let users = users
        .chunks_exact(3)
        .map(|u| UserRecord {
            name: u[0].clone(),
            hash: u[1].clone(),
            role: role_from(&u[2]),
        })
        .collect();
    let tokens = tokens
        .chunks_exact(8)
        .filter_map(|t| token_from(&t[0], &t[1], &t[2..]))
        .collect();
    let grants = acl
        .chunks_exact(2)
        .filter_map(|kv| {
            let (user, pattern) = kv[0].split_once(':')?;
            Some(UserGrant {
                user: user.to_string(),
                grant: Grant {
                    pattern: pattern.to_string(),
                    access: Access::parse(&kv[1]).unwrap_or(Access::DENY_ALL),
                },
            })
        })
        .collect();
    (
        version,
        AuthData {
            users,
            tokens,
            grants,
        },
    )
}

fn open_connection(client: &RedisConnector) -> Result<Connection, AuthStoreError> {
    client.connect_blocking(IO_TIMEOUT).map_err(backend)
}

impl Inner {
    /// Runs `f` on the command connection, dropping the connection if it failed
    /// (it is reopened on the next call).
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection, &Keys, &Scripts) -> redis::RedisResult<T>,
    ) -> Result<T, AuthStoreError> {
        let mut slot = lock(&self.conn);
        let conn = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert(open_connection(&self.client)?),
        };
        f(conn, &self.keys, &self.scripts).map_err(|e| {
            // A timed-out or broken connection may be mid-reply: start afresh.
            *slot = None;
            backend(e)
        })
    }

    /// Runs a changing script; afterwards a following store refreshes its replica,
    /// so this node sees its own change at once.
    fn change(
        &self,
        script: impl FnOnce(&Scripts) -> &Script,
        args: &[&str],
    ) -> Result<i64, AuthStoreError> {
        let result = self.with_conn(|conn, keys, scripts| {
            let mut invocation = script(scripts).prepare_invoke();
            invocation.arg(&keys.prefix);
            for a in args {
                invocation.arg(a);
            }
            let done = invocation.invoke::<i64>(conn)?;
            // Acknowledged only once replicated (`redis-min-replicas-acked`).
            self.client.confirm_blocking(conn)?;
            Ok(done)
        })?;
        // The change is made; if the replica cannot be refreshed now, the follower
        // thread catches up.
        if self.replica.is_some()
            && let Err(e) = self.refresh()
        {
            tracing::warn!(error = %e, "auth store: cannot refresh after a change");
        }
        Ok(result)
    }

    fn fetch_all(&self) -> Result<(String, AuthData), AuthStoreError> {
        self.with_conn(|conn, keys, scripts| {
            scripts
                .load
                .prepare_invoke()
                .arg(&keys.prefix)
                .invoke::<Loaded>(conn)
        })
        .map(parse_loaded)
    }

    fn remote_version(&self) -> Result<Option<String>, AuthStoreError> {
        self.with_conn(|conn, keys, _| redis::cmd("GET").arg(keys.version()).query(conn))
    }

    /// Reloads the replica if `P auth:version` moved.
    fn refresh(&self) -> Result<(), AuthStoreError> {
        let Some(replica) = &self.replica else {
            return Ok(());
        };
        let _refreshing = lock(&self.refreshing);
        let version = self.remote_version()?.unwrap_or_else(|| "0".into());
        if lock(replica).version.as_ref() == Some(&version) {
            return Ok(());
        }
        let (version, data) = self.fetch_all()?;
        let mut r = lock(replica);
        if r.version.as_ref() != Some(&version) {
            r.version = Some(version);
            r.generation += 1;
            r.data = Arc::new(data);
        }
        Ok(())
    }
}

/// The follower thread: refreshes every [`POLL_INTERVAL`] until the store is gone.
fn follow(inner: Weak<Inner>) {
    let mut failing = false;
    loop {
        std::thread::sleep(POLL_INTERVAL);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match inner.refresh() {
            Ok(()) if failing => {
                tracing::info!("auth store: Redis reachable again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "auth store: cannot refresh from Redis; keeping the last users, tokens and ACL");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

impl RedisAuthStore {
    /// A store that reads Redis on every call (the CLI's). Checks that Redis answers.
    pub fn open(url: &RedisConnector, prefix: &str) -> Result<RedisAuthStore, AuthStoreError> {
        Self::build(url, prefix, None)
    }

    /// A store that answers `generation` and `load` from a replica that a thread
    /// keeps current (the server's; see the module docs). Loads it once before
    /// returning, so an unreachable Redis fails start-up.
    pub fn open_following(
        url: &RedisConnector,
        prefix: &str,
    ) -> Result<RedisAuthStore, AuthStoreError> {
        let store = Self::build(url, prefix, Some(Mutex::new(Replica::default())))?;
        store.inner.refresh()?;
        let weak = Arc::downgrade(&store.inner);
        std::thread::Builder::new()
            .name("auth-follow".into())
            .spawn(move || follow(weak))
            .map_err(backend)?;
        Ok(store)
    }

    fn build(
        url: &RedisConnector,
        prefix: &str,
        replica: Option<Mutex<Replica>>,
    ) -> Result<RedisAuthStore, AuthStoreError> {
        let client = url.clone();
        let conn = open_connection(&client)?;
        Ok(RedisAuthStore {
            inner: Arc::new(Inner {
                client,
                keys: Keys {
                    prefix: KeyPrefix::new(prefix),
                },
                scripts: Scripts::new(),
                conn: Mutex::new(Some(conn)),
                replica,
                refreshing: Mutex::new(()),
            }),
        })
    }

    /// The digest (hex) of the one token of `user` that `selector` names.
    fn select(&self, user: &str, selector: &TokenSelector) -> Result<String, AuthStoreError> {
        Ok(hex(&self.find_token(user, selector)?.digest))
    }
}

/// Access control for a cluster node: the Redis store under `prefix`, following
/// changes. Blocks (connects and loads): call it off the runtime threads.
pub fn cluster_authorizer(
    url: &RedisConnector,
    prefix: &str,
    default_access: Access,
) -> Result<super::Authorizer, AuthStoreError> {
    let store = RedisAuthStore::open_following(url, prefix)?;
    // Redis drops expired tokens by itself; this sweeps their index entries.
    store.remove_expired_tokens(crate::model::now_unix())?;
    Ok(super::Authorizer::with_store(
        Arc::new(store),
        default_access,
    ))
}

fn expect_user(done: i64, name: &str) -> Result<(), AuthStoreError> {
    if done == 1 {
        Ok(())
    } else {
        Err(AuthStoreError::UserNotFound(name.to_string()))
    }
}

impl AuthStore for RedisAuthStore {
    fn generation(&self) -> Result<u64, AuthStoreError> {
        match &self.inner.replica {
            Some(r) => Ok(lock(r).generation),
            None => self
                .inner
                .remote_version()
                .map(|v| v.map_or(0, |v| v.parse().unwrap_or(0))),
        }
    }

    fn load(&self) -> Result<AuthData, AuthStoreError> {
        match &self.inner.replica {
            Some(r) => Ok(AuthData::clone(&lock(r).data)),
            None => self.inner.fetch_all().map(|(_, d)| d),
        }
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>, AuthStoreError> {
        let (hash, role): (Option<String>, Option<String>) =
            self.inner.with_conn(|conn, keys, _| {
                redis::cmd("HMGET")
                    .arg(keys.user(name))
                    .arg("hash")
                    .arg("role")
                    .query(conn)
            })?;
        Ok(hash.map(|hash| UserRecord {
            name: name.to_string(),
            hash,
            role: role_from(role.as_deref().unwrap_or("")),
        }))
    }

    fn add_user(&self, user: &UserRecord) -> Result<(), AuthStoreError> {
        let done = self.inner.change(
            |s| &s.add_user,
            &[
                &user.name,
                &user.hash,
                user.role.as_str(),
                &crate::model::now_unix().to_string(),
            ],
        )?;
        if done == 1 {
            Ok(())
        } else {
            Err(AuthStoreError::UserExists(user.name.clone()))
        }
    }

    fn remove_user(&self, name: &str) -> Result<(), AuthStoreError> {
        let done = self.inner.change(|s| &s.remove_user, &[name])?;
        expect_user(done, name)
    }

    fn set_password_hash(&self, name: &str, hash: &str) -> Result<(), AuthStoreError> {
        let done = self
            .inner
            .change(|s| &s.set_user_field, &[name, "hash", hash, "0"])?;
        expect_user(done, name)
    }

    fn set_role(&self, name: &str, role: Role) -> Result<(), AuthStoreError> {
        let drop_acl = if role == Role::Admin { "1" } else { "0" };
        let done = self.inner.change(
            |s| &s.set_user_field,
            &[name, "role", role.as_str(), drop_acl],
        )?;
        expect_user(done, name)
    }

    fn set_access(&self, user: &str, pattern: &str, access: Access) -> Result<(), AuthStoreError> {
        let done = self
            .inner
            .change(|s| &s.set_access, &[user, pattern, access.as_str()])?;
        expect_user(done, user)
    }

    fn reset_access(
        &self,
        user: Option<&str>,
        pattern: Option<&str>,
    ) -> Result<(), AuthStoreError> {
        self.inner.change(
            |s| &s.reset_access,
            &[user.unwrap_or(""), pattern.unwrap_or("")],
        )?;
        Ok(())
    }

    fn add_token(&self, token: &TokenRecord, max_per_user: usize) -> Result<(), AuthStoreError> {
        let done = self.inner.change(
            |s| &s.add_token,
            &[
                &token.user,
                &hex(&token.digest),
                &token.shown,
                &token.label,
                &token.expires.to_string(),
                &token.last_access.to_string(),
                &token.last_origin,
                &token.created.to_string(),
                &max_per_user.to_string(),
            ],
        )?;
        expect_user(done, &token.user)
    }

    fn tokens(&self, user: &str) -> Result<Vec<TokenRecord>, AuthStoreError> {
        let digests: Vec<String> = self.inner.with_conn(|conn, keys, _| {
            redis::cmd("ZREVRANGE")
                .arg(keys.user_tokens(user))
                .arg(0)
                .arg(-1)
                .query(conn)
        })?;
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let hashes: Vec<HashMap<String, String>> = self.inner.with_conn(|conn, keys, _| {
            let mut pipe = redis::pipe();
            for d in &digests {
                pipe.cmd("HGETALL").arg(keys.token(d));
            }
            pipe.query(conn)
        })?;
        // Tokens Redis already expired are gone (their hash is empty).
        Ok(digests
            .iter()
            .zip(&hashes)
            .filter_map(|(d, h)| token_from_hash(d, h))
            .filter(|t| t.user == user)
            .collect())
    }

    fn find_token(
        &self,
        user: &str,
        selector: &TokenSelector,
    ) -> Result<TokenRecord, AuthStoreError> {
        let found: Vec<TokenRecord> = match selector {
            TokenSelector::Full(digest) => {
                let d = hex(digest);
                let h: HashMap<String, String> = self.inner.with_conn(|conn, keys, _| {
                    redis::cmd("HGETALL").arg(keys.token(&d)).query(conn)
                })?;
                token_from_hash(&d, &h)
                    .filter(|t| t.user == user)
                    .into_iter()
                    .collect()
            }
            TokenSelector::Shown(shown) => self
                .tokens(user)?
                .into_iter()
                .filter(|t| &t.shown == shown)
                .collect(),
        };
        exactly_one(found)
    }

    fn change_token(
        &self,
        user: &str,
        selector: &TokenSelector,
        change: &TokenChange,
    ) -> Result<TokenRecord, AuthStoreError> {
        let digest = self.select(user, selector)?;
        let (label, label_set) = match &change.label {
            Some(l) => (l.as_str(), "1"),
            None => ("", "0"),
        };
        let expires = change.expires.map(|e| e.to_string()).unwrap_or_default();
        let done = self.inner.change(
            |s| &s.change_token,
            &[user, &digest, label, label_set, &expires],
        )?;
        if done != 1 {
            return Err(AuthStoreError::TokenNotFound);
        }
        let h: HashMap<String, String> = self.inner.with_conn(|conn, keys, _| {
            redis::cmd("HGETALL").arg(keys.token(&digest)).query(conn)
        })?;
        token_from_hash(&digest, &h).ok_or(AuthStoreError::TokenNotFound)
    }

    fn remove_token(&self, user: &str, selector: &TokenSelector) -> Result<(), AuthStoreError> {
        let digest = self.select(user, selector)?;
        match self.inner.change(|s| &s.remove_token, &[user, &digest])? {
            1 => Ok(()),
            _ => Err(AuthStoreError::TokenNotFound),
        }
    }

    fn touch_token(
        &self,
        digest: &TokenDigest,
        at: i64,
        origin: &str,
    ) -> Result<(), AuthStoreError> {
        let d = hex(digest);
        self.inner.with_conn(|conn, keys, scripts| {
            scripts
                .touch_token
                .prepare_invoke()
                .arg(&keys.prefix)
                .arg(&d)
                .arg(at)
                .arg(origin)
                .invoke::<i64>(conn)
        })?;
        Ok(())
    }

    fn provisioned(&self) -> Result<Vec<String>, AuthStoreError> {
        let mut items: Vec<String> = self.inner.with_conn(|conn, keys, _| {
            redis::cmd("SMEMBERS").arg(keys.provisioned()).query(conn)
        })?;
        items.sort();
        Ok(items)
    }

    fn set_provisioned(&self, items: &[String]) -> Result<(), AuthStoreError> {
        self.inner.with_conn(|conn, keys, _| {
            let mut pipe = redis::pipe();
            pipe.atomic().cmd("DEL").arg(keys.provisioned()).ignore();
            if !items.is_empty() {
                pipe.cmd("SADD").arg(keys.provisioned()).arg(items).ignore();
            }
            pipe.query::<()>(conn)
        })
    }

    fn remove_expired_tokens(&self, now: i64) -> Result<usize, AuthStoreError> {
        let removed = self
            .inner
            .change(|s| &s.remove_expired, &[&now.to_string()])?;
        Ok(usize::try_from(removed).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::store::contract;

    const URL: &str = "redis://127.0.0.1:6379";

    /// A fresh prefix on the machine's Redis; its keys are deleted on drop.
    struct Prefix(String);

    impl Prefix {
        fn new(test: &str) -> Prefix {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            Prefix(format!(
                "herald-test:unit:rauth:{test}:{}:{nanos}:",
                std::process::id()
            ))
        }
    }

    impl Drop for Prefix {
        fn drop(&mut self) {
            let Ok(client) = redis::Client::open(URL) else {
                return;
            };
            let Ok(mut conn) = client.get_connection() else {
                return;
            };
            let _: Result<(), _> = redis::cmd("EVAL")
                .arg("for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do redis.call('DEL', k) end")
                .arg(0)
                .arg(&self.0)
                .query(&mut conn);
        }
    }

    #[test]
    fn contract_direct() {
        let p = Prefix::new("direct");
        contract::run_all(&|name: &str| {
            Box::new(
                RedisAuthStore::open(
                    &crate::cluster::connector::local(),
                    &format!("{}{name}:", p.0),
                )
                .unwrap(),
            )
        });
    }

    #[test]
    fn contract_following() {
        let p = Prefix::new("following");
        contract::run_all(&|name: &str| {
            Box::new(
                RedisAuthStore::open_following(
                    &crate::cluster::connector::local(),
                    &format!("{}{name}:", p.0),
                )
                .unwrap(),
            )
        });
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let d: TokenDigest = std::array::from_fn(|i| (i * 7) as u8);
        assert_eq!(unhex(&hex(&d)), Some(d));
        assert_eq!(unhex("zz"), None);
    }

    /// A change made by another process (the CLI, another node) reaches a
    /// following store's replica by itself, and moves its generation.
    #[test]
    fn a_follower_sees_changes_made_elsewhere() {
        let p = Prefix::new("follow");
        let node =
            RedisAuthStore::open_following(&crate::cluster::connector::local(), &p.0).unwrap();
        let cli = RedisAuthStore::open(&crate::cluster::connector::local(), &p.0).unwrap();
        let g0 = node.generation().unwrap();
        assert_eq!(node.generation().unwrap(), g0, "stable without changes");
        cli.add_user(&contract::user("ben", Role::User)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while node.load().unwrap().users.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the change never arrived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(node.generation().unwrap() > g0);
        // Touching a token is not a change: no reload anywhere.
        let (_, rec) = contract::token_for("ben", 5);
        cli.add_token(&rec, 10).unwrap();
        while node.load().unwrap().tokens.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the token never arrived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let version_before = cli.generation().unwrap();
        cli.touch_token(&rec.digest, 1234, "192.0.2.1").unwrap();
        assert_eq!(cli.generation().unwrap(), version_before);
        assert_eq!(cli.tokens("ben").unwrap()[0].last_access, 1234);
    }

    /// Two nodes' authorizers on one prefix: a token made through one node works on
    /// the other once it followed, an ACL entry too, and removing the user locks
    /// them out of both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_share_users_tokens_and_acl() {
        use crate::auth::{Permission, Principal};
        use axum::http::{HeaderMap, HeaderValue, header};
        let p = Prefix::new("nodes");
        let open = || {
            let prefix = p.0.clone();
            tokio::task::spawn_blocking(move || {
                cluster_authorizer(
                    &crate::cluster::connector::local(),
                    &prefix,
                    Access::DENY_ALL,
                )
                .unwrap()
            })
        };
        let (a, b) = (open().await.unwrap(), open().await.unwrap());
        let ip: std::net::IpAddr = "192.0.2.9".parse().unwrap();
        let store = a.store().unwrap().clone();
        store.add_user(&contract::user("phil", Role::User)).unwrap();
        let (t, rec) = contract::token_for("phil", 1);
        store.add_token(&rec, 60).unwrap();
        store.set_access("phil", "ops", Access::READ_ONLY).unwrap();
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        // Node A made the change: it applies there at once.
        let on_a = a.authenticate(&bearer, None, ip).await.unwrap();
        assert!(a.authorize(&on_a, "ops", Permission::Read).is_ok());

        async fn until<T>(mut f: impl FnMut() -> Option<T>) -> T {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(v) = f() {
                    return v;
                }
                assert!(std::time::Instant::now() < deadline, "never happened");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let on_b: Principal = until(|| b.authenticate_cached(&bearer, None, ip)).await;
        assert_eq!(on_b.user_name(), Some("phil"));
        assert!(b.authorize(&on_b, "ops", Permission::Read).is_ok());
        assert!(b.authorize(&on_b, "ops", Permission::Write).is_err());

        store.remove_user("phil").unwrap();
        until(|| {
            b.authenticate_cached(&bearer, None, ip)
                .is_none()
                .then_some(())
        })
        .await;
        assert!(b.authenticate(&bearer, None, ip).await.is_err());
        assert!(a.authenticate(&bearer, None, ip).await.is_err());
    }

    /// Redis drops a token's hash when it expires; the index forgets it too.
    #[test]
    fn tokens_expire_in_redis() {
        let p = Prefix::new("expire");
        let store = RedisAuthStore::open(&crate::cluster::connector::local(), &p.0).unwrap();
        store.add_user(&contract::user("phil", Role::User)).unwrap();
        let (_, mut rec) = contract::token_for("phil", 5);
        rec.expires = crate::model::now_unix() - 1;
        store.add_token(&rec, 10).unwrap();
        assert!(store.tokens("phil").unwrap().is_empty());
        assert!(store.load().unwrap().tokens.is_empty());
        assert_eq!(
            store
                .remove_expired_tokens(crate::model::now_unix())
                .unwrap(),
            1,
            "the index entry was swept"
        );
    }
}
