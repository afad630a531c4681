//! Direct subscriber connections: the socket is the subscriber.
//!
//! A [`DirectSink`] is registered in the hub for each streaming subscription
//! (`/json`, `/sse`, `/raw`, `/ws`). When an event is dispatched, the sink writes the
//! event's pre-framed bytes (an HTTP chunk or a WebSocket frame, built once per event
//! and shared) straight to the socket with a non-blocking `send` — no queue, no task
//! wake-up, no copy. Only when the socket cannot take everything at once are the
//! remaining bytes queued and the connection's task woken to flush them when the
//! socket is writable again; a subscriber whose queue reaches the limit is cut off.
//!
//! The connection's task otherwise sleeps on "readable or woken": it notices a client
//! that went away, answers WebSocket pings and close frames, and records pongs. So an
//! idle subscriber costs a socket, this struct and one parked task.
//!
//! Ordering: every write happens under the sink's lock, and the fan-out writes
//! directly only when nothing is queued; otherwise it appends to the queue. Until the
//! backlog is written, dispatched events are held and merged behind it.

use std::collections::{HashSet, VecDeque};
use std::io::IoSlice;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::core::HISTORY_RETRY_AFTER;
use crate::error::ApiError;
use crate::hub::{CloseReason, DeliverOutcome, Registration, SharedEvent, Sink, Transport};
use crate::limits::ConnectionPermit;
use crate::model::{EventKind, Message};
use crate::subscribe::{Backlog, Filters, SlotGuard, Streams, SubscribeRequest, peer_is_gone};
use crate::telemetry::{Metrics, Route, log_request};
use crate::wire::ws::{self as wsframe, ClientFrame};
use crate::wire::{self, Framing, StreamFormat};
/// How long the final bytes (terminator, close frame) may take on shutdown.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most slices handed to one vectored write.
const MAX_IOV: usize = 64;

/// A validated subscription the direct path will serve.
pub struct Plan {
    pub format: StreamFormat,
    pub request: SubscribeRequest,
    /// `Sec-WebSocket-Accept` for a WebSocket upgrade.
    pub ws_accept: Option<String>,
    /// HTTP/1.0 client: no chunked encoding; the stream ends when the connection does.
    pub http10: bool,
    pub slot: SlotGuard,
    /// Cluster mode: the visitor and its new topics, to be charged to the shared
    /// limits (asynchronously, before serving) instead of this node's.
    pub shared_admission: Option<(crate::limits::Visitor, usize)>,
    /// The connection's place under `connection-limit`, held while it is open.
    pub connection: Option<ConnectionPermit>,
    /// When the request head was complete (request latency for metrics and the log).
    pub started: Instant,
}

#[derive(Default)]
struct SinkState {
    /// Bytes accepted but not yet written, in order.
    pending: VecDeque<Bytes>,
    /// Events dispatched before the backlog was written (`Some` until then).
    held: Option<Vec<Arc<SharedEvent>>>,
    /// Set when the server ends the subscription.
    closing: Option<CloseReason>,
    /// The socket failed or the peer misbehaved: stop without further writes.
    failed: bool,
}

/// A subscriber that is its own socket.
pub struct DirectSink {
    stream: TcpStream,
    framing: Framing,
    ws: bool,
    filters: Filters,
    /// `topic` of keepalive events: the subscription's path segment.
    topic_label: String,
    keepalive_interval: Duration,
    capacity: usize,
    state: Mutex<SinkState>,
    /// Wakes the connection task: bytes are queued, or the subscription is ending.
    wake: Notify,
    /// Last time the WebSocket peer sent anything (pong, ping, data).
    last_heard: Mutex<Instant>,
}

impl DirectSink {
    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `bytes` now if nothing is queued and the socket takes it, else queues
    /// it. Must be called with the state lock held (that is what keeps order).
    fn write_or_queue(&self, st: &mut SinkState, bytes: Bytes) -> DeliverOutcome {
        self.write_or_queue_all(st, std::slice::from_ref(&bytes))
    }

