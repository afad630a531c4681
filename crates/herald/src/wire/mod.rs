//! Every byte layout herald writes to a subscriber, in one place: the event
//! encodings (JSON line, SSE frame, raw line, WebSocket text), HTTP/1.1 chunk
//! framing, the direct path's response heads, and WebSocket frames ([`ws`]).
//!
//! The stream paths (`api::subscribe`, `api::ws`, `listener::direct`) and the hub's
//! per-event cache ([`crate::hub::SharedEvent`]) call these encoders; none of them
//! lays out bytes itself, so a new transport reuses the same encodings and a fix to
//! one (e.g. SSE framing) reaches every path. Formats follow ntfy
//! (https://docs.ntfy.sh/subscribe/api/).

mod json;
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
            Framing::JsonChunk | Framing::SseFrame | Framing::WsText => Some(Framing::JsonLine),
            Framing::SseChunk => Some(Framing::SseFrame),
            Framing::RawChunk => Some(Framing::RawLine),
            Framing::WsFrame => Some(Framing::WsText),
            Framing::JsonLine | Framing::RawLine => None,
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
        Framing::WsText => full_json(message, inner),
        Framing::JsonChunk | Framing::SseChunk | Framing::RawChunk => http_chunk(inner),
        Framing::WsFrame => ws::frame(ws::OP_TEXT, inner),
    }
}

/// `data` as one HTTP/1.1 chunk of a chunked response body.
pub fn http_chunk(data: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(data.len() + 20);
    // The length in hex, without `format!`'s temporary string.
    let digits = (usize::BITS - data.len().leading_zeros())
        .div_ceil(4)
        .max(1);
    for shift in (0..digits).rev() {
        buf.push(b"0123456789abcdef"[(data.len() >> (shift * 4)) & 0xf]);
    }
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
    Bytes::from(buf)
}

/// The last chunk of a chunked response body.
pub const HTTP_LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `message` as a JSON line in ntfy's `ForJSON` form.
///
/// Written into a buffer sized for it up front: grown from empty, as
/// `serde_json::to_vec` does, a typical message's line was reallocated (and copied)
/// six or seven times.
pub fn json_line(message: &Message) -> Bytes {
    let mut buf = Vec::with_capacity(json_capacity(message));
    json::write_message(&mut buf, message, json::Form::ForJson);
    buf.push(b'\n');
    Bytes::from(buf)
}

/// A message's JSON line ([`Framing::JsonLine`]), WebSocket text
/// ([`Framing::WsText`]) and WebSocket frame ([`Framing::WsFrame`]), built together
/// in one buffer: a published event needs all three (the answer, the stored row,
/// each WebSocket subscriber), and built one from another they were three
/// allocations and two copies of the line, then three frees.
///
/// The buffer holds the frame (its header right before the text, so the text is
/// the frame's tail) and then, when the two forms differ (the `sequence_id` that
/// `ForJSON` leaves out), the line, cut from the text without encoding again.
#[derive(Debug, Clone)]
pub(crate) struct MessageEncodings {
    pub(crate) json_line: Bytes,
    pub(crate) ws_text: Bytes,
    pub(crate) ws_frame: Bytes,
}

impl MessageEncodings {
    pub(crate) fn new(message: &Message) -> Self {
        // The longest header (10 bytes) is reserved; the frame starts where its
        // actual header does.
        const HEAD: usize = 10;
        let own_sequence = message.sequence_id.as_deref() == Some(message.id.as_str());
        let json = json_capacity(message);
        let mut buf = Vec::with_capacity(HEAD + json + if own_sequence { json } else { 0 });
        buf.resize(HEAD, 0);
        let sequence = json::write_message(&mut buf, message, json::Form::Full);
        let text_end = buf.len();
        let header = ws::frame_header(ws::OP_TEXT, text_end - HEAD);
        let frame_start = HEAD - header.len();
        buf[frame_start..HEAD].copy_from_slice(&header);
        let line = match sequence {
            // `sequence_id` is the ID: the line is the text without it.
            Some(entry) if own_sequence => {
                buf.extend_from_within(HEAD..entry.start);
                buf.extend_from_within(entry.end..text_end);
                buf.push(b'\n');
                text_end..buf.len()
            }
            _ => {
                buf.push(b'\n');
                HEAD..buf.len()
            }
        };
        let all = Bytes::from(buf);
        MessageEncodings {
            json_line: all.slice(line),
            ws_text: all.slice(HEAD..text_end),
            ws_frame: all.slice(frame_start..text_end),
        }
    }
}

/// Enough bytes for `message`'s JSON line unless its text needs much escaping:
/// the keys, numbers and punctuation of every field, plus its strings' lengths.
fn json_capacity(message: &Message) -> usize {
    const FIXED: usize = 192;
    let texts = [
        &message.id,
        &message.topic,
        &message.title,
        &message.message,
        &message.click,
        &message.icon,
        &message.poll_id,
        &message.content_type,
        &message.encoding,
    ];
    FIXED
        + texts.iter().map(|t| t.len()).sum::<usize>()
        + message.sequence_id.as_ref().map_or(0, |s| s.len() + 18)
        + message.tags.iter().map(|t| t.len() + 3).sum::<usize>()
        + message.actions.len() * 256
        + message.attachment.as_ref().map_or(0, |_| 512)
}

