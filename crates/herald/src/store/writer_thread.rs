//! What the two embedded stores share about their writer thread: how an operation
//! reaches it, how its answer comes back, and what the probes read about it.
//!
//! Both embedded stores (`sqlite`, `log`) write from one dedicated thread, so that a
//! disk that stalls (a full sync, writeback throttling) holds up the publishes that
//! wait for it, never the runtime's workers and the subscribers they serve. The
//! hand-off to that thread is on every durable publish's path, so it is kept lean:
//! - [`WriterThread::submit`] puts the operation straight into the bounded queue when
//!   there is room (no send future, no clone of the sender), and waits only when the
//!   queue is full; [`WriterThread::append`] does the same for a publish's append
//!   without a future of its own ([`Appending`]);
//! - the writer hands a committed batch's answers to one task on the runtime
//!   ([`answer_task`]), whose wake-ups of the callers stay inside the runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Where a writer operation's result goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What became of an operation handed to the writer's queue.
enum HandedOver<T, Op> {
    /// In the queue; its answer comes on the receiver.
    Queued(oneshot::Receiver<Result<T, StoreError>>),
    /// The store is closed.
    Refused(StoreError),
    /// The queue is full: the operation waits to be sent (with a clone of the sender).
    Full(
        mpsc::Sender<Op>,
        Op,
        oneshot::Receiver<Result<T, StoreError>>,
    ),
}

/// The writer's answer. A dropped reply sender means the writer stopped (it
/// panicked or exited).
async fn answered<T>(answer: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    answer.await.map_err(|_| StoreError::Closed)?
}

/// An append handed to a store, finished when the store has committed it (or
/// failed to): what [`Store::append_encoded`](super::Store::append_encoded) returns.
///
/// Not a boxed future as an `async fn` of the `Store` trait gives (`async_trait`): for
/// an embedded store with room in its writer's queue the append is already handed
/// over when this is made, and waiting for it is waiting on the answer's receiver,
/// one allocation and its indirect calls fewer on every durable publish. Other
/// stores, and a full queue, wait through a boxed future as before.
pub enum Appending<'a> {
    /// Queued for the writer; its answer is on its way.
    Queued(oneshot::Receiver<Result<(), StoreError>>),
    /// Answered at once (`None` once taken).
    Done(Option<Result<(), StoreError>>),
    /// Anything else.
    Boxed(std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>),
}

impl Future for Appending<'_> {
    type Output = Result<(), StoreError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        match self.get_mut() {
            Appending::Queued(answer) => match std::pin::Pin::new(answer).poll(cx) {
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                Poll::Ready(Err(_)) => Poll::Ready(Err(StoreError::Closed)),
                Poll::Pending => Poll::Pending,
            },
            Appending::Done(result) => {
                Poll::Ready(result.take().unwrap_or(Err(StoreError::Closed)))
            }
            Appending::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

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
        match self.hand_over(make) {
            HandedOver::Queued(answer) => answered(answer).await,
            HandedOver::Refused(e) => Err(e),
            HandedOver::Full(sender, op, answer) => {
                sender.send(op).await.map_err(|_| StoreError::Closed)?;
                answered(answer).await
            }
        }
    }

    /// [`Self::submit`] for an append, as the [`Appending`] that
    /// [`Store::append_encoded`](super::Store::append_encoded) returns: with room in
    /// the queue, no future of its own, only the receiver of the answer.
    pub(crate) fn append(&self, make: impl FnOnce(Reply<()>) -> Op) -> Appending<'static> {
        match self.hand_over(make) {
            HandedOver::Queued(answer) => Appending::Queued(answer),
            HandedOver::Refused(e) => Appending::Done(Some(Err(e))),
            HandedOver::Full(sender, op, answer) => Appending::Boxed(Box::pin(async move {
                sender.send(op).await.map_err(|_| StoreError::Closed)?;
                answered(answer).await
            })),
        }
    }

    /// Puts the operation `make` builds into the queue if it has room.
    fn hand_over<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> HandedOver<T, Op> {
        let (reply, answer) = oneshot::channel();
        let sender = lock(&self.sender);
        let Some(sender) = sender.as_ref() else {
            return HandedOver::Refused(StoreError::Closed);
        };
        match sender.try_send(make(reply)) {
            Ok(()) => HandedOver::Queued(answer),
            Err(TrySendError::Closed(_)) => HandedOver::Refused(StoreError::Closed),
            // A clone, so that `close` is never kept waiting by a caller that waits
            // for room.
            Err(TrySendError::Full(op)) => HandedOver::Full(sender.clone(), op, answer),
        }
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

    /// `append` with room in the queue hands the operation over at once (the
    /// receiver of its answer is all that is waited on); with the queue full it waits
    /// for room as `submit` does; once closed it refuses at once.
    #[tokio::test]
    async fn append_hands_over_at_once_or_waits_for_room() {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (seen, ops) = std::sync::mpsc::channel::<u32>();
        let writer =
            WriterThread::spawn(1, move |mut queue: mpsc::Receiver<(u32, Reply<()>)>, _| {
                wait.recv().expect("go");
                while let Some((n, reply)) = queue.blocking_recv() {
                    seen.send(n).expect("test waits");
                    reply.send(Ok(())).expect("caller waits");
                }
            })
            .expect("spawn");
        let first = writer.append(|reply| (1, reply));
        assert!(matches!(first, Appending::Queued(_)), "room: handed over");
        let second = writer.append(|reply| (2, reply));
        assert!(
            matches!(second, Appending::Boxed(_)),
            "full: waits for room"
        );
        go.send(()).expect("writer waits");
        first.await.expect("first answered");
        second.await.expect("second answered");
        assert_eq!(ops.try_iter().collect::<Vec<_>>(), [1, 2]);
        assert!(writer.close().await);
        let refused = writer.append(|reply| (3, reply));
        assert!(matches!(refused, Appending::Done(_)));
        assert!(matches!(refused.await, Err(StoreError::Closed)));
    }

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