    /// [`Self::write_or_queue`] for several buffers, sent with one vectored write.
    fn write_or_queue_all(&self, st: &mut SinkState, parts: &[Bytes]) -> DeliverOutcome {
        if st.failed || st.closing.is_some() {
            return DeliverOutcome::Closed;
        }
        if parts.is_empty() {
            return DeliverOutcome::Skipped;
        }
        if !st.pending.is_empty() {
            if st.pending.len() + parts.len() > self.capacity {
                st.closing = Some(CloseReason::TooSlow);
                st.failed = true;
                st.pending = VecDeque::new();
                self.wake.notify_one();
                return DeliverOutcome::Overflowed;
            }
            st.pending.extend(parts.iter().cloned());
            return DeliverOutcome::Accepted;
        }
        let result = if parts.len() == 1 {
            self.stream.try_write(&parts[0])
        } else {
            let slices: Vec<IoSlice<'_>> = parts
                .iter()
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            self.stream.try_write_vectored(&slices)
        };
        let mut written = match result {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                st.failed = true;
                self.wake.notify_one();
                return DeliverOutcome::Closed;
            }
        };
        for part in parts {
            if written >= part.len() {
                written -= part.len();
            } else {
                st.pending.push_back(part.slice(written..));
                written = 0;
            }
        }
        if !st.pending.is_empty() {
            self.wake.notify_one();
        }
        DeliverOutcome::Accepted
    }

    /// The transport this sink serves (from its framing: no extra field per subscriber).
    fn transport(&self) -> Transport {
        match self.framing {
            Framing::JsonChunk | Framing::JsonLine => Transport::Json,
            Framing::SseChunk | Framing::SseFrame => Transport::Sse,
            Framing::RawChunk | Framing::RawLine => Transport::Raw,
            Framing::WsFrame | Framing::WsText => Transport::Ws,
        }
    }

    fn keepalive_bytes(&self) -> Bytes {
        if self.ws {
            wsframe::frame(wsframe::OP_PING, b"")
        } else {
            let event =
                SharedEvent::new(Message::new(EventKind::Keepalive, self.topic_label.clone()));
            event.encoded(self.framing).clone()
        }
    }

    /// Writes queued bytes while the socket takes them. Returns false once the
    /// connection is unusable.
    fn flush_ready(&self) -> FlushResult {
        let mut st = self.lock();
        loop {
            if st.failed {
                return FlushResult::Failed;
            }
            if st.pending.is_empty() {
                return FlushResult::Done;
            }
            let slices: Vec<IoSlice<'_>> = st
                .pending
                .iter()
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            match self.stream.try_write_vectored(&slices) {
                Ok(mut n) => {
                    drop(slices);
                    while n > 0 {
                        let Some(front) = st.pending.front_mut() else {
                            break;
                        };
                        if n >= front.len() {
                            n -= front.len();
                            st.pending.pop_front();
                        } else {
                            *front = front.slice(n..);
                            n = 0;
                        }
                    }
                    if st.pending.capacity() > 64 && st.pending.len() < 16 {
                        st.pending.shrink_to(16);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return FlushResult::Blocked;
                }
                Err(_) => {
                    st.failed = true;
                    return FlushResult::Failed;
                }
            }
        }
    }

    fn mark_failed(&self) {
        self.lock().failed = true;
    }
}

enum FlushResult {
    Done,
    Blocked,
    Failed,
}

impl Sink for DirectSink {
    fn deliver(&self, event: &Arc<SharedEvent>) -> DeliverOutcome {
        if !self.filters.pass(&event.message) {
            return DeliverOutcome::Skipped;
        }
        let mut st = self.lock();
        if st.failed || st.closing.is_some() {
            return DeliverOutcome::Closed;
        }
        if let Some(held) = st.held.as_mut() {
            if held.len() >= self.capacity {
                st.failed = true;
                st.closing = Some(CloseReason::TooSlow);
                self.wake.notify_one();
                return DeliverOutcome::Overflowed;
            }
            held.push(event.clone());
            return DeliverOutcome::Accepted;
        }
        let bytes = event.encoded(self.framing).clone();
        self.write_or_queue(&mut st, bytes)
    }

    fn deliver_batch(&self, events: &[Arc<SharedEvent>]) -> (DeliverOutcome, usize) {
        let mut st = self.lock();
        if st.failed || st.closing.is_some() {
            return (DeliverOutcome::Closed, 0);
        }
        let wanted = events.iter().filter(|e| self.filters.pass(&e.message));
        if let Some(held) = st.held.as_mut() {
            let before = held.len();
            held.extend(wanted.cloned());
            let accepted = held.len() - before;
            if held.len() > self.capacity {
                st.failed = true;
                st.closing = Some(CloseReason::TooSlow);
                self.wake.notify_one();
                return (DeliverOutcome::Overflowed, 0);
            }
            return (DeliverOutcome::Accepted, accepted);
        }
        // One event, the usual batch, needs no vector: a publish to a topic with many
        // subscribers would allocate one per subscriber.
        let one: Option<Bytes>;
        let many: Vec<Bytes>;
        let parts: &[Bytes] = if events.len() == 1 {
            one = wanted.map(|e| e.encoded(self.framing).clone()).next();
            one.as_slice()
        } else {
            many = wanted.map(|e| e.encoded(self.framing).clone()).collect();
            &many
        };
        let accepted = parts.len();
        let outcome = self.write_or_queue_all(&mut st, parts);
        let accepted = if outcome == DeliverOutcome::Accepted {
            accepted
        } else {
            0
        };
        (outcome, accepted)
    }

