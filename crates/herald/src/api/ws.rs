//! Subscribing over WebSocket: `GET /<topics>/ws`.
//!
//! ntfy's framing: one text frame per event (`open`, then messages; the JSON keeps
//! `sequence_id`), WebSocket pings instead of `keepalive` events, and the client is
//! expected only to answer pings. Buffers are kept small on purpose: an idle
//! subscriber is most of what a notification server holds, and tungstenite's default
//! 128 KiB buffers would dominate its memory.

use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};

use super::AppState;
use super::subscribe::{backlog_error_response, parse_request};
use crate::error::ApiError;
use crate::hub::{CloseReason, Delivery, SharedEvent, Subscription};
use crate::limits::Visitor;
use crate::model::{EventKind, Message};
use crate::subscribe::{Backlog, Filters, SlotGuard, peer_is_gone};

/// Read buffer: clients only send pongs and close frames.
const READ_BUFFER: usize = 1024;
/// Largest frame a client may send (ntfy allows 64 bytes; pings with payload fit).
const MAX_INCOMING: usize = 4096;

/// `GET /<topics>/ws`.
pub async fn subscribe(
    state: &AppState,
    req: Request,
    topics: &str,
    visitor: &Visitor,
) -> Result<Response, ApiError> {
    // ntfy authorizes the topics before looking at the upgrade.
    {
        let anonymous = crate::auth::Principal::anonymous();
        let principal = req
            .extensions()
            .get::<crate::auth::Principal>()
            .unwrap_or(&anonymous);
        state.streams().authorize_read(principal, topics)?;
    }
    let (mut parts, body) = req.into_parts();
    // Like ntfy, a request that is not a WebSocket upgrade is refused before the
    // subscription's parameters are looked at.
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|_| ApiError::WEBSOCKET_REQUIRED)?;
    // axum takes any key; RFC 6455 §4.2.1 asks for the base64 of 16 bytes.
    let key_is_valid = parts
        .headers
        .get(axum::http::header::SEC_WEBSOCKET_KEY)
        .is_some_and(|k| crate::wire::ws::websocket_key_is_valid(k.as_bytes()));
    if !key_is_valid {
        return Err(ApiError::WEBSOCKET_REQUIRED
            .with_detail("Sec-WebSocket-Key must be the base64 encoding of 16 bytes"));
    }
    // The listener's `connection-limit` place, held for the life of the socket.
    let connection = parts
        .extensions
        .get::<std::sync::Arc<crate::limits::ConnectionPermit>>()
        .cloned();
    let req = Request::from_parts(parts, body);
    let sub_req = parse_request(state, &req, topics)?;
    if sub_req.params.poll {
        // As ntfy: the cached messages (no `open`), then the end of the socket.
        let history = match state.streams().backlog(&sub_req, true).await {
            Ok(history) => history,
            Err(e) => return Ok(backlog_error_response(e)),
        };
        return Ok(configure(upgrade).on_upgrade(move |socket| poll(socket, history, connection)));
    }
    let slot = match state.streams().admit(visitor, &sub_req.topics).await {
        Ok(slot) => slot,
        Err(refusal) => return Ok(super::refusal_response(&state.limits, refusal, visitor)),
    };
    let subscription = state
        .herald
        .subscribe(&sub_req.topics, crate::hub::Transport::Ws);
    let history = match state.streams().backlog(&sub_req, false).await {
        Ok(history) => history,
        Err(e) => return Ok(backlog_error_response(e)),
    };
    let keepalive = state.herald.config().keepalive_interval;
    let session = Session {
        subscription,
        _slot: slot,
        _connection: connection,
        filters: sub_req.params.filters,
        topic_label: sub_req.topic_label,
        history,
        keepalive,
    };
    Ok(configure(upgrade).on_upgrade(move |socket| session.run(socket)))
}

fn configure(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(MAX_INCOMING)
        .max_frame_size(MAX_INCOMING)
}

