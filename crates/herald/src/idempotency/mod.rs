//! Idempotent publishing (a herald extension; ntfy has none): a publisher that
//! retries after a timeout sends the same `Idempotency-Key`, and the retry gets the
//! first publish's answer instead of publishing the notification twice.
//!
//! The rules are Stripe's and the IETF draft's (draft-ietf-httpapi-idempotency-key-header):
//! a key is remembered per scope (the visitor: `user:<name>` or the client's address
//! prefix) for `idempotency-window` together with a fingerprint of the request; a
//! repeat with the same fingerprint gets the original message (same ID, same body)
//! without a second publish, a repeat with another fingerprint is refused
//! ([`IdempotencyError::Mismatch`], `422`). A repeat that arrives while the first is
//! still being committed waits for its result (up to [`IN_FLIGHT_WAIT`], then `409`),
//! so concurrent duplicates still make one message. Only publishes that succeeded
//! are remembered: a failed one releases its key, so that the publisher's retry can
//! succeed (Stripe also replays failures; a stored `503` would make every retry fail).
//!
//! [`Idempotency::publish`] is a thin layer over [`Herald::publish`]: every transport
//! that accepts a key (the HTTP API today, gRPC when it exists) calls it instead of
//! `Herald::publish`, with the key and a fingerprint of its own wire form (only the
//! transport knows which of its inputs mean something: a relative `X-Delay: 30m` is
//! the same request a minute later, its absolute due time is not).
//!
//! Where keys live is a [`KeyStore`]: SQLite in the data directory (`sqlite`, one node;
//! survives restarts) or Redis (`redis`, cluster mode: the claim is one script, so
//! exactly one node publishes). Both are bounded: entries expire after the window
//! and at most `idempotency-key-limit` are kept (the ones nearest their expiry go
//! first).

pub(crate) mod redis;
pub(crate) mod sqlite;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::core::Herald;
use crate::core::publish::{PublishError, PublishRequest};
use crate::hub::SharedEvent;

/// Longest key accepted (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// How long a claim holds its key while its publish is under way. A node that dies
/// mid-publish frees its keys after this; a publish takes milliseconds.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// Longest a repeat waits for the first request's result before it is answered
/// [`IdempotencyError::InFlight`].
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(10);

/// The `Retry-After` of an [`IdempotencyError::InFlight`] answer.
pub const IN_FLIGHT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A digest of what a request asks for, to tell a true repeat from a reuse of its
/// key for something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

/// Builds a [`Fingerprint`] from named parts; each part is length-prefixed, so
/// `("ab", "c")` and `("a", "bc")` differ.
#[derive(Debug, Default)]
pub struct FingerprintBuilder(Sha256);

impl FingerprintBuilder {
    /// Adds the part `name` with `value`.
    pub fn part(&mut self, name: &str, value: &[u8]) -> &mut Self {
        for bytes in [name.as_bytes(), value] {
            self.0.update((bytes.len() as u64).to_be_bytes());
            self.0.update(bytes);
        }
        self
    }

    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.0.finalize().into())
    }
}

/// A validated key in its scope, with the fingerprint of the request that carries it.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// `scope` and key, the name under which the store remembers it.
    id: String,
    fingerprint: Fingerprint,
}

/// A key that is empty, longer than [`MAX_KEY_LEN`] or not printable ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("idempotency key must be 1 to 255 printable ASCII characters")]
pub struct InvalidKey;

impl IdempotencyKey {
    /// `key` as sent by a client of `scope` (a visitor name), for a request with
    /// `fingerprint`.
    pub fn new(scope: &str, key: &str, fingerprint: Fingerprint) -> Result<Self, InvalidKey> {
        let key = key.trim();
        if key.is_empty()
            || key.len() > MAX_KEY_LEN
            || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(InvalidKey);
        }
        Ok(IdempotencyKey {
            id: format!("{scope}\n{key}"),
            fingerprint,
        })
    }

    /// The store's name for this key (scope and key).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// What the store knows about a key when a request claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free: this request now holds it and publishes.
    Won,
    /// The key's publish succeeded with this response (the message as JSON).
    Done(Vec<u8>),
    /// Another request holds the key and has not finished.
    Pending,
    /// The key was used for a request with another fingerprint.
    Mismatch,
}

