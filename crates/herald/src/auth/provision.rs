//! Provisioned access control (ntfy's `auth-users`, `auth-access`, `auth-tokens`):
//! deployments from Kubernetes, NixOS or Ansible declare users, ACL entries and
//! tokens in the configuration. At start they are created or brought up to date,
//! what an earlier start provisioned and the configuration no longer names is
//! removed, and the store remembers what is provisioned ([`AuthStore::provisioned`])
//! so that the CLI and the API refuse to change it (ntfy's `40905`/`40906`).
//!
//! Items are kept as keys: `user:<name>`, `access:<user>:<pattern>`,
//! `token:<user>:<sha256 hex>` (never the token itself).

use std::collections::BTreeSet;

use super::store::{AuthStore, AuthStoreError, EVERYONE, TokenRecord, UserRecord};
use super::token::{self, TokenSelector};
use super::{Access, Role, is_valid_user_name};

/// What the configuration provisions.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Provisioning {
    users: Vec<UserRecord>,
    access: Vec<(String, String, Access)>,
    /// (user, token, label).
    tokens: Vec<(String, String, String)>,
}

// Hashes and tokens stay out of debug output.
impl std::fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioning")
            .field("users", &self.users.len())
            .field("access", &self.access.len())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// A list option: a YAML list (the config file gives it as a JSON array) or, from a
/// flag or the environment, comma-separated entries. An argon2 hash has commas of
/// its own (`m=19456,t=2,p=1`): a piece that does not start with `<name>:` continues
/// the entry before it.
fn entries(value: &str) -> Result<Vec<String>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(Vec::new());
    }
    if value.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(value)
            .map_err(|_| "expected a list of strings".to_string());
    }
    let mut out: Vec<String> = Vec::new();
    for piece in value.split(',') {
        let starts_entry = piece
            .split_once(':')
            .is_some_and(|(name, _)| is_valid_user_name(name.trim()) || name.trim() == EVERYONE);
        match out.last_mut() {
            Some(last) if !starts_entry => {
                last.push(',');
                last.push_str(piece);
            }
            _ => out.push(piece.trim().to_string()),
        }
    }
    Ok(out.into_iter().filter(|e| !e.is_empty()).collect())
}

fn user_of(name: &str) -> Result<String, String> {
    match name {
        "*" | "everyone" => Ok(EVERYONE.to_string()),
        n if is_valid_user_name(n) => Ok(n.to_string()),
        n => Err(format!("invalid user name {n:?}")),
    }
}

impl Provisioning {
    /// Parses `auth-users` (`name:hash:role`), `auth-access` (`user:pattern:perm`,
    /// user `everyone` or `*` for anonymous) and `auth-tokens` (`user:token[:label]`).
    pub fn parse(users: &str, access: &str, tokens: &str) -> Result<Provisioning, String> {
        let mut p = Provisioning::default();
        for e in entries(users)? {
            let (name, rest) = e.split_once(':').ok_or("expected name:hash:role")?;
            let (hash, role) = rest.rsplit_once(':').ok_or("expected name:hash:role")?;
            if !is_valid_user_name(name) {
                return Err(format!("invalid user name {name:?}"));
            }
            let role = match role {
                "admin" => Role::Admin,
                "user" => Role::User,
                _ => return Err(format!("user {name}: role must be admin or user")),
            };
            if !(super::password::is_bcrypt(hash) || hash.starts_with("$argon2")) {
                return Err(format!(
                    "user {name}: expected a bcrypt ($2a$/$2b$/$2y$) or argon2 hash, not a password"
                ));
            }
            if p.users.iter().any(|u| u.name == name) {
                return Err(format!("user {name} listed twice"));
            }
            p.users.push(UserRecord {
                name: name.to_string(),
                hash: hash.to_string(),
                role,
            });
        }
        for e in entries(access)? {
            let mut parts = e.splitn(3, ':');
            let (Some(user), Some(pattern), Some(perm)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("{e:?}: expected user:pattern:permission"));
            };
            let user = user_of(user)?;
            let access =
                Access::parse(perm).ok_or_else(|| format!("invalid permission {perm:?}"))?;
            if pattern.is_empty() {
                return Err(format!("{e:?}: empty topic pattern"));
            }
            p.access.push((user, pattern.to_string(), access));
        }
        for e in entries(tokens)? {
            let mut parts = e.splitn(3, ':');
            let (Some(user), Some(tok)) = (parts.next(), parts.next()) else {
                return Err("expected user:token[:label]".into());
            };
            if !is_valid_user_name(user) {
                return Err(format!("invalid user name {user:?}"));
            }
            if !token::is_well_formed(tok) {
                return Err(format!(
                    "token of {user}: expected tk_ and {} letters or digits",
                    token::LENGTH - token::PREFIX.len()
                ));
            }
            p.tokens.push((
                user.to_string(),
                tok.to_string(),
                parts.next().unwrap_or_default().to_string(),
            ));
        }
        Ok(p)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.access.is_empty() && self.tokens.is_empty()
    }
}

