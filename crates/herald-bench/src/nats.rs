//! Just enough of the NATS client protocol to benchmark nats-server with the same
//! scenarios, stamps and counters as an ntfy server: connect, subscribe, publish
//! with an acknowledgement, receive messages, answer pings.
//!
//! The protocol is line-based text (<https://docs.nats.io/reference/reference-protocols/nats-protocol>):
//! the server greets with `INFO {...}`, the client sends `CONNECT {...}`, then
//! `SUB <subject> <sid>` and `PUB <subject> <#bytes>\r\n<payload>`; the server
//! delivers `MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>` and
//! sends `PING` (answered with `PONG`), `+OK` and `-ERR '...'`. A `PING` from the
//! client is answered with a `PONG` once the server has processed everything the
//! client sent before it, which is what makes `PUB` + `PING` a publish with an
//! acknowledgement (the comparable of an HTTP POST and its response), and `SUB` +
//! `PING` a subscription known to be registered (the comparable of ntfy's `open`).
//!
//! Two transports carry the same bytes: plain TCP (the client port) and WebSocket
//! (nats-server's `websocket` listener, binary frames whose boundaries mean nothing
//! to the protocol). Why a codec of our own rather than a NATS client crate: the
//! generator owns its sockets (to bind a source address), runs on one thread, and
//! finds stamps in payloads without copying them; the parts worth testing, the
//! parser, are pure functions over byte buffers.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Longest control line accepted (nats-server's own default `max_control_line`).
const MAX_CONTROL_LINE: usize = 4096;
/// Largest payload accepted in a `MSG` (nats-server's default `max_payload` is 1 MiB;
/// anything much larger is a broken stream, not a benchmark message).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// What the generator says about itself in `CONNECT`: no `+OK` after every
/// command (`verbose`), no strict subject checks (`pedantic`), no headers.
const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"herald-bench\",\"lang\":\"rust\",\"protocol\":1,\"headers\":false}\r\n";

/// Why a NATS exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NatsError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("connection closed by the server")]
    Closed,
    #[error("malformed protocol line: {0}")]
    Malformed(&'static str),
    #[error("server error: {0}")]
    Server(String),
    #[error("expected INFO first, got something else")]
    NoInfo,
}

/// One server operation. Ranges index the buffer that was parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Info,
    /// `MSG` or `HMSG`; `payload` excludes headers (a `HMSG`'s header block).
    Msg {
        payload: Range<usize>,
    },
    Ping,
    Pong,
    Ok,
    /// `-ERR`: the server's text, without its quotes.
    Err(String),
}

/// Parses one operation at the start of `buf`. `Ok(None)`: incomplete, read more.
/// On success also returns how many bytes it took.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Op, usize)>, NatsError> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() > MAX_CONTROL_LINE {
            Err(NatsError::Malformed("control line too long"))
        } else {
            Ok(None)
        };
    };
    if eol > MAX_CONTROL_LINE {
        return Err(NatsError::Malformed("control line too long"));
    }
    let line = std::str::from_utf8(&buf[..eol])
        .map_err(|_| NatsError::Malformed("control line is not UTF-8"))?;
    let after_line = eol + 2;
    let (verb, args) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    };
    let op = match verb.to_ascii_uppercase().as_str() {
        "INFO" => Op::Info,
        "PING" => Op::Ping,
        "PONG" => Op::Pong,
        "+OK" => Op::Ok,
        "-ERR" => Op::Err(args.trim_matches('\'').to_string()),
        "MSG" => return parse_msg(buf, args, after_line, false),
        "HMSG" => return parse_msg(buf, args, after_line, true),
        _ => return Err(NatsError::Malformed("unknown operation")),
    };
    Ok(Some((op, after_line)))
}

/// `MSG <subject> <sid> [reply-to] <#bytes>` or
/// `HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>`, then the
/// payload and CRLF.
fn parse_msg(
    buf: &[u8],
    args: &str,
    start: usize,
    headers: bool,
) -> Result<Option<(Op, usize)>, NatsError> {
    let fields: Vec<&str> = args.split_ascii_whitespace().collect();
    let sizes = if headers { 2 } else { 1 };
    if !(2 + sizes..=3 + sizes).contains(&fields.len()) {
        return Err(NatsError::Malformed("wrong number of MSG fields"));
    }
    let number = |s: &str| {
        s.parse::<usize>()
            .ok()
            .filter(|&n| n <= MAX_PAYLOAD)
            .ok_or(NatsError::Malformed("invalid MSG size"))
    };
    let total = number(fields[fields.len() - 1])?;
    let header_len = if headers {
        number(fields[fields.len() - 2])?
    } else {
        0
    };
    if header_len > total {
        return Err(NatsError::Malformed("HMSG headers larger than the message"));
    }
    let end = start + total;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(NatsError::Malformed("payload not followed by CRLF"));
    }
    Ok(Some((
        Op::Msg {
            payload: start + header_len..end,
        },
        end + 2,
    )))
}

