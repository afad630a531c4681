//! The authorizer's in-memory copy of the [`AuthStore`](super::store::AuthStore),
//! indexed for requests: a request costs hash-map lookups, no SQL.

use std::collections::HashMap;

use super::Role;
use super::acl::Grant;
use super::store::{AuthData, EVERYONE};
use super::token::TokenDigest;

/// A user as the snapshot holds them.
pub(super) struct SnapshotUser {
    pub(super) role: Role,
    pub(super) hash: String,
    pub(super) grants: Vec<Grant>,
}

pub(super) struct SnapshotToken {
    pub(super) digest: TokenDigest,
    pub(super) user: String,
    pub(super) expires: i64,
    pub(super) last_access: i64,
}

/// The store's content, indexed for requests.
#[derive(Default)]
pub(super) struct Snapshot {
    pub(super) users: HashMap<String, SnapshotUser>,
    pub(super) everyone: Vec<Grant>,
    pub(super) tokens: HashMap<TokenDigest, SnapshotToken>,
}

impl Snapshot {
    pub(super) fn build(data: AuthData) -> Snapshot {
        let mut users: HashMap<String, SnapshotUser> = data
            .users
            .into_iter()
            .map(|u| {
                (
                    u.name,
                    SnapshotUser {
                        role: u.role,
                        hash: u.hash,
                        grants: Vec::new(),
                    },
                )
            })
            .collect();
        let mut everyone = Vec::new();
        for g in data.grants {
            if g.user == EVERYONE {
                everyone.push(g.grant);
            } else if let Some(u) = users.get_mut(&g.user) {
                u.grants.push(g.grant);
            }
        }
        let tokens = data
            .tokens
            .into_iter()
            .map(|t| {
                (
                    t.digest,
                    SnapshotToken {
                        digest: t.digest,
                        user: t.user,
                        expires: t.expires,
                        last_access: t.last_access,
                    },
                )
            })
            .collect();
        Snapshot {
            users,
            everyone,
            tokens,
        }
    }
}