/// `message` as `serde_json` writes a [`Message`] (the stored row, WebSocket text),
/// given its JSON line: the two differ only by the `sequence_id` the line leaves out
/// when it equals the ID (ntfy's `ForJSON`), which goes back in its place, right
/// after `id`. So a published message is serialized once, not once per form.
pub fn full_json(message: &Message, json_line: &[u8]) -> Bytes {
    let json = json_line.strip_suffix(b"\n").unwrap_or(json_line);
    if message.sequence_id.as_deref() != Some(message.id.as_str()) {
        return Bytes::copy_from_slice(json);
    }
    const START: &[u8] = b"{\"id\":\"";
    let id = message.id.as_bytes();
    let id_end = START.len() + id.len();
    // An ID that JSON escapes would not be found verbatim: encoded in full instead.
    let plain = id
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    if !plain
        || json.get(..START.len()) != Some(START)
        || json.get(START.len()..id_end) != Some(id)
        || json.get(id_end) != Some(&b'"')
    {
        let mut full = Vec::with_capacity(json_capacity(message) + id.len() + 18);
        json::write_message(&mut full, message, json::Form::Full);
        return Bytes::from(full);
    }
    let mut out = Vec::with_capacity(json.len() + id.len() + 18);
    out.extend_from_slice(&json[..=id_end]);
    out.extend_from_slice(b",\"sequence_id\":\"");
    out.extend_from_slice(id);
    out.push(b'"');
    out.extend_from_slice(&json[id_end + 1..]);
    Bytes::from(out)
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
        assert_eq!(&http_chunk(b"")[..], b"0\r\n\r\n");
        for len in [15, 16, 255, 256, 4095, 4096, 70_000] {
            let data = vec![b'x'; len];
            let chunk = http_chunk(&data);
            let head = format!("{len:x}\r\n");
            assert!(chunk.starts_with(head.as_bytes()), "{len}");
            assert_eq!(chunk.len(), head.len() + len + 2);
        }
        assert_eq!(&ws::frame(ws::OP_TEXT, b"hi")[..], b"\x81\x02hi");
        let long = vec![b'x'; 300];
        let framed = ws::frame(ws::OP_TEXT, &long);
        assert_eq!(&framed[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(&ws::close_frame(1001)[..], &[0x88, 2, 0x03, 0xe9]);
    }

    #[test]
    fn the_full_json_is_the_line_with_its_sequence_id() {
        let mut m = Message::new(EventKind::Message, "t");
        m.title = "a \"quoted\" title".into();
        m.expires = Some(9);
        let cases = [None, Some(m.id.clone()), Some("other".to_string())];
        for sequence_id in cases {
            m.sequence_id = sequence_id.clone();
            let full = full_json(&m, &json_line(&m));
            let expected = serde_json::to_vec(&m).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&full),
                String::from_utf8_lossy(&expected),
                "{sequence_id:?}"
            );
        }
        // An ID JSON would escape is encoded in full.
        m.id = "a\"b".into();
        m.sequence_id = Some(m.id.clone());
        assert_eq!(
            &full_json(&m, &json_line(&m))[..],
            &serde_json::to_vec(&m).unwrap()[..]
        );
    }

    #[test]
    fn a_json_line_is_serde_jsons_for_json_form_and_fits_its_buffer() {
        let mut m = Message::new(EventKind::Message, "t");
        m.message = "x".repeat(300);
        m.title = "a \"quoted\" title\n".into();
        m.tags = vec!["warning".into(), "skull".into()];
        m.priority = 4;
        m.click = "https://example.com/".into();
        m.expires = Some(9);
        m.sequence_id = Some("seq".into());
        let line = json_line(&m);
        let mut expected = serde_json::to_vec(&m.for_json()).unwrap();
        expected.push(b'\n');
        assert_eq!(&line[..], &expected[..]);
        assert!(line.len() <= json_capacity(&m), "no reallocation");
    }

    #[test]
    fn the_encodings_built_together_are_the_ones_built_apart() {
        let mut m = Message::new(EventKind::Message, "t");
        m.message = "a \"quoted\"\nmessage".into();
        m.expires = Some(9);
        let long = "x".repeat(200);
        let ids = [m.id.clone(), "a\"b".to_string()];
        for (id, sequence_id, text) in ids
            .iter()
            .flat_map(|id| [None, Some(id.clone()), Some("other".into())].map(|s| (id, s)))
            .flat_map(|(id, s)| [("short", id, s.clone()), (long.as_str(), id, s)])
            .map(|(text, id, s)| (id.clone(), s, text))
        {
            m.id = id;
            m.sequence_id = sequence_id;
            m.message = text.into();
            let all = MessageEncodings::new(&m);
            let line = json_line(&m);
            let text = full_json(&m, &line);
            assert_eq!(&all.json_line[..], &line[..], "{m:?}");
            assert_eq!(&all.ws_text[..], &text[..], "{m:?}");
            assert_eq!(
                &all.ws_frame[..],
                &ws::frame(ws::OP_TEXT, &text)[..],
                "{m:?}"
            );
        }
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
