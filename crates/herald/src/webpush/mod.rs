//! Web Push as ntfy has it: browsers register a push subscription for topics
//! (`POST /v1/webpush`), and every message on those topics is sent to the browser's
//! push service, encrypted for it (RFC 8291) and signed with the server's VAPID key
//! (RFC 8292), so a notification reaches a closed tab or an installed app.
//!
//! Layers (each imports only those above it in this list): `keys` (VAPID), `ece`
//! (payload encryption), `store` (subscriptions and the send queue: SQLite, and
//! Redis in cluster mode), `service` (feed, senders, housekeeping, metrics). The
//! HTTP API is `api::webpush`; `herald webpush keys` is in `main.rs`.

pub(crate) mod ece;
pub mod keys;
pub(crate) mod redis;
pub(crate) mod service;
pub(crate) mod store;

pub use service::WebPush;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Web Push settings (`web-push-*`); present only when the keys are configured.
#[derive(Debug, Clone)]
pub struct WebPushConfig {
    pub keys: Arc<keys::VapidKeys>,
    /// SQLite file of subscriptions and the send queue (`web-push-file`).
    pub file: PathBuf,
    /// `web-push-email-address`: the VAPID JWT's `sub`.
    pub email: String,
    /// `web-push-expiry-duration`: an unrenewed subscription is removed after this.
    pub expiry: Duration,
    /// `web-push-allowed-endpoints`: URL prefixes accepted as push services besides
    /// the public ones (a self-hosted push service, or a test's receiver).
    pub allowed_endpoints: Vec<String>,
}

/// The Web Push service for this node, started: the SQLite store and this node's
/// committed messages, or with `redis-url` the shared store and the cluster log.
/// `wake` is poked after each publish (a `WakingBroker` around the broker) while
/// the feed wants it (it has subscriptions).
pub(crate) fn start(
    config: &crate::config::Config,
    push: &WebPushConfig,
    herald: &Arc<crate::core::Herald>,
    wake: Arc<crate::webhook::dispatcher::FeedWake>,
    redis: Option<&crate::cluster::connector::RedisConnector>,
) -> anyhow::Result<Arc<WebPush>> {
    use anyhow::Context as _;
    let (store, source): (
        Arc<dyn store::PushStore>,
        Arc<dyn crate::webhook::feed::FeedSource>,
    ) =
        match redis {
            Some(url) => (
                Arc::new(
                    redis::RedisPushStore::open(url, &config.redis_key_prefix)
                        .context("cannot set up the Redis web push store")?,
                ),
                Arc::new(
                    crate::webhook::redis::LogFeed::open(url, &config.redis_key_prefix)
                        .context("cannot set up the web push feed")?,
                ),
            ),
            None => (
                Arc::new(store::SqlitePushStore::open(&push.file).with_context(|| {
                    format!("cannot open web push store {}", push.file.display())
                })?),
                Arc::new(crate::webhook::feed::CommittedFeed(herald.clone())),
            ),
        };
    let service = WebPush::new(push.clone(), config.base_url.clone(), store, source, wake)?;
    service.start();
    tracing::info!(public_key = %push.keys.public_base64(), "web push on");
    Ok(service)
}
