//! The vocabulary of access control: who is asking ([`Principal`], [`Role`]), what
//! they want ([`Permission`]) and what an ACL entry allows ([`Access`]). Kept apart
//! from the [`Authorizer`](super::Authorizer) so that the CLI, the stores and the
//! transports can name these without the machinery that decides.

use std::sync::Arc;

use super::token::TokenDigest;

/// Whether `name` is a valid user name: letters, digits and `-_.+@`, 1-64 long
/// (ntfy's `AllowedUsername`).
pub fn is_valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'@'))
}

/// What an operation needs: publishing needs write, subscribing read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Write,
}

/// What an ACL entry (or `auth-default-access`) allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access {
    pub read: bool,
    pub write: bool,
}

impl Access {
    pub const READ_WRITE: Access = Access {
        read: true,
        write: true,
    };
    pub const READ_ONLY: Access = Access {
        read: true,
        write: false,
    };
    pub const WRITE_ONLY: Access = Access {
        read: false,
        write: true,
    };
    pub const DENY_ALL: Access = Access {
        read: false,
        write: false,
    };

    /// ntfy's `ParsePermission`: `read-write`/`rw`, `read-only`/`read`/`ro`,
    /// `write-only`/`write`/`wo`, `deny-all`/`deny`/`none` (any case).
    pub fn parse(s: &str) -> Option<Access> {
        match s.trim().to_ascii_lowercase().as_str() {
            "read-write" | "rw" => Some(Access::READ_WRITE),
            "read-only" | "read" | "ro" => Some(Access::READ_ONLY),
            "write-only" | "write" | "wo" => Some(Access::WRITE_ONLY),
            "deny-all" | "deny" | "none" => Some(Access::DENY_ALL),
            _ => None,
        }
    }

    /// The canonical name (`read-write`, ...), as ntfy prints it.
    pub fn as_str(self) -> &'static str {
        match (self.read, self.write) {
            (true, true) => "read-write",
            (true, false) => "read-only",
            (false, true) => "write-only",
            (false, false) => "deny-all",
        }
    }

    /// Whether this allows `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        match permission {
            Permission::Read => self.read,
            Permission::Write => self.write,
        }
    }
}

/// A user's role: admins may do everything; users what the ACL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

/// Who is making a request: anonymous, or an authenticated user.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    user: Option<Arc<AuthenticatedUser>>,
}

struct AuthenticatedUser {
    name: String,
    role: Role,
    /// The digest of the token the request used, if it used one.
    token: Option<TokenDigest>,
}

// Not even the token's digest in debug output.
impl std::fmt::Debug for AuthenticatedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticatedUser")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("by_token", &self.token.is_some())
            .finish()
    }
}

impl Principal {
    /// Nobody in particular (user `*` in ACL terms).
    pub fn anonymous() -> Principal {
        Principal { user: None }
    }

    pub(super) fn user(name: &str, role: Role, token: Option<TokenDigest>) -> Principal {
        Principal {
            user: Some(Arc::new(AuthenticatedUser {
                name: name.to_string(),
                role,
                token,
            })),
        }
    }

    /// The user name when authenticated.
    pub fn user_name(&self) -> Option<&str> {
        self.user.as_deref().map(|u| u.name.as_str())
    }

    pub fn is_admin(&self) -> bool {
        self.role() == Some(Role::Admin)
    }

    pub fn role(&self) -> Option<Role> {
        self.user.as_deref().map(|u| u.role)
    }

    /// The digest of the token this request authenticated with, if any.
    pub fn token(&self) -> Option<&TokenDigest> {
        self.user.as_deref().and_then(|u| u.token.as_ref())
    }
}