/// The key store failed (it is unavailable or broken).
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// Unreachable or did not answer in time; trying again later may work.
    #[error("idempotency store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error.
    #[error("idempotency store failed: {0}")]
    Failed(String),
}

/// Where keys live: claimed, completed with their response, or released.
#[async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Claims `id` for a request with `fingerprint`, for `lease` while it publishes,
    /// unless the key is held or done (and not expired).
    async fn claim(
        &self,
        id: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, KeyStoreError>;

    /// Records the claimed key's response, kept for `window`.
    async fn complete(
        &self,
        id: &str,
        response: &[u8],
        window: Duration,
    ) -> Result<(), KeyStoreError>;

    /// Gives up a claimed key whose publish failed (a completed key stays).
    async fn release(&self, id: &str) -> Result<(), KeyStoreError>;
}

/// Why an idempotent publish was not answered with a message.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The publish itself failed (the key was released).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The key was used within the window for a different request.
    #[error("idempotency key reused with a different request")]
    Mismatch,
    /// The first request with this key was still under way after [`IN_FLIGHT_WAIT`].
    #[error("a request with this idempotency key is still being processed")]
    InFlight { retry_after: Duration },
    #[error(transparent)]
    Store(#[from] KeyStoreError),
}

/// A publish's answer, and whether it is the replay of an earlier one.
#[derive(Debug, Clone)]
pub struct Published {
    /// The message, with its encodings (the answer's `json_line` is the subscribers').
    pub event: Arc<SharedEvent>,
    /// True when this request did not publish: the message is the one an earlier
    /// request with the same key published.
    pub replayed: bool,
}

/// Idempotent publishing over a [`KeyStore`], for `idempotency-window`.
#[derive(Debug)]
pub struct Idempotency {
    store: Arc<dyn KeyStore>,
    window: Duration,
}

impl Idempotency {
    /// Keys in `store`, each remembered for `window`; a zero window turns keys off
    /// (every request publishes).
    pub fn new(store: Arc<dyn KeyStore>, window: Duration) -> Self {
        Idempotency { store, window }
    }

    /// The key store `config` asks for: Redis in cluster mode (`redis`, shared by
    /// the cluster), else `<data-dir>/idempotency.db`.
    pub fn open(
        config: &crate::config::Config,
        redis: Option<&crate::cluster::connector::RedisConnector>,
    ) -> Result<Self, KeyStoreError> {
        let limit = config.idempotency_key_limit;
        let store: Arc<dyn KeyStore> = match redis {
            Some(connector) => Arc::new(redis::RedisKeys::open(
                connector,
                &config.redis_key_prefix,
                limit,
            )?),
            None => Arc::new(sqlite::SqliteKeys::open(
                &config.data_dir.join("idempotency.db"),
                limit,
            )?),
        };
        Ok(Idempotency::new(store, config.idempotency_window))
    }

    /// In memory only (tests, embedders without a data directory), with the default
    /// window and a small bound.
    pub fn in_memory() -> Self {
        let store = sqlite::SqliteKeys::in_memory(10_000)
            .unwrap_or_else(|e| unreachable!("an in-memory SQLite database opens: {e}"));
        Idempotency::new(Arc::new(store), Duration::from_secs(24 * 3600))
    }

