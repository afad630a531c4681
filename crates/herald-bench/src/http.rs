//! A deliberately small HTTP/1.1 client: keep-alive `POST` for publishers and a
//! streaming `GET` for `/json` and `/sse` subscribers.
//!
//! Why not hyper's client: the load generator needs to own the socket (to bind a
//! source address before `connect`), wants no per-request allocation beyond the
//! request bytes, and only ever speaks one request at a time per connection. Those
//! few needs fit in this file; the parts worth testing (the response head and the
//! chunked decoder) are pure functions over byte buffers.

use std::ops::Range;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::rxstamp::RxStream;

/// Largest response head accepted; anything bigger is not an ntfy server.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the server")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Chunked,
    Length(u64),
    /// Until the server closes the connection.
    Close,
}

/// The parts of a response head the load generator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub(crate) keep_alive: bool,
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete, read more.
/// On success also returns the head's length in bytes.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(HttpError::Malformed("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::Malformed("invalid response head")),
    };
    let status = response.code.unwrap_or(0);
    let mut chunked = false;
    let mut length = None;
    let mut close = response.version == Some(0); // HTTP/1.0 closes unless told otherwise
    for h in response.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| HttpError::Malformed("invalid content-length"))?,
            );
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    // RFC 9112 §6.3: chunked wins over Content-Length; 1xx/204/304 have no body.
    let framing = if matches!(status, 100..=199 | 204 | 304) {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let keep_alive = !close && framing != Framing::Close;
    Ok(Some((
        Head {
            status,
            framing,
            keep_alive,
        },
        len,
    )))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// Incremental decoder of a `Transfer-Encoding: chunked` body. Feed it whatever
/// arrived; it consumes what it can and keeps its place across calls.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
        }
    }
}

impl ChunkedDecoder {
    /// Moves decoded body bytes from `input` to `out`. Returns `true` once the
    /// last chunk and trailers have been read (the body is complete).
    pub(crate) fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<bool, HttpError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(input)? else {
                        return Ok(false);
                    };
                    let digits = line[..].split(|&b| b == b';').next().unwrap_or(&[]);
                    let digits = std::str::from_utf8(digits)
                        .map_err(|_| HttpError::Malformed("chunk size"))?
                        .trim();
                    let size = u64::from_str_radix(digits, 16)
                        .map_err(|_| HttpError::Malformed("chunk size"))?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input.advance(n);
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if input.len() < 2 {
                        return Ok(false);
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(HttpError::Malformed("chunk not followed by CRLF"));
                    }
                    input.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(line) = take_line(input)? else {
                        return Ok(false);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
    }
}

/// Removes one CRLF-terminated line from `input` (without the CRLF).
fn take_line(input: &mut BytesMut) -> Result<Option<BytesMut>, HttpError> {
    match input.windows(2).position(|w| w == b"\r\n") {
        Some(pos) => {
            let line = input.split_to(pos);
            input.advance(2);
            Ok(Some(line))
        }
        None if input.len() > MAX_LINE => Err(HttpError::Malformed("line too long")),
        None => Ok(None),
    }
}

/// Decodes a response body of any framing.
#[derive(Debug, Clone)]
pub(crate) enum BodyDecoder {
    Chunked(ChunkedDecoder),
    Length(u64),
    Close,
}

impl BodyDecoder {
    pub(crate) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Chunked => BodyDecoder::Chunked(ChunkedDecoder::default()),
            Framing::Length(n) => BodyDecoder::Length(n),
            Framing::Close => BodyDecoder::Close,
        }
    }

    /// Like [`ChunkedDecoder::decode`]; `true` once the body is complete (never
    /// for a close-delimited body: that one ends at end of stream).
    pub(crate) fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<bool, HttpError> {
        match self {
            BodyDecoder::Chunked(d) => d.decode(input, out),
            BodyDecoder::Length(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                out.extend_from_slice(&input[..n]);
                input.advance(n);
                *left -= n as u64;
                Ok(*left == 0)
            }
            BodyDecoder::Close => {
                out.extend_from_slice(input);
                input.clear();
                Ok(false)
            }
        }
    }
}

