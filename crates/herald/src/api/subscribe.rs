//! Subscribing over HTTP streams: `/<topics>/json`, `/sse` and `/raw`, and polling
//! (`poll=1`) on the same paths.
//!
//! A stream registers its subscriber in the hub *before* reading the history, so no
//! message can fall between the backlog and the live part; messages that are in both
//! are sent once. After the `open` event and the backlog, the stream writes whatever
//! the hub has queued for it, several events per write when several are waiting.

use std::collections::HashSet;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::{StreamExt, stream};

use super::params::{ParamSource, parse_subscribe};
use super::{AppState, query_pairs};
use crate::auth::Principal;
use crate::core::HISTORY_RETRY_AFTER;
use crate::error::ApiError;
use crate::hub::{Delivery, SharedEvent, Subscription};
use crate::limits::Visitor;
use crate::model::{EventKind, Message, now_unix};
use crate::subscribe::{Backlog, Filters, SlotGuard, SubscribeRequest};
use crate::wire::StreamFormat;

/// Validates a subscribe request's topics and parameters.
pub fn parse_request(
    state: &AppState,
    req: &Request,
    topics: &str,
) -> Result<SubscribeRequest, ApiError> {
    let anonymous = Principal::anonymous();
    let principal = req.extensions().get::<Principal>().unwrap_or(&anonymous);
    parse_parts(state, req.headers(), &query_pairs(req), topics, principal)
}

/// [`parse_request`] for a request already taken apart (the direct listener path).
pub fn parse_parts(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    query: &[(String, String)],
    topics: &str,
    principal: &Principal,
) -> Result<SubscribeRequest, ApiError> {
    state.streams().validate(principal, topics, || {
        parse_subscribe(&ParamSource { headers, query }, now_unix())
    })
}

/// The answer to a failed backlog read: a read refused for want of a
/// `history-read-limit` place says when to try again.
pub fn backlog_error_response(error: ApiError) -> Response {
    let busy = error == ApiError::TOO_MANY_REQUESTS;
    let mut resp = axum::response::IntoResponse::into_response(error);
    if busy {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(HISTORY_RETRY_AFTER.as_secs()),
        );
    }
    resp
}

/// `messages` framed for `format`, in one buffer.
fn frame_page(messages: Vec<Message>, format: StreamFormat) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.extend_from_slice(SharedEvent::new(m).encoded(format.body_framing()));
    }
    out
}

/// `GET /<topics>/json|sse|raw`, streaming or polling.
pub async fn subscribe(
    state: &AppState,
    req: Request,
    topics: &str,
    format: StreamFormat,
    visitor: &Visitor,
) -> Result<Response, ApiError> {
    let sub_req = parse_request(state, &req, topics)?;
    if sub_req.params.poll {
        return poll(state, &sub_req, format).await;
    }

    let slot = match state.streams().admit(visitor, &sub_req.topics).await {
        Ok(slot) => slot,
        Err(refusal) => return Ok(super::refusal_response(&state.limits, refusal, visitor)),
    };
    let subscription = state.herald.subscribe(&sub_req.topics, format.transport());
    let mut history = match state.streams().backlog(&sub_req, false).await {
        Ok(history) => history,
        Err(e) => return Ok(backlog_error_response(e)),
    };
    // The first page before the answer's head, so a failing store is still a clean
    // error answer.
    let page = history.next_page().await?;

    let mut first = Vec::new();
    let framing = format.body_framing();
    let open = SharedEvent::new(Message::new(EventKind::Open, sub_req.topic_label.clone()));
    first.extend_from_slice(open.encoded(framing));
    let mut seen = HashSet::new();
    for m in page.into_iter().flatten() {
        seen.insert(m.id.clone());
        first.extend_from_slice(SharedEvent::new(m).encoded(framing));
    }
    let stream_state = LiveStream {
        subscription,
        _slot: slot,
        format,
        filters: sub_req.params.filters,
        topic_label: sub_req.topic_label,
        seen,
        first: Some(Bytes::from(first)),
        backlog: (!history.is_finished()).then_some(history),
        batch: Vec::new(),
    };
    let body = Body::from_stream(stream::unfold(stream_state, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), s))
    }));
    Ok(stream_response(format, body))
}