fn ignore_missing(r: Result<(), AuthStoreError>) -> Result<(), AuthStoreError> {
    match r {
        Err(AuthStoreError::UserNotFound(_) | AuthStoreError::TokenNotFound) => Ok(()),
        r => r,
    }
}

/// Brings the store to what `p` declares (see the module docs). Blocking.
pub fn apply(store: &dyn AuthStore, p: &Provisioning, now: i64) -> Result<(), AuthStoreError> {
    let before: BTreeSet<String> = store.provisioned()?.into_iter().collect();
    let mut items = BTreeSet::new();
    for u in &p.users {
        match store.user(&u.name)? {
            Some(existing) => {
                if existing.hash != u.hash {
                    store.set_password_hash(&u.name, &u.hash)?;
                }
                if existing.role != u.role {
                    store.set_role(&u.name, u.role)?;
                }
            }
            // Another node of a cluster, starting with the same configuration, may
            // have added it since: then it is as wanted.
            None => match store.add_user(u) {
                Err(AuthStoreError::UserExists(_)) => {
                    store.set_password_hash(&u.name, &u.hash)?;
                    store.set_role(&u.name, u.role)?;
                }
                r => r?,
            },
        }
        items.insert(format!("user:{}", u.name));
    }
    for (user, pattern, access) in &p.access {
        store.set_access(user, pattern, *access)?;
        items.insert(format!("access:{user}:{pattern}"));
    }
    for (user, tok, label) in &p.tokens {
        let digest = token::digest(tok);
        let exists = store
            .tokens(user)?
            .iter()
            .any(|t| token::digests_equal(&t.digest, &digest));
        if !exists {
            store.add_token(
                &TokenRecord {
                    digest,
                    user: user.clone(),
                    shown: token::shown_part(tok).to_string(),
                    label: label.clone(),
                    expires: 0,
                    last_access: 0,
                    last_origin: String::new(),
                    created: now,
                },
                token::MAX_PER_USER,
            )?;
        }
        items.insert(format!("token:{user}:{}", token::digest_hex(&digest)));
    }
    // What an earlier start provisioned and the configuration dropped.
    for gone in before.difference(&items) {
        let mut parts = gone.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("user"), Some(name), None) => ignore_missing(store.remove_user(name))?,
            (Some("access"), Some(user), Some(pattern)) => {
                ignore_missing(store.reset_access(Some(user), Some(pattern)))?
            }
            (Some("token"), Some(user), Some(hex)) => {
                if let Some(digest) = token::digest_from_hex(hex) {
                    ignore_missing(store.remove_token(user, &TokenSelector::Full(digest)))?;
                }
            }
            _ => {}
        }
    }
    store.set_provisioned(&items.into_iter().collect::<Vec<_>>())
}

/// Whether `name` is a provisioned user.
pub fn is_provisioned_user(store: &dyn AuthStore, name: &str) -> Result<bool, AuthStoreError> {
    let key = format!("user:{name}");
    Ok(store.provisioned()?.contains(&key))
}

/// Whether the token `digest` of `user` is provisioned.
pub fn is_provisioned_token(
    store: &dyn AuthStore,
    user: &str,
    digest: &token::TokenDigest,
) -> Result<bool, AuthStoreError> {
    let key = format!("token:{user}:{}", token::digest_hex(digest));
    Ok(store.provisioned()?.contains(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_from_yaml_and_env() {
        assert_eq!(
            entries(r#"["a:b:c","d:e:f"]"#).unwrap(),
            vec!["a:b:c".to_string(), "d:e:f".to_string()]
        );
        let argon = "phil:$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA:admin";
        assert_eq!(
            entries(&format!("{argon}, ben:$2a$10$abc:user")).unwrap(),
            vec![argon.to_string(), "ben:$2a$10$abc:user".to_string()]
        );
        assert!(entries("").unwrap().is_empty());
    }

    #[test]
    fn parse_errors() {
        let hash = "$2a$10$abcdefghijklmnopqrstuv";
        assert!(Provisioning::parse(&format!("phil:{hash}:admin"), "", "").is_ok());
        assert!(Provisioning::parse("phil:plaintext:admin", "", "").is_err());
        assert!(Provisioning::parse(&format!("phil:{hash}:boss"), "", "").is_err());
        assert!(Provisioning::parse("", "phil:alerts", "").is_err());
        assert!(Provisioning::parse("", "everyone:up*:wo", "").is_ok());
        assert!(Provisioning::parse("", "phil:x:maybe", "").is_err());
        assert!(Provisioning::parse("", "", "phil:tk_short").is_err());
    }
}
