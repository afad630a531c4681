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
//! [`crate::api::conclude_publish`]: the daily count, ntfy's error shape, CORS). The
//! answer is laid out the way hyper lays out the same `Response` ([`encode_response`]):
//! status line, the headers in order, `content-length`, `date`, and hyper's
//! keep-alive rules for HTTP/1.0 and `Connection: close`. A successful publish is
//! written straight from its [`Published`] ([`encode_published`], the same bytes),
//! without building that `Response` first. The access log line and
//! the request metrics are the same too (`RequestInfo`).
//!
//! Anything else — another route, a chunked or large body (an attachment, or `413`),
//! an unusual head — goes to hyper, with every byte read so far replayed in front,
//! also in the middle of a connection (after pipelined or kept-alive publishes).

use std::ops::Range;
use std::time::Duration;

use axum::http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Head, Listener, read_head_by, uninit_headers};
use crate::api::publish::{BodyBytes, Published, TopicPublish, publish_to_topic};
use crate::error::ApiError;
use crate::model::topic;
use crate::telemetry::{Route, finish_direct_publish};

/// How a connection left the direct publish path.
pub(super) enum Outcome {
    /// Closed (by either side, or after an answer that ends it).
    Closed,
    /// A request the direct path does not serve starts at the front of these bytes:
    /// hyper takes the connection from there.
    Fallback(Bytes),
}

/// What a scan of a complete head found: a plain publish, its headers aside (as
/// ranges of the head, until the head is split off the connection's buffer).
struct Found {
    method: Method,
    /// The request target (path and query).
    target: Range<usize>,
    content_length: usize,
    http10: bool,
    keep_alive: bool,
}

/// Which of the headers a plain publish does not read are left out of its map
/// ([`Listener::unread`]).
#[derive(Clone, Copy)]
struct Unread {
    host: bool,
    user_agent: bool,
    content_length: bool,
}

impl Unread {
    /// Whether the header `name` (as sent, any case) is left out.
    fn has(self, name: &str) -> bool {
        (self.host && name.eq_ignore_ascii_case("host"))
            || (self.user_agent && name.eq_ignore_ascii_case("user-agent"))
            || (self.content_length && name.eq_ignore_ascii_case("content-length"))
    }
}

/// A plain publish's head, parsed and checked (its headers are in [`Conn::headers`]).
struct PlainPublish {
    method: Method,
    /// Its path and query, pointing into the head's bytes.
    uri: Uri,
    content_length: usize,
    http10: bool,
    /// What hyper would decide: HTTP/1.1 unless `Connection: close`, HTTP/1.0 only
    /// with `Connection: keep-alive`.
    keep_alive: bool,
}

