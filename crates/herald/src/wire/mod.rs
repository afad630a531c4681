//! Every byte layout herald writes to a subscriber, in one place: the event
//! encodings (JSON line, SSE frame, raw line, WebSocket text), HTTP/1.1 chunk
//! framing, the direct path's response heads, and WebSocket frames ([`ws`]).
//!
//! The stream paths (`api::subscribe`, `api::ws`, `listener::direct`) and the hub's
//! per-event cache ([`crate::hub::SharedEvent`]) call these encoders; none of them
//! lays out bytes itself, so a new transport reuses the same encodings and a fix to
//! one (e.g. SSE framing) reaches every path. Formats follow ntfy
//! (https://docs.ntfy.sh/subscribe/api/).

pub mod ws;

use bytes::Bytes;

use crate::hub::Transport;
use crate::model::{EventKind, Message};

/// What a `GET /<topics>/<x>` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    Json,
    Sse,
    Raw,
    Ws,
}

impl StreamFormat {
    /// The hub transport this format is counted under.
    pub fn transport(self) -> Transport {
        match self {
            StreamFormat::Json => Transport::Json,
            StreamFormat::Sse => Transport::Sse,
            StreamFormat::Raw => Transport::Raw,
            StreamFormat::Ws => Transport::Ws,
        }
    }

    /// The `Content-Type` of an HTTP stream or poll answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            StreamFormat::Json | StreamFormat::Ws => "application/x-ndjson; charset=utf-8",
            StreamFormat::Sse => "text/event-stream; charset=utf-8",
            StreamFormat::Raw => "text/plain; charset=utf-8",
        }
    }

    /// The encoding of one event in this format when a body framer (hyper, axum's
    /// WebSocket) adds the transport framing: a poll answer or an axum stream.
    pub fn body_framing(self) -> Framing {
        match self {
            StreamFormat::Json | StreamFormat::Ws => Framing::JsonLine,
            StreamFormat::Sse => Framing::SseFrame,
            StreamFormat::Raw => Framing::RawLine,
        }
    }

    /// The complete on-the-socket encoding of one event, for a writer that owns the
    /// socket (the direct path): a WebSocket frame, an HTTP/1.1 chunk, or for an
    /// HTTP/1.0 client (`chunked == false`) the bare body bytes.
    pub fn socket_framing(self, chunked: bool) -> Framing {
        match (self, chunked) {
            (StreamFormat::Ws, _) => Framing::WsFrame,
            (StreamFormat::Json, true) => Framing::JsonChunk,
            (StreamFormat::Sse, true) => Framing::SseChunk,
            (StreamFormat::Raw, true) => Framing::RawChunk,
            (StreamFormat::Json, false) => Framing::JsonLine,
            (StreamFormat::Sse, false) => Framing::SseFrame,
            (StreamFormat::Raw, false) => Framing::RawLine,
        }
    }
}

/// The wire encodings of an event, one per transport and framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `/json`: `{...}\n`.
    JsonLine,
    /// `/sse`: `data: {...}\n\n` (with an `event:` line for non-message events).
    SseFrame,
    /// `/raw`: the message text and `\n`.
    RawLine,
    /// WebSocket text payload: the full JSON (ntfy keeps `sequence_id` here).
    WsText,
    /// `JsonLine` as an HTTP/1.1 chunk (`<len>\r\n...\r\n`).
    JsonChunk,
    /// `SseFrame` as an HTTP/1.1 chunk.
    SseChunk,
    /// `RawLine` as an HTTP/1.1 chunk.
    RawChunk,
    /// `WsText` as a complete WebSocket text frame (server frames are unmasked).
    WsFrame,
}

/// How many [`Framing`]s there are (the size of a per-event encoding cache).
pub const FRAMINGS: usize = 8;

