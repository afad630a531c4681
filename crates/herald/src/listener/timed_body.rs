//! A deadline on reading a request body (`body-read-timeout`).
//!
//! hyper bounds the time a request head may take (`header-read-timeout`) but not the
//! body: a client that announces `Content-Length: 100` and sends nothing would hold
//! its handler (and its connection) for as long as it stays connected. Every request
//! body the API reads is wrapped in a [`TimedBody`], which fails with [`BodyTimeout`]
//! once the deadline has passed; the API answers that `408` (see
//! [`crate::error::ApiError::body_read_error`]). The deadline is the whole body, not
//! the gap between two reads, so a client dripping a byte at a time is cut off too
//! (Go's `ReadTimeout`, rather than nginx's per-read `client_body_timeout`).
//!
//! The timer is armed on the first read only: requests whose body is never read
//! (every `GET`) cost no timer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The body did not arrive within `body-read-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body not received within body-read-timeout")]
pub(crate) struct BodyTimeout;

/// A request body that must be read completely by a deadline.
pub(crate) struct TimedBody<B> {
    inner: B,
    deadline: Instant,
    /// Armed on the first poll that has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> TimedBody<B> {
    /// `inner`, which must be read within `timeout` of now (the request's arrival).
    pub(crate) fn new(inner: B, timeout: Duration) -> Self {
        TimedBody {
            inner,
            deadline: Instant::now() + timeout,
            sleep: None,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => return Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {}
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` (or anything in its chain of sources) is a [`BodyTimeout`].
pub(crate) fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyTimeout>() {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that never produces a frame, like a client that sent only the head.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_fails_at_the_deadline() {
        let body = TimedBody::new(Silent, Duration::from_secs(30));
        let err = match body.collect().await {
            Ok(_) => panic!("a silent body cannot complete"),
            Err(e) => e,
        };
        assert!(is_body_timeout(&*err));
        // Wrapped the way axum wraps body errors, it is still recognised.
        let wrapped = axum::Error::new(err);
        assert!(is_body_timeout(&wrapped));
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_is_passed_through() {
        let body = TimedBody::new(
            http_body_util::Full::new(Bytes::from_static(b"hi")),
            Duration::from_secs(30),
        );
        let bytes = body.collect().await.map(|c| c.to_bytes()).ok();
        assert_eq!(bytes.as_deref(), Some(&b"hi"[..]));
    }
}
