//! Plain publishes, answered by the listener without hyper and axum.
//!
//! Publishing is most of what a busy server answers, and for a small message the
//! HTTP machinery around the publish (hyper's connection state, the router, boxed
//! handler futures, header maps copied per layer) cost more than the publish itself
//! (docs/BENCHMARKS.md, "Publish path"). A *plain* publish — `PUT`/`POST /<topic>`
//! with a `Content-Length` body shorter than `message-size-limit`, no
//! `Transfer-Encoding`, `Expect` or `Upgrade` — is served here on a keep-alive loop:
//! the head is parsed with `httparse`, the body read from the connection's buffer,
//! and the request runs through the same code as the API's, in the same order
//! ([`crate::api::admit`]: authentication, proxy authentication, the visitor's
//! charge; [`crate::api::publish::publish_to_topic`]: the topic, write access, the
//! body and every parameter, idempotency, [`crate::core::Herald`];
//! [`crate::api::conclude`]: the daily count, ntfy's error shape, CORS). The answer
//! is laid out the way hyper lays out the same `Response` ([`encode_response`]):
//! status line, the headers in order, `content-length`, `date`, and hyper's
//! keep-alive rules for HTTP/1.0 and `Connection: close`. The access log line and
//! the request metrics are the same too (`RequestInfo`).
//!
//! Anything else — another route, a chunked or large body (an attachment, or `413`),
//! an unusual head — goes to hyper, with every byte read so far replayed in front,
//! also in the middle of a connection (after pipelined or kept-alive publishes).

use std::time::Duration;

use axum::http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Head, Listener, header_map, read_head, uninit_headers};
use crate::api::publish::{BodyBytes, TopicPublish, publish_to_topic};
use crate::error::ApiError;
use crate::model::topic;
use crate::telemetry::RequestInfo;

/// How a connection left the direct publish path.
pub(super) enum Outcome {
    /// Closed (by either side, or after an answer that ends it).
    Closed,
    /// A request the direct path does not serve starts at the front of these bytes:
    /// hyper takes the connection from there.
    Fallback(Bytes),
}

/// A plain publish's head, parsed and checked.
struct PlainPublish {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    content_length: usize,
    http10: bool,
    /// What hyper would decide: HTTP/1.1 unless `Connection: close`, HTTP/1.0 only
    /// with `Connection: keep-alive`.
    keep_alive: bool,
}

/// The connection: its socket and what was read from it but not yet used.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Reads the body of `len` bytes by `deadline`: `408` when it does not arrive in
    /// time, `400` when the client goes away (what the API answers for the same).
    async fn read_body(&mut self, len: usize, deadline: Instant) -> Result<Bytes, ApiError> {
        while self.buf.len() < len {
            self.buf.reserve(len - self.buf.len());
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(ApiError::BAD_REQUEST),
                Ok(Ok(_)) => {}
                Err(_) => return Err(ApiError::BODY_TIMEOUT),
            }
        }
        Ok(self.buf.split_to(len).freeze())
    }
}

impl Listener {
    /// Serves plain publishes on `stream`, starting with the complete head of
    /// `head_len` bytes at the front of `buf`, until the connection ends or a request
    /// comes that hyper must answer.
    pub(super) async fn serve_publishes(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        buf: BytesMut,
        head_len: usize,
    ) -> (TcpStream, Outcome) {
        let mut conn = Conn { stream, buf };
        let mut head_len = head_len;
        let mut idle_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let limits = self.state.limits.config();
        loop {
            let Some(request) = self.plain_publish(&conn.buf[..head_len]) else {
                let rest = conn.buf.split().freeze();
                return (conn.stream, Outcome::Fallback(rest));
            };
            let _ = conn.buf.split_to(head_len);
            let keep_alive = match self.answer(&mut conn, peer, request).await {
                Ok(keep_alive) => keep_alive,
                Err(_) => return (conn.stream, Outcome::Closed),
            };
            if !keep_alive {
                return (conn.stream, Outcome::Closed);
            }
            // The next head within `header-read-timeout`, as hyper bounds it. One
            // timer serves the connection's life: armed for the first wait, it is
            // moved to the current wait's deadline only when it fires early, so a
            // busy connection does not register and cancel a timer per request.
            let deadline = Instant::now() + limits.header_read_timeout;
            let timer =
                idle_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            let next = loop {
                tokio::select! {
                    biased;
                    // Cancel safe: what was read stays in `conn.buf` for the next try.
                    read = read_head(
                        &mut conn.stream,
                        &mut conn.buf,
                        limits.max_header_size,
                        &self.shutdown,
                    ) => break Some(read),
                    () = timer.as_mut() => {
                        if Instant::now() >= deadline {
                            break None;
                        }
                        timer.as_mut().reset(deadline);
                    }
                }
            };
            head_len = match next {
                Some(Ok(Head::Complete(len))) => len,
                // hyper answers it (`400`, or its own bound on a large head).
                Some(Ok(Head::Malformed | Head::TooLarge)) => {
                    let rest = conn.buf.split().freeze();
                    return (conn.stream, Outcome::Fallback(rest));
                }
                // Gone, idle past `header-read-timeout`, or shutting down.
                Some(Err(_)) | None => return (conn.stream, Outcome::Closed),
            };
        }
    }

