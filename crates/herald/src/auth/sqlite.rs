//! [`AuthStore`] in a SQLite file (`auth-file`, default `<data-dir>/auth.db`), WAL
//! mode, so the `herald user|access|token` commands can change it while the server
//! runs.
//!
//! Two connections: one for reads and writes, and one that only asks
//! `PRAGMA data_version`, which changes whenever *another* connection (this
//! process's writer or the CLI) committed. That is [`AuthStore::generation`]: the
//! server's snapshot is reloaded only when it moves.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::acl::Grant;
use super::store::{
    AuthData, AuthStore, AuthStoreError, TokenChange, TokenRecord, UserGrant, UserRecord,
};
use super::token::{TokenDigest, TokenSelector};
use super::{Access, Role};

/// How long a writer waits for another process's transaction (the CLI's or the
/// server's) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS user (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS user_token (
    digest BLOB PRIMARY KEY,
    user TEXT NOT NULL,
    shown TEXT NOT NULL,
    label TEXT NOT NULL,
    expires INTEGER NOT NULL,
    last_access INTEGER NOT NULL,
    last_origin TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS user_token_user ON user_token (user);
CREATE TABLE IF NOT EXISTS user_access (
    user TEXT NOT NULL,
    topic TEXT NOT NULL,
    read INTEGER NOT NULL,
    write INTEGER NOT NULL,
    PRIMARY KEY (user, topic)
);
CREATE TABLE IF NOT EXISTS provisioned (
    item TEXT PRIMARY KEY
);
PRAGMA user_version = 1;
";

/// The embedded auth store.
#[derive(Debug)]
pub struct SqliteAuthStore {
    conn: Mutex<Connection>,
    watch: Mutex<Connection>,
}

fn backend(e: impl std::fmt::Display) -> AuthStoreError {
    AuthStoreError::Backend(e.to_string())
}

fn open_connection(path: &Path) -> Result<Connection, AuthStoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(backend)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(AuthStoreError::Backend(format!(
            "{} cannot use WAL (journal_mode is {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(backend)?;
    Ok(conn)
}

impl SqliteAuthStore {
    /// Opens (creating if needed) the auth database at `path`.
    pub fn open(path: &Path) -> Result<SqliteAuthStore, AuthStoreError> {
        crate::datafiles::prepare_database(path).map_err(|e| {
            AuthStoreError::Backend(format!("cannot prepare {}: {e}", path.display()))
        })?;
        // Checked before any pragma changes the file.
        check_schema(&Connection::open(path).map_err(backend)?, path)?;
        let conn = open_connection(path)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        let watch = open_connection(path)?;
        Ok(SqliteAuthStore {
            conn: Mutex::new(conn),
            watch: Mutex::new(watch),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one immediate (write-locking) transaction and commits it.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, AuthStoreError>,
    ) -> Result<T, AuthStoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend)?;
        let value = f(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(value)
    }
}

/// Refuses files herald did not make (an ntfy `user.db` has tables of the same names
/// and other columns) or made by a newer herald, before anything is written.
fn check_schema(conn: &Connection, path: &Path) -> Result<(), AuthStoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(backend)?;
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |row| row.get(0),
        )
        .map_err(backend)?;
    match version {
        0 if tables > 0 => Err(AuthStoreError::Backend(format!(
            "{} is not a herald auth file (an ntfy user.db cannot be used; make users with `herald user add`)",
            path.display()
        ))),
        0 | 1 => Ok(()),
        v => Err(AuthStoreError::Backend(format!(
            "{} has schema version {v}, newer than this herald understands",
            path.display()
        ))),
    }
}

fn role_str(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::User => "user",
    }
}

fn role_from(s: &str) -> Role {
    // Anything unknown is the least privileged role.
    if s == "admin" {
        Role::Admin
    } else {
        Role::User
    }
}

fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let digest: Vec<u8> = row.get(0)?;
    let mut d = [0u8; 32];
    if digest.len() == 32 {
        d.copy_from_slice(&digest);
    }
    Ok(TokenRecord {
        digest: d,
        user: row.get(1)?,
        shown: row.get(2)?,
        label: row.get(3)?,
        expires: row.get(4)?,
        last_access: row.get(5)?,
        last_origin: row.get(6)?,
        created: row.get(7)?,
    })
}

const TOKEN_COLUMNS: &str =
    "digest, user, shown, label, expires, last_access, last_origin, created";

fn user_exists(tx: &Transaction<'_>, name: &str) -> Result<bool, AuthStoreError> {
    tx.query_row("SELECT 1 FROM user WHERE name = ?1", [name], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
        .map_err(backend)
}

fn require_user(tx: &Transaction<'_>, name: &str) -> Result<(), AuthStoreError> {
    if user_exists(tx, name)? {
        Ok(())
    } else {
        Err(AuthStoreError::UserNotFound(name.to_string()))
    }
}

/// The one token of `user` that `selector` names.
fn select_token(
    conn: &Connection,
    user: &str,
    selector: &TokenSelector,
) -> Result<TokenRecord, AuthStoreError> {
    let (column, key): (&str, &dyn rusqlite::ToSql) = match selector {
        TokenSelector::Full(digest) => ("digest", digest),
        TokenSelector::Shown(shown) => ("shown", shown),
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM user_token WHERE user = ?1 AND {column} = ?2"
        ))
        .map_err(backend)?;
    let found = stmt
        .query_map(params![user, key], token_from_row)
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    super::store::exactly_one(found)
}