/// One HTTP/1.1 connection with its read buffer.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: RxStream,
    buf: BytesMut,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Conn::over(RxStream::plain(stream))
    }

    /// A connection over a stream that may carry receive timestamps.
    pub(crate) fn over(stream: RxStream) -> Self {
        Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Sends raw request bytes.
    pub(crate) async fn send(&mut self, request: &[u8]) -> Result<(), HttpError> {
        self.stream.write_all(request).await?;
        Ok(())
    }

    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    async fn fill(&mut self) -> Result<bool, HttpError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// Reads a response head (skipping interim 1xx responses).
    pub(crate) async fn read_head(&mut self) -> Result<Head, HttpError> {
        loop {
            if let Some((head, len)) = parse_head(&self.buf)? {
                self.buf.advance(len);
                if (100..200).contains(&head.status) {
                    continue;
                }
                return Ok(head);
            }
            if !self.fill().await? {
                return Err(HttpError::Closed);
            }
        }
    }

    /// Reads the whole body into `out` (for short responses: publish acks, errors).
    pub(crate) async fn read_body(
        &mut self,
        framing: Framing,
        out: &mut Vec<u8>,
    ) -> Result<(), HttpError> {
        let mut decoder = BodyDecoder::new(framing);
        loop {
            if decoder.decode(&mut self.buf, out)? {
                return Ok(());
            }
            if !self.fill().await? {
                return match decoder {
                    BodyDecoder::Close => Ok(()),
                    _ => Err(HttpError::Closed),
                };
            }
        }
    }

    /// Turns the connection into a line reader over a streaming body.
    pub(crate) fn into_lines(self, framing: Framing) -> LineReader {
        LineReader {
            conn: self,
            decoder: BodyDecoder::new(framing),
            body: Vec::with_capacity(16 * 1024),
            start: 0,
            finished: false,
        }
    }
}

/// Reads a streaming response body line by line (`/json` and `/sse` framing are
/// both line based).
#[derive(Debug)]
pub(crate) struct LineReader {
    conn: Conn,
    decoder: BodyDecoder,
    /// Decoded body bytes; `body[start..]` is not consumed yet.
    body: Vec<u8>,
    start: usize,
    finished: bool,
}

impl LineReader {
    /// The next line without its `\n` (and `\r`), as a range for [`Self::line`];
    /// `None` at the end of the body. (A range rather than a slice, so callers can
    /// skip lines in a loop without fighting the borrow checker.)
    pub(crate) async fn next_line(&mut self) -> Result<Option<Range<usize>>, HttpError> {
        loop {
            if let Some(pos) = self.body[self.start..].iter().position(|&b| b == b'\n') {
                let line_start = self.start;
                let mut end = line_start + pos;
                self.start = end + 1;
                if end > line_start && self.body[end - 1] == b'\r' {
                    end -= 1;
                }
                return Ok(Some(line_start..end));
            }
            if self.finished {
                return Ok(None);
            }
            // Compact before reading more, so the buffer stays as small as one event.
            self.body.drain(..self.start);
            self.start = 0;
            let before = self.body.len();
            if self.decoder.decode(&mut self.conn.buf, &mut self.body)? {
                self.finished = true;
                continue;
            }
            if self.body.len() > before {
                continue; // new bytes: look for a line before reading the socket
            }
            if !self.conn.fill().await? {
                return match self.decoder {
                    BodyDecoder::Close => {
                        self.finished = true;
                        Ok(None)
                    }
                    _ => Err(HttpError::Closed),
                };
            }
        }
    }

    /// Kernel receive time of the last bytes read (see [`RxStream::last_rx_ns`]).
    pub(crate) fn last_rx_ns(&self) -> Option<u64> {
        self.conn.stream.last_rx_ns()
    }

    /// The bytes of a line returned by [`Self::next_line`] (valid until the next call).
    pub(crate) fn line(&self, range: Range<usize>) -> &[u8] {
        self.body.get(range).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        let (head, len) = parse_head(text.as_bytes())
            .expect("valid")
            .expect("complete");
        assert_eq!(len, text.len());
        head
    }