    /// Whether `head` is a plain publish the direct path serves, and what it says.
    fn plain_publish(&self, head: &[u8]) -> Option<PlainPublish> {
        let mut headers = uninit_headers();
        let mut req = httparse::Request::new(&mut []);
        let Ok(httparse::Status::Complete(_)) = req.parse_with_uninit_headers(head, &mut headers)
        else {
            return None;
        };
        let method = match req.method? {
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            _ => return None,
        };
        let target = req.path?;
        // Too long: the API answers `414`.
        if !target.starts_with('/') || target.len() > self.state.limits.config().max_url_length {
            return None;
        }
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        // `/<topic>` only: no other route has one segment for these methods.
        if !topic::is_valid_name(&path[1..]) {
            return None;
        }
        // The URI as hyper parses it (what the API sees as path and query).
        let uri: Uri = target.parse().ok()?;
        let map = header_map(req.headers)?;
        if [TRANSFER_ENCODING, EXPECT, UPGRADE]
            .iter()
            .any(|h| map.contains_key(h))
        {
            return None;
        }
        let mut lengths = map.get_all(CONTENT_LENGTH).iter();
        let content_length = match (lengths.next(), lengths.next()) {
            (None, _) => 0,
            (Some(v), None) => parse_length(v.as_bytes())?,
            // Several: hyper's rules for them are its own.
            (Some(_), Some(_)) => return None,
        };
        // As long as the limit or longer: an attachment or `413`, the API's.
        if content_length >= self.state.herald.config().message_size_limit {
            return None;
        }
        let http10 = req.version? == 0;
        let connection = map.get_all(CONNECTION);
        let keep_alive = if http10 {
            connection.iter().any(|v| has_token(v, "keep-alive"))
        } else {
            !connection.iter().any(|v| has_token(v, "close"))
        };
        Some(PlainPublish {
            method,
            uri,
            headers: map,
            content_length,
            http10,
            keep_alive,
        })
    }