    fn keepalive(&self) {
        if self.ws {
            let silent = self
                .last_heard
                .lock()
                .map(|t| t.elapsed())
                .unwrap_or_default();
            if peer_is_gone(silent, self.keepalive_interval) {
                tracing::debug!("websocket peer silent, closing");
                self.mark_failed();
                self.wake.notify_one();
                return;
            }
        }
        let mut st = self.lock();
        // Skip the keepalive while data is queued: the stream is not idle, and a
        // subscriber that does not read gets no extra bytes queued.
        if st.held.is_some() || !st.pending.is_empty() {
            return;
        }
        let bytes = self.keepalive_bytes();
        let _ = self.write_or_queue(&mut st, bytes);
    }

    fn close(&self, reason: CloseReason) {
        let mut st = self.lock();
        if st.closing.is_none() {
            st.closing = Some(reason);
        }
        drop(st);
        self.wake.notify_one();
    }
}

/// Sets up one direct subscription (registration, response head, backlog) and
/// spawns the task that serves it until it ends.
pub async fn serve(
    streams: Streams<'_>,
    metrics: &Metrics,
    stream: TcpStream,
    plan: Plan,
    leftover: Bytes,
    tracker: &TaskTracker,
) {
    let Plan {
        format,
        request,
        ws_accept,
        http10,
        slot,
        connection,
        started,
        shared_admission: _,
    } = plan;
    let slot = (slot, connection);
    let transport = format.transport();
    let ws = format == StreamFormat::Ws;
    let chunked = !ws && !http10;
    let framing = format.socket_framing(chunked);
    let sink = Arc::new(DirectSink {
        stream,
        framing,
        ws,
        filters: request.params.filters.clone(),
        topic_label: request.topic_label.clone(),
        keepalive_interval: streams.herald.config().keepalive_interval,
        capacity: streams.herald.hub().queue_capacity(),
        state: Mutex::new(SinkState {
            held: Some(Vec::new()),
            ..SinkState::default()
        }),
        wake: Notify::new(),
        last_heard: Mutex::new(Instant::now()),
    });
    // Register before reading the backlog so nothing falls in between.
    let registration = streams
        .herald
        .hub()
        .register_as(&request.topics, sink.clone(), transport);
    streams.herald.close_if_draining(&sink);
    // The backlog's first page is read before the response head, so a refused or
    // failed read is still a clean error answer.
    let started_backlog = Box::pin(async {
        let mut history = streams.backlog(&request, false).await?;
        let page = history.next_page().await?;
        Ok::<_, ApiError>((history, page))
    })
    .await;
    let (history, page) = match started_backlog {
        Ok(started) => started,
        Err(e) => {
            log_open(metrics, &sink, e.http, started);
            let retry = (e == ApiError::TOO_MANY_REQUESTS).then_some(HISTORY_RETRY_AFTER);
            let answer = super::error_response_bytes_retry(&e, retry);
            {
                let mut st = sink.lock();
                st.held = None;
                st.pending.push_back(Bytes::from(answer));
                st.closing = Some(CloseReason::Shutdown);
            }
            tracker.spawn(run(sink, registration, leftover, None, slot, None));
            return;
        }
    };
    let page = page.unwrap_or_default();

    let mut initial: Vec<Bytes> = Vec::with_capacity(page.len() + 2);
    initial.push(wire::stream_response_head(
        format,
        ws_accept.as_deref(),
        chunked,
    ));
    let open = SharedEvent::new(Message::new(EventKind::Open, request.topic_label.clone()));
    initial.push(open.encoded(framing).clone());
    let mut seen = HashSet::with_capacity(page.len());
    for m in page {
        seen.insert(m.id.clone());
        initial.push(SharedEvent::new(m).encoded(framing).clone());
    }
    let rest = if history.is_finished() {
        let mut st = sink.lock();
        let held = st.held.take().unwrap_or_default();
        for event in held {
            if !seen.contains(&event.message.id) {
                initial.push(event.encoded(framing).clone());
            }
        }
        st.pending.extend(initial);
        None
    } else {
        // Longer backlogs go out a page at a time from the connection's task, each
        // read only once the socket took the one before; live events stay held.
        sink.lock().pending.extend(initial);
        Some(Box::new(RestOfBacklog { history, seen }))
    };
    sink.wake.notify_one();
    log_open(metrics, &sink, if ws { 101 } else { 200 }, started);
    tracker.spawn(run(sink, registration, leftover, Some(chunked), slot, rest));
}