    /// Whether keys are honoured (a non-zero `idempotency-window`).
    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Publishes `request`, received at `now_ms` (unix milliseconds), on `herald` once
    /// per `key`: the first request with a key publishes, a repeat gets its message
    /// ([`Published::replayed`]). Without a key (or with keys off) this is
    /// [`Herald::publish_shared_at`].
    pub async fn publish(
        &self,
        herald: &Arc<Herald>,
        request: PublishRequest,
        key: Option<IdempotencyKey>,
        now_ms: i64,
    ) -> Result<Published, IdempotencyError> {
        let Some(key) = key.filter(|_| self.enabled()) else {
            let event = herald.publish_shared_at(request, now_ms).await?;
            return Ok(Published {
                event,
                replayed: false,
            });
        };
        let deadline = Instant::now() + IN_FLIGHT_WAIT;
        let mut pause = Duration::from_millis(2);
        loop {
            match self
                .store
                .claim(&key.id, &key.fingerprint, CLAIM_LEASE)
                .await?
            {
                Claim::Won => break,
                Claim::Done(response) => return replay(&response),
                Claim::Mismatch => return Err(IdempotencyError::Mismatch),
                Claim::Pending if Instant::now() >= deadline => {
                    return Err(IdempotencyError::InFlight {
                        retry_after: IN_FLIGHT_RETRY_AFTER,
                    });
                }
                Claim::Pending => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
        // Spawned: a client going away must not leave its key claimed (repeats would
        // wait for the lease) after a publish that went through.
        let (store, herald, window) = (self.store.clone(), herald.clone(), self.window);
        let task = tokio::spawn(async move {
            publish_claimed(&*store, &herald, request, &key, window, now_ms).await
        });
        task.await
            .unwrap_or(Err(IdempotencyError::Publish(PublishError::Aborted)))
    }
}

async fn publish_claimed(
    store: &dyn KeyStore,
    herald: &Arc<Herald>,
    request: PublishRequest,
    key: &IdempotencyKey,
    window: Duration,
    now_ms: i64,
) -> Result<Published, IdempotencyError> {
    match herald.publish_shared_at(request, now_ms).await {
        Ok(event) => {
            // The message as `serde_json` writes it (what `replay` reads), already
            // encoded for the store and the subscribers.
            let response = event.encoded(crate::wire::Framing::WsText);
            let recorded = store.complete(&key.id, response, window).await;
            // The message is out: answer it. Unrecorded, the key frees up when its
            // lease ends, and a later repeat would publish again.
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "idempotency key not recorded after its publish");
            }
            Ok(Published {
                event,
                replayed: false,
            })
        }
        Err(e) => {
            if let Err(release) = store.release(&key.id).await {
                tracing::warn!(error = %release, "idempotency key not released after a failed publish");
            }
            Err(e.into())
        }
    }
}