/// The connection: its socket, what was read from it but not yet used, and what its
/// requests reuse.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The answer's bytes, laid out here and written at once; kept for the next one.
    out: Vec<u8>,
    /// The request metrics' series of the last answer (`herald_http_requests` by
    /// method and status, the publish route's duration histogram), kept while the
    /// next answer has the same method and status: a label lookup per connection
    /// rather than per request.
    series: Option<(Method, u16, (Counter, Histogram))>,
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
        let mut conn = Conn {
            stream,
            buf,
            out: Vec::new(),
            series: None,
        };
        // The current request's headers. The map is cleared between requests rather
        // than built anew, so its tables are allocated once per connection, and its
        // values are slices of the head's bytes rather than copies.
        let mut headers = HeaderMap::new();
        let mut fields = Vec::new();
        // Shutdown, watched while the connection waits for a head: registered once
        // per connection rather than once per request. As `read_head` does, an idle
        // connection then closes, and one whose next request has started arriving is
        // served.
        let mut shutdown = std::pin::pin!(self.shutdown.cancelled());
        let mut watching = true;
        let mut idle_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let limits = self.state.limits.config();
        let max_head = limits.max_header_size;
        // The listener parsed the first head to route it; it is scanned here once
        // more. Every later head is parsed once, by the scan, as it arrives.
        let mut scanned = None;
        let first = self.scan(&conn.buf[..], max_head, &mut fields, &mut scanned);
        if !matches!(first, Some(Head::Complete(len)) if len == head_len) {
            scanned = None;
        }
        let mut head_len = head_len;
        loop {
            let Some(found) = scanned.take() else {
                // Not a plain publish: hyper reads it from the start.
                let rest = conn.buf.split().freeze();
                return (conn.stream, Outcome::Fallback(rest));
            };
            // The head's bytes stay shared by the header values and the URI that
            // point into them until the answer is written.
            let head = conn.buf.split_to(head_len).freeze();
            let Some(request) = plain_publish(&head, found, &mut fields, &mut headers) else {
                headers.clear();
                return (conn.stream, Outcome::Fallback(rejoin(head, conn.buf)));
            };
            let answered = self.answer(&mut conn, &headers, peer, request).await;
            headers.clear();
            let done = match answered {
                Ok(Some(done)) => done,
                Ok(None) | Err(_) => return (conn.stream, Outcome::Closed),
            };
            // Nothing points into the head any more: the buffer's space it took can be
            // reused for the next one instead of a new allocation.
            drop(head);
            // The next head within `header-read-timeout`, as hyper bounds it, counted
            // from when the answer was ready (a client that leaves its answer unread
            // spends its own time). One timer serves the connection's life: armed for
            // the first wait, it is moved to the current wait's deadline only when it
            // fires early, so a busy connection does not register and cancel a timer
            // per request.
            let deadline = done + limits.header_read_timeout;
            let timer =
                idle_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            let next = loop {
                tokio::select! {
                    biased;
                    // Cancel safe: what was read stays in `conn.buf` for the next try,
                    // and a scan that found a whole head completes the read.
                    read = read_head_by(
                        &mut conn.stream,
                        &mut conn.buf,
                        max_head,
                        None,
                        |buf| self.scan(buf, max_head, &mut fields, &mut scanned),
                    ) => break Some(read),
                    () = timer.as_mut() => {
                        if Instant::now() >= deadline {
                            break None;
                        }
                        timer.as_mut().reset(deadline);
                    }
                    // Nothing of the next request yet: what may have just arrived is
                    // taken, else the connection closes.
                    () = shutdown.as_mut(), if watching && conn.buf.is_empty() => {
                        watching = false;
                        conn.buf.reserve(1024);
                        match conn.stream.try_read_buf(&mut conn.buf) {
                            Ok(n) if n > 0 => {}
                            _ => break None,
                        }
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

    /// Parses the request head at the front of `buf` once, for two answers: what
    /// the listener's `parse_head` makes of it (`None` while it is incomplete), and,
    /// when it is complete, in `found`, whether it is a plain publish the direct path
    /// serves and what it says, with its headers in `fields` (as ranges of `buf`).
    fn scan(
        &self,
        buf: &[u8],
        max_head: usize,
        fields: &mut Vec<(HeaderName, Range<usize>)>,
        found: &mut Option<Found>,
    ) -> Option<Head> {
        let mut headers = uninit_headers();
        let mut req = httparse::Request::new(&mut []);
        Some(match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) if len > max_head => Head::TooLarge,
            Ok(httparse::Status::Complete(len)) => {
                fields.clear();
                *found = self.plain(&req, buf, fields);
                Head::Complete(len)
            }
            Ok(httparse::Status::Partial) => return None,
            Err(httparse::Error::TooManyHeaders) => Head::TooLarge,
            Err(_) => Head::Malformed,
        })
    }

    /// Whether the parsed `req` (a head of `buf`) is a plain publish the direct path
    /// serves, and what it says; its headers go into `fields`.
    fn plain(
        &self,
        req: &httparse::Request<'_, '_>,
        buf: &[u8],
        fields: &mut Vec<(HeaderName, Range<usize>)>,
    ) -> Option<Found> {
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
        // A byte search: `split_once` searches for a `char`, at twice the cost here.
        let path = match target.bytes().position(|b| b == b'?') {
            Some(end) => &target[..end],
            None => target,
        };
        // `/<topic>` only: no other route has one segment for these methods.
        if !topic::is_valid_name(&path[1..]) {
            return None;
        }
        let mut lengths = 0;
        let mut content_length = 0;
        let mut connection_close = false;
        let mut connection_keep_alive = false;
        let unread = self.unread();
        for h in req.headers.iter() {
            // Every publish has one: compared as bytes, no `HeaderName` unless kept.
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                // Several: hyper's rules for them are its own.
                if lengths > 1 {
                    return None;
                }
                content_length = parse_length(h.value)?;
                if !unread.has(h.name) {
                    fields.push((CONTENT_LENGTH, range_in(buf, h.value)));
                }
                continue;
            }
            if unread.has(h.name) {
                continue;
            }
            let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            if name == TRANSFER_ENCODING || name == EXPECT || name == UPGRADE {
                return None;
            } else if name == CONNECTION {
                connection_close |= lists_token(h.value, "close");
                connection_keep_alive |= lists_token(h.value, "keep-alive");
            }
            fields.push((name, range_in(buf, h.value)));
        }
        // As long as the limit or longer: an attachment or `413`, the API's.
        if content_length >= self.state.herald.config().message_size_limit {
            return None;
        }
        let http10 = req.version? == 0;
        let keep_alive = if http10 {
            connection_keep_alive
        } else {
            !connection_close
        };
        Some(Found {
            method,
            target: range_in(buf, target.as_bytes()),
            content_length,
            http10,
            keep_alive,
        })
    }

    /// The headers that nothing a plain publish runs reads, so they are left out of
    /// the request's map (read from the configuration once per head): `Host` and
    /// `User-Agent`, which nearly every client sends, and `Content-Length` when
    /// attachments are off (only an attachment upload reads it from the map; the
    /// direct path has the length from its scan). The API's publish reads its
    /// parameters, credentials and `Content-Encoding`, and the two configurable
    /// names (`proxy-forwarded-header`, `auth-user-header`), which are kept whatever
    /// they are. httparse checked the value as `HeaderValue` would (visible ASCII,
    /// tab and obs-text), so leaving it out changes no answer.
    fn unread(&self) -> Unread {
        let forwarded = self.state.limits.config().proxy_forwarded_header.as_str();
        let herald = self.state.herald.config();
        let auth_user = herald.auth_user_header.as_deref();
        let kept = |name: &str| {
            forwarded.eq_ignore_ascii_case(name)
                || auth_user.is_some_and(|h| h.eq_ignore_ascii_case(name))
        };
        Unread {
            host: !kept("host"),
            user_agent: !kept("user-agent"),
            content_length: self.state.attachments.is_none() && !kept("content-length"),
        }
    }

    /// Answers one plain publish; `Ok(Some(done))` when the connection stays open,
    /// `done` the instant it became ready for the next request.
    async fn answer(
        &self,
        conn: &mut Conn,
        headers: &HeaderMap,
        peer: std::net::SocketAddr,
        request: PlainPublish,
    ) -> std::io::Result<Option<Instant>> {
        let state = &self.state;
        let start = std::time::Instant::now();
        // The body's deadline runs from the head's arrival, as the API's (`TimedBody`).
        let deadline = Instant::from_std(start) + state.limits.config().body_read_timeout;
        let path = request.uri.path();
        let segments = [&path[1..]];
        let query = request.uri.query();
        let mut body_read = false;
        let outcome = match crate::api::admit(
            state,
            &request.method,
            &segments,
            headers,
            query,
            peer.ip(),
            Instant::from_std(start),
        )
        .await
        {
            Err(refused) => Err(refused),
            Ok(admitted) => {
                let pairs = crate::api::parse_query(query);
                let publish = TopicPublish {
                    headers,
                    query: &pairs,
                    topic: segments[0],
                    // `plain` routed it here as a topic name.
                    topic_is_name: true,
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
                crate::api::conclude_publish(state, admitted, result).await
            }
        };
        let answer = match outcome {
            Ok(published) => Answer::Published(published),
            Err(response) => {
                let (parts, body) = response.into_parts();
                Answer::Other(parts, body_bytes(body).await)
            }
        };
        let status = answer.status();
        // The rest of a body that timed out may never come (as on the API's path).
        let timed_out = status == StatusCode::REQUEST_TIMEOUT;
        let status = status.as_u16();
        if !matches!(&conn.series, Some((m, s, _)) if *m == request.method && *s == status) {
            let series = state
                .metrics
                .http_series(Route::Publish, &request.method, status);
            conn.series = Some((request.method.clone(), status, series));
        }
        // The instant the answer is recorded at also dates it and starts the wait
        // for the next head: one clock read for the three.
        let answered_at = match &conn.series {
            Some((_, _, series)) => {
                finish_direct_publish(series, &request.method, path, status, start)
            }
            None => std::time::Instant::now(),
        };
        let answered_at = Instant::from_std(answered_at);
        state.metrics.direct_publishes.inc();
        let keep_alive = request.keep_alive && !timed_out && !self.shutdown.is_cancelled();
        let mut out = std::mem::take(&mut conn.out);
        out.clear();
        let layout = Layout {
            http10: request.http10,
            keep_alive,
            at: answered_at,
        };
        match answer {
            Answer::Published(published) => {
                out.reserve(256 + published.line.len());
                encode_published(&published, layout, &mut out);
            }
            Answer::Other(mut parts, body) => {
                out.reserve(256 + body.len());
                encode_response(&mut parts, &body, layout, timed_out, &mut out);
            }
        }
        let written = conn.stream.write_all(&out).await;
        conn.out = out;
        written?;
        if !keep_alive {
            return Ok(None);
        }
        if !body_read {
            // Answered before the body was read (refused): it is read and dropped,
            // so the next request starts where it should.
            let len = request.content_length;
            if conn.read_body(len, deadline).await.is_err() {
                return Ok(None);
            }
            return Ok(Some(Instant::now()));
        }
        Ok(Some(answered_at))
    }
}

/// The plain publish `found` in `head` (split off the connection's buffer), its
/// headers (`fields`, taken) in `map`: the values and the URI are slices of the
/// head's bytes, checked as `HeaderValue::from_bytes` and `Uri`'s parser check a
/// copy. `None` for a value or target they refuse (hyper then answers).
fn plain_publish(
    head: &Bytes,
    found: Found,
    fields: &mut Vec<(HeaderName, Range<usize>)>,
    map: &mut HeaderMap,
) -> Option<PlainPublish> {
    let within = |range: &Range<usize>| range.start <= range.end && range.end <= head.len();
    // The URI as hyper parses it (what the API sees as path and query).
    if !within(&found.target) {
        return None;
    }
    let uri = Uri::from_maybe_shared(head.slice(found.target)).ok()?;
    for (name, range) in fields.drain(..) {
        if !within(&range) {
            return None;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(range)).ok()?;
        map.append(name, value);
    }
    Some(PlainPublish {
        method: found.method,
        uri,
        content_length: found.content_length,
        http10: found.http10,
        keep_alive: found.keep_alive,
    })
}

/// Where `part`, a slice of `buf`, lies in it.
fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    start..start + part.len()
}

