//! The password-verification gate: who may run argon2 now, who may wait, and who is
//! refused at once.
//!
//! An argon2 check costs tens of milliseconds of a core and ~19 MiB, and anyone can
//! ask for one by sending Basic credentials with a made-up user name. An unbounded
//! queue in front of the hashing threads turns a flood of such logins from many
//! addresses into seconds of waiting for everyone (issue #11: 300 concurrent logins
//! held a valid login for 9.6 s). So the gate bounds everything:
//!
//! - at most `slots` checks run at once (one per core: hashing is CPU-bound), which
//!   also bounds argon2's memory to `slots` × its working memory;
//! - at most `queue` checks wait; a request that finds the queue full is refused
//!   with `429` at once instead of waiting its turn behind the flood;
//! - per visitor (client address, IPv6 /64), at most [`PER_VISITOR`] checks running
//!   or waiting, and at most one waiting: a visitor already waiting is refused at once,
//!   so no address takes more than its share of the queue;
//! - a visitor with recent failed logins is a *suspect*: clean visitors are served
//!   first, and a clean visitor that finds the queue full takes the place of the
//!   suspect that queued last (which is refused). A flood of made-up user names turns
//!   every flooding address into a suspect after its first failure, so a user who has
//!   not failed gets through. Being a suspect depends only on the address's failures,
//!   never on the user name, so the gate tells nobody whether a user exists.
//!
//! The gate is a mutex over a small queue; a waiter is a oneshot channel, and a
//! waiter that goes away (its client hung up) leaves the queue or hands its slot on.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Most checks one visitor may have running or waiting.
pub const PER_VISITOR: usize = 2;

/// The gate was full (or this visitor already waits): answer `429` now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password checks are busy")]
pub struct Busy;

/// Bounds on password checks: see the module docs.
#[derive(Debug, Clone)]
pub struct HashGate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    slots: usize,
    running: usize,
    waiting: VecDeque<Waiter>,
    visitors: HashMap<IpAddr, Share>,
    next_id: u64,
}

/// One visitor's checks in the gate.
#[derive(Debug, Default, Clone, Copy)]
struct Share {
    /// Running or waiting.
    active: usize,
    waiting: usize,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    visitor: IpAddr,
    suspect: bool,
    /// `Ok`: the waiter now holds a slot; `Err`: it was displaced.
    wake: oneshot::Sender<Result<(), Busy>>,
}

/// A running check's slot; dropping it lets the next waiter run.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    visitor: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.leave(self.visitor, false);
        state.running -= 1;
        state.hand_on();
    }
}

/// Removes a waiter that is dropped before its turn (its request was cancelled).
struct WaitGuard {
    inner: Arc<Inner>,
    id: u64,
    visitor: IpAddr,
    rx: Option<oneshot::Receiver<Result<(), Busy>>>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut state = self.inner.lock();
        if let Some(pos) = state.waiting.iter().position(|w| w.id == self.id) {
            state.waiting.remove(pos);
            state.leave(self.visitor, true);
            return;
        }
        // Granted a slot it will never use: pass it on. (Displaced waiters have
        // already left the counts.)
        if let Ok(Ok(())) = rx.try_recv() {
            state.leave(self.visitor, false);
            state.running -= 1;
            state.hand_on();
        }
    }
}

impl State {
    fn leave(&mut self, visitor: IpAddr, was_waiting: bool) {
        if let Some(share) = self.visitors.get_mut(&visitor) {
            share.active = share.active.saturating_sub(1);
            if was_waiting {
                share.waiting = share.waiting.saturating_sub(1);
            }
            if share.active == 0 {
                self.visitors.remove(&visitor);
            }
        }
    }

