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
//! - every address has a *score*: its recent password-check requests (admitted or
//!   refused), decaying with a half-life of [`HALF_LIFE`]. A freed slot goes to the
//!   waiter with the lowest score, and a request that finds the queue full takes the
//!   place of the waiter with the highest score if that is clearly higher than its
//!   own (the displaced one is refused). A flooding address keeps asking, so its score
//!   climbs with every refusal, while a user who logs in once has a score of 1 and
//!   gets through. The score counts requests from an address, never looks at the
//!   user name, so the gate tells nobody whether a user exists.
//!
//! The gate is a mutex over a small queue; a waiter is a oneshot channel, and a
//! waiter that goes away (its client hung up) leaves the queue or hands its slot on.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// Most checks one visitor may have running or waiting.
pub const PER_VISITOR: usize = 2;
/// How fast an address's score decays: halved every 10 s.
pub const HALF_LIFE: Duration = Duration::from_secs(10);
/// How much higher a waiter's score must be for a newcomer to take its place.
const DISPLACE_MARGIN: f64 = 1.0;
/// Most addresses scored; beyond that, low scores are forgotten first, then all.
const MAX_SCORED: usize = 100_000;

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
    scores: HashMap<IpAddr, Score>,
    next_id: u64,
}

/// An address's recent requests, decayed to `at`.
#[derive(Debug, Clone, Copy)]
struct Score {
    value: f64,
    at: Instant,
}

impl Score {
    fn at(self, now: Instant) -> f64 {
        let halvings =
            now.saturating_duration_since(self.at).as_secs_f64() / HALF_LIFE.as_secs_f64();
        self.value * 0.5f64.powf(halvings)
    }
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
    /// Counts a request from `visitor`; its new score.
    fn bump(&mut self, visitor: IpAddr, now: Instant) -> f64 {
        if self.scores.len() >= MAX_SCORED && !self.scores.contains_key(&visitor) {
            self.scores.retain(|_, s| s.at(now) >= 1.0);
            if self.scores.len() >= MAX_SCORED {
                self.scores.clear();
            }
        }
        let score = self.scores.entry(visitor).or_insert(Score {
            value: 0.0,
            at: now,
        });
        *score = Score {
            value: score.at(now) + 1.0,
            at: now,
        };
        score.value
    }

    fn score(&self, visitor: IpAddr, now: Instant) -> f64 {
        self.scores.get(&visitor).map_or(0.0, |s| s.at(now))
    }

    /// The waiter with the lowest score (the first of equals), or the highest.
    fn pick(&self, now: Instant, highest: bool) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, w) in self.waiting.iter().enumerate() {
            let s = self.score(w.visitor, now);
            let better = match best {
                None => true,
                Some((_, b)) if highest => s >= b,
                Some((_, b)) => s < b,
            };
            if better {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }

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

    /// Gives free slots to waiters, lowest score first (then arrival order).
    /// Called with a slot just freed (`running` already decremented).
    fn hand_on(&mut self) {
        let now = Instant::now();
        while self.running < self.slots {
            let Some(pos) = self.pick(now, false) else {
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
    /// once.
    pub async fn admit(&self, visitor: IpAddr) -> Result<Permit, Busy> {
        let mut guard = {
            let mut state = self.inner.lock();
            let now = Instant::now();
            let mine = state.bump(visitor, now);
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
                // Full: take the place of the busiest waiter if it asked clearly
                // more often than this visitor.
                let displace = state.pick(now, true).filter(|&i| {
                    state.score(state.waiting[i].visitor, now) > mine + DISPLACE_MARGIN
                });
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

    /// Checks running and waiting now.
    #[cfg(test)]
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
    ) -> tokio::task::JoinHandle<Result<Permit, Busy>> {
        let g = gate.clone();
        let task = tokio::spawn(async move { g.admit(visitor).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        task
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_running_and_waiting_then_refused_at_once() {
        let gate = HashGate::new(2, 3);
        let a = gate.admit(ip(1)).await.unwrap();
        let b = gate.admit(ip(2)).await.unwrap();
        let mut waiters = Vec::new();
        for n in 3..6 {
            waiters.push(queued(&gate, ip(n)).await);
        }
        assert_eq!(gate.load(), (2, 3));
        // Full of clean visitors: the next is refused without waiting.
        assert_eq!(gate.admit(ip(6)).await.unwrap_err(), Busy);
        assert_eq!(gate.admit(ip(7)).await.unwrap_err(), Busy);
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
        let running = gate.admit(ip(1)).await.unwrap();
        let waiting = queued(&gate, ip(1)).await;
        // Already waiting: refused at once, although the queue has room.
        assert_eq!(gate.admit(ip(1)).await.unwrap_err(), Busy);
        let other = queued(&gate, ip(2)).await;
        assert_eq!(gate.load(), (1, 2));
        // Visitor 1 asked three times, visitor 2 once: visitor 2 goes first.
        drop(running);
        drop(other.await.unwrap().unwrap());
        drop(waiting.await.unwrap().unwrap());
        assert_eq!(gate.load(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_visitors_go_first_and_displace_busy_ones() {
        let gate = HashGate::new(1, 2);
        let running = gate.admit(ip(1)).await.unwrap();
        let busy = queued(&gate, ip(2)).await;
        let busier = queued(&gate, ip(3)).await;
        // Both keep asking while they wait: refused at once, and their scores climb.
        for _ in 0..3 {
            assert_eq!(gate.admit(ip(2)).await.unwrap_err(), Busy);
        }
        for _ in 0..6 {
            assert_eq!(gate.admit(ip(3)).await.unwrap_err(), Busy);
        }
        // A first request finds the queue full and takes the busiest waiter's place.
        let quiet = queued(&gate, ip(4)).await;
        assert_eq!(busier.await.unwrap().unwrap_err(), Busy);
        assert_eq!(gate.load(), (1, 2));
        // It runs next although `busy` queued first.
        drop(running);
        let q = quiet.await.unwrap().unwrap();
        assert!(!busy.is_finished());
        drop(q);
        drop(busy.await.unwrap().unwrap());
        assert_eq!(gate.load(), (0, 0));
        assert!(gate.inner.lock().visitors.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn scores_decay() {
        let gate = HashGate::new(1, 1);
        for _ in 0..8 {
            drop(gate.admit(ip(1)).await.unwrap());
        }
        let now = Instant::now();
        assert!((gate.inner.lock().score(ip(1), now) - 8.0).abs() < 1e-9);
        tokio::time::advance(HALF_LIFE * 3).await;
        let later = Instant::now();
        assert!((gate.inner.lock().score(ip(1), later) - 1.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_or_passes_its_slot_on() {
        let gate = HashGate::new(1, 4);
        let running = gate.admit(ip(1)).await.unwrap();
        let gone = queued(&gate, ip(2)).await;
        let next = queued(&gate, ip(3)).await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(gate.load(), (1, 1), "the cancelled waiter left the queue");
        drop(running);
        drop(next.await.unwrap().unwrap());
        assert_eq!(gate.load(), (0, 0));
        // Visitor 2 holds nothing any more.
        let p = gate.admit(ip(2)).await.unwrap();
        let q = gate.admit(ip(2));
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