/// Whether a `Connection` value lists `token` (comma-separated, any case), as
/// [`has_token`] reads a `HeaderValue`: nothing, unless it is visible ASCII.
fn lists_token(value: &[u8], token: &str) -> bool {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| s.bytes().all(|b| b == b'\t' || (32..127).contains(&b)))
        .is_some_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The bytes of an answer's body (the API's answers to a publish are whole, one
/// frame: taken as they are, not collected into a list and joined).
async fn body_bytes(body: axum::body::Body) -> Bytes {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut whole = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Bytes::new();
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let mut both = BytesMut::with_capacity(whole.len() + data.len());
                both.extend_from_slice(&whole);
                both.extend_from_slice(&data);
                joined = Some(both);
            }
        }
    }
    joined.map_or(whole, BytesMut::freeze)
}

/// A `Content-Length` value as hyper accepts it: digits only.
fn parse_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    // Nineteen digits fit a `u64`: no overflow to check on the way.
    let mut n = 0u64;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    usize::try_from(n).ok()
}

/// Whether a `Connection` value lists `token` (comma-separated, any case).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// The head the direct path split off, put back in front of what follows it, for
/// hyper to read the request anew: in place when nothing else holds the head's
/// bytes (they are contiguous with `rest`), else copied.
fn rejoin(head: Bytes, rest: BytesMut) -> Bytes {
    match head.try_into_mut() {
        Ok(mut joined) => {
            joined.unsplit(rest);
            joined.freeze()
        }
        Err(head) => {
            let mut joined = BytesMut::with_capacity(head.len() + rest.len());
            joined.extend_from_slice(&head);
            joined.extend_from_slice(&rest);
            joined.freeze()
        }
    }
}

