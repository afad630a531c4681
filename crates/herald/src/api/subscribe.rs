//! Subscribing over HTTP streams: `/<topics>/json`, `/sse` and `/raw`, and polling
//! (`poll=1`) on the same paths.
//!
//! A stream registers its subscriber in the hub *before* reading the history, so no
//! message can fall between the backlog and the live part; messages that are in both
//! are sent once. After the `open` event and the backlog, the stream writes whatever
//! the hub has queued for it, several events per write when several are waiting.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::{StreamExt, stream};

use super::params::{Filters, ParamSource, SinceParam, SubscribeParams, parse_subscribe};
use super::{AppState, StreamFormat, parse_topics, query_pairs};
use crate::auth::{Permission, Principal};
use crate::core::{HISTORY_RETRY_AFTER, HistoryPages};
use crate::error::ApiError;
use crate::hub::{Delivery, SharedEvent, Subscription};
use crate::limits::shared::SharedSlot;
use crate::limits::{Limit, Refusal, Visitor, VisitorKey};
use crate::model::{EventKind, Message, id as message_id, now_unix};
use crate::store::{Query, Since};

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

/// A stream's slot and its new topics' tokens, on the cluster's shared limits (one
/// round trip) or this node's; refused with the limit's `Retry-After`.
pub async fn admit_stream(
    state: &AppState,
    visitor: &Visitor,
    topics: &[String],
) -> Result<SlotGuard, Refusal> {
    let new_topics = new_topic_count(state, topics);
    if state.limits.is_shared()
        && let Some(admitted) = state
            .limits
            .open_stream_shared(visitor, false, new_topics)
            .await
    {
        return admitted.map(|slot| state.slots.shared_guard(slot));
    }
    let slot = state.slots.acquire(visitor)?;
    state.limits.admit_new_topics(visitor, new_topics)?;
    Ok(slot)
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

/// How many of `topics` have no subscribers yet (subscribing creates them).
pub fn new_topic_count(state: &AppState, topics: &[String]) -> usize {
    let hub = state.herald.hub();
    topics.iter().filter(|t| !hub.has_topic(t)).count()
}

/// Parsed subscribe request common to every transport.
pub struct SubscribeRequest {
    pub topics: Vec<String>,
    /// The topic path segment as given (`a,b`): the `topic` of `open` and `keepalive`.
    pub topic_label: String,
    pub params: SubscribeParams,
}

/// Validates topics and parameters of a subscribe request.
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
    if state.herald.is_draining() {
        return Err(ApiError::UNAVAILABLE);
    }
    let topic_list = parse_topics(topics)?;
    // Every topic of a multi-topic subscription must be readable.
    state
        .auth
        .authorize_all(principal, &topic_list, Permission::Read)?;
    let hub = state.herald.hub();
    let new_topics = new_topic_count(state, &topic_list);
    if new_topics > 0 && hub.topic_count() + new_topics > state.herald.config().global_topic_limit {
        return Err(ApiError::TOO_MANY_TOPICS);
    }
    let src = ParamSource { headers, query };
    let params = parse_subscribe(&src, now_unix())?;
    Ok(SubscribeRequest {
        topics: topic_list,
        topic_label: topics.to_string(),
        params,
    })
}

/// Turns `since=` into a store query bound. An ID that herald could have issued
/// recently (its embedded time is within the retention window) selects what came
/// after it, even if that message is gone; any other ID selects everything, as ntfy
/// does for unknown IDs.
pub fn resolve_since(since: &SinceParam, poll: bool, now: i64, cache_secs: i64) -> Since {
    match since {
        SinceParam::Unset if poll => Since::All,
        SinceParam::Unset | SinceParam::None => Since::None,
        SinceParam::All => Since::All,
        SinceParam::Latest => Since::Latest,
        SinceParam::Time(t) => Since::Time(*t),
        SinceParam::Id(id) => {
            let plausible = message_id::timestamp_ms(id).is_some_and(|ms| {
                let secs = (ms / 1000) as i64;
                secs >= now - cache_secs - 86_400 && secs <= now + 60
            });
            if plausible {
                Since::AfterId(id.clone())
            } else {
                Since::All
            }
        }
    }
}

