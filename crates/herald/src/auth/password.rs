//! Passwords: argon2id hashes in PHC string form (`$argon2id$v=19$m=...`).
//!
//! Hashing and verifying take tens of milliseconds and ~19 MiB on purpose (argon2's
//! default parameters, OWASP's recommendation); the server runs them with
//! `spawn_blocking`, never on the runtime's threads.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// Longest accepted password, in bytes (bounds the hashing work per attempt).
pub const MAX_PASSWORD_LEN: usize = 4096;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password must not be empty")]
    Empty,
    #[error("password is longer than {MAX_PASSWORD_LEN} bytes")]
    TooLong,
    #[error("no randomness for the salt: {0}")]
    Random(String),
    #[error("cannot hash password: {0}")]
    Hash(String),
}

/// Hashes `password` with argon2id and a fresh random salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(PasswordError::TooLong);
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| PasswordError::Random(e.to_string()))?;
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (argon2 compares in constant
/// time). A malformed hash never matches.
pub fn verify(password: &str, hash: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// A valid hash of a password nobody knows: verifying against it when the user does
/// not exist makes "no such user" take as long as "wrong password".
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut random = [0u8; 24];
        let _ = getrandom::fill(&mut random);
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        hash(&password).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify("correct horse", &h));
        assert!(!verify("correct horsE", &h));
        assert!(!verify("correct horse", "not a hash"));
        assert_ne!(hash("correct horse").unwrap(), h, "salted");
        assert!(matches!(hash(""), Err(PasswordError::Empty)));
        assert!(!dummy_hash().is_empty());
    }
}
