//! Slot accounting for open streams: `visitor-subscription-limit` on this node, and
//! the guard that gives a slot back (this node's or the cluster's shared one) when
//! the stream ends, whichever transport served it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::limits::shared::SharedSlot;
use crate::limits::{Limit, Refusal};
use crate::limits::{Visitor, VisitorKey};

/// Open streams per visitor (see [`crate::limits`] for who a visitor is), enforcing
/// `visitor-subscription-limit`. Exempt visitors are not counted.
#[derive(Debug)]
pub struct SubscriptionSlots {
    limit: usize,
    per_visitor: Mutex<HashMap<VisitorKey, usize>>,
}

impl SubscriptionSlots {
    /// Slots for at most `limit` open streams per visitor.
    pub fn new(limit: usize) -> Self {
        SubscriptionSlots {
            limit,
            per_visitor: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot for `visitor`, or `429 42903` if it has `limit` open already.
    pub fn acquire(self: &Arc<Self>, visitor: &Visitor) -> Result<SlotGuard, Refusal> {
        if visitor.exempt {
            return Ok(SlotGuard {
                slots: self.clone(),
                visitor: None,
                _shared: None,
            });
        }
        let mut map = self.per_visitor.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(visitor.key.clone()).or_insert(0);
        if *count >= self.limit {
            if *count == 0 {
                map.remove(&visitor.key);
            }
            return Err(Limit::Subscriptions.into());
        }
        *count += 1;
        Ok(SlotGuard {
            slots: self.clone(),
            visitor: Some(visitor.key.clone()),
            _shared: None,
        })
    }

    /// A guard that holds nothing yet: the direct path's placeholder until the
    /// shared limits give the slot.
    pub fn shared_pending(self: &Arc<Self>) -> SlotGuard {
        SlotGuard {
            slots: self.clone(),
            visitor: None,
            _shared: None,
        }
    }

    /// A guard for a slot the cluster's shared limits gave (nothing counted here).
    pub fn shared_guard(self: &Arc<Self>, slot: SharedSlot) -> SlotGuard {
        SlotGuard {
            slots: self.clone(),
            visitor: None,
            _shared: Some(slot),
        }
    }
}

/// Releases its visitor's slot when the stream ends.
#[derive(Debug)]
pub struct SlotGuard {
    slots: Arc<SubscriptionSlots>,
    /// `None` for an exempt visitor (nothing was counted) or a shared slot.
    visitor: Option<VisitorKey>,
    /// Cluster mode: the slot in the shared limits, released when dropped.
    _shared: Option<SharedSlot>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let Some(visitor) = &self.visitor else {
            return;
        };
        let mut map = self
            .slots
            .per_visitor
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(visitor) {
            *count -= 1;
            if *count == 0 {
                map.remove(visitor);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_limit_per_visitor() {
        let slots = Arc::new(SubscriptionSlots::new(2));
        let visitor = |key, exempt| Visitor {
            key: VisitorKey::V4(key),
            exempt,
        };
        let v = visitor(1, false);
        let a = slots.acquire(&v).unwrap();
        let _b = slots.acquire(&v).unwrap();
        assert!(slots.acquire(&v).is_err());
        assert!(slots.acquire(&visitor(2, false)).is_ok());
        drop(a);
        assert!(slots.acquire(&v).is_ok());
        // Exempt visitors are never refused and not counted.
        let exempt = visitor(3, true);
        let held: Vec<_> = (0..10).map(|_| slots.acquire(&exempt).unwrap()).collect();
        drop(held);
        assert!(slots.per_visitor.lock().unwrap().get(&exempt.key).is_none());
        // A refused visitor with a limit of 0 leaves no entry behind.
        let none = Arc::new(SubscriptionSlots::new(0));
        assert!(none.acquire(&v).is_err());
        assert!(none.per_visitor.lock().unwrap().is_empty());
    }
}
