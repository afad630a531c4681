//! What the two embedded stores share about their writer thread: how an operation
//! reaches it, how its answer comes back, and what the probes read about it.
//!
//! Both embedded stores (`sqlite`, `log`) write from one dedicated thread, so that a
//! disk that stalls (a full sync, writeback throttling) holds up the publishes that
//! wait for it, never the runtime's workers and the subscribers they serve. The
//! hand-off to that thread is on every durable publish's path, so it is kept lean:
//! - [`WriterQueue::submit`] puts the operation straight into the bounded queue when
//!   there is room (no send future, no clone of the sender), and waits only when the
//!   queue is full;
//! - the writer hands a committed batch's answers to one task on the runtime
//!   ([`answer_task`]), whose wake-ups of the callers stay inside the runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Where a writer operation's result goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The sending side of a writer thread's queue; closing it lets the thread finish
/// what is queued and end.
pub(crate) struct WriterQueue<Op> {
    sender: Mutex<Option<mpsc::Sender<Op>>>,
}

impl<Op: Send + 'static> WriterQueue<Op> {
    pub(crate) fn new(sender: mpsc::Sender<Op>) -> Self {
        WriterQueue {
            sender: Mutex::new(Some(sender)),
        }
    }

    /// Sends an operation to the writer and waits for its answer. Once sent, the
    /// operation runs even if the caller stops waiting (a cancelled `take_due` still
    /// marks its messages published).
    pub(crate) async fn submit<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Op,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let full = {
            let sender = lock(&self.sender);
            let sender = sender.as_ref().ok_or(StoreError::Closed)?;
            match sender.try_send(make(reply)) {
                Ok(()) => None,
                Err(TrySendError::Closed(_)) => return Err(StoreError::Closed),
                // A clone, so that `close` is never kept waiting by a caller that
                // waits for room.
                Err(TrySendError::Full(op)) => Some((sender.clone(), op)),
            }
        };
        if let Some((sender, op)) = full {
            sender.send(op).await.map_err(|_| StoreError::Closed)?;
        }
        // A dropped reply sender means the writer stopped (it panicked or exited).
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Whether [`Self::close`] has not been called.
    pub(crate) fn is_open(&self) -> bool {
        lock(&self.sender).is_some()
    }

    /// Stops taking operations: the writer runs what is queued, then ends.
    pub(crate) fn close(&self) {
        drop(lock(&self.sender).take());
    }
}

/// Whether writes work, as the writer thread last saw it: read by the probes and
/// metrics without asking the writer (an atomic load on their side, a store per
/// batch on the writer's).
#[derive(Debug)]
pub(crate) struct WriterHealth {
    /// Set when a write fails, cleared when a later one succeeds.
    pub(crate) failing: AtomicBool,
    /// Cleared when the writer thread ends, however it ends.
    pub(crate) alive: AtomicBool,
}

impl WriterHealth {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(WriterHealth {
            failing: AtomicBool::new(false),
            alive: AtomicBool::new(true),
        })
    }
}

/// Clears [`WriterHealth::alive`] when the writer thread ends, panic included.
pub(crate) struct AliveGuard(pub(crate) Arc<WriterHealth>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
    }
}

/// Starts a task on the current runtime that calls `send` on every item of each
/// batch it is handed, when the runtime is multi-threaded (its workers always run
/// it); `None` on a single-threaded runtime or outside one, where nothing
/// guarantees the runtime is driven when a store's writer thread commits.
///
/// A writer thread answering each caller itself wakes each caller's task from
/// outside the runtime, one eventfd write (and, on a shared core, one switch) per
/// answer; handing a committed batch over as one message costs one wake-up, and the
/// task's answers wake the callers from within the runtime (sqlite/writer.rs,
/// `AnswerSender`, has the measurement).
pub(crate) fn answer_task<T: Send + 'static>(send: fn(T)) -> Option<mpsc::UnboundedSender<Vec<T>>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return None;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<T>>();
    runtime.spawn(async move {
        while let Some(answers) = rx.recv().await {
            answers.into_iter().for_each(send);
        }
    });
    Some(tx)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue with room for one: the second submit waits for room, and a closed
    /// queue refuses at once.
    #[tokio::test]
    async fn submit_waits_for_room_and_refuses_when_closed() {
        let (tx, mut rx) = mpsc::channel::<(u32, Reply<u32>)>(1);
        let queue = Arc::new(WriterQueue::new(tx));
        let first = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.submit(|reply| (1, reply)).await }
        });
        let second = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move {
                tokio::task::yield_now().await;
                queue.submit(|reply| (2, reply)).await
            }
        });
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert_eq!(rx.len(), 1, "the second waits for room");
        assert!(!second.is_finished());
        for _ in 0..2 {
            let (n, reply) = rx.recv().await.expect("an operation");
            reply.send(Ok(n * 10)).expect("caller waits");
        }
        assert_eq!(first.await.expect("task").expect("answer"), 10);
        assert_eq!(second.await.expect("task").expect("answer"), 20);

        queue.close();
        assert!(!queue.is_open());
        let refused = queue.submit(|reply| (3, reply)).await;
        assert!(matches!(refused, Err(StoreError::Closed)), "{refused:?}");
        assert!(rx.recv().await.is_none(), "the writer sees the end");
    }

    /// A writer that drops an operation without answering (it stopped) is `Closed`
    /// to the caller, not a hang.
    #[tokio::test]
    async fn an_unanswered_operation_is_closed() {
        let (tx, mut rx) = mpsc::channel::<Reply<()>>(4);
        let queue = WriterQueue::new(tx);
        let dropper = tokio::spawn(async move { drop(rx.recv().await) });
        let answer = queue.submit(|reply| reply).await;
        assert!(matches!(answer, Err(StoreError::Closed)), "{answer:?}");
        dropper.await.expect("task");
    }
}