/// `ws?poll=1`: the backlog a page at a time, then a normal close (`1000`). ntfy's
/// handler returns after sending them, which closes the socket.
async fn poll(
    socket: WebSocket,
    mut history: Backlog,
    _connection: Option<std::sync::Arc<crate::limits::ConnectionPermit>>,
) {
    let (mut tx, _rx) = socket.split();
    loop {
        let page = match history.next_page().await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            // Cut short without a normal close: the client sees an incomplete answer.
            Err(_) => return,
        };
        for m in page {
            if let Some(frame) = text_frame(&SharedEvent::new(m))
                && tx.feed(frame).await.is_err()
            {
                return;
            }
        }
        if tx.flush().await.is_err() {
            return;
        }
    }
    let close = CloseFrame {
        code: 1000,
        reason: "".into(),
    };
    let _ = tx.send(WsMessage::Close(Some(close))).await;
}

/// The close code RFC 6455 names for a peer's broken frames (as the direct path
/// answers them, `wire::ws`), or `None` when the connection itself failed.
fn failure_close_code(error: axum::Error) -> Option<u16> {
    use tungstenite::Error;
    match error.into_inner().downcast::<Error>().ok().as_deref()? {
        Error::Protocol(_) => Some(1002),
        Error::Utf8(_) => Some(1007),
        Error::Capacity(_) => Some(1009),
        _ => None,
    }
}

struct Session {
    subscription: Subscription,
    _slot: SlotGuard,
    _connection: Option<std::sync::Arc<crate::limits::ConnectionPermit>>,
    filters: Filters,
    topic_label: String,
    /// Read a page at a time as the socket takes it.
    history: Backlog,
    keepalive: Duration,
}

fn text_frame(event: &SharedEvent) -> Option<WsMessage> {
    Utf8Bytes::try_from(event.ws_text().clone())
        .ok()
        .map(WsMessage::Text)
}

impl Session {
    async fn run(mut self, socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        let open = SharedEvent::new(Message::new(EventKind::Open, self.topic_label.clone()));
        let mut seen = std::collections::HashSet::new();
        if let Some(frame) = text_frame(&open)
            && tx.feed(frame).await.is_err()
        {
            return;
        }
        loop {
            // A failed read ends the session: the client resumes with `since=`.
            let page = match self.history.next_page().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(_) => return,
            };
            for m in page {
                seen.insert(m.id.clone());
                if let Some(frame) = text_frame(&SharedEvent::new(m))
                    && tx.feed(frame).await.is_err()
                {
                    return;
                }
            }
            if tx.flush().await.is_err() {
                return;
            }
        }
        if tx.flush().await.is_err() {
            return;
        }

        let mut last_heard = Instant::now();
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                next = self.subscription.next_batch(&mut batch) => {
                    if let Err(reason) = next {
                        let code = match reason {
                            CloseReason::Shutdown => 1001,
                            CloseReason::TooSlow => 1008,
                        };
                        let reason = match reason {
                            CloseReason::Shutdown => "server shutting down",
                            CloseReason::TooSlow => "subscriber too slow",
                        };
                        let _ = tx.send(WsMessage::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                        return;
                    }
                    for delivery in batch.drain(..) {
                        let frame = match delivery {
                            Delivery::Event(event) => {
                                if !seen.is_empty() && seen.remove(&event.message.id) {
                                    continue;
                                }
                                if !self.filters.pass(&event.message) {
                                    continue;
                                }
                                text_frame(&event)
                            }
                            Delivery::Keepalive => {
                                if peer_is_gone(last_heard.elapsed(), self.keepalive) {
                                    tracing::debug!("websocket peer silent, closing");
                                    return;
                                }
                                Some(WsMessage::Ping(Default::default()))
                            }
                        };
                        if let Some(frame) = frame
                            && tx.feed(frame).await.is_err()
                        {
                            return;
                        }
                    }
                    if tx.flush().await.is_err() {
                        return;
                    }
                }
                incoming = rx.next() => match incoming {
                    None => return,
                    // tungstenite has queued its answer (the peer's code echoed, or
                    // 1002 for an invalid one); flushing sends it.
                    Some(Ok(WsMessage::Close(_))) => {
                        let _ = tx.flush().await;
                        return;
                    }
                    Some(Err(e)) => {
                        if let Some(code) = failure_close_code(e) {
                            let frame = CloseFrame { code, reason: "".into() };
                            let _ = tx.send(WsMessage::Close(Some(frame))).await;
                        }
                        return;
                    }
                    Some(Ok(_)) => last_heard = Instant::now(),
                },
            }
        }
    }
}
