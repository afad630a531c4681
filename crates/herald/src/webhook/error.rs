//! Why a webhook operation failed: one error for the service's operations and the
//! feed, below both so that neither has to import the other for it. The HTTP API
//! maps it to ntfy-shaped errors.

use super::store::WebhookStoreError;

/// Why a webhook operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("no such webhook")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("limit reached: too many webhooks for this visitor")]
    LimitReached,
    #[error(transparent)]
    Store(#[from] WebhookStoreError),
    #[error("message store: {0}")]
    Messages(#[from] crate::store::StoreError),
}