impl AuthStore for SqliteAuthStore {
    fn generation(&self) -> Result<u64, AuthStoreError> {
        let watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = watch
            .prepare_cached("PRAGMA data_version")
            .map_err(backend)?;
        stmt.query_row([], |row| row.get::<_, i64>(0))
            .map(|v| v as u64)
            .map_err(backend)
    }

    fn load(&self) -> Result<AuthData, AuthStoreError> {
        let mut conn = self.conn();
        // One read transaction: a consistent view of all three tables.
        let tx = conn.transaction().map_err(backend)?;
        let users = {
            let mut stmt = tx
                .prepare_cached("SELECT name, hash, role FROM user")
                .map_err(backend)?;
            stmt.query_map([], |row| {
                Ok(UserRecord {
                    name: row.get(0)?,
                    hash: row.get(1)?,
                    role: role_from(&row.get::<_, String>(2)?),
                })
            })
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?
        };
        let tokens = {
            let mut stmt = tx
                .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM user_token"))
                .map_err(backend)?;
            stmt.query_map([], token_from_row)
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?
        };
        let grants = {
            let mut stmt = tx
                .prepare_cached("SELECT user, topic, read, write FROM user_access")
                .map_err(backend)?;
            stmt.query_map([], |row| {
                Ok(UserGrant {
                    user: row.get(0)?,
                    grant: Grant {
                        pattern: row.get(1)?,
                        access: Access {
                            read: row.get(2)?,
                            write: row.get(3)?,
                        },
                    },
                })
            })
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?
        };
        tx.finish().map_err(backend)?;
        Ok(AuthData {
            users,
            tokens,
            grants,
        })
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>, AuthStoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name, hash, role FROM user WHERE name = ?1")
            .map_err(backend)?;
        stmt.query_row([name], |row| {
            Ok(UserRecord {
                name: row.get(0)?,
                hash: row.get(1)?,
                role: role_from(&row.get::<_, String>(2)?),
            })
        })
        .optional()
        .map_err(backend)
    }

