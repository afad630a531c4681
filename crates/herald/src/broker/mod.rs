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

use crate::hub::{FanOut, HandOff, Hub, SharedEvent};

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
    /// Delivers `event` to the subscribers of its topic on every node. When this
    /// node's hub leaves the topic's fan-out to the caller ([`FanOut`]), it is
    /// returned: the caller runs it once it holds nothing up (the core: after its
    /// publish released the sequencer's turn); dropped, it runs there and then.
    async fn publish(&self, event: Arc<SharedEvent>) -> Result<Option<FanOut>, BrokerError>;

    /// [`Self::publish`] without waiting, for a broker that can hand `event` on at
    /// once: `Some` with what `publish` would have returned, or `None` when the
    /// caller must await `publish` (the default; the local broker when the topic's
    /// outbox is full). Spares the publish path a boxed future per broker layer.
    fn try_publish(&self, event: &Arc<SharedEvent>) -> Option<Option<FanOut>> {
        let _ = event;
        None
    }

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
    async fn publish(&self, event: Arc<SharedEvent>) -> Result<Option<FanOut>, BrokerError> {
        Ok(self.hub.hand_off(&event).await)
    }

    fn try_publish(&self, event: &Arc<SharedEvent>) -> Option<Option<FanOut>> {
        match self.hub.try_hand_off(event) {
            HandOff::Queued(fan_out) => Some(fan_out),
            HandOff::Full => None,
        }
    }

    fn is_connected(&self) -> bool {
        true
    }
}