/// `PUB <subject> <#bytes>\r\n<payload>\r\nPING\r\n` appended to `out`: a publish
/// whose `PONG` says the server has processed it.
pub(crate) fn publish_with_ack(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\nPING\r\n");
}

/// The byte stream a NATS connection runs over.
enum Link {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<TcpStream>>),
}

/// A NATS connection: its link, the read buffer, and the operation last returned.
pub(crate) struct NatsConn {
    link: Link,
    buf: BytesMut,
    /// Bytes of `buf` taken by the operation last returned; dropped on the next read.
    consumed: usize,
}

impl NatsConn {
    /// The client side over plain TCP: reads `INFO`, sends `CONNECT`.
    pub(crate) async fn tcp(stream: TcpStream) -> Result<NatsConn, NatsError> {
        NatsConn::handshake(Link::Tcp(stream)).await
    }

    /// The client side over an established WebSocket (nats-server's `websocket`
    /// listener): reads `INFO`, sends `CONNECT`.
    pub(crate) async fn ws(ws: WebSocketStream<TcpStream>) -> Result<NatsConn, NatsError> {
        NatsConn::handshake(Link::Ws(Box::new(ws))).await
    }

    async fn handshake(link: Link) -> Result<NatsConn, NatsError> {
        let mut conn = NatsConn {
            link,
            buf: BytesMut::with_capacity(16 * 1024),
            consumed: 0,
        };
        match conn.next_op().await? {
            Op::Info => {}
            Op::Err(e) => return Err(NatsError::Server(e)),
            _ => return Err(NatsError::NoInfo),
        }
        conn.send(CONNECT).await?;
        Ok(conn)
    }

