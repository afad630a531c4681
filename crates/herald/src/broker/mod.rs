//! How a committed event reaches the hub of every node that has subscribers for it.
//!
//! On a single node that is a direct call into the local [`Hub`]
//! ([`LocalBroker`]). A multi-node deployment replaces it with an implementation that
//! sends the event through a shared system (Redis, NATS) and feeds every node's hub
//! from there; the transports and the core do not change, they only ever talk to a
//! `Broker` for publishing and to the `Hub` for subscribing. [`redis::RedisBroker`] is
//! the cluster implementation (docs/SCALING.md).

pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::hub::{Hub, SharedEvent};

/// Why an event could not be handed to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The shared backend is unreachable; the publish must not be acknowledged.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Fan-out across nodes. Implementations must keep per-topic order: events given to
/// `publish` one after another for the same topic reach every hub in that order.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Delivers `event` to the subscribers of its topic on every node.
    async fn publish(&self, event: Arc<SharedEvent>) -> Result<(), BrokerError>;

    /// Whether the broker can currently deliver (readiness probe).
    fn is_connected(&self) -> bool;
}

/// The single-node broker: events go straight into this process's hub.
#[derive(Debug, Clone)]
pub struct LocalBroker {
    hub: Arc<Hub>,
}

impl LocalBroker {
    /// A broker delivering into `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        LocalBroker { hub }
    }
}

#[async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, event: Arc<SharedEvent>) -> Result<(), BrokerError> {
        self.hub.dispatch(&event).await;
        Ok(())
    }

    fn is_connected(&self) -> bool {
        true
    }
}
