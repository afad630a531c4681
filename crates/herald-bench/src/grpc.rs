//! A minimal gRPC client for herald's `herald.v1.Herald` (`--transport grpc`,
//! `--publish-transport grpc`): calls over HTTP/2 with the `h2` crate, and the few
//! protobuf fields the load needs written and read by hand, so the generator adds
//! no gRPC stack or generated code, and reads no JSON (or whole messages) on the
//! delivery path: the stamp is found in the raw message bytes, as in the other
//! transports' event text.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;

/// `herald.v1.EventKind.EVENT_KIND_OPEN`.
pub(crate) const EVENT_OPEN: u64 = 1;

/// HTTP/2 flow-control window the client grants per stream and connection.
const WINDOW: u32 = 1 << 20;

/// One HTTP/2 connection to the gRPC listener.
pub(crate) struct GrpcConn {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
}

/// A response stream of length-prefixed messages.
pub(crate) struct GrpcStream {
    body: h2::RecvStream,
    buf: BytesMut,
    /// Bytes of `buf` already handed out (dropped on the next read).
    consumed: usize,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (string, bytes, embedded message).
fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A `herald.v1.PublishRequest` with `topic` (1) and `message` (2).
pub(crate) fn publish_request(out: &mut Vec<u8>, topic: &str, message: &str) {
    put_bytes(out, 1, topic.as_bytes());
    put_bytes(out, 2, message.as_bytes());
}

/// A `herald.v1.PublishBatchRequest` of already encoded `PublishRequest`s.
pub(crate) fn batch_request(out: &mut Vec<u8>, requests: &[Vec<u8>]) {
    for r in requests {
        put_bytes(out, 1, r);
    }
}

/// A `herald.v1.SubscribeRequest` for one topic.
pub(crate) fn subscribe_request(topic: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes(&mut out, 1, topic.as_bytes());
    out
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The top-level fields of a message: `(field, wire type, varint or bytes)`.
fn fields(mut msg: &[u8]) -> impl Iterator<Item = (u64, Result<u64, &[u8]>)> {
    std::iter::from_fn(move || {
        let key = varint(&mut msg)?;
        let value = match key & 7 {
            0 => Ok(varint(&mut msg)?),
            1 => {
                msg = msg.get(8..)?;
                Ok(0)
            }
            2 => {
                let len = usize::try_from(varint(&mut msg)?).ok()?;
                let (bytes, rest) = (msg.get(..len)?, msg.get(len..)?);
                msg = rest;
                Err(bytes)
            }
            5 => {
                msg = msg.get(4..)?;
                Ok(0)
            }
            _ => return None,
        };
        Some((key >> 3, value))
    })
}

/// A `herald.v1.Message`'s `event` (field 4).
pub(crate) fn event_kind(msg: &[u8]) -> u64 {
    fields(msg)
        .find_map(|(f, v)| (f == 4).then(|| v.ok()).flatten())
        .unwrap_or(0)
}

/// How many results of a `PublishBatchResponse` are errors (field 2 of a
/// `PublishResult`), and how many results there are.
pub(crate) fn batch_errors(msg: &[u8]) -> (usize, usize) {
    let mut errors = 0;
    let mut total = 0;
    for (f, v) in fields(msg) {
        if let (1, Err(result)) = (f, v) {
            total += 1;
            errors += usize::from(fields(result).any(|(f, _)| f == 2));
        }
    }
    (errors, total)
}

impl GrpcConn {
    /// The HTTP/2 handshake on `stream`; the connection's task runs on this thread.
    pub(crate) async fn connect(stream: TcpStream, authority: &str) -> Result<GrpcConn, String> {
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| format!("http/2 handshake: {e}"))?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        Ok(GrpcConn {
            send,
            authority: authority.to_string(),
        })
    }

    /// Starts `method` with one request message; returns the response stream once
    /// its head arrived (an error status in the head is an error).
    pub(crate) async fn call(
        &mut self,
        method: &str,
        message: &[u8],
    ) -> Result<GrpcStream, String> {
        let request = ::http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{}/herald.v1.Herald/{method}",
                self.authority
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .map_err(|e| format!("http/2: {e}"))?;
        let (response, mut body) = send
            .send_request(request, false)
            .map_err(|e| format!("http/2: {e}"))?;
        let mut framed = Vec::with_capacity(message.len() + 5);
        framed.push(0);
        framed.extend_from_slice(
            &u32::try_from(message.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        framed.extend_from_slice(message);
        body.send_data(Bytes::from(framed), true)
            .map_err(|e| format!("http/2: {e}"))?;
        let response = response.await.map_err(|e| format!("http/2: {e}"))?;
        let (head, body) = response.into_parts();
        if let Some(status) = head.headers.get("grpc-status")
            && status != "0"
        {
            let message = head
                .headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .unwrap_or("");
            return Err(format!("grpc-status {status:?}: {message}"));
        }
        Ok(GrpcStream {
            body,
            buf: BytesMut::new(),
            consumed: 0,
        })
    }

    /// A unary call: the one response message, checked against the trailers'
    /// `grpc-status`.
    pub(crate) async fn unary(&mut self, method: &str, message: &[u8]) -> Result<Vec<u8>, String> {
        let mut stream = self.call(method, message).await?;
        let reply = stream
            .next_message()
            .await?
            .map(|r| stream.bytes(r).to_vec())
            .ok_or_else(|| "no response message".to_string());
        let trailers = stream
            .body
            .trailers()
            .await
            .map_err(|e| format!("http/2: {e}"))?;
        match trailers.as_ref().and_then(|t| t.get("grpc-status")) {
            Some(s) if s == "0" => reply,
            Some(s) => Err(format!("grpc-status {s:?}")),
            None => reply,
        }
    }
}

impl GrpcStream {
    /// The next message's range in [`GrpcStream::bytes`]; `None` at the end.
    pub(crate) async fn next_message(&mut self) -> Result<Option<Range<usize>>, String> {
        if self.consumed > 0 {
            self.buf.advance(self.consumed);
            self.consumed = 0;
        }
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let end = 5 + len as usize;
                if self.buf.len() >= end {
                    self.consumed = end;
                    return Ok(Some(5..end));
                }
            }
            match self.body.data().await {
                Some(Ok(chunk)) => {
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => return Err(format!("http/2: {e}")),
                None => return Ok(None),
            }
        }
    }

    pub(crate) fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_reads_fields() {
        let mut msg = Vec::new();
        put_bytes(&mut msg, 1, b"id");
        put_varint(&mut msg, 4 << 3);
        put_varint(&mut msg, EVENT_OPEN);
        put_bytes(&mut msg, 6, &[b'x'; 300]);
        assert_eq!(event_kind(&msg), EVENT_OPEN);
        let mut result_ok = Vec::new();
        put_bytes(&mut result_ok, 1, &msg);
        let mut result_err = Vec::new();
        put_bytes(&mut result_err, 2, b"\x08\x03");
        let mut reply = Vec::new();
        batch_request(&mut reply, &[result_ok, result_err]);
        assert_eq!(batch_errors(&reply), (1, 2));
    }
}