    /// Sends raw protocol bytes (one binary frame on WebSocket).
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), NatsError> {
        match &mut self.link {
            Link::Tcp(s) => s.write_all(bytes).await?,
            Link::Ws(ws) => {
                ws.send(Message::Binary(Bytes::copy_from_slice(bytes)))
                    .await?
            }
        }
        Ok(())
    }

    /// Subscribes to `subject` and waits until the server has registered it
    /// (`SUB` then `PING`, registered when the `PONG` arrives).
    pub(crate) async fn subscribe(&mut self, subject: &str) -> Result<(), NatsError> {
        self.send(format!("SUB {subject} 1\r\nPING\r\n").as_bytes())
            .await?;
        loop {
            match self.next_op().await? {
                Op::Pong => return Ok(()),
                Op::Ping => self.send(b"PONG\r\n").await?,
                Op::Err(e) => return Err(NatsError::Server(e)),
                Op::Info | Op::Ok | Op::Msg { .. } => {}
            }
        }
    }

    /// Waits for the `PONG` of a `publish_with_ack` already sent. Messages that
    /// arrive meanwhile (none on a publish-only connection) are skipped.
    pub(crate) async fn await_pong(&mut self) -> Result<(), NatsError> {
        loop {
            match self.next_op().await? {
                Op::Pong => return Ok(()),
                Op::Ping => self.send(b"PONG\r\n").await?,
                Op::Err(e) => return Err(NatsError::Server(e)),
                Op::Info | Op::Ok | Op::Msg { .. } => {}
            }
        }
    }

    /// The next message's payload, as a range for [`Self::bytes`], answering the
    /// server's pings on the way; `None` when the connection ended cleanly.
    pub(crate) async fn next_message(&mut self) -> Result<Option<Range<usize>>, NatsError> {
        loop {
            match self.next_op().await {
                Ok(Op::Msg { payload }) => return Ok(Some(payload)),
                Ok(Op::Ping) => self.send(b"PONG\r\n").await?,
                Ok(Op::Err(e)) => return Err(NatsError::Server(e)),
                Ok(Op::Info | Op::Ok | Op::Pong) => {}
                Err(NatsError::Closed) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The bytes of a range returned for the last operation (valid until the next read).
    pub(crate) fn bytes(&self, range: Range<usize>) -> &[u8] {
        self.buf.get(range).unwrap_or(&[])
    }

    /// Reads the next operation; its ranges index `self.buf` until the next call.
    async fn next_op(&mut self) -> Result<Op, NatsError> {
        self.buf.advance(self.consumed);
        self.consumed = 0;
        loop {
            if let Some((op, len)) = parse(&self.buf)? {
                self.consumed = len;
                return Ok(op);
            }
            if !self.fill().await? {
                return Err(NatsError::Closed);
            }
        }
    }

    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    async fn fill(&mut self) -> Result<bool, NatsError> {
        match &mut self.link {
            Link::Tcp(s) => {
                if self.buf.capacity() - self.buf.len() < 4096 {
                    self.buf.reserve(16 * 1024);
                }
                Ok(s.read_buf(&mut self.buf).await? > 0)
            }
            Link::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        self.buf.extend_from_slice(&b);
                        return Ok(true);
                    }
                    Some(Ok(Message::Text(t))) => {
                        self.buf.extend_from_slice(t.as_bytes());
                        return Ok(true);
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(false),
                    // WebSocket pings are answered by tungstenite on the next read.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(text: &[u8]) -> (Op, usize) {
        parse(text).expect("valid").expect("complete")
    }

    #[test]
    fn simple_operations() {
        let info = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\nPING";
        assert_eq!(op(info), (Op::Info, info.len() - 4));
        assert_eq!(op(b"PING\r\n"), (Op::Ping, 6));
        assert_eq!(op(b"pong\r\n"), (Op::Pong, 6), "verbs are case-insensitive");
        assert_eq!(op(b"+OK\r\nMSG"), (Op::Ok, 5));
        assert_eq!(
            op(b"-ERR 'Maximum Payload Violation'\r\n"),
            (Op::Err("Maximum Payload Violation".to_string()), 34)
        );
    }

    #[test]
    fn messages() {
        let text = b"MSG herald-bench-0 1 5\r\nhello\r\nPING\r\n";
        let (o, len) = op(text);
        assert_eq!(o, Op::Msg { payload: 24..29 });
        assert_eq!(&text[24..29], b"hello");
        assert_eq!(&text[len..], b"PING\r\n");
        // With a reply subject, and a payload holding CRLF (sizes, not lines, count).
        let text = b"MSG a.b 7 _INBOX.x 4\r\n\r\n\r\n\r\n";
        assert_eq!(op(text), (Op::Msg { payload: 22..26 }, text.len()));
        // Empty payload; tabs and repeated spaces between fields.
        let text = b"MSG s\t1  0\r\n\r\n";
        assert_eq!(op(text), (Op::Msg { payload: 12..12 }, text.len()));
        // HMSG: the payload is what follows the header block.
        let text = b"HMSG s 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n";
        let (o, _) = op(text);
        let Op::Msg { payload } = o else {
            panic!("not a message: {o:?}")
        };
        assert_eq!(&text[payload], b"hi");
    }

    /// Every prefix of a valid stream is "incomplete", never an error or a wrong
    /// operation: the parser must wait for the rest whatever the read boundaries.
    #[test]
    fn every_prefix_is_incomplete() {
        let text = b"MSG herald-bench-0 1 _R 12\r\n~hb00.0.1.2~\r\n";
        for cut in 0..text.len() {
            assert!(
                parse(&text[..cut]).expect("valid prefix").is_none(),
                "cut at {cut}"
            );
        }
        assert!(parse(text).expect("valid").is_some());
    }

    #[test]
    fn malformed_input() {
        for bad in [
            &b"HELLO\r\n"[..],
            b"MSG s 1\r\n",
            b"MSG s 1 x\r\n",
            b"MSG s 1 r extra 3\r\nabc\r\n",
            b"MSG s 1 3\r\nabcXY",
            b"MSG s 1 99999999999\r\n",
            b"HMSG s 1 5 3\r\nabc\r\n",
            b"\xff\xfe\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = vec![b'I'; MAX_CONTROL_LINE + 1];
        assert!(parse(&long).is_err(), "an endless control line is refused");
    }

    #[test]
    fn publish_bytes() {
        let mut out = Vec::new();
        publish_with_ack(&mut out, "t", b"abc");
        assert_eq!(out, b"PUB t 3\r\nabc\r\nPING\r\n");
    }

    /// Reads from `s` into `got` until `got` holds `needle`.
    async fn read_until(s: &mut TcpStream, got: &mut Vec<u8>, needle: &[u8]) {
        let mut chunk = [0u8; 1024];
        while !got.windows(needle.len()).any(|w| w == needle) {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "client hung up; got {got:?}");
            got.extend_from_slice(&chunk[..n]);
        }
    }

    /// A scripted server over a real socket: handshake, subscribe, a message split
    /// across writes, a server PING answered, then a publish acknowledged.
    #[tokio::test]
    async fn conversation_over_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            s.write_all(b"INFO {\"max_payload\":1048576}\r\n")
                .await
                .expect("write");
            let mut got = Vec::new();
            read_until(&mut s, &mut got, b"SUB topic 1\r\nPING\r\n").await;
            assert!(got.starts_with(b"CONNECT {"), "{got:?}");
            s.write_all(b"PONG\r\nMSG topic 1 5\r\nhel")
                .await
                .expect("write");
            s.flush().await.expect("flush");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            s.write_all(b"lo\r\nPING\r\n").await.expect("write");
            read_until(&mut s, &mut got, b"PONG\r\n").await;
            read_until(&mut s, &mut got, b"PUB topic 1\r\nx\r\nPING\r\n").await;
            s.write_all(b"PONG\r\n").await.expect("write");
            // Then the server goes away: the subscriber sees a clean end.
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut conn = NatsConn::tcp(stream).await.expect("handshake");
        conn.subscribe("topic").await.expect("subscribed");
        let payload = conn.next_message().await.expect("read").expect("a message");
        assert_eq!(conn.bytes(payload), b"hello");
        let mut out = Vec::new();
        publish_with_ack(&mut out, "topic", b"x");
        conn.send(&out).await.expect("publish");
        conn.await_pong().await.expect("acknowledged");
        assert!(conn.next_message().await.expect("clean end").is_none());
        server.await.expect("server task");
    }
}