fn replay(response: &[u8]) -> Result<Published, IdempotencyError> {
    // `from_str`, as the message store reads messages (one parser in the binary).
    let message = std::str::from_utf8(response)
        .map_err(|e| e.to_string())
        .and_then(|json| serde_json::from_str(json).map_err(|e| e.to_string()))
        .map_err(|e| KeyStoreError::Failed(format!("stored response unreadable: {e}")))?;
    Ok(Published {
        event: SharedEvent::new(message),
        replayed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(s: &str) -> Fingerprint {
        let mut b = FingerprintBuilder::default();
        b.part("body", s.as_bytes());
        b.finish()
    }

    /// The protocol every [`KeyStore`] keeps, run by each implementation's tests on a
    /// store of at most 3 keys.
    pub(super) async fn check_store(keys: &dyn KeyStore) {
        const LEASE: Duration = Duration::from_secs(30);
        const LONG: Duration = Duration::from_secs(60);
        let f = |b: u8| Fingerprint([b; 32]);
        let claim =
            |id: &'static str, b: u8| async move { keys.claim(id, &f(b), LEASE).await.unwrap() };
        assert_eq!(claim("a", 1).await, Claim::Won);
        assert_eq!(claim("a", 1).await, Claim::Pending);
        assert_eq!(claim("a", 2).await, Claim::Mismatch);
        keys.complete("a", b"{}", LONG).await.unwrap();
        assert_eq!(claim("a", 1).await, Claim::Done(b"{}".to_vec()));
        assert_eq!(claim("a", 2).await, Claim::Mismatch);
        keys.release("a").await.unwrap();
        assert_eq!(
            claim("a", 1).await,
            Claim::Done(b"{}".to_vec()),
            "a completed key stays"
        );
        assert_eq!(claim("b", 1).await, Claim::Won);
        keys.release("b").await.unwrap();
        assert_eq!(claim("b", 2).await, Claim::Won, "a released key is free");
        keys.complete("b", b"{}", Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(claim("b", 3).await, Claim::Won, "the window ended");
        keys.release("b").await.unwrap();
        for id in ["c", "d", "e"] {
            assert_eq!(claim(id, 1).await, Claim::Won);
            keys.complete(id, b"{}", LONG).await.unwrap();
        }
        assert_eq!(
            claim("a", 1).await,
            Claim::Won,
            "over the bound, the oldest went"
        );
    }

    #[test]
    fn keys_are_validated_and_scoped() {
        assert_eq!(
            IdempotencyKey::new("ip:1.2.3.4", "", fp("a")).unwrap_err(),
            InvalidKey
        );
        assert!(IdempotencyKey::new("s", &"k".repeat(256), fp("a")).is_err());
        assert!(IdempotencyKey::new("s", "bad\u{7}", fp("a")).is_err());
        let a = IdempotencyKey::new("ip:1.2.3.4", "order-1", fp("a")).unwrap();
        let b = IdempotencyKey::new("user:phil", "order-1", fp("a")).unwrap();
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn fingerprint_parts_are_delimited() {
        let mut x = FingerprintBuilder::default();
        x.part("a", b"bc");
        let mut y = FingerprintBuilder::default();
        y.part("ab", b"c");
        assert_ne!(x.finish(), y.finish());
        assert_eq!(fp("same"), fp("same"));
    }

    /// 100 concurrent publishes with one key make one message; every one of them
    /// answers it; a different request with the key is refused; without a key, a
    /// publish is a publish.
    #[tokio::test]
    async fn concurrent_duplicates_publish_once() {
        use crate::core::publish::{MessageDraft, PublishKind};
        let dir = tempfile::tempdir().unwrap();
        let herald = {
            use crate::store::sqlite::{SqliteOptions, SqliteStore};
            let config = Arc::new(crate::config::Config::with_data_dir(dir.path()));
            let store =
                SqliteStore::open(&dir.path().join("m.db"), SqliteOptions::default()).unwrap();
            let hub = crate::hub::Hub::new(1000);
            let broker = Arc::new(crate::broker::LocalBroker::new(hub.clone()));
            Herald::new(config, Arc::new(store), broker, hub)
        };
        let idem = Arc::new(Idempotency::in_memory());
        let request = || PublishRequest {
            topic: "t".into(),
            kind: PublishKind::Message(Box::new(MessageDraft {
                text: "once".into(),
                ..MessageDraft::default()
            })),
        };
        let key = IdempotencyKey::new("ip:127.0.0.1", "k1", fp("once")).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (idem, herald, key) = (idem.clone(), herald.clone(), key.clone());
            let request = request();
            tasks.push(tokio::spawn(async move {
                idem.publish(&herald, request, Some(key), crate::model::now_unix_ms())
                    .await
            }));
        }
        let mut ids = std::collections::HashSet::new();
        let mut fresh = 0;
        for task in tasks {
            let published = task.await.unwrap().unwrap();
            ids.insert(published.event.message.id.clone());
            fresh += usize::from(!published.replayed);
        }
        assert_eq!((ids.len(), fresh), (1, 1));
        let other = IdempotencyKey::new("ip:127.0.0.1", "k1", fp("other")).unwrap();
        let err = idem
            .publish(&herald, request(), Some(other), crate::model::now_unix_ms())
            .await
            .unwrap_err();
        assert!(matches!(err, IdempotencyError::Mismatch), "{err:?}");
        assert_eq!(herald.store_stats().await.unwrap().messages, 1);
        idem.publish(&herald, request(), None, crate::model::now_unix_ms())
            .await
            .unwrap();
        assert_eq!(herald.store_stats().await.unwrap().messages, 2);
    }
}