    /// Answers one plain publish; `Ok(true)` when the connection stays open.
    async fn answer(
        &self,
        conn: &mut Conn,
        peer: std::net::SocketAddr,
        request: PlainPublish,
    ) -> std::io::Result<bool> {
        let state = &self.state;
        let info = RequestInfo::new(
            &request.method,
            request.uri.path(),
            request.uri.query(),
            &request.headers,
        );
        // The body's deadline runs from the head's arrival, as the API's (`TimedBody`).
        let deadline = Instant::now() + state.limits.config().body_read_timeout;
        let path = request.uri.path();
        let segments = [&path[1..]];
        let query = request.uri.query();
        let mut body_read = false;
        let response = match crate::api::admit(
            state,
            &request.method,
            &segments,
            &request.headers,
            query,
            peer.ip(),
        )
        .await
        {
            Err(refused) => refused,
            Ok(admitted) => {
                let pairs = crate::api::parse_query(query);
                let publish = TopicPublish {
                    headers: &request.headers,
                    query: &pairs,
                    topic: segments[0],
                    path_sequence_id: None,
                    principal: &admitted.principal,
                    publisher: Some(&admitted.publisher),
                };
                let len = request.content_length;
                let result = publish_to_topic(state, publish, |_limit| {
                    body_read = true;
                    let read = conn.read_body(len, deadline);
                    async move {
                        Ok::<_, ApiError>(BodyBytes {
                            bytes: read.await?,
                            complete: true,
                            rest: None,
                        })
                    }
                })
                .await;
                crate::api::conclude(state, admitted, result).await
            }
        };
        let (mut parts, body) = response.into_parts();
        let body = body_bytes(body).await;
        // Where axum's router puts it (after the handler's headers, before the
        // listener's), so the header order is the router's.
        if !parts.headers.contains_key(CONTENT_LENGTH) {
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        // The rest of a body that timed out may never come (as on the API's path).
        let timed_out = parts.status == StatusCode::REQUEST_TIMEOUT;
        if timed_out {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        info.finish(&state.metrics, parts.status.as_u16());
        state.metrics.direct_publishes.inc();
        let keep_alive = request.keep_alive && !timed_out && !self.shutdown.is_cancelled();
        let mut out = Vec::with_capacity(256 + body.len());
        encode_response(&mut parts, &body, request.http10, keep_alive, &mut out);
        conn.stream.write_all(&out).await?;
        if !keep_alive {
            return Ok(false);
        }
        if !body_read {
            // Answered before the body was read (refused): it is read and dropped,
            // so the next request starts where it should.
            let len = request.content_length;
            if conn.read_body(len, deadline).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The bytes of an answer's body (the API's answers to a publish are whole).
async fn body_bytes(body: axum::body::Body) -> Bytes {
    use http_body_util::BodyExt;
    match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    }
}

/// A `Content-Length` value as hyper accepts it: digits only.
fn parse_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Whether a `Connection` value lists `token` (comma-separated, any case).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Lays out an answer as hyper's HTTP/1 server does for the same response and
/// connection: its status line (`HTTP/1.0` to an HTTP/1.0 client), the `Connection`
/// header hyper adds (`keep-alive` to an HTTP/1.0 client that asked for it, `close`
/// when the connection ends), the headers in their order (names lower case, one
/// line per value, `Connection` values joined), `content-length` unless the
/// headers have it, and `date`.
fn encode_response(
    parts: &mut axum::http::response::Parts,
    body: &[u8],
    http10: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    let headers = &mut parts.headers;
    let says_keep_alive = headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| has_token(v, "keep-alive"));
    if http10 && keep_alive && !says_keep_alive {
        headers.append(CONNECTION, HeaderValue::from_static("keep-alive"));
    } else if !http10
        && !keep_alive
        && !headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| has_token(v, "close"))
    {
        headers.append(CONNECTION, HeaderValue::from_static("close"));
    }
    let status = parts.status;
    if !http10 && status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut wrote_length = false;
    let mut wrote_date = false;
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        if name == CONNECTION {
            out.extend_from_slice(b"connection: ");
            if let Some(first) = values.next() {
                out.extend_from_slice(first.as_bytes());
            }
            for v in values {
                out.extend_from_slice(b", ");
                out.extend_from_slice(v.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            continue;
        }
        wrote_length |= name == CONTENT_LENGTH;
        wrote_date |= name == axum::http::header::DATE;
        for v in values {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if !wrote_length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Appends the current time as an HTTP date (RFC 9110 §5.6.7), formatted once per
/// second per thread, as hyper caches it.
fn http_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::SystemTime;
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(parse_length(b"12"), Some(12));
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"+1"), None);
        assert_eq!(parse_length(b" 1"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
    }

    #[test]
    fn answers_are_laid_out_as_hyper_does() {
        let resp = axum::http::Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("content-type", "application/json")
            .header("access-control-allow-origin", "*")
            .body(())
            .map(|r| r.into_parts().0);
        let Ok(mut parts) = resp else {
            panic!("a valid response");
        };
        let mut out = Vec::new();
        encode_response(&mut parts, b"{}\n", false, false, &mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
                 access-control-allow-origin: *\r\nconnection: close\r\ncontent-length: 3\r\ndate: "
            ),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n{}\n"), "{text}");
    }
}