/// The part of a backlog not yet written, and the IDs written so far (a live copy of
/// one of them is not written again).
struct RestOfBacklog {
    history: Backlog,
    seen: HashSet<String>,
}

/// Writes the rest of the backlog, reading each page only once the socket has taken
/// everything queued before it (so a client that does not read holds one page of
/// memory), then the events held meanwhile, minus duplicates. Returns without
/// finishing when the connection fails or the subscription is ending; the
/// connection task then ends it as usual.
async fn write_backlog(sink: &DirectSink, rest: RestOfBacklog) {
    let RestOfBacklog {
        mut history,
        mut seen,
    } = rest;
    loop {
        if !drain(sink).await {
            return;
        }
        match history.next_page().await {
            Ok(Some(page)) => {
                let mut st = sink.lock();
                for m in page {
                    seen.insert(m.id.clone());
                    st.pending
                        .push_back(SharedEvent::new(m).encoded(sink.framing).clone());
                }
            }
            Ok(None) => break,
            Err(e) => {
                // The head is sent: cut the stream short (no final chunk), so the
                // client sees it end and resumes with `since=`.
                tracing::warn!(error = %e, "history read failed mid-backlog");
                sink.mark_failed();
                return;
            }
        }
    }
    // Gives the history read's place back before the stream goes live.
    drop(history);
    let mut st = sink.lock();
    let held = st.held.take().unwrap_or_default();
    for event in held {
        if !seen.contains(&event.message.id) {
            st.pending.push_back(event.encoded(sink.framing).clone());
        }
    }
}

/// Waits until every queued byte is written. `false`: the connection failed or the
/// subscription is ending.
async fn drain(sink: &DirectSink) -> bool {
    loop {
        match sink.flush_ready() {
            FlushResult::Failed => return false,
            FlushResult::Done => return sink.lock().closing.is_none(),
            FlushResult::Blocked => {
                if sink.lock().closing.is_some() {
                    return false;
                }
                tokio::select! {
                    r = sink.stream.writable() => if r.is_err() { return false },
                    _ = sink.wake.notified() => {}
                }
            }
        }
    }
}

/// Request metrics and the access-log line for a stream served here (hyper's
/// service does both for everything else). The path is rebuilt from the topics
/// and the transport: the query string is never logged.
fn log_open(metrics: &Metrics, sink: &DirectSink, status: u16, started: Instant) {
    let transport = sink.transport();
    let route = Route::subscribe(transport);
    let elapsed = started.elapsed();
    metrics.observe_http(route, &axum::http::Method::GET, status, elapsed);
    let path = format!("/{}/{}", sink.topic_label, transport.as_str());
    log_request(
        route,
        "GET",
        &path,
        status,
        elapsed,
        Some(&sink.topic_label),
    );
}

/// The connection task: flushes what the fan-out could not write, reads what the
/// client sends, and finishes the stream when the subscription ends.
/// `chunked` is `None` for an error response (nothing to terminate).
///
/// This future is what an idle subscriber costs besides its sink, so it is kept
/// small: a short read buffer, and the rarely used final writes boxed.
async fn run(
    sink: Arc<DirectSink>,
    registration: Registration,
    leftover: Bytes,
    chunked: Option<bool>,
    slot: (SlotGuard, Option<ConnectionPermit>),
    backlog: Option<Box<RestOfBacklog>>,
) {
    if let Some(rest) = backlog {
        Box::pin(write_backlog(&sink, *rest)).await;
    }
    serve_stream(&sink, leftover, chunked).await;
    // Unregister before the socket closes, so no fan-out writes to a dead socket.
    drop(registration);
    if chunked.is_some() {
        let reason = sink.lock().closing;
        tracing::debug!(
            target: "herald::access",
            topic = %sink.topic_label,
            transport = sink.transport().as_str(),
            reason = ?reason,
            "subscription ended"
        );
    }
    drop(slot);
}

