//! Web Push as ntfy has it: browsers register a push subscription for topics
//! (`POST /v1/webpush`), and every message on those topics is sent to the browser's
//! push service, encrypted for it (RFC 8291) and signed with the server's VAPID key
//! (RFC 8292), so a notification reaches a closed tab or an installed app.
//!
//! Layers (each imports only those above it in this list): `keys` (VAPID), `ece`
//! (payload encryption).

pub(crate) mod ece;
pub mod keys;

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
}