impl Framing {
    /// The framing this one wraps (`JsonChunk` wraps `JsonLine`), or `None` for the
    /// ones encoded from the message itself. Lets a cache build the inner bytes once
    /// and share them between, e.g., `/json` over hyper and over the direct path.
    pub fn inner(self) -> Option<Framing> {
        match self {
            Framing::JsonChunk | Framing::SseFrame => Some(Framing::JsonLine),
            Framing::SseChunk => Some(Framing::SseFrame),
            Framing::RawChunk => Some(Framing::RawLine),
            Framing::WsFrame => Some(Framing::WsText),
            Framing::JsonLine | Framing::RawLine | Framing::WsText => None,
        }
    }
}

/// `message` in `framing`. `inner` is the message already encoded in
/// [`Framing::inner`] (ignored when that is `None`), so that wrapping framings do not
/// serialize the message again.
pub fn encode(message: &Message, framing: Framing, inner: &[u8]) -> Bytes {
    match framing {
        Framing::JsonLine => json_line(message),
        Framing::SseFrame => sse_frame(message, inner),
        Framing::RawLine => raw_line(message),
        Framing::WsText => Bytes::from(serde_json::to_vec(message).unwrap_or_default()),
        Framing::JsonChunk | Framing::SseChunk | Framing::RawChunk => http_chunk(inner),
        Framing::WsFrame => ws::frame(ws::OP_TEXT, inner),
    }
}

/// `data` as one HTTP/1.1 chunk of a chunked response body.
pub fn http_chunk(data: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(data.len() + 12);
    buf.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
    Bytes::from(buf)
}

/// The last chunk of a chunked response body.
pub const HTTP_LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `message` as a JSON line in ntfy's `ForJSON` form.
pub fn json_line(message: &Message) -> Bytes {
    let mut buf = serde_json::to_vec(&message.for_json()).unwrap_or_default();
    buf.push(b'\n');
    Bytes::from(buf)
}

/// `message` as an SSE frame, given its JSON line.
pub fn sse_frame(message: &Message, json_line: &[u8]) -> Bytes {
    let json = json_line.strip_suffix(b"\n").unwrap_or(json_line);
    let mut buf = Vec::with_capacity(json.len() + 32);
    if !message.event.is_content() {
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(message.event.as_str().as_bytes());
        buf.push(b'\n');
    }
    buf.extend_from_slice(b"data: ");
    buf.extend_from_slice(json);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// `message` as a raw line: its text with newlines flattened, or empty.
pub fn raw_line(message: &Message) -> Bytes {
    if message.event == EventKind::Message {
        let mut line = message.message.replace('\n', " ");
        line.push('\n');
        Bytes::from(line)
    } else {
        Bytes::from_static(b"\n")
    }
}

/// The response head the direct path writes for a stream: `101` with
/// `Sec-WebSocket-Accept` for a WebSocket upgrade, else `200` with the format's
/// content type, chunked or (HTTP/1.0) ended by closing the connection.
pub fn stream_response_head(format: StreamFormat, ws_accept: Option<&str>, chunked: bool) -> Bytes {
    if let Some(accept) = ws_accept {
        return Bytes::from(format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        ));
    }
    let content_type = format.content_type();
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\n"
    } else {
        "Connection: close\r\n"
    };
    Bytes::from(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nAccess-Control-Allow-Origin: *\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n{framing}\r\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_and_frame_layout() {
        assert_eq!(&http_chunk(b"hello")[..], b"5\r\nhello\r\n");
        assert_eq!(&ws::frame(ws::OP_TEXT, b"hi")[..], b"\x81\x02hi");
        let long = vec![b'x'; 300];
        let framed = ws::frame(ws::OP_TEXT, &long);
        assert_eq!(&framed[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(&ws::close_frame(1001)[..], &[0x88, 2, 0x03, 0xe9]);
    }

    #[test]
    fn sse_names_non_message_events() {
        let open = Message::new(EventKind::Open, "t");
        let line = json_line(&open);
        let frame = sse_frame(&open, &line);
        assert!(frame.starts_with(b"event: open\ndata: {"));
        assert!(frame.ends_with(b"}\n\n"));
        assert_eq!(&raw_line(&open)[..], b"\n");
    }
}
