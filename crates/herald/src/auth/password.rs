//! Passwords: argon2id hashes in PHC string form (`$argon2id$v=19$m=...`).
//!
//! Hashing and verifying take tens of milliseconds and ~19 MiB on purpose (argon2's
//! default parameters, OWASP's recommendation); the server never runs them on the
//! runtime's threads. Logins are verified by [`Verifier`]: a few dedicated threads,
//! so that argon2's working memory lives in those threads' allocator arenas only
//! (on the blocking pool every thread that ever hashed kept its own ~19 MiB arena:
//! 16 arenas, ~300 MB after a login flood, issue #11). How many checks may run or
//! wait is the gate's business (`auth::gate`).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use tokio::sync::oneshot;

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

/// One verification for a worker: `hash: None` verifies against [`dummy_hash`].
struct Job {
    password: String,
    hash: Option<String>,
    reply: oneshot::Sender<bool>,
}

/// Dedicated argon2 threads for login checks. They stop when the verifier is dropped.
#[derive(Debug)]
pub struct Verifier {
    jobs: Option<mpsc::Sender<Job>>,
}

impl Verifier {
    /// Starts `threads` worker threads (at least one). If none can be started,
    /// checks fall back to the runtime's blocking pool.
    pub fn new(threads: usize) -> Verifier {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("herald-argon2-{i}"))
                .spawn(move || worker(&rx));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "cannot start a password-hashing thread"),
            }
        }
        Verifier {
            jobs: (started > 0).then_some(tx),
        }
    }

    /// Whether `password` matches `hash` (`None`: a user that does not exist, checked
    /// against the dummy hash so it takes as long, and never matches).
    pub async fn verify(&self, password: String, hash: Option<String>) -> bool {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            password,
            hash,
            reply,
        };
        let Some(tx) = &self.jobs else {
            return blocking(job).await;
        };
        match tx.send(job) {
            Ok(()) => answer.await.unwrap_or(false),
            Err(mpsc::SendError(job)) => blocking(job).await,
        }
    }
}

async fn blocking(job: Job) -> bool {
    tokio::task::spawn_blocking(move || run(job.password, job.hash))
        .await
        .unwrap_or(false)
}

fn run(password: String, hash: Option<String>) -> bool {
    match hash {
        Some(hash) => verify(&password, &hash),
        None => {
            verify(&password, dummy_hash());
            false
        }
    }
}

fn worker(jobs: &Mutex<mpsc::Receiver<Job>>) {
    // Made here, off the runtime, before the first unknown user needs it.
    let _ = dummy_hash();
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(job) = job else {
            return;
        };
        let ok = run(job.password, job.hash);
        let _ = job.reply.send(ok);
    }
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

    #[tokio::test]
    async fn verifier_threads_check_and_unknown_users_never_match() {
        let h = hash("pw").unwrap();
        let v = Verifier::new(2);
        assert!(v.verify("pw".into(), Some(h.clone())).await);
        assert!(!v.verify("px".into(), Some(h)).await);
        assert!(!v.verify("pw".into(), None).await);
    }
}