/// A `poll=1` answer: the backlog, then the end of the response. It is written a
/// page at a time as the client takes it (hyper asks the body for the next chunk only
/// when the previous one is on its way), so a client that reads slowly, or not at
/// all, holds one page of server memory. A backlog of one page is answered with a
/// `Content-Length`, as before paging; longer ones are chunked.
async fn poll(
    state: &AppState,
    sub_req: &SubscribeRequest,
    format: StreamFormat,
) -> Result<Response, ApiError> {
    let mut history = match state.streams().backlog(sub_req, true).await {
        Ok(history) => history,
        Err(e) => return Ok(backlog_error_response(e)),
    };
    let first = history.next_page().await?.unwrap_or_default();
    let first = frame_page(first, format);
    if history.is_finished() {
        return Ok(stream_response(format, Body::from(first)));
    }
    let rest = stream::try_unfold(history, move |mut history| async move {
        Ok::<_, ApiError>(match history.next_page().await {
            Ok(Some(page)) => Some((Bytes::from(frame_page(page, format)), history)),
            Ok(None) => None,
            Err(e) => {
                // The head is sent: all that is left is to cut the answer short, so
                // the client sees an incomplete response, not a complete one.
                tracing::warn!(error = %e, "history read failed mid-answer");
                return Err(e);
            }
        })
    });
    let body = stream::once(async move { Ok::<_, ApiError>(Bytes::from(first)) }).chain(rest);
    Ok(stream_response(format, Body::from_stream(body)))
}

fn stream_response(format: StreamFormat, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if format == StreamFormat::Sse {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    // Stop reverse proxies (nginx) from buffering the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// State of one live HTTP stream.
struct LiveStream {
    subscription: Subscription,
    _slot: SlotGuard,
    format: StreamFormat,
    filters: Filters,
    topic_label: String,
    /// IDs already sent from the backlog; a live copy of one is skipped.
    seen: HashSet<String>,
    /// `open` plus the backlog's first page, sent as the first chunk.
    first: Option<Bytes>,
    /// The rest of the backlog, a page per chunk, before any live event.
    backlog: Option<Backlog>,
    batch: Vec<Delivery>,
}

impl LiveStream {
    /// The next chunk to write: everything queued, in one buffer. `None` ends the
    /// stream (shutdown or a subscriber that fell too far behind).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        while let Some(backlog) = self.backlog.as_mut() {
            // A failed read ends the stream: the client resumes with `since=`.
            match backlog.next_page().await.ok()? {
                Some(page) => {
                    for m in &page {
                        self.seen.insert(m.id.clone());
                    }
                    return Some(Bytes::from(frame_page(page, self.format)));
                }
                None => self.backlog = None,
            }
        }
        loop {
            self.batch.clear();
            self.subscription.next_batch(&mut self.batch).await.ok()?;
            let mut parts: Vec<Bytes> = Vec::with_capacity(self.batch.len());
            for delivery in self.batch.drain(..) {
                match delivery {
                    Delivery::Event(event) => {
                        if !self.seen.is_empty() && self.seen.remove(&event.message.id) {
                            continue;
                        }
                        if self.filters.pass(&event.message) {
                            parts.push(event.encoded(self.format.body_framing()).clone());
                        }
                    }
                    Delivery::Keepalive => {
                        let keepalive =
                            Message::new(EventKind::Keepalive, self.topic_label.clone());
                        parts.push(
                            SharedEvent::new(keepalive)
                                .encoded(self.format.body_framing())
                                .clone(),
                        );
                    }
                }
            }
            match parts.len() {
                0 => continue,
                1 => return parts.pop(),
                _ => return Some(Bytes::from(parts.concat())),
            }
        }
    }
}