    #[test]
    fn head_framing_and_keep_alive() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n");
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (200, Framing::Length(12), true)
        );
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = head("HTTP/1.1 429 Too Many\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((h.status, h.keep_alive), (429, false));
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n");
        assert!(h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(0));
    }

    #[test]
    fn head_incomplete_and_invalid() {
        assert!(matches!(parse_head(b"HTTP/1.1 200 OK\r\nConte"), Ok(None)));
        assert!(parse_head(b"SMTP nonsense\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    const CHUNKED: &[u8] =
        b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT";

    #[test]
    fn chunked_whole() {
        let mut input = BytesMut::from(CHUNKED);
        let mut out = Vec::new();
        let done = ChunkedDecoder::default()
            .decode(&mut input, &mut out)
            .expect("valid");
        assert!(done);
        assert_eq!(out, b"hello 0123456789");
        assert_eq!(
            &input[..],
            b"NEXT",
            "bytes after the body stay in the buffer"
        );
    }

    /// Every split of the input into two reads, and byte-by-byte feeding, give the
    /// same result: the decoder must keep its place across partial reads.
    #[test]
    fn chunked_any_split() {
        let body = &CHUNKED[..CHUNKED.len() - 4];
        for split in 0..=body.len() {
            let mut decoder = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut input = BytesMut::from(&body[..split]);
            let early = decoder.decode(&mut input, &mut out).expect("valid prefix");
            assert!(!early || split == body.len());
            input.extend_from_slice(&body[split..]);
            assert!(
                decoder.decode(&mut input, &mut out).expect("valid"),
                "split {split}"
            );
            assert_eq!(out, b"hello 0123456789", "split {split}");
        }
        let mut decoder = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut input = BytesMut::new();
        let mut done = false;
        for &b in body {
            input.extend_from_slice(&[b]);
            done = decoder.decode(&mut input, &mut out).expect("valid");
        }
        assert!(done);
        assert_eq!(out, b"hello 0123456789");
    }

    #[test]
    fn chunked_errors() {
        for bad in [&b"zz\r\n"[..], b"3\r\nabcXY", b"3\r\nabc\r\n-1\r\n"] {
            let mut input = BytesMut::from(bad);
            let mut out = Vec::new();
            assert!(
                ChunkedDecoder::default()
                    .decode(&mut input, &mut out)
                    .is_err(),
                "{bad:?}"
            );
        }
        let mut input = BytesMut::from(&[b'1'; MAX_LINE + 1][..]);
        assert!(
            ChunkedDecoder::default()
                .decode(&mut input, &mut Vec::new())
                .is_err()
        );
    }

    #[test]
    fn length_and_close_bodies() {
        let mut input = BytesMut::from(&b"abcdef"[..]);
        let mut out = Vec::new();
        let mut d = BodyDecoder::new(Framing::Length(4));
        assert!(d.decode(&mut input, &mut out).expect("ok"));
        assert_eq!((&out[..], &input[..]), (&b"abcd"[..], &b"ef"[..]));
        let mut d = BodyDecoder::new(Framing::Close);
        assert!(!d.decode(&mut input, &mut out).expect("ok"));
        assert_eq!(out, b"abcdef");
    }

    /// A real socket: a streamed chunked body split at awkward places arrives as lines.
    #[tokio::test]
    async fn line_reader_over_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let parts: [&[u8]; 4] = [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{\"a\":1",
                b"}\n\r\n8\r\ndata: x\n\r",
                b"\n3\r\n\r\n\n\r\n",
                b"0\r\n\r\n",
            ];
            for p in parts {
                s.write_all(p).await.expect("write");
                s.flush().await.expect("flush");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut conn = Conn::new(stream);
        let head = conn.read_head().await.expect("head");
        let mut lines = conn.into_lines(head.framing);
        let mut got = Vec::new();
        while let Some(range) = lines.next_line().await.expect("line") {
            got.push(String::from_utf8_lossy(lines.line(range)).into_owned());
        }
        assert_eq!(got, ["{\"a\":1}", "data: x", "", ""]);
        server.await.expect("server task");
    }
}
