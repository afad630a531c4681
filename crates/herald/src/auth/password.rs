//! Passwords: argon2id hashes in PHC string form (`$argon2id$v=19$m=...`).
//!
//! Hashing and verifying take tens of milliseconds and ~19 MiB on purpose (argon2's
//! default parameters, OWASP's recommendation); the server never runs them on the
//! runtime's threads. Logins are verified by [`Verifier`]: a few dedicated threads,
//! each with argon2's working memory allocated once and reused for every check.
//! Allocating and freeing ~19 MiB per check made the allocator keep tens of MB per
//! thread that ever hashed (glibc raises its mmap threshold after such a free, and
//! then keeps freed memory in per-thread arenas): ~300 MB after a login flood,
//! issue #11. Now argon2's memory is the number of threads × ~19 MiB. How many
//! checks may run or wait is the gate's business (`auth::gate`).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use subtle::ConstantTimeEq;
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
/// time). A malformed hash never matches. The server verifies through `Verifier`'s
/// reused memory; this allocating form checks what [`hash`] makes.
#[cfg(test)]
pub fn verify(password: &str, hash: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// A bcrypt hash (`$2a$`, `$2b$`, `$2y$`): ntfy's, accepted for provisioned users
/// (`auth-users`) so an ntfy `server.yml` carries over; herald itself makes argon2.
pub fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// A valid hash (argon2's default cost, as [`hash`] makes) of a random password
/// that was thrown away: verifying against it when the user does not exist makes "no
/// such user" take as long as "wrong password". Its result is never used. A constant,
/// so that making it costs no argon2 run (nor its allocation) at start-up.
pub fn dummy_hash() -> &'static str {
    "$argon2id$v=19$m=19456,t=2,p=1$hbtnO8G5Xb+CvubwiQ4HLw$spZVGbcY9w7eX6OPmEScuovM70ffDb8Y4YFg6mvzYps"
}

/// [`verify`] with `memory` as argon2's working memory, kept for the next check
/// (sized for the defaults [`hash`] uses; a costlier stored hash gets a temporary
/// buffer).
fn verify_with_memory(password: &str, hash: &str, memory: &mut Vec<Block>) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    if is_bcrypt(hash) {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.is_empty() {
        memory.resize(Params::default().block_count(), Block::new());
    }
    let mut temporary = Vec::new();
    let memory = if blocks <= memory.len() {
        &mut memory[..blocks]
    } else {
        temporary.resize(blocks, Block::new());
        &mut temporary[..]
    };
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params);
    if argon2
        .hash_password_into_with_memory(password.as_bytes(), salt, out, memory)
        .is_err()
    {
        return false;
    }
    bool::from(out.ct_eq(expected.as_bytes()))
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
    tokio::task::spawn_blocking(move || run(job.password, job.hash, &mut Vec::new()))
        .await
        .unwrap_or(false)
}

fn run(password: String, hash: Option<String>, memory: &mut Vec<Block>) -> bool {
    match hash {
        Some(hash) => verify_with_memory(&password, &hash, memory),
        None => {
            verify_with_memory(&password, dummy_hash(), memory);
            false
        }
    }
}

fn worker(jobs: &Mutex<mpsc::Receiver<Job>>) {
    // argon2's working memory, allocated by the first check and kept.
    let mut memory = Vec::new();
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(job) = job else {
            return;
        };
        let ok = run(job.password, job.hash, &mut memory);
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
        assert!(verify_with_memory("correct horse", &h, &mut Vec::new()));
        assert!(!verify_with_memory("correct horsE", &h, &mut Vec::new()));
        assert!(!verify_with_memory("x", "not a hash", &mut Vec::new()));
        assert!(PasswordHash::new(dummy_hash()).is_ok());
    }

    #[test]
    fn reused_memory_checks_every_cost() {
        let mut memory = Vec::new();
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password_with_salt(b"pw", b"0123456789abcdef")
        .unwrap()
        .to_string();
        let costly = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(Params::DEFAULT_M_COST * 2, 1, 1, None).unwrap(),
        )
        .hash_password_with_salt(b"pw", b"0123456789abcdef")
        .unwrap()
        .to_string();
        for h in [&cheap, &costly, &cheap] {
            assert!(verify_with_memory("pw", h, &mut memory), "{h}");
            assert!(!verify_with_memory("pv", h, &mut memory));
            assert!(verify("pw", h));
        }
        assert_eq!(memory.len(), Params::default().block_count());
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