/// Starts reading the backlog a subscriber asked for, a page at a time.
pub async fn backlog(
    state: &AppState,
    req: &SubscribeRequest,
    poll: bool,
) -> Result<Backlog, ApiError> {
    let cache_secs = state.herald.config().cache_duration.as_secs() as i64;
    let since = resolve_since(&req.params.since, poll, now_unix(), cache_secs);
    let pages = state
        .herald
        .history_pages(Query {
            topics: req.topics.clone(),
            since,
            include_scheduled: req.params.scheduled,
        })
        .await?;
    Ok(Backlog {
        pages,
        filters: req.params.filters.clone(),
    })
}

/// A subscriber's backlog being read: the history pages, filtered by its `Filters`.
pub struct Backlog {
    pages: HistoryPages,
    filters: Filters,
}

impl Backlog {
    /// The next non-empty page of messages that pass the filters, or `None` when
    /// the backlog is complete.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Message>>, ApiError> {
        while let Some(mut page) = self.pages.next_page().await? {
            page.retain(|m| self.filters.pass(m));
            if !page.is_empty() {
                return Ok(Some(page));
            }
        }
        Ok(None)
    }

    /// Whether every page has been read.
    pub fn is_finished(&self) -> bool {
        self.pages.is_finished()
    }
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
        out.extend_from_slice(framed(&SharedEvent::new(m), format));
    }
    out
}

fn content_type(format: StreamFormat) -> &'static str {
    match format {
        StreamFormat::Json | StreamFormat::Ws => "application/x-ndjson; charset=utf-8",
        StreamFormat::Sse => "text/event-stream; charset=utf-8",
        StreamFormat::Raw => "text/plain; charset=utf-8",
    }
}

/// The bytes of `event` in `format`'s framing (shared, not copied).
fn framed(event: &SharedEvent, format: StreamFormat) -> &Bytes {
    match format {
        StreamFormat::Json | StreamFormat::Ws => event.json_line(),
        StreamFormat::Sse => event.sse_frame(),
        StreamFormat::Raw => event.raw_line(),
    }
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

    let slot = match admit_stream(state, visitor, &sub_req.topics).await {
        Ok(slot) => slot,
        Err(refusal) => return Ok(super::refusal_response(&state.limits, refusal, visitor)),
    };
    let subscription = state.herald.subscribe(&sub_req.topics, format.transport());
    let mut history = match backlog(state, &sub_req, false).await {
        Ok(history) => history,
        Err(e) => return Ok(backlog_error_response(e)),
    };
    // The first page before the answer's head, so a failing store is still a clean
    // error answer.
    let page = history.next_page().await?;

    let mut first = Vec::new();
    first.extend_from_slice(framed(
        &SharedEvent::new(Message::new(EventKind::Open, sub_req.topic_label.clone())),
        format,
    ));
    let mut seen = HashSet::new();
    for m in page.into_iter().flatten() {
        seen.insert(m.id.clone());
        first.extend_from_slice(framed(&SharedEvent::new(m), format));
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
    let mut history = match backlog(state, sub_req, true).await {
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
        HeaderValue::from_static(content_type(format)),
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
                            parts.push(framed(&event, self.format).clone());
                        }
                    }
                    Delivery::Keepalive => {
                        let keepalive =
                            Message::new(EventKind::Keepalive, self.topic_label.clone());
                        parts.push(framed(&SharedEvent::new(keepalive), self.format).clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_resolution() {
        let now = 2_000_000_000;
        assert_eq!(
            resolve_since(&SinceParam::Unset, true, now, 3600),
            Since::All
        );
        assert_eq!(
            resolve_since(&SinceParam::Unset, false, now, 3600),
            Since::None
        );
        let recent = crate::model::MessageId::generate_at((now as u64 - 10) * 1000).into_string();
        assert_eq!(
            resolve_since(&SinceParam::Id(recent.clone()), false, now, 3600),
            Since::AfterId(recent)
        );
        // An ID that herald did not issue in the retention window: everything.
        assert_eq!(
            resolve_since(&SinceParam::Id("zzzzzzzzzzzz".into()), false, now, 3600),
            Since::All
        );
    }

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
