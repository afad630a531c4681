//! What every cluster-mode (`redis-url`) part shares, so the store, the broker, the
//! limits, access control and webhooks talk to Redis the same way (docs/SCALING.md).
//!
//! The parts themselves live with the seam they implement: `store::redis`,
//! `broker::redis`, `limits::redis`, `auth::redis`, `webhook::redis`.

pub mod connector;
pub mod redis;
pub(crate) mod replicas;