    fn add_user(&self, user: &UserRecord) -> Result<(), AuthStoreError> {
        self.write(|tx| {
            if user_exists(tx, &user.name)? {
                return Err(AuthStoreError::UserExists(user.name.clone()));
            }
            tx.execute(
                "INSERT INTO user (name, hash, role, created) VALUES (?1, ?2, ?3, ?4)",
                params![user.name, user.hash, role_str(user.role), now()],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn remove_user(&self, name: &str) -> Result<(), AuthStoreError> {
        self.write(|tx| {
            require_user(tx, name)?;
            tx.execute("DELETE FROM user_token WHERE user = ?1", [name])
                .map_err(backend)?;
            tx.execute("DELETE FROM user_access WHERE user = ?1", [name])
                .map_err(backend)?;
            tx.execute("DELETE FROM user WHERE name = ?1", [name])
                .map_err(backend)?;
            Ok(())
        })
    }

    fn set_password_hash(&self, name: &str, hash: &str) -> Result<(), AuthStoreError> {
        self.write(|tx| {
            require_user(tx, name)?;
            tx.execute("UPDATE user SET hash = ?2 WHERE name = ?1", [name, hash])
                .map_err(backend)?;
            Ok(())
        })
    }

    fn set_role(&self, name: &str, role: Role) -> Result<(), AuthStoreError> {
        self.write(|tx| {
            require_user(tx, name)?;
            tx.execute(
                "UPDATE user SET role = ?2 WHERE name = ?1",
                [name, role_str(role)],
            )
            .map_err(backend)?;
            if role == Role::Admin {
                tx.execute("DELETE FROM user_access WHERE user = ?1", [name])
                    .map_err(backend)?;
            }
            Ok(())
        })
    }

    fn set_access(&self, user: &str, pattern: &str, access: Access) -> Result<(), AuthStoreError> {
        self.write(|tx| {
            if user != super::store::EVERYONE {
                require_user(tx, user)?;
            }
            tx.execute(
                "INSERT INTO user_access (user, topic, read, write) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user, topic) DO UPDATE SET read = excluded.read, write = excluded.write",
                params![user, pattern, access.read, access.write],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn reset_access(
        &self,
        user: Option<&str>,
        pattern: Option<&str>,
    ) -> Result<(), AuthStoreError> {
        self.write(|tx| {
            match (user, pattern) {
                (None, _) => tx.execute("DELETE FROM user_access", []),
                (Some(u), None) => tx.execute("DELETE FROM user_access WHERE user = ?1", [u]),
                (Some(u), Some(p)) => tx.execute(
                    "DELETE FROM user_access WHERE user = ?1 AND topic = ?2",
                    [u, p],
                ),
            }
            .map_err(backend)?;
            Ok(())
        })
    }

    fn add_token(&self, token: &TokenRecord, max_per_user: usize) -> Result<(), AuthStoreError> {
        self.write(|tx| {
            require_user(tx, &token.user)?;
            tx.execute(
                &format!("INSERT INTO user_token ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    token.digest.as_slice(),
                    token.user,
                    token.shown,
                    token.label,
                    token.expires,
                    token.last_access,
                    token.last_origin,
                    token.created
                ],
            )
            .map_err(backend)?;
            tx.execute(
                "DELETE FROM user_token WHERE user = ?1 AND digest NOT IN (
                     SELECT digest FROM user_token WHERE user = ?1
                     ORDER BY created DESC, rowid DESC LIMIT ?2)",
                params![token.user, max_per_user as i64],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn tokens(&self, user: &str) -> Result<Vec<TokenRecord>, AuthStoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM user_token WHERE user = ?1 ORDER BY created DESC, rowid DESC"
            ))
            .map_err(backend)?;
        stmt.query_map([user], token_from_row)
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)
    }

    fn find_token(
        &self,
        user: &str,
        selector: &TokenSelector,
    ) -> Result<TokenRecord, AuthStoreError> {
        select_token(&self.conn(), user, selector)
    }

    fn change_token(
        &self,
        user: &str,
        selector: &TokenSelector,
        change: &TokenChange,
    ) -> Result<TokenRecord, AuthStoreError> {
        self.write(|tx| {
            let mut token = select_token(tx, user, selector)?;
            if let Some(label) = &change.label {
                token.label = label.clone();
            }
            if let Some(expires) = change.expires {
                token.expires = expires;
            }
            tx.execute(
                "UPDATE user_token SET label = ?2, expires = ?3 WHERE digest = ?1",
                params![token.digest.as_slice(), token.label, token.expires],
            )
            .map_err(backend)?;
            Ok(token)
        })
    }

    fn remove_token(&self, user: &str, selector: &TokenSelector) -> Result<(), AuthStoreError> {
        self.write(|tx| {
            let token = select_token(tx, user, selector)?;
            tx.execute(
                "DELETE FROM user_token WHERE digest = ?1",
                [token.digest.as_slice()],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn touch_token(
        &self,
        digest: &TokenDigest,
        at: i64,
        origin: &str,
    ) -> Result<(), AuthStoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE user_token SET last_access = ?2, last_origin = ?3 WHERE digest = ?1",
                params![digest.as_slice(), at, origin],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn provisioned(&self) -> Result<Vec<String>, AuthStoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT item FROM provisioned ORDER BY item")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn set_provisioned(&self, items: &[String]) -> Result<(), AuthStoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM provisioned", []).map_err(backend)?;
            for item in items {
                tx.execute(
                    "INSERT OR IGNORE INTO provisioned (item) VALUES (?1)",
                    [item],
                )
                .map_err(backend)?;
            }
            Ok(())
        })
    }

    fn remove_expired_tokens(&self, now: i64) -> Result<usize, AuthStoreError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM user_token WHERE expires > 0 AND expires <= ?1",
                [now],
            )
            .map_err(backend)
        })
    }
}

fn now() -> i64 {
    crate::model::now_unix()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::auth::store::contract::{self, user};

    #[test]
    fn contract() {
        let dir = tempfile::tempdir().unwrap();
        contract::run_all(&|name: &str| {
            Box::new(SqliteAuthStore::open(&dir.path().join(format!("{name}.db"))).unwrap())
        });
    }

    #[test]
    fn foreign_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.db");
        let ntfy = Connection::open(&path).unwrap();
        ntfy.execute_batch("CREATE TABLE user (id TEXT, user TEXT, pass TEXT);")
            .unwrap();
        drop(ntfy);
        let err = SqliteAuthStore::open(&path).unwrap_err();
        assert!(err.to_string().contains("not a herald auth file"), "{err}");
        let conn = Connection::open(&path).unwrap();
        let tables: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 1, "nothing was created");
        // A herald file opens again.
        let ok = dir.path().join("auth.db");
        drop(SqliteAuthStore::open(&ok).unwrap());
        SqliteAuthStore::open(&ok).unwrap();
    }

    #[test]
    fn another_connection_moves_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.db");
        let server = SqliteAuthStore::open(&path).unwrap();
        let g0 = server.generation().unwrap();
        assert_eq!(server.generation().unwrap(), g0, "stable without changes");
        let cli = SqliteAuthStore::open(&path).unwrap();
        cli.add_user(&user("ben", Role::Admin)).unwrap();
        assert_ne!(server.generation().unwrap(), g0);
        // The server's own writes move it too (they use the other connection).
        let g1 = server.generation().unwrap();
        server.set_role("ben", Role::User).unwrap();
        assert_ne!(server.generation().unwrap(), g1);
    }
}