async fn serve_stream(sink: &DirectSink, leftover: Bytes, chunked: Option<bool>) {
    let mut inbuf: Vec<u8> = leftover.to_vec();
    let mut messages = wsframe::Messages::default();
    if sink.ws
        && !inbuf.is_empty()
        && handle_client_bytes(sink, &mut inbuf, &mut messages) == ClientAction::End
    {
        Box::pin(final_flush(sink)).await;
        return;
    }
    let mut read_buf = [0u8; 128];
    loop {
        match sink.flush_ready() {
            FlushResult::Failed => return,
            FlushResult::Blocked => {
                if sink.lock().closing.is_some() {
                    Box::pin(final_flush(sink)).await;
                    return;
                }
                tokio::select! {
                    r = sink.stream.writable() => if r.is_err() { return },
                    _ = sink.wake.notified() => {}
                }
                continue;
            }
            FlushResult::Done => {}
        }
        let closing = sink.lock().closing;
        if let Some(reason) = closing {
            Box::pin(finish(sink, reason, chunked)).await;
            return;
        }
        tokio::select! {
            _ = sink.wake.notified() => {}
            r = sink.stream.readable() => {
                if r.is_err() {
                    return;
                }
                match sink.stream.try_read(&mut read_buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        // HTTP stream clients have nothing to say; only WebSocket
                        // peers' bytes are parsed.
                        if sink.ws {
                            inbuf.extend_from_slice(&read_buf[..n]);
                            if handle_client_bytes(sink, &mut inbuf, &mut messages)
                                == ClientAction::End
                            {
                                Box::pin(final_flush(sink)).await;
                                return;
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ClientAction {
    Continue,
    /// Flush what is queued (e.g. our close frame) and end the connection.
    End,
}

/// Processes complete client frames in `inbuf`.
fn handle_client_bytes(
    sink: &DirectSink,
    inbuf: &mut Vec<u8>,
    messages: &mut wsframe::Messages,
) -> ClientAction {
    loop {
        let parsed = wsframe::parse(inbuf).and_then(|frame| match &frame {
            Some((
                ClientFrame::Data {
                    opcode,
                    fin,
                    payload,
                },
                _,
            )) => messages.check(*opcode, *fin, payload).map(|()| frame),
            _ => Ok(frame),
        });
        match parsed {
            Ok(None) => return ClientAction::Continue,
            Ok(Some((frame, used))) => {
                inbuf.drain(..used);
                if let Ok(mut t) = sink.last_heard.lock() {
                    *t = Instant::now();
                }
                match frame {
                    ClientFrame::Data { .. } | ClientFrame::Pong => {}
                    ClientFrame::Ping(payload) => {
                        let mut st = sink.lock();
                        if st.held.is_none() {
                            let _ = sink.write_or_queue(
                                &mut st,
                                wsframe::frame(wsframe::OP_PONG, &payload),
                            );
                        }
                    }
                    ClientFrame::Close(code) => {
                        // Echo the peer's code, as RFC 6455 §5.5.1 asks.
                        let code = code.unwrap_or(1000);
                        let mut st = sink.lock();
                        let _ = sink.write_or_queue(&mut st, wsframe::close_frame(code));
                        return ClientAction::End;
                    }
                }
            }
            Err(e) => {
                let mut st = sink.lock();
                let _ = sink.write_or_queue(&mut st, wsframe::close_frame(e.close_code()));
                return ClientAction::End;
            }
        }
    }
}

/// Ends the stream the way the transport expects: a terminating chunk for chunked
/// HTTP, a close frame (1001 going away) for WebSocket.
async fn finish(sink: &DirectSink, reason: CloseReason, chunked: Option<bool>) {
    let Some(chunked) = chunked else {
        Box::pin(final_flush(sink)).await;
        return;
    };
    let last = if sink.ws {
        let code: u16 = match reason {
            CloseReason::Shutdown => 1001,
            CloseReason::TooSlow => 1008,
        };
        Some(wsframe::close_frame(code))
    } else if chunked {
        Some(Bytes::from_static(wire::HTTP_LAST_CHUNK))
    } else {
        None
    };
    if let Some(last) = last {
        sink.lock().pending.push_back(last);
    }
    Box::pin(final_flush(sink)).await;
}

/// Writes what is queued, giving up after [`FINAL_WRITE_TIMEOUT`].
async fn final_flush(sink: &DirectSink) {
    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, async {
        loop {
            match sink.flush_ready() {
                FlushResult::Done | FlushResult::Failed => return,
                FlushResult::Blocked => {
                    if sink.stream.writable().await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
}