    /// Gives free slots to waiters: clean visitors first, each class in arrival order.
    /// Called with a slot just freed (`running` already decremented).
    fn hand_on(&mut self) {
        while self.running < self.slots {
            let pos = self
                .waiting
                .iter()
                .position(|w| !w.suspect)
                .or_else(|| (!self.waiting.is_empty()).then_some(0));
            let Some(pos) = pos else {
                return;
            };
            let Some(waiter) = self.waiting.remove(pos) else {
                return;
            };
            if let Some(share) = self.visitors.get_mut(&waiter.visitor) {
                share.waiting = share.waiting.saturating_sub(1);
            }
            self.running += 1;
            if waiter.wake.send(Ok(())).is_err() {
                // Its request is gone (the guard could not find it in the queue
                // and will not see this grant): take the slot back.
                self.running -= 1;
                self.leave(waiter.visitor, false);
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl HashGate {
    /// A gate with `slots` checks at once and `queue` waiting (both at least 1).
    pub fn new(slots: usize, queue: usize) -> HashGate {
        HashGate {
            inner: Arc::new(Inner {
                queue: queue.max(1),
                state: Mutex::new(State {
                    slots: slots.max(1),
                    ..State::default()
                }),
            }),
        }
    }

    /// Waits for a slot for `visitor` (already masked to its prefix), or refuses at
    /// once. `suspect`: the visitor failed to log in recently.
    pub async fn admit(&self, visitor: IpAddr, suspect: bool) -> Result<Permit, Busy> {
        let mut guard = {
            let mut state = self.inner.lock();
            let share = state.visitors.get(&visitor).copied().unwrap_or_default();
            if share.active >= PER_VISITOR || share.waiting >= 1 {
                return Err(Busy);
            }
            if state.running < state.slots && state.waiting.is_empty() {
                state.running += 1;
                state.visitors.entry(visitor).or_default().active += 1;
                return Ok(self.permit(visitor));
            }
            if state.waiting.len() >= self.inner.queue {
                // Full: a clean visitor displaces the suspect that queued last.
                let displace = if suspect {
                    None
                } else {
                    state.waiting.iter().rposition(|w| w.suspect)
                };
                let Some(pos) = displace else {
                    return Err(Busy);
                };
                if let Some(old) = state.waiting.remove(pos) {
                    state.leave(old.visitor, true);
                    let _ = old.wake.send(Err(Busy));
                }
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            state.waiting.push_back(Waiter {
                id,
                visitor,
                suspect,
                wake: tx,
            });
            let share = state.visitors.entry(visitor).or_default();
            share.active += 1;
            share.waiting += 1;
            WaitGuard {
                inner: self.inner.clone(),
                id,
                visitor,
                rx: Some(rx),
            }
        };
        let Some(rx) = guard.rx.as_mut() else {
            return Err(Busy);
        };
        let outcome = rx.await;
        // Answered: the guard has nothing left to undo.
        guard.rx = None;
        match outcome {
            Ok(Ok(())) => Ok(self.permit(visitor)),
            Ok(Err(Busy)) | Err(_) => Err(Busy),
        }
    }

    fn permit(&self, visitor: IpAddr) -> Permit {
        Permit {
            inner: self.inner.clone(),
            visitor,
        }
    }

    /// Checks running and waiting now (for tests and diagnostics).
    pub fn load(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (state.running, state.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    /// Starts `admit` in a task and lets it reach the gate.
    async fn queued(
        gate: &HashGate,
        visitor: IpAddr,
        suspect: bool,
    ) -> tokio::task::JoinHandle<Result<Permit, Busy>> {
        let g = gate.clone();
        let task = tokio::spawn(async move { g.admit(visitor, suspect).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        task
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_running_and_waiting_then_refused_at_once() {
        let gate = HashGate::new(2, 3);
        let a = gate.admit(ip(1), false).await.unwrap();
        let b = gate.admit(ip(2), false).await.unwrap();
        let mut waiters = Vec::new();
        for n in 3..6 {
            waiters.push(queued(&gate, ip(n), false).await);
        }
        assert_eq!(gate.load(), (2, 3));
        // Full of clean visitors: the next is refused without waiting.
        assert_eq!(gate.admit(ip(6), false).await.unwrap_err(), Busy);
        assert_eq!(gate.admit(ip(7), true).await.unwrap_err(), Busy);
        drop(a);
        let first = waiters.remove(0).await.unwrap().unwrap();
        assert_eq!(gate.load(), (2, 2));
        drop((b, first));
        for w in waiters {
            drop(w.await.unwrap().unwrap());
        }
        assert_eq!(gate.load(), (0, 0));
        assert!(
            gate.inner.lock().visitors.is_empty(),
            "no state left behind"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_visitor_gets_its_share_only() {
        let gate = HashGate::new(1, 8);
        let running = gate.admit(ip(1), false).await.unwrap();
        let waiting = queued(&gate, ip(1), false).await;
        // Already waiting: refused at once, although the queue has room.
        assert_eq!(gate.admit(ip(1), false).await.unwrap_err(), Busy);
        let other = queued(&gate, ip(2), false).await;
        assert_eq!(gate.load(), (1, 2));
        drop(running);
        let second = waiting.await.unwrap().unwrap();
        // Two active (one running, one granted... now running): at the cap.
        let third = queued(&gate, ip(1), false).await;
        drop(second);
        drop(other.await.unwrap().unwrap());
        drop(third.await.unwrap().unwrap());
        assert_eq!(gate.load(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn clean_visitors_go_first_and_displace_suspects() {
        let gate = HashGate::new(1, 2);
        let running = gate.admit(ip(1), true).await.unwrap();
        let s1 = queued(&gate, ip(2), true).await;
        let s2 = queued(&gate, ip(3), true).await;
        // Full of suspects: a suspect is refused, a clean visitor displaces the
        // suspect that queued last.
        assert_eq!(gate.admit(ip(4), true).await.unwrap_err(), Busy);
        let clean = queued(&gate, ip(5), false).await;
        assert_eq!(s2.await.unwrap().unwrap_err(), Busy);
        assert_eq!(gate.load(), (1, 2));
        // The clean visitor runs next although the suspect queued first.
        drop(running);
        let c = clean.await.unwrap().unwrap();
        assert!(!s1.is_finished());
        drop(c);
        drop(s1.await.unwrap().unwrap());
        assert_eq!(gate.load(), (0, 0));
        assert!(gate.inner.lock().visitors.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_or_passes_its_slot_on() {
        let gate = HashGate::new(1, 4);
        let running = gate.admit(ip(1), false).await.unwrap();
        let gone = queued(&gate, ip(2), false).await;
        let next = queued(&gate, ip(3), false).await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(gate.load(), (1, 1), "the cancelled waiter left the queue");
        drop(running);
        drop(next.await.unwrap().unwrap());
        assert_eq!(gate.load(), (0, 0));
        // Visitor 2 holds nothing any more.
        let p = gate.admit(ip(2), false).await.unwrap();
        let q = gate.admit(ip(2), false);
        let r = tokio::time::timeout(Duration::from_millis(10), q).await;
        assert!(
            r.is_err(),
            "second check of visitor 2 waits for the one slot"
        );
        drop(p);
        assert_eq!(gate.load(), (0, 0));
        assert!(gate.inner.lock().visitors.is_empty());
    }
}