/// What an answer's layout depends on besides the answer: the request's HTTP
/// version, whether the connection stays open, and the instant that dates it.
#[derive(Clone, Copy)]
struct Layout {
    http10: bool,
    keep_alive: bool,
    at: Instant,
}

/// Lays out an answer as hyper's HTTP/1 server does for the same response and
/// connection (see [`encode_general`]), for the API's answers to a publish, whose
/// headers have no `Connection`, `Content-Length` or `Date`: those, as the router
/// and hyper add them, follow the handler's headers directly, with no change to the
/// response's map. `timed_out`: a `408`, after which the connection closes (the
/// API's path says so with `Connection: close`).
fn encode_response(
    parts: &mut axum::http::response::Parts,
    body: &[u8],
    layout: Layout,
    timed_out: bool,
    out: &mut Vec<u8>,
) {
    use axum::http::header::DATE;
    let headers = &mut parts.headers;
    // One pass over the answer's few headers (standard names compare as a tag), not
    // a hashed lookup per name.
    if headers
        .keys()
        .any(|name| name == CONNECTION || name == CONTENT_LENGTH || name == DATE)
    {
        // Where axum's router puts them (after the handler's headers, before the
        // listener's), so the header order is the router's.
        if !headers.contains_key(CONTENT_LENGTH) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        if timed_out {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        encode_general(parts, body, layout, out);
        return;
    }
    status_line(parts.status, layout.http10, out);
    // A repeated header's values follow its first, as `keys` and `get_all` give them.
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    finish_head(body, layout, timed_out, out);
}

/// The headers hyper and the router add after a handler's (`content-length`,
/// `connection` when it is not the version's default, `date`: the second of the
/// layout's instant), the head's end and the body.
fn finish_head(body: &[u8], layout: Layout, timed_out: bool, out: &mut Vec<u8>) {
    let Layout {
        http10,
        keep_alive,
        at,
    } = layout;
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    if timed_out || (!http10 && !keep_alive) {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 && keep_alive {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"date: ");
    http_date(at, out);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// What the listener answers a plain publish with.
enum Answer {
    /// The publish succeeded: written by [`encode_published`], with no `Response`.
    Published(Published),
    /// Anything else (a refusal, an error): the API's response, its body read.
    Other(axum::http::response::Parts, Bytes),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Answer::Published(_) => StatusCode::OK,
            Answer::Other(parts, _) => parts.status,
        }
    }
}

/// A successful publish's answer, laid out as [`encode_response`] lays out the
/// API's `Response` for it (`Published::into_response` with the CORS header): the
/// same bytes, without building that response and taking it apart again.
fn encode_published(published: &Published, layout: Layout, out: &mut Vec<u8>) {
    status_line(StatusCode::OK, layout.http10, out);
    out.extend_from_slice(b"content-type: application/json\r\n");
    if published.replayed {
        let (name, value) = Published::REPLAYED;
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"access-control-allow-origin: *\r\n");
    finish_head(&published.line, layout, false, out);
}

/// `HTTP/1.x <code> <reason>`, as hyper writes it.
fn status_line(status: StatusCode, http10: bool, out: &mut Vec<u8>) {
    if !http10 && status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Lays out an answer as hyper's HTTP/1 server does for the same response and
/// connection: its status line (`HTTP/1.0` to an HTTP/1.0 client), the `Connection`
/// header hyper adds (`keep-alive` to an HTTP/1.0 client that asked for it, `close`
/// when the connection ends), the headers in their order (names lower case, one
/// line per value, `Connection` values joined), `content-length` unless the
/// headers have it, and `date`.
fn encode_general(
    parts: &mut axum::http::response::Parts,
    body: &[u8],
    layout: Layout,
    out: &mut Vec<u8>,
) {
    let Layout {
        http10,
        keep_alive,
        at,
    } = layout;
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
    status_line(parts.status, http10, out);
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
        http_date(at, out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

thread_local! {
    /// [`http_date`]'s date and the instant its second ends (`None`: nothing yet).
    static DATE: std::cell::RefCell<(Option<Instant>, String)> =
        const { std::cell::RefCell::new((None, String::new())) };
}

/// Appends the time of `at` as an HTTP date (RFC 9110 §5.6.7), formatted once per
/// second per thread, as hyper caches it. The answer's instant, already read for its
/// duration, tells whether the cached second is still current: the wall clock is
/// read only when it is not, so a steady stream of answers reads it once a second.
fn http_date(at: Instant, out: &mut Vec<u8>) {
    use std::time::SystemTime;
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0.is_none_or(|ends| at >= ends) {
            let now = SystemTime::now();
            let into_second = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .subsec_nanos();
            // `at` came before `now`, so this end is at or before the second's real
            // end: the date is formatted again a little early, never late.
            let left = Duration::from_secs(1) - Duration::from_nanos(u64::from(into_second));
            *cached = (Some(at + left), httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unread_headers_match_in_any_case_and_only_when_left_out() {
        let unread = Unread {
            host: true,
            user_agent: false,
            content_length: true,
        };
        assert!(unread.has("Host") && unread.has("HOST") && unread.has("content-LENGTH"));
        assert!(!unread.has("User-Agent") && !unread.has("hostx") && !unread.has("x-title"));
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(parse_length(b"12"), Some(12));
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"+1"), None);
        assert_eq!(parse_length(b" 1"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
        assert_eq!(
            parse_length(b"9999999999999999999"),
            usize::try_from(9_999_999_999_999_999_999u64).ok()
        );
        assert_eq!(parse_length(b"0042"), Some(42));
        assert_eq!(parse_length(b"1a"), None);
    }

    /// hyper's layout of a closing answer: the router's `content-length` after the
    /// handler's headers, then hyper's `connection` and `date`.
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
        let layout = Layout {
            http10: false,
            keep_alive: false,
            at: Instant::now(),
        };
        encode_response(&mut parts, b"{}\n", layout, false, &mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
                 access-control-allow-origin: *\r\ncontent-length: 3\r\nconnection: close\r\ndate: "
            ),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n{}\n"), "{text}");
    }

    /// A response of `status` with the API's headers for a publish answer (and
    /// `extra`, which sends it the general way).
    fn parts(status: StatusCode, extra: &[(&str, &str)]) -> axum::http::response::Parts {
        let mut builder = axum::http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("access-control-allow-origin", "*");
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        match builder.body(()) {
            Ok(r) => r.into_parts().0,
            Err(e) => panic!("a valid response: {e}"),
        }
    }

    /// Lays out `parts` the way the listener did before the fast layout: the router's
    /// `content-length`, the `408`'s `Connection: close`, then [`encode_general`].
    fn general(
        mut parts: axum::http::response::Parts,
        body: &[u8],
        http10: bool,
        keep_alive: bool,
        timed_out: bool,
        at: Instant,
    ) -> Vec<u8> {
        if !parts.headers.contains_key(CONTENT_LENGTH) {
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        if timed_out {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let mut out = Vec::new();
        let layout = Layout {
            http10,
            keep_alive,
            at,
        };
        encode_general(&mut parts, body, layout, &mut out);
        out
    }

    #[test]
    fn the_fast_layout_is_the_general_one() {
        let at = Instant::now();
        let extras: [&[(&str, &str)]; 5] = [
            &[],
            &[("retry-after", "3")],
            &[("idempotent-replayed", "true"), ("x-a", "1"), ("x-a", "2")],
            &[("connection", "keep-alive")],
            &[("content-length", "2")],
        ];
        for extra in extras {
            for status in [
                StatusCode::OK,
                StatusCode::REQUEST_TIMEOUT,
                StatusCode::TOO_MANY_REQUESTS,
            ] {
                for http10 in [false, true] {
                    for keep_alive in [false, true] {
                        let timed_out = status == StatusCode::REQUEST_TIMEOUT;
                        let keep_alive = keep_alive && !timed_out;
                        let body = b"{\"id\":\"x\"}\n";
                        let want = general(
                            parts(status, extra),
                            body,
                            http10,
                            keep_alive,
                            timed_out,
                            at,
                        );
                        let mut got = Vec::new();
                        let mut p = parts(status, extra);
                        let layout = Layout {
                            http10,
                            keep_alive,
                            at,
                        };
                        encode_response(&mut p, body, layout, timed_out, &mut got);
                        assert_eq!(
                            String::from_utf8_lossy(&got),
                            String::from_utf8_lossy(&want),
                            "{status} {extra:?} http10={http10} keep_alive={keep_alive}"
                        );
                    }
                }
            }
        }
    }

    /// The date is formatted again once the instant of its second's end has come,
    /// and not before.
    #[test]
    fn the_date_is_kept_until_its_second_ends() {
        let at = Instant::now();
        DATE.with(|d| *d.borrow_mut() = (Some(at + Duration::from_secs(1)), "kept".into()));
        let mut out = Vec::new();
        http_date(at + Duration::from_millis(999), &mut out);
        assert_eq!(out, b"kept");
        out.clear();
        http_date(at + Duration::from_secs(1), &mut out);
        let fresh = String::from_utf8(out).unwrap();
        assert!(fresh.ends_with(" GMT"), "{fresh}");
        let (ends, kept) = DATE.with(|d| d.borrow().clone());
        assert_eq!(kept, fresh);
        // Ends within a second of the answer it was formatted for.
        let ends = ends.unwrap();
        assert!(ends > at + Duration::from_secs(1) && ends <= at + Duration::from_secs(2));
    }

    /// A successful publish written from its `Published` is byte for byte what the
    /// API's response for it (CORS header added, as `conclude` does) is laid out as.
    #[tokio::test]
    async fn a_published_answer_is_laid_out_as_its_response() {
        let at = Instant::now();
        for replayed in [false, true] {
            for http10 in [false, true] {
                for keep_alive in [false, true] {
                    let published = || Published {
                        line: Bytes::from_static(b"{\"id\":\"x\"}\n"),
                        replayed,
                    };
                    let response = crate::api::with_cors(published().into_response());
                    let (mut parts, body) = response.into_parts();
                    let body = body_bytes(body).await;
                    let mut want = Vec::new();
                    let layout = Layout {
                        http10,
                        keep_alive,
                        at,
                    };
                    encode_response(&mut parts, &body, layout, false, &mut want);
                    let mut got = Vec::new();
                    encode_published(&published(), layout, &mut got);
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&want),
                        "replayed={replayed} http10={http10} keep_alive={keep_alive}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn bodies_are_whole() {
        let one = axum::body::Body::from("{}\n");
        assert_eq!(&body_bytes(one).await[..], b"{}\n");
        let frames = futures_util::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from_static(b"a")),
            Ok(Bytes::new()),
            Ok(Bytes::from_static(b"bc")),
            Ok(Bytes::from_static(b"d")),
        ]);
        let many = axum::body::Body::from_stream(frames);
        assert_eq!(&body_bytes(many).await[..], b"abcd");
        let failing = futures_util::stream::iter([
            Ok(Bytes::from_static(b"a")),
            Err(std::io::Error::other("gone")),
        ]);
        let failing = axum::body::Body::from_stream(failing);
        assert!(body_bytes(failing).await.is_empty());
    }

    #[test]
    fn a_head_is_put_back_in_front_of_what_follows() {
        let mut buf = BytesMut::from(&b"POST /t HTTP/1.1\r\n\r\nrest"[..]);
        let head = buf.split_to(20).freeze();
        assert_eq!(&rejoin(head, buf)[..], b"POST /t HTTP/1.1\r\n\r\nrest");
        // Still shared (a header value points into it): copied.
        let mut buf = BytesMut::from(&b"PUT /t HTTP/1.1\r\n\r\nmore"[..]);
        let head = buf.split_to(19).freeze();
        let held = head.slice(0..3);
        assert_eq!(&rejoin(head, buf)[..], b"PUT /t HTTP/1.1\r\n\r\nmore");
        assert_eq!(&held[..], b"PUT");
    }
}
