//! What the two embedded stores share about their writer thread: how an operation
//! reaches it, how its answer comes back, and what the probes read about it.
//!
//! Both embedded stores (`sqlite`, `log`) write from one dedicated thread, so that a
//! disk that stalls (a full sync, writeback throttling) holds up the publishes that
//! wait for it, never the runtime's workers and the subscribers they serve. The
//! hand-off to that thread is on every durable publish's path, so it is kept lean:
//! - [`WriterThread::submit`] puts the operation straight into the bounded queue when
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

/// A store's writer thread: the sending side of its queue, its health and its
/// handle. Closing it lets the thread finish what is queued and end.
pub(crate) struct WriterThread<Op> {
    sender: Mutex<Option<mpsc::Sender<Op>>>,
    health: Arc<WriterHealth>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<Op: Send + 'static> WriterThread<Op> {
    /// Starts `run` on a thread of its own with the receiving side of a queue of
    /// `capacity` operations and the health it keeps up to date (its `alive` is
    /// cleared when `run` ends, however it ends).
    pub(crate) fn spawn(
        capacity: usize,
        run: impl FnOnce(mpsc::Receiver<Op>, Arc<WriterHealth>) + Send + 'static,
    ) -> Result<Self, StoreError> {
        let (sender, queue) = mpsc::channel(capacity);
        let health = WriterHealth::new();
        let thread = std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn({
                let health = Arc::clone(&health);
                move || {
                    let _alive = AliveGuard(Arc::clone(&health));
                    run(queue, health);
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the store writer: {e}")))?;
        Ok(WriterThread {
            sender: Mutex::new(Some(sender)),
            health,
            thread: Mutex::new(Some(thread)),
        })
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

    /// Whether the writer's last write failed and none has succeeded since.
    pub(crate) fn writes_failing(&self) -> bool {
        self.health.failing.load(Ordering::Relaxed)
    }

    /// Whether the writer thread is still running.
    pub(crate) fn is_alive(&self) -> bool {
        self.health.alive.load(Ordering::Relaxed)
    }

    /// Stops taking operations and waits until the writer has run what was queued
    /// and ended; `true` if it ended normally (it is logged otherwise).
    pub(crate) async fn close(&self) -> bool {
        drop(lock(&self.sender).take());
        let Some(thread) = lock(&self.thread).take() else {
            return false;
        };
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => {
                tracing::error!("store writer thread panicked");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "could not wait for the store writer");
                false
            }
        }
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
struct AliveGuard(Arc<WriterHealth>);

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

    /// A queue with room for one: the second submit waits for room; once closed,
    /// the queue refuses at once and the thread has ended.
    #[tokio::test]
    async fn submit_waits_for_room_and_refuses_when_closed() {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (queued, seen) = std::sync::mpsc::channel::<usize>();
        let writer = Arc::new(
            WriterThread::spawn(1, move |mut queue: mpsc::Receiver<(u32, Reply<u32>)>, _| {
                wait.recv().expect("go");
                queued.send(queue.len()).expect("test waits");
                while let Some((n, reply)) = queue.blocking_recv() {
                    reply.send(Ok(n * 10)).expect("caller waits");
                }
            })
            .expect("spawn"),
        );
        let first = tokio::spawn({
            let writer = Arc::clone(&writer);
            async move { writer.submit(|reply| (1, reply)).await }
        });
        let second = tokio::spawn({
            let writer = Arc::clone(&writer);
            async move {
                tokio::task::yield_now().await;
                writer.submit(|reply| (2, reply)).await
            }
        });
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert!(!second.is_finished());
        go.send(()).expect("writer waits");
        assert_eq!(
            seen.recv().expect("writer reports"),
            1,
            "the second waits for room"
        );
        assert_eq!(first.await.expect("task").expect("answer"), 10);
        assert_eq!(second.await.expect("task").expect("answer"), 20);

        assert!(writer.close().await, "the writer ends when closed");
        assert!(!writer.is_open());
        assert!(!writer.is_alive());
        let refused = writer.submit(|reply| (3, reply)).await;
        assert!(matches!(refused, Err(StoreError::Closed)), "{refused:?}");
    }

    /// A writer that drops an operation without answering (it stopped) is `Closed`
    /// to the caller, not a hang.
    #[tokio::test]
    async fn an_unanswered_operation_is_closed() {
        let writer = WriterThread::spawn(4, |mut queue: mpsc::Receiver<Reply<()>>, _| {
            drop(queue.blocking_recv());
        })
        .expect("spawn");
        let answer = writer.submit(|reply| reply).await;
        assert!(matches!(answer, Err(StoreError::Closed)), "{answer:?}");
        writer.close().await;
    }
}
